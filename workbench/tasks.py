"""Evaluation tasks for reasoning research (pure Python, no model code).

* :func:`arithmetic_problems` -- procedurally generated multi-step arithmetic
  word problems with a known integer answer and an explicit chain of thought.
* :func:`graph_problems` -- procedurally generated ProsQA-style graph reasoning (COCONUT,
  Hao et al. 2024): facts about nonsense concepts, "Is Tom a A or B?", exactly one option
  reachable; the chain of thought is the path, one fact per line; the answer is a name.
* :func:`load_gsm8k` / :func:`gsm8k_sample` -- GSM8K-format JSONL files.
* :func:`extract_answer` / :func:`is_correct` -- robust scoring of model output;
  :func:`score_answer` scores a numeric answer that way and a string answer (a graph
  task's concept name) exactly: the text after the last ``####``, stripped.
* :func:`load_task` -- one entry point: ``"arith-easy"``, ``"arith-medium"``,
  ``"arith-hard"``, ``"arith-expert"``, ``"graph-easy"``, ``"graph-medium"``,
  ``"graph-hard"``, ``"gsm8k-sample"`` or a JSONL path.

Step lines use the GSM8K operator spelling (``+ - * /``), one operation per
line, e.g. ``"12 + 7 = 19"``; :func:`format_target` appends ``"#### <answer>"``.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Problem",
    "TaskFormatError",
    "arithmetic_problems",
    "difficulty_levels",
    "graph_problems",
    "graph_levels",
    "graph_key",
    "GRAPH_CONCEPTS",
    "GRAPH_PEOPLE",
    "GRAPH_MAX_HOPS",
    "cot_text",
    "format_target",
    "load_gsm8k",
    "gsm8k_sample",
    "gsm8k_sample_path",
    "extract_answer",
    "parse_number",
    "is_correct",
    "final_text",
    "is_name_answer",
    "score_answer",
    "load_task",
    "list_tasks",
    "MAX_STEPS",
]

Number = int | float
MAX_STEPS = 8


class TaskFormatError(ValueError):
    """A task file is malformed; the message names the file and line number."""


@dataclass
class Problem:
    id: str
    question: str
    answer: Number | str  # a number (arithmetic, GSM8K) or a name (the graph task)
    steps: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


# =============================================================================
# Procedural arithmetic word problems
# =============================================================================

_NAMES = [
    "Ava", "Ben", "Chloe", "Daniel", "Elena", "Farid", "Grace", "Hiro", "Isla", "Jonas",
    "Kemi", "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq",
    "Uma", "Victor", "Wen", "Yusuf", "Zara",
]

# Each template: opening sentence, question, and a few phrasings per operation.
# Placeholders: {name}, {v} (start value), {k} (operand).
_TEMPLATES: dict[str, dict[str, Any]] = {
    "apples": {
        "start": "{name} has {v} apples.",
        "question": "How many apples does {name} have now?",
        "add": ["{name} picks {k} more apples from the orchard.", "A neighbour gives {name} {k} apples."],
        "sub": ["{name} eats {k} of the apples.", "{name} gives {k} apples to a friend."],
        "mul": ["After a trip to the market, {name} has {k} times as many apples as before."],
        "div": ["{name} shares the apples equally among {k} baskets and keeps just one basket."],
    },
    "money": {
        "start": "{name} has ${v} in a piggy bank.",
        "question": "How many dollars does {name} have now?",
        "add": ["{name} earns ${k} walking dogs.", "{name}'s aunt sends a gift of ${k}."],
        "sub": ["{name} spends ${k} on a book.", "{name} pays ${k} for a train ticket."],
        "mul": ["A savings scheme makes the money grow to {k} times as much."],
        "div": ["{name} splits the money equally into {k} envelopes and keeps only one envelope."],
    },
    "marbles": {
        "start": "{name} starts the day with {v} marbles.",
        "question": "How many marbles does {name} have at the end?",
        "add": ["{name} wins {k} marbles in a game.", "{name} finds {k} marbles under the sofa."],
        "sub": ["{name} loses {k} marbles in the playground.", "{name} trades away {k} marbles."],
        "mul": ["A big swap leaves {name} with {k} times as many marbles."],
        "div": ["{name} divides the marbles equally among {k} friends, including {name}, and keeps one share."],
    },
    "library": {
        "start": "A school library has {v} books on a shelf.",
        "question": "How many books are on the shelf now?",
        "add": ["The librarian adds {k} new books to the shelf.", "Students return {k} books to the shelf."],
        "sub": ["Students borrow {k} books from the shelf.", "The librarian removes {k} worn-out books."],
        "mul": ["After a donation, the shelf holds {k} times as many books."],
        "div": ["The books are split equally across {k} shelves, and we count just one of those shelves."],
    },
    "bakery": {
        "start": "A bakery makes {v} cookies in the morning.",
        "question": "How many cookies does the bakery have now?",
        "add": ["The baker bakes {k} more cookies.", "A second oven produces {k} extra cookies."],
        "sub": ["Customers buy {k} cookies.", "The staff eat {k} cookies at lunch."],
        "mul": ["For a festival, the bakery ends up with {k} times as many cookies."],
        "div": ["The cookies are packed equally into {k} boxes, and only one box stays in the bakery."],
    },
    "bus": {
        "start": "A bus leaves the depot with {v} passengers.",
        "question": "How many passengers are on the bus now?",
        "add": ["At the next stop, {k} passengers get on.", "At the market stop, {k} people board."],
        "sub": ["At the station, {k} passengers get off.", "At the school stop, {k} people leave the bus."],
        "mul": ["At the stadium, so many people board that there are {k} times as many passengers."],
        "div": ["The passengers are shared equally among {k} buses, and we follow one of those buses."],
    },
    "farm": {
        "start": "A farm has {v} chickens.",
        "question": "How many chickens does the farm have now?",
        "add": ["The farmer buys {k} more chickens.", "{k} chicks hatch and join the flock."],
        "sub": ["The farmer sells {k} chickens.", "{k} chickens are moved to a neighbour's farm."],
        "mul": ["Over the year the flock grows to {k} times its size."],
        "div": ["The farmer splits the chickens equally into {k} coops and counts one coop."],
    },
    "stickers": {
        "start": "{name} collects {v} stickers.",
        "question": "How many stickers does {name} have now?",
        "add": ["{name} buys a pack of {k} stickers.", "A teacher gives {name} {k} stickers."],
        "sub": ["{name} sticks {k} stickers into an album and can no longer trade them.", "{name} gives {k} stickers to a sister."],
        "mul": ["At a swap meet, {name} ends up with {k} times as many stickers."],
        "div": ["{name} sorts the stickers equally into {k} folders and keeps one folder."],
    },
}

_OP_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}

_LEVELS: dict[str, dict[str, Any]] = {
    "easy": {"steps": 2, "digits": 1, "description": "2 steps, 1-digit operands"},
    "medium": {"steps": (3, 4), "digits": 2, "description": "3-4 steps, 2-digit operands"},
    "hard": {"steps": (5, 6), "digits": 2, "description": "5-6 steps, 2-digit operands"},
    "expert": {"steps": (7, 8), "digits": 2, "description": "7-8 steps, 2-digit operands"},
}


def difficulty_levels() -> dict[str, dict[str, Any]]:
    """Preset difficulty levels: name -> ``{"steps": int | (lo, hi), "digits": int, "description": str}``."""
    return {k: dict(v) for k, v in _LEVELS.items()}


def _ranges(digits: int) -> dict[str, tuple[int, int]]:
    if digits == 1:
        return {"start": (2, 9), "addsub": (1, 9), "mul": (2, 5), "div": (2, 9), "cap": 200}
    if digits == 2:
        return {"start": (10, 99), "addsub": (10, 99), "mul": (2, 9), "div": (2, 12), "cap": 5000}
    if digits == 3:
        return {"start": (100, 999), "addsub": (100, 999), "mul": (2, 12), "div": (2, 12), "cap": 50000}
    raise ValueError(f"digits must be 1, 2 or 3, got {digits!r}")


def _feasible_ops(v: int, r: dict) -> dict[str, list[int]]:
    """Operand choices per operation that keep the value a positive integer <= cap."""
    lo, hi = r["addsub"]
    cap = r["cap"]
    ops: dict[str, list[int]] = {}
    add = [k for k in range(lo, hi + 1) if v + k <= cap]
    if add:
        ops["add"] = add
    sub = [k for k in range(lo, hi + 1) if k < v - 1]  # result stays >= 2 (see div)
    if sub:
        ops["sub"] = sub
    mul = [k for k in range(r["mul"][0], r["mul"][1] + 1) if v * k <= cap]
    if mul:
        ops["mul"] = mul
    # quotient >= 2: dividing a value by itself would make "1" a large share of all answers
    div = [k for k in range(r["div"][0], r["div"][1] + 1) if v % k == 0 and v // k >= 2]
    if div:
        ops["div"] = div
    return ops


def _apply(op: str, v: int, k: int) -> int:
    if op == "add":
        return v + k
    if op == "sub":
        return v - k
    if op == "mul":
        return v * k
    if op == "div":
        return v // k
    raise ValueError(op)


def _make_problem(rng: random.Random, steps: int, digits: int, pid: str, extra_meta: dict) -> Problem:
    r = _ranges(digits)
    tname = rng.choice(sorted(_TEMPLATES))
    tpl = _TEMPLATES[tname]
    name = rng.choice(_NAMES)
    v = rng.randint(*r["start"])
    start = v
    sentences = [tpl["start"].format(name=name, v=v)]
    chain: list[str] = []
    ops_used: list[str] = []
    prev_op = None
    for _ in range(steps):
        ops = _feasible_ops(v, r)
        # prefer variety: avoid repeating the same operation twice in a row when possible,
        # and lean a little towards division when it is available (it is the rarest feasible op).
        names = [o for o in ops if o != prev_op] or list(ops)
        weights = [1.5 if o == "div" else 1.0 for o in names]
        op = rng.choices(names, weights=weights)[0]
        k = rng.choice(ops[op])
        new = _apply(op, v, k)
        chain.append(f"{v} {_OP_SYMBOL[op]} {k} = {new}")
        sentences.append(rng.choice(tpl[op]).format(name=name, k=k))
        ops_used.append(op)
        prev_op = op
        v = new
    sentences.append(tpl["question"].format(name=name))
    meta = {
        "source": "arith",
        "template": tname,
        "num_steps": steps,
        "digits": digits,
        "start": start,
        "ops": ops_used,
        **extra_meta,
    }
    return Problem(id=pid, question=" ".join(sentences), answer=v, steps=chain, meta=meta)


def arithmetic_problems(
    n: int,
    steps: int | tuple[int, int] = 3,
    digits: int = 1,
    seed: int = 0,
    level: str | None = None,
) -> list[Problem]:
    """Generate ``n`` multi-step arithmetic word problems.

    ``steps`` is the number of operations (1..8) or an inclusive ``(lo, hi)``
    range sampled per problem; ``digits`` (1 or 2; 3 also accepted) sets the
    operand size.  ``level`` (a key of :func:`difficulty_levels`) overrides both.
    All intermediate values are integers >= 2 (no division with remainder, no
    quotient of 1, so no answer value dominates).
    Deterministic: problem ``i`` depends only on ``(seed, steps, digits, i)``, so
    ``arithmetic_problems(10)[:5] == arithmetic_problems(5)``.
    """
    if level is not None:
        if level not in _LEVELS:
            raise ValueError(f"unknown difficulty level {level!r}; available: {', '.join(_LEVELS)}")
        steps, digits = _LEVELS[level]["steps"], _LEVELS[level]["digits"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(steps, (tuple, list)):
        lo, hi = (int(s) for s in steps)
    else:
        lo = hi = int(steps)
    if not (1 <= lo <= hi <= MAX_STEPS):
        raise ValueError(f"steps must be in 1..{MAX_STEPS} (or a (lo, hi) range inside it), got {steps!r}")
    _ranges(digits)  # validates digits
    steps_tag = f"{lo}" if lo == hi else f"{lo}-{hi}"
    out = []
    for i in range(n):
        rng = random.Random(f"workbench-arith:{seed}:{steps_tag}:{digits}:{i}")
        k = rng.randint(lo, hi)
        pid = f"arith-s{steps_tag}-d{digits}-seed{seed}-{i:04d}"
        extra = {"seed": seed, "index": i}
        if level is not None:
            extra["level"] = level
        out.append(_make_problem(rng, k, digits, pid, extra))
    return out


# =============================================================================
# ProsQA-style graph reasoning
# =============================================================================

# Nonsense concept names: each is exactly two Qwen3.5 tokens (" <stem>" + "pus") in every
# position the task puts it (after "Every"/"a", before "."/"?", after "####"), so the first
# token names the concept (tested with the embedded tokenizer).
GRAPH_CONCEPTS: tuple[str, ...] = (
    "barpus", "birpus", "bolpus", "dalpus", "dirpus", "dorpus", "durpus", "ferpus", "forpus", "fulpus", "gerpus",
    "gorpus", "harpus", "hirpus", "horpus", "hurpus", "jurpus", "kirpus", "kolpus", "lerpus", "limpus", "lurpus",
    "merpus", "milpus", "mompus", "nerpus", "norpus", "nurpus", "perpus", "porpus", "pulpus", "relpus", "rompus",
    "serpus", "sorpus", "surpus", "tirpus", "turpus", "verpus", "vorpus", "vulpus", "werpus", "worpus", "wurpus",
    "zalpus", "zilpus", "brilpus", "starpus", "stirpus", "stolpus", "trompus", "flerpus", "skerpus", "spalpus",
    "spilpus", "spurpus", "cherpus", "chorpus", "thempus", "blirpus", "whompus", "sterpus", "zorpus", "yerpus",
)  # fmt: skip
# one Qwen3.5 token each, at the start of a line and after a space
GRAPH_PEOPLE: tuple[str, ...] = ("Tom", "Bob", "Jack", "Alex", "Max", "Sam", "Kim", "Leo", "Ann", "Ben", "Dan")
GRAPH_MAX_HOPS = 8

_GRAPH_LEVELS: dict[str, dict[str, Any]] = {
    "easy": {"hops": 3, "description": "3 hops"},
    "medium": {"hops": 4, "description": "4 hops"},
    "hard": {"hops": (5, 6), "description": "5-6 hops"},
}


def graph_levels() -> dict[str, dict[str, Any]]:
    """Preset difficulty levels of :func:`graph_problems`: name -> ``{"hops": int | (lo, hi), "description": str}``."""
    return {k: dict(v) for k, v in _GRAPH_LEVELS.items()}


def graph_key(problem: Problem) -> str:
    """The graph and question of a graph problem, independent of the order the facts are
    stated in: two problems with the same key pose the same question on the same graph."""
    m = problem.meta
    facts = sorted(f"{a}>{b}" for a, b in m["edges"])
    return f"{m['person']}?{'|'.join(sorted(m['options']))}:{';'.join(facts)}"


def _graph_fact(a: str, b: str) -> str:
    return f"{a} is a {b}." if a in GRAPH_PEOPLE else f"Every {a} is a {b}."


def _make_graph_problem(rng: random.Random, hops: int, pid: str, extra_meta: dict) -> Problem:
    """One question on a fresh random DAG.

    * gold path: ``person -> c1 -> ... -> c_hops`` (the answer is ``c_hops``);
    * distractor branch: ``other -> d1 -> ... -> d_hops`` (the wrong option ``d_hops``, as
      deep as the answer and stated the same way), with 1-2 edges from its inner nodes into
      the person's side of the graph (never into the answer: each option is the object of
      exactly one fact, so nothing about the options' facts marks either);
    * dead ends the person reaches: a second type ``person -> e1 (-> e2 ...)`` and side
      chains of 1-2 concepts off the gold path's inner nodes.
    No edge leaves the person's reachable set, so the wrong option is unreachable from the
    person, and every side branch is fresh, so the gold path is the only path to the answer.
    """
    person, other = rng.sample(GRAPH_PEOPLE, 2)
    pool = list(GRAPH_CONCEPTS)
    rng.shuffle(pool)
    take = lambda k: [pool.pop() for _ in range(k)]  # noqa: E731
    gold, dis = take(hops), take(hops)
    edges: list[tuple[str, str]] = [(person, gold[0]), (other, dis[0])]
    edges += [(a, b) for a, b in zip(gold, gold[1:])] + [(a, b) for a, b in zip(dis, dis[1:])]
    dead = take(rng.randint(1, max(1, hops - 1)))
    edges += [(person, dead[0])] + [(a, b) for a, b in zip(dead, dead[1:])]
    reach = [*gold[:-1], *dead]  # cross-link targets: never the answer, so each option is named by exactly one fact
    for c in gold[:-1]:
        if rng.random() < 0.5:
            side = take(rng.randint(1, 2))
            edges += [(c, side[0])] + [(a, b) for a, b in zip(side, side[1:])]
            reach += side
    if hops > 1:
        have = set(edges)
        for _ in range(rng.randint(1, 2)):
            e = (rng.choice(dis[:-1]), rng.choice(reach))
            if e not in have:
                have.add(e)
                edges.append(e)
    facts = [_graph_fact(a, b) for a, b in edges]
    rng.shuffle(facts)
    options = [gold[-1], dis[-1]]
    rng.shuffle(options)
    question = " ".join(facts) + f" Is {person} a {options[0]} or {options[1]}?"
    steps = [_graph_fact(a, b) for a, b in zip([person, *gold], gold)]
    meta = {
        "source": "graph",
        "num_steps": hops,
        "hops": hops,
        "person": person,
        "options": options,
        "target": gold[-1],
        "neg_target": dis[-1],
        "path": [person, *gold],
        "edges": [list(e) for e in edges],
        **extra_meta,
    }
    return Problem(id=pid, question=question, answer=gold[-1], steps=steps, meta=meta)


def graph_problems(n: int, hops: int | tuple[int, int] = 3, seed: int = 0, level: str | None = None) -> list[Problem]:
    """Generate ``n`` ProsQA-style graph-reasoning problems (COCONUT, Hao et al. 2024).

    The question states a random DAG of nonsense concepts as shuffled facts ("Every lerpus
    is a zorpus.", "Tom is a lerpus.") and asks "Is Tom a A or B?"; exactly one option is
    reachable from Tom. ``steps`` is the path, one fact per line ("Tom is a lerpus.",
    "Every lerpus is a zorpus.", ...), ``answer`` the reachable option's name (a string).
    ``hops`` (1..8, or an inclusive ``(lo, hi)`` range sampled per problem) is the path
    length = the number of steps; ``level`` (a key of :func:`graph_levels`) overrides it.
    ``meta`` holds the edges, the path, the options, the target and the wrong option.
    Deterministic: problem ``i`` depends only on ``(seed, hops, i)``, so
    ``graph_problems(10)[:5] == graph_problems(5)``.
    """
    from .errors import InputError

    if level is not None:
        if not isinstance(level, str) or level not in _GRAPH_LEVELS:
            raise InputError(f"unknown graph difficulty level {level!r}; valid: {', '.join(_GRAPH_LEVELS)}")
        hops = _GRAPH_LEVELS[level]["hops"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InputError(f"n must be a non-negative integer, got {n!r}")
    lohi = tuple(hops) if isinstance(hops, (tuple, list)) else (hops, hops)
    if len(lohi) != 2 or not all(isinstance(h, int) and not isinstance(h, bool) for h in lohi) or not 1 <= lohi[0] <= lohi[1] <= GRAPH_MAX_HOPS:
        raise InputError(f"hops must be an integer in 1..{GRAPH_MAX_HOPS} (or a (lo, hi) range inside it), got {hops!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an integer, got {seed!r}")
    lo, hi = lohi
    tag = f"{lo}" if lo == hi else f"{lo}-{hi}"
    out = []
    for i in range(n):
        rng = random.Random(f"workbench-graph:{seed}:{tag}:{i}")
        k = rng.randint(lo, hi)
        extra: dict[str, Any] = {"seed": seed, "index": i}
        if level is not None:
            extra["level"] = level
        out.append(_make_graph_problem(rng, k, f"graph-h{tag}-seed{seed}-{i:04d}", extra))
    return out


def _fmt_number(x: Number) -> str:
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    return str(x)


def cot_text(problem: Problem) -> str:
    """The reasoning chain as text, one step per line."""
    return "\n".join(problem.steps)


def format_target(problem: Problem, style: str = "cot") -> str:
    """Training/eval target: ``"<steps>\\n#### 42"`` (``style="cot"``) or ``"#### 42"`` (``"answer"``)."""
    final = f"#### {_fmt_number(problem.answer)}"
    if style == "cot":
        body = cot_text(problem)
        return f"{body}\n{final}" if body else final
    if style == "answer":
        return final
    raise ValueError(f"unknown style {style!r}; expected 'cot' or 'answer'")


# =============================================================================
# GSM8K-format loader
# =============================================================================

_CALC_RE = re.compile(r"<<[^<>]*>>")
_DATA_DIR = Path(__file__).resolve().parent / "data" / "gsm8k"


def parse_number(s: str) -> Number | None:
    """Parse ``"1,234"``, ``"$5"``, ``"-3"``, ``"12.0"`` (-> 12), ``"7."``; None if not a number."""
    t = s.strip().replace("\u2212", "-").replace(",", "").replace("$", "").replace(" ", "")
    t = t.rstrip(".")
    if t.startswith("+"):
        t = t[1:]
    if not re.fullmatch(r"-?(\d+(\.\d*)?|\.\d+)", t):
        return None
    if re.fullmatch(r"-?\d+", t):
        return int(t)
    f = float(t)
    return int(f) if f.is_integer() else f


def load_gsm8k(path: str | os.PathLike, limit: int | None = None, seed: int | None = None) -> list[Problem]:
    """Load a GSM8K-format JSONL file (``{"question": ..., "answer": "...\\n#### 72"}`` per line).

    Steps are the reasoning lines before ``####`` with calculator annotations
    (``<<48/2=24>>``) removed.  With ``seed`` the problems are shuffled
    deterministically before ``limit`` is applied (a random subset); without it
    the first ``limit`` lines are kept.
    """
    path = Path(path)
    problems: list[Problem] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskFormatError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(obj, dict):
                raise TaskFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            for key in ("question", "answer"):
                if key not in obj:
                    raise TaskFormatError(f"{where}: missing field {key!r}")
                if not isinstance(obj[key], str) or not obj[key].strip():
                    raise TaskFormatError(f"{where}: field {key!r} must be a non-empty string")
            raw = obj["answer"]
            if "####" not in raw:
                raise TaskFormatError(f"{where}: answer has no '#### <number>' final line")
            reasoning, _, final = raw.rpartition("####")
            value = parse_number(final.strip().splitlines()[0] if final.strip() else "")
            if value is None:
                raise TaskFormatError(f"{where}: cannot parse a number after '####': {final.strip()!r}")
            steps = [ln.strip() for ln in _CALC_RE.sub("", reasoning).splitlines() if ln.strip()]
            idx = len(problems)
            problems.append(
                Problem(
                    id=str(obj.get("id") or f"gsm8k-{path.stem}-{idx:05d}"),
                    question=obj["question"].strip(),
                    answer=value,
                    steps=steps,
                    meta={"source": "gsm8k", "file": path.name, "line": lineno, "raw_answer": raw},
                )
            )
    if seed is not None:
        random.Random(seed).shuffle(problems)
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        problems = problems[:limit]
    return problems


def gsm8k_sample_path() -> Path:
    """Path of the GSM8K test sample shipped with the package (first 200 test problems, MIT licence)."""
    return _DATA_DIR / "test_sample.jsonl"


def gsm8k_sample(limit: int | None = None, seed: int | None = None) -> list[Problem]:
    """The shipped 200-problem GSM8K test sample."""
    return load_gsm8k(gsm8k_sample_path(), limit=limit, seed=seed)


# =============================================================================
# Answer extraction and scoring
# =============================================================================

# a number: optional sign, optional "$", thousands groups or plain digits, optional decimals
_NUM_CORE = r"[-+]?(?:\$\s?)?-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)"
_NUM_RE = re.compile(r"(?<![\w.])" + _NUM_CORE)
_HASH_RE = re.compile(r"####\s*(" + _NUM_CORE + ")")
_ANSWER_IS_RE = re.compile(
    r"answer(?:\s+is|\s*[:=])\s*[:=]?[\s*_$`]*(?:\\\(|\\\[)?\s*(" + _NUM_CORE + ")",
    re.IGNORECASE,
)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _normalise(text: str) -> str:
    return (
        text.replace("\u2212", "-")  # unicode minus
        .replace("{,}", ",")  # LaTeX thousands separator 1{,}234
        .replace("\\$", "$")
        .replace("\\!", "")
        .replace("\\,", "")
    )


def _boxed_contents(text: str) -> list[str]:
    out = []
    for m in _BOXED_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        out.append(text[m.end() : i - 1] if depth == 0 else text[m.end() :])
    return out


def _last_number(text: str) -> Number | None:
    for m in reversed(list(_NUM_RE.finditer(text))):
        v = parse_number(m.group(0))
        if v is not None:
            return v
    return None


def _extract(text: str) -> Number | None:
    for m in reversed(list(_HASH_RE.finditer(text))):
        v = parse_number(m.group(1))
        if v is not None:
            return v
    for content in reversed(_boxed_contents(text)):
        v = parse_number(content)
        if v is None:
            frac = re.fullmatch(r"\s*(-?)\\d?frac\{(\d+)\}\{(\d+)\}\s*", content)
            if frac and int(frac.group(3)) != 0:
                q = int(frac.group(2)) / int(frac.group(3))
                q = -q if frac.group(1) else q
                v = int(q) if q.is_integer() else q
            else:
                v = _last_number(content)
        if v is not None:
            return v
    for m in reversed(list(_ANSWER_IS_RE.finditer(text))):
        v = parse_number(m.group(1))
        if v is not None:
            return v
    return _last_number(text)


def extract_answer(text: str | None) -> Number | None:
    """Pull the final numeric answer out of model output.

    Preference order: ``#### n`` > ``\\boxed{n}`` > ``answer is n`` / ``Answer: n``
    > the last number in the text.  If a ``</think>`` tag is present, the text
    after the last one is searched first (falling back to the whole text).
    Handles ``1,234``, ``-5``, ``$5``, trailing periods and ``12.0`` (-> 12).
    Returns an ``int`` when the value is integral, else a ``float``; None if no number.
    """
    if not text:
        return None
    text = _normalise(str(text))
    if "</think>" in text:
        after = text.rsplit("</think>", 1)[1]
        v = _extract(after)
        if v is not None:
            return v
    return _extract(text)


def final_text(text: str | None) -> str | None:
    """The text after the last ``####``, stripped (searched after the last ``</think>``
    first, like :func:`extract_answer`); None when there is no ``####``."""
    if not text:
        return None
    text = str(text)
    if "</think>" in text:
        after = text.rsplit("</think>", 1)[1]
        if "####" in after:
            return after.rsplit("####", 1)[1].strip()
    if "####" not in text:
        return None
    return text.rsplit("####", 1)[1].strip()


def is_name_answer(answer: Any) -> bool:
    """True for an answer scored as a name (a string with no number in it: the graph
    task's concepts), False for a number or a string holding one."""
    return isinstance(answer, str) and extract_answer(answer) is None


def score_answer(text: str | None, answer: Number | str) -> tuple[Number | str | None, bool]:
    """(prediction, correct) for model output `text` against a problem's `answer`. A
    numeric answer (or a string holding a number, as :func:`is_correct` reads it):
    :func:`extract_answer` then :func:`is_correct` (tolerant, as always); a string answer
    without a number (a graph task's concept name): exactly the text after the last
    ``####``, stripped, compared with the answer as is."""
    if is_name_answer(answer):
        pred = final_text(text)
        return pred, pred is not None and pred == answer
    pred = extract_answer(text)
    return pred, is_correct(pred, answer)


def is_correct(pred: Number | str | None, answer: Number | str, rel_tol: float = 1e-6, abs_tol: float = 1e-6) -> bool:
    """Numeric comparison with tolerance. Strings are run through :func:`extract_answer` first."""
    if isinstance(pred, str):
        pred = extract_answer(pred)
    if isinstance(answer, str):
        answer = extract_answer(answer)
    if pred is None or answer is None or isinstance(pred, bool) or isinstance(answer, bool):
        return False
    try:
        p, a = float(pred), float(answer)
    except (TypeError, ValueError):
        return False
    if math.isnan(p) or math.isnan(a):
        return False
    return math.isclose(p, a, rel_tol=rel_tol, abs_tol=abs_tol)


# =============================================================================
# Task registry
# =============================================================================

_TASKS = {
    "arith-easy": "easy",
    "arith-medium": "medium",
    "arith-hard": "hard",
    "arith-expert": "expert",
    "graph-easy": "easy",
    "graph-medium": "medium",
    "graph-hard": "hard",
    "gsm8k-sample": None,
}


def list_tasks() -> list[str]:
    """Names accepted by :func:`load_task` (besides a JSONL path)."""
    return list(_TASKS)


def load_task(name_or_path: str | os.PathLike, n: int | None = None, seed: int | None = None) -> list[Problem]:
    """Load a task by name or a GSM8K-format JSONL path.

    * ``"arith-<level>"``: ``n`` problems (default 100) from :func:`arithmetic_problems`
      at that level, ``seed`` default 0; ``"graph-<level>"`` the same from :func:`graph_problems`.
    * ``"gsm8k-sample"`` or a path: at most ``n`` problems (all when None); with
      ``seed`` a deterministic random subset, else the first ``n``.
    """
    key = os.fspath(name_or_path)
    if key in _TASKS:
        level = _TASKS[key]
        if key.startswith("graph-"):
            return graph_problems(100 if n is None else n, seed=0 if seed is None else seed, level=level)
        if level is not None:
            return arithmetic_problems(100 if n is None else n, seed=0 if seed is None else seed, level=level)
        return gsm8k_sample(limit=n, seed=seed)
    path = Path(key).expanduser()
    if path.suffix in (".jsonl", ".json") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"task file not found: {path}")
        return load_gsm8k(path, limit=n, seed=seed)
    raise ValueError(f"unknown task {key!r}; available: {', '.join(_TASKS)} or a path to a GSM8K-format .jsonl file")

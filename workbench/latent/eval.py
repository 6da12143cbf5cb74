"""`workbench latent eval`: latent methods against explicit chain-of-thought and
no-thinking baselines on multi-step arithmetic, GSM8K-format JSONL and the graph task
(string answers, scored exactly: `tasks.score_answer`).

Per method: accuracy, latent steps, think steps (explicit thinking tokens), visible tokens,
self-exit rate, maxed rate and wall time per example. Rows are saved as JSONL and the
summary as JSON + a plain-text table (atomic writes)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from ..tasks import Problem, is_name_answer, score_answer

BASELINES = ("cot", "no_think")
INSTRUCTION = "Solve the problem. End with the final answer on its own line as '#### <number>'."
# a problem whose answer is a name (the graph task) is asked for '#### <name>' instead
INSTRUCTION_NAME = "Solve the problem. End with the final answer on its own line as '#### <name>'."


@dataclass
class EvalRow:
    method: str
    problem_id: str
    answer: float | int | str
    pred: float | int | str | None
    correct: bool
    latent_steps: int
    latent_positions: int
    think_steps: int
    visible_tokens: int
    exit: str | None
    wall_time: float
    text: str


@dataclass
class MethodSummary:
    method: str
    n: int
    accuracy: float
    latent_steps: float
    latent_positions: float
    think_steps: float
    visible_tokens: float
    self_exit_rate: float
    maxed_rate: float
    wall_time_per_example: float


def prompt_for(problem: Problem, method: str) -> str:
    """The user turn for `method`: "no_think" asks for the number only; everything else
    (explicit chain of thought and every latent method, which think in vectors) gets the
    same thinking prompt, so latent methods are scored on exactly the CoT prompt. A name
    answer (the graph task: `tasks.is_name_answer`) is asked for as '#### <name>'."""
    named = is_name_answer(problem.answer)
    if method == "no_think":
        if named:
            return f"{problem.question}\nAnswer with only the final name as '#### <name>'."
        return f"{problem.question}\nAnswer with only the final number as '#### <number>'."
    return f"{problem.question}\nThink step by step. {INSTRUCTION_NAME if named else INSTRUCTION}"


def _split_at_close(ids: list[int], close: int | None) -> tuple[int, list[int]] | None:
    """(think tokens, ids after the model's own `</think>`), or None when it wrote none."""
    if close is not None and close in ids:
        k = ids.index(close)
        return k, ids[k + 1 :]
    return None


def _row(bench: Any, stops: set[int], method: str, p: Problem, vis: list[int], **counts: Any) -> EvalRow:
    """Score the visible ids `vis` of one problem; `counts`: the remaining EvalRow fields."""
    text = bench.tokenizer.decode([t for t in vis if t not in stops], skip_special_tokens=False)
    pred, correct = score_answer(text, p.answer)  # numbers: extract_answer + is_correct; names: exactly
    return EvalRow(method, p.id, p.answer, pred, correct, visible_tokens=len(vis), text=text, **counts)


def _baseline(bench: Any, problems: Sequence[Problem], method: str, max_new_tokens: int, think_budget: int) -> list[EvalRow]:
    from ..generate import generate_full
    from .policies import stop_ids, token_id

    close = token_id(bench.tokenizer, "</think>")
    thinking = method == "cot" and close is not None
    stops = stop_ids(bench)
    t0 = time.perf_counter()
    budget = max_new_tokens + (think_budget if thinking else 0)
    res = generate_full(
        bench, [prompt_for(p, method) for p in problems], max_new_tokens=budget,
        enable_thinking=(method == "cot") if close is not None else None, stop_ids=stops,
    )  # fmt: skip
    wall = (time.perf_counter() - t0) / len(problems)
    rows = []
    for p, ids in zip(problems, res.token_ids):
        ids = list(ids)
        think, vis, exit = 0, ids, None
        if thinking:
            split = _split_at_close(ids, close)
            think, vis, exit = (*split, "self_exit") if split else (len(ids), [], "maxed")
        rows.append(_row(bench, stops, method, p, vis, latent_steps=0, latent_positions=0, think_steps=think, exit=exit, wall_time=wall))
    return rows


def _latent(bench: Any, problems: Sequence[Problem], method: str, policy: Any, max_new_tokens: int) -> list[EvalRow]:
    """Latent thinking, then visible decoding; if the model goes on to write explicit
    thinking (pause tokens, COCONUT without an end marker), the tokens up to its own
    `</think>` count as think steps, not visible tokens."""
    from .engine import run
    from .policies import stop_ids, token_id

    close = token_id(bench.tokenizer, "</think>")
    stops = stop_ids(bench)
    t0 = time.perf_counter()
    traces = run(bench, [prompt_for(p, method) for p in problems], policy, max_new_tokens=max_new_tokens, readout=False)
    wall = (time.perf_counter() - t0) / len(problems)
    rows = []
    for p, tr in zip(problems, traces):
        ids = list(tr.visible_ids)
        think, vis = _split_at_close(ids, close) or (0, ids)
        rows.append(_row(
            bench, stops, method, p, vis, latent_steps=tr.latent_steps, latent_positions=tr.latent_positions, think_steps=think,
            exit=tr.exit, wall_time=wall,
        ))  # fmt: skip
    return rows


def summarise(rows: Sequence[EvalRow]) -> list[MethodSummary]:
    out = []
    for m in dict.fromkeys(r.method for r in rows):
        rs = [r for r in rows if r.method == m]
        n = len(rs)
        mean = lambda f: sum(f(r) for r in rs) / n  # noqa: E731
        out.append(
            MethodSummary(
                m, n, mean(lambda r: float(r.correct)), mean(lambda r: r.latent_steps), mean(lambda r: r.latent_positions),
                mean(lambda r: r.think_steps),
                mean(lambda r: r.visible_tokens), mean(lambda r: float(r.exit == "self_exit")),
                mean(lambda r: float(r.exit == "maxed")), mean(lambda r: r.wall_time),
            )  # fmt: skip
        )
    return out


def table(summary: Sequence[MethodSummary]) -> str:
    head = f"{'method':16s} {'n':>4s} {'acc':>6s} {'latent':>7s} {'think':>7s} {'visible':>8s} {'self-exit':>9s} {'maxed':>6s} {'s/ex':>7s}"
    lines = [head]
    for s in summary:
        lines.append(
            f"{s.method:16s} {s.n:4d} {s.accuracy:6.3f} {s.latent_steps:7.1f} {s.think_steps:7.1f} {s.visible_tokens:8.1f} "
            f"{s.self_exit_rate:9.2f} {s.maxed_rate:6.2f} {s.wall_time_per_example:7.3f}"
        )
    return "\n".join(lines)


def evaluate(
    bench: Any,
    methods: dict[str, Any],
    problems: Sequence[Problem],
    *,
    max_new_tokens: int = 96,
    think_budget: int = 128,
    batch_size: int = 16,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[list[EvalRow], list[MethodSummary]]:
    """Run every method on every problem, `batch_size` problems per generation (left
    padded; batched rows give the same tokens as one at a time, tested). `methods`: name ->
    a latent policy spec, or the string "cot" / "no_think" for the baselines. Every policy
    is bound once first, so a bad head or option fails before any generation. Writes
    `results.jsonl`, `summary.json` and `summary.txt` into `out_dir` when given.
    `wall_time` per row is its batch's time divided by the batch size."""
    from ..errors import InputError, check_writable_target
    from ..inputs import check_bool, check_integer

    if isinstance(problems, (str, bytes)) or not hasattr(problems, "__len__"):
        raise InputError(f"problems must be a list of tasks.Problem, got {type(problems).__name__}")
    if not problems:
        raise InputError("no problems to evaluate")
    if not isinstance(methods, dict):
        raise InputError(f"methods must be a dict of name -> latent policy or 'cot' / 'no_think', got {type(methods).__name__}")
    if not methods:
        raise InputError("no methods to evaluate")
    batch_size = check_integer(batch_size, "batch_size", low=1)
    max_new_tokens = check_integer(max_new_tokens, "max_new_tokens", low=1)
    think_budget = check_integer(think_budget, "think_budget", low=0)
    check_bool(progress, "progress")
    if out_dir is not None:
        check_writable_target(out_dir, "out_dir")  # before any generation
    for name, m in methods.items():
        if isinstance(m, str):
            if m not in BASELINES:
                raise InputError(f"method {name!r}: unknown baseline {m!r}; valid: {', '.join(BASELINES)} or a latent policy")
        elif not callable(getattr(m, "bind", None)):
            raise InputError(f"method {name!r} must be a latent policy spec or one of {', '.join(BASELINES)}, got {type(m).__name__} {m!r:.60}")
        else:
            m.bind(bench, 1)
    from tqdm.auto import tqdm

    rows: list[EvalRow] = []
    bar = tqdm(total=len(problems) * len(methods), desc="latent eval", disable=not progress)
    for name, m in methods.items():
        for s in range(0, len(problems), batch_size):
            chunk = list(problems[s : s + batch_size])
            got = _baseline(bench, chunk, m, max_new_tokens, think_budget) if isinstance(m, str) else _latent(bench, chunk, name, m, max_new_tokens)
            for r in got:
                r.method = name
            rows.extend(got)
            bar.update(len(chunk))
    bar.close()
    summary = summarise(rows)
    if out_dir is not None:
        from ..paths import atomic_write_text

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "results.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in rows))
        atomic_write_text(out / "summary.json", json.dumps([asdict(s) for s in summary], indent=1) + "\n")
        atomic_write_text(out / "summary.txt", table(summary) + "\n")
    return rows, summary

"""`workbench latent eval`: latent methods against explicit chain-of-thought and
no-thinking baselines on multi-step arithmetic and GSM8K-format JSONL.

Per method: accuracy, latent steps, think steps (explicit thinking tokens), visible tokens,
self-exit rate, maxed rate and wall time per example. Rows are saved as JSONL and the
summary as JSON + a plain-text table (atomic writes)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from ..tasks import Problem, extract_answer, is_correct

BASELINES = ("cot", "no_think")
INSTRUCTION = "Solve the problem. End with the final answer on its own line as '#### <number>'."


@dataclass
class EvalRow:
    method: str
    problem_id: str
    answer: float | int
    pred: float | int | None
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
    think_steps: float
    visible_tokens: float
    self_exit_rate: float
    maxed_rate: float
    wall_time_per_example: float


def prompt_for(problem: Problem, method: str) -> str:
    if method == "no_think":
        return f"{problem.question}\nAnswer with only the final number as '#### <number>'."
    if method == "cot":
        return f"{problem.question}\nThink step by step. {INSTRUCTION}"
    return f"{problem.question}\n{INSTRUCTION}"


def _baseline(bench: Any, problem: Problem, method: str, max_new_tokens: int, think_budget: int) -> EvalRow:
    from ..generate import generate_full
    from .policies import stop_ids, token_id

    close = token_id(bench.tokenizer, "</think>")
    thinking = close is not None
    stops = stop_ids(bench)
    t0 = time.perf_counter()
    budget = max_new_tokens + (think_budget if method == "cot" and thinking else 0)
    res = generate_full(
        bench, prompt_for(problem, method), max_new_tokens=budget, enable_thinking=(method == "cot") if thinking else None,
        stop_ids=stops,
    )
    wall = time.perf_counter() - t0
    ids = res.token_ids[0]
    exit, think = None, 0
    if method == "cot" and thinking:
        if close in ids:
            think, exit = ids.index(close), "self_exit"
        else:
            think, exit = len(ids), "maxed"
    vis = ids[think + 1 :] if exit == "self_exit" else (ids if exit is None else [])
    text = bench.tokenizer.decode([t for t in vis if t not in stops], skip_special_tokens=False)
    pred = extract_answer(text)
    return EvalRow(method, problem.id, problem.answer, pred, is_correct(pred, problem.answer), 0, 0, think, len(vis), exit, wall, text)


def _latent(bench: Any, problem: Problem, method: str, policy: Any, max_new_tokens: int) -> EvalRow:
    from .engine import run

    t0 = time.perf_counter()
    tr = run(bench, prompt_for(problem, method), policy, max_new_tokens=max_new_tokens, readout=False)
    wall = time.perf_counter() - t0
    pred = extract_answer(tr.text)
    return EvalRow(
        method, problem.id, problem.answer, pred, is_correct(pred, problem.answer), tr.latent_steps, tr.latent_positions, 0,
        len(tr.visible_ids), tr.exit, wall, tr.text,
    )  # fmt: skip


def summarise(rows: Sequence[EvalRow]) -> list[MethodSummary]:
    out = []
    for m in dict.fromkeys(r.method for r in rows):
        rs = [r for r in rows if r.method == m]
        n = len(rs)
        mean = lambda f: sum(f(r) for r in rs) / n  # noqa: E731
        out.append(
            MethodSummary(
                m, n, mean(lambda r: float(r.correct)), mean(lambda r: r.latent_steps), mean(lambda r: r.think_steps),
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
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[list[EvalRow], list[MethodSummary]]:
    """Run every method on every problem. `methods`: name -> a latent policy spec, or the
    string "cot" / "no_think" for the baselines. Every policy is bound once first, so a bad
    head or option fails before any generation. Writes `results.jsonl`, `summary.json` and
    `summary.txt` into `out_dir` when given."""
    if not problems:
        raise ValueError("no problems to evaluate")
    if not methods:
        raise ValueError("no methods to evaluate")
    for name, m in methods.items():
        if isinstance(m, str):
            if m not in BASELINES:
                raise ValueError(f"method {name!r}: unknown baseline {m!r}; valid: {', '.join(BASELINES)} or a latent policy")
        else:
            m.bind(bench, 1)
    from tqdm.auto import tqdm

    rows: list[EvalRow] = []
    bar = tqdm(total=len(problems) * len(methods), desc="latent eval", disable=not progress)
    for p in problems:
        for name, m in methods.items():
            row = _baseline(bench, p, m, max_new_tokens, think_budget) if isinstance(m, str) else _latent(bench, p, name, m, max_new_tokens)
            row.method = name
            rows.append(row)
            bar.update(1)
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

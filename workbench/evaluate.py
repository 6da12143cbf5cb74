"""Generate answers for task problems and score them: the one "solve and grade" helper.

`solve` runs problems through the one generation loop (`workbench.generate.generate_full`)
in batches, with any of its options (prefix, steer, edits, policy, temperature, seed ...),
and scores each reply with `workbench.tasks.extract_answer` / `is_correct`. Metrics over
attempts are small pure functions (`accuracy`, `coverage`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

INSTRUCTION = "Solve the problem step by step, then give the final answer as a number on its own line, after '####'."
# graph problems (`tasks.graph_problems`) are answered with a concept's name, not a number
NAME_INSTRUCTION = "Solve the problem step by step, then give the final answer, the name of one of the two options, on its own line, after '####'."


def default_prompt(problem: Any) -> str:
    """The question followed by an instruction to end with `#### <number>` (or `#### <name>`
    where the answer is a name, as in the graph task)."""
    from .tasks import is_name_answer

    return f"{problem.question}\n\n{NAME_INSTRUCTION if is_name_answer(problem.answer) else INSTRUCTION}"


@dataclass
class Attempt:
    """One generated answer: the problem's id and known answer, the prompt sent, the reply
    text, the extracted number (None when none was found), whether it is correct, and the
    number of visible tokens generated."""

    problem_id: str
    answer: float | int
    prompt: str
    text: str
    prediction: float | int | None
    correct: bool
    n_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def solve(
    bench: Any,
    problems: Sequence[Any],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    chat: bool = True,
    prompt_fn: Callable[[Any], str] = default_prompt,
    progress: bool = False,
    desc: str = "solve",
    **generate_kwargs: Any,
) -> list[Attempt]:
    """One `Attempt` per problem, in order. `generate_kwargs` go to the generation loop
    (temperature, top_p, seed, prefix, steer, edits, policy, enable_thinking, system ...).
    With a `seed`, batch b is sampled with seed `seed * 100_003 + b` (distinct streams for
    neighbouring seeds; the same seed and batch_size give the same samples)."""
    from .generate import generate_full
    from .tasks import score_answer

    problems = list(problems)
    if not problems:
        raise ValueError("problems is empty: give at least one problem")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    for i, p in enumerate(problems):
        if not hasattr(p, "question") or not hasattr(p, "answer"):
            raise ValueError(f"problems[{i}] has no question/answer (got {type(p).__name__}); use workbench.tasks.load_task")
    prompts = [prompt_fn(p) for p in problems]
    starts = range(0, len(problems), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch")
    seed = generate_kwargs.pop("seed", None)
    out: list[Attempt] = []
    for b, s in enumerate(starts):
        chunk = prompts[s : s + batch_size]
        res = generate_full(
            bench,
            chunk,
            max_new_tokens=max_new_tokens,
            chat=chat,
            seed=None if seed is None else int(seed) * 100_003 + b,
            **generate_kwargs,
        )
        for j, text in enumerate(res.texts):
            p = problems[s + j]
            pred, ok = score_answer(text, p.answer)  # numbers as before; string answers (graph task) exactly
            out.append(
                Attempt(
                    problem_id=str(p.id),
                    answer=p.answer,
                    prompt=chunk[j],
                    text=text,
                    prediction=pred,
                    correct=bool(ok),
                    n_tokens=len(res.token_ids[j]),
                )
            )
    return out


def accuracy(attempts: Sequence[Attempt]) -> float:
    """Fraction of attempts that are correct."""
    if not attempts:
        raise ValueError("no attempts to score")
    return sum(a.correct for a in attempts) / len(attempts)


def coverage(runs: Sequence[Sequence[Attempt]]) -> float:
    """Oracle coverage (pass@N): fraction of problems solved by at least one run. Every run
    must cover the same problems in the same order."""
    if not runs:
        raise ValueError("no runs to score")
    ids = [a.problem_id for a in runs[0]]
    for r, run in enumerate(runs):
        if [a.problem_id for a in run] != ids:
            raise ValueError(f"run {r} covers different problems than run 0")
    if not ids:
        raise ValueError("runs are empty")
    return sum(any(run[i].correct for run in runs) for i in range(len(ids))) / len(ids)

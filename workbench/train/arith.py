"""Training data shared by the micro model and the latent-reasoning recipes: the built-in
arithmetic task, or (`task="graph"`) the ProsQA-style graph task (`tasks.graph_problems`,
answers are concept names: the suffix is "#### lerpus<|im_end|>").

One problem becomes token ids in the exact layout the evaluation and the latent engine
see at inference (`latent.eval.prompt_for` through the chat template):

    prompt  = chat(question + instruction, enable_thinking=True)   ... "<think>\\n"
    steps   = ["12 + 7 = 19\\n", "19 - 4 = 15\\n", ...]              one entry per step
    suffix  = "</think>\\n\\n#### 15<|im_end|>"

and the no-thinking form `chat(..., enable_thinking=False)` (whose prompt already ends in
an empty think block) followed by `answer = "#### 15<|im_end|>"`. Each step line is
tokenized on its own, so a recipe can drop or replace whole steps (COCONUT).

Held-out sets: `EVAL_SETS` (arithmetic) and `GRAPH_EVAL_SETS` are the problems the
results table scores (`eval_sets_for(task)`); `training_problems` never returns a question
that appears in the arithmetic ones, `training_graph_problems` never a graph (and question)
of the graph ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import InputError
from ..tasks import GRAPH_MAX_HOPS, Problem, arithmetic_problems, graph_key, graph_problems
from .config import TrainConfig

TASKS = ("arith", "graph")
# name -> (reasoning steps, operand digits); all with seed 0 (the `arith-easy` task is "2 steps")
EVAL_SETS: dict[str, tuple[int, int]] = {"2 steps": (2, 1), "3 steps": (3, 1), "4 steps": (4, 1)}
# graph task: name -> path length (hops = reasoning steps); all with seed 0 (`graph-easy` is "3 hops")
GRAPH_EVAL_SETS: dict[str, int] = {"3 hops": 3, "4 hops": 4, "5 hops": 5}
EVAL_SEED = 0
_HELD_OUT_N = 512  # questions excluded from training per eval set (any eval n up to this is held out)


def check_task(task: Any, name: str = "task") -> str:
    if not isinstance(task, str) or task not in TASKS:
        raise InputError(f"{name} must be one of {', '.join(repr(t) for t in TASKS)}, got {task!r}")
    return task


def eval_set_names(task: str = "arith") -> list[str]:
    """The held-out eval sets of `task`, easiest first."""
    return list(EVAL_SETS if check_task(task) == "arith" else GRAPH_EVAL_SETS)


def eval_problems(name: str, n: int) -> list[Problem]:
    """The first `n` problems of the held-out eval set `name` (of either task: the names
    differ, "2 steps" / "3 hops")."""
    if name not in EVAL_SETS and name not in GRAPH_EVAL_SETS:
        raise InputError(f"unknown eval set {name!r}; available: {', '.join([*EVAL_SETS, *GRAPH_EVAL_SETS])}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= _HELD_OUT_N:
        raise InputError(f"eval n must be in 1..{_HELD_OUT_N} (the held-out part), got {n}")
    if name in GRAPH_EVAL_SETS:
        return graph_problems(n, hops=GRAPH_EVAL_SETS[name], seed=EVAL_SEED)
    steps, digits = EVAL_SETS[name]
    return arithmetic_problems(n, steps=steps, digits=digits, seed=EVAL_SEED)


def eval_sets_for(task: str = "arith") -> dict[str, Any]:
    """name -> a function n -> the first n held-out problems of that set, for `task`."""
    return {name: (lambda n, name=name: eval_problems(name, n)) for name in eval_set_names(task)}


@lru_cache(maxsize=4)
def _held_out_questions() -> frozenset[str]:
    out = set()
    for steps, digits in EVAL_SETS.values():
        out.update(p.question for p in arithmetic_problems(_HELD_OUT_N, steps=steps, digits=digits, seed=EVAL_SEED))
    return frozenset(out)


def training_problems(n: int, min_steps: int = 1, max_steps: int = 4, digits: int = 1, seed: int = 1000) -> list[Problem]:
    """`n` problems with `min_steps..max_steps` reasoning steps, none of whose questions is
    in a held-out eval set (drawn from a different seed, duplicates skipped)."""
    if n < 1:
        raise InputError(f"need at least one training problem, got n={n}")
    held = _held_out_questions()
    out: list[Problem] = []
    extra = 0
    while len(out) < n:
        want = n - len(out) + extra
        batch = arithmetic_problems(len(out) + want, steps=(min_steps, max_steps), digits=digits, seed=seed)[len(out) :]
        out.extend(p for p in batch if p.question not in held)
        out = out[:n]
        extra += 64
        if extra > 64 * 100:  # pragma: no cover - the problem space is far larger
            raise InputError("could not draw enough training problems outside the held-out sets")
    return out


@lru_cache(maxsize=4)
def _held_out_graphs() -> frozenset[str]:
    out = set()
    for hops in GRAPH_EVAL_SETS.values():
        for p in graph_problems(_HELD_OUT_N, hops=hops, seed=EVAL_SEED):
            out.add(graph_key(p))
            out.add(p.question)
    return frozenset(out)


def training_graph_problems(n: int, min_hops: int = 2, max_hops: int = 5, seed: int = 1000) -> list[Problem]:
    """`n` graph problems with `min_hops..max_hops`-step paths, none of which poses a
    held-out eval question or states a held-out graph (`tasks.graph_key`, independent of
    the facts' order), drawn from a different seed, duplicates skipped."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"need at least one training problem, got n={n!r}")
    held = _held_out_graphs()
    out: list[Problem] = []
    extra = 0
    while len(out) < n:
        want = n - len(out) + extra
        batch = graph_problems(len(out) + want, hops=(min_hops, max_hops), seed=seed)[len(out) :]
        out.extend(p for p in batch if p.question not in held and graph_key(p) not in held)
        out = out[:n]
        extra += 64
        if extra > 64 * 100:  # pragma: no cover - the problem space is far larger
            raise InputError("could not draw enough training graphs outside the held-out sets")
    return out


@dataclass
class ArithData(TrainConfig):
    """The training-data options every latent recipe shares: `task` "arith" (the default)
    or "graph"; for "arith", `n_train` problems with
    `min_reasoning_steps..max_reasoning_steps` steps of `digits`-digit operands, for
    "graph", `n_train` ProsQA-style questions with `min_hops..max_hops`-step paths (never a
    held-out eval question or graph). `eval_set_names()` are the task's held-out sets."""

    n_train: int = 4000
    min_reasoning_steps: int = 1
    max_reasoning_steps: int = 4
    digits: int = 1
    task: str = "arith"
    min_hops: int = 2
    max_hops: int = 5

    def validate(self) -> None:
        super().validate()
        check_task(self.task)
        if not 1 <= self.min_hops <= self.max_hops <= GRAPH_MAX_HOPS:
            raise InputError(f"need 1 <= min_hops <= max_hops <= {GRAPH_MAX_HOPS}, got {self.min_hops}, {self.max_hops}")
        if not 1 <= self.min_reasoning_steps <= self.max_reasoning_steps <= 8:
            raise InputError(f"need 1 <= min_reasoning_steps <= max_reasoning_steps <= 8, got {self.min_reasoning_steps}, {self.max_reasoning_steps}")
        if isinstance(self.n_train, bool) or not isinstance(self.n_train, int) or self.n_train < 1:
            raise InputError(f"n_train must be an integer >= 1, got {self.n_train!r}")
        if self.digits not in (1, 2, 3):
            raise InputError(f"digits must be 1, 2 or 3, got {self.digits!r}")

    def problems(self, seed: int) -> list[Problem]:
        if self.task == "graph":
            return training_graph_problems(self.n_train, self.min_hops, self.max_hops, seed=seed)
        return training_problems(self.n_train, self.min_reasoning_steps, self.max_reasoning_steps, self.digits, seed=seed)

    def eval_set_names(self) -> list[str]:
        return eval_set_names(self.task)


# --------------------------------------------------------------------------- encoding


@dataclass
class Encoded:
    """One problem as token ids (full-vocabulary ids)."""

    problem: Problem
    prompt: list[int]  # chat prompt with thinking on (ends with "<think>\n")
    steps: list[list[int]]  # one id list per reasoning step line ("a + b = c\n")
    suffix: list[int]  # "</think>\n\n#### ans<|im_end|>" ("#### ans<end>" for a model without </think>)
    prompt_direct: list[int]  # chat prompt with thinking off (ends with an empty think block)
    answer: list[int]  # "#### ans<|im_end|>" (ans: the number, or the graph task's concept name)

    def cot(self) -> tuple[list[int], int]:
        """(ids, n_prompt): prompt + all steps + suffix."""
        ids = list(self.prompt)
        for s in self.steps:
            ids += s
        return ids + self.suffix, len(self.prompt)

    def direct(self) -> tuple[list[int], int]:
        return self.prompt_direct + self.answer, len(self.prompt_direct)


def encode_problems(tokenizer: Any, problems: Sequence[Problem]) -> list[Encoded]:
    """Tokenize problems in the layout described in the module docstring (batched: fast)."""
    from ..inputs import chat_text
    from ..latent.eval import prompt_for
    from ..tasks import _fmt_number

    if not problems:
        return []
    from ..latent.policies import token_id

    thinking = token_id(tokenizer, "</think>") is not None
    end = "<|im_end|>" if token_id(tokenizer, "<|im_end|>") is not None else tokenizer.eos_token
    # a model without </think> (no thinking block): the chain follows the prompt directly
    p_think = [chat_text(tokenizer, prompt_for(p, "cot"), enable_thinking=True if thinking else None) for p in problems]
    p_direct = [chat_text(tokenizer, prompt_for(p, "no_think"), enable_thinking=False if thinking else None) for p in problems]
    step_lines = [s + "\n" for p in problems for s in p.steps]
    answers = [f"#### {_fmt_number(p.answer)}{end}" for p in problems]
    enc = lambda texts: tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []  # noqa: E731
    ids_think, ids_direct, ids_steps, ids_ans = enc(p_think), enc(p_direct), enc(step_lines), enc(answers)
    close_nl = enc(["</think>\n\n"])[0] if thinking else []
    out, k = [], 0
    for i, p in enumerate(problems):
        steps = ids_steps[k : k + len(p.steps)]
        k += len(p.steps)
        out.append(Encoded(p, ids_think[i], steps, close_nl + ids_ans[i], ids_direct[i], ids_ans[i]))
    return out


# --------------------------------------------------------------------------- batching


def pad_right(rows: Sequence[Sequence[int]], pad: int = 0) -> tuple[Tensor, Tensor]:
    """[B, T] ids padded on the right, and the [B, T] validity mask (T >= 1 even when every
    row is empty, so a forward over them still has a position)."""
    T = max(max(len(r) for r in rows), 1)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = True
    return ids, mask


def restricted_ce(hidden: Tensor, targets: Tensor, weight: Tensor, n_zero: int = 0) -> Tensor:
    """Mean next-token cross-entropy of `hidden` [N, d] against `targets` [N] (indices into
    the rows of `weight` [U, d]) when the model's full vocabulary is `weight`'s rows plus
    `n_zero` rows that are exactly zero (their logits are 0): the exact full-vocabulary
    loss at the cost of U logits. n_zero=0 is the ordinary loss over `weight`."""
    with torch.autocast(device_type=hidden.device.type, enabled=False):  # the loss in float32 under a bf16 autocast too
        logits = hidden.float() @ weight.float().t()
        return (_full_logsumexp(logits, n_zero) - logits.gather(-1, targets[:, None])[:, 0]).mean()


def _full_logsumexp(logits: Tensor, n_zero: int) -> Tensor:
    """[N] logsumexp over `logits` [N, U] plus `n_zero` more logits that are exactly 0."""
    if n_zero <= 0:
        return torch.logsumexp(logits, dim=-1)
    zero = torch.full_like(logits[:, :1], math.log(n_zero))
    return torch.logsumexp(torch.cat([logits, zero], dim=-1), dim=-1)


class VocabView:
    """The output vocabulary a loss runs over: the whole unembedding, or (for a tied model
    whose unused rows are exactly zero, like the micro model) only the non-zero rows plus
    the zero rows' exact contribution. `ce(hidden, full_ids)` is the full-vocabulary
    cross-entropy either way (equal to `F.cross_entropy(hidden @ W.T, ids)`, tested)."""

    def __init__(self, hf: Any, restrict: bool | str = "auto"):
        self.hf = hf
        W = hf.get_output_embeddings().weight
        self.V = int(W.shape[0])
        self.ids: Tensor | None = None
        if restrict:
            nz = (W.detach() != 0).any(dim=-1)
            tied = W is hf.get_input_embeddings().weight
            bias = getattr(hf.get_output_embeddings(), "bias", None)
            if tied and bias is None and int(nz.sum()) < self.V:
                self.ids = nz.nonzero()[:, 0]
            elif restrict is True:
                raise InputError("a restricted vocabulary needs tied embeddings, no output bias and some all-zero rows")
        if self.ids is not None:
            self.lookup = torch.full((self.V,), -1, dtype=torch.long)
            self.lookup[self.ids] = torch.arange(len(self.ids))

    @property
    def size(self) -> int:
        return self.V if self.ids is None else int(len(self.ids))

    def ce(self, hidden: Tensor, targets: Tensor) -> Tensor:
        W = self.hf.get_output_embeddings().weight
        if self.ids is None:
            return restricted_ce(hidden, targets.to(W.device), W, 0)
        local = self.lookup[targets.cpu()]
        if bool((local < 0).any()):
            bad = targets.cpu()[local < 0][:5].tolist()
            raise InputError(f"target token(s) {bad} have all-zero unembedding rows; the restricted loss cannot score them")
        return restricted_ce(hidden, local.to(W.device), W[self.ids.to(W.device)], self.V - len(self.ids))

    def logprob(self, hidden: Tensor, token: int) -> Tensor:
        """[N] full-vocabulary log-probability of `token` at each row of `hidden` [N, d]."""
        W = self.hf.get_output_embeddings().weight
        if self.ids is None:
            return torch.log_softmax(hidden.float() @ W.float().t(), -1)[:, token]
        j = int(self.lookup[token])
        if j < 0:
            raise InputError(f"token {token} has an all-zero unembedding row")
        logits = hidden.float() @ W[self.ids.to(W.device)].float().t()
        return logits[:, j] - _full_logsumexp(logits, self.V - len(self.ids))


__all__ = ["ArithData", "TASKS", "EVAL_SETS", "GRAPH_EVAL_SETS", "check_task", "eval_set_names", "eval_sets_for", "eval_problems",
           "training_problems", "training_graph_problems", "Encoded", "encode_problems", "pad_right", "restricted_ce", "VocabView"]

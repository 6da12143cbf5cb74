"""Applying steering vectors: scoped edits, steered generation and its side-effect report.

Steering goes through the ONE generation loop (`workbench.generate`): a `SteeringVector`
(or `vec.steer(scale, where, layers)` / `vec.ablate(...)`) passed as `steer=[...]` becomes
`AddVector` / `Ablate` edits installed as forward hooks for the duration of the call and
removed in `finally`. This module adds what a researcher wants next to a steered run:

* `check_compatible(vec, bench)`: refuse a vector made for another width / family / depth;
* `next_token_logits`: the next-token distribution after each prompt, steered or not;
* `side_effect_kl` / `steer_report`: KL(unsteered || steered) of next-token distributions on
  neutral prompts (the side-effect measure of refusal-direction work), and optionally the
  log-probability of concept words, steered vs unsteered;
* `steered_generate`: a steered generation plus that report in one call.

For these measurements the edits act on every prompt position (an edit restricted to
generated positions would not change the first next-token distribution at all), so a
`where="generated"` operator is measured as if it acted on the prompt as well.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from ..errors import InputError
from .metrics import kl_divergence
from .vector import SteeringVector

NEUTRAL_PROMPTS = (
    "Tell me about your day.",
    "The weather today is",
    "Here is a short story about a train journey:",
    "Describe the city you live in.",
    "My plan for tomorrow is",
    "What do you think about the new library?",
    "Yesterday I went to the market and",
    "Write a few sentences about the sea.",
)


# --------------------------------------------------------------------------- checks


def check_compatible(vec: SteeringVector, bench: Any) -> SteeringVector:
    """Raise InputError (a ValueError) unless ``vec`` fits ``bench`` (d_model, family, layer range)."""
    a = bench.arch
    if vec.d_model != a.d_model:
        raise InputError(
            f"steering vector has d_model={vec.d_model} (made for {vec.model_name or vec.model_family!r}), "
            f"but {bench.name!r} has d_model={a.d_model}"
        )
    if vec.model_family != a.family:
        raise InputError(
            f"steering vector was made for model family {vec.model_family!r}, but {bench.name!r} is {a.family!r}"
        )
    bad = [layer for layer in vec.layers if layer >= a.n_layers]
    if bad:
        raise InputError(f"steering vector has layers {bad}; {bench.name!r} has layers 0..{a.n_layers - 1}")
    return vec


def load_vector(path: Any, bench: Any | None = None) -> SteeringVector:
    """Read a steering vector (safetensors from ``save`` or a GGUF control vector, told
    apart by content); with ``bench``, refuse one made for another model.

    Refusals (all name the file): MissingFileError, FileFormatError (a folder, an empty,
    truncated or corrupt file, a pickle, a model GGUF, bad metadata), InputError (made
    for another model)."""
    import os

    from .._fileformat import check_file

    p = check_file(path, "steering vector")
    with open(p, "rb") as f:
        head = f.read(4)
    if head == b"GGUF":
        vec = SteeringVector.from_gguf(
            p,
            expect_d_model=None if bench is None else bench.arch.d_model,
            expect_family=None if bench is None else bench.arch.family,
        )
    else:
        vec = SteeringVector.load(
            p,
            expect_d_model=None if bench is None else bench.arch.d_model,
            expect_family=None if bench is None else bench.arch.family,
        )
    if bench is not None:
        try:
            check_compatible(vec, bench)
        except InputError as err:
            raise InputError(f"{os.fspath(p)}: {err}") from None
    return vec


def as_edits(steer: Any, bench: Any | None = None) -> list:
    """Steering specs (vectors, `Steer` operators, edits, or a list of them) -> edits,
    checked against ``bench`` when given."""
    from ..edits import validate_edits
    from ..generate import edits_from_steer

    items = steer if isinstance(steer, (list, tuple)) else [steer]
    if bench is not None:
        for s in items:
            vec = s if isinstance(s, SteeringVector) else getattr(s, "vector", None)
            if isinstance(vec, SteeringVector):
                check_compatible(vec, bench)
    edits = edits_from_steer(list(items))
    if bench is not None:
        validate_edits(edits, bench.arch.n_layers, bench.arch.d_model)
    return edits


@contextmanager
def steering(bench: Any, steer: Any, phase: str = "prompt") -> Iterator[Any]:
    """``with steering(bench, [vec]): bench.hf(...)`` — edits installed as hooks on the
    transformers model for the block, removed afterwards (also on exceptions)."""
    from ..edits import apply_edits

    with apply_edits(bench.hf, as_edits(steer, bench), phase) as scope:
        yield scope


# --------------------------------------------------------------------------- measurements


def _on_prompt(edits: Sequence[Any]) -> list:
    return [dataclasses.replace(e, where="all") if getattr(e, "where", "all") != "all" else e for e in edits]


def next_token_logits(
    bench: Any, prompts: str | Sequence[str], steer: Any = None, *, chat: bool = False, batch_size: int = 16
) -> Tensor:
    """Float32 ``[n_prompts, vocab]`` logits of the next token after each prompt, with the
    steering (if any) acting on every prompt position. One batched trace per chunk."""
    from ..trace import capture

    edits = _on_prompt(as_edits(steer, bench)) if steer is not None else []
    acts = capture(bench, prompts, [0], "last", chat=chat, edits=edits, batch_size=batch_size, want_logits=True)
    return acts.logits


def concept_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """First token id of each word (encoded without special tokens), de-duplicated, sorted."""
    if not words:
        raise InputError("concept_words is empty; give at least one word")
    ids = set()
    for w in words:
        toks = tokenizer(w, add_special_tokens=False)["input_ids"]
        if not toks:
            raise InputError(f"concept word {w!r} encodes to no tokens")
        ids.add(int(toks[0]))
    return sorted(ids)


def concept_logprob(logits: Tensor, token_ids: Sequence[int]) -> Tensor:
    """``[n]`` log of the total next-token probability of ``token_ids`` (logsumexp of the
    log-softmax over those ids), float64."""
    lp = torch.log_softmax(logits.double(), dim=-1)
    return torch.logsumexp(lp[:, list(token_ids)], dim=-1)


@dataclass
class SteerReport:
    """Side effects of one steering setting on neutral prompts.

    kl: mean over prompts of KL(unsteered || steered) next-token distributions, nats.
    kl_per_prompt: [n_prompts] the same per prompt.
    concept_logprob / concept_logprob_base: mean log P(concept words) as the next token,
        steered / unsteered (None without concept words); ``concept_shift`` their difference.
    """

    kl: float
    kl_per_prompt: list[float]
    n_prompts: int
    concept_logprob: float | None = None
    concept_logprob_base: float | None = None
    meta: dict = field(default_factory=dict)

    @property
    def concept_shift(self) -> float | None:
        if self.concept_logprob is None or self.concept_logprob_base is None:
            return None
        return self.concept_logprob - self.concept_logprob_base

    def summary(self) -> str:
        s = f"KL(unsteered || steered) on {self.n_prompts} neutral prompts: {self.kl:.4f} nats"
        if self.concept_shift is not None:
            s += (
                f"; concept log-prob {self.concept_logprob_base:.3f} -> {self.concept_logprob:.3f} "
                f"({self.concept_shift:+.3f})"
            )
        return s

    def to_dict(self) -> dict:
        return {
            "kl": self.kl,
            "kl_per_prompt": self.kl_per_prompt,
            "n_prompts": self.n_prompts,
            "concept_logprob": self.concept_logprob,
            "concept_logprob_base": self.concept_logprob_base,
            "concept_shift": self.concept_shift,
            **self.meta,
        }


def steer_report(
    bench: Any,
    steer: Any,
    prompts: Sequence[str] | None = None,
    *,
    concept_words: Sequence[str] | None = None,
    chat: bool = False,
    batch_size: int = 16,
    base_logits: Tensor | None = None,
) -> SteerReport:
    """KL of steered vs unsteered next-token distributions on ``prompts`` (default:
    ``NEUTRAL_PROMPTS``), and the concept words' log-probability shift when given.
    ``base_logits`` reuses an unsteered pass over the same prompts."""
    prompts = list(NEUTRAL_PROMPTS if prompts is None else prompts)
    base = next_token_logits(bench, prompts, None, chat=chat, batch_size=batch_size) if base_logits is None else base_logits
    if base.shape[0] != len(prompts):
        raise InputError(f"base_logits has {base.shape[0]} rows for {len(prompts)} prompts")
    steered = next_token_logits(bench, prompts, steer, chat=chat, batch_size=batch_size)
    per = [kl_divergence(base[i], steered[i]) for i in range(len(prompts))]
    rep = SteerReport(kl=float(sum(per) / len(per)), kl_per_prompt=per, n_prompts=len(prompts))
    if concept_words:
        ids = concept_token_ids(bench.tokenizer, concept_words)
        rep.concept_logprob = float(concept_logprob(steered, ids).mean())
        rep.concept_logprob_base = float(concept_logprob(base, ids).mean())
    return rep


def side_effect_kl(bench: Any, steer: Any, prompts: Sequence[str] | None = None, *, chat: bool = False) -> float:
    """Mean KL(unsteered || steered) of next-token distributions on neutral prompts, nats."""
    return steer_report(bench, steer, prompts, chat=chat).kl


@dataclass
class SteeredRun:
    """A steered generation (`GenerationResult`) and its side-effect `SteerReport`."""

    result: Any
    report: SteerReport

    @property
    def texts(self) -> list[str]:
        return self.result.texts


def steered_generate(
    bench: Any,
    prompts: str | Sequence[str],
    steer: Any,
    *,
    kl_prompts: Sequence[str] | None = None,
    concept_words: Sequence[str] | None = None,
    **generate_kwargs: Any,
) -> SteeredRun:
    """Generate with ``steer`` through the one loop (`generate_full`), and report the KL
    side effect on ``kl_prompts`` (default: ``NEUTRAL_PROMPTS``)."""
    from ..generate import generate_full

    if "steer" in generate_kwargs:
        raise InputError("pass the steering as the `steer` argument only once")
    as_edits(steer, bench)  # refuse a bad vector before generating anything
    result = generate_full(bench, prompts, steer=steer, **generate_kwargs)
    report = steer_report(bench, steer, kl_prompts, concept_words=concept_words)
    return SteeredRun(result, report)


def compare_stream(bench: Any, prompt: str, steer: Any, **generate_kwargs: Any) -> Iterator[tuple[str, str]]:
    """The unsteered and the steered continuation of `prompt`, side by side: one batched
    generation through the one loop (row 0 plain, row 1 with `steer` via `edits.only_rows`),
    yielding `(unsteered_text, steered_text)` after every step, end-of-turn tokens left out.
    `generate_kwargs` go to `generate_stream` (max_new_tokens, temperature, seed, chat ...);
    with sampling, the two rows draw from one generator, so they differ from two separate
    runs with the same seed. The web app streams it; `workbench steer generate --compare`
    prints its last texts."""
    from ..edits import only_rows
    from ..generate import generate_stream, stop_token_ids

    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("the prompt is empty")
    for k in ("steer", "edits"):
        if k in generate_kwargs:
            raise InputError(f"compare_stream takes the steering as its `steer` argument, not {k}=")
    edits = only_rows(as_edits(steer, bench), [False, True])  # refuses a vector made for another model
    stops = stop_token_ids(bench.tokenizer, bench.hf)
    ids: list[list[int]] = [[], []]
    for step in generate_stream(bench, [prompt, prompt], edits=edits, **generate_kwargs):
        for i in range(2):
            t = int(step.tokens[i])
            if t >= 0 and t not in stops:
                ids[i].append(t)
        yield bench.tokenizer.decode(ids[0]), bench.tokenizer.decode(ids[1])


__all__ = [
    "NEUTRAL_PROMPTS",
    "check_compatible",
    "load_vector",
    "as_edits",
    "steering",
    "next_token_logits",
    "concept_token_ids",
    "concept_logprob",
    "SteerReport",
    "steer_report",
    "side_effect_kl",
    "SteeredRun",
    "steered_generate",
    "compare_stream",
]

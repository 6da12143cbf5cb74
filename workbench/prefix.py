"""Random-prefix perturbation: k random vectors at token-embedding scale, prepended to the
prompt as input embeddings.

A prefix of a few random embedding-scale vectors gives attention heads somewhere new to
park their "no-op" attention (the sink), which can knock a model out of a locked-in
reasoning path. `RandomPrefix` implements the `Prefix` protocol of the one generation loop
(`workbench.generate(..., prefix=RandomPrefix(...))`), and `prefixed_batch` / `capture`
feed the same vectors through an nnsight trace as `inputs_embeds`.

`evaluate_prefix` measures whether a prefix helps on a task: accuracy per prefix seed,
mean accuracy and oracle coverage (solved by at least one seed), next to the no-prefix
greedy baseline and to N sampled (temperature > 0) generations without a prefix, so a
prefix has to beat plain sampling to count as useful.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from .errors import InputError, check_choice
from .inputs import check_integer, check_number

PLACEMENTS = ("start", "after_bos")


@dataclass(frozen=True)
class RandomPrefix:
    """`n` gaussian vectors, each rescaled so its RMS over the d_model coordinates equals
    exactly `scale * bench.arch.embed_rms` (the RMS of the token-embedding matrix), drawn
    from a CPU generator seeded with `seed` (the same seed gives the same vectors on any
    device). `placement`: "start" puts them before every token, "after_bos" after the first
    token (the BOS / chat-start token stays first)."""

    n: int = 2
    seed: int = 0
    scale: float = 1.0
    placement: str = "start"

    def __post_init__(self) -> None:
        try:
            n = check_integer(self.n, "prefix length n", low=1)
        except InputError:
            raise InputError(f"prefix length n must be a positive integer, got {self.n!r}") from None
        object.__setattr__(self, "n", n)
        from .generate import check_seed

        object.__setattr__(self, "seed", check_seed(self.seed, "prefix seed", allow_none=False))
        try:
            scale = check_number(self.scale, "prefix scale", "a finite positive number", low=0.0, low_open=True)
        except InputError:
            raise InputError(f"prefix scale must be a finite positive number, got {self.scale!r}") from None
        object.__setattr__(self, "scale", scale)
        check_choice(self.placement, "prefix placement", PLACEMENTS)

    def vectors(self, d_model: int, embed_rms: float) -> Tensor:
        """The prefix as float32 [n, d_model] on the CPU."""
        d_model = check_integer(d_model, "d_model", low=1)
        if not math.isfinite(float(embed_rms)) or embed_rms <= 0:
            raise InputError(
                f"the model's embedding RMS is {embed_rms!r}; a random prefix needs real (not meta) embedding weights"
            )
        g = torch.Generator().manual_seed(int(self.seed))
        x = torch.randn(self.n, int(d_model), generator=g, dtype=torch.float64)
        x = x / x.pow(2).mean(dim=-1, keepdim=True).sqrt() * (float(self.scale) * float(embed_rms))
        return x.float()

    def embeddings(self, bench: Any, batch_size: int) -> Tensor:
        """`Prefix` protocol: [n, d_model] in the model's dtype and device, the same vectors
        for every row of the batch."""
        emb = bench.hf.get_input_embeddings().weight
        ctx = bench.arch.max_positions
        if ctx and self.n >= ctx:  # refused before n x d_model numbers are drawn
            raise InputError(f"prefix length n={self.n} does not fit the model's context of {ctx} positions with a prompt; valid: 1..{ctx - 1}")
        self.check_scale(bench.arch.d_model, bench.arch.embed_rms)
        return self.vectors(bench.arch.d_model, bench.arch.embed_rms).to(device=emb.device, dtype=emb.dtype)

    def check_scale(self, d_model: int, embed_rms: float) -> None:
        """Refuse a scale whose vectors' squared norm overflows float32: the model's RMS
        norms (computed in float32) would turn them into zeros, silently."""
        limit = math.sqrt(torch.finfo(torch.float32).max / max(int(d_model), 1)) / float(embed_rms) * 0.5
        if math.isfinite(limit) and self.scale > limit:
            raise InputError(
                f"prefix scale {self.scale:g} is too large for this model: the squared norm of its vectors would overflow "
                f"float32 and the model's norms would zero them; valid: a finite number in (0, {limit:.3g}]"
            )

    def positions(self) -> tuple[int, ...]:
        """Sequence positions the prefix occupies in a prefixed prompt."""
        start = 1 if self.placement == "after_bos" else 0
        return tuple(range(start, start + self.n))

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- traces


@dataclass
class EmbedsBatch:
    """A prefixed batch for a trace: inputs_embeds [batch, seq, d_model], attention_mask and
    position_ids [batch, seq] (left padded), lengths [batch] real positions per row (prefix
    included). Duck-types `workbench.inputs.Batch` for `trace.trace_batch`."""

    inputs_embeds: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    lengths: Tensor

    def to(self, device) -> "EmbedsBatch":
        return EmbedsBatch(*(t.to(device) for t in (self.inputs_embeds, self.attention_mask, self.position_ids, self.lengths)))

    def model_kwargs(self) -> dict:
        return {"inputs_embeds": self.inputs_embeds, "attention_mask": self.attention_mask, "position_ids": self.position_ids}


def prefixed_batch(bench: Any, prompts: str | Sequence[str], prefix: RandomPrefix | None, *, chat: bool = False) -> EmbedsBatch:
    """Prompts tokenised as `capture` does, embedded, with the prefix inserted exactly as the
    generation loop inserts it (`generate.prefill_embeddings`)."""
    from .generate import prefill_embeddings
    from .inputs import as_prompt_list, check_context, positions_from_mask, token_ids

    from .inputs import check_bool

    if prefix is not None and not isinstance(prefix, RandomPrefix) and not callable(getattr(prefix, "embeddings", None)):
        raise InputError(f"prefix must be a RandomPrefix or None, got {type(prefix).__name__} {prefix!r:.60}")
    check_bool(chat, "chat")
    rows = token_ids(bench.tokenizer, as_prompt_list(prompts), chat=chat)
    with torch.no_grad():
        embeds, mask = prefill_embeddings(bench, rows, prefix)
    for i, r in enumerate(rows):
        check_context(int(mask[i].sum()), bench.arch.max_positions, f"prompt {i} with prefix")
    return EmbedsBatch(embeds, mask, positions_from_mask(mask), mask.sum(-1))


def capture(
    bench: Any,
    prompts: str | Sequence[str],
    prefix: RandomPrefix | None,
    layers: int | Sequence[int] | None = None,
    positions: str | int | slice = "last",
    *,
    chat: bool = False,
    edits: Sequence[Any] = (),
    want_logits: bool = False,
):
    """Residuals at `layers` for prefixed prompts, through the one trace (`trace_batch`);
    the same `Activations` as `workbench.capture` (position indices count prefix positions)."""
    from .edits import validate_edits
    from .inputs import check_bool
    from .trace import Activations, _check_positions, check_layers, check_positions_fit, trace_batch

    layer_list = check_layers(bench, layers)
    positions = _check_positions(positions)
    check_bool(want_logits, "want_logits")
    validate_edits(edits, bench.arch.n_layers, bench.arch.d_model)
    batch = prefixed_batch(bench, prompts, prefix, chat=chat)
    check_positions_fit(positions, batch.lengths.tolist())
    data, logits = trace_batch(bench, batch, layer_list, positions, edits, want_logits)
    return Activations(
        data=data,
        positions=positions,
        token_ids=torch.empty(0, dtype=torch.long),
        mask=batch.attention_mask.cpu(),
        lengths=batch.lengths.cpu(),
        logits=logits,
        meta={"prefix": prefix.to_dict() if prefix is not None else None},
    )


# --------------------------------------------------------------------------- evaluation


@dataclass
class PrefixEval:
    """Multi-seed evaluation of random prefixes on a task.

    seeds: prefix seeds; solved: [n_seeds, n_problems] bool, problem solved with that seed;
    per_seed_accuracy: [n_seeds]; mean_accuracy; oracle_coverage: fraction of problems solved
    by at least one seed. baseline_solved: [n_problems] greedy without prefix;
    sampled_solved: [n_samples, n_problems] temperature sampling without prefix (sampling
    seeds 0..n_samples-1), with its own per-run accuracy, mean and coverage.
    """

    problem_ids: list[str]
    seeds: list[int]
    solved: Tensor
    baseline_solved: Tensor
    sampled_solved: Tensor
    config: dict = field(default_factory=dict)
    attempts: dict = field(default_factory=dict)  # "baseline" / "prefix:<seed>" / "sample:<i>" -> list[Attempt]

    def __post_init__(self) -> None:
        P = len(self.problem_ids)
        if tuple(self.solved.shape) != (len(self.seeds), P):
            raise InputError(f"solved has shape {tuple(self.solved.shape)}, expected ({len(self.seeds)}, {P})")
        if tuple(self.baseline_solved.shape) != (P,):
            raise InputError(f"baseline_solved has shape {tuple(self.baseline_solved.shape)}, expected ({P},)")
        if self.sampled_solved.ndim != 2 or self.sampled_solved.shape[1] != P:
            raise InputError(f"sampled_solved has shape {tuple(self.sampled_solved.shape)}, expected (n_samples, {P})")

    @property
    def per_seed_accuracy(self) -> list[float]:
        return self.solved.float().mean(1).tolist()

    @property
    def mean_accuracy(self) -> float:
        return float(self.solved.float().mean())

    @property
    def oracle_coverage(self) -> float:
        return float(self.solved.any(0).float().mean())

    @property
    def baseline_accuracy(self) -> float:
        return float(self.baseline_solved.float().mean())

    @property
    def sampled_accuracy(self) -> list[float]:
        return self.sampled_solved.float().mean(1).tolist()

    @property
    def sampled_mean_accuracy(self) -> float:
        return float(self.sampled_solved.float().mean()) if self.sampled_solved.numel() else float("nan")

    @property
    def sampled_coverage(self) -> float:
        return float(self.sampled_solved.any(0).float().mean()) if self.sampled_solved.numel() else float("nan")

    def summary(self) -> dict:
        return {
            "n_problems": len(self.problem_ids),
            "seeds": self.seeds,
            "per_seed_accuracy": self.per_seed_accuracy,
            "mean_accuracy": self.mean_accuracy,
            "oracle_coverage": self.oracle_coverage,
            "baseline_accuracy": self.baseline_accuracy,
            "n_samples": int(self.sampled_solved.shape[0]),
            "sampled_accuracy": self.sampled_accuracy,
            "sampled_mean_accuracy": self.sampled_mean_accuracy,
            "sampled_coverage": self.sampled_coverage,
            **{f"config.{k}": v for k, v in self.config.items()},
        }


def evaluate_prefix(
    bench: Any,
    problems: Sequence[Any],
    *,
    seeds: Sequence[int] = (0, 1, 2, 3),
    n_samples: int | None = None,
    n: int = 2,
    scale: float = 1.0,
    placement: str = "start",
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    chat: bool = True,
    progress: bool = False,
    **generate_kwargs: Any,
) -> PrefixEval:
    """Greedy generation with one `RandomPrefix(n, seed, scale, placement)` per seed, against
    the greedy no-prefix baseline and `n_samples` (default: as many as seeds) sampled runs
    without a prefix at `temperature` / `top_p` (sampling seed i for run i)."""
    from .evaluate import solve

    from .generate import check_seed, check_truncation
    from .inputs import check_bool

    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise InputError(f"seeds must be a list of integer prefix seeds, got {seeds!r}")
    seeds = [check_seed(s, f"seeds[{i}]", allow_none=False) for i, s in enumerate(seeds)]
    if not seeds:
        raise InputError("seeds is empty: give at least one prefix seed")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"seeds must be distinct, got {seeds}")
    n_samples = len(seeds) if n_samples is None else check_integer(n_samples, "n_samples", low=0)
    temperature = check_number(temperature, "temperature", "a finite number >= 0", low=0.0)
    if n_samples and not temperature > 0:
        raise InputError(f"sampled runs need a temperature > 0, got {temperature!r} (or n_samples=0)")
    check_truncation(temperature, 0, top_p, 0.0)
    check_integer(max_new_tokens, "max_new_tokens", low=1)
    check_integer(batch_size, "batch_size", low=1)
    check_bool(chat, "chat")
    prefixes = [RandomPrefix(n=n, seed=s, scale=scale, placement=placement) for s in seeds]  # validates first
    if isinstance(problems, (str, bytes)) or not hasattr(problems, "__iter__"):
        raise InputError(f"problems must be a list of tasks.Problem, got {type(problems).__name__}")
    problems = list(problems)
    if not problems:
        raise InputError("problems is empty")
    kw = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, chat=chat, **generate_kwargs)

    def run(label: str, **extra):
        return solve(bench, problems, progress=progress, desc=label, **kw, **extra)

    attempts = {"baseline": run("baseline", temperature=0.0)}
    for p in prefixes:
        attempts[f"prefix:{p.seed}"] = run(f"prefix seed {p.seed}", temperature=0.0, prefix=p)
    for i in range(n_samples):
        attempts[f"sample:{i}"] = run(f"sample {i}", temperature=float(temperature), top_p=top_p, seed=i)

    def solved(key: str) -> Tensor:
        return torch.tensor([a.correct for a in attempts[key]], dtype=torch.bool)

    P = len(problems)
    return PrefixEval(
        problem_ids=[a.problem_id for a in attempts["baseline"]],
        seeds=seeds,
        solved=torch.stack([solved(f"prefix:{s}") for s in seeds]),
        baseline_solved=solved("baseline"),
        sampled_solved=torch.stack([solved(f"sample:{i}") for i in range(n_samples)]) if n_samples else torch.zeros(0, P, dtype=torch.bool),
        config={
            "model": getattr(bench, "name", "?"),
            "n": n,
            "scale": float(scale),
            "placement": placement,
            "temperature": float(temperature),
            "top_p": float(top_p),
            "max_new_tokens": max_new_tokens,
            "chat": chat,
        },
        attempts=attempts,
    )

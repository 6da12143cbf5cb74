"""Attention sinks: metrics (pure functions over attention tensors) and a bounded-memory
capture.

Metrics (Gu et al., "When Attention Sink Emerges in Language Models"): for a head's
attention matrix A [T, T] (row t = query, column j = key, causal), the sink score of key
position j is

    alpha_j = mean over queries t >= j of A[t, j]

and the sink rate is the share of heads with alpha_0 > eps (eps = 0.3 by default). We also
report the attention mass on the first k keys (from the queries t >= k that can see all k of
them) and massive activations: the norm of a position's residual relative to the median
token's, per layer.

Capture (`inspect`): only softmax-attention blocks have attention weights (Qwen3.5's Gated
DeltaNet blocks have none; they are reported as NaN, never zeros). Materialising every
layer's [heads, T, T] matrix costs n_layers * heads * T^2 floats (64 x 24 x 4k^2 x 4 bytes
= 100 GB for Qwen3.5-27B at 4k tokens), so `inspect` never does: it swaps in, for the
duration of one forward, an attention function registered with transformers'
`AttentionInterface`. The model's own attention modules call it with their own q/k/v
(after their own projections, q/k norms and rotary embedding, whatever the architecture),
and it computes softmax(q k^T * scaling + mask) in query chunks, adds the first k columns
into per-head accumulators, multiplies the chunk by v for the block's output, and drops the
chunk. Peak extra memory is one chunk (default <= 64 MiB), independent of the number of
layers; the forward's output is the eager-attention output. This route was chosen over
re-deriving q/k in a hook (which would re-implement each family's norms, gates and rotary
variants) and over eager attention per layer (T^2 per layer even when reduced at once).
Prompts run one at a time (no padding, so the causal mask is exact).

`attention_patterns` is the expensive reference route (eager attention, every layer's full
matrix kept); it refuses prompts whose matrices would not fit in memory.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from .errors import InputError, NonFiniteError
from .inputs import check_integer, check_number
from .memory import available_memory

DEFAULT_EPS = 0.3
ATTN_IMPL = "workbench_sinks"
CHUNK_BYTES = 64 * 2**20


# --------------------------------------------------------------------------- pure metrics



def _forward_one(bench: Any, embeds: Tensor) -> None:
    """One uncached forward of a single unpadded prompt's embeddings [1, T, d] (the
    attention hooks and functions installed around it do the recording)."""
    from .generate import base_model

    T = embeds.shape[1]
    base_model(bench.hf)(
        inputs_embeds=embeds,
        attention_mask=torch.ones(1, T, dtype=torch.long, device=embeds.device),
        position_ids=torch.arange(T, device=embeds.device)[None],
        use_cache=False,
    )

def check_eps(eps: float) -> float:
    """eps as a float in the open interval (0, 1), or an InputError (NaN, bools and strings
    are refused)."""
    if isinstance(eps, bool) or isinstance(eps, str) or eps is None:
        raise InputError(f"eps must be a number in the open interval (0, 1), got {eps!r}")
    return check_number(eps, "eps", "a number in the open interval (0, 1)", low=0.0, high=1.0, low_open=True, high_open=True)


def _check_attn(A: Tensor) -> int:
    if not isinstance(A, Tensor):
        raise InputError(f"attention must be a tensor [..., T, T], got {type(A).__name__}")
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise InputError(f"attention must be [..., T, T] (square over queries x keys), got shape {tuple(A.shape)}")
    if A.shape[-1] == 0:
        raise InputError("attention is empty (T = 0)")
    return A.shape[-1]


def alpha(A: Tensor, key: int = 0) -> Tensor:
    """Gu et al.'s sink score of key position `key`: mean over queries t >= key of A[..., t, key].
    A: [..., T, T] -> [...]."""
    T = _check_attn(A)
    key = check_integer(key, "key position")
    if not 0 <= key < T:
        raise InputError(f"key position {key} is outside a sequence of {T} tokens; valid: 0..{T - 1}")
    return A[..., key:, key].float().mean(-1)


def alpha_keys(A: Tensor, k: int) -> Tensor:
    """alpha_j for key positions j = 0..k-1: [..., T, T] -> [..., k]."""
    T = _check_attn(A)
    k = check_integer(k, f"k (key positions, 1..{T})", low=1, high=T)
    return torch.stack([alpha(A, j) for j in range(k)], dim=-1)


def key_share(A: Tensor, k: int) -> Tensor:
    """Attention each of the first k keys receives, averaged over the queries t >= k (the
    ones that can see all k): [..., T, T] -> [..., k]. Sums to the mass on the first k keys."""
    T = _check_attn(A)
    k = check_integer(k, "k")
    if not 0 < k < T:
        raise InputError(f"k must be in [1, {T - 1}] for a sequence of {T} tokens, got {k}")
    return A[..., k:, :k].float().mean(-2)


def first_k_mass(A: Tensor, k: int) -> Tensor:
    """Attention mass on the first k keys, averaged over queries t >= k: [..., T, T] -> [...]."""
    return key_share(A, k).sum(-1)


def sink_rate(alpha0: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Share of heads (last dim) whose alpha_0 exceeds eps: [..., heads] -> [...]. A layer
    without softmax attention (alpha NaN) gives NaN."""
    eps = check_eps(eps)
    if not isinstance(alpha0, Tensor) or alpha0.ndim < 1:
        raise InputError(f"alpha0 must be a tensor [..., heads], got {type(alpha0).__name__}")
    rate = (alpha0 > eps).float().mean(-1)
    return torch.where(torch.isnan(alpha0).any(-1), torch.full_like(rate, float("nan")), rate)


def norm_ratio(hidden: Tensor, k: int = 1) -> Tensor:
    """Massive activations: L2 norm of the residual at positions 0..k-1 divided by the median
    norm over all positions. hidden: [..., T, d] -> [..., k]."""
    if not isinstance(hidden, Tensor) or hidden.ndim < 2:
        raise InputError(f"hidden must be a tensor [..., T, d], got {type(hidden).__name__}")
    T = hidden.shape[-2]
    k = check_integer(k, f"k (leading positions, 1..{T})", low=1, high=max(T, 1))
    norms = hidden.float().norm(dim=-1)
    med = norms.median(dim=-1, keepdim=True).values
    return norms[..., :k] / med


def nanmean(x: Tensor, dim: int | None = None) -> Tensor:
    return x.nanmean() if dim is None else x.nanmean(dim)


# --------------------------------------------------------------------------- report


@dataclass
class SinkReport:
    """Sink statistics for P prompts over the model's L blocks and H query heads.

    alpha: [P, L, H] Gu et al.'s alpha for key position 0; NaN for blocks without softmax
        attention (`layer_types[l] != "full_attention"`).
    alpha_keys: [P, L, H, k] alpha for key positions 0..k-1.
    key_share: [P, L, H, k] attention each of the first k keys gets from the queries t >= k.
    norm_ratio: [P, L, k] residual norm (block output) at positions 0..k-1 / median token norm.
    n_tokens: [P] sequence length (prefix included); tokens: the tokens as strings
        ("<prefix i>" for prefix vectors); prefix_positions: positions holding prefix vectors.
    """

    alpha: Tensor
    alpha_keys: Tensor
    key_share: Tensor
    norm_ratio: Tensor
    n_tokens: Tensor
    layer_types: tuple[str, ...]
    eps: float = DEFAULT_EPS
    k: int = 4
    prompts: list[str] = field(default_factory=list)
    tokens: list[list[str]] = field(default_factory=list)
    prefix_positions: tuple[int, ...] = ()
    model: str = ""
    k_requested: int | None = None  # the k asked for, when `inspect` raised it to cover a prefix

    def __post_init__(self) -> None:
        P, L, H = self.alpha.shape
        want = {
            "alpha_keys": (P, L, H, self.k),
            "key_share": (P, L, H, self.k),
            "norm_ratio": (P, L, self.k),
            "n_tokens": (P,),
        }
        for name, shape in want.items():
            if tuple(getattr(self, name).shape) != shape:
                raise InputError(f"SinkReport.{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}")
        if len(self.layer_types) != L:
            raise InputError(f"layer_types has {len(self.layer_types)} entries for {L} layers")
        check_eps(self.eps)

    @property
    def attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.layer_types) if t == "full_attention")

    @property
    def layer_sink_rate(self) -> Tensor:
        """[P, L] share of heads with alpha_0 > eps; NaN for layers without attention weights."""
        return sink_rate(self.alpha, self.eps)

    @property
    def sink_rate(self) -> Tensor:
        """[P] share of (attention layer, head) pairs with alpha_0 > eps (Gu et al.'s Sink_1^eps)."""
        return nanmean(self.layer_sink_rate, -1)

    @property
    def mean_sink_rate(self) -> float:
        return float(self.sink_rate.mean())

    @property
    def first_k_mass(self) -> Tensor:
        """[P, L, H] attention mass on the first k keys (queries t >= k)."""
        return self.key_share.sum(-1)

    def mass_on(self, positions: Sequence[int]) -> Tensor:
        """[P, L, H] attention mass on the given key positions (each < k), queries t >= k."""
        if isinstance(positions, (str, bytes)) or not hasattr(positions, "__iter__"):
            raise InputError(f"positions must be a list of key positions in 0..{self.k - 1}, got {positions!r}")
        positions = [check_integer(p, "key position") for p in positions]
        if not positions:
            raise InputError(f"positions is empty; give key positions in 0..{self.k - 1}")
        for p in positions:
            if not 0 <= p < self.k:
                raise InputError(f"position {p} is not tracked: this report tracks key positions 0..{self.k - 1}")
        return self.key_share[..., positions].sum(-1)

    @property
    def first_token_ratio(self) -> Tensor:
        """[P, L] norm of the first position's residual / median token norm."""
        return self.norm_ratio[..., 0]

    def summary(self) -> dict:
        att = list(self.attention_layers)
        return {
            "model": self.model,
            "n_prompts": int(self.alpha.shape[0]),
            "n_tokens": self.n_tokens.tolist(),
            "eps": self.eps,
            "attention_layers": att,
            "linear_layers": [i for i in range(len(self.layer_types)) if i not in att],
            "sink_rate": self.sink_rate.tolist(),
            "mean_alpha0_per_layer": nanmean(self.alpha, -1).mean(0).tolist(),
            "mean_first_k_mass": float(nanmean(self.first_k_mass)),
            "max_first_token_ratio": float(self.first_token_ratio.max()),
            "prefix_positions": list(self.prefix_positions),
            "k": self.k,
            "k_requested": self.k if self.k_requested is None else self.k_requested,
            **({"k_note": self.k_note} if self.k_note else {}),
        }

    @property
    def k_note(self) -> str:
        """Why k differs from the k asked for ("" when it does not)."""
        if self.k_requested is None or self.k_requested == self.k:
            return ""
        if self.prefix_positions:
            return (
                f"k raised from the requested {self.k_requested} to {self.k} to track the prefix at positions "
                f"{list(self.prefix_positions)} and the token after it"
            )
        return f"k raised from the requested {self.k_requested} to {self.k} to match the prefixed run it is compared with"

    def table(self) -> str:
        """Per-layer text table (means over prompts)."""
        rate = self.layer_sink_rate.mean(0)
        a0 = nanmean(self.alpha, -1).mean(0)
        mass = nanmean(self.first_k_mass, -1).mean(0)
        ratio = self.first_token_ratio.mean(0)
        lines = [f"{'layer':>5} {'type':>17} {'sink_rate':>9} {'alpha0':>7} {f'mass@{self.k}':>7} {'norm0/med':>9}"]
        for l, t in enumerate(self.layer_types):
            if t != "full_attention":
                lines.append(f"{l:>5} {t:>17} {'(no softmax attention)':>25} {float(ratio[l]):>9.2f}")
            else:
                lines.append(f"{l:>5} {t:>17} {float(rate[l]):>9.3f} {float(a0[l]):>7.3f} {float(mass[l]):>7.3f} {float(ratio[l]):>9.2f}")
        lines.append(f"sink rate (eps={self.eps}): {self.mean_sink_rate:.3f}")
        if self.k_note:
            lines.append(self.k_note)
        return "\n".join(lines)


# --------------------------------------------------------------------------- chunked attention


class _Recorder:
    """Per-forward accumulators, filled by `_sink_attention` (one prompt, batch 1)."""

    def __init__(self, k: int, layer_of: dict[int, int], chunk_bytes: int):
        self.k = k
        self.layer_of = layer_of
        self.chunk_bytes = chunk_bytes
        self.colsum: dict[int, Tensor] = {}  # layer -> [H, k] sum over queries of A[t, j]
        self.late: dict[int, Tensor] = {}  # layer -> [H, k] sum over queries t >= k of A[t, j]
        self.n_queries: dict[int, int] = {}


_STATE = threading.local()


def _sink_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention computed in query chunks; records first-k-column statistics into the
    active recorder. Same signature and return as transformers' `eager_attention_forward`
    (attn_output [b, T, H, d], weights None)."""
    rec: _Recorder | None = getattr(_STATE, "recorder", None)
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    B, H, Tq, _ = query.shape
    Tk = key.shape[2]
    offset = Tk - Tq  # absolute position of query 0 (non-zero with a cache)
    softcap = kwargs.get("softcap")
    K = rec.k if rec is not None else 0
    colsum = torch.zeros(B, H, K, dtype=torch.float32, device=query.device)
    late = torch.zeros(B, H, K, dtype=torch.float32, device=query.device)
    out = torch.empty(B, H, Tq, value.shape[-1], dtype=query.dtype, device=query.device)
    budget = rec.chunk_bytes if rec is not None else CHUNK_BYTES
    chunk = max(1, budget // max(1, 2 * B * H * Tk * 4))  # scores + float32 probs live at once
    kT = key.transpose(2, 3)
    keys = torch.arange(Tk, device=query.device)
    for s in range(0, Tq, chunk):
        e = min(Tq, s + chunk)
        sc = torch.matmul(query[:, :, s:e], kT).mul_(scaling)  # in place: one [B, H, c, Tk] buffer
        if softcap:
            sc = sc.div_(softcap).tanh_().mul_(softcap)
        if attention_mask is None:
            qpos = torch.arange(s + offset, e + offset, device=query.device)
            sc.masked_fill_(keys[None, :] > qpos[:, None], float("-inf"))
        elif attention_mask.dtype == torch.bool:
            sc.masked_fill_(~attention_mask[:, :, s:e, :Tk], float("-inf"))
        else:
            sc.add_(attention_mask[:, :, s:e, :Tk])
        p = torch.softmax(sc, dim=-1, dtype=torch.float32)
        del sc
        if K:
            colsum += p[..., :K].sum(2)
            first_late = max(s, K - offset)  # queries with absolute position >= K
            if first_late < e:
                late += p[:, :, first_late - s :, :K].sum(2)
        out[:, :, s:e] = torch.matmul(p.to(value.dtype), value)
        del p
    if rec is not None:
        layer = rec.layer_of.get(id(module), getattr(module, "layer_idx", None))
        if layer is None:
            raise RuntimeError(f"sink capture: cannot tell which layer {type(module).__name__} belongs to")
        rec.colsum[layer] = colsum[0].cpu()
        rec.late[layer] = late[0].cpu()
        rec.n_queries[layer] = Tq
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTN_IMPL, _sink_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPL, sdpa_mask)  # boolean mask or None (causal)


@contextmanager
def attention_implementation(hf: Any, name: str) -> Iterator[None]:
    """Switch `hf` to attention implementation `name` for the scope; restored in finally
    (also on exceptions). The model is shared: do not generate from another thread meanwhile."""
    before = hf.config._attn_implementation
    hf.set_attn_implementation(name)
    try:
        yield
    finally:
        hf.set_attn_implementation(before)


def _attention_modules(bench) -> dict[int, int]:
    """id(attention module) -> block index for the softmax-attention blocks."""
    from .arch import decoder_layers

    out = {}
    for l, block in enumerate(decoder_layers(bench.hf)):
        if bench.arch.layer_types[l] != "full_attention":
            continue
        attn = getattr(block, "self_attn", None) or getattr(block, "attn", None) or getattr(block, "attention", None)
        if attn is None:
            raise ValueError(f"block {l} is a full-attention block but has no self_attn module")
        out[id(attn)] = l
    return out


@contextmanager
def _residual_norms(bench, store: dict[int, Tensor]) -> Iterator[None]:
    """Forward hooks on every block: store[l] = L2 norm per position of the block output [T]."""
    from .arch import decoder_layers

    handles = []
    for l, block in enumerate(decoder_layers(bench.hf)):

        def hook(_m, _inp, out, l=l):
            h = out[0] if isinstance(out, tuple) else out
            store[l] = h[0].float().norm(dim=-1).cpu()

        handles.append(block.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _prompt_inputs(bench, prompt, *, chat: bool, prefix) -> tuple[Tensor, list[str], tuple[int, ...]]:
    """inputs_embeds [1, T, d], token strings, prefix positions for one prompt."""
    from .generate import prefill_embeddings
    from .inputs import check_context, token_ids

    from .generate import vocab_rows
    from .inputs import check_token_rows

    if isinstance(prompt, str):
        if not prompt:
            raise InputError("prompt is an empty string")
        ids = token_ids(bench.tokenizer, [prompt], chat=chat)[0]
    elif prompt is None or isinstance(prompt, (bytes, int, float)) or not hasattr(prompt, "__iter__"):
        raise InputError(f"a prompt must be a string or a list of token ids, got {type(prompt).__name__} {prompt!r:.60}")
    else:
        ids = check_token_rows([prompt], vocab_rows(bench))[0]
    if not ids:
        raise InputError("prompt tokenises to zero tokens")
    toks = [bench.tokenizer.decode([i]) for i in ids]
    ppos: tuple[int, ...] = ()
    if prefix is not None:
        if not callable(getattr(prefix, "embeddings", None)):
            raise InputError(f"prefix must be a RandomPrefix or None, got {type(prefix).__name__} {prefix!r:.60}")
        n = int(prefix.embeddings(bench, 1).shape[-2])
        start = 1 if getattr(prefix, "placement", "start") == "after_bos" else 0
        ppos = tuple(range(start, start + n))
        toks = toks[:start] + [f"<prefix {i}>" for i in range(n)] + toks[start:]
    with torch.no_grad():
        embeds, _mask = prefill_embeddings(bench, [ids], prefix)
    check_context(embeds.shape[1], bench.arch.max_positions, "prompt")
    return embeds, toks, ppos


def _as_list(prompts) -> list:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, Tensor):
        prompts = prompts.tolist() if not prompts.is_floating_point() else [prompts.tolist()]
        if prompts and not isinstance(prompts[0], list):
            prompts = [prompts]
    if prompts is None or isinstance(prompts, (bytes, int, float, dict)) or not hasattr(prompts, "__iter__"):
        raise InputError(f"prompts must be a string, a list of strings or token-id lists, got {type(prompts).__name__} {prompts!r:.60}")
    prompts = list(prompts)
    if not prompts:
        raise InputError("prompts is empty: give at least one prompt")
    if not isinstance(prompts[0], (str, list, tuple, Tensor)):  # one row of token ids
        return [prompts]
    return prompts


@torch.no_grad()
def inspect(
    bench: Any,
    prompts: str | Sequence[str] | Sequence[Sequence[int]],
    eps: float = DEFAULT_EPS,
    *,
    k: int = 4,
    chat: bool = False,
    prefix: Any = None,
    chunk_bytes: int = CHUNK_BYTES,
    progress: bool = False,
) -> SinkReport:
    """Sink statistics for each prompt (text, or token-id rows), one forward per prompt with
    bounded memory (see the module docstring). `k` leading key positions are tracked (raised
    to cover a prefix and the token after it; the report says so: `k_requested`, `k_note`,
    and `k` / `k_requested` in its summary). With `prefix` (a `RandomPrefix`), its vectors
    are inserted exactly as the generation loop inserts them."""
    from .inputs import check_bool

    eps = check_eps(eps)
    try:
        k = check_integer(k, "k", low=1)
    except InputError:
        raise InputError(f"k must be a positive integer (key positions to track), got {k!r}") from None
    chunk_bytes = check_integer(chunk_bytes, "chunk_bytes (attention workspace per chunk, bytes)", low=1)
    check_bool(chat, "chat")
    check_bool(progress, "progress")
    plist = _as_list(prompts)
    a = bench.arch
    inputs = [_prompt_inputs(bench, p, chat=chat, prefix=prefix) for p in plist]  # validate all first
    ppos = inputs[0][2]
    k_requested = k
    if ppos:
        k = max(k, max(ppos) + 2)  # reported: SinkReport.k_requested / k_note
    for i, (emb, _t, _pp) in enumerate(inputs):
        if emb.shape[1] <= k:
            raise InputError(
                f"prompt {i} has {emb.shape[1]} positions; sink statistics over the first {k} keys need at least {k + 1}"
                + (f" (k={k_requested} raised to {k} to cover the prefix)" if k != k_requested else "")
            )
    layer_of = _attention_modules(bench)
    P, L, H = len(plist), a.n_layers, a.n_heads
    nan = float("nan")
    alpha_keys_t = torch.full((P, L, H, k), nan)
    share = torch.full((P, L, H, k), nan)
    ratio = torch.full((P, L, k), nan)
    n_tokens = torch.zeros(P, dtype=torch.long)
    _register()

    it = range(P)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="sinks", unit="prompt")
    for i in it:
        embeds = inputs[i][0]
        T = embeds.shape[1]
        n_tokens[i] = T
        rec = _Recorder(k, layer_of, int(chunk_bytes))
        norms: dict[int, Tensor] = {}
        _STATE.recorder = rec
        try:
            with attention_implementation(bench.hf, ATTN_IMPL), _residual_norms(bench, norms):
                _forward_one(bench, embeds)
        finally:
            _STATE.recorder = None
        missing = sorted(set(layer_of.values()) - set(rec.colsum))
        if missing:
            raise RuntimeError(f"sink capture saw no attention call for layers {missing}")
        denom = torch.tensor([T - j for j in range(k)], dtype=torch.float32)
        for l in rec.colsum:
            alpha_keys_t[i, l] = rec.colsum[l] / denom
            share[i, l] = rec.late[l] / (T - k)
        for l, nrm in norms.items():
            ratio[i, l] = nrm[:k] / nrm.median()
        _check_finite_sinks(bench, i, {l: rec.colsum[l] for l in rec.colsum}, norms, prefix)
    return SinkReport(
        alpha=alpha_keys_t[..., 0].clone(),
        alpha_keys=alpha_keys_t,
        key_share=share,
        norm_ratio=ratio,
        n_tokens=n_tokens,
        layer_types=tuple(a.layer_types),
        eps=eps,
        k=k,
        prompts=[p if isinstance(p, str) else "<token ids>" for p in plist],
        tokens=[t for _e, t, _p in inputs],
        prefix_positions=ppos,
        model=getattr(bench, "name", ""),
        k_requested=k_requested,
    )


def _check_finite_sinks(bench: Any, i: int, colsum: dict, norms: dict, prefix: Any) -> None:
    """NonFiniteError when prompt i's attention or residual norms hold NaN/inf (NaN weights
    or an overflowing prefix), instead of NaNs that read like 'no softmax attention'."""
    bad = [l for l, t in sorted(colsum.items()) if not bool(torch.isfinite(t).all())]
    bad += [l for l, t in sorted(norms.items()) if not bool(torch.isfinite(t).all()) and l not in bad]
    bad = sorted(bad)
    if bad:
        why = (
            f"with prefix {type(prefix).__name__}(n={getattr(prefix, 'n', '?')}, scale={getattr(prefix, 'scale', '?')})"
            if prefix is not None else "with no prefix: the model's weights or inputs are not finite"
        )
        raise NonFiniteError(f"attention or residual norms of prompt {i} became NaN/inf at layer(s) {bad} {why}")


# --------------------------------------------------------------------------- full-matrix reference


def full_attention_bytes(bench: Any, n_tokens: int, layers: Sequence[int] | None = None) -> int:
    """Bytes to keep [heads, T, T] attention for `layers` (default: every attention layer)
    in the model's dtype, plus one layer's float32 softmax workspace (scores + probs)."""
    a = bench.arch
    n_tokens = check_integer(n_tokens, "n_tokens", low=1)
    n = len(a.attention_layers if layers is None else layers)
    item = torch.finfo(bench.dtype).bits // 8
    return n * a.n_heads * n_tokens**2 * item + 2 * a.n_heads * n_tokens**2 * 4


@torch.no_grad()
def attention_patterns(
    bench: Any, prompt: str | Sequence[int], layers: Sequence[int] | None = None, *, chat: bool = False, prefix: Any = None
) -> dict[int, Tensor]:
    """Full attention matrices [H, T, T] (float32, CPU) per softmax-attention layer, from
    transformers' own eager attention: the reference route that materialises every layer.
    Raises MemoryError when they would not fit in free memory (use `inspect` instead)."""
    a = bench.arch
    att = list(a.attention_layers)
    if layers is not None:
        from .trace import check_layers

        layers = check_layers(bench, layers)
        bad = [l for l in layers if l not in att]
        if bad:
            raise InputError(f"layers {bad} have no softmax attention; attention layers: {att}")
        att = sorted(set(layers))
    embeds, _toks, _pp = _prompt_inputs(bench, prompt, chat=chat, prefix=prefix)
    T = embeds.shape[1]
    need = full_attention_bytes(bench, T, att) + (len(att) * a.n_heads * T * T * 4 if bench.device.type != "cpu" else 0)
    free = available_memory(bench.device)
    if need > 0.8 * free:
        raise MemoryError(
            f"full attention for {len(att)} layers x {a.n_heads} heads x {T}^2 positions needs about "
            f"{need / 2**30:.2f} GiB, but only {free / 2**30:.2f} GiB is free on {bench.device}; "
            "use workbench.sinks.inspect (bounded memory) or a shorter prompt"
        )
    from .arch import decoder_layers

    out: dict[int, Tensor] = {}
    handles = []
    blocks = decoder_layers(bench.hf)
    for l in att:

        def hook(_m, _inp, res, l=l):
            w = res[1] if isinstance(res, tuple) and len(res) > 1 else None
            if w is None:
                raise RuntimeError(f"layer {l} returned no attention weights under eager attention")
            out[l] = w[0].float().cpu()

        handles.append(blocks[l].self_attn.register_forward_hook(hook))
    try:
        with attention_implementation(bench.hf, "eager"):
            _forward_one(bench, embeds)
    finally:
        for h in handles:
            h.remove()
    return out


# --------------------------------------------------------------------------- prefix side by side


@dataclass
class PrefixSinkComparison:
    """The same prompts with and without a prefix.

    without / with_prefix: the two reports; prefix_positions: where the prefix sits in the
    prefixed sequence; first_token_position: where the prompt's first token sits there.
    bos_mass_without: [P, L, H] attention on the prompt's first token (queries t >= k) without
    the prefix; bos_mass_with: the same token's share with the prefix; prefix_mass: [P, L, H]
    share that goes to the prefix vectors. NaN for layers without softmax attention.
    """

    without: SinkReport
    with_prefix: SinkReport
    prefix_positions: tuple[int, ...]
    first_token_position: int
    k_requested: int | None = None  # the k asked for; `k` the k both reports track

    @property
    def k(self) -> int:
        return self.with_prefix.k

    @property
    def bos_mass_without(self) -> Tensor:
        return self.without.mass_on([0])

    @property
    def bos_mass_with(self) -> Tensor:
        return self.with_prefix.mass_on([self.first_token_position])

    @property
    def prefix_mass(self) -> Tensor:
        return self.with_prefix.mass_on(self.prefix_positions)

    def per_layer(self) -> dict[str, Tensor]:
        """Means over prompts and heads, [L] each (NaN for layers without attention)."""
        f = lambda x: nanmean(x, -1).mean(0)  # noqa: E731
        return {
            "bos_mass_without": f(self.bos_mass_without),
            "bos_mass_with": f(self.bos_mass_with),
            "prefix_mass": f(self.prefix_mass),
            "sink_rate_without": self.without.layer_sink_rate.mean(0),
            "sink_rate_with": self.with_prefix.layer_sink_rate.mean(0),
        }

    def summary(self) -> dict:
        pl = self.per_layer()
        return {
            "prefix_positions": list(self.prefix_positions),
            "mean_bos_mass_without": float(nanmean(pl["bos_mass_without"])),
            "mean_bos_mass_with": float(nanmean(pl["bos_mass_with"])),
            "mean_prefix_mass": float(nanmean(pl["prefix_mass"])),
            "sink_rate_without": self.without.mean_sink_rate,
            "sink_rate_with": self.with_prefix.mean_sink_rate,
            "k": self.k,
            "k_requested": self.k if self.k_requested is None else self.k_requested,
            **({"k_note": self.with_prefix.k_note} if self.with_prefix.k_note else {}),
        }


def compare_prefix(
    bench: Any, prompts: str | Sequence[str], prefix: Any, eps: float = DEFAULT_EPS, *, k: int = 4, chat: bool = False, progress: bool = False
) -> PrefixSinkComparison:
    """Inspect `prompts` without and with `prefix`: how much sink mass moves to the prefix.

    Both runs track the same `k` keys, at least the prefix and the token after it (n + 2):
    a smaller `k` is raised and reported as such (`k_requested` and `k` in the summaries,
    `k_note` saying why), never passed off as the k asked for."""
    if prefix is None or not callable(getattr(prefix, "embeddings", None)):
        raise InputError(f"compare_prefix needs a prefix (workbench.prefix.RandomPrefix), got {prefix!r:.60}")
    eps = check_eps(eps)
    try:
        k_requested = check_integer(k, "k", low=1)
    except InputError:
        raise InputError(f"k must be a positive integer (key positions to track), got {k!r}") from None
    n = int(prefix.embeddings(bench, 1).shape[-2])
    first = n if getattr(prefix, "placement", "start") == "start" else 0
    # both runs track the same keys: the prefix and the token after it (the with-prefix run
    # needs n + 2 keys with placement "after_bos"); k_requested / k_note say so
    k = max(k_requested, n + 2)
    with_p = inspect(bench, prompts, eps, k=k, chat=chat, prefix=prefix, progress=progress)
    without = inspect(bench, prompts, eps, k=k, chat=chat, progress=progress)
    with_p.k_requested = without.k_requested = k_requested
    return PrefixSinkComparison(without, with_p, with_p.prefix_positions, first, k_requested=k_requested)

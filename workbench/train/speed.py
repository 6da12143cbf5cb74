"""Faster training steps for small hybrid (Gated DeltaNet + attention) models, same losses.

Two parts, both switched by the trainer (`train(..., fast_kernels=...)`, on by default;
`WORKBENCH_FAST_KERNELS=0` turns them off process-wide):

* `fast_training()`: while a run trains, Qwen3.5's Gated DeltaNet layers use the
  whole-sequence parallel form with a hand-written backward and the shifted-sum causal
  conv (`workbench.gdn_fast`) instead of transformers' chunked pure-PyTorch fallback.
* `hidden_states(core, ids, mask)`: a recipe's forward over a right-padded batch, run in
  length buckets (rows sorted by length, a few groups, each padded only to its own
  longest row) and without building a KV/recurrent cache. In a causal model with right
  padding, a row's states at its real positions do not depend on how much padding follows
  them, so the states (and any loss over real positions) are those of the single padded
  forward, to float rounding; the padded positions that are skipped (a third of a
  micro-model batch) come back as zeros, which a loss over real positions never reads.
  Outside `fast_training()` it is exactly `core(input_ids=ids).last_hidden_state`.

The bucketing is a pure function of the batch's lengths, so a resumed run takes the same
steps as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ..gdn_fast import env_enabled, fast_gdn

_active: contextvars.ContextVar[bool] = contextvars.ContextVar("workbench_fast_training", default=False)

# A forward + backward over one more bucket costs about as much as this many padded tokens
# (Python and per-op overhead of a 4-block model on 2 CPU cores; measured, not critical).
BUCKET_OVERHEAD_TOKENS = 256
MAX_BUCKETS = 4


def fast_enabled() -> bool:
    """Whether the current training step runs inside `fast_training()`."""
    return _active.get()


@contextlib.contextmanager
def fast_training(enabled: bool = True) -> Iterator[bool]:
    """Install the fast kernels and let `hidden_states` bucket, for the duration. Yields
    whether they are on (False when `enabled` is false or WORKBENCH_FAST_KERNELS=0)."""
    on = bool(enabled) and env_enabled()
    token = _active.set(on)
    try:
        with fast_gdn(on) as installed:
            yield installed
    finally:
        _active.reset(token)


def training_autocast(cfg: Any, model: Any) -> contextlib.AbstractContextManager:
    """The mixed-precision context of one training forward: `torch.autocast` in bfloat16 on
    the model's device when `cfg.autocast` is "bf16", else a no-op. On a CPU with AVX512-BF16
    (or AMX) the bfloat16 matmuls run several times faster than float32 ones; the weights,
    their gradients and the optimizer state stay float32, and the Gated DeltaNet delta rule
    (`gdn_fast`) computes in float32 under it."""
    if getattr(cfg, "autocast", "off") != "bf16":
        return contextlib.nullcontext()
    try:
        device = next(model.parameters()).device.type
    except StopIteration:
        device = "cpu"
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


def length_buckets(lengths: list[int], overhead: int = BUCKET_OVERHEAD_TOKENS, max_buckets: int = MAX_BUCKETS) -> list[list[int]]:
    """Row indices grouped for bucketed forwards: rows sorted by length (stable), split into
    at most `max_buckets` contiguous groups minimising sum(rows x longest row) +
    overhead x groups (dynamic programming; deterministic)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    L = [lengths[i] for i in order]
    n = len(L)
    if n == 0:
        return []
    INF = float("inf")
    # best[k][j]: cost of the first j sorted rows in k groups
    best = [[INF] * (n + 1) for _ in range(max_buckets + 1)]
    back = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0.0
    for k in range(1, max_buckets + 1):
        for j in range(1, n + 1):
            for i in range(k - 1, j):
                if best[k - 1][i] == INF:
                    continue
                c = best[k - 1][i] + overhead + (j - i) * L[j - 1]
                if c < best[k][j]:
                    best[k][j], back[k][j] = c, i
    k = min(range(1, max_buckets + 1), key=lambda kk: (best[kk][n], kk))
    groups, j = [], n
    while k > 0:
        i = back[k][j]
        groups.append(order[i:j])
        j, k = i, k - 1
    return groups[::-1]


def hidden_states(core: Any, ids: Tensor, mask: Tensor) -> Tensor:
    """The [B, T, d] last hidden states of the decoder `core` (e.g. `model.model`) over the
    right-padded `ids` [B, T] with validity `mask` [B, T]. Inside `fast_training()`: in
    length buckets, without a cache, zeros at the padded positions beyond each bucket's
    longest row. Outside: `core(input_ids=ids).last_hidden_state`, as before."""
    if not fast_enabled():
        return core(input_ids=ids).last_hidden_state
    B, T = ids.shape
    lengths = [max(1, int(n)) for n in mask.sum(dim=1).tolist()]
    groups = length_buckets(lengths)
    if len(groups) == 1 and max(lengths) == T:
        return core(input_ids=ids, use_cache=False).last_hidden_state
    parts, rows = [], []
    for g in groups:
        Tg = max(lengths[i] for i in g)
        idx = torch.tensor(g, dtype=torch.long, device=ids.device)
        h = core(input_ids=ids[idx, :Tg], use_cache=False).last_hidden_state
        parts.append(F.pad(h, (0, 0, 0, T - Tg)) if Tg < T else h)
        rows.extend(g)
    inverse = torch.empty(B, dtype=torch.long, device=ids.device)
    inverse[torch.tensor(rows, dtype=torch.long, device=ids.device)] = torch.arange(B, device=ids.device)
    return torch.cat(parts, dim=0).index_select(0, inverse)


__all__ = ["fast_training", "fast_enabled", "training_autocast", "hidden_states", "length_buckets", "BUCKET_OVERHEAD_TOKENS", "MAX_BUCKETS"]

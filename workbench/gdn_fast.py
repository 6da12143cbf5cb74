"""A faster CPU path for Qwen3.5's Gated DeltaNet when training on short sequences.

Without flash-linear-attention, transformers runs `torch_chunk_gated_delta_rule`: the
sequence in chunks of 64, each chunk's UT system solved with `solve_triangular`, a Python
loop over the chunks, and autograd through ~40 saved intermediates. For the sequence
lengths the micro model trains on (~60-170 tokens, one to three chunks) almost all of that
time is overhead. Here, for a whole sequence without a starting state (a training or
scoring forward, no cache), the same delta rule is computed as ONE chunk holding the whole
sequence, in its parallel form:

    c = cumsum(g)                             (per batch row and head)
    D[i, j] = exp(c_i - c_j) for i >= j, else 0
    A = I + strict_lower((beta k) k^T * D)    (the UT system of the chunk rule)
    U = A^{-1} (beta v)                       (one triangular solve)
    o = ((q k^T) * D) U

which is what `torch_chunk_gated_delta_rule` computes with chunk_size >= T (the inter-chunk
terms vanish for a zero initial state), with a hand-written backward (one more triangular
solve and a few [T, T] products) instead of autograd through the chunk loop. Mathematically
identical to the chunked rule; numerically equal to float32 rounding (tested against
transformers' function, values and gradients).

The two triangular solves run with one intra-op thread: the batched CPU solve is a loop of
small LAPACK calls, each a thread-pool barrier, and with the second core busy (a shared
machine) one 128-matrix solve took ~1 s at 2 threads against ~5 ms at 1. transformers'
chunk rule pays this on every call (384 matrices per call for the micro model).

Anything else (an initial state from a cache, packed `cu_seqlens`, or
T above `MAX_PARALLEL_T`, where the [T, T] form would cost more than chunks) goes to the
original function unchanged.

`fast_gdn()` is a context manager that installs it in transformers' Qwen3.5 modeling
module (reference counted and thread safe: nested or concurrent trainers share one
installation; leaving the last restores the original function exactly).
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_PARALLEL_T = 256  # bound on the [T, T] work and memory; longer sequences take the chunked rule
# Decays below exp(-60) (~1e-26, 19 orders of magnitude under float32's epsilon next to the
# diagonal's 1) are set to exactly 0: numerically nothing, and it keeps subnormal floats
# (slow arithmetic on CPUs) out of the solves.
LOG_DECAY_FLOOR = -60.0
ENV_DISABLE = "WORKBENCH_FAST_KERNELS"  # "0" turns the fast paths off process-wide

_lock = threading.Lock()
_depth = 0
_saved: dict[tuple[str, str], object] = {}
# modeling modules whose GatedDeltaNet calls the module-level `torch_chunk_gated_delta_rule`
_TARGETS = ("transformers.models.qwen3_5.modeling_qwen3_5", "transformers.models.qwen3_5_moe.modeling_qwen3_5_moe")


def env_enabled() -> bool:
    return os.environ.get(ENV_DISABLE, "1").strip().lower() not in ("0", "false", "no", "off")


def _l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)  # as transformers' l2norm


class _ParallelGatedDelta(torch.autograd.Function):
    """o = ((q k^T) * D) (I + strict_lower((beta k) k^T * D))^{-1} (beta v), all [B, H, T, *]
    float tensors (q already scaled), g and beta [B, H, T]."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)  # float32 under a bf16 autocast
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        T = q.shape[-2]
        upper = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        c = g.double().cumsum(-1)  # float64: c_i - c_j of a long cumulative sum keeps its digits
        diff = (c.unsqueeze(-1) - c.unsqueeze(-2)).to(q.dtype)
        D = diff.masked_fill_(upper | (diff < LOG_DECAY_FLOOR), float("-inf")).exp_()
        kb = k * beta.unsqueeze(-1)
        A = torch.matmul(kb, k.transpose(-1, -2)).mul_(D)  # the solve reads its strict lower part only
        with _one_thread():
            U = torch.linalg.solve_triangular(A, v * beta.unsqueeze(-1), upper=False, unitriangular=True)
        S = torch.matmul(q, k.transpose(-1, -2)).mul_(D)
        o = torch.matmul(S, U)
        ctx.save_for_backward(q, k, v, beta, kb, D, A, S, U)
        ctx.g_dtype = g.dtype
        return o, U

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, do: Tensor | None, dU_out: Tensor | None):
        q, k, v, beta, kb, D, A, S, U = ctx.saved_tensors
        g_dtype = ctx.g_dtype
        T = q.shape[-2]
        strict_lower = torch.ones(T, T, dtype=torch.bool, device=q.device).tril(-1)
        if do is None:
            do = torch.zeros_like(U)
        dU = torch.matmul(S.transpose(-1, -2), do)
        if dU_out is not None:  # U itself was used (the final state)
            dU += dU_out
        dS = torch.matmul(do, U.transpose(-1, -2))  # upper part meets D = 0 below
        E = dS * S  # d loss / d (c_i - c_j), attention part
        R = dS.mul_(D)
        dq = torch.matmul(R, k)
        dk = torch.matmul(R.transpose(-1, -2), q)
        dW = _solve_scaled(A.transpose(-1, -2), dU)
        dL = torch.matmul(dW, U.transpose(-1, -2)).neg_().masked_fill_(~strict_lower, 0.0)
        E += dL * A  # UT-system part (dL is zero off the strict lower triangle)
        P = dL.mul_(D)
        Pk = torch.matmul(P, k)
        dk += torch.matmul(P.transpose(-1, -2), kb)
        dk += Pk * beta.unsqueeze(-1)
        dbeta = (Pk * k).sum(-1) + (dW * v).sum(-1)
        dv = dW * beta.unsqueeze(-1)
        dc = E.sum(-1, dtype=torch.float64) - E.sum(-2, dtype=torch.float64)  # float64: these cancel
        dg = dc.flip(-1).cumsum(-1).flip(-1).to(g_dtype)  # c = cumsum(g): g_t reaches every c_i with i >= t
        return dq, dk, dv, dg, dbeta


def _solve_scaled(A_upper: Tensor, rhs: Tensor) -> Tensor:
    """solve_triangular(A_upper, rhs, upper, unit diagonal) with each [T, d] right-hand side
    first scaled by a power of two that brings its largest entry to [0.5, 1): exact in
    floating point (the solve is linear), and it keeps small gradients out of the
    subnormal range."""
    _, e = torch.frexp(rhs.abs().amax(dim=(-2, -1), keepdim=True))
    with _one_thread():
        x = torch.linalg.solve_triangular(A_upper, torch.ldexp(rhs, -e), upper=True, unitriangular=True)
    return torch.ldexp(x, e)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The batched CPU triangular solve is a loop of small LAPACK calls; with more than one
    intra-op thread each call synchronises the thread pool, and on a shared (busy) machine
    single calls stalled for up to a second (measured: 2.5 ms to 1,028 ms for the same
    solve at 2 threads, a steady 4.5 ms at 1). One thread is steady and as fast."""
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


def parallel_gated_delta_rule(
    query: Tensor, key: Tensor, value: Tensor, g: Tensor, beta: Tensor, use_qk_l2norm_in_kernel: bool = False, output_final_state: bool = False
) -> tuple[Tensor, Tensor | None]:
    """The gated delta rule over whole sequences from a zero state: same arguments and
    layout as transformers' `torch_chunk_gated_delta_rule` ([B, T, H, d] q/k/v, [B, T, H]
    g and beta); returns the [B, T, H_v, d_v] output in the query's dtype and, when asked,
    the [B, H_v, d_k, d_v] float32 state after the last token (else None)."""
    initial_dtype = query.dtype
    num_k_heads, num_v_heads = key.shape[2], value.shape[2]
    if num_k_heads != num_v_heads:
        query = query.repeat_interleave(num_v_heads // num_k_heads, dim=2)
        key = key.repeat_interleave(num_v_heads // num_k_heads, dim=2)
    query, key, value, beta, g = [x.transpose(1, 2).to(torch.float32, memory_format=torch.contiguous_format) for x in (query, key, value, beta, g)]
    if use_qk_l2norm_in_kernel:
        query = _l2norm(query)
        key = _l2norm(key)
    query = query * query.shape[-1] ** -0.5
    out, U = _ParallelGatedDelta.apply(query, key, value, g, beta)
    state = None
    if output_final_state:  # S_T = sum_j exp(c_T - c_j) k_j u_j^T, as the chunk rule's last update
        c = g.double().cumsum(-1)
        state = (key * (c[..., -1:] - c).to(key.dtype).exp().unsqueeze(-1)).transpose(-1, -2) @ U
    return out.transpose(1, 2).to(initial_dtype, memory_format=torch.contiguous_format), state


def _make_fast(original):
    def fast_chunk_gated_delta_rule(query, key, value, g, beta, chunk_size: int = 64, initial_state=None, output_final_state: bool = False, use_qk_l2norm_in_kernel: bool = False, **kwargs):
        T = query.shape[1]
        if (
            initial_state is not None
            or kwargs.get("cu_seqlens") is not None
            or kwargs.get("seq_idx") is not None
            or not 1 <= T <= MAX_PARALLEL_T
            or query.device.type != "cpu"
        ):
            return original(query, key, value, g=g, beta=beta, chunk_size=chunk_size, initial_state=initial_state, output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, **kwargs)
        return parallel_gated_delta_rule(query, key, value, g, beta, use_qk_l2norm_in_kernel, output_final_state)

    fast_chunk_gated_delta_rule.__wrapped_original__ = original  # type: ignore[attr-defined]
    return fast_chunk_gated_delta_rule


def _fast_causal_conv1d_fn(original):
    def fast_causal_conv1d_fn(hidden_states, weight, bias=None, activation=None, **kwargs):
        """Depthwise causal conv as K shifted multiply-adds (K = 4): the same sums as
        F.conv1d(groups=channels), without mkldnn's slow depthwise backward on the CPU."""
        if hidden_states.device.type != "cpu" or kwargs.get("seq_idx") is not None or kwargs.get("cu_seqlens") is not None or weight.dim() != 2 or weight.shape[-1] > 8:
            return original(hidden_states, weight, bias, activation=activation, **kwargs)
        x = hidden_states.to(weight.dtype)
        K, T = weight.shape[-1], x.shape[-1]
        xp = F.pad(x, (K - 1, 0))
        out = xp[..., 0:T] * weight[:, 0:1]
        for j in range(1, K):
            out = out + xp[..., j : j + T] * weight[:, j : j + 1]
        if bias is not None:
            out = out + bias[:, None]
        if activation is not None:
            from transformers.activations import ACT2FN

            out = ACT2FN[activation](out)
        return out.to(hidden_states.dtype)

    fast_causal_conv1d_fn.__wrapped_original__ = original  # type: ignore[attr-defined]
    return fast_causal_conv1d_fn


_PATCHES = {"torch_chunk_gated_delta_rule": _make_fast, "causal_conv1d_fn": _fast_causal_conv1d_fn}


def _install() -> None:
    import sys

    for modname in _TARGETS:  # only modules already imported: a model built from them exists
        mod = sys.modules.get(modname)
        if mod is None:
            continue
        for name, make in _PATCHES.items():
            orig = getattr(mod, name, None)
            if orig is None or (modname, name) in _saved:
                continue
            _saved[(modname, name)] = orig
            setattr(mod, name, make(orig))


def _uninstall() -> None:
    import sys

    for (modname, name), orig in list(_saved.items()):
        mod = sys.modules.get(modname)
        if mod is not None:
            setattr(mod, name, orig)
    _saved.clear()


def installed() -> bool:
    with _lock:
        return bool(_saved)


@contextlib.contextmanager
def fast_gdn(enabled: bool = True) -> Iterator[bool]:
    """While inside, Qwen3.5's Gated DeltaNet layers use the whole-sequence parallel form
    (and the shifted-sum causal conv) wherever it applies. Yields whether the fast path is
    active (False when `enabled` is false or WORKBENCH_FAST_KERNELS=0). Patches the modeling
    modules already imported (any model that exists was built from one)."""
    global _depth
    on = bool(enabled) and env_enabled()
    if not on:
        yield False
        return
    with _lock:
        if _depth == 0:
            _install()
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _uninstall()


__all__ = ["fast_gdn", "parallel_gated_delta_rule", "installed", "env_enabled", "MAX_PARALLEL_T", "ENV_DISABLE"]

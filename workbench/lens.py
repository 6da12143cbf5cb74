"""Vocabulary readouts of residual vectors: logit lens, nearest token embeddings.

The logit lens decodes the residual after block `layer` through the model's own final norm
module and unembedding (Qwen3.5's RMSNorm is zero-centred: never re-implemented here). At
the last layer it reproduces the model's logits exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from .arch import final_norm
from .errors import InputError
from .inputs import check_integer
from .trace import capture


@dataclass
class LensResult:
    """layers: [L] block indices; top_ids / top_probs: [L, k]; entropy: [L] (nats);
    tokens: [L][k] decoded strings; prompt and the position read (int, from the end if
    negative)."""

    prompt: str
    position: int
    layers: list[int]
    top_ids: Tensor
    top_probs: Tensor
    entropy: Tensor
    tokens: list[list[str]]

    def __post_init__(self):
        L = len(self.layers)
        if self.top_ids.shape[0] != L or self.top_probs.shape != self.top_ids.shape or self.entropy.shape != (L,):
            raise InputError("LensResult fields disagree on the number of layers")

    def table(self, k: int | None = None) -> str:
        """A plain-text table: layer, entropy, top tokens with probabilities."""
        k = self.top_ids.shape[1] if k is None else min(check_integer(k, "k", low=1), self.top_ids.shape[1])
        lines = [f"{'layer':>5}  {'entropy':>7}  top tokens"]
        for i, l in enumerate(self.layers):
            toks = "  ".join(f"{self.tokens[i][j]!r} {float(self.top_probs[i, j]):.3f}" for j in range(k))
            lines.append(f"{l:>5}  {float(self.entropy[i]):7.3f}  {toks}")
        return "\n".join(lines)


@torch.no_grad()
def decode_residual(bench: Any, resid: Tensor) -> Tensor:
    """Residual vectors [..., d] -> logits [..., vocab] through final norm + unembedding."""
    _check_vectors(resid, bench.arch.d_model, "resid", min_ndim=1)
    norm = final_norm(bench.hf)
    head = bench.hf.get_output_embeddings()
    p = next(head.parameters())
    return head(norm(resid.to(device=p.device, dtype=p.dtype))).float()


def entropy(logits: Tensor) -> Tensor:
    """Entropy in nats of softmax(logits) along the last axis."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def logit_lens(
    bench: Any,
    prompt: str,
    layers: int | Sequence[int] | None = None,
    *,
    position: int = -1,
    k: int = 5,
    chat: bool = False,
) -> LensResult:
    """Top-k next-token readout of the residual after each of `layers` (default: all) at
    `position` of `prompt`."""
    if not isinstance(prompt, str):
        raise InputError(f"prompt must be one string, got {type(prompt).__name__} {prompt!r:.60}")
    k = check_integer(k, "k", low=1)
    if isinstance(position, bool) or not isinstance(position, int):
        raise InputError(f"position must be an integer (a token index, negative from the end), got {position!r}")
    acts = capture(bench, [prompt], layers, positions=position, chat=chat)
    ls = list(acts)
    resid = torch.stack([acts[l][0] for l in ls])  # [L, d]
    logits = decode_residual(bench, resid)
    probs = torch.softmax(logits, dim=-1)
    top = probs.topk(min(k, probs.shape[-1]), dim=-1)
    tok = bench.tokenizer
    tokens = [[tok.decode([int(t)]) for t in row] for row in top.indices]
    return LensResult(prompt, position, ls, top.indices.cpu(), top.values.cpu(), entropy(logits).cpu(), tokens)


@torch.no_grad()
def nearest_tokens(bench: Any, vectors: Tensor, k: int = 5) -> tuple[Tensor, Tensor]:
    """Cosine-nearest input-embedding rows for vectors [n, d]: (ids [n, k], cos [n, k])."""
    _check_vectors(vectors, bench.arch.d_model, "vectors", min_ndim=2)
    V = int(bench.hf.get_input_embeddings().weight.shape[0])
    k = check_integer(k, "k", low=1, high=V)
    W = bench.hf.get_input_embeddings().weight.float()
    v = vectors.to(W.device).float()
    cos = torch.nn.functional.normalize(v, dim=-1) @ torch.nn.functional.normalize(W, dim=-1).T
    top = cos.topk(k, dim=-1)
    return top.indices.cpu(), top.values.cpu()


def _check_vectors(x, d: int, what: str, min_ndim: int) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = f"tensor of dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"{what} must be a float tensor [..., {d}], got {got}")
    if x.ndim < min_ndim or x.shape[-1] != d:
        raise InputError(f"{what} must have shape {'[n, ' if min_ndim == 2 else '[..., '}{d}] (d_model {d}), got {tuple(x.shape)}")

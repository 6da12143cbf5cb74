"""Latent-SFT's inference loop (DJC-GO-SOLO/Latent-SFT, `LatentSFTStage2SoftEmbedding.
one_example_generate_hf`) as a `next_input` policy of the one generation loop.

At every latent step the stage-2 model's own next-token logits give the next input: the
top-k logits (`top_k`, the original's `topk_interpolation`, 10 in its scripts), softmaxed
among themselves (temperature 1; the rest of the vocabulary gets zero mass), mix the
token embeddings, `sum_i p_i * E[idx_i]` (`vocab_superposition`). Thinking ends when the
argmax is `</think>` (checked before the mixture is built, so that step feeds no latent)
or after `max_steps` latents; then `</think>` is fed and the model answers.

Unlike `SoftThinking` (a training-free sampler with temperature / top-p / min-p and a
cold stop), this is the distribution the Latent-SFT stage-2 model was trained to produce
(KL to the stage-1 encoder's top-k superpositions)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .policies import Runner, _check_batch, _positive_int, require_think_close


def vocab_superposition(logits: Tensor, W: Tensor, top_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Latent-SFT's top-k lexical superposition (`softmax_over_embedding_topk` with
    temperature 1, no cosine): logits [..., V] -> (embeds [..., d], probs [..., k],
    indices [..., k]); probs = softmax over the top-k logits only, embeds = sum_i probs_i
    * W[indices_i]. With top_k >= V it is the full softmax mixture."""
    k = min(int(top_k), logits.shape[-1])
    top = logits.float().topk(k, dim=-1)
    probs = torch.softmax(top.values, dim=-1)
    emb = (probs.to(W.dtype)[..., None] * W[top.indices]).sum(-2)
    return emb, probs, top.indices


@dataclass(frozen=True)
class LatentSFT:
    """The Latent-SFT stage-2 loop: feed `vocab_superposition(logits, E, top_k)` each
    latent step; self-exit on an argmax `</think>`, at most `max_steps` latents."""

    max_steps: int = 24
    top_k: int = 10
    name = "latent_sft"

    def __post_init__(self):
        object.__setattr__(self, "max_steps", _positive_int(self.max_steps, "latent-sft max_steps"))
        object.__setattr__(self, "top_k", _positive_int(self.top_k, "latent-sft top_k"))

    def with_steps(self, steps: int) -> "LatentSFT":
        return dataclasses.replace(self, max_steps=steps)

    def bind(self, bench: Any, batch_size: int) -> Runner:
        batch_size = _check_batch(batch_size)
        close = require_think_close(bench, "latent-sft")
        r = _LatentSFTRunner(bench, batch_size, max_positions=self.max_steps, end_id=close, close_id=close, self_exit=True, exit_when_budget="maxed")
        r.spec = self
        return r


class _LatentSFTRunner(Runner):
    method = "latent_sft"
    spec: LatentSFT

    def compute(self, state, need):
        W = self.bench.hf.get_input_embeddings().weight
        emb, probs, idx = vocab_superposition(state.logits, W, self.spec.top_k)
        return emb, {
            "mix_ids": idx.cpu(),
            "mix_weights": probs.float().cpu(),
            "mix_support": torch.full((probs.shape[0],), probs.shape[-1], dtype=torch.long),
            "mix_entropy": (-(probs * probs.clamp_min(1e-30).log()).sum(-1)).float().cpu(),
        }


__all__ = ["LatentSFT", "vocab_superposition"]

"""Logit lens: the last layer reproduces the model's own distribution (Llama and Qwen3.5)."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.lens import decode_residual, entropy, nearest_tokens


def test_last_layer_lens_is_model_distribution(any_bench):
    prompt = "The capital of France is"
    L = any_bench.arch.n_layers - 1
    res = wb.logit_lens(any_bench, prompt, layers=[L], k=5)
    ids = any_bench.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        logits = any_bench.hf(**ids).logits[0, -1].float()
    probs = torch.softmax(logits, -1)
    top = probs.topk(5)
    assert res.top_ids[0].tolist() == top.indices.tolist()
    torch.testing.assert_close(res.top_probs[0], top.values, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(res.entropy[0], entropy(logits), atol=1e-4, rtol=1e-4)


def test_smol_lens_finds_paris(smol):
    res = wb.logit_lens(smol, "The capital of France is", k=3)
    assert len(res.layers) == smol.arch.n_layers
    assert res.tokens[-1][0].strip() == "Paris"
    assert (res.entropy >= 0).all()
    assert "Paris" in res.table()


def test_decode_residual_uses_models_norm(qwen_tiny):
    """Qwen3.5's zero-centred RMSNorm: decode_residual == lm_head(model.norm(x))."""
    x = torch.randn(3, qwen_tiny.arch.d_model)
    with torch.no_grad():
        ref = qwen_tiny.hf.lm_head(qwen_tiny.hf.model.norm(x))
    torch.testing.assert_close(decode_residual(qwen_tiny, x), ref.float())


def test_nearest_tokens_finds_exact_embedding(smol):
    W = smol.hf.get_input_embeddings().weight
    ids, cos = nearest_tokens(smol, W[[100, 2000]] * 3.0, k=2)
    assert ids[:, 0].tolist() == [100, 2000]
    torch.testing.assert_close(cos[:, 0], torch.ones(2), atol=1e-5, rtol=0)


def test_lens_bad_input(smol):
    with pytest.raises(ValueError, match="out of range"):
        wb.logit_lens(smol, "hi", layers=[31])
    with pytest.raises(ValueError, match="k must be"):
        wb.logit_lens(smol, "hi", k=0)

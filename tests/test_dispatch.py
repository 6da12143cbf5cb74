"""A model dispatched over devices with accelerate (tested on CPU with disk offload: the
weights of offloaded blocks live on the meta device and stream in at forward time).
Capture, steering and the generation loop give the same results as on the plain model."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.edits import AddVector
from workbench.generate import generate_full


@pytest.fixture(scope="module")
def dispatched():
    n = 8
    dm = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    dm |= {f"model.layers.{i}": ("disk" if i % 2 else "cpu") for i in range(n)}
    return wb.load("qwen3.5-tiny", device_map=dm)


def test_weights_really_offloaded(dispatched):
    assert dispatched.hf.model.layers[1].mlp.up_proj.weight.device.type == "meta"
    assert dispatched.hf.model.layers[0].mlp.up_proj.weight.device.type == "cpu"
    assert dispatched.arch.embed_rms > 0


def test_capture_and_steering_match_plain_model(dispatched, qwen_tiny):
    prompts = ["hello world", "a longer prompt about latent reasoning"]
    v = torch.randn(qwen_tiny.arch.d_model)
    edits = [AddVector(2, v, 2.0)]
    a = wb.capture(dispatched, prompts, layers=[1, 5], edits=edits)
    b = wb.capture(qwen_tiny, prompts, layers=[1, 5], edits=edits)
    for l in (1, 5):
        torch.testing.assert_close(a[l], b[l], atol=1e-5, rtol=1e-5)
    ga = generate_full(dispatched, prompts, max_new_tokens=5, chat=False, edits=edits, keep_logits=True, stop_ids=set())
    gb = generate_full(qwen_tiny, prompts, max_new_tokens=5, chat=False, edits=edits, keep_logits=True, stop_ids=set())
    assert ga.token_ids == gb.token_ids
    torch.testing.assert_close(ga.steps[-1].logits, gb.steps[-1].logits, atol=1e-4, rtol=1e-4)


def test_bad_device_map():
    with pytest.raises(ValueError, match="does not have"):
        wb.load("qwen3.5-tiny", device_map={"model.nonexistent": "cpu"})


def test_fast_path_refuses_a_dispatched_model(dispatched):
    """The static-state decode path runs on one device: asked for explicitly it says why not;
    by default ("auto") the loop stays on the eager forward, which works dispatched."""
    with pytest.raises(ValueError, match="fast=True: .*dispatched over several devices"):
        generate_full(dispatched, "hi", max_new_tokens=2, fast=True)
    assert len(generate_full(dispatched, "hi", max_new_tokens=2, stop_ids=set()).token_ids[0]) == 2


def test_latent_loops_match_plain_model(dispatched, qwen_tiny):
    """COCONUT, soft thinking and a latent head run on the dispatched model exactly as on
    the plain one (the latent inputs cross devices like token embeddings do)."""
    from workbench import latent
    from workbench.latent import Coconut, LatentHead, SoftThinking
    from workbench.latent.heads import random_latent_head_tensors
    from workbench.latent.policies import token_id

    close = token_id(qwen_tiny.tokenizer, "</think>")
    head = random_latent_head_tensors(qwen_tiny.hf, seed=0)
    policies = [
        lambda: Coconut(steps=3),
        lambda: SoftThinking(max_steps=6),
        lambda: LatentHead(head, think_close_token_id=close, max_internal_tokens=4),
    ]
    prompts = ["What is 3+4?", "Say hi"]
    for make in policies:
        a = latent.run(dispatched, prompts, make(), max_new_tokens=5)
        b = latent.run(qwen_tiny, prompts, make(), max_new_tokens=5)
        for x, y in zip(a, b):
            assert x.visible_ids == y.visible_ids and len(x.steps) == len(y.steps) > 0
            for s, r in zip(x.steps, y.steps):
                torch.testing.assert_close(s.latent, r.latent, atol=1e-5, rtol=1e-5)

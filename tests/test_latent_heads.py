"""Head files: loading (.safetensors, weights-only .pt, folder + adapter_config.json, hub
forms offline) and validation before any generation starts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import workbench.generate as gen_mod
from workbench import latent
from workbench.errors import NonFiniteError
from workbench.latent.heads import random_latent_head_tensors, random_projection_tensors


@pytest.fixture
def no_forward(monkeypatch):
    """Any model forward inside the loop fails the test: errors must come first."""

    def boom(*a, **k):
        raise AssertionError("generation started before validation")

    monkeypatch.setattr(gen_mod, "forward_embeds", boom)


def _write_head(tmp_path, tensors, cfg=None):
    save_file(tensors, str(tmp_path / "latent_head.safetensors"))
    if cfg is not None:
        (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    return tmp_path


def test_latent_head_loads_from_folder_and_file(qwen_tiny, tmp_path):
    t = random_latent_head_tensors(qwen_tiny.hf, seed=0)
    _write_head(tmp_path, t, {"think_close_token_id": 248069, "max_internal_tokens": 12, "chunk_size": 3})
    a = latent.LatentHead.load(str(tmp_path))
    b = latent.LatentHead.load(str(tmp_path / "latent_head.safetensors"), chunk_size=1)
    assert (a.max_internal_tokens, a.chunk_size, b.chunk_size) == (12, 3, 1)
    mod = a.module(qwen_tiny)
    assert type(mod.core.layer).__name__ == "Qwen3_5DecoderLayer"
    for k, v in t.items():
        assert torch.equal(mod.state_dict()[k].float(), v)


def test_mismatches_listed_all_at_once(qwen_tiny, smol, tmp_path, no_forward):
    t = random_latent_head_tensors(smol.hf, seed=0)  # d_model 576 vs 64
    t["core.extra.weight"] = torch.zeros(3)
    del t["to_embed.weight"]
    pol = latent.LatentHead.load(str(_write_head(tmp_path, t)))
    with pytest.raises(ValueError) as e:
        latent.run(qwen_tiny, "hi", pol)
    msg = str(e.value)
    assert "head d_model 576" in msg and "base d_model 64" in msg
    assert "missing tensor to_embed.weight" in msg and "unexpected tensor core.extra.weight" in msg
    assert "core.layer.self_attn.q_proj.weight has shape" in msg


def test_vocab_and_budget_and_nan_errors(qwen_tiny, tmp_path, no_forward):
    t = random_latent_head_tensors(qwen_tiny.hf, seed=0)
    with pytest.raises(ValueError, match=r"think_close_token_id must be a token id in \[0, 248320\)"):
        latent.run(qwen_tiny, "hi", latent.LatentHead(t, think_close_token_id=300000))
    for budget in (0, 1):
        with pytest.raises(ValueError, match="max_internal_tokens must be an integer >= chunk_size"):
            latent.run(qwen_tiny, "hi", latent.LatentHead(t, max_internal_tokens=budget, chunk_size=2))
    with pytest.raises(ValueError, match="coconut steps must be an integer >= 1"):
        latent.run(qwen_tiny, "hi", latent.Coconut(steps=0))
    with pytest.raises(ValueError, match="soft-thinking max_steps"):
        latent.run(qwen_tiny, "hi", latent.SoftThinking(), steps=0)
    bad = dict(t)
    bad["core.norm.weight"] = bad["core.norm.weight"].clone()
    bad["core.norm.weight"][0] = float("nan")
    with pytest.raises(ValueError, match="core.norm.weight contains NaN"):
        latent.run(qwen_tiny, "hi", latent.LatentHead(bad))


def test_missing_think_close_token(smol, no_forward):
    t = random_latent_head_tensors(smol.hf, seed=0)
    with pytest.raises(ValueError, match="needs a '</think>' token.*smollm2-135m"):
        latent.run(smol, "hi", latent.LatentHead(t))
    with pytest.raises(ValueError, match="cold stop forces '</think>'"):
        latent.run(smol, "hi", latent.SoftThinking())
    with pytest.raises(ValueError, match="needs a '</think>' token"):
        latent.run(smol, "hi", latent.Coconut(stop="self_exit"))
    with pytest.raises(ValueError, match="not a single token"):
        latent.run(smol, "hi", latent.Coconut(end="<bot> marker"))


def test_nan_latent_at_runtime(qwen_tiny):
    t = random_projection_tensors(64, seed=0)
    t["mlp.0.weight"] = torch.full_like(t["mlp.0.weight"], 3e38)  # finite weights, overflowing output
    with pytest.raises(NonFiniteError, match="projection: latent vector .* contains NaN/inf"):
        latent.run(qwen_tiny, "hi", latent.ProjectionHead(t, steps=2))


def test_projection_pt_is_weights_only_and_validated(qwen_tiny, tmp_path, no_forward):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"mlp.0.weight": Evil()}, tmp_path / "projection_head.pt")
    with pytest.raises(ValueError, match="weights-only"):
        latent.ProjectionHead.load(str(tmp_path / "projection_head.pt"))
    t = random_projection_tensors(32, seed=0)  # d_model 32 vs 64
    t.pop("mlp.3.bias")
    torch.save(t, tmp_path / "p2.pt")
    pol = latent.ProjectionHead.load(str(tmp_path / "p2.pt"))
    with pytest.raises(ValueError) as e:
        latent.run(qwen_tiny, "hi", pol)
    assert "head d_model 32" in str(e.value) and "missing tensor mlp.3.bias" in str(e.value)


@pytest.mark.parametrize("ref", ["someone/latent-head", "someone/latent-head:weights/latent_head.safetensors", "hf://someone/latent-head/latent_head.safetensors"])
def test_hub_forms_offline_give_clear_error(ref, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    from workbench.errors import MissingFileError

    with pytest.raises(MissingFileError, match="could not fetch .* from the hub repo 'someone/latent-head'.*offline"):
        latent.LatentHead.load(ref)


def test_missing_local_file(tmp_path):
    from workbench.errors import MissingFileError

    with pytest.raises(MissingFileError, match="not found"):
        latent.LatentHead.load(str(tmp_path / "nope" / "latent_head.safetensors"))
    with pytest.raises(MissingFileError, match="has no latent_head.safetensors"):
        latent.LatentHead.load(str(tmp_path))

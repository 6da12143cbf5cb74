"""Shared fixtures: the real default model and the tiny Qwen3.5, loaded once per session.

The workbench cache lives in the user's cache folder (or $WORKBENCH_CACHE), so the default
model is dequantised once per machine; tests that check cache building use their own
temporary cache folder.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smol():
    """SmolLM2-135M-Instruct, real weights, float32 on CPU."""
    import workbench as wb

    return wb.load("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def qwen_tiny():
    """Tiny random Qwen3.5 (8 hybrid layers) with the real Qwen3.5 tokenizer."""
    import workbench as wb

    return wb.load("qwen3.5-tiny", device="cpu")


MICRO_SMOKE = dict(hidden_size=32, num_heads=2, intermediate_size=64, n_train=256, eval_n=4, steps=12, batch_size=16, eval_every=0, ckpt_every=100, progress=False)


@pytest.fixture(scope="session")
def micro_dir(tmp_path_factory):
    """A smoke-size Qwen3.5 micro model (the real recipe, a few steps: seconds), saved like
    the real one (a stock checkpoint folder with micro.json and metrics.jsonl)."""
    from workbench.train.micro import MicroConfig, save_micro, train_micro

    root = tmp_path_factory.mktemp("micro")
    cfg = MicroConfig(out_dir=str(root / "run"), **MICRO_SMOKE)
    full, info = train_micro(cfg)
    assert info["status"] == "done" and info["steps"] == cfg.steps
    save_micro(full, info, root / "model")
    return root / "model"


@pytest.fixture(params=["smol", "qwen_tiny"])
def any_bench(request):
    """Both architectures: Llama-style (real weights) and hybrid Qwen3.5 (random)."""
    return request.getfixturevalue(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

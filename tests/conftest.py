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


@pytest.fixture(params=["smol", "qwen_tiny"])
def any_bench(request):
    """Both architectures: Llama-style (real weights) and hybrid Qwen3.5 (random)."""
    return request.getfixturevalue(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

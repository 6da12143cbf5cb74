"""vLLM steering through nnsight: clear refusals offline; the real run where vLLM and a
GPU exist (skipped cleanly elsewhere)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from workbench import vllm_steer
from workbench.edits import Ablate, AddVector

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed here")
def test_without_vllm_says_so():
    why = vllm_steer.available()
    assert why is not None and "vLLM is not installed" in why
    with pytest.raises(RuntimeError, match="vLLM is not installed"):
        vllm_steer.steered_generate("some/model", ["hi"], AddVector(0, torch.ones(4)))


def test_only_additive_all_token_edits():
    v = torch.randn(8)
    assert [(l, x.tolist()) for l, x in vllm_steer.additive_edits([AddVector(3, v, 2.0)])] == [(3, (2.0 * v).tolist())]
    with pytest.raises(ValueError, match="additive vectors only; got Ablate at layer 1"):
        vllm_steer.additive_edits([Ablate(1, v)])
    with pytest.raises(ValueError, match="where='generated'"):
        vllm_steer.additive_edits([AddVector(1, v, where="generated")])
    with pytest.raises(ValueError, match="no steering vectors"):
        vllm_steer.additive_edits([])


@pytest.mark.gpu
@pytest.mark.skipif(not (HAVE_VLLM and torch.cuda.is_available()), reason="needs vLLM and a CUDA GPU")
def test_vllm_steering_changes_and_zero_vector_does_not(tmp_path):
    """A zero vector leaves greedy output as plain vLLM gives it; a large one changes it."""
    import workbench as wb

    folder = tmp_path / "model"
    bench = wb.load("qwen3.5-tiny")
    bench.hf.save_pretrained(folder)
    bench.tokenizer.save_pretrained(folder)
    llm = vllm_steer.engine(str(folder), gpu_memory_utilization=0.3)
    prompts = ["Hello there", "The capital of France is"]
    zero = vllm_steer.steered_generate(llm, prompts, AddVector(2, torch.zeros(bench.arch.d_model)), max_tokens=8)
    from vllm import SamplingParams

    plain = [r.outputs[0].text for r in llm.vllm_entrypoint.generate(prompts, SamplingParams(max_tokens=8, temperature=0.0))]
    assert zero == plain
    big = vllm_steer.steered_generate(llm, prompts, AddVector(2, 50 * torch.randn(bench.arch.d_model)), max_tokens=8)
    assert big != plain

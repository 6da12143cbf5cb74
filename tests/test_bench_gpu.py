"""`workbench bench gpu` plumbing on the CPU with the tiny Qwen3.5 (the real numbers need a
GPU; this checks every variant runs and the summary is computed from the rows)."""

from __future__ import annotations

import json

import pytest
import torch

from workbench.cli import main


def test_gpu_bench_runs_on_cpu_and_summarises(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    args = ["bench", "gpu", "--device", "cpu", "--model", "qwen3.5-tiny", "--prefill", "64", "--prompt", "8", "--new", "4",
            "--batches", "1,2", "--repeats", "1", "--fast", "on", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    rep = json.loads(out.read_text())
    s, rows = rep["summary"], rep["rows"]
    variants = {(r["variant"], r["batch"]) for r in rows}
    for b in (1, 2):
        for v in ("plain", "steered_1_layer", "steered_4_layers", "latent_coconut", "latent_head", "plain_eager", "hf_generate"):
            assert (v, b) in variants
    assert s["roofline_tokens_per_s_b1"] == pytest.approx(s["bandwidth_gb_s"] * 1e9 / (s["weight_gib"] * 2**30))
    assert s["roofline_fraction_b1_steered"] == pytest.approx(s["steered_1_layer_b1_tokens_per_s"] / s["roofline_tokens_per_s_b1"])
    assert s["fast_vs_eager_b1"] == pytest.approx(s["plain_b1_tokens_per_s"] / s["plain_eager_b1_tokens_per_s"])
    # the fast path ran (static state on the CPU; graphs need CUDA)
    assert s["fast_path"] == {"requested": "on", "used": True, "cuda_graphs": False, "graph_error": None, "unsupported_reason": None}
    assert rep["environment"]["weights_dtype"] == "torch.float32" and "flash-linear-attention" in rep["environment"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_bench_without_a_gpu_says_so(capsys):
    assert main(["bench", "gpu"]) == 2
    assert "no GPU" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bench_on_cuda_uses_graphs(tmp_path):
    out = tmp_path / "gpu.json"
    args = ["bench", "gpu", "--device", "cuda", "--dtype", "bfloat16", "--model", "qwen3.5-tiny", "--prefill", "256",
            "--prompt", "16", "--new", "8", "--batches", "1,4", "--repeats", "1", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    s = json.loads(out.read_text())["summary"]
    assert s["fast_path"]["used"] and s["fast_path"]["cuda_graphs"], s["fast_path"]
    assert s["peak_memory_gib"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_out_of_memory_names_need_and_free():
    import workbench as wb

    free, _ = torch.cuda.mem_get_info()
    if free > 27.4e9 * 4:
        pytest.skip("this GPU could hold the 27B model in float32")
    with pytest.raises(MemoryError, match=r"qwen3.5-27b-random \(26\.9B parameters in torch.float32\) needs about 100\.2 GiB, but only .* is free on cuda"):
        wb.load("qwen3.5-27b-random", device="cuda", dtype="float32")

"""Model registry, load(), ArchInfo, cache integrity."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import workbench as wb
from workbench import models
from workbench.arch import ArchInfo
from workbench.errors import ModelNotFoundError


def test_import_does_no_work():
    import subprocess
    import sys

    code = "import sys, workbench; print(any(m in sys.modules for m in ('torch', 'transformers', 'nnsight')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registry_lists_embedded_models():
    names = wb.available_models()
    assert {"smollm2-135m", "qwen3.5-tiny", "qwen3.5-27b-random"} <= set(names)
    assert wb.DEFAULT_MODEL == "smollm2-135m"


def test_unknown_name_lists_available():
    with pytest.raises(ModelNotFoundError) as e:
        wb.load("no-such-model")
    msg = str(e.value)
    assert "no-such-model" in msg and "smollm2-135m" in msg and "qwen3.5-tiny" in msg


def test_missing_local_path_is_clear():
    with pytest.raises(ModelNotFoundError, match="no such local path"):
        wb.load("./definitely/not/here")


def test_hub_id_offline_says_pass_local_path(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as e:
        wb.load("someone/not-a-cached-model-xyz", device="cpu")
    assert "local path" in str(e.value) and "HF_HUB_OFFLINE" in str(e.value)
    assert time.perf_counter() - t < 10, "an offline hub id must fail fast, without network retries"


@pytest.mark.parametrize("dtype", ["float8", "int4", "fp64x"])
def test_bad_dtype(dtype):
    with pytest.raises(ValueError, match="unknown dtype"):
        wb.load("qwen3.5-tiny", device="cpu", dtype=dtype)


def test_bad_device():
    with pytest.raises(ValueError, match="unknown device"):
        wb.load("qwen3.5-tiny", device="tpu:7")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_clear():
    with pytest.raises(ValueError, match="no CUDA device"):
        wb.load("qwen3.5-tiny", device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_27b_refuses_cpu():
    with pytest.raises(ValueError, match="GPU"):
        wb.load("qwen3.5-27b-random", device="cpu")


def test_27b_shape_on_meta():
    bench = wb.load("qwen3.5-27b-random", device="meta", dtype="bfloat16", dispatch=False)
    a = bench.arch
    assert (a.n_layers, a.d_model, a.n_heads, a.n_kv_heads, a.head_dim) == (64, 5120, 24, 4, 256)
    assert a.attention_layers == tuple(range(3, 64, 4))
    assert a.layer_types[:4] == ("linear_attention",) * 3 + ("full_attention",)
    assert a.layer_at(0.75) == 48
    la = bench.hf.model.layers[0].linear_attn
    assert (la.num_k_heads, la.num_v_heads) == (16, 48)
    n_params = sum(p.numel() for p in bench.hf.parameters())
    assert 26e9 < n_params < 28e9, n_params


@pytest.mark.parametrize("name, shape", [("qwen3.5-tiny", (8, 64, (3, 7))), ("qwen3.5-27b-random", (64, 5120, tuple(range(3, 64, 4))))])
def test_load_on_meta_wraps_for_nnsight(name, shape):
    """load(name, device="meta") (the documented way to inspect the 27B shape) goes through
    the nnsight wrap too: a Bench on the meta device, nothing allocated, nothing moved."""
    bench = wb.load(name, device="meta")
    assert bench.model is not None and bench.device.type == "meta"
    assert all(p.device.type == "meta" for p in bench.hf.parameters())
    a = bench.arch
    assert (a.n_layers, a.d_model, a.attention_layers) == shape
    assert "device=meta" in repr(bench)


def test_wrap_keeps_the_model_where_it_is(qwen_tiny):
    """The pipeline nnsight builds is told the model's device: left to itself it picks
    device 0 and moves the model there (a CPU model onto a GPU)."""
    from workbench._nnsight import wrap

    lm = wrap(qwen_tiny.hf, qwen_tiny.tokenizer)
    assert lm is not None and qwen_tiny.device.type == "cpu"


def test_smol_arch(smol):
    a = smol.arch
    assert isinstance(a, ArchInfo)
    assert (a.n_layers, a.d_model, a.family) == (30, 576, "llama")
    assert a.attention_layers == tuple(range(30))
    assert not a.is_hybrid
    w = smol.hf.get_input_embeddings().weight
    assert a.embed_rms == pytest.approx(float(w.pow(2).mean().sqrt()), rel=1e-6)
    assert a.layer_at(0.75) == 22 and a.layer_at(0.0) == 0 and a.layer_at(1.0) == 29
    assert smol.model is not None and smol.model._module is smol.hf


def test_qwen_tiny_is_hybrid_with_two_attention_layers(qwen_tiny):
    a = qwen_tiny.arch
    assert a.family == "qwen3_5_text"
    assert a.is_hybrid
    assert a.attention_layers == (3, 7)
    assert type(qwen_tiny.hf).__name__ == "Qwen3_5ForCausalLM"
    assert hasattr(qwen_tiny.hf.model.layers[0], "linear_attn")
    assert hasattr(qwen_tiny.hf.model.layers[3], "self_attn")
    assert a.vocab_size >= len(qwen_tiny.tokenizer)


def test_qwen_tiny_is_deterministic(qwen_tiny):
    again = wb.load("qwen3.5-tiny", device="cpu", dispatch=False)
    for (n1, p1), (n2, p2) in zip(qwen_tiny.hf.named_parameters(), again.hf.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_check_layer(smol):
    assert smol.arch.check_layer(-1) == 29
    for bad in (30, -31, 2.5, "x"):
        with pytest.raises(ValueError, match="layer"):
            smol.arch.check_layer(bad)


def test_layer_at_range():
    with pytest.raises(ValueError, match="depth"):
        ArchInfo(64, 8, ("full_attention",) * 64, "x", 1, 1, 10, 1, 1, 8, 10, False).layer_at(1.5)


def test_paris(smol):
    """The real default model answers a factual question through its chat template."""
    out = wb.generate(smol, "What is the capital of France?", max_new_tokens=16)
    assert "Paris" in out


# --------------------------------------------------------------------------- cache integrity


def test_cached_build_rebuilds_corrupt_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    calls = []

    def build(out):
        calls.append(1)
        (out / "weights.bin").write_bytes(b"\x01" * 1000)

    folder = models.cached_build("toy", build)
    assert models.verify_manifest(folder) is None and len(calls) == 1
    models.cached_build("toy", build)
    assert len(calls) == 1  # valid cache reused
    data = bytearray((folder / "weights.bin").read_bytes())
    data[500] ^= 0xFF  # a flipped byte, same size
    (folder / "weights.bin").write_bytes(bytes(data))
    assert "checksum" in models.verify_manifest(folder)
    with pytest.warns(UserWarning, match="invalid"):
        models.cached_build("toy", build)
    assert len(calls) == 2 and (folder / "weights.bin").read_bytes() == b"\x01" * 1000


def test_cached_build_failure_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))

    def build(out):
        (out / "half.bin").write_bytes(b"x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        models.cached_build("toy2", build)
    assert not (tmp_path / "toy2").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_real_cache_detects_truncation(smol, tmp_path):
    """A truncated copy of the real default-model cache fails its manifest."""
    src = models.workbench_cache_dir() / "smollm2-135m-v1"
    assert models.verify_manifest(src, full=True) is None
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    w = dst / "model.safetensors"
    with open(w, "r+b") as f:
        f.truncate(w.stat().st_size // 2)
    assert "size" in models.verify_manifest(dst)
    manifest = json.loads((src / models.MANIFEST).read_text())
    assert "model.safetensors" in manifest["files"]


def test_manifest_hashes_rewritten_files_even_with_same_size(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"abcd" * 100)
    models.write_manifest(tmp_path)
    assert models.verify_manifest(tmp_path) is None
    import os
    import time

    time.sleep(0.01)
    (tmp_path / "w.bin").write_bytes(b"abce" * 100)  # same size, rewritten
    assert "checksum" in models.verify_manifest(tmp_path)
    st = (tmp_path / "w.bin").stat()
    os.utime(tmp_path / "w.bin", ns=(st.st_atime_ns, json_mtime(tmp_path)))  # forged mtime
    assert models.verify_manifest(tmp_path) is None  # only a full check sees it then
    assert "checksum" in models.verify_manifest(tmp_path, full=True)


def json_mtime(folder):
    return json.loads((folder / models.MANIFEST).read_text())["files"]["w.bin"]["mtime_ns"]


def test_cached_tokenizer_equals_autotokenizer(smol):
    """The fast path that builds the tokenizer from the cache files gives what
    AutoTokenizer.from_pretrained gives on the same folder."""
    from transformers import AutoTokenizer

    folder = models.workbench_cache_dir() / "smollm2-135m-v1"
    ref = AutoTokenizer.from_pretrained(folder)
    ours = models.cached_tokenizer(folder)
    texts = ["Hello world!", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n", "ünïcödé  \t spaces\n\n", "def f(x):\n    return x ** 2"]
    for t in texts:
        assert ours(t)["input_ids"] == ref(t)["input_ids"]
    msgs = [{"role": "user", "content": "hi"}]
    assert ours.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == ref.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True
    )
    for attr in ("eos_token_id", "bos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert len(ours) == len(ref)


def test_weight_bytes_from_config_counts_the_real_model(tmp_path, qwen_tiny):
    from workbench.models import weight_bytes_from_config

    qwen_tiny.hf.save_pretrained(tmp_path)
    real = sum(p.numel() for p in qwen_tiny.hf.parameters())  # tied embeddings counted once
    assert weight_bytes_from_config(str(tmp_path), torch.bfloat16) == real * 2
    assert weight_bytes_from_config(str(tmp_path), torch.float32) == real * 4


def test_out_of_memory_message(monkeypatch):
    from workbench import memory

    monkeypatch.setattr(memory, "available_memory", lambda device: 3 * 2**30)
    with pytest.raises(MemoryError, match=r"^big model needs about 7\.5 GiB, but only 3\.0 GiB is free on cuda:0; try less$"):
        memory.check_fits("big model", 7.5 * 2**30, torch.device("cuda:0"), "try less")
    memory.check_fits("small model", 2 * 2**30, torch.device("cuda:0"))  # fits: no error

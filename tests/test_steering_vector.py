"""SteeringVector: validation, safetensors save/load, GGUF (llama.cpp control vector) export."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from workbench.steering.vector import (
    FORMAT_KEY,
    GGUF_WORKBENCH_KEY,
    SteeringVector,
    creation_metadata,
)

D = 8


def make(layers=(1, 3, 5), d: int = D, seed: int = 0, **kw) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    fields = dict(
        directions={layer: torch.randn(d, generator=g) for layer in layers},
        method="mean_diff",
        model_name="tiny/llama",
        model_family="llama",
        d_model=d,
        n_layers=6,
        position="-1",
        scale=4.0,
        metadata=creation_metadata(probe_set="honesty", n_pairs=12, normalize=False, note="test"),
    )
    fields.update(kw)
    return SteeringVector(**fields)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def assert_same(a: SteeringVector, b: SteeringVector) -> None:
    assert a.layers == b.layers
    for layer in a.layers:
        assert b.directions[layer].dtype == torch.float32
        assert torch.equal(bits(a.directions[layer]), bits(b.directions[layer]))
    for f in ("method", "model_name", "model_family", "d_model", "n_layers", "position", "scale", "metadata"):
        assert getattr(a, f) == getattr(b, f), f


# ---------------------------------------------------------------- construction
def test_construction_casts_and_copies():
    src = torch.randn(D, dtype=torch.float64)
    v = make(directions={2: src})
    assert v.directions[2].dtype == torch.float32
    src.zero_()
    assert v.directions[2].abs().sum() > 0  # a copy, not a view
    assert v.layers == [2]
    assert "layers=[2]" in repr(v)


@pytest.mark.parametrize(
    "directions, match",
    [
        ({1: torch.full((D,), float("nan"))}, r"layer 1 has 8 non-finite"),
        ({1: torch.tensor([0.0] * (D - 1) + [float("inf")])}, r"first at index 7"),
        ({1: torch.ones(D + 1)}, r"shape \(9,\); expected \(8,\)"),
        ({1: torch.ones(2, D)}, r"shape \(2, 8\)"),
        ({-1: torch.ones(D)}, r"layer -1 is out of range; valid layers: 0..5"),
        ({6: torch.ones(D)}, r"layer 6 is out of range; valid layers: 0..5"),
        ({"1": torch.ones(D)}, r"layer keys must be ints, got '1'"),
        ({True: torch.ones(D)}, r"layer keys must be ints"),
        ({}, r"at least one layer"),
        ({1: torch.ones(D, dtype=torch.int64)}, r"floating point"),
    ],
)
def test_construction_refuses_bad_directions(directions, match):
    with pytest.raises(ValueError, match=match):
        make(directions=directions)


def test_construction_refuses_bad_fields():
    with pytest.raises(ValueError, match="d_model must be a positive int"):
        make(d_model=0)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        make(metadata={"x": object()})
    with pytest.raises(ValueError, match="scale must be a finite"):
        make(scale=float("nan"))
    with pytest.raises(ValueError, match="model_family"):
        make(model_family="")


def test_normalized_scaled_select_random_like():
    v = make()
    n = v.normalized()
    for layer in v.layers:
        assert math.isclose(float(n.directions[layer].norm()), 1.0, rel_tol=1e-6)
    assert n.metadata["transforms"] == ["normalized"] and "transforms" not in v.metadata
    s = v.scaled(2.0)
    assert torch.equal(s.directions[3], v.directions[3] * 2.0) and s.scale == v.scale
    assert v.select([1, 5]).layers == [1, 5]
    with pytest.raises(ValueError, match=r"layers \[2\] not in this vector"):
        v.select([2])

    r = SteeringVector.random_like(v, seed=7)
    assert r.method == "random" and r.layers == v.layers and r.d_model == v.d_model
    for layer in v.layers:
        assert math.isclose(float(r.directions[layer].norm()), float(v.directions[layer].norm()), rel_tol=1e-6)
        assert not torch.equal(r.directions[layer], v.directions[layer])
    again = SteeringVector.random_like(v, seed=7)
    assert all(torch.equal(r.directions[k], again.directions[k]) for k in v.layers)
    other = SteeringVector.random_like(v, seed=8)
    assert not torch.equal(r.directions[1], other.directions[1])


# ---------------------------------------------------------------- safetensors
def test_save_load_round_trip_is_bit_exact(tmp_path):
    v = make()
    path = tmp_path / "vec.safetensors"
    v.save(path)
    back = SteeringVector.load(path, expect_d_model=D, expect_family="llama")
    assert_same(v, back)
    assert sorted(os.listdir(tmp_path)) == ["vec.safetensors"]  # no temp files left


def test_save_writes_our_layout(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "vec.safetensors"
    make().save(path)
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == ["layer.1", "layer.3", "layer.5"]
        header = json.loads(f.metadata()[FORMAT_KEY])
    assert header["format_version"] == 1 and header["d_model"] == D and header["layers"] == [1, 3, 5]


def test_save_refuses_a_vector_corrupted_after_construction_and_writes_nothing(tmp_path):
    v = make()
    v.directions[3][0] = float("nan")  # tensors are mutable: save re-validates
    with pytest.raises(ValueError, match="layer 3 has 1 non-finite"):
        v.save(tmp_path / "vec.safetensors")
    assert os.listdir(tmp_path) == []


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "vec.safetensors"
    make(seed=1).save(path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        make(seed=2).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["vec.safetensors"]


def _corrupt_files(tmp_path):
    good = tmp_path / "good.safetensors"
    make().save(good)
    blob = good.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(blob[: len(blob) - 10])
    (tmp_path / "header_cut.safetensors").write_bytes(blob[:20])
    (tmp_path / "random.safetensors").write_bytes(np.random.default_rng(0).bytes(500))
    (tmp_path / "empty.safetensors").write_bytes(b"")
    save_file({"layer.1": torch.ones(D)}, str(tmp_path / "plain.safetensors"))
    torch.save({"layer.1": torch.ones(D)}, tmp_path / "vec.pt")
    return ["truncated", "header_cut", "random", "empty", "plain"], tmp_path / "vec.pt"


def test_load_refuses_corrupt_or_foreign_files(tmp_path):
    from workbench.errors import FileFormatError, MissingFileError

    names, pt = _corrupt_files(tmp_path)
    expected = {
        "truncated": r"truncated\.safetensors: the safetensors steering vector file is truncated: tensor 'layer\.5'",
        "header_cut": r"header_cut\.safetensors: the safetensors steering vector file is truncated: its header is",
        "random": r"random\.safetensors is not a steering vector file: it is not safetensors",
        "empty": r"empty\.safetensors: the steering vector file is empty",
        "plain": r"plain\.safetensors is not a steering vector file: safetensors file without",
    }
    assert sorted(expected) == sorted(names)
    for name in names:
        with pytest.raises(FileFormatError, match=expected[name]):
            SteeringVector.load(tmp_path / f"{name}.safetensors")
    with pytest.raises(FileFormatError, match="never unpickled"):
        SteeringVector.load(pt)
    with pytest.raises(MissingFileError, match="missing.safetensors does not exist"):
        SteeringVector.load(tmp_path / "missing.safetensors")
    with pytest.raises(FileFormatError, match="is a folder, not a steering vector file"):
        SteeringVector.load(tmp_path)


def test_load_refuses_other_format_version_and_bad_tensors(tmp_path):
    header = make()._header()
    for version in (2, None):
        path = tmp_path / f"v{version}.safetensors"
        save_file({"layer.1": torch.ones(D)}, str(path), metadata={FORMAT_KEY: json.dumps({**header, "format_version": version})})
        with pytest.raises(ValueError, match="unsupported steering vector format version"):
            SteeringVector.load(path)
    path = tmp_path / "names.safetensors"
    save_file({"weird": torch.ones(D)}, str(path), metadata={FORMAT_KEY: json.dumps({**header, "layers": []})})
    with pytest.raises(ValueError, match="unexpected tensor 'weird'"):
        SteeringVector.load(path)
    path = tmp_path / "nan.safetensors"
    bad = {f"layer.{k}": torch.full((D,), float("nan")) for k in (1, 3, 5)}
    save_file(bad, str(path), metadata={FORMAT_KEY: json.dumps(header)})
    with pytest.raises(ValueError, match="invalid steering vector: .*non-finite"):
        SteeringVector.load(path)


def test_load_refuses_mismatched_model(tmp_path):
    path = tmp_path / "vec.safetensors"
    make().save(path)
    with pytest.raises(ValueError, match="d_model=8, but the model has d_model=16"):
        SteeringVector.load(path, expect_d_model=16)
    with pytest.raises(ValueError, match="family 'llama', expected 'qwen3_5'"):
        SteeringVector.load(path, expect_family="qwen3_5")


def test_load_warns_on_unknown_header_keys(tmp_path):
    path = tmp_path / "vec.safetensors"
    header = {**make()._header(), "future_field": 1}
    save_file({f"layer.{k}": torch.ones(D) for k in (1, 3, 5)}, str(path), metadata={FORMAT_KEY: json.dumps(header)})
    with pytest.warns(UserWarning, match="future_field"):
        SteeringVector.load(path)


# ---------------------------------------------------------------- GGUF
def test_gguf_round_trip(tmp_path):
    v = make()
    path = tmp_path / "vec.gguf"
    v.to_gguf(path)
    assert sorted(os.listdir(tmp_path)) == ["vec.gguf"]
    assert GGUF_WORKBENCH_KEY in gguf.GGUFReader(str(path)).fields  # extra KV, ignored by llama.cpp
    back = SteeringVector.from_gguf(path, expect_d_model=D, expect_family="llama")
    assert_same(v, back)


def test_gguf_layout_is_what_llama_cpp_reads(tmp_path):
    path = tmp_path / "vec.gguf"
    make().to_gguf(path, model_hint="llama", workbench_metadata=False)
    reader = gguf.GGUFReader(str(path))
    kv = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    assert kv == {
        "general.architecture": "controlvector",
        "controlvector.model_hint": "llama",
        "controlvector.layer_count": 3,
    }
    assert reader.fields["controlvector.layer_count"].types == [gguf.GGUFValueType.UINT32]
    # llama.cpp: 'direction.N' with N >= 1, F32, 1-D of n_embd
    assert [t.name for t in reader.tensors] == ["direction.1", "direction.3", "direction.5"]
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(t.shape) == [D]
    plain = SteeringVector.from_gguf(path)
    assert plain.model_family == "llama" and plain.d_model == D and plain.method == "gguf"
    assert plain.metadata == {"source": "gguf", "model_hint": "llama"}
    v = make()
    assert all(torch.equal(plain.directions[k], v.directions[k]) for k in v.layers)


def test_gguf_reads_a_file_written_like_repeng(tmp_path):
    # The write sequence of repeng's ControlVector.export_gguf.
    path = tmp_path / "repeng.gguf"
    dirs = {k: np.arange(D, dtype=np.float32) * k for k in (2, 4)}
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "mistral")
    writer.add_uint32("controlvector.layer_count", len(dirs))
    for layer in dirs:
        writer.add_tensor(f"direction.{layer}", dirs[layer])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    v = SteeringVector.from_gguf(path, model_name="mistralai/x", n_layers=32)
    assert v.layers == [2, 4] and v.model_family == "mistral" and v.model_name == "mistralai/x"
    assert np.array_equal(v.directions[4].numpy(), dirs[4])


def test_gguf_multiplier_is_baked_in(tmp_path):
    v = make()
    path = tmp_path / "vec.gguf"
    v.to_gguf(path, multiplier=v.scale)
    back = SteeringVector.from_gguf(path)
    assert torch.equal(back.directions[3], v.directions[3] * v.scale)
    assert back.metadata["gguf_multiplier"] == v.scale


def test_gguf_refuses_layer_zero_and_foreign_files(tmp_path):
    with pytest.raises(ValueError, match="direction.0"):
        make(layers=(0, 2)).to_gguf(tmp_path / "x.gguf")
    assert os.listdir(tmp_path) == []
    make(layers=(0, 2)).select([2]).to_gguf(tmp_path / "ok.gguf")

    st = tmp_path / "vec.safetensors"
    make().save(st)
    with pytest.raises(ValueError, match="not a GGUF file"):
        SteeringVector.from_gguf(st)
    with pytest.raises(ValueError, match="is a GGUF file \\(read it with SteeringVector.from_gguf"):
        SteeringVector.load(tmp_path / "ok.gguf")

    model = tmp_path / "model.gguf"
    w = gguf.GGUFWriter(str(model), "llama")
    w.add_tensor("token_embd.weight", np.ones((4, D), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="architecture is 'llama'"):
        SteeringVector.from_gguf(model)

    cut = tmp_path / "cut.gguf"
    cut.write_bytes((tmp_path / "ok.gguf").read_bytes()[:40])
    with pytest.raises(ValueError, match="cut.gguf: GGUF metadata is truncated or corrupt at metadata key #0"):
        SteeringVector.from_gguf(cut)

    with pytest.raises(ValueError, match="d_model=8, but the model has d_model=4"):
        SteeringVector.from_gguf(tmp_path / "ok.gguf", expect_d_model=4)


def test_dataclass_replace_revalidates():
    with pytest.raises(ValueError, match="out of range"):
        dataclasses.replace(make(), n_layers=2)


def test_saved_file_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        make().save(tmp_path / "vec.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "vec.safetensors").stat().st_mode & 0o777 == 0o644


def test_load_accepts_header_length_that_looks_like_pickle(tmp_path):
    # safetensors starts with an 8-byte little-endian header length; 0x80 first is legal.
    for pad in range(300):
        v = make(metadata={"pad": "x" * pad})
        path = tmp_path / "vec.safetensors"
        v.save(path)
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.skip("no padding gave a 0x80 first byte")
    assert_same(v, SteeringVector.load(path))

"""Bad inputs for steering files and the app's endpoints: each refused with the exact error
class and a message that names the bad value (or file) and what is valid, with nothing
written.

Tables (the harness is `tests/badinput.py`): `STEERING_FILE_CASES` (safetensors and GGUF
steering vectors through `workbench.steering.load_vector`: truncated, pickled, foreign,
malformed, made for another model) and `APP_CASES` (the tabs' handlers called as the UI
calls them; the handler turns the error into a `gr.Error` and keeps the original as its
`__cause__`, which is what is checked). Helpers are prefixed `_files_` so this module can be
merged with the other capabilities' tables into one.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import gguf
import gradio as gr
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from badinput import Case, check, ids
from workbench.errors import (
    FileFormatError,
    InputError,
    MissingFileError,
    ModelNotFoundError,
    OutputExistsError,
    PathNotAllowedError,
)
from workbench.steering.apply import load_vector
from workbench.steering.vector import FORMAT_KEY, GGUF_WORKBENCH_KEY, SteeringVector

D = 8
MiB = 1 << 20
_FILES_BENCH = SimpleNamespace(name="tiny/llama", arch=SimpleNamespace(d_model=D, family="llama", n_layers=6))


# --------------------------------------------------------------------------- steering files


def _files_vector(layers=(1, 3), d: int = D, **kw) -> SteeringVector:
    g = torch.Generator().manual_seed(0)
    fields = dict(directions={layer: torch.randn(d, generator=g) for layer in layers}, method="mean_diff",
                  model_name="tiny/llama", model_family="llama", d_model=d, n_layers=6)
    fields.update(kw)
    return SteeringVector(**fields)


def _files_gguf(path: Path, arch: str, kv: dict, tensors: dict) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in kv.items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, list):
            w.add_array(key, value)
        else:
            w.add_uint32(key, value)
    for name, a in tensors.items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _files_model_gguf(path: Path, rows: int = 64) -> Path:
    """A (small) model GGUF: llama architecture, a tokenizer array, an embedding matrix."""
    tokens = [f"tok{i}" for i in range(2000)]
    return _files_gguf(path, "llama", {"llama.block_count": 2, "tokenizer.ggml.tokens": tokens},
                       {"token_embd.weight": np.ones((rows, 1024), dtype=np.float32)})


def _files_header(**changes) -> dict:
    return {**_files_vector()._header(), **changes}


@pytest.fixture(scope="module")
def _files_dir(tmp_path_factory) -> SimpleNamespace:
    """Every bad steering file once, in one folder, plus an empty output folder."""
    root = tmp_path_factory.mktemp("steering-files")
    f = SimpleNamespace(root=root, out=root / "out")
    f.out.mkdir()
    good = root / "good.safetensors"
    _files_vector().save(good)
    blob = good.read_bytes()
    (root / "truncated.safetensors").write_bytes(blob[:-12])
    (root / "header_cut.safetensors").write_bytes(blob[:40])
    (root / "empty.safetensors").write_bytes(b"")
    (root / "random.safetensors").write_bytes(np.random.default_rng(0).bytes(300))
    torch.save({"layer.1": torch.ones(D)}, root / "zip_pickle.safetensors")
    (root / "raw_pickle.safetensors").write_bytes(pickle.dumps({"layer.1": [0.0] * D}, protocol=2))
    (root / "folder.safetensors").mkdir()
    _files_vector(d=16).save(root / "d16.safetensors")
    SteeringVector(directions={9: torch.ones(D)}, method="m", model_name="x", model_family="llama", d_model=D).save(
        root / "layer9.safetensors")
    _files_vector(model_family="qwen3_5").save(root / "qwen.safetensors")
    save_file({f"layer.{k}": torch.full((D,), float("nan")) for k in (1, 3)}, str(root / "nan.safetensors"),
              metadata={FORMAT_KEY: json.dumps(_files_header())})
    save_file({"layer.1": torch.ones(D, dtype=torch.int64), "layer.3": torch.ones(D, dtype=torch.int64)},
              str(root / "int.safetensors"), metadata={FORMAT_KEY: json.dumps(_files_header())})
    save_file({"layer.1": torch.ones(D)}, str(root / "bad_json.safetensors"), metadata={FORMAT_KEY: "{not json"})
    save_file({"layer.1": torch.ones(D), "layer.3": torch.ones(D)}, str(root / "bad_field.safetensors"),
              metadata={FORMAT_KEY: json.dumps(_files_header(d_model="abc"))})
    save_file({"layer.1": torch.ones(D), "layer.3": torch.ones(D)}, str(root / "v2.safetensors"),
              metadata={FORMAT_KEY: json.dumps(_files_header(format_version=2))})
    save_file({"layer.1": torch.ones(D)}, str(root / "foreign.safetensors"))
    _files_model_gguf(root / "model.gguf")
    hint = {"controlvector.model_hint": "llama"}
    one = {"direction.1": np.ones(D, dtype=np.float32)}
    _files_gguf(root / "hint_int.gguf", "controlvector", {"controlvector.model_hint": 5}, one)
    _files_gguf(root / "bad_wb_json.gguf", "controlvector", {**hint, GGUF_WORKBENCH_KEY: "{oops"}, one)
    _files_gguf(root / "f64.gguf", "controlvector", hint, {"direction.1": np.ones(D, dtype=np.float64)})
    _files_gguf(root / "two_d.gguf", "controlvector", hint, {"direction.1": np.ones((2, D), dtype=np.float32)})
    _files_gguf(root / "names.gguf", "controlvector", hint, {"blk.1.weight": np.ones(D, dtype=np.float32)})
    _files_vector().to_gguf(root / "good.gguf")
    (root / "cut.gguf").write_bytes((root / "good.gguf").read_bytes()[:60])
    _files_vector(d=16).to_gguf(root / "d16.gguf")
    return f


def _files_load(name: str, bench=_FILES_BENCH):
    return lambda f: load_vector(f.root / name, bench)


STEERING_FILE_CASES = [
    Case("truncated-safetensors", _files_load("truncated.safetensors"), FileFormatError,
         ["truncated.safetensors", "truncated", "layer.3"]),
    Case("header-cut-safetensors", _files_load("header_cut.safetensors"), FileFormatError,
         ["header_cut.safetensors", "truncated", "header"]),
    Case("empty-file", _files_load("empty.safetensors"), FileFormatError, ["empty.safetensors", "empty"]),
    Case("random-bytes", _files_load("random.safetensors"), FileFormatError,
         ["random.safetensors", "not safetensors", "8-byte length"]),
    Case("torch-zip-renamed", _files_load("zip_pickle.safetensors"), FileFormatError,
         ["zip_pickle.safetensors", "PyTorch", "never unpickled"]),
    Case("raw-pickle-renamed", _files_load("raw_pickle.safetensors"), FileFormatError,
         ["raw_pickle.safetensors", "pickle", "never unpickled"]),
    Case("folder-as-vector", _files_load("folder.safetensors"), FileFormatError,
         ["folder.safetensors", "is a folder", "file itself"]),
    Case("missing-file", _files_load("nope.safetensors"), MissingFileError, ["nope.safetensors", "does not exist"]),
    Case("empty-path", lambda f: load_vector("", _FILES_BENCH), InputError, ["no steering vector path"]),
    Case("wrong-d-model", _files_load("d16.safetensors"), InputError, ["d16.safetensors", "d_model=16", "d_model=8"]),
    Case("wrong-d-model-gguf", _files_load("d16.gguf"), InputError, ["d16.gguf", "d_model=16", "d_model=8"]),
    Case("wrong-layer", _files_load("layer9.safetensors"), InputError, ["layer9.safetensors", "[9]", "0..5"]),
    Case("wrong-family", _files_load("qwen.safetensors"), InputError, ["qwen.safetensors", "'qwen3_5'", "'llama'"]),
    Case("nan-values", _files_load("nan.safetensors"), FileFormatError, ["nan.safetensors", "layer 1", "non-finite"]),
    Case("int-dtype", _files_load("int.safetensors"), FileFormatError, ["int.safetensors", "'layer.1'", "I64", "F32"]),
    Case("metadata-not-json", _files_load("bad_json.safetensors"), FileFormatError,
         ["bad_json.safetensors", FORMAT_KEY, "not valid JSON"]),
    Case("header-field-wrong-type", _files_load("bad_field.safetensors"), FileFormatError,
         ["bad_field.safetensors", "d_model", "'abc'", "positive int"]),
    Case("format-version", _files_load("v2.safetensors"), FileFormatError,
         ["v2.safetensors", "format_version", "version 2", "version 1"]),
    Case("plain-safetensors", _files_load("foreign.safetensors"), FileFormatError,
         ["foreign.safetensors", FORMAT_KEY, "SteeringVector.save"]),
    Case("model-gguf-as-control-vector", _files_load("model.gguf"), FileFormatError,
         ["model.gguf", "general.architecture", "'llama'", "'controlvector'", "direction.<layer>"]),
    Case("gguf-model-hint-not-string", _files_load("hint_int.gguf"), FileFormatError,
         ["hint_int.gguf", "controlvector.model_hint", "string", "5"]),
    Case("gguf-workbench-json-bad", _files_load("bad_wb_json.gguf"), FileFormatError,
         ["bad_wb_json.gguf", GGUF_WORKBENCH_KEY, "not valid JSON"]),
    Case("gguf-f64-tensor", _files_load("f64.gguf"), FileFormatError, ["f64.gguf", "direction.1", "F64", "F32"]),
    Case("gguf-2d-tensor", _files_load("two_d.gguf"), FileFormatError, ["two_d.gguf", "direction.1", "1-D"]),
    Case("gguf-foreign-tensor-names", _files_load("names.gguf"), FileFormatError,
         ["names.gguf", "'blk.1.weight'", "direction.<layer>"]),
    Case("gguf-truncated-metadata", _files_load("cut.gguf"), FileFormatError, ["cut.gguf", "truncated", "metadata"]),
    Case("gguf-from_gguf-on-safetensors", lambda f: SteeringVector.from_gguf(f.root / "good.safetensors"), FileFormatError,
         ["good.safetensors", "not a GGUF file", "controlvector"]),
]


@pytest.mark.parametrize("case", STEERING_FILE_CASES, ids=ids(STEERING_FILE_CASES))
def test_steering_file_bad_input(case, _files_dir):
    check(case, _files_dir, out_dir=_files_dir.root)


def test_files_model_gguf_is_refused_before_its_tensors_are_read(tmp_path):
    """The issue's case: a model GGUF as a control vector was converted to float32 whole
    before it was refused. Now the header is read and the file refused at its architecture
    key: memory stays far below the tensor's size and nothing is slow."""
    path = _files_model_gguf(tmp_path / "model.gguf", rows=8192)  # a 32 MiB embedding matrix
    assert path.stat().st_size > 32 * MiB
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(FileFormatError, match="'llama'"):
            load_vector(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MiB, f"peak {peak / MiB:.1f} MiB while refusing a model GGUF"
    assert time.perf_counter() - t0 < 5


def test_files_good_files_still_load(_files_dir):
    """The checks refuse only bad files: the good ones load, bit for bit."""
    v = _files_vector()
    for name in ("good.safetensors", "good.gguf"):
        back = load_vector(_files_dir.root / name, _FILES_BENCH)
        assert back.layers == v.layers and all(torch.equal(back.directions[k], v.directions[k]) for k in v.layers)


def test_files_save_without_overwrite_keeps_the_old_file(tmp_path):
    path = tmp_path / "v.safetensors"
    _files_vector().save(path)
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="v.safetensors already exists"):
        _files_vector(layers=(2,)).save(path, overwrite=False)
    with pytest.raises(OutputExistsError, match="v.gguf already exists"):
        (tmp_path / "v.gguf").write_bytes(b"x")
        _files_vector().to_gguf(tmp_path / "v.gguf", overwrite=False)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["v.gguf", "v.safetensors"]
    _files_vector().save(tmp_path / "new.safetensors", overwrite=False)  # a new name is written
    assert load_vector(tmp_path / "new.safetensors").layers == [1, 3]


# --------------------------------------------------------------------------- app endpoints

APP_MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def _files_app(smol, tmp_path_factory) -> SimpleNamespace:
    """The app over the session's default model, one allowed folder holding the bad files
    the cases name, and a folder outside it."""
    from apps._common import Registry
    from apps.app import build_app

    root = tmp_path_factory.mktemp("app-bad")
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    reg = Registry()
    reg.add(APP_MODEL, smol)
    demo = build_app(APP_MODEL, [allowed], registry=reg)
    ctx, tabs = demo.workbench_ctx, demo.workbench_tabs
    a = SimpleNamespace(ctx=ctx, tabs=tabs, allowed=allowed, outside=outside, out=ctx.out_dir)
    a.vec = SteeringVector(directions={3: torch.ones(smol.arch.d_model)}, method="mean_diff", model_name=APP_MODEL,
                           model_family=smol.arch.family, d_model=smol.arch.d_model, n_layers=smol.arch.n_layers)
    a.vec.save(ctx.out_dir / "taken.safetensors")  # earlier saves of these names
    a.vec.select([3]).to_gguf(ctx.out_dir / "taken.gguf")
    (allowed / "x.pt").write_bytes(pickle.dumps({"x": 1}, protocol=2))
    (ctx.out_dir / "taken-run").mkdir()  # an earlier training run
    (allowed / "model.safetensors").write_bytes(b"the model's own weights")  # what must never be replaced
    a.vec.save(outside / "v.safetensors")
    blob = (ctx.out_dir / "taken.safetensors").read_bytes()
    (allowed / "cut.safetensors").write_bytes(blob[:-100])
    _files_model_gguf(allowed / "model.gguf")
    with open(allowed / "huge.safetensors", "wb") as fh:  # sparse: 65 MiB on paper, nothing on disk
        fh.truncate(65 * MiB)
    (outside / "exists.safetensors").write_bytes(b"secret")
    for name, cfg in {
        "abs_head": {"method": "pause", "head": str(outside / "exists.safetensors"), "steps": 1},
        "abs_head_missing": {"method": "pause", "head": str(outside / "missing.safetensors"), "steps": 1},
        "dotdot_head": {"method": "projection", "head": "../../outside/exists.safetensors", "steps": 2},
        "dotdot_model": {"method": "coconut", "model": "../../outside", "steps": 2},
        "abs_model": {"method": "coconut", "model": str(outside), "steps": 2},
        "bad_steps": {"method": "coconut", "steps": 1.5},
    }.items():
        (allowed / name).mkdir()
        (allowed / name / "latent_policy.json").write_text(json.dumps(cfg))
    (allowed / "not_json").mkdir()
    (allowed / "not_json" / "latent_policy.json").write_text("{method: coconut")
    _files_trajectory_runs(allowed)
    return a


def _files_trajectory_runs(allowed: Path) -> None:
    """Run folders the Training tab's 'Show trajectories' must refuse: none recorded, only
    a torn line, a record naming a file outside its folder, one whose vector file is gone,
    and one whose vector file is not safetensors."""
    from workbench.train.trajectories import FORMAT, TRAJECTORIES_DIR, TRAJECTORIES_FILE

    def run(name: str, lines: list[str]) -> Path:
        folder = allowed / name
        (folder / TRAJECTORIES_DIR).mkdir(parents=True)
        (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
        if lines:
            (folder / TRAJECTORIES_FILE).write_text("\n".join(lines) + "\n")
        return folder

    def rec(file: str) -> str:
        return json.dumps({"format": FORMAT, "step": 2, "stage": 1, "method": "coconut", "file": file, "probes": []})

    run("traj_none", [])
    run("traj_torn", ['{"format": "workbench-latent-tra'])
    run("traj_escape", [rec("../../outside/exists.safetensors")])
    run("traj_gone", [rec(f"{TRAJECTORIES_DIR}/step000002.safetensors")])
    bad = run("traj_garbage", [rec(f"{TRAJECTORIES_DIR}/step000002.safetensors")])
    (bad / TRAJECTORIES_DIR / "step000002.safetensors").write_bytes(b"not a safetensors file at all")


def _files_ui(fn, *args):
    """Call a handler as the UI does (streaming ones to the end); the `gr.Error` it raises
    must show the original error's message, and the original is raised for the check."""
    try:
        out = fn(*args)
        if inspect.isgenerator(out):
            for _ in out:
                pass
    except gr.Error as e:
        cause = e.__cause__
        assert cause is not None, f"gr.Error without the original error: {e.message}"
        assert str(cause.args[0] if isinstance(cause, KeyError) else cause) in e.message
        raise cause from None


def _files_steer(a):
    return a.tabs["Steering"]


def _files_latent(a, policy, path="", upload=None, steps=2):
    return _files_ui(a.tabs["Latent reasoning"].run, APP_MODEL, policy, "What is 2 + 3?", steps, 2, upload, path)


APP_CASES = [
    # output files: never replaced without asking, never outside the output folder
    Case("save-over-existing-file", lambda a: _files_ui(_files_steer(a).save_vector, a.vec, "taken", "safetensors"),
         OutputExistsError, ["taken.safetensors", "already exists", "overwrite"]),
    Case("save-gguf-over-existing-file", lambda a: _files_ui(_files_steer(a).save_vector, a.vec, "taken.gguf", "gguf", False),
         OutputExistsError, ["taken.gguf", "already exists", "overwrite"]),
    Case("save-name-traversal", lambda a: _files_ui(_files_steer(a).save_vector, a.vec, "../model", "safetensors", True),
         PathNotAllowedError, ["../model", "plain name", "no folders"]),
    Case("save-name-absolute", lambda a: _files_ui(_files_steer(a).save_vector, a.vec, str(a.allowed / "model"), "safetensors", True),
         PathNotAllowedError, ["model", "plain name"]),
    Case("save-name-bad-characters", lambda a: _files_ui(_files_steer(a).save_vector, a.vec, "a*b?", "safetensors"),
         InputError, ["a*b?", "letters, digits"]),
    Case("save-name-empty", lambda a: _files_ui(_files_steer(a).save_vector, a.vec, "  ", "safetensors"),
         InputError, ["no vector file name", "plain name"]),
    Case("save-format-unknown", lambda a: _files_ui(_files_steer(a).save_vector, a.vec, "v", "pt"),
         InputError, ["'pt'", "safetensors", "gguf"]),
    Case("save-overwrite-not-bool", lambda a: _files_ui(_files_steer(a).save_vector, a.vec, "v", "gguf", "yes"),
         InputError, ["overwrite", "'yes'", "true or false"]),
    Case("bake-into-existing-run-folder", lambda a: _files_ui(a.tabs["Training"].bake, APP_MODEL, a.vec, "taken-run"),
         OutputExistsError, ["taken-run", "resume", "overwrite"]),
    Case("latent-train-into-existing-run-folder",
         lambda a: _files_ui(a.tabs["Training"].latent_train, APP_MODEL, "pause", "taken-run", 2),
         OutputExistsError, ["taken-run", "resume", "overwrite"]),
    Case("bake-resume-and-overwrite", lambda a: _files_ui(a.tabs["Training"].bake, APP_MODEL, a.vec, "new-run", "distil",
                                                          6.0, 2, 2e-3, "sentiment", True, True),
         InputError, ["resume", "overwrite", "not both"]),
    Case("bake-run-name-traversal", lambda a: _files_ui(a.tabs["Training"].bake, APP_MODEL, a.vec, "../allowed"),
         PathNotAllowedError, ["../allowed", "plain name"]),
    # recipe folders: every path latent_policy.json names is confined
    Case("policy-absolute-head", lambda a: _files_latent(a, "trained", "abs_head"), PathNotAllowedError,
         ["field 'head'", str(Path("outside") / "exists.safetensors"), "outside the folders", "relative"]),
    Case("policy-absolute-head-missing", lambda a: _files_latent(a, "trained", "abs_head_missing"), PathNotAllowedError,
         ["field 'head'", "missing.safetensors", "outside the folders"]),
    Case("policy-dotdot-head", lambda a: _files_latent(a, "trained", "dotdot_head"), PathNotAllowedError,
         ["field 'head'", "../../outside/exists.safetensors", "outside the folders"]),
    Case("policy-dotdot-model", lambda a: _files_latent(a, "trained", "dotdot_model"), PathNotAllowedError,
         ["field 'model'", "../../outside", "outside the folders"]),
    Case("policy-absolute-model", lambda a: _files_latent(a, "trained", "abs_model"), PathNotAllowedError,
         ["field 'model'", "outside", "outside the folders"]),
    Case("policy-not-json", lambda a: _files_latent(a, "trained", "not_json"), FileFormatError,
         ["latent_policy.json", "not valid JSON"]),
    Case("policy-steps-not-int", lambda a: _files_latent(a, "trained", "bad_steps"), FileFormatError,
         ["latent_policy.json", "'steps'", "1.5", "positive integer"]),
    Case("recipe-folder-outside", lambda a: _files_latent(a, "trained", str(a.outside)), PathNotAllowedError,
         ["outside", "outside the folders"]),
    Case("recipe-folder-missing", lambda a: _files_latent(a, "trained", "no-such-run/final"), MissingFileError,
         ["no-such-run/final", "does not exist"]),
    Case("head-path-traversal", lambda a: _files_latent(a, "projection_head", "../outside/exists.safetensors"),
         PathNotAllowedError, ["../outside/exists.safetensors", "outside the folders"]),
    Case("policy-unknown", lambda a: _files_latent(a, "telepathy"), InputError, ["'telepathy'", "coconut", "trained"]),
    Case("latent-steps-zero", lambda a: _files_latent(a, "coconut", steps=0), InputError, ["latent steps", "1..512", "0"]),
    # uploads
    Case("upload-outside-upload-dir", lambda a: _files_ui(_files_steer(a).load_vector, APP_MODEL, str(a.outside / "v.safetensors")),
         PathNotAllowedError, ["v.safetensors", "not uploaded through the app"]),
    Case("upload-outside-missing", lambda a: _files_ui(_files_steer(a).load_vector, APP_MODEL, str(a.outside / "gone.safetensors")),
         PathNotAllowedError, ["gone.safetensors", "not uploaded through the app"]),
    Case("upload-oversized", lambda a: _files_ui(_files_steer(a).load_vector, APP_MODEL, str(a.allowed / "huge.safetensors")),
         InputError, ["huge.safetensors", "65.0 MiB", "at most 64.0 MiB"]),
    Case("upload-truncated", lambda a: _files_ui(_files_steer(a).load_vector, APP_MODEL, str(a.allowed / "cut.safetensors")),
         FileFormatError, ["cut.safetensors", "truncated"]),
    Case("upload-model-gguf", lambda a: _files_ui(_files_steer(a).load_vector, APP_MODEL, str(a.allowed / "model.gguf")),
         FileFormatError, ["model.gguf", "'llama'", "controlvector"]),
    Case("upload-pickle-suffix", lambda a: _files_ui(_files_steer(a).load_vector, APP_MODEL, {"path": str(a.allowed / "x.pt")}),
         InputError, ["x.pt", ".safetensors", "never read"]),
    Case("upload-none", lambda a: _files_ui(_files_steer(a).load_vector, APP_MODEL, None), InputError, ["no steering vector uploaded"]),
    # numbers and names typed into the UI
    Case("seed-not-a-number", lambda a: _files_ui(a.tabs["Model"].generate, APP_MODEL, "Hi", 4, 0.0, "abc"),
         InputError, ["seed", "'abc'", "number"]),
    Case("seed-out-of-range", lambda a: _files_ui(a.tabs["Model"].generate, APP_MODEL, "Hi", 4, 0.0, 1e30),
         InputError, ["seed", "0..9223372036854775807"]),
    Case("max-new-tokens-fraction", lambda a: _files_ui(a.tabs["Model"].generate, APP_MODEL, "Hi", 2.5),
         InputError, ["max new tokens", "2.5", "whole number"]),
    Case("temperature-nan", lambda a: _files_ui(a.tabs["Model"].generate, APP_MODEL, "Hi", 4, float("nan")),
         InputError, ["temperature", "nan", "finite"]),
    Case("steer-scale-nan", lambda a: _files_ui(_files_steer(a).steer_generate, APP_MODEL, a.vec, "Hi", float("nan")),
         InputError, ["scale", "nan", "finite"]),
    Case("steer-where-unknown", lambda a: _files_ui(_files_steer(a).steer_generate, APP_MODEL, a.vec, "Hi", 2.0, "middle"),
         InputError, ["'middle'", "generated", "prompt"]),
    Case("unknown-model-name", lambda a: _files_ui(a.tabs["Model"].load_model, "no-such-model", ""), ModelNotFoundError,
         ["no-such-model", APP_MODEL]),
    Case("model-folder-outside", lambda a: _files_ui(a.tabs["Model"].load_model, "local path…", str(a.outside)),
         PathNotAllowedError, ["outside", "outside the folders"]),
    Case("layers-not-a-number", lambda a: _files_ui(_files_steer(a).extract, APP_MODEL, "paste pairs…", "a ||| b\nc ||| d",
                                                    "mean_diff", "ten"), InputError, ["'ten'", "0..29"]),
    Case("probe-set-unknown", lambda a: _files_ui(_files_steer(a).extract, APP_MODEL, "no-such-set", "", "mean_diff", "3"),
         InputError, ["'no-such-set'", "paste pairs"]),
    Case("prefix-seeds-not-ints", lambda a: _files_ui(a.tabs["Prefix & Sinks"].prefix_eval, APP_MODEL, "arith-easy", 1, "0, x"),
         InputError, ["prefix seeds", "'x'", "integer"]),
    Case("sinks-eps-nan", lambda a: _files_ui(a.tabs["Prefix & Sinks"].inspect, APP_MODEL, "Hello there", float("nan")),
         InputError, ["eps", "nan", "finite"]),
    Case("bake-lr-huge", lambda a: _files_ui(a.tabs["Training"].bake, APP_MODEL, a.vec, "lr-run", "distil", 6.0, 2, 50.0),
         InputError, ["learning rate", "[0, 1]", "50"]),
    # 'Show trajectories': a run folder inside the allowed folders, holding readable trajectories
    Case("show-run-outside", lambda a: _files_ui(a.tabs["Training"].show_run, str(a.outside)), PathNotAllowedError,
         ["outside", "outside the folders"]),
    Case("show-run-missing", lambda a: _files_ui(a.tabs["Training"].show_run, "no-such-run"), MissingFileError,
         ["no-such-run", "does not exist"]),
    Case("show-run-a-file", lambda a: _files_ui(a.tabs["Training"].show_run, "model.safetensors"), InputError,
         ["model.safetensors", "is a file", "run folder"]),
    Case("show-run-pca-unknown", lambda a: _files_ui(a.tabs["Training"].show_run, "traj_none", "umap"), InputError,
         ["'umap'", "latent", "hidden"]),
    Case("show-run-no-trajectories", lambda a: _files_ui(a.tabs["Training"].show_run, "traj_none"), MissingFileError,
         ["traj_none", "no latent trajectories", "probe_n"]),
    Case("show-run-torn-only", lambda a: _files_ui(a.tabs["Training"].show_run, "traj_torn"), MissingFileError,
         ["traj_torn", "no records yet"]),
    Case("show-run-vector-file-escapes", lambda a: _files_ui(a.tabs["Training"].show_run, "traj_escape"), FileFormatError,
         ["../../outside/exists.safetensors", "which is not in"]),
    Case("show-run-vector-file-gone", lambda a: _files_ui(a.tabs["Training"].show_run, "traj_gone"), FileFormatError,
         ["step000002.safetensors", "is missing"]),
    Case("show-run-vector-file-garbage", lambda a: _files_ui(a.tabs["Training"].show_run, "traj_garbage"), FileFormatError,
         ["step000002.safetensors"]),
    Case("cancel-unknown-run", lambda a: _files_ui(a.tabs["Training"].cancel, "nothing"), InputError,
         ["'nothing'", "running: none"]),
]


@pytest.mark.parametrize("case", APP_CASES, ids=ids(APP_CASES))
def test_app_bad_input(case, _files_app):
    before = (_files_app.allowed / "model.safetensors").read_bytes()
    check(case, _files_app, out_dir=_files_app.allowed)
    assert (_files_app.allowed / "model.safetensors").read_bytes() == before


def test_tables_are_big_enough():
    for table, floor in ((STEERING_FILE_CASES, 12), (APP_CASES, 12)):
        assert len(table) >= floor
        assert len(set(ids(table))) == len(table), "case ids must be unique"


def test_files_app_writes_only_into_its_output_folder(_files_app):
    """Saving is confined to `workbench-outputs` (never the allowed folder itself, where a
    model's own files live), and replacing a file there takes the explicit overwrite."""
    a, s = _files_app, _files_app.tabs["Steering"]
    assert a.out == (a.allowed / "workbench-outputs").resolve() and a.ctx.allowed_dirs == (a.allowed.resolve(),)
    path, _ = s.save_vector(a.vec, "model", "safetensors")
    assert path == str(a.out / "model.safetensors")
    assert (a.allowed / "model.safetensors").read_bytes() == b"the model's own weights"
    with pytest.raises(gr.Error, match="already exists"):
        s.save_vector(a.vec, "model", "safetensors")
    path, _ = s.save_vector(a.vec, "model", "safetensors", True)  # asked for: replaced
    back, _ = s.load_vector(APP_MODEL, path)  # the output folder is readable
    assert torch.equal(back.directions[3], a.vec.directions[3])
    for leftover in a.out.iterdir():
        assert not leftover.name.startswith("."), f"temp file left behind: {leftover.name}"


def test_files_policy_refusal_does_not_tell_whether_a_file_exists(_files_app):
    """A head path outside the allowed folders gets the same answer whether or not a file is
    there (it used to say which)."""
    msgs = []
    for folder, name in (("abs_head", "exists"), ("abs_head_missing", "missing")):
        with pytest.raises(PathNotAllowedError) as e:
            _files_latent(_files_app, "trained", folder)
        msgs.append(str(e.value).replace(name, "NAME"))
    assert msgs[0] == msgs[1]


def test_files_app_without_allowed_folders_reads_only_its_outputs(smol, tmp_path):
    from apps._common import Registry
    from apps.app import build_app

    reg = Registry()
    reg.add(APP_MODEL, smol)
    demo = build_app(APP_MODEL, [], registry=reg)
    ctx, s = demo.workbench_ctx, demo.workbench_tabs["Steering"]
    assert ctx.out_dir.is_dir() and ctx.out_dir.name.startswith("workbench-app-")
    vec = SteeringVector(directions={3: torch.ones(smol.arch.d_model)}, method="m", model_name=APP_MODEL,
                         model_family=smol.arch.family, d_model=smol.arch.d_model)
    path, _ = s.save_vector(vec, "v", "gguf")
    assert s.load_vector(APP_MODEL, path)[0].layers == [3]
    with pytest.raises(gr.Error) as e:
        s.load_vector(APP_MODEL, str(tmp_path / "x.safetensors"))
    assert type(e.value.__cause__) is PathNotAllowedError


def test_files_upload_cap_is_configurable(smol, tmp_path):
    from apps._common import Registry
    from apps.app import build_app

    reg = Registry()
    reg.add(APP_MODEL, smol)
    demo = build_app(APP_MODEL, [tmp_path], registry=reg, max_vector_mb=0.001)
    vec = SteeringVector(directions={k: torch.ones(smol.arch.d_model) for k in range(1, 4)}, method="m",
                         model_name=APP_MODEL, model_family=smol.arch.family, d_model=smol.arch.d_model)
    vec.save(tmp_path / "v.safetensors")
    with pytest.raises(gr.Error) as e:
        demo.workbench_tabs["Steering"].load_vector(APP_MODEL, str(tmp_path / "v.safetensors"))
    assert type(e.value.__cause__) is InputError and "at most 1048 bytes" in e.value.message
    with pytest.raises(InputError, match="max_vector_mb"):
        build_app(APP_MODEL, [tmp_path], registry=reg, max_vector_mb=float("nan"))

"""Bad inputs for loading, training and the command line: each refused with the exact error
class and a message that names the bad value and what is valid, before anything is written.

Tables (the harness is `tests/badinput.py`): `LOAD_CASES` (workbench.load on names, folders,
files, devices, dtypes), `TRAIN_CASES` (training configs, recipes, checkpoints, output
folders) and `CLI_CASES` (`workbench ...` through `workbench.cli.main`: exit code 2, one line
on stderr, no traceback). Helpers are prefixed `_load_` so this module can be merged with
the other capabilities' tables into one. The models are a 2-layer Llama with a 32-token
word-level tokenizer saved as a folder (built once, in seconds) and the tiny trainer model.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import workbench as wb
from badinput import Case, check, ids
from workbench import errors
from workbench.errors import (
    FileFormatError,
    InputError,
    MissingFileError,
    ModelNotFoundError,
    OutputNotWritableError,
)

# --------------------------------------------------------------------------- fixtures


def _load_make_folder(folder: Path) -> Path:
    """A complete, tiny model folder: 2-layer Llama (d_model 16) and a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(29)])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _load_set_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _load_variants(good: Path, root: Path) -> dict[str, Path]:
    """Broken copies of the good folder, one per way a folder can be wrong."""
    out = {}

    def variant(name, change):
        d = root / name
        shutil.copytree(good, d)
        change(d)
        out[name] = d

    (root / "empty").mkdir(parents=True)
    out["empty"] = root / "empty"
    variant("no-tokenizer", lambda d: [os.remove(d / f) for f in ("tokenizer.json", "tokenizer_config.json")])
    variant("no-weights", lambda d: os.remove(d / "model.safetensors"))
    variant("no-config", lambda d: os.remove(d / "config.json"))
    variant("truncated", lambda d: os.truncate(d / "model.safetensors", (d / "model.safetensors").stat().st_size // 2))
    variant("garbage-weights", lambda d: (d / "model.safetensors").write_bytes(b"\x80\x04 not safetensors at all"))
    variant("trailing-bytes", lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes() + b"\0" * 64))
    variant("bad-json", lambda d: (d / "config.json").write_text("{not json"))
    variant("config-list", lambda d: (d / "config.json").write_text("[1, 2]"))
    variant("no-model-type", lambda d: _load_set_config(d, model_type=None))
    variant("unknown-type", lambda d: _load_set_config(d, model_type="nope-arch"))
    variant("hidden-str", lambda d: _load_set_config(d, hidden_size="abc"))
    variant("zero-layers", lambda d: _load_set_config(d, num_hidden_layers=0))
    variant("wrong-shape", lambda d: _load_set_config(d, hidden_size=32))
    variant("bad-tokenizer", lambda d: (d / "tokenizer.json").write_text("{bad"))
    variant("missing-shard", lambda d: (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": "model-00002.safetensors"}})))
    return out


@pytest.fixture(scope="module")
def _load_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("load-folders")
    good = _load_make_folder(root / "good")
    return SimpleNamespace(good=good, root=root, v=_load_variants(good, root / "variants"))


@pytest.fixture()
def _load_ctx(_load_folders, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    out.mkdir()
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("not a folder")
    return SimpleNamespace(**vars(_load_folders), out=out, file=a_file, tmp=tmp_path, monkeypatch=monkeypatch)


# --------------------------------------------------------------------------- loading

REG = "qwen3.5-tiny"  # a registered name every 'registered models' list includes
FOLDER_WORDS = ("config.json", "tokenizer.json")  # what a model folder must hold, named in the message


def _load_v(name: str):
    return lambda c: wb.load(str(c.v[name]), device="cpu")


LOAD_CASES = [
    Case("empty-name", lambda c: wb.load(""), ModelNotFoundError, ["''", "empty", REG, *FOLDER_WORDS]),
    Case("blank-name", lambda c: wb.load("   "), ModelNotFoundError, ["'   '", REG]),
    Case("none-name", lambda c: wb.load(None), InputError, ["None", REG]),
    Case("unknown-name", lambda c: wb.load("no-such-model"), ModelNotFoundError, ["no-such-model", REG, "smollm2-135m"]),
    Case("missing-path", lambda c: wb.load("./definitely/not/here"), ModelNotFoundError, ["./definitely/not/here", "no such local path", REG]),
    Case("file-not-folder", lambda c: wb.load(str(c.good / "model.safetensors")), ModelNotFoundError, ["model.safetensors", "is a file", *FOLDER_WORDS]),
    Case("empty-folder", _load_v("empty"), ModelNotFoundError, ["empty", "it is empty", *FOLDER_WORDS, REG]),
    Case("no-tokenizer", _load_v("no-tokenizer"), ModelNotFoundError, ["no-tokenizer", "no tokenizer files", "tokenizer.json"]),
    Case("no-weights", _load_v("no-weights"), ModelNotFoundError, ["no-weights", "no weights", "safetensors"]),
    Case("no-config", _load_v("no-config"), ModelNotFoundError, ["no-config", "no config.json"]),
    Case("truncated-safetensors", _load_v("truncated"), FileFormatError, ["truncated/model.safetensors", "is truncated"]),
    Case("garbage-safetensors", _load_v("garbage-weights"), FileFormatError, ["garbage-weights/model.safetensors", "not a safetensors file"]),
    Case("trailing-bytes", _load_v("trailing-bytes"), FileFormatError, ["trailing-bytes/model.safetensors", "corrupt", "64 bytes"]),
    Case("invalid-config-json", _load_v("bad-json"), FileFormatError, ["bad-json/config.json", "not valid JSON"]),
    Case("config-not-object", _load_v("config-list"), FileFormatError, ["config-list/config.json", "JSON object", "list"]),
    Case("config-no-model-type", _load_v("no-model-type"), FileFormatError, ["no-model-type/config.json", "model_type"]),
    Case("config-unknown-type", _load_v("unknown-type"), FileFormatError, ["unknown-type/config.json", "'nope-arch'"]),
    Case("config-field-type", _load_v("hidden-str"), FileFormatError, ["hidden-str/config.json", "hidden_size", "abc"]),
    Case("config-zero-layers", _load_v("zero-layers"), FileFormatError, ["zero-layers/config.json", "num_hidden_layers", "positive integer", "0"]),
    Case("weights-do-not-fit", _load_v("wrong-shape"), FileFormatError, ["wrong-shape", "do not fit its config.json"]),
    Case("bad-tokenizer-file", _load_v("bad-tokenizer"), FileFormatError, ["bad-tokenizer", "tokenizer.json", "could not be read"]),
    Case("index-missing-shard", _load_v("missing-shard"), FileFormatError, ["model.safetensors.index.json", "model-00002.safetensors"]),
    Case("bad-dtype", lambda c: wb.load(str(c.good), device="cpu", dtype="float64"), InputError, ["float64", "bfloat16", "float32"]),
    Case("dtype-not-a-name", lambda c: wb.load(str(c.good), device="cpu", dtype=5), InputError, ["5", "float16"]),
    Case("dtype-unsupported-torch", lambda c: wb.load(str(c.good), device="cpu", dtype=torch.int8), InputError, ["int8", "float32"]),
    Case("bad-device", lambda c: wb.load(str(c.good), device="tpu:7"), InputError, ["tpu:7", "cpu", "cuda:N", "meta"]),
    Case("device-float", lambda c: wb.load(str(c.good), device=3.5), InputError, ["3.5", "cuda:N"]),
    Case("device-map-junk", lambda c: wb.load(str(c.good), device_map="junk"), InputError, ["junk", "'auto'", "cuda:N"]),
    Case("device-map-bad-device", lambda c: wb.load(str(c.good), device_map={"model": "tpu"}), InputError, ["tpu", "cuda:N"]),
    Case("device-map-negative-gpu", lambda c: wb.load(str(c.good), device_map={"model": -1}), InputError, ["-1", "GPU index"]),
    Case("device-map-empty", lambda c: wb.load(str(c.good), device_map={}), InputError, ["empty", "auto"]),
    Case("trust-remote-code-str", lambda c: wb.load(str(c.good), trust_remote_code="yes"), InputError, ["trust_remote_code", "'yes'", "True or False"]),
    Case("hub-id-offline", lambda c: wb.load("someone/not-a-cached-model-xyz", device="cpu"), ModelNotFoundError,
         ["someone/not-a-cached-model-xyz", "HF_HUB_OFFLINE", "local path", REG]),  # fmt: skip
    Case("27b-on-cpu", lambda c: wb.load("qwen3.5-27b-random", device="cpu"), InputError, ["cuda", "meta"]),
]
if not torch.cuda.is_available():
    LOAD_CASES.append(Case("cuda-without-cuda", lambda c: wb.load(str(c.good), device="cuda"), InputError, ["'cuda'", "no CUDA device", "cpu"]))


@pytest.mark.parametrize("case", LOAD_CASES, ids=ids(LOAD_CASES))
def test_load_bad_input(case, _load_ctx):
    t = time.perf_counter()
    check(case, _load_ctx, out_dir=_load_ctx.root)  # nothing is written into any model folder
    assert time.perf_counter() - t < 30, f"[{case.id}] took {time.perf_counter() - t:.0f} s to refuse"


def test_load_good_folder_still_loads(_load_ctx):
    bench = wb.load(str(_load_ctx.good), device="cpu")
    assert (bench.arch.n_layers, bench.arch.d_model, bench.arch.vocab_size) == (2, 16, 32)


# --------------------------------------------------------------------------- training


def _load_tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))  # fmt: skip


def _load_data(n: int = 8):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 64, (8,), generator=g) for _ in range(n)]


def _load_loss(model, batch):
    from workbench.train import StepLoss

    ids_ = torch.stack(batch)
    return StepLoss(model(input_ids=ids_, labels=ids_).loss, ids_.numel())


def _load_train_cfg(out_dir, **kw):
    from workbench.train import TrainConfig

    base = dict(steps=2, batch_size=2, lr=1e-2, out_dir=str(out_dir), train_modules=["norm"], ckpt_every=1, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _load_train(c, out_dir, resume=False, **kw):
    from workbench.train import prepare_trainable, train

    cfg = _load_train_cfg(out_dir, **kw)
    return train(prepare_trainable(_load_tiny_llama(), cfg), _load_data(), _load_loss, cfg, resume=resume)


@pytest.fixture(scope="module")
def _load_runs(tmp_path_factory):
    """A finished 2-step run, a copy with a flipped byte in its weights, a foreign folder."""
    root = tmp_path_factory.mktemp("train-runs")
    _load_train(None, root / "good")
    shutil.copytree(root / "good", root / "corrupt")
    f = root / "corrupt" / "checkpoint" / "trainable.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0xFF
    f.write_bytes(bytes(raw))
    shutil.copytree(root / "good", root / "torn")
    (root / "torn" / "checkpoint" / "state.json").write_text('{"format": "workbench-train-')
    (root / "foreign" / "checkpoint").mkdir(parents=True)
    (root / "foreign" / "checkpoint" / "state.json").write_text(json.dumps({"format": "something-else"}))
    return root


@pytest.fixture()
def _load_tctx(_load_runs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("x")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{nope")
    list_json = tmp_path / "list.json"
    list_json.write_text("[1]")
    seed_json = tmp_path / "seed.json"
    seed_json.write_text(json.dumps({"seed": "abc"}))
    return SimpleNamespace(runs=_load_runs, out=out, file=a_file, bad_json=bad_json, list_json=list_json, seed_json=seed_json)


def _load_cfg(**kw):
    from workbench.train import TrainConfig

    return lambda c: TrainConfig(**kw)


def _load_recipe_cfg(cls_name: str, module: str, **kw):
    def call(c):
        import importlib

        return getattr(importlib.import_module(f"workbench.train.{module}"), cls_name)(**kw)

    return call


def _load_resume(run: str, **kw):
    return lambda c: _load_train(c, c.runs / run, resume=True, **kw)


TRAIN_CASES = [
    Case("seed-str", _load_cfg(seed="abc"), InputError, ["seed", "'abc'", "integer"]),
    Case("seed-float", _load_cfg(seed=1.5), InputError, ["seed", "1.5", "integer"]),
    Case("steps-zero", _load_cfg(steps=0), InputError, ["steps", "0", "[1, inf]"]),
    Case("steps-fraction", _load_cfg(steps=2.5), InputError, ["steps", "2.5", "integer"]),
    Case("steps-bool", _load_cfg(steps=True), InputError, ["steps", "True", "integer"]),
    Case("batch-zero", _load_cfg(batch_size=0), InputError, ["batch_size", "0", "[1, inf]"]),
    Case("lr-nan", _load_cfg(lr=float("nan")), InputError, ["lr", "nan", "finite"]),
    Case("lr-zero", _load_cfg(lr=0.0), InputError, ["lr", "greater than 0", "0.0"]),
    Case("lr-str", _load_cfg(lr="fast"), InputError, ["lr", "'fast'", "number"]),
    Case("warmup-negative", _load_cfg(warmup_steps=-1), InputError, ["warmup_steps", "-1"]),
    Case("optimizer-unknown", _load_cfg(optimizer="sgd"), InputError, ["sgd", "adamw", "apollo-mini"]),
    Case("schedule-unknown", _load_cfg(schedule="step"), InputError, ["'step'", "cosine", "linear"]),
    Case("betas-range", _load_cfg(betas=(0.9, 1.5)), InputError, ["betas", "1.5", "[0, 1)"]),
    Case("betas-str", _load_cfg(betas="ab"), InputError, ["betas", "'ab'", "two numbers"]),
    Case("max-grad-norm-negative", _load_cfg(max_grad_norm=-1.0), InputError, ["max_grad_norm", "-1", "greater than 0"]),
    Case("lora-targets-str", _load_cfg(lora_targets="q_proj"), InputError, ["lora_targets", "'q_proj'", "list of strings"]),
    Case("lora-dropout-one", _load_cfg(lora_dropout=1.0), InputError, ["lora_dropout", "1.0", "[0, 1)"]),
    Case("progress-str", _load_cfg(progress="false"), InputError, ["progress", "'false'", "true or false"]),
    Case("model-not-str", _load_cfg(model=3), InputError, ["model", "3", "string"]),
    Case("config-file-seed", lambda c: __import__("workbench.train", fromlist=["TrainConfig"]).TrainConfig.load(c.seed_json),
         InputError, ["seed.json", "seed", "'abc'"]),  # fmt: skip
    Case("config-file-invalid", lambda c: __import__("workbench.train", fromlist=["TrainConfig"]).TrainConfig.load(c.bad_json),
         FileFormatError, ["bad.json", "not valid JSON"]),  # fmt: skip
    Case("config-file-list", lambda c: __import__("workbench.train", fromlist=["TrainConfig"]).TrainConfig.load(c.list_json),
         FileFormatError, ["list.json", "JSON object", "list"]),  # fmt: skip
    Case("config-file-missing", lambda c: __import__("workbench.train", fromlist=["TrainConfig"]).TrainConfig.load(c.out / "none.json"),
         MissingFileError, ["none.json", "does not exist"]),  # fmt: skip
    Case("override-no-equals", lambda c: __import__("workbench.train", fromlist=["parse_overrides"]).parse_overrides(["lr"]),
         InputError, ["'lr'", "KEY=VALUE"]),  # fmt: skip
    Case("unknown-recipe", lambda c: __import__("workbench.train.recipes", fromlist=["get_recipe"]).get_recipe("cocnut"),
         InputError, ["cocnut", "coconut", "projection-head", "pause"]),  # fmt: skip
    Case("out-dir-under-file", lambda c: _load_train(c, c.file / "run"), OutputNotWritableError, ["a-file.txt", "is a file"]),
    Case("out-dir-is-file", lambda c: _load_train(c, c.file), OutputNotWritableError, ["a-file.txt", "is a file"]),
    Case("empty-corpus", lambda c: __import__("workbench.train", fromlist=["train"]).train(
        __import__("workbench.train", fromlist=["prepare_trainable"]).prepare_trainable(_load_tiny_llama(), _load_train_cfg(c.out / "r")),
        [], _load_loss, _load_train_cfg(c.out / "r")), InputError, ["corpus is empty"]),  # fmt: skip
    Case("resume-without-checkpoint", lambda c: _load_train(c, c.out / "fresh", resume=True), InputError, ["no checkpoint", "fresh", "--resume"]),
    Case("resume-corrupt-checkpoint", _load_resume("corrupt", steps=4), FileFormatError, ["corrupt/checkpoint", "corrupt", "trainable.safetensors"]),
    Case("resume-torn-state", _load_resume("torn", steps=4), FileFormatError, ["torn/checkpoint", "state.json", "not valid JSON"]),
    Case("resume-foreign-folder", _load_resume("foreign", steps=4), FileFormatError, ["foreign/checkpoint", "not a workbench training checkpoint", "something-else"]),
    Case("resume-other-lr", _load_resume("good", steps=4, lr=0.5), InputError, ["cannot resume", "lr", "0.5"]),
    Case("lora-target-unmatched", lambda c: __import__("workbench.train", fromlist=["prepare_trainable"]).prepare_trainable(
        _load_tiny_llama(), _load_train_cfg(c.out, lora_rank=2, lora_targets=["query_key_value"])), InputError, ["query_key_value", "q_proj"]),  # fmt: skip
    Case("train-modules-bad-regex", lambda c: __import__("workbench.train", fromlist=["prepare_trainable"]).prepare_trainable(
        _load_tiny_llama(), _load_train_cfg(c.out, train_modules=["("])), InputError, ["train_modules", "regular expression"]),  # fmt: skip
    Case("bad-probe-set", lambda c: __import__("workbench.train.bake", fromlist=["load_probe_set"]).load_probe_set("no-such-set"),
         InputError, ["probe_set", "no-such-set", "sentiment"]),  # fmt: skip
    Case("bake-mode", _load_recipe_cfg("BakeConfig", "bake", mode="melt"), InputError, ["mode", "'melt'", "distil", "fold"]),
    Case("bake-layers-str", _load_recipe_cfg("BakeConfig", "bake", layers=["a"]), InputError, ["layers[0]", "'a'", "integer"]),
    Case("bake-scale-nan", _load_recipe_cfg("BakeConfig", "bake", scale=float("nan")), InputError, ["scale", "nan", "finite"]),
    Case("coconut-thoughts-negative", _load_recipe_cfg("CoconutConfig", "latent_recipes", thoughts_per_step=-1), InputError, ["thoughts_per_step", "-1", ">= 1"]),
    Case("latent-head-trains-base", _load_recipe_cfg("LatentHeadConfig", "latent_recipes", train_modules=["x"]), InputError, ["frozen base", "train_modules"]),
    Case("pause-targets", _load_recipe_cfg("PauseConfig", "latent_recipes", targets="silver"), InputError, ["targets", "'silver'", "gold"]),
    Case("micro-direct-fraction", _load_recipe_cfg("MicroConfig", "micro", direct_fraction=2.0), InputError, ["direct_fraction", "2.0", "[0, 1]"]),
    Case("micro-layer-types", _load_recipe_cfg("MicroConfig", "micro", layer_types=["mamba"]), InputError, ["layer_types", "mamba", "full_attention"]),
    Case("arith-n-train-zero", _load_recipe_cfg("CoconutConfig", "latent_recipes", n_train=0), InputError, ["n_train", "0"]),
]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=ids(TRAIN_CASES))
def test_train_bad_input(case, _load_tctx):
    before = {p: p.stat().st_size for p in _load_tctx.runs.rglob("*") if p.is_file()}
    check(case, _load_tctx, out_dir=_load_tctx.out)
    after = {p: p.stat().st_size for p in _load_tctx.runs.rglob("*") if p.is_file()}
    assert after == before, f"[{case.id}] a refused resume changed the run folders"


# --------------------------------------------------------------------------- command line


def _load_cli(argv: list[str]) -> int:
    from workbench.cli import main

    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own refusals (type=..., choices=...)
        return int(e.code)


def _load_vector_file(folder: Path) -> Path:
    from workbench.steering.vector import SteeringVector

    vec = SteeringVector(directions={1: torch.ones(16)}, method="mean_diff", model_name="tiny", model_family="llama", d_model=16, n_layers=2)
    path = folder / "vec.safetensors"
    vec.save(path)
    return path


def _load_disk_full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _load_enospc(c):
    """`steer export` with the disk full at the moment the output is flushed."""
    vec = _load_vector_file(c.tmp)
    c.monkeypatch.setattr(os, "fsync", _load_disk_full)
    return ["steer", "export", vec, "--out", c.out / "vec.gguf"]


def _load_read_only(c):
    ro = c.tmp / "read-only"
    ro.mkdir()
    real = os.access
    c.monkeypatch.setattr(errors.os, "access", lambda p, mode, *a, **k: False if os.path.abspath(p) == str(ro) else real(p, mode, *a, **k))
    return ["sinks", "hello", "--model", "no-such-model", "--out", ro / "s.json"]


def _load_argv(*argv):
    return lambda c: list(argv)


CLI_CASES = [
    Case("info-empty-name", _load_argv("info", ""), ModelNotFoundError, ["''", REG]),
    Case("info-unknown-model", _load_argv("info", "no-such-model"), ModelNotFoundError, ["no-such-model", REG]),
    Case("info-empty-folder", lambda c: ["info", c.v["empty"]], ModelNotFoundError, ["empty", "config.json", "tokenizer.json"]),
    Case("info-no-tokenizer", lambda c: ["info", c.v["no-tokenizer"]], ModelNotFoundError, ["no-tokenizer", "tokenizer files"]),
    Case("info-truncated-safetensors", lambda c: ["info", c.v["truncated"]], FileFormatError, ["truncated/model.safetensors", "truncated"]),
    Case("info-invalid-config", lambda c: ["info", c.v["bad-json"]], FileFormatError, ["bad-json/config.json", "not valid JSON"]),
    Case("info-bad-device", _load_argv("info", "qwen3.5-tiny", "--device", "tpu:7"), InputError, ["tpu:7", "cuda:N"]),
    Case("info-bad-dtype", _load_argv("info", "qwen3.5-tiny", "--dtype", "float64"), InputError, ["float64", "bfloat16"]),
    Case("out-under-a-file", lambda c: ["sinks", "hi", "--model", "no-such-model", "--out", c.file / "s.json"], OutputNotWritableError,
         ["--out", "a-file.txt", "is a file"]),  # fmt: skip  (refused before the (unknown) model is looked at)
    Case("out-read-only", _load_read_only, OutputNotWritableError, ["--out", "read-only", "no write permission"]),
    Case("app-vector-cap-zero", lambda c: ["app", "--max-vector-mb", "0"], InputError, ["--max-vector-mb", "0"]),
    Case("app-head-cap-nan", lambda c: ["app", "--max-head-mb", "nan"], InputError, ["--max-head-mb", "nan"]),
    Case("app-out-dir-a-file", lambda c: ["app", "--out-dir", c.file], InputError, ["--out-dir", "a-file.txt", "is a file"]),
    Case("out-is-a-folder", lambda c: ["sinks", "hi", "--model", "no-such-model", "--out", c.out], OutputNotWritableError, ["--out", "is a folder"]),
    Case("html-under-a-file", lambda c: ["latent", "run", "hi", "--model", "no-such-model", "--html", c.file / "x.html"], OutputNotWritableError,
         ["--html", "a-file.txt"]),  # fmt: skip
    Case("eval-out-is-a-file", lambda c: ["latent", "eval", "--model", "no-such-model", "--out", c.file], OutputNotWritableError, ["--out", "is a file"]),
    Case("train-out-under-a-file", lambda c: ["train", "pause", "--out", c.file / "run", "--set", "model=\"no-such-model\""], OutputNotWritableError,
         ["--out", "a-file.txt", "is a file"]),  # fmt: skip
    Case("disk-full", _load_enospc, OSError, ["No space left on device"]),
    Case("latent-steps-zero", _load_argv("latent", "run", "hi", "--model", "no-such-model", "--steps", "0"), InputError, ["--steps", "0", "[1, inf]"]),
    Case("latent-think-close-negative", _load_argv("latent", "run", "hi", "--model", "no-such-model", "--think-close-id", "-1"), InputError,
         ["--think-close-id", "-1"]),  # fmt: skip
    Case("latent-think-close-out-of-vocab", lambda c: ["latent", "run", "w1 w2", "--model", c.good, "--device", "cpu", "--think-close-id", "999999", "--raw"],
         InputError, ["999999", "vocab size 32", "0..31"]),  # fmt: skip
    Case("latent-eval-unknown-method", _load_argv("latent", "eval", "--model", "no-such-model", "--methods", "coconut,bogus"), InputError,
         ["bogus", "coconut", "no-think"]),  # fmt: skip
    Case("latent-head-needs-head", _load_argv("latent", "run", "hi", "--model", "no-such-model", "--method", "latent-head"), InputError,
         ["latent-head", "--head"]),  # fmt: skip
    Case("vector-is-a-folder", lambda c: ["steer", "generate", "hi", "--model", "no-such-model", "--vector", c.out], FileFormatError,
         ["--vector", "is a folder", "steering vector"]),  # fmt: skip
    Case("vector-missing", lambda c: ["steer", "generate", "hi", "--model", "no-such-model", "--vector", c.tmp / "none.safetensors"], MissingFileError,
         ["none.safetensors", "does not exist"]),  # fmt: skip
    Case("export-input-is-a-folder", lambda c: ["steer", "export", c.out, "--out", c.tmp / "v.gguf"], FileFormatError, ["is a folder"]),
    Case("export-bad-suffix", lambda c: ["steer", "export", _load_vector_file(c.tmp), "--out", c.out / "v.txt"], InputError, ["v.txt", ".gguf"]),
    Case("float-nan", _load_argv("generate", "hi", "--model", "no-such-model", "--top-p", "nan"), SystemExit, ["--top-p", "finite number", "'nan'"]),
    Case("train-seed-str", _load_argv("train", "coconut", "--set", "seed=abc", "--print-config"), InputError, ["seed", "'abc'", "integer"]),
    Case("train-config-missing", lambda c: ["train", "coconut", "--config", c.tmp / "nope.json"], MissingFileError, ["nope.json", "does not exist"]),
    Case("train-config-invalid", lambda c: ["train", "coconut", "--config", c.file], FileFormatError, ["a-file.txt", "not valid JSON"]),
    Case("bake-vector-is-a-folder", lambda c: ["train", "bake", "--out", c.out / "b", "--set", f"vector={json.dumps(str(c.out))}", "--set", "model=\"no-such-model\""],
         FileFormatError, ["vector", "is a folder"]),  # fmt: skip
    Case("bake-bad-probe-set", lambda c: ["train", "bake", "--out", c.out / "b", "--set", f"vector={json.dumps(str(_load_vector_file(c.tmp)))}",
                                            "--set", "probe_set=\"no-such-set\"", "--set", "model=\"no-such-model\""],
         InputError, ["probe_set", "no-such-set", "sentiment"]),  # fmt: skip
    Case("prompt-file-missing", lambda c: ["sinks", "--model", "no-such-model", "--prompt-file", c.tmp / "p.txt"], MissingFileError,
         ["--prompt-file", "p.txt", "does not exist"]),  # fmt: skip
]


@pytest.mark.parametrize("case", CLI_CASES, ids=ids(CLI_CASES))
def test_cli_bad_input(case, _load_ctx, capsys):
    """Exit code 2, one line on stderr starting 'workbench <command>: error:' that names the
    bad value (case.names), no traceback, nothing written into the output folder. The
    `error` column is the class the core raises (the CLI prints its message); SystemExit
    marks argparse's own refusals."""
    argv = case.call(_load_ctx)
    before = sorted(p.name for p in _load_ctx.out.rglob("*"))
    capsys.readouterr()
    code = _load_cli(argv)
    err = capsys.readouterr().err
    assert code == 2, f"[{case.id}] exit code {code}; stderr: {err}"
    # progress bars of a model that did load (tqdm's "Loading weights ... it/s]") are not part of the error
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not ("%|" in line and "it/s]" in line)]
    if case.error is SystemExit:
        assert lines and lines[-1].startswith("workbench ") and ": error: " in lines[-1], f"[{case.id}] {err!r}"
        msg = lines[-1]
    else:
        assert len(lines) == 1, f"[{case.id}] stderr is not one line: {err!r}"
        msg = lines[0]
        assert msg.startswith(f"workbench {argv[0]}") and ": error: " in msg, f"[{case.id}] {msg!r}"
    assert "Traceback" not in err
    missing = [n for n in case.names if n.lower() not in msg.lower()]
    assert not missing, f"[{case.id}] {msg!r} does not name {missing}"
    if case.no_new_files:
        assert sorted(p.name for p in _load_ctx.out.rglob("*")) == before, f"[{case.id}] wrote into the output folder"


def test_cli_errors_come_from_the_expected_class(_load_ctx, monkeypatch):
    """The CLI table's `error` column is the class the core raises for that input (so a
    one-line message is the workbench's own refusal, not a caught accident)."""
    from workbench import cli

    seen = {}
    real = cli.user_error

    def spy(e):
        seen["type"] = type(e)
        return real(e)

    monkeypatch.setattr(cli, "user_error", spy)
    for case in CLI_CASES:
        if case.error is SystemExit:
            continue
        seen.clear()
        with pytest.MonkeyPatch.context() as mp:  # a case's own patches (disk full, read-only) end with it
            argv = case.call(SimpleNamespace(**{**vars(_load_ctx), "monkeypatch": mp}))
            assert _load_cli(argv) == 2
        assert seen.get("type") is case.error, f"[{case.id}] raised {seen.get('type')}, table says {case.error.__name__}"


def test_tables_have_enough_cases():
    for name, table in (("loading", LOAD_CASES), ("training", TRAIN_CASES), ("cli", CLI_CASES)):
        assert len(table) >= 10, f"{name}: {len(table)} cases"
        assert len({c.id for c in table}) == len(table), f"{name}: duplicate ids"


# --------------------------------------------------------------------------- defects keep their traceback


def test_cli_defect_keeps_its_traceback(monkeypatch):
    """Only refusals are one line: a bug (RuntimeError, KeyError, a library's ValueError)
    propagates with its traceback."""
    from workbench import cli
    from workbench.commands import core

    for exc in (RuntimeError("a bug"), KeyError("k"), TypeError("t")):
        def boom(args, exc=exc):
            raise exc

        monkeypatch.setattr(core, "_models", boom)
        with pytest.raises(type(exc)):
            cli.main(["models"])

    def library_value_error(args):
        import json as _json

        _json.loads("{")  # a ValueError raised inside a library, not by the workbench

    monkeypatch.setattr(core, "_models", library_value_error)
    with pytest.raises(ValueError):
        cli.main(["models"])


def test_user_error_formats_file_system_errors():
    from workbench.cli import user_error

    assert user_error(OSError(errno.ENOSPC, "No space left on device", "/x/out.json")).startswith("No space left on device: '/x/out.json'")
    assert user_error(IsADirectoryError(errno.EISDIR, "Is a directory", "/x")) == "Is a directory: '/x'"
    assert user_error(PermissionError(errno.EACCES, "Permission denied", "/x")) == "Permission denied: '/x'"
    assert user_error(OSError(errno.EROFS, "Read-only file system", "/x")) == "Read-only file system: '/x'"
    assert user_error(ModelNotFoundError("a\nb")) == "a; b"  # one line
    assert user_error(RuntimeError("bug")) is None
    assert user_error(OSError(errno.EBADF, "Bad file descriptor")) is None  # a defect, not the user's disk


# --------------------------------------------------------------------------- writes: atomic, modes, leftovers


def test_disk_full_leaves_no_half_written_file(tmp_path, monkeypatch):
    from workbench.paths import atomic_dir, atomic_write_text

    target = tmp_path / "out.json"
    atomic_write_text(target, "old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        atomic_write_text(target, "new" * 1000)
    assert e.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "a").write_text("x")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_one_atomic_writer_refuses_to_replace_when_asked(tmp_path):
    """Steering vectors and every other file go through paths.atomic_write_file: the same
    temp naming, fsync, modes; overwrite=False refuses an existing file and leaves it."""
    from workbench.errors import OutputExistsError
    from workbench.paths import atomic_write_bytes, atomic_write_file, file_mode

    target = tmp_path / "v.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(OutputExistsError, match="already exists"):
        atomic_write_bytes(target, b"new", overwrite=False)
    with pytest.raises(ZeroDivisionError):
        atomic_write_file(tmp_path / "w.bin", lambda tmp: 1 / 0)
    atomic_write_file(tmp_path / "x.bin", lambda tmp: open(tmp, "wb").write(b"x"), overwrite=False)
    assert target.read_bytes() == b"old" and (tmp_path / "x.bin").stat().st_mode & 0o777 == file_mode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.bin", "x.bin"]  # no temp left, nothing half-written


def test_written_files_get_ordinary_modes(tmp_path):
    """save_pretrained writes its weights 0600; everything the workbench writes gets
    0666 & ~umask (files) and 0777 & ~umask (folders), like any other file."""
    from workbench.paths import atomic_dir, atomic_write_text, dir_mode, file_mode

    umask = os.umask(0o022)
    os.umask(umask)
    assert file_mode() == 0o666 & ~umask and dir_mode() == 0o777 & ~umask
    with atomic_dir(tmp_path / "model") as tmp:
        _load_tiny_llama().save_pretrained(tmp)
        os.close(os.open(tmp / "private", os.O_WRONLY | os.O_CREAT, 0o600))
        (tmp / "sub").mkdir(mode=0o700)
    atomic_write_text(tmp_path / "f.json", "{}")
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*(tmp_path / "model").rglob("*"), tmp_path / "model", tmp_path / "f.json"]}
    assert modes["model.safetensors"] == modes["config.json"] == modes["private"] == modes["f.json"] == file_mode(), modes
    assert modes["model"] == modes["sub"] == dir_mode(), modes


def test_stale_temps_of_killed_writers_are_removed(tmp_path, monkeypatch):
    """A build killed mid-way (SIGKILL) leaves its hidden temp folder; the next build of the
    same target removes it when its writer is gone, and leaves live writers' temps alone."""
    import subprocess
    import sys

    from workbench import models, paths

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    host = paths._host_tag()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        made = {
            "dead-writer": tmp_path / f".toy.tmp-{host}-{dead.pid}-0a0b0c0d",
            "live-writer": tmp_path / f".toy.tmp-{host}-{alive.pid}-0a0b0c0e",
            "this-process": tmp_path / f".toy.tmp-{host}-{os.getpid()}-0a0b0c0f",
            "other-host-fresh": tmp_path / f".toy.tmp-ffffffff-{dead.pid}-0a0b0c10",
            "other-host-old": tmp_path / f".toy.tmp-fffffffe-{dead.pid}-0a0b0c11",
            "unnamed-old": tmp_path / ".toy.tmp-abcd1234",
            "unnamed-fresh": tmp_path / ".toy.tmp-abcd1235",
            "moved-aside": tmp_path / ".toy.old-0123456789abcdef",
            "other-target": tmp_path / ".toy2.tmp-abcd1236",
            "file-dead-writer": tmp_path / f".toy.{host}-{dead.pid}-0a0b0c12.tmp",
        }
        for name, p in made.items():
            if name.startswith("file-"):
                p.write_bytes(b"half")
            else:
                p.mkdir()
                (p / "model.safetensors").write_bytes(b"\0" * 1000)
        old = time.time() - 2 * 86400
        for name in ("other-host-old", "unnamed-old", "other-target"):
            os.utime(made[name], (old, old))
        models.cached_build("toy", lambda out: (out / "w.bin").write_bytes(b"1"))
        left = {name for name, p in made.items() if p.exists()}
        assert left == {"live-writer", "this-process", "other-host-fresh", "unnamed-fresh", "other-target"}, left
        assert (tmp_path / "toy" / "w.bin").read_bytes() == b"1"
    finally:
        alive.kill()
        alive.wait()


def test_resumed_finished_run_reports_its_final_loss(tmp_path):
    """--resume of a run (or recipe stage) that had finished takes no step; its final loss
    comes from the metrics log instead of None (train_summary.json said final_loss: null)."""
    first = _load_train(None, tmp_path / "run")
    again = _load_train(None, tmp_path / "run", resume=True)
    assert first.final_loss is not None and again.history == []
    assert again.final_loss == pytest.approx(first.final_loss)

"""The shared trainer: optimizers, exact resume (also after SIGKILL), checkpoints, bad input.

Models here are tiny Llama configs built in-process (milliseconds per step), so the whole
file runs in seconds plus three short subprocesses for the SIGKILL test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from workbench.train import StepLoss, TrainConfig, TrainingDiverged, prepare_trainable, read_checkpoint, train
from workbench.train.loop import batch_indices
from workbench.train.optim import lr_at, make_optimizer, optimizer_state_bytes

SCRIPT = r'''
import sys, time, torch
from transformers import LlamaConfig, LlamaForCausalLM
from workbench.train import TrainConfig, prepare_trainable, train, StepLoss
torch.set_num_threads(1)
out, resume, optimizer, sleep = sys.argv[1], sys.argv[2] == "1", sys.argv[3], float(sys.argv[4])
cfg0 = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
torch.manual_seed(0)
model = LlamaForCausalLM(cfg0)
g = torch.Generator().manual_seed(1)
data = [torch.randint(0, 64, (12,), generator=g) for _ in range(10)]
def loss_fn(m, ex):
    ids = torch.stack(ex)
    return StepLoss(m(input_ids=ids, labels=ids).loss, ids.numel())
cfg = TrainConfig(steps=12, batch_size=3, grad_accum=2, lr=1e-2, optimizer=optimizer, out_dir=out,
                  train_modules=[r"layers\.\d+\.(self_attn|mlp)", r"norm"], ckpt_every=2, progress=False,
                  schedule="cosine", warmup_steps=2, lora_rank=0)
model = prepare_trainable(model, cfg)
train(model, data, loss_fn, cfg, resume=resume, on_step=lambda row: time.sleep(sleep))
'''


def _tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def _data(n: int = 10):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 64, (12,), generator=g) for _ in range(n)]


def _loss(model, ex):
    ids = torch.stack(ex)
    return StepLoss(model(input_ids=ids, labels=ids).loss, ids.numel())


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(steps=8, batch_size=3, grad_accum=2, lr=1e-2, out_dir=str(tmp_path / "run"), ckpt_every=2, progress=False,
                train_modules=[r"layers\.\d+\.(self_attn|mlp)", "norm"])
    base.update(kw)
    return TrainConfig(**base)


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------- schedule, data order


def test_lr_schedule_and_data_order_are_pure_functions():
    cfg = TrainConfig(steps=10, lr=1.0, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.5) and lr_at(1, cfg) == pytest.approx(1.0)
    assert lr_at(2, cfg) == pytest.approx(1.0) and lr_at(10, cfg) == pytest.approx(0.1)
    lin = TrainConfig(steps=10, lr=1.0, schedule="linear")
    assert lr_at(5, lin) == pytest.approx(0.5)
    # every example once per epoch, same order for the same (seed, step)
    c = TrainConfig(batch_size=4, grad_accum=1, seed=3)
    first_epoch = [i for s in range(5) for i in batch_indices(20, s, 0, c)]
    assert sorted(first_epoch) == list(range(20))
    assert batch_indices(20, 7, 0, c) == batch_indices(20, 7, 0, c)
    assert first_epoch != [i for s in range(5) for i in batch_indices(20, s, 0, c.replace(seed=4))]


# --------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize("optimizer", ["adamw", "apollo-mini"])
@pytest.mark.parametrize("lora", [0, 4])
def test_training_lowers_the_loss(tmp_path, optimizer, lora):
    cfg = _cfg(tmp_path, steps=12, optimizer=optimizer, lora_rank=lora, lora_targets=["q_proj", "v_proj", "down_proj"], ckpt_every=50)
    model = prepare_trainable(_tiny_llama(), cfg)
    data = _data(4)
    with torch.no_grad():
        before = float(_loss(model, data).loss)
    res = train(model, data, _loss, cfg)
    with torch.no_grad():
        after = float(_loss(model, data).loss)
    assert res.status == "done" and res.step == 12
    assert after < before - 0.1
    rows = [json.loads(l) for l in Path(res.metrics_path).read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert {"step", "loss", "lr", "tokens", "tokens_per_s", "grad_norm"} <= set(rows[0])
    assert rows[0]["tokens"] == cfg.batch_size * cfg.grad_accum * 12
    if lora:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert names and all("lora_" in n for n in names)


def test_apollo_mini_groups_and_state_is_far_smaller_than_adamw():
    model = _tiny_llama()
    named = [(n, p) for n, p in model.named_parameters()]
    for n, p in named:
        p.requires_grad_(True)
    sizes = {}
    for name in ("adamw", "apollo-mini"):
        opt = make_optimizer(named, TrainConfig(optimizer=name))
        loss = _loss(model, _data(2)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        sizes[name] = optimizer_state_bytes(opt)
        if name == "apollo-mini":
            low, rest = opt.param_groups
            assert low["rank"] == 1 and low["scale"] == 128 and low["scale_type"] == "tensor" and low["proj"] == "random"
            assert all(p.ndim == 2 for p in low["params"])
            assert "rank" not in rest  # plain AdamW moments for norms and embeddings
            ids = {id(p) for p in rest["params"]}
            assert id(model.model.embed_tokens.weight) in ids
            # moments of a projected matrix are rank-1 sized
            q = model.model.layers[0].self_attn.q_proj.weight
            assert opt.state[q]["exp_avg"].numel() == max(q.shape)
    # embeddings dominate this toy; still well below AdamW (the benchmark reports real ratios)
    assert sizes["apollo-mini"] < 0.75 * sizes["adamw"]


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("optimizer", ["adamw", "apollo-mini"])
def test_resume_in_process_matches_uninterrupted(tmp_path, optimizer):
    data = _data()
    full_cfg = _cfg(tmp_path / "a", optimizer=optimizer, schedule="cosine", warmup_steps=2)
    full = prepare_trainable(_tiny_llama(), full_cfg)
    train(full, data, _loss, full_cfg)

    half_cfg = _cfg(tmp_path / "b", optimizer=optimizer, schedule="cosine", warmup_steps=2)
    stop = threading.Event()
    part = prepare_trainable(_tiny_llama(), half_cfg)
    res = train(part, data, _loss, half_cfg, on_step=lambda row: row["step"] == 3 and stop.set(), cancel=stop)
    assert res.status == "cancelled" and res.step == 3 and read_checkpoint(res.checkpoint).step == 3
    torch.manual_seed(1234)  # the resumed process's RNG must come from the checkpoint, not from here
    with pytest.raises(ValueError, match="different frozen weights"):  # the checkpoint holds the trainable part only
        train(prepare_trainable(_tiny_llama(seed=99), half_cfg), data, _loss, half_cfg, resume=True)
    again = _tiny_llama()
    with torch.no_grad():  # trainable weights start elsewhere: the checkpoint must overwrite them
        again.model.layers[0].mlp.down_proj.weight.add_(1.0)
    again = prepare_trainable(again, half_cfg)
    res2 = train(again, data, _loss, half_cfg, resume=True)
    assert res2.resumed_from == 3 and res2.step == 8
    a, b = _weights(full), _weights(again)
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=0, atol=1e-6)
    rows = [json.loads(l)["step"] for l in Path(res2.metrics_path).read_text().splitlines()]
    assert rows == list(range(1, 9))


def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
    """A run killed with SIGKILL right after a checkpoint appears, resumed, ends with the
    same weights as an uninterrupted run (tolerance: 1e-6 absolute; in practice bit-equal)."""
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    py = sys.executable

    def run(out, resume, sleep="0"):
        return subprocess.run([py, str(script), str(out), "1" if resume else "0", "apollo-mini", sleep], env=env, capture_output=True, text=True, timeout=300)

    ref = run(tmp_path / "ref", False)
    assert ref.returncode == 0, ref.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([py, str(script), str(killed), "0", "apollo-mini", "0.25"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = killed / "checkpoint" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        if state.is_file():
            try:
                if json.loads(state.read_text())["step"] >= 4:
                    break
            except ValueError:
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step_at_kill = read_checkpoint(killed / "checkpoint").step
    assert 4 <= step_at_kill < 12

    res = run(killed, True)
    assert res.returncode == 0, res.stderr[-2000:]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "ref" / "checkpoint" / "trainable.safetensors"))
    b = load_file(str(killed / "checkpoint" / "trainable.safetensors"))
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=0, atol=1e-6)
    assert read_checkpoint(killed / "checkpoint").step == 12


# --------------------------------------------------------------------------- bad input


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, steps=10, ckpt_every=2)
    model = prepare_trainable(_tiny_llama(), cfg)
    calls = {"n": 0}

    def loss_fn(m, ex):
        calls["n"] += 1
        res = _loss(m, ex)
        if calls["n"] > 9:  # step 5 (2 micro batches per step)
            res.loss = res.loss * float("nan")
        return res

    with pytest.raises(TrainingDiverged, match="step 5.*last good checkpoint") as ei:
        train(model, _data(), loss_fn, cfg)
    ck = read_checkpoint(Path(cfg.out_dir) / "checkpoint")
    assert ck.step == 4 and ei.value.step == 4
    assert all(torch.isfinite(t).all() for t in ck.trainable.values())


def test_bad_input_is_refused_cleanly(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(ValueError, match="match no Linear module.*q_proj"):
        prepare_trainable(_tiny_llama(), cfg.replace(lora_rank=4, lora_targets=["query_key_value"]))
    with pytest.raises(ValueError, match="match no parameter"):
        prepare_trainable(_tiny_llama(), cfg.replace(train_modules=["transformer\\.h"]))
    model = prepare_trainable(_tiny_llama(), cfg)
    with pytest.raises(ValueError, match="corpus is empty"):
        train(model, [], _loss, cfg)
    assert not Path(cfg.out_dir).exists()  # nothing written
    with pytest.raises(ValueError, match="no checkpoint"):
        train(model, _data(), _loss, cfg, resume=True)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="steps must be"):
        TrainConfig(steps=0)


def test_corrupt_or_foreign_checkpoint_is_refused(tmp_path):
    cfg = _cfg(tmp_path, steps=2)
    model = prepare_trainable(_tiny_llama(), cfg)
    train(model, _data(), _loss, cfg)
    ckdir = Path(cfg.out_dir) / "checkpoint"
    # an existing checkpoint is not silently overwritten
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        train(prepare_trainable(_tiny_llama(), cfg), _data(), _loss, cfg)
    # foreign: another trainable set (LoRA instead of full fine-tuning), same settings otherwise
    other = prepare_trainable(_tiny_llama(), cfg.replace(train_modules=["norm"]))
    before = _weights(other)
    with pytest.raises(ValueError, match="cannot resume|different model or trainable set"):
        train(other, _data(), _loss, cfg.replace(train_modules=["norm"], steps=4), resume=True)
    after = _weights(other)
    assert all(torch.equal(before[n], after[n]) for n in before)  # untouched
    # different math settings
    with pytest.raises(ValueError, match="cannot resume.*lr") as err:
        train(prepare_trainable(_tiny_llama(), cfg), _data(), _loss, cfg.replace(lr=0.5, steps=4), resume=True)
    from workbench.train.config import RESUME_MAY_CHANGE

    assert str(err.value).endswith(f"only {', '.join(sorted(RESUME_MAY_CHANGE))} may change")  # every field the rule allows
    # a foreign folder
    foreign = tmp_path / "foreign"
    (foreign / "checkpoint").mkdir(parents=True)
    (foreign / "checkpoint" / "state.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a workbench training checkpoint"):
        train(prepare_trainable(_tiny_llama(), cfg), _data(), _loss, cfg.replace(out_dir=str(foreign)), resume=True)
    # corrupt: flip bytes in the weights file
    f = ckdir / "trainable.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-5] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        train(prepare_trainable(_tiny_llama(), cfg), _data(), _loss, cfg.replace(steps=4), resume=True)


def test_config_json_round_trip_is_tolerant(tmp_path):
    cfg = TrainConfig(steps=7, lr=3e-4, lora_rank=2, betas=(0.8, 0.95))
    cfg.save(tmp_path)
    assert TrainConfig.load(tmp_path) == cfg
    data = json.loads((tmp_path / "config.json").read_text())
    data["some_future_option"] = 1
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="some_future_option"):
        assert TrainConfig.load(tmp_path) == cfg
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TrainConfig.load(tmp_path)


def test_a_pool_limits_each_step_to_its_examples_and_resumes_exactly(tmp_path):
    """`pool(step)`: a data curriculum. Steps 0-2 draw only from examples 0-3, later steps
    from all ten, and a run stopped at step 3 and resumed ends on the same weights."""
    data = _data()
    seen: list[tuple[int, list[int]]] = []
    index = {id(x): i for i, x in enumerate(data)}

    def loss(model, ex):
        seen.append((len(seen) // 2, [index[id(x)] for x in ex]))  # grad_accum 2: two micro batches a step
        return _loss(model, ex)

    pool = lambda step: range(4) if step < 3 else range(10)  # noqa: E731
    cfg = _cfg(tmp_path / "a")
    full = prepare_trainable(_tiny_llama(), cfg)
    train(full, data, loss, cfg, pool=pool)
    assert all(set(ix) <= set(range(4)) for s, ix in seen if s < 3)
    assert set().union(*[ix for s, ix in seen if s >= 3]) - set(range(4))  # later steps reach the rest
    seen.clear()
    half = _cfg(tmp_path / "b")
    stop = threading.Event()
    part = prepare_trainable(_tiny_llama(), half)
    train(part, data, loss, half, pool=pool, on_step=lambda row: row["step"] == 3 and stop.set(), cancel=stop)
    again = prepare_trainable(_tiny_llama(), half)
    train(again, data, loss, half, pool=pool, resume=True)
    a, b = _weights(full), _weights(again)
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=0, atol=1e-6)

"""The fast training path (workbench.gdn_fast, workbench.train.speed): same values and
gradients as transformers' Gated DeltaNet fallback and as today's micro-model loss, exact
resume, and the switch that turns it off. No timing assertions (see `workbench bench train`)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from workbench import gdn_fast
from workbench.train import speed


def _gdn_inputs(B, T, Hk, Hv, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, Hk, d, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, Hv, d, generator=g, dtype=dtype)
    A = torch.linspace(0.02, 16.0, Hv, dtype=dtype)  # the init range of exp(A_log): slow and fast decays
    decay = -A * F.softplus(torch.randn(B, T, Hv, generator=g, dtype=dtype) * 2 - 1)
    beta = torch.rand(B, T, Hv, generator=g, dtype=dtype)
    return [x.requires_grad_() for x in (q, k, v, decay, beta)]


def _recurrent64(q, k, v, g, beta):
    """The delta rule token by token in float64 (ground truth)."""
    if k.shape[2] != v.shape[2]:
        r = v.shape[2] // k.shape[2]
        q, k = q.repeat_interleave(r, dim=2), k.repeat_interleave(r, dim=2)
    q, k, v, g, beta = (x.double().transpose(1, 2) for x in (q, k, v, g, beta))
    q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6) * q.shape[-1] ** -0.5
    k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    S = torch.zeros(*q.shape[:2], q.shape[-1], v.shape[-1], dtype=torch.float64)
    outs = []
    for t in range(q.shape[2]):
        S = S * g[:, :, t].exp()[..., None, None]
        delta = (v[:, :, t] - (S * k[:, :, t, :, None]).sum(-2)) * beta[:, :, t, None]
        S = S + k[:, :, t, :, None] * delta[:, :, None, :]
        outs.append((S * q[:, :, t, :, None]).sum(-2))
    return torch.stack(outs, 2).transpose(1, 2), S


def test_parallel_function_gradcheck():
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(2, 2, 6, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    decay = -torch.rand(2, 2, 6, generator=g, dtype=torch.float64) * 2
    beta = torch.rand(2, 2, 6, generator=g, dtype=torch.float64)
    inputs = [x.requires_grad_() for x in (*args, decay, beta)]
    assert torch.autograd.gradcheck(lambda *a: gdn_fast._ParallelGatedDelta.apply(*a), inputs)


@pytest.mark.parametrize("shape", [(3, 37, 2, 4, 16), (2, 150, 4, 4, 32), (1, 1, 2, 2, 8)])
def test_parallel_rule_matches_transformers_and_float64(shape):
    from transformers.models.qwen3_5.modeling_qwen3_5 import torch_chunk_gated_delta_rule as reference

    ins = _gdn_inputs(*shape)
    o_ref, s_ref = reference(*ins[:3], g=ins[3], beta=ins[4], use_qk_l2norm_in_kernel=True, output_final_state=True)
    o_new, s_new = gdn_fast.parallel_gated_delta_rule(*ins, use_qk_l2norm_in_kernel=True, output_final_state=True)
    w, ws = torch.randn_like(o_ref), torch.randn_like(s_ref)
    g_ref = torch.autograd.grad((o_ref * w).sum() + (s_ref * ws).sum(), ins)
    g_new = torch.autograd.grad((o_new * w).sum() + (s_new * ws).sum(), ins)
    torch.testing.assert_close(o_new, o_ref, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(s_new, s_ref, rtol=1e-4, atol=2e-5)
    for a, b in zip(g_new, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=5e-5 * max(1.0, float(b.abs().max())))
    o64, s64 = _recurrent64(*ins)
    err_new = float((o_new.detach().double() - o64.detach()).abs().max())
    err_ref = float((o_ref.detach().double() - o64.detach()).abs().max())
    assert err_new <= max(2 * err_ref, 1e-6)  # at least as accurate as the chunked rule
    torch.testing.assert_close(s_new.detach().double(), s64.detach(), rtol=1e-4, atol=1e-5)


def test_fast_gdn_installs_and_restores():
    import transformers.models.qwen3_5.modeling_qwen3_5 as m

    orig_rule, orig_conv = m.torch_chunk_gated_delta_rule, m.causal_conv1d_fn
    with gdn_fast.fast_gdn() as on:
        assert on and gdn_fast.installed()
        assert m.torch_chunk_gated_delta_rule is not orig_rule and m.causal_conv1d_fn is not orig_conv
        with gdn_fast.fast_gdn():  # nested: one installation
            pass
        assert gdn_fast.installed()
    assert m.torch_chunk_gated_delta_rule is orig_rule and m.causal_conv1d_fn is orig_conv and not gdn_fast.installed()
    with gdn_fast.fast_gdn(False) as on:
        assert not on and m.torch_chunk_gated_delta_rule is orig_rule


def test_env_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv(gdn_fast.ENV_DISABLE, "0")
    with speed.fast_training() as on:
        assert not on and not speed.fast_enabled() and not gdn_fast.installed()


def test_fast_conv_matches_conv1d():
    import transformers.models.qwen3_5.modeling_qwen3_5 as m

    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 24, 19, generator=g, requires_grad=True)
    w = torch.randn(24, 4, generator=g, requires_grad=True)
    ref = m.causal_conv1d_fn(x, w, None, activation="silu")
    new = gdn_fast._fast_causal_conv1d_fn(m.causal_conv1d_fn)(x, w, None, activation="silu")
    gr, gn = torch.autograd.grad(ref.sum(), [x, w]), torch.autograd.grad(new.sum(), [x, w])
    torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(gn, gr):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_length_buckets_cover_each_row_once():
    lengths = [5, 90, 91, 7, 160, 40, 41, 150, 6, 88] * 3
    groups = speed.length_buckets(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert 1 <= len(groups) <= speed.MAX_BUCKETS
    maxes = [max(lengths[i] for i in g) for g in groups]
    assert maxes == sorted(maxes)
    assert speed.length_buckets(lengths) == groups  # deterministic
    assert speed.length_buckets([7] * 4) == [[0, 1, 2, 3]]


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_grads_close(new, ref, rel=2e-3):
    scale = max(float(g.abs().max()) for g in ref.values())
    assert new.keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(new[n], ref[n], rtol=1e-3, atol=rel * scale, msg=lambda m, n=n: f"{n}: {m}")
    flat_n = torch.cat([new[n].flatten() for n in ref])
    flat_r = torch.cat([ref[n].flatten() for n in ref])
    assert float(F.cosine_similarity(flat_n, flat_r, dim=0)) > 0.9999


@pytest.fixture(scope="module")
def micro_setup():
    from workbench.tokenizers import qwen35_tokenizer
    from workbench.train.loop import prepare_trainable
    from workbench.train.micro import MicroConfig, build_data, compact_model, tok_vocab_size

    cfg = MicroConfig(out_dir="unused", progress=False, n_train=160, eval_n=4)
    data = build_data(qwen35_tokenizer(), cfg)
    model = prepare_trainable(compact_model(cfg, len(data.vocab)), cfg)
    # a few real steps first, so the loss is not the near-constant log(V) of the fresh model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return cfg, data, model, tok_vocab_size() - len(data.vocab)


def test_micro_loss_and_grads_match_todays_path(micro_setup):
    from workbench.bench.train import micro_loss_fn
    from workbench.train.micro import micro_loss

    cfg, data, model, n_zero = micro_setup
    model.train()
    today, fast = micro_loss(n_zero), micro_loss_fn(n_zero)
    for start in (0, 32, 64):
        batch = data.examples[start : start + 32]
        model.zero_grad(set_to_none=True)
        ref = today(model, batch)
        ref.loss.backward()
        g_ref = _grads(model)
        model.zero_grad(set_to_none=True)
        out = fast(model, batch)  # outside fast_training: exactly today's forward
        assert float(out.loss) == float(ref.loss)
        model.zero_grad(set_to_none=True)
        with speed.fast_training() as on:
            assert on
            new = fast(model, batch)
            new.loss.backward()
        g_new = _grads(model)
        assert new.tokens == ref.tokens and new.metrics == ref.metrics
        torch.testing.assert_close(new.loss, ref.loss, rtol=1e-5, atol=1e-6)
        _assert_grads_close(g_new, g_ref)


def test_bucketed_hidden_states_match_one_padded_forward(micro_setup):
    from workbench.train.arith import pad_right

    cfg, data, model, n_zero = micro_setup
    model.eval()
    ids, mask = pad_right([b[0].tolist() for b in data.examples[:24]])
    with torch.no_grad():
        ref = model.model(input_ids=ids).last_hidden_state
        with speed.fast_training():
            new = speed.hidden_states(model.model, ids, mask)
    torch.testing.assert_close(new[mask], ref[mask], rtol=1e-4, atol=1e-4)
    model.train()


def test_qwen_tiny_loss_grads_and_generation_match(qwen_tiny):
    import copy

    hf = copy.deepcopy(qwen_tiny.hf).float()  # the session fixture stays frozen
    for p in hf.parameters():
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 5000, (3, 45), generator=g)
    hf.train()
    ref = hf(input_ids=ids, labels=ids).loss
    ref.backward()
    g_ref = _grads(hf)
    hf.zero_grad(set_to_none=True)
    with speed.fast_training():
        new = hf(input_ids=ids, labels=ids).loss
        new.backward()
    g_new = _grads(hf)
    torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-6)
    _assert_grads_close(g_new, g_ref)
    hf.eval()
    with torch.no_grad():
        out_ref = hf.generate(input_ids=ids[:, :20], max_new_tokens=6, do_sample=False)
        with gdn_fast.fast_gdn():
            out_new = hf.generate(input_ids=ids[:, :20], max_new_tokens=6, do_sample=False)
    assert torch.equal(out_new, out_ref)


def _small_micro(tmp_path, name, **kw):
    from workbench.train.micro import MicroConfig

    base = dict(hidden_size=32, num_heads=2, intermediate_size=64, n_train=96, eval_n=4, steps=4, batch_size=8, eval_every=0, ckpt_every=2, progress=False, warmup_steps=0)
    base.update(kw)
    return MicroConfig(out_dir=str(tmp_path / name), **base)


def _train_small(cfg, resume=False, fast=None, seen=None, stop_after=None):
    from workbench.bench.train import micro_loss_fn
    from workbench.tokenizers import qwen35_tokenizer
    from workbench.train.loop import prepare_trainable, train
    from workbench.train.micro import build_data, compact_model, tok_vocab_size

    data = build_data(qwen35_tokenizer(), cfg)
    model = prepare_trainable(compact_model(cfg, len(data.vocab)), cfg)

    done = []

    def on_step(row):
        done.append(row["step"])
        if seen is not None:
            seen.append((speed.fast_enabled(), gdn_fast.installed()))

    cancel = (lambda: len(done) >= stop_after) if stop_after else None  # same schedule (steps), stopped early
    res = train(model, data.examples, micro_loss_fn(tok_vocab_size() - len(data.vocab)), cfg, resume=resume, fast_kernels=fast, on_step=on_step, cancel=cancel)
    return [json.loads(line)["loss"] for line in res.metrics_path.read_text().splitlines()]


def test_trainer_fast_path_resumes_exactly_and_can_be_turned_off(tmp_path):
    seen_on, seen_off = [], []
    straight = _train_small(_small_micro(tmp_path, "a"), seen=seen_on)
    assert seen_on and all(s == (True, True) for s in seen_on)  # on by default
    assert not gdn_fast.installed()  # restored after the run
    first = _train_small(_small_micro(tmp_path, "b"), stop_after=2)
    resumed = _train_small(_small_micro(tmp_path, "b"), resume=True)
    assert resumed == straight and first == straight[:2]  # exact resume on the fast path
    off = _train_small(_small_micro(tmp_path, "c"), fast=False, seen=seen_off)
    assert seen_off and all(s == (False, False) for s in seen_off)
    torch.testing.assert_close(torch.tensor(off), torch.tensor(straight), rtol=1e-4, atol=1e-5)
    # a checkpoint written by today's path resumes on the fast path (and vice versa)
    _train_small(_small_micro(tmp_path, "d"), fast=False, stop_after=2)
    cross = _train_small(_small_micro(tmp_path, "d"), resume=True)
    torch.testing.assert_close(torch.tensor(cross), torch.tensor(off), rtol=1e-4, atol=1e-5)
    assert cross[:2] == off[:2]


def test_delta_rule_stays_float32_under_a_bf16_autocast():
    ins = _gdn_inputs(2, 40, 2, 2, 16)
    ref = gdn_fast.parallel_gated_delta_rule(*ins, use_qk_l2norm_in_kernel=True)[0]
    g_ref = torch.autograd.grad(ref.sum(), ins)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gdn_fast.parallel_gated_delta_rule(*ins, use_qk_l2norm_in_kernel=True)[0]
    g_out = torch.autograd.grad(out.sum(), ins)
    # bitwise: the function computes in float32 with autocast off inside, forward and backward
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    assert all(torch.equal(a, b) for a, b in zip(g_out, g_ref))


def test_bf16_autocast_trains_close_to_float32_and_keeps_float32_state(tmp_path):
    from workbench.errors import InputError
    from workbench.train.micro import MicroConfig

    with pytest.raises(InputError, match=r"autocast must be one of off, bf16, got 'fp8'"):
        MicroConfig(autocast="fp8")
    assert isinstance(speed.training_autocast(MicroConfig(), torch.nn.Linear(2, 2)), type(speed.contextlib.nullcontext()))
    fp32 = _train_small(_small_micro(tmp_path, "f"))
    bf16 = _train_small(_small_micro(tmp_path, "h", autocast="bf16"))
    assert bf16 != fp32  # it does run in bfloat16 ...
    torch.testing.assert_close(torch.tensor(bf16), torch.tensor(fp32), rtol=1e-3, atol=1e-3)  # ... with the same losses (the loss itself is float32)
    first = _train_small(_small_micro(tmp_path, "r", autocast="bf16"), stop_after=2)
    resumed = _train_small(_small_micro(tmp_path, "r", autocast="bf16"), resume=True)
    assert first == bf16[:2] and resumed == bf16  # exact resume
    from workbench.train.checkpoint import read_checkpoint

    ck = read_checkpoint(tmp_path / "h" / "checkpoint")
    assert ck.trainable and all(t.dtype == torch.float32 for t in (*ck.trainable.values(), *ck.state_tensors.values()) if t.is_floating_point())
    assert ck.config["autocast"] == "bf16"

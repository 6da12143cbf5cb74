"""Random prefix: exact invariants of the vectors, the generation loop and traces."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.generate import generate_full
from workbench.prefix import RandomPrefix, capture as prefix_capture, evaluate_prefix, prefixed_batch
from workbench.tasks import arithmetic_problems


def test_rms_is_exactly_scale_times_embed_rms(any_bench):
    a = any_bench.arch
    for scale in (1.0, 0.5, 3.0):
        v = RandomPrefix(n=3, seed=7, scale=scale).vectors(a.d_model, a.embed_rms).double()
        assert v.shape == (3, a.d_model)
        rms = v.pow(2).mean(-1).sqrt()
        torch.testing.assert_close(rms, torch.full((3,), scale * a.embed_rms, dtype=torch.float64), rtol=1e-6, atol=0)


def test_same_seed_same_vectors_different_seed_differs(any_bench):
    e1 = RandomPrefix(seed=3).embeddings(any_bench, 2)
    e2 = RandomPrefix(seed=3).embeddings(any_bench, 2)
    e3 = RandomPrefix(seed=4).embeddings(any_bench, 2)
    assert torch.equal(e1, e2)
    assert not torch.allclose(e1, e3)
    assert e1.dtype == any_bench.dtype and e1.shape == (2, any_bench.arch.d_model)


@pytest.mark.parametrize(
    "kwargs",
    [dict(n=0), dict(n=-1), dict(n=1.5), dict(scale=float("nan")), dict(scale=float("inf")), dict(scale=0.0), dict(scale=-1.0), dict(placement="end")],
)
def test_bad_input(kwargs):
    with pytest.raises(ValueError):
        RandomPrefix(**kwargs)


def test_positions():
    assert RandomPrefix(n=2).positions() == (0, 1)
    assert RandomPrefix(n=3, placement="after_bos").positions() == (1, 2, 3)


def test_generation_reproducible_and_seed_sensitive(any_bench):
    prompt = "Name a colour."
    kw = dict(max_new_tokens=4, temperature=0.0)
    a = generate_full(any_bench, [prompt], prefix=RandomPrefix(n=2, seed=1, scale=2.0), **kw)
    b = generate_full(any_bench, [prompt], prefix=RandomPrefix(n=2, seed=1, scale=2.0), **kw)
    assert a.token_ids == b.token_ids
    # a different seed changes the first-step distribution (tokens may coincide; logits cannot)
    la = generate_full(any_bench, [prompt], prefix=RandomPrefix(n=2, seed=1, scale=2.0), keep_logits=True, **kw).steps[0].logits
    lc = generate_full(any_bench, [prompt], prefix=RandomPrefix(n=2, seed=2, scale=2.0), keep_logits=True, **kw).steps[0].logits
    assert not torch.allclose(la, lc)


def test_prefixed_batch_layout(any_bench):
    p = RandomPrefix(n=2, seed=0)
    vec = p.embeddings(any_bench, 1)
    emb = any_bench.hf.get_input_embeddings()
    ids = any_bench.tokenizer("Hello world")["input_ids"]
    start = prefixed_batch(any_bench, "Hello world", p)
    assert start.inputs_embeds.shape[1] == len(ids) + 2
    assert torch.equal(start.inputs_embeds[0, :2], vec)
    after = prefixed_batch(any_bench, "Hello world", RandomPrefix(n=2, seed=0, placement="after_bos"))
    with torch.no_grad():
        first = emb(torch.tensor(ids[:1]))
    assert torch.equal(after.inputs_embeds[0, :1], first)  # the first token stays first
    assert torch.equal(after.inputs_embeds[0, 1:3], vec)


def test_trace_with_prefix_matches_generation_loop(any_bench):
    """The residual read in a trace of a prefixed prompt equals the loop's prefill hidden
    state (last position, after the final norm through the model's own norm)."""
    from workbench.arch import final_norm

    p = RandomPrefix(n=2, seed=5)
    L = any_bench.arch.n_layers - 1
    acts = prefix_capture(any_bench, ["Count to three."], p, layers=[L], positions="last", chat=True)
    res = generate_full(any_bench, ["Count to three."], prefix=p, max_new_tokens=1, keep_hidden=True)
    with torch.no_grad():
        normed = final_norm(any_bench.hf)(acts[L].to(any_bench.dtype))
    torch.testing.assert_close(normed.float(), res.steps[0].hidden.float(), rtol=1e-4, atol=1e-4)
    # without a prefix the trace differs
    plain = prefix_capture(any_bench, ["Count to three."], None, layers=[L], positions="last", chat=True)
    assert not torch.allclose(plain[L], acts[L])


@pytest.mark.slow
def test_batched_prefix_generation_equals_one_by_one(smol):
    p = RandomPrefix(n=2, seed=0)
    prompts = ["Say hi.", "What is two plus two? Answer briefly."]
    both = generate_full(smol, prompts, prefix=p, max_new_tokens=3)
    one = [generate_full(smol, [q], prefix=p, max_new_tokens=3).token_ids[0] for q in prompts]
    assert both.token_ids == one


@pytest.mark.slow
def test_evaluate_prefix_structure(smol):
    probs = arithmetic_problems(2, steps=1, digits=1, seed=0)
    res = evaluate_prefix(smol, probs, seeds=[0, 1], n_samples=1, max_new_tokens=2, batch_size=2)
    assert res.solved.shape == (2, 2) and res.sampled_solved.shape == (1, 2)
    s = res.summary()
    assert s["oracle_coverage"] == float(res.solved.any(0).float().mean())
    assert s["oracle_coverage"] >= max(s["per_seed_accuracy"])
    assert math.isclose(s["mean_accuracy"], sum(s["per_seed_accuracy"]) / 2)
    assert set(res.attempts) == {"baseline", "prefix:0", "prefix:1", "sample:0"}
    assert s["sampled_coverage"] == float(res.sampled_solved.any(0).float().mean())
    for key, row in (("prefix:0", res.solved[0]), ("baseline", res.baseline_solved)):
        assert [a.correct for a in res.attempts[key]] == row.tolist()


def test_evaluate_prefix_bad_input(smol):
    probs = arithmetic_problems(1, steps=1, digits=1, seed=0)
    with pytest.raises(ValueError):
        evaluate_prefix(smol, probs, seeds=[])
    with pytest.raises(ValueError):
        evaluate_prefix(smol, probs, seeds=[1, 1])
    with pytest.raises(ValueError):
        evaluate_prefix(smol, probs, seeds=[0], n_samples=1, temperature=0.0)
    with pytest.raises(ValueError):
        evaluate_prefix(smol, probs, seeds=[0], n=0)

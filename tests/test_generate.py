"""The one generation loop: parity with transformers' generate, determinism, batching,
streaming, edits scoped, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import workbench as wb
from workbench.edits import AddVector, apply_edits
from workbench.generate import generate_full, generate_stream, truncate_probs
from workbench.inputs import token_ids

PROMPTS = ["Name three colours.", "What is 2 + 3? Answer briefly.", "Write a haiku about rain in the city at night."]


def test_greedy_matches_transformers_generate(smol):
    """Token-for-token parity with HF generate (an independent decoding loop)."""
    ids = token_ids(smol.tokenizer, [PROMPTS[2]], chat=True)[0]
    ref = smol.hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           max_new_tokens=20, do_sample=False, pad_token_id=smol.tokenizer.pad_token_id)
    ref_new = ref[0, len(ids):].tolist()
    res = generate_full(smol, [PROMPTS[2]], max_new_tokens=20)
    eos = smol.tokenizer.eos_token_id
    ours = res.token_ids[0]
    assert ours == [t for t in ref_new[: len(ours)]]
    assert len(ours) == 20 or ours[-1] == eos


def test_greedy_matches_transformers_generate_qwen(qwen_tiny):
    ids = token_ids(qwen_tiny.tokenizer, ["hello there"], chat=False)[0]
    ref = qwen_tiny.hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    res = generate_full(qwen_tiny, [ids], max_new_tokens=8, stop_ids=set())
    assert res.token_ids[0] == ref[0, len(ids):].tolist()


def test_temperature_zero_is_deterministic(any_bench):
    a = wb.generate(any_bench, PROMPTS[:2], max_new_tokens=8)
    b = wb.generate(any_bench, PROMPTS[:2], max_new_tokens=8)
    assert a == b


def test_seed_reproduces_samples(smol):
    kw = dict(max_new_tokens=12, temperature=1.0, top_p=0.95)
    a = generate_full(smol, PROMPTS[:2], seed=7, **kw).token_ids
    b = generate_full(smol, PROMPTS[:2], seed=7, **kw).token_ids
    c = generate_full(smol, PROMPTS[:2], seed=8, **kw).token_ids
    assert a == b
    assert a != c


def test_batched_equals_unbatched(any_bench):
    batched = generate_full(any_bench, PROMPTS, max_new_tokens=10, chat=False, stop_ids=set()).token_ids
    single = [generate_full(any_bench, [p], max_new_tokens=10, chat=False, stop_ids=set()).token_ids[0] for p in PROMPTS]
    assert batched == single


def test_stream_pieces_concatenate_to_text(smol):
    pieces = [s.text[0] for s in generate_stream(smol, PROMPTS[0], max_new_tokens=15, decode_stream=True)]
    full = wb.generate(smol, PROMPTS[0], max_new_tokens=15)
    eos = smol.tokenizer.eos_token
    assert "".join(pieces).replace(eos, "") == full


def test_max_new_tokens_and_stop(smol):
    res = generate_full(smol, ["Count: 1, 2, 3,"], max_new_tokens=5, chat=False, stop_ids=set())
    assert len(res.token_ids[0]) == 5
    steps = list(generate_stream(smol, "Say only the word yes.", max_new_tokens=40))
    last = steps[-1]
    assert bool(last.done.all())
    assert len(steps) < 40  # stopped at <|im_end|>
    assert int(last.tokens[0]) in wb.generate.stop_token_ids(smol.tokenizer, smol.hf)


def test_empty_edit_list_gives_base_output(any_bench):
    base = generate_full(any_bench, PROMPTS[:2], max_new_tokens=6, keep_logits=True)
    same = generate_full(any_bench, PROMPTS[:2], max_new_tokens=6, keep_logits=True, edits=[], steer=[])
    assert base.token_ids == same.token_ids
    for s1, s2 in zip(base.steps, same.steps):
        assert torch.equal(s1.logits, s2.logits)


def test_zero_scale_vector_gives_base_output(any_bench):
    v = torch.randn(any_bench.arch.d_model)
    base = generate_full(any_bench, PROMPTS[:1], max_new_tokens=6, keep_logits=True)
    zero = generate_full(any_bench, PROMPTS[:1], max_new_tokens=6, keep_logits=True, edits=[AddVector(1, v, 0.0)])
    for s1, s2 in zip(base.steps, zero.steps):
        assert torch.equal(s1.logits, s2.logits)


def test_edits_change_output_and_are_undone(smol):
    v = torch.randn(smol.arch.d_model) * 20
    base = generate_full(smol, PROMPTS[:1], max_new_tokens=6, keep_logits=True)
    steered = generate_full(smol, PROMPTS[:1], max_new_tokens=6, keep_logits=True, edits=[AddVector(10, v, 1.0)])
    assert not torch.equal(base.steps[0].logits, steered.steps[0].logits)
    assert all(len(l._forward_hooks) == 0 for l in smol.hf.model.layers)
    after = generate_full(smol, PROMPTS[:1], max_new_tokens=6, keep_logits=True)
    assert torch.equal(after.steps[0].logits, base.steps[0].logits)


def test_edits_undone_when_generation_raises(smol):
    v = torch.randn(smol.arch.d_model)
    stream = generate_stream(smol, PROMPTS[0], max_new_tokens=10, edits=[AddVector(3, v)])
    next(stream)
    assert len(smol.hf.model.layers[3]._forward_hooks) == 1
    with pytest.raises(RuntimeError):
        stream.throw(RuntimeError("consumer failed"))
    assert len(smol.hf.model.layers[3]._forward_hooks) == 0
    with pytest.raises(ZeroDivisionError):
        with apply_edits(smol.hf, [AddVector(3, v)]):
            1 / 0
    assert len(smol.hf.model.layers[3]._forward_hooks) == 0


def test_prompt_vs_generated_phase(smol):
    """where='generated' leaves the prompt forward (first logits) untouched."""
    v = torch.randn(smol.arch.d_model) * 20
    base = generate_full(smol, PROMPTS[:1], max_new_tokens=3, keep_logits=True)
    gen_only = generate_full(smol, PROMPTS[:1], max_new_tokens=3, keep_logits=True,
                             edits=[AddVector(10, v, 1.0, where="generated")], stop_ids=set())
    prompt_only = generate_full(smol, PROMPTS[:1], max_new_tokens=3, keep_logits=True,
                                edits=[AddVector(10, v, 1.0, where="prompt")], stop_ids=set())
    assert torch.equal(base.steps[0].logits, gen_only.steps[0].logits)
    assert not torch.equal(base.steps[0].logits, prompt_only.steps[0].logits)
    assert not torch.equal(base.steps[1].logits, gen_only.steps[1].logits)


def test_truncate_probs():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    p = truncate_probs(logits, top_k=2)
    assert (p[0, 2:] == 0).all() and math.isclose(float(p.sum()), 1.0, rel_tol=1e-6)
    full = torch.softmax(logits, -1)
    p = truncate_probs(logits, top_p=float(full[0, 0]) + 1e-4)
    assert (p[0, 2:] == 0).all() and p[0, 1] > 0
    p = truncate_probs(logits, min_p=0.3)
    assert torch.equal(p > 0, full >= 0.3 * full.max())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -2}, "top_k"),
    ],
)
def test_bad_sampling_args(smol, kwargs, match):
    with pytest.raises(ValueError, match=match):
        wb.generate(smol, "hi", **({"max_new_tokens": 4} | kwargs))


def test_bad_prompts(smol):
    with pytest.raises(ValueError, match="empty"):
        wb.generate(smol, [], max_new_tokens=2)
    with pytest.raises(ValueError, match="empty string"):
        wb.generate(smol, "", max_new_tokens=2)
    with pytest.raises(ValueError, match="context"):
        wb.generate(smol, "word " * 9000, max_new_tokens=2, chat=False)
    with pytest.raises(ValueError, match="layer"):
        wb.generate(smol, "hi", max_new_tokens=2, edits=[AddVector(99, torch.zeros(576))])
    with pytest.raises(ValueError, match="d_model"):
        wb.generate(smol, "hi", max_new_tokens=2, edits=[AddVector(3, torch.zeros(10))])
    with pytest.raises(ValueError, match="NaN"):
        AddVector(3, torch.full((576,), float("nan")))

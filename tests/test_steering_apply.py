"""Steered forwards and generation: exact invariants on both architectures (Llama-style
SmolLM2 with real weights, hybrid Qwen3.5 tiny), scoping, operators, bad input, KL report.

Block outputs are read independently of the edit machinery: a forward PRE-hook on block
L + 1 (or on the final norm for the last block) sees block L's output after every forward
hook on block L has run, i.e. after the steering edit. (nnsight's `.output` is read before
torch forward hooks, so it cannot be used to observe hook edits.)
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import workbench as wb
from workbench.arch import decoder_layers, final_norm
from workbench.edits import AddVector, apply_edits
from workbench.generate import Decision, base_model, generate_full, generate_stream
from workbench.inputs import encode
from workbench.steering import SteeringVector
from workbench.steering.apply import (
    as_edits,
    check_compatible,
    load_vector,
    next_token_logits,
    steer_report,
    steered_generate,
    steering,
)

PROMPTS = ["The cat sat on the", "Hi"]  # different lengths: left padding is exercised


def _vec(bench, layers, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    a = bench.arch
    dirs = {L: torch.randn(a.d_model, generator=g) * a.embed_norm for L in layers}
    return SteeringVector(directions=dirs, method="test", model_name=bench.name, model_family=a.family,
                          d_model=a.d_model, n_layers=a.n_layers, scale=scale)


@torch.no_grad()
def block_outputs(bench, prompts, steer=None):
    """All block outputs [n_layers] x [b, T, d] and last-position logits [b, V], read by pre-hooks on
    the NEXT module, with `steer` installed through the generation loop's hook scope."""
    hf = bench.hf
    layers = decoder_layers(hf)
    readers = [layers[i + 1] for i in range(len(layers) - 1)] + [final_norm(hf)]
    seen: dict[int, torch.Tensor] = {}
    handles = [
        m.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, args[0].detach().clone()))
        for i, m in enumerate(readers)
    ]
    batch = encode(bench, prompts)
    try:
        edits = as_edits(steer, bench) if steer is not None else []
        with apply_edits(hf, edits):
            last = base_model(hf)(**batch.model_kwargs()).last_hidden_state[:, -1]
            logits = hf.get_output_embeddings()(last).float()  # last position only: cheap
    finally:
        for h in handles:
            h.remove()
    return [seen[i] for i in range(len(layers))], logits, batch.attention_mask


def _hook_counts(bench):
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in decoder_layers(bench.hf)]


# --------------------------------------------------------------------------- invariants


def test_steered_layer_is_original_plus_scale_v_and_earlier_layers_unchanged(any_bench):
    b = any_bench
    L = b.arch.n_layers // 2
    vec = _vec(b, [L])
    s = 3.5
    base, base_logits, _ = block_outputs(b, PROMPTS)
    steered, logits, _ = block_outputs(b, PROMPTS, [vec.steer(s)])
    for l in range(L):
        assert torch.equal(steered[l], base[l]), f"layer {l} before the steered layer {L} changed"
    assert torch.equal(steered[L], base[L] + s * vec.directions[L]), "steered layer != original + scale * v"
    assert not torch.allclose(steered[L + 1], base[L + 1])
    assert not torch.allclose(logits, base_logits)


def test_scale_zero_is_the_unsteered_forward_exactly(any_bench):
    b = any_bench
    vec = _vec(b, [0, b.arch.n_layers - 1])
    base, base_logits, _ = block_outputs(b, PROMPTS)
    steered, logits, _ = block_outputs(b, PROMPTS, [vec.steer(0.0)])
    assert all(torch.equal(x, y) for x, y in zip(steered, base))
    assert torch.equal(logits, base_logits)


def test_nnsight_capture_with_edits_matches_the_hook_path(any_bench):
    b = any_bench
    L = 1
    vec = _vec(b, [L], seed=3)
    hooked, _, mask = block_outputs(b, PROMPTS, [vec.steer(2.0)])
    acts = wb.capture(b, PROMPTS, layers=[L - 1, L, L + 1], positions="all", edits=vec.edits(2.0))
    for l in (L - 1, L, L + 1):
        ref = hooked[l] * mask[..., None]
        torch.testing.assert_close(acts[l], ref, atol=1e-5, rtol=1e-5)


def test_batched_equals_unbatched(any_bench):
    b = any_bench
    L = b.arch.n_layers // 2
    spec = _vec(b, [L], seed=1).steer(2.0)
    batched, _, mask = block_outputs(b, PROMPTS, [spec])
    for i, p in enumerate(PROMPTS):
        single, _, _ = block_outputs(b, [p], [spec])
        n = int(mask[i].sum())
        for l in (L, b.arch.n_layers - 1):
            torch.testing.assert_close(batched[l][i, -n:], single[l][0], atol=2e-4, rtol=2e-4)
    kw = dict(max_new_tokens=4, chat=False)
    together = generate_full(b, PROMPTS, steer=[spec], **kw).token_ids
    apart = [generate_full(b, [p], steer=[spec], **kw).token_ids[0] for p in PROMPTS]
    assert together == apart


def test_generate_scale_zero_equals_plain_and_steer_changes_logits(qwen_tiny):
    b = qwen_tiny
    vec = _vec(b, [2, 5])
    kw = dict(max_new_tokens=5, chat=False, keep_logits=True)
    plain = list(generate_stream(b, PROMPTS, **kw))
    zero = list(generate_stream(b, PROMPTS, steer=[vec.steer(0.0)], **kw))
    assert all(torch.equal(p.logits, z.logits) for p, z in zip(plain, zero))
    steered = list(generate_stream(b, PROMPTS, steer=[vec.steer(4.0)], **kw))
    assert not torch.allclose(plain[0].logits, steered[0].logits)
    # a bare SteeringVector works too, with its own default scale
    direct = list(generate_stream(b, PROMPTS, steer=[dataclasses.replace(vec, scale=4.0)], **kw))
    assert all(torch.equal(s.logits, d.logits) for s, d in zip(steered, direct))


def test_row_edit_touches_only_its_rows_and_checks_the_batch():
    from workbench.edits import RowEdit, only_rows, validate_edits
    from workbench.errors import InputError

    e = AddVector(3, torch.ones(4), scale=2.0)
    h = torch.zeros(2, 5, 4)
    out = RowEdit(e, torch.tensor([False, True]))(h, "prompt")
    assert torch.equal(out[0], h[0]) and torch.equal(out[1], torch.full((5, 4), 2.0))
    with pytest.raises(InputError, match="mask for 2 rows, but the batch has 3"):
        only_rows([e], [False, True])[0](torch.zeros(3, 5, 4), "prompt")
    with pytest.raises(InputError, match="d_model is 8"):  # the inner vector is checked like any edit's
        validate_edits(only_rows([e], [True]), 6, 8)
    with pytest.raises(InputError, match="non-empty list of booleans"):
        only_rows([e], [])


def test_compare_stream_is_plain_and_steered_generation_side_by_side(qwen_tiny, smol):
    from workbench.errors import InputError

    for b in (qwen_tiny, smol):
        steer = [_vec(b, [1]).steer(6.0)]
        last = list(wb.steering.compare_stream(b, "Tell me about the sea.", steer, max_new_tokens=6))[-1]
        plain = generate_full(b, "Tell me about the sea.", max_new_tokens=6).texts[0]
        steered = generate_full(b, "Tell me about the sea.", max_new_tokens=6, steer=steer).texts[0]
        assert last == (plain, steered) and plain != steered
    with pytest.raises(InputError, match="prompt is empty"):
        next(wb.steering.compare_stream(qwen_tiny, " ", steer))
    with pytest.raises(InputError, match="not edits="):
        next(wb.steering.compare_stream(qwen_tiny, "hi", steer, edits=[]))


def test_where_prompt_and_generated(qwen_tiny):
    b = qwen_tiny
    vec = _vec(b, [3])
    kw = dict(max_new_tokens=3, chat=False, keep_logits=True)
    plain = list(generate_stream(b, PROMPTS, **kw))
    forced = [int(t) for t in plain[0].tokens]
    gen_only = list(generate_stream(b, PROMPTS, steer=[vec.steer(4.0, where="generated")], **kw))
    prompt_only = list(generate_stream(b, PROMPTS, steer=[vec.steer(4.0, where="prompt")], **kw))
    # the first distribution comes from the prompt pass only
    assert torch.equal(gen_only[0].logits, plain[0].logits)
    assert not torch.allclose(prompt_only[0].logits, plain[0].logits)
    if [int(t) for t in gen_only[0].tokens] == forced:  # same first token fed back: the edit must show now
        assert not torch.allclose(gen_only[1].logits, plain[1].logits)


def test_several_vectors_add_up(qwen_tiny):
    b = qwen_tiny
    L = 4
    v1, v2 = _vec(b, [L], seed=1), _vec(b, [L, 6], seed=2)
    base, _, _ = block_outputs(b, PROMPTS)
    both, _, _ = block_outputs(b, PROMPTS, [v1.steer(2.0), v2.steer(-1.5)])
    expect = base[L] + 2.0 * v1.directions[L] + (-1.5) * v2.directions[L]
    torch.testing.assert_close(both[L], expect, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(both[l], base[l]) for l in range(L))


def test_directional_ablation_projects_the_direction_out(any_bench):
    b = any_bench
    L = b.arch.n_layers // 2
    vec = _vec(b, [L], seed=5)
    u = vec.directions[L] / vec.directions[L].norm()
    base, _, mask = block_outputs(b, PROMPTS)
    abl, _, _ = block_outputs(b, PROMPTS, [vec.ablate()])
    expect = base[L] - (base[L] @ u)[..., None] * u
    torch.testing.assert_close(abl[L], expect, atol=1e-5, rtol=1e-5)
    real = mask.bool()
    proj = (abl[L] @ u)[real]
    assert proj.abs().max() < 1e-4 * base[L][real].norm(dim=-1).max()
    assert all(torch.equal(abl[l], base[l]) for l in range(L))
    half, _, _ = block_outputs(b, PROMPTS, [vec.ablate(strength=0.5)])
    torch.testing.assert_close(half[L], base[L] - 0.5 * (base[L] @ u)[..., None] * u, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- scoping


class _Boom:
    """A policy that raises in the middle of generation."""

    max_steps = 0

    def __init__(self, at):
        self.at = at

    def __call__(self, state):
        if state.step == self.at:
            raise RuntimeError("boom mid-generation")
        return Decision(latent=torch.zeros_like(state.done))


def test_hooks_are_removed_when_generation_raises(qwen_tiny):
    b = qwen_tiny
    before = _hook_counts(b)
    base, base_logits, _ = block_outputs(b, PROMPTS)
    vec = _vec(b, [1, 4])
    with pytest.raises(RuntimeError, match="boom"):
        wb.generate(b, PROMPTS, steer=[vec.steer(5.0), vec.ablate()], max_new_tokens=6, chat=False, policy=_Boom(2))
    assert _hook_counts(b) == before
    after, logits, _ = block_outputs(b, PROMPTS)
    assert torch.equal(logits, base_logits)
    # an abandoned stream is undone when closed
    stream = generate_stream(b, PROMPTS, steer=[vec.steer(5.0)], max_new_tokens=6, chat=False)
    next(stream)
    assert _hook_counts(b) != before
    stream.close()
    assert _hook_counts(b) == before
    # and the context manager
    with pytest.raises(KeyError):
        with steering(b, [vec.steer(1.0)]):
            assert _hook_counts(b) != before
            raise KeyError("inside")
    assert _hook_counts(b) == before


# --------------------------------------------------------------------------- bad input


def test_bad_vectors_are_refused_before_generating(qwen_tiny, smol):
    b = qwen_tiny
    a = b.arch
    wrong = SteeringVector(directions={1: torch.ones(a.d_model + 1)}, method="t", model_name="x",
                           model_family=a.family, d_model=a.d_model + 1)
    with pytest.raises(ValueError, match="d_model"):
        wb.generate(b, "Hi", steer=[wrong], max_new_tokens=2)
    with pytest.raises(ValueError, match="d_model"):
        check_compatible(wrong, b)
    with pytest.raises(ValueError, match="d_model"):
        steered_generate(b, "Hi", [wrong], max_new_tokens=2)
    far = SteeringVector(directions={99: torch.ones(a.d_model)}, method="t", model_name="x",
                         model_family=a.family, d_model=a.d_model)
    with pytest.raises(ValueError, match="valid layers"):
        wb.generate(b, "Hi", steer=[far], max_new_tokens=2)
    with pytest.raises(ValueError, match="layers 0..7"):
        check_compatible(far, b)
    other = _vec(smol, [1])
    with pytest.raises(ValueError, match="d_model|family"):
        as_edits([other], b)
    v = _vec(b, [2])
    with pytest.raises(ValueError, match=r"layers \[3\] not in this vector"):
        v.steer(1.0, layers=[3])
    with pytest.raises(ValueError, match="finite"):
        v.steer(float("nan"))
    with pytest.raises(ValueError, match="where"):
        v.steer(1.0, where="everywhere")
    with pytest.raises(ValueError, match="non-finite"):
        SteeringVector(directions={1: torch.full((a.d_model,), float("inf"))}, method="t", model_name="x",
                       model_family=a.family, d_model=a.d_model)


def test_load_vector_checks_the_bench(qwen_tiny, smol, tmp_path):
    v = _vec(qwen_tiny, [1, 3])
    path = tmp_path / "v.safetensors"
    v.save(path)
    got = load_vector(path, qwen_tiny)
    assert all(torch.equal(got.directions[l], v.directions[l]) for l in v.layers)
    with pytest.raises(ValueError, match="d_model"):
        load_vector(path, smol)
    gg = tmp_path / "v.gguf"
    v.to_gguf(gg)
    assert torch.equal(load_vector(gg, qwen_tiny).directions[3], v.directions[3])
    with pytest.raises(ValueError, match="d_model"):
        load_vector(gg, smol)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a vector at all")
    with pytest.raises(ValueError, match="not a steering vector"):
        load_vector(junk, qwen_tiny)


# --------------------------------------------------------------------------- KL report


def test_kl_report(qwen_tiny):
    b = qwen_tiny
    vec = _vec(b, [2])
    prompts = ["The weather today is", "Tell me about your day."]
    zero = steer_report(b, [vec.steer(0.0)], prompts)
    assert zero.kl == 0.0 and zero.kl_per_prompt == [0.0, 0.0]
    base = next_token_logits(b, prompts)
    rep = steer_report(b, [vec.steer(3.0)], prompts, concept_words=[" the", " a"], base_logits=base)
    assert rep.kl > 0 and len(rep.kl_per_prompt) == 2
    steered = next_token_logits(b, prompts, [vec.steer(3.0)])
    lp, lq = torch.log_softmax(base.double(), -1), torch.log_softmax(steered.double(), -1)
    ref = float((lp.exp() * (lp - lq)).sum(-1).mean())
    assert rep.kl == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert rep.concept_shift is not None and "KL" in rep.summary()
    # a generated-only vector is measured as acting on the prompt too
    assert steer_report(b, [vec.steer(3.0, where="generated")], prompts, base_logits=base).kl == pytest.approx(rep.kl)
    run = steered_generate(b, prompts, [vec.steer(3.0)], kl_prompts=prompts, max_new_tokens=3, chat=False)
    assert len(run.texts) == 2 and run.report.kl == pytest.approx(rep.kl)

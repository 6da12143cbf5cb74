"""The fast decode path (static state, fused steering, CUDA graphs on a GPU) against the
eager loop, which runs the whole transformers forward with a DynamicCache per token.

On the CPU the static step runs without graphs: same blocks, same state updates, so tokens
must be equal and logits equal to float rounding (attention runs over the whole masked
buffer instead of the valid prefix). The graph replay itself is tested where CUDA exists."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench import fastdecode, latent
from workbench.edits import Ablate, AddVector
from workbench.generate import generate_full
from workbench.latent import Coconut, LatentHead, SoftThinking
from workbench.latent.heads import random_latent_head_tensors
from workbench.latent.policies import token_id
from workbench.prefix import RandomPrefix

PROMPTS = ["Hello there, how are you?", "2+2=", "Tell me a very long story about a dragon and a knight."]


def _both(bench, prompts=PROMPTS, **kw):
    kw = dict(max_new_tokens=16, stop_ids=set(), keep_logits=True, keep_hidden=True) | kw
    return generate_full(bench, prompts, fast=False, **kw), generate_full(bench, prompts, fast=True, **kw)


def _same(a, b, atol):
    assert a.token_ids == b.token_ids
    assert len(a.steps) == len(b.steps)
    for x, y in zip(a.steps, b.steps):
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.latent, y.latent)
        torch.testing.assert_close(y.logits, x.logits, atol=atol, rtol=0)
        torch.testing.assert_close(y.hidden, x.hidden, atol=atol, rtol=0)


def _edit_sets(d):
    g = torch.Generator().manual_seed(0)
    v, u = torch.randn(d, generator=g), torch.randn(d, generator=g)
    return {
        "plain": [],
        "one vector": [AddVector(3, v, 4.0)],
        "several layers and phases": [AddVector(1, v, 2.0), AddVector(1, u, -1.0), AddVector(5, u, 3.0, where="generated"), AddVector(6, v, 9.0, where="prompt")],
        "ablation mixed with a vector": [AddVector(2, v, 3.0), Ablate(2, u), Ablate(7, v, strength=0.5)],
    }


@pytest.mark.parametrize("edits", ["plain", "one vector", "several layers and phases", "ablation mixed with a vector"])
def test_qwen35_fast_equals_eager(qwen_tiny, edits):
    a, b = _both(qwen_tiny, edits=_edit_sets(qwen_tiny.arch.d_model)[edits])
    _same(a, b, atol=1e-5)


def test_llama_family_fast_equals_eager(smol):
    for name, edits in _edit_sets(smol.arch.d_model).items():
        a, b = _both(smol, edits=edits, max_new_tokens=10)
        assert a.token_ids == b.token_ids, name
        for x, y in zip(a.steps, b.steps):
            torch.testing.assert_close(y.logits, x.logits, atol=2e-3, rtol=1e-4)


def test_bfloat16_tokens_equal(qwen_tiny):
    b16 = wb.load("qwen3.5-tiny", dtype="bfloat16")
    v = torch.randn(b16.arch.d_model)
    for edits in ([], [AddVector(1, v, 2.0)]):
        a, b = _both(b16, edits=edits, max_new_tokens=24)
        assert a.token_ids == b.token_ids


def test_prefix_and_sampling(qwen_tiny):
    a, b = _both(qwen_tiny, prefix=RandomPrefix(n=3, seed=1, placement="after_bos"), temperature=0.8, top_k=50, seed=7)
    _same(a, b, atol=1e-5)


@pytest.mark.parametrize("which", ["coconut", "soft thinking", "latent head"])
def test_latent_loops_fast_equals_eager(qwen_tiny, which):
    close = token_id(qwen_tiny.tokenizer, "</think>")
    policy = {
        "coconut": lambda: Coconut(steps=4),
        "soft thinking": lambda: SoftThinking(max_steps=12),
        "latent head": lambda: LatentHead(random_latent_head_tensors(qwen_tiny.hf, seed=0), think_close_token_id=close, max_internal_tokens=6),
    }[which]
    prompts = ["What is 3+4?", "Say hi"]
    t0 = latent.run(qwen_tiny, prompts, policy(), max_new_tokens=8, fast=False)
    t1 = latent.run(qwen_tiny, prompts, policy(), max_new_tokens=8, fast=True)
    for x, y in zip(t0, t1):
        assert x.text == y.text and x.visible_ids == y.visible_ids
        assert len(x.steps) == len(y.steps) > 0
        for s, r in zip(x.steps, y.steps):
            torch.testing.assert_close(r.latent, s.latent, atol=1e-5, rtol=0)


def test_decoder_reused_and_state_reset(qwen_tiny):
    fastdecode.release(qwen_tiny.hf)
    kw = dict(max_new_tokens=6, stop_ids=set(), fast=True)
    first = generate_full(qwen_tiny, PROMPTS, **kw)
    (dec,) = fastdecode._DECODERS[qwen_tiny.hf].values()
    assert dec.steps_eager == 5 and dec.steps_replayed == 0  # no graphs on the CPU
    other = ["A different prompt entirely", "x", "yet another one, of a third length"]
    again = generate_full(qwen_tiny, other, **kw)
    assert list(fastdecode._DECODERS[qwen_tiny.hf].values()) == [dec]  # same batch and bucket: reused
    assert again.token_ids == generate_full(qwen_tiny, other, max_new_tokens=6, stop_ids=set(), fast=False).token_ids
    assert generate_full(qwen_tiny, PROMPTS, **kw).token_ids == first.token_ids
    for n in (1, 2, 4):  # other batch sizes: at most two decoders are kept
        generate_full(qwen_tiny, PROMPTS[:1] * n, **kw)
    assert len(fastdecode._DECODERS[qwen_tiny.hf]) == 2


def test_outer_steering_scope_still_applies(qwen_tiny):
    """Hooks a caller installed around generation fire in the static step too."""
    from workbench.steering.apply import steering

    v = torch.randn(qwen_tiny.arch.d_model)
    with steering(qwen_tiny, [AddVector(4, v, 5.0)], phase="generated"):
        a, b = _both(qwen_tiny)
    _same(a, b, atol=1e-5)
    plain = generate_full(qwen_tiny, PROMPTS, max_new_tokens=16, stop_ids=set(), fast=True)
    assert plain.token_ids != a.token_ids


def test_fused_bias_rows(qwen_tiny):
    d = qwen_tiny.arch.d_model
    v, u = torch.randn(d), torch.randn(d)
    adds, other = fastdecode.split_edits([AddVector(1, v, 2.0), AddVector(1, u, 3.0), AddVector(2, v, 1.0, where="prompt"), AddVector(3, v), Ablate(3, u)], 8)
    assert sorted(adds) == [1] and [len(adds[1])] == [2]
    assert sorted(other) == [3] and [type(e).__name__ for e in other[3]] == ["AddVector", "Ablate"]  # order kept


def test_buffer_full_and_bad_calls(qwen_tiny):
    dec = fastdecode.Decoder(qwen_tiny.hf, batch=1, max_len=fastdecode.BUCKET)
    x = torch.zeros(1, qwen_tiny.arch.d_model)
    with pytest.raises(RuntimeError, match="before prepare"):
        dec.step(x, torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        fastdecode.Decoder(qwen_tiny.hf, batch=1, max_len=256, graphs=True)
    with pytest.raises(ValueError, match="fast must be 'auto', True or False, got 'yes'"):
        generate_full(qwen_tiny, "hi", max_new_tokens=2, fast="yes")


def test_unsupported_models_are_named(qwen_tiny):
    qwen_tiny.hf.train()
    try:
        assert "training mode" in fastdecode.unsupported_reason(qwen_tiny.hf)
        with pytest.raises(ValueError, match="fast=True: .*training mode"):
            generate_full(qwen_tiny, "hi", max_new_tokens=2, fast=True)
    finally:
        qwen_tiny.hf.eval()
    assert fastdecode.unsupported_reason(qwen_tiny.hf) is None


def test_auto_stays_eager_on_cpu(qwen_tiny):
    fastdecode.release(qwen_tiny.hf)
    generate_full(qwen_tiny, "hi", max_new_tokens=3)
    assert qwen_tiny.hf not in fastdecode._DECODERS


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_tokens_equal_eager():
    """On a GPU, in bfloat16: the replayed graph's greedy tokens equal the eager loop's,
    plain, steered at one and at several layers, and in a COCONUT loop."""
    b = wb.load("qwen3.5-tiny", device="cuda", dtype="bfloat16")
    v = torch.randn(b.arch.d_model)
    for edits in ([], [AddVector(3, v, 4.0)], [AddVector(l, v, 1.0) for l in (2, 3, 4, 5)], [Ablate(2, v)]):
        a = generate_full(b, PROMPTS, max_new_tokens=32, stop_ids=set(), edits=edits, fast=False)
        g = generate_full(b, PROMPTS, max_new_tokens=32, stop_ids=set(), edits=edits, fast=True)
        assert a.token_ids == g.token_ids
    dec = next(iter(fastdecode._DECODERS[b.hf].values()))
    assert dec.graph_error is None and dec.steps_replayed > 0
    t0 = latent.run(b, PROMPTS, Coconut(steps=4), max_new_tokens=16, fast=False)
    t1 = latent.run(b, PROMPTS, Coconut(steps=4), max_new_tokens=16, fast=True)
    assert [t.visible_ids for t in t0] == [t.visible_ids for t in t1]


def test_decode_state_that_does_not_fit_is_named(qwen_tiny, monkeypatch):
    from workbench import memory

    fastdecode.release(qwen_tiny.hf)
    monkeypatch.setattr(memory, "available_memory", lambda device: 4096)
    with pytest.raises(MemoryError, match=r"fast decode state for 3 rows x 256 positions needs about [\d.]+ MiB, but only 0\.0 MiB is free on cpu; generate with fast=False"):
        generate_full(qwen_tiny, PROMPTS, max_new_tokens=4, fast=True)
    monkeypatch.undo()
    assert len(generate_full(qwen_tiny, PROMPTS, max_new_tokens=4, fast=True, stop_ids=set()).token_ids[0]) == 4


def test_graph_capture_never_sees_hooks(qwen_tiny, monkeypatch):
    """The capture (GPU only) must happen with no forward hook on the model, or the hook's
    effect is baked into every replay: the loop's own edit hooks are removed first, and a
    caller's hooks postpone the capture. Checked on the CPU by recording the capture call."""
    from workbench.steering.apply import steering

    fastdecode.release(qwen_tiny.hf)
    seen = []
    monkeypatch.setattr(fastdecode.Decoder, "_capture", lambda self: seen.append(self._hooked()))
    real_init = fastdecode.Decoder.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        self.graphs = True  # as on CUDA (no graph is made: _capture only records)

    monkeypatch.setattr(fastdecode.Decoder, "__init__", init)
    v = torch.randn(qwen_tiny.arch.d_model)
    a, b = _both(qwen_tiny, edits=[AddVector(3, v, 4.0)])
    _same(a, b, atol=1e-5)
    assert seen == [False]
    with steering(qwen_tiny, [AddVector(4, v, 5.0)]):
        dec = next(iter(fastdecode._DECODERS[qwen_tiny.hf].values()))
        assert dec._hooked()
    assert not dec._hooked()
    fastdecode.release(qwen_tiny.hf)


def test_capture_is_postponed_while_hooks_exist(qwen_tiny):
    """With a caller's hook on a block, the (GPU-only) capture does not start at all: on the
    CPU, starting it would fail and be recorded as graph_error."""
    fastdecode.release(qwen_tiny.hf)
    generate_full(qwen_tiny, "hi", max_new_tokens=2, fast=True)  # a decoder with its state
    (dec,) = fastdecode._DECODERS[qwen_tiny.hf].values()
    handle = qwen_tiny.hf.model.layers[2].register_forward_hook(lambda m, a, o: o)
    try:
        dec.graphs = True
        dec._capture()
        assert dec.graph_error is None and not dec._graphs
    finally:
        handle.remove()
    with pytest.warns(UserWarning, match="CUDA graph capture failed"):
        dec._capture()  # no hooks: the capture starts, and on the CPU it fails and says so
    assert dec.graph_error is not None
    fastdecode.release(qwen_tiny.hf)


# --------------------------------------------------------------------------- transformers versions


@pytest.mark.parametrize("which", ["qwen_tiny", "smol"])
def test_embedded_models_are_supported(request, which):
    """The fast path's only refusals are the documented ones (dispatched, sliding window,
    non-RoPE, flash attention, training mode, meta device): a plain embedded model on one
    device must be accepted on the installed transformers, or every GPU generation would
    fall back to the eager loop without a word."""
    bench = request.getfixturevalue(which)
    assert fastdecode.unsupported_reason(bench.hf) is None


def _old_api_layer_class(cls):
    """`cls` with the pre-5.24 block signature: the cache comes as `past_key_values=`."""

    class OldAPI(cls):
        def forward(self, hidden_states, position_embeddings=None, attention_mask=None, position_ids=None,
                    past_key_values=None, **kwargs):
            cache = kwargs.pop("cache", past_key_values)  # the model's own forward still says cache=
            return super().forward(hidden_states, position_embeddings=position_embeddings, attention_mask=attention_mask,
                                   position_ids=position_ids, cache=cache, **kwargs)

    return OldAPI


def test_old_cache_keyword_fast_equals_eager(qwen_tiny):
    """Blocks that take `past_key_values=` (transformers before 5.24) get the static state
    under that name: same tokens and logits as the eager loop."""
    from workbench.arch import decoder_layers
    from workbench.compat import cache_kwarg

    layers = decoder_layers(qwen_tiny.hf)
    orig = type(layers[0])
    old = _old_api_layer_class(orig)
    fastdecode.release(qwen_tiny.hf)
    try:
        for layer in layers:
            layer.__class__ = old
        assert cache_kwarg(layers[0]) == "past_key_values"
        assert fastdecode.unsupported_reason(qwen_tiny.hf) is None
        v = torch.randn(qwen_tiny.arch.d_model, generator=torch.Generator().manual_seed(1))
        a, b = _both(qwen_tiny, edits=[AddVector(3, v, 4.0)], max_new_tokens=8)
        _same(a, b, atol=1e-5)
    finally:
        for layer in layers:
            layer.__class__ = orig
        fastdecode.release(qwen_tiny.hf)
    assert cache_kwarg(layers[0]) == "cache"


def test_output_cache_reads_both_field_names():
    from dataclasses import dataclass

    from workbench.compat import output_cache

    @dataclass
    class New:
        cache: object = None

    @dataclass
    class Old:
        past_key_values: object = None

    assert output_cache(New(cache=1)) == 1 and output_cache(Old(past_key_values=2)) == 2
    with pytest.raises(TypeError, match="carries no cache"):
        output_cache(object())

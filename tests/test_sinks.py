"""Attention-sink metrics on hand-made matrices (exact numbers), the chunked capture against
transformers' eager attention and TransformerLens' cached patterns, Qwen3.5's linear layers."""

from __future__ import annotations

import math

import pytest
import torch

from workbench import sinks
from workbench.prefix import RandomPrefix

PROMPT = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat."

# A causal 4x4 attention matrix for one head.
A = torch.tensor(
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.5, 0.5, 0.0, 0.0],
        [0.6, 0.2, 0.2, 0.0],
        [0.7, 0.1, 0.1, 0.1],
    ]
)


def test_alpha_exact():
    assert sinks.alpha(A, 0).item() == pytest.approx((1.0 + 0.5 + 0.6 + 0.7) / 4)
    assert sinks.alpha(A, 1).item() == pytest.approx((0.5 + 0.2 + 0.1) / 3)
    assert sinks.alpha(A, 3).item() == pytest.approx(0.1)
    torch.testing.assert_close(sinks.alpha_keys(A, 2), torch.tensor([0.7, 0.8 / 3]))
    with pytest.raises(ValueError):
        sinks.alpha(A, 4)
    with pytest.raises(ValueError):
        sinks.alpha(torch.ones(3, 4), 0)


def test_key_share_and_mass_exact():
    # queries t >= 2: rows 2 and 3
    torch.testing.assert_close(sinks.key_share(A, 2), torch.tensor([(0.6 + 0.7) / 2, (0.2 + 0.1) / 2]))
    assert sinks.first_k_mass(A, 2).item() == pytest.approx((0.8 + 0.8) / 2)
    assert sinks.first_k_mass(A, 1).item() == pytest.approx((0.5 + 0.6 + 0.7) / 3)
    with pytest.raises(ValueError):
        sinks.key_share(A, 4)


def test_sink_rate_exact_and_nan():
    alpha0 = torch.tensor([[0.9, 0.1, 0.31, 0.3], [float("nan")] * 4])
    rate = sinks.sink_rate(alpha0, 0.3)
    assert rate[0].item() == pytest.approx(0.5)  # 0.9 and 0.31 exceed 0.3; 0.3 does not
    assert math.isnan(rate[1].item())
    for eps in (0.0, 1.0, -0.1, 1.5, float("nan"), "x"):
        with pytest.raises(ValueError):
            sinks.sink_rate(alpha0, eps)


def test_norm_ratio_exact():
    h = torch.zeros(5, 2)
    h[:, 0] = torch.tensor([10.0, 1.0, 2.0, 3.0, 4.0])  # norms 10,1,2,3,4 -> median 3
    torch.testing.assert_close(sinks.norm_ratio(h, 2), torch.tensor([10 / 3, 1 / 3]))


def test_batched_metrics_shapes():
    X = torch.softmax(torch.randn(2, 3, 6, 6).masked_fill(torch.ones(6, 6).triu(1).bool(), float("-inf")), -1)
    assert sinks.alpha(X).shape == (2, 3)
    assert sinks.key_share(X, 3).shape == (2, 3, 3)
    torch.testing.assert_close(sinks.alpha(X)[1, 2], X[1, 2, :, 0].mean())


def test_inspect_matches_eager_attention(any_bench):
    """Chunked statistics (tiny chunks: many chunk boundaries) == statistics of transformers'
    own eager attention matrices. Tolerance: 1e-5 absolute (float32 softmax, same inputs)."""
    rep = sinks.inspect(any_bench, [PROMPT], k=3, chunk_bytes=1)
    pats = sinks.attention_patterns(any_bench, PROMPT)
    a = any_bench.arch
    assert sorted(pats) == list(a.attention_layers)
    for l, P in pats.items():
        torch.testing.assert_close(rep.alpha_keys[0, l], sinks.alpha_keys(P, 3), rtol=0, atol=1e-5)
        torch.testing.assert_close(rep.key_share[0, l], sinks.key_share(P, 3), rtol=0, atol=1e-5)
    assert rep.alpha.shape == (1, a.n_layers, a.n_heads)
    # attention implementation restored
    assert any_bench.hf.config._attn_implementation != sinks.ATTN_IMPL


def test_linear_layers_are_nan_on_qwen(qwen_tiny):
    rep = sinks.inspect(qwen_tiny, [PROMPT, "Another prompt that is long enough."])
    a = qwen_tiny.arch
    lin = [i for i, t in enumerate(a.layer_types) if t != "full_attention"]
    assert lin and a.attention_layers
    assert torch.isnan(rep.alpha[:, lin]).all()
    assert torch.isnan(rep.layer_sink_rate[:, lin]).all()
    assert not torch.isnan(rep.alpha[:, list(a.attention_layers)]).any()
    assert not torch.isnan(rep.sink_rate).any()  # averages over attention layers only
    assert not torch.isnan(rep.norm_ratio).any()  # residual norms exist for every block
    expect = (rep.alpha[:, list(a.attention_layers)] > rep.eps).float().mean((1, 2))
    torch.testing.assert_close(rep.sink_rate, expect)


def test_inspect_one_by_one_equals_together(smol):
    both = sinks.inspect(smol, [PROMPT, "Short one here, a few words."])
    one = sinks.inspect(smol, ["Short one here, a few words."])
    torch.testing.assert_close(both.alpha[1], one.alpha[0])


def test_report_consistency(smol):
    rep = sinks.inspect(smol, [PROMPT], k=4)
    torch.testing.assert_close(rep.first_k_mass, rep.key_share.sum(-1))
    torch.testing.assert_close(rep.mass_on([0, 1]), rep.key_share[..., :2].sum(-1))
    assert ((rep.first_k_mass >= 0) & (rep.first_k_mass <= 1 + 1e-5)).all()
    assert rep.n_tokens[0] == len(smol.tokenizer(PROMPT)["input_ids"])
    with pytest.raises(ValueError):
        rep.mass_on([4])
    assert "sink rate" in rep.table()


def test_inspect_bad_input(smol):
    for eps in (0, 1, -0.5, 2.0):
        with pytest.raises(ValueError):
            sinks.inspect(smol, [PROMPT], eps=eps)
    with pytest.raises(ValueError):
        sinks.inspect(smol, [PROMPT], k=0)
    with pytest.raises(ValueError):
        sinks.inspect(smol, ["Hi"], k=8)  # fewer positions than tracked keys
    with pytest.raises(ValueError):
        sinks.inspect(smol, [])


def test_full_attention_refuses_too_long(smol, monkeypatch):
    monkeypatch.setattr(sinks, "available_memory", lambda device: 1024)
    with pytest.raises(MemoryError, match="inspect"):
        sinks.attention_patterns(smol, PROMPT)


def test_prefix_moves_sink_mass(any_bench):
    p = RandomPrefix(n=2, seed=0, scale=1.0)
    comp = sinks.compare_prefix(any_bench, [PROMPT], p, k=3)
    assert comp.prefix_positions == (0, 1) and comp.first_token_position == 2
    a = comp.with_prefix
    assert a.n_tokens[0] == comp.without.n_tokens[0] + 2
    assert a.tokens[0][:2] == ["<prefix 0>", "<prefix 1>"]
    # prefix mass + first-token mass (with) == mass on the first 3 keys (with)
    torch.testing.assert_close(comp.prefix_mass + comp.bos_mass_with, a.key_share[..., :3].sum(-1), equal_nan=True)
    att = list(any_bench.arch.attention_layers)
    assert (comp.prefix_mass[:, att] > 0).all()
    after = sinks.compare_prefix(any_bench, [PROMPT], RandomPrefix(n=2, seed=0, placement="after_bos"))
    assert after.prefix_positions == (1, 2) and after.first_token_position == 0


def test_prefix_takes_the_sink_on_smol(smol):
    """On the real model, the first position is a strong sink; a 2-vector prefix at the
    start takes most of it (measured: first-token mass ~0.54 -> ~0.05)."""
    comp = sinks.compare_prefix(smol, [PROMPT], RandomPrefix(n=2, seed=0))
    s = comp.summary()
    assert s["mean_bos_mass_without"] > 0.3
    assert s["mean_bos_mass_with"] < 0.5 * s["mean_bos_mass_without"]
    assert s["mean_prefix_mass"] > s["mean_bos_mass_with"]


def test_sinks_match_transformer_lens_patterns(smol):
    """Sink statistics from TransformerLens' cached hook_pattern equal inspect's
    (TransformerBridge over the same weights; tolerance 1e-5 absolute)."""
    from workbench.inputs import token_ids
    from workbench.interop import transformer_lens_bridge

    bridge = transformer_lens_bridge(smol)
    ids = token_ids(smol.tokenizer, [PROMPT])[0]
    _, cache = bridge.run_with_cache(torch.tensor([ids]), names_filter=lambda n: n.endswith("attn.hook_pattern"))
    rep = sinks.inspect(smol, [ids], k=2)
    for l in range(smol.arch.n_layers):
        pat = cache[f"blocks.{l}.attn.hook_pattern"][0]
        torch.testing.assert_close(rep.alpha[0, l], sinks.alpha(pat, 0), rtol=0, atol=1e-5)
        torch.testing.assert_close(rep.key_share[0, l], sinks.key_share(pat, 2), rtol=0, atol=1e-5)


def test_viz_figures(qwen_tiny):
    from workbench.viz import sinks as vs

    comp = sinks.compare_prefix(qwen_tiny, [PROMPT], RandomPrefix(n=2, seed=0))
    rep = comp.without
    fig = vs.sink_heatmap(rep)
    z = fig.data[0].z
    assert len(z) == qwen_tiny.arch.n_layers and len(z[0]) == qwen_tiny.arch.n_heads
    assert all(math.isnan(v) for v in z[0])  # layer 0 is linear attention: a gap, not zeros
    assert len(vs.sink_rate_curve({"a": rep, "b": comp.with_prefix}).data) == 2
    assert len(vs.first_token_norm_curve(rep).data) == 1
    assert len(vs.prefix_comparison(comp).data) == 3
    with pytest.raises(ValueError):
        vs.sink_heatmap(rep, metric="nope")

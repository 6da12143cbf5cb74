"""Latent quantities equal to their papers' definitions: Soft Thinking's cold stop, the
embedding scale over the rows a model uses, and the superposition readout checked against
the mixture soft thinking fed."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch

from workbench import latent
from workbench.arch import arch_info, embedding_scale
from workbench.latent import readout
from workbench.latent.policies import cold_stop_entropy
from workbench.prefix import RandomPrefix


# --------------------------------------------------------------------------- cold stop


def test_cold_stop_entropy_is_the_full_tempered_distribution():
    """H(softmax(logits / T)) over the whole vocabulary, by hand."""
    logits = torch.tensor([[0.0, math.log(3.0), -1e9], [2.0, 2.0, 2.0]])
    T = 0.5
    got = cold_stop_entropy(logits, T)
    p = torch.softmax(logits.double() / T, dim=-1)
    q = p[0, :2]  # the third entry's probability is 0
    want0 = float(-(q * q.log()).sum())
    assert float(got[0]) == pytest.approx(want0, rel=1e-6)
    # T = 0.5 sharpens [1, 3] to [1, 9] / 10
    assert want0 == pytest.approx(-(0.1 * math.log(0.1) + 0.9 * math.log(0.9)), rel=1e-6)
    assert float(got[1]) == pytest.approx(math.log(3.0), rel=1e-6)


def test_a_step_one_hot_after_truncation_is_not_cold():
    """Top token p = 0.96 >= top_p 0.95: truncation leaves it alone (entropy 0, which the
    old rule counted cold); the full distribution's entropy is far above 0.01 nats."""
    V = 1000
    logits = torch.zeros(1, V)
    logits[0, 0] = math.log(0.96 * (V - 1) / 0.04)  # p0 = 0.96 at T = 1
    from workbench.generate import truncate_probs

    trunc = truncate_probs(logits, 1.0, 15, 0.95, 0.0)
    assert float(trunc[0, 0]) == pytest.approx(1.0)  # one-hot after truncation
    p = torch.softmax(logits.double(), -1)[0]
    want = float(-(p * p.log()).sum())
    assert float(cold_stop_entropy(logits, 1.0)[0]) == pytest.approx(want, rel=1e-5)
    assert want > 0.4  # 0.96 * ln(1/0.96) + 0.04 * ln(999 / 0.04)


def test_soft_thinking_on_a_broad_model_never_cold_stops(qwen_tiny):
    """The random tiny Qwen3.5 spreads its distribution over the vocabulary (entropy ~12
    nats); with top_k=1 every truncated step is one-hot. The old rule (entropy of the
    truncated distribution) stopped after `cold_patience` steps; the paper's rule never
    does, and the loop thinks its whole budget."""
    pol = latent.SoftThinking(max_steps=10, top_k=1, cold_patience=3)
    tr = latent.run(qwen_tiny, "2+2?", pol, max_new_tokens=1, readout=False)
    assert tr.exit_detail != "cold_stop"
    assert all(s.entropy > 5.0 for s in tr.steps)  # far from cold, at T = 1 and at T = 0.6 alike
    assert tr.latent_steps == 10 or tr.exit == "self_exit"


def test_soft_thinking_cold_stops_on_a_confident_model(qwen_tiny):
    """A model made confident (the unembedding scaled up: the full distribution is nearly
    one-hot) cold-stops at the `cold_patience`-th cold distribution. The first one counted
    is the distribution after the prompt, and the k-th is replaced by `</think>`, so
    cold_patience - 1 latent vectors are fed, as in Soft Thinking's sampler, which counts
    every thinking-phase distribution."""
    head = qwen_tiny.hf.get_output_embeddings()
    with _scaled(head.weight, 1e4):
        pol = latent.SoftThinking(max_steps=20, cold_patience=3, cold_entropy=0.01)
        tr = latent.run(qwen_tiny, "2+2?", pol, max_new_tokens=1, readout=False)
    if tr.exit == "self_exit" and tr.exit_detail != "cold_stop":
        pytest.skip("the scaled model's argmax is </think>: it self-exits before any cold step")
    assert tr.exit_detail == "cold_stop" and tr.latent_steps == 2


@contextmanager
def _scaled(w: torch.Tensor, factor: float):
    old = w.detach().clone()
    with torch.no_grad():
        w.mul_(factor)
    try:
        yield
    finally:
        with torch.no_grad():
            w.copy_(old)
    assert torch.equal(w, old)


# --------------------------------------------------------------------------- embedding scale


def test_embedding_scale_counts_only_rows_in_use():
    W = torch.zeros(10, 4)
    W[2] = torch.tensor([1.0, -1.0, 1.0, -1.0])  # norm 2, rms 1
    W[7] = torch.tensor([3.0, 0.0, 0.0, 4.0])  # norm 5
    rms, norm, rows = embedding_scale(W, chunk_rows=3)  # chunks that split the rows
    assert rows == 2
    assert norm == pytest.approx(3.5)
    assert rms == pytest.approx(math.sqrt((4 + 25) / 8))
    assert embedding_scale(torch.zeros(3, 2))[2] == 0 and math.isnan(embedding_scale(torch.zeros(3, 2))[0])
    full = torch.randn(50, 8)
    rms, norm, rows = embedding_scale(full, chunk_rows=7)
    assert rows == 50 and rms == pytest.approx(float(full.pow(2).mean().sqrt()), rel=1e-5)
    assert norm == pytest.approx(float(full.norm(dim=-1).mean()), rel=1e-5)


def test_arch_scale_and_prefix_on_a_mostly_zero_vocabulary(qwen_tiny):
    """A model using 300 of its rows (the micro model's layout): embed_norm is the norm of
    a real token embedding, a latent equal to a used row reads |v|/|e| ~ 1, and a random
    prefix has the RMS of the used rows times its scale, not ~1/29 of it."""
    emb = qwen_tiny.hf.get_input_embeddings().weight
    keep = torch.arange(300) * 7
    with _zero_rows_except(emb, keep):
        a = arch_info(qwen_tiny.hf)
        used = emb.detach().float()[keep]
        assert a.embed_rows == 300
        assert a.embed_norm == pytest.approx(float(used.norm(dim=-1).mean()), rel=1e-5)
        assert a.embed_rms == pytest.approx(float(used.pow(2).mean().sqrt()), rel=1e-5)
        naive = float(emb.detach().float().norm(dim=-1).mean())
        assert a.embed_norm / naive > 100  # what every |v|/|e| was inflated by before
        v = RandomPrefix(n=4, seed=0, scale=1.0).vectors(a.d_model, a.embed_rms)
        assert float(v.pow(2).mean().sqrt()) == pytest.approx(a.embed_rms, rel=1e-5)


@contextmanager
def _zero_rows_except(w: torch.Tensor, keep: torch.Tensor):
    old = w.detach().clone()
    mask = torch.ones(w.shape[0], dtype=torch.bool)
    mask[keep] = False
    with torch.no_grad():
        w[mask] = 0
    try:
        yield
    finally:
        with torch.no_grad():
            w.copy_(old)


# --------------------------------------------------------------------------- superposition vs the fed mixture


def test_superposition_is_scored_against_the_fed_mixture(smol):
    """Soft thinking's steps carry the exact mixture they fed; the NNLS fit is reported beside
    it with recall and L1 against that ground truth: a sparse mixture whose tokens are among
    the cosine-nearest candidates is recovered exactly (recall 1, L1 ~0), a broad one is not,
    and the numbers say so."""
    pol = latent.SoftThinking(max_steps=3, top_k=2, temperature=1.0, cold_patience=0)
    tr = latent.run(smol, "The capital of France is", pol, chat=False, max_new_tokens=1)
    for s in tr.steps:
        sp = s.superposition
        assert sp is not None and sp.truth_recall is not None
        assert (sp.truth_recall, sp.truth_l1) == readout.mixture_agreement(sp, s.mixture_ids, s.mixture_weights)
        assert 0.0 <= sp.truth_recall <= 1.0 and 0.0 <= sp.truth_l1 <= 2.0 + 1e-6
    text = tr.table(smol.tokenizer)
    assert "fed mixture (exact)" in text and "raw weights, not normalised" in text and "recall=" in text
    W = smol.hf.get_input_embeddings().weight.detach().float()
    # sparse: recovered exactly
    ids, w = torch.tensor([1000, 2345]), torch.tensor([0.7, 0.3])
    fit = readout.superposition(smol, (w[:, None] * W[ids]).sum(0, keepdim=True), n_candidates=64)[0]
    recall, l1 = readout.mixture_agreement(fit, ids, w)
    assert recall == 1.0 and l1 < 1e-3
    # broad: ten tokens with equal weights; whatever the fit finds, recall and L1 are what
    # they say (computed here by hand from the fit)
    ids = torch.arange(10) * 97 + 11
    w = torch.full((10,), 0.1)
    fit = readout.superposition(smol, (w[:, None] * W[ids]).sum(0, keepdim=True), n_candidates=64, keep=16)[0]
    recall, l1 = readout.mixture_agreement(fit, ids, w)
    got = dict(zip(fit.ids.tolist(), fit.weights.tolist()))
    true = set(ids.tolist())
    assert recall == pytest.approx(sum(1 for t in true if got.get(t, 0) > 0) / 10)
    assert l1 == pytest.approx(sum(abs(got.get(t, 0.0) - 0.1) for t in true) + sum(x for t, x in got.items() if t not in true), abs=1e-6)
    assert recall < 1.0 or l1 > 1e-3 or fit.rel_error < 1e-4  # recovered exactly only if the fit is exact

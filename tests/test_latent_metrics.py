"""Latent-SFT's effective global parallelism (the original parallelism.py) and the plain /
coverage-weighted compression rates: hand-worked examples on tiny tensors, one real trace
on the tiny Qwen3.5, and the bad inputs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from workbench import latent
from workbench.errors import InputError
from workbench.latent import readout

EPS = 1e-12

# Two latent steps over a 4-token vocabulary; top-2 of step 0 = {0, 1}, of step 1 = {1, 3}.
PROBS = torch.tensor([[0.6, 0.2, 0.15, 0.05], [0.1, 0.6, 0.05, 0.25]], dtype=torch.float64)
LATENTS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
# path A = [0, 1] -> segments [0] | [1]; path B = [2, 3, 0, 0] -> segments [2, 3] | [0, 0]
PATHS = [[0, 1], [2, 3, 0, 0]]
# A's segment latents lie along the steps (identity matching); B's are swapped
REFS = [torch.tensor([[1.0, 0.1], [0.1, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.2]])]


def n_eff_of(scores):
    p = torch.softmax(torch.tensor(scores, dtype=torch.float64), -1)
    return math.exp(-float((p * torch.log(p + EPS)).sum()))


def test_segments_follow_the_original_floor_rule():
    assert readout.segment_spans(4, 2) == [(0, 2), (2, 4)]
    assert readout.segment_spans(5, 2) == [(0, 2), (2, 5)]
    assert readout.segment_spans(7, 3) == [(0, 2), (2, 4), (4, 7)]
    assert readout.segment_spans(3, 3) == [(0, 1), (1, 2), (2, 3)]


def test_greedy_matching_goes_in_step_order_not_min_cost():
    # step 0 takes its closest segment (0) first, so step 1 is left with segment 1 (cost
    # 1.0 in all) although 0->1, 1->0 would cost 0.25
    assert readout.greedy_matching(torch.tensor([[0.1, 0.2], [0.05, 0.9]])) == [0, 1]
    assert readout.greedy_matching(torch.tensor([[0.5, 0.5, 0.1], [0.3, 0.3, 0.0], [0.0, 0.0, 0.0]])) == [2, 0, 1]  # ties: lowest index
    d = readout.latent_distances(LATENTS, REFS[1])
    assert d[0, 1] < d[0, 0] and readout.greedy_matching(d) == [1, 0]


def test_parallelism_hand_example():
    out = readout.parallelism_from_tensors(LATENTS, PROBS, PATHS, REFS, topk=2, n_random=8, seed=0)
    assert out.n_steps == 2 and out.matching == [[0, 1], [1, 0]] and out.zero_mass == 0.0
    assert out.spans == [[(0, 1), (1, 2)], [(0, 2), (2, 4)]]
    # A: step 0 <- [0]: p0(0) = 0.6; step 1 <- [1]: p1(1) = 0.6
    s_a = math.log(0.6 + EPS)
    # B: step 0 <- [0, 0]: token 0 is in step 0's top-2 and counts twice -> 1.2;
    #    step 1 <- [2, 3]: only 3 is in step 1's top-2 -> 0.25
    s_b = (math.log(1.2 + EPS) + math.log(0.25 + EPS)) / 2
    assert out.scores.tolist() == pytest.approx([s_a, s_b], abs=1e-12)
    assert out.n_eff == pytest.approx(n_eff_of([s_a, s_b]), rel=1e-12)
    # the null: each trial a random permutation per path, drawn path by path, trial by
    # trial from one generator seeded 0; the swapped / identity matchings score
    # A: [1, 0]: step 0 <- [1]: 0.2, step 1 <- [0]: not in top-2 -> eps
    # B: [0, 1]: step 0 <- [2, 3]: none in top-2, step 1 <- [0, 0]: none -> eps, eps
    table = [
        {(0, 1): s_a, (1, 0): (math.log(0.2 + EPS) + math.log(EPS)) / 2},
        {(1, 0): s_b, (0, 1): math.log(EPS)},
    ]
    g = torch.Generator().manual_seed(0)
    trials = [[0.0, 0.0] for _ in range(8)]
    for m in range(2):
        for t in range(8):
            trials[t][m] = table[m][tuple(torch.randperm(2, generator=g).tolist())]
    assert torch.allclose(out.random_scores, torch.tensor(trials, dtype=torch.float64), rtol=0, atol=1e-12)
    assert {tuple(r) for r in trials} != {tuple(trials[0])}  # the seed draws both matchings
    null = sum(n_eff_of(s) for s in trials) / 8
    assert out.n_eff_random == pytest.approx(null, rel=1e-12)
    assert out.normalised == pytest.approx(out.n_eff / null, rel=1e-12)
    assert out.settings == dict(topk=2, tau=1.0, n_random=8, seed=0, distance="cosine", eps=EPS)
    # tau scales the scores before the softmax
    hot = readout.parallelism_from_tensors(LATENTS, PROBS, PATHS, REFS, topk=2, tau=0.5, n_random=8, seed=0)
    assert hot.n_eff == pytest.approx(n_eff_of([2 * s_a, 2 * s_b]), rel=1e-12)


def test_parallelism_when_every_matching_is_equal():
    # every step has the same distribution: a path scores the same under any matching, so
    # the null equals N_eff for any seed and the normalised value is exactly 1
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(6, generator=g), -1).repeat(3, 1)
    paths = [[0, 1, 2], [3, 4, 5, 0], [1, 1, 2, 3, 4]]
    refs = [torch.randn(3, 4, generator=g) for _ in paths]
    lat = torch.randn(3, 4, generator=g)
    for seed in (0, 7):
        out = readout.parallelism_from_tensors(lat, probs, paths, refs, topk=4, n_random=5, seed=seed)
        assert out.n_eff_random == pytest.approx(out.n_eff, rel=1e-12) and out.normalised == pytest.approx(1.0, rel=1e-12)
        assert all(sorted(m) == [0, 1, 2] for m in out.matching)
    # no segment token in any step's top-k: every path scores the floor, N_eff = M, normalised 1
    floor = readout.parallelism_from_tensors(lat, probs, [[5, 5, 5], [5, 5, 5, 5]], refs[:2], topk=1, n_random=3)
    assert int(probs[0].argmax()) != 5
    assert floor.zero_mass == 1.0 and floor.n_eff == pytest.approx(2.0) and floor.normalised == pytest.approx(1.0)
    # equal scores for M paths: N_eff = M
    same = readout.parallelism_from_tensors(lat, probs, [[0, 1, 2]] * 4, [refs[0]] * 4, n_random=3)
    assert same.n_eff == pytest.approx(4.0, rel=1e-9)


def test_compression_rates_hand_example():
    # chain a=0, b=1, c=2; top-2 of step 0 = {1, 2} (b, c), of step 1 = {0, 3} (a): in
    # order, a at step 1 leaves b, c nowhere (1 token), skipping a covers b, c at step 0 (2)
    probs = torch.tensor([[0.1, 0.5, 0.4, 0.0], [0.6, 0.1, 0.0, 0.3]])
    r = readout.compression_rates_from_probs(probs, [0, 1, 2], k=2)
    assert (r.n_tokens, r.n_steps, r.covered, r.k) == (3, 2, 2, 2)
    assert r.plain_rate == pytest.approx(1.5) and r.coverage_rate == pytest.approx(1.0) and r.coverage == pytest.approx(2 / 3)
    # order matters: c, b, a can use step 0 then step 1 -> all 3
    assert readout.compression_rates_from_probs(probs, [2, 1, 0], k=2).covered == 3
    # a token out of every step's top-k is never covered; k = V covers everything
    assert readout.compression_rates_from_probs(probs, [2, 2, 3], k=1).covered == 0
    full = readout.compression_rates_from_probs(probs, [3, 2, 1, 0], k=4)
    assert full.covered == 4 and full.coverage_rate == pytest.approx(2.0) and full.plain_rate == pytest.approx(2.0)


def test_global_parallelism_on_a_real_trace(qwen_tiny):
    tr = latent.run(qwen_tiny, "3*4?", latent.Coconut(steps=3), max_new_tokens=1)
    tok = qwen_tiny.tokenizer
    paths = ["3 * 4 = 12", "4 + 4 + 4 = 12", "  3 *   4 = 12 ", "three fours make twelve"]
    out = readout.global_parallelism(qwen_tiny, tr, paths, n_random=16)
    assert out.paths == [0, 1, 3]  # path 2 equals path 0 after whitespace normalisation
    assert out.n_steps == 3 and out.scores.shape == (3,) and out.random_scores.shape == (16, 3)
    assert all(sorted(m) == [0, 1, 2] for m in out.matching)
    assert 1.0 <= out.n_eff <= 3.0 and 1.0 <= out.n_eff_random <= 3.0
    assert out.normalised == pytest.approx(out.n_eff / out.n_eff_random)
    assert 0.0 <= out.zero_mass <= 1.0 and out.settings["topk"] == 100 and out.settings["n_random"] == 16 and out.settings["tau"] == 1.0
    # the step distributions are the model's: their top-k is what the trace recorded
    probs = readout._step_probs(qwen_tiny, tr)
    for s, p in zip(tr.steps, probs):
        assert torch.allclose(p.topk(5).values.float(), s.top_probs[:5], atol=1e-4)
    # the path is read after the prompt: its first state is the one step 0 came from
    ids = [tok.encode(paths[i], add_special_tokens=False) for i in out.paths]
    h = readout.path_hiddens(qwen_tiny, tr.prompt_ids, ids[0])
    assert h.shape == (len(ids[0]), qwen_tiny.arch.d_model)
    assert torch.allclose(h[0], tr.steps[0].hidden, atol=1e-4)
    # the wrapper is the tensor core on those inputs
    refs = [torch.stack([readout.path_hiddens(qwen_tiny, tr.prompt_ids, t)[a:b].mean(0) for a, b in readout.segment_spans(len(t), 3)]) for t in ids]
    lat = torch.stack([s.hidden for s in tr.steps])
    core = readout.parallelism_from_tensors(lat, probs, ids, refs, n_random=16)
    assert core.matching == out.matching and torch.allclose(core.scores, out.scores, atol=1e-9)
    assert core.n_eff == pytest.approx(out.n_eff) and core.n_eff_random == pytest.approx(out.n_eff_random)
    assert out.spans == [readout.segment_spans(len(t), 3) for t in ids]
    # compression rates on the same trace
    cr = readout.compression_rates(qwen_tiny, tr, paths[0], k=10)
    assert cr.n_steps == 3 and cr.n_tokens == len(ids[0]) and cr.plain_rate == pytest.approx(len(ids[0]) / 3)
    assert 0 <= cr.covered <= cr.n_tokens and cr.coverage_rate == pytest.approx(cr.covered / 3)
    assert readout.compression_rates(qwen_tiny, tr, ids[0], k=10) == cr


BAD_CORE = [
    (dict(paths=[[0, 1]], segment_latents=[REFS[0]]), "at least 2 reasoning paths, got 1"),
    (dict(tau=0.0), "tau must be a finite number > 0, got 0.0"),
    (dict(tau=-1.0), "tau must be a finite number > 0, got -1.0"),
    (dict(tau=float("nan")), "tau must be a finite number > 0, got nan"),
    (dict(paths=[[0, 1], []]), "reasoning path 1 is empty"),
    (dict(paths=[[0, 1], [3]]), "reasoning path 1 has 1 tokens, fewer than the T = 2 latent steps"),
    (dict(latents=torch.zeros(0, 2), probs=torch.zeros(0, 4)), "no latent steps"),
    (dict(paths=[[0, 1], [0, 9]]), r"token ids in \[0, 4\)"),
    (dict(probs=PROBS * 2), "probability rows"),
    (dict(segment_latents=[REFS[0], torch.zeros(3, 2)]), r"segment_latents\[1\] must be a finite tensor \[2, 2\]"),
    (dict(topk=0), "topk must be an integer >= 1, got 0"),
    (dict(n_random=0), "n_random must be an integer >= 1, got 0"),
    (dict(distance="dot"), "distance must be 'cosine' or 'l2', got 'dot'"),
]


@pytest.mark.parametrize("change,message", BAD_CORE)
def test_parallelism_core_bad_inputs(change, message):
    kw = dict(latents=LATENTS, probs=PROBS, paths=PATHS, segment_latents=REFS)
    kw.update(change)
    with pytest.raises(InputError, match=message):
        readout.parallelism_from_tensors(**kw)


@pytest.mark.parametrize(
    "probs,chain,k,message",
    [
        (torch.zeros(0, 4), [0], 1, "no latent steps"),
        (PROBS, [], 1, "explicit chain is empty"),
        (PROBS, [0, 4], 1, r"token ids in \[0, 4\)"),
        (PROBS, [0], 0, r"k must be an integer in \[1, 4\], got 0"),
        (PROBS, "01", 1, "chain_ids must be a list of token ids"),
    ],
)
def test_compression_rates_bad_inputs(probs, chain, k, message):
    with pytest.raises(InputError, match=message):
        readout.compression_rates_from_probs(probs, chain, k=k)


def test_global_parallelism_bad_inputs(qwen_tiny):
    tr = latent.run(qwen_tiny, "3*4?", latent.Coconut(steps=3), max_new_tokens=1)
    ok = ["3 * 4 = 12", "4 + 4 + 4 = 12"]
    with pytest.raises(InputError, match="at least 2 distinct reasoning paths .*got 1"):
        readout.global_parallelism(qwen_tiny, tr, ["3 * 4 = 12"])
    with pytest.raises(InputError, match="at least 2 distinct reasoning paths .*got 1"):
        readout.global_parallelism(qwen_tiny, tr, ["3 * 4 = 12", "3  * 4 = 12"])
    for tau in (0, -0.5, float("nan")):
        with pytest.raises(InputError, match=f"tau must be a finite number > 0, got {tau!r}"):
            readout.global_parallelism(qwen_tiny, tr, ok, tau=tau)
    with pytest.raises(InputError, match="reasoning path 1 is empty"):
        readout.global_parallelism(qwen_tiny, tr, [ok[0], ""])
    with pytest.raises(InputError, match="reasoning path 2 has 2 tokens, fewer than the T = 3 latent steps"):
        readout.global_parallelism(qwen_tiny, tr, ok + ["12"])
    empty = dataclasses.replace(tr, steps=[], latent_steps=0)
    with pytest.raises(InputError, match="no latent steps"):
        readout.global_parallelism(qwen_tiny, empty, ok)
    with pytest.raises(InputError, match="no latent steps"):
        readout.compression_rates(qwen_tiny, empty, ok[0])
    with pytest.raises(InputError, match="trace must be a LatentTrace"):
        readout.global_parallelism(qwen_tiny, "trace", ok)
    with pytest.raises(InputError, match="paths must be a list"):
        readout.global_parallelism(qwen_tiny, tr, "3 * 4 = 12")
    with pytest.raises(InputError, match="dedupe must be"):
        readout.global_parallelism(qwen_tiny, tr, ok, dedupe=1)

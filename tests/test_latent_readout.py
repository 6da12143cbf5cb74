"""Readouts of latent steps, trajectory, global parallelism, evaluation and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from workbench import latent
from workbench.latent import readout
from workbench.latent.eval import evaluate
from workbench.tasks import arithmetic_problems


def test_effective_count():
    assert readout.effective_count(torch.tensor([2.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert readout.effective_count(torch.tensor([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    assert readout.effective_count(torch.zeros(3)) == 0.0


def test_superposition_recovers_token_mixtures(smol):
    W = smol.hf.get_input_embeddings().weight
    a, b = 1000, 2345
    v = torch.stack([W[a], 0.7 * W[a] + 0.3 * W[b]])
    one, two = readout.superposition(smol, v, n_candidates=64)
    assert int(one.ids[0]) == a and one.rel_error < 1e-6 and one.n_eff == pytest.approx(1.0, abs=1e-4)
    got = dict(zip(two.ids.tolist(), two.weights.tolist()))
    assert got[a] == pytest.approx(0.7, abs=1e-4) and got[b] == pytest.approx(0.3, abs=1e-4)
    assert two.rel_error < 1e-5
    p = torch.tensor([0.7, 0.3])
    assert two.n_eff == pytest.approx(math.exp(float(-(p * p.log()).sum())), rel=1e-3)


def test_soft_thinking_mixture_is_exact(qwen_tiny):
    tr = latent.run(qwen_tiny, "2+2?", latent.SoftThinking(max_steps=2, top_k=5, cold_patience=0), max_new_tokens=1)
    W = qwen_tiny.hf.get_input_embeddings().weight
    for s in tr.steps:
        assert s.mixture_support == 5 and float(s.mixture_weights.sum()) == pytest.approx(1.0, abs=1e-5)
        assert torch.allclose(s.mixture_weights @ W[s.mixture_ids], s.latent, atol=1e-6)
        assert s.superposition is not None and s.nearest_ids is not None and s.norm == pytest.approx(float(s.latent.norm()))


def test_logit_lens_steps_last_layer_is_the_models_distribution(any_bench):
    tr = latent.run(any_bench, "2+2?", latent.Coconut(steps=2), max_new_tokens=2, k=5)
    lens = readout.logit_lens_steps(any_bench, tr, k=5)
    assert lens.top_ids.shape == (2, any_bench.arch.n_layers, 5)
    for i, s in enumerate(tr.steps):
        assert torch.equal(lens.top_ids[i, -1], s.top_ids[:5])
        assert torch.allclose(lens.top_probs[i, -1], s.top_probs[:5], atol=1e-4)


def test_trajectory_and_parallelism(qwen_tiny):
    tr = latent.run(qwen_tiny, "3*4?", latent.Coconut(steps=3), max_new_tokens=1)
    cot = readout.cot_hiddens(qwen_tiny, "3*4?", max_new_tokens=5)
    traj = readout.trajectory(qwen_tiny, tr, cot)
    assert traj.latent.shape == (3, 2) and traj.cot.shape == (len(cot[1]), 2) and len(traj.cot_tokens) == len(cot[1])
    # the stream the web app shows: the same states and ids token by token, the text without stops
    stream = [(list(h), list(i), t) for h, i, t in readout.cot_stream(qwen_tiny, "3*4?", max_new_tokens=5)]
    assert [len(i) for _, i, _ in stream] == list(range(1, len(cot[1]) + 1))
    hs, ids, text = stream[-1]
    assert ids == cot[1] and torch.equal(torch.stack(hs), cot[0])
    stops = latent.policies.stop_ids(qwen_tiny)
    assert text == qwen_tiny.tokenizer.decode([i for i in ids if i not in stops])
    assert np.array_equal(readout.trajectory(qwen_tiny, tr, (hs, ids)).cot, traj.cot)
    # Latent-SFT's global parallelism (hand-worked checks in tests/test_latent_metrics.py)
    par = readout.global_parallelism(qwen_tiny, tr, ["3 * 4 = 12", "4 + 4 + 4 = 12", "12 = 3 * 4"], tau=0.1, n_random=8)
    assert par.scores.shape == (3,) and 1.0 <= par.n_eff <= 3.0 and par.n_eff_random > 0 and par.n_steps == 3
    assert par.normalised == pytest.approx(par.n_eff / par.n_eff_random)
    with pytest.raises(ValueError, match="at least 2"):
        readout.global_parallelism(qwen_tiny, tr, ["x"])
    # the older order-free score, under its own name
    spread = readout.path_likelihood_spread(qwen_tiny, tr, ["3 * 4 = 12", "4 + 4 + 4 = 12", "12"], tau=0.1)
    assert spread.scores.shape == (3,) and 1.0 <= spread.n_eff <= 3.0 and spread.n_eff_random > 0
    same = readout.path_likelihood_spread(qwen_tiny, tr, ["3 * 4 = 12"] * 4)
    assert same.n_eff == pytest.approx(4.0) and same.normalised == pytest.approx(4.0 / same.n_eff_random)
    with pytest.raises(ValueError, match="at least 2"):
        readout.path_likelihood_spread(qwen_tiny, tr, ["x"])


def test_viz_figures(qwen_tiny):
    from workbench.viz import latent as vl

    tr = latent.run(qwen_tiny, "3*4?", latent.SoftThinking(max_steps=2, cold_patience=0), max_new_tokens=1)
    figs = vl.step_figures(tr, qwen_tiny.tokenizer)
    assert len(figs) == 4 and all(f.data for f in figs)
    traj = readout.trajectory(qwen_tiny, tr, readout.cot_hiddens(qwen_tiny, "3*4?", max_new_tokens=3))
    fig = vl.trajectory_figure(traj)
    assert [t.name for t in fig.data] == ["explicit CoT", "latent steps", "latent start", "latent end", "CoT start", "CoT end"]
    assert (fig.data[2].x[0], fig.data[2].y[0]) == (traj.latent[0, 0], traj.latent[0, 1])
    assert (fig.data[5].x[0], fig.data[5].y[0]) == (traj.cot[-1, 0], traj.cot[-1, 1])
    assert vl._step_labels(3) == ["0", "1", "2"] and vl._step_labels(30)[:4] == ["0", "", "", "3"] and vl._step_labels(30)[-1] == "29"
    # entropy, effective tokens and norm on their own titled axes, each from 0
    ent = figs[1]
    assert [t.name for t in ent.data] == ["entropy (nats)", "effective tokens", "|latent| / |token embedding|"]
    axes = [ent.layout[f"yaxis{'' if i == 1 else i}"] for i in (1, 2, 3)]
    assert [a.title.text for a in axes] == [t.name for t in ent.data] and all(a.rangemode == "tozero" for a in axes)


def test_eval_writes_results_and_summary(qwen_tiny, tmp_path):
    probs = arithmetic_problems(1, steps=1, digits=1, seed=0)
    methods = {"coconut": latent.Coconut(steps=2), "cot": "cot", "no_think": "no_think"}
    rows, summary = evaluate(qwen_tiny, methods, probs, max_new_tokens=3, think_budget=3, out_dir=tmp_path, progress=False)
    assert len(rows) == 3 and [s.method for s in summary] == ["coconut", "cot", "no_think"]
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["method"] == "coconut"
    s = {x.method: x for x in summary}
    assert s["coconut"].latent_steps == 2 and s["coconut"].visible_tokens <= 3
    assert s["cot"].maxed_rate + s["cot"].self_exit_rate == 1.0 and s["no_think"].latent_steps == 0
    assert "method" in (tmp_path / "summary.txt").read_text()
    with pytest.raises(ValueError, match="unknown baseline"):
        evaluate(qwen_tiny, {"x": "bogus"}, probs)


def test_cli_run_and_inspect(qwen_tiny, tmp_path, capsys):
    from safetensors.torch import save_file

    from workbench.cli import main
    from workbench.latent.heads import random_latent_head_tensors

    save_file(random_latent_head_tensors(qwen_tiny.hf), str(tmp_path / "latent_head.safetensors"))
    assert main(["latent", "inspect", str(tmp_path), "--model", "qwen3.5-tiny", "--device", "cpu"]) == 0
    assert "OK: matches qwen3.5-tiny" in capsys.readouterr().out
    rc = main(["latent", "run", "2+2?", "--model", "qwen3.5-tiny", "--device", "cpu", "--method", "latent-head", "--head",
               str(tmp_path), "--steps", "2", "--max-new-tokens", "2", "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["latent_steps"] == 2 and out["exit"] == "maxed"
    assert main(["latent", "run", "hi", "--model", "qwen3.5-tiny", "--device", "cpu", "--method", "projection"]) == 2
    assert "needs --head" in capsys.readouterr().err

"""QThink's teacher for the projection head: the reward-weighted mean of the correct
rollouts' hidden states (or uniform over all), its fallback, and exact resume on the
cached rollouts."""

from __future__ import annotations

import threading

import pytest
import torch

import workbench as wb
from workbench import latent
from workbench.train import qthink
from workbench.train.qthink import QThinkConfig, distill_positions, rollout_teacher, run_projection_qthink

TINY = dict(n_train=6, eval_n=0, steps=4, batch_size=2, progress=False, device="cpu", latent_steps=2, n_rollouts=3, max_rollout_tokens=24)


def test_rollout_teacher_by_hand():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 2, 3, 5, generator=g)  # 4 rollouts, [S=2, L=3, d=5]
    ref = torch.randn(2, 3, 5, generator=g)
    valid = torch.tensor([True, True, True, True])
    t, fell = rollout_teacher(s, torch.tensor([1.0, 0.0, 1.0, 0.0]), valid, "reward", ref)
    assert not fell and torch.allclose(t, (s[0] + s[2]) / 2)
    t, _ = rollout_teacher(s, torch.tensor([0.5, 0.0, 1.5, 0.0]), valid, "reward", ref)  # graded rewards weight
    assert torch.allclose(t, (0.5 * s[0] + 1.5 * s[2]) / 2.0)
    t, _ = rollout_teacher(s, torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([True, True, False, True]), "uniform", ref)
    assert torch.allclose(t, (s[0] + s[1] + s[3]) / 3)  # all valid rollouts, correct or not
    t, _ = rollout_teacher(s, torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([False, True, True, True]), "reward", ref)
    assert torch.allclose(t, s[2])  # a correct rollout without the positions does not count
    t, fell = rollout_teacher(s, torch.zeros(4), valid, "reward", ref)  # none correct: the single-chain teacher
    assert fell and torch.equal(t, ref)
    t, fell = rollout_teacher(s, torch.ones(4), torch.zeros(4, dtype=torch.bool), "uniform", ref)
    assert fell and torch.equal(t, ref)
    # positions: the one predicting the answer; per step also ceil((j+1) n / K) into the chain
    assert distill_positions(8, 11, 5, 4, False) == [15]
    assert distill_positions(8, 11, 5, 4, True) == [6, 8, 10, 12, 15]
    assert distill_positions(None, 11, 5, 4, True) is None and distill_positions(8, None, 5, 4, False) is None


def test_teacher_targets_average_the_correct_rollouts(micro_dir):
    bench = wb.load(str(micro_dir), device="cpu")
    from workbench.train import arith
    from workbench.train.latent_recipes import _base_forward, _right_pad, answer_index, close_id

    tok = bench.tokenizer
    e = arith.encode_problems(tok, arith.eval_problems("2 steps", 1))[0]
    close = close_id(tok)
    chain = [t for s in e.steps for t in s]
    good = chain + e.suffix
    bad = chain + tok("</think>\n\n#### 99999<|im_end|>", add_special_tokens=False)["input_ids"]
    cfg = QThinkConfig(model=str(micro_dir), weighting="reward", positions="final", **{**TINY, "n_rollouts": 3})
    targets, stats = qthink.teacher_targets(bench.hf, tok, [e], [[good, bad, good[:3]]], close, cfg)
    assert stats["correct_rollouts"] == 1 and stats["fallback_problems"] == 0
    E, M, _ = _right_pad(bench.hf, [e.prompt + good])
    with torch.no_grad():
        hs = _base_forward(bench.hf, E, M, hidden_states=True).hidden_states[1:]
    pos = len(e.prompt) + len(chain) + answer_index(e, tok) - 1
    want = torch.stack([h[0, pos] for h in hs])[None]  # the one correct rollout = the reference chain here
    torch.testing.assert_close(targets[0], want.float(), atol=1e-5, rtol=1e-5)
    _, stats = qthink.teacher_targets(bench.hf, tok, [e], [[bad, bad, bad]], close, cfg)
    assert stats["fallback_problems"] == 1


def _tensors(folder):
    from safetensors.torch import load_file

    out = load_file(str(folder / "projection_head.safetensors"))
    out.update({f"model.{k}": v for k, v in load_file(str(next((folder / "model").glob("*.safetensors")))).items()})
    return out


def test_projection_qthink_resumes_exactly_on_cached_rollouts(micro_dir, tmp_path, monkeypatch):
    a = run_projection_qthink(QThinkConfig(model=str(micro_dir), out_dir=str(tmp_path / "a"), positions="per_step", **TINY))
    assert a["status"] == "done" and a["teacher"]["rollouts"] == 18
    spec, model = latent.load_policy(a["final"])
    assert isinstance(spec, latent.ProjectionHead) and spec.steps == 2
    tr = latent.run(wb.load(model, device="cpu"), "Ava has 3 apples. How many apples does Ava have now?", spec, max_new_tokens=2, readout=False)
    assert tr.latent_steps == 2
    stop = threading.Event()
    cfg = QThinkConfig(model=str(micro_dir), out_dir=str(tmp_path / "b"), positions="per_step", **TINY)
    part = run_projection_qthink(cfg, on_step=lambda row: row["step"] == 2 and stop.set(), cancel=stop)
    assert part["status"] == "cancelled" and (tmp_path / "b" / qthink.ROLLOUTS_FILE).is_file()

    def no_sampling(*a, **k):
        raise AssertionError("a resumed run must use the rollouts it saved")

    monkeypatch.setattr(qthink, "sample_rollouts", no_sampling)
    torch.manual_seed(1234)
    again = run_projection_qthink(cfg, resume=True)
    assert again["status"] == "done" and again["steps"] == 4
    ta, tb = _tensors(tmp_path / "a" / "final"), _tensors(tmp_path / "b" / "final")
    for k in ta:
        torch.testing.assert_close(tb[k], ta[k], rtol=0, atol=1e-6)


def test_qthink_config_checks_its_fields():
    from workbench.errors import InputError
    from workbench.train.latent_recipes import RUNNERS
    from workbench.train.recipes import RECIPES

    assert RUNNERS["projection-qthink"][0] is QThinkConfig and RECIPES["projection-qthink"].run is not None
    for kw, field in [({"n_rollouts": 0}, "n_rollouts"), ({"weighting": "best"}, "weighting"), ({"positions": "all"}, "positions"),
                      ({"rollout_temperature": 0.0}, "rollout_temperature"), ({"distill_weight": 0.0}, "distill_weight"), ({"max_rollout_tokens": 1}, "max_rollout_tokens")]:  # fmt: skip
        with pytest.raises(InputError, match=field):
            QThinkConfig(**kw)

"""Latent trajectories next to the training path: a latent recipe records its probe
problems' latent steps at every checkpoint without changing the training, a resumed run
neither duplicates nor loses a record, and the reader, the PCA and the figure read the
folder back (no model)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.errors import FileFormatError, InputError, MissingFileError
from workbench.train import arith
from workbench.train.latent_recipes import CoconutConfig, LatentHeadConfig, ProjectionConfig, run_coconut, run_latent_head, run_projection
from workbench.train.loop import observe
from workbench.train.trajectories import (
    TRAJECTORIES_FILE,
    pca_2d,
    probe_problems,
    read_loss_history,
    read_trajectories,
)
from workbench.viz.train import trajectories_figure

RECIPE = dict(n_train=24, eval_n=0, batch_size=4, progress=False, device="cpu")


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.rglob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            out[f"{f.relative_to(folder)}:{k}"] = v
    return out


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / TRAJECTORIES_FILE).read_text().splitlines()]


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- pure pieces


def test_observe_restores_mode_and_every_random_state():
    m = torch.nn.Linear(2, 2)
    m.train()
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    want = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    seen = observe(m, lambda: (m.training, torch.is_grad_enabled(), torch.rand(5), random.random(), np.random.rand()))
    assert seen[:2] == (False, False) and m.training
    assert torch.equal(torch.rand(3), want[0]) and random.random() == want[1] and np.random.rand() == want[2]
    with pytest.raises(RuntimeError, match="boom"):
        observe(m, lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert m.training


def test_pca_2d_is_the_principal_plane_and_deterministic():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2)) @ np.array([[3.0, 0, 0, 0], [0, 1.0, 0, 0]]) + 5.0  # the plane spanned by e0, e1
    Z, ev = pca_2d(X)
    assert Z.shape == (40, 2) and ev.sum() == pytest.approx(1.0) and ev[0] > ev[1]
    dist = lambda A: np.linalg.norm(A[:, None] - A[None], axis=-1)  # noqa: E731
    assert np.allclose(dist(Z), dist(X), atol=1e-8)  # the data lie in a plane: the projection keeps every distance
    assert np.allclose(Z.mean(0), 0, atol=1e-10)
    Z2, _ = pca_2d(X[::-1].copy())
    assert np.allclose(Z2[::-1], Z)  # the sign convention does not depend on the row order
    assert pca_2d(np.ones((1, 4)))[0].tolist() == [[0.0, 0.0]]  # one point: the origin


def test_probe_problems_are_fixed_held_out_and_span_the_sets():
    ps = probe_problems("arith", 4)
    first = [arith.eval_problems(n, 2) for n in arith.eval_set_names("arith")]
    assert [p.question for p in ps] == [first[0][0].question, first[1][0].question, first[2][0].question, first[0][1].question]
    assert [p.question for p in probe_problems("arith", 4)] == [p.question for p in ps]
    assert probe_problems("arith", 0) == []
    assert probe_problems("graph", 1)[0].question == arith.eval_problems(arith.eval_set_names("graph")[0], 1)[0].question


@pytest.mark.parametrize("bad", [-1, 1.5, 65, True, "3"])
def test_probe_n_is_validated(bad):
    with pytest.raises(InputError, match="probe_n"):
        ProjectionConfig(probe_n=bad)


def test_a_folder_without_trajectories_says_how_to_get_them(tmp_path):
    with pytest.raises(MissingFileError, match=rf"{tmp_path.name}.*has no latent trajectories \(trajectories.jsonl\).*probe_n > 0"):
        read_trajectories(tmp_path)
    assert read_trajectories(tmp_path, missing_ok=True).checkpoints == []
    with pytest.raises(MissingFileError, match="does not exist"):
        read_trajectories(tmp_path / "nowhere")
    (tmp_path / TRAJECTORIES_FILE).write_text("")
    with pytest.raises(MissingFileError, match="no records yet"):
        read_trajectories(tmp_path)
    assert "no trajectories recorded yet" in trajectories_figure(read_trajectories(tmp_path, missing_ok=True)).layout.annotations[0].text


# --------------------------------------------------------------------------- on the micro model


def test_recording_does_not_change_training(micro_dir, tmp_path):
    """The same weights (bit for bit) and losses with probe_n=0 and probe_n=3, one record
    per checkpoint: the projection head (base and head train) and the latent head (frozen
    base, head only)."""
    runs = {
        "projection": lambda n: run_projection(ProjectionConfig(model=str(micro_dir), out_dir=str(tmp_path / f"p{n}"), latent_steps=2, steps=3, ckpt_every=1, probe_n=n, **RECIPE)),
        "latent-head": lambda n: run_latent_head(LatentHeadConfig(model=str(micro_dir), out_dir=str(tmp_path / f"l{n}"), max_internal_tokens=3, steps=2, ckpt_every=1, probe_n=n, **RECIPE)),
    }  # fmt: skip
    for name, run in runs.items():
        for n in (0, 3):
            assert run(n)["status"] == "done", name
        a, b = (tmp_path / f"{name[0]}{n}" for n in (0, 3))
        ta, tb = _tensors(a / "final"), _tensors(b / "final")
        assert ta.keys() == tb.keys() and ta
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (name, k)
        assert _losses(a) == _losses(b), name
        assert not (a / TRAJECTORIES_FILE).exists() and not (a / "trajectories").exists()
        recs = _records(b)
        assert [r["step"] for r in recs] == list(range(1, len(_losses(b)) + 1)), name
        assert all(len(r["probes"]) == 3 for r in recs)


def test_coconut_records_every_checkpoint_of_every_stage(micro_dir, tmp_path):
    run = tmp_path / "c"
    cfg = CoconutConfig(model=str(micro_dir), out_dir=str(run), max_reasoning_steps=2, thoughts_per_step=1, steps=2, ckpt_every=1, probe_n=2, stage_eval_n=0, **RECIPE)
    assert run_coconut(cfg)["status"] == "done"
    recs = _records(run)
    assert [(r["stage"], r["step"], r["global_step"]) for r in recs] == [(1, 1, 1), (1, 2, 2), (2, 1, 3), (2, 2, 4)]
    assert [r["file"] for r in recs] == [f"trajectories/stage{k}-step00000{s}.safetensors" for k in (1, 2) for s in (1, 2)]
    assert sorted(p.name for p in (run / "trajectories").iterdir()) == sorted(Path(r["file"]).name for r in recs)
    p0 = recs[0]["probes"][0]
    assert p0["question"] == probe_problems("arith", 2)[0].question and isinstance(p0["correct"], bool)
    st = p0["steps"][0]
    assert len(st["top_tokens"]) == len(st["top_probs"]) == len(st["nearest_tokens"]) == 5 and st["cos_prev"] is None
    assert "latent" not in st  # the vectors live in the safetensors files

    traj = read_trajectories(run)
    assert [c.label for c in traj.checkpoints] == ["stage 1 step 1", "stage 1 step 2", "stage 2 step 1", "stage 2 step 2"]
    assert [c.probes[0].n_steps for c in traj.checkpoints] == [1, 1, 2, 2]  # stage k: k x c latents
    d = traj.checkpoints[0].probes[0].latent.shape[1]
    assert traj.checkpoints[-1].probes[1].latent.shape == (2, d) and traj.checkpoints[-1].probes[1].hidden.shape == (2, d)
    # COCONUT feeds the hidden state itself; the cosine to the previous checkpoint is the vectors'
    c1, c2 = traj.checkpoints[0].probes[0], traj.checkpoints[1].probes[0]
    assert torch.allclose(c1.latent, c1.hidden)
    assert c2.cos_prev[0] == pytest.approx(float(torch.nn.functional.cosine_similarity(c1.latent, c2.latent)[0]), abs=1e-5)
    assert traj.checkpoints[2].probes[0].cos_prev[1] is None  # stage 2's second latent has no predecessor
    paths, ev = traj.pca(0)
    assert [z.shape for z in paths] == [(1, 2), (1, 2), (2, 2), (2, 2)] and 0.99 < ev.sum() <= 1 + 1e-9
    fig = trajectories_figure(traj)
    assert [t.type for t in fig.data] == ["scatter"] * 4 + ["heatmap"] + ["scatter"] * 4 + ["heatmap"]
    heat = fig.data[4]
    lines = fig.data[:4]  # step numbers only on the newest checkpoint's path; every path starts with a star
    assert [t.mode for t in lines] == ["lines+markers"] * 3 + ["lines+markers+text"] and list(lines[3].text) == ["0", "1"]
    assert all(t.marker.symbol[0] == "star" for t in lines)
    assert list(heat.y) == [f"{c.label} {'✓' if c.probes[0].correct else '✗'}" for c in traj.checkpoints] and len(heat.z[0]) == 2
    assert heat.z[0][1] is None and heat.text[2][1] != ""  # stage 1 has one latent, stage 2 two
    # the loss rows of the stage folders, for the loss curve beside it
    assert [r["stage"] for r in read_loss_history(run)] == [1.0, 1.0, 2.0, 2.0]
    assert read_trajectories(run / "final").run_dir == run  # the final/ folder leads to its run


def test_a_resumed_run_neither_duplicates_nor_loses_records(micro_dir, tmp_path):
    """Cancelled after step 3 (checkpoints 2 and 3 recorded); then the record of step 3 is
    lost as a kill between the checkpoint and its record would lose it, and a stale record
    past the checkpoint is left behind. The resumed run drops the stale one, records step 3
    again (the same vectors: the checkpoint's model) and goes on to step 4."""
    run = tmp_path / "p"
    cfg = ProjectionConfig(model=str(micro_dir), out_dir=str(run), latent_steps=2, steps=4, ckpt_every=2, probe_n=1, **RECIPE)
    rows: list[dict] = []
    assert run_projection(cfg, on_step=rows.append, cancel=lambda: len(rows) >= 3)["status"] == "cancelled"
    recs = _records(run)
    assert [r["step"] for r in recs] == [2, 3]
    kept3 = read_trajectories(run).checkpoints[1].probes[0].latent
    stale = {**recs[0], "step": 9, "global_step": 9, "file": "trajectories/step000009.safetensors"}
    (run / "trajectories" / "step000009.safetensors").write_bytes((run / recs[0]["file"]).read_bytes())
    (run / recs[1]["file"]).unlink()
    (run / TRAJECTORIES_FILE).write_text(json.dumps(recs[0]) + "\n" + json.dumps(stale) + "\n" + '{"format": "workbench-latent-tra')  # and a torn line
    assert run_projection(cfg, resume=True)["status"] == "done"
    recs = _records(run)
    assert [r["step"] for r in recs] == [2, 3, 4]
    assert sorted(p.name for p in (run / "trajectories").iterdir()) == ["step000002.safetensors", "step000003.safetensors", "step000004.safetensors"]
    traj = read_trajectories(run)
    assert torch.allclose(traj.checkpoints[1].probes[0].latent, kept3, atol=1e-6)
    assert all(v is not None for v in traj.checkpoints[2].probes[0].cos_prev)
    # a record naming a vector file that is gone is a clear error naming it
    (run / recs[2]["file"]).unlink()
    with pytest.raises(FileFormatError, match="step000004.safetensors"):
        read_trajectories(run)


def test_a_resumed_runs_loss_history_keeps_its_earlier_steps(tmp_path):
    import json

    from workbench.train.trajectories import LossHistory

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 10.0 - s}) + "\n" for s in range(1, 6)))
    h = LossHistory(tmp_path)  # the run stopped after step 5, its checkpoint at step 3: a resume redoes 4 and 5
    for s in (4, 5, 6):
        h.append({"step": s, "loss": 1.0 * s})
    assert [(r["step"], r["loss"]) for r in h] == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 4.0), (5, 5.0), (6, 6.0)]
    assert LossHistory(tmp_path / "missing") == [] and LossHistory() == []
    staged = LossHistory()
    for r in ({"stage": 1, "step": 1}, {"stage": 1, "step": 2}, {"stage": 2, "step": 1}, {"stage": 2, "step": 1}):
        staged.append(dict(r))
    assert [(r["stage"], r["step"]) for r in staged] == [(1, 1), (1, 2), (2, 1)]  # a new stage restarts its steps

"""`workbench latent results`: seeds, intervals, g, the not-learned label, and resuming a
half-done table cell by cell."""

from __future__ import annotations

import json
import math

import pytest

from workbench.latent import results as R

TINY = {"n_train": 8, "steps": 2, "batch_size": 4, "progress": False, "device": "cpu"}


def test_intervals_by_hand():
    lo, hi = R.t_interval([0.2, 0.3, 0.25])
    # mean 0.25, sd 0.05, t(0.975, 2) = 4.302653
    half = 4.302652729911275 * 0.05 / math.sqrt(3)
    assert (lo, hi) == pytest.approx((0.25 - half, 0.25 + half), rel=1e-9)
    # Wilson, 50 of 100: centre 0.5, half 1.959964 * sqrt(0.25/100 + z^2/40000) / (1 + z^2/100)
    z = 1.959963984540054
    half = z * math.sqrt(0.25 / 100 + z * z / 40000) / (1 + z * z / 100)
    assert R.wilson_interval(50, 100) == pytest.approx((0.5 - half, 0.5 + half), rel=1e-9)
    assert R.wilson_interval(0, 10)[0] == 0.0 and R.wilson_interval(10, 10)[1] == pytest.approx(1.0)
    one = R.cell_stats([0.5], 100, binary=True)
    assert one["ci"] == "Wilson over problems" and one["ci95"] == pytest.approx(list(R.wilson_interval(50, 100)))
    assert R.cell_stats([3.0])["ci95"] is None
    assert R.gap_share(0.5, 0.2, 0.8) == pytest.approx(0.5) and R.gap_share(0.5, 0.8, 0.8) is None


def test_train_time_counts_every_logged_step_once_across_resumes_and_stages(tmp_path):
    def log(path, rows, tail=""):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)

    # stage 1: steps 1-3 logged, interrupted after step 3 (checkpoint at 2), resumed: 3 again, then 4
    log(tmp_path / "stage1" / "metrics.jsonl", [{"step": 1, "seconds": 1.0}, {"step": 2, "seconds": 2.0}, {"step": 3, "seconds": 4.0},
                                                {"step": 3, "seconds": 8.0}, {"step": 4, "seconds": 16.0}], tail='{"step": 5, "sec')
    log(tmp_path / "stage2" / "metrics.jsonl", [{"step": 1, "seconds": 32.0}, {"step": 1, "loss": 1.0}, {"note": "eval"}])
    assert R.logged_train_seconds(tmp_path) == 1.0 + 2.0 + 8.0 + 16.0 + 32.0
    assert R.logged_train_seconds(tmp_path / "missing") == 0.0


def test_results_table_seeds_g_labels_and_resume(micro_dir, tmp_path, monkeypatch):
    """Two seeds of the pause recipe on the smoke micro model: every JSON row carries task,
    method, n_seeds, accuracy and thinking positions per set (mean + ci95) and g; a second
    run reads every cell back instead of scoring it again."""
    from workbench.latent import eval as E

    calls = []
    real = E.evaluate

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(E, "evaluate", counting)
    kw = dict(seeds=(0, 1), n=2, model=str(micro_dir), recipes=("pause",), overrides={"pause": TINY}, progress=False, batch_size=4)
    rep = R.results(tmp_path / "r", **kw)
    sets = rep["sets"]
    assert [r["method"] for r in rep["rows"]] == ["no-CoT", "CoT", "soft thinking", "pause tokens before CoT"]
    first = len(calls)
    assert first == len(sets) * (3 + 2)  # three training-free rows once, the recipe once per seed
    for r in rep["rows"]:
        assert {"task", "method", "n_seeds", "accuracy", "thinking_positions", "g", "status"} <= set(r)
        assert r["task"] == "arith"
        for s in sets:
            for key in ("accuracy", "thinking_positions"):
                assert set(r[key][s]) >= {"mean", "ci95"}
    pause = rep["rows"][-1]
    assert pause["n_seeds"] == 2 and pause["seeds"] == [0, 1] and pause["accuracy"][sets[0]]["ci"] == "t over seeds"
    assert rep["rows"][0]["accuracy"][sets[0]]["ci"] == "Wilson over problems"
    assert (tmp_path / "r" / "arith" / "pause" / "seed1" / "final" / "latent_policy.json").is_file()
    base = {r["method"]: r for r in rep["rows"]}
    for r in rep["rows"]:
        for s in sets:
            want = R.gap_share(r["accuracy"][s]["mean"], base["no-CoT"]["accuracy"][s]["mean"], base["CoT"]["accuracy"][s]["mean"])
            assert r["g"][s] == want
        if r["status"] != "baseline":
            learned = r["g"]["mean"] is not None and r["g"]["mean"] >= R.NOT_LEARNED_G
            assert r["status"] == ("learned" if learned else "not learned at this budget")
    md = (tmp_path / "r" / "arith" / "results.md").read_text()
    assert "| method | seeds |" in md and "95% interval" in md
    gaps = [base["CoT"]["accuracy"][s]["mean"] - base["no-CoT"]["accuracy"][s]["mean"] for s in sets]
    assert rep["base_model_learned"] is (min(gaps) >= R.BASE_MIN_GAP)
    assert ("Base model not trained for the task" in md) is (not rep["base_model_learned"])
    saved = json.loads((tmp_path / "r" / "arith" / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rep["rows"], default=str))
    # run again: every cell and every recipe is read back, nothing is scored or trained
    again = R.results(tmp_path / "r", **kw)
    assert len(calls) == first and again["rows"] == rep["rows"]


def test_results_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"task must be one of arith, graph, got 'chess'"):
        R.results(tmp_path / "r", task="chess")
    with pytest.raises(ValueError, match="seeds must be distinct"):
        R.results(tmp_path / "r", seeds=(1, 1))
    with pytest.raises(ValueError, match="seeds entry"):
        R.results(tmp_path / "r", seeds=(1.5,))
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_pipeline_end_to_end_on_the_graph_task(tmp_path):
    """The whole pipeline, shortened (minutes): a micro Qwen3.5 trained with CoT on the graph
    task (with its hop curriculum), COCONUT trained on it for one seed, the table scored: its
    structure, the base-model banner consistent with the numbers, and CoT beating answering
    directly. The last does not hold yet: with the hop curriculum the model leaves the unigram
    plateau (checked: the loss ends far below it) and writes chains of facts, but picks the
    branch at the person's node about as often wrong as right (CoT ~0.42-0.54 against direct
    ~0.44-0.50 at 1,400 steps on 2026-12-03), so that claim is an xfail naming this until the
    graph model learns the branching choice."""
    from workbench.train.micro import MicroConfig, save_micro, train_micro

    cfg = MicroConfig(task="graph", out_dir=str(tmp_path / "micro"), n_train=8000, steps=1200, eval_n=8, eval_every=0, ckpt_every=1200,
                      progress=False)  # fmt: skip
    full, info = train_micro(cfg)
    assert info["status"] == "done"
    # the unigram plateau the graph model sat on without the hop curriculum was ~0.84 per target token
    assert info["final_loss"] < 0.6, info["final_loss"]
    save_micro(full, info, tmp_path / "model")
    rep = R.results(tmp_path / "r", task="graph", seeds=(0,), n=40, model=str(tmp_path / "model"), recipes=("coconut",),
                    overrides={"coconut": {"n_train": 64, "steps": 4, "max_stage": 2, "batch_size": 8, "progress": False}},
                    training_free=False, progress=False)  # fmt: skip
    assert rep["task"] == "graph" and rep["sets"] == ["3 hops", "4 hops", "5 hops"]
    rows = {r["method"]: r for r in rep["rows"]}
    assert list(rows) == ["no-CoT", "CoT", "COCONUT"]
    for r in rows.values():
        assert r["task"] == "graph" and set(r["accuracy"]) == set(rep["sets"]) and "g" in r
    gaps = [rows["CoT"]["accuracy"][s]["mean"] - rows["no-CoT"]["accuracy"][s]["mean"] for s in rep["sets"]]
    assert rep["base_model_learned"] == (min(gaps) >= R.BASE_MIN_GAP)
    md = (tmp_path / "r" / "graph" / "results.md").read_text()
    assert md.startswith("| method | seeds |" if rep["base_model_learned"] else "**Base model not trained for the task:**")
    cot = sum(rows["CoT"]["accuracy"][s]["mean"] for s in rep["sets"])
    direct = sum(rows["no-CoT"]["accuracy"][s]["mean"] for s in rep["sets"])
    if not info["cot_learned"]:
        pytest.xfail(f"the graph micro model has not learned the branching choice: CoT {rows['CoT']['accuracy']} vs no-CoT {rows['no-CoT']['accuracy']}")
    assert cot > direct, (rows["CoT"]["accuracy"], rows["no-CoT"]["accuracy"])


def test_kept_cells_span_machines_and_conditions_are_not_mixed(micro_dir, tmp_path, monkeypatch):
    """The cells in `out_dir` are enough to rebuild the table: with the trained runs (in
    `runs_dir`) deleted, nothing is trained or scored again; a recipe setting changed is a
    different condition, so its cells are trained and scored anew, never mixed in."""
    import shutil

    from workbench.latent import eval as E
    from workbench.train import latent_recipes as LR

    trained, scored = [], []
    real_eval, real_run = E.evaluate, LR.RUNNERS["pause"]
    monkeypatch.setattr(E, "evaluate", lambda *a, **kw: (scored.append(1), real_eval(*a, **kw))[1])
    monkeypatch.setitem(LR.RUNNERS, "pause", (real_run[0], lambda *a, **kw: (trained.append(1), real_run[1](*a, **kw))[1]))
    kw = dict(seeds=(0,), n=2, model=str(micro_dir), recipes=("pause",), training_free=False, progress=False, batch_size=4,
              runs_dir=tmp_path / "runs")  # fmt: skip
    rep = R.results(tmp_path / "cells", overrides={"pause": TINY}, **kw)
    assert len(trained) == 1 and (tmp_path / "runs" / "arith" / "pause" / "seed0" / "final").is_dir()
    assert not (tmp_path / "cells" / "arith" / "pause").exists()  # runs live apart from the cells
    row = rep["rows"][-1]
    assert row["overrides"] == {**TINY} and "n_train=8" in (tmp_path / "cells" / "arith" / "results.md").read_text()
    shutil.rmtree(tmp_path / "runs")
    n_scored = len(scored)
    again = R.results(tmp_path / "cells", overrides={"pause": TINY}, **kw)
    assert len(trained) == 1 and len(scored) == n_scored and again["rows"] == rep["rows"]
    assert not (tmp_path / "runs").exists()
    R.results(tmp_path / "cells", overrides={"pause": {**TINY, "steps": 3}}, **kw)
    assert len(trained) == 2 and len(scored) == n_scored + len(rep["sets"])
    # the same model path holding other weights (a rebuild that is not bit-identical) is another condition
    cell = json.loads(next((tmp_path / "cells" / "arith" / "cells").rglob("*.json")).read_text())
    assert cell["conditions"]["model_weights"] == R.model_fingerprint(str(micro_dir)) and len(cell["conditions"]["model_weights"]) == 16
    other = tmp_path / "other-model"
    shutil.copytree(micro_dir, other)
    from safetensors.torch import load_file, save_file

    w = load_file(other / "model.safetensors")
    name = next(k for k in w if "norm" in k)
    w[name] = w[name] + 1e-3
    save_file(w, other / "model.safetensors", metadata={"format": "pt"})
    assert R.model_fingerprint(str(other)) != R.model_fingerprint(str(micro_dir))
    n_trained, n_scored = len(trained), len(scored)
    R.results(tmp_path / "cells", overrides={"pause": TINY}, **{**kw, "model": str(other)})
    assert len(trained) == n_trained + 1 and len(scored) > n_scored
    with pytest.raises(ValueError, match=r"overrides\['pause'\] names unknown or fixed field\(s\) \['stepz'\]"):
        R.results(tmp_path / "cells", overrides={"pause": {"stepz": 3}}, **kw)
    with pytest.raises(ValueError, match=r"unknown recipe 'nope'"):
        R.results(tmp_path / "cells", overrides={"nope": {}}, **kw)


def test_coconut_rows_carry_the_per_stage_curve(micro_dir, tmp_path, monkeypatch):
    """COCONUT scores each stage's model after the stage (k x c latents, the rest explicit):
    the row carries every seed's stages with their accuracy, the markdown a per-stage table,
    and a resumed run reads a stage's eval back instead of scoring it again."""
    from workbench.train import latent_recipes as LR

    ov = {"n_train": 8, "steps": 2, "batch_size": 4, "max_stage": 2, "thoughts_per_step": 1, "stage_eval_n": 2, "progress": False}
    rep = R.results(tmp_path / "r", seeds=(0,), n=2, model=str(micro_dir), recipes=("coconut",), overrides={"coconut": ov},
                    training_free=False, progress=False, batch_size=4)  # fmt: skip
    row = rep["rows"][-1]
    (stages,) = row["stages"].values()
    assert [(st["stage"], st["latents"]) for st in stages] == [(1, 1), (2, 2)]
    for st in stages:
        assert set(st["eval"]) == set(rep["sets"]) and all(0.0 <= v <= 1.0 for v in st["eval"].values())
    md = (tmp_path / "r" / "arith" / "results.md").read_text()
    assert "COCONUT per stage" in md and "| 2 | 2 |" in md
    saved = json.loads((tmp_path / "r" / "arith" / "coconut" / "seed0" / "stage1" / "stage_eval.json").read_text())
    assert saved["accuracy"] == stages[0]["eval"] and saved["n"] == 2
    # a stage whose eval is on disk is not scored again
    monkeypatch.setattr(LR, "quick_eval", lambda *a, **kw: pytest.fail("stage eval scored again"))
    cfg = LR.CoconutConfig(model=str(micro_dir), out_dir=str(tmp_path / "r" / "arith" / "coconut" / "seed0"), eval_n=0, **ov)
    s = LR.setup(cfg)
    assert LR.coconut_stage_eval(s, s.bench.hf, cfg, 1, tmp_path / "r" / "arith" / "coconut" / "seed0" / "stage1") == stages[0]["eval"]
    with pytest.raises(ValueError, match="stage_eval_n must be >= 0"):
        LR.CoconutConfig(model=str(micro_dir), stage_eval_n=-1)


def test_base_model_check_reads_the_easiest_set():
    from workbench.train.micro import COT_LEARNED_ACC, cot_learned

    assert cot_learned({"2 steps": {"cot": 0.98, "direct": 0.17}, "3 steps": {"cot": 0.1, "direct": 0.1}})
    assert not cot_learned({"2 steps": {"cot": 0.16, "direct": 0.16}})  # the failure this guards against
    assert not cot_learned({"3 hops": {"cot": 0.7, "direct": 0.6}})  # above chance but no lead over answering directly
    assert not cot_learned({"3 hops": {"cot": COT_LEARNED_ACC - 0.01, "direct": 0.0}}) and not cot_learned({})
    md = R.markdown({"task": "arith", "model": "m", "n_per_set": 1, "seeds": [0], "sets": ["a"], "not_learned_below_g": 0.3,
                     "base_model_learned": False, "base_min_gap": 0.2, "rows": []})  # fmt: skip
    assert md.startswith("**Base model not trained for the task:**")

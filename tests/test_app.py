"""The Gradio app: every tab's handlers called directly on the default model, bad input as
readable errors, and isolation under concurrency against a running app on loopback."""

from __future__ import annotations

import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import gradio as gr
import pytest
import torch

import workbench as wb
from apps._common import Registry, parse_layers, parse_pairs
from apps.app import TABS, build_app, launch
from apps.steering_tab import EXAMPLE_PAIRS, PASTE

MODEL = "smollm2-135m"
PAIRS = EXAMPLE_PAIRS


@pytest.fixture(scope="module")
def app(smol, tmp_path_factory):
    """The app over a registry that already holds the session's default model."""
    reg = Registry()
    reg.add(MODEL, smol)
    folder = tmp_path_factory.mktemp("allowed")
    demo = build_app(MODEL, [folder], registry=reg)
    return demo, demo.workbench_tabs, folder


@pytest.fixture(scope="module")
def vec(app):
    _demo, tabs, _folder = app
    v, info = tabs["Steering"].extract(MODEL, PASTE, PAIRS, "mean_diff", "14")
    assert "layers [14]" in info
    return v


def _tab_labels(demo) -> list[str]:
    return [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]


def test_build_app_has_the_tabs(app):
    demo, tabs, _ = app
    assert _tab_labels(demo) == ["Model", "Steering", "Prefix & Sinks", "Latent reasoning", "Training"]
    assert list(tabs) == [t for t, _ in TABS]
    api = {d.api_name for d in demo.fns.values()}
    assert {"load_model", "generate", "sweep", "extract", "steer_generate", "save_vector", "load_vector",
            "inspect_sinks", "prefix_eval", "latent_run"} <= api


# --------------------------------------------------------------------------- pure helpers


def test_parse_layers_and_pairs():
    assert parse_layers("3, 7, 10-12", 30) == [3, 7, 10, 11, 12]
    assert parse_layers("all", 30) is None
    with pytest.raises(ValueError, match="out of range; this model has layers 0..29"):
        parse_layers("30", 30)
    with pytest.raises(ValueError, match="not a layer number"):
        parse_layers("ten", 30)
    assert parse_pairs("a ||| b\n# note\n\nc\td") == [("a", "b"), ("c", "d")]
    with pytest.raises(ValueError, match="line 1"):
        parse_pairs("only one side")


# --------------------------------------------------------------------------- Model tab


def test_model_tab(app, smol):
    _demo, tabs, _ = app
    key, summary, rows, status = tabs["Model"].load_model(MODEL, "")
    assert key == MODEL and "| layers | 30 |" in summary and "| d_model | 576 |" in summary
    assert "embedding RMS" in summary and len(rows) == 30 and rows[0] == [0, "full_attention"]
    assert "| decode path | eager forward per token (the fast path's CUDA graphs need a GPU) |" in summary
    prompt = "Name a colour."
    chunks = list(tabs["Model"].generate(MODEL, prompt, 8, 0, 0))
    assert len(chunks) >= 2 and all(chunks[i + 1].startswith(chunks[i]) for i in range(len(chunks) - 2))
    assert chunks[-1] == wb.generate(smol, prompt, max_new_tokens=8)


# --------------------------------------------------------------------------- Steering tab


def test_steering_side_by_side_matches_separate_runs(app, smol, vec):
    _demo, tabs, _ = app
    prompt = "Tell me about your day."
    outs = list(tabs["Steering"].steer_generate(MODEL, vec, prompt, 8.0, "all", 6, True))
    assert len(outs) >= 3  # streamed: one update per token, then the KL line
    assert all(outs[i + 1][1].startswith(outs[i][1]) for i in range(len(outs) - 2))
    plain, steered, note = outs[-1]
    assert plain == wb.generate(smol, prompt, max_new_tokens=6)
    assert steered == wb.generate(smol, prompt, max_new_tokens=6, steer=[vec.steer(8.0)])
    assert plain != steered
    kl = float(note.split("prompts: ")[1].split(" nats")[0])  # steer_report's own number, shown
    assert kl > 0 and "scale 8 at layers [14]" in note


def test_steering_sweep(app):
    _demo, tabs, _ = app
    fig, table, best = tabs["Steering"].sweep(MODEL, PASTE, PAIRS, "mean_diff", "10-12")
    assert int(best) in (10, 11, 12) and table.count("★") == 1
    assert {t.x[0] for t in fig.data if t.mode == "lines+markers"} == {10}


def test_steering_save_and_load_round_trip(app, vec):
    _demo, tabs, folder = app
    path, _ = tabs["Steering"].save_vector(vec, "sent", "safetensors")
    assert path == str(folder / "workbench-outputs" / "sent.safetensors")  # the app's own folder, not the allowed one
    back, info = tabs["Steering"].load_vector(MODEL, path)
    assert back.layers == [14] and torch.equal(back.directions[14], vec.directions[14])
    gpath, _ = tabs["Steering"].save_vector(vec, "sent", "gguf")
    back, _ = tabs["Steering"].load_vector(MODEL, gpath)
    assert torch.allclose(back.directions[14], vec.directions[14])


# --------------------------------------------------------------------------- bad input


def test_bad_input_gives_readable_errors(app, vec, tmp_path):
    _demo, tabs, folder = app
    s = tabs["Steering"]
    cases = [
        (lambda: s.extract(MODEL, PASTE, "   ", "mean_diff", "14"), "no pairs given"),
        (lambda: s.extract(MODEL, PASTE, "a ||| b", "mean_diff", "14"), "at least 2 pairs"),
        (lambda: s.extract(MODEL, PASTE, PAIRS, "mean_diff", "30"), "layer 30 is out of range; this model has layers 0..29"),
        (lambda: s.extract(MODEL, PASTE, PAIRS, "median", "3"), "method must be one of"),
        (lambda: list(s.steer_generate(MODEL, vec, "Hi", float("nan"))), "scale must be a finite number"),
        (lambda: list(s.steer_generate(MODEL, None, "Hi", 2.0)), "no steering vector"),
        (lambda: s.save_vector(vec, "../escape", "safetensors"), "plain name"),
        (lambda: tabs["Model"].load_model("no-such-model", ""), "unknown model"),
        (lambda: tabs["Model"].load_model("local path…", str(tmp_path)), "outside the folders"),
        (lambda: list(tabs["Model"].generate(MODEL, "", 8)), "prompt is empty"),
        (lambda: tabs["Prefix & Sinks"].inspect(MODEL, "", 0.3), "no prompt given"),
        (lambda: tabs["Prefix & Sinks"].inspect(MODEL, "Hello there friend", float("nan")), "eps must be a finite number"),
        (lambda: list(tabs["Latent reasoning"].run(MODEL, "projection_head", "2+2?", 2, 4)), "needs a head file"),
        (lambda: list(tabs["Latent reasoning"].run(MODEL, "coconut", "2+2?", -1, 4)), "latent steps must be in 1..512"),
    ]
    pickle = folder / "vector.pt"
    torch.save({"x": torch.zeros(2)}, pickle)
    text = folder / "notes.safetensors"
    text.write_text("not a tensor file")
    outside = tmp_path / "v.safetensors"
    vec.save(outside)
    cases += [
        (lambda: s.load_vector(MODEL, str(pickle)), "must be one of: .safetensors, .gguf"),
        (lambda: s.load_vector(MODEL, str(text)), "notes.safetensors"),
        (lambda: s.load_vector(MODEL, str(outside)), "not uploaded through the app"),
        (lambda: s.load_vector(MODEL, None), "no steering vector uploaded"),
    ]
    qwen_vec = wb.steering.SteeringVector(directions={3: torch.ones(64)}, method="mean_diff", model_name="qwen3.5-tiny",
                                          model_family="qwen3_5_text", d_model=64, n_layers=8)
    cases.append((lambda: list(s.steer_generate(MODEL, qwen_vec, "Hi", 2.0)), "d_model=64"))
    for fn, message in cases:
        with pytest.raises(gr.Error, match=message.replace("(", r"\(").replace("?", r"\?").replace(".", r"\.")):
            fn()
    assert not (folder / "escape.safetensors").exists() and not (folder.parent / "escape.safetensors").exists()


# --------------------------------------------------------------------------- Prefix & Sinks tab


def test_sinks_tab(app, smol):
    _demo, tabs, _ = app
    prompt = "The quick brown fox jumps over the lazy dog."
    heat, rate, norm, cmp_fig, md = tabs["Prefix & Sinks"].inspect(MODEL, prompt, 0.3, 4, 2, 0, 1.0, "start")
    rep = wb.sinks.inspect(smol, [prompt], 0.3, k=4)
    z = torch.tensor(heat.data[0].z, dtype=torch.float32)
    assert z.shape == (30, smol.arch.n_heads)  # pooled per head: no attention matrix reaches the browser
    assert torch.allclose(z, rep.alpha[0], atol=1e-5, equal_nan=True)
    assert len(rate.data) == 2 and len(norm.data) == 2 and len(cmp_fig.data) == 3
    assert f"{rep.mean_sink_rate:.4g}" in md
    heat, rate, norm, cmp_fig, md = tabs["Prefix & Sinks"].inspect(MODEL, prompt, 0.3, 4, 0, 0, 1.0, "start")
    assert cmp_fig is None and len(rate.data) == 1


def test_prefix_eval_tab(app):
    _demo, tabs, _ = app
    fig, md = tabs["Prefix & Sinks"].prefix_eval(MODEL, "arith-easy", 1, "0, 1", 2, 1.0, 0, 3)
    assert "oracle coverage" in md and [b.x for b in fig.data][0] == ("seed 0", "seed 1")


# --------------------------------------------------------------------------- Latent reasoning tab


def test_latent_tab_coconut_and_projection_head(app, smol):
    _demo, tabs, folder = app
    outs = list(tabs["Latent reasoning"].run(MODEL, "coconut", "What is 2 + 3?", 2, 6))
    status, lat, cot, bars, ent, traj, table = outs[-1]
    ref = wb.latent.run(smol, "What is 2 + 3?", wb.latent.Coconut(steps=2), max_new_tokens=6)
    assert lat == ref.text and "2 latent steps" in status
    assert cot == wb.generate(smol, "What is 2 + 3?", max_new_tokens=6)
    assert len(outs) >= 4  # latent result, then the chain of thought token by token, then the trajectory
    # latent steps stream as the loop produces them, each with its readout, before the answer
    live = [o for o in outs if str(o[0]).startswith("latent step")]
    assert [o[0].split(":")[0] for o in live] == ["latent step 1", "latent step 2"]
    assert "step   0" in live[0][6] and "step   1" not in live[0][6] and "step   1" in live[1][6]
    assert outs.index(live[1]) < next(i for i, o in enumerate(outs) if "latent steps, exit" in str(o[0]))
    names = {t.name for t in traj.data}
    assert names == {"explicit CoT", "latent steps", "latent start", "latent end", "CoT start", "CoT end"} and len(traj.data[1].x) == 2
    assert len(ent.data) >= 2 and len(bars.data) == 2
    from safetensors.torch import save_file

    from workbench.latent.heads import random_projection_tensors

    save_file(random_projection_tensors(smol.arch.d_model, 32, seed=0), str(folder / "proj.safetensors"))
    outs = list(tabs["Latent reasoning"].run(MODEL, "projection_head", "What is 2 + 3?", 1, 2, None, "proj.safetensors"))
    assert "projection" in outs[-1][0] and outs[-1][5] is not None


# --------------------------------------------------------------------------- concurrency


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_concurrent_clients_get_what_they_would_get_alone(smol, vec, tmp_path):
    """Eight gradio_client clients, steered and unsteered requests mixed, against the app on
    loopback with a queue that runs 4 at once: each gets exactly its answer from running
    alone (the per-model lock keeps one request's steering hooks out of the others)."""
    from gradio_client import Client, handle_file

    reg = Registry()
    reg.add(MODEL, smol)
    demo = build_app(MODEL, [tmp_path], registry=reg)
    path = tmp_path / "vec.safetensors"
    vec.save(path)
    port = _free_port()
    launch(demo, "127.0.0.1", port, concurrency=4, block=False, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    prompts = ["Tell me about your day.", "Describe the sea."]
    jobs = [(kind, prompts[i % 2], scale) for i, (kind, scale) in enumerate(
        [("steer", 8.0), ("plain", None), ("steer", -8.0), ("plain", None)] * 2)]

    def run(job, client=None):
        kind, prompt, scale = job
        client = client or Client(url, verbose=False)
        if kind == "plain":
            return client.predict(prompt, 8, 0, 0, api_name="/generate")  # State inputs are not sent
        client.predict(handle_file(str(path)), api_name="/load_vector")
        return tuple(client.predict(prompt, scale, "all", 8, False, api_name="/steer_generate")[:2])

    try:
        solo = Client(url, verbose=False)
        alone = [run(j, solo) for j in jobs]
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(run, jobs))
    finally:
        demo.close()
    assert together == alone
    plain_alone = {p: wb.generate(smol, p, max_new_tokens=8) for p in prompts}
    for (kind, prompt, _), out in zip(jobs, alone):
        if kind == "plain":
            assert out == plain_alone[prompt]
        else:
            assert out[0] == plain_alone[prompt] and out[1] != out[0]
    assert threading.active_count() < 200


# --------------------------------------------------------------------------- Training tab


def test_training_tab_bad_input(app, vec):
    _demo, tabs, _ = app
    t = tabs["Training"]
    with pytest.raises(gr.Error, match="no steering vector"):
        list(t.bake(MODEL, None, "run"))
    with pytest.raises(gr.Error, match="mode must be one of"):
        list(t.bake(MODEL, vec, "run", "melt"))
    with pytest.raises(gr.Error, match="plain name"):
        list(t.bake(MODEL, vec, "../run"))
    with pytest.raises(gr.Error, match="no running training run"):
        t.cancel("nothing")
    with pytest.raises(gr.Error, match="recipe must be one of"):
        list(t.latent_train(MODEL, "grokking", "run"))


def test_training_tab_latent_recipe_and_trained_policy(app, micro_dir, tmp_path):
    """A COCONUT curriculum launched from the UI (two steps per stage) with a live curve per
    stage; the result becomes the selected model and runs as the Latent tab's `trained`
    policy; a head recipe's folder does too, on its base model (which lives in a folder
    the app may read: a recipe folder naming a model outside the allowed folders is refused)."""
    _demo, tabs, _ = app
    demo = build_app(MODEL, [tmp_path, micro_dir], registry=tabs["Training"].ctx.registry)
    tabs, folder = demo.workbench_tabs, tmp_path
    base = str(micro_dir)
    tabs["Training"].ctx.registry.slot(base)
    outs = list(tabs["Training"].latent_train(base, "coconut", "coco-test", 2, False, False, 1))
    fig, traj, status, key = outs[-1]
    assert status.startswith("done (4 stage(s))") and key == str((folder / "workbench-outputs" / "coco-test" / "final" / "model").resolve())
    assert [t.name for t in fig.data] == ["stage 1", "stage 2", "stage 3", "stage 4"]
    live = [str(o[2]) for o in outs[:-1] if str(o[2]).startswith("stage ")]  # live rows while training
    assert live and all(re.match(r"stage [1-4] of 4, step [12]/2, loss ", t) for t in live), live
    assert outs[0][2] == "starting: step 0/2…"
    # beside the loss: one probe's latent path at each of the 8 checkpoints (2 per stage), and its readout table
    assert [t.name for t in traj.data if t.type == "scatter"] == [f"stage {k} step {s}" for k in (1, 2, 3, 4) for s in (1, 2)]
    assert [len(t.x) for t in traj.data if t.type == "scatter"] == [2, 2, 4, 4, 6, 6, 8, 8]
    assert len([o for o in outs[:-1] if o[1] is not None and any(t.type == "heatmap" for t in o[1].data)]) >= 1  # refreshed while training
    run = list(tabs["Latent reasoning"].run(key, "trained", "Ava has 3 apples. How many apples does Ava have now?", 6, 4, None, "coco-test/final"))
    assert "coconut: 8 latent steps" in run[-1][0]  # 4 stages x c = 2 thoughts per step (COCONUT's GSM8k setting)
    with pytest.raises(gr.Error, match="was trained on model"):
        list(tabs["Latent reasoning"].run(MODEL, "trained", "2+2?", 6, 4, None, "coco-test/final"))
    outs = list(tabs["Training"].latent_train(base, "pause", "pause-test", 2, False, False, 0))
    assert outs[-1][2].startswith("done; in the Latent tab") and "pause-test" in outs[-1][2]
    assert not (folder / "workbench-outputs" / "pause-test" / "trajectories.jsonl").exists()  # probe problems 0: none recorded
    run = list(tabs["Latent reasoning"].run(base, "trained", "Ava has 3 apples. How many apples does Ava have now?", 6, 4, None, "pause-test/final"))
    assert "pause: 4 latent steps" in run[-1][0]
    # a finished run folder, chosen by name: its loss curve and trajectories again, read from disk
    loss, traj2, status = tabs["Training"].show_run("coco-test", "hidden")
    assert status.startswith("8 checkpoint(s) of `coco-test` (coconut), the last at stage 4 step 2")
    assert [t.name for t in loss.data] == ["stage 1", "stage 2", "stage 3", "stage 4"] and len(traj2.data) == len(traj.data)
    assert tabs["Training"].show_run("coco-test/final")[2] == status  # the recipe's final/ folder names its run
    with pytest.raises(gr.Error, match=r"pause-test.*has no latent trajectories.*probe_n > 0"):
        tabs["Training"].show_run("pause-test")
    with pytest.raises(gr.Error, match="outside the folders this app may read"):
        tabs["Training"].show_run("/")


@pytest.mark.slow
def test_training_tab_bakes_and_loads_the_result(app, vec):
    """Two distillation steps with a live loss curve; the baked folder becomes the model."""
    _demo, tabs, folder = app
    outs = list(tabs["Training"].bake(MODEL, vec, "bake-test", "distil", 6.0, 2, 2e-3, "sentiment", False))
    fig, status, key = outs[-1]
    assert status.startswith("done") and key == str((folder / "workbench-outputs" / "bake-test" / "model").resolve())
    assert [p for p in fig.data[0].x] == [1, 2]
    _key, summary, _rows, _ = tabs["Model"].load_model("local path…", key)
    assert "| layers | 30 |" in summary
    # the Model tab names the model in use: its describe() runs whenever the session's model changes
    summary2, _rows2, status2 = tabs["Model"].describe(key)
    baked = _demo.workbench_ctx.registry.peek(key)
    assert summary2 == summary and status2 == f"**{baked.name}** in use: {baked!r}" and baked.name != MODEL
    deps = [d for d in _demo.fns.values() if d.api_name == "describe_model"]
    assert len(deps) == 1 and deps[0].fn.__name__ == "describe"
    assert [t for _, t in deps[0].targets] == ["change"] and deps[0].targets[0][0] == _demo.workbench_ctx.model._id


def test_cli_launch_banner_names_the_cli_flag_not_launch_share(smol, tmp_path, capsys):
    reg = Registry()
    reg.add(MODEL, smol)
    demo = build_app(MODEL, [tmp_path], registry=reg)
    port = _free_port()
    try:
        launch(demo, "127.0.0.1", port, block=False, share_hint="--share")
        out = capsys.readouterr().out
    finally:
        demo.close()
    assert f"* Running on local URL:  http://127.0.0.1:{port}/" in out
    assert "add --share for a public link" in out and "share=True" not in out

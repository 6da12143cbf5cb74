"""Training tab: bake the Steering tab's vector into the weights (distillation through the
shared trainer, or an exact fold), or train a latent-reasoning recipe (any of the core's
`train.latent_recipes.RUNNERS`: COCONUT curriculum, projection head, latent head, pause
tokens before CoT, Goyal pauses, UPFT); live loss curves from the trainer's `on_step`
callback, cancel, resume, and the result loaded back for the other tabs (a baked or
COCONUT model becomes the selected model; a head folder feeds the Latent tab's `trained`
policy). Beside a latent recipe's loss curve: its latent trajectories (the probe problems'
latent steps at every checkpoint, `train.trajectories`), refreshed as checkpoints land,
and the same for a finished run folder the user names (inside the allowed folders)."""

from __future__ import annotations

import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from workbench.errors import InputError, OutputExistsError, WorkbenchError
from workbench.train.latent_recipes import RUNNERS as _LATENT_RUNNERS
from workbench.train.trajectories import LossHistory, read_loss_history, read_trajectories
from workbench.viz.train import loss_figure, trajectories_figure

from ._common import AppContext, allowed_path, handler, output_file, parse_float, parse_int

MODES = ("distil", "fold")
PCA_OF = ("latent", "hidden")
LATENT_RECIPES = tuple(_LATENT_RUNNERS)  # the core's recipe registry: the tab adds none of its own


class TrainingTab:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        self._cancel: dict[str, threading.Event] = {}
        self._runs = threading.Lock()  # guards _cancel: one run per name, checked and taken at once

    @handler
    def cancel(self, run_name: str) -> str:
        key = run_name.strip() if isinstance(run_name, str) else run_name
        with self._runs:
            ev = self._cancel.get(key)
        if ev is None:
            running = ", ".join(map(repr, sorted(self._cancel))) or "none"
            raise InputError(f"no running training run named {run_name!r} (running: {running})")
        ev.set()
        return f"cancelling {run_name}: it stops after the current step (a checkpoint is kept for resume)"

    def _in_worker(self, run_name: str, cancel: threading.Event, work: Any, history: list[dict], steps: int,
                   box: dict, stages: int | None = None) -> Iterator[tuple[Any, str, Any]]:
        """Run `work(cancel)` in a thread; yield (loss figure, status, no change) while the
        trainer's `on_step` rows land in `history`; the result goes to box["result"] (the
        worker's exception is raised here). `steps` per stage of `stages` (COCONUT)."""

        def target() -> None:
            try:
                box["result"] = work(cancel)
            except BaseException as err:  # noqa: BLE001 - handed to the UI below
                box["error"] = err

        worker = threading.Thread(target=target, name=f"train-{run_name}", daemon=True)
        shown = len(history)  # a resumed run's earlier rows are shown at once
        yield loss_figure(history), (f"resuming after step {history[-1].get('step', 0)}…" if history else f"starting: step 0/{steps}…"), gr.update()
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.5)
                if len(history) != shown:
                    shown = len(history)
                    last = history[-1]
                    stage = f"stage {int(last['stage'])}{f' of {stages}' if stages else ''}, " if last.get("stage") is not None else ""
                    yield loss_figure(history), f"{stage}step {last.get('step', 0)}/{steps}, loss {last.get('loss', float('nan')):.4g}", gr.update()
        except GeneratorExit:  # the page went away: stop the run (its checkpoint is kept) before the name is free again
            cancel.set()
            worker.join()
            raise
        if "error" in box:
            raise box["error"]

    def _run_folder(self, run_name: Any, resume: Any, overwrite: Any) -> Path:
        """The run folder in the output folder, checked before any work: an existing one is
        continued with `resume`, started again with `overwrite` (its files are removed when
        the run starts), and otherwise refused (OutputExistsError), so a run never writes
        into another run's folder by accident."""
        for flag, what in ((resume, "resume"), (overwrite, "overwrite")):
            if not isinstance(flag, bool):
                raise InputError(f"{what} must be true or false, got {flag!r}")
        if resume and overwrite:
            raise InputError("tick either 'resume' (continue the run in that folder) or 'overwrite' (start it again), not both")
        folder = output_file(self.ctx, run_name, "", overwrite=True, what="run folder")
        if folder.exists() or folder.is_symlink():
            if folder.is_symlink() or not folder.is_dir():
                raise OutputExistsError(f"{folder.name!r} in the output folder is not a run folder; choose another run name")
            if not (resume or overwrite):
                raise OutputExistsError(
                    f"run folder {folder.name!r} already exists in the output folder; tick 'resume' to continue it, "
                    "'overwrite' to start it again (its files are replaced), or choose another run name"
                )
        return folder

    @contextmanager
    def _claim(self, folder: Path, overwrite: bool) -> Iterator[threading.Event]:
        """Take the run name (one run per name at a time; yields its cancel event), then
        start the work on `folder`: an overwritten run's old folder is removed; a run folder
        this run created is removed again when the run fails before writing anything."""
        name = folder.name
        with self._runs:
            if name in self._cancel:
                raise InputError(f"a run named {name!r} is already running; wait for it, cancel it, or choose another run name")
            cancel = self._cancel[name] = threading.Event()
        try:
            if overwrite and folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder)
            created = not folder.exists()
            try:
                yield cancel
            except Exception:
                if created and folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
                raise
        finally:
            with self._runs:
                self._cancel.pop(name, None)

    @staticmethod
    def _trajectories(folder: Path, shown: Any = None) -> Any:
        """The trajectories figure of a run folder as it is now; while the run writes, a
        read that races a rewrite keeps the figure `shown` (None: an empty one)."""
        try:
            return trajectories_figure(read_trajectories(folder, missing_ok=True))
        except (WorkbenchError, OSError, ValueError):
            return shown if shown is not None else trajectories_figure(None)

    @handler
    def latent_train(self, model: str, recipe: str, run_name: str, steps: Any = 20, resume: bool = False,
                     overwrite: bool = False, probe_n: Any = 3) -> Iterator[tuple[Any, Any, str, Any]]:
        """Train a latent-reasoning recipe on a fresh copy of `model` (the shared one is
        left alone) with live loss curves and, beside them, the latent trajectories of
        `probe_n` probe problems (0: none), refreshed at every checkpoint; yields (loss
        figure, trajectories figure, status, model key). A COCONUT result becomes the
        selected model, a head's folder is what the Latent tab's `trained` policy reads."""
        from workbench.train.latent_recipes import RUNNERS

        if recipe not in LATENT_RECIPES:
            raise InputError(f"recipe must be one of {', '.join(LATENT_RECIPES)}, got {recipe!r}")
        if not model:
            raise InputError("no model selected; choose one in the Model tab")
        n = parse_int(steps, "steps", low=1, high=100_000)
        probes = parse_int(probe_n, "probe problems", low=0, high=16)
        out_dir = self._run_folder(run_name, resume, overwrite)
        cls, run = RUNNERS[recipe]
        cfg = cls(model=model, out_dir=str(out_dir), steps=n, eval_n=0, ckpt_every=max(1, n // 4), warmup_steps=0, progress=False, device="cpu",
                  probe_n=probes)  # fmt: skip
        history = LossHistory(out_dir if resume else None)  # a resumed run's curve keeps its earlier steps
        box: dict[str, Any] = {}
        stages = getattr(cfg, "stages", 1)
        traj, seen = None, -1
        with self._claim(out_dir, overwrite) as cancel:
            for fig, status, key in self._in_worker(out_dir.name, cancel, lambda ev: run(cfg, resume=resume, on_step=history.append, cancel=ev),
                                                    history, n, box, stages if stages > 1 else None):  # fmt: skip
                ckpts = sum(1 for r in history if r.get("checkpoint"))
                if ckpts != seen:  # a checkpoint's record is written before its row reaches on_step
                    seen, traj = ckpts, self._trajectories(out_dir, traj)
                yield fig, traj, status, key
        res = box["result"]
        traj = self._trajectories(out_dir, traj)
        if res.get("status") != "done":
            yield loss_figure(history), traj, f"{res.get('status')}; tick 'resume' to continue", gr.update()
            return
        final = Path(res["final"])
        if (final / "model").is_dir():
            key = str((final / "model").resolve())
            self.ctx.registry.slot(key)
            from workbench.latent import load_policy

            if load_policy(str(final))[0] == "cot":  # upft: a fine-tuned model, scored with explicit CoT
                yield loss_figure(history), traj, f"done; model loaded as `{key}`: generate with explicit thinking (no latent policy)", key
                return
            yield loss_figure(history), traj, f"done ({stages} stage(s)); model loaded as `{key}`; in the Latent tab choose policy `trained` with path `{final}`", key
            return
        yield loss_figure(history), traj, f"done; in the Latent tab choose policy `trained` with path `{final}`", gr.update()

    @handler
    def show_run(self, folder: str, which: str = "latent") -> tuple[Any, Any, str]:
        """A finished (or running) latent recipe's folder, inside the folders the app may
        read: (loss figure from its metrics, trajectories figure, status). A folder
        without trajectories is refused with a message saying how to record them."""
        if which not in PCA_OF:
            raise InputError(f"PCA of must be one of {', '.join(PCA_OF)}, got {which!r}")
        path = allowed_path(self.ctx, folder, what="run folder", allow_dir=True)
        if not path.is_dir():
            raise InputError(f"{folder!r} is a file; give a run folder (the recipe's out_dir, or its final/ folder)")
        traj = read_trajectories(path)
        fig = trajectories_figure(traj, which=which)
        history = read_loss_history(traj.run_dir)
        last = traj.checkpoints[-1]
        right = sum(p.correct for p in last.probes)
        status = (f"{len(traj.checkpoints)} checkpoint(s) of `{traj.run_dir.name}` ({last.method}), the last at {last.label}: "
                  f"{right}/{len(last.probes)} probe(s) answered right")  # fmt: skip
        return loss_figure(history), fig, status

    @handler
    def bake(
        self, model: str, vec: Any, run_name: str, mode: str = "distil", scale: Any = 6.0, steps: Any = 20, lr: Any = 2e-3,
        probe_set: str = "sentiment", resume: bool = False, overwrite: bool = False,
    ) -> Iterator[tuple[Any, str, Any]]:
        """Run a bake in a worker thread; yields (loss figure, status, model key) as steps land."""
        from workbench.train.bake import BakeConfig, bake

        if vec is None:
            raise InputError("no steering vector: extract or load one in the Steering tab first")
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        n = parse_int(steps, "steps", low=1, high=100_000)
        sc = parse_float(scale, "scale", low=-1e4, high=1e4)
        rate = parse_float(lr, "learning rate", low=0.0, high=1.0)
        if rate == 0.0:
            raise InputError("learning rate must be greater than 0, got 0")
        out_dir = self._run_folder(run_name, resume, overwrite)
        cfg = BakeConfig(
            model=model, out_dir=str(out_dir), scale=sc, mode=mode, probe_set=probe_set,
            steps=n, lr=rate, ckpt_every=max(1, n // 4), warmup_steps=0, progress=False,
        )
        cfg.validate()
        history = LossHistory(out_dir if resume else None)  # a resumed run's curve keeps its earlier steps

        def work(cancel: threading.Event) -> Any:
            with self.ctx.registry.use(model) as bench:  # the teacher's hooks sit on the shared model
                return bake(bench, vec, cfg, on_step=history.append, cancel=cancel, resume=resume)

        box: dict[str, Any] = {}
        with self._claim(out_dir, overwrite) as cancel:
            yield from self._in_worker(out_dir.name, cancel, work, history, cfg.steps, box)
        res = box["result"]
        if res.report is None:
            yield loss_figure(history), f"cancelled at step {res.train.step if res.train else 0}; tick 'resume' to continue", gr.update()
            return
        key = str(res.model_dir.resolve())
        self.ctx.registry.slot(key)  # load the baked checkpoint (stock transformers folder) as a model
        yield loss_figure(history), f"done: {res.report.summary()}; loaded as model `{key}`", key


def build_ui(ctx: AppContext) -> TrainingTab:
    tab = TrainingTab(ctx)
    gr.Markdown("Bake the current steering vector (Steering tab) into the weights. *distil* trains LoRA adapters "
                "to match the steered model; *fold* is exact where the algebra allows. The result is saved in the "
                "output folder and becomes the selected model of this session.")
    with gr.Row():
        run_name = gr.Textbox("bake-run", label="run name (folder in the output folder)")
        mode = gr.Dropdown(list(MODES), value="distil", label="mode")
        scale = gr.Number(6.0, label="scale")
        steps = gr.Number(20, precision=0, label="steps", elem_id="train-steps")
        lr = gr.Number(2e-3, label="learning rate")
        probe_set = gr.Textbox("sentiment", label="probe set (corpus)")
        resume = gr.Checkbox(False, label="resume")
        overwrite = gr.Checkbox(False, label="overwrite (start an existing run folder again)")
    with gr.Row():
        start = gr.Button("Bake", variant="primary")
        stop = gr.Button("Cancel")
    status = gr.Markdown(elem_id="train-status")
    plot = gr.Plot(label="loss", elem_id="train-loss")
    start.click(tab.bake, [ctx.model, ctx.vector, run_name, mode, scale, steps, lr, probe_set, resume, overwrite], [plot, status, ctx.model],
                api_name="bake")
    stop.click(tab.cancel, [run_name], status, api_name="cancel_bake", queue=False)
    gr.Markdown("Latent-reasoning recipes (COCONUT curriculum, projection head, latent head, pause tokens) on the "
                "arithmetic task, on a fresh copy of the selected model (a thinking model such as `qwen3.5-micro`). "
                "Beside the loss: at every checkpoint, a few fixed held-out probe problems run through the latent "
                "engine on the model as it is then; per probe, the PCA path of its latent steps (one line per "
                "checkpoint, dark to light) and the top token each step decodes to (✓ / ✗: the answer then).")
    with gr.Row():
        l_name = gr.Textbox("latent-run", label="run name (folder in the output folder)")
        recipe = gr.Dropdown(list(LATENT_RECIPES), value="coconut", label="recipe")
        l_steps = gr.Number(20, precision=0, label="steps (per stage for COCONUT)", elem_id="latent-train-steps")
        l_resume = gr.Checkbox(False, label="resume")
        l_overwrite = gr.Checkbox(False, label="overwrite (start an existing run folder again)")
        l_probes = gr.Number(3, precision=0, label="probe problems (0: no trajectories)", elem_id="latent-train-probes")
    with gr.Row():
        l_start = gr.Button("Train", variant="primary")
        l_stop = gr.Button("Cancel")
    l_status = gr.Markdown(elem_id="latent-train-status")
    with gr.Row():
        l_plot = gr.Plot(label="loss", elem_id="latent-train-loss", scale=2)
        l_traj = gr.Plot(label="latent trajectories", elem_id="latent-train-trajectories", scale=3)
    l_start.click(tab.latent_train, [ctx.model, recipe, l_name, l_steps, l_resume, l_overwrite, l_probes], [l_plot, l_traj, l_status, ctx.model],
                  api_name="latent_train")
    l_stop.click(tab.cancel, [l_name], l_status, api_name="cancel_latent_train", queue=False)
    with gr.Row():
        r_folder = gr.Textbox("", label="finished run folder (inside the allowed folders; e.g. latent-run)", elem_id="trajectories-folder", scale=4)
        r_which = gr.Dropdown(list(PCA_OF), value="latent", label="PCA of")
        r_show = gr.Button("Show trajectories")
    r_show.click(tab.show_run, [r_folder, r_which], [l_plot, l_traj, l_status], api_name="show_trajectories")
    return tab

"""Training tab: bake the Steering tab's vector into the weights (distillation through the
shared trainer, or an exact fold), or train a latent-reasoning recipe (COCONUT curriculum,
projection head, latent head, pause tokens); live loss curves from the trainer's `on_step`
callback, cancel, resume, and the result loaded back for the other tabs (a baked or
COCONUT model becomes the selected model; a head folder feeds the Latent tab's `trained`
policy)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from workbench.viz.train import loss_figure

from ._common import AppContext, handler, output_file, parse_float, parse_int

MODES = ("distil", "fold")
LATENT_RECIPES = ("coconut", "projection-head", "latent-head", "pause")


class TrainingTab:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        self._cancel: dict[str, threading.Event] = {}

    @handler
    def cancel(self, run_name: str) -> str:
        ev = self._cancel.get(run_name)
        if ev is None:
            raise ValueError(f"no running training run named {run_name!r}")
        ev.set()
        return f"cancelling {run_name}: it stops after the current step (a checkpoint is kept for resume)"

    def _in_worker(self, run_name: str, work: Any, history: list[dict], steps: int, box: dict) -> Iterator[tuple[Any, str, Any]]:
        """Run `work(cancel_event)` in a thread; yield (loss figure, status, no change) while
        the trainer's `on_step` rows land in `history`; the result goes to box["result"]
        (the worker's exception is raised here)."""
        if run_name in self._cancel:
            raise ValueError(f"a run named {run_name!r} is already running")
        cancel = self._cancel[run_name] = threading.Event()

        def target() -> None:
            try:
                box["result"] = work(cancel)
            except BaseException as err:  # noqa: BLE001 - handed to the UI below
                box["error"] = err

        worker = threading.Thread(target=target, name=f"train-{run_name}", daemon=True)
        worker.start()
        try:
            shown = -1
            while worker.is_alive():
                worker.join(0.5)
                if len(history) != shown:
                    shown = len(history)
                    last = history[-1] if history else {}
                    stage = f"stage {int(last['stage'])}, " if last.get("stage") is not None else ""
                    yield loss_figure(history), f"{stage}step {last.get('step', 0)}/{steps}, loss {last.get('loss', float('nan')):.4g}", gr.update()
        finally:
            self._cancel.pop(run_name, None)
        if "error" in box:
            raise box["error"]

    @handler
    def latent_train(self, model: str, recipe: str, run_name: str, steps: Any = 20, resume: bool = False) -> Iterator[tuple[Any, str, Any]]:
        """Train a latent-reasoning recipe on a fresh copy of `model` (the shared one is
        left alone) with live loss curves; a COCONUT result becomes the selected model, a
        head's folder is what the Latent tab's `trained` policy reads."""
        from workbench.train.latent_recipes import RUNNERS

        if recipe not in LATENT_RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(LATENT_RECIPES)}, got {recipe!r}")
        if not model:
            raise ValueError("no model selected; choose one in the Model tab")
        out_dir = output_file(self.ctx, run_name, "")
        n = parse_int(steps, "steps", low=1, high=100_000)
        cls, run = RUNNERS[recipe]
        cfg = cls(model=model, out_dir=str(out_dir), steps=n, eval_n=0, ckpt_every=max(1, n // 4), warmup_steps=0, progress=False, device="cpu")
        history: list[dict] = []
        box: dict[str, Any] = {}
        stages = getattr(cfg, "stages", 1)
        yield from self._in_worker(run_name, lambda cancel: run(cfg, resume=resume, on_step=history.append, cancel=cancel), history, n, box)
        res = box["result"]
        if res.get("status") != "done":
            yield loss_figure(history), f"{res.get('status')}; tick 'resume' to continue", gr.update()
            return
        final = Path(res["final"])
        if (final / "model").is_dir():
            key = str((final / "model").resolve())
            self.ctx.registry.slot(key)
            yield loss_figure(history), f"done ({stages} stage(s)); model loaded as `{key}`; in the Latent tab choose policy `trained` with path `{final}`", key
            return
        yield loss_figure(history), f"done; in the Latent tab choose policy `trained` with path `{final}`", gr.update()

    @handler
    def bake(
        self, model: str, vec: Any, run_name: str, mode: str = "distil", scale: Any = 6.0, steps: Any = 20, lr: Any = 2e-3,
        probe_set: str = "sentiment", resume: bool = False,
    ) -> Iterator[tuple[Any, str, Any]]:
        """Run a bake in a worker thread; yields (loss figure, status, model key) as steps land."""
        from workbench.train.bake import BakeConfig, bake

        if vec is None:
            raise ValueError("no steering vector: extract or load one in the Steering tab first")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        out_dir = output_file(self.ctx, run_name, "")
        cfg = BakeConfig(
            model=model, out_dir=str(out_dir), scale=parse_float(scale, "scale"), mode=mode, probe_set=probe_set,
            steps=parse_int(steps, "steps", low=1, high=100_000), lr=parse_float(lr, "learning rate", low=0.0),
            ckpt_every=max(1, parse_int(steps, "steps") // 4), warmup_steps=0, progress=False,
        )
        cfg.validate()
        history: list[dict] = []

        def work(cancel: threading.Event) -> Any:
            with self.ctx.registry.use(model) as bench:  # the teacher's hooks sit on the shared model
                return bake(bench, vec, cfg, on_step=history.append, cancel=cancel, resume=resume)

        box: dict[str, Any] = {}
        yield from self._in_worker(run_name, work, history, cfg.steps, box)
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
    with gr.Row():
        start = gr.Button("Bake", variant="primary")
        stop = gr.Button("Cancel")
    status = gr.Markdown(elem_id="train-status")
    plot = gr.Plot(label="loss", elem_id="train-loss")
    start.click(tab.bake, [ctx.model, ctx.vector, run_name, mode, scale, steps, lr, probe_set, resume], [plot, status, ctx.model],
                api_name="bake")
    stop.click(tab.cancel, [run_name], status, api_name="cancel_bake", queue=False)
    gr.Markdown("Latent-reasoning recipes (COCONUT curriculum, projection head, latent head, pause tokens) on the "
                "arithmetic task, on a fresh copy of the selected model (a thinking model such as `qwen3.5-micro`).")
    with gr.Row():
        l_name = gr.Textbox("latent-run", label="run name (folder in the output folder)")
        recipe = gr.Dropdown(list(LATENT_RECIPES), value="coconut", label="recipe")
        l_steps = gr.Number(20, precision=0, label="steps (per stage for COCONUT)", elem_id="latent-train-steps")
        l_resume = gr.Checkbox(False, label="resume")
    with gr.Row():
        l_start = gr.Button("Train", variant="primary")
        l_stop = gr.Button("Cancel")
    l_status = gr.Markdown(elem_id="latent-train-status")
    l_plot = gr.Plot(label="loss", elem_id="latent-train-loss")
    l_start.click(tab.latent_train, [ctx.model, recipe, l_name, l_steps, l_resume], [l_plot, l_status, ctx.model], api_name="latent_train")
    l_stop.click(tab.cancel, [l_name], l_status, api_name="cancel_latent_train", queue=False)
    return tab

"""Training tab: bake the Steering tab's vector into the weights (distillation through the
shared trainer, or an exact fold), with a live loss curve from the trainer's `on_step`
callback, cancel, resume, and the baked model loaded back as a model for the other tabs."""

from __future__ import annotations

import threading
from typing import Any, Iterator

import gradio as gr

from ._common import AppContext, handler, output_file, parse_float, parse_int

MODES = ("distil", "fold")


def loss_figure(history: list[dict]) -> Any:
    """Loss per optimizer step (a small live plot; belongs in `workbench.viz` once it has a
    training module)."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=[r.get("step") for r in history], y=[r.get("loss") for r in history], mode="lines+markers", name="loss"))
    fig.update_layout(title="training loss", xaxis_title="optimizer step", yaxis_title="loss")
    return fig


class TrainingTab:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        self._cancel: dict[str, threading.Event] = {}

    @handler
    def cancel(self, run_name: str) -> str:
        ev = self._cancel.get(run_name)
        if ev is None:
            raise ValueError(f"no running bake named {run_name!r}")
        ev.set()
        return f"cancelling {run_name}: it stops after the current step (a checkpoint is kept for resume)"

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
        if run_name in self._cancel:
            raise ValueError(f"a bake named {run_name!r} is already running")
        history: list[dict] = []
        box: dict[str, Any] = {}
        cancel = self._cancel[run_name] = threading.Event()

        def work() -> None:
            try:
                with self.ctx.registry.use(model) as bench:  # the teacher's hooks sit on the shared model
                    box["result"] = bake(bench, vec, cfg, on_step=history.append, cancel=cancel, resume=resume)
            except BaseException as err:  # noqa: BLE001 - handed to the UI below
                box["error"] = err

        worker = threading.Thread(target=work, name=f"bake-{run_name}", daemon=True)
        worker.start()
        try:
            shown = -1
            while worker.is_alive():
                worker.join(0.5)
                if len(history) != shown:
                    shown = len(history)
                    last = history[-1] if history else {}
                    yield loss_figure(history), f"step {last.get('step', 0)}/{cfg.steps}, loss {last.get('loss', float('nan')):.4g}", gr.update()
        finally:
            self._cancel.pop(run_name, None)
        if "error" in box:
            raise box["error"]
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
    return tab

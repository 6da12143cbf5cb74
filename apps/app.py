"""The workbench web app: one Gradio Blocks with the tabs Model, Steering, Prefix & Sinks,
Latent reasoning and Training, over one model registry per process.

    from apps.app import build_app, launch
    launch(build_app(), host="127.0.0.1", port=7860)     # or: workbench app

Every tab reads the selected model from a per-session state and takes that model's lock
for the whole of a request (see `apps._common`), so a steered request's hooks never reach
another request; the queue's concurrency limit bounds how many requests run at once.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import gradio as gr

from . import latent_tab, model_tab, sinks_tab, steering_tab, training_tab
from ._common import DEFAULT_MAX_HEAD_MB, DEFAULT_MAX_VECTOR_MB, AppContext, Registry

TABS = (
    ("Model", model_tab),
    ("Steering", steering_tab),
    ("Prefix & Sinks", sinks_tab),
    ("Latent reasoning", latent_tab),
    ("Training", training_tab),
)
DEFAULT_CONCURRENCY = 4

CSS = """
.wb-header {margin-bottom: 0.2em}
"""


def build_app(
    model_name: str | None = None,
    allowed_dirs: Sequence[str | os.PathLike] = (),
    *,
    registry: Registry | None = None,
    device: str = "auto",
    dtype: str = "auto",
    out_dir: str | os.PathLike | None = None,
    max_vector_mb: float = DEFAULT_MAX_VECTOR_MB,
    max_head_mb: float = DEFAULT_MAX_HEAD_MB,
) -> gr.Blocks:
    """Build the app (nothing is loaded until the first request).

    model_name: the model selected when a session starts (default: the embedded default).
    allowed_dirs: folders the UI may read files from (local models, head files).
    out_dir: where saved vectors and training runs go (default: a `workbench-outputs`
        folder inside the first allowed folder, else a private temporary folder); the app
        never writes anywhere else, and replaces a file there only when asked to.
    max_vector_mb / max_head_mb: the largest steering vector / head file it reads (an
        upload above the larger one is refused by the server itself).
    registry: share an existing `Registry` (tests, notebooks); device / dtype: for loads."""
    import workbench as wb

    ctx = AppContext.create(model_name or wb.DEFAULT_MODEL, allowed_dirs, registry, device, dtype, out_dir=out_dir,
                            max_vector_mb=max_vector_mb, max_head_mb=max_head_mb)
    handlers: dict[str, Any] = {}
    with gr.Blocks(title="Latent Workbench") as demo:
        ctx.model = gr.State(ctx.default_model)
        ctx.vector = gr.State(None)
        gr.Markdown(
            "## Latent Workbench\nSteering vectors, attention sinks and latent reasoning on the shared core. "
            f"Output folder: `{ctx.out_dir}` (saved files and runs; an existing one is replaced only when "
            "'overwrite' is ticked)"
            + (f"; readable folders: {', '.join(f'`{d}`' for d in ctx.allowed_dirs)}" if ctx.allowed_dirs else ""),
            elem_classes="wb-header",
        )
        with gr.Tabs():
            for title, mod in TABS:
                with gr.Tab(title, id=title.lower().replace(" & ", "-").replace(" ", "-")):
                    handlers[title] = mod.build_ui(ctx)
        # show the default model's architecture when a page opens
        load, choice, path, summary, layers, status = ctx.extras["model_tab_load"]
        demo.load(handlers["Model"].load_model, [choice, path], [ctx.model, summary, layers, status], api_visibility="private")
    demo.workbench_ctx = ctx  # type: ignore[attr-defined]
    demo.workbench_tabs = handlers  # type: ignore[attr-defined]
    return demo


def launch(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int | None = None,
    *,
    share: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
    max_queue: int = 64,
    block: bool = True,
    quiet: bool = False,
    share_hint: str | None = None,
) -> Any:
    """Queue with a concurrency limit, then serve on `host` (loopback by default). Public
    sharing is off unless `share=True` is asked for explicitly. `share_hint` (the CLI's
    "--share") replaces Gradio's own banner, which tells Python users to pass `share=True`
    to `launch()`, with the URL and how to ask for a public link in that client."""
    from workbench.errors import check_int

    concurrency = check_int(concurrency, "concurrency", low=1)
    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    ctx = getattr(demo, "workbench_ctx", None)
    max_file = max(ctx.max_vector_bytes, ctx.max_head_bytes) if ctx is not None else None
    own_banner = share_hint is not None and not quiet
    out = demo.launch(
        server_name=host,
        server_port=port,
        share=bool(share),
        prevent_thread_lock=not block or own_banner,
        quiet=quiet or own_banner,
        show_error=True,
        ssr_mode=False,
        inbrowser=False,
        css=CSS,
        max_file_size=max_file,
    )
    if own_banner:
        print(f"* Running on local URL:  {demo.local_url}", flush=True)
        if getattr(demo, "share_url", None):
            print(f"* Running on public URL: {demo.share_url}", flush=True)
        else:
            print(f"* Only this machine can open it; add {share_hint} for a public link.", flush=True)
        if block:
            demo.block_thread()
    return out


if __name__ == "__main__":  # python -m apps.app
    launch(build_app())

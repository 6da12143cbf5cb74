"""Steering tab: pick a probe set or paste pairs; sweep layers (magnitude, consistency,
probe accuracy); extract; steered and unsteered generations side by side, streamed; the KL
side-effect number; save / load / export vectors."""

from __future__ import annotations

from typing import Any, Iterator

import gradio as gr

from workbench.errors import InputError

from ._common import (
    AppContext,
    handler,
    md_table,
    output_file,
    parse_float,
    parse_int,
    parse_layers,
    parse_pairs,
    upload_path,
)

PASTE = "paste pairs…"
METHODS = ("mean_diff", "pca", "logistic")
WHERE = ("all", "generated", "prompt")
EXAMPLE_PAIRS = """I love this, it is wonderful. ||| I hate this, it is awful.
What a fantastic day! ||| What a terrible day!
The food was delicious. ||| The food was disgusting.
She was thrilled with the gift. ||| She was furious about the gift.
This movie made me so happy. ||| This movie made me so sad.
Our trip was a delight. ||| Our trip was a disaster.
He gave me a warm, kind smile. ||| He gave me a cold, cruel sneer.
Everything went perfectly today. ||| Everything went wrong today."""


def probe_choices() -> list[str]:
    import probes

    return list(probes.list_sets()) + [PASTE]


def _pairs(source: str, pairs_text: str) -> Any:
    """Probe-set name, or pasted pairs parsed into tuples."""
    if source == PASTE:
        return parse_pairs(pairs_text)
    if not source or not isinstance(source, str):
        raise InputError("choose a probe set or 'paste pairs…'")
    choices = probe_choices()
    if source not in choices:
        raise InputError(f"unknown probe set {source!r}; choose one of {', '.join(map(repr, choices))}")
    return source


def _method(name: str):
    from workbench import steering as st

    if name not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {name!r}")
    return st.get_method(name)


def _layers(bench: Any, text: Any, allow_all: bool) -> list[int] | None:
    if str(text or "").strip().lower() == "middle":
        return [bench.arch.layer_at(0.5)]
    return parse_layers(text, bench.arch.n_layers, allow_all=allow_all)


def vector_info(vec: Any) -> str:
    if vec is None:
        return "no vector yet: extract one or load a file"
    norms = ", ".join(f"{layer}: {float(v.norm()):.3g}" for layer, v in sorted(vec.directions.items()))
    meta = vec.metadata or {}
    return (
        f"**vector** `{vec.method}` for `{vec.model_name}` ({vec.model_family}, d_model {vec.d_model}); "
        f"layers {vec.layers}; norms {{{norms}}}; position {vec.position}; "
        f"pairs {meta.get('n_pairs', '?')}{'; probe set ' + str(meta['probe_set']) if meta.get('probe_set') else ''}"
    )


class SteeringTab:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    @handler
    def sweep(self, model: str, source: str, pairs_text: str, method: str, layers: str) -> tuple[Any, str, str]:
        """Layer sweep -> (figure, per-layer table, best layer as text for the layer box)."""
        from workbench import steering as st

        pairs = _pairs(source, pairs_text)
        m = _method(method)
        with self.ctx.registry.use(model) as bench:
            chosen = _layers(bench, layers, allow_all=True)
            sw = st.sweep(bench, pairs, layers=chosen, method=m)
        rows = [[r["layer"], r["magnitude"], r["consistency"], r["probe_accuracy"], r["gap"], "★" if r["best"] else ""]
                for r in sw.to_rows()]
        table = md_table(rows, ("layer", "magnitude", "consistency", "probe acc.", "gap", "best"))
        return sw.figure(), table, str(sw.best_layer)

    @handler
    def extract(self, model: str, source: str, pairs_text: str, method: str, layers: str) -> tuple[Any, str]:
        """Extract a vector at the chosen layer(s) -> (vector state, description)."""
        from workbench import steering as st

        pairs = _pairs(source, pairs_text)
        m = _method(method)
        with self.ctx.registry.use(model) as bench:
            chosen = _layers(bench, layers, allow_all=False)
            vec = st.extract(bench, pairs, layers=chosen, method=m)
        return vec, vector_info(vec)

    @handler
    def steer_generate(
        self, model: str, vec: Any, prompt: str, scale: Any, where: str = "all", max_new_tokens: Any = 40, kl: bool = True
    ) -> Iterator[tuple[str, str, str]]:
        """Unsteered and steered generations of `prompt`, streamed side by side (one batched
        run of the generation loop; the steering acts on the second row only), then the KL
        side effect of the steering on neutral prompts."""
        from workbench import steering as st

        if vec is None:
            raise InputError("no steering vector: extract one (or load a file) first")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("the prompt is empty")
        s = parse_float(scale, "scale")
        if where not in WHERE:
            raise InputError(f"apply-at must be one of {', '.join(WHERE)}, got {where!r}")
        n = parse_int(max_new_tokens, "max new tokens", low=1, high=1024)
        with self.ctx.registry.use(model) as bench:
            steer = vec.steer(s, where)
            texts = ("", "")
            for texts in st.compare_stream(bench, prompt, [steer], max_new_tokens=n):
                yield texts[0], texts[1], "generating…"
            note = f"scale {s:g} at layers {vec.layers} ({where} positions)"
            if kl:
                rep = st.steer_report(bench, steer)
                note = f"**side effect**: {rep.summary()}; {note}"
        yield texts[0], texts[1], note

    @handler
    def save_vector(self, vec: Any, name: str, fmt: str = "safetensors", overwrite: bool = False) -> tuple[str, str]:
        """Save into the output folder -> (path for download, status). An existing file of
        that name is kept (OutputExistsError) unless `overwrite` is ticked."""
        if vec is None:
            raise InputError("no steering vector to save: extract or load one first")
        if fmt not in ("safetensors", "gguf"):
            raise InputError(f"format must be 'safetensors' or 'gguf', got {fmt!r}")
        if not isinstance(overwrite, bool):
            raise InputError(f"overwrite must be true or false, got {overwrite!r}")
        path = output_file(self.ctx, name, "." + fmt, overwrite=overwrite, what="vector file")
        if fmt == "safetensors":
            vec.save(path, overwrite=overwrite)
        else:
            vec.to_gguf(path, overwrite=overwrite)
        return str(path), f"saved {path.name} ({fmt}) in the output folder"

    @handler
    def load_vector(self, model: str, file: Any) -> tuple[Any, str]:
        """Read an uploaded safetensors / GGUF vector, checked against the current model."""
        from workbench import steering as st

        path = upload_path(self.ctx, file, suffixes=(".safetensors", ".gguf"), what="steering vector",
                           max_bytes=self.ctx.max_vector_bytes)
        bench = self.ctx.registry.peek(model)
        vec = st.load_vector(path, bench)
        return vec, vector_info(vec)


def build_ui(ctx: AppContext) -> SteeringTab:
    tab = SteeringTab(ctx)
    with gr.Row():
        with gr.Column(scale=2):
            source = gr.Dropdown(probe_choices(), value=PASTE, label="contrast pairs")
            pairs = gr.Textbox(EXAMPLE_PAIRS, lines=5, label="pairs (one per line: positive ||| negative)")
        with gr.Column(scale=1):
            method = gr.Dropdown(list(METHODS), value="mean_diff", label="method")
            layers = gr.Textbox("middle", label="layers (e.g. 14, 10-20, all, middle)")
            with gr.Row():
                sweep_btn = gr.Button("Sweep layers")
                extract_btn = gr.Button("Extract", variant="primary")
    info = gr.Markdown(vector_info(None), elem_id="steer-info")
    with gr.Accordion("layer sweep", open=True):
        sweep_plot = gr.Plot(label="layer sweep", elem_id="steer-sweep-plot")
        sweep_table = gr.Markdown()
    gr.Markdown("### Steered vs unsteered")
    with gr.Row():
        prompt = gr.Textbox("Tell me about your day.", label="prompt", scale=3)
        scale = gr.Slider(-16, 16, value=6, step=0.5, label="scale", scale=2)
        where = gr.Dropdown(list(WHERE), value="all", label="apply at", scale=1)
        max_new = gr.Number(40, precision=0, label="max new tokens", scale=1, elem_id="steer-max-new")
    kl = gr.Checkbox(True, label="measure the KL side effect on neutral prompts")
    gen_btn = gr.Button("Generate side by side", variant="primary")
    with gr.Row():
        plain = gr.Textbox(label="unsteered", lines=6, elem_id="steer-plain")
        steered = gr.Textbox(label="steered", lines=6, elem_id="steer-steered")
    kl_md = gr.Markdown(elem_id="steer-kl")
    with gr.Accordion("save / load / export", open=False):
        with gr.Row():
            fname = gr.Textbox("vector", label="file name (saved in the output folder)")
            fmt = gr.Radio(["safetensors", "gguf"], value="safetensors", label="format")
            overwrite = gr.Checkbox(False, label="overwrite an existing file of that name")
            save_btn = gr.Button("Save")
        saved = gr.File(label="saved file", interactive=False)
        save_status = gr.Markdown()
        upload = gr.File(label=f"load a vector (.safetensors or .gguf, at most {ctx.max_vector_bytes >> 20} MiB)",
                         file_types=[".safetensors", ".gguf"])
        load_btn = gr.Button("Load vector")

    sweep_btn.click(tab.sweep, [ctx.model, source, pairs, method, layers], [sweep_plot, sweep_table, layers], api_name="sweep")
    extract_btn.click(tab.extract, [ctx.model, source, pairs, method, layers], [ctx.vector, info], api_name="extract")
    gen_btn.click(tab.steer_generate, [ctx.model, ctx.vector, prompt, scale, where, max_new, kl], [plain, steered, kl_md],
                  api_name="steer_generate")
    save_btn.click(tab.save_vector, [ctx.vector, fname, fmt, overwrite], [saved, save_status], api_name="save_vector")
    load_btn.click(tab.load_vector, [ctx.model, upload], [ctx.vector, info], api_name="load_vector")
    return tab

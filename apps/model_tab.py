"""Model tab: choose the embedded default, the tiny Qwen3.5, or a local folder; see the
architecture (layer types, attention layers, d_model, embedding RMS); try a generation."""

from __future__ import annotations

from typing import Any, Iterator

import gradio as gr

from workbench.errors import InputError

from ._common import (
    SEED_MAX,
    AppContext,
    handler,
    md_table,
    model_choices,
    parse_float,
    parse_int,
    resolve_model_key,
)


def arch_summary(bench: Any) -> str:
    a = bench.arch
    att = list(a.attention_layers)
    lin = [i for i, t in enumerate(a.layer_types) if t != "full_attention"]
    rows = [
        ("model", bench.name),
        ("family", a.family),
        ("source", getattr(bench, "source", "") or "-"),
        ("layers", a.n_layers),
        ("d_model", a.d_model),
        ("attention layers (softmax)", ", ".join(map(str, att)) or "none"),
        ("linear-attention layers (Gated DeltaNet)", ", ".join(map(str, lin)) or "none"),
        ("heads / KV heads / head_dim", f"{a.n_heads} / {a.n_kv_heads} / {a.head_dim}"),
        ("vocabulary", a.vocab_size),
        ("max positions", a.max_positions),
        ("embedding RMS (rows in use)", f"{a.embed_rms:.5f}"),
        ("mean embedding norm (rows in use)", f"{a.embed_norm:.4f}"),
        ("embedding rows in use (not all zero)", a.embed_rows),
        ("tied embeddings", a.tied_embeddings),
        ("device / dtype", f"{bench.device} / {str(bench.dtype).removeprefix('torch.')}"),
        ("decode path", decode_path(bench)),
    ]
    return md_table(rows, ("", "value"))


def decode_path(bench: Any) -> str:
    """Which loop generation runs on (see workbench.fastdecode)."""
    from workbench.fastdecode import unsupported_reason

    why = unsupported_reason(bench.hf)
    if why is not None:
        return f"eager forward per token (fast path unavailable: {why})"
    if bench.device.type == "cuda":
        return "static state + CUDA graphs (fast path)"
    return "eager forward per token (the fast path's CUDA graphs need a GPU)"


def layer_rows(bench: Any) -> list[list[Any]]:
    return [[i, t] for i, t in enumerate(bench.arch.layer_types)]


class ModelTab:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    @handler
    def load_model(self, choice: str, path: str = "") -> tuple[str, str, list, str]:
        """Load (or reuse) a model; returns (model key, summary, layer table, status)."""
        key = resolve_model_key(self.ctx, choice, path)
        bench = self.ctx.registry.peek(key)
        return key, arch_summary(bench), layer_rows(bench), f"**{bench.name}** loaded: {bench!r}"

    @handler
    def describe(self, model: str) -> tuple[str, list, str]:
        """(summary, layer table, status) of the model in use: refreshed whenever the
        session's model changes (a load here, or a bake / training run that loads its
        result), so this tab never names a model that generation no longer uses."""
        bench = self.ctx.registry.peek(model)
        return arch_summary(bench), layer_rows(bench), f"**{bench.name}** in use: {bench!r}"

    @handler
    def generate(self, model: str, prompt: str, max_new_tokens: Any = 48, temperature: Any = 0.0, seed: Any = 0) -> Iterator[str]:
        """Stream a plain (unsteered) chat generation."""
        from workbench.generate import generate_stream

        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("the prompt is empty")
        n = parse_int(max_new_tokens, "max new tokens", low=1, high=2048)
        temp = parse_float(temperature, "temperature", low=0.0, high=10.0)
        s = parse_int(seed, "seed", low=0, high=SEED_MAX)
        text = ""
        with self.ctx.registry.use(model) as bench:
            for step in generate_stream(bench, prompt, max_new_tokens=n, temperature=temp, seed=s, decode_stream=True):
                text += step.text[0]
                yield text
        yield _strip_stop(bench, text)


def _strip_stop(bench: Any, text: str) -> str:
    for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        text = text.replace(t, "")
    return text


def build_ui(ctx: AppContext) -> ModelTab:
    tab = ModelTab(ctx)
    gr.Markdown("Choose a model. The embedded **smollm2-135m** (real SmolLM2-135M-Instruct weights) and "
                "**qwen3.5-tiny** (random hybrid Qwen3.5 with the real tokenizer) run offline; **qwen3.5-micro** "
                "(a Qwen3.5 micro model trained on arithmetic with `<think>` chains, for the latent tabs) is trained "
                "the first time it is loaded on a machine (about 18 minutes on 2 CPU cores; `workbench train micro` "
                "does it ahead of time), then read from the cache. A local folder must lie inside a folder the app was "
                "started with (`--allow-dir`).")
    with gr.Row():
        choice = gr.Dropdown(model_choices(), value=ctx.default_model, label="model", scale=2)
        path = gr.Textbox(label="local model folder (for 'local path…')", placeholder="path inside an allowed folder", scale=3)
        load = gr.Button("Load", variant="primary", scale=1)
    status = gr.Markdown(elem_id="model-status")
    with gr.Row():
        summary = gr.Markdown(elem_id="model-summary")
        layers = gr.Dataframe(headers=["layer", "type"], label="layer types", interactive=False, elem_id="model-layers")
    gr.Markdown("### Try it")
    with gr.Row():
        prompt = gr.Textbox(label="prompt", value="What is the capital of France?", scale=4)
        max_new = gr.Number(label="max new tokens", value=48, precision=0, scale=1, elem_id="model-max-new")
        temp = gr.Number(label="temperature", value=0.0, scale=1)
        seed = gr.Number(label="seed", value=0, precision=0, scale=1)
    gen = gr.Button("Generate")
    out = gr.Textbox(label="generation", lines=6, elem_id="model-generation")
    load.click(tab.load_model, [choice, path], [ctx.model, summary, layers, status], api_name="load_model")
    gen.click(tab.generate, [ctx.model, prompt, max_new, temp, seed], out, api_name="generate")
    # a bake or a training run hands its result to the session's model: say so here
    ctx.model.change(tab.describe, [ctx.model], [summary, layers, status], api_name="describe_model")
    ctx.extras["model_tab_load"] = (load, choice, path, summary, layers, status)
    return tab

"""Latent reasoning tab: choose a policy (and its head file), run a prompt through the
latent loop, and see each latent step's vocabulary readout (top tokens as bars), entropy
and norm per step, the PCA trajectory of the latent steps next to the explicit
chain-of-thought path of the same prompt, and both final answers. Everything streams:
latent steps appear as the loop computes them, then the answers token by token."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from workbench.errors import InputError

from ._common import AppContext, allowed_path, handler, parse_int, upload_path

POLICIES = ("coconut", "soft_thinking", "projection_head", "latent_head", "trained")
NEEDS_FILE = ("projection_head", "latent_head")


class LatentTab:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def _head_path(self, upload: Any, path_text: str) -> str:
        if upload not in (None, ""):
            return str(upload_path(self.ctx, upload, suffixes=(".safetensors",), what="head file", max_bytes=self.ctx.max_head_bytes))
        if (path_text or "").strip():
            return str(allowed_path(self.ctx, path_text, suffixes=(".safetensors",), what="head file", allow_dir=True))
        raise InputError("this policy needs a head file: upload a .safetensors file or give a path inside an allowed folder")

    def policy(self, bench: Any, name: str, steps: int, upload: Any = None, path_text: str = "") -> Any:
        from workbench import latent

        if name == "coconut":
            return latent.Coconut(steps=steps)
        if name == "soft_thinking":
            has_close = "</think>" in bench.tokenizer.get_vocab()
            # without </think> the cold stop cannot end thinking: think for the fixed budget
            return latent.SoftThinking(max_steps=steps, cold_patience=8 if has_close else 0)
        if name == "projection_head":
            return latent.ProjectionHead.load(self._head_path(upload, path_text), steps=steps)
        if name == "latent_head":
            return latent.LatentHead.load(self._head_path(upload, path_text)).with_steps(steps)
        if name == "trained":  # the `final` folder of a latent training recipe (Training tab)
            folder = allowed_path(self.ctx, path_text, what="recipe folder", allow_dir=True)
            # every path the folder's latent_policy.json names is confined like a typed one
            spec, trained_on = latent.load_policy(str(folder), allowed=self.ctx.readable_dirs)
            if spec == "cot":
                raise InputError(
                    f"{folder.name} holds a model fine-tuned for explicit chain-of-thought (e.g. upft), not a latent policy: "
                    f"load its model ({trained_on}) in the Model tab and generate with explicit thinking"
                )
            names = {bench.name, str(Path(bench.name).expanduser().resolve()) if bench.name else ""}
            if trained_on and trained_on not in names and str(Path(trained_on).resolve()) not in names:
                raise InputError(f"{folder.name} was trained on model {trained_on!r}; select that model in the Model tab first")
            return spec  # the step count it was trained with (the steps box does not apply)
        raise InputError(f"policy must be one of {', '.join(POLICIES)}, got {name!r}")

    @staticmethod
    def _bars(trace: Any, tok: Any) -> Any:
        from workbench.viz import latent as vl

        mixture = bool(trace.steps) and trace.steps[0].mixture_ids is not None
        return vl.top_tokens_figure(trace, tok, k=5, source="mixture" if mixture else "next")

    @handler
    def run(
        self, model: str, policy_name: str, prompt: str, steps: Any = 6, max_new_tokens: Any = 32, upload: Any = None,
        path_text: str = "",
    ) -> Iterator[tuple]:
        """Yields (status, latent answer, CoT answer, top-token bars, entropy/norm, trajectory,
        readout table) as the work proceeds: each latent step as the loop produces it (with
        its vocabulary readout), the visible answer token by token, then the explicit chain
        of thought token by token, then the joint PCA trajectory."""
        from workbench import latent
        from workbench.latent import readout
        from workbench.viz import latent as vl

        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("the prompt is empty")
        n_steps = parse_int(steps, "latent steps", low=1, high=512)
        n_new = parse_int(max_new_tokens, "max new tokens", low=1, high=1024)
        none = gr.update()
        with self.ctx.registry.use(model) as bench:
            pol = self.policy(bench, policy_name, n_steps, upload, path_text)
            tok = bench.tokenizer
            yield f"running {policy_name} ({n_steps} latent steps)…", "", "", none, none, none, ""
            partial: list = []
            trace = None
            for upd in latent.run_stream(bench, prompt, pol, max_new_tokens=n_new):
                if upd.done:
                    trace = upd.traces[0]
                    break
                if upd.new_steps:  # a latent step just landed: show it with its readout
                    partial.extend(s for _, s in upd.new_steps)
                    view = _partial_trace(pol, partial, upd.texts[0])
                    last = partial[-1]
                    status = f"latent step {last.index + 1}: next-token top {tok.decode([int(last.top_ids[0])])!r} ({float(last.top_probs[0]):.2f}), entropy {last.entropy:.2f}"
                    yield status, upd.texts[0], "", self._bars(view, tok), vl.entropy_norm_figure(view), none, view.table(tok)
                elif upd.tokens:
                    yield f"decoding after {len(partial)} latent steps…", upd.texts[0], "", none, none, none, gr.update()
            bars = self._bars(trace, tok)
            ent = vl.entropy_norm_figure(trace)
            table = trace.table(tok)
            status = f"{trace.method}: {trace.latent_steps} latent steps, exit {trace.exit} ({trace.exit_detail}); now the explicit chain of thought…"
            yield status, trace.text, "", bars, ent, none, table
            # the explicit path of the same prompt, streamed (the core's readout.cot_stream)
            hs, ids, cot_text = [], [], ""
            for hs, ids, cot_text in readout.cot_stream(bench, prompt, max_new_tokens=n_new):
                yield status, trace.text, cot_text, none, none, none, table
            traj = readout.trajectory(bench, trace, (hs, ids))
        done = f"{trace.method}: {trace.latent_steps} latent steps, exit {trace.exit}; chain of thought: {len(ids)} tokens"
        yield done, trace.text, cot_text, bars, ent, vl.trajectory_figure(traj), table


def _partial_trace(pol: Any, steps: list, text: str) -> Any:
    """A `LatentTrace` over the latent steps produced so far (for the live view)."""
    from workbench.latent import LatentTrace

    return LatentTrace(getattr(pol, "name", "latent"), [], [], text, None, None, len(steps), len(steps), 1, list(steps))


def build_ui(ctx: AppContext) -> LatentTab:
    from workbench.latent.offer import offer

    tab = LatentTab(ctx)
    found = offer(ctx.readable_dirs)  # trained recipe folders first; else how to make them
    tab.offer = found
    gr.Markdown("Run a prompt through a latent loop: COCONUT and soft thinking need no file; a projection head "
                "or a latent head needs its `.safetensors` file (uploaded, or in an allowed folder); `trained` reads the "
                "`final` folder a latent training recipe wrote (path in an allowed folder).")
    gr.Markdown(found.message, elem_id="latent-offer")
    with gr.Row():
        policy = gr.Dropdown(list(POLICIES), value="trained" if found.recipe_folders else "coconut", label="policy")
        steps = gr.Number(6, precision=0, label="latent steps", elem_id="latent-steps")
        max_new = gr.Number(32, precision=0, label="max new tokens", elem_id="latent-max-new")
    with gr.Row():
        upload = gr.File(label="head file (.safetensors)", file_types=[".safetensors"])
        path = gr.Textbox(str(found.recipe_folders[0]) if found.recipe_folders else "",
                          label="or head file / recipe folder path (inside an allowed folder)")
    prompt = gr.Textbox("What is 3 + 4 * 2?", label="prompt")
    run_btn = gr.Button("Run", variant="primary")
    status = gr.Markdown(elem_id="latent-status")
    with gr.Row():
        lat_out = gr.Textbox(label="latent answer", lines=4, elem_id="latent-answer")
        cot_out = gr.Textbox(label="explicit chain-of-thought answer", lines=4, elem_id="latent-cot")
    with gr.Row():
        traj = gr.Plot(label="trajectory (PCA)", elem_id="latent-trajectory")
        ent = gr.Plot(label="entropy and norm per step", elem_id="latent-entropy")
    bars = gr.Plot(label="vocabulary readout per latent step", elem_id="latent-bars")
    table = gr.Textbox(label="per-step readout", lines=8, elem_id="latent-table")
    run_btn.click(tab.run, [ctx.model, policy, prompt, steps, max_new, upload, path],
                  [status, lat_out, cot_out, bars, ent, traj, table], api_name="latent_run")
    return tab

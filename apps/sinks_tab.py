"""Prefix & Sinks tab: sink heatmap (layer x head), sink-rate and first-token-norm curves
with and without a random prefix, and a multi-seed prefix evaluation with oracle coverage.

Only per-head summaries (SinkReport: [prompts, layers, heads] numbers) reach the browser,
never attention matrices."""

from __future__ import annotations

from typing import Any

import gradio as gr

from workbench.errors import InputError

from ._common import SEED_MAX, AppContext, handler, md_table, parse_float, parse_int, parse_int_list, parse_lines

PLACEMENTS = ("start", "after_bos")
TASKS = ("arith-easy", "arith-medium", "arith-hard", "gsm8k-sample")
DEFAULT_PROMPTS = "The quick brown fox jumps over the lazy dog near the river bank.\nIn 1905 Einstein published four papers that changed physics."


def prefix_eval_figure(ev: Any):
    """Per-seed accuracy with a random prefix vs the greedy baseline and sampled runs.
    (A small summary plot of `PrefixEval`; belongs in `workbench.viz` once it has one.)"""
    import plotly.graph_objects as go

    seeds = [f"seed {s}" for s in ev.seeds]
    fig = go.Figure(go.Bar(x=seeds, y=ev.per_seed_accuracy, name="prefix (greedy)"))
    if ev.sampled_solved.shape[0]:
        fig.add_trace(go.Bar(x=[f"sample {i}" for i in range(len(ev.sampled_accuracy))], y=ev.sampled_accuracy,
                             name="no prefix, sampled"))
    fig.add_hline(y=ev.baseline_accuracy, line_dash="dot", annotation_text=f"greedy baseline {ev.baseline_accuracy:.2f}")
    fig.add_hline(y=ev.oracle_coverage, line_dash="dash", line_color="crimson",
                  annotation_text=f"prefix oracle coverage {ev.oracle_coverage:.2f}")
    fig.update_layout(title="random-prefix accuracy per seed", yaxis_title="accuracy", yaxis_range=[0, 1.05])
    return fig


class SinksTab:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def _prefix(self, n: Any, seed: Any, scale: Any, placement: str):
        from workbench.prefix import RandomPrefix

        n = parse_int(n, "prefix length", low=0, high=64)
        if n == 0:
            return None
        if placement not in PLACEMENTS:
            raise InputError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
        return RandomPrefix(n=n, seed=parse_int(seed, "prefix seed", low=0, high=SEED_MAX), scale=parse_float(scale, "prefix scale"), placement=placement)

    @handler
    def inspect(
        self, model: str, prompts: str, eps: Any = 0.3, k: Any = 4, prefix_n: Any = 2, prefix_seed: Any = 0,
        prefix_scale: Any = 1.0, placement: str = "start",
    ) -> tuple[Any, Any, Any, Any, str]:
        """-> (heatmap, sink-rate curves, first-token-norm curves, prefix comparison, summary)."""
        from workbench import sinks
        from workbench.viz import sinks as vs

        plist = parse_lines(prompts)
        e = parse_float(eps, "eps", low=0.0, high=1.0)
        kk = parse_int(k, "k (tracked key positions)", low=1, high=64)
        prefix = self._prefix(prefix_n, prefix_seed, prefix_scale, placement)
        with self.ctx.registry.use(model) as bench:
            if prefix is None:
                rep = sinks.inspect(bench, plist, e, k=kk)
                reports = {"no prefix": rep}
                comp = None
            else:
                comp = sinks.compare_prefix(bench, plist, prefix, e, k=kk)
                rep = comp.without
                reports = {"no prefix": comp.without, f"prefix n={prefix.n} seed={prefix.seed}": comp.with_prefix}
        heat = vs.sink_heatmap(rep)
        rate = vs.sink_rate_curve(reports)
        norm = vs.first_token_norm_curve(reports)
        cmp_fig = vs.prefix_comparison(comp) if comp is not None else None
        rows = [[name, r.mean_sink_rate, float(r.first_token_ratio.max())] for name, r in reports.items()]
        md = md_table(rows, ("run", f"sink rate (alpha_0 > {e:g})", "max first-token norm ratio"))
        if comp is not None:
            s = comp.summary()
            md += (f"\n\nattention on the first token: {s['mean_bos_mass_without']:.3f} without the prefix, "
                   f"{s['mean_bos_mass_with']:.3f} with it; the prefix takes {s['mean_prefix_mass']:.3f}")
        att = list(rep.attention_layers)
        md += ("\n\nevery layer has softmax attention" if len(att) == len(rep.layer_types)
               else f"\n\nattention layers: {att} (the other layers have no softmax attention: blank in the plots)")
        return heat, rate, norm, cmp_fig, md

    @handler
    def prefix_eval(
        self, model: str, task: str, n_problems: Any = 6, seeds: str = "0, 1, 2", prefix_n: Any = 2, prefix_scale: Any = 1.0,
        n_samples: Any = 0, max_new_tokens: Any = 48, progress: Any = gr.Progress(),
    ) -> tuple[Any, str]:
        """Multi-seed random-prefix run on a task -> (accuracy figure, summary)."""
        from workbench import prefix as wp
        from workbench.tasks import load_task

        if task not in TASKS:
            raise InputError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        n = parse_int(n_problems, "problems", low=1, high=500)
        seed_list = parse_int_list(seeds, "prefix seeds", low=0, high=SEED_MAX)
        plen = parse_int(prefix_n, "prefix length", low=1, high=64)
        scale = parse_float(prefix_scale, "prefix scale")
        ns = parse_int(n_samples, "sampled runs", low=0, high=32)
        mnt = parse_int(max_new_tokens, "max new tokens", low=1, high=1024)
        problems = load_task(task, n=n, seed=0)
        with self.ctx.registry.use(model) as bench:
            ev = wp.evaluate_prefix(bench, problems, seeds=seed_list, n_samples=ns, n=plen, scale=scale, max_new_tokens=mnt)
        s = ev.summary()
        rows = [[f"prefix seed {sd}", acc] for sd, acc in zip(ev.seeds, ev.per_seed_accuracy)]
        rows += [["mean over seeds", s["mean_accuracy"]], ["oracle coverage (any seed)", s["oracle_coverage"]],
                 ["greedy, no prefix", s["baseline_accuracy"]]]
        if ns:
            rows += [["sampled, mean", s["sampled_mean_accuracy"]], ["sampled coverage", s["sampled_coverage"]]]
        return prefix_eval_figure(ev), md_table(rows, ("run", "accuracy")) + f"\n\n{len(problems)} problems from `{task}`"


def build_ui(ctx: AppContext) -> SinksTab:
    tab = SinksTab(ctx)
    gr.Markdown("Attention sinks per layer and head, with and without a random prefix of embedding-scale vectors.")
    with gr.Row():
        prompts = gr.Textbox(DEFAULT_PROMPTS, lines=3, label="prompts (one per line)", scale=3)
        with gr.Column(scale=2):
            with gr.Row():
                eps = gr.Number(0.3, label="eps (sink threshold)")
                k = gr.Number(4, precision=0, label="tracked key positions k")
            with gr.Row():
                pn = gr.Number(2, precision=0, label="prefix length (0: none)")
                pseed = gr.Number(0, precision=0, label="prefix seed")
                pscale = gr.Number(1.0, label="prefix scale (x embedding RMS)")
                placement = gr.Dropdown(list(PLACEMENTS), value="start", label="placement")
    go_btn = gr.Button("Inspect sinks", variant="primary")
    summary = gr.Markdown(elem_id="sinks-summary")
    with gr.Row():
        heat = gr.Plot(label="sink heatmap (layer x head)", elem_id="sinks-heatmap")
        cmp_plot = gr.Plot(label="where the sink mass goes", elem_id="sinks-prefix")
    with gr.Row():
        rate = gr.Plot(label="sink rate per layer", elem_id="sinks-rate")
        norm = gr.Plot(label="first-token norm", elem_id="sinks-norm")
    go_btn.click(tab.inspect, [ctx.model, prompts, eps, k, pn, pseed, pscale, placement], [heat, rate, norm, cmp_plot, summary],
                 api_name="inspect_sinks")
    gr.Markdown("### Multi-seed random prefix on a task")
    with gr.Row():
        task = gr.Dropdown(list(TASKS), value="arith-easy", label="task")
        n_problems = gr.Number(6, precision=0, label="problems")
        seeds = gr.Textbox("0, 1, 2", label="prefix seeds")
        ev_n = gr.Number(2, precision=0, label="prefix length")
        ev_scale = gr.Number(1.0, label="prefix scale")
        n_samples = gr.Number(0, precision=0, label="sampled runs (no prefix)")
        ev_tokens = gr.Number(48, precision=0, label="max new tokens")
    ev_btn = gr.Button("Evaluate prefixes")
    ev_plot = gr.Plot(label="accuracy per seed", elem_id="sinks-eval-plot")
    ev_md = gr.Markdown(elem_id="sinks-eval")
    ev_btn.click(tab.prefix_eval, [ctx.model, task, n_problems, seeds, ev_n, ev_scale, n_samples, ev_tokens], [ev_plot, ev_md],
                 api_name="prefix_eval")
    return tab

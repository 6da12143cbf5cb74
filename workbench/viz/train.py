"""Training metrics -> Plotly figures (the trainer's `on_step` rows or metrics.jsonl), and
a latent recipe's recorded trajectories (`train.trajectories.Trajectories`) beside them.
No model calls."""

from __future__ import annotations

from typing import Any, Sequence


def loss_figure(history: Sequence[dict[str, Any]], title: str = "training loss") -> Any:
    """Loss per optimizer step; a run made of stages (COCONUT) gets one line per stage."""
    import plotly.graph_objects as go

    fig = go.Figure()
    stages = sorted({r.get("stage") for r in history if r.get("stage") is not None})
    if stages:
        for s in stages:
            rows = [r for r in history if r.get("stage") == s]
            fig.add_trace(go.Scatter(x=list(range(len(rows))), y=[r.get("loss") for r in rows], mode="lines", name=f"stage {int(s)}"))
        xlab = "optimizer step within the stage"
    else:
        fig.add_trace(go.Scatter(x=[r.get("step") for r in history], y=[r.get("loss") for r in history], mode="lines+markers", name="loss"))
        xlab = "optimizer step"
    fig.update_layout(title=title, xaxis_title=xlab, yaxis_title="loss")
    return fig


def _short(text: str, n: int = 70) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _tok(t: str) -> str:
    return repr(t)[1:-1] if t.strip() != t or not t else t


def trajectories_figure(traj: Any, which: str = "latent", title: str = "latent steps across checkpoints") -> Any:
    """Per probe (one row each): left, the 2-D PCA path of its latent steps at every
    checkpoint (one line per checkpoint, dark to light as training goes on, each path's
    first step a star, the newest path's points labelled with their step index; `which`: "latent", the vectors fed, or "hidden", the
    states they came from; the PCA is fitted over all checkpoints of that probe, so the
    paths share axes); right, a heat table of the top next-token readout per latent step
    (columns) per checkpoint (rows), coloured by its probability, with ✓ / ✗ for the
    checkpoint's answer. An empty `traj` gives a figure that says none are recorded yet."""
    import plotly.graph_objects as go
    from plotly.colors import sample_colorscale
    from plotly.subplots import make_subplots

    cks = list(getattr(traj, "checkpoints", []) or [])
    n = traj.n_probes if cks else 0
    if n == 0:
        fig = go.Figure()
        fig.add_annotation(text="no trajectories recorded yet (one per checkpoint, probe_n > 0)", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        fig.update_layout(title=title, xaxis=dict(visible=False), yaxis=dict(visible=False), height=260)
        return fig
    titles = []
    for i in range(n):
        last = next((c.probes[i] for c in reversed(cks) if i < len(c.probes)), None)
        q = _short(last.question if last else "")
        titles += [f"probe {i}: PCA of the {which} path — {q}", f"probe {i}: top readout per step (answer {last.answer if last else '?'})"]
    fig = make_subplots(rows=n, cols=2, subplot_titles=titles, column_widths=[0.45, 0.55], horizontal_spacing=0.08,
                        vertical_spacing=min(0.12, 0.35 / max(n - 1, 1)) if n > 1 else 0.1)  # fmt: skip
    colors = sample_colorscale("Viridis", [0.85 * j / max(len(cks) - 1, 1) for j in range(len(cks))])
    for i in range(n):
        paths, explained = traj.pca(i, which)
        for j, (c, Z) in enumerate(zip(cks, paths)):
            p = c.probes[i] if i < len(c.probes) else None
            if p is None or len(Z) == 0:
                continue
            hover = [f"{c.label}, latent step {s}<br>top: {_tok(p.top_tokens[s][0]) if p.top_tokens[s] else ''} ({p.top_probs[s][0]:.2f})" if p.top_probs[s] else f"{c.label}, step {s}" for s in range(p.n_steps)]
            last_ck = j == len(cks) - 1  # step numbers on the newest path only: on every path they pile up
            fig.add_trace(go.Scatter(
                x=Z[:, 0], y=Z[:, 1], mode="lines+markers+text" if last_ck else "lines+markers",
                text=[str(s) for s in range(len(Z))] if last_ck else None, textposition="top center",
                hovertext=hover, hoverinfo="text", line=dict(color=colors[j], width=1.5),
                marker=dict(color=colors[j], size=[13] + [8] * (len(Z) - 1), symbol=["star"] + ["circle"] * (len(Z) - 1)),  # the start: a star
                name=c.label, legendgroup=c.label, showlegend=i == 0,
            ), row=i + 1, col=1)  # fmt: skip
        fig.update_xaxes(title_text=f"PC1 ({explained[0]:.0%})", row=i + 1, col=1)
        fig.update_yaxes(title_text=f"PC2 ({explained[1]:.0%})", row=i + 1, col=1)
        width = max((c.probes[i].n_steps for c in cks if i < len(c.probes)), default=0)
        z, text, rows = [], [], []
        for c in cks:
            p = c.probes[i] if i < len(c.probes) else None
            steps = p.n_steps if p is not None else 0
            z.append([p.top_probs[s][0] if s < steps and p.top_probs[s] else None for s in range(width)])
            text.append([_tok(p.top_tokens[s][0]) if s < steps and p.top_tokens[s] else "" for s in range(width)])
            rows.append(f"{c.label} {'✓' if p is not None and p.correct else '✗'}")
        fig.add_trace(go.Heatmap(
            z=z, text=text, texttemplate="%{text}", x=list(range(width)), y=rows, colorscale="Blues", zmin=0, zmax=1,
            showscale=i == 0, colorbar=dict(title="p(top)", len=0.3, y=1.0, yanchor="top"),
            hovertemplate="%{y}, latent step %{x}<br>top: %{text} (%{z:.2f})<extra></extra>",
        ), row=i + 1, col=2)  # fmt: skip
        fig.update_xaxes(title_text="latent step", dtick=1, row=i + 1, col=2)
        fig.update_yaxes(autorange="reversed", row=i + 1, col=2)
    fig.update_layout(title=title, height=max(360, 330 * n), legend=dict(title="checkpoint"))
    return fig


__all__ = ["loss_figure", "trajectories_figure"]

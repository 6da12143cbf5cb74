"""Latent-reasoning figures (Plotly): per-step top-token bars, entropy and norm per step,
PCA trajectory of latent steps vs an explicit chain of thought. No model calls."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots


def _dec(tokenizer: Any, i) -> str:
    return repr(tokenizer.decode([int(i)]))


def top_tokens_figure(trace: Any, tokenizer: Any, k: int = 5, source: str = "next") -> go.Figure:
    """One bar group per latent step: the top-k next tokens ("next"), the superposition
    weights ("superposition") or soft thinking's mixture ("mixture")."""
    if source not in ("next", "superposition", "mixture"):
        raise ValueError(f"source must be next, superposition or mixture, got {source!r}")
    n = max(len(trace.steps), 1)
    fig = make_subplots(rows=n, cols=1, subplot_titles=[f"step {s.index}" for s in trace.steps] or ["no latent steps"])
    for r, s in enumerate(trace.steps, start=1):
        if source == "next":
            ids, vals = s.top_ids[:k], s.top_probs[:k]
        elif source == "superposition":
            if s.superposition is None:
                continue
            ids, vals = s.superposition.ids[:k], s.superposition.weights[:k]
        else:
            if s.mixture_ids is None:
                continue
            ids, vals = s.mixture_ids[:k], s.mixture_weights[:k]
        fig.add_trace(go.Bar(x=[float(v) for v in vals], y=[_dec(tokenizer, i) for i in ids], orientation="h", showlegend=False), row=r, col=1)
    fig.update_layout(title=f"{trace.method}: {source} per latent step", height=160 * n + 80)
    return fig


def entropy_norm_figure(trace: Any) -> go.Figure:
    """Per latent step, one panel each on a shared x axis: the entropy of the next-token
    distribution (nats), the superposition's effective token count when the policy has
    one, and the latent norm relative to the mean token-embedding norm. Every y axis is
    titled and starts at 0, so a 5% change in the norm looks like 5%."""
    x = [s.index for s in trace.steps]
    has_sup = bool(trace.steps) and trace.steps[0].superposition is not None
    panels = [("entropy (nats)", [s.entropy for s in trace.steps])]
    if has_sup:
        panels.append(("effective tokens", [s.superposition.n_eff for s in trace.steps]))
    panels.append(("|latent| / |token embedding|", [s.norm_ratio for s in trace.steps]))
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.06)
    for i, (name, y) in enumerate(panels, start=1):
        fig.add_trace(go.Scatter(x=x, y=y, name=name, mode="lines+markers", showlegend=False), row=i, col=1)
        fig.update_yaxes(title_text=name, rangemode="tozero", row=i, col=1)
    fig.update_xaxes(title_text="latent step", row=len(panels), col=1)
    fig.update_layout(title=f"{trace.method}: entropy and norm per latent step (exit: {trace.exit})", height=220 * len(panels) + 80)
    return fig


def _step_labels(n: int, most: int = 12) -> list[str]:
    """Point labels for a path of n steps: every step when few, else every k-th (and the
    last), so the labels do not pile on one another."""
    k = max(1, -(-n // most))
    return [str(i) if i % k == 0 or i == n - 1 else "" for i in range(n)]


def trajectory_figure(traj: Any) -> go.Figure:
    """PCA of latent steps and explicit-CoT hidden states in one plane (`readout.trajectory`):
    each path with a start marker (circle) and an end marker (square); latent step numbers
    label the points (thinned when many)."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=traj.cot[:, 0], y=traj.cot[:, 1], mode="lines+markers", name="explicit CoT", text=traj.cot_tokens,
                             marker=dict(size=6), line=dict(width=1)))  # fmt: skip
    n = len(traj.latent)
    fig.add_trace(go.Scatter(x=traj.latent[:, 0], y=traj.latent[:, 1], mode="lines+markers+text", name="latent steps",
                             text=_step_labels(n), textposition="top center", hovertext=traj.latent_labels,
                             marker=dict(size=10, symbol="diamond")))  # fmt: skip
    for pts, what in ((traj.latent, "latent"), (traj.cot, "CoT")):
        if len(pts):
            fig.add_trace(go.Scatter(x=[pts[0, 0]], y=[pts[0, 1]], mode="markers", name=f"{what} start",
                                     marker=dict(size=14, symbol="circle-open", line=dict(width=2))))  # fmt: skip
            fig.add_trace(go.Scatter(x=[pts[-1, 0]], y=[pts[-1, 1]], mode="markers", name=f"{what} end",
                                     marker=dict(size=14, symbol="square-open", line=dict(width=2))))  # fmt: skip
    ev = traj.explained
    fig.update_layout(title="latent path vs text path (PCA)", xaxis_title=f"PC1 ({ev[0]:.0%})", yaxis_title=f"PC2 ({ev[1]:.0%})")
    return fig


def step_figures(trace: Any, tokenizer: Any, k: int = 5) -> list[go.Figure]:
    figs = [top_tokens_figure(trace, tokenizer, k), entropy_norm_figure(trace)]
    if trace.steps and trace.steps[0].superposition is not None:
        figs.append(top_tokens_figure(trace, tokenizer, k, source="superposition"))
    if trace.steps and trace.steps[0].mixture_ids is not None:
        figs.append(top_tokens_figure(trace, tokenizer, k, source="mixture"))
    return figs

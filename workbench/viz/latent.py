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
    """Entropy of the next-token distribution and latent norm (relative to the mean token
    embedding norm) per step; superposition effective token count when present."""
    x = [s.index for s in trace.steps]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=x, y=[s.entropy for s in trace.steps], name="entropy (nats)", mode="lines+markers"), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=[s.norm_ratio for s in trace.steps], name="|latent| / |token embedding|", mode="lines+markers"), secondary_y=True)
    if trace.steps and trace.steps[0].superposition is not None:
        fig.add_trace(go.Scatter(x=x, y=[s.superposition.n_eff for s in trace.steps], name="effective tokens", mode="lines+markers"),
                      secondary_y=False)  # fmt: skip
    fig.update_layout(title=f"{trace.method}: entropy and norm per latent step (exit: {trace.exit})", xaxis_title="latent step")
    return fig


def trajectory_figure(traj: Any) -> go.Figure:
    """PCA of latent steps and explicit-CoT hidden states in one plane (`readout.trajectory`)."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=traj.cot[:, 0], y=traj.cot[:, 1], mode="lines+markers", name="explicit CoT", text=traj.cot_tokens,
                             marker=dict(size=6), line=dict(width=1)))  # fmt: skip
    fig.add_trace(go.Scatter(x=traj.latent[:, 0], y=traj.latent[:, 1], mode="lines+markers+text", name="latent steps",
                             text=[str(i) for i in range(len(traj.latent))], hovertext=traj.latent_labels,
                             marker=dict(size=10, symbol="diamond")))  # fmt: skip
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

"""Steering figures (Plotly): the layer sweep. No model calls, no gradio."""

from __future__ import annotations

import math
from typing import Any

# (row field, panel title) in panel order
PANELS = (
    ("magnitude", "magnitude ||v||"),
    ("consistency", "cosine consistency"),
    ("probe_accuracy", "held-out probe accuracy"),
    ("gap", "projection gap (residual std units)"),
)


def sweep_figure(result: Any, title: str | None = None):
    """Four stacked panels (magnitude, consistency, probe accuracy, gap) against layer, the
    best layer marked in each. ``result``: a ``SweepResult`` (or anything with ``to_rows()``
    and ``best_layer``, e.g. a ``LayerSweep``)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = result.to_rows()
    if not rows:
        raise ValueError("the sweep has no layers to plot")
    best = result.best_layer
    method = rows[0].get("method", "")
    layers = [r["layer"] for r in rows]
    fig = make_subplots(rows=len(PANELS), cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=[t for _, t in PANELS])
    for i, (key, label) in enumerate(PANELS, start=1):
        ys = [_finite(r[key]) for r in rows]
        fig.add_trace(
            go.Scatter(x=layers, y=ys, mode="lines+markers", name=label, showlegend=False,
                       hovertemplate=f"layer %{{x}}<br>{label}: %{{y:.4g}}<extra></extra>"),
            row=i, col=1,
        )
        yb = next(y for L, y in zip(layers, ys) if L == best)
        fig.add_trace(
            go.Scatter(x=[best], y=[yb], mode="markers", marker=dict(size=12, symbol="star", color="crimson"),
                       name=f"best layer {best}", showlegend=(i == 1),
                       hovertemplate=f"best layer {best}<br>{label}: %{{y:.4g}}<extra></extra>"),
            row=i, col=1,
        )
        fig.add_vline(x=best, line=dict(color="crimson", dash="dot", width=1), row=i, col=1)
    fig.update_yaxes(range=[0, 1.02], row=3, col=1)
    fig.update_xaxes(title_text="layer (block output)", row=len(PANELS), col=1)
    fig.update_layout(
        title=title or f"layer sweep ({method}): best layer {best}",
        height=220 * len(PANELS),
        margin=dict(l=60, r=20, t=70, b=40),
    )
    return fig


def _finite(x: float) -> float | None:
    """Plotly cannot draw inf; show it as a gap."""
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None

"""Attention-sink figures: `SinkReport` / `PrefixSinkComparison` -> Plotly figures.
No model calls. Layers without softmax attention (Qwen3.5 Gated DeltaNet) are NaN in the
reports and shown as gaps, labelled, never as zeros."""

from __future__ import annotations

from typing import Any, Mapping

import plotly.graph_objects as go
import torch

_METRICS = {
    "alpha": ("alpha_0 (sink score of key 0)", lambda r: r.alpha),
    "first_k_mass": ("attention mass on the first k keys", lambda r: r.first_k_mass),
}


def _select(x: torch.Tensor, prompt: int | None) -> torch.Tensor:
    if prompt is None:
        return x.mean(0)
    if not -x.shape[0] <= prompt < x.shape[0]:
        raise ValueError(f"prompt index {prompt} out of range for {x.shape[0]} prompts")
    return x[prompt]


def _linear_note(fig: go.Figure, report: Any) -> None:
    lin = [i for i, t in enumerate(report.layer_types) if t != "full_attention"]
    if lin:
        fig.add_annotation(
            text=f"{len(lin)} layers without softmax attention (blank): {lin[:12]}{' ...' if len(lin) > 12 else ''}",
            xref="paper", yref="paper", x=0, y=1.06, showarrow=False, font={"size": 11},
        )


def sink_heatmap(report: Any, metric: str = "alpha", prompt: int | None = None) -> go.Figure:
    """Layer x head heatmap of `metric` ("alpha" or "first_k_mass"), for one prompt or the
    mean over prompts (default)."""
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {list(_METRICS)}, got {metric!r}")
    label, get = _METRICS[metric]
    z = _select(get(report), prompt)  # [L, H]
    if metric == "first_k_mass":
        label = f"attention mass on the first {report.k} keys"
    fig = go.Figure(
        go.Heatmap(
            z=z.tolist(),
            x=list(range(z.shape[1])),
            y=list(range(z.shape[0])),
            colorscale="Viridis",
            zmin=0.0,
            zmax=1.0,
            colorbar={"title": metric},
            hovertemplate="layer %{y}, head %{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(title=label + ("" if prompt is None else f" (prompt {prompt})"), xaxis_title="head", yaxis_title="layer")
    _linear_note(fig, report)
    return fig


def sink_rate_curve(reports: Any | Mapping[str, Any]) -> go.Figure:
    """Per-layer sink rate (share of heads with alpha_0 > eps), mean over prompts; one line
    per report when given a mapping name -> report."""
    reports = reports if isinstance(reports, Mapping) else {"": reports}
    fig = go.Figure()
    for name, r in reports.items():
        y = r.layer_sink_rate.mean(0)
        fig.add_trace(go.Scatter(x=list(range(len(y))), y=y.tolist(), mode="lines+markers", name=name or f"eps={r.eps}", connectgaps=False))
    first = next(iter(reports.values()))
    fig.update_layout(title=f"sink rate per layer (alpha_0 > {first.eps})", xaxis_title="layer", yaxis_title="share of heads", yaxis_range=[0, 1.02])
    _linear_note(fig, first)
    return fig


def first_token_norm_curve(reports: Any | Mapping[str, Any], log: bool = True) -> go.Figure:
    """Massive activations: first position's residual norm / median token norm, per layer."""
    reports = reports if isinstance(reports, Mapping) else {"": reports}
    fig = go.Figure()
    for name, r in reports.items():
        y = r.first_token_ratio.mean(0)
        fig.add_trace(go.Scatter(x=list(range(len(y))), y=y.tolist(), mode="lines+markers", name=name or "first token"))
    fig.update_layout(title="first-token residual norm / median token norm", xaxis_title="layer", yaxis_title="ratio", yaxis_type="log" if log else "linear")
    return fig


def prefix_comparison(comp: Any) -> go.Figure:
    """Per layer: attention on the prompt's first token without the prefix, with it, and the
    share the prefix vectors take (means over prompts and heads)."""
    pl = comp.per_layer()
    x = list(range(len(pl["prefix_mass"])))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=pl["bos_mass_without"].tolist(), mode="lines+markers", name="first token, no prefix"))
    fig.add_trace(go.Scatter(x=x, y=pl["bos_mass_with"].tolist(), mode="lines+markers", name="first token, with prefix"))
    fig.add_trace(go.Scatter(x=x, y=pl["prefix_mass"].tolist(), mode="lines+markers", name=f"prefix positions {list(comp.prefix_positions)}"))
    fig.update_layout(title="where the sink mass goes with a random prefix", xaxis_title="layer", yaxis_title="attention mass (queries after the tracked keys)", yaxis_range=[0, 1.02])
    _linear_note(fig, comp.without)
    return fig

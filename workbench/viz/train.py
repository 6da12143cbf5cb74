"""Training metrics -> Plotly figures (the trainer's `on_step` rows or metrics.jsonl)."""

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


__all__ = ["loss_figure"]

"""Result dataclass -> Plotly figure. No model calls, no gradio: one module per topic
(`viz.steering`, `viz.sinks`, `viz.latent`, `viz.train`), re-exported here lazily."""

from __future__ import annotations

import importlib
from typing import Any

_TOPICS = ("steering", "sinks", "latent", "train", "lens")


def __getattr__(name: str) -> Any:
    if name in _TOPICS:
        return importlib.import_module(f".{name}", __name__)
    for topic in _TOPICS:
        try:
            mod = importlib.import_module(f".{topic}", __name__)
        except ModuleNotFoundError:
            continue
        if hasattr(mod, name):
            return getattr(mod, name)
    raise AttributeError(f"module 'workbench.viz' has no attribute {name!r}")

"""Residual-stream edits and the scope that applies them.

An edit changes the output of one decoder block (the residual stream after block `layer`).
Edits are small frozen dataclasses with a pure `__call__(hidden, phase) -> hidden`; the
`EditScope` context manager installs them as forward hooks on the transformers module and
removes them in `finally`, so a model is never left edited, also when generation raises.

`phase` is "prompt" while the prompt (and any prefix) is being processed and "generated" on
every later step; `where` on an edit picks the phases it acts on ("all" by default).

Why plain forward hooks and not an nnsight trace per step: the generation loop runs one
forward per token, and a hook costs nothing measurable there, while a trace per step adds a
fixed cost per token (see `workbench bench overhead`). Captures and analyses still go
through nnsight (`workbench.trace`); both paths apply the very same `__call__`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import torch
from torch import Tensor

from .arch import decoder_layers

PHASES = ("prompt", "generated")
WHERE = ("all", "prompt", "generated")


class Edit(Protocol):
    layer: int

    def __call__(self, hidden: Tensor, phase: str) -> Tensor:  # hidden: [batch, seq, d_model]
        ...


def _check_vector(vector: Tensor, name: str) -> Tensor:
    if not isinstance(vector, Tensor):
        vector = torch.as_tensor(vector)
    if vector.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector of length d_model, got shape {tuple(vector.shape)}")
    if not torch.isfinite(vector).all():
        bad = int((~torch.isfinite(vector)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf entries")
    return vector


def _check_where(where: str) -> str:
    if where not in WHERE:
        raise ValueError(f"where must be one of {WHERE}, got {where!r}")
    return where


@dataclass(frozen=True)
class AddVector:
    """h <- h + scale * vector at the output of block `layer` (ActAdd / CAA)."""

    layer: int
    vector: Tensor
    scale: float = 1.0
    where: str = "all"

    def __post_init__(self):
        object.__setattr__(self, "vector", _check_vector(self.vector, f"steering vector for layer {self.layer}"))
        if not math.isfinite(float(self.scale)):
            raise ValueError(f"scale must be a finite number, got {self.scale!r}")
        _check_where(self.where)

    def __call__(self, hidden: Tensor, phase: str) -> Tensor:
        if self.where != "all" and self.where != phase:
            return hidden
        v = self.vector.to(device=hidden.device, dtype=hidden.dtype)
        return hidden + float(self.scale) * v


@dataclass(frozen=True)
class Ablate:
    """Directional ablation: h <- h - (h . u) u with u the unit direction (refusal-direction
    style); `strength` < 1 removes only part of the component."""

    layer: int
    direction: Tensor
    strength: float = 1.0
    where: str = "all"

    def __post_init__(self):
        d = _check_vector(self.direction, f"ablation direction for layer {self.layer}").float()
        n = d.norm()
        if n == 0:
            raise ValueError(f"ablation direction for layer {self.layer} is the zero vector")
        object.__setattr__(self, "direction", d / n)
        _check_where(self.where)

    def __call__(self, hidden: Tensor, phase: str) -> Tensor:
        if self.where != "all" and self.where != phase:
            return hidden
        u = self.direction.to(device=hidden.device, dtype=hidden.dtype)
        return hidden - float(self.strength) * (hidden @ u).unsqueeze(-1) * u


@dataclass
class EditScope:
    """Installed edits; `phase` is read by the hooks at call time."""

    edits: tuple
    phase: str = "prompt"
    handles: list = field(default_factory=list)

    def set_phase(self, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        self.phase = phase

    def install(self, hf: torch.nn.Module) -> None:
        """Hook the edits onto `hf`'s decoder blocks (once; `remove` undoes it)."""
        if self.handles:
            return
        layers = decoder_layers(hf)
        by_layer: dict[int, list] = {}
        for e in self.edits:
            by_layer.setdefault(e.layer, []).append(e)
        for layer, es in sorted(by_layer.items()):
            self.handles.append(layers[layer].register_forward_hook(_hook(tuple(es), self)))

    def remove(self) -> None:
        """Uninstall the hooks now (the fast decode path applies the edits itself)."""
        for h in self.handles:
            h.remove()
        self.handles.clear()


def validate_edits(edits: Sequence[Edit], n_layers: int, d_model: int) -> tuple:
    out = []
    for e in edits or ():
        layer = getattr(e, "layer", None)
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise ValueError(f"edit {type(e).__name__} targets layer {layer!r}; valid layers are 0..{n_layers - 1}")
        for name in ("vector", "direction"):
            v = getattr(e, name, None)
            if v is not None and v.shape[-1] != d_model:
                raise ValueError(
                    f"{type(e).__name__} at layer {layer}: {name} has size {v.shape[-1]}, but this model's d_model is {d_model}"
                )
        out.append(e)
    return tuple(out)


def _hook(edits_here: tuple, scope: EditScope):
    def hook(module, args, output):
        if isinstance(output, tuple):
            h = output[0]
            for e in edits_here:
                h = e(h, scope.phase)
            return (h, *output[1:])
        h = output
        for e in edits_here:
            h = e(h, scope.phase)
        return h

    return hook


@contextmanager
def apply_edits(hf: torch.nn.Module, edits: Sequence[Edit], phase: str = "prompt") -> Iterator[EditScope]:
    """Install `edits` on `hf` for the duration of the `with` block (undone in `finally`)."""
    layers = decoder_layers(hf)
    d_model = hf.get_input_embeddings().weight.shape[-1]
    scope = EditScope(validate_edits(edits, len(layers), d_model), phase)
    try:
        scope.install(hf)
        yield scope
    finally:
        scope.remove()

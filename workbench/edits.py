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

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import torch
from torch import Tensor

from .arch import decoder_layers
from .errors import InputError
from .inputs import check_integer, check_number

PHASES = ("prompt", "generated")
WHERE = ("all", "prompt", "generated")


class Edit(Protocol):
    layer: int

    def __call__(self, hidden: Tensor, phase: str) -> Tensor:  # hidden: [batch, seq, d_model]
        ...


def _check_vector(vector: Tensor, name: str) -> Tensor:
    if not isinstance(vector, Tensor):
        if isinstance(vector, (str, bytes, dict)) or vector is None:
            raise InputError(f"{name} must be a 1-D tensor of length d_model, got {type(vector).__name__} {vector!r:.60}")
        try:
            vector = torch.as_tensor(vector)
        except (TypeError, ValueError, RuntimeError) as e:
            raise InputError(f"{name} must be a 1-D tensor of length d_model, got {type(vector).__name__} ({e})") from None
    if vector.ndim != 1:
        raise InputError(f"{name} must be a 1-D vector of length d_model, got shape {tuple(vector.shape)}")
    if vector.dtype == torch.bool or vector.is_complex():
        raise InputError(f"{name} must hold real numbers, got dtype {vector.dtype}")
    if vector.device.type != "meta" and not torch.isfinite(vector).all():
        bad = int((~torch.isfinite(vector)).sum())
        raise InputError(f"{name} contains {bad} NaN/inf entries")
    return vector


def _check_where(where: str) -> str:
    if not isinstance(where, str) or where not in WHERE:
        raise InputError(f"where must be one of {WHERE}, got {where!r}")
    return where


def _check_edit_layer(layer, kind: str) -> int:
    return check_integer(layer, f"{kind} layer", low=0)


@dataclass(frozen=True)
class AddVector:
    """h <- h + scale * vector at the output of block `layer` (ActAdd / CAA)."""

    layer: int
    vector: Tensor
    scale: float = 1.0
    where: str = "all"

    def __post_init__(self):
        object.__setattr__(self, "layer", _check_edit_layer(self.layer, "AddVector"))
        object.__setattr__(self, "vector", _check_vector(self.vector, f"steering vector for layer {self.layer}"))
        object.__setattr__(self, "scale", check_number(self.scale, "scale", "a finite number"))
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
        object.__setattr__(self, "layer", _check_edit_layer(self.layer, "Ablate"))
        d = _check_vector(self.direction, f"ablation direction for layer {self.layer}").float()
        n = d.norm()
        if n == 0:
            raise InputError(f"ablation direction for layer {self.layer} is the zero vector")
        if not torch.isfinite(n):
            raise InputError(f"ablation direction for layer {self.layer} is too large to normalise (norm overflows float32)")
        object.__setattr__(self, "strength", check_number(self.strength, "ablation strength", "a finite number"))
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
            raise InputError(f"phase must be one of {PHASES}, got {phase!r}")
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


@dataclass(frozen=True)
class RowEdit:
    """`inner` acting only on the batch rows where `rows` ([batch] bool) is true, the other
    rows passing through unchanged: one batched generation can carry an unsteered and a
    steered copy of a prompt side by side, in lock step through the one loop
    (`steering.compare_stream`)."""

    inner: Edit
    rows: Tensor

    @property
    def layer(self) -> int:
        return self.inner.layer

    @property
    def vector(self) -> Tensor | None:  # checked against d_model like the inner edit's
        return getattr(self.inner, "vector", None)

    @property
    def direction(self) -> Tensor | None:
        return getattr(self.inner, "direction", None)

    def __call__(self, hidden: Tensor, phase: str) -> Tensor:
        if hidden.shape[0] != self.rows.shape[0]:
            raise InputError(f"RowEdit has a mask for {self.rows.shape[0]} rows, but the batch has {hidden.shape[0]}")
        edited = self.inner(hidden, phase)
        if edited is hidden:
            return hidden
        m = self.rows.to(hidden.device)[:, None, None]
        return torch.where(m, edited, hidden)


def only_rows(edits: Sequence[Edit], rows: Sequence[bool]) -> list[RowEdit]:
    """Each of `edits` restricted to the batch rows where `rows` is true (`RowEdit`)."""
    mask = torch.as_tensor(list(rows), dtype=torch.bool)
    if mask.ndim != 1 or mask.numel() == 0:
        raise InputError(f"rows must be a non-empty list of booleans, one per batch row, got {rows!r:.60}")
    return [RowEdit(e, mask) for e in edits]


def validate_edits(edits: Sequence[Edit], n_layers: int, d_model: int) -> tuple:
    if edits is None:
        return ()
    if isinstance(edits, (str, bytes)) or not isinstance(edits, (list, tuple)):
        if not hasattr(edits, "__iter__") or isinstance(edits, (str, bytes, Tensor, dict)):
            raise InputError(
                f"edits must be a list of edits (AddVector, Ablate, or objects with .layer and __call__(hidden, phase)), "
                f"got {type(edits).__name__} {edits!r:.60}"
            )
    out = []
    for i, e in enumerate(edits):
        layer = getattr(e, "layer", None)
        if not callable(e) or layer is None:
            raise InputError(
                f"edits[{i}] must be an edit (AddVector, Ablate, or an object with .layer and __call__(hidden, phase)), "
                f"got {type(e).__name__} {e!r:.60}"
            )
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise InputError(f"edit {type(e).__name__} targets layer {layer!r}; valid layers are 0..{n_layers - 1}")
        for name in ("vector", "direction"):
            v = getattr(e, name, None)
            if v is not None and v.shape[-1] != d_model:
                raise InputError(
                    f"{type(e).__name__} at layer {layer}: {name} has size {v.shape[-1]}, but this model's d_model is {d_model}"
                )
        out.append(e)
    return tuple(out)


def describe_edit(e) -> str:
    """A one-line description of an edit for messages: kind, layer, scale / strength and
    the vector's norm (never the vector itself)."""
    kind = type(e).__name__
    parts = [f"layer {getattr(e, 'layer', '?')}"]
    for attr in ("scale", "strength"):
        v = getattr(e, attr, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(f"{attr} {v:g}")
    vec = getattr(e, "vector", None)
    if isinstance(vec, Tensor) and vec.device.type != "meta":
        parts.append(f"|vector| {float(vec.float().norm()):.3g}")
    where = getattr(e, "where", "all")
    if where != "all":
        parts.append(f"where {where!r}")
    return f"{kind}({', '.join(parts)})"


def describe_edits(edits: Sequence[Edit]) -> str:
    """`describe_edit` of every edit, joined; "none" for no edits."""
    return "; ".join(describe_edit(e) for e in edits) if edits else "none"


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

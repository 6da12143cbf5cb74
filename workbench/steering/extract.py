"""Contrastive extraction: pairs of prompts -> residual activations -> per-layer directions.

One batched capture (``workbench.trace.capture``) reads every requested layer for the
positive and the negative side together, so a sweep over all layers costs one pass over the
prompts, not one per layer or per pair. The math (``methods``) and the quality numbers
(``metrics``) are pure functions of the captured tensors.

Layer ``L`` is the output of decoder block ``L`` (the residual stream after it), the layer a
``SteeringVector`` key names. Position: ``-1`` (default) is the last prompt token; any int
counts like Python indexing within each prompt's real tokens (left padding aware); a
``slice`` averages the selected tokens of each prompt; ``"mean"`` averages all its tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from torch import Tensor

from ..errors import InputError
from ..trace import check_layers
from .methods import Method, get_method, mean_diff
from .metrics import LayerQuality, SweepResult, layer_quality, split_pairs
from .vector import SteeringVector, creation_metadata

Position = int | slice | str


# --------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class PairList:
    """Validated contrast pairs. positives[i] and negatives[i] form pair i.

    probe_set: ``"<name>.v<N>"`` when the pairs came from a probe set, else None.
    test_index: indices of the set's own held-out pairs (``split == "test"``), if any.
    """

    positives: list[str]
    negatives: list[str]
    probe_set: str | None = None
    test_index: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.positives)


def pairs_from_lists(positives: Sequence[str], negatives: Sequence[str]) -> list[tuple[str, str]]:
    """Zip two equally long lists into pairs; refuses an unbalanced pair list."""
    positives, negatives = list(positives), list(negatives)
    if len(positives) != len(negatives):
        raise InputError(
            f"unbalanced pair list: {len(positives)} positive vs {len(negatives)} negative prompts; "
            f"each positive needs exactly one matched negative"
        )
    return list(zip(positives, negatives))


def resolve_pairs(pairs: Any, split: str | None = None) -> PairList:
    """Accept ``[(positive, negative), ...]``, a ``probes.ProbeSet`` or a probe-set name/path.

    ``split`` ("train" / "test") restricts a probe set to that split; None keeps all pairs.
    Raises ValueError for an empty or unbalanced list, non-string or empty prompts.
    """
    probe_set = None
    test_index: list[int] = []
    if isinstance(pairs, str):
        import probes

        pairs = probes.load_set(pairs)
    if hasattr(pairs, "pairs") and hasattr(pairs, "as_tuples"):  # a probes.ProbeSet
        ps = pairs
        probe_set = getattr(ps, "key", getattr(ps, "name", None))
        chosen = ps.split(split) if split is not None else list(ps.pairs)
        test_index = [i for i, p in enumerate(chosen) if p.split == "test"]
        pairs = [(p.positive, p.negative) for p in chosen]
    elif split is not None:
        raise InputError(f"split={split!r} needs a probe set; plain pair lists have no split")
    if pairs is None:
        raise InputError("pairs is None; give a list of (positive, negative) prompts or a probe set")
    try:
        items = list(pairs)
    except TypeError:
        raise InputError(
            f"pairs must be a list of (positive, negative) tuples or a probe set, got {type(pairs).__name__}"
        ) from None
    if not items:
        raise InputError("the pair list is empty; give at least 2 (positive, negative) pairs")
    pos, neg = [], []
    for i, item in enumerate(items):
        if isinstance(item, str) or not isinstance(item, (tuple, list)):
            raise InputError(f"pair {i} must be a (positive, negative) tuple, got {type(item).__name__}: {item!r:.80}")
        if len(item) != 2:
            raise InputError(
                f"unbalanced pair {i}: expected exactly (positive, negative), got {len(item)} item(s)"
            )
        for side, text in zip(("positive", "negative"), item):
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"pair {i}: the {side} prompt must be a non-empty string, got {text!r:.80}")
        pos.append(item[0])
        neg.append(item[1])
    if len(pos) < 2:
        raise InputError(f"need at least 2 pairs to extract a direction, got {len(pos)}")
    return PairList(pos, neg, probe_set, test_index)


# --------------------------------------------------------------------------- capture


def _capture_positions(position: Position) -> int | slice | str:
    if isinstance(position, bool):
        raise InputError(f"position must be an int, a slice or 'mean', got {position!r}")
    if isinstance(position, (int, slice)):
        return position
    if position in ("mean", "all"):
        return "mean"  # every real token of each prompt, averaged
    if position == "last":
        return -1
    raise InputError(f"position must be an int (e.g. -1 = last prompt token), a slice or 'mean', got {position!r}")


def position_label(position: Position) -> str:
    """How a position is recorded in ``SteeringVector.position`` ("-1", "mean", "2:5")."""
    p = _capture_positions(position)
    if isinstance(p, slice):
        parts = ["" if x is None else str(x) for x in (p.start, p.stop)]
        if p.step is not None:
            parts.append(str(p.step))
        return ":".join(parts)
    return str(p)



def capture_pairs(
    bench: Any,
    pairs: Any,
    layers: int | Sequence[int] | None = None,
    position: Position = -1,
    *,
    chat: bool = False,
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[dict[int, Tensor], dict[int, Tensor], PairList]:
    """Residuals of both sides in one batched capture over all ``layers``.

    Returns ``(pos, neg, pairs)``: ``pos[layer]`` and ``neg[layer]`` are float32 ``[n_pairs,
    d_model]`` (row i = pair i).
    """
    from ..trace import capture

    plist = pairs if isinstance(pairs, PairList) else resolve_pairs(pairs)
    layer_list = check_layers(bench, layers)
    acts = capture(
        bench,
        plist.positives + plist.negatives,
        layer_list,
        _capture_positions(position),
        chat=chat,
        batch_size=batch_size,
        progress=progress,
    )
    n = len(plist)
    pos = {layer: acts[layer][:n] for layer in layer_list}
    neg = {layer: acts[layer][n:] for layer in layer_list}
    return pos, neg, plist


# --------------------------------------------------------------------------- extract


def _method(method: Method | str | None) -> Method:
    if method is None:
        return mean_diff()
    if isinstance(method, str):
        return get_method(method)
    if not callable(method):
        raise InputError(f"method must be a Method (mean_diff(), pca(), logistic()) or its name, got {method!r}")
    return method


def _vector(
    bench: Any, directions: dict[int, Tensor], method: Method, position: Position, plist: PairList, n_used: int, **extra: Any
) -> SteeringVector:
    meta = creation_metadata(
        probe_set=plist.probe_set,
        n_pairs=n_used,
        normalize=bool(getattr(method, "params", {}).get("normalize", False)),
        method_params=dict(getattr(method, "params", {})),
        **extra,
    )
    return SteeringVector(
        directions=directions,
        method=getattr(method, "name", "custom"),
        model_name=str(bench.name),
        model_family=str(bench.arch.family),
        d_model=int(bench.arch.d_model),
        n_layers=int(bench.arch.n_layers),
        position=position_label(position),
        metadata=meta,
    )


def extract(
    bench: Any,
    pairs: Any,
    layers: int | Sequence[int] | None = None,
    method: Method | str | None = None,
    position: Position = -1,
    *,
    chat: bool = False,
    batch_size: int = 16,
    progress: bool = False,
    scale: float = 1.0,
) -> SteeringVector:
    """A steering vector from contrast pairs at ``layers`` (default: every block).

    pairs: ``[(positive, negative), ...]``, a ``probes.ProbeSet`` or a probe-set name.
    method: ``mean_diff()`` (default; the plain mean of ``pos - neg``, unnormalised),
        ``pca()``, ``logistic()``, any ``Method``, or a registered name.
    position: -1 = last prompt token (default), any int, a slice (averaged) or "mean".
    chat: render each prompt as a user turn through the chat template first.
    scale: default multiplier stored in the vector.
    """
    m = _method(method)
    pos, neg, plist = capture_pairs(bench, pairs, layers, position, chat=chat, batch_size=batch_size, progress=progress)
    directions = {layer: m(pos[layer], neg[layer]) for layer in pos}
    vec = _vector(bench, directions, m, position, plist, len(plist), chat=chat)
    return vec if scale == 1.0 else _replace_scale(vec, scale)


def _replace_scale(vec: SteeringVector, scale: float) -> SteeringVector:
    from dataclasses import replace

    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise InputError(f"scale must be a finite number, got {scale!r}")
    return replace(vec, scale=float(scale))


# --------------------------------------------------------------------------- sweep


@dataclass
class LayerSweep:
    """A sweep of one method over layers, from one batched capture.

    result: per-layer quality (``SweepResult``; ``result.best_layer`` picks the layer).
    vector: directions for every swept layer, fit on the TRAIN pairs only (the ones the
        metrics did not see); ``best_vector()`` keeps the best layer.
    train_index / test_index: pair indices of the split.
    """

    result: SweepResult
    vector: SteeringVector
    train_index: list[int]
    test_index: list[int]

    @property
    def best_layer(self) -> int:
        return self.result.best_layer

    @property
    def best(self) -> LayerQuality:
        return self.result.best

    def best_vector(self) -> SteeringVector:
        return self.vector.select([self.best_layer])

    def to_rows(self) -> list[dict]:
        return self.result.to_rows()

    def figure(self, title: str | None = None):
        from ..viz.steering import sweep_figure

        return sweep_figure(self.result, title=title)


def sweep(
    bench: Any,
    pairs: Any,
    layers: int | Sequence[int] | None = None,
    method: Method | str | None = None,
    position: Position = -1,
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    chat: bool = False,
    batch_size: int = 16,
    progress: bool = False,
) -> LayerSweep:
    """Per-layer quality of ``method``'s direction over ``layers`` (default: all), one pass.

    The pairs are split into train and test: a probe set's own ``split`` field is used when
    it has held-out pairs, else ``metrics.split_pairs(n, test_fraction, seed)``. Directions
    are fit on train pairs; consistency, probe accuracy and the projection gap (Cohen's d,
    i.e. in units of the residual's within-class std along the direction) are measured on
    the test pairs.
    """
    m = _method(method)
    pos, neg, plist = capture_pairs(bench, pairs, layers, position, chat=chat, batch_size=batch_size, progress=progress)
    n = len(plist)
    if plist.test_index and len(plist.test_index) < n:
        test = list(plist.test_index)
        train = [i for i in range(n) if i not in set(test)]
    else:
        train, test = split_pairs(n, test_fraction, seed)
    if len(train) < 2:
        raise InputError(f"the train split has {len(train)} pair(s); need at least 2 (have {n} pairs in all)")
    qualities, directions = [], {}
    layer_iter = list(pos)
    if progress:
        from tqdm.auto import tqdm

        layer_iter = tqdm(layer_iter, desc=f"sweep {m.name}", unit="layer")
    for layer in layer_iter:
        p, q = pos[layer], neg[layer]
        v = m(p[train], q[train])
        directions[layer] = v
        qualities.append(layer_quality(layer, p, q, v, train, test))
    result = SweepResult(method=getattr(m, "name", "custom"), layers=qualities)
    vec = _vector(bench, directions, m, position, plist, len(train), chat=chat, sweep_best_layer=result.best_layer, split="train")
    return LayerSweep(result=result, vector=vec, train_index=train, test_index=test)


__all__ = [
    "PairList",
    "LayerSweep",
    "pairs_from_lists",
    "resolve_pairs",
    "capture_pairs",
    "check_layers",
    "position_label",
    "extract",
    "sweep",
]

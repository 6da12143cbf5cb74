"""Vector-quality metrics: pure functions of activations and a direction, per layer.

All computation is float64 on CPU; functions return Python floats. ``pos``/``neg`` are
``[n, d]`` activations of paired prompts (row i of each is pair i); ``direction`` is ``[d]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError


def _f64(t: Tensor) -> Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


def _unit(direction: Tensor, d: int | None = None) -> Tensor:
    if direction.ndim != 1:
        raise InputError(f"direction must be 1-D [d_model], got shape {tuple(direction.shape)}")
    if d is not None and direction.shape[0] != d:
        raise InputError(f"direction has length {direction.shape[0]}, activations have d={d}")
    v = _f64(direction)
    if not bool(torch.isfinite(v).all()):
        raise InputError("direction has non-finite values (NaN/inf)")
    norm = float(v.norm())
    if norm == 0.0:
        raise InputError("direction is the zero vector; no projection is defined")
    return v / norm


def _acts(name: str, t: Tensor) -> Tensor:
    if t.ndim != 2 or t.shape[0] < 1:
        raise InputError(f"{name} must be 2-D [n >= 1, d_model], got shape {tuple(t.shape)}")
    x = _f64(t)
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} has non-finite values (NaN/inf)")
    return x


def _proj(name: str, t: Tensor, u: Tensor) -> Tensor:
    x = _acts(name, t)
    if x.shape[1] != u.shape[0]:
        raise InputError(f"{name} has d={x.shape[1]}, direction has length {u.shape[0]}")
    return x @ u


def _paired(pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
    p, n = _acts("pos", pos), _acts("neg", neg)
    if p.shape != n.shape:
        raise InputError(f"pos {tuple(p.shape)} and neg {tuple(n.shape)} must have the same shape")
    return p, n


def magnitude(direction: Tensor) -> float:
    """L2 norm of the direction."""
    if direction.ndim != 1:
        raise InputError(f"direction must be 1-D, got shape {tuple(direction.shape)}")
    return float(_f64(direction).norm())


def cosine_consistency(pos: Tensor, neg: Tensor, direction: Tensor) -> float:
    """Mean over pairs of cos(pos_i - neg_i, direction). A zero difference counts as 0."""
    p, n = _paired(pos, neg)
    u = _unit(direction, p.shape[1])
    diffs = p - n
    norms = diffs.norm(dim=1)
    dots = diffs @ u
    cos = torch.where(norms > 0, dots / torch.where(norms > 0, norms, 1.0), 0.0)
    return float(cos.mean())


def probe_accuracy(
    pos_train: Tensor, neg_train: Tensor, pos_test: Tensor, neg_test: Tensor, direction: Tensor
) -> float:
    """Held-out accuracy of a 1-D threshold probe along ``direction``.

    Project onto the unit direction; the threshold is the midpoint of the two train class
    means, oriented by them (the side of the positive train mean is "positive"; a point
    exactly on the threshold counts as negative). Accuracy is over all ``len(pos_test) +
    len(neg_test)`` test activations. The orientation comes from train, so a flipped
    direction can still score 1.0 here: its flip shows as a negative ``projection_gap``.
    """
    u = _unit(direction)
    tr_p, tr_n = _proj("pos_train", pos_train, u), _proj("neg_train", neg_train, u)
    te_p, te_n = _proj("pos_test", pos_test, u), _proj("neg_test", neg_test, u)
    m_p, m_n = float(tr_p.mean()), float(tr_n.mean())
    threshold = (m_p + m_n) / 2
    sign = 1.0 if m_p >= m_n else -1.0
    correct = int((sign * (te_p - threshold) > 0).sum()) + int((sign * (te_n - threshold) <= 0).sum())
    return correct / (te_p.shape[0] + te_n.shape[0])


def projection_gap(pos: Tensor, neg: Tensor, direction: Tensor) -> float:
    """Cohen's d along the unit direction.

    ``(mean(pos @ u) - mean(neg @ u)) / s`` with ``s`` the pooled within-class std of the
    projections: residuals are each projection minus its own class mean, pooled over both
    classes, ``s = sqrt(sum(residual^2) / (n_pos + n_neg - 2))``. Classes may differ in size
    (needs n_pos + n_neg >= 3). If ``s == 0`` the result is +-inf (0.0 when the gap is 0 too).
    """
    p, n = _acts("pos", pos), _acts("neg", neg)
    u = _unit(direction, p.shape[1])
    if n.shape[1] != p.shape[1]:
        raise InputError(f"pos has d={p.shape[1]}, neg has d={n.shape[1]}")
    dof = p.shape[0] + n.shape[0] - 2
    if dof < 1:
        raise InputError("projection_gap needs at least 3 activations in total")
    pp, nn = p @ u, n @ u
    gap = float(pp.mean() - nn.mean())
    ss = float(((pp - pp.mean()) ** 2).sum() + ((nn - nn.mean()) ** 2).sum())
    s = math.sqrt(ss / dof)
    if s == 0.0:
        return 0.0 if gap == 0.0 else math.copysign(math.inf, gap)
    return gap / s


def kl_divergence(p_logits: Tensor, q_logits: Tensor) -> float:
    """Mean over rows of KL(P || Q), P and Q the softmax of the logits (last dim), in nats.

    ``[..., vocab]`` inputs of equal shape; leading dims are flattened into rows. ``-inf``
    logits (masked tokens) are allowed; NaN or ``+inf`` are not. Computed with float64
    ``log_softmax``; terms with P = 0 contribute 0.
    """
    if p_logits.shape != q_logits.shape:
        raise InputError(f"logit shapes differ: {tuple(p_logits.shape)} vs {tuple(q_logits.shape)}")
    if p_logits.ndim < 1 or p_logits.shape[-1] < 1:
        raise InputError(f"logits need a non-empty last (vocab) dim, got {tuple(p_logits.shape)}")
    vocab = p_logits.shape[-1]
    rows = []
    for name, t in (("p_logits", p_logits), ("q_logits", q_logits)):
        x = _f64(t).reshape(-1, vocab)
        if bool(torch.isnan(x).any()) or bool((x == math.inf).any()):
            raise InputError(f"{name} has NaN or +inf values")
        if bool((x == -math.inf).all(dim=1).any()):
            raise InputError(f"{name} has a row whose logits are all -inf")
        rows.append(torch.log_softmax(x, dim=-1))
    lp, lq = rows
    pr = lp.exp()
    terms = torch.where(pr > 0, pr * (lp - lq), torch.zeros_like(pr))
    return float(terms.sum(dim=1).mean())


def split_pairs(n: int, test_fraction: float = 0.25, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic train/test split of pair indices ``0..n-1`` (each list sorted).

    ``n_test = round(n * test_fraction)`` clamped to ``[1, n - 1]``; needs ``n >= 2``.
    The permutation comes from ``numpy.random.default_rng(seed)``.
    """
    if n < 2:
        raise InputError(f"split_pairs needs n >= 2 pairs, got {n}")
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in perm[n_test:]), sorted(int(i) for i in perm[:n_test])


@dataclass(frozen=True)
class LayerQuality:
    """Quality of one layer's direction.

    layer: 0-based decoder block whose output the direction steers.
    magnitude: L2 norm of the direction (>= 0).
    consistency: ``cosine_consistency`` in [-1, 1].
    probe_accuracy: ``probe_accuracy`` on held-out pairs, in [0, 1].
    gap: ``projection_gap`` (Cohen's d; may be +-inf).
    """

    layer: int
    magnitude: float
    consistency: float
    probe_accuracy: float
    gap: float

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise InputError(f"layer must be a non-negative int, got {self.layer!r}")
        for name in ("magnitude", "consistency", "probe_accuracy", "gap"):
            if math.isnan(getattr(self, name)):
                raise InputError(f"LayerQuality.{name} is NaN (layer {self.layer})")
        if not self.magnitude >= 0:
            raise InputError(f"magnitude must be >= 0, got {self.magnitude}")
        if not -1.0 - 1e-9 <= self.consistency <= 1.0 + 1e-9:
            raise InputError(f"consistency must be in [-1, 1], got {self.consistency}")
        if not 0.0 <= self.probe_accuracy <= 1.0:
            raise InputError(f"probe_accuracy must be in [0, 1], got {self.probe_accuracy}")


def layer_quality(
    layer: int,
    pos: Tensor,
    neg: Tensor,
    direction: Tensor,
    train_idx: Sequence[int],
    test_idx: Sequence[int],
) -> LayerQuality:
    """All metrics for one layer. Extract ``direction`` from the train pairs only.

    The probe threshold is fit on train pairs; accuracy, consistency and gap are measured on
    the held-out test pairs.
    """
    p, n = _paired(pos, neg)
    tr, te = list(train_idx), list(test_idx)
    if not tr or not te:
        raise InputError("train_idx and test_idx must both be non-empty")
    return LayerQuality(
        layer=layer,
        magnitude=magnitude(direction),
        consistency=cosine_consistency(p[te], n[te], direction),
        probe_accuracy=probe_accuracy(p[tr], n[tr], p[te], n[te], direction),
        gap=projection_gap(p[te], n[te], direction),
    )


@dataclass(frozen=True)
class SweepResult:
    """Per-layer quality of one method's vectors.

    ``best_layer``: highest probe accuracy; ties broken by larger gap, then larger
    consistency, then the lower layer index.
    """

    method: str
    layers: Sequence[LayerQuality]  # stored as a tuple

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        if not self.layers:
            raise InputError("SweepResult needs at least one LayerQuality")
        ids = [q.layer for q in self.layers]
        if len(set(ids)) != len(ids):
            raise InputError(f"duplicate layers in sweep: {sorted(ids)}")

    @property
    def best(self) -> LayerQuality:
        return max(self.layers, key=lambda q: (q.probe_accuracy, q.gap, q.consistency, -q.layer))

    @property
    def best_layer(self) -> int:
        return self.best.layer

    def to_rows(self) -> list[dict[str, float | int | str | bool]]:
        """One dict per layer (ascending), for tables/CSV."""
        best = self.best_layer
        return [
            {
                "method": self.method,
                "layer": q.layer,
                "magnitude": q.magnitude,
                "consistency": q.consistency,
                "probe_accuracy": q.probe_accuracy,
                "gap": q.gap,
                "best": q.layer == best,
            }
            for q in sorted(self.layers, key=lambda q: q.layer)
        ]

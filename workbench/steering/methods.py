"""Steering-direction extraction methods: callables made by factories.

A method takes the activations of paired prompts at one layer, ``pos [n, d]`` and
``neg [n, d]`` (row ``i`` of each is pair ``i``), and returns one direction ``[d]``
(float32, CPU). The math never dispatches on strings; ``METHODS`` maps names to the
factories only for the CLI/UI edge.

Conventions shared by every method here:

* Inputs of any float dtype/device are copied to CPU and computed in float64
  (``mean_diff`` in float32, see its docstring); the result is float32.
* The sign is chosen so that positives project higher: ``mean((pos - neg) @ v) >= 0``.
* ``normalize=True`` returns a unit vector. Otherwise ``pca`` and ``logistic`` are
  rescaled so that ``||v|| == ||mean(pos - neg)||``: the three methods then share one
  magnitude scale, so a multiplier tuned for one is meaningful for the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError

RawMethod = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Method:
    """A named extraction method: ``method(pos [n, d], neg [n, d]) -> [d]`` float32.

    ``name`` and ``params`` go into a vector's metadata; ``fn`` holds the math.
    """

    name: str
    fn: RawMethod
    params: dict[str, Any] = field(default_factory=dict)

    def __call__(self, pos: Tensor, neg: Tensor) -> Tensor:
        return self.fn(pos, neg)


def check_pairs(pos: Tensor, neg: Tensor, *, min_pairs: int = 2) -> None:
    """Raise ValueError unless ``pos`` and ``neg`` are finite ``[n, d]`` with equal shape."""
    for name, t in (("pos", pos), ("neg", neg)):
        if not isinstance(t, Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 2:
            raise InputError(f"{name} must be 2-D [n_pairs, d_model], got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise InputError(f"{name} must be a floating tensor, got dtype {t.dtype}")
    if pos.shape != neg.shape:
        raise InputError(
            f"pos and neg must have the same shape (row i of each is pair i): "
            f"pos {tuple(pos.shape)} vs neg {tuple(neg.shape)}"
        )
    if pos.shape[0] < min_pairs:
        raise InputError(f"need at least {min_pairs} pairs, got {pos.shape[0]}")
    if pos.shape[1] < 1:
        raise InputError("d_model must be at least 1, got 0 columns")
    for name, t in (("pos", pos), ("neg", neg)):
        bad = ~torch.isfinite(t.detach())
        if bool(bad.any()):
            row, col = (int(i) for i in bad.nonzero()[0])
            raise InputError(
                f"{name} has {int(bad.sum())} non-finite value(s) (NaN/inf); "
                f"first at pair {row}, dim {col}: {t[row, col].item()}"
            )


def _f64(t: Tensor) -> Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


def _finish(v: Tensor, diffs: Tensor, normalize: bool, method: str) -> Tensor:
    """Sign-align ``v`` so positives project higher, then rescale (see module doc)."""
    if float((diffs @ v).mean()) < 0:
        v = -v
    norm = float(v.norm())
    if norm == 0.0:
        raise InputError(f"{method}: the extracted direction is zero")
    if normalize:
        return (v / norm).to(torch.float32)
    target = float(diffs.mean(dim=0).norm())
    if target == 0.0:
        raise InputError(
            f"{method}: mean(pos - neg) is zero, so there is no magnitude to scale to; "
            f"pass normalize=True for a unit vector"
        )
    return (v * (target / norm)).to(torch.float32)


def mean_diff(normalize: bool = False) -> Method:
    """Mean of ``pos - neg`` (the `steering-vectors` library's convention).

    Computed in float32: for float32 input the result is exactly
    ``(pos - neg).mean(dim=0)``. ``normalize=True`` divides by its norm.
    """

    def _mean_diff(pos: Tensor, neg: Tensor) -> Tensor:
        check_pairs(pos, neg)
        p = pos.detach().to(device="cpu", dtype=torch.float32)
        n = neg.detach().to(device="cpu", dtype=torch.float32)
        v = (p - n).mean(dim=0)
        if not normalize:
            return v
        norm = v.norm()
        if float(norm) == 0.0:
            raise InputError("mean_diff: mean(pos - neg) is zero; cannot normalize")
        return v / norm

    return Method("mean_diff", _mean_diff, {"normalize": normalize})


def pca(center: bool = True, normalize: bool = False) -> Method:
    """First principal component of the pair differences ``pos - neg`` (repeng ``pca_diff``).

    repeng passes the raw differences to ``sklearn.decomposition.PCA``, which centres
    its input, so repeng's direction is the top component of the *centred* differences:
    ``center=True`` (default) reproduces it. It captures how pairs vary, not their mean
    shift: if every pair moves by the same amount along the concept, centring removes
    that axis and the result is noise (we raise when nothing is left). ``center=False``
    takes the top right-singular vector of the uncentred differences, which follows the
    mean shift when it dominates.

    Sign: mean projection of ``pos - neg`` is positive (repeng uses a per-pair majority
    vote; they agree except in contrived cases). Scale: see module doc.
    """
    name = "pca" if center else "pca_uncentered"

    def _pca(pos: Tensor, neg: Tensor) -> Tensor:
        check_pairs(pos, neg)
        diffs = _f64(pos) - _f64(neg)
        x = diffs - diffs.mean(dim=0) if center else diffs
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        # Below this, the spectrum is input rounding noise (|error| <= eps * max|x| per entry).
        eps = max(torch.finfo(pos.dtype).eps, torch.finfo(neg.dtype).eps)
        amp = max(float(pos.detach().abs().max()), float(neg.detach().abs().max()))
        if float(s[0]) <= 4 * eps * amp * math.sqrt(x.numel()):
            what = "after centring " if center else ""
            raise InputError(
                f"{name}: pair differences have no variance {what}(all pairs differ "
                f"identically); use mean_diff or pca(center=False)"
            )
        return _finish(vh[0], diffs, normalize, name)

    return Method(name, _pca, {"center": center, "normalize": normalize})


def logistic(C: float = 1.0, normalize: bool = False, max_iter: int = 1000) -> Method:
    """L2 logistic regression (scikit-learn, lbfgs): pos = label 1, neg = label 0.

    Inputs are centred by the pooled mean and divided by ONE global scalar (the RMS of the
    centred entries), not standardised per feature: per-feature scaling is not
    rotation-invariant and, mapped back, inflates low-variance (often noise) dimensions of
    the residual stream. The global scalar only makes ``C`` independent of activation
    scale. The direction is ``coef`` mapped back to activation space (a positive rescale,
    so its direction is ``coef``'s), signed so positives project higher; scale as above.
    """
    if not C > 0:
        raise InputError(f"logistic: C must be > 0, got {C}")

    def _logistic(pos: Tensor, neg: Tensor) -> Tensor:
        from sklearn.linear_model import LogisticRegression

        check_pairs(pos, neg)
        p, n = _f64(pos), _f64(neg)
        x = torch.cat([p, n]).numpy()
        y = np.concatenate([np.ones(p.shape[0]), np.zeros(n.shape[0])])
        mu = x.mean(axis=0)
        rms = float(np.sqrt(((x - mu) ** 2).mean()))
        if rms == 0.0:
            raise InputError("logistic: all activations are identical; nothing to separate")
        clf = LogisticRegression(C=C, max_iter=max_iter).fit((x - mu) / rms, y)
        v = torch.from_numpy(clf.coef_[0] / rms)
        return _finish(v, p - n, normalize, "logistic")

    return Method("logistic", _logistic, {"C": C, "normalize": normalize})


# Name -> factory, for the CLI/UI edge only (e.g. METHODS["pca"](normalize=True)).
METHODS: dict[str, Callable[..., Method]] = {
    "mean_diff": mean_diff,
    "pca": pca,
    "logistic": logistic,
}


def get_method(name: str, **kwargs: Any) -> Method:
    """Build a method by registered name; unknown names list the valid ones."""
    try:
        factory = METHODS[name]
    except KeyError:
        raise InputError(f"unknown method {name!r}; valid: {sorted(METHODS)}") from None
    return factory(**kwargs)

"""Extraction methods and quality metrics: exact invariants on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workbench.steering.methods import Method, get_method, logistic, mean_diff, pca
from workbench.steering.metrics import (
    LayerQuality,
    SweepResult,
    cosine_consistency,
    kl_divergence,
    layer_quality,
    magnitude,
    probe_accuracy,
    projection_gap,
    split_pairs,
)


def planted(n: int = 48, d: int = 24, seed: int = 0, spread: float = 1.0, noise: float = 0.05, base_scale: float = 5.0):
    """Pairs whose differences are c_i * v + small noise, c_i = 2 + spread * N(0, 1).

    Each pair shares a random base point of size ``base_scale``."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g)
    v = v / v.norm()
    base = base_scale * torch.randn(n, d, generator=g)
    c = 2.0 + spread * torch.randn(n, 1, generator=g)
    diffs = c * v + noise * torch.randn(n, d, generator=g)
    return base + diffs / 2, base - diffs / 2, v


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


# ---------------------------------------------------------------- methods
def test_mean_diff_is_exactly_the_plain_mean():
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    out = mean_diff()(pos, neg)
    assert out.dtype == torch.float32
    assert torch.equal(out, (pos - neg).mean(dim=0))


def test_mean_diff_normalize_and_low_precision_input():
    pos, neg, _ = planted()
    out = mean_diff(normalize=True)(pos.to(torch.bfloat16), neg.to(torch.bfloat16))
    assert out.dtype == torch.float32
    assert math.isclose(float(out.norm()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("factory", [mean_diff, pca, logistic])
def test_methods_have_names_and_params(factory):
    m = factory()
    assert isinstance(m, Method)
    assert m.name in {"mean_diff", "pca", "logistic"}
    assert "normalize" in m.params
    assert get_method(m.name).name == m.name


def test_get_method_unknown_name_lists_valid():
    with pytest.raises(ValueError, match="valid"):
        get_method("nope")


def test_pca_recovers_planted_direction_with_sign_and_scale():
    pos, neg, v = planted()
    out = pca()(pos, neg)
    assert out.dtype == torch.float32
    assert cos(out, v) > 0.99  # signed: positives project higher
    assert float(((pos - neg) @ out).mean()) > 0
    target = float((pos - neg).double().mean(0).norm())
    assert math.isclose(float(out.double().norm()), target, rel_tol=1e-5)
    unit = pca(normalize=True)(pos, neg)
    assert math.isclose(float(unit.norm()), 1.0, rel_tol=1e-6)
    # swapping the classes flips the sign
    assert cos(pca()(neg, pos), out) < -0.999


def test_pca_matches_sklearn_pca_of_differences_like_repeng():
    from sklearn.decomposition import PCA

    pos, neg, _ = planted(seed=3, noise=0.3)
    diffs = (pos - neg).double().numpy()
    ref = torch.from_numpy(PCA(n_components=1).fit(diffs).components_[0])
    assert abs(cos(pca()(pos, neg), ref)) > 1 - 1e-6


def test_pca_centred_refuses_identical_differences_uncentred_follows_mean():
    g = torch.Generator().manual_seed(0)
    neg = torch.randn(6, 8, generator=g)
    shift = torch.randn(8, generator=g)
    pos = neg + shift  # every pair differs by the same vector (up to float32 rounding)
    with pytest.raises(ValueError, match="no variance after centring"):
        pca()(pos, neg)
    out = pca(center=False)(pos, neg)
    assert cos(out, shift) > 0.9999


def test_logistic_separates_planted_data():
    g = torch.Generator().manual_seed(2)
    d, n = 16, 200
    v = torch.randn(d, generator=g)
    v = v / v.norm()
    pos = torch.randn(n, d, generator=g) + 3.0 * v
    neg = torch.randn(n, d, generator=g) - 3.0 * v
    tr, te = split_pairs(n, 0.25, seed=0)
    out = logistic()(pos[tr], neg[tr])
    assert out.dtype == torch.float32
    assert cos(out, v) > 0.9
    assert probe_accuracy(pos[tr], neg[tr], pos[te], neg[te], out) > 0.95
    target = float((pos[tr] - neg[tr]).double().mean(0).norm())
    assert math.isclose(float(out.double().norm()), target, rel_tol=1e-5)


def test_logistic_rejects_bad_C():
    with pytest.raises(ValueError, match="C must be > 0"):
        logistic(C=0.0)


@pytest.mark.parametrize("factory", [mean_diff, pca, logistic])
def test_methods_validate_inputs(factory):
    m = factory()
    ok = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same shape"):
        m(ok, torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        m(ok[:1], ok[:1])
    with pytest.raises(ValueError, match="2-D"):
        m(ok[0], ok[0])
    bad = ok.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"pos has 1 non-finite.*pair 1, dim 2"):
        m(bad, ok)
    bad[1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"neg has 1 non-finite"):
        m(ok, bad)


# ---------------------------------------------------------------- metrics
def test_magnitude():
    assert magnitude(torch.tensor([3.0, 4.0])) == 5.0


def test_cosine_consistency_hand_computed():
    pos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [-2.0, 0.0]])
    neg = torch.zeros(4, 2)
    # cosines with [1, 0]: 1, 0, 0 (zero difference), -1
    assert cosine_consistency(pos, neg, torch.tensor([5.0, 0.0])) == 0.0
    assert cosine_consistency(pos[:3], neg[:3], torch.tensor([5.0, 0.0])) == pytest.approx(1 / 3, abs=1e-15)


def test_probe_accuracy_hand_computed():
    u = torch.tensor([2.0, 0.0])  # not unit: only the direction matters

    def pts(xs):
        return torch.tensor([[x, 7.0] for x in xs])

    # train means 3 and -1 -> threshold 1; 0.5 is misclassified, 1.0 (on the threshold) counts negative
    acc = probe_accuracy(pts([2, 4]), pts([0, -2]), pts([3, 0.5]), pts([1, -1]), u)
    assert acc == 0.75
    # orientation is learned on train: a flipped direction scores the same
    assert probe_accuracy(pts([2, 4]), pts([0, -2]), pts([3, 0.5]), pts([1, -1]), -u) == 0.75


def test_projection_gap_hand_computed():
    pos = torch.tensor([[1.0, 9.0], [3.0, -9.0]])
    neg = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    # projections on x: pos [1, 3] (mean 2), neg [0, 0]; residual SS = 2, dof = 2 -> s = 1
    assert projection_gap(pos, neg, torch.tensor([2.0, 0.0])) == 2.0
    assert projection_gap(neg, pos, torch.tensor([2.0, 0.0])) == -2.0
    assert projection_gap(neg[:1].repeat(2, 1) + 1, neg[:1].repeat(2, 1), torch.tensor([1.0, 0.0])) == math.inf


def test_kl_divergence_hand_computed():
    p = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    q = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]], dtype=torch.float64)
    # row 0: KL(1/2,1/2 || 3/4,1/4) = 0.5 ln(4/3); row 1: 0
    assert kl_divergence(p, q) == pytest.approx(0.25 * math.log(4 / 3), rel=1e-12)
    assert kl_divergence(p, p) == 0.0
    masked = torch.tensor([0.0, -math.inf])
    assert kl_divergence(masked, torch.zeros(2)) == pytest.approx(math.log(2), rel=1e-12)
    assert kl_divergence(torch.zeros(2), masked) == math.inf
    with pytest.raises(ValueError, match="shapes differ"):
        kl_divergence(p, q[:1])
    with pytest.raises(ValueError, match="NaN"):
        kl_divergence(torch.tensor([float("nan"), 0.0]), torch.zeros(2))


def test_kl_is_stable_for_large_low_precision_logits():
    p = torch.tensor([[1000.0, 0.0, -1000.0]], dtype=torch.bfloat16)
    assert kl_divergence(p, p) == 0.0
    assert math.isfinite(kl_divergence(p, p.flip(-1)))


def test_split_pairs_deterministic_disjoint_and_sized():
    tr, te = split_pairs(8, 0.25, seed=0)
    assert (tr, te) == split_pairs(8, 0.25, seed=0)
    assert len(te) == 2 and len(tr) == 6
    assert sorted(tr + te) == list(range(8))
    assert tr == sorted(tr) and te == sorted(te)
    assert split_pairs(40, 0.25, seed=1) != split_pairs(40, 0.25, seed=2)
    assert tuple(map(len, split_pairs(2, 0.01))) == (1, 1)
    assert len(split_pairs(2, 0.99)[0]) == 1
    with pytest.raises(ValueError):
        split_pairs(1)
    with pytest.raises(ValueError):
        split_pairs(10, 1.0)


def test_layer_quality_and_sweep_best_layer():
    pos, neg, v = planted(n=40, spread=0.2, base_scale=0.1)
    tr, te = split_pairs(40)
    q = layer_quality(3, pos, neg, mean_diff()(pos[tr], neg[tr]), tr, te)
    assert q.layer == 3 and q.probe_accuracy == 1.0 and q.consistency > 0.9 and q.gap > 0

    rows = [
        LayerQuality(layer=1, magnitude=1.0, consistency=0.5, probe_accuracy=0.9, gap=3.0),
        LayerQuality(layer=2, magnitude=1.0, consistency=0.5, probe_accuracy=1.0, gap=2.0),
        LayerQuality(layer=4, magnitude=1.0, consistency=0.5, probe_accuracy=1.0, gap=2.5),
        LayerQuality(layer=0, magnitude=1.0, consistency=0.9, probe_accuracy=0.5, gap=9.0),
    ]
    sweep = SweepResult(method="pca", layers=rows)
    assert sweep.best_layer == 4  # top accuracy, tie broken by larger gap
    table = sweep.to_rows()
    assert [r["layer"] for r in table] == [0, 1, 2, 4]
    assert [r["best"] for r in table] == [False, False, False, True]
    assert table[0]["method"] == "pca"
    tied = SweepResult("x", [rows[1], LayerQuality(layer=7, magnitude=1, consistency=0.5, probe_accuracy=1.0, gap=2.0)])
    assert tied.best_layer == 2  # full tie -> lower layer


def test_quality_dataclasses_validate():
    with pytest.raises(ValueError, match="probe_accuracy"):
        LayerQuality(layer=0, magnitude=1.0, consistency=0.0, probe_accuracy=1.5, gap=0.0)
    with pytest.raises(ValueError, match="layer"):
        LayerQuality(layer=-1, magnitude=1.0, consistency=0.0, probe_accuracy=0.5, gap=0.0)
    with pytest.raises(ValueError, match="NaN"):
        LayerQuality(layer=0, magnitude=1.0, consistency=float("nan"), probe_accuracy=0.5, gap=0.0)
    q = LayerQuality(layer=0, magnitude=1.0, consistency=0.0, probe_accuracy=0.5, gap=0.0)
    with pytest.raises(ValueError, match="duplicate"):
        SweepResult("m", [q, q])
    with pytest.raises(ValueError, match="at least one"):
        SweepResult("m", [])


def test_metrics_reject_zero_or_mismatched_direction():
    pos, neg = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="zero vector"):
        projection_gap(pos, neg, torch.zeros(4))
    with pytest.raises(ValueError, match="length"):
        cosine_consistency(pos, neg, torch.ones(5))
    with pytest.raises(ValueError, match="pos_test has d=5"):
        probe_accuracy(pos, neg, torch.randn(2, 5), neg, torch.ones(4))
    assert np.isfinite(projection_gap(pos, neg, torch.ones(4)))

"""Representation statistics: hand-computed tiny cases and the identities of the published table."""

import numpy as np
import pytest

from riskdecomp.estimators.statistics import (
    alpha_req,
    effective_rank,
    rankme,
    representation_statistics,
    uniformity,
)
from riskdecomp.utils.errors import FeatureError


def test_effective_rank_known_correlation_structure():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(500, 3))
    # 3 independent sources, each copied into 2 perfectly correlated features + 1 constant feature
    z = np.concatenate([base, 2 * base + 1, np.ones((500, 1))], axis=1)
    assert effective_rank(z) == 3
    stats = representation_statistics(z, rng.integers(0, 4, 500))
    assert stats["train_rank"] == 3
    assert stats["train_rank_Z"] <= 4  # constant column adds one direction to the raw Z


def test_rankme_identity_matrix_is_full_and_rank_one_is_one():
    assert rankme(np.eye(8)) == pytest.approx(8.0, rel=1e-5)
    u = np.outer(np.arange(1, 11), np.ones(5))
    assert rankme(u) == pytest.approx(1.0, abs=1e-4)


def test_alpha_req_recovers_power_law():
    d, alpha = 200, 1.5
    sd = np.arange(1, d + 1) ** (-alpha / 2)  # covariance eigenvalue i ~ i^-alpha
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    # exact covariance: rows are ±sqrt(d) * sd * q, symmetric design gives Cov = diag(sd²) rotated
    x = np.concatenate([np.diag(sd), -np.diag(sd)]) * np.sqrt(d)
    est, r2 = alpha_req(x @ q)
    assert est == pytest.approx(alpha, rel=1e-6)
    assert r2 == pytest.approx(1.0, abs=1e-9)


def test_hand_computed_variances_and_nc1():
    # class 0: (0,0),(2,0) mean (1,0); class 1: (0,2),(0,4) mean (0,3)
    z = np.array([[0.0, 0], [2, 0], [0, 2], [0, 4]])
    y = np.array([0, 0, 1, 1])
    s = representation_statistics(z, y, prefix="")
    assert s["intra_var"] == pytest.approx(1.0)  # each point at distance 1 of its mean
    # means (1,0),(0,3), grand mean (.5,1.5): squared distances 0.25+2.25=2.5 each
    assert s["inter_var"] == pytest.approx(2.5)
    assert s["vars"] == pytest.approx(0.4)
    # Sigma_W = diag(.5,.5); Sigma_B = [[.25,-.75],[-.75,2.25]] rank one along v=(1,-3)/sqrt(10)
    # trace(Sigma_W pinv Sigma_B) = v.T Sigma_W v / 2.5 = 0.5/2.5
    assert s["nc1"] == pytest.approx(0.2)
    assert s["nc1norm"] == pytest.approx(s["nc1"] / np.sqrt(s["rank"]))


def test_identities_and_keys_on_random_data():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 300)
    z = rng.normal(size=(300, 12)) + 3 * np.eye(5, 12)[y]
    views = z[None] + 0.1 * rng.normal(size=(3, 300, 12))
    s = representation_statistics(z, y, aug_views=views)
    for k in ("rank", "rank_Z", "rankme", "alpha_req", "alpha_req_r2", "nc1", "nc1norm",
              "intra_var", "inter_var", "vars", "uniformity", "alignment"):
        assert isinstance(s[f"train_{k}"], float)
    assert s["train_vars"] == pytest.approx(s["train_intra_var"] / s["train_inter_var"])
    assert s["train_nc1norm"] == pytest.approx(s["train_nc1"] / np.sqrt(s["train_rank"]))
    assert s["trainaug_vars"] == pytest.approx(s["trainaug_intra_var"] / s["trainaug_inter_var"])
    # augmented views barely move: augmentation clusters are far tighter than classes
    assert s["trainaug_vars"] < 0.05 < s["train_vars"]
    assert s["trainaug_alignment"] < s["train_alignment"]
    # alpha-ReQ uses spectrum indices 10..100: d=12 gives 3 points, d=11 only 2 -> not estimable
    assert np.isfinite(s["train_alpha_req"])
    assert np.isnan(alpha_req(z[:, :11])[0])


def test_uniformity_antipodal_and_collapsed():
    x = np.array([[1.0, 0], [-1.0, 0]])
    assert uniformity(x) == pytest.approx(-8.0)  # exp(-2 * 4)
    assert uniformity(np.ones((50, 3))) == pytest.approx(0.0)  # fully collapsed
    rng = np.random.default_rng(3)
    assert uniformity(rng.normal(size=(512, 16))) < uniformity(rng.normal(size=(512, 16)) + 5)


def test_alignment_collapsed_classes_is_zero():
    y = np.repeat([0, 1, 2], 10)
    z = np.eye(3)[y] * 4.0
    assert representation_statistics(z, y)["train_alignment"] == pytest.approx(0.0, abs=1e-12)


def test_bad_input_raises():
    with pytest.raises(FeatureError):
        representation_statistics(np.full((4, 2), np.nan), np.array([0, 0, 1, 1]))
    with pytest.raises(FeatureError):
        representation_statistics(np.ones((4, 2)), np.array([0, 1, 1]))

"""Uncertainty scores: hand-computed tiny cases and comparisons with sklearn / closed forms."""

import numpy as np
import pytest
from scipy.stats import entropy

from riskdecomp.estimators.uncertainty import (
    augmentation_consistency,
    ensemble_neighborhood_consistency,
    ensemble_scores,
    ensemble_variance,
    gmm_nll,
    knn_distance,
    label_free_scores,
    neg_norm,
    neighborhood_inconsistency,
    probe_scores,
    reference_indices,
    vmf_log_normalizer,
    vmf_nll,
)
from riskdecomp.features.cache import posterior_variance
from riskdecomp.utils.errors import FeatureError


def test_reference_indices_shared_and_sorted():
    a = reference_indices(1000, n_ref=100, seed=3)
    assert np.array_equal(a, reference_indices(1000, n_ref=100, seed=3))
    assert len(np.unique(a)) == 100 and np.all(np.diff(a) > 0) and a.max() < 1000
    assert not np.array_equal(a, reference_indices(1000, n_ref=100, seed=4))
    assert np.array_equal(reference_indices(50, n_ref=100), np.arange(50))


def test_spec_hand_check_neighbor_sets():
    a, b, c = 7, 8, 9
    sets = [np.array([[a, b]]), np.array([[a, c]]), np.array([[c, b]])]
    assert neighborhood_inconsistency(sets)[0] == pytest.approx(2 / 3)
    same = [np.array([[a, b]]), np.array([[b, a]]), np.array([[a, b]])]
    assert neighborhood_inconsistency(same)[0] == 0.0
    disjoint = [np.array([[1, 2]]), np.array([[3, 4]])]
    assert neighborhood_inconsistency(disjoint)[0] == 1.0


def test_ensemble_consistency_from_embeddings():
    # 1-D references at 0,1,2,3; query at 0.2 -> 2-NN {0,1}. Second encoder reverses the order
    # of references -> query near ref 3 and 2 -> {2,3}: disjoint -> u = 1. Third = first -> pairs J=(0,1,0)
    refs1 = np.array([[0.0], [1.0], [2.0], [3.0]])
    refs2 = refs1[::-1].copy()
    q = np.array([[0.2]])
    u = ensemble_neighborhood_consistency([q, q, q], [refs1, refs2, refs1], k=2, metric="euclidean")
    assert u[0] == pytest.approx(1 - 1 / 3)
    with pytest.raises(FeatureError):
        ensemble_neighborhood_consistency([q, q], [refs1, refs1[:3]], k=2, metric="euclidean")


def test_knn_distance_hand_case_and_self_exclusion():
    refs = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    q = np.array([[0.0, 0.0], [2.0, 0.0]])
    out = knn_distance(q, refs, k=(1, 2), metric="euclidean")
    np.testing.assert_allclose(out[1], [0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(out[2], [0.5, 1.0], atol=1e-6)
    ex = knn_distance(q, refs, k=1, metric="euclidean", exclude_self=np.array([0, -1]))
    np.testing.assert_allclose(ex[1], [1.0, 1.0], atol=1e-6)
    cos = knn_distance(np.array([[1.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 5.0]]), k=2, metric="cosine")
    assert cos[2][0] == pytest.approx(1 - np.sqrt(0.5), abs=1e-6)


def test_gmm_nll_matches_sklearn_single_gaussian():
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(400, 3)) * [1.0, 2.0, 0.5] + 1.0
    q = rng.normal(size=(5, 3))
    u = gmm_nll(q, ref, n_components=1)
    expected = -multivariate_normal(ref.mean(0), np.diag(ref.var(0))).logpdf(q)
    np.testing.assert_allclose(u, expected, rtol=1e-4)


def test_vmf_normalizer_closed_forms():
    # d = 3: C_3(k) = k / (4 pi sinh k); uniform limit 1/(4 pi)
    for k in (0.5, 3.0, 40.0):
        assert vmf_log_normalizer(k, 3) == pytest.approx(np.log(k / (4 * np.pi * np.sinh(k))), rel=1e-6)
    assert vmf_log_normalizer(0.0, 3) == pytest.approx(-np.log(4 * np.pi))
    # large d uses the Debye branch where ive underflows; must stay finite and continuous in kappa
    vals = vmf_log_normalizer(np.array([1.0, 10.0, 100.0, 1000.0]), 2048)
    assert np.isfinite(vals).all()


def test_vmf_nll_is_a_density_on_the_circle_and_ranks_outliers():
    rng = np.random.default_rng(1)
    ang = np.r_[rng.normal(0.0, 0.2, 300), rng.normal(2.0, 0.3, 300)]
    ref = np.c_[np.cos(ang), np.sin(ang)] * rng.uniform(0.5, 3, (600, 1))  # norms must not matter
    grid = np.linspace(-np.pi, np.pi, 4001)[:-1]
    u = vmf_nll(np.c_[np.cos(grid), np.sin(grid)], ref, n_components=2)
    assert np.exp(-u).sum() * (2 * np.pi / len(grid)) == pytest.approx(1.0, abs=1e-3)
    u_pts = vmf_nll(np.array([[1.0, 0.0], [-1.0, 0.0]]), ref, n_components=2)
    assert u_pts[1] > u_pts[0] + 3  # the empty side of the circle is far less likely


def test_augmentation_consistency_hand_case():
    refs = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    views = np.array([[[1.0, 0.1]], [[1.0, 0.1]], [[0.1, 1.0]]])  # T=3, n=1
    out = augmentation_consistency(views, refs, k=1)
    assert list(out.columns) == ["aug_nc_1", "aug_disp"]
    assert out["aug_nc_1"][0] == pytest.approx(1 - 1 / 3)  # sets {0},{0},{1}: J = 1,0,0
    c = (0.1 + 0.1) / (1 + 0.01)
    assert out["aug_disp"][0] == pytest.approx(1 - (1 + c + c) / 3)


def test_ensemble_variance_neg_norm_posterior_variance():
    z1 = np.array([[2.0, 0.0], [0.0, 3.0]])
    z2 = np.array([[0.0, 5.0], [0.0, 1.0]])
    # point 0: unit vectors (1,0),(0,1): var per dim 0.25 each -> 0.5; point 1 identical -> 0
    np.testing.assert_allclose(ensemble_variance([z1, z2]), [0.5, 0.0])
    np.testing.assert_allclose(neg_norm(np.array([[3.0, 4.0]])), [-5.0])
    np.testing.assert_allclose(posterior_variance(np.log([[1.0, 3.0]])), [2.0])
    with pytest.raises(FeatureError):
        ensemble_variance([z1, np.ones((2, 3))])


def test_probe_scores_known_values():
    p = np.array([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0]])
    s = probe_scores(p)
    np.testing.assert_allclose(s["probe_entropy"], entropy(p, axis=1))
    np.testing.assert_allclose(s["probe_lc"], [0.5, 0.0])
    np.testing.assert_allclose(s["probe_margin"], [-0.2, -1.0])


def test_label_free_and_ensemble_tables():
    rng = np.random.default_rng(0)
    z_train = rng.normal(size=(300, 8))
    z_test = rng.normal(size=(40, 8))
    ref = reference_indices(300, n_ref=100)
    tab = label_free_scores(z_test, z_train, ref_idx=ref, ks=(1, 10), n_components=3)
    assert list(tab.columns) == ["knn_1_cos", "knn_10_cos", "knn_1_euc", "knn_10_euc", "gmm_nll", "vmf_nll", "neg_norm"]
    assert len(tab) == 40 and np.isfinite(tab.to_numpy()).all()
    assert (tab["knn_10_euc"] >= tab["knn_1_euc"]).all()
    # scoring train points themselves: self-matches in R are dropped, so knn_1 is never 0 for them
    tr = label_free_scores(z_train[ref[:5]], z_train, ref_idx=ref, ks=(1,), metrics=("euclidean",),
                           n_components=2, query_train_idx=ref[:5])
    assert (tr["knn_1_euc"] > 0.1).all()
    ens = ensemble_scores({"a": (z_test, z_train), "b": (z_test, z_train), "c": (z_test + 0.5 * rng.normal(size=z_test.shape), z_train)}, ref, k=10)
    assert list(ens.columns) == ["ens_nc_10", "ens_var"]
    assert ((ens["ens_nc_10"] > 0) & (ens["ens_nc_10"] <= 1)).all()  # c disagrees with a and b
    same = ensemble_scores({"a": (z_test, z_train), "b": (z_test, z_train)}, ref, k=10)
    assert np.allclose(same.to_numpy(), 0.0)

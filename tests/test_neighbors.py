"""Chunked exact k-NN against sklearn brute force and hand cases."""

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from riskdecomp.estimators.neighbors import knn
from riskdecomp.utils.errors import FeatureError


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_matches_sklearn_brute(metric):
    rng = np.random.default_rng(0)
    refs = rng.normal(size=(700, 16)) + 0.5
    q = rng.normal(size=(130, 16)) + 0.5
    dist, idx = knn(q, refs, 7, metric=metric, chunk=32)  # several chunks, last one partial
    nn = NearestNeighbors(n_neighbors=7, metric=metric, algorithm="brute").fit(refs)
    d_ref, i_ref = nn.kneighbors(q)
    assert dist.dtype == np.float32 and idx.dtype == np.int64 and dist.shape == (130, 7)
    np.testing.assert_array_equal(idx, i_ref)
    np.testing.assert_allclose(dist, d_ref, atol=2e-5)
    assert np.all(np.diff(dist, axis=1) >= 0)


def test_knn_exclude_self_drops_only_the_own_index():
    rng = np.random.default_rng(1)
    refs = rng.normal(size=(50, 4))
    own = np.r_[np.arange(10), -1]  # first 10 queries are refs 0..9, the last is not a ref
    q = np.r_[refs[:10], rng.normal(size=(1, 4))]
    _, idx = knn(q, refs, 3, metric="euclidean", exclude_self=own)
    assert not np.any(idx[:10] == np.arange(10)[:, None])
    nn = NearestNeighbors(n_neighbors=4).fit(refs)
    _, i4 = nn.kneighbors(q[:10])
    np.testing.assert_array_equal(idx[:10], i4[:, 1:])  # self would have been the 1st neighbour
    _, plain = knn(q[10:], refs, 3, metric="euclidean")
    np.testing.assert_array_equal(idx[10:], plain)


def test_knn_hand_case_and_errors():
    refs = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    d, i = knn(np.array([[2.0, 0.1]]), refs, 3, metric="euclidean")
    np.testing.assert_array_equal(i[0], [0, 1, 2])
    np.testing.assert_allclose(d[0], [np.hypot(1, 0.1), np.hypot(2, 1.9), np.hypot(5, 0.1)], rtol=1e-6)
    dc, ic = knn(np.array([[0.0, 5.0]]), refs, 2, metric="cosine")  # scale-free
    np.testing.assert_array_equal(ic[0], [1, 0])
    np.testing.assert_allclose(dc[0], [0.0, 1.0], atol=1e-6)
    with pytest.raises(FeatureError):
        knn(refs, refs, 4)
    with pytest.raises(FeatureError):
        knn(refs, refs, 3, exclude_self=np.arange(3))  # only 2 non-self refs left
    with pytest.raises(FeatureError):
        knn(refs, refs[:, :1], 1)
    with pytest.raises(FeatureError):
        knn(np.array([[np.nan, 0.0]]), refs, 1)
    with pytest.raises(FeatureError):
        knn(refs, refs, 1, metric="manhattan")


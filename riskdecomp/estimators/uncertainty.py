"""Per-sample uncertainty scores of embeddings (each score's definition in its function's docstring). Higher =
less reliable.

All functions take numpy feature arrays (rows = samples) and return numpy arrays or tidy
pandas tables. The reference set R is a fixed random subset of the *train* embeddings, chosen
by :func:`reference_indices` from ``n_train`` and a seed only, so every encoder shares it.

Score ids (DataFrame columns): ``knn_{k}_{cos|euc}``, ``gmm_nll``, ``vmf_nll``, ``neg_norm``,
``ens_nc_{k}``, ``ens_var``, ``aug_nc_{k}``, ``aug_disp``, ``post_var``, ``probe_entropy``,
``probe_lc``, ``probe_margin``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.special import entr, ive, logsumexp

from riskdecomp.estimators.neighbors import knn, unit_rows
from riskdecomp.utils.errors import FeatureError

_METRIC_TAG = {"cosine": "cos", "euclidean": "euc"}
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- reference set
def reference_indices(n_train: int, n_ref: int = 5000, seed: int = 0) -> np.ndarray:
    """Sorted indices of the reference subset of the train split.

    Depends only on (n_train, n_ref, seed), so all encoders evaluated on one dataset share R.
    If ``n_train <= n_ref`` the whole train split is used.
    """
    if n_train < 1:
        raise FeatureError("the train split is empty: no reference set")
    if n_train <= n_ref:
        return np.arange(n_train, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_train, size=n_ref, replace=False)).astype(np.int64)


def _self_in_ref(query_train_idx: np.ndarray | None, ref_idx: np.ndarray, n_train: int) -> np.ndarray | None:
    """Map each query's train index (or -1) to its position in R (or -1)."""
    if query_train_idx is None:
        return None
    pos = np.full(n_train, -1, dtype=np.int64)
    pos[ref_idx] = np.arange(len(ref_idx))
    q = np.asarray(query_train_idx, dtype=np.int64)
    return np.where(q >= 0, pos[np.clip(q, 0, n_train - 1)], -1)


# ----------------------------------------------------------------------------- density scores
def knn_distance(
    z: np.ndarray,
    z_ref: np.ndarray,
    k: int | Sequence[int] = (1, 10, 100),
    metric: str = "cosine",
    exclude_self: np.ndarray | None = None,
) -> dict[int, np.ndarray]:
    """u_k(x) = mean of the k smallest distances d(x, r), r in R (one search for the largest k).

    Returns ``{k: (n,) array}``. ``exclude_self`` as in :func:`riskdecomp.estimators.neighbors.knn`.
    """
    ks = [int(k)] if np.isscalar(k) else [int(v) for v in k]
    dist, _ = knn(z, z_ref, max(ks), metric=metric, exclude_self=exclude_self)
    csum = np.cumsum(dist, axis=1, dtype=np.float64)
    return {kk: csum[:, kk - 1] / kk for kk in ks}


def gmm_nll(z: np.ndarray, z_ref: np.ndarray, n_components: int = 20, seed: int = 0) -> np.ndarray:
    """u(x) = -log sum_c pi_c N(z; mu_c, diag Sigma_c), mixture fitted on R by sklearn EM.

    ``reg_covar`` is 1e-6 times the mean feature variance of R (scale-free regularisation).
    """
    from sklearn.mixture import GaussianMixture

    z_ref = np.asarray(z_ref, dtype=np.float64)
    n_components = max(1, min(int(n_components), len(z_ref)))
    scale = float(np.mean(np.var(z_ref, axis=0))) or 1.0
    gm = GaussianMixture(
        n_components=n_components, covariance_type="diag", reg_covar=1e-6 * scale,
        random_state=seed, max_iter=200,
    ).fit(z_ref)
    return -gm.score_samples(np.asarray(z, dtype=np.float64))


def vmf_log_normalizer(kappa: np.ndarray | float, d: int) -> np.ndarray:
    """log C_d(kappa) for the von Mises-Fisher density C_d(kappa) exp(kappa mu.x) on S^{d-1}.

    C_d(kappa) = kappa^{d/2-1} / ((2 pi)^{d/2} I_{d/2-1}(kappa)). log I_v uses the scaled
    Bessel function ``ive`` where it is representable and the uniform (Debye) asymptotic
    expansion for large order otherwise. kappa -> 0 gives the uniform density 1/|S^{d-1}|.
    """
    from scipy.special import gammaln

    kappa = np.maximum(np.asarray(kappa, dtype=np.float64), 1e-10)
    v = d / 2.0 - 1.0
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_i = np.log(ive(v, kappa)) + kappa
        zz = kappa / max(v, 1e-12)
        s = np.sqrt(1.0 + zz**2)
        debye = -0.5 * np.log(2 * np.pi * max(v, 1e-12)) + v * (s + np.log(zz / (1.0 + s))) - 0.5 * np.log(s)
    log_i = np.where(np.isfinite(log_i), log_i, debye)
    out = v * np.log(kappa) - (d / 2.0) * np.log(2 * np.pi) - log_i
    log_uniform = gammaln(d / 2.0) - np.log(2.0) - (d / 2.0) * np.log(np.pi)  # 1 / area of S^{d-1}
    return np.where(kappa < 1e-6, log_uniform, out)


def vmf_nll(
    z: np.ndarray, z_ref: np.ndarray, n_components: int = 20, seed: int = 0, max_iter: int = 50, tol: float = 1e-5
) -> np.ndarray:
    """u(x) = -log sum_c pi_c vMF(x_hat; mu_c, kappa_c): a vMF *mixture* on unit vectors, fitted on R.

    Soft EM (Banerjee et al. 2005): E-step responsibilities from log pi_c + log C_d(kappa_c)
    + kappa_c mu_c.x; M-step mu_c = r_c / |r_c|, rbar = |r_c| / N_c,
    kappa_c = rbar (d - rbar^2) / (1 - rbar^2). Initialised with k-means on R (seeded).
    """
    from sklearn.cluster import KMeans

    x_ref = unit_rows(np.asarray(z_ref, dtype=np.float64))
    x = unit_rows(np.asarray(z, dtype=np.float64))
    n, d = x_ref.shape
    kc = max(1, min(int(n_components), n))
    labels = KMeans(n_clusters=kc, n_init=1, random_state=seed).fit_predict(x_ref)
    resp = np.zeros((n, kc))
    resp[np.arange(n), labels] = 1.0
    prev = -np.inf
    for _ in range(max_iter):
        nk = resp.sum(0) + 1e-10
        r = resp.T @ x_ref  # (kc, d)
        rnorm = np.linalg.norm(r, axis=1)
        mu = r / np.maximum(rnorm, 1e-12)[:, None]
        rbar = np.clip(rnorm / nk, 1e-6, 1 - 1e-6)
        kappa = rbar * (d - rbar**2) / (1 - rbar**2)
        logpi = np.log(nk / n)
        logp = logpi + vmf_log_normalizer(kappa, d) + kappa * (x_ref @ mu.T)
        ll = logsumexp(logp, axis=1)
        resp = np.exp(logp - ll[:, None])
        mean_ll = ll.mean()
        if abs(mean_ll - prev) < tol * max(1.0, abs(mean_ll)):
            break
        prev = mean_ll
    nk = resp.sum(0) + 1e-10
    r = resp.T @ x_ref
    rnorm = np.linalg.norm(r, axis=1)
    mu = r / np.maximum(rnorm, 1e-12)[:, None]
    rbar = np.clip(rnorm / nk, 1e-6, 1 - 1e-6)
    kappa = rbar * (d - rbar**2) / (1 - rbar**2)
    logp = np.log(nk / n) + vmf_log_normalizer(kappa, d) + kappa * (x @ mu.T)
    return -logsumexp(logp, axis=1)


def neg_norm(z: np.ndarray) -> np.ndarray:
    """u(x) = -|z| (baseline: small embeddings are less reliable)."""
    return -np.linalg.norm(np.asarray(z, dtype=np.float64), axis=1)




def probe_scores(proba: np.ndarray) -> pd.DataFrame:
    """Label-using scores from probe probabilities p (n, C).

    probe_entropy = -sum p log p (nats); probe_lc = 1 - max p; probe_margin = -(p_(1) - p_(2)).
    """
    p = np.asarray(proba, dtype=np.float64)
    top2 = -np.sort(-p, axis=1)[:, :2] if p.shape[1] >= 2 else np.c_[p[:, 0], np.zeros(len(p))]
    return pd.DataFrame({
        "probe_entropy": entr(p).sum(axis=1),
        "probe_lc": 1.0 - top2[:, 0],
        "probe_margin": -(top2[:, 0] - top2[:, 1]),
    })


# ----------------------------------------------------------------------------- consistency scores
def neighborhood_inconsistency(index_sets: Sequence[np.ndarray]) -> np.ndarray:
    """u(x) = 1 - mean over pairs i<j of Jaccard(N^i(x), N^j(x)); each N is a row of k distinct indices.

    |A & B| is counted by sorting the concatenated rows and counting equal neighbours, so the
    whole computation is vectorised over samples.
    """
    sets = [np.asarray(s) for s in index_sets]
    if len(sets) < 2:
        raise FeatureError("neighbourhood consistency needs at least 2 neighbour sets (encoders or views)")
    k = sets[0].shape[1]
    jac = []
    for a, b in combinations(sets, 2):
        both = np.sort(np.concatenate([a, b], axis=1), axis=1)
        inter = (both[:, 1:] == both[:, :-1]).sum(axis=1)
        jac.append(inter / (2 * k - inter))
    return 1.0 - np.mean(jac, axis=0)


def ensemble_neighborhood_consistency(
    list_of_z: Sequence[np.ndarray],
    list_of_z_ref: Sequence[np.ndarray],
    k: int = 100,
    metric: str = "cosine",
    exclude_self: np.ndarray | None = None,
) -> np.ndarray:
    """ens_nc_k (Park et al.): 1 - mean pairwise Jaccard of the k-NN index sets in the shared R."""
    if len(list_of_z) != len(list_of_z_ref):
        raise FeatureError("ensemble consistency: one reference array per encoder is needed")
    n_ref = {len(r) for r in list_of_z_ref}
    if len(n_ref) != 1:
        raise FeatureError(f"ensemble consistency: encoders do not share R (sizes {sorted(n_ref)})")
    sets = [knn(z, r, k, metric=metric, exclude_self=exclude_self)[1] for z, r in zip(list_of_z, list_of_z_ref)]
    return neighborhood_inconsistency(sets)


def augmentation_consistency(
    views_z: np.ndarray, z_ref: np.ndarray, k: int = 100, metric: str = "cosine"
) -> pd.DataFrame:
    """aug_nc_k = 1 - mean over view pairs a<b of Jaccard(N_k(t_a x), N_k(t_b x));
    aug_disp = 1 - mean over view pairs of cos(f(t_a x), f(t_b x)). ``views_z`` is (T, n, d)."""
    views = np.asarray(views_z, dtype=np.float32)
    if views.ndim != 3 or views.shape[0] < 2:
        raise FeatureError(f"views_z must be (T>=2, n, d), got shape {views.shape}")
    sets = [knn(v, z_ref, k, metric=metric)[1] for v in views]
    unit = unit_rows(views.astype(np.float64))
    cos = [np.einsum("ij,ij->i", unit[a], unit[b]) for a, b in combinations(range(len(unit)), 2)]
    return pd.DataFrame({f"aug_nc_{k}": neighborhood_inconsistency(sets), "aug_disp": 1.0 - np.mean(cos, axis=0)})


def ensemble_variance(list_of_z: Sequence[np.ndarray]) -> np.ndarray:
    """ens_var = sum over dims of the variance (ddof=0) across encoders of z_hat = z/|z|."""
    dims = {np.shape(z)[1] for z in list_of_z}
    if len(dims) != 1:
        raise FeatureError(f"ensemble variance needs encoders of one dimension, got {sorted(dims)}")
    stack = np.stack([unit_rows(np.asarray(z, dtype=np.float64)) for z in list_of_z])
    return stack.var(axis=0).sum(axis=1)


# ----------------------------------------------------------------------------- convenience tables
def label_free_scores(
    z_test: np.ndarray,
    z_train: np.ndarray,
    *,
    ref_idx: np.ndarray,
    ks: Sequence[int] = (1, 10, 100),
    metrics: Sequence[str] = ("cosine", "euclidean"),
    n_components: int = 20,
    seed: int = 0,
    query_train_idx: np.ndarray | None = None,
) -> pd.DataFrame:
    """All label-free single-encoder scores of the test points, one column per score id.

    Columns: ``knn_{k}_{cos|euc}`` for each k and metric (a k above the number of reference points is skipped
    with a warning naming the score, as few-shot settings are), ``gmm_nll`` (diag GMM on z),
    ``vmf_nll`` (vMF mixture on z_hat), ``neg_norm``. ``query_train_idx`` (optional): each
    query's index in the train split (or -1) so self-matches in R are dropped.
    """
    z_ref = np.asarray(z_train)[ref_idx]
    own = _self_in_ref(query_train_idx, np.asarray(ref_idx), len(z_train))
    n_avail = len(z_ref) - int(own is not None and bool((own >= 0).any()))
    usable = [int(k) for k in ks if int(k) <= n_avail]
    for k in ks:  # like a few-shot setting the data cannot support: skipped, said in one line, not fatal
        if int(k) > n_avail:
            names = ", ".join(f"knn_{int(k)}_{_METRIC_TAG[m]}" for m in metrics)
            log.warning("%s skipped: k=%d neighbours asked but the reference set has only %d points", names,
                        int(k), n_avail)
    cols: dict[str, np.ndarray] = {}
    for metric in metrics:
        if not usable:
            break
        for kk, u in knn_distance(z_test, z_ref, usable, metric=metric, exclude_self=own).items():
            cols[f"knn_{kk}_{_METRIC_TAG[metric]}"] = u
    cols["gmm_nll"] = gmm_nll(z_test, z_ref, n_components=n_components, seed=seed)
    cols["vmf_nll"] = vmf_nll(z_test, z_ref, n_components=n_components, seed=seed)
    cols["neg_norm"] = neg_norm(z_test)
    return pd.DataFrame(cols)


def ensemble_scores(
    encoders: Mapping[str, tuple[np.ndarray, np.ndarray]],
    ref_idx: np.ndarray,
    k: int = 100,
    metric: str = "cosine",
) -> pd.DataFrame:
    """ens_nc_k and ens_var of the test points for an ensemble ``{name: (z_test, z_train)}``.

    ens_var is NaN (with a warning) when the encoders' dimensions differ.
    """
    if len(encoders) < 2:
        raise FeatureError(f"an ensemble needs at least 2 encoders, got {len(encoders)}")
    zs = [np.asarray(zt) for zt, _ in encoders.values()]
    refs = [np.asarray(ztr)[ref_idx] for _, ztr in encoders.values()]
    out = {f"ens_nc_{k}": ensemble_neighborhood_consistency(zs, refs, k=k, metric=metric)}
    if len({z.shape[1] for z in zs}) == 1:
        out["ens_var"] = ensemble_variance(zs)
    else:
        warnings.warn("ens_var skipped: ensemble members have different dimensions", stacklevel=2)
        out["ens_var"] = np.full(len(zs[0]), np.nan)
    return pd.DataFrame(out)

"""Representation statistics of a feature matrix (the study's ``statistics`` columns).

All statistics are computed in float64 on ``z`` (n x d) with integer labels ``y`` (K classes);
``mu_c`` are class means, ``ẑ = z / ‖z‖``. Definitions:

- ``rank``: effective rank = number of eigenvalues of the d x d Pearson correlation matrix (constant
  features dropped) above ``max(1e-4, 0.01 * largest)``.
- ``rank_Z``: number of singular values of Z above ``max(1e-4, 0.01 * largest)``.
- ``rankme``: ``exp(-sum p_k log p_k)`` with ``p_k = s_k / sum(s) + 1e-7`` and ``s`` the singular
  values of Z (the RankMe paper's definition, NOT covariance eigenvalues).
- ``alpha_req``: ``-slope`` of ``log(eigenvalue_i)`` vs ``log(i)`` for the covariance spectrum
  (sorted decreasing, 1-based indices 10..100, positive eigenvalues only), least squares;
  ``alpha_req_r2`` is the fit's R².
- ``intra_var = mean_c mean_{i in c} ‖z_i - mu_c‖²``; ``inter_var = mean_c ‖mu_c - mean_c' mu_c'‖²``;
  ``vars = intra_var / inter_var``.
- ``nc1 = trace(Sigma_W pinv(Sigma_B))`` with ``Sigma_W = mean_c Cov_c`` (biased class covariances,
  so ``trace(Sigma_W) = intra_var``) and ``Sigma_B`` the biased covariance of the class means (so
  ``trace(Sigma_B) = inter_var``); the pseudo-inverse is taken through the SVD of the centred class
  means with numpy's ``matrix_rank`` tolerance. ``nc1norm = nc1 / sqrt(rank)``.
- ``uniformity``: ``log`` of the mean over random chunks of ~128 points of
  ``mean_{i<j} exp(-2 ‖ẑ_i - ẑ_j‖²)`` (lower = more uniform).
- ``alignment``: ``mean_c 2 * mean_{i in c} ‖ẑ_i - mean_{j in c} ẑ_j‖²``.

Augmentation variants: ``aug_views`` of shape (T, n, d) holds T augmented views of n images; the
"class" is the image id, and intra_var, inter_var, vars, nc1, nc1norm (divided by ``sqrt(rank)`` of
the un-augmented features, as in the published table) and alignment are reported under
``prefix.rstrip("_") + "aug_"`` — i.e. ``trainaug_nc1`` for ``prefix="train_"``, the published names.
"""

from __future__ import annotations

import numpy as np

from riskdecomp.estimators.solvers import constant_columns
from riskdecomp.utils.errors import FeatureError

_RANK_FLOOR = 1e-4
_RANK_REL = 0.01
_RANKME_EPS = 1e-7
_ALPHA_RANGE = (10, 100)
_UNIF_CHUNK = 128


def _count_above(values: np.ndarray) -> int:
    if values.size == 0:
        return 0
    thr = max(_RANK_FLOOR, _RANK_REL * float(values.max()))
    return int(np.sum(values > thr))


def effective_rank(z: np.ndarray) -> int:
    """Eigenvalues of the Pearson correlation matrix (constant features dropped) above threshold."""
    z = np.asarray(z, dtype=np.float64)
    keep = ~constant_columns(z.mean(axis=0), z.std(axis=0))  # a near-constant column's correlations are noise
    if keep.sum() == 0:
        return 0
    if keep.sum() == 1:
        return 1
    corr = np.corrcoef(z[:, keep], rowvar=False)
    return _count_above(np.linalg.eigvalsh(corr))


def rank_z(z: np.ndarray) -> int:
    """Singular values of Z above ``max(1e-4, 0.01 * largest)``."""
    return _count_above(np.linalg.svd(np.asarray(z, dtype=np.float64), compute_uv=False))


def rankme(z: np.ndarray) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of Z."""
    s = np.linalg.svd(np.asarray(z, dtype=np.float64), compute_uv=False)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum() + _RANKME_EPS
    return float(np.exp(-np.sum(p * np.log(p))))


def alpha_req(z: np.ndarray) -> tuple[float, float]:
    """Power-law decay ``alpha`` of the covariance spectrum over indices 10..100 and the fit's R².

    Returns (nan, nan) when fewer than 3 positive eigenvalues fall in the index range.
    """
    z = np.asarray(z, dtype=np.float64)
    eig = np.sort(np.linalg.eigvalsh(np.cov(z, rowvar=False, bias=True).reshape(z.shape[1], -1)))[::-1]
    lo, hi = _ALPHA_RANGE
    idx = np.arange(1, eig.size + 1)
    sel = (idx >= lo) & (idx <= hi) & (eig > 0)
    if sel.sum() < 3:
        return float("nan"), float("nan")
    x, t = np.log(idx[sel]), np.log(eig[sel])
    slope, intercept = np.polyfit(x, t, 1)
    resid = t - (slope * x + intercept)
    ss_tot = np.sum((t - t.mean()) ** 2)
    r2 = 1.0 - np.sum(resid**2) / ss_tot if ss_tot > 0 else float("nan")
    return float(-slope), float(r2)


def _class_means(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes, inv = np.unique(y, return_inverse=True)
    counts = np.bincount(inv).astype(np.float64)
    mu = np.zeros((classes.size, z.shape[1]))
    np.add.at(mu, inv, z)
    return mu / counts[:, None], inv


def class_variances(z: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """intra_var, inter_var, vars and nc1 (see module docstring)."""
    z = np.asarray(z, dtype=np.float64)
    mu, inv = _class_means(z, y)
    k = mu.shape[0]
    centred = z - mu[inv]
    counts = np.bincount(inv).astype(np.float64)
    per_class_sq = np.bincount(inv, weights=np.sum(centred**2, axis=1)) / counts
    intra = float(per_class_sq.mean())
    m = mu - mu.mean(axis=0)
    inter = float(np.mean(np.sum(m**2, axis=1)))
    # Sigma_B = m.T m / k = V diag(s²/k) V.T ; pinv(Sigma_B) = V diag(k/s²) V.T over s > tol.
    _, s, vt = np.linalg.svd(m, full_matrices=False)
    tol = s.max() * max(m.shape) * np.finfo(np.float64).eps if s.size else 0.0
    keep = s > tol
    if keep.any():
        proj = centred @ vt[keep].T  # n x r
        # v_j.T Sigma_W v_j = mean_c mean_{i in c} (proj_ij)²
        w = np.stack([np.bincount(inv, weights=proj[:, j] ** 2) / counts for j in range(proj.shape[1])], 1)
        nc1 = float(np.sum(w.mean(axis=0) * k / s[keep] ** 2))
    else:
        nc1 = float("nan")
    return {
        "intra_var": intra,
        "inter_var": inter,
        "vars": intra / inter if inter > 0 else float("nan"),
        "nc1": nc1,
    }


def _normalize(z: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.where(norm > 0, norm, 1.0)


def uniformity(z: np.ndarray, *, seed: int = 0, chunk: int = _UNIF_CHUNK) -> float:
    """log of the mean over random chunks of mean_{i<j} exp(-2‖ẑ_i - ẑ_j‖²) (t = 2)."""
    zh = _normalize(np.asarray(z, dtype=np.float64))
    n = zh.shape[0]
    if n < 2:
        return float("nan")
    order = np.random.default_rng(seed).permutation(n)
    n_chunks = max(1, n // chunk)
    vals = []
    for part in np.array_split(order, n_chunks):
        if part.size < 2:
            continue
        x = zh[part]
        sq = np.maximum(2.0 - 2.0 * (x @ x.T), 0.0)  # unit vectors: ‖a-b‖² = 2 - 2 a.b
        iu = np.triu_indices(part.size, k=1)
        vals.append(np.mean(np.exp(-2.0 * sq[iu])))
    return float(np.log(np.mean(vals)))


def alignment(z: np.ndarray, y: np.ndarray) -> float:
    """mean over classes of 2 * mean ‖ẑ_i - mean_class ẑ‖²."""
    zh = _normalize(np.asarray(z, dtype=np.float64))
    mu, inv = _class_means(zh, y)
    counts = np.bincount(inv).astype(np.float64)
    per_class = np.bincount(inv, weights=np.sum((zh - mu[inv]) ** 2, axis=1)) / counts
    return float(2.0 * per_class.mean())


def representation_statistics(
    z: np.ndarray,
    y: np.ndarray,
    *,
    prefix: str = "train_",
    aug_views: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """All statistics of the module docstring for features ``z`` (n x d) and labels ``y`` (n,).

    Keys are prefixed (``train_rank``, ``train_nc1``...). With ``aug_views`` (T, n, d) the
    augmentation-invariance variants are added as ``<prefix without _>aug_<name>``.
    Raises :class:`FeatureError` on bad shapes or non-finite values.
    """
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y)
    if z.ndim != 2 or y.ndim != 1 or z.shape[0] != y.shape[0]:
        raise FeatureError(f"statistics need z (n, d) and y (n,), got {z.shape} and {y.shape}")
    if not np.isfinite(z).all():
        raise FeatureError("statistics: features contain NaN or inf")
    if np.unique(y).size < 2:
        raise FeatureError("statistics: need at least 2 classes")
    rank = effective_rank(z)
    a, a_r2 = alpha_req(z)
    out: dict[str, float] = {
        "rank": float(rank),
        "rank_Z": float(rank_z(z)),
        "rankme": rankme(z),
        "alpha_req": a,
        "alpha_req_r2": a_r2,
    }
    out.update(class_variances(z, y))
    out["nc1norm"] = out["nc1"] / np.sqrt(rank) if rank > 0 else float("nan")
    out["uniformity"] = uniformity(z, seed=seed)
    out["alignment"] = alignment(z, y)
    result = {f"{prefix}{k}": float(v) for k, v in out.items()}

    if aug_views is not None:
        v = np.asarray(aug_views, dtype=np.float64)
        if v.ndim != 3 or v.shape[2] != z.shape[1]:
            raise FeatureError(f"aug_views must be (T, n, {z.shape[1]}), got {v.shape}")
        if not np.isfinite(v).all():
            raise FeatureError("statistics: augmented views contain NaN or inf")
        t, n, _ = v.shape
        za = v.reshape(t * n, -1)
        ids = np.tile(np.arange(n), t)
        aug = class_variances(za, ids)
        aug["nc1norm"] = aug["nc1"] / np.sqrt(rank) if rank > 0 else float("nan")
        aug["alignment"] = alignment(za, ids)
        aug_prefix = prefix.rstrip("_") + "aug_"
        result.update({f"{aug_prefix}{k}": float(val) for k, val in aug.items()})
    return result

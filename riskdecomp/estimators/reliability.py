"""Per-point reliability targets and metrics of an uncertainty score against them.

Targets (per test point): ``err01`` (probe 0-1 error), ``loss`` (probe cross-entropy),
``brier_ovo`` (Park et al.: Brier score of one-vs-one binary logistic probes averaged over
the C-1 class pairs that contain the point's true class).

Metrics (orientation fixed: u is an uncertainty, higher = less reliable; positive / large =
the score tracks error; never absolute values):
- ``kendall_tau`` (tau-b, as ``scipy.stats.kendalltau``) and ``spearman_rho`` between u and the target.
- ``auroc``: AUROC of u for detecting err01 = 1 (binary targets only; sklearn-equivalent).
- ``aurc``: mean over coverages j/n, j = 1..n, of the mean target of the j most certain points
  (reject the most uncertain first); ties in u are resolved by their expectation under random
  tie-breaking (tied points get their group's mean target). ``excess_aurc`` = aurc - aurc of the
  oracle ordering (by the target itself).
- 10 equal-mass bins of u (rank order, bin 1 = most certain): ``acc_bin_01..10`` (1 - mean
  err01) for binary targets, ``mean_bin_01..10`` otherwise, plus ``decile_gap`` = mean target
  in the most uncertain decile - in the most certain one (for err01: accuracy gap between the
  most and least certain decile).
Confidence intervals: percentile bootstrap (2.5 %, 97.5 %) over test points, the same
resamples for every metric (and for every score/target pair in :func:`evaluate_scores`).
Kendall's tau of all B resamples at once (:func:`kendall_tau_b_weighted`): a resample is the
original points with multiplicities w (B x n), so its concordant-minus-discordant count is
w^T M w / 2 with the fixed n x n matrix M_ij = sgn(u_i - u_j) sgn(t_i - t_j), i.e. one matrix
product for all resamples (1000 per-resample ``scipy.stats.kendalltau`` calls cost ~1 s per
score/target pair; this is ~100x less on the default zoo).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from riskdecomp.estimators.solvers import brier_ovo
from riskdecomp.utils.errors import FeatureError

N_BINS = 10
# Names of the decile-bin metrics, shared by the producer (here) and the consumers (report): ``acc_bin_01`` ..
# ``acc_bin_10`` (binary targets: accuracy) and ``mean_bin_01`` .. (other targets: mean target); bin 1 = most certain.
ACC_BIN, MEAN_BIN = "acc_bin", "mean_bin"
BIN_METRIC_RE = r"(?P<kind>acc_bin|mean_bin)_(?P<bin>\d{2})"


def bin_metric(kind: str, j: int) -> str:
    """Metric name of bin ``j`` (1 = most certain .. ``N_BINS``) of ``kind`` (:data:`ACC_BIN` or :data:`MEAN_BIN`)."""
    return f"{kind}_{j:02d}"




def targets(
    y_test: np.ndarray,
    proba: np.ndarray,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    *,
    classes: np.ndarray | None = None,
    C: float = 1.0,
    eps: float = 1e-12,
) -> pd.DataFrame:
    """Per-test-point targets: err01, loss, brier_ovo.

    ``proba`` (n, C) holds the probe's probabilities, its columns ordered like ``classes``
    (default: sorted unique train labels, sklearn's ``classes_``). err01 = [argmax p != y];
    loss = -log max(p_y, eps); brier_ovo from :func:`brier_ovo` with inverse regularisation C.
    """
    proba = np.asarray(proba, dtype=np.float64)
    classes = np.unique(y_train) if classes is None else np.asarray(classes)
    if proba.shape != (len(y_test), len(classes)):
        raise FeatureError(f"proba has shape {proba.shape}, expected ({len(y_test)}, {len(classes)})")
    if not np.isin(y_test, classes).all():
        raise FeatureError("a test label is not among the probe's classes")
    col = np.searchsorted(classes, y_test)
    p_true = proba[np.arange(len(col)), col]
    return pd.DataFrame({
        "err01": (classes[proba.argmax(1)] != np.asarray(y_test)).astype(np.float64),
        "loss": -np.log(np.maximum(p_true, eps)),
        "brier_ovo": brier_ovo(x_train, y_train, x_test, y_test, C=C),
    })


# ----------------------------------------------------------------------------- metrics
def _tie_mean_sorted(us: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Rows of targets ``ts`` ordered by the score (``us``: the scores in that order, ascending), each value replaced
    by the mean target of the points of its row with the same score (tied points are contiguous once sorted)."""
    b, n = us.shape
    new = np.ones((b, n), dtype=bool)
    new[:, 1:] = us[:, 1:] != us[:, :-1]
    gid = (np.cumsum(new, axis=1) - 1 + (np.arange(b) * n)[:, None]).ravel()
    sums = np.bincount(gid, weights=ts.ravel(), minlength=b * n)
    counts = np.bincount(gid, minlength=b * n)
    return (sums / np.maximum(counts, 1))[gid].reshape(b, n)


def _aurc_rows(t_sorted: np.ndarray) -> np.ndarray:
    """AURC per row of targets already ordered from most to least certain."""
    n = t_sorted.shape[-1]
    return (np.cumsum(t_sorted, axis=-1) / np.arange(1, n + 1)).mean(axis=-1)


def _bins_rows(t_sorted: np.ndarray) -> np.ndarray:
    """Mean target in 10 equal-mass bins (rank order) per row -> (..., 10)."""
    n = t_sorted.shape[-1]
    edges = np.linspace(0, n, N_BINS + 1).round().astype(int)
    cs = np.concatenate([np.zeros(t_sorted.shape[:-1] + (1,)), np.cumsum(t_sorted, axis=-1)], axis=-1)
    return (cs[..., edges[1:]] - cs[..., edges[:-1]]) / np.diff(edges)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def _pairs_tied(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per row of multiplicities w (B, n): number of unordered pairs of the resampled vector tied in v."""
    order = np.argsort(v, kind="stable")
    vs = v[order]
    starts = np.r_[0, np.nonzero(vs[1:] != vs[:-1])[0] + 1]
    group_w = np.add.reduceat(w[:, order], starts, axis=1)  # resampled size of each tie group
    return 0.5 * ((group_w ** 2).sum(1) - w.sum(1))


def kendall_tau_b_weighted(u: np.ndarray, t: np.ndarray, w: np.ndarray, block_bytes: int = 1 << 26) -> np.ndarray:
    """Kendall's tau-b of the vectors that repeat point i of (u, t) w[b, i] times, for every row b of w.

    With M_ij = sgn(u_i - u_j) sgn(t_i - t_j): concordant - discordant = w^T M w / 2 (copies of one
    point are tied in both, M_ii = 0); tau-b = that / sqrt((n0 - n_u)(n0 - n_t)), n0 = N(N-1)/2 for
    N = sum(w), n_u / n_t the pairs tied in u / t. ``w = ones`` gives ``scipy.stats.kendalltau``;
    bootstrap counts give each resample's tau. M is built in column blocks of at most
    ``block_bytes``, so memory stays bounded for any n; cost B n^2 multiply-adds.
    """
    u = np.asarray(u, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    w = np.atleast_2d(np.asarray(w, dtype=np.float32))
    n = u.size
    s = np.zeros(w.shape[0])
    step = max(1, int(block_bytes // (4 * n)))
    for lo in range(0, n, step):
        cols = slice(lo, min(n, lo + step))
        m = (np.sign(u[:, None] - u[None, cols]) * np.sign(t[:, None] - t[None, cols])).astype(np.float32)
        s += ((w @ m) * w[:, cols]).sum(1, dtype=np.float64)
    big_n = w.sum(1, dtype=np.float64)
    n0 = big_n * (big_n - 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return (s / 2) / np.sqrt((n0 - _pairs_tied(w, u)) * (n0 - _pairs_tied(w, t)))


def _score_parts(u: np.ndarray) -> dict:
    """What every metric needs of the (B, n) score rows: ranks, sort order and sorted values (computed once per
    score, shared by all its targets)."""
    order = np.argsort(u, axis=-1, kind="stable")
    return {"rank": rankdata(u, axis=-1), "order": order, "sorted": np.take_along_axis(u, order, axis=-1)}


def _target_parts(t: np.ndarray) -> dict:
    """The same for the (B, n) target rows (computed once per target, shared by all scores)."""
    return {"t": t, "rank": rankdata(t, axis=-1), "sorted": np.sort(t, axis=-1)}


def _metric_values(u: np.ndarray, t: np.ndarray, binary: bool, *, _u: dict | None = None,
                   _t: dict | None = None) -> dict[str, np.ndarray]:
    """All metrics but Kendall's tau for each row of (B, n) arrays u, t (vectorised). ``_u`` / ``_t``: the
    precomputed :func:`_score_parts` / :func:`_target_parts` of the same rows."""
    pu = _u if _u is not None else _score_parts(u)
    pt = _t if _t is not None else _target_parts(t)
    out: dict[str, np.ndarray] = {}
    ru = pu["rank"]
    out["spearman_rho"] = _pearson_rows(ru, pt["rank"])
    n = u.shape[-1]
    if binary:
        n1 = t.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["auroc"] = ((ru * t).sum(-1) - n1 * (n1 + 1) / 2) / (n1 * (n - n1))
    tm = _tie_mean_sorted(pu["sorted"], np.take_along_axis(t, pu["order"], axis=-1))
    out["aurc"] = _aurc_rows(tm)
    out["excess_aurc"] = out["aurc"] - _aurc_rows(pt["sorted"])
    bins = _bins_rows(tm)
    kind = ACC_BIN if binary else MEAN_BIN
    vals = 1.0 - bins if binary else bins
    for j in range(N_BINS):
        out[bin_metric(kind, j + 1)] = vals[..., j]
    out["decile_gap"] = bins[..., -1] - bins[..., 0]
    return out


def _is_binary(t: np.ndarray) -> bool:
    return bool(np.isin(t, (0.0, 1.0)).all())


def _boot_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _check_pair(u: np.ndarray, t: np.ndarray) -> None:
    if u.shape != t.shape:
        raise FeatureError(f"score has {u.size} values but target has {t.size}")
    if u.size < 2 * N_BINS:
        raise FeatureError(f"need at least {2 * N_BINS} test points for the metrics, got {u.size}")
    if not (np.isfinite(u).all() and np.isfinite(t).all()):
        raise FeatureError("score or target contains NaN/inf")


def _metric_tables(scores: dict, targets: dict, binary: dict, idx: np.ndarray | None) -> dict:
    """(score, target) -> tidy (metric, value, ci_lo, ci_hi) for every pair of equally long, finite vectors, all
    pairs on the bootstrap resamples ``idx`` (B x n indices; None: no CIs). Ranks and sort orders are computed once
    per score and once per target (not once per pair), and each pair's Kendall tau (point + all resamples) is one
    :func:`kendall_tau_b_weighted` call."""
    n = len(next(iter(scores.values())))
    w = np.ones((1, n), dtype=np.float32)
    if idx is not None:
        # multiplicity of each point in each resample (B x n float32: 40 MB at B = 1000, n = 10k)
        counts = np.zeros((len(idx), n), dtype=np.float32)
        np.add.at(counts, (np.repeat(np.arange(len(idx)), idx.shape[1]), idx.ravel()), 1.0)
        w = np.vstack([w, counts])
    point, boot = {}, {}
    t_point = {tn: _target_parts(t[None]) for tn, t in targets.items()}
    for sn, u in scores.items():
        u_point = _score_parts(u[None])
        for tn, t in targets.items():
            tau = kendall_tau_b_weighted(u, t, w)
            point[sn, tn] = {"kendall_tau": tau[:1],
                             **_metric_values(u[None], t[None], binary[tn], _u=u_point, _t=t_point[tn])}
            boot[sn, tn] = {"kendall_tau": [tau[1:]]}
    for lo in range(0, 0 if idx is None else len(idx), 100):  # blocks of 100 resamples: memory ~100 n floats
        block = idx[lo:lo + 100]
        t_rows = {tn: t[block] for tn, t in targets.items()}
        t_parts = {tn: _target_parts(tr) for tn, tr in t_rows.items()}
        for sn, u in scores.items():
            ub = u[block]
            u_parts = _score_parts(ub)
            for tn, tr in t_rows.items():
                for key, val in _metric_values(ub, tr, binary[tn], _u=u_parts, _t=t_parts[tn]).items():
                    boot[sn, tn].setdefault(key, []).append(val)
    tables = {}
    for pair, vals in point.items():
        rows = []
        for key, val in vals.items():
            if idx is not None:
                bv = np.concatenate(boot[pair][key])
                lo_, hi_ = np.nanpercentile(bv, [2.5, 97.5]) if np.isfinite(bv).any() else (np.nan, np.nan)
            else:
                lo_ = hi_ = np.nan
            rows.append((key, float(val[0]), float(lo_), float(hi_)))
        tables[pair] = pd.DataFrame(rows, columns=["metric", "value", "ci_lo", "ci_hi"])
    return tables


def score_metrics(
    u: np.ndarray,
    target_values: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    binary: bool | None = None,
) -> pd.DataFrame:
    """Tidy table (metric, value, ci_lo, ci_hi) of one uncertainty score against one target.

    ``binary`` (default: target values all in {0, 1}) switches on ``auroc`` and the accuracy
    bins. CIs: 95 % percentile bootstrap over test points (NaN when n_boot = 0).
    """
    u = np.asarray(u, dtype=np.float64).ravel()
    t = np.asarray(target_values, dtype=np.float64).ravel()
    _check_pair(u, t)
    binary = _is_binary(t) if binary is None else binary
    idx = _boot_indices(u.size, n_boot, seed) if n_boot > 0 else None
    return _metric_tables({"u": u}, {"t": t}, {"t": binary}, idx)["u", "t"]


def evaluate_scores(scores: pd.DataFrame, targets: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Every score column against every target column -> tidy (score, target, metric, value, ci_lo, ci_hi).

    Rows where a score or target is NaN are dropped for that pair (and the bootstrap is then redrawn for that
    subset, as :func:`score_metrics` does); the pairs without NaN share the same bootstrap resamples. A score with
    fewer than ``2 * N_BINS`` finite values is left out.
    """
    if len(scores) != len(targets):
        raise FeatureError(f"{len(scores)} score rows but {len(targets)} target rows")
    n = len(scores)
    shared = _boot_indices(n, n_boot, seed) if n_boot > 0 else None
    t_all = {tn: targets[tn].to_numpy(dtype=np.float64) for tn in targets.columns}
    binary = {tn: _is_binary(t[np.isfinite(t)]) for tn, t in t_all.items()}
    full_t = {tn: t for tn, t in t_all.items() if np.isfinite(t).all()}
    full_u, tables = {}, {}
    for s in scores.columns:
        u = scores[s].to_numpy(dtype=np.float64)
        keep = np.isfinite(u)
        if keep.sum() < 2 * N_BINS:
            continue
        if keep.all():
            full_u[s] = u
        for tn, t in t_all.items():
            if not (keep.all() and tn in full_t):  # NaNs in the pair: its own subset and resamples
                tables[s, tn] = score_metrics(u[keep & np.isfinite(t)], t[keep & np.isfinite(t)], n_boot=n_boot,
                                              seed=seed, binary=binary[tn])
    if full_u and full_t:
        _check_pair(next(iter(full_u.values())), next(iter(full_t.values())))
        tables.update(_metric_tables(full_u, full_t, binary, shared))
    parts = []
    for s in scores.columns:  # in column order
        for tn in targets.columns:
            if (s, tn) in tables:
                tab = tables[s, tn].copy()
                tab.insert(0, "target", tn)
                tab.insert(0, "score", s)
                parts.append(tab)
    if not parts:
        return pd.DataFrame(columns=["score", "target", "metric", "value", "ci_lo", "ci_hi"])
    return pd.concat(parts, ignore_index=True)


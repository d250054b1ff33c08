"""The scaling law of the few-shot errors in the risk components (Dubois et al., section 5).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import optimize

from riskdecomp.analysis.tables import (
    fewshot_settings,
    leaderboard_table,
    setting_name,
    setting_sizes,
)
from riskdecomp.utils.schema import COMPONENTS

# ----------------------------------------------------------------------------- scaling law
#: A scaling law is shown only when it is fitted on at least this many models ...
MIN_MODELS_FOR_FIT = 5
#: ... explains at least this share of the variance of the errors it predicts (overall and few-shot only) ...
MIN_R2 = 0.5
#: ... and neither parameter sits at a bound of its range (alpha in [0, 5], B in [0, 1]): a fit pinned at a bound
#: is the bound, not an estimate.
BOUNDS = {"alpha": (0.0, 5.0), "B": (0.0, 1.0)}


def scaling_quality(params: dict, n_models: int) -> tuple[bool, str]:
    """``(shown, why)`` of a fitted scaling law: ``why`` states the rule that failed with its value (e.g.
    "R² 0.28 < 0.5"), or, when shown, the fit quality ("R² 0.95 on 13 models")."""
    if n_models < MIN_MODELS_FOR_FIT:
        return False, f"{n_models} models < {MIN_MODELS_FOR_FIT}"
    for key, label in (("r2", "R²"), ("r2_fewshot", "few-shot R²")):
        r2 = params.get(key)
        if r2 is None or not np.isfinite(r2) or r2 < MIN_R2:
            return False, f"{label} {r2:.2f} < {MIN_R2}" if r2 is not None and np.isfinite(r2) else f"{label} undefined"
    for name, (lo, hi) in BOUNDS.items():
        v = float(params.get(name, np.nan))
        if np.isclose(v, lo, atol=1e-6) or np.isclose(v, hi, atol=1e-6):
            return False, f"{name} at its bound ({name} = {v:.3g}, range [{lo:g}, {hi:g}])"
    return True, f"R² {params['r2']:.2f} (few-shot {params['r2_fewshot']:.2f}) on {n_models} models"

def scaling_law_predict(A, U, P, E, N, n, alpha: float, B: float) -> np.ndarray:
    """err(n) = E + (1-B)(A+U) + (B(A+U) + P)(N/n)^alpha, clipped to [0, 100].

    Only A + U enters, so a model without a supervised reference (approx NaN, merged into
    usability: ``approx_merged``) is fitted with A = 0 (see :func:`_scaling_long`); rows missing any
    other component are dropped.
    """
    au = np.asarray(A, float) + np.asarray(U, float)
    pred = np.asarray(E, float) + (1 - B) * au + (B * au + np.asarray(P, float)) * (
        np.asarray(N, float) / np.asarray(n, float)) ** alpha
    return np.clip(pred, 0.0, 100.0)


def _scaling_long(t: pd.DataFrame) -> pd.DataFrame:
    settings = ["agg_risk"] + list(fewshot_settings(t))
    need = [*COMPONENTS, "n_train", "n_sub"]
    if any(c not in t for c in need):
        return pd.DataFrame()
    rows = []
    # N: the train points a held-out probe saw (n_sub = points per held-out set, single S or a cross-fit fold)
    big_n = pd.to_numeric(t["n_train"], errors="coerce") - pd.to_numeric(t["n_sub"], errors="coerce")
    for col in settings:
        if col not in t:
            continue
        n = setting_sizes(t, col)
        part = pd.DataFrame({
            "model": t["model"], "dataset": t["dataset"],
            "setting": "full" if col == "agg_risk" else setting_name(col),
            # approx NaN = merged into usability (no reference): A + U is then usability alone
            "A": t["approx"].where(t["approx"].notna() | t["usability"].isna(), 0.0),
            "U": t["usability"], "P": t["probe_gen"], "E": t["enc_gen"],
            "N": big_n, "n": n, "actual": pd.to_numeric(t[col], errors="coerce"),
        })
        rows.append(part)
    long = pd.concat(rows, ignore_index=True).dropna()
    return long[(long["n"] > 0) & (long["N"] > 0)].reset_index(drop=True)


def _r2_rmse(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    rmse = float(np.sqrt(np.mean((y - p) ** 2))) if len(y) else float("nan")
    ss = np.sum((y - y.mean()) ** 2) if len(y) else 0.0
    r2 = float(1 - np.sum((y - p) ** 2) / ss) if ss > 0 else float("nan")
    return r2, rmse


def fit_scaling_law(df: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """Fit the two shared parameters (alpha, B) of the component scaling law by least squares.

    Uses every (model, setting) pair with complete data: settings are full shot (agg_risk, n =
    n_train) and each few-shot column (k-shot n = k * n_classes, p% n = floor(p/100 * n_train));
    N = n_train - n_sub. Bounds: alpha in [0, 5], B in [0, 1] (B is the share of approx+usability
    that shrinks with more labels; outside [0, 1] a coefficient would turn negative).

    Also fits, for comparison, a standard scaling law that ignores the components:
    err_m(n) = agg_m + c * ((n_full/n)^a - 1) with shared c, a (``baseline_r2``/``baseline_rmse``).

    Returns (params, predictions): params has alpha, B, r2, rmse, n_points, ``r2_<setting>`` and
    ``rmse_<setting>`` per setting, baseline_r2, baseline_rmse, n_models and ``shown`` / ``why``
    (:func:`scaling_quality`: a poor fit is not to be drawn or summarised, and ``why`` says so); predictions
    one row per pair
    (model, dataset, setting, n, actual, predicted, baseline). Raises ValueError if no pair is
    complete.
    """
    t = leaderboard_table(df)
    long = _scaling_long(t)
    if long.empty or long["setting"].nunique() < 2:
        raise ValueError("scaling law needs components and at least one few-shot column")
    args = [long[c].to_numpy(float) for c in ("A", "U", "P", "E", "N", "n")]
    y = long["actual"].to_numpy(float)

    def resid(theta):
        return scaling_law_predict(*args, alpha=theta[0], B=theta[1]) - y

    best = None
    for a0, b0 in [(0.3, 0.5), (0.1, 0.1), (1.0, 0.9)]:
        res = optimize.least_squares(resid, x0=[a0, b0], bounds=([0.0, 0.0], [5.0, 1.0]))
        if best is None or res.cost < best.cost:
            best = res
    alpha, b = (float(v) for v in best.x)
    long["predicted"] = scaling_law_predict(*args, alpha=alpha, B=b)

    # baseline: anchored at each model's full-shot error, shared power law in n_full / n
    full = long[long["setting"] == "full"].set_index(["model", "dataset"])
    key = pd.MultiIndex.from_frame(long[["model", "dataset"]])
    anchor = full["actual"].reindex(key).to_numpy(float)
    n_full = full["n"].reindex(key).to_numpy(float)
    ok = np.isfinite(anchor)

    def base_pred(theta, sel=ok):
        return np.clip(anchor[sel] + theta[0] * ((n_full[sel] / long["n"].to_numpy(float)[sel]) ** theta[1] - 1),
                       0, 100)

    baseline = np.full(len(long), np.nan)
    if ok.any():
        bres = optimize.least_squares(lambda th: base_pred(th) - y[ok], x0=[5.0, 0.3],
                                      bounds=([0.0, 0.0], [1e4, 5.0]))
        baseline[ok] = base_pred(bres.x)
    long["baseline"] = baseline

    r2, rmse = _r2_rmse(y, long["predicted"].to_numpy())
    params: dict = {"alpha": alpha, "B": b, "r2": r2, "rmse": rmse, "n_points": int(len(long))}
    for name, g in long.groupby("setting", sort=False):
        params[f"r2_{name}"], params[f"rmse_{name}"] = _r2_rmse(g["actual"].to_numpy(), g["predicted"].to_numpy())
    bsel = np.isfinite(baseline)
    params["baseline_r2"], params["baseline_rmse"] = _r2_rmse(y[bsel], baseline[bsel])
    few = (long["setting"] != "full").to_numpy()
    params["r2_fewshot"], params["rmse_fewshot"] = _r2_rmse(y[few], long["predicted"].to_numpy()[few])
    params["baseline_r2_fewshot"], params["baseline_rmse_fewshot"] = _r2_rmse(y[few & bsel], baseline[few & bsel])
    params["n_models"] = int(long[["model", "dataset"]].drop_duplicates().shape[0])
    params["shown"], params["why"] = scaling_quality(params, params["n_models"])
    preds = long[["model", "dataset", "setting", "n", "actual", "predicted", "baseline"]]
    return params, preds

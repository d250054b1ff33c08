"""Pooling a model's pretraining seeds into one leaderboard row.

Aggregation (:func:`aggregate_seeds`, called by the runner on the per-run leaderboard): ``leaderboard.csv`` gets
one row per model with, for each estimate ``X`` that has a CI (``X_lo``/``X_hi``; the components, agg_risk and
the ``err_*`` errors), the seed mean ``X``, the seed standard deviation ``X_seed_std`` (ddof 1) and a CI that
combines both sources of noise:

    X_lo = mean - sqrt((t * sd / sqrt(S))^2 + mean_s(X_s - X_lo_s)^2)      (X_hi likewise, upwards)

with ``t`` the 97.5 % Student quantile with S - 1 degrees of freedom. The first term is the t-interval over the S
pretraining seeds; the second is the seeds' average test-resampling half-width (from each run's bootstrap CI),
added as if fully correlated across seeds: all seeds are scored on the same test points, so that part of the noise
does not average out. (A two-level bootstrap that resamples seeds was not used: with 3 seeds it has 10 distinct
resamples and its percentile interval, about mean +- 1.6 sd/sqrt(S), undercovers badly next to the t-interval's
mean +- 4.3 sd/sqrt(S).) Other numeric columns are seed means, booleans are "any seed"; ``n_seeds`` and
``pretrain_seeds`` say what was pooled. Models without seeds pass through unchanged (``n_seeds`` = 1).
``leaderboard_seeds.csv`` keeps the per-run rows with ``base_model`` and ``pretrain_seed`` added.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from riskdecomp.utils.names import split_seed

KEYS = ("model", "dataset")


# ------------------------------------------------------------------------------------------------ aggregation
def ci_columns(df: pd.DataFrame) -> list:
    """Estimates that carry a CI (``X`` with ``X_lo`` and ``X_hi``), in table order."""
    return [c for c in df.columns if f"{c}_lo" in df.columns and f"{c}_hi" in df.columns]


def _t975(n: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1)) if n > 1 else float("nan")


def combine(values, lo, hi) -> tuple[float, float, float, float]:
    """Seed mean, seed std and the combined CI (see the module docstring) of one estimate over S seeds."""
    v = np.asarray(values, float)
    ok = np.isfinite(v)
    v, lo, hi = v[ok], np.asarray(lo, float)[ok], np.asarray(hi, float)[ok]
    if len(v) == 0:
        return (np.nan,) * 4
    mean = float(v.mean())
    if len(v) == 1:
        return mean, np.nan, float(lo[0]), float(hi[0])
    sd = float(v.std(ddof=1))
    seed_half = _t975(len(v)) * sd / np.sqrt(len(v))
    down = v - lo
    up = hi - v
    down = float(np.nanmean(down)) if np.isfinite(down).any() else 0.0
    up = float(np.nanmean(up)) if np.isfinite(up).any() else 0.0
    return mean, sd, mean - float(np.hypot(seed_half, down)), mean + float(np.hypot(seed_half, up))


def per_seed_table(board: pd.DataFrame) -> pd.DataFrame:
    """The per-run leaderboard with ``base_model`` and ``pretrain_seed`` (NaN for runs without a seed suffix)."""
    parts = [split_seed(m) for m in board["model"]]
    out = board.copy()
    at = list(out.columns).index("model") + 1
    out.insert(at, "base_model", [p[0] for p in parts])
    out.insert(at + 1, "pretrain_seed", pd.array([p[1] for p in parts], dtype="Int64"))
    return out


def _first_or_join(s: pd.Series):
    vals = s.dropna().unique()
    if len(vals) <= 1:
        return vals[0] if len(vals) else s.iloc[0]
    return "|".join(sorted(map(str, vals)))


def aggregate_seeds(board: pd.DataFrame) -> tuple[pd.DataFrame, Optional[pd.DataFrame]]:
    """``(leaderboard, per_seed)``: one row per model x dataset pooled over pretraining seeds, and the per-run
    table (``None`` when no run has a seed suffix: the board is returned unchanged)."""
    if board.empty or "model" not in board:
        return board, None
    runs = per_seed_table(board)
    if runs["pretrain_seed"].isna().all():
        return board, None
    stat = [c for c in ci_columns(board) if pd.api.types.is_numeric_dtype(board[c])]
    rows = []
    groups = runs.groupby(["base_model", "dataset"], sort=False, dropna=False)
    for (model, dataset), g in groups:
        row = {}
        for c in board.columns:
            s = g[c]
            if c in KEYS or c.endswith(("_lo", "_hi")) and c[:-3] in stat:
                continue
            if pd.api.types.is_bool_dtype(s):
                row[c] = bool(s.any())
            elif pd.api.types.is_numeric_dtype(s):
                row[c] = float(s.mean()) if s.notna().any() else np.nan
            else:
                row[c] = _first_or_join(s)
        for c in stat:
            mean, sd, lo, hi = combine(g[c], g[f"{c}_lo"], g[f"{c}_hi"])
            row.update({c: mean, f"{c}_lo": lo, f"{c}_hi": hi, f"{c}_seed_std": sd})
        seeds = g["pretrain_seed"].dropna()
        row.update({"model": model, "dataset": dataset, "n_seeds": len(g),
                    "pretrain_seeds": "|".join(str(int(s)) for s in seeds)})
        rows.append(row)
    agg = pd.DataFrame(rows)
    # column order: the board's, with n_seeds / pretrain_seeds after dataset and the seed stds after agg_risk
    cols = list(board.columns)
    at = cols.index("dataset") + 1 if "dataset" in cols else 1
    cols[at:at] = ["n_seeds", "pretrain_seeds"]
    anchor = "agg_risk" if "agg_risk" in cols else cols[-1]
    at = cols.index(anchor) + 1
    cols[at:at] = [f"{c}_seed_std" for c in stat]
    for c in board.columns:  # keep dtypes of integer columns that are equal across seeds
        if pd.api.types.is_integer_dtype(board[c]) and c in agg and agg[c].notna().all() \
                and (agg[c] == agg[c].round()).all():
            agg[c] = agg[c].astype(board[c].dtype)
    return agg[cols], runs

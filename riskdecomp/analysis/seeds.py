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

Which runs are seeds of one model is proven, not read from names (:func:`seed_plan`). Runs named
``<model>.s<seed>`` on one dataset are pooled into the row ``<model>`` only when
- each run's record holds its pretraining identity (:func:`riskdecomp.runner.records.pretraining_identity`: the
  entry minus its seed) and the identities are all equal: the runs differ only by their seed;
- each run's recipe seed is the seed its name says (``x.s1`` written by hand without ``recipe.seed`` is seed 0);
- each seed appears once (``x.s1`` and ``x.s01`` are not two seeds) and no run is named ``<model>`` itself (e.g. a
  record of an unseeded ``<model>`` left in ``runs/`` by an earlier zoo).
Otherwise none of them is pooled: each stays its own row under its own name (``n_seeds`` 1, no ``pretrain_seed``)
and one warning line names the runs and why. Records written before records held the identity (no
``pretraining`` field) are trusted by name, with a warning; a rerun of ``evaluate`` adds the field (run keys are
unchanged, nothing is recomputed).
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import pandas as pd

from riskdecomp.utils.names import split_seed

log = logging.getLogger(__name__)

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


def _flat(d, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _differences(a: dict, b: dict, most: int = 3) -> str:
    fa, fb = _flat(a), _flat(b)
    keys = sorted((k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k)), key=lambda k: (k.startswith("meta"), k))
    text = ", ".join(f"{k} {fa.get(k)!r} vs {fb.get(k)!r}" for k in keys[:most])
    return text + (f" (and {len(keys) - most} more)" if len(keys) > most else "")


def _group_problem(members: list, pretraining: Optional[dict], taken: set, base: str) -> Optional[str]:
    """Why the runs ``members`` [(model, dataset, name seed)] are not proven seeds of ``base`` (None: they are)."""
    if base in taken:
        return f"a run named {base!r} exists too (a record of an earlier zoo? its file: runs/{base}@<dataset>.json)"
    by_seed: dict = {}
    for m, _, s in members:
        by_seed.setdefault(s, []).append(m)
    twice = [ms for ms in by_seed.values() if len(ms) > 1]
    if twice:
        return f"{' and '.join(twice[0])} are both seed {split_seed(twice[0][0])[1]}"
    proven = []
    for m, d, s in members:
        if pretraining is None or (m, d) not in pretraining:
            continue  # a record without the field: trusted by name (warned once by the caller)
        p = pretraining[(m, d)]
        if p is None:
            return f"{m} has no pretraining seed (not a recipe entry)"
        if p["seed"] != s:
            return f"{m} was pretrained with seed {p['seed']}, not {s} (recipe.seed is not the name's seed)"
        proven.append((m, p["identity"]))
    for m, ident in proven[1:]:
        if ident != proven[0][1]:
            return f"they differ in more than the seed ({proven[0][0]} vs {m}: {_differences(proven[0][1], ident)})"
    return None


def seed_plan(board: pd.DataFrame, pretraining: Optional[dict] = None) -> list:
    """Per row of ``board``: ``(base model, pretraining seed)`` when the run is pooled as that seed of that model
    (see the module docstring), else ``(model, None)``. ``pretraining``: (model, dataset) -> the run record's
    ``pretraining`` field (a key absent: a record written before records held it, trusted by name); None: no
    record holds it. Each group left unpooled is one warning line."""
    models, datasets = list(board["model"]), list(board["dataset"]) if "dataset" in board else [None] * len(board)
    groups: dict = {}
    for m, d in zip(models, datasets):
        base, s = split_seed(m)
        if s is not None:
            groups.setdefault((base, d), []).append((m, d, s))
    names = {(m, d) for m, d in zip(models, datasets)}
    pooled, legacy = {}, 0
    for (base, d), members in groups.items():
        why = _group_problem(members, pretraining, {m for m, dd in names if dd == d}, base)
        if why:
            runs = ", ".join(m for m, _, _ in members)
            log.warning("runs %s%s not pooled as seeds of %r: %s; each stays its own row", runs,
                        f" on {d}" if d is not None else "", base, why)
            continue
        legacy += sum(pretraining is None or (m, d) not in pretraining for m, _, _ in members)
        pooled.update({(m, d): (base, s) for m, _, s in members})
    if legacy:
        log.warning("%d run record(s) predate the pretraining identity in run records: their seeds are pooled by "
                    "name only (rerun evaluate to record and check it)", legacy)
    return [pooled.get((m, d), (m, None)) for m, d in zip(models, datasets)]


def per_seed_table(board: pd.DataFrame, plan: Optional[list] = None) -> pd.DataFrame:
    """The per-run leaderboard with ``base_model`` (the pooled row a run belongs to) and ``pretrain_seed`` (NaN for
    runs not pooled as a seed); ``plan``: :func:`seed_plan` of the board (default: computed without records)."""
    parts = seed_plan(board) if plan is None else plan
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


def aggregate_seeds(board: pd.DataFrame, pretraining: Optional[dict] = None
                    ) -> tuple[pd.DataFrame, Optional[pd.DataFrame]]:
    """``(leaderboard, per_seed)``: one row per model x dataset pooled over pretraining seeds, and the per-run
    table (``None`` when no run is pooled as a seed: the board is returned unchanged). ``pretraining``: the run
    records' pretraining identities (:func:`seed_plan`)."""
    if board.empty or "model" not in board:
        return board, None
    runs = per_seed_table(board, seed_plan(board, pretraining))
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

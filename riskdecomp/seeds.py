"""Pretraining seeds as an axis of the zoo: expansion of ``seeds:`` entries and aggregation of their results.

Expansion (:func:`expand_seeds`, called by :func:`riskdecomp.zoo.parse_zoo`): a ``recipe`` entry (or ``defaults:``)
may carry ``seeds: [0, 1, 2]``; the entry becomes one entry per seed, named ``<name>.s<seed>`` with
``recipe.seed = <seed>``, each its own pretraining run and run record. A ``reference:`` naming a seeded model is
rewritten to the same seed of that model (an entry without seeds takes the reference's first seed).

Naming convention: a model name ending in ``.s<digits>`` is seed ``<digits>`` of the model named by the rest
(:func:`split_seed`); entries written out by hand that way aggregate the same way.

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

import copy
import re
from typing import Optional

import numpy as np
import pandas as pd

from .errors import ZooError

SEED_NAME_RE = re.compile(r"^(?P<model>.+)\.s(?P<seed>\d+)$")
KEYS = ("model", "dataset")


def seed_name(model: str, seed: int) -> str:
    return f"{model}.s{int(seed)}"


def split_seed(name: str) -> tuple[str, Optional[int]]:
    """``"simclr.s2"`` -> ``("simclr", 2)``; a name without the suffix -> ``(name, None)``."""
    m = SEED_NAME_RE.match(str(name))
    return (m.group("model"), int(m.group("seed"))) if m else (str(name), None)


def _check_seeds(value, where: str) -> list:
    if (not isinstance(value, list) or not value
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in value)):
        raise ZooError(f"{where}: field 'seeds': expected a non-empty list of non-negative integers, got {value!r}")
    if len(set(value)) != len(value):
        raise ZooError(f"{where}: field 'seeds': duplicate seed in {value!r}")
    return list(value)


def expand_seeds(models: list, defaults: dict, where: str) -> tuple[list, dict]:
    """Raw zoo entries (dicts, before validation) with ``seeds:`` expanded; returns ``(models, defaults)`` with
    ``seeds`` removed from both. ``defaults.seeds`` applies to every ``recipe`` entry that gives none.
    Entries that are not mappings are passed through (parse_zoo reports them)."""
    defaults = dict(defaults)
    default_seeds = defaults.pop("seeds", None)
    if default_seeds is not None:
        default_seeds = _check_seeds(default_seeds, f"{where}: defaults")
    plan = []  # (raw entry, its seeds or None)
    for i, raw in enumerate(models):
        if not isinstance(raw, dict):
            plan.append((raw, None))
            continue
        label = f"{where}: models[{i}]" + (f" ({raw['name']!r})" if "name" in raw else "")
        source = raw.get("source", defaults.get("source"))
        seeds = raw.get("seeds", default_seeds if source == "recipe" else None)
        if seeds is None:
            plan.append((raw, None))
            continue
        seeds = _check_seeds(seeds, label)
        if source != "recipe":
            raise ZooError(f"{label}: field 'seeds': only recipe entries have a pretraining seed "
                           f"(source {source!r})")
        recipe = raw.get("recipe", defaults.get("recipe"))
        if isinstance(recipe, dict) and "seed" in recipe:
            raise ZooError(f"{label}: field 'seeds': give either recipe.seed or seeds, not both")
        if isinstance(raw.get("name"), str) and split_seed(raw["name"])[1] is not None:
            raise ZooError(f"{label}: field 'seeds': the name {raw['name']!r} already ends in .s<seed>")
        plan.append((raw, seeds))
    seeded = {raw["name"]: seeds for raw, seeds in plan if seeds is not None and isinstance(raw.get("name"), str)}
    out = []
    for raw, seeds in plan:
        if seeds is None:
            if isinstance(raw, dict):
                raw = {k: v for k, v in raw.items() if k != "seeds"}
                ref = raw.get("reference", defaults.get("reference"))
                if ref in seeded:
                    raw["reference"] = seed_name(ref, seeded[ref][0])
            out.append(raw)
            continue
        base = {k: v for k, v in raw.items() if k != "seeds"}
        recipe = base.get("recipe", defaults.get("recipe"))
        ref = base.get("reference", defaults.get("reference"))
        for s in seeds:
            e = copy.deepcopy(base)
            e["name"] = seed_name(base["name"], s) if isinstance(base.get("name"), str) else base.get("name")
            e["recipe"] = {**copy.deepcopy(recipe), "seed": s} if isinstance(recipe, dict) else {"seed": s}
            if ref in seeded:
                if s not in seeded[ref]:
                    raise ZooError(f"{where}: model {e['name']!r}: field 'reference': {ref!r} has no seed {s} "
                                   f"(its seeds: {seeded[ref]})")
                e["reference"] = seed_name(ref, s)
            out.append(e)
    names = {e.get("name") for e in out if isinstance(e, dict)}
    for n in sorted(x for x in names if isinstance(x, str)):
        base, seed = split_seed(n)
        if seed is not None and base in names:  # the leaderboard would pool "base" with the seeds of "base"
            raise ZooError(f"{where}: model {n!r} is a seed of {base!r}, which is also an entry of its own: "
                           "rename one of them")
    return out, defaults


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

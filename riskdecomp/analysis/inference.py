"""The one inference engine for comparisons of models (docs/inference.md).

Every difference the analysis reports (``controlled_pairs.csv``, ``baseline_contrasts.csv``, ``comparisons.csv``,
``summary.json`` "best" / "inference", the CLI summary) comes from :class:`Engine`, one per dataset:

- **Seed noise: a model + seed fixed-effects model over every run** of the dataset, ``y_ms = mu_m + gamma_s + e``
  (OLS; unbalanced seed sets are fine; residual df = runs - models - seeds + 1). Seed ``s`` is a shared effect only
  when the records prove that seed ``s`` of every model is the same recipe seed (:func:`seed_pairing`: every run
  pooled as a pretraining seed, i.e. a recipe entry whose ``recipe.seed`` is its name's seed: shared backbone
  initialisation and data order); otherwise a one-way model (model effects only, pooled residual variance). With
  one run per model there is no seed term (no replication: the CI covers test-point noise only, said in ``method``).
- **Test-point noise**: for ``agg_risk`` / ``err_test`` the paired per-sample errors ``err01`` over the shared test
  points (per point, each model's error averaged over its seeds; standard error of the mean paired difference);
  for the other estimates the runs' bootstrap half-widths (``X_lo`` / ``X_hi``, seeds averaged as fully correlated,
  the two models taken as independent: conservative, the test points are shared). The difference's standard error
  is ``sqrt(se_seed^2 + se_test^2)`` with Satterthwaite's degrees of freedom.
- **Families and adjusted CIs**: Holm within each family (:func:`finish_family`); ``delta_<x>_lo/_hi`` is the
  unadjusted 95 % CI, ``delta_<x>_adj_lo/_hi`` the CI at the level Holm's step-down tested that hypothesis
  (:func:`holm_levels`): it excludes 0 iff ``significant_<x>``.
- **Minimum detectable effect** (:func:`mde`): two-sided, power 80 %, at the family's Holm size (the level
  alpha / m of the step-down's first, strictest step).
- Sensitivity: the old paired t-test on the seeds both models share (:func:`paired_seed_test`) and Welch on all
  seeds (:func:`welch_seed_test`), as ``p_paired_<x>`` / ``p_welch_<x>``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from scipy import stats

from riskdecomp.analysis.tables import reference_mask
from riskdecomp.utils.names import result_stem

log = logging.getLogger(__name__)

#: Family-wise error rate of every significance mark.
ALPHA = 0.05
#: Power of the minimum detectable effect.
POWER = 0.8
#: A standard error below this fraction of the data's scale is 0 up to float and CSV rounding (10 significant digits)
ZERO_SE_REL = 1e-8
#: Degrees of freedom of a test-point term from bootstrap half-widths (normal: thousands of test points)
LARGE_DF = 1e6
#: Outcomes whose test-point term comes from the per-sample 0/1 errors (percent = 100 * mean(err01))
PER_SAMPLE_OUTCOMES = ("agg_risk", "err_test")


def zero_se(se: float, scale: float) -> bool:
    """Whether a standard error is 0 (or not finite) for data of magnitude ``scale``: nothing to test against."""
    return not np.isfinite(se) or se <= ZERO_SE_REL * max(1.0, float(scale))


# ----------------------------------------------------------------------------------------------- Holm
def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control); NaN stays NaN and is not counted."""
    p = np.asarray(p, float)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok):
        order = ok[np.argsort(p[ok], kind="stable")]
        adj = np.maximum.accumulate((len(ok) - np.arange(len(ok))) * p[order])
        out[order] = np.minimum(adj, 1.0)
    return out


def holm_levels(p, alpha: float = ALPHA) -> np.ndarray:
    """The level at which Holm's step-down tests each hypothesis: ``alpha / (m - k + 1)`` for the k-th smallest p up
    to the first non-rejection; every later one at that first non-rejected level (NaN p: NaN, not counted). A CI at
    ``1 - level`` excludes 0 iff the hypothesis is rejected."""
    p = np.asarray(p, float)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(ok)
    for k, i in enumerate(order):
        level = alpha / (m - k)
        if p[i] * (m - k) < alpha:
            out[i] = level
        else:  # the first non-rejection: it and every later one are tested at this level
            out[order[k:]] = level
            break
    return out


def mde(se, df, level, power: float = POWER):
    """Minimum detectable effect of a two-sided t-test at ``level`` with ``power``: ``(t_{1-level/2} + t_power) se``."""
    se, df, level = (np.asarray(x, float) for x in (se, df, level))
    with np.errstate(invalid="ignore"):
        return (stats.t.ppf(1 - level / 2, df) + stats.t.ppf(power, df)) * se


def satterthwaite(parts) -> float:
    """Degrees of freedom of a sum of variance terms ``[(variance, its df), ...]`` (terms with variance 0 skipped)."""
    parts = [(v, d) for v, d in parts if v > 0]
    return float(sum(v for v, _ in parts) ** 2 / sum(v ** 2 / d for v, d in parts))


def _ci(delta, se, df, level):
    half = stats.t.ppf(1 - np.asarray(level, float) / 2, np.asarray(df, float)) * np.asarray(se, float)
    return np.asarray(delta, float) - half, np.asarray(delta, float) + half


def finish_family(frame: pd.DataFrame, cols: dict, alpha: float = ALPHA) -> pd.DataFrame:
    """Holm over the rows of one family (in place, returned): from the columns ``cols`` = {"delta", "se", "df",
    "p"} fill ``cols["p_holm"]``, ``cols["significant"]`` (p_holm < alpha), ``cols["adj_lo"]``/``["adj_hi"]``
    (the CI at Holm's level for that row) and ``cols["mde"]`` (at alpha / m, m = testable rows of the family)."""
    p = frame[cols["p"]].to_numpy(float)
    frame[cols["p_holm"]] = holm(p)
    frame[cols["significant"]] = frame[cols["p_holm"]] < alpha
    lo, hi = _ci(frame[cols["delta"]], frame[cols["se"]], frame[cols["df"]], holm_levels(p, alpha))
    frame[cols["adj_lo"]], frame[cols["adj_hi"]] = lo, hi
    exact = frame[cols["p"]].eq(1.0) & frame[cols["se"]].eq(0.0)  # no difference at all: CI [0, 0]
    frame.loc[exact, [cols["adj_lo"], cols["adj_hi"]]] = 0.0
    m = max(int(np.isfinite(p).sum()), 1)
    frame[cols["mde"]] = mde(frame[cols["se"]], frame[cols["df"]], alpha / m)
    return frame


# ----------------------------------------------------------------------------------------------- old tests
def paired_seed_test(a: pd.Series, b: pd.Series) -> tuple[float, float, float, float, int]:
    """Paired t-test of b - a over the seeds both have (n - 1 df): ``(mean, lo, hi, p, n)``; n = 0 (NaN) with
    fewer than 2 shared seeds. Zero variance: ``(0, 0, 0, 1, n)`` when the difference is 0 in every seed, else
    ``lo``, ``hi``, ``p`` NaN (not testable)."""
    d = _shared_differences(a, b)
    if len(d) < 2:
        return np.nan, np.nan, np.nan, np.nan, 0
    mean, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
    return _t_result(mean, se, len(d) - 1, len(d), np.all(d == 0), max(a.abs().max(), b.abs().max()))


def _shared_differences(a: pd.Series, b: pd.Series) -> np.ndarray:
    """b - a on the seeds (index values) both have, in a's order."""
    bb = dict(zip(b.index, b.to_numpy(float)))
    return np.array([bb[k] - v for k, v in zip(a.index, a.to_numpy(float)) if k in bb], float)


def welch_seed_test(a: pd.Series, b: pd.Series) -> tuple[float, float, float, float, int]:
    """Welch's unpaired t-test of mean(b) - mean(a) over all seeds of each (>= 2 each): ``(mean, lo, hi, p, n)``."""
    if len(a) < 2 or len(b) < 2:
        return np.nan, np.nan, np.nan, np.nan, 0
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    mean, se = float(b.mean() - a.mean()), float(np.sqrt(va + vb))
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else 1
    same = a.nunique() == 1 and b.nunique() == 1 and mean == 0
    return _t_result(mean, se, df, len(a) + len(b), same, max(a.abs().max(), b.abs().max()))


def _t_result(mean, se, df, n, no_difference, scale):
    if zero_se(se, scale):
        return (mean, mean, mean, 1.0, n) if no_difference else (mean, np.nan, np.nan, np.nan, n)
    half = float(stats.t.ppf(0.975, df)) * se
    return mean, mean - half, mean + half, float(2 * stats.t.sf(abs(mean) / se, df)), n


# ----------------------------------------------------------------------------------------------- the zoo
def reference_models(board: pd.DataFrame) -> list:
    """The models that are references (:func:`riskdecomp.analysis.tables.reference_mask`), in table order."""
    if board is None or "model" not in board:
        return []
    return list(dict.fromkeys(board.loc[reference_mask(board).to_numpy(), "model"].astype(str)))


def zoo_runs(board: pd.DataFrame, seeds: Optional[pd.DataFrame], dataset) -> pd.DataFrame:
    """Every run of ``dataset``: columns ``model`` (the pooled row it belongs to), ``run`` (its own name),
    ``seed`` (its pretraining seed, NaN when not pooled as one) and the board's value columns. From the per-run
    table when it has the dataset, else one run per leaderboard row."""
    if seeds is not None and not seeds.empty and {"base_model", "pretrain_seed"} <= set(seeds.columns):
        s = seeds if "dataset" in seeds else seeds.assign(dataset=dataset)
        s = s[s["dataset"].astype(str) == str(dataset)]
        if len(s):
            out = s.rename(columns={"model": "run"}).rename(columns={"base_model": "model"})
            out["seed"] = pd.to_numeric(out["pretrain_seed"], errors="coerce")
            return out.reset_index(drop=True)
    b = board if "dataset" in board else board.assign(dataset=dataset)
    b = b[b["dataset"].astype(str) == str(dataset)]
    return b.assign(run=b["model"], seed=np.nan).reset_index(drop=True)


def seed_pairing(runs: pd.DataFrame) -> tuple[bool, str]:
    """Whether seed ``s`` is a shared effect across models (pair by seed), and why, from what the records prove:
    every run is pooled as a pretraining seed (a recipe entry whose recipe.seed is its name's seed: seed ``s`` sets
    the backbone initialisation and the data order of every model) and some seed is shared by two models."""
    n_models = runs["model"].nunique()
    without = runs.loc[runs["seed"].isna(), "run"].astype(str).tolist()
    if len(without) == len(runs):
        return False, (f"no run is a pooled pretraining seed ({len(runs)} run(s) of {n_models} model(s)): "
                       "no seed effect to share; one-way model")
    if without:
        return False, (f"{len(without)} run(s) are not pooled pretraining seeds (e.g. {without[0]}): seed s of "
                       "every model is not proven to share initialisation and data order; one-way model "
                       "(model effects, pooled residual variance)")
    shared = runs.groupby("seed")["model"].nunique()
    if n_models < 2 or not (shared >= 2).any():
        return False, "no pretraining seed is shared by two models; one-way model"
    return True, (f"every run is a pooled recipe seed (same pretraining identity, recipe.seed = the name's seed): "
                  f"seed s of every model shares initialisation and data order, so seed effects are fitted "
                  f"({shared.size} seeds, {int((shared >= 2).sum())} shared)")


@dataclass
class SeedFit:
    """The fixed-effects fit of one outcome: model coefficients, their covariance, residual variance and df."""
    models: list
    coef: np.ndarray
    cov: np.ndarray
    sigma2: float
    df: int
    n_runs: int
    paired: bool
    scale: float
    estimable: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def contrast(self, a: str, b: str) -> tuple[float, float]:
        """``(mu_b - mu_a, its seed standard error)``; SE NaN without residual df or for a non-estimable pair."""
        i, j = self.models.index(a), self.models.index(b)
        delta = float(self.coef[j] - self.coef[i])
        if self.df < 1 or not (self.estimable[i] and self.estimable[j]):
            return delta, np.nan
        c = np.zeros(len(self.models))
        c[j], c[i] = 1.0, -1.0
        return delta, float(np.sqrt(max(c @ self.cov @ c, 0.0)))


def fit_seed_model(runs: pd.DataFrame, outcome: str, paired: bool) -> Optional[SeedFit]:
    """OLS of ``outcome`` on model (+ seed when ``paired``) dummies over every run with a value; None if none."""
    r = runs[["model", "seed", outcome]].copy()
    r[outcome] = pd.to_numeric(r[outcome], errors="coerce")
    r = r[r[outcome].notna()]
    if r.empty:
        return None
    models = list(dict.fromkeys(r["model"].astype(str)))
    xm = (r["model"].astype(str).to_numpy()[:, None] == np.array(models)[None, :]).astype(float)
    parts = [xm]
    if paired:
        levels = sorted(r["seed"].dropna().unique())[1:]
        parts.append((r["seed"].to_numpy()[:, None] == np.array(levels)[None, :]).astype(float))
    x, y = np.hstack(parts), r[outcome].to_numpy(float)
    pinv = np.linalg.pinv(x.T @ x)
    beta = pinv @ x.T @ y
    df = len(y) - int(np.linalg.matrix_rank(x))
    resid = y - x @ beta
    sigma2 = float(resid @ resid / df) if df > 0 else np.nan
    k = len(models)
    basis = x.T @ x @ pinv  # a coefficient is estimable iff e_i' (X'X)(X'X)^+ = e_i'
    est = np.array([np.allclose(basis[:, i], np.eye(x.shape[1])[:, i], atol=1e-8) for i in range(k)])
    # model "means": the coefficient plus the average seed effect (so it is on the scale of the values)
    gamma = beta[k:]
    shift = float(np.mean(np.concatenate([[0.0], gamma]))) if paired and len(gamma) else 0.0
    return SeedFit(models, beta[:k] + shift, sigma2 * pinv[:k, :k] if df > 0 else np.full((k, k), np.nan),
                   sigma2, df, len(y), paired, float(np.abs(y).max()), est)


# ----------------------------------------------------------------------------------------------- test points
def load_per_sample(per_sample, runs: pd.DataFrame, dataset) -> dict:
    """run name -> (y, err01 as float array) for the runs of ``dataset`` with a per-sample table. ``per_sample``:
    a results folder's ``per_sample/`` (files ``<run>@<dataset>.csv``) or a dict (run, dataset) -> DataFrame (or any
    mapping with ``err01`` and optionally ``y``)."""
    out = {}
    if per_sample is None:
        return out
    for run in runs["run"].astype(str):
        if isinstance(per_sample, dict):
            t = per_sample.get((run, dataset))
        else:
            try:
                path = Path(per_sample) / f"{result_stem(run, str(dataset))}.csv"
            except Exception:  # noqa: BLE001 - a name that is no result stem has no file
                continue
            t = pd.read_csv(path, usecols=lambda c: c in ("index", "y", "err01")) if path.is_file() else None
        if t is not None and "err01" in t:
            err = pd.to_numeric(pd.Series(np.asarray(t["err01"])), errors="coerce").to_numpy(float)
            out[run] = (np.asarray(t["y"]) if "y" in t else np.arange(len(err)), err)
    return out


def _model_errors(errs: dict, runs_of: list) -> Optional[tuple]:
    """(y, per-point error averaged over the model's runs) when every run has one on the same points."""
    got = [errs.get(r) for r in runs_of]
    if not got or any(g is None for g in got):
        return None
    y0 = got[0][0]
    if any(len(g[0]) != len(y0) or not np.array_equal(g[0], y0) for g in got):
        return None
    e = np.vstack([g[1] for g in got])
    return (y0, e.mean(axis=0)) if np.isfinite(e).all() else None


def _half_width_se(runs_of: pd.DataFrame, outcome: str) -> float:
    """A model's test-point SE of ``outcome`` from its runs' bootstrap CIs (averaged over seeds: fully correlated)."""
    lo, hi = f"{outcome}_lo", f"{outcome}_hi"
    if lo not in runs_of or hi not in runs_of:
        return np.nan
    half = (pd.to_numeric(runs_of[hi], errors="coerce") - pd.to_numeric(runs_of[lo], errors="coerce")) / 2
    return float(half.mean() / stats.norm.ppf(0.975)) if half.notna().any() else np.nan


# ----------------------------------------------------------------------------------------------- the engine
class Engine:
    """Comparisons of the models of one dataset (see the module docstring). ``runs``: :func:`zoo_runs`."""

    def __init__(self, runs: pd.DataFrame, dataset, per_sample=None):
        self.runs, self.dataset = runs, dataset
        self.paired, self.why = seed_pairing(runs)
        self.errors = load_per_sample(per_sample, runs, dataset)
        self._fits: dict = {}
        self._model_err: dict = {}
        self._groups = {str(m): g for m, g in runs.groupby(runs["model"].astype(str), sort=False)}
        self._values: dict = {}

    @property
    def models(self) -> list:
        return list(dict.fromkeys(self.runs["model"].astype(str)))

    def fit(self, outcome: str) -> Optional[SeedFit]:
        if outcome not in self._fits:
            self._fits[outcome] = fit_seed_model(self.runs, outcome, self.paired) if outcome in self.runs else None
        return self._fits[outcome]

    def runs_of(self, model: str) -> pd.DataFrame:
        return self._groups.get(str(model), self.runs.iloc[:0])

    def seed_values(self, model: str, outcome: str) -> pd.Series:
        """One value per pretraining seed of ``model`` (index = seed; runs without seed: 0, 1, ...)."""
        if (model, outcome) not in self._values:
            r = self.runs_of(model)
            v = pd.to_numeric(r[outcome], errors="coerce") if outcome in r else pd.Series(np.nan, index=r.index)
            idx = r["seed"].astype(int) if r["seed"].notna().all() else pd.RangeIndex(len(r))
            self._values[(model, outcome)] = pd.Series(v.to_numpy(float), index=np.asarray(idx)).dropna()
        return self._values[(model, outcome)]

    def errors_of(self, model: str):
        if model not in self._model_err:
            self._model_err[model] = _model_errors(self.errors, list(self.runs_of(model)["run"].astype(str)))
        return self._model_err[model]

    def test_point_se(self, a: str, b: str, outcome: str) -> tuple[float, float, str]:
        """``(se, df, how)`` of the test-point noise of b - a (NaN se when nothing measures it)."""
        if outcome in PER_SAMPLE_OUTCOMES:
            ea, eb = self.errors_of(a), self.errors_of(b)
            if ea is not None and eb is not None and np.array_equal(ea[0], eb[0]) and len(ea[1]) > 1:
                d = 100.0 * (eb[1] - ea[1])
                return float(d.std(ddof=1) / np.sqrt(len(d))), float(len(d) - 1), \
                    f"paired per-sample errors over {len(d)} shared test points"
        sa, sb = _half_width_se(self.runs_of(a), outcome), _half_width_se(self.runs_of(b), outcome)
        if np.isfinite(sa) and np.isfinite(sb):
            return float(np.hypot(sa, sb)), LARGE_DF, "runs' bootstrap CIs (the two models as independent)"
        return np.nan, np.nan, "no test-point noise measured"

    def compare(self, a: str, b: str, outcome: str) -> dict:
        """The difference b - a of ``outcome``: delta (fixed-effects contrast), se (seed and test points
        combined), df (Satterthwaite), p, the unadjusted 95 % CI, the sensitivity p-values and what was used."""
        out = {"delta": np.nan, "se": np.nan, "df": np.nan, "p": np.nan, "lo": np.nan, "hi": np.nan,
               "se_seed": np.nan, "se_test": np.nan, "p_paired": np.nan, "p_welch": np.nan, "n_runs": 0,
               "n_seeds": 0, "untestable": False, "method": ""}
        fit = self.fit(outcome)
        if fit is None or a not in fit.models or b not in fit.models:
            return out
        va, vb = self.seed_values(a, outcome), self.seed_values(b, outcome)
        out.update(n_runs=fit.n_runs, n_seeds=int(min(len(va), len(vb))),
                   p_paired=paired_seed_test(va, vb)[3] if self.paired else np.nan,
                   p_welch=welch_seed_test(va, vb)[3])
        delta, se_s = fit.contrast(a, b)
        se_t, df_t, how = self.test_point_se(a, b, outcome)
        out.update(delta=delta, se_seed=se_s, se_test=se_t)
        seed_txt = (f"{'model + seed' if fit.paired else 'one-way model'} fixed effects over {fit.n_runs} runs "
                    f"({fit.df} residual df)" if fit.df > 0 else "no seed replication (seed noise not included)")
        out["method"] = f"{seed_txt}; test points: {how}"
        d = _shared_differences(va, vb)
        if len(d) and (d == 0).all() and abs(delta) <= ZERO_SE_REL * fit.scale:
            out.update(delta=0.0, se=0.0, df=np.inf, p=1.0, lo=0.0, hi=0.0)  # the same numbers: no difference
            return out
        if (fit.df > 0 and zero_se(np.sqrt(fit.sigma2), fit.scale)) or (len(d) >= 2 and zero_se(d.std(), fit.scale)):
            # a perfect additive fit, or the same difference in every seed: identical runs (or one run counted as
            # several seeds), not independent pretraining runs; nothing to test against
            out["untestable"] = True
            return out
        v_s = se_s ** 2 if np.isfinite(se_s) else 0.0
        v_t = se_t ** 2 if np.isfinite(se_t) else 0.0
        if v_s + v_t <= 0 or zero_se(np.sqrt(v_s + v_t), fit.scale):
            out["untestable"] = bool(np.isfinite(se_s) or np.isfinite(se_t))  # measured, and exactly 0
            return out
        df = satterthwaite([(v_s, fit.df), (v_t, df_t)])
        se = float(np.sqrt(v_s + v_t))
        lo, hi = _ci(delta, se, df, 0.05)
        out.update(se=se, df=float(df), lo=float(lo), hi=float(hi), p=float(2 * stats.t.sf(abs(delta) / se, df)))
        return out

    def summary(self, family_size: int) -> dict:
        """``summary.json`` "inference" for this dataset; ``mde_agg_risk``: two models with the zoo's median seed
        count, at the Holm level of a family of ``family_size`` (best vs each candidate)."""
        fit = self.fit("agg_risk")
        out = {"model": ("model + seed fixed effects" if self.paired else "one-way model (model effects)")
               + (", no seed replication" if fit is None or fit.df < 1 else ""),
               "n_runs": fit.n_runs if fit else 0, "residual_df": fit.df if fit else 0,
               "paired_by_seed": self.paired, "why": self.why, "mde_agg_risk": np.nan,
               "mde_rule": f"two-sided, power {POWER:.0%}, level {ALPHA} / {max(family_size, 1)} (Holm's first "
                           "step over best vs each candidate), two models with the zoo's median seed count"}
        if fit is None:
            return out
        s = float(self.runs.groupby("model")["run"].count().median())
        v_s = 2 * fit.sigma2 / s if fit.df > 0 else 0.0
        ms = self.models
        tp = [self.test_point_se(ms[i], ms[j], "agg_risk") for i in range(len(ms)) for j in range(i + 1, len(ms))]
        tps = [t for t in tp if np.isfinite(t[0])]
        v_t = float(np.median([t[0] for t in tps])) ** 2 if tps else 0.0
        if v_s + v_t > 0:
            df = satterthwaite([(v_s, fit.df), (v_t, float(np.median([t[1] for t in tps])) if tps else np.inf)])
            out["mde_agg_risk"] = float(mde(np.sqrt(v_s + v_t), df, ALPHA / max(family_size, 1)))
        return out


def engines(board: pd.DataFrame, seeds: Optional[pd.DataFrame], per_sample=None) -> dict:
    """dataset -> :class:`Engine` for every dataset of the leaderboard."""
    b = board if "dataset" in board else board.assign(dataset="default")
    return {ds: Engine(zoo_runs(b, seeds, ds), ds, per_sample) for ds in dict.fromkeys(b["dataset"])}


# ----------------------------------------------------------------------------------------------- comparisons
COMPARISON_COLUMNS = ["dataset", "family", "model_a", "model_b", "outcome", "delta", "lo", "hi", "adj_lo", "adj_hi",
                      "p", "p_holm", "significant", "se", "df", "se_seed", "se_test", "mde", "p_paired", "p_welch",
                      "n_runs", "n_seeds", "method"]
_TIDY = {k: k for k in ("delta", "se", "df", "p", "p_holm", "significant", "adj_lo", "adj_hi", "mde")}


def _rows(engine: Engine, pairs: list, outcome: str, family: str) -> pd.DataFrame:
    rows = []
    for a, b in pairs:
        r = engine.compare(a, b, outcome)
        r.pop("untestable")
        rows.append({"dataset": engine.dataset, "family": family, "model_a": a, "model_b": b, "outcome": outcome,
                     **r})
    frame = pd.DataFrame(rows)
    return finish_family(frame, _TIDY) if len(frame) else frame


def candidates_of(engine: Engine, references) -> list:
    return [m for m in engine.models if m not in set(references)]


def best_of(engine: Engine, candidates: list, outcome: str = "agg_risk") -> Optional[str]:
    """The candidate with the lowest seed-adjusted mean of ``outcome`` (fixed-effects model mean)."""
    fit = engine.fit(outcome)
    if fit is None:
        return None
    means = {m: fit.coef[fit.models.index(m)] for m in candidates if m in fit.models}
    means = {m: v for m, v in means.items() if np.isfinite(v)}
    return min(means, key=means.get) if means else None


def comparisons(engine: Engine, references=(), outcomes=("agg_risk",)) -> pd.DataFrame:
    """``comparisons.csv`` rows of one dataset: every pair of candidates (family "pairwise", Holm per outcome) and
    the best candidate against each other one (family "vs_best", its own Holm family per outcome)."""
    cands = candidates_of(engine, references)
    frames = []
    for outcome in outcomes:
        pairs = [(cands[i], cands[j]) for i in range(len(cands)) for j in range(i + 1, len(cands))]
        frames.append(_rows(engine, pairs, outcome, "pairwise"))
        best = best_of(engine, cands, outcome)
        if best is not None:
            frames.append(_rows(engine, [(best, m) for m in cands if m != best], outcome, "vs_best"))
    frames = [f for f in frames if len(f)]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return out.reindex(columns=COMPARISON_COLUMNS)


def best_summary(engine: Engine, board: pd.DataFrame, references, vs_best: pd.DataFrame) -> Optional[dict]:
    """``summary.json`` "best" for one dataset: the best candidate on agg_risk, its leaderboard value and CI, its
    seed count, the candidates not significantly worse (Holm over best vs each), the excluded references."""
    cands = candidates_of(engine, references)
    best = best_of(engine, cands)
    if best is None:
        return None
    fit = engine.fit("agg_risk")
    rows = board[(board["model"].astype(str) == best)
                 & ((board["dataset"].astype(str) == str(engine.dataset)) if "dataset" in board else True)]
    row = rows.iloc[0] if len(rows) else pd.Series(dtype=object)
    worse = set()
    if len(vs_best):
        v = vs_best[(vs_best["outcome"] == "agg_risk") & (vs_best["family"] == "vs_best")]
        worse = set(v.loc[v["significant"].astype(bool) & (v["delta"] > 0), "model_b"])
    means = {m: fit.coef[fit.models.index(m)] for m in cands if m in fit.models}
    top = sorted((m for m in means if m not in worse), key=lambda m: (m != best, means[m]))
    agg = vs_best[vs_best["outcome"] == "agg_risk"] if len(vs_best) else vs_best
    first = agg["method"].iloc[0] if len(agg) else "one candidate: nothing to compare"
    get = lambda k: float(row[k]) if k in row and pd.notna(row[k]) else np.nan  # noqa: E731
    return {"model": best, "outcome": "agg_risk", "value": get("agg_risk"), "lo": get("agg_risk_lo"),
            "hi": get("agg_risk_hi"), "adjusted_value": float(means[best]),
            "n_seeds": int(len(engine.runs_of(best))), "top_group": top, "references": list(references),
            "n_candidates": len(cands),
            "method": f"{first}; Holm over best vs each of the other {len(cands) - 1} candidate(s)"}


# ----------------------------------------------------------------------------------------------- wide tables
def contrast_fields(res: dict, outcome: str) -> dict:
    """One :meth:`Engine.compare` result as the wide columns of controlled_pairs / baseline_contrasts."""
    c = outcome
    return {f"delta_{c}": res["delta"], f"delta_{c}_lo": res["lo"], f"delta_{c}_hi": res["hi"], f"p_{c}": res["p"],
            f"se_{c}": res["se"], f"df_{c}": res["df"], f"p_paired_{c}": res["p_paired"],
            f"p_welch_{c}": res["p_welch"]}


def wide_columns(outcome: str) -> list:
    """The inference columns of one outcome in controlled_pairs.csv / baseline_contrasts.csv, in order."""
    c = outcome
    return [f"delta_{c}", f"delta_{c}_lo", f"delta_{c}_hi", f"p_{c}", f"p_holm_{c}", f"significant_{c}",
            f"delta_{c}_adj_lo", f"delta_{c}_adj_hi", f"mde_{c}", f"se_{c}", f"df_{c}", f"p_paired_{c}",
            f"p_welch_{c}"]


def finish_wide(frame: pd.DataFrame, outcomes) -> pd.DataFrame:
    """Holm per outcome over all rows of a wide table (one family per file x outcome)."""
    for c in outcomes:
        finish_family(frame, {"delta": f"delta_{c}", "se": f"se_{c}", "df": f"df_{c}", "p": f"p_{c}",
                              "p_holm": f"p_holm_{c}", "significant": f"significant_{c}",
                              "adj_lo": f"delta_{c}_adj_lo", "adj_hi": f"delta_{c}_adj_hi", "mde": f"mde_{c}"})
    return frame

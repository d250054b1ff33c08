"""Analyses across models: summary, ranking stability, scaling law, design-choice effects, pairs.

Every function takes a leaderboard-shaped table (ours, or :func:`riskdecomp.analysis.published.load_published`):
one row per model x dataset with columns ``model`` (or the index), ``dataset``, the components
``approx, usability, probe_gen, enc_gen``, ``agg_risk``, few-shot errors ``fewshot_<k>shot`` /
``fewshot_<p>pct``, sizes ``n_train, n_sub, n_classes`` and design fields.
Errors are in percent. Missing columns/values are skipped, never fatal: a tiny table returns what can
be estimated (empty tables / NaN where nothing can).

A test whose standard error is 0 (a difference with zero variance over seeds, a perfect OLS fit) is not testable:
its p-value and CI are NaN, never p = 0 or "significant", and one warning line per table says which and why (a
difference that is exactly 0 in every seed keeps p = 1 and CI [0, 0]: :func:`seed_difference`).

When a table holds several datasets, rankings and scaling laws are computed within each dataset
(Kendall taus are averaged over datasets, equal weights) and design effects / pairs carry a
``dataset`` column.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from riskdecomp.analysis.inference import (  # noqa: F401 - re-exported: the significance level, Holm
    ALPHA,
    ZERO_SE_REL,
    contrast_fields,
    finish_wide,
    holm,
    paired_seed_test,
    welch_seed_test,
    wide_columns,
)
from riskdecomp.analysis.inference import engines as inference_engines
from riskdecomp.analysis.inference import zero_se as _zero_se
from riskdecomp.analysis.scaling import fit_scaling_law
from riskdecomp.analysis.tables import (
    fewshot_settings,
    leaderboard_table,
    reference_mask,
    setting_name,
)
from riskdecomp.utils.atomic import jsonable
from riskdecomp.utils.schema import COMPONENTS, OUTCOMES

log = logging.getLogger(__name__)

#: Treatments analysed by default (those present in the table are used).
DEFAULT_TREATMENTS = [
    "family", "objective", "ssl_mode", "architecture", "pretraining_data", "projection2_arch",
    "epochs", "batch_size", "nviews", "z_dim", "n_parameters", "n_augmentations", "patch_size",
]
#: Numeric design fields entered as log(x).
LOG_FIELDS = {"nviews", "z_dim", "batch_size", "n_parameters", "epochs"}
#: Design fields that are categorical.
CATEGORICAL_FIELDS = {
    "family", "objective", "ssl_mode", "architecture", "pretraining_data", "projection2_arch",
    "projection1_arch", "optimizer", "scheduler", "z_layer", "augmentations", "views", "other",
    "finetuning_data", "source", "dataset",
}
#: Base levels for categorical treatments (else the most frequent level).
BASE_LEVELS = {"family": "resnet", "projection2_arch": "mlp", "pretraining_data": "ImageNet-1K"}

#: Independent design fields compared by :func:`controlled_pairs` (derived fields such as
#: family, n_parameters, is_aug_*, n_augmentations, n_negatives, architecture_exact are excluded so
#: that changing one choice does not count as several).
PAIR_FIELDS = [
    "objective", "version", "is_stopgrad", "is_ema", "other", "pred_dim", "projection_hid_width",
    "projection_hid_depth", "architecture", "patch_size", "projection1_arch", "projection2_arch",
    "projection_same", "pretraining_data", "finetuning_data", "img_size", "views", "augmentations",
    "z_dim", "z_layer", "epochs", "batch_size", "optimizer", "learning_rate", "weight_decay",
    "scheduler", "nviews",
]



# ----------------------------------------------------------------------------- degenerate tables
#: Rankings, Kendall taus and ranking moves need at least this many models (with both values, per dataset): with
#: fewer, a tau takes a handful of values (4 models: 7) and one swap moves it by 0.33 or more.
MIN_MODELS_FOR_RANKING = 5
#: An outcome is near-constant over a set of rows when its range is below this share of the rows' median 95 % CI
#: half-width (``<outcome>_lo`` / ``_hi``: test resampling, plus seeds for pooled rows): the rows differ by less than
#: the noise of one of them.
NOISE_SHARE = 0.5
#: Without CIs: near-constant when the standard deviation is below this fraction of the mean's magnitude.
REL_STD_TOL = 1e-3
#: A treatment column whose variance inflation factor on the other columns of its design exceeds this is not
#: identified: the controls reproduce it to within 0.1 % (it carries the same information as they do, up to noise).
MAX_VIF = 1e6


def constant_outcome(t: pd.DataFrame, outcome: str) -> str | None:
    """Why ``outcome`` does not vary over the rows of ``t`` (None: it does). The rules, in order:
    approx of rows that all share one reference is that reference's train->train error (constant by construction,
    up to which of the reference's seeds each model's seeds pair with); an outcome equal in every row (up to float
    rounding); a range below :data:`NOISE_SHARE` of the rows' median 95 % CI half-width (when the table has
    ``<outcome>_lo`` / ``_hi``: the test-resampling noise of one row, with its seed noise for pooled rows), else a
    standard deviation below :data:`REL_STD_TOL` of the mean."""
    v = pd.to_numeric(t[outcome], errors="coerce").dropna()
    if len(v) < 2:
        return None
    if outcome == "approx" and "reference" in t:
        refs = set(t.loc[v.index, "reference"].astype("string").fillna(""))
        if len(refs) == 1 and refs != {""}:
            return (f"approx is the train->train error of the one reference ({refs.pop()}) of all {len(v)} rows: "
                    f"constant by construction (range {np.ptp(v):.2g})")
    rng = float(np.ptp(v.to_numpy(float)))
    if rng <= ZERO_SE_REL * max(1.0, float(v.abs().max())):
        return f"{outcome} is {float(v.iloc[0]):.4g} in all {len(v)} rows"
    if {f"{outcome}_lo", f"{outcome}_hi"} <= set(t.columns):
        half = ((pd.to_numeric(t.loc[v.index, f"{outcome}_hi"], errors="coerce")
                 - pd.to_numeric(t.loc[v.index, f"{outcome}_lo"], errors="coerce")) / 2).median()
        if np.isfinite(half) and rng < NOISE_SHARE * half:
            return (f"{outcome} near-constant: range {rng:.2g} over {len(v)} rows < {NOISE_SHARE} x its median 95% "
                    f"CI half-width {half:.2g}")
        return None
    mean = float(v.mean())
    if mean and float(v.std(ddof=1)) < REL_STD_TOL * abs(mean):
        return f"{outcome} near-constant: std {float(v.std(ddof=1)):.2g} < {REL_STD_TOL:g} x |mean| {abs(mean):.3g}"
    return None


def constant_components(t: pd.DataFrame) -> dict:
    """``{dataset: {component: value}}`` for each component constant over the dataset's candidates (rows that are
    not references, at least 2: :func:`constant_outcome`). The value is the shared one: the reference's own row
    (over all its seeds) when the candidates share one reference that has a row, else the candidates' mean."""
    t = leaderboard_table(t)
    ref = reference_mask(t)
    out: dict = {}
    for ds, g in t.groupby("dataset", sort=True):
        cand = g[~ref.loc[g.index]]
        for c in COMPONENTS:
            if c not in cand or cand[c].notna().sum() < 2 or constant_outcome(cand, c) is None:
                continue
            value = float(cand[c].mean())
            names = set(cand["reference"].astype("string").fillna("")) if "reference" in cand else set()
            own = g[ref.loc[g.index] & g["model"].isin(names)]
            if len(names) == 1 and len(own) == 1 and pd.notna(own[c].iloc[0]):
                value = float(own[c].iloc[0])
            out.setdefault(str(ds), {})[c] = value
    return out


def zoo_flags(t: pd.DataFrame, scaling: dict | None = None) -> list:
    """One-line reasons why parts of the analysis are not shown or read differently (``summary.json``'s
    ``zoo_flags``): too few models for rankings, a poor scaling law, constant components, and the leaderboard's
    per-model ``flags`` (docs/protocol.md, "Flags")."""
    t = leaderboard_table(t)
    lines = []
    for ds, g in t.groupby("dataset", sort=True):
        where = f" on {ds}" if t["dataset"].nunique() > 1 else ""
        n = int(g["model"].nunique())
        if n < MIN_MODELS_FOR_RANKING:
            lines.append(f"{n} models{where} (< {MIN_MODELS_FOR_RANKING}): rankings, Kendall taus and the "
                         "ranking-change figure not shown")
    if scaling and scaling.get("shown") is False:
        lines.append(f"scaling law not shown: {scaling.get('why')}")
    for ds, comps in constant_components(t).items():
        for c, v in comps.items():
            lines.append(f"{c} constant across the candidates of {ds} (shared value {v:.2f}): shown once as the "
                         "shared baseline, not counted as the largest component, no design effect")
    if "flags" in t:
        codes: dict = {}
        for m, f in zip(t["model"], t["flags"]):
            for code in (f.split(";") if isinstance(f, str) and f else []):
                codes.setdefault(code, []).append(str(m))
        for code, ms in codes.items():
            lines.append(f"{code}: {', '.join(ms)} (docs/protocol.md, Flags)")
    return lines


# ----------------------------------------------------------------------------- summary
def summarize(df: pd.DataFrame) -> dict:
    """Summary numbers of a leaderboard.

    Keys: ``n_models`` (distinct models), ``mean`` / ``median`` (component and agg_risk -> value,
    over rows where present), ``candidates`` (``n_models`` and ``mean`` over the rows that are not references),
    ``constant_components`` (dataset -> component -> the shared value:
    :func:`constant_components`), ``largest_component_counts`` (component -> number of candidates -- rows that are not
    references -- where it is the largest; only rows with all four components, a merged approx counting as 0; a
    constant component is left out: it is the same for every candidate), ``kendall_tau`` (setting -> tau vs full
    shot, see :func:`ranking_stability`: empty below :data:`MIN_MODELS_FOR_RANKING` models), ``scaling_law``
    (alpha, B, r2, rmse of :func:`fit_scaling_law`, NaN if not estimable, with ``shown`` and ``why``:
    :func:`riskdecomp.analysis.scaling.scaling_quality`) and ``zoo_flags`` (:func:`zoo_flags`). With several
    datasets, ``per_dataset`` holds the same numbers per dataset.
    """
    t = leaderboard_table(df)
    present = [c for c in OUTCOMES if c in t]
    comps = [c for c in COMPONENTS if c in t]
    out: dict = {
        "n_models": int(t["model"].nunique()),
        "mean": {c: float(t[c].mean()) for c in present},
        "median": {c: float(t[c].median()) for c in present},
    }
    cands = t[~reference_mask(t)]
    out["candidates"] = {"n_models": int(cands["model"].nunique()),
                         "mean": {c: float(cands[c].mean()) for c in present}}
    constant = constant_components(t)
    out["constant_components"] = constant
    shared = {c for comps_ in constant.values() for c in comps_}
    counts = {c: 0 for c in comps if c not in shared}
    if len(comps) == 4:
        # approx NaN with usability present = merged into usability (no reference): it counts as 0, like in
        # _scaling_long; otherwise such zoos count no model at all
        cand = t[~reference_mask(t)]
        full = cand[comps].assign(approx=cand["approx"].where(cand["approx"].notna() | cand["usability"].isna(),
                                                              0.0)).dropna()
        if len(full) and counts:
            for c, n in full[list(counts)].idxmax(axis=1).value_counts().items():
                counts[c] = int(n)
    out["largest_component_counts"] = counts
    taus, _ = ranking_stability(t)
    out["kendall_tau"] = taus
    try:
        params, _ = fit_scaling_law(t)
    except ValueError as exc:
        params = {"alpha": np.nan, "B": np.nan, "r2": np.nan, "rmse": np.nan, "shown": False,
                  "why": f"not estimable ({exc})"}
    out["scaling_law"] = {k: params.get(k, np.nan) for k in ("alpha", "B", "r2", "rmse", "shown", "why")}
    out["scaling_law_details"] = {k: v for k, v in params.items() if k not in out["scaling_law"]}
    out["zoo_flags"] = zoo_flags(t, out["scaling_law"])
    if t["dataset"].nunique() > 1:
        out["per_dataset"] = {
            str(name): {k: v for k, v in summarize(g).items() if k != "per_dataset"}
            for name, g in t.groupby("dataset", sort=True)
        }
    return jsonable(out)


# ----------------------------------------------------------------------------- ranking
def ranking_stability(df: pd.DataFrame, top: int = 10) -> tuple[dict, pd.DataFrame]:
    """Kendall tau (scipy tau-b) between the full-shot ranking (agg_risk) and each few-shot ranking.

    Returns ``({setting: tau}, moves)`` where setting is e.g. "3shot", "1pct"; taus are averaged
    over datasets (each dataset with >= :data:`MIN_MODELS_FOR_RANKING` models having both values; fewer: no tau
    and no moves for it, and :func:`zoo_flags` says why). ``moves`` has one row per
    (dataset, setting, model): rank_full, rank_setting (1 = lowest error), move = rank_setting -
    rank_full, sorted by |move| descending (all models, ``top`` is the number flagged ``is_top``).
    """
    t = leaderboard_table(df)
    taus: dict[str, float] = {}
    moves = []
    if "agg_risk" not in t:
        return taus, pd.DataFrame(columns=["dataset", "setting", "model", "rank_full", "rank_setting", "move"])
    for col in fewshot_settings(t):
        per_ds = []
        for ds, g in t.groupby("dataset", sort=True):
            g = g[["model", "agg_risk", col]].dropna()
            if len(g) < MIN_MODELS_FOR_RANKING:
                continue
            tau = stats.kendalltau(g["agg_risk"], g[col]).statistic
            if np.isfinite(tau):
                per_ds.append(tau)
            r = pd.DataFrame({
                "dataset": ds,
                "setting": setting_name(col),
                "model": g["model"].to_numpy(),
                "rank_full": g["agg_risk"].rank(method="min").to_numpy(),
                "rank_setting": g[col].rank(method="min").to_numpy(),
            })
            r["move"] = r["rank_setting"] - r["rank_full"]
            r = r.reindex(r["move"].abs().sort_values(ascending=False, kind="stable").index)
            r["is_top"] = np.arange(len(r)) < top
            moves.append(r)
        if per_ds:
            taus[setting_name(col)] = float(np.mean(per_ds))
    cols = ["dataset", "setting", "model", "rank_full", "rank_setting", "move", "is_top"]
    moves_df = pd.concat(moves, ignore_index=True) if moves else pd.DataFrame(columns=cols)
    return taus, moves_df




# ----------------------------------------------------------------------------- design effects
def _is_categorical(t: pd.DataFrame, field: str) -> bool:
    if field in CATEGORICAL_FIELDS:
        return True
    return not pd.api.types.is_numeric_dtype(t[field]) and not pd.api.types.is_bool_dtype(t[field])


def _controls_for(treatment: str) -> list[str]:
    """Confounder controls of the study's causal graph, in priority order (first kept longest)."""
    ctrl = ["year", "is_industry", "is_official", "pretraining_data",
            "objective" if treatment == "objective" else "ssl_mode",
            "epochs", "batch_size", "nviews", "n_augmentations", "projection2_arch"]
    if treatment == "architecture":
        ctrl += ["architecture"]
    else:
        ctrl += ["n_parameters", "family", "z_dim", "patch_size"]
    ctrl = [c for c in ctrl if c != treatment]
    if treatment == "objective":
        ctrl = [c for c in ctrl if c != "objective"]
    return ctrl


def _design_matrix_col(t: pd.DataFrame, field: str) -> pd.Series:
    s = t[field]
    if _is_categorical(t, field):
        return s.astype("string").where(s.notna())
    s = pd.to_numeric(s.astype(float) if pd.api.types.is_bool_dtype(s) else s, errors="coerce")
    if field in LOG_FIELDS:
        s = np.log(s.where(s > 0))
    return s


def _fit_one(data: pd.DataFrame, outcome: str, treatment: str, controls: list[str], cat: set[str],
             base: str | None):
    import statsmodels.formula.api as smf

    def term(f):
        if f in cat:
            if f == treatment and base is not None:
                return f"C(Q('{f}'), Treatment(reference={base!r}))"
            return f"C(Q('{f}'))"
        return f"Q('{f}')"

    formula = f"Q('{outcome}') ~ " + " + ".join(term(f) for f in [treatment] + controls)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return smf.ols(formula, data=data).fit()


def _aliased(fit, treatment: str) -> dict:
    """``{coefficient name: why}`` for the treatment's coefficients of a fitted design that are not identified: a
    treatment column that the other columns reproduce -- its variance inflation factor 1 / (1 - R²) on the other
    columns above :data:`MAX_VIF` (R² of the unit-norm column's least-squares fit; infinite: aliased). Controls
    collinear among themselves leave the treatment's coefficients identified (and estimated uniquely), and one
    aliased level of a categorical treatment leaves its other levels' coefficients."""
    x = np.asarray(fit.model.exog, float)
    norms = np.linalg.norm(x, axis=0)
    out = {}
    for j, name in enumerate(fit.model.exog_names):
        if not (name.startswith(f"C(Q('{treatment}')") or name == f"Q('{treatment}')"):
            continue
        if norms[j] == 0:
            out[name] = "near-singular design: the treatment column is all zeros in the rows used"
            continue
        others = np.delete(x, j, axis=1)
        others = others[:, np.linalg.norm(others, axis=0) > 0]
        col = x[:, j] / norms[j]
        resid = col - others @ np.linalg.lstsq(others, col, rcond=None)[0] if others.size else col
        left = float(resid @ resid)  # 1 - R², the share of the column the others do not reproduce
        if left * MAX_VIF < 1:
            vif = "infinite: aliased" if left <= 1e-12 else f"{1 / left:.2g} > {MAX_VIF:g}"
            out[name] = f"near-singular design: the controls reproduce the treatment column (variance inflation {vif})"
    return out


def design_effects(df: pd.DataFrame, treatments: list[str] | None = None,
                   outcomes: list[str] | None = None) -> pd.DataFrame:
    """OLS effect of each design choice on each component, with the spec's confounder controls.

    For each treatment present in the table and each outcome (components + agg_risk): categorical
    treatments enter as dummies against a base level (``BASE_LEVELS`` or the most frequent level),
    numeric ones as log(x) for nviews, z_dim, batch_size, n_parameters, epochs (else linearly).
    When the treatment is ``family``, ConvNeXt rows are excluded (ViT vs ResNet, as in the study).
    Controls (:func:`_controls_for`) are dropped when absent, entirely missing or constant in the
    rows used; rows with missing values in used columns are dropped; if the fit would have no
    residual degree of freedom, controls are dropped from the end of the priority list. Several
    datasets are analysed separately.

    References (:func:`reference_mask`) are not design levels: their rows are left out.

    Returns a tidy DataFrame: dataset, treatment, level, base, component, coef, se, p, ci_lo,
    ci_hi, n, controls (";"-joined), estimable, why — one row per (treatment level, component). A coefficient whose
    standard error is 0 or not finite (a perfect fit) is not testable: p, ci_lo and ci_hi NaN (with a warning).
    Not estimable (``estimable`` False, ``why`` the rule and its value, coef / se / p / CI NaN: never a
    coefficient): an outcome constant or near-constant over the rows used (:func:`constant_outcome`), or a
    near-singular design: a treatment column the controls reproduce (variance inflation above :data:`MAX_VIF`,
    :func:`_aliased`).
    """
    t = leaderboard_table(df)
    t = t[~reference_mask(t)].reset_index(drop=True)
    cols = ["dataset", "treatment", "level", "base", "component", "coef", "se", "p", "ci_lo", "ci_hi",
            "n", "controls", "estimable", "why"]
    treatments = [x for x in (treatments or DEFAULT_TREATMENTS) if x in t]
    outcomes = [c for c in (outcomes or OUTCOMES) if c in t]
    rows, untestable = [], []
    for ds, g in t.groupby("dataset", sort=True):
        for tr in treatments:
            gt = g
            if tr == "family":
                gt = g[g["family"].astype("string").str.lower() != "convnext"]
            fields = [tr] + [c for c in _controls_for(tr) if c in gt]
            base_data = pd.DataFrame({f: _design_matrix_col(gt, f) for f in fields})
            cat = {f for f in fields if _is_categorical(gt, f)}
            for outcome in outcomes:
                data = base_data.copy()
                data[outcome] = gt[outcome].to_numpy()
                data = data[data[tr].notna() & data[outcome].notna()]
                if len(data) < 3 or data[tr].nunique() < 2:
                    continue
                controls = [c for c in fields[1:]
                            if data[c].notna().any() and data[c].dropna().nunique() > 1]
                base = None
                if tr in cat:
                    levels = data[tr].value_counts()
                    base = BASE_LEVELS.get(tr) if BASE_LEVELS.get(tr) in levels.index else levels.index[0]
                fit = None
                while True:
                    d = data[[tr, outcome] + controls].dropna()
                    ok = len(d) >= 3 and d[tr].nunique() > 1
                    if ok:
                        n_params = 1 + sum(d[c].nunique() - 1 if c in cat else 1 for c in [tr] + controls)
                        ok = len(d) - n_params >= 1
                    if ok:
                        # constant controls after row dropping carry no information
                        const = [c for c in controls if d[c].nunique() < 2]
                        if const:
                            controls = [c for c in controls if c not in const]
                            continue
                        try:
                            fit = _fit_one(d, outcome, tr, controls, cat, base)
                        except Exception:  # noqa: BLE001 - singular / degenerate design
                            fit = None
                        break
                    if not controls:
                        break
                    controls = controls[:-1]
                if fit is None:
                    continue
                flat_why, aliased = constant_outcome(gt.loc[d.index], outcome), _aliased(fit, tr)
                ci = fit.conf_int()
                for name in fit.params.index:
                    if not name.startswith(f"C(Q('{tr}')") and name != f"Q('{tr}')":
                        continue
                    level = name.split("[T.")[-1].rstrip("]") if "[T." in name else (
                        f"log({tr})" if tr in LOG_FIELDS else tr)
                    se = float(fit.bse[name])
                    p, lo, hi = float(fit.pvalues[name]), float(ci.loc[name, 0]), float(ci.loc[name, 1])
                    coef = float(fit.params[name])
                    why = flat_why or aliased.get(name)
                    if why:  # never a coefficient for an outcome that does not vary or a design that cannot tell
                        coef = se = p = lo = hi = np.nan
                    elif _zero_se(se, np.abs(d[outcome]).max()):  # no residual variance: nothing to test against
                        p = lo = hi = np.nan
                        untestable.append(f"{tr}={level} on {outcome}")
                    rows.append({
                        "dataset": ds, "treatment": tr, "level": level, "base": base,
                        "component": outcome, "coef": coef,
                        "se": se, "p": p, "ci_lo": lo, "ci_hi": hi,
                        "n": int(fit.nobs), "controls": ";".join(controls),
                        "estimable": not why, "why": f"not estimable: {why}" if why else "",
                    })
    _warn_untestable("design effects", untestable, "standard error 0: the fit is perfect")
    return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------- controlled pairs
def _per_seed_values(seeds: pd.DataFrame | None) -> dict:
    """(dataset, base model) -> per-seed table (index pretrain_seed), from ``leaderboard_seeds.csv``."""
    if seeds is None or seeds.empty or not {"base_model", "pretrain_seed"} <= set(seeds.columns):
        return {}
    t = seeds.copy()
    if "dataset" not in t.columns:
        t["dataset"] = "default"
    t = t[t["pretrain_seed"].notna()]
    return {(ds, m): g.set_index(g["pretrain_seed"].astype(int))
            for (ds, m), g in t.groupby(["dataset", "base_model"], sort=False)}


def seed_difference(a: pd.Series, b: pd.Series) -> tuple[float, float, float, float, int]:
    """The old test, kept as the sensitivity column ``p_paired_<x>``: mean of b - a over pretraining seeds with a
    95 % t-interval and a two-sided p-value.

    ``a``, ``b``: one value per seed (index = seed). Seeds present in both are paired (paired t-test, n - 1
    degrees of freedom, :func:`riskdecomp.analysis.inference.paired_seed_test`); with fewer than 2 shared seeds but
    >= 2 on each side, Welch's unpaired test (:func:`riskdecomp.analysis.inference.welch_seed_test`). Returns
    ``(mean, lo, hi, p, n)``; NaN (n = 0) when neither is possible. A difference with zero variance over the seeds
    is not testable: ``lo``, ``hi`` and ``p`` NaN with ``n`` > 0 (:func:`untestable`), never p = 0 -- except a
    difference that is exactly 0 in every seed: ``(0, 0, 0, 1, n)``. The verdicts of the tables come from the
    engine (:class:`riskdecomp.analysis.inference.Engine`: every run, seed and test-point noise), not from here."""
    a, b = pd.to_numeric(a, errors="coerce").dropna(), pd.to_numeric(b, errors="coerce").dropna()
    if len(a.index.intersection(b.index)) >= 2:
        return paired_seed_test(a, b)
    return welch_seed_test(a, b)


def untestable(p: float, n: int) -> bool:
    """Whether a :func:`seed_difference` result is a zero-variance difference (it had seeds but no p-value)."""
    return bool(n) and not np.isfinite(p)


def _warn_untestable(what: str, items: list, why: str) -> None:
    if items:
        log.warning("%s: %d test(s) not testable, p-value and CI left NaN (%s): %s", what, len(items), why,
                    ", ".join(items[:5]) + (f" (and {len(items) - 5} more)" if len(items) > 5 else ""))


_ZERO_VAR = "zero variance over pretraining seeds: identical runs, or one run counted as several seeds"


def _engines_for(t: pd.DataFrame, seeds, per_sample) -> dict:
    """dataset -> inference engine, when the zoo has pretraining seeds or per-sample errors (else {})."""
    if not _per_seed_values(seeds) and per_sample is None:
        return {}
    return inference_engines(t, seeds, per_sample)


def _compare_into(row: dict, engine, a: str, b: str, outs: list, flat: list, label: str) -> None:
    """Fill ``row`` with the engine's comparison b - a of every outcome (zero-variance ones named in ``flat``)."""
    row.update(n_seeds=0, n_runs=0)
    for c in outs:
        res = engine.compare(a, b, c)
        if res["untestable"]:
            flat.append(f"{label} ({c})")
        if not res["n_runs"]:  # not in the fit: the leaderboard difference, without inference
            res["delta"] = row.get(f"delta_{c}", np.nan)
        row.update(contrast_fields(res, c))
        row["n_seeds"], row["n_runs"] = max(row["n_seeds"], res["n_seeds"]), max(row["n_runs"], res["n_runs"])


def controlled_pairs(df: pd.DataFrame, fields: list[str] | None = None,
                     seeds: pd.DataFrame | None = None, per_sample=None) -> pd.DataFrame:
    """Pairs of models (same dataset) whose design fields are equal except exactly one.

    ``fields`` defaults to :data:`PAIR_FIELDS` present in the table with at least one value; two
    missing values count as equal. Returns dataset, model_a, model_b, field, value_a, value_b and
    ``delta_<outcome>`` = outcome(b) - outcome(a) for components and agg_risk.

    ``seeds`` (the per-seed table ``leaderboard_seeds.csv``: ``base_model``, ``pretrain_seed``) and/or
    ``per_sample`` (a ``per_sample/`` folder or dict, :func:`riskdecomp.analysis.inference.load_per_sample`): with
    either, every difference comes from the inference engine (:class:`riskdecomp.analysis.inference.Engine`: model
    + seed fixed effects over every run, seed and test-point noise combined): ``delta_<x>`` (the fixed-effects
    contrast), ``delta_<x>_lo``/``_hi`` (unadjusted 95 % CI), ``p_<x>``, ``p_holm_<x>`` (Holm over all pairs of the
    table, one family per outcome), ``significant_<x>`` (p_holm < :data:`ALPHA`), ``delta_<x>_adj_lo``/``_hi`` (the CI
    at Holm's level: excludes 0 iff significant), ``mde_<x>``, ``se_<x>``, ``df_<x>``, the sensitivity p-values
    ``p_paired_<x>`` (shared seeds, the old test) and ``p_welch_<x>``; ``n_seeds`` (seeds of the model with fewer)
    and ``n_runs`` (runs in the fit).
    """
    t = leaderboard_table(df)
    fields = [f for f in (fields or PAIR_FIELDS) if f in t and t[f].notna().any()]
    outs = [c for c in OUTCOMES if c in t]
    eng = _engines_for(t, seeds, per_sample)
    cols = ["dataset", "model_a", "model_b", "field", "value_a", "value_b"] + [f"delta_{c}" for c in outs]
    if eng:
        cols += ["n_seeds", "n_runs"] + [x for c in outs for x in wide_columns(c)[1:]]
    if not fields:
        return pd.DataFrame(columns=cols)
    rows, flat = [], []
    for ds, g in t.groupby("dataset", sort=True):
        g = g.reset_index(drop=True)
        vals = g[fields].astype("string").fillna("<NA>").to_numpy()
        diff = (vals[:, None, :] != vals[None, :, :])  # n x n x f
        nd = diff.sum(axis=2)
        ia, ib = np.where(np.triu(nd == 1, k=1))
        for a, b in zip(ia, ib):
            f = fields[int(np.argmax(diff[a, b]))]
            ma, mb = g.at[a, "model"], g.at[b, "model"]
            row = {"dataset": ds, "model_a": ma, "model_b": mb, "field": f,
                   "value_a": g.at[a, f], "value_b": g.at[b, f]}
            for c in outs:
                row[f"delta_{c}"] = g.at[b, c] - g.at[a, c]
            if ds in eng:
                _compare_into(row, eng[ds], str(ma), str(mb), outs, flat, f"{ma} -> {mb}")
            rows.append(row)
    _warn_untestable("controlled pairs", flat, _ZERO_VAR)
    out = pd.DataFrame(rows, columns=cols)
    return finish_wide(out, outs) if eng else out


def baseline_contrasts(df: pd.DataFrame, seeds: pd.DataFrame | None, baseline: str | None = None,
                       per_sample=None) -> pd.DataFrame:
    """Every model against a baseline model (default: each model whose ``objective`` is ``init``, random
    weights: with several, e.g. one per architecture, every other model is contrasted with each of them, one row per
    (model, baseline); ``init`` models are not contrasted with one another): the question every SSL result answers
    first. For each outcome the engine's columns of :func:`controlled_pairs` (``delta_<outcome>`` = model -
    baseline), Holm over the rows of the table (one family per outcome). Empty without per-seed rows or per-sample
    errors, or without a baseline."""
    t = leaderboard_table(df)
    outs = [c for c in OUTCOMES if c in t]
    cols = ["dataset", "model", "baseline", "n_seeds", "n_runs"] + [x for c in outs for x in wide_columns(c)]
    eng = _engines_for(t, seeds, per_sample)
    rows, flat = [], []
    for ds, g in t.groupby("dataset", sort=True):
        bases = [baseline] if baseline is not None else []
        if baseline is None and "objective" in g:
            bases = list(g.loc[(g["objective"].astype("string") == "init").fillna(False), "model"])
        for base in bases:
            if base in set(g["model"]) and ds in eng:
                rows += _contrasts(ds, g, base, set(bases), eng[ds], outs, flat)
    _warn_untestable("baseline contrasts", flat, _ZERO_VAR)
    return finish_wide(pd.DataFrame(rows, columns=cols), outs)


def _contrasts(ds, g: pd.DataFrame, base: str, bases: set, engine, outs: list, flat: list) -> list:
    """The rows of :func:`baseline_contrasts` for dataset ``ds`` (its leaderboard rows ``g``) against ``base``;
    the contrasts that are not testable (zero variance over seeds) are appended to ``flat``."""
    rows = []
    b = g.set_index("model").loc[base]
    for _, r in g.iterrows():
        if r["model"] in bases:
            continue
        row = {"dataset": ds, "model": r["model"], "baseline": base, **{f"delta_{c}": r[c] - b[c] for c in outs}}
        _compare_into(row, engine, str(base), str(r["model"]), outs, flat, f"{r['model']} vs {base}")
        rows.append(row)
    return rows


def seed_ranking_stability(seeds: pd.DataFrame | None, outcome: str = "agg_risk",
                           max_splits: int = 200) -> tuple[dict, pd.DataFrame]:
    """How reproducible the model ranking is across pretraining seeds: Kendall tau (tau-b) between the rankings
    by ``outcome`` averaged over two disjoint halves of the seeds (each of size floor(S / 2), S = the seeds every
    model with >= 2 seeds has), over all such splits (at most ``max_splits``, in a fixed order).

    Returns ``({dataset: {tau_mean, tau_min, tau_max, n_splits, n_models, half_size}}, splits)`` where
    ``splits`` has one row per split: dataset, seeds_a, seeds_b ("|"-joined), tau. Empty when fewer than
    :data:`MIN_MODELS_FOR_RANKING` models or 2 shared seeds."""
    import itertools

    per_seed = _per_seed_values(seeds)
    out, rows = {}, []
    by_ds: dict = {}
    for (ds, m), g in per_seed.items():
        if outcome in g and g[outcome].notna().sum() >= 2:
            by_ds.setdefault(ds, {})[m] = pd.to_numeric(g[outcome], errors="coerce").dropna()
    for ds, models in by_ds.items():
        if len(models) < MIN_MODELS_FOR_RANKING:
            continue
        common = sorted(set.intersection(*(set(v.index) for v in models.values())))
        h = len(common) // 2
        if h < 1:
            continue
        taus = []
        for half_a in itertools.combinations(common, h):
            rest = [x for x in common if x not in half_a]
            for half_b in itertools.combinations(rest, h):
                if half_b < half_a or len(taus) >= max_splits:
                    continue
                ra = [models[m].loc[list(half_a)].mean() for m in models]
                rb = [models[m].loc[list(half_b)].mean() for m in models]
                tau = float(stats.kendalltau(ra, rb).statistic)
                taus.append(tau)
                rows.append({"dataset": ds, "seeds_a": "|".join(map(str, half_a)),
                             "seeds_b": "|".join(map(str, half_b)), "tau": tau})
        fin = [x for x in taus if np.isfinite(x)]
        out[str(ds)] = {"tau_mean": float(np.mean(fin)) if fin else np.nan,
                        "tau_min": float(np.min(fin)) if fin else np.nan,
                        "tau_max": float(np.max(fin)) if fin else np.nan,
                        "n_splits": len(taus), "n_models": len(models), "half_size": h}
    return out, pd.DataFrame(rows, columns=["dataset", "seeds_a", "seeds_b", "tau"])

"""Figures of a results directory (seaborn, Agg backend, colorblind palette, PNG + SVG).

Each ``plot_*`` function takes tables, writes ``<out_dir>/<name>.png`` and ``.svg`` and returns
``(png_path, caption)``, or raises :class:`PlotSkipped` with a one-line reason when its inputs are
absent or unusable (never another exception for missing / NaN data). Figure sizes grow with the
number of models; model names are only written where they cannot pile up (bars, few points, top
movers).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from riskdecomp.analysis.effects import design_effects, ranking_stability  # noqa: E402
from riskdecomp.analysis.scaling import fit_scaling_law  # noqa: E402
from riskdecomp.analysis.tables import _setting_name, _sizes, _table, fewshot_settings  # noqa: E402
from riskdecomp.report.html import seed_contrast_rows  # noqa: E402
from riskdecomp.utils.schema import COMPONENTS, score_columns  # noqa: E402

COMPONENT_LABELS = {"approx": "approximation", "usability": "usability", "probe_gen": "probe generalization",
                    "enc_gen": "encoder generalization", "agg_risk": "aggregated risk"}
# Okabe-Ito colour-blind-safe colours, four clearly distinct hues (blue, orange, bluish green, reddish purple);
# seaborn's "colorblind" palette gives usability and enc_gen two near-identical oranges
COMPONENT_COLORS = {"approx": "#0072B2", "usability": "#E69F00", "probe_gen": "#009E73", "enc_gen": "#CC79A7"}
TARGET_FILES = ("leaderboard.csv", "uncertainty.csv", "active_learning.csv", "label_efficiency.csv")
MAX_FACETS = 9
MAX_DATASETS = 6


class PlotSkipped(Exception):
    """A plot could not be drawn; the message is the caption note shown instead."""


def _theme() -> None:
    sns.set_theme(style="whitegrid", palette="colorblind", font_scale=0.9)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def _save(fig, out_dir: Path, name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{name}.png"
    fig.tight_layout()
    fig.savefig(png, dpi=100 if fig.get_size_inches()[1] < 20 else 70, bbox_inches="tight")
    with plt.rc_context({"svg.hashsalt": name}):  # no date, fixed element ids: the same figure, the same bytes
        fig.savefig(out_dir / f"{name}.svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return png


def _models(df: pd.DataFrame) -> pd.DataFrame:
    return _table(df)


# ----------------------------------------------------------------------------- leaderboard plots
def plot_components(lb: pd.DataFrame, out_dir: Path, name: str = "components") -> list[tuple[Path, str]]:
    """Stacked risk components per model (sorted by aggregated risk), whiskers = agg_risk CI."""
    t = _models(lb)
    comps = [c for c in COMPONENTS if c in t]
    if not comps or t[comps].isna().all().all():
        raise PlotSkipped("risk components: no component column in the leaderboard")
    out = []
    for ds, g in list(t.groupby("dataset", sort=True))[:MAX_DATASETS]:
        g = g.dropna(subset=comps, how="all")
        if g.empty:
            continue
        total = g["agg_risk"] if "agg_risk" in g else g[comps].sum(axis=1)
        g = g.assign(_total=total.to_numpy()).sort_values("_total", ascending=True)
        n = len(g)
        fig, ax = plt.subplots(figsize=(9, max(3.0, 0.24 * n + 1.4)))
        # diverging stack: positive parts to the right of 0, negative ones (estimation noise, e.g. a test error
        # below the held-out error) to the left, so that the right end minus the left end is the sum
        pos, neg = np.zeros(n), np.zeros(n)
        y = np.arange(n)
        for c, col in ((c, COMPONENT_COLORS[c]) for c in comps):
            v = g[c].fillna(0).to_numpy(float)
            vp, vn = np.clip(v, 0, None), np.clip(v, None, 0)
            ax.barh(y, vp, left=pos, color=col, label=COMPONENT_LABELS[c], height=0.8)
            if (vn < 0).any():
                ax.barh(y, vn, left=neg, color=col, height=0.8, hatch="//", edgecolor="white", linewidth=0)
            pos += vp
            neg += vn
        if (neg < 0).any():
            ax.axvline(0, color="black", linewidth=0.6)
        ax.plot(g["_total"].to_numpy(float), y, "D", color="black", markersize=3, label="aggregated risk")
        if {"agg_risk_lo", "agg_risk_hi"} <= set(g.columns):
            lo, hi, mid = (g[c].to_numpy(float) for c in ("agg_risk_lo", "agg_risk_hi", "_total"))
            ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(mid)
            if ok.any():
                ax.errorbar(mid[ok], y[ok], xerr=[np.maximum(mid - lo, 0)[ok], np.maximum(hi - mid, 0)[ok]],
                            fmt="none", ecolor="black", elinewidth=0.8, capsize=2, label="agg. risk 95% CI")
        ax.set_yticks(y, g["model"].astype(str), fontsize=8 if n < 60 else 6)
        ax.set_ylim(-0.6, n - 0.4)
        ax.invert_yaxis()  # best (lowest aggregated risk) on top
        ax.set_xlabel("test error (%)")
        ax.set_title(f"Risk decomposition — {ds}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=True)
        merged = (g["approx_merged"] if "approx_merged" in g else pd.Series(False, index=g.index))
        merged = merged.astype(str).str.lower().eq("true")
        missing = int((g[comps].isna() & ~pd.DataFrame({c: merged & (c == "approx") for c in comps})).any(axis=1).sum())
        note = f" {missing} model(s) lack some component (drawn as 0)." if missing else ""
        if merged.any():
            note += (f" {int(merged.sum())} model(s) without a supervised reference: approximation error merged into "
                     "usability.")
        path = _save(fig, out_dir, f"{name}_{_slug(ds)}")
        neg_note = (" Negative components (estimation noise) are hatched, left of 0; the diamond marks the aggregated"
                    " risk, their sum." if (neg < 0).any() else "")
        out.append((path, f"Risk components per model on {ds}, sorted by aggregated risk (best on top)"
                          f"; whiskers: 95% CI of the aggregated risk where available.{neg_note}{note}"))
    if not out:
        raise PlotSkipped("risk components: every component is missing")
    return out


def _hue(t: pd.DataFrame, color_by: str | None) -> tuple[str | None, str]:
    if not color_by or color_by not in t or t[color_by].isna().all():
        return None, f" (no '{color_by}' column: not colored)" if color_by else ""
    s = t[color_by].astype("string").fillna("unknown")
    top = s.value_counts().index[:9]
    t["_hue"] = s.where(s.isin(top), "other")
    return "_hue", ""


def plot_usability_vs_probe_gen(lb: pd.DataFrame, out_dir: Path, color_by: str | None = "objective",
                                name: str = "usability_vs_probe_gen") -> tuple[Path, str]:
    """Scatter usability vs probe generalization, colored by a design choice."""
    t = _models(lb)
    if not {"usability", "probe_gen"} <= set(t.columns):
        raise PlotSkipped("usability vs probe_gen: columns missing")
    t = t.dropna(subset=["usability", "probe_gen"])
    if t.empty:
        raise PlotSkipped("usability vs probe_gen: no model has both values")
    hue, note = _hue(t, color_by)
    style = "dataset" if t["dataset"].nunique() > 1 else None
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    sns.scatterplot(data=t, x="usability", y="probe_gen", hue=hue, style=style, ax=ax, s=45)
    if len(t) <= 25:
        for _, r in t.iterrows():
            ax.annotate(str(r["model"]), (r["usability"], r["probe_gen"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("usability error (%)")
    ax.set_ylabel("probe generalization error (%)")
    if hue or style:
        ax.legend(title=color_by if hue else None, fontsize=7, title_fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0))
    path = _save(fig, out_dir, name)
    return path, f"Usability vs probe generalization per model, colored by {color_by}{note}."


def plot_ranking_change(lb: pd.DataFrame, out_dir: Path, name: str = "ranking_change") -> list[tuple[Path, str]]:
    """Rank of each model full shot vs each few-shot setting (1 = best); top movers labelled."""
    t = _models(lb)
    settings = list(fewshot_settings(t))
    if "agg_risk" not in t or not settings:
        raise PlotSkipped("ranking change: needs agg_risk and fewshot_* columns")
    taus, _ = ranking_stability(t)
    out = []
    for ds, g in list(t.groupby("dataset", sort=True))[:MAX_DATASETS]:
        cols = ["agg_risk"] + sorted(settings, key=lambda c: -_sizes(g, c).mean())
        ranks = g[cols].rank(method="min")
        ranks = ranks.dropna(how="all", axis=1)
        if len(g) < 2 or ranks.shape[1] < 2:
            continue
        n = len(g)
        fig, ax = plt.subplots(figsize=(1.6 * ranks.shape[1] + 3.5, max(3.5, 0.16 * n + 1.5)))
        xs = np.arange(ranks.shape[1])
        move = (ranks.iloc[:, 1:].sub(ranks.iloc[:, 0], axis=0)).abs().max(axis=1).fillna(0)
        top = set(move.sort_values(ascending=False).index[: min(6, n)])
        for idx, row in ranks.iterrows():
            hi = idx in top
            ax.plot(xs, row.to_numpy(), marker="o", ms=3, lw=1.6 if hi else 0.7, alpha=1.0 if hi else 0.35,
                    color=None if hi else "gray")
            if hi or n <= 20:
                last = row.dropna()
                if len(last):
                    ax.annotate(str(g.at[idx, "model"]), (xs[row.index.get_loc(last.index[-1])], last.iloc[-1]),
                                xytext=(5, 0), textcoords="offset points", fontsize=7, va="center")
        labels = ["full"] + [_setting_name(c) for c in ranks.columns[1:]]
        ax.set_xticks(xs, labels)
        ax.set_xlim(-0.3, xs[-1] + 1.2)
        ax.invert_yaxis()
        ax.set_ylabel("rank (1 = lowest error)")
        ax.set_title(f"Ranking change — {ds}")
        path = _save(fig, out_dir, f"{name}_{_slug(ds)}")
        tau_txt = ", ".join(f"{k}: {v:.2f}" for k, v in taus.items())
        out.append((path, f"Rank of each model at full shot and in each few-shot setting on {ds}; the models "
                          f"that move most are highlighted. Kendall tau vs full shot (mean over datasets): "
                          f"{tau_txt or 'n/a'}."))
    if not out:
        raise PlotSkipped("ranking change: fewer than 2 models with few-shot results")
    return out


def plot_design_effects(effects: pd.DataFrame, out_dir: Path, name: str = "design_effects",
                        max_rows: int = 30) -> tuple[Path, str]:
    """Coefficient plot (coef ± 95% CI) of design choices on each component."""
    if effects is None or effects.empty or not {"coef", "ci_lo", "ci_hi", "component"} <= set(effects.columns):
        raise PlotSkipped("design effects: nothing estimable (too few models or design fields)")
    e = effects.dropna(subset=["coef", "ci_lo", "ci_hi"])
    e = e[e["component"].isin(COMPONENTS)]
    if e.empty:
        raise PlotSkipped("design effects: no finite coefficient")
    keep = (e.sort_values("p").drop_duplicates(["treatment", "level"]).head(max_rows)[["treatment", "level"]])
    e = e.merge(keep, on=["treatment", "level"])
    prefix = (e["source"].astype(str) + ": ") if "source" in e and e["source"].nunique() > 1 else ""
    e = e.assign(term=prefix + e["treatment"].astype(str) + " = " + e["level"].astype(str))
    terms = list(dict.fromkeys(e.sort_values(["treatment", "level"])["term"]))
    comps = [c for c in COMPONENTS if c in set(e["component"])]
    fig, axes = plt.subplots(1, len(comps), figsize=(3.2 * len(comps) + 2.5, max(3.0, 0.3 * len(terms) + 1.5)),
                             sharey=True, squeeze=False)
    pos = {t: i for i, t in enumerate(terms)}
    for ax, c in zip(axes[0], comps):
        s = e[e["component"] == c]
        yy = s["term"].map(pos).to_numpy()
        ax.errorbar(s["coef"], yy, xerr=[s["coef"] - s["ci_lo"], s["ci_hi"] - s["coef"]], fmt="o", ms=4,
                    capsize=2, color=COMPONENT_COLORS[c])
        ax.axvline(0, color="black", lw=0.8)
        # a few levels with very wide CIs (1-2 models) would squash the others: clip the axis
        width = (s["ci_hi"] - s["ci_lo"]).to_numpy(float)
        if len(width) and np.isfinite(width).any():
            ok = width <= 5 * np.nanmedian(width)
            lim = 1.1 * np.nanmax(np.abs(np.r_[s["ci_lo"].to_numpy(float)[ok], s["ci_hi"].to_numpy(float)[ok]]))
            if np.isfinite(lim) and lim > 0:
                ax.set_xlim(-lim, lim)
        ax.set_title(COMPONENT_LABELS[c], fontsize=9)
        ax.set_xlabel("effect (% error)")
    axes[0][0].set_yticks(range(len(terms)), terms, fontsize=7)
    axes[0][0].invert_yaxis()
    path = _save(fig, out_dir, name)
    return path, ("OLS effect of each design choice on each component (95% CI) with confounder controls; "
                  "categorical levels vs their base level, numeric fields per unit of log(value) where logged. "
                  f"Up to {max_rows} most significant terms; axes clipped to the typical CI range (very wide CIs of rare "
                  "levels run off the panel).")


def plot_scaling_law(lb: pd.DataFrame, out_dir: Path, name: str = "scaling_law") -> tuple[Path, str]:
    """Predicted (component scaling law) vs actual few-shot errors."""
    try:
        params, preds = fit_scaling_law(lb)
    except ValueError as exc:  # the fit's own "cannot fit" (a missing column is a bug, not a skip)
        raise PlotSkipped(f"scaling law: {exc}") from None
    fig, ax = plt.subplots(figsize=(6, 5.5))
    sns.scatterplot(data=preds, x="actual", y="predicted", hue="setting", ax=ax, s=25)
    lim = [0, max(preds["actual"].max(), preds["predicted"].max()) * 1.05]
    ax.plot(lim, lim, color="black", lw=0.8, ls="--")
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_xlabel("actual error (%)")
    ax.set_ylabel("predicted error (%)")
    ax.set_title(f"alpha={params['alpha']:.3f}, B={params['B']:.2f}, R²={params['r2']:.3f}")
    path = _save(fig, out_dir, name)
    return path, (f"Scaling law from components, err(n) = E + (1-B)(A+U) + (B(A+U)+P)(N/n)^alpha: predicted vs "
                  f"actual for every (model, setting); R² {params['r2']:.3f}, RMSE {params['rmse']:.2f} "
                  f"(few-shot only R² {params['r2_fewshot']:.3f} vs {params['baseline_r2_fewshot']:.3f} for a "
                  f"standard scaling law ignoring the components).")


# ----------------------------------------------------------------------------- uncertainty / active learning
def plot_uncertainty_bins(unc: pd.DataFrame, out_dir: Path, name: str = "uncertainty_bins") -> tuple[Path, str]:
    """Accuracy per equal-mass decile of each uncertainty score (decile 1 = most certain), from the
    ``acc_bin_NN`` metrics of :mod:`riskdecomp.estimators.reliability` (its :data:`~riskdecomp.estimators.reliability.BIN_METRIC_RE`)."""
    from riskdecomp.estimators.reliability import ACC_BIN, BIN_METRIC_RE

    need = {"metric", "value", "score"}
    if unc is None or not need <= set(unc.columns):
        raise PlotSkipped("uncertainty bins: uncertainty.csv absent or lacks metric/value/score")
    parts = unc["metric"].astype(str).str.extract(f"^{BIN_METRIC_RE}\\Z")
    b = unc[parts["kind"] == ACC_BIN].dropna(subset=["value"]).copy()
    if b.empty:
        raise PlotSkipped(f"uncertainty bins: no {ACC_BIN}_* rows (no 0-1 error target)")
    b["bin"] = parts.loc[b.index, "bin"].astype(int)
    if "target" in b and b["target"].nunique() > 1:
        tgt = "err01" if "err01" in set(b["target"]) else b["target"].iloc[0]
        b = b[b["target"] == tgt]
    if "model" not in b:
        b["model"] = "model"
    models = list(dict.fromkeys(b["model"]))[:MAX_FACETS]
    b = b[b["model"].isin(models)]
    g = sns.relplot(data=b, x="bin", y="value", hue="score", col="model", col_wrap=min(3, len(models)),
                    kind="line", marker="o", height=3, aspect=1.2, facet_kws={"sharey": False})
    g.set_axis_labels("uncertainty decile (1 = most certain)", "accuracy")
    g.set_titles("{col_name}")
    path = _save(g.figure, out_dir, name)
    return path, "Test accuracy per equal-mass decile of each uncertainty score (decile 1 = most certain); a " \
                 "useful score gives decreasing curves."


def plot_uncertainty_metrics(unc: pd.DataFrame, out_dir: Path, name: str = "uncertainty_metrics") -> tuple[Path, str]:
    """Kendall tau and AUROC of each score per model with bootstrap CIs."""
    if unc is None or not {"metric", "value", "score"} <= set(unc.columns):
        raise PlotSkipped("uncertainty metrics: uncertainty.csv absent")
    m = unc[unc["metric"].isin(["kendall_tau", "auroc"])].dropna(subset=["value"]).copy()
    if "target" in m:
        m = m[(m["metric"] == "auroc") | (m["target"] == ("brier_ovo" if "brier_ovo" in set(m["target"]) else
                                                         m["target"].iloc[0] if len(m) else None))]
    if m.empty:
        raise PlotSkipped("uncertainty metrics: no kendall_tau / auroc rows")
    if "model" not in m:
        m["model"] = "model"
    metrics = list(dict.fromkeys(m["metric"]))
    scores = sorted(set(m["score"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), max(3.0, 0.35 * len(scores) + 1.5)),
                             squeeze=False)
    models = list(dict.fromkeys(m["model"]))[:10]
    pal = sns.color_palette("colorblind", len(models))
    for ax, met in zip(axes[0], metrics):
        s = m[m["metric"] == met]
        for j, (mod, col) in enumerate(zip(models, pal)):
            r = s[s["model"] == mod]
            y = r["score"].map({sc: i for i, sc in enumerate(scores)}).to_numpy() + (j - len(models) / 2) * 0.08
            lo = (r["value"] - r["ci_lo"]).clip(lower=0).fillna(0) if "ci_lo" in r else 0
            hi = (r["ci_hi"] - r["value"]).clip(lower=0).fillna(0) if "ci_hi" in r else 0
            ax.errorbar(r["value"], y, xerr=[lo, hi], fmt="o", ms=4, capsize=2, color=col, label=str(mod))
        ax.axvline(0.5 if met == "auroc" else 0.0, color="black", lw=0.8, ls="--")
        ax.set_yticks(range(len(scores)), scores, fontsize=8)
        ax.set_title(met)
    axes[0][-1].legend(fontsize=7, loc="best")
    path = _save(fig, out_dir, name)
    return path, ("Kendall tau (vs Brier one-vs-one where available) and AUROC for detecting errors of each "
                  "uncertainty score, with bootstrap 95% CIs; dashed line = chance. Signs are not flipped.")


def plot_risk_coverage(per_sample_dir: Path, out_dir: Path, name: str = "risk_coverage") -> tuple[Path, str]:
    """Risk (0-1 error among kept points) vs coverage, rejecting the most uncertain points first."""
    files = sorted(Path(per_sample_dir).glob("*.csv")) if per_sample_dir and Path(per_sample_dir).is_dir() else []
    if not files:
        raise PlotSkipped("risk-coverage: no per_sample/*.csv")
    files = files[:MAX_FACETS]
    ncol = min(3, len(files))
    nrow = math.ceil(len(files) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.3 * ncol, 3.6 * nrow), squeeze=False)
    drawn = 0
    for ax, f in zip(axes.ravel(), files):
        try:
            d = pd.read_csv(f)
        except (OSError, ValueError, pd.errors.ParserError):
            ax.set_visible(False)
            continue
        if "err01" not in d:
            ax.set_visible(False)
            continue
        err = pd.to_numeric(d["err01"], errors="coerce")
        scores = [c for c in score_columns(d.columns) if pd.api.types.is_numeric_dtype(d[c])]
        for sc in scores[:10]:
            ok = err.notna() & d[sc].notna()
            if ok.sum() < 2:
                continue
            order = np.argsort(d.loc[ok, sc].to_numpy(), kind="stable")
            e = err[ok].to_numpy()[order]
            k = np.arange(1, len(e) + 1)
            ax.plot(k / len(e), np.cumsum(e) / k, lw=1, label=sc)
        oracle = np.sort(err.dropna().to_numpy())
        if len(oracle):
            k = np.arange(1, len(oracle) + 1)
            ax.plot(k / len(oracle), np.cumsum(oracle) / k, color="black", ls="--", lw=1, label="oracle")
            drawn += 1
        from riskdecomp.utils.names import parse_stem

        parsed = parse_stem(f.stem)
        ax.set_title(" / ".join(parsed) if parsed else f.stem, fontsize=8)
        ax.set_xlabel("coverage")
        ax.set_ylabel("risk (error rate)")
        ax.legend(fontsize=6)
    for ax in axes.ravel()[len(files):]:
        ax.set_visible(False)
    if not drawn:
        plt.close(fig)
        raise PlotSkipped("risk-coverage: per_sample files lack err01")
    path = _save(fig, out_dir, name)
    return path, "Risk-coverage curves: error rate among the kept test points when the most uncertain are " \
                 "rejected first (dashed: oracle ordering by the error itself)."


def plot_active_learning(al: pd.DataFrame, out_dir: Path, name: str = "active_learning") -> tuple[Path, str]:
    """Accuracy vs number of labels per acquisition (mean ± sd over seeds), one panel per model."""
    if al is None or not {"n_labels", "accuracy", "acquisition"} <= set(al.columns):
        raise PlotSkipped("active learning: active_learning.csv absent or lacks n_labels/accuracy/acquisition")
    d = al.dropna(subset=["n_labels", "accuracy"]).copy()
    if d.empty:
        raise PlotSkipped("active learning: no finite accuracy")
    if "model" not in d:
        d["model"] = "model"
    models = list(dict.fromkeys(d["model"]))[:MAX_FACETS]
    d = d[d["model"].isin(models)]
    g = sns.relplot(data=d, x="n_labels", y="accuracy", hue="acquisition", col="model",
                    col_wrap=min(3, len(models)), kind="line", errorbar="sd", marker="o", height=3, aspect=1.2)
    g.set_axis_labels("number of labels", "test accuracy")
    g.set_titles("{col_name}")
    path = _save(g.figure, out_dir, name)
    return path, "Active learning: test accuracy vs number of labels per acquisition function (mean ± sd over seeds)."


# ----------------------------------------------------------------------------- orchestration
# ----------------------------------------------------------------------------- pretraining seeds
SEED_OUTCOMES = ["usability", "probe_gen", "enc_gen", "agg_risk"]  # approx: the reference's, equal within a pair
MAX_CONTRASTS = 40
SIGNIFICANT_COLOR, NOT_SIGNIFICANT_COLOR = "#D55E00", "#7F7F7F"  # Okabe-Ito vermillion, grey


def plot_seed_contrasts(pairs: pd.DataFrame | None, contrasts: pd.DataFrame | None, out_dir: Path,
                        name: str = "seed_contrasts") -> tuple[Path, str]:
    """Forest plot of every seed-level difference (each model vs random init, each controlled pair) per component:
    the mean difference over pretraining seeds with its 95 % t-interval; filled vermillion = significant after
    Holm's correction (p_Holm < 0.05, one family per component and file), hollow grey = not significant."""
    rows = seed_contrast_rows(pairs, contrasts)
    outs = [c for c in SEED_OUTCOMES if f"delta_{c}_lo" in rows and rows[f"delta_{c}_lo"].notna().any()]
    if rows.empty or "agg_risk" not in outs:
        raise PlotSkipped("differences over seeds: no pretraining seeds in this zoo (analysis/baseline_contrasts.csv "
                          "and controlled_pairs.csv have no seed CIs)")
    shown = rows
    if len(rows) > MAX_CONTRASTS:  # keep the most significant by agg_risk
        shown = rows.sort_values("p_holm_agg_risk", kind="stable").head(MAX_CONTRASTS)
        shown = rows.loc[sorted(shown.index)]
    n = len(shown)
    fig, axes = plt.subplots(1, len(outs), figsize=(2.9 * len(outs) + 2.6, max(3.0, 0.3 * n + 1.4)), sharey=True,
                             squeeze=False)
    y = np.arange(n)[::-1]
    for ax, c in zip(axes[0], outs):
        d, lo, hi = (pd.to_numeric(shown[k], errors="coerce").to_numpy(float)
                     for k in (f"delta_{c}", f"delta_{c}_lo", f"delta_{c}_hi"))
        sig = shown[f"significant_{c}"].astype("boolean").fillna(False).to_numpy(bool)
        ax.axvline(0, color="black", lw=0.8)
        for mask, color, face in ((~sig, NOT_SIGNIFICANT_COLOR, "white"), (sig, SIGNIFICANT_COLOR, SIGNIFICANT_COLOR)):
            if mask.any():
                ax.errorbar(d[mask], y[mask], xerr=[d[mask] - lo[mask], hi[mask] - d[mask]], fmt="o", ms=5,
                            color=color, mfc=face, mec=color, ecolor=color, elinewidth=1.2, capsize=2)
        ax.set_title(COMPONENT_LABELS.get(c, c), fontsize=9)
        ax.set_xlabel("difference (points)")
        fam = shown["family"].to_numpy()
        for k in range(1, n):
            if fam[k] != fam[k - 1]:
                ax.axhline(y[k] + 0.5, color="#bbbbbb", lw=0.8, ls="--")
    axes[0][0].set_yticks(y, shown["label"].tolist(), fontsize=8)
    axes[0][0].set_ylim(-0.7, n - 0.3)
    fig.suptitle("Differences over pretraining seeds: filled = significant after Holm's correction", fontsize=10)
    path = _save(fig, out_dir, name)
    n_sig = int(rows["significant_agg_risk"].astype("boolean").fillna(False).sum())
    cut = (f" The {MAX_CONTRASTS} comparisons with the smallest Holm p-value on agg_risk of {len(rows)} are shown."
           if len(rows) > MAX_CONTRASTS else "")
    seeds = pd.to_numeric(rows.get("n_seeds"), errors="coerce")
    seed_txt = f"{int(seeds.min())}-{int(seeds.max())}" if seeds.notna().any() else "n/a"
    return path, (f"Each model minus random init (top) and each controlled pair (model b minus model a, the one design "
                  f"field that differs), per component, in points: mean over pretraining seeds and 95 % t-interval "
                  f"of the per-seed paired differences ({seed_txt} seeds). Filled vermillion: significant after "
                  f"Holm's correction (p_Holm < 0.05; one family per component and per file); hollow grey: not "
                  f"significant. {n_sig} of {len(rows)} agg_risk differences are significant. Negative = lower "
                  f"error than the comparison model.{cut}")


def plot_seed_ranking(per_seed: pd.DataFrame | None, splits: pd.DataFrame | None, out_dir: Path,
                      name: str = "seed_ranking") -> list[tuple[Path, str]]:
    """Ranking stability over pretraining seeds, per dataset: each model's agg_risk per seed (dots) and seed mean
    (bar), sorted by the mean; and the Kendall tau between the rankings of two disjoint halves of the seeds, per
    split (``analysis/seed_ranking_stability.csv``)."""
    if per_seed is None or per_seed.empty or not {"base_model", "pretrain_seed", "agg_risk"} <= set(per_seed):
        raise PlotSkipped("ranking stability: no pretraining seeds in this zoo (no leaderboard_seeds.csv)")
    if splits is None or splits.empty or "tau" not in splits:
        raise PlotSkipped("ranking stability: fewer than 3 models with 2 shared pretraining seeds")
    ps = per_seed[per_seed["pretrain_seed"].notna()].copy()
    if "dataset" not in ps:
        ps["dataset"] = "default"
    out = []
    for ds, sp in list(splits.groupby("dataset", sort=True))[:MAX_DATASETS]:
        g = ps[ps["dataset"].astype(str) == str(ds)]
        if g.empty:
            continue
        order = g.groupby("base_model")["agg_risk"].mean().sort_values().index.tolist()
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.5, max(3.2, 0.28 * len(order) + 1.4)),
                                      gridspec_kw={"width_ratios": [3, 1.2]})
        ypos = {m: i for i, m in enumerate(order[::-1])}
        means = g.groupby("base_model")["agg_risk"].mean()
        ax.barh([ypos[m] for m in order], [means[m] for m in order], color="#dddddd", height=0.6)
        seeds = sorted(g["pretrain_seed"].astype(int).unique())
        pal = sns.color_palette("colorblind", len(seeds))
        for s, col in zip(seeds, pal):
            h = g[g["pretrain_seed"].astype(int) == s]
            ax.scatter(h["agg_risk"], [ypos[m] for m in h["base_model"]], s=16, color=col, label=f"seed {s}",
                       zorder=3)
        ax.set_yticks(list(ypos.values()), list(ypos.keys()), fontsize=8)
        lo = g["agg_risk"].min()
        ax.set_xlim(max(0.0, lo - 0.1 * (g["agg_risk"].max() - lo) - 1), None)
        ax.set_xlabel("agg_risk (%) per pretraining seed; bar = seed mean")
        ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=min(len(seeds), 8), frameon=False,
                  handletextpad=0.2, columnspacing=0.8)
        taus = pd.to_numeric(sp["tau"], errors="coerce").dropna()
        ax2.scatter(taus, np.zeros(len(taus)) + np.linspace(-0.15, 0.15, len(taus)), color="#0072B2", s=18)
        ax2.axvline(taus.mean(), color="#0072B2", lw=1.2)
        ax2.set_xlim(-1.05, 1.05)
        ax2.set_ylim(-1, 1)
        ax2.set_yticks([])
        ax2.set_xlabel("Kendall tau between halves")
        ax2.set_title(f"mean tau {taus.mean():.2f}", fontsize=9)
        fig.suptitle(f"Ranking stability over pretraining seeds — {ds}", fontsize=10)
        path = _save(fig, out_dir, f"{name}_{_slug(ds)}")
        half = sp["seeds_a"].astype(str).str.count(r"\|").iloc[0] + 1
        out.append((path, f"Left: each model's agg_risk for every pretraining seed (dots) and the seed mean (bar), "
                          f"best first, on {ds}. Right: Kendall tau between the model rankings computed on two "
                          f"disjoint halves of the seeds ({half} seed(s) each), one dot per split ({len(taus)} "
                          f"splits); mean {taus.mean():.2f}, min {taus.min():.2f}, max {taus.max():.2f}. A tau near "
                          f"1 means another set of seeds would give the same ranking."))
    if not out:
        raise PlotSkipped("ranking stability: no dataset with per-seed rows")
    return out


def _read(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


def collect_plots(results_dir, out_dir, color_by: str | None = "objective", *,
                  published: pd.DataFrame | None = None, effects: pd.DataFrame | None = None,
                  ) -> tuple[list[tuple[Path, str]], list[str]]:
    """Draw every plot whose inputs exist. Returns (made plots, notes for skipped plots)."""
    _theme()
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    lb = _read(results_dir / "leaderboard.csv")
    if effects is None:
        effects = _read(results_dir / "analysis" / "design_effects.csv")
    made: list[tuple[Path, str]] = []
    notes: list[str] = []

    def attempt(fn, *args, **kw):
        try:
            res = fn(*args, **kw)
        except PlotSkipped as exc:
            notes.append(str(exc))
            return
        made.extend(res if isinstance(res, list) else [res])

    if lb is None or lb.empty:
        notes.append("leaderboard.csv absent or empty: leaderboard plots skipped")
    else:
        attempt(plot_components, lb, out_dir)
        attempt(plot_usability_vs_probe_gen, lb, out_dir, color_by)
        attempt(plot_ranking_change, lb, out_dir)
        attempt(plot_scaling_law, lb, out_dir)
        eff = effects
        if eff is not None and "source" in eff:
            eff = eff[eff["source"] == "ours"]
        if eff is None:
            eff = design_effects(lb)
        attempt(plot_design_effects, eff, out_dir)
        per_seed = _read(results_dir / "leaderboard_seeds.csv")
        if per_seed is not None:  # a zoo with pretraining seeds (without: nothing to draw, not a failure)
            attempt(plot_seed_contrasts, _read(results_dir / "analysis" / "controlled_pairs.csv"),
                    _read(results_dir / "analysis" / "baseline_contrasts.csv"), out_dir)
            attempt(plot_seed_ranking, per_seed, _read(results_dir / "analysis" / "seed_ranking_stability.csv"),
                    out_dir)
    unc = _read(results_dir / "uncertainty.csv")
    attempt(plot_uncertainty_metrics, unc, out_dir)
    attempt(plot_uncertainty_bins, unc, out_dir)
    attempt(plot_risk_coverage, results_dir / "per_sample", out_dir)
    attempt(plot_active_learning, _read(results_dir / "active_learning.csv"), out_dir)
    if published is not None:
        pub_eff = None
        if effects is not None and "source" in effects:
            pub_eff = effects[effects["source"] == "published"]
        attempt(plot_components, published, out_dir, name="published_components")
        attempt(plot_usability_vs_probe_gen, published, out_dir, color_by, name="published_usability_vs_probe_gen")
        attempt(plot_scaling_law, published, out_dir, name="published_scaling_law")
        attempt(plot_design_effects, pub_eff if pub_eff is not None else design_effects(published),
                out_dir, name="published_design_effects")
    return made, notes

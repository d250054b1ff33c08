"""Figures of a results directory (seaborn, Agg backend, colorblind palette, PNG + SVG).

Each ``plot_*`` function takes tables, writes ``<out_dir>/<name>.png`` and ``.svg`` and returns
``(png_path, caption)`` (or a list of them), or raises :class:`PlotSkipped` with a one-line reason when its inputs
are absent or unusable (never another exception for missing / NaN data).

Nothing is dropped silently: every model, score, acquisition function and dataset of a table is drawn. Runs of one
model over pretraining seeds (``<model>.s<seed>``) are pooled into one line, point or cell with its seed band (the
min-max over the runs, said in each caption); figures grow with the number of models (small multiples or heat
maps, never a colour per model); legends sit outside every axes. Each function records what it drew in
``manifest`` (figure name -> models, scores, ...) when given one; :func:`collect_plots` writes that to
``plots/manifest.json``. What must not be read as a finding is not drawn, with a one-line note saying why: a
design-effect coefficient that is not estimable, a scaling-law fit below :data:`MIN_SCALING_R2`, a ranking of fewer
than :data:`MIN_RANKING_MODELS` models.
"""

from __future__ import annotations

import json
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
from riskdecomp.analysis.tables import (  # noqa: E402
    fewshot_settings,
    leaderboard_table,
    setting_name,
    setting_sizes,
)
from riskdecomp.report.html import seed_contrast_rows  # noqa: E402
from riskdecomp.utils.atomic import atomic_write_text  # noqa: E402
from riskdecomp.utils.errors import RiskdecompError  # noqa: E402
from riskdecomp.utils.names import ensemble_path, parse_stem, split_seed  # noqa: E402
from riskdecomp.utils.schema import COMPONENTS, OUTCOMES, score_columns  # noqa: E402

COMPONENT_LABELS = {"approx": "approximation", "usability": "usability", "probe_gen": "probe generalization",
                    "enc_gen": "encoder generalization", "agg_risk": "aggregated risk"}
# Okabe-Ito colour-blind-safe colours, four clearly distinct hues (blue, orange, bluish green, reddish purple);
# seaborn's "colorblind" palette gives usability and enc_gen two near-identical oranges
COMPONENT_COLORS = {"approx": "#0072B2", "usability": "#E69F00", "probe_gen": "#009E73", "enc_gen": "#CC79A7",
                    "agg_risk": "#000000"}
TARGET_FILES = ("leaderboard.csv", "uncertainty.csv", "active_learning.csv", "label_efficiency.csv")
#: a ranking (ranking-change figure, ranking stability over seeds, their Kendall taus) needs this many models
MIN_RANKING_MODELS = 5
#: a fitted scaling law is drawn only when its R² (over all points and over the few-shot points) reaches this
MIN_SCALING_R2 = 0.5
#: uncertainty-score families by the score name's first word (colour = family in every uncertainty figure)
SCORE_FAMILIES = {"knn": "neighbours", "gmm": "density", "vmf": "density", "neg": "embedding norm",
                  "aug": "augmentations", "post": "posterior", "probe": "probe", "ens": "ensemble"}
# Okabe-Ito, one clearly distinct hue per family (black is the oracle's)
FAMILY_COLORS = {"neighbours": "#0072B2", "density": "#E69F00", "embedding norm": "#009E73",
                 "augmentations": "#CC79A7", "posterior": "#56B4E9", "probe": "#D55E00", "ensemble": "#7F7F7F"}


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
    return leaderboard_table(df)


def _record(manifest: dict | None, name: str, **info) -> None:
    """What figure ``name`` drew (models, scores, ...), for ``plots/manifest.json``."""
    if manifest is not None:
        manifest[name] = {k: ([str(x) for x in v] if isinstance(v, (list, tuple)) else v) for k, v in info.items()}


def _units(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` (one row per run's value) with ``unit``: the model without its ``.s<seed>`` suffix (its runs over
    pretraining seeds pooled), ``"<model> @ <dataset>"`` when the table holds several datasets."""
    d = df.copy()
    if "model" not in d:
        d["model"] = "model"
    base = pd.Series([split_seed(m)[0] for m in d["model"].astype(str)], index=d.index)
    many = "dataset" in d and d["dataset"].nunique() > 1
    d["unit"] = base + " @ " + d["dataset"].astype(str) if many else base
    return d


def _unit_title(unit: str, n_runs: int) -> str:
    return f"{unit} ({n_runs} run{'s' if n_runs != 1 else ''})"


def score_family(score: str) -> str:
    """The family of an uncertainty score (:data:`SCORE_FAMILIES`, else the name's first word)."""
    head = str(score).split("_", 1)[0]
    return SCORE_FAMILIES.get(head, head)


def _natural(name) -> list:
    """Sort key: numbers inside a name compare as numbers (knn_1 < knn_10 < knn_100)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(name)) if t]


def _ordered_scores(scores) -> list:
    """Scores grouped by family (:data:`SCORE_FAMILIES` order, unknown families after), then by name."""
    fams = list(dict.fromkeys(SCORE_FAMILIES.values()))
    key = (lambda s: (fams.index(score_family(s)) if score_family(s) in fams else len(fams), score_family(s),
                      _natural(s)))
    return sorted({str(s) for s in scores}, key=key)


def _ordered_units(units) -> list:
    """The models of an uncertainty / active-learning figure, in one order for every such figure (by name)."""
    return sorted({str(u) for u in units}, key=_natural)


def _score_styles(scores: list) -> dict:
    """score -> line style kwargs: one colour per family, line style and marker per member of the family."""
    other = [f for f in dict.fromkeys(score_family(s) for s in scores) if f not in FAMILY_COLORS]
    pal = sns.color_palette("colorblind", 10)[::-1]  # families of other tools: the palette's other hues
    seen: dict = {}
    out = {}
    for s in scores:
        f = score_family(s)
        k = seen[f] = seen.get(f, -1) + 1
        out[s] = {"color": FAMILY_COLORS.get(f) or pal[other.index(f) % len(pal)], "ls": ["-", "--", ":", "-."][k % 4],
                  "marker": "os^vDPX*"[k % 8]}
    return out


def _grid(n: int, width: float = 3.1, height: float = 2.5, max_cols: int = 4):
    """A figure with ``n`` panels (``max_cols`` per row), the unused cells removed; returns (fig, axes list)."""
    ncol = max(1, min(max_cols, n))
    nrow = max(1, math.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(width * ncol + 0.6, height * nrow + 0.6), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        fig.delaxes(ax)
    return fig, flat[:n]


def _legend_below(fig, handles: list, labels: list, title: str | None = None, ncol: int | None = None) -> None:
    """One legend for the whole figure, under every panel (outside every axes: it covers no data)."""
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol or min(len(labels), 4),
               frameon=False, fontsize=8, title=title, title_fontsize=8)


def _band(ax, x, lo, hi, color) -> None:
    ax.fill_between(x, lo, hi, color=color, alpha=0.15, linewidth=0)


def _missing(all_names, drawn, what: str) -> str:
    """Caption sentence naming what a table has but a figure could not draw (never left out silently)."""
    miss = [str(m) for m in dict.fromkeys(all_names) if m not in set(drawn)]
    return f" Not drawn (no usable rows): {what} {', '.join(miss)}." if miss else ""


# ----------------------------------------------------------------------------- leaderboard plots
def plot_components(lb: pd.DataFrame, out_dir: Path, name: str = "components", *,
                    manifest: dict | None = None) -> list[tuple[Path, str]]:
    """Stacked risk components per model (sorted by aggregated risk), whiskers = agg_risk CI; every dataset."""
    t = _models(lb)
    comps = [c for c in COMPONENTS if c in t]
    if not comps or t[comps].isna().all().all():
        raise PlotSkipped("risk components: no component column in the leaderboard")
    out = []
    for ds, g in t.groupby("dataset", sort=True):
        every = g["model"].astype(str).tolist()
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
        note += _missing(every, g["model"].astype(str), "models without any component:")
        path = _save(fig, out_dir, f"{name}_{_slug(ds)}")
        _record(manifest, path.stem, source="leaderboard.csv", dataset=str(ds), models=g["model"].astype(str).tolist())
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
                                name: str = "usability_vs_probe_gen", *,
                                manifest: dict | None = None) -> tuple[Path, str]:
    """Scatter usability vs probe generalization, colored by a design choice."""
    t = _models(lb)
    if not {"usability", "probe_gen"} <= set(t.columns):
        raise PlotSkipped("usability vs probe_gen: columns missing")
    every = t["model"].astype(str).tolist()
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
    _record(manifest, path.stem, source="leaderboard.csv", models=t["model"].astype(str).tolist(),
            labelled=len(t) <= 25)
    labels = "" if len(t) <= 25 else f" {len(t)} models: too many to name each point (see the components figure)."
    return path, (f"Usability vs probe generalization per model, colored by {color_by}{note}.{labels}"
                  f"{_missing(every, t['model'].astype(str), 'models lacking usability or probe_gen:')}")


def _too_few_for_ranking(n: int, ds) -> str | None:
    if n < MIN_RANKING_MODELS:
        return f"{ds}: {n} model{'s' if n != 1 else ''} (< {MIN_RANKING_MODELS} needed for a ranking)"
    return None


def _label_ends(ax, x: float, ranks: pd.Series, names: pd.Series, side: str) -> None:
    """Write every model's name at its rank at one end of the ranking lines (tied ranks share one label)."""
    for r, grp in names.groupby(ranks.to_numpy()):
        text = ", ".join(grp.astype(str))
        text = f"{r:g}. {text}" if side == "left" else f"{text} ({r:g})"
        ax.annotate(text, (x, r), xytext=(6 if side == "right" else -6, 0),
                    textcoords="offset points", fontsize=7, va="center", ha="left" if side == "right" else "right",
                    annotation_clip=False)


def plot_ranking_change(lb: pd.DataFrame, out_dir: Path, name: str = "ranking_change", *,
                        manifest: dict | None = None) -> list[tuple[Path, str]]:
    """Rank of each model full shot vs each few-shot setting (1 = best), every model named at both ends; not drawn
    for a dataset with fewer than :data:`MIN_RANKING_MODELS` models."""
    t = _models(lb)
    settings = list(fewshot_settings(t))
    if "agg_risk" not in t or not settings:
        raise PlotSkipped("ranking change: needs agg_risk and fewshot_* columns")
    taus, _ = ranking_stability(t)
    out, skipped = [], []
    for ds, g in t.groupby("dataset", sort=True):
        if (why := _too_few_for_ranking(len(g), ds)):
            skipped.append(why)
            continue
        cols = ["agg_risk"] + sorted(settings, key=lambda c: -setting_sizes(g, c).mean())
        ranks = g[cols].rank(method="min")
        ranks = ranks.dropna(how="all", axis=1)
        if ranks.shape[1] < 2:
            skipped.append(f"{ds}: no few-shot setting with values")
            continue
        n = len(g)
        fig, ax = plt.subplots(figsize=(1.5 * ranks.shape[1] + 5.5, max(3.5, 0.2 * n + 1.5)))
        xs = np.arange(ranks.shape[1])
        move = (ranks.iloc[:, 1:].sub(ranks.iloc[:, 0], axis=0)).abs().max(axis=1).fillna(0)
        top = set(move.sort_values(ascending=False).index[: min(6, n)])
        for idx, row in ranks.iterrows():
            hi = idx in top
            ax.plot(xs, row.to_numpy(), marker="o", ms=3, lw=1.6 if hi else 0.7, alpha=1.0 if hi else 0.35,
                    color=None if hi else "gray")
        _label_ends(ax, xs[0], ranks.iloc[:, 0].dropna(), g.loc[ranks.iloc[:, 0].dropna().index, "model"], "left")
        _label_ends(ax, xs[-1], ranks.iloc[:, -1].dropna(), g.loc[ranks.iloc[:, -1].dropna().index, "model"], "right")
        labels = ["full"] + [setting_name(c) for c in ranks.columns[1:]]
        ax.set_xticks(xs, labels)
        ax.set_xlim(-0.15, xs[-1] + 0.15)
        ax.invert_yaxis()
        ax.set_yticks(range(1, n + 1), [""] * n)  # the ranks are written in the names' labels
        ax.set_title(f"Ranking change — {ds} (rank 1 = lowest error, on top)")
        path = _save(fig, out_dir, f"{name}_{_slug(ds)}")
        _record(manifest, path.stem, source="leaderboard.csv", dataset=str(ds), models=g["model"].astype(str).tolist())
        tau_txt = ", ".join(f"{k}: {v:.2f}" for k, v in taus.items())
        out.append((path, f"Rank of each of the {n} models at full shot and in each few-shot setting on {ds}, every "
                          f"model named at both ends (tied ranks share a label); the 6 that move most are "
                          f"highlighted. Kendall tau vs full shot (mean over datasets): {tau_txt or 'n/a'}."))
    if not out:
        raise PlotSkipped("ranking change: not shown: " + "; ".join(skipped))
    if skipped:
        out = [(p, c + " Not shown for " + "; ".join(skipped) + ".") for p, c in out]
    return out


SINGULAR_WHY = "the fit is singular: {k} of its {n} terms have no finite standard error, so none is drawn"


def _estimable(e: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Which design-effect rows carry a coefficient that may be drawn, and why not for the others.

    With the producer's ``estimable`` / ``why`` columns, those decide (and a row without a finite coefficient, SE and
    CI is never drawn). Without them (older results), a row without a finite, positive standard error or CI is not
    estimable, and neither is any other term of the same outcome's fit: that fit is singular or perfect (e.g. an
    outcome constant by construction), its other coefficients regression artefacts."""
    num = [c for c in ("coef", "se", "ci_lo", "ci_hi") if c in e]
    finite = e[num].apply(pd.to_numeric, errors="coerce").notna().all(axis=1)
    if "se" in e:
        finite &= pd.to_numeric(e["se"], errors="coerce").fillna(0) > 0
    why = pd.Series("", index=e.index, dtype=object)
    if "estimable" in e:
        ok = finite & e["estimable"].map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))
        if "why" in e:
            why = e["why"].fillna("").astype(str)
        return ok, why.where(why.str.strip() != "", "no finite coefficient, standard error or CI")
    ok = finite.copy()
    keys = [c for c in ("source", "dataset", "component") if c in e]
    for _, g in e.groupby(keys, sort=False):
        k = int((~finite[g.index]).sum())
        if k:
            ok[g.index] = False
            why[g.index] = SINGULAR_WHY.format(k=k, n=len(g))
    return ok, why


def _not_estimable_notes(bad: pd.DataFrame, why: pd.Series) -> list[str]:
    """One 'not estimable: why' sentence per (component, reason), naming every term it covers."""
    if bad.empty:
        return []
    b = bad.assign(_why=why[bad.index], _term=bad["treatment"].astype(str) + "=" + bad["level"].astype(str))
    order = {c: i for i, c in enumerate(OUTCOMES)}
    out = []
    for (comp, reason), g in sorted(b.groupby(["component", "_why"], sort=False),
                                    key=lambda kv: (order.get(kv[0][0], 99), str(kv[0][0]))):
        out.append(f"{comp}: not estimable: {reason} ({', '.join(dict.fromkeys(g['_term']))})")
    return out


def plot_design_effects(effects: pd.DataFrame, out_dir: Path, name: str = "design_effects", *,
                        manifest: dict | None = None) -> tuple[Path, str]:
    """Coefficient plot (coef ± 95% CI) of design choices on each outcome: every estimable term; the terms that are
    not estimable are named in the caption with the reason, never drawn."""
    if effects is None or effects.empty or not {"coef", "ci_lo", "ci_hi", "component"} <= set(effects.columns):
        raise PlotSkipped("design effects: nothing estimable (too few models or design fields)")
    e = effects[effects["component"].isin(OUTCOMES)]
    ok, why = _estimable(e)
    bad_notes = _not_estimable_notes(e[~ok], why)
    e = e[ok]
    if e.empty:
        raise PlotSkipped("design effects: nothing estimable" + (": " + "; ".join(bad_notes) if bad_notes else ""))
    prefix = (e["source"].astype(str) + ": ") if "source" in e and e["source"].nunique() > 1 else ""
    e = e.assign(term=prefix + e["treatment"].astype(str) + " = " + e["level"].astype(str))
    terms = list(dict.fromkeys(e.sort_values(["treatment", "level"])["term"]))
    comps = [c for c in OUTCOMES if c in set(e["component"])]
    fig, axes = plt.subplots(1, len(comps), figsize=(3.2 * len(comps) + 2.5, max(3.0, 0.3 * len(terms) + 1.5)),
                             sharey=True, squeeze=False)
    pos = {t: i for i, t in enumerate(terms)}
    clipped = 0
    for ax, c in zip(axes[0], comps):
        s = e[e["component"] == c]
        yy = s["term"].map(pos).to_numpy()
        coef, lo, hi = (s[k].to_numpy(float) for k in ("coef", "ci_lo", "ci_hi"))
        ax.errorbar(coef, yy, xerr=[coef - lo, hi - coef], fmt="o", ms=4, capsize=2, color=COMPONENT_COLORS[c])
        ax.axvline(0, color="black", lw=0.8)
        # a few levels with very wide CIs (1-2 models) would squash the others: clip the axis, and mark what runs off
        width = hi - lo
        ok_w = width <= 5 * np.nanmedian(width)
        lim = 1.1 * np.nanmax(np.abs(np.r_[lo[ok_w], hi[ok_w], coef]))
        if np.isfinite(lim) and lim > 0:
            ax.set_xlim(-lim, lim)
            for y, v, l, h in zip(yy, coef, lo, hi):
                if h > lim:
                    ax.plot([lim], [y], marker=">", color=COMPONENT_COLORS[c], ms=6, clip_on=False)
                if l < -lim:
                    ax.plot([-lim], [y], marker="<", color=COMPONENT_COLORS[c], ms=6, clip_on=False)
                if h > lim or l < -lim:
                    clipped += 1
                    ax.annotate(f"{v:+.2g} [{l:+.2g}, {h:+.2g}]", (0, y), xytext=(0, 5), textcoords="offset points",
                                fontsize=6, ha="center", color=COMPONENT_COLORS[c])
        ax.set_title(COMPONENT_LABELS[c], fontsize=9)
        ax.set_xlabel("effect (% error)")
    axes[0][0].set_yticks(range(len(terms)), terms, fontsize=7)
    axes[0][0].set_ylim(len(terms) - 0.5, -0.7)
    path = _save(fig, out_dir, name)
    _record(manifest, path.stem, source="analysis/design_effects.csv", terms=terms, outcomes=comps,
            not_estimable=bad_notes)
    clip_txt = (f" {clipped} CI(s) wider than the panel end in an arrow, their coefficient and CI written over them."
                if clipped else "")
    not_est = (" Not drawn: " + "; ".join(bad_notes) + "." if bad_notes else "")
    return path, ("OLS effect of each design choice on each outcome (95% CI) with confounder controls; "
                  "categorical levels vs their base level, numeric fields per unit of log(value) where logged. "
                  f"Every estimable term is drawn ({len(terms)}).{clip_txt}{not_est}")


def _scaling_quality(params: dict) -> str | None:
    """Why a fitted scaling law must not be drawn (:data:`MIN_SCALING_R2` rule), or None when it may."""
    bad = [f"{lbl} {v:.2f} < {MIN_SCALING_R2}" for lbl, v in (("R²", params.get("r2")),
                                                            ("few-shot R²", params.get("r2_fewshot")))
           if v is not None and not (np.isfinite(v) and v >= MIN_SCALING_R2)]
    if not bad:
        return None
    return (", ".join(bad) + f" (rule: a fit with R² below {MIN_SCALING_R2}, over all points or over the few-shot "
            "points alone, is not drawn)")


def plot_scaling_law(lb: pd.DataFrame, out_dir: Path, name: str = "scaling_law", *, quality: dict | None = None,
                     manifest: dict | None = None) -> tuple[Path, str]:
    """Predicted (component scaling law) vs actual few-shot errors. ``quality``: the analysis summary's
    ``scaling_law`` entry; its ``shown`` / ``why`` decide when present, else the :data:`MIN_SCALING_R2` rule."""
    if quality and quality.get("shown") is False:
        raise PlotSkipped(f"scaling law: not shown: {quality.get('why') or 'the fit is too poor'}")
    try:
        params, preds = fit_scaling_law(lb)
    except ValueError as exc:  # the fit's own "cannot fit" (a missing column is a bug, not a skip)
        raise PlotSkipped(f"scaling law: {exc}") from None
    if not (quality and quality.get("shown") is True) and (why := _scaling_quality(params)):
        raise PlotSkipped(f"scaling law: not shown: {why}")
    fig, ax = plt.subplots(figsize=(6, 5.5))
    order = list(dict.fromkeys(preds.sort_values("n", ascending=False, kind="stable")["setting"]))  # most labels first
    sns.scatterplot(data=preds, x="actual", y="predicted", hue="setting", hue_order=order, ax=ax, s=25)
    lim = [0, max(preds["actual"].max(), preds["predicted"].max()) * 1.05]
    ax.plot(lim, lim, color="black", lw=0.8, ls="--")
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_xlabel("actual error (%)")
    ax.set_ylabel("predicted error (%)")
    ax.legend(title="setting", fontsize=7, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"alpha={params['alpha']:.3f}, B={params['B']:.2f}, R²={params['r2']:.3f}")
    path = _save(fig, out_dir, name)
    _record(manifest, path.stem, source="leaderboard.csv", models=list(dict.fromkeys(preds["model"].astype(str)))
            if "model" in preds else [], r2=float(params["r2"]))
    return path, (f"Scaling law from components, err(n) = E + (1-B)(A+U) + (B(A+U)+P)(N/n)^alpha: predicted vs "
                  f"actual for every (model, setting); R² {params['r2']:.3f}, RMSE {params['rmse']:.2f} "
                  f"(few-shot only R² {params['r2_fewshot']:.3f} vs {params['baseline_r2_fewshot']:.3f} for a "
                  f"standard scaling law ignoring the components). "
                  + (f"Shown: {quality.get('why') or 'the analysis summary says so'}." if quality
                     and quality.get("shown") is True else f"Drawn because both R² reach {MIN_SCALING_R2}."))


# ----------------------------------------------------------------------------- uncertainty / active learning
#: the uncertainty metrics drawn: (metric, preferred target, chance level, what it measures)
UNCERTAINTY_PANELS = (("auroc", "err01", 0.5, "AUROC for detecting a test error (chance 0.5)"),
                      ("kendall_tau", "brier_ovo", 0.0, "Kendall tau-b with the per-point Brier score (chance 0)"))
BAND = "min-max over the model's runs (pretraining seeds)"


def _one_target(m: pd.DataFrame, prefer: str) -> tuple[pd.DataFrame, str | None]:
    """The rows of one target: ``prefer`` when the table has it, else the first (tables without ``target`` as
    they are)."""
    if "target" not in m or m["target"].isna().all():
        return m, None
    targets = list(dict.fromkeys(m["target"].dropna().astype(str)))
    tgt = prefer if prefer in targets else targets[0]
    return m[m["target"].astype(str) == tgt], tgt


def plot_uncertainty_metrics(unc: pd.DataFrame, out_dir: Path, name: str = "uncertainty_metrics", *,
                             manifest: dict | None = None) -> tuple[Path, str]:
    """Heat maps (models x scores) of the seed-mean AUROC and Kendall tau of every uncertainty score, the min-max
    over each model's runs printed under the mean: every model and every score of ``uncertainty.csv``."""
    if unc is None or not {"metric", "value", "score"} <= set(unc.columns):
        raise PlotSkipped("uncertainty metrics: uncertainty.csv absent")
    u = _units(unc)
    panels = []
    for met, prefer, chance, what in UNCERTAINTY_PANELS:
        m, tgt = _one_target(u[u["metric"] == met], prefer)
        if m["value"].notna().any():
            panels.append((met, tgt, chance, what, m))
    if not panels:
        raise PlotSkipped("uncertainty metrics: no kendall_tau / auroc rows")
    units = _ordered_units(u["unit"])
    runs = u.groupby("unit")["model"].nunique()
    scores = _ordered_scores(u["score"].dropna())
    cw, ch = 0.66, 0.42
    fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                             figsize=(max(7.0, cw * len(scores) + 4.0), len(panels) * (ch * len(units) + 2.2)))
    for ax, (met, tgt, chance, what, m) in zip(axes[:, 0], panels):
        agg = m.groupby(["unit", "score"])["value"].agg(["mean", "min", "max", "count"])
        mean = agg["mean"].unstack().reindex(index=units, columns=scores)
        r = float(np.nanmax(np.abs(mean.to_numpy(float) - chance))) if mean.notna().any().any() else 1.0
        r = r if r > 0 else 1.0
        cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#e6e6e6")
        im = ax.imshow(np.ma.masked_invalid(mean.to_numpy(float)), cmap=cmap, vmin=chance - r, vmax=chance + r,
                       aspect="auto", interpolation="nearest")
        for (unit, sc), row in agg.iterrows():
            i, j = units.index(unit), scores.index(sc)
            if not np.isfinite(row["mean"]):
                continue
            dark = abs(row["mean"] - chance) > 0.6 * r
            col = "white" if dark else "black"
            two = row["count"] > 1
            ax.text(j, i - (0.14 if two else 0), f"{row['mean']:.2f}", ha="center", va="center", fontsize=7,
                    color=col)
            if two:
                ax.text(j, i + 0.24, f"{row['min']:.2f}–{row['max']:.2f}", ha="center", va="center", fontsize=5.5,
                        color=col)
        ax.set_yticks(range(len(units)), [_unit_title(x, int(runs.get(x, 1))) for x in units], fontsize=8)
        ax.set_xticks(range(len(scores)), scores, fontsize=8, rotation=40, ha="right")
        ax.grid(False)
        ax.set_title(f"{what}{f' (target {tgt})' if tgt else ''}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01).set_label(met, fontsize=8)
    path = _save(fig, out_dir, name)
    _record(manifest, path.stem, source="uncertainty.csv", models=units, scores=scores,
            metrics=[p[0] for p in panels], band=BAND)
    return path, ("Every uncertainty score (columns, grouped by family) of every model (rows; runs pooled over "
                  "pretraining seeds): " + " and ".join(p[3] for p in panels) + ". Each cell: the mean over the "
                  "model's runs, and under it the min–max over those runs (one-run models: the value alone). Colour: "
                  "distance from chance (red above, blue below); signs are not flipped. Grey: the score was not "
                  "computed for that model (e.g. post_var only for stochastic encoders). Bootstrap CIs per run: "
                  "uncertainty.csv.")


def plot_uncertainty_bins(unc: pd.DataFrame, out_dir: Path, name: str = "uncertainty_bins", *,
                          manifest: dict | None = None) -> tuple[Path, str]:
    """Accuracy per equal-mass decile of each uncertainty score (decile 1 = most certain), from the
    ``acc_bin_NN`` metrics of :mod:`riskdecomp.estimators.reliability` (its :data:`~riskdecomp.estimators.reliability.BIN_METRIC_RE`):
    one panel per model (runs pooled: mean line, min-max band), every score."""
    from riskdecomp.estimators.reliability import ACC_BIN, BIN_METRIC_RE

    need = {"metric", "value", "score"}
    if unc is None or not need <= set(unc.columns):
        raise PlotSkipped("uncertainty bins: uncertainty.csv absent or lacks metric/value/score")
    parts = unc["metric"].astype(str).str.extract(f"^{BIN_METRIC_RE}\\Z")
    b = unc[parts["kind"] == ACC_BIN].dropna(subset=["value"]).copy()
    if b.empty:
        raise PlotSkipped(f"uncertainty bins: no {ACC_BIN}_* rows (no 0-1 error target)")
    b["bin"] = parts.loc[b.index, "bin"].astype(int)
    b, tgt = _one_target(b, "err01")
    b = _units(b)
    every = _units(unc)
    units = _ordered_units(b["unit"])
    scores = _ordered_scores(b["score"])
    styles = _score_styles(scores)
    fig, axes = _grid(len(units))
    for ax, unit in zip(axes, units):
        g = b[b["unit"] == unit]
        agg = g.groupby(["score", "bin"])["value"].agg(["mean", "min", "max"]).reset_index()
        for sc in scores:
            a = agg[agg["score"] == sc]
            if a.empty:
                continue
            st = styles[sc]
            ax.plot(a["bin"], a["mean"], color=st["color"], ls=st["ls"], marker=st["marker"], ms=3, lw=1.1)
            _band(ax, a["bin"], a["min"], a["max"], st["color"])
        ax.set_title(_unit_title(unit, g["model"].nunique()), fontsize=8)
        ax.set_xlabel("uncertainty decile (1 = most certain)", fontsize=7)
        ax.set_ylabel("accuracy", fontsize=7)
        ax.tick_params(labelsize=7)
    handles = [plt.Line2D([], [], color=styles[sc]["color"], ls=styles[sc]["ls"], marker=styles[sc]["marker"], ms=3)
               for sc in scores]
    _legend_below(fig, handles, [f"{sc} ({score_family(sc)})" for sc in scores], title="score (family)")
    path = _save(fig, out_dir, name)
    _record(manifest, path.stem, source="uncertainty.csv", models=units, scores=scores, band=BAND)
    return path, (f"Test accuracy per equal-mass decile of every uncertainty score (decile 1 = most certain"
                  f"{f'; target {tgt}' if tgt else ''}), one panel per model: line = mean over the model's runs "
                  f"(pretraining seeds), band = their min–max. A useful score gives decreasing curves."
                  f"{_missing(every['unit'], units, 'models:')}{_missing(_ordered_scores(every['score'].dropna()), scores, 'scores:')}")


COVERAGE = np.linspace(0.01, 1.0, 100)  # risk-coverage grid: from 1 % of the test points kept to all of them


def _risk_curve(err: np.ndarray, score: np.ndarray) -> np.ndarray | None:
    """Error rate among the kept points at each :data:`COVERAGE`, the most uncertain (highest score) rejected first."""
    ok = np.isfinite(err) & np.isfinite(score)
    if ok.sum() < 2:
        return None
    e = err[ok][np.argsort(score[ok], kind="stable")]
    k = np.maximum(1, np.ceil(COVERAGE * len(e)).astype(int))
    return np.cumsum(e)[k - 1] / k


def _with_ensemble(ps: pd.DataFrame, results_dir: Path, dataset: str) -> pd.DataFrame:
    """A per-sample table joined with its dataset's ensemble scores (``ensemble/<dataset>.csv``) when they are for
    the same test points, as the uncertainty metrics are computed."""
    try:
        path = ensemble_path(results_dir, dataset)
    except RiskdecompError:
        return ps
    if not path.is_file():
        return ps
    try:
        ens = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return ps
    if not {"index", "y"} <= set(ens) or not {"index", "y"} <= set(ps):
        return ps
    ps = ps.drop(columns=[c for c in ps.columns if c.startswith("ens_")])
    same = ps[["index", "y"]].merge(ens[["index", "y"]], on=["index", "y"], how="inner")
    if not len(ens) == len(ps) == len(same):
        return ps
    return ps.merge(ens, on=["index", "y"], how="left")


def plot_risk_coverage(per_sample_dir: Path, out_dir: Path, name: str = "risk_coverage", *,
                       manifest: dict | None = None) -> tuple[Path, str]:
    """Risk (0-1 error among kept points) vs coverage, rejecting the most uncertain points first: one panel per
    model (runs pooled: mean line, min-max band), every score of its per-sample files (and its dataset's ensemble
    scores)."""
    files = sorted(Path(per_sample_dir).glob("*.csv")) if per_sample_dir and Path(per_sample_dir).is_dir() else []
    if not files:
        raise PlotSkipped("risk-coverage: no per_sample/*.csv")
    curves: dict = {}  # unit -> {score -> [curve per run]}
    runs: dict = {}
    columns: set = set()  # every score column of the files, drawn or not
    unusable = []
    keys = [parse_stem(f.stem) or (f.stem, "") for f in files]
    many = len({ds for _, ds in keys}) > 1
    for f, (model, ds) in zip(files, keys):
        try:
            d = pd.read_csv(f)
        except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
            unusable.append(f"{f.name} (unreadable)")
            continue
        if "err01" not in d:
            unusable.append(f"{f.name} (no err01)")
            continue
        if ds:
            d = _with_ensemble(d, Path(per_sample_dir).parent, ds)
        unit = split_seed(model)[0] + (f" @ {ds}" if many else "")
        err = pd.to_numeric(d["err01"], errors="coerce").to_numpy(float)
        slot = curves.setdefault(unit, {})
        runs.setdefault(unit, set()).add(model)
        columns |= set(score_columns(d.columns))
        for sc in score_columns(d.columns) + ["oracle"]:
            v = err if sc == "oracle" else pd.to_numeric(d[sc], errors="coerce").to_numpy(float)
            c = _risk_curve(err, v)
            if c is not None:
                slot.setdefault(sc, []).append(c)
    if not curves:
        raise PlotSkipped("risk-coverage: per_sample files lack err01")
    units = _ordered_units(curves)
    scores = _ordered_scores({sc for c in curves.values() for sc in c if sc != "oracle"})
    styles = _score_styles(scores)
    fig, axes = _grid(len(units))
    for ax, unit in zip(axes, units):
        for sc in scores + ["oracle"]:
            cs = curves[unit].get(sc)
            if not cs:
                continue
            arr = np.vstack(cs)
            st = styles.get(sc, {"color": "black", "ls": "--", "marker": ""})
            ax.plot(COVERAGE, arr.mean(axis=0), color=st["color"], ls=st["ls"], marker=st["marker"] or None,
                    markevery=12, ms=3, lw=1.0)
            if len(cs) > 1:
                _band(ax, COVERAGE, arr.min(axis=0), arr.max(axis=0), st["color"])
        ax.set_title(_unit_title(unit, len(runs[unit])), fontsize=8)
        ax.set_xlabel("coverage", fontsize=7)
        ax.set_ylabel("risk (error rate)", fontsize=7)
        ax.set_xlim(0, 1.0)
        ax.tick_params(labelsize=7)
    handles = [plt.Line2D([], [], color=styles[sc]["color"], ls=styles[sc]["ls"], marker=styles[sc]["marker"], ms=3)
               for sc in scores] + [plt.Line2D([], [], color="black", ls="--")]
    _legend_below(fig, handles, [f"{sc} ({score_family(sc)})" for sc in scores] + ["oracle (the error itself)"],
                  title="score (family)")
    path = _save(fig, out_dir, name)
    empty = [sc for sc in _ordered_scores(columns) if sc not in scores]
    _record(manifest, path.stem, source="per_sample/", models=units, scores=scores, band=BAND,
            unusable=unusable, without_values=empty)
    skipped = f" Not drawn: {', '.join(unusable)}." if unusable else ""
    skipped += f" Scores without values (fewer than 2 finite per run): {', '.join(empty)}." if empty else ""
    return path, ("Risk–coverage for every uncertainty score (colour = family, line style = member), one panel per "
                  "model: error rate among the kept test points when the most uncertain are rejected first, from "
                  "1 % to 100 % of the points kept. Line = mean over the model's runs (pretraining seeds), band = "
                  "their min–max; dashed black = oracle (ordering by the error itself). Ensemble scores (ens_*) are "
                  f"the zoo's, shared by the models of a dataset.{skipped}")


def plot_active_learning(al: pd.DataFrame, out_dir: Path, name: str = "active_learning", *,
                         manifest: dict | None = None) -> tuple[Path, str]:
    """Accuracy vs number of labels per acquisition, one panel per model (runs pooled: mean line, min-max band)."""
    if al is None or not {"n_labels", "accuracy", "acquisition"} <= set(al.columns):
        raise PlotSkipped("active learning: active_learning.csv absent or lacks n_labels/accuracy/acquisition")
    every = _units(al)
    d = every.dropna(subset=["n_labels", "accuracy"])
    if d.empty:
        raise PlotSkipped("active learning: no finite accuracy")
    units = _ordered_units(d["unit"])
    acqs = list(dict.fromkeys(d["acquisition"].astype(str)))
    pal = dict(zip(acqs, sns.color_palette("colorblind", max(len(acqs), 1)) * (len(acqs) // 10 + 1)))
    fig, axes = _grid(len(units))
    for ax, unit in zip(axes, units):
        g = d[d["unit"] == unit]
        for acq in acqs:
            a = g[g["acquisition"].astype(str) == acq].groupby("n_labels")["accuracy"].agg(["mean", "min", "max"])
            if a.empty:
                continue
            ax.plot(a.index, a["mean"], color=pal[acq], marker="o", ms=2.5, lw=1.1)
            _band(ax, a.index, a["min"], a["max"], pal[acq])
        n_curves = g.groupby(["model"] + (["seed"] if "seed" in g else [])).ngroups
        ax.set_title(f"{_unit_title(unit, g['model'].nunique())}, {n_curves} curves per acquisition", fontsize=8)
        ax.set_xlabel("number of labels", fontsize=7)
        ax.set_ylabel("test accuracy", fontsize=7)
        ax.tick_params(labelsize=7)
    _legend_below(fig, [plt.Line2D([], [], color=pal[a], marker="o", ms=3) for a in acqs], acqs, title="acquisition",
                  ncol=min(len(acqs), 6))
    path = _save(fig, out_dir, name)
    _record(manifest, path.stem, source="active_learning.csv", models=units, acquisitions=acqs,
            band="min-max over the model's curves (pretraining seeds x acquisition repeats)")
    return path, ("Active learning: test accuracy vs number of labels for every acquisition function, one panel per "
                  "model. Line = mean over the model's curves (its runs over pretraining seeds x the acquisition "
                  "repeats), band = their min–max." + _missing(every["unit"], units, "models:"))


# ----------------------------------------------------------------------------- orchestration
# ----------------------------------------------------------------------------- pretraining seeds
SEED_OUTCOMES = ["usability", "probe_gen", "enc_gen", "agg_risk"]  # approx: the reference's, equal within a pair
MAX_CONTRASTS = 40
SIGNIFICANT_COLOR, NOT_SIGNIFICANT_COLOR = "#D55E00", "#7F7F7F"  # Okabe-Ito vermillion, grey


def _ci_columns(rows: pd.DataFrame, c: str) -> tuple[str, str, bool]:
    """The CI drawn for outcome ``c``: the adjusted one (``delta_<c>_adj_lo/_hi``: the level the verdict used, so it
    excludes 0 exactly when the difference is significant) where the table has it, else the unadjusted one."""
    lo, hi = f"delta_{c}_adj_lo", f"delta_{c}_adj_hi"
    if {lo, hi} <= set(rows.columns) and rows[[lo, hi]].notna().any().any():
        return lo, hi, True
    return f"delta_{c}_lo", f"delta_{c}_hi", False


def plot_seed_contrasts(pairs: pd.DataFrame | None, contrasts: pd.DataFrame | None, out_dir: Path,
                        name: str = "seed_contrasts", *, manifest: dict | None = None) -> tuple[Path, str]:
    """Forest plot of every seed-level difference (each model vs random init, each controlled pair) per component:
    the mean difference with its CI — the adjusted one (``delta_<x>_adj_lo/_hi``) where the table has it, else the
    unadjusted one, labelled so; filled vermillion = significant after Holm's correction (p_Holm < 0.05, one family
    per component and file), hollow grey = not significant."""
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
    adjusted = {}
    for ax, c in zip(axes[0], outs):
        lo_col, hi_col, adjusted[c] = _ci_columns(shown, c)
        d, lo, hi = (pd.to_numeric(shown[k], errors="coerce").to_numpy(float) for k in (f"delta_{c}", lo_col, hi_col))
        sig = shown[f"significant_{c}"].astype("boolean").fillna(False).to_numpy(bool)
        ax.axvline(0, color="black", lw=0.8)
        for mask, color, face in ((~sig, NOT_SIGNIFICANT_COLOR, "white"), (sig, SIGNIFICANT_COLOR, SIGNIFICANT_COLOR)):
            if mask.any():
                ax.errorbar(d[mask], y[mask], xerr=[d[mask] - lo[mask], hi[mask] - d[mask]], fmt="o", ms=5,
                            color=color, mfc=face, mec=color, ecolor=color, elinewidth=1.2, capsize=2)
        ax.set_title(COMPONENT_LABELS.get(c, c), fontsize=9)
        ax.set_xlabel("difference (points)\n" + ("Holm-adjusted 95% CI" if adjusted[c] else "UNADJUSTED 95% CI"),
                      fontsize=8)
        fam = shown["family"].to_numpy()
        for k in range(1, n):
            if fam[k] != fam[k - 1]:
                ax.axhline(y[k] + 0.5, color="#bbbbbb", lw=0.8, ls="--")
    axes[0][0].set_yticks(y, shown["label"].tolist(), fontsize=8)
    axes[0][0].set_ylim(-0.7, n - 0.3)
    fig.suptitle("Differences over pretraining seeds: filled = significant after Holm's correction", fontsize=10)
    path = _save(fig, out_dir, name)
    adj = [c for c in outs if adjusted[c]]
    if len(adj) == len(outs):
        ci_txt = ("Whiskers: the CI at the level the Holm verdict used (delta_<x>_adj_lo/_hi), so a whisker excludes 0 "
                  "exactly when the difference is significant.")
    else:
        ci_txt = ("Whiskers: UNADJUSTED 95 % CI (delta_<x>_lo/_hi, not corrected for multiple comparisons) on "
                  + ", ".join(c for c in outs if not adjusted[c])
                  + (f"; the Holm-adjusted CI on {', '.join(adj)}" if adj else "")
                  + ": an unadjusted whisker may exclude 0 for a difference that is not significant after Holm.")
    _record(manifest, path.stem, source="analysis/baseline_contrasts.csv, analysis/controlled_pairs.csv",
            comparisons=shown["label"].astype(str).tolist(), n_comparisons=len(rows), outcomes=outs,
            adjusted_ci=adj)
    n_sig = int(rows["significant_agg_risk"].astype("boolean").fillna(False).sum())
    cut = (f" The {MAX_CONTRASTS} comparisons with the smallest Holm p-value on agg_risk of {len(rows)} are shown; "
           "every one is in analysis/baseline_contrasts.csv and controlled_pairs.csv."
           if len(rows) > MAX_CONTRASTS else "")
    seeds = pd.to_numeric(rows.get("n_seeds"), errors="coerce")
    seed_txt = f"{int(seeds.min())}-{int(seeds.max())}" if seeds.notna().any() else "n/a"
    return path, (f"Each model minus random init (top) and each controlled pair (model b minus model a, the one design "
                  f"field that differs), per component, in points: mean difference over pretraining seeds "
                  f"({seed_txt} seeds). {ci_txt} Filled vermillion: significant after "
                  f"Holm's correction (p_Holm < 0.05; one family per component and per file); hollow grey: not "
                  f"significant. {n_sig} of {len(rows)} agg_risk differences are significant. Negative = lower "
                  f"error than the comparison model.{cut}")


def plot_seed_ranking(per_seed: pd.DataFrame | None, splits: pd.DataFrame | None, out_dir: Path,
                      name: str = "seed_ranking", *, manifest: dict | None = None) -> list[tuple[Path, str]]:
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
    out, skipped = [], []
    for ds, sp in splits.groupby("dataset", sort=True):
        g = ps[ps["dataset"].astype(str) == str(ds)]
        if g.empty:
            continue
        if (why := _too_few_for_ranking(g["base_model"].nunique(), ds)):
            skipped.append(why)
            continue
        order = g.groupby("base_model")["agg_risk"].mean().sort_values().index.tolist()
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.5, max(3.2, 0.28 * len(order) + 1.4)),
                                      gridspec_kw={"width_ratios": [3, 1.2]})
        ypos = {m: i for i, m in enumerate(order[::-1])}
        means = g.groupby("base_model")["agg_risk"].mean()
        # the mean as a tick, not a bar: the axis does not start at 0, so bar lengths would exaggerate differences
        ax.scatter([means[m] for m in order], [ypos[m] for m in order], marker="|", s=260, linewidths=2,
                   color="black", zorder=2)
        seeds = sorted(g["pretrain_seed"].astype(int).unique())
        pal = sns.color_palette("colorblind", len(seeds))
        for s, col in zip(seeds, pal):
            h = g[g["pretrain_seed"].astype(int) == s]
            ax.scatter(h["agg_risk"], [ypos[m] for m in h["base_model"]], s=16, color=col, label=f"seed {s}",
                       zorder=3)
        ax.set_yticks(list(ypos.values()), list(ypos.keys()), fontsize=8)
        lo = g["agg_risk"].min()
        ax.set_xlim(max(0.0, lo - 0.1 * (g["agg_risk"].max() - lo) - 1), None)
        ax.set_xlabel("agg_risk (%) per pretraining seed; black tick = seed mean")
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
        _record(manifest, path.stem, source="leaderboard_seeds.csv", dataset=str(ds), models=order,
                seeds=[int(x) for x in seeds])
        half = sp["seeds_a"].astype(str).str.count(r"\|").iloc[0] + 1
        out.append((path, f"Left: each model's agg_risk for every pretraining seed (dots) and the seed mean (black tick), "
                          f"best first, on {ds}. Right: Kendall tau between the model rankings computed on two "
                          f"disjoint halves of the seeds ({half} seed(s) each), one dot per split ({len(taus)} "
                          f"splits); mean {taus.mean():.2f}, min {taus.min():.2f}, max {taus.max():.2f}. A tau near "
                          f"1 means another set of seeds would give the same ranking."))
    if not out:
        raise PlotSkipped("ranking stability: not shown: " + "; ".join(skipped) if skipped else
                          "ranking stability: no dataset with per-seed rows")
    if skipped:
        out = [(p, c + " Not shown for " + "; ".join(skipped) + ".") for p, c in out]
    return out


def read_csv_if_any(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


def _summary(results_dir: Path) -> dict:
    try:
        return json.loads((results_dir / "analysis" / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def collect_plots(results_dir, out_dir, color_by: str | None = "objective", *,
                  published: pd.DataFrame | None = None, effects: pd.DataFrame | None = None,
                  ) -> tuple[list[tuple[Path, str]], list[str]]:
    """Draw every plot whose inputs exist. Returns (made plots, notes for skipped plots); writes
    ``<out_dir>/manifest.json``: per figure what it drew (``models``, ``scores``, ... and the table it drew from),
    and the notes of the figures not drawn."""
    _theme()
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    lb = read_csv_if_any(results_dir / "leaderboard.csv")
    if effects is None:
        effects = read_csv_if_any(results_dir / "analysis" / "design_effects.csv")
    summary = _summary(results_dir)
    made: list[tuple[Path, str]] = []
    notes: list[str] = []
    manifest: dict = {}

    def attempt(fn, *args, **kw):
        try:
            res = fn(*args, manifest=manifest, **kw)
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
        attempt(plot_scaling_law, lb, out_dir, quality=summary.get("scaling_law"))
        eff = effects
        if eff is not None and "source" in eff:
            eff = eff[eff["source"] == "ours"]
        if eff is None:
            eff = design_effects(lb)
        attempt(plot_design_effects, eff, out_dir)
        per_seed = read_csv_if_any(results_dir / "leaderboard_seeds.csv")
        if per_seed is not None:  # a zoo with pretraining seeds (without: nothing to draw, not a failure)
            attempt(plot_seed_contrasts, read_csv_if_any(results_dir / "analysis" / "controlled_pairs.csv"),
                    read_csv_if_any(results_dir / "analysis" / "baseline_contrasts.csv"), out_dir)
            attempt(plot_seed_ranking, per_seed, read_csv_if_any(results_dir / "analysis" / "seed_ranking_stability.csv"),
                    out_dir)
    unc = read_csv_if_any(results_dir / "uncertainty.csv")
    attempt(plot_uncertainty_metrics, unc, out_dir)
    attempt(plot_uncertainty_bins, unc, out_dir)
    attempt(plot_risk_coverage, results_dir / "per_sample", out_dir)
    attempt(plot_active_learning, read_csv_if_any(results_dir / "active_learning.csv"), out_dir)
    if published is not None:
        pub_eff = None
        if effects is not None and "source" in effects:
            pub_eff = effects[effects["source"] == "published"]
        pub_law = ((summary.get("per_source") or {}).get("published") or {}).get("scaling_law")
        attempt(plot_components, published, out_dir, name="published_components")
        attempt(plot_usability_vs_probe_gen, published, out_dir, color_by, name="published_usability_vs_probe_gen")
        attempt(plot_scaling_law, published, out_dir, name="published_scaling_law", quality=pub_law)
        attempt(plot_design_effects, pub_eff if pub_eff is not None else design_effects(published),
                out_dir, name="published_design_effects")
    if made or notes:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "manifest.json",
                          json.dumps({"figures": manifest, "not_drawn": notes}, indent=1, sort_keys=True) + "\n")
    return made, notes

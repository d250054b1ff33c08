"""One static, self-contained HTML page (inline CSS, images as data URIs, no JS, no CDN)."""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd

from riskdecomp.analysis.tables import reference_mask
from riskdecomp.report.findings import (
    FLAG_TEXT,
    fewshot_columns,
    fewshot_order,
    shared_components,
    versus_best,
)
from riskdecomp.utils.schema import COMPONENTS, TOTAL

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.2em .5em;text-align:right}th{background:#f3f3f3;position:sticky;top:0}
td.t,th.t{text-align:left;white-space:nowrap}.scroll{max-height:32em;overflow:auto;border:1px solid #eee}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;margin-top:.3em}.note{color:#8a5a00;font-size:.9em}
code{background:#f5f5f5;padding:0 .2em}.prov{color:#666;font-size:.8em;margin-top:-.5em}
.findings{background:#f8faff;border:1px solid #dde5f5;padding:.3em 1em;font-size:.95em}
.findings li{margin:.25em 0}table.lb{font-size:.8em}table.lb th{position:static}
table.lb td.flags{white-space:normal;text-align:left;max-width:16em}table.lb tr.ref td{color:#666;font-style:italic}
table.lb tr.top td{font-weight:600}table.lb tr.refhead td{background:#fafafa;text-align:left;color:#666}
.shared{background:#fffbea;border:1px solid #f0e2b0;padding:.3em .6em;display:inline-block}
"""


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.2f}"
    return str(v)


def table_html(df: pd.DataFrame) -> str:
    """Escaped HTML table of a DataFrame, every row (the report shows bounded tables only; raw row dumps are linked
    as CSV files, never cut)."""
    if df is None or df.empty:
        return "<p class='note'>(empty)</p>"
    d = df
    num = {c for c in d.columns if pd.api.types.is_numeric_dtype(d[c]) and not pd.api.types.is_bool_dtype(d[c])}
    head = "".join(f"<th class='{'' if c in num else 't'}'>{html.escape(str(c))}</th>" for c in d.columns)
    body = []
    for row in d.itertuples(index=False):
        cells = "".join(
            f"<td class='{'' if c in num else 't'}'>{html.escape(_fmt(v) if not pd.isna(v) else '')}</td>"
            for c, v in zip(d.columns, row))
        body.append(f"<tr>{cells}</tr>")
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def leaderboard_view(lb: pd.DataFrame, constant=()) -> pd.DataFrame:
    """The leaderboard as shown, one dataset's or several: candidates ranked by agg_risk (``rank`` 1, 2, ...), then
    the references (``rank`` "ref", never ranked; :func:`riskdecomp.analysis.tables.reference_mask`); columns
    ``rank, model, [dataset], agg_risk (with agg_risk_lo/_hi), n_seeds``, the components but those in ``constant``
    (shown once above the table), the few-shot errors in numeric order, ``flags`` when the leaderboard has it."""
    t = lb.reset_index() if "model" not in lb.columns else lb.copy()
    t["is_reference"] = reference_mask(t).to_numpy()
    few = fewshot_columns(t)
    comps = [c for c in COMPONENTS if c in t and c not in set(constant)]
    cols = ["model", *(["dataset"] if "dataset" in t and t["dataset"].nunique() > 1 else []), TOTAL,
            *[c for c in (f"{TOTAL}_lo", f"{TOTAL}_hi", "n_seeds") if c in t], *comps, *few,
            *(["flags"] if "flags" in t else []), "is_reference"]
    t = t.assign(_ds=t["dataset"].astype(str) if "dataset" in t else "", _r=t[TOTAL].astype(float))
    t = t.sort_values(["_ds", "is_reference", "_r"], kind="stable")
    t["rank"] = ""
    cand = ~t["is_reference"]
    t.loc[cand, "rank"] = t[cand].groupby("_ds").cumcount().add(1).astype(str)
    t.loc[~cand, "rank"] = "ref"
    return t[["rank", *cols]].reset_index(drop=True)


def _one(v, digits: int = 1) -> str:
    v = pd.to_numeric(v, errors="coerce")
    return "" if pd.isna(v) else f"{float(v):.{digits}f}"


def leaderboard_html(lb: pd.DataFrame, summary: dict | None = None, limits: dict | None = None) -> str:
    """The first screen's leaderboard, one table per dataset (id ``leaderboard`` for the first): ranked
    candidates (bold: the best and the encoders not significantly worse, ``summary.json`` ``best.top_group``),
    references below, agg_risk with its 95 % CI and seed count, a constant component stated once above the table as
    the shared baseline, few-shot columns in numeric order, flags; then the flags' and the estimates' known limits
    (``limits``: column -> sentence)."""
    summary = summary or {}
    t = lb.reset_index() if "model" not in lb.columns else lb
    if "dataset" not in t:
        t = t.assign(dataset="default")
    parts = ["<p>Test error of a linear probe, in %; lower is better. Candidates are ranked by agg_risk "
             "(95 % CI, over the pretraining seeds counted in <i>seeds</i>); references are listed below them, "
             "not ranked.</p>"]
    codes = []
    for i, (ds, g) in enumerate(t.groupby(t["dataset"].astype(str), sort=False)):
        constant = shared_components(summary, ds)
        view = leaderboard_view(g, constant)
        few = [c for c in view.columns if str(c).startswith("fewshot_")]
        comps = [c for c in COMPONENTS if c in view]
        best = (summary.get("best") or {}).get(str(ds)) or {}
        top = {str(m) for m in (best.get("top_group") or [])} | ({str(best["model"])} if best.get("model") else set())
        if t["dataset"].nunique() > 1:
            parts.append(f"<h3>{html.escape(str(ds))}</h3>")
        for c, v in constant.items():
            parts.append(f"<p class='shared'>Shared baseline: <b>{html.escape(c)} = {_one(v)} %</b> for every "
                         "candidate (constant by construction: the reference's train&rarr;train error); not a "
                         "column below and not counted as any encoder's largest component.</p>")
        head = ["<th>#</th>", "<th class='t'>model</th>", "<th>agg_risk [95 % CI]</th>"]
        head += ["<th>seeds</th>"] if "n_seeds" in view else []
        head += [f"<th>{html.escape(c)}</th>" for c in comps]
        head += [f"<th>{html.escape(c[len('fewshot_'):])}</th>" for c in few]
        head += ["<th class='t'>flags</th>"] if "flags" in view else []
        ncol = len(head)
        rows, ref_started = [], False
        for r in view.to_dict("records"):
            if r["is_reference"] and not ref_started:
                ref_started = True
                rows.append(f"<tr class='refhead'><td colspan='{ncol}'>references (not candidates)</td></tr>")
            ci = (f" [{_one(r.get(f'{TOTAL}_lo'))}, {_one(r.get(f'{TOTAL}_hi'))}]"
                  if _one(r.get(f"{TOTAL}_lo")) else "")
            cells = [r["rank"], f"<td class='t'>{html.escape(str(r['model']))}</td>",
                     f"{_one(r[TOTAL])}{ci}"]
            cells += [_one(r.get("n_seeds"), 0)] if "n_seeds" in view else []
            cells += [_one(r.get(c)) for c in comps + few]
            if "flags" in view:
                fl = [f for f in str(r.get("flags") or "").split(";") if f and f != "nan"]
                codes += fl
                cells.append(f"<td class='flags'>{html.escape(', '.join(fl))}</td>")
            cls = "ref" if r["is_reference"] else ("top" if str(r["model"]) in top else "")
            rows.append(f"<tr class='{cls}'>" + "".join(
                c if str(c).startswith("<td") else f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
        ident = "leaderboard" if i == 0 else f"leaderboard-{html.escape(str(ds))}"
        parts.append(f"<table class='lb' id='{ident}'><thead><tr>{''.join(head)}</tr></thead>"
                     f"<tbody>{''.join(rows)}</tbody></table>")
        if top:
            parts.append(f"<p class='note'>Bold: the best candidate, <code>{html.escape(str(best['model']))}</code> "
                         "(chosen by the comparisons of the findings), and those not significantly worse than it. "
                         "The ranks order the means over each model's own seeds.</p>")
    if few_any := [c for c in t.columns if str(c).startswith("fewshot_") and not str(c).endswith("_std")]:
        parts.append(f"<p>1shot &hellip; 10pct: the error of a probe trained on k examples per class or on p % of "
                     f"the train set ({len(few_any)} settings, in that order).</p>")
    seen = list(dict.fromkeys(codes))
    if seen:
        parts.append("<p>Flags:</p><ul>" + "".join(
            f"<li><code>{html.escape(c)}</code>: {html.escape(FLAG_TEXT.get(c, 'see docs/protocol.md'))}</li>"
            for c in seen) + "</ul>")
    if limits:
        parts.append("<details open><summary>Known limits of the estimates (from the known-truth simulation, "
                     "docs/calibration.md)</summary><ul>" + "".join(
                         f"<li><code>{html.escape(str(k))}</code>: {html.escape(str(v))}</li>"
                         for k, v in limits.items()) + "</ul></details>")
    return "\n".join(parts)


def seed_contrast_rows(pairs: pd.DataFrame | None, contrasts: pd.DataFrame | None) -> pd.DataFrame:
    """One row per seed-level comparison of ``analysis/baseline_contrasts.csv`` (``model - baseline``) and
    ``analysis/controlled_pairs.csv`` (``model_b - model_a``, the field that differs), with ``label``, ``family``
    and the producer's ``delta_<x>``, ``_lo``, ``_hi``, ``p_holm_<x>``, ``significant_<x>`` columns as they are."""
    parts = []
    if contrasts is not None and not contrasts.empty and "baseline" in contrasts:
        c = contrasts.copy()
        c["label"] = c["model"].astype(str) + " − " + c["baseline"].astype(str)
        c["family"] = "vs " + c["baseline"].astype(str)
        parts.append(c)
    if pairs is not None and not pairs.empty and "p_holm_agg_risk" in pairs and pairs["p_holm_agg_risk"].notna().any():
        c = pairs[pairs["p_holm_agg_risk"].notna()].copy()
        c["label"] = (c["model_b"].astype(str) + " − " + c["model_a"].astype(str) + " (" + c["field"].astype(str)
                      + ")")
        c["family"] = "controlled pairs"
        parts.append(c)
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts, ignore_index=True)


def significance_adjusted(rows: pd.DataFrame) -> bool:
    """True when the comparisons carry the CI at the level the verdict used (``delta_<x>_adj_lo/_hi``)."""
    return f"delta_{TOTAL}_adj_lo" in rows and f"delta_{TOTAL}_adj_hi" in rows


def significance_view(rows: pd.DataFrame) -> pd.DataFrame:
    """The table under the seed-contrast figure: one row per comparison (:func:`seed_contrast_rows`), per outcome
    ``"<delta> [<lo>, <hi>]"`` with ``*`` when significant after Holm, and agg_risk's ``p_Holm``. The CI is the
    adjusted one (``delta_<x>_adj_lo/_hi``, the level of the verdict) when the rows have it, else the unadjusted one
    (:func:`significance_adjusted` says which; the table's title says so)."""
    outs = [c for c in ("usability", "probe_gen", "enc_gen", "agg_risk") if f"delta_{c}_lo" in rows]
    view = pd.DataFrame({"comparison": rows["label"], "seeds": rows.get("n_seeds")})
    for c in outs:
        lo_c, hi_c = ((f"delta_{c}_adj_lo", f"delta_{c}_adj_hi") if f"delta_{c}_adj_lo" in rows
                      else (f"delta_{c}_lo", f"delta_{c}_hi"))
        sig = rows[f"significant_{c}"].astype("boolean").fillna(False)
        view[c] = [f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" + (" *" if s else "") if np.isfinite(lo) else f"{d:+.2f}"
                   + (" *" if s else "")
                   for d, lo, hi, s in zip(rows[f"delta_{c}"].astype(float), rows[lo_c].astype(float),
                                           rows[hi_c].astype(float), sig)]
    if "p_holm_agg_risk" in rows:
        view["p_Holm agg_risk"] = rows["p_holm_agg_risk"].astype(float)
    return view


def significance_title(rows: pd.DataFrame) -> str:
    """The significance table's title: which CI it shows."""
    ci = ("95 % CI adjusted like the verdict (Holm)" if significance_adjusted(rows)
          else "95 % CI per comparison, unadjusted: it may exclude 0 where Holm's verdict is not significant")
    return f"Differences over pretraining seeds (points; {ci}; * = significant after Holm's correction, p_Holm < 0.05)"


def comparisons_view(comparisons: pd.DataFrame | None, summary: dict | None) -> pd.DataFrame:
    """Each candidate minus its dataset's best encoder on agg_risk (``analysis/comparisons.csv`` rows that involve
    ``summary.json`` ``best``; :func:`riskdecomp.report.findings.versus_best`), ``*`` when significant after Holm."""
    best = {ds: b.get("model") for ds, b in ((summary or {}).get("best") or {}).items() if b and b.get("model")}
    v = versus_best(comparisons, best)
    if v.empty:
        return pd.DataFrame()
    return pd.DataFrame({
        "dataset": v["dataset"], "comparison": v["model"] + " − " + v["best"],
        "agg_risk": [f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" + (" *" if s else "")
                     for d, lo, hi, s in zip(v["delta"], v["lo"], v["hi"], v["significant"])],
        "CI": np.where(v["adjusted"].astype(bool), "Holm-adjusted", "unadjusted"),
        "p_Holm": v["p_holm"], "method": v["method"]})


def largest_counts(summary: dict, leaderboard: pd.DataFrame | None) -> dict:
    """component -> number of models where it is the largest of the components. A component constant across the
    candidates (``summary.json`` ``constant_components``) is the shared baseline: not counted, and the others are
    counted over the candidates (references excluded); without one, ``largest_component_counts`` as written."""
    constant = set()
    for ds in (summary.get("constant_components") or {}):
        constant |= set(shared_components(summary, ds))
    counts = dict(summary.get("largest_component_counts") or {})
    if not constant or leaderboard is None or leaderboard.empty:
        return counts
    t = leaderboard[~reference_mask(leaderboard)]
    comps = [c for c in COMPONENTS if c in t and c not in constant]
    full = t[comps].apply(pd.to_numeric, errors="coerce").dropna()
    out = {c: 0 for c in comps}
    for c, n in (full.idxmax(axis=1).value_counts().items() if len(full) and comps else ()):
        out[c] = int(n)
    return out


def _summary_html(summary: dict, leaderboard: pd.DataFrame | None = None) -> str:
    if not summary:
        return "<p class='note'>No analysis summary (no leaderboard or published table).</p>"
    rows = []
    mean, median = summary.get("mean", {}), summary.get("median", {})
    counts = largest_counts(summary, leaderboard)
    constant = {c for ds in (summary.get("constant_components") or {}) for c in shared_components(summary, ds)}
    comp = pd.DataFrame({"mean": pd.Series(mean, dtype=float), "median": pd.Series(median, dtype=float)})
    comp["largest in # models"] = [
        "shared baseline, not counted" if c in constant else ("" if c not in counts else str(counts[c]))
        for c in comp.index]
    comp.index.name = "component"
    rows.append(f"<p>Models: <b>{summary.get('n_models')}</b>"
                f" (source: {html.escape(str(summary.get('primary_source', '')))})</p>")
    rows.append(table_html(comp.reset_index()))
    for z in summary.get("zoo_flags") or []:
        rows.append(f"<p class='note'>{html.escape(str(z))}</p>")
    taus = summary.get("kendall_tau") or {}
    if taus:
        keys = sorted(taus, key=fewshot_order)
        rows.append("<p>Kendall tau of each few-shot ranking vs the full-shot ranking: "
                    + ", ".join(f"{html.escape(k)} {_fmt(taus[k])}" for k in keys) + "</p>")
    law = summary.get("scaling_law") or {}
    if law and law.get("shown") is False:
        rows.append(f"<p>Scaling law from components: not shown: {html.escape(str(law.get('why', '')))}</p>")
    elif law and law.get("alpha") is not None:
        rows.append("<p>Scaling law from components: "
                    + ", ".join(f"{k} = {_fmt(v)}" for k, v in law.items() if k not in ("shown", "why")) + "</p>")
    for name, sub in (summary.get("per_source") or {}).items():
        rows.append(f"<details><summary>{html.escape(name)}: full summary (JSON)</summary><pre>"
                    f"{html.escape(json.dumps(sub, indent=1))}</pre></details>")
    return "\n".join(rows)


def files_html(files) -> str:
    """The data files of the results folder, linked (relative paths): ``files`` = (relative path, rows or None,
    what it holds) triples. Raw per-run rows live there, not in the page."""
    if not files:
        return "<p class='note'>No CSV files in this results folder.</p>"
    items = []
    for rel, n, what in files:
        count = "" if n is None else f" ({n:,} row{'s' if n != 1 else ''})"
        items.append(f"<li><a href='{html.escape(rel)}'>{html.escape(rel)}</a>{count}"
                     + (f": {html.escape(what)}" if what else "") + "</li>")
    return ("<p>Every table behind this page, in full (per run, per setting, per score), as CSV:</p><ul>"
            + "".join(items) + "</ul>")


def folders_html(folders) -> str:
    """Sub-folders of per-run files, named with their file count (``folders``: (name, count, what) triples)."""
    return "".join(f"<p><code>{html.escape(name)}/</code>: {n:,} file{'s' if n != 1 else ''}, {html.escape(what)}.</p>"
                   for name, n, what in folders or ())


def render_html(*, title: str, leaderboard: pd.DataFrame | None, summary: dict | None,
                plots: list[tuple[str, str, str]], notes: list[str],
                tables: dict[str, pd.DataFrame] | None = None, provenance: dict | None = None,
                findings: str | None = None, limits: dict | None = None, files=None, folders=None) -> str:
    """Page text. First screen: title, ``provenance`` (what drew the page), ``findings`` (HTML of
    :func:`riskdecomp.report.findings.findings_html`), the leaderboard (:func:`leaderboard_html`, with ``limits``).
    Then the analysis summary, ``plots`` ((image src, caption, figure id) triples), ``notes`` (skipped-plot
    reasons), ``tables`` (bounded derived tables, every row), ``files`` (:func:`files_html`) and ``folders``
    (:func:`folders_html`)."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if provenance:
        parts.append("<p class='prov'>" + " · ".join(f"{html.escape(k)} {html.escape(str(v))}"
                                                    for k, v in provenance.items()) + "</p>")
    if findings:
        parts.append(f"<section class='findings' id='findings'>{findings}</section>")
    parts.append("<h2>Leaderboard</h2>")
    if leaderboard is None or leaderboard.empty:
        parts.append("<p class='note'>No leaderboard.csv in this results directory.</p>")
    else:
        parts.append(leaderboard_html(leaderboard, summary, limits))
    parts.append("<h2>Analysis summary</h2>")
    parts.append(_summary_html(summary or {}, leaderboard))
    parts.append("<h2>Figures</h2>")
    for src, caption, fid in plots:
        parts.append(f"<figure id='{html.escape(fid)}'>"
                     f"<img src='{html.escape(src)}' alt='{html.escape(caption)}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if notes:
        parts.append("<p class='note'>Not drawn:</p><ul>"
                     + "".join(f"<li class='note'>{html.escape(n)}</li>" for n in notes) + "</ul>")
    for name, df in (tables or {}).items():
        if df is not None and not df.empty:
            parts.append(f"<h2>{html.escape(name)}</h2>{table_html(df)}")
    if files is not None:
        parts.append("<h2>Data files</h2>")
        parts.append(files_html(files) + folders_html(folders))
    parts.append("</body></html>")
    return "\n".join(parts)

"""One static, self-contained HTML page (inline CSS, images as data URIs, no JS, no CDN)."""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd

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
"""

DISPLAY_COLUMNS = ["model", "dataset", TOTAL, *COMPONENTS]


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.2f}"
    return str(v)


def table_html(df: pd.DataFrame, max_rows: int = 400) -> str:
    """Escaped HTML table of a DataFrame (first ``max_rows`` rows)."""
    if df is None or df.empty:
        return "<p class='note'>(empty)</p>"
    d = df.head(max_rows)
    num = {c for c in d.columns if pd.api.types.is_numeric_dtype(d[c]) and not pd.api.types.is_bool_dtype(d[c])}
    head = "".join(f"<th class='{'' if c in num else 't'}'>{html.escape(str(c))}</th>" for c in d.columns)
    body = []
    for row in d.itertuples(index=False):
        cells = "".join(
            f"<td class='{'' if c in num else 't'}'>{html.escape(_fmt(v) if not pd.isna(v) else '')}</td>"
            for c, v in zip(d.columns, row))
        body.append(f"<tr>{cells}</tr>")
    more = f"<p class='note'>{len(df) - max_rows} more rows not shown.</p>" if len(df) > max_rows else ""
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>{more}"


def leaderboard_view(lb: pd.DataFrame) -> pd.DataFrame:
    """The columns shown for the leaderboard: ids, risks, few-shot errors, objective/architecture."""
    t = lb.reset_index() if "model" not in lb.columns else lb
    few = [c for c in t.columns if str(c).startswith("fewshot_") and not str(c).endswith("_std")]
    extra = [c for c in ("objective", "architecture", "source") if c in t]
    cols = [c for c in DISPLAY_COLUMNS if c in t] + few + extra
    out = t[cols]
    if "agg_risk" in out:
        out = out.sort_values([c for c in ("dataset", "agg_risk") if c in out])
    return out


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


def significance_view(rows: pd.DataFrame) -> pd.DataFrame:
    """The table under the seed-contrast figure: one row per comparison (:func:`seed_contrast_rows`), per outcome
    ``"<delta> [<lo>, <hi>]"`` with ``*`` when significant after Holm, and agg_risk's ``p_Holm``."""
    outs = [c for c in ("usability", "probe_gen", "enc_gen", "agg_risk") if f"delta_{c}_lo" in rows]
    view = pd.DataFrame({"comparison": rows["label"], "seeds": rows.get("n_seeds")})
    for c in outs:
        sig = rows[f"significant_{c}"].astype("boolean").fillna(False)
        view[c] = [f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" + (" *" if s else "") if np.isfinite(lo) else f"{d:+.2f}"
                   for d, lo, hi, s in zip(rows[f"delta_{c}"].astype(float), rows[f"delta_{c}_lo"].astype(float),
                                           rows[f"delta_{c}_hi"].astype(float), sig)]
    if "p_holm_agg_risk" in rows:
        view["p_Holm agg_risk"] = rows["p_holm_agg_risk"].astype(float)
    return view


def _summary_html(summary: dict) -> str:
    if not summary:
        return "<p class='note'>No analysis summary (no leaderboard or published table).</p>"
    rows = []
    mean, median = summary.get("mean", {}), summary.get("median", {})
    counts = summary.get("largest_component_counts", {})
    comp = pd.DataFrame({"mean": pd.Series(mean, dtype=float), "median": pd.Series(median, dtype=float),
                         "largest in # models": pd.Series(counts, dtype="Int64")})
    comp.index.name = "component"
    rows.append(f"<p>Models: <b>{summary.get('n_models')}</b>"
                f" (source: {html.escape(str(summary.get('primary_source', '')))})</p>")
    rows.append(table_html(comp.reset_index()))
    taus = summary.get("kendall_tau") or {}
    if taus:
        rows.append("<p>Kendall tau of each few-shot ranking vs the full-shot ranking: "
                    + ", ".join(f"{html.escape(k)} {_fmt(v)}" for k, v in taus.items()) + "</p>")
    law = summary.get("scaling_law") or {}
    if law and law.get("alpha") is not None:
        rows.append("<p>Scaling law from components: "
                    + ", ".join(f"{k} = {_fmt(v)}" for k, v in law.items()) + "</p>")
    for name, sub in (summary.get("per_source") or {}).items():
        rows.append(f"<details><summary>{html.escape(name)}: full summary (JSON)</summary><pre>"
                    f"{html.escape(json.dumps(sub, indent=1))}</pre></details>")
    return "\n".join(rows)


def render_html(*, title: str, leaderboard: pd.DataFrame | None, summary: dict | None,
                plots: list[tuple[str, str, str]], notes: list[str],
                tables: dict[str, pd.DataFrame] | None = None, provenance: dict | None = None) -> str:
    """Page text. ``plots``: (image src, caption, figure id) triples; ``notes``: skipped-plot reasons;
    ``provenance``: what drew the page (shown under the title)."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if provenance:
        parts.append("<p class='prov'>" + " · ".join(f"{html.escape(k)} {html.escape(str(v))}"
                                                    for k, v in provenance.items()) + "</p>")
    parts.append("<h2>Leaderboard</h2>")
    if leaderboard is None or leaderboard.empty:
        parts.append("<p class='note'>No leaderboard.csv in this results directory.</p>")
    else:
        parts.append("<p>Errors in percent (test error of a linear probe); lower is better.</p>")
        parts.append(table_html(leaderboard_view(leaderboard)))
    parts.append("<h2>Analysis summary</h2>")
    parts.append(_summary_html(summary or {}))
    parts.append("<h2>Figures</h2>")
    for src, caption, fid in plots:
        parts.append(f"<figure id='{html.escape(fid)}'>"
                     f"<img src='{html.escape(src)}' alt='{html.escape(caption[:80])}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if notes:
        parts.append("<p class='note'>Not drawn:</p><ul>"
                     + "".join(f"<li class='note'>{html.escape(n)}</li>" for n in notes) + "</ul>")
    for name, df in (tables or {}).items():
        if df is not None and not df.empty:
            parts.append(f"<h2>{html.escape(name)}</h2>{table_html(df, max_rows=200)}")
    parts.append("</body></html>")
    return "\n".join(parts)


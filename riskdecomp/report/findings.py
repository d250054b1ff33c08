"""The findings of a results folder, in words: which encoder is best (references excluded), which differences are
shown and which are not (with what this zoo can detect), what is shared by construction and what is flagged.

:func:`findings` returns markdown (the README paragraph of ``scripts/write_findings.py``); :func:`findings_html`
renders the same text for the report's first screen. Both read only what the analysis wrote
(``leaderboard.csv``, ``analysis/summary.json``, ``analysis/baseline_contrasts.csv``,
``analysis/controlled_pairs.csv``, ``analysis/comparisons.csv``): every number printed is a value of one of those
files at its printed precision (tests/test_report_first_screen.py checks the README's). Keys written by newer
analyses (``best``, ``inference``, ``constant_components``, ``zoo_flags``, the ``flags`` / ``is_reference``
leaderboard columns, ``delta_<x>_adj_lo/_hi``) are used when present; an older folder gets the older sentences.

Any folder works: one or several datasets, with or without pretraining seeds.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from riskdecomp.analysis.tables import fewshot_settings, reference_mask
from riskdecomp.utils.schema import COMPONENTS, TOTAL

__all__ = ["findings", "findings_html", "markdown_html", "FLAG_TEXT", "read_results",
           "fewshot_columns", "fewshot_order", "shared_components", "versus_best"]

#: One sentence per leaderboard ``flags`` code (the codes of riskdecomp.runner; docs/protocol.md explains them).
FLAG_TEXT = {
    "separable_train": "no more train images than feature dimensions: the train set is separable, so the train->train "
                       "error and usability are ~0 and the error lands in probe_gen",
    "never_pretrained": "never pretrained (random weights): its enc_gen is estimation noise",
    "C_at_grid_edge": "a tuned C at the edge of the grid: the best regularisation may lie outside it",
}


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    return None if df.empty else df


def read_results(results_dir) -> dict:
    """What the findings read, each None (or {}) when absent: ``board``, ``summary``, ``contrasts``, ``pairs``,
    ``comparisons``."""
    root = Path(results_dir)
    an = root / "analysis"
    summary = {}
    if (an / "summary.json").is_file():
        try:
            summary = json.loads((an / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
    pairs = _read_csv(an / "controlled_pairs.csv")
    if pairs is not None and "source" in pairs:
        pairs = pairs[pairs["source"].astype(str) == "ours"]
    return {"board": _read_csv(root / "leaderboard.csv"), "summary": summary,
            "contrasts": _read_csv(an / "baseline_contrasts.csv"), "pairs": pairs,
            "comparisons": _read_csv(an / "comparisons.csv")}


# ------------------------------------------------------------------------------------------------ shared helpers
_SETTING = re.compile(r"(?:fewshot_)?(\d+(?:\.\d+)?)(shot|pct)")


def fewshot_order(name: str) -> tuple:
    """Sort key of a few-shot setting (``fewshot_10shot`` or ``10shot``): k-shot by k, then p % by p; anything else
    last, by name."""
    m = _SETTING.fullmatch(str(name))
    return (0 if m.group(2) == "shot" else 1, float(m.group(1)), "") if m else (2, 0.0, str(name))


def fewshot_columns(board: pd.DataFrame) -> list[str]:
    """The few-shot error columns with values, in numeric order (1shot, 3shot, 5shot, 10shot, 1pct, 10pct)."""
    return sorted(fewshot_settings(board), key=fewshot_order)


def shared_components(summary: dict, dataset) -> dict:
    """{component: shared value} of the components constant across the zoo's candidates by construction
    (``summary.json`` ``constant_components``; {} when the analysis did not write it)."""
    cc = (summary or {}).get("constant_components") or {}
    got = cc.get(str(dataset), {}) if isinstance(cc, dict) else {}
    return {k: v for k, v in got.items() if k in COMPONENTS} if isinstance(got, dict) else {}


def _flags_of(board: pd.DataFrame) -> dict:
    """model -> [flag codes] from the leaderboard's ``flags`` column."""
    if "flags" not in board:
        return {}
    out = {}
    for m, f in zip(board["model"].astype(str), board["flags"]):
        codes = [c for c in str(f).split(";") if c and c != "nan"] if not pd.isna(f) else []
        if codes:
            out[m] = codes
    return out


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _true(v) -> bool:
    return str(v).strip().lower() in ("true", "1", "1.0")


def _names(models) -> str:
    return ", ".join(f"`{m}`" for m in models)


# ------------------------------------------------------------------------------------------------ one difference
def _ci_cols(df: pd.DataFrame, c: str) -> tuple[str, str, bool]:
    """(lo column, hi column, adjusted?) of outcome ``c``: the adjusted CI (the level the verdict used) when the
    analysis wrote it, else the per-comparison one."""
    if f"delta_{c}_adj_lo" in df and f"delta_{c}_adj_hi" in df:
        return f"delta_{c}_adj_lo", f"delta_{c}_adj_hi", True
    return f"delta_{c}_lo", f"delta_{c}_hi", False


def _delta(row, df: pd.DataFrame, c: str, with_p: bool = False) -> str:
    """``+1.6 points [-1.1, +4.3]`` (+ `` (p_Holm = 0.13)`` with ``with_p``); an unadjusted CI that excludes 0
    beside a non-significant verdict says it is unadjusted."""
    lo_c, hi_c, adjusted = _ci_cols(df, c)
    d, lo, hi = _num(row[f"delta_{c}"]), _num(row.get(lo_c)), _num(row.get(hi_c))
    notes = []
    if with_p:
        p = _num(row.get(f"p_holm_{c}"))
        notes.append("not testable: no variance" if not np.isfinite(p) else f"p_Holm = {p:.2g}")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        text = f"{d:+.1f} points"
    else:
        text = f"{d:+.1f} points [{lo:+.1f}, {hi:+.1f}]"
        if not adjusted and not _true(row.get(f"significant_{c}")) and (lo > 0 or hi < 0):
            notes.append("unadjusted CI")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _mde(df: pd.DataFrame, summary: dict, ds, c: str = TOTAL) -> float:
    """The minimum detectable effect on ``c`` (points): summary.json ``inference`` (agg_risk), else the CSV's
    ``mde_<c>`` (its largest value: what the least-powered comparison can detect)."""
    inf = ((summary or {}).get("inference") or {}).get(str(ds)) or {}
    if c == TOTAL and np.isfinite(_num(inf.get("mde_agg_risk"))):
        return _num(inf.get("mde_agg_risk"))
    if df is not None and f"mde_{c}" in df:
        v = pd.to_numeric(df[f"mde_{c}"], errors="coerce").dropna()
        if len(v):
            return float(v.max())
    return float("nan")


def _not_shown(mde: float) -> str:
    return "not shown" if not np.isfinite(mde) else f"not shown (this zoo detects >= {mde:.1f} points)"


def _of(df: pd.DataFrame | None, ds) -> pd.DataFrame | None:
    if df is None or df.empty:
        return None
    if "dataset" in df:
        df = df[df["dataset"].astype(str) == str(ds)]
    return df if len(df) else None


# ------------------------------------------------------------------------------------------------ the sentences
def _header(board: pd.DataFrame, ds, folder: str) -> str:
    n = board["model"].nunique()
    if "n_seeds" in board and pd.to_numeric(board["n_seeds"], errors="coerce").max() > 1:
        s = pd.to_numeric(board["n_seeds"], errors="coerce")
        seeds = f"{int(s.min())}" if s.min() == s.max() else f"{int(s.min())}-{int(s.max())}"
        size = f"{n} model{'s' if n != 1 else ''} x {seeds} pretraining seeds"
    else:
        size = f"{n} model{'s' if n != 1 else ''}, no pretraining seeds"
    return (f"Findings on `{ds}` ({size}; generated by riskdecomp from the files in `{folder}/`). Errors are in "
            "%, differences in points, every CI is 95 %.")


def _method(summary: dict, ds) -> str:
    inf = ((summary or {}).get("inference") or {}).get(str(ds))
    if not inf:
        return ("How differences were tested: paired over the pretraining seeds both models share, with Holm's "
                "correction per component (significant: p_Holm < 0.05).")
    parts = [str(inf.get("model", "")).strip()]
    if inf.get("n_runs") is not None:
        parts.append(f"{inf['n_runs']} runs")
    if inf.get("residual_df") is not None:
        parts.append(f"{inf['residual_df']} residual df")
    why = str(inf.get("why", "")).strip().rstrip(".")
    pairing = "paired by seed" if inf.get("paired_by_seed") else "not paired by seed"
    parts.append(pairing + (f": {why}" if why else ""))
    return ("How differences were tested: one model over every run (" + "; ".join(p for p in parts if p)
            + "), Holm's correction within each family (significant: p_Holm < 0.05).")


def _best_line(board: pd.DataFrame, ds, summary: dict) -> list[str]:
    best = ((summary or {}).get("best") or {}).get(str(ds))
    refs = list(board.loc[reference_mask(board), "model"].astype(str))
    out = []
    if best and best.get("model"):
        refs = [str(r) for r in best.get("references", refs)]
        lo, hi, v = _num(best.get("lo")), _num(best.get("hi")), _num(best.get("value"))
        ci = f" [{lo:.1f}, {hi:.1f}]" if np.isfinite(lo) and np.isfinite(hi) else ""
        n_seeds = best.get("n_seeds")
        seeds = f", {n_seeds} seed{'s' if n_seeds != 1 else ''}" if n_seeds is not None else ""
        n_cand = best.get("n_candidates")
        of = f" of {n_cand} candidates" if n_cand is not None else ""
        line = (f"- Best encoder{of}{' (references excluded: ' + _names(refs) + ')' if refs else ''}: "
                f"`{best['model']}`, {best.get('outcome', TOTAL)} {v:.1f} %{ci}{seeds}.")
        group = [str(m) for m in best.get("top_group") or [] if str(m) != str(best["model"])]
        if group:
            line += f" Not significantly worse than it: {_names(group)}."
        else:
            line += " Every other candidate is significantly worse."
        if best.get("method"):
            line += f" ({str(best['method']).strip().rstrip('.')}.)"
        out.append(line)
    else:  # older folders: the lowest mean agg_risk of the non-references, no verdict on the rest
        cand = board[~reference_mask(board)]
        risk = pd.to_numeric(cand[TOTAL], errors="coerce")
        excluded = f" (references excluded: {_names(refs)})" if refs else ""
        if cand.empty:
            out.append(f"- No candidate: every model is a reference ({_names(refs)}).")
        elif risk.isna().all():
            out.append(f"- No candidate has an agg_risk value{excluded}.")
        else:
            b = cand.loc[risk.idxmin()]
            ci = (f" [{_num(b[f'{TOTAL}_lo']):.1f}, {_num(b[f'{TOTAL}_hi']):.1f}]"
                  if f"{TOTAL}_lo" in b and np.isfinite(_num(b[f"{TOTAL}_lo"])) else "")
            why = ("the only candidate" if risk.notna().sum() == 1
                   else "lowest mean; not tested against the next ones")
            out.append(f"- Lowest risk{excluded}: `{b['model']}`, agg_risk {_num(b[TOTAL]):.1f} %{ci} ({why}).")
    by = board.set_index(board["model"].astype(str))
    ref_rows = [r for r in refs if r in by.index]
    if ref_rows:
        out.append("- References (not candidates): " + "; ".join(
            f"`{r}` agg_risk {_num(by.loc[r, TOTAL]):.1f} %" + (
                f" [{_num(by.loc[r, f'{TOTAL}_lo']):.1f}, {_num(by.loc[r, f'{TOTAL}_hi']):.1f}]"
                if f"{TOTAL}_lo" in by and np.isfinite(_num(by.loc[r, f"{TOTAL}_lo"])) else "")
            for r in ref_rows) + ".")
    return out


def versus_best(comparisons: pd.DataFrame | None, best: dict) -> pd.DataFrame:
    """The agg_risk rows of ``comparisons.csv`` (``delta`` = model_b - model_a) that involve each dataset's best
    encoder (``best``: dataset -> model; of the ``vs_best`` family, Holm over best vs each, when the file has a
    ``family`` column), oriented as other - best: columns ``dataset, model, best, delta, lo, hi``
    (the CI the verdict used: ``adj_lo/_hi`` when written), ``adjusted, significant, p_holm, method``."""
    cols = ["dataset", "model", "best", "delta", "lo", "hi", "adjusted", "significant", "p_holm", "method"]
    if comparisons is None or comparisons.empty or not best or "outcome" not in comparisons:
        return pd.DataFrame(columns=cols)
    adj = "adj_lo" in comparisons and "adj_hi" in comparisons
    rows = comparisons[comparisons["outcome"].astype(str) == TOTAL]
    if "family" in rows and rows["family"].astype(str).eq("vs_best").any():  # the best's own Holm family
        rows = rows[rows["family"].astype(str) == "vs_best"]
    out = []
    for r in rows.to_dict("records"):
        b = str(best.get(str(r.get("dataset", "default")), ""))
        if b not in (str(r["model_a"]), str(r["model_b"])):
            continue
        sign = 1.0 if str(r["model_a"]) == b else -1.0
        lo, hi = sorted((sign * _num(r["adj_lo" if adj else "lo"]), sign * _num(r["adj_hi" if adj else "hi"])))
        out.append({"dataset": r.get("dataset"), "model": str(r["model_b"] if sign > 0 else r["model_a"]), "best": b,
                    "delta": sign * _num(r["delta"]), "lo": lo, "hi": hi, "adjusted": adj,
                    "significant": _true(r.get("significant")), "p_holm": _num(r.get("p_holm")),
                    "method": r.get("method", "")})
    return pd.DataFrame(out, columns=cols)


def _worse_than_best(comparisons: pd.DataFrame | None, ds, best: str | None) -> str | None:
    """The candidates significantly worse than the best (``comparisons.csv``), with them - best and its CI."""
    v = versus_best(comparisons, {str(ds): best} if best else {})
    v = v[v["significant"].astype(bool)]
    if v.empty:
        return None
    items = [f"`{r['model']}` {r['delta']:+.1f} points" + (
        f" [{r['lo']:+.1f}, {r['hi']:+.1f}]" if np.isfinite(r["lo"]) and np.isfinite(r["hi"]) else "")
        for r in v.to_dict("records")]
    level = "Holm-adjusted CIs" if bool(v["adjusted"].iloc[0]) else "unadjusted CIs"
    return f"- Significantly worse than `{best}` (agg_risk, {level}): " + "; ".join(items) + "."


def _contrast_lines(con: pd.DataFrame | None, mde: float) -> list[str]:
    if con is None or "significant_agg_risk" not in con:
        return []
    out = []
    sig = con["significant_agg_risk"].map(_true)
    bases = list(dict.fromkeys(con["baseline"].astype(str)))
    who = (lambda r: f"`{r['model']}`") if len(bases) == 1 else (lambda r: f"`{r['model']}` vs `{r['baseline']}`")
    adj = _ci_cols(con, TOTAL)[2]
    level = "Holm-adjusted CIs" if adj else "unadjusted CIs"
    if sig.any():
        out.append(f"- Differs from random init (`{'`, `'.join(bases)}`) on agg_risk, significantly ({level}): "
                   + "; ".join(f"{who(r)} {_delta(r, con, TOTAL, True)}" for _, r in con[sig].iterrows())
                   + ".")
    if (~sig).any():
        out.append(f"- A difference from random init {_not_shown(mde)}: " + "; ".join(
            f"{who(r)} {_delta(r, con, TOTAL, True)}" for _, r in con[~sig].iterrows()) + ".")
    return out


def _pair_lines(pairs: pd.DataFrame | None, mde: float, constant: dict) -> list[str]:
    if pairs is None or "significant_agg_risk" not in pairs:
        return []

    def name(r):
        return f"{r['field']} {r['value_a']} -> {r['value_b']} (`{r['model_a']}` -> `{r['model_b']}`)"

    out = []
    flag = pairs["significant_agg_risk"].map(_true)
    if flag.any():
        out.append("- Design choices with a significant effect on agg_risk: " + "; ".join(
            f"{name(r)} {_delta(r, pairs, TOTAL, True)}" for _, r in pairs[flag].iterrows()) + ".")
    if (~flag).any():
        out.append(f"- An effect on agg_risk {_not_shown(mde)}: " + "; ".join(
            f"{name(r)} {_delta(r, pairs, TOTAL)}" for _, r in pairs[~flag].iterrows()) + ".")
    comp = [f"{name(r)}: {c} {_delta(r, pairs, c)}" for _, r in pairs.iterrows() for c in COMPONENTS
            if c not in constant and f"significant_{c}" in pairs and _true(r[f"significant_{c}"])]
    if comp:
        out.append("- Significant component shifts: " + "; ".join(comp) + ".")
    return out


def _constant_lines(constant: dict) -> list[str]:
    return [f"- `{c}` is {_num(v):.1f} % for every candidate (the reference's train->train error, constant by "
            "construction): the shared baseline, not a difference between encoders nor anyone's largest component."
            for c, v in constant.items()]


def _component_line(board: pd.DataFrame, ds, summary: dict, constant: dict) -> list[str]:
    out = []
    s = summary or {}
    if (s.get("per_dataset") or {}).get(str(ds)):
        s = s["per_dataset"][str(ds)]
    over = s.get("candidates") or {}  # the candidates (references left out) when the analysis says them
    what = f"{over['n_models']} candidates" if over else f"{s.get('n_models', board['model'].nunique())} models"
    means = {c: _num(v) for c, v in (over.get("mean") or s.get("mean") or {}).items()
             if c in COMPONENTS and c not in constant}
    if means and all(np.isfinite(v) for v in means.values()):
        line = (f"- Mean over the {what}: "
                + ", ".join(f"{c} {v:.1f}" for c, v in means.items())
                + f" (largest: {max(means, key=lambda c: means[c])})")
        if f"{TOTAL}_seed_std" in board:
            sd = pd.to_numeric(board[f"{TOTAL}_seed_std"], errors="coerce")
            if sd.notna().any():
                lo, hi = board.loc[sd.idxmin()], board.loc[sd.idxmax()]
                line += (f"; agg_risk's standard deviation over pretraining seeds ranges from {sd.min():.2f} "
                         f"(`{lo['model']}`) to {sd.max():.2f} (`{hi['model']}`) points")
        out.append(line + ".")
    return out


def _zoo_flag_lines(summary: dict, board: pd.DataFrame) -> list[str]:
    """``summary.json`` ``zoo_flags``, one bullet each, but those this text already says in its own words: a
    leaderboard flag code's line (``<code>: ...``, see :func:`_flag_lines`) and a constant component's
    (``<component> constant ...``, see :func:`_constant_lines`)."""
    summary = summary or {}
    codes = set(FLAG_TEXT) | {c for cs in _flags_of(board).values() for c in cs}
    constant = {c for ds in (summary.get("constant_components") or {}) for c in shared_components(summary, ds)}
    said = tuple(f"{c}:" for c in codes) + tuple(f"{c} constant" for c in constant)
    return [f"- {str(z).strip().rstrip('.')}." for z in summary.get("zoo_flags") or []
            if not str(z).strip().startswith(said)]


def _flag_lines(board: pd.DataFrame) -> list[str]:
    out = []
    by_code: dict = {}
    for m, codes in _flags_of(board).items():
        for code in codes:
            by_code.setdefault(code, []).append(m)
    for code, models in by_code.items():
        out.append(f"- Flag `{code}` ({FLAG_TEXT.get(code, 'see docs/protocol.md')}): {_names(models)}.")
    return out


def _stability_line(summary: dict, ds) -> list[str]:
    stab = ((summary or {}).get("seed_ranking_stability") or {}).get(str(ds))
    if not stab:
        return []
    return [f"- Ranking stability across pretraining seeds: Kendall tau between the agg_risk rankings of two "
            f"disjoint halves of the seeds {stab['tau_mean']:.2f} (min {stab['tau_min']:.2f}, max "
            f"{stab['tau_max']:.2f} over {stab['n_splits']} splits of {stab['n_models']} models)."]


def _blocks(results_dir) -> list[tuple[list[str], list[str]]]:
    """Per dataset: (headline lines, detail lines) of markdown. Headline: what the folder is, the best encoder, the
    references, who is worse than the best, the shared baseline, the flags. Details: how differences were tested,
    every contrast and controlled pair, the component means, ranking stability."""
    root = Path(results_dir)
    r = read_results(root)
    board, summary = r["board"], r["summary"]
    if board is None or "model" not in board or TOTAL not in board:
        return [([f"No findings: `{root.name}/leaderboard.csv` is missing, empty or has no `{TOTAL}` column."], [])]
    if "dataset" not in board:
        board = board.assign(dataset="default")
    blocks = []
    for ds, b in board.groupby(board["dataset"].astype(str), sort=False):
        constant = shared_components(summary, ds)
        con, pairs, comps = _of(r["contrasts"], ds), _of(r["pairs"], ds), _of(r["comparisons"], ds)
        mde = _mde(con if con is not None else pairs, summary, ds)
        head = [_header(b, ds, root.name), ""] + _best_line(b, ds, summary)
        best = (((summary or {}).get("best") or {}).get(str(ds)) or {}).get("model")
        worse = _worse_than_best(comps, ds, str(best) if best else None)
        head += [worse] if worse else []
        head += _constant_lines(constant)
        head += (_zoo_flag_lines(summary, board) if not blocks else []) + _flag_lines(b)
        tests = _contrast_lines(con, mde) + _pair_lines(pairs, mde, constant)
        inferred = bool(((summary or {}).get("inference") or {}).get(str(ds)))
        detail = ([_method(summary, ds), ""] if tests or inferred else []) + tests
        detail += _component_line(b, ds, summary, constant) + _stability_line(summary, ds)
        blocks.append((head, detail))
    return blocks


def findings(results_dir) -> str:
    """The findings (markdown) of one results folder: per dataset, a paragraph and its headline bullets, then how
    differences were tested and the detailed bullets. A folder without a readable, non-empty ``leaderboard.csv``
    gets one sentence saying so."""
    return "\n\n".join("\n".join(h) + ("\n\n" + "\n".join(d) if d else "") for h, d in _blocks(results_dir)) + "\n"


# ------------------------------------------------------------------------------------------------ HTML
_CODE = re.compile(r"`([^`]*)`")


def markdown_html(md: str) -> str:
    """The small markdown :func:`findings` writes (paragraphs, ``- `` bullets, backtick code) as HTML."""
    out, items = [], []

    def inline(s: str) -> str:
        return _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", html.escape(s, quote=False))

    def flush():
        if items:
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in md.splitlines():
        if line.startswith("- "):
            items.append(line[2:])
        elif line.strip():
            flush()
            out.append(f"<p>{inline(line)}</p>")
        else:
            flush()
    flush()
    return "\n".join(out)


def findings_html(results_dir) -> str:
    """:func:`findings` of ``results_dir`` as HTML, the same sentences: per dataset the headline shown, the detailed
    comparisons in a ``<details>`` element that says how many findings it holds."""
    out = []
    for head, detail in _blocks(results_dir):
        out.append(markdown_html("\n".join(head)))
        if detail:
            n = sum(line.startswith("- ") for line in detail)
            out.append(f"<details><summary>How differences were tested, every comparison and the component means "
                       f"({n} more finding{'s' if n != 1 else ''})</summary>{markdown_html(chr(10).join(detail))}"
                       "</details>")
    return "\n".join(out)

"""Report of a results directory: analyses, plots (PNG + SVG) and one static HTML page.

``make_report(results_dir)`` reads ``leaderboard.csv`` and, when present, uncertainty.csv,
per_sample/*.csv, active_learning.csv, label_efficiency.csv; runs
:func:`riskdecomp.analysis.analyze` into ``results_dir/analysis/``; draws
``results_dir/plots/*.png|svg`` (``analysis/`` and ``plots/`` must be real folders, not symbolic links); writes
``results_dir/report.html``, self-contained (the PNGs inlined as data URIs, inline CSS, no script): one file to
mail. A provenance line says which versions drew it, where and when. Its first screen is the findings
(:mod:`riskdecomp.report.findings`, the same text as the README's) and the leaderboard; raw per-run tables are not
copied into the page but linked (relative links to the folder's CSVs), so nothing is cut.
Reporting never recomputes features or probes.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import pandas as pd

from riskdecomp.analysis import analyze
from riskdecomp.report.findings import findings_html
from riskdecomp.report.html import (
    comparisons_view,
    render_html,
    seed_contrast_rows,
    significance_title,
    significance_view,
)
from riskdecomp.report.plots import read_csv_if_any
from riskdecomp.utils.atomic import atomic_write_text as write_text_atomic
from riskdecomp.utils.errors import RiskdecompError
from riskdecomp.utils.schema import OUTCOMES

__all__ = ["make_report", "write_page"]


def make_report(results_dir, *, published=None, color_by: str | None = "objective") -> Path:
    """Write ``results_dir/report.html`` (+ plots/ and analysis/) and return its path.

    ``published``: optional DataFrame from :func:`riskdecomp.analysis.published.load_published` or a path to
    ``all_results.csv``; it is analysed and plotted as a separate source. Raises
    :class:`RiskdecompError` if ``results_dir`` is not a directory.
    """
    from riskdecomp.report.plots import collect_plots
    from riskdecomp.utils.atomic import real_folder

    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise RiskdecompError(f"results directory not found: {results_dir}")
    analysis_dir, plots_dir = real_folder(results_dir, "analysis"), real_folder(results_dir, "plots")  # not links
    if published is not None and not isinstance(published, pd.DataFrame):
        from riskdecomp.analysis.published import load_published
        published = load_published(published)
    lb = read_csv_if_any(results_dir / "leaderboard.csv")
    if lb is not None and lb.empty:
        lb = None

    summary, effects = None, None
    if lb is not None or published is not None:
        summary = analyze(leaderboard=lb, published=published, out_dir=analysis_dir,
                          seeds=read_csv_if_any(results_dir / "leaderboard_seeds.csv"), per_sample=results_dir / "per_sample")
        effects = read_csv_if_any(analysis_dir / "design_effects.csv")
    made, notes = collect_plots(results_dir, plots_dir, color_by, published=published,
                                effects=effects if effects is not None else pd.DataFrame())
    rel = [(_data_uri(Path(p)), caption, Path(p).stem) for p, caption in made]
    return write_page(results_dir, plots=rel, notes=notes, summary=summary)


#: What each CSV of a results folder holds (the report links them; unknown files are linked without a line).
FILE_TEXT = {
    "leaderboard.csv": "one row per model x dataset, seeds pooled: components, CIs, few-shot errors, design fields",
    "leaderboard_seeds.csv": "one row per run (model x pretraining seed x dataset)",
    "fewshot.csv": "few-shot errors per run, setting and repeat",
    "label_efficiency.csv": "probe error per run and number of labels",
    "active_learning.csv": "active-learning accuracy per run, acquisition function, seed and number of labels",
    "uncertainty.csv": "uncertainty-score metrics per run and score (AUROC, Kendall tau, AURC, decile accuracies)",
    "timings.csv": "wall time of each stage per run",
    "failures.csv": "runs that failed, with the stage and the error",
    "analysis/baseline_contrasts.csv": "every model minus random init, per component: difference, CIs, p-values",
    "analysis/controlled_pairs.csv": "pairs of models differing in one design field, per component",
    "analysis/comparisons.csv": "every pair of candidates scored on the same test points, per outcome",
    "analysis/design_effects.csv": "regression effect of each design choice on each component",
    "analysis/ranking_moves.csv": "rank of each model at full shot and in each few-shot setting",
    "analysis/scaling_predictions.csv": "scaling-law prediction vs actual error per model and setting",
    "analysis/seed_ranking_stability.csv": "Kendall tau between the rankings of disjoint halves of the seeds",
}


def data_files(results_dir: Path) -> list[tuple[str, int | None, str]]:
    """(path relative to ``results_dir``, data rows, what it holds) of every CSV at its top level and in
    ``analysis/``."""
    out = []
    for folder in (results_dir, results_dir / "analysis"):
        if not folder.is_dir():
            continue
        for f in sorted(folder.glob("*.csv")):
            rel = f.relative_to(results_dir).as_posix()
            try:
                with f.open("rb") as fh:
                    n = max(sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b"")) - 1, 0)
            except OSError:
                n = None
            out.append((rel, n, FILE_TEXT.get(rel, "")))
    return out


#: Sub-folders of per-run files a results folder may hold, and what each file is.
FOLDER_TEXT = {"per_sample": "one CSV per run: every test point's error, loss and uncertainty scores",
               "active": "one CSV per run: its active-learning curves"}


def data_folders(results_dir: Path) -> list[tuple[str, int, str]]:
    """(name, number of files, what each is) of the per-run sub-folders of ``results_dir`` that exist."""
    return [(name, sum(1 for f in (results_dir / name).rglob("*") if f.is_file()), what)
            for name, what in FOLDER_TEXT.items() if (results_dir / name).is_dir()]


def write_page(results_dir, *, plots=(), notes=(), summary: dict | None = None, provenance_info=None) -> Path:
    """Write ``results_dir/report.html`` from what the folder holds (``leaderboard.csv``, ``analysis/``): the
    findings (:mod:`riskdecomp.report.findings`), the leaderboard, the summary (``summary`` or
    ``analysis/summary.json``), ``plots`` ((data URI, caption, id) triples), ``notes``, the significance tables and
    links to every CSV. No analysis is run and no figure drawn here (:func:`make_report` does both first)."""
    results_dir = Path(results_dir)
    lb = read_csv_if_any(results_dir / "leaderboard.csv")
    lb = None if lb is None or lb.empty else lb
    if summary is None and (results_dir / "analysis" / "summary.json").is_file():
        try:
            summary = json.loads((results_dir / "analysis" / "summary.json").read_text())
        except (OSError, ValueError):
            summary = None
    pairs = read_csv_if_any(results_dir / "analysis" / "controlled_pairs.csv")
    contrasts = seed_contrast_rows(pairs, read_csv_if_any(results_dir / "analysis" / "baseline_contrasts.csv"))
    tables = {}
    best = comparisons_view(read_csv_if_any(results_dir / "analysis" / "comparisons.csv"), summary)
    if not best.empty:
        tables["Each candidate minus the best encoder, agg_risk (points; * = significant after Holm's correction; "
               "every pair and outcome: analysis/comparisons.csv)"] = best
    if not contrasts.empty:  # with pretraining seeds: every difference with its CI, * = significant after Holm
        tables[significance_title(contrasts)] = significance_view(contrasts)
    elif pairs is not None and not pairs.empty:
        tables["Controlled pairs (model b minus model a, the one design field that differs; points)"] = \
            _pairs_view(pairs)
    text = render_html(title=f"riskdecomp report — {results_dir.name}", leaderboard=lb, summary=summary,
                       plots=list(plots), notes=list(notes), tables=tables,
                       provenance=provenance_info if provenance_info is not None else provenance(),
                       findings=findings_html(results_dir) if lb is not None else None,
                       limits=component_limits(), files=data_files(results_dir), folders=data_folders(results_dir))
    out = results_dir / "report.html"
    write_text_atomic(out, text)
    return out


def _pairs_view(pairs: pd.DataFrame) -> pd.DataFrame:
    """Controlled pairs without seeds: one row per pair, the differences of each outcome."""
    view = pd.DataFrame({"comparison": pairs["model_b"].astype(str) + " − " + pairs["model_a"].astype(str),
                         "field": pairs["field"].astype(str) + ": " + pairs["value_a"].astype(str) + " -> "
                         + pairs["value_b"].astype(str)})
    for c in OUTCOMES:
        if f"delta_{c}" in pairs:
            view[c] = pd.to_numeric(pairs[f"delta_{c}"], errors="coerce").to_numpy()
    return view


def component_limits() -> dict:
    """``COMPONENT_LIMITS`` of :mod:`riskdecomp.estimators.calibration` (per column, the known bias and CI coverage
    from the known-truth simulation) when that module exists, else {}."""
    try:
        if importlib.util.find_spec("riskdecomp.estimators.calibration") is None:
            return {}
    except (ImportError, ValueError):
        return {}
    return dict(getattr(importlib.import_module("riskdecomp.estimators.calibration"), "COMPONENT_LIMITS", {}) or {})


def _data_uri(png: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def provenance() -> dict:
    """What drew the report: package versions, Python, machine, date (UTC)."""
    import datetime
    import os
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def ver(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    return {"riskdecomp": ver("riskdecomp"), "torch": torch.__version__, "timm": ver("timm"),
            "python": platform.python_version(), "machine": f"{platform.system()} {platform.machine()}, {device}",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}

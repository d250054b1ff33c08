"""Report of a results directory: analyses, plots (PNG + SVG) and one static HTML page.

``make_report(results_dir)`` reads ``leaderboard.csv`` and, when present, uncertainty.csv,
per_sample/*.csv, active_learning.csv, label_efficiency.csv; runs
:func:`riskdecomp.analysis.analyze` into ``results_dir/analysis/``; draws
``results_dir/plots/*.png|svg`` (``analysis/`` and ``plots/`` must be real folders, not symbolic links); writes
``results_dir/report.html``, self-contained (the PNGs inlined as data URIs, inline CSS, no script): one file to
mail. A provenance line says which versions drew it, where and when.
Reporting never recomputes features or probes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from riskdecomp.analysis import analyze
from riskdecomp.report.plots import _read
from riskdecomp.utils.errors import RiskdecompError

__all__ = ["make_report"]


def make_report(results_dir, *, published=None, color_by: str | None = "objective") -> Path:
    """Write ``results_dir/report.html`` (+ plots/ and analysis/) and return its path.

    ``published``: optional DataFrame from :func:`riskdecomp.analysis.published.load_published` or a path to
    ``all_results.csv``; it is analysed and plotted as a separate source. Raises
    :class:`RiskdecompError` if ``results_dir`` is not a directory.
    """
    from riskdecomp.report.html import render_html
    from riskdecomp.report.plots import collect_plots
    from riskdecomp.utils.atomic import atomic_write_text as write_text_atomic
    from riskdecomp.utils.atomic import real_folder

    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise RiskdecompError(f"results directory not found: {results_dir}")
    analysis_dir, plots_dir = real_folder(results_dir, "analysis"), real_folder(results_dir, "plots")  # not links
    if published is not None and not isinstance(published, pd.DataFrame):
        from riskdecomp.analysis.published import load_published
        published = load_published(published)
    lb = _read(results_dir / "leaderboard.csv")
    if lb is not None and lb.empty:
        lb = None

    summary, effects = None, None
    if lb is not None or published is not None:
        summary = analyze(leaderboard=lb, published=published, out_dir=analysis_dir,
                          seeds=_read(results_dir / "leaderboard_seeds.csv"), per_sample=results_dir / "per_sample")
        effects = _read(analysis_dir / "design_effects.csv")
    made, notes = collect_plots(results_dir, plots_dir, color_by, published=published,
                                effects=effects if effects is not None else pd.DataFrame())
    rel = [(_data_uri(Path(p)), caption, Path(p).stem) for p, caption in made]
    from riskdecomp.report.html import seed_contrast_rows, significance_view

    pairs = _read(results_dir / "analysis" / "controlled_pairs.csv")
    contrasts = seed_contrast_rows(pairs, _read(results_dir / "analysis" / "baseline_contrasts.csv"))
    tables = {"Label efficiency": _read(results_dir / "label_efficiency.csv")}
    if contrasts.empty:
        tables["Controlled pairs"] = pairs
    else:  # with pretraining seeds: every difference with its CI, * = significant after Holm's correction
        tables["Differences over pretraining seeds (points; * = significant after Holm's correction, "
               "p_Holm < 0.05)"] = significance_view(contrasts)
    unc = _read(results_dir / "uncertainty.csv")
    if unc is not None and "metric" in unc:  # the decile bins are drawn, not tabulated
        from riskdecomp.estimators.reliability import BIN_METRIC_RE

        tables["Uncertainty metrics"] = unc[~unc["metric"].astype(str).str.fullmatch(BIN_METRIC_RE)]
    text = render_html(title=f"riskdecomp report — {results_dir.name}", leaderboard=lb, summary=summary,
                       plots=rel, notes=notes, tables=tables, provenance=provenance())
    out = results_dir / "report.html"
    write_text_atomic(out, text)
    return out


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

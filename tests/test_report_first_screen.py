"""Issue 21: the report's first screen answers "which encoder is best, and why" and the README says the same.

The findings (:mod:`riskdecomp.report.findings`) are generated for ANY results folder: a seedless zoo of three
encoders with a reference, and the committed seeded zoo with the keys newer analyses add (``summary.json``
``best`` / ``inference`` / ``constant_components`` / ``zoo_flags``, leaderboard ``is_reference`` / ``flags``,
``delta_<x>_adj_lo/_hi``, ``comparisons.csv``: the names of CONTRACT21), built here from the real committed
output. References are never "best"; few-shot columns are in numeric order; the report has no table of "N more rows
not shown" (raw CSVs are linked); at 1400 px the first screen holds the best-encoder sentence and the leaderboard
does not scroll sideways; every number of the README's findings is a value of a results file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from riskdecomp.cli import main as run_cli


# the API under test, imported per test so that each test fails on its own on a tree without it
def findings(res):
    from riskdecomp.report.findings import findings as f

    return f(res)


def findings_html(res):
    from riskdecomp.report.findings import findings_html as f

    return f(res)


def write_page(res, **kw):
    from riskdecomp.report import write_page as f

    return f(res, **kw)


def leaderboard_view(board, **kw):
    from riskdecomp.report.html import leaderboard_view as f

    return f(board, **kw)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
SCRIPT = ROOT / "scripts" / "write_findings.py"
FEW_ORDER = ["fewshot_1shot", "fewshot_3shot", "fewshot_5shot", "fewshot_10shot", "fewshot_1pct", "fewshot_10pct"]


# ------------------------------------------------------------------------------------------------ folders
def _seedless(root: Path, with_best: bool = True) -> Path:
    """Three timm encoders on a JPEG folder (no pretraining seeds) plus their supervised reference, which has the
    lowest agg_risk; written as the analysis of CONTRACT21 writes it."""
    an = root / "analysis"
    an.mkdir(parents=True)
    rows = [("ref_resnet", 20.0, True, ""), ("vit_t", 31.2, False, "separable_train;never_pretrained"),
            ("resnet_t", 33.9, False, "never_pretrained"), ("convnext_t", 40.4, False, "C_at_grid_edge")]
    board = pd.DataFrame([{
        "model": m, "dataset": "jpegs", "n_seeds": 1, "agg_risk": r, "agg_risk_lo": r - 2.5, "agg_risk_hi": r + 2.5,
        "approx": 12.0, "usability": 0.0 if ref else r - 20.0, "probe_gen": 5.0, "enc_gen": 3.0,
        "fewshot_10pct": r + 9, "fewshot_10shot": r + 8, "fewshot_1pct": r + 12, "fewshot_1shot": r + 20,
        "fewshot_5shot": r + 10, "fewshot_3shot": r + 15,
        "reference": "" if ref else "ref_resnet", "is_reference": ref, "n_features": 192, "flags": f,
        "objective": "supervised" if ref else "init"} for m, r, ref, f in rows])
    board.to_csv(root / "leaderboard.csv", index=False)
    summary = {"n_models": 4, "mean": {"approx": 12.0, "usability": 11.4, "probe_gen": 5.0, "enc_gen": 3.0},
               "zoo_flags": ["4 models (< 5): rankings, Kendall taus and the ranking-change figure not shown",
                             "approx constant across the candidates of jpegs (shared value 12.00): shown once",
                             "never_pretrained: vit_t, resnet_t (docs/protocol.md, Flags)"],
               "constant_components": {"jpegs": {"approx": 12.0}},
               "inference": {"jpegs": {"model": "paired bootstrap over the shared test points", "n_runs": 3,
                                       "residual_df": None, "paired_by_seed": False,
                                       "why": "no pretraining seeds", "mde_agg_risk": 3.7}}}
    if with_best:
        summary["best"] = {"jpegs": {"model": "vit_t", "outcome": "agg_risk", "value": 31.2, "lo": 28.7,
                                     "hi": 33.7, "n_seeds": 1, "top_group": ["vit_t", "resnet_t"],
                                     "references": ["ref_resnet"], "n_candidates": 3,
                                     "method": "paired bootstrap over the 500 shared test points, Holm"}}
    (an / "summary.json").write_text(json.dumps(summary))
    pd.DataFrame([  # delta = model_b - model_a; family "pairwise" (every pair) and "vs_best" (the best vs each)
        {"dataset": "jpegs", "family": "pairwise", "model_a": "vit_t", "model_b": "convnext_t", "outcome": "agg_risk",
         "delta": 9.2, "lo": 7.4, "hi": 11.0, "adj_lo": 6.1, "adj_hi": 12.3, "p": 1e-4, "p_holm": 5e-4,
         "significant": True, "method": "paired bootstrap"},
        {"dataset": "jpegs", "family": "pairwise", "model_a": "vit_t", "model_b": "resnet_t", "outcome": "agg_risk",
         "delta": 2.7, "lo": 0.4, "hi": 5.0, "adj_lo": 0.1, "adj_hi": 5.3, "p": 0.03, "p_holm": 0.04,
         "significant": True, "method": "paired bootstrap"},
        {"dataset": "jpegs", "family": "vs_best", "model_a": "vit_t", "model_b": "resnet_t", "outcome": "agg_risk",
         "delta": 2.7,
         "lo": 0.4, "hi": 5.0, "adj_lo": -0.6, "adj_hi": 6.0, "p": 0.03, "p_holm": 0.06, "significant": False,
         "method": "paired bootstrap"},
        {"dataset": "jpegs", "family": "vs_best", "model_a": "convnext_t", "model_b": "vit_t", "outcome": "agg_risk",
         "delta": -9.2,
         "lo": -11.0, "hi": -7.4, "adj_lo": -11.9, "adj_hi": -6.5, "p": 1e-4, "p_holm": 3e-4, "significant": True,
         "method": "paired bootstrap"},
        {"dataset": "jpegs", "family": "pairwise", "model_a": "resnet_t", "model_b": "convnext_t",
         "outcome": "agg_risk", "delta": 6.5,
         "lo": 4.4, "hi": 8.6, "adj_lo": 3.9, "adj_hi": 9.1, "p": 1e-3, "p_holm": 2e-3, "significant": True,
         "method": "paired bootstrap"},
    ]).to_csv(an / "comparisons.csv", index=False)
    return root


def _seeded(root: Path) -> Path:
    """The committed default zoo (13 models x 3-5 seeds, real output) with the CONTRACT21 keys added: the
    supervised reference marked, flags, the engine's best / inference / adjusted CIs / MDE, approx constant."""
    root.mkdir(parents=True)
    for f in ("leaderboard.csv", "leaderboard_seeds.csv", "label_efficiency.csv", "uncertainty.csv", "fewshot.csv"):
        shutil.copy(RESULTS / f, root / f)
    shutil.copytree(RESULTS / "analysis", root / "analysis")
    board = pd.read_csv(root / "leaderboard.csv")
    board = board.assign(reference=np.where(board["model"] == "supervised", "", "supervised"),
                         is_reference=board["model"] == "supervised", n_features=512,
                         flags=np.where(board["model"] == "init", "never_pretrained", "C_at_grid_edge"))
    board.to_csv(root / "leaderboard.csv", index=False)
    con = pd.read_csv(root / "analysis" / "baseline_contrasts.csv")
    for c in ("approx", "usability", "probe_gen", "enc_gen", "agg_risk"):  # the engine's adjusted CIs: 1.6x wider
        half = (con[f"delta_{c}_hi"] - con[f"delta_{c}_lo"]) / 2 * 1.6
        con[f"delta_{c}_adj_lo"], con[f"delta_{c}_adj_hi"] = con[f"delta_{c}"] - half, con[f"delta_{c}"] + half
        con[f"mde_{c}"] = 3.2
    con["significant_agg_risk"] = (con["delta_agg_risk_adj_hi"] < 0) | (con["delta_agg_risk_adj_lo"] > 0)
    con.to_csv(root / "analysis" / "baseline_contrasts.csv", index=False)
    summary = json.loads((root / "analysis" / "summary.json").read_text())
    simclr = board.set_index("model").loc["simclr"]
    summary["best"] = {"cifar10-mini": {
        "model": "simclr", "outcome": "agg_risk", "value": simclr["agg_risk"], "lo": simclr["agg_risk_lo"],
        "hi": simclr["agg_risk_hi"], "n_seeds": 5, "top_group": ["simclr", "simclr_head_none", "simclr_bs64"],
        "references": ["supervised"], "n_candidates": 12, "method": "model + seed fixed effects over 45 runs, Holm"}}
    summary["inference"] = {"cifar10-mini": {"model": "model + seed fixed effects", "n_runs": 45, "residual_df": 28,
                                             "paired_by_seed": True, "why": "seeds share initialisation and data "
                                             "order", "mde_agg_risk": 3.2}}
    summary["constant_components"] = {"cifar10-mini": {"approx": 41.5}}
    summary["zoo_flags"] = []
    (root / "analysis" / "summary.json").write_text(json.dumps(summary))
    return root


def _older(t: pd.DataFrame) -> pd.DataFrame:
    """A contrasts table as a folder written before the engine's adjusted CIs has it: no ``_adj_`` columns, the
    verdicts of the old engine (paired t-test over the shared seeds, Holm per file: ``p_paired_<x>``)."""
    from riskdecomp.analysis.inference import holm

    t = t.drop(columns=[c for c in t.columns if "_adj_" in c])
    t["p_holm_agg_risk"] = holm(t["p_paired_agg_risk"].to_numpy(float))
    t["significant_agg_risk"] = t["p_holm_agg_risk"] < 0.05
    return t


def _bullet(text: str, start: str) -> str:
    hits = [line for line in text.splitlines() if line.startswith(start)]
    assert len(hits) == 1, (start, text)
    return hits[0]


# ------------------------------------------------------------------------------------------------ findings
def test_findings_of_a_seedless_zoo_name_the_best_candidate_not_the_reference(tmp_path):
    res = _seedless(tmp_path / "res")
    text = findings(res)
    assert text.startswith("Findings on `jpegs` (4 models, no pretraining seeds;")
    best = _bullet(text, "- Best encoder")
    assert "`vit_t`, agg_risk 31.2 % [28.7, 33.7], 1 seed." in best and "references excluded: `ref_resnet`" in best
    assert "Not significantly worse than it: `resnet_t`." in best
    # the reference has the lowest agg_risk but is listed as a reference, never as best
    assert "`ref_resnet`" not in best.split("references excluded")[1].split(")")[1]
    assert "- References (not candidates): `ref_resnet` agg_risk 20.0 % [17.5, 22.5]." in text
    # worse than the best: from comparisons.csv, oriented as other - best, with the adjusted CI the verdict used
    worse = _bullet(text, "- Significantly worse than `vit_t`")
    assert "Holm-adjusted CIs" in worse and "`convnext_t` +9.2 points [+6.5, +11.9]" in worse
    assert "resnet_t" not in worse  # not significant: in the top group instead
    # the shared baseline said once, flags and zoo flags
    assert text.count("the shared baseline") == 1 and "`approx` is 12.0 % for every candidate" in text
    assert "- 4 models (< 5): rankings, Kendall taus and the ranking-change figure not shown." in text
    assert "Flag `never_pretrained`" in text and "`vit_t`, `resnet_t`." in _bullet(text, "- Flag `never_pretrained`")
    # zoo flags that repeat the constant component or a flag code are not said twice
    assert "approx constant across" not in text and "never_pretrained: vit_t" not in text
    assert "Mean over the 4 models: usability 11.4, probe_gen 5.0, enc_gen 3.0 (largest: usability)" in text
    # the same sentences in the report's HTML
    page = findings_html(res)
    assert "<code>vit_t</code>, agg_risk 31.2 % [28.7, 33.7], 1 seed." in page
    # the report's pairwise table: each candidate minus the best, the verdict's (adjusted) CI, said so
    report = write_page(res, provenance_info={"riskdecomp": "test"}).read_text()
    assert "<td class='t'>convnext_t − vit_t</td><td class='t'>+9.20 [+6.50, +11.90] *</td>" in report
    assert "<td class='t'>resnet_t − vit_t</td><td class='t'>+2.70 [-0.60, +6.00]</td>" in report
    assert report.count("<td class='t'>Holm-adjusted</td>") == 2


def test_without_a_best_key_the_lowest_non_reference_is_named_and_untested(tmp_path):
    """An older folder (no summary ``best``): the lowest mean among the non-references, saying it is not a
    verdict; the reference with the lowest agg_risk is still not named."""
    res = _seedless(tmp_path / "res", with_best=False)
    line = _bullet(findings(res), "- Lowest risk")
    assert "`vit_t`, agg_risk 31.2 % [28.7, 33.7]" in line and "not tested against the next ones" in line
    assert "references excluded: `ref_resnet`" in line


def test_findings_of_a_seeded_zoo_use_the_engines_adjusted_cis_and_mde(tmp_path):
    res = _seeded(tmp_path / "res")
    text = findings(res)
    assert text.startswith("Findings on `cifar10-mini` (13 models x 3-5 pretraining seeds;")
    best = _bullet(text, "- Best encoder of 12 candidates (references excluded: `supervised`): `simclr`, agg_risk")
    assert best.endswith("5 seeds. Not significantly worse than it: `simclr_head_none`, `simclr_bs64`. (model + seed "
                         "fixed effects over 45 runs, Holm.)")
    assert ("How differences were tested: one model over every run (model + seed fixed effects; 45 runs; 28 residual "
            "df; paired by seed: seeds share initialisation and data order)") in text
    con = pd.read_csv(res / "analysis" / "baseline_contrasts.csv")
    sig = _bullet(text, "- Differs from random init")
    non = _bullet(text, "- A difference from random init not shown (this zoo detects >= 3.2 points)")
    assert "Holm-adjusted CIs" in sig
    for r in con.itertuples():
        printed = (f"`{r.model}` {r.delta_agg_risk:+.1f} points [{r.delta_agg_risk_adj_lo:+.1f}, "
                   f"{r.delta_agg_risk_adj_hi:+.1f}]")
        assert printed in (sig if r.significant_agg_risk else non), printed
    # a constant component: said once, out of the means and their "largest"
    assert "`approx` is 41.5 % for every candidate (the reference's train->train error, constant" in text
    means = _bullet(text, "- Mean over the 12 candidates:")  # summary.json "candidates": references left out
    assert "approx" not in means and "(largest: usability)" in means


def test_an_unadjusted_ci_that_excludes_zero_under_not_significant_says_so(tmp_path):
    """Folders without the adjusted columns: a non-significant difference whose (unadjusted) CI excludes 0 is
    labelled, e.g. z_dim 64 -> 16 +4.8 [+2.6, +7.0] (p_Holm 0.11), every such row of both CSVs, never another."""
    res = _seeded(tmp_path / "res")
    for f in ("baseline_contrasts.csv", "controlled_pairs.csv"):
        _older(pd.read_csv(RESULTS / "analysis" / f)).to_csv(res / "analysis" / f, index=False)
    text = findings(res)
    pairs = pd.read_csv(res / "analysis" / "controlled_pairs.csv")
    con = pd.read_csv(res / "analysis" / "baseline_contrasts.csv")
    n_checked = 0
    for t, who in ((con, lambda r: f"`{r.model}` "), (pairs, lambda r: f"(`{r.model_a}` -> `{r.model_b}`) ")):
        for r in t.itertuples():
            item = re.search(re.escape(who(r)) + r"[^;(]*(\([^)]*\))?", text).group(0)
            excludes = r.delta_agg_risk_lo > 0 or r.delta_agg_risk_hi < 0
            assert ("unadjusted CI" in item) == (excludes and not r.significant_agg_risk), item
            n_checked += excludes and not r.significant_agg_risk
    assert n_checked >= 2
    z16 = pairs.set_index("model_b").loc["simclr_z16"]  # the example: excludes 0, not significant (old verdict)
    assert (f"z_dim 64 -> 16 (`simclr` -> `simclr_z16`) {z16.delta_agg_risk:+.1f} points [{z16.delta_agg_risk_lo:+.1f}, "
            f"{z16.delta_agg_risk_hi:+.1f}] (unadjusted CI)") in text


def test_two_datasets_get_their_own_findings_and_leaderboards(tmp_path):
    res = _seedless(tmp_path / "res")
    board = pd.read_csv(res / "leaderboard.csv")
    other = board.assign(dataset="jpegs_b", agg_risk=board["agg_risk"].where(board["model"] != "resnet_t", 25.0))
    pd.concat([board, other]).to_csv(res / "leaderboard.csv", index=False)
    summary = json.loads((res / "analysis" / "summary.json").read_text())
    summary["best"]["jpegs_b"] = {**summary["best"]["jpegs"], "model": "resnet_t", "value": 25.0, "lo": 22.5,
                                  "hi": 27.5, "top_group": ["resnet_t"]}
    (res / "analysis" / "summary.json").write_text(json.dumps(summary))
    text = findings(res)
    assert text.count("Findings on `") == 2 and "Findings on `jpegs_b` (4 models, no pretraining seeds;" in text
    bests = [line for line in text.splitlines() if line.startswith("- Best encoder")]
    assert "`vit_t`, agg_risk 31.2 %" in bests[0] and "`resnet_t`, agg_risk 25.0 % [22.5, 27.5]" in bests[1]
    assert "Every other candidate is significantly worse." in bests[1]
    page = write_page(res, provenance_info={}).read_text()
    assert "<table class='lb' id='leaderboard'>" in page and "<table class='lb' id='leaderboard-jpegs_b'>" in page
    second = page.split("id='leaderboard-jpegs_b'>")[1].split("</tr>")[1]  # its first body row: rank 1
    assert ">resnet_t<" in second


@pytest.mark.parametrize("rows, says", [
    ([{"model": "a", "dataset": "x", "agg_risk": 10.0}], "- Lowest risk: `a`, agg_risk 10.0 % (the only candidate)."),
    ([{"model": "a", "dataset": "x", "agg_risk": float("nan")}, {"model": "b", "dataset": "x", "agg_risk": 3.0,
                                                                    "is_reference": True}],
     "- No candidate has an agg_risk value (references excluded: `b`)."),
    ([{"model": "a", "dataset": "x", "agg_risk": 10.0, "is_reference": True}],
     "- No candidate: every model is a reference (`a`)."),
])
def test_degenerate_folders_get_findings_and_a_page(tmp_path, rows, says):
    res = tmp_path / "res"
    res.mkdir()
    pd.DataFrame(rows).to_csv(res / "leaderboard.csv", index=False)
    text = findings(res)
    assert says in text.splitlines(), text
    assert "<section class='findings' id='findings'>" in write_page(res, provenance_info={}).read_text()


def test_write_findings_script_wraps_the_same_text_for_any_folder(tmp_path):
    for name, make in (("seedless", _seedless), ("seeded", _seeded)):
        res = make(tmp_path / name)
        readme = tmp_path / f"{name}.md"
        readme.write_text("intro\n<!-- findings:start -->\nold\n<!-- findings:end -->\nrest\n")
        cmd = [sys.executable, str(SCRIPT), "--results", str(res), "--readme", str(readme)]
        assert subprocess.run(cmd + ["--check"], capture_output=True).returncode == 1
        subprocess.run(cmd, check=True, capture_output=True)
        assert readme.read_text() == f"intro\n<!-- findings:start -->\n{findings(res)}<!-- findings:end -->\nrest\n"
        assert subprocess.run(cmd + ["--check"], capture_output=True).returncode == 0


# ------------------------------------------------------------------------------------------------ the page
def _page(res: Path) -> str:
    return write_page(res, provenance_info={"riskdecomp": "test"}).read_text()


def test_leaderboard_ranks_candidates_marks_references_and_orders_fewshot_numerically(tmp_path):
    for make in (_seedless, _seeded):
        res = make(tmp_path / make.__name__)
        board = pd.read_csv(res / "leaderboard.csv")
        view = leaderboard_view(board, constant=("approx",))
        few = [c for c in view.columns if c.startswith("fewshot_")]
        assert few == [c for c in FEW_ORDER if c in board] and len(few) == 6
        assert "approx" not in view and {"agg_risk_lo", "agg_risk_hi", "n_seeds", "flags"} <= set(view.columns)
        refs = set(board.loc[board["is_reference"], "model"])
        assert list(view.loc[view["rank"] == "ref", "model"]) == sorted(refs)
        cand = view[view["rank"] != "ref"]
        assert list(cand["rank"]) == [str(i) for i in range(1, len(cand) + 1)]
        assert cand["agg_risk"].is_monotonic_increasing and not set(cand["model"]) & refs
        page = _page(res)
        head = page.split("<table class='lb' id='leaderboard'>")[1].split("</thead>")[0]
        assert re.findall(r"<th>(\d+(?:shot|pct))</th>", head) == ["1shot", "3shot", "5shot", "10shot", "1pct",
                                                                 "10pct"]
        assert "<th>approx</th>" not in head and "<th>seeds</th>" in head and "flags" in head
        assert page.count("Shared baseline: <b>approx") == 1
        first = page.split("<tbody>")[1].split("</tr>")[0]
        assert f">{cand['model'].iloc[0]}<" in first  # rank 1 is a candidate, never the reference
        assert "references (not candidates)" in page
    taus = re.search(r"Kendall tau of each few-shot ranking vs the full-shot ranking: ([^<]*)<", page).group(1)
    assert re.findall(r"(\d+(?:shot|pct)) ", taus) == ["1shot", "3shot", "5shot", "10shot", "1pct", "10pct"]


def test_analysis_summary_does_not_count_a_constant_component_as_largest(tmp_path):
    page = _page(_seeded(tmp_path / "res"))
    summary = page.split("<h2>Analysis summary</h2>")[1].split("<h2>")[0]
    approx_row = re.search(r"<tr><td class='t'>approx</td>.*?</tr>", summary).group(0)
    assert "shared baseline, not counted" in approx_row and ">13<" not in approx_row
    counts = re.findall(r"<td class='t'>(usability|probe_gen|enc_gen)</td>(?:<td[^>]*>[^<]*</td>){2}"
                        r"<td class='t'>(\d+)</td>", summary)
    assert sum(int(n) for _, n in counts) == 12  # the 12 candidates, the supervised reference not counted


def test_significance_table_shows_the_ci_of_the_verdict_and_says_which(tmp_path):
    res = _seeded(tmp_path / "res")
    page = _page(res)
    assert "95 % CI adjusted like the verdict (Holm)" in page
    con = pd.read_csv(res / "analysis" / "baseline_contrasts.csv")
    r = con.iloc[-1]
    assert f"{r.delta_agg_risk:+.2f} [{r.delta_agg_risk_adj_lo:+.2f}, {r.delta_agg_risk_adj_hi:+.2f}]" in page
    for f in ("baseline_contrasts.csv", "controlled_pairs.csv"):  # without adjusted columns: labelled unadjusted
        _older(pd.read_csv(RESULTS / "analysis" / f)).to_csv(res / "analysis" / f, index=False)
    assert "95 % CI per comparison, unadjusted" in _page(res)


def test_known_limits_of_the_estimates_are_shown_next_to_the_leaderboard(tmp_path):
    """riskdecomp.estimators.calibration's COMPONENT_LIMITS (one sentence per column, from the known-truth
    simulation) follow the leaderboard, before the analysis summary, every sentence of it."""
    import html

    from riskdecomp.estimators.calibration import COMPONENT_LIMITS

    res = _seedless(tmp_path / "res")
    page = _page(res)
    first = page.split("<h2>Leaderboard</h2>")[1].split("<h2>Analysis summary</h2>")[0]
    assert "Known limits of the estimates" in first
    for column, sentence in COMPONENT_LIMITS.items():
        assert f"<code>{column}</code>: {html.escape(sentence)}" in first, column


def test_report_of_the_committed_results_links_raw_tables_instead_of_cutting_them(tmp_path):
    """Through the CLI on the committed results (real output): no table says "more rows not shown", the raw
    per-run tables (label efficiency, 675 rows; uncertainty metrics, 31,188) are not in the page but linked by
    relative links to files that exist, and every CSV of the folder is linked."""
    res = tmp_path / "results"
    res.mkdir()
    for f in ("leaderboard.csv", "leaderboard_seeds.csv", "label_efficiency.csv", "uncertainty.csv"):
        shutil.copy(RESULTS / f, res / f)
    shutil.copytree(RESULTS / "per_sample", res / "per_sample")
    assert run_cli(["report", "--results", str(res)]) in (0, None)
    page = (res / "report.html").read_text()
    # the report opens with the findings, the very sentences write_findings.py puts in a README
    assert f"<section class='findings' id='findings'>{findings_html(res)}</section>" in page
    assert page.index("id='findings'") < page.index("<h2>Leaderboard</h2>") < page.index("<h2>Figures</h2>")
    assert "more rows not shown" not in page and "rows not shown" not in page
    assert "<h2>Label efficiency</h2>" not in page and "<h2>Uncertainty metrics</h2>" not in page
    links = re.findall(r"<a href='([^']+)'>", page)
    csvs = sorted(p.relative_to(res).as_posix() for p in [*res.glob("*.csv"), *(res / "analysis").glob("*.csv")])
    assert sorted(links) == csvs and "label_efficiency.csv" in links and "analysis/baseline_contrasts.csv" in links
    n = len(pd.read_csv(res / "uncertainty.csv"))
    assert f"uncertainty.csv</a> ({n:,} rows)" in page
    assert f"<code>per_sample/</code>: {len(list((res / 'per_sample').glob('*.csv')))} files" in page
    # every bounded table is complete: each of its rows is in the CSV it comes from
    con = pd.read_csv(res / "analysis" / "baseline_contrasts.csv")
    assert all(f"{m} − {b}" in page for m, b in zip(con["model"], con["baseline"]))


# ------------------------------------------------------------------------------------------------ in a browser
def _chromium():
    sys.path.insert(0, str(ROOT / "tests" / "journeys"))
    from browser import Browser, find_chromium

    path = find_chromium()
    if path is None:  # as the browser journey: a CI run must have it (.ci/run installs it)
        msg = "needs Chromium (apt-get install chromium; .ci/run installs it)"
        if any(os.environ.get(v, "").lower() not in ("", "0", "false") for v in ("CI", "RISKDECOMP_REQUIRE_SHARED")):
            pytest.fail(f"CI run: {msg}", pytrace=False)
        pytest.skip(msg)
    return Browser, path


_LAYOUT = """(() => {
  const lb = document.getElementById('leaderboard');
  const best = [...document.querySelectorAll('#findings li')].find(li => /^(Best encoder|Lowest risk)/.test(
      li.textContent));
  return {lbScroll: lb.scrollWidth, lbClient: lb.clientWidth, lbRight: lb.getBoundingClientRect().right,
          lbWidth: lb.getBoundingClientRect().width, boxClient: lb.parentElement.clientWidth,
          boxScroll: lb.parentElement.scrollWidth,
          docScroll: document.documentElement.scrollWidth, docClient: document.documentElement.clientWidth,
          bestText: best ? best.textContent : null, bestTop: best ? best.getBoundingClientRect().top : null,
          bestBottom: best ? best.getBoundingClientRect().bottom : null, height: window.innerHeight};
})()"""


def test_first_screen_at_1400px_answers_and_the_leaderboard_does_not_scroll_sideways(tmp_path):
    Browser, path = _chromium()
    shots = []
    with Browser(path, width=1400, height=900) as browser:
        for make in (_seedless, _seeded):
            res = make(tmp_path / make.__name__)
            html_path = write_page(res, provenance_info={"riskdecomp": "test"})
            browser.open(html_path)
            got = browser.evaluate(_LAYOUT)
            assert got["bestText"] and got["bestText"].startswith("Best encoder"), got
            assert 0 <= got["bestTop"] and got["bestBottom"] <= got["height"], got  # on the first screen
            assert got["lbScroll"] <= got["lbClient"] and got["docScroll"] <= got["docClient"], got
            assert got["lbWidth"] <= got["boxClient"] and got["boxScroll"] <= got["boxClient"], got
            assert got["lbRight"] <= 1400, got
            assert browser.errors() == []
            shots.append(browser.screenshot(tmp_path / f"{make.__name__}.png"))
    assert all(s.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for s in shots)


# ------------------------------------------------------------------------------------------------ the README
_NUMBER = re.compile(r"(?<![\w.])[-+−]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w]|\.\d)")
#: the protocol's constants the findings state (95 % CIs, the 0.05 level): not results
PROTOCOL_NUMBERS = {"95", "0.05"}


_IDS = ("model", "model_a", "model_b", "baseline", "base_model", "dataset")


def _numbers(o) -> list:
    """Every number in a JSON value or a cell (numbers written inside strings too)."""
    if isinstance(o, dict):
        return [x for v in o.values() for x in _numbers(v)]
    if isinstance(o, list):
        return [x for v in o for x in _numbers(v)]
    if isinstance(o, (int, float, np.integer, np.floating)) and not isinstance(o, bool):
        return [float(o)] if np.isfinite(o) else []
    if isinstance(o, str):
        return [float(x.replace("−", "-")) for x in _NUMBER.findall(o)]
    return []


def _rows(results: Path) -> list[tuple[set, np.ndarray]]:
    """(the names a row is about: model, model_a, model_b, baseline, dataset; its numbers) of every row of
    leaderboard*.csv and analysis/*.csv."""
    out = []
    for f in [*results.glob("leaderboard*.csv"), *(results / "analysis").glob("*.csv")]:
        t = pd.read_csv(f)
        ids = [c for c in _IDS if c in t]
        for row in t.to_dict("records"):
            out.append(({str(row[c]) for c in ids}, np.array(_numbers(list(row.values())), dtype=float)))
    return out


def _matches(token: str, values: np.ndarray) -> bool:
    """``token`` is some value printed at its precision (decimals, or 2 significant digits in e-notation)."""
    x = float(token.replace("−", "-"))
    if "e" in token:
        mant = token.split("e")[0]
        digits = len(mant.split(".")[1]) if "." in mant else 0
        return bool(np.any(np.isclose(values, x, rtol=0.5 * 10.0 ** -digits / abs(float(mant)), atol=0)))
    digits = len(token.split(".")[1]) if "." in token else 0
    half = 0.5 * 10.0 ** -digits + 1e-9
    if token.lstrip("+-−").startswith("0.") or digits:
        return bool(np.any(np.abs(values - x) <= half))
    return bool(np.any(values == x)) or bool(np.any(np.abs(values - x) <= half))


def test_every_number_of_the_readme_findings_is_a_value_of_the_results():
    """Each number of the README's findings paragraph is a value of the results at the precision it is printed
    with: of summary.json, or of a row of results/leaderboard*.csv / results/analysis/*.csv about a model (or the
    dataset) that the same clause names in backticks. The paragraph is what write_findings.py writes from results/
    (tests/test_committed_results.py); a number computed on the way (a mean of standard deviations) fails."""
    text = (ROOT / "README.md").read_text().split("<!-- findings:start -->")[1].split("<!-- findings:end -->")[0]
    summary = np.array(_numbers(json.loads((RESULTS / "analysis" / "summary.json").read_text())), dtype=float)
    rows = _rows(RESULTS)
    missing, n = [], 0
    for clause in re.split(r"; |\n", text):
        names = set(re.findall(r"`([^`]*)`", clause))
        pool = [summary] + [v for ids, v in rows if ids & names]
        values = np.concatenate(pool)
        for token in _NUMBER.findall(re.sub(r"`[^`]*`", " ", clause)):
            n += 1
            if token not in PROTOCOL_NUMBERS and not _matches(token, values):
                missing.append((token, clause[:80]))
    assert n > 50 and missing == [], missing

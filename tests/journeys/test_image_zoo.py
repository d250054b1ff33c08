"""Journeys of a user with a zoo of real encoders on a folder of real JPEGs, default flags throughout."""

import shutil

import pandas as pd
import pytest
from conftest import MIXED_MODELS, assert_journey_ok

pytestmark = [pytest.mark.journey, pytest.mark.shared, pytest.mark.slow]
# 'Not drawn' notes the data of these runs justifies (see tests/test_report.py for which notes exist): a scaling law
# fitted to 1-epoch encoders on 120 JPEGs is drawn only when its R² reaches 0.5 (issue 21)
JUSTIFIED = ("scaling law: not shown:",)


def test_mixed_zoo_on_jpegs(mixed_run):
    """timm ViT / ResNet / ConvNeXt with weights files, a checkpoint, precomputed features and a recipe in one zoo:
    every model gets a complete row and the report draws every figure."""
    run, out = mixed_run
    assert_journey_ok(run, out, MIXED_MODELS, justified_notes=JUSTIFIED)


def _records(out):
    """Bytes and modification time of every run record (``runs/_*.json`` is the folder's bookkeeping)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "runs").glob("*.json")
            if not p.name.startswith("_")}


def test_rerun_reuses_every_record(mixed_run, riskdecomp, mixed_zoo, cifar):
    """The same command again: every record is reused (untouched), the leaderboard is byte-identical."""
    run, out = mixed_run
    assert run.rc == 0, run
    before = _records(out)
    board = (out / "leaderboard.csv").read_bytes()
    again = riskdecomp("evaluate", "--zoo", mixed_zoo, "--dataset", f"imagefolder:{cifar}", "--out", out,
                       label="rerun of the same evaluate (records reused)")
    assert_journey_ok(again, out, MIXED_MODELS, justified_notes=JUSTIFIED)
    assert (out / "leaderboard.csv").read_bytes() == board
    assert _records(out) == before and len(before) == len(MIXED_MODELS)
    assert again.seconds < run.seconds


def test_models_subset_adds_to_existing_results(mixed_run, riskdecomp, mixed_zoo, cifar, tmp_path):
    """``--models a,b`` into an existing --out: the two are (re)used and the other models' rows stay."""
    run, out = mixed_run
    assert run.rc == 0, run
    out = shutil.copytree(out, tmp_path / "results")
    sub = riskdecomp("evaluate", "--zoo", mixed_zoo, "--dataset", f"imagefolder:{cifar}", "--out", out,
                     "--models", "vit_t,pixels", label="evaluate --models vit_t,pixels into the same --out")
    assert_journey_ok(sub, out, MIXED_MODELS, justified_notes=JUSTIFIED)
    assert len(pd.read_csv(out / "leaderboard.csv")) == len(MIXED_MODELS)


def test_zoo_without_seeds_gets_pairwise_verdicts_and_a_best_encoder(mixed_run):
    """Issue 21: a zoo with no pretraining seeds (timm encoders, a checkpoint, features, a recipe on real JPEGs) gets
    every pair of candidates compared on the shared test points (paired per-sample errors, Holm) in
    analysis/comparisons.csv, a best encoder that is not a reference with its top group in summary.json, and the
    CLI summary prints them."""
    import itertools
    import json

    from riskdecomp.analysis.inference import reference_models

    run, out = mixed_run
    assert run.rc == 0, run
    board = pd.read_csv(out / "leaderboard.csv")
    refs = reference_models(board)
    cands = [m for m in board["model"] if m not in refs]
    comp = pd.read_csv(out / "analysis" / "comparisons.csv")
    pw = comp[(comp["family"] == "pairwise") & (comp["outcome"] == "agg_risk")]
    assert {frozenset(p) for p in zip(pw["model_a"], pw["model_b"])} == {
        frozenset(p) for p in itertools.combinations(cands, 2)}
    assert pw["p"].notna().all() and pw["p_holm"].notna().all() and pw["significant"].isin([True, False]).all()
    assert pw["method"].str.contains("paired per-sample errors over").all()
    assert pw["method"].str.contains("no seed replication").all()  # one run per model: said, not hidden
    best = json.loads((out / "analysis" / "summary.json").read_text())["best"]
    (ds, b), = best.items()
    assert b["model"] in cands and b["model"] not in refs and b["references"] == refs
    assert b["top_group"][0] == b["model"] and set(b["top_group"]) <= set(cands)
    assert b["n_candidates"] == len(cands) and b["n_seeds"] == 1
    vs = comp[(comp["family"] == "vs_best") & (comp["outcome"] == "agg_risk")]
    worse = set(vs.loc[vs["significant"].astype(bool) & (vs["delta"] > 0), "model_b"])
    assert set(b["top_group"]) == set(cands) - worse
    assert f"  best encoder      {b['model']} on {ds}: agg_risk {b['value']:.2f}" in run.output
    assert f"  top group         {len(b['top_group'])} of {len(cands)} candidate(s) not significantly worse" \
        in run.output
    # ... and the report's first block says the same: the best encoder (not a reference) and its top group
    import html as _html
    import re

    page = _html.unescape(re.sub(r"<[^>]+>", "", (out / "report.html").read_text()))
    first = page[:page.index("Leaderboard")]
    assert f"Best encoder of {len(cands)} candidates" in first and f"{b['model']}, agg_risk {b['value']:.1f} %" in first
    others = [m for m in b["top_group"] if m != b["model"]]
    if others:
        assert "Not significantly worse than it: " + ", ".join(others) in first
    else:
        assert "Every other candidate is significantly worse." in first

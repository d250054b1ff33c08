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

"""The committed ``results/`` are the main job's real output for the committed default zoo (``model_zoo.yaml`` on
the embedded ``cifar10-mini``), and the README's findings paragraph is generated from them. These tests fail when
the zoo, the results and the README drift apart (regenerate: README, "The default zoo")."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from riskdecomp.cli import main
from riskdecomp.utils.names import split_seed

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def _zoo_seeds(capsys) -> dict:
    capsys.readouterr()
    assert main(["zoo", "list", "--zoo", str(ROOT / "model_zoo.yaml"), "--expanded"]) in (0, None)
    seeds: dict = {}
    for e in yaml.safe_load(capsys.readouterr().out)["models"]:
        base, s = split_seed(e["name"])
        seeds.setdefault(base, set()).add(s)
    return seeds


def test_results_are_the_default_zoos_with_every_component_informative(capsys):
    board = pd.read_csv(RESULTS / "leaderboard.csv")
    seeds = _zoo_seeds(capsys)
    assert list(board["model"]) == list(seeds) and set(board["dataset"]) == {"cifar10-mini"}
    for r in board.itertuples():
        assert set(map(int, str(r.pretrain_seeds).split("|"))) == seeds[r.model] and r.n_seeds == len(seeds[r.model])
    # every model, the supervised reference included: the train->train error and approx are clearly above 0
    assert (board["err_train_train"] > 5).all() and (board["approx"] > 5).all()
    assert (board["approx_lo"] < board["approx"]).all() and (board["approx"] < board["approx_hi"]).all()
    assert not board["approx_merged"].any()
    per_run = pd.read_csv(RESULTS / "leaderboard_seeds.csv")
    assert len(per_run) == sum(len(s) for s in seeds.values())


def test_readme_findings_are_generated_from_the_committed_results():
    cmd = [sys.executable, str(ROOT / "scripts" / "write_findings.py"), "--results", str(RESULTS), "--readme",
           str(ROOT / "README.md"), "--check"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_committed_report_marks_significance_and_ranking_stability():
    page = (RESULTS / "report.html").read_text()
    assert "<figure id='seed_contrasts'>" in page and "<figure id='seed_ranking_cifar10-mini'>" in page
    assert "class='note'>Not drawn" not in page
    contrasts = pd.read_csv(RESULTS / "analysis" / "baseline_contrasts.csv")
    # the headline contrasts of the default zoo (README findings): both significant after Holm's correction
    sig = contrasts.set_index("model")["significant_agg_risk"]
    assert bool(sig["supervised"]) and bool(sig["simclr"])

"""Real images (../shared): active learning on the same footing as few-shot. A CLI ``evaluate`` run on CIFAR-10 JPEGs;
random acquisition at n = k K labels agrees with the k-shot error (fewshot.csv, the leaderboard's fewshot_<k>shot)
within their CIs, is never below chance, and every fit's C was chosen (the curves carry it) as few-shot chooses it."""

import json

import numpy as np
import pandas as pd
import pytest
from test_pretrain import _extract
from zoo_factory import run_cli

from riskdecomp.estimators import active
from riskdecomp.estimators.selection import DEFAULT_GRID

RECIPE = {"backbone": "smallcnn", "width": 8, "z_dim": 16, "epochs": 3, "batch_size": 100, "lr": 3e-3, "image_size": 16}


@pytest.fixture(scope="module")
def real_run(shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar-active")
    src = shared_dir / "data" / "cifar10-jpg"
    _extract(src / "cifar10_train_jpg.tar.gz", root / "data" / "train", 30)
    _extract(src / "cifar10_test_jpg.tar.gz", root / "data" / "test", 30)
    zoo = root / "zoo.yaml"
    zoo.write_text(json.dumps({"models": [
        {"name": "supervised", "source": "recipe", "recipe": {"objective": "supervised", "seed": 0, **RECIPE,
                                                              "head": {"kind": "none"}}},
        {"name": "init", "source": "recipe", "recipe": {"objective": "init", "seed": 0, **RECIPE,
                                                        "head": {"kind": "none"}}},
    ]}))
    out = root / "out"
    assert run_cli("evaluate", "--zoo", str(zoo), "--dataset", f"imagefolder:{root / 'data'}", "--out", str(out),
                   "--cache-dir", str(root / "cache"), "--jobs", "1", "--no-progress", "--no-report",
                   "--no-uncertainty", "--no-statistics", "--n-boot", "20", "--shots", "3,5,10", "--fractions", "0.1",
                   "--fewshot-seeds", "5") == 0
    return out


def test_random_acquisition_agrees_with_fewshot_at_equal_labels_on_real_images(real_run):
    out = real_run
    curves = pd.read_csv(out / "active_learning.csv")
    fewshot = pd.read_csv(out / "fewshot.csv")
    board = pd.read_csv(out / "leaderboard.csv").set_index("model")
    K = int(board["n_classes"].iloc[0])
    assert K == 10 and set(curves["model"]) == {"supervised", "init"}
    # never below chance: every acquisition's seed-mean accuracy at every number of labels
    mean = curves.groupby(["model", "acquisition", "n_labels"])["accuracy"].mean()
    assert (mean >= 1 / K).all(), mean[mean < 1 / K]
    rand = curves[curves.acquisition == "random"]
    n_test = int(board["n_test"].iloc[0])
    for model in ("supervised", "init"):
        for k in (3, 5, 10):
            fs = fewshot[(fewshot.model == model) & (fewshot.setting == f"{k}shot")]["error"].to_numpy() / 100
            assert 100 * fs.mean() == pytest.approx(board.loc[model, f"fewshot_{k}shot"])
            acc = rand[(rand.model == model) & (rand.n_labels == k * K)]["accuracy"].to_numpy()
            assert len(acc) == 2 and len(fs) == 5
            # CI of the difference: seed spread of both, plus the test-point noise of each mean (binomial)
            p = 1 - fs.mean()
            var = fs.var(ddof=1) / len(fs) + acc.var(ddof=1) / len(acc) + 2 * p * (1 - p) / n_test
            diff = acc.mean() - (1 - fs.mean())
            assert abs(diff) <= 1.96 * np.sqrt(var), (model, k, acc, fs)
    # the encoder that learned something is clearly above chance at 10 labels per class, by both estimates
    sup = rand[(rand.model == "supervised") & (rand.n_labels == 10 * K)]["accuracy"].mean()
    assert sup > 1.5 / K and 100 - board.loc["supervised", "fewshot_10shot"] > 150 / K
    # every fit's C was chosen on the grid (not fixed), and the records say under which protocol
    on_grid = np.isclose(curves["C"].to_numpy()[:, None], DEFAULT_GRID[None, :], rtol=1e-4).any(axis=1)
    assert on_grid.all() and curves.groupby("model")["C"].nunique().gt(1).all()
    for p in (out / "runs").glob("*@*.json"):
        assert json.loads(p.read_text()).get("active_protocol") == getattr(active, "ACTIVE_PROTOCOL", 0)

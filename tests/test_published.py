"""The published 169-model table, imported into our leaderboard schema."""

import numpy as np
import pytest

from riskdecomp.analysis.published import load_published
from riskdecomp.utils.errors import RiskdecompError
from riskdecomp.utils.schema import COMPONENTS


@pytest.fixture(scope="module")
def published(shared_dir):
    return load_published(shared_dir / "reference" / "ssl-risk-decomposition" / "all_results.csv")


def test_shape_index_and_constants(published):
    assert len(published) == 169
    assert published.index.name == "model"
    assert (published.index == published.index.str.lower()).all()
    assert published.index.is_unique
    assert (published["dataset"] == "imagenet").all()
    assert (published["source"] == "published").all()
    assert (published["n_train"] == 1_281_167).all() and (published["n_sub"] == 50_000).all()
    assert (published["n_classes"] == 1000).all()
    # the objective's own number of classes is kept under another name (clash with n_classes)
    assert published["ssl_n_classes"].notna().sum() == 169 - 111
    for col in ["agg_risk", "fewshot_30shot", "fewshot_5shot", "fewshot_3shot", "fewshot_1pct",
                "objective", "ssl_mode", "architecture", "family", "patch_size", "z_dim", "epochs",
                "batch_size", "nviews", "n_augmentations", "projection2_arch", "pretraining_data",
                "year", "is_industry", "is_official", "n_parameters", "train_rank", "train_nc1"]:
        assert col in published, col


def test_missing_values_stay_missing(published):
    assert published["approx"].isna().sum() == 23
    assert published["usability"].isna().sum() == 23
    assert published["probe_gen"].notna().all() and published["agg_risk"].notna().all()
    assert published["fewshot_30shot"].isna().sum() == 2


def test_components_sum_to_aggregated_risk_when_unclipped(published):
    comps = published[list(COMPONENTS)]
    unclipped = (comps > 0).all(axis=1)
    assert unclipped.sum() == 122
    diff = (comps.sum(axis=1) - published["agg_risk"])[unclipped].abs()
    assert diff.max() < 1e-6  # exact in the file (0.0)
    # clipping to zero only ever increases the sum (a negative estimate became 0)
    clipped = comps.notna().all(axis=1) & ~unclipped
    assert (comps.sum(axis=1)[clipped] >= published["agg_risk"][clipped] - 1e-9).all()
    assert published.loc[clipped, [f"{c}_was_clipped" for c in COMPONENTS]].any(axis=1).all()


def test_statistics_identities(published):
    for split, rank in [("train", "train"), ("test", "test"), ("trainaug", "train"), ("testrealaug", "test")]:
        np.testing.assert_allclose(published[f"{split}_vars"],
                                   published[f"{split}_intra_var"] / published[f"{split}_inter_var"], rtol=1e-9)
        np.testing.assert_allclose(published[f"{split}_nc1norm"],
                                   published[f"{split}_nc1"] / np.sqrt(published[f"{rank}_rank"]), rtol=1e-9)
    assert published.loc["dino_rn50", "train_rank"] == 617
    assert published.loc["dino_rn50", "train_vars"] == pytest.approx(2.731, abs=1e-3)


def test_bad_paths_raise_one_line_errors(tmp_path):
    with pytest.raises(RiskdecompError, match="not found"):
        load_published(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(RiskdecompError):
        load_published(bad)

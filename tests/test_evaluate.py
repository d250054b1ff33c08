"""`riskdecomp evaluate` end to end on a small precomputed-features zoo: outputs, identity, resumption,
determinism, failures, parallel and dask execution."""

import json

import numpy as np
import pandas as pd
import pytest
from zoo_factory import FAST, make_features_zoo, run_cli

from riskdecomp.runner.pipeline import evaluate
from riskdecomp.runner.records import Settings

COMPONENTS = ["approx", "usability", "probe_gen", "enc_gen"]


def fast_settings(**kw):
    base = dict(n_boot=50, fewshot_seeds=2, shots=(1, 5), fractions=(0.1,), active_seeds=2,
                active_budget_per_class=10, uncertainty_boot=50, progress=False, threads=1)
    base.update(kw)
    return Settings(**base)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return make_features_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def full_run(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    res = evaluate(zoo, "digits", out, cache_dir=out / "cache", settings=fast_settings())
    return res, out


def test_leaderboard_rows_satisfy_the_identity_with_cis_and_fewshot(full_run):
    res, out = full_run
    board = pd.read_csv(out / "leaderboard.csv")
    assert list(board["model"]) == ["sup", "good", "weak"] and set(board["dataset"]) == {"synth"}
    ref = board  # every row, the reference's too (it is its own reference)
    total = ref[COMPONENTS].sum(axis=1)
    np.testing.assert_allclose(total, ref["agg_risk"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(ref["agg_risk"], ref["err_test"], atol=1e-7)
    for c in COMPONENTS + ["agg_risk"]:
        assert {f"{c}_lo", f"{c}_hi"} <= set(board.columns)
        ok = ref[[f"{c}_lo", c, f"{c}_hi"]].dropna()
        assert (ok[f"{c}_lo"] <= ok[c] + 1e-9).all() and (ok[c] <= ok[f"{c}_hi"] + 1e-9).all()
    assert {"fewshot_1shot", "fewshot_5shot", "fewshot_10pct"} <= set(board.columns)
    # a weaker representation has a larger aggregated risk; the reference is its own reference: approx = its
    # train->train error (the approx of every entry that references it), usability = 0
    b = board.set_index("model")
    assert b.loc["weak", "agg_risk"] > b.loc["good", "agg_risk"]
    assert not board["approx_merged"].any()
    assert b.loc["sup", "approx"] == b.loc["sup", "err_train_train"] == b.loc["good", "approx"]
    assert b.loc["sup", "usability"] == 0 and b.loc["sup", "approx_lo"] <= b.loc["sup", "approx_hi"]
    assert board.set_index("model").loc["good", "objective"] == "simclr"
    assert (out / "runs" / "good@synth.json").exists()


def test_uncertainty_and_active_outputs(full_run):
    _res, out = full_run
    unc = pd.read_csv(out / "uncertainty.csv")
    assert list(unc.columns[:8]) == ["model", "dataset", "score", "target", "metric", "value", "ci_lo", "ci_hi"]
    assert {"err01", "loss"} <= set(unc["target"]) and "auroc" in set(unc["metric"])
    assert "ens_nc_100" in set(unc["score"]) or any(s.startswith("ens_nc") for s in unc["score"])
    ps = pd.read_csv(out / "per_sample" / "good@synth.csv")
    assert len(ps) == 80 and {"err01", "loss"} <= set(ps.columns)
    al = pd.read_csv(out / "active_learning.csv")
    assert list(al.columns[:6]) == ["model", "acquisition", "seed", "n_labels", "accuracy", "worst_class_accuracy"] \
        or {"model", "acquisition", "seed", "n_labels", "accuracy", "worst_class_accuracy"} <= set(al.columns)
    assert (out / "label_efficiency.csv").exists()


def test_ensemble_scores_have_their_own_file_and_per_sample_files_stay_as_the_jobs_wrote_them(zoo, full_run,
                                                                                              tmp_path):
    """The zoo-wide stage writes ``ensemble/<dataset>.csv`` and never rewrites a job's per-sample file; the
    uncertainty metrics join the two. A folder of the earlier layout (``ens_*`` columns inside per-sample files, an
    older stage key) gets its stages redone once, with the same numbers."""
    import shutil

    _res, out = full_run
    ens = pd.read_csv(out / "ensemble" / "synth.csv")
    assert list(ens.columns[:2]) == ["index", "y"] and len(ens) == 80
    # k = n_train // 10 = 24; ens_var is NaN: the two SSL members have different widths (12, 16)
    assert set(ens.columns[2:]) == {"ens_nc_24", "ens_var"} and ens["ens_var"].isna().all()
    assert ens["ens_nc_24"].between(0, 1).all() and ens["ens_nc_24"].gt(0).any()
    for f in (out / "per_sample").glob("*.csv"):
        assert not [c for c in pd.read_csv(f).columns if c.startswith("ens_")], f.name
    unc = pd.read_csv(out / "uncertainty.csv")
    ens_rows = unc[unc["score"].str.startswith("ens_")]
    assert set(ens_rows["model"]) == {"sup", "good", "weak"}  # scored against every model's errors

    old = tmp_path / "old"
    shutil.copytree(out, old)
    ps_path = old / "per_sample" / "good@synth.csv"
    ps = pd.read_csv(ps_path)
    ps["ens_nc_10"] = 0.5  # what an earlier release left in a per-sample file: stale, must not be scored
    ps.to_csv(ps_path, index=False)
    shutil.rmtree(old / "ensemble")
    (old / "runs" / "_zoo_stages.json").write_text(json.dumps({"uncertainty": "an earlier stage key"}))
    written = {f.name: f.read_bytes() for f in (old / "per_sample").glob("*.csv")}
    evaluate(zoo, "digits", old, cache_dir=out / "cache", settings=fast_settings())
    assert (old / "ensemble" / "synth.csv").read_bytes() == (out / "ensemble" / "synth.csv").read_bytes()
    assert (old / "uncertainty.csv").read_bytes() == (out / "uncertainty.csv").read_bytes()
    assert {f.name: f.read_bytes() for f in (old / "per_sample").glob("*.csv")} == written


def test_an_entry_whose_test_points_differ_is_left_out_of_the_ensemble_with_a_warning(tmp_path, caplog):
    """Two precomputed-features entries may name one dataset and hold different points: the ensemble is made of the
    members that agree (one warning names the other), and it is scored only against models on the same points."""
    import logging

    from zoo_factory import synthetic_features

    root = tmp_path / "zoo"
    zoo = make_features_zoo(root, extra_models=["""
        - name: other
          source: features
          path: other.npz
          reference: null
          metadata: {objective: byol, ssl_mode: siamese, architecture: mlp, family: mlp, z_dim: 8}
    """])
    x_tr, y_tr, x_te, y_te = synthetic_features(np.random.default_rng(5), 240, 80, 4, 8, 1.0)
    np.savez(root / "other.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=np.roll(y_te, 1))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="riskdecomp"):
        evaluate(zoo, "digits", out, cache_dir=out / "cache", settings=fast_settings(active=False))
    warned = [r.getMessage() for r in caplog.records if "left out of the ensemble" in r.getMessage()]
    assert len(warned) == 1 and "'other'" in warned[0] and "'good'" in warned[0]
    ens = pd.read_csv(out / "ensemble" / "synth.csv")
    assert np.array_equal(ens["y"], pd.read_csv(out / "per_sample" / "good@synth.csv")["y"])
    unc = pd.read_csv(out / "uncertainty.csv")
    scored = set(unc.loc[unc["score"].str.startswith("ens_"), "model"])
    assert scored == {"sup", "good", "weak"}  # not "other": its test points are not the ensemble's


def test_rerun_reuses_records_and_is_byte_identical(zoo, full_run):
    res, out = full_run
    before = (out / "leaderboard.csv").read_bytes()
    res2 = evaluate(zoo, "digits", out, cache_dir=out / "cache", settings=fast_settings())
    assert all(r.get("skipped") for r in res2.records)
    assert (out / "leaderboard.csv").read_bytes() == before
    timings = pd.read_csv(out / "timings.csv")
    assert timings["reused"].all()


def test_same_seed_fresh_run_is_byte_identical(zoo, full_run, tmp_path):
    _res, out = full_run
    again = evaluate(zoo, "digits", tmp_path, cache_dir=tmp_path / "cache", settings=fast_settings())
    assert again.ok
    assert (tmp_path / "leaderboard.csv").read_bytes() == (out / "leaderboard.csv").read_bytes()


def test_a_failing_model_is_recorded_and_the_others_complete(tmp_path, capsys):
    zoo = make_features_zoo(tmp_path / "z", extra_models=["""
        - name: broken
          source: checkpoint
          architecture: resnet18
          weights: missing.safetensors
        """])
    code = run_cli("evaluate", "--zoo", str(zoo), "--out", str(tmp_path / "out"), "--cache-dir",
                   str(tmp_path / "c"), "--no-uncertainty", "--no-active", *FAST)
    assert code == 1
    fails = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert list(fails["model"]) == ["broken"] and "not found" in fails["error"][0]
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert list(board["model"]) == ["sup", "good", "weak"] and board["agg_risk"].notna().all()
    err = capsys.readouterr().err
    assert "broken" in err and "Traceback" not in err


def test_parallel_jobs_match_serial(zoo, full_run, tmp_path):
    _res, out = full_run
    par = evaluate(zoo, "digits", tmp_path, cache_dir=tmp_path / "cache", settings=fast_settings(), jobs=2)
    assert par.ok
    serial = {p.name for p in out.glob("*.csv")} - {"timings.csv"}
    assert {"leaderboard.csv", "uncertainty.csv"} <= serial  # the per-record uncertainty metrics run in 2 processes
    assert serial == {p.name for p in tmp_path.glob("*.csv")} - {"timings.csv"}
    for name in sorted(serial):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_dask_local_cluster_matches_serial(zoo, full_run, tmp_path):
    distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
    _res, out = full_run
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        res = evaluate(zoo, "digits", tmp_path, cache_dir=tmp_path / "cache", settings=fast_settings(),
                       backend="dask", scheduler=cl.scheduler_address)
    assert res.ok
    assert (tmp_path / "leaderboard.csv").read_bytes() == (out / "leaderboard.csv").read_bytes()
    rec = json.loads((tmp_path / "runs" / "good@synth.json").read_text())
    assert rec["model"] == "good"


def test_encoder_scores_posterior_variance_and_augmentation_consistency(tmp_path):
    """Scores that need the encoder itself: a stochastic recipe's per-sample table carries ``post_var`` (mean
    predicted variance: positive, varying across points), a deterministic recipe has none; both get the
    augmentation-consistency scores (in [0, 1]) and the testaug_* statistics; uncertainty.csv scores them all."""
    tiny = "backbone: smallcnn, width: 8, z_dim: 8, epochs: 1, batch_size: 256, image_size: 16"
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(f"models:\n"
                   f"  - {{name: stoch, source: recipe, recipe: {{objective: stochastic, {tiny}}}}}\n"
                   f"  - {{name: det, source: recipe, recipe: {{objective: simclr, {tiny}}}}}\n")
    out = tmp_path / "out"
    res = evaluate(zoo, "digits", out, cache_dir=tmp_path / "cache",
                   settings=fast_settings(active=False, shots=(1,), fractions=()))
    assert res.failures.empty, res.failures.to_dict(orient="records")
    stoch = pd.read_csv(out / "per_sample" / "stoch@digits.csv")
    det = pd.read_csv(out / "per_sample" / "det@digits.csv")
    assert "post_var" in stoch.columns and "post_var" not in det.columns
    assert (stoch["post_var"] > 0).all() and stoch["post_var"].std() > 0
    for ps in (stoch, det):
        assert ps["aug_nc_100"].between(0, 1).all() and ps["aug_nc_100"].std() > 0
        assert ps["aug_disp"].between(0, 2).all() and ps["aug_disp"].std() > 0
    unc = pd.read_csv(out / "uncertainty.csv")
    assert ((unc["model"] == "stoch") & (unc["score"] == "post_var") & (unc["metric"] == "auroc")).sum() == 1
    assert ((unc["model"] == "det") & (unc["score"] == "aug_nc_100") & (unc["metric"] == "auroc")).sum() == 1
    board = pd.read_csv(out / "leaderboard.csv")
    aug_stats = [c for c in board.columns if c.startswith("testaug_")]  # the published table's naming
    assert "testaug_alignment" in aug_stats and board[aug_stats].notna().all().all()

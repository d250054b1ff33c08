"""Analyses across models: known answers on synthetic tables and the study's findings on the published one."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from riskdecomp.analysis import analyze
from riskdecomp.analysis.effects import (
    controlled_pairs,
    design_effects,
    ranking_stability,
    summarize,
)
from riskdecomp.analysis.published import load_published
from riskdecomp.analysis.scaling import fit_scaling_law, scaling_law_predict


@pytest.fixture(scope="module")
def published(shared_dir):
    return load_published(shared_dir / "reference" / "ssl-risk-decomposition" / "all_results.csv")


def _synthetic(n_models=12, alpha=0.4, b=0.3, seed=0, n_train=10_000, n_sub=2_000, n_classes=10):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "model": [f"m{i}" for i in range(n_models)], "dataset": "toy",
        "approx": rng.uniform(0, 2, n_models), "usability": rng.uniform(0, 10, n_models),
        "probe_gen": rng.uniform(2, 20, n_models), "enc_gen": rng.uniform(0, 3, n_models),
        "n_train": n_train, "n_sub": n_sub, "n_classes": n_classes,
    })
    big_n = n_train - n_sub
    sizes = {"agg_risk": n_train, "fewshot_1shot": n_classes, "fewshot_5shot": 5 * n_classes,
             "fewshot_10pct": 0.1 * n_train}
    for col, n in sizes.items():
        df[col] = scaling_law_predict(df.approx, df.usability, df.probe_gen, df.enc_gen, big_n, n, alpha, b)
    return df


def test_scaling_law_recovers_known_parameters():
    df = _synthetic()
    params, preds = fit_scaling_law(df)
    assert params["alpha"] == pytest.approx(0.4, abs=1e-4)
    assert params["B"] == pytest.approx(0.3, abs=1e-3)
    assert params["r2"] == pytest.approx(1.0, abs=1e-8)
    assert set(preds["setting"]) == {"full", "1shot", "5shot", "10pct"}
    # sizes from the schema: k-shot n = k * n_classes, p% n = p/100 * n_train
    assert sorted(preds.groupby("setting")["n"].first().tolist()) == [10, 50, 1000, 10_000]


def test_scaling_law_fits_models_without_reference_as_approx_zero():
    """A model without a supervised reference has approx NaN and A + U in usability (approx_merged): the law only
    needs A + U, so the row is fitted (with A = 0), not dropped, and the known parameters are still recovered."""
    df = _synthetic()
    merged = df.index < 4
    df.loc[merged, "usability"] = df.loc[merged, "approx"] + df.loc[merged, "usability"]
    df.loc[merged, "approx"] = np.nan
    params, preds = fit_scaling_law(df)
    assert params["n_points"] == 4 * len(df) and set(df.loc[merged, "model"]) <= set(preds["model"])
    assert params["alpha"] == pytest.approx(0.4, abs=1e-4) and params["B"] == pytest.approx(0.3, abs=1e-3)


def test_scaling_law_needs_fewshot_columns():
    df = _synthetic().drop(columns=["fewshot_1shot", "fewshot_5shot", "fewshot_10pct"])
    with pytest.raises(ValueError):
        fit_scaling_law(df)


def test_ranking_stability_matches_scipy():
    df = _synthetic()
    df["fewshot_5shot"] = df["fewshot_5shot"].to_numpy()[::-1]  # scramble one ranking
    taus, moves = ranking_stability(df)
    assert taus["5shot"] == pytest.approx(stats.kendalltau(df.agg_risk, df.fewshot_5shot).statistic)
    assert taus["1shot"] == pytest.approx(stats.kendalltau(df.agg_risk, df.fewshot_1shot).statistic)
    m = moves[moves.setting == "5shot"]
    assert len(m) == 12 and m["move"].abs().is_monotonic_decreasing
    assert (m["move"] == m["rank_setting"] - m["rank_full"]).all()


def test_summarize_synthetic_keys_and_counts():
    df = _synthetic()
    s = summarize(df)
    assert s["n_models"] == 12
    assert s["mean"]["probe_gen"] == pytest.approx(df.probe_gen.mean())
    assert s["median"]["usability"] == pytest.approx(df.usability.median())
    largest = df[["approx", "usability", "probe_gen", "enc_gen"]].idxmax(axis=1).value_counts()
    assert s["largest_component_counts"]["probe_gen"] == largest.get("probe_gen", 0)
    assert sum(s["largest_component_counts"].values()) == 12
    assert s["scaling_law"]["alpha"] == pytest.approx(0.4, abs=1e-3)


def test_design_effects_difference_of_means_without_controls():
    df = _synthetic(n_models=8)
    df["family"] = ["vit", "resnet"] * 4
    df["epochs"] = 100  # constant control -> dropped
    df.loc[df.family == "vit", "probe_gen"] -= 5
    eff = design_effects(df, treatments=["family"])
    row = eff[(eff.component == "probe_gen")].iloc[0]
    diff = df[df.family == "vit"].probe_gen.mean() - df[df.family == "resnet"].probe_gen.mean()
    assert row["level"] == "vit" and row["base"] == "resnet"
    assert row["coef"] == pytest.approx(diff)
    assert row["ci_lo"] < row["coef"] < row["ci_hi"] and row["n"] == 8
    assert row["controls"] == ""


def test_design_effects_tiny_or_degenerate_tables_do_not_crash():
    df = _synthetic(n_models=3)
    df["objective"] = ["a", "b", "c"]  # 3 levels, 3 rows: no residual dof -> nothing estimable
    df["z_dim"] = [128, 256, 512]
    out = design_effects(df)
    assert list(out.columns)[:4] == ["dataset", "treatment", "level", "base"]
    assert (out["treatment"] != "objective").all()
    assert set(out.loc[out.treatment == "z_dim", "level"]) == {"log(z_dim)"}
    assert design_effects(df[["model", "probe_gen"]]).empty


def test_controlled_pairs_hand_case():
    df = pd.DataFrame({
        "model": ["a", "b", "c", "d"], "probe_gen": [10.0, 8.0, 7.0, 5.0], "agg_risk": [20.0, 17, 16, 15],
        "objective": ["dino", "dino", "dino", "simclr"], "epochs": [100, 300, 100, 300],
        "architecture": ["vitb", "vitb", "resnet50", "resnet50"], "z_dim": [np.nan, np.nan, np.nan, np.nan],
    })
    pairs = controlled_pairs(df)
    got = {(r.model_a, r.model_b, r.field) for r in pairs.itertuples()}
    assert got == {("a", "b", "epochs"), ("a", "c", "architecture")}
    ab = pairs[pairs.model_b == "b"].iloc[0]
    assert ab["value_a"] == 100 and ab["value_b"] == 300 and ab["delta_probe_gen"] == -2.0


def test_published_summary_matches_study(published):
    s = summarize(published)
    assert s["n_models"] == 169
    counts = s["largest_component_counts"]
    assert max(counts, key=counts.get) == "probe_gen"  # study: probe generalization usually largest
    assert 1.0 > s["kendall_tau"]["30shot"] > s["kendall_tau"]["3shot"] > 0.5
    law, details = s["scaling_law"], s["scaling_law_details"]
    assert law["r2"] > 0.9 and 0 < law["alpha"] < 1 and 0 <= law["B"] <= 1
    assert details["r2_fewshot"] > details["baseline_r2_fewshot"] + 0.05


def test_published_vit_lower_probe_gen_than_resnet(published):
    eff = design_effects(published, treatments=["family"], outcomes=["probe_gen"])
    row = eff.iloc[0]
    assert row["level"] == "vit" and row["base"] == "resnet"
    assert row["coef"] < -3 and row["p"] < 0.001 and row["ci_hi"] < 0
    # ConvNeXt excluded; rows missing a control (projection2_arch) dropped
    used = (published.family != "convnext") & published.projection2_arch.notna()
    assert row["n"] == used.sum()


def test_published_controlled_pairs_include_epoch_change(published):
    pairs = controlled_pairs(published)
    got = {(frozenset((a, b)), f) for a, b, f in pairs[["model_a", "model_b", "field"]].to_numpy()}
    assert (frozenset({"mocov2_rn50_ep200", "mocov2_rn50_ep800"}), "epochs") in got
    assert (frozenset({"clip_vitb16", "clip_vitb32"}), "patch_size") in got
    # barlow_rn50 vs barlow_rn50_ep300 also differ in weight decay: not a controlled pair
    assert frozenset({"barlow_rn50", "barlow_rn50_ep300"}) not in {g for g, _ in got}


def test_analyze_writes_outputs_for_both_sources(tmp_path, monkeypatch):
    ours = _synthetic()
    ours["family"] = ["vit", "resnet"] * 6
    ours["epochs"] = [100, 300] * 6
    theirs = _synthetic(seed=1, alpha=0.2, b=0.6).assign(dataset="imagenet", family=["vit", "resnet"] * 6)
    summary = analyze(leaderboard=ours, published=theirs, out_dir=tmp_path)
    saved = json.loads((tmp_path / "summary.json").read_text())
    for key in ("n_models", "mean", "median", "largest_component_counts", "kendall_tau", "scaling_law"):
        assert key in saved
    # the fit with its quality and whether it may be shown (issue 21: a poor fit is "not shown: <rule>")
    assert set(saved["scaling_law"]) == {"alpha", "B", "r2", "rmse", "shown", "why"}
    assert saved["scaling_law"]["shown"] is True and saved["scaling_law"]["why"].startswith("R² 1.00")
    assert saved["primary_source"] == "ours"
    assert saved["per_source"]["published"]["scaling_law"]["alpha"] == pytest.approx(0.2, abs=1e-3)
    assert summary["scaling_law"]["alpha"] == pytest.approx(0.4, abs=1e-3)
    eff = pd.read_csv(tmp_path / "design_effects.csv")
    assert set(eff["source"]) == {"ours", "published"}
    pairs = pd.read_csv(tmp_path / "controlled_pairs.csv")
    assert "source" in pairs.columns
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files
    # written like every other CSV (riskdecomp.utils.atomic.write_csv): at most 10 significant digits
    import re

    digits = [len(re.sub(r"^0*", "", m.replace(".", ""))) for f in tmp_path.glob("*.csv")
              for m in re.findall(r"(?<![\w.])\d+\.\d+(?=e|,|$)", f.read_text(), re.M)]
    assert digits and max(digits) <= 10
    with pytest.raises(ValueError):
        analyze(out_dir=tmp_path)

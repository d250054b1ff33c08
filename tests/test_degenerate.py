"""Degenerate regimes are flagged and nothing misleading is drawn (issue 21): the leaderboard's ``reference``,
``is_reference``, ``n_features`` and ``flags`` columns (separable_train, never_pretrained, C_at_grid_edge), the CLI
summary's flags line, design effects that are "not estimable" instead of a coefficient (constant outcome,
near-singular design; references are not design levels), constant components reported once, rankings that need
5 models, and a scaling law that carries its fit quality."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from zoo_factory import FAST, make_features_zoo, run_cli, synthetic_features

import riskdecomp.analysis.effects as effects
import riskdecomp.analysis.scaling as scaling
import riskdecomp.runner.tables as tables
from riskdecomp.analysis.seeds import aggregate_seeds
from riskdecomp.estimators.selection import DEFAULT_GRID
from riskdecomp.runner.records import read_records

# the names under test are read from their modules inside each test, so that each test fails on its own (not the
# whole file at import) where they do not exist
MIN_MODELS = 5

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


# ------------------------------------------------------------------------------------------------ known answers
def _rec(model="m", weights="recipe", **row):
    base = {"model": model, "dataset": "d", "n_train": 100, "n_features": 64, "agg_risk": 50.0,
            "C_train_train": 1.0, "C_heldout": 1.0, "C_test": 1.0}
    return {"model": model, "dataset": "d", "weights": weights, "reference": None, "pretraining": None,
            "row": {**base, **row}}


@pytest.mark.parametrize("n_train, d, separable", [(50, 64, True), (64, 64, True), (65, 64, False)])
def test_separable_train_is_n_train_at_most_n_features(n_train, d, separable):
    assert ("separable_train" in tables.run_flags(_rec(n_train=n_train, n_features=d))) is separable


def test_never_pretrained_from_the_weights_label_or_an_older_records_objective():
    assert tables.run_flags(_rec(weights="random")) == ["never_pretrained"]
    assert tables.run_flags(_rec(weights="hub")) == []
    assert tables.run_flags(_rec(weights="recipe", objective="init")) == []  # the record's weights field decides
    old = _rec(objective="init")
    del old["weights"]  # a record written before records held it: a recipe's objective says it
    assert tables.run_flags(old) == ["never_pretrained"]


@pytest.mark.parametrize("column", ["C_train_train", "C_heldout", "C_test", "C_ref_train_train"])
def test_C_at_grid_edge_at_either_end_of_the_grid_only(column):
    top, bottom, inner = float(DEFAULT_GRID.max()), float(DEFAULT_GRID.min()), float(DEFAULT_GRID[-2])
    assert tables.run_flags(_rec(**{column: top})) == ["C_at_grid_edge"]
    assert tables.run_flags(_rec(**{column: bottom})) == ["C_at_grid_edge"]
    assert tables.run_flags(_rec(**{column: inner})) == []  # 21.5: next to the top, not at it


def test_committed_records_give_reference_columns_and_flags_without_recomputing():
    """The committed run records predate the new fields: the reference comes from their pretraining identity and
    never_pretrained from objective init; the flags match the records' C columns."""
    valid, _ = read_records(RESULTS)
    recs = list(valid.values())
    proof = {(r["model"], r["dataset"]): r["pretraining"] for r in recs}
    board, per_seed = tables.with_flags(*aggregate_seeds(tables.build_leaderboard(recs), proof), recs)
    b = board.set_index("model")
    assert b.loc["supervised", "is_reference"] and b["is_reference"].sum() == 1
    assert b.loc["supervised", "reference"] == "" and (b.drop("supervised")["reference"] == "supervised").all()
    assert b.loc["init", "flags"] == "never_pretrained"
    edge = {r["model"].split(".s")[0] for r in recs
            if any(np.isclose(v, DEFAULT_GRID[[0, -1]]).any() for k, v in r["row"].items() if k.startswith("C_"))}
    assert edge == {m for m, f in b["flags"].items() if "C_at_grid_edge" in f} and len(edge) == 6
    s = per_seed.set_index("model")
    assert s.loc["simclr.s0", "reference"] == "supervised.s0" and s.loc["supervised.s3", "is_reference"]


# ------------------------------------------------------------------------------------------------ through the CLI
def _wide_zoo(root: Path, n_train=40, wide_d=48) -> Path:
    """The 3-entry features zoo plus ``wide``: more feature dimensions than train points."""
    zoo = make_features_zoo(root, n_train=n_train, n_test=40, classes=4, d=8, extra_models=["""
        - name: wide
          source: features
          path: wide.npz
          reference: sup
          metadata: {objective: simclr, ssl_mode: contrastive, architecture: mlp, family: mlp, z_dim: 48}
    """])
    x_tr, y_tr, x_te, y_te = synthetic_features(np.random.default_rng(5), n_train, 40, 4, wide_d, 1.0)
    np.savez(root / "wide.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    return zoo


def _summary(out: str) -> dict:
    lines = out.split("summary:\n")[1].splitlines()
    return {ln.split()[0]: ln.strip() for ln in lines if ln.strip()}


def _strip_new_fields(out: Path) -> None:
    """Make the folder's records look like those of an earlier release (no reference, weights, n_features)."""
    for p in (out / "runs").glob("*@*.json"):
        rec = json.loads(p.read_text())
        for k in ("reference", "weights"):
            rec.pop(k, None)
        rec["row"].pop("n_features", None)
        p.write_text(json.dumps(rec, indent=1, sort_keys=True))


def test_features_zoo_leaderboard_and_cli_summary_flag_the_separable_entry(tmp_path, capsys):
    zoo = _wide_zoo(tmp_path / "zoo")
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_cli("evaluate", "--zoo", str(zoo), "--out", str(out), "--cache-dir", str(tmp_path / "c"), *FAST,
                   "--no-uncertainty", "--no-active") == 0
    stdout = capsys.readouterr().out
    board = pd.read_csv(out / "leaderboard.csv", keep_default_na=False).set_index("model")
    assert list(board.columns[1:4]) == ["reference", "is_reference", "flags"]
    assert board["n_features"].to_dict() == {"sup": 8, "good": 12, "weak": 16, "wide": 48}
    assert board.loc["wide", "flags"].split(";")[0] == "separable_train"
    assert all("separable_train" not in board.loc[m, "flags"] for m in ("sup", "good", "weak"))
    assert board["is_reference"].astype(str).to_dict() == {"sup": "True", "good": "False", "weak": "False",
                                                             "wide": "False"}
    assert board.loc["sup", "reference"] == "" and (board.drop("sup")["reference"] == "sup").all()
    flags_line = _summary(stdout)["flags"]
    assert "separable_train 1 (wide)" in flags_line
    # a record of an earlier release gets the fields on the next run, nothing recomputed, run keys unchanged
    keys = {p.name: json.loads(p.read_text())["run_key"] for p in (out / "runs").glob("*@*.json")}
    _strip_new_fields(out)
    assert run_cli("evaluate", "--zoo", str(zoo), "--out", str(out), "--cache-dir", str(tmp_path / "c"), *FAST,
                   "--no-uncertainty", "--no-active") == 0
    assert "runs              0 computed, 4 reused" in capsys.readouterr().out
    again = pd.read_csv(out / "leaderboard.csv", keep_default_na=False).set_index("model")
    pd.testing.assert_frame_equal(again, board)
    for p in (out / "runs").glob("*@*.json"):
        rec = json.loads(p.read_text())
        assert rec["run_key"] == keys[p.name] and rec["weights"] == "none" and "n_features" in rec["row"]


def _extract(tar_path: Path, dest: Path, per_class: int) -> None:
    import tarfile

    counts: dict = {}
    with tarfile.open(tar_path) as tf:
        for m in tf:
            parts = Path(m.name).parts
            if not m.isfile() or not m.name.endswith(".jpg") or counts.get(parts[-2], 0) >= per_class:
                continue
            counts[parts[-2]] = counts.get(parts[-2], 0) + 1
            (dest / parts[-2]).mkdir(parents=True, exist_ok=True)
            (dest / parts[-2] / parts[-1]).write_bytes(tf.extractfile(m).read())
            if len(counts) == 10 and min(counts.values()) >= per_class:
                break


def test_real_images_fewer_than_feature_dims_flag_separable_train_in_leaderboard_and_cli(shared_dir, tmp_path,
                                                                                       capsys):
    """The issue's case on real CIFAR-10 JPEGs: 50 train images, 64-d features (a supervised smallcnn reference and
    a random-init one): both separable_train; the random one never_pretrained; the reference marked."""
    src = shared_dir / "data" / "cifar10-jpg"
    data = tmp_path / "cifar"
    _extract(src / "cifar10_train_jpg.tar.gz", data / "train", 5)
    _extract(src / "cifar10_test_jpg.tar.gz", data / "test", 3)
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(textwrap.dedent("""
        defaults:
          source: recipe
          recipe: {backbone: smallcnn, width: 8, z_dim: 64, epochs: 1, batch_size: 25, image_size: 16}
        models:
          - {name: sup, recipe: {objective: supervised, head: {kind: none}}}
          - {name: rand, reference: sup, recipe: {objective: init, head: {kind: none}}}
    """))
    out = tmp_path / "out"
    args = ["evaluate", "--zoo", str(zoo), "--dataset", f"imagefolder:{data}", "--out", str(out), "--cache-dir",
            str(tmp_path / "cache"), *FAST, "--no-uncertainty", "--no-active", "--no-statistics", "--jobs", "1"]
    capsys.readouterr()
    assert run_cli(*args) == 0
    stdout = capsys.readouterr().out
    board = pd.read_csv(out / "leaderboard.csv", keep_default_na=False).set_index("model")
    assert (board["n_train"] == 50).all() and (board["n_features"] == 64).all()
    assert board.loc["sup", "flags"].split(";")[0] == "separable_train"
    assert board.loc["rand", "flags"].split(";")[:2] == ["separable_train", "never_pretrained"]
    assert board.loc["sup", "is_reference"] in (True, "True") and board.loc["rand", "reference"] == "sup"
    line = _summary(stdout)["flags"]
    assert "separable_train 2 (sup, rand)" in line and "never_pretrained 1 (rand)" in line
    # the separable regime the flag explains: the train set is fitted perfectly
    assert (board["err_train_train"] <= 2).all()
    # an older record of a recipe entry gets n_features from the recipe itself (no features cache read)
    _strip_new_fields(out)
    for p in (tmp_path / "cache").glob("features/*/*.json"):
        p.unlink()  # the sidecars gone: the width must come from the zoo entry, and nothing is recomputed
    assert run_cli(*args) == 0
    assert "runs              0 computed, 2 reused" in capsys.readouterr().out
    assert pd.read_csv(out / "leaderboard.csv", keep_default_na=False).set_index("model")["flags"].equals(
        board["flags"])


# ------------------------------------------------------------------------------------------------ design effects
def _board(n=8, seed=0, **cols):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"model": [f"m{i}" for i in range(n)], "dataset": "toy",
                       "approx": 41.0, "usability": rng.uniform(5, 20, n), "probe_gen": rng.uniform(2, 8, n),
                       "enc_gen": rng.uniform(-1, 2, n), "objective": ["simclr", "byol"] * (n // 2),
                       "epochs": [5, 2] * (n // 4) + [2, 5] * (n // 4)})
    df["agg_risk"] = df[["approx", "usability", "probe_gen", "enc_gen"]].sum(axis=1)
    for k, v in cols.items():
        df[k] = v
    return df


def test_design_effects_on_a_constant_outcome_are_not_estimable_never_a_coefficient():
    eff = effects.design_effects(_board(), treatments=["objective", "epochs"])
    approx = eff[eff.component == "approx"]
    assert len(approx) == 2 and not approx["estimable"].any()
    assert approx[["coef", "se", "p", "ci_lo", "ci_hi"]].isna().all().all()
    assert approx["why"].str.startswith("not estimable: approx is 41 in all 8 rows").all()
    rest = eff[eff.component != "approx"]
    assert rest["estimable"].all() and rest["coef"].notna().all() and (rest["why"] == "").all()


def test_design_effects_near_constant_within_noise_and_shared_reference():
    df = _board()
    df["approx"] = 41.4 + np.linspace(0, 0.16, len(df))  # reference-seed averaging, far inside the noise
    df["approx_lo"], df["approx_hi"] = df["approx"] - 1.6, df["approx"] + 1.7
    eff = effects.design_effects(df, treatments=["objective"], outcomes=["approx"])
    assert not eff["estimable"].any() and "near-constant: range 0.16" in eff["why"].iloc[0]
    # a range of several CI half-widths is a real difference: estimated
    df["approx"] = 41.4 + np.linspace(0, 8, len(df))
    df["approx_lo"], df["approx_hi"] = df["approx"] - 1.6, df["approx"] + 1.7
    assert effects.design_effects(df, treatments=["objective"], outcomes=["approx"])["estimable"].all()
    # one shared reference: approx is its train->train error, whatever the spread of the seed averaging
    df["reference"] = "sup"
    eff = effects.design_effects(df, treatments=["objective"], outcomes=["approx"])
    assert not eff["estimable"].any() and "one reference (sup)" in eff["why"].iloc[0]


def test_design_effects_near_singular_design_is_not_estimable():
    df = _board(n=12)
    df["batch_size"] = np.where(df["epochs"] == 5, 256, 64)  # a control that duplicates the treatment
    eff = effects.design_effects(df, treatments=["epochs"], outcomes=["usability"])
    assert len(eff) == 1 and not eff["estimable"].iloc[0] and np.isnan(eff["coef"].iloc[0])
    assert "near-singular design" in eff["why"].iloc[0]


def test_design_effects_leave_references_out():
    df = _board()
    df.loc[0, ["objective", "model"]] = ["supervised", "sup"]
    df["is_reference"] = df["model"] == "sup"
    eff = effects.design_effects(df, treatments=["objective"])
    assert "supervised" not in set(eff["level"]) and (eff["n"] == len(df) - 1).all()


def test_committed_results_design_effects_approx_not_estimable_and_reference_not_a_level(tmp_path, capsys):
    """``riskdecomp analyze`` on the committed leaderboard: the approx panel is "not estimable" (no nviews +14.8,
    no objective=supervised +10.2), the supervised reference is no design level, no coefficient is a perfect fit's."""
    assert run_cli("analyze", "--leaderboard", str(RESULTS / "leaderboard.csv"), "--out", str(tmp_path)) == 0
    eff = pd.read_csv(tmp_path / "design_effects.csv", keep_default_na=False, na_values=[""])
    approx = eff[eff.component == "approx"]
    assert len(approx) and not approx["estimable"].astype(bool).any() and approx["coef"].isna().all()
    # the committed leaderboard names its references: approx is the one reference's error (older folders without the
    # column: the near-constant rule says the same)
    assert approx["why"].str.contains("train->train error of the one reference \\(supervised\\)|approx near-constant").all()
    assert "supervised" not in set(eff["level"]) and (eff["n"] <= 12).all()
    ok = eff[eff["estimable"].astype(bool)]
    assert ok["se"].min() > 1e-6 and ok["p"].notna().all()  # no SE-1.6e-10 artefact left among the estimates
    nviews = eff[eff.treatment == "nviews"]
    assert nviews["coef"].isna().all() and nviews["why"].str.startswith("not estimable").all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["constant_components"]["cifar10-mini"]) == {"approx"}
    assert "approx" not in summary["largest_component_counts"]
    assert sum(summary["largest_component_counts"].values()) == 12  # the 12 candidates, not the reference
    assert any(f.startswith("approx constant") for f in summary["zoo_flags"])


# ------------------------------------------------------------------------------------------------ summary
def _scaled(n=8, seed=0, alpha=0.4, b=0.3, noise=0.0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"model": [f"m{i}" for i in range(n)], "dataset": "toy",
                       "approx": 30.0, "usability": rng.uniform(0, 10, n), "probe_gen": rng.uniform(2, 20, n),
                       "enc_gen": rng.uniform(0, 3, n), "n_train": 10_000, "n_sub": 2_000, "n_classes": 10})
    for col, size in {"agg_risk": 10_000, "fewshot_1shot": 10, "fewshot_5shot": 50, "fewshot_10pct": 1000}.items():
        df[col] = scaling.scaling_law_predict(df.approx, df.usability, df.probe_gen, df.enc_gen, 8000, size, alpha,
                                              b)
        df[col] += rng.normal(0, noise, n)
    return df


def test_summarize_reports_a_constant_component_once_with_the_references_value():
    df = _scaled(n=6)
    df["approx"] = [41.57] * 5 + [41.41]
    df.loc[5, "model"] = "sup"
    df["reference"] = ["sup"] * 5 + [""]
    df["is_reference"] = df["model"] == "sup"
    s = effects.summarize(df)
    assert s["constant_components"] == {"toy": {"approx": 41.41}}  # the reference's own value
    assert set(s["largest_component_counts"]) == {"usability", "probe_gen", "enc_gen"}
    assert sum(s["largest_component_counts"].values()) == 5  # candidates only
    assert any("approx constant across the candidates of toy (shared value 41.41)" in f for f in s["zoo_flags"])
    # a component that varies (here: models with references of their own) is not constant
    df["approx"], df["reference"] = np.linspace(1, 30, 6), ""
    assert effects.summarize(df)["constant_components"] == {}


@pytest.mark.parametrize("n, shown", [(MIN_MODELS - 1, False), (MIN_MODELS, True)])
def test_rankings_and_taus_need_five_models(n, shown):
    assert effects.MIN_MODELS_FOR_RANKING == MIN_MODELS
    df = _scaled(n=n)
    taus, moves = effects.ranking_stability(df)
    assert bool(taus) is shown and (not moves.empty) is shown
    s = effects.summarize(df)
    flag = f"{n} models (< {MIN_MODELS}): rankings, Kendall taus and the ranking-change figure not shown"
    assert (flag in s["zoo_flags"]) is not shown and bool(s["kendall_tau"]) is shown


def test_scaling_law_carries_its_quality_and_is_not_shown_when_poor():
    good, _ = scaling.fit_scaling_law(_scaled(n=8))
    assert good["shown"] is True and good["why"].startswith("R² 1.00")
    poor, _ = scaling.fit_scaling_law(_scaled(n=8, noise=40.0, seed=3))
    assert poor["r2"] < 0.5 and poor["shown"] is False and poor["why"].startswith("R²")
    assert "< 0.5" in poor["why"]
    s = effects.summarize(_scaled(n=8, noise=40.0, seed=3))
    assert s["scaling_law"]["shown"] is False and f"scaling law not shown: {poor['why']}" in s["zoo_flags"]
    few, _ = scaling.fit_scaling_law(_scaled(n=4))
    assert few["shown"] is False and few["why"] == "4 models < 5"
    pinned, _ = scaling.fit_scaling_law(_scaled(n=8, b=1.0))
    assert pinned["shown"] is False and pinned["why"].startswith("B at its bound")


@pytest.mark.parametrize("n, shown", [(MIN_MODELS - 1, False), (MIN_MODELS, True)])
def test_seed_ranking_stability_needs_five_models(n, shown):
    rng = np.random.default_rng(0)
    runs = pd.DataFrame([{"model": f"m{i}.s{s}", "base_model": f"m{i}", "pretrain_seed": s, "dataset": "toy",
                          "agg_risk": 10.0 * i + rng.normal()} for i in range(n) for s in range(4)])
    res, splits = effects.seed_ranking_stability(runs)
    assert bool(res) is shown and (not splits.empty) is shown
    assert effects.MIN_MODELS_FOR_RANKING == MIN_MODELS

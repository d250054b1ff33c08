"""Pretraining seeds as an axis: `seeds:` expansion in the zoo, per-seed run records, the pooled leaderboard with
combined CIs, controlled-pair significance over seeds and the seed ranking stability (on a real, tiny evaluate run
on digits)."""

import json
import textwrap

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats
from zoo_factory import run_cli

from riskdecomp.analysis.effects import (
    controlled_pairs,
    holm,
    seed_difference,
    seed_ranking_stability,
)
from riskdecomp.analysis.seeds import combine
from riskdecomp.utils.errors import ZooError
from riskdecomp.utils.names import split_seed
from riskdecomp.zoo import parse_zoo

TINY = {"backbone": "smallcnn", "width": 4, "z_dim": 8, "epochs": 1, "image_size": 8, "batch_size": 128,
        "head": {"kind": "mlp", "depth": 2, "width": 16, "out_dim": 8}}
ZOO = textwrap.dedent(f"""
    defaults:
      source: recipe
      recipe: {json.dumps(TINY)}
      seeds: [0, 1, 2]
      metadata: {{pretraining_data: digits, architecture: smallcnn}}
    models:
      - name: supervised
        recipe: {json.dumps({**TINY, "objective": "supervised", "head": {"kind": "none"}})}
        metadata: {{objective: supervised, z_dim: 8}}
      - name: init
        reference: supervised
        recipe: {json.dumps({**TINY, "objective": "init", "head": {"kind": "none"}})}
        metadata: {{objective: init, z_dim: 8}}
      - name: simclr
        reference: supervised
        recipe: {json.dumps({**TINY, "objective": "simclr"})}
        metadata: {{objective: simclr, z_dim: 8}}
      - name: simclr_z4
        reference: supervised
        recipe: {json.dumps({**TINY, "objective": "simclr", "z_dim": 4})}
        metadata: {{objective: simclr, z_dim: 4}}
      # a fifth model (rankings and taus need 5: issue 21), which differs from simclr in no design field
      - name: simclr_t05
        reference: supervised
        recipe: {json.dumps({**TINY, "objective": "simclr", "temperature": 0.5})}
        metadata: {{objective: simclr, z_dim: 8}}
""")
MODELS = ("supervised", "init", "simclr", "simclr_z4", "simclr_t05")
FAST = ["--n-boot", "100", "--fewshot-seeds", "1", "--shots", "5", "--fractions", "0.1", "--no-report",
        "--no-progress", "--no-uncertainty", "--no-active", "--no-statistics", "--aug-views", "0", "--jobs", "1"]
COMPONENTS = ["approx", "usability", "probe_gen", "enc_gen", "agg_risk"]


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeded")
    zoo = root / "zoo.yaml"
    zoo.write_text(ZOO)
    out = root / "out"
    code = run_cli("evaluate", "--zoo", str(zoo), "--dataset", "digits", "--out", str(out),
                   "--cache-dir", str(root / "cache"), *FAST)
    assert code == 0
    return zoo, out


# ------------------------------------------------------------------------------------------------ expansion
def test_seeds_expand_into_named_entries_with_seeded_recipes_and_references():
    zoo = parse_zoo(yaml.safe_load(ZOO))
    assert zoo.names == [f"{m}.s{s}" for m in MODELS for s in (0, 1, 2)]
    for m in ("init", "simclr"):
        for s in (0, 1, 2):
            e = zoo[f"{m}.s{s}"]
            assert e.recipe.seed == s and e.reference == f"supervised.s{s}"
    assert zoo["simclr_z4.s1"].recipe.z_dim == 4 and zoo["simclr_z4.s1"].metadata["z_dim"] == 4
    # distinct seeds give distinct checkpoints (recipe keys)
    assert len({zoo[f"simclr.s{s}"].recipe.key() for s in (0, 1, 2)}) == 3
    assert split_seed("simclr_z4.s12") == ("simclr_z4", 12) and split_seed("simclr") == ("simclr", None)


def test_entry_seeds_win_over_defaults_and_unseeded_entries_reference_the_first_seed():
    data = {"defaults": {"source": "recipe", "seeds": [3, 4]},
            "models": [{"name": "sup", "recipe": {"objective": "supervised"}, "seeds": [5, 6]},
                       {"name": "a", "recipe": {"objective": "simclr"}, "seeds": [5]},
                       {"name": "b", "recipe": {"objective": "simclr"}},
                       {"name": "f", "source": "features", "path": "x.npz", "reference": "sup"}]}
    zoo = parse_zoo(data)
    assert zoo.names == ["sup.s5", "sup.s6", "a.s5", "b.s3", "b.s4", "f"]
    assert zoo["f"].reference == "sup.s5"


@pytest.mark.parametrize("models,needle", [
    ([{"name": "t", "source": "timm", "model": "resnet18", "seeds": [0, 1]}], "only recipe entries"),
    ([{"name": "a", "source": "recipe", "recipe": {"objective": "simclr"}, "seeds": []}], "non-empty list"),
    ([{"name": "a", "source": "recipe", "recipe": {"objective": "simclr"}, "seeds": [0, 0]}], "duplicate seed"),
    ([{"name": "a", "source": "recipe", "recipe": {"objective": "simclr"}, "seeds": [0, -1]}], "non-negative"),
    ([{"name": "a", "source": "recipe", "recipe": {"objective": "simclr"}, "seeds": "0,1"}], "non-empty list"),
    ([{"name": "a", "source": "recipe", "recipe": {"objective": "simclr", "seed": 3}, "seeds": [0]}],
     "either recipe.seed or seeds"),
    ([{"name": "a.s1", "source": "recipe", "recipe": {"objective": "simclr"}, "seeds": [0]}], "already ends"),
    ([{"name": "sup", "source": "recipe", "recipe": {"objective": "supervised"}, "seeds": [0]},
      {"name": "a", "source": "recipe", "recipe": {"objective": "simclr"}, "seeds": [0, 1], "reference": "sup"}],
     "'sup' has no seed 1"),
    ([{"name": "a", "source": "recipe", "recipe": {"objective": "simclr"}, "seeds": [0, 1]},
      {"name": "a.s1", "source": "recipe", "recipe": {"objective": "simclr"}}], "duplicate name 'a.s1'"),
    ([{"name": "a", "source": "recipe", "recipe": {"objective": "simclr"}},
      {"name": "a.s1", "source": "recipe", "recipe": {"objective": "simclr"}}], "also an entry of its own"),
])
def test_bad_seeds_are_one_line_errors_naming_the_entry(models, needle):
    with pytest.raises(ZooError, match=needle) as err:
        parse_zoo({"models": models})
    msg = str(err.value)
    assert "\n" not in msg and ("models[" in msg or "model 'a" in msg)


def test_bad_seeds_through_the_cli_exit_2(tmp_path, capsys):
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text("models:\n  - {name: a, source: recipe, recipe: {objective: simclr}, seeds: [0, 0]}\n")
    assert run_cli("zoo", "list", "--zoo", str(zoo)) == 2
    assert "riskdecomp: error:" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ aggregation
def test_combine_known_answer():
    mean, sd, lo, hi = combine([1.0, 2.0, 3.0], [0.5, 1.5, 2.5], [2.0, 3.0, 4.0])
    seed_half = stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)
    assert (mean, sd) == (2.0, 1.0)
    assert lo == pytest.approx(2.0 - np.hypot(seed_half, 0.5), rel=1e-12)
    assert hi == pytest.approx(2.0 + np.hypot(seed_half, 1.0), rel=1e-12)
    # one seed: its own CI, no seed std
    assert combine([4.0], [3.0], [5.0])[1:] == (pytest.approx(np.nan, nan_ok=True), 3.0, 5.0)


def test_each_seed_is_a_run_record_and_the_leaderboard_pools_them(seeded_run):
    _, out = seeded_run
    records = sorted(p.name for p in (out / "runs").glob("*@digits.json"))
    assert records == sorted(f"{m}.s{s}@digits.json" for m in MODELS for s in (0, 1, 2))
    board = pd.read_csv(out / "leaderboard.csv")
    runs = pd.read_csv(out / "leaderboard_seeds.csv")
    assert list(board["model"]) == list(MODELS)
    assert (board["n_seeds"] == 3).all() and (board["pretrain_seeds"] == "0|1|2").all()
    assert len(runs) == 15 and set(runs["pretrain_seed"]) == {0, 1, 2}
    for _, row in board.iterrows():
        g = runs[runs["base_model"] == row["model"]]
        assert list(g["model"]) == [f"{row['model']}.s{s}" for s in (0, 1, 2)]
        for c in ["usability", "probe_gen", "enc_gen", "agg_risk", "err_test"] + (
                ["approx"] if row["model"] != "supervised" else []):
            mean, sd, lo, hi = combine(g[c], g[f"{c}_lo"], g[f"{c}_hi"])
            # the CSVs hold 10 significant digits
            assert row[c] == pytest.approx(mean, rel=1e-8) and row[f"{c}_seed_std"] == pytest.approx(sd, rel=1e-8)
            assert row[f"{c}_lo"] == pytest.approx(lo, rel=1e-8) and row[f"{c}_hi"] == pytest.approx(hi, rel=1e-8)
            # the pooled CI is at least as wide as the seed t-interval and as the runs' mean test CI
            assert row[f"{c}_hi"] - row[f"{c}_lo"] >= max(2 * stats.t.ppf(0.975, 2) * sd / np.sqrt(3),
                                                          (g[f"{c}_hi"] - g[f"{c}_lo"]).mean()) - 1e-6
    # the identity holds for the pooled row (means of the per-seed identities)
    refd = board[board["model"] != "supervised"]
    assert np.allclose(refd[["approx", "usability", "probe_gen", "enc_gen"]].sum(axis=1), refd["agg_risk"],
                       atol=1e-6)
    # pretraining seeds make a difference (otherwise the axis would be empty)
    assert runs[runs["base_model"] == "simclr"]["agg_risk"].nunique() > 1


def test_rerun_is_byte_identical(seeded_run, tmp_path):
    zoo, out = seeded_run
    before = {n: (out / n).read_bytes() for n in ("leaderboard.csv", "leaderboard_seeds.csv")}
    assert run_cli("evaluate", "--zoo", str(zoo), "--dataset", "digits", "--out", str(out),
                   "--cache-dir", str(out.parent / "cache"), *FAST) == 0
    assert {n: (out / n).read_bytes() for n in before} == before


def test_a_zoo_without_seeds_writes_no_seed_table(seeded_run, tmp_path):
    zoo, out = seeded_run
    # select two runs by their expanded names: no `.s<seed>` grouping is lost, the board is per run
    other = tmp_path / "out"
    (other).mkdir()
    (other / "leaderboard_seeds.csv").write_text("stale\n")
    text = zoo.read_text().replace("  seeds: [0, 1, 2]\n", "")
    plain = tmp_path / "plain.yaml"
    plain.write_text(text)
    assert run_cli("evaluate", "--zoo", str(plain), "--dataset", "digits", "--out", str(other), "--models", "init",
                   "--cache-dir", str(out.parent / "cache"), *FAST) == 0
    board = pd.read_csv(other / "leaderboard.csv")
    assert list(board["model"]) == ["supervised", "init"] and "n_seeds" not in board
    assert not (other / "leaderboard_seeds.csv").exists()


# ------------------------------------------------------------------------------------------------ significance
def test_seed_difference_and_holm_known_answers():
    a = pd.Series([10.0, 12.0, 11.0], index=[0, 1, 2])
    b = pd.Series([13.0, 14.0, 15.0], index=[0, 1, 2])
    d = np.array([3.0, 2.0, 4.0])
    mean, lo, hi, p, n = seed_difference(a, b)
    ref = stats.ttest_rel(b.to_numpy(), a.to_numpy())
    assert mean == 3.0
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert n == 3 and p == pytest.approx(ref.pvalue, rel=1e-10)
    assert (lo, hi) == (pytest.approx(3.0 - half), pytest.approx(3.0 + half))
    # disjoint seeds: Welch
    mean, lo, hi, p, n = seed_difference(a, pd.Series([13.0, 14.0, 15.0], index=[7, 8, 9]))
    assert mean == 3.0 and lo < mean < hi
    assert p == pytest.approx(stats.ttest_ind([13, 14, 15], [10, 12, 11], equal_var=False).pvalue, rel=1e-10)
    assert np.isnan(seed_difference(a.iloc[:1], b.iloc[1:2])[3])
    # seeds 0-4 against seeds 0-2: the difference is paired over 0-2 (centre of its CI), not a 5-seed mean minus a
    # 3-seed mean (which can fall outside the interval)
    a5 = pd.Series([10.0, 12.0, 11.0, 20.0, 20.0], index=[0, 1, 2, 3, 4])
    mean, lo, hi, p, n = seed_difference(a5, b)
    assert n == 3 and mean == 3.0 and lo < mean < hi and b.mean() - a5.mean() < lo
    # Holm: sorted p * (m - rank), monotone, NaN untouched
    assert np.allclose(holm([0.01, 0.04, np.nan, 0.03]), [0.03, 0.06, np.nan, 0.06], equal_nan=True)


def test_controlled_pairs_have_seed_cis_and_holm_p_values_on_real_output(seeded_run):
    _, out = seeded_run
    board = pd.read_csv(out / "leaderboard.csv")
    runs = pd.read_csv(out / "leaderboard_seeds.csv")
    pairs = controlled_pairs(board, seeds=runs)
    got = {(r.model_a, r.model_b, r.field) for r in pairs.itertuples()}
    # init vs simclr is no controlled pair: the recipe-derived metadata says init also has 0 epochs, no
    # augmentations, no projection head (riskdecomp.sources.recipe.recipe_metadata)
    assert got == {("simclr", "simclr_z4", "z_dim"), ("simclr_z4", "simclr_t05", "z_dim")}
    for r in pairs.itertuples():
        for c in COMPONENTS:
            if c == "approx" and "supervised" in (r.model_a, r.model_b):
                continue
            a = runs[runs.base_model == r.model_a].set_index("pretrain_seed")[c]
            b = runs[runs.base_model == r.model_b].set_index("pretrain_seed")[c]
            if (b - a).abs().max() == 0:  # e.g. approx: both use the same reference seeds; scipy says NaN (0/0)
                assert getattr(r, f"p_{c}") == 1.0 and getattr(r, f"p_paired_{c}") == 1.0
            else:  # the old paired test on shared seeds is the sensitivity column; p_<x> is the engine's
                assert getattr(r, f"p_paired_{c}") == pytest.approx(stats.ttest_rel(b, a).pvalue, rel=1e-8)
                assert getattr(r, f"n_runs") == len(runs)  # the engine's fit uses every run of the zoo
            # seed means vs mean of differences: both from CSVs with 10 significant digits (values < 100)
            assert getattr(r, f"delta_{c}") == pytest.approx((b - a).mean(), abs=1e-7)
            assert getattr(r, f"delta_{c}_lo") <= getattr(r, f"delta_{c}") <= getattr(r, f"delta_{c}_hi")
            # the CI at Holm's level excludes 0 exactly when the verdict is significant
            if np.isfinite(getattr(r, f"p_{c}")) and getattr(r, f"p_{c}") < 1:
                excl = getattr(r, f"delta_{c}_adj_lo") > 0 or getattr(r, f"delta_{c}_adj_hi") < 0
                assert excl == bool(getattr(r, f"significant_{c}"))
    for c in COMPONENTS:
        p = pairs[f"p_{c}"].to_numpy(float)
        assert np.allclose(pairs[f"p_holm_{c}"], holm(p), equal_nan=True)
        assert (pairs[f"significant_{c}"] == (pairs[f"p_holm_{c}"] < 0.05)).all()


def test_seed_ranking_stability_on_real_output(seeded_run):
    _, out = seeded_run
    runs = pd.read_csv(out / "leaderboard_seeds.csv")
    res, splits = seed_ranking_stability(runs)
    assert res["digits"]["n_splits"] == 3 and res["digits"]["half_size"] == 1 and res["digits"]["n_models"] == 5
    for r in splits.itertuples():  # each split: tau between the rankings by one seed and by another
        sa, sb = int(r.seeds_a), int(r.seeds_b)
        pick = lambda s: runs[runs.pretrain_seed == s].set_index("base_model")["agg_risk"]  # noqa: E731
        a, b = pick(sa), pick(sb).reindex(pick(sa).index)
        assert r.tau == pytest.approx(stats.kendalltau(a, b).statistic, nan_ok=True)
    assert res["digits"]["tau_mean"] == pytest.approx(splits["tau"].mean())


def test_report_writes_significance_and_seed_stability(seeded_run):
    _, out = seeded_run
    assert run_cli("analyze", "--leaderboard", str(out / "leaderboard.csv"), "--out", str(out / "analysis")) == 0
    pairs = pd.read_csv(out / "analysis" / "controlled_pairs.csv")
    assert {"p_holm_agg_risk", "significant_agg_risk", "delta_agg_risk_lo", "n_seeds"} <= set(pairs.columns)
    summary = json.loads((out / "analysis" / "summary.json").read_text())
    assert summary["seed_ranking_stability"]["digits"]["n_splits"] == 3
    assert (out / "analysis" / "seed_ranking_stability.csv").exists()


def test_baseline_contrasts_compare_every_model_with_random_init(seeded_run):
    from riskdecomp.analysis.effects import baseline_contrasts

    _, out = seeded_run
    board = pd.read_csv(out / "leaderboard.csv")
    runs = pd.read_csv(out / "leaderboard_seeds.csv")
    con = baseline_contrasts(board, runs)
    assert list(con["model"]) == ["supervised", "simclr", "simclr_z4", "simclr_t05"] and set(con["baseline"]) == {"init"}
    init = runs[runs.base_model == "init"].set_index("pretrain_seed")
    for r in con.itertuples():
        m = runs[runs.base_model == r.model].set_index("pretrain_seed")
        for c in ("usability", "agg_risk"):
            assert getattr(r, f"p_paired_{c}") == pytest.approx(stats.ttest_rel(m[c], init[c]).pvalue, rel=1e-8)
    assert np.allclose(con["p_holm_agg_risk"], holm(con["p_agg_risk"].to_numpy(float)))
    written = pd.read_csv(out / "analysis" / "baseline_contrasts.csv") if (out / "analysis").exists() else None
    if written is not None:
        assert list(written["model"]) == list(con["model"])


def test_findings_paragraph_is_generated_from_the_results(seeded_run, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    _, out = seeded_run
    assert run_cli("analyze", "--leaderboard", str(out / "leaderboard.csv"), "--out", str(out / "analysis")) == 0
    script = Path(__file__).resolve().parents[1] / "scripts" / "write_findings.py"
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- findings:start -->\nstale sentence\n<!-- findings:end -->\nrest\n")
    cmd = [sys.executable, str(script), "--results", str(out), "--readme", str(readme)]
    assert subprocess.run(cmd + ["--check"], capture_output=True).returncode == 1
    subprocess.run(cmd, check=True, capture_output=True)
    text = readme.read_text()
    assert text.startswith("intro\n<!-- findings:start -->\n") and text.endswith("<!-- findings:end -->\nrest\n")
    assert "stale sentence" not in text and "Findings on `digits` (5 models x 3 pretraining seeds" in text
    board = pd.read_csv(out / "leaderboard.csv").set_index("model")
    best = board.loc[~board["objective"].isin(["supervised", "init"]), "agg_risk"].idxmin()  # the best SSL encoder
    b = board.loc[best]
    assert f"`{best}`, agg_risk {b['agg_risk']:.1f} % [{b['agg_risk_lo']:.1f}, {b['agg_risk_hi']:.1f}]" in text
    con = pd.read_csv(out / "analysis" / "baseline_contrasts.csv")
    lo = "delta_agg_risk_adj_lo" if "delta_agg_risk_adj_lo" in con else "delta_agg_risk_lo"  # the verdict's CI
    for r in con.to_dict("records"):
        assert f"`{r['model']}` {r['delta_agg_risk']:+.1f} points [{r[lo]:+.1f}, " in text
    pairs = pd.read_csv(out / "analysis" / "controlled_pairs.csv")
    for r in pairs.itertuples():
        assert f"(`{r.model_a}` -> `{r.model_b}`) {r.delta_agg_risk:+.1f} points" in text
    tau = json.loads((out / "analysis" / "summary.json").read_text())["seed_ranking_stability"]["digits"]
    assert f"disjoint halves of the seeds {tau['tau_mean']:.2f}" in text
    assert subprocess.run(cmd + ["--check"], capture_output=True).returncode == 0


def test_report_draws_seed_contrasts_and_ranking_stability_from_real_output(seeded_run, tmp_path):
    """The report of a seeded run (real evaluate output) has the seed-contrast figure and the significance table,
    whose * marks are exactly the producer's significant_* flags, and the ranking-stability figure of its 5 models (a
    ranking needs 5, issue 21)."""
    import shutil

    _, out = seeded_run
    res = tmp_path / "res"
    shutil.copytree(out, res)
    assert run_cli("report", "--results", str(res)) == 0
    page = (res / "report.html").read_text()
    assert "<figure id='seed_contrasts'>" in page and "<figure id='seed_ranking_digits'>" in page
    assert "differences over seeds:" not in page  # no skip note of the contrasts
    assert "ranking stability: not shown" not in page
    contrasts = pd.read_csv(res / "analysis" / "baseline_contrasts.csv")
    pairs = pd.read_csv(res / "analysis" / "controlled_pairs.csv")
    assert len(contrasts) == 4 and len(pairs) >= 1
    from riskdecomp.report.html import seed_contrast_rows, significance_view

    view = significance_view(seed_contrast_rows(pairs, contrasts))
    assert len(view) == len(contrasts) + len(pairs)
    for c in ("usability", "probe_gen", "enc_gen", "agg_risk"):
        flags = list(contrasts[f"significant_{c}"]) + list(pairs[f"significant_{c}"])
        assert [v.endswith(" *") for v in view[c]] == flags, c
    assert "Differences over pretraining seeds" in page and view["comparison"].iloc[0] in page

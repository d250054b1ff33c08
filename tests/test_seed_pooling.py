"""Runs are pooled as pretraining seeds of one model only when their records prove it (identity minus seed equal,
each seed once, the name's seed = the recipe's seed; riskdecomp.analysis.seeds), never because of their names; a
difference with zero variance over seeds is not testable (p NaN), never p = 0 or significant (issue 24, class 1).
Real evaluate runs of tiny recipe entries on digits, through the CLI."""

import json
import logging
import shutil
import textwrap

import numpy as np
import pandas as pd
import pytest
from zoo_factory import run_cli

from riskdecomp.analysis.effects import baseline_contrasts, controlled_pairs, design_effects, seed_difference

TINY = {"backbone": "smallcnn", "width": 4, "z_dim": 8, "epochs": 1, "image_size": 8, "batch_size": 128,
        "head": {"kind": "mlp", "depth": 2, "width": 16, "out_dim": 8}}
SIMCLR = {**TINY, "objective": "simclr"}
FAST = ["--n-boot", "50", "--fewshot-seeds", "1", "--shots", "5", "--fractions", "0.1", "--no-report",
        "--no-progress", "--no-uncertainty", "--no-active", "--no-statistics", "--aug-views", "0", "--jobs", "1"]


def _entry(name, recipe, **extra) -> str:
    return "  - " + json.dumps({"name": name, "recipe": recipe, **extra}) + "\n"


HEAD = textwrap.dedent("""
    defaults:
      source: recipe
      metadata: {pretraining_data: digits}
    models:
""")
# the earlier zoo: an unseeded `s` (z_dim 4), whose record stays in runs/
EARLIER = HEAD + _entry("s", {**SIMCLR, "z_dim": 4})
ZOO = HEAD + "".join([
    # x.s0, x.s1, x.s2 written by hand without recipe.seed: one pretraining run (seed 0) three times; y likewise
    *(_entry(f"x.s{s}", SIMCLR) for s in (0, 1, 2)),
    *(_entry(f"y.s{s}", {**SIMCLR, "z_dim": 4}) for s in (0, 1, 2)),
    # the current zoo's seeded `s` (z_dim 8) beside the stale unseeded record of `s` (z_dim 4)
    _entry("s", SIMCLR, seeds=[0, 1]),
    # a hand-written d.s1 (byol, seed 1) beside a seeded d (simclr)
    _entry("d", SIMCLR, seeds=[0, 2]),
    _entry("d.s1", {**TINY, "objective": "byol", "seed": 1}),
    # e.s01 is seed 1 again
    _entry("e", SIMCLR, seeds=[0, 1]),
    _entry("e.s01", {**SIMCLR, "seed": 1}),
    # sweep labels ending in .s<digits>: f_v.s0 (z_dim 4) and f_v.s1 (z_dim 8), both pretrained with seed 0
    _entry("f", SIMCLR, sweep={"z_dim": {"v.s0": 4, "v.s1": 8}}),
    # positive control: seeds written by hand WITH the matching recipe.seed are proven seeds of h
    *(_entry(f"h.s{s}", {**SIMCLR, "seed": s}) for s in (0, 1)),
])


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _evaluate(zoo, out, cache, *more):
    catch = _Lines()
    logging.getLogger("riskdecomp").addHandler(catch)
    try:
        code = run_cli("evaluate", "--zoo", str(zoo), "--dataset", "digits", "--out", str(out), "--cache-dir",
                       str(cache), *FAST, *more)
    finally:
        logging.getLogger("riskdecomp").removeHandler(catch)
    return code, catch.lines


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    root = tmp_path_factory.mktemp("pooling")
    out, cache = root / "out", root / "cache"
    (root / "earlier.yaml").write_text(EARLIER)
    (root / "zoo.yaml").write_text(ZOO)
    assert _evaluate(root / "earlier.yaml", out, cache)[0] == 0
    code, lines = _evaluate(root / "zoo.yaml", out, cache)
    assert code == 0
    return root, out, lines


def _line(lines, *needles):
    hits = [x for x in lines if all(n in x for n in needles)]
    assert len(hits) == 1, (needles, lines)
    assert "\n" not in hits[0]
    return hits[0]


def test_only_proven_seeds_are_pooled(pooled):
    _, out, _ = pooled
    board = pd.read_csv(out / "leaderboard.csv").set_index("model")
    # h.s0/h.s1 (recipe.seed = the name's seed, same recipe) pool into h; nothing else is pooled
    assert board.loc["h", "n_seeds"] == 2 and board.loc["h", "pretrain_seeds"] == "0|1"
    unpooled = ["x.s0", "x.s1", "x.s2", "y.s0", "y.s1", "y.s2", "s", "s.s0", "s.s1", "d.s0", "d.s1", "d.s2",
                "e.s0", "e.s1", "e.s01", "f", "f_v.s0", "f_v.s1"]
    assert sorted(board.index) == sorted(unpooled + ["h"])
    assert (board.loc[unpooled, "n_seeds"] == 1).all() and board.loc[unpooled, "pretrain_seeds"].isna().all()
    # unpooled rows keep their own numbers (not a mean over runs of different recipes)
    assert board.loc["s", "z_dim"] == 4 and board.loc["s.s0", "z_dim"] == 8 and board.loc["f_v.s0", "z_dim"] == 4
    runs = pd.read_csv(out / "leaderboard_seeds.csv")
    seeded = runs[runs["pretrain_seed"].notna()]
    assert sorted(seeded["model"]) == ["h.s0", "h.s1"] and set(seeded["base_model"]) == {"h"}
    assert (runs.loc[runs["pretrain_seed"].isna(), "base_model"] == runs.loc[runs["pretrain_seed"].isna(),
                                                                            "model"]).all()


def test_each_group_left_unpooled_is_one_warning_line_saying_why(pooled):
    _, _, lines = pooled
    assert "recipe.seed is not the name's seed" in _line(lines, "x.s0, x.s1, x.s2", "not pooled as seeds of 'x'")
    assert "pretrained with seed 0, not 1" in _line(lines, "y.s0, y.s1, y.s2", "not pooled")
    assert "a run named 's' exists too" in _line(lines, "s.s0, s.s1", "not pooled as seeds of 's'")
    assert "recipe.objective 'simclr' vs 'byol'" in _line(lines, "d.s0, d.s2, d.s1", "differ in more than the seed")
    assert "e.s1 and e.s01 are both seed 1" in _line(lines, "not pooled as seeds of 'e'")
    assert "f_v.s1 was pretrained with seed 0, not 1" in _line(lines, "not pooled as seeds of 'f_v'")
    # the stale record of the earlier zoo is named, not silently read in
    assert "summaries: s (delete" in _line(lines, "not in this zoo kept in the summaries")


def test_hand_written_copies_of_one_run_give_no_seed_contrast(pooled, tmp_path):
    """x and y (z_dim 8 vs 4) are each one pretraining run three times: no p-value over seeds, nothing significant."""
    _, out, _ = pooled
    assert run_cli("analyze", "--leaderboard", str(out / "leaderboard.csv"), "--out", str(tmp_path / "a")) == 0
    pairs = pd.read_csv(tmp_path / "a" / "controlled_pairs.csv")
    xy = pairs[pairs["model_a"].str.match(r"[xy](\.s\d)?$") & pairs["model_b"].str.match(r"[xy](\.s\d)?$")]
    assert len(xy) > 0 and set(xy["field"]) == {"z_dim"}
    for c in [c for c in pairs.columns if c.startswith("p_")]:
        assert not (xy[c] == 0).any()
    for c in [c for c in pairs.columns if c.startswith("significant_")]:
        assert not xy[c].astype("boolean").fillna(False).any()


def test_build_pools_from_the_records_like_evaluate(pooled, tmp_path):
    _, out, _ = pooled
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert run_cli("build", "--results", str(copy), "--no-report") == 0
    for name in ("leaderboard.csv", "leaderboard_seeds.csv"):
        assert (copy / name).read_bytes() == (out / name).read_bytes()


def test_records_without_the_identity_are_pooled_by_name_with_a_warning_and_refreshed(pooled, tmp_path):
    """Records written before run records held the pretraining identity (e.g. the committed results/) are trusted
    by name, with a warning; a rerun adds the identity without recomputing (same run key) and then checks it."""
    root, out, _ = pooled
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    keys = {}
    for p in (copy / "runs").glob("h.s*@digits.json"):
        rec = json.loads(p.read_text())
        keys[p.name] = rec["run_key"]
        assert rec["pretraining"]["seed"] == int(p.name[3])
        del rec["pretraining"]
        p.write_text(json.dumps(rec, indent=1, sort_keys=True))
    catch = _Lines()
    logging.getLogger("riskdecomp").addHandler(catch)
    try:
        assert run_cli("build", "--results", str(copy), "--no-report") == 0
    finally:
        logging.getLogger("riskdecomp").removeHandler(catch)
    assert "pooled by name only" in _line(catch.lines, "2 run record(s) predate")
    assert pd.read_csv(copy / "leaderboard.csv").set_index("model").loc["h", "n_seeds"] == 2
    code, lines = _evaluate(root / "zoo.yaml", copy, root / "cache", "--models", "h.s0,h.s1")
    assert code == 0 and not [x for x in lines if "predate" in x]
    for name, key in keys.items():
        rec = json.loads((copy / "runs" / name).read_text())
        assert rec["run_key"] == key and rec["pretraining"]["seed"] == int(name[3])


def test_pooled_seeds_are_checked_by_their_identity_not_their_names(pooled, tmp_path):
    """A record edited to claim another recipe (or seed) breaks the proof: the group is not pooled."""
    _, out, _ = pooled
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    p = copy / "runs" / "h.s1@digits.json"
    rec = json.loads(p.read_text())
    rec["pretraining"]["identity"]["recipe"]["z_dim"] = 16
    p.write_text(json.dumps(rec, indent=1, sort_keys=True))
    assert run_cli("build", "--results", str(copy), "--no-report") == 0
    board = pd.read_csv(copy / "leaderboard.csv")
    assert {"h.s0", "h.s1"} <= set(board["model"]) and "h" not in set(board["model"])


# ------------------------------------------------------------------------------------------------ zero variance
def _zero_variance_tables(delta=4.0):
    """Two models whose per-seed difference is exactly ``delta`` in each of 3 seeds (and an init baseline)."""
    rng = np.random.default_rng(0)
    runs, board = [], []
    base = rng.normal(20, 1, size=3)
    for m, z, obj, shift in (("init", 8, "init", rng.normal(30, 2, size=3)), ("a", 8, "simclr", base),
                             ("b", 16, "simclr", base + delta)):
        for s in range(3):
            v = float(shift[s])
            runs.append({"model": f"{m}.s{s}", "base_model": m, "pretrain_seed": s, "dataset": "digits",
                         "agg_risk": v, "agg_risk_lo": v - 1, "agg_risk_hi": v + 1, "objective": obj, "z_dim": z})
        board.append({"model": m, "dataset": "digits", "n_seeds": 3, "pretrain_seeds": "0|1|2",
                      "agg_risk": float(np.mean(shift)), "agg_risk_lo": 0.0, "agg_risk_hi": 50.0, "objective": obj,
                      "z_dim": z})
    return pd.DataFrame(board), pd.DataFrame(runs)


def test_a_zero_variance_difference_is_not_testable_through_analyze(tmp_path):
    board, runs = _zero_variance_tables()
    board.to_csv(tmp_path / "leaderboard.csv", index=False)
    runs.to_csv(tmp_path / "leaderboard_seeds.csv", index=False)
    assert run_cli("analyze", "--leaderboard", str(tmp_path / "leaderboard.csv"), "--out", str(tmp_path / "a")) == 0
    pairs = pd.read_csv(tmp_path / "a" / "controlled_pairs.csv")
    ab = pairs[(pairs["model_a"] == "a") & (pairs["model_b"] == "b")].iloc[0]
    assert ab["delta_agg_risk"] == pytest.approx(4.0)
    assert np.isnan(ab["p_agg_risk"]) and np.isnan(ab["delta_agg_risk_lo"]) and np.isnan(ab["delta_agg_risk_hi"])
    assert not bool(ab["significant_agg_risk"])
    con = pd.read_csv(tmp_path / "a" / "baseline_contrasts.csv").set_index("model")
    # against init the differences vary over seeds: a real test
    assert np.isfinite(con.loc["a", "p_agg_risk"]) and np.isfinite(con.loc["b", "p_agg_risk"])


def test_seed_difference_with_zero_variance_is_nan_not_zero():
    a = pd.Series([10.0, 12.0, 11.0], index=[0, 1, 2])
    mean, lo, hi, p, n = seed_difference(a, a + 4)  # paired: the difference is 4 in every seed
    assert mean == pytest.approx(4.0) and n == 3 and np.isnan(p) and np.isnan(lo) and np.isnan(hi)
    # unpaired (disjoint seeds), both constant: Welch's SE is 0 as well
    mean, lo, hi, p, n = seed_difference(pd.Series([1.0, 1.0], index=[0, 1]), pd.Series([5.0, 5.0], index=[2, 3]))
    assert mean == 4.0 and n == 4 and np.isnan(p) and np.isnan(lo)
    # no difference in any seed (two models reading the same reference): exactly 0, p = 1, not significant
    assert seed_difference(a, a.copy())[1:4] == (0.0, 0.0, 1.0)


def test_contrast_tables_mark_zero_variance_differences_not_significant(caplog):
    board, runs = _zero_variance_tables()
    with caplog.at_level(logging.WARNING, logger="riskdecomp"):
        pairs = controlled_pairs(board, seeds=runs)
        con = baseline_contrasts(board, runs, baseline="a")
    ab = pairs[(pairs["model_a"] == "a") & (pairs["model_b"] == "b")].iloc[0]
    assert np.isnan(ab["p_agg_risk"]) and np.isnan(ab["p_holm_agg_risk"]) and not ab["significant_agg_risk"]
    b = con.set_index("model").loc["b"]
    assert np.isnan(b["p_agg_risk"]) and not b["significant_agg_risk"]
    text = caplog.text
    assert "controlled pairs: 1 test(s) not testable" in text and "a -> b (agg_risk)" in text
    assert "baseline contrasts: 1 test(s) not testable" in text and "b vs a (agg_risk)" in text


def test_design_effects_with_a_perfect_fit_are_not_testable(caplog):
    # agg_risk is an exact linear function of log(z_dim): residual variance 0, standard error 0
    z = np.array([4, 8, 16, 32, 64])
    df = pd.DataFrame({"model": [f"m{i}" for i in range(5)], "dataset": "d", "z_dim": z,
                       "agg_risk": 10 + 2 * np.log(z)})
    with caplog.at_level(logging.WARNING, logger="riskdecomp"):
        eff = design_effects(df, treatments=["z_dim"], outcomes=["agg_risk"])
    assert len(eff) == 1
    r = eff.iloc[0]
    assert r["coef"] == pytest.approx(2.0) and not (r["p"] == 0) and np.isnan(r["p"]) and np.isnan(r["ci_lo"])
    assert "design effects: 1 test(s) not testable" in caplog.text

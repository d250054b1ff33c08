"""The one inference engine (riskdecomp.analysis.inference, docs/inference.md): known-truth checks of its CIs and
Holm verdicts, every run of the committed default zoo in the fit, and comparisons for a zoo without seeds through
the CLI (comparisons.csv, summary.json "best" excluding references, the adjusted CI agreeing with the verdict)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import ndtri
from zoo_factory import run_cli

from riskdecomp.analysis.inference import Engine, holm, holm_levels, reference_models, zoo_runs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


# ------------------------------------------------------------------------------------------------ simulation
def simulate_zoo(rng, rates, seeds, n_test=600, seed_sd=0.01, run_sd=0.008, shared=0.3, own=0.4, dataset="sim"):
    """A zoo with known population error rates: model ``m`` seed ``s`` has the population error rate
    ``rates[m] + g_s + e_ms`` (``g_s`` shared by every model's seed ``s``: the same initialisation and data order;
    ``e_ms`` the run's own noise), scored on one shared test set of ``n_test`` points. A point's 0/1 error is a
    threshold of a Gaussian latent with three parts: a difficulty shared by every run (variance ``shared``), one
    shared by the seeds of one model (``own``: what a model gets wrong whatever its seed -- the test-point noise that
    seeds cannot average out) and the run's own noise; the threshold makes P(error) the run's rate.
    ``seeds``: model -> list of seeds (None: one run without seed). Returns (board, per-run table or None,
    per-sample dict, {model: the rate averaged over the seed distribution, i.e. ``rates[m]``}, {run: its rate})."""
    all_seeds = sorted({s for ss in seeds.values() if ss for s in ss})
    g = dict(zip(all_seeds, rng.normal(0, seed_sd, len(all_seeds))))
    z = rng.normal(size=n_test)
    runs, per_sample, run_rate, y = [], {}, {}, np.zeros(n_test, int)
    for m, rate in rates.items():
        u = rng.normal(size=n_test)
        for s in (seeds[m] or [None]):
            q = float(np.clip(rate + (g[s] if s is not None else 0.0) + rng.normal(0, run_sd), 0.01, 0.99))
            latent = np.sqrt(shared) * z + np.sqrt(own) * u + np.sqrt(1 - shared - own) * rng.normal(size=n_test)
            err = (latent > ndtri(1 - q)).astype(float)
            name = f"{m}.s{s}" if s is not None else m
            v, half = 100 * err.mean(), 196 * np.sqrt(err.mean() * (1 - err.mean()) / n_test)
            runs.append({"model": name, "base_model": m, "pretrain_seed": s, "dataset": dataset, "agg_risk": v,
                         "agg_risk_lo": v - half, "agg_risk_hi": v + half})
            per_sample[(name, dataset)] = {"y": y, "err01": err}  # what a per_sample/ file holds (its columns)
            run_rate[name] = q
    runs = pd.DataFrame(runs)
    means = {m: np.mean([r["agg_risk"] for r in runs.to_dict("records") if r["base_model"] == m]) for m in rates}
    board = pd.DataFrame({"model": list(means), "agg_risk": list(means.values()), "dataset": dataset})
    seeded = any(seeds.values())
    return board, (runs if seeded else None), per_sample, dict(rates), run_rate


RATES = {"a": 0.30, "b": 0.33, "c": 0.30, "d": 0.36, "e": 0.31}
#: unbalanced seeds: "a" has five, the rest three (as init / simclr vs the other models of the default zoo)
SEEDS = {"a": [0, 1, 2, 3, 4], "b": [0, 1, 2], "c": [0, 1, 2], "d": [0, 1, 2], "e": [0, 1, 2]}
#: replicates: a 95 % CI's coverage over R independent replicates has binomial SD sqrt(.95 * .05 / R) = 0.0154 at
#: R = 200, so asserting >= 0.90 fails a correct engine with probability ~ P(Z < -3.2) = 0.0007; the family-wise
#: false-positive rate of a correct Holm procedure (<= 0.05) exceeds 0.05 + 3.2 * 0.0154 = 0.10 with probability
#: below 0.001.
REPLICATES = 200


def _engine(board, runs, per_sample, dataset="sim"):
    return Engine(zoo_runs(board, runs, dataset), dataset, per_sample)


def known_truth(replicates=REPLICATES, seed=0) -> dict:
    """Coverage of the engine's 95 % CIs of differences (one fixed unbalanced pair per replicate, and all pairs),
    the family-wise false-positive rate of Holm verdicts under the null (every model the same rate), and the same
    two for a zoo without seeds (one run per model: the truth is the runs' own rates). docs/inference.md prints
    this table (``python -c "from tests.test_inference import known_truth; print(known_truth())"``)."""
    rng = np.random.default_rng(seed)
    models = list(RATES)
    pairs = [(models[i], models[j]) for i in range(len(models)) for j in range(i + 1, len(models))]
    cover_one, cover_all, fwer, cover_flat, fwer_flat = [], [], [], [], []
    for _ in range(replicates):
        board, runs, ps, truth, _ = simulate_zoo(rng, RATES, SEEDS)
        eng = _engine(board, runs, ps)
        res = {p: eng.compare(*p, "agg_risk") for p in pairs}
        covered = {p: r["lo"] <= 100 * (truth[p[1]] - truth[p[0]]) <= r["hi"] for p, r in res.items()}
        cover_one.append(covered[("a", "b")])
        cover_all.append(np.mean(list(covered.values())))
        null = {m: 0.32 for m in models}
        board, runs, ps, _, _ = simulate_zoo(rng, null, SEEDS)
        eng = _engine(board, runs, ps)
        fwer.append(bool((holm([eng.compare(*p, "agg_risk")["p"] for p in pairs]) < 0.05).any()))
        flat = {m: None for m in models}
        board, _, ps, _, run_rate = simulate_zoo(rng, RATES, flat)
        eng = _engine(board, None, ps)
        r = eng.compare("a", "b", "agg_risk")
        cover_flat.append(r["lo"] <= 100 * (run_rate["b"] - run_rate["a"]) <= r["hi"])
        board, _, ps, _, run_rate = simulate_zoo(rng, null, flat, run_sd=0.0)
        eng = _engine(board, None, ps)
        fwer_flat.append(bool((holm([eng.compare(*p, "agg_risk")["p"] for p in pairs]) < 0.05).any()))
    return {"replicates": replicates, "coverage_a_vs_b": float(np.mean(cover_one)),
            "coverage_all_pairs": float(np.mean(cover_all)), "fwer_holm_null": float(np.mean(fwer)),
            "coverage_no_seeds": float(np.mean(cover_flat)), "fwer_holm_null_no_seeds": float(np.mean(fwer_flat))}


def test_known_truth_coverage_and_family_wise_error():
    """Simulated zoos with model effects, seed effects shared across models and a shared test set of 0/1 errors
    with known population rates: the 95 % CIs of differences cover the truth (>= 0.90) and Holm's verdicts keep the
    family-wise false-positive rate under the null at alpha (<= 0.10, binomial slack); with and without seeds."""
    got = known_truth()
    assert got["coverage_a_vs_b"] >= 0.90, got
    assert got["coverage_all_pairs"] >= 0.90, got
    assert got["fwer_holm_null"] <= 0.10, got
    assert got["coverage_no_seeds"] >= 0.90, got
    assert got["fwer_holm_null_no_seeds"] <= 0.10, got


def test_seed_noise_alone_undercovers_so_the_test_point_term_is_needed():
    """The reason for item 2 of issue 21: without the test-point term (seed noise only) the CIs of the same
    simulation undercover; with it they do not. Guards against dropping either term."""
    rng = np.random.default_rng(1)
    seed_only, both = [], []
    for _ in range(120):
        board, runs, ps, truth, _ = simulate_zoo(rng, RATES, SEEDS)
        eng = _engine(board, runs, ps)
        r = eng.compare("a", "b", "agg_risk")
        fit = eng.fit("agg_risk")
        half = stats.t.ppf(0.975, fit.df) * r["se_seed"]
        d = 100 * (truth["b"] - truth["a"])
        seed_only.append(abs(r["delta"] - d) <= half)
        both.append(r["lo"] <= d <= r["hi"])
    assert np.mean(seed_only) < 0.85 <= 0.90 <= np.mean(both)


# ------------------------------------------------------------------------------------------------ Holm
def test_holm_levels_make_the_adjusted_ci_agree_with_the_verdict():
    rng = np.random.default_rng(2)
    for _ in range(300):
        m = int(rng.integers(1, 12))
        p = np.where(rng.random(m) < 0.5, rng.random(m) * 0.02, rng.random(m))
        if rng.random() < 0.2:
            p[0] = np.nan
        level = holm_levels(p)
        sig = holm(p) < 0.05
        ok = np.isfinite(p)
        assert (np.isnan(level) == ~ok).all()
        # rejected iff p below the level its step tested it at; levels are alpha / (m - k + 1) <= alpha
        assert ((p[ok] < level[ok]) == sig[ok]).all()
        assert (level[ok] <= 0.05 + 1e-15).all() and (level[ok] >= 0.05 / max(ok.sum(), 1) - 1e-15).all()
    assert np.allclose(holm_levels([0.001, 0.03, 0.04]), [0.05 / 3, 0.05 / 2, 0.05 / 2])  # 0.03 not < 0.025: stop
    assert np.allclose(holm_levels([0.001, 0.01, 0.04]), [0.05 / 3, 0.05 / 2, 0.05])


# ------------------------------------------------------------------------------------------------ references
def test_references_come_from_is_reference_then_reference_then_none():
    b = pd.DataFrame({"model": ["sup", "x", "y"], "agg_risk": [1.0, 2, 3]})
    assert reference_models(b) == []
    assert reference_models(b.assign(reference=["", "sup.s0", "sup"])) == ["sup"]
    assert reference_models(b.assign(reference=["", "sup", "sup"], is_reference=[False, True, False])) == ["x"]
    assert reference_models(b.assign(is_reference=["True", "False", "False"])) == ["sup"]


# ------------------------------------------------------------------------------------------------ the CLI
def _write_zoo(root: Path, board, runs, per_sample, **cols):
    root.mkdir(parents=True, exist_ok=True)
    board.assign(**cols).to_csv(root / "leaderboard.csv", index=False)
    if runs is not None:
        runs.to_csv(root / "leaderboard_seeds.csv", index=False)
    (root / "per_sample").mkdir(exist_ok=True)
    for (run, ds), t in per_sample.items():
        pd.DataFrame({"index": np.arange(len(t["y"])), **t}).to_csv(root / "per_sample" / f"{run}@{ds}.csv",
                                                                     index=False)


def test_a_zoo_without_seeds_gets_pairwise_verdicts_and_a_best_encoder_excluding_references(tmp_path):
    """One run per model (no pretraining seeds), a supervised reference that is better than every candidate:
    ``riskdecomp analyze`` writes every pair on the shared test points with Holm verdicts, the best candidate
    (not the reference) and its top group; a clearly worse model is outside the group, near-ties are in it."""
    rng = np.random.default_rng(3)
    rates = {"sup": 0.15, "good": 0.30, "tie": 0.302, "bad": 0.45}
    board, _, ps, _, _ = simulate_zoo(rng, rates, {m: None for m in rates}, n_test=2000, run_sd=0.0, dataset="jpg")
    root = tmp_path / "res"
    _write_zoo(root, board, None, ps, reference=["", "sup", "sup", "sup"])
    assert run_cli("analyze", "--leaderboard", str(root / "leaderboard.csv"), "--out", str(root / "analysis")) == 0
    comp = pd.read_csv(root / "analysis" / "comparisons.csv")
    pw = comp[(comp["family"] == "pairwise") & (comp["outcome"] == "agg_risk")]
    assert {frozenset(p) for p in zip(pw["model_a"], pw["model_b"])} == {
        frozenset(p) for p in (("good", "tie"), ("good", "bad"), ("tie", "bad"))}  # the reference is no candidate
    assert pw["p"].notna().all() and pw["method"].str.contains("per-sample errors over 2000 shared test points").all()
    assert np.allclose(pw["p_holm"], holm(pw["p"].to_numpy(float)))
    for r in comp.itertuples():
        if np.isfinite(r.p) and r.p < 1:
            assert (r.adj_lo > 0 or r.adj_hi < 0) == bool(r.significant)
            assert r.adj_lo <= r.lo <= r.delta <= r.hi <= r.adj_hi
    summary = json.loads((root / "analysis" / "summary.json").read_text())
    best = summary["best"]["jpg"]
    assert best["model"] in ("good", "tie") and best["references"] == ["sup"] and best["n_candidates"] == 3
    assert set(best["top_group"]) == {"good", "tie"} and best["top_group"][0] == best["model"]
    assert best["value"] == pytest.approx(board.set_index("model").loc[best["model"], "agg_risk"])
    inf = summary["inference"]["jpg"]
    assert inf["n_runs"] == 4 and inf["residual_df"] == 0 and inf["paired_by_seed"] is False
    assert "no run is a pooled pretraining seed" in inf["why"] and inf["mde_agg_risk"] > 0


def test_committed_default_zoo_uses_every_run(tmp_path):
    """On the committed default zoo the engine fits all 45 runs (13 models x 3-5 seeds) with seed effects: residual
    df 45 - 13 - 5 + 1 = 28, where the old test paired 2 df per 3-seed model; its CIs include test-point noise
    (wider than seed noise alone), the adjusted CIs agree with the verdicts, and the old test stays as p_paired."""
    if not (RESULTS / "leaderboard_seeds.csv").is_file():
        pytest.skip("no committed results/")
    res = tmp_path / "results"
    res.mkdir()
    for name in ("leaderboard.csv", "leaderboard_seeds.csv"):
        shutil.copy(RESULTS / name, res / name)
    (res / "per_sample").symlink_to(RESULTS / "per_sample")
    assert run_cli("analyze", "--leaderboard", str(res / "leaderboard.csv"), "--out", str(res / "analysis")) == 0
    inf = json.loads((res / "analysis" / "summary.json").read_text())["inference"]["cifar10-mini"]
    assert inf["n_runs"] == 45 and inf["residual_df"] == 28 and inf["paired_by_seed"] is True
    runs = pd.read_csv(res / "leaderboard_seeds.csv")
    for name in ("baseline_contrasts.csv", "controlled_pairs.csv"):
        t = pd.read_csv(res / "analysis" / name)
        assert (t["n_runs"] == 45).all()
        sig = t["significant_agg_risk"].astype(bool)
        excl = (t["delta_agg_risk_adj_lo"] > 0) | (t["delta_agg_risk_adj_hi"] < 0)
        assert (excl == sig).all(), name
        assert (t["se_agg_risk"] > 0).all() and t["p_paired_agg_risk"].notna().all()
        assert t["p_welch_agg_risk"].notna().all()
    con = pd.read_csv(res / "analysis" / "baseline_contrasts.csv").set_index("model")
    init = runs[runs.base_model == "init"].set_index("pretrain_seed")["agg_risk"]
    simclr = runs[runs.base_model == "simclr"].set_index("pretrain_seed")["agg_risk"]
    d = simclr - init  # both have seeds 0-4: the fixed-effects contrast is the paired mean
    assert con.loc["simclr", "delta_agg_risk"] == pytest.approx(d.mean(), abs=1e-7)
    seed_half = stats.t.ppf(0.975, 28) * con.loc["simclr", "se_agg_risk"]
    assert con.loc["simclr", "delta_agg_risk_hi"] - con.loc["simclr", "delta_agg_risk"] == pytest.approx(
        stats.t.ppf(0.975, con.loc["simclr", "df_agg_risk"]) * con.loc["simclr", "se_agg_risk"])
    assert seed_half > 0
    # the test-point term is there: the SE exceeds the pure seed SE of the fit (sigma * sqrt(2 / 5))
    fit = Engine(zoo_runs(pd.read_csv(res / "leaderboard.csv"), runs, "cifar10-mini"), "cifar10-mini").fit("agg_risk")
    assert con.loc["simclr", "se_agg_risk"] > 1.3 * np.sqrt(fit.sigma2 * 2 / 5)
    assert con.loc["simclr", "p_paired_agg_risk"] == pytest.approx(stats.ttest_rel(simclr, init).pvalue, rel=1e-8)


def test_sensitivity_script_reproduces_the_old_verdicts_and_counts_the_changes():
    """scripts/inference_sensitivity.py on the committed default zoo: its "new" column is exactly the committed
    significant_agg_risk flags (results/ is written by this engine), its "old" column the old engine's verdicts
    (paired t-test on the shared seeds, the committed p_paired_agg_risk, Holm per file), and it prints how many
    verdicts change old -> new."""
    import subprocess
    import sys

    if not (RESULTS / "leaderboard_seeds.csv").is_file():
        pytest.skip("no committed results/")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from inference_sensitivity import verdicts
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    v = verdicts(RESULTS)
    for name in ("baseline_contrasts", "controlled_pairs"):
        committed = pd.read_csv(RESULTS / "analysis" / f"{name}.csv")
        assert list(v.loc[v["file"] == name, "new_FE"]) == list(committed["significant_agg_risk"].astype(bool)), name
        old = holm(committed["p_paired_agg_risk"].to_numpy(float)) < 0.05
        assert list(v.loc[v["file"] == name, "old_paired"]) == list(old), name
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "inference_sensitivity.py"), "--results",
                          str(RESULTS)], capture_output=True, text=True, check=True).stdout
    n = int((v["new_FE"] != v["old_paired"]).sum())
    assert f"{n} of {len(v)} contrasts change verdict old -> new" in out and n > 0


def test_cli_summary_names_the_best_encoder_excluding_references_with_its_top_group():
    """utils.progress.summary_lines with the engine's result (what evaluate prints): a reference with the lowest
    error is named as a reference, never as the best encoder; the top group and the detectable effect follow."""
    from types import SimpleNamespace

    from riskdecomp.analysis import comparisons_and_best
    from riskdecomp.utils.progress import summary_lines

    rng = np.random.default_rng(4)
    rates = {"sup": 0.15, "good": 0.30, "tie": 0.302, "bad": 0.45}
    board, _, ps, _, _ = simulate_zoo(rng, rates, {m: None for m in rates}, n_test=2000, run_sd=0.0, dataset="jpg")
    board = board.assign(is_reference=[True, False, False, False], approx=10.0, usability=1.0, probe_gen=2.0,
                         enc_gen=board["agg_risk"] - 13.0)
    _, best, inference = comparisons_and_best(board, None, ps)
    res = SimpleNamespace(paths={}, leaderboard=board, failures=[], records=[])
    lines = summary_lines(res, None, 1.0, {"best": best, "inference": inference})
    text = "\n".join(lines)
    b = best["jpg"]
    assert b["model"] != "sup" and f"  best encoder      {b['model']} on jpg: agg_risk " in text
    assert "top group         2 of 3 candidate(s) not significantly worse (Holm): " in text
    assert "this zoo detects differences >= " in text and "  references        sup (not candidates for best)" in text
    # without the engine's result: the lowest agg_risk outside references, said to be without comparisons
    plain = "\n".join(summary_lines(res, None, 1.0))
    assert f"best encoder      {board.set_index('model').drop(index='sup')['agg_risk'].idxmin()} on jpg" in plain
    assert "no comparisons made" in plain


def test_pairing_by_seed_needs_every_run_to_be_a_pooled_seed():
    """Seed effects are fitted only when the records prove seed s is shared (every run pooled as a pretraining
    seed); one run that is not (a checkpoint among recipe seeds) makes the model one-way, and summary.json says why."""
    rng = np.random.default_rng(5)
    board, runs, ps, _, _ = simulate_zoo(rng, {"a": 0.3, "b": 0.32, "c": 0.35}, {"a": [0, 1, 2], "b": [0, 1, 2],
                                                                                  "c": [0, 1, 2]})
    eng = _engine(board, runs, ps)
    assert eng.paired and eng.fit("agg_risk").df == 9 - 3 - 3 + 1
    ckpt = pd.DataFrame([{"model": "ckpt", "base_model": "ckpt", "pretrain_seed": np.nan, "dataset": "sim",
                          "agg_risk": 31.0, "agg_risk_lo": 29.0, "agg_risk_hi": 33.0}])
    ps[("ckpt", "sim")] = {"y": ps[("a.s0", "sim")]["y"], "err01": rng.integers(0, 2, 600).astype(float)}
    runs2 = pd.concat([runs, ckpt], ignore_index=True)
    board2 = pd.concat([board, pd.DataFrame([{"model": "ckpt", "agg_risk": 31.0, "dataset": "sim"}])])
    eng = _engine(board2, runs2, ps)
    assert not eng.paired and "not pooled pretraining seeds (e.g. ckpt)" in eng.why
    assert eng.fit("agg_risk").df == 10 - 4  # one-way: runs - models
    r = eng.compare("a", "ckpt", "agg_risk")
    assert np.isfinite(r["p"]) and "one-way model fixed effects over 10 runs (6 residual df)" in r["method"]
    assert r["se"] > r["se_test"] > 0 and r["se_seed"] > 0  # the 1-run model gets the pooled seed variance

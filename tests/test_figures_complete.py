"""Issue 21: no report figure drops a model, a score or an acquisition function that the table it draws holds (runs
of one model over pretraining seeds pooled into one line / cell with its seed band), no legend covers data, and
nothing misleading is drawn (not-estimable design effects, poor scaling-law fits, rankings of fewer than 5 models,
unadjusted CIs passed off as the verdict's).

Each figure is checked on the figure itself: every text it shows (tick labels, titles, legend entries, direct
labels) is read from the matplotlib figure just before it is saved, and every legend's box is compared with every
axes' data area in display coordinates. Inputs: the committed ``results/`` (through ``riskdecomp report``) and a
synthetic results folder of 30 models with every score family, whose ``uncertainty.csv`` the producer
(:func:`riskdecomp.estimators.reliability.evaluate_scores`) computes from the per-sample files."""

import json
import re
import shutil
import warnings
from pathlib import Path

import matplotlib.text
import numpy as np
import pandas as pd
import pytest

import riskdecomp.report.plots as plots
from riskdecomp.cli import main
from riskdecomp.estimators.reliability import evaluate_scores
from riskdecomp.report.plots import PlotSkipped, collect_plots
from riskdecomp.utils.names import split_seed
from riskdecomp.utils.schema import PER_SAMPLE_TARGETS, score_columns

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
TOKEN = re.compile(r"[A-Za-z0-9_.\-]+")


# ------------------------------------------------------------------------------------------------ figure capture
@pytest.fixture
def drawn(monkeypatch):
    """Every figure saved while the test runs: name -> {"tokens": the words of every text it shows, "overlaps":
    (legend, axes title) pairs whose boxes intersect in display coordinates}."""
    seen = {}
    real_save = plots._save

    def save(fig, out_dir, name):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig.tight_layout()  # what _save does first: the layout the file gets
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        texts = [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        overlaps = [(i, ax.get_title()) for i, leg in enumerate(legends) for ax in fig.axes
                    if ax.get_visible() and leg.get_window_extent(renderer).overlaps(ax.bbox)]
        seen[name] = {"tokens": {w.rstrip(".") for t in texts for w in TOKEN.findall(t)}, "overlaps": overlaps,
                      "texts": texts}
        return real_save(fig, out_dir, name)

    monkeypatch.setattr(plots, "_save", save)
    return seen


def pooled(names) -> set:
    return {split_seed(str(m))[0] for m in names}


def assert_shows(fig: dict, names, what: str, figure: str) -> None:
    missing = sorted(set(map(str, names)) - fig["tokens"])
    assert not missing, f"{figure} does not show the {what} {missing}"


def expected(res: Path) -> dict:
    """What each table of a results folder holds: the figure name -> (models, scores or acquisitions)."""
    unc = pd.read_csv(res / "uncertainty.csv")
    bins = unc[unc["metric"].str.startswith("acc_bin_")]
    per_models, per_scores = set(), set()
    ens = {c for f in (res / "ensemble").glob("*.csv") for c in pd.read_csv(f, nrows=1).columns
           if c.startswith("ens_")} if (res / "ensemble").is_dir() else set()
    for f in (res / "per_sample").glob("*.csv"):
        per_models.add(f.stem.split("@")[0])
        per_scores |= set(score_columns(pd.read_csv(f, nrows=1).columns))
    for f in (res / "ensemble").glob("*.csv") if (res / "ensemble").is_dir() else []:
        e = pd.read_csv(f)
        ens -= {c for c in ens if c in e and e[c].notna().sum() < 2}  # a score without values: nothing to draw
    al = pd.read_csv(res / "active_learning.csv")
    lb = pd.read_csv(res / "leaderboard.csv")
    return {"uncertainty_metrics": (pooled(unc["model"]), set(unc["score"])),
            "uncertainty_bins": (pooled(bins["model"]), set(bins["score"])),
            "risk_coverage": (pooled(per_models), per_scores | ens),
            "active_learning": (pooled(al["model"]), set(al["acquisition"])),
            f"components_{lb['dataset'][0]}": (set(lb["model"]), set()),
            f"ranking_change_{lb['dataset'][0]}": (set(lb["model"]), set())}


def assert_complete(res: Path, seen: dict) -> None:
    """Every model and score (acquisition) of every table is shown by the figure drawing it, and listed in
    plots/manifest.json; no legend of any figure covers an axes."""
    for figure, (models, scores) in expected(res).items():
        assert figure in seen, f"{figure} not drawn"
        assert_shows(seen[figure], models, "models", figure)
        assert_shows(seen[figure], scores, "scores", figure)
    for figure, fig in seen.items():
        assert fig["overlaps"] == [], f"{figure}: a legend covers the axes {fig['overlaps']}"
    manifest = json.loads((res / "plots" / "manifest.json").read_text())["figures"]
    for figure, (models, scores) in expected(res).items():
        assert set(manifest[figure]["models"]) == models, figure
        if figure == "risk_coverage":  # a score column without values is named as such, never dropped silently
            ens_files = list((res / "ensemble").glob("*.csv")) if (res / "ensemble").is_dir() else []
            empty = {c for f in ens_files for c in pd.read_csv(f).columns if c.startswith("ens_")} - scores
            assert set(manifest[figure]["without_values"]) == empty
        key = "acquisitions" if figure == "active_learning" else "scores"
        if scores:
            assert set(manifest[figure][key]) == scores, figure


# ------------------------------------------------------------------------------------------------ committed results
@pytest.fixture(scope="module")
def committed_report(tmp_path_factory):
    res = tmp_path_factory.mktemp("committed") / "results"
    shutil.copytree(RESULTS, res, ignore=shutil.ignore_patterns("runs", "plots", "report.html"))
    return res


def test_committed_report_draws_every_model_score_and_acquisition(committed_report, drawn, tmp_path):
    """`riskdecomp report` on the committed results: the uncertainty figures show all 13 models (not the first 10
    runs: supervised and init seeds only) and all 16 scores (post_var and the probe scores included), risk-coverage
    every score (not the first 10), active learning every model pooled over its seeds; no legend covers data."""
    res = Path(shutil.copytree(committed_report, tmp_path / "res"))
    try:
        code = main(["report", "--results", str(res)])
    except SystemExit as exc:
        code = exc.code
    assert not code
    assert_complete(res, drawn)
    assert len(expected(res)["uncertainty_metrics"][0]) == 13 and "post_var" in expected(res)["risk_coverage"][1]
    # seeds pooled: one row / panel per model with its run count, never one per run
    assert not any(re.search(r"\.s\d+$", w) for f in ("uncertainty_metrics", "risk_coverage", "active_learning")
                   for w in drawn[f]["tokens"])
    assert "simclr (5 runs)" in drawn["uncertainty_metrics"]["texts"]
    # the approx fit of the committed design effects is singular (7 terms without a standard error): no approx
    # coefficient is drawn, and the caption says why instead
    assert "approximation" not in drawn["design_effects"]["texts"]
    page = (res / "report.html").read_text()
    assert "approx: not estimable: " in page


# ------------------------------------------------------------------------------------------------ 30 synthetic models
SCORES = ["knn_1_cos", "knn_10_cos", "knn_100_cos", "knn_1_euc", "knn_10_euc", "knn_100_euc", "gmm_nll", "vmf_nll",
          "neg_norm", "aug_nc_100", "aug_disp", "probe_entropy", "probe_lc", "probe_margin"]
ACQUISITIONS = ["random", "least_confidence", "entropy", "margin", "density", "coreset"]


def _runs() -> list:
    """30 models: 8 with 3 pretraining seeds, 22 single runs (46 runs)."""
    return [f"enc{i:02d}.s{s}" for i in range(8) for s in range(3)] + [f"enc{i:02d}" for i in range(8, 30)]


@pytest.fixture(scope="module")
def many_models(tmp_path_factory):
    """A results folder of 30 models on one dataset with every score family: per-sample files (post_var for the
    'stochastic' ones only), the zoo's ensemble scores, uncertainty.csv from the producer, active-learning curves
    and a leaderboard with few-shot columns."""
    res = tmp_path_factory.mktemp("many") / "results"
    (res / "per_sample").mkdir(parents=True)
    (res / "ensemble").mkdir()
    rng = np.random.default_rng(0)
    n = 200
    y = rng.integers(0, 4, n)
    ens = pd.DataFrame({"index": np.arange(n), "y": y, "ens_nc_100": rng.random(n), "ens_var": rng.random(n)})
    ens.to_csv(res / "ensemble" / "synth.csv", index=False)
    unc, al = [], []
    for k, run in enumerate(_runs()):
        err = (rng.random(n) < 0.3 + 0.01 * (k % 20)).astype(float)
        ps = pd.DataFrame({"index": np.arange(n), "y": y, "err01": err, "loss": err + rng.random(n),
                           "brier_ovo": err * 0.5 + 0.1 * rng.random(n)})
        for sc in SCORES + (["post_var"] if split_seed(run)[0] in ("enc03", "enc12") else []):
            ps[sc] = err * rng.random() + rng.random(n)
        ps.to_csv(res / "per_sample" / f"{run}@synth.csv", index=False)
        full = ps.merge(ens, on=["index", "y"])
        m = evaluate_scores(full[score_columns(full.columns)], full[list(PER_SAMPLE_TARGETS)], n_boot=5, seed=0)
        unc.append(m.assign(model=run, dataset="synth"))
        for acq in ACQUISITIONS:
            for seed in (0, 1):
                for n_labels in (20, 40, 60):
                    al.append({"model": run, "dataset": "synth", "acquisition": acq, "seed": seed,
                               "n_labels": n_labels, "accuracy": 0.3 + n_labels / 400 + 0.02 * rng.random(),
                               "worst_class_accuracy": 0.1})
    pd.concat(unc).to_csv(res / "uncertainty.csv", index=False)
    pd.DataFrame(al).to_csv(res / "active_learning.csv", index=False)
    models = sorted(pooled(_runs()))
    comp = rng.random((len(models), 4)) * [1, 20, 5, 2] + [40, 0, 0, -1]
    lb = pd.DataFrame(comp, columns=["approx", "usability", "probe_gen", "enc_gen"])
    lb.insert(0, "model", models)
    lb.insert(1, "dataset", "synth")
    lb["agg_risk"] = lb[["approx", "usability", "probe_gen", "enc_gen"]].sum(axis=1)
    lb["fewshot_5shot"] = lb["agg_risk"] + 15 + 3 * rng.random(len(lb))
    lb["fewshot_10pct"] = lb["agg_risk"] + 8 + 3 * rng.random(len(lb))
    lb["n_train"], lb["n_classes"] = 2000, 4
    lb["objective"] = [["simclr", "byol", "vicreg"][i % 3] for i in range(len(lb))]
    lb.to_csv(res / "leaderboard.csv", index=False)
    return res


def test_thirty_models_every_figure_complete(many_models, drawn):
    """30 models (46 runs) with every score family: each uncertainty / active-learning figure shows every model
    (pooled over seeds), every score (ensemble scores and post_var included) and every acquisition; the ranking
    names all 30; no legend covers data."""
    made, notes = collect_plots(many_models, many_models / "plots", color_by=None)
    assert_complete(many_models, drawn)
    assert {"ens_nc_100", "ens_var", "post_var"} <= expected(many_models)["risk_coverage"][1]
    assert len(expected(many_models)["uncertainty_metrics"][0]) == 30


def test_legends_never_cover_data_in_any_figure(many_models, drawn, tmp_path):
    """Every figure collect_plots draws (leaderboard ones included) keeps its legends outside every axes."""
    collect_plots(many_models, tmp_path / "plots", color_by="objective")
    assert {"usability_vs_probe_gen", "uncertainty_metrics", "active_learning"} <= set(drawn)
    bad = {f: v["overlaps"] for f, v in drawn.items() if v["overlaps"]}
    assert bad == {}


# ------------------------------------------------------------------------------------------------ nothing misleading
def test_design_effects_draws_only_estimable_and_names_the_rest(tmp_path, drawn):
    """With the producer's `estimable` / `why` columns: a row not estimable is never drawn and the caption says
    'not estimable: <why>' for it; an outcome with no estimable row gets no panel."""
    eff = pd.read_csv(RESULTS / "analysis" / "design_effects.csv")
    eff = eff[eff["source"] == "ours"].copy()
    eff["estimable"] = eff["component"] != "approx"
    eff["why"] = np.where(eff["estimable"], "", "approx is constant across the zoo's candidates")
    eff.loc[eff["component"] != "approx", ["coef", "se", "p", "ci_lo", "ci_hi"]] = \
        eff.loc[eff["component"] != "approx", ["coef", "se", "p", "ci_lo", "ci_hi"]].fillna(1.0)
    # one usability term the producer calls not estimable although its numbers are finite
    odd = eff.index[(eff["component"] == "usability") & (eff["treatment"] == "z_dim")]
    eff.loc[odd, ["estimable", "why"]] = [False, "near-singular design (condition number 1e9)"]
    _, caption = plots.plot_design_effects(eff, tmp_path)
    assert "approx: not estimable: approx is constant across the zoo's candidates" in caption
    assert "usability: not estimable: near-singular design (condition number 1e9) (z_dim=log(z_dim))" in caption
    assert "approximation" not in drawn["design_effects"]["texts"]
    manifest = {}
    plots.plot_design_effects(eff, tmp_path, manifest=manifest)
    assert manifest["design_effects"]["outcomes"] == ["usability", "probe_gen", "enc_gen", "agg_risk"]
    # nothing estimable at all: a note naming why, no figure
    eff["estimable"] = False
    with pytest.raises(PlotSkipped, match="design effects: nothing estimable: approx: not estimable: approx is"):
        plots.plot_design_effects(eff, tmp_path / "none")


def test_scaling_law_not_drawn_when_its_fit_is_poor(tmp_path):
    """The analysis summary's `shown: false` wins (its `why` is the note); without it the stated rule applies:
    a fit with R² < 0.5 is replaced by 'not shown: R² ... < 0.5'."""
    from riskdecomp.analysis.scaling import fit_scaling_law

    lb = pd.read_csv(RESULTS / "leaderboard.csv")
    path, caption = plots.plot_scaling_law(lb, tmp_path)  # the committed fit: R² 0.95, drawn with its quality
    assert "R² 0.953" in caption and path.is_file()
    rng = np.random.default_rng(1)
    bad = lb.copy()
    for c in [c for c in lb if c.startswith("fewshot_") and not c.endswith("_std")]:
        bad[c] = rng.permutation(bad[c].to_numpy())  # few-shot errors that no longer follow the components
    r2 = fit_scaling_law(bad)[0]["r2_fewshot"]
    assert r2 < 0.5
    with pytest.raises(PlotSkipped, match=rf"^scaling law: not shown: .*few-shot R² {r2:.2f} < 0\.5 \(rule: "):
        plots.plot_scaling_law(bad, tmp_path)
    with pytest.raises(PlotSkipped, match=r"^scaling law: not shown: R² 0\.28 < 0\.5 on a 4-model zoo$"):
        plots.plot_scaling_law(lb, tmp_path, quality={"r2": 0.28, "shown": False, "why": "R² 0.28 < 0.5 on a "
                                                                                          "4-model zoo"})


def test_rankings_need_five_models(tmp_path):
    """Ranking change and ranking stability over seeds are not drawn for 4 models; the note says why."""
    lb = pd.read_csv(RESULTS / "leaderboard.csv")
    four = lb[lb["model"].isin(["supervised", "init", "simclr", "byol"])]
    with pytest.raises(PlotSkipped, match=r"^ranking change: not shown: cifar10-mini: 4 models \(< 5 needed"):
        plots.plot_ranking_change(four, tmp_path)
    seeds = pd.read_csv(RESULTS / "leaderboard_seeds.csv")
    splits = pd.read_csv(RESULTS / "analysis" / "seed_ranking_stability.csv")
    with pytest.raises(PlotSkipped, match=r"^ranking stability: not shown: cifar10-mini: 4 models"):
        plots.plot_seed_ranking(seeds[seeds["base_model"].isin(four["model"])], splits, tmp_path)
    made = plots.plot_ranking_change(lb[lb["model"] != "init"].head(5), tmp_path)  # 5 models: drawn
    assert len(made) == 1


def _whiskers(fig_axes) -> list:
    """(lo, hi) of every horizontal error bar of an axes."""
    out = []
    for coll in fig_axes.collections:
        for seg in coll.get_segments():
            if len(seg) == 2 and seg[0][1] == seg[1][1]:
                out.append((round(float(min(seg[0][0], seg[1][0])), 6), round(float(max(seg[0][0], seg[1][0])), 6)))
    return sorted(out)


def test_seed_contrasts_draw_the_adjusted_ci_when_the_table_has_it(tmp_path, monkeypatch):
    """delta_<x>_adj_lo/_hi present: those whiskers are drawn and the caption says which CI; absent: the
    unadjusted CI is drawn and labelled UNADJUSTED (caption and axis)."""
    figs = {}
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, d, n: (figs.__setitem__(n, [ax for ax in fig.axes]),
                                                           real_save(fig, d, n))[1])
    def without_adjusted(name):  # a folder written before the engine's adjusted CIs
        t = pd.read_csv(RESULTS / "analysis" / name)
        return t.drop(columns=[c for c in t.columns if "_adj_" in c])

    pairs, con = without_adjusted("controlled_pairs.csv"), without_adjusted("baseline_contrasts.csv")
    _, caption = plots.plot_seed_contrasts(pairs, con, tmp_path)
    assert "UNADJUSTED 95 % CI" in caption
    assert all("UNADJUSTED" in ax.get_xlabel() for ax in figs["seed_contrasts"])
    for t in (pairs, con):
        for c in ("usability", "probe_gen", "enc_gen", "agg_risk"):
            half = (t[f"delta_{c}_hi"] - t[f"delta_{c}_lo"]) * 0.8
            t[f"delta_{c}_adj_lo"], t[f"delta_{c}_adj_hi"] = t[f"delta_{c}"] - half, t[f"delta_{c}"] + half
    _, caption = plots.plot_seed_contrasts(pairs, con, tmp_path)
    assert "the CI at the level the Holm verdict used" in caption and "UNADJUSTED" not in caption
    agg = figs["seed_contrasts"][3]
    assert "Holm-adjusted" in agg.get_xlabel()
    rows = pd.concat([con, pairs[pairs["p_holm_agg_risk"].notna()]])
    want = sorted((round(float(lo), 6), round(float(hi), 6))
                  for lo, hi in zip(rows["delta_agg_risk_adj_lo"], rows["delta_agg_risk_adj_hi"]))
    assert _whiskers(agg) == want

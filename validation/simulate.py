"""Known-truth calibration of the per-run estimates: bias, RMSE and 95% CI coverage of every quantity
``riskdecomp.decompose`` reports, on simulated features whose true values are known.

    python validation/simulate.py [--replicates 50] [--scenarios a,b] [--jobs 2] [--out docs/calibration.md]

Data (one *scenario* = one distribution): K classes with equal priors, class means m_k ~ N(0, s^2 I_d) (fixed per
scenario). A point of class y has the supervised *reference* encoder's features z = m_y + e (e ~ N(0, I_d)) and
the evaluated encoder's features x = z + tau * u (u ~ N(0, I_d)), with tau = ``tau_train`` on the train images
(the encoder was pretrained on them) and the larger ``tau_test`` on the test images it never saw: so the encoder
is worse than the reference (usability > 0) and worse on unseen images (enc_gen > 0). Train and test sets are
class-balanced (as CIFAR-10's are). Every class shares one isotropic covariance, so the Bayes classifier (nearest
class mean) is linear: the best linear probe's population error is the Bayes error.

Each replicate draws a fresh D_tr / D_te and runs ``decompose`` exactly as the runner calls it (reference = the
reference features of the same train points, ``seed`` = the replicate's number, ``n_boot`` = 1000, standardized
features, the default C grid and holdout). What "true" means for each quantity is :data:`TRUTH` (written into the
table): population values are Bayes errors computed on ``POP_POINTS`` fresh points; values conditional on the
fitted probes (the CIs claim to cover the evaluation points only, given the probes: ``docs/protocol.md``) are the
probes' errors on ``--truth-points`` fresh points of the train / test distribution. The held-out probes are not
returned by ``decompose``: a second call on the same D_tr and seed with a large fresh train-distribution sample as
its "test set" refits them identically (checked: same C and err_train_train) and its ``err_sub_test`` is their
train-distribution error.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

#: points per population (Bayes) error: binomial SE <= 0.035 points
POP_POINTS = 2_000_000
N_BOOT = 1000
QUANTITIES = ("err_ref_train_train", "err_train_train", "err_heldout", "err_test",
              "approx", "usability", "probe_gen", "enc_gen", "agg_risk")

#: what "true" means for each reported quantity (R_tr / R_te: 0-1 error on the train / test distribution;
#: R*: the population-optimal linear probe's error = the Bayes error here; h_test: the probe the tool fitted on D_tr
#: for err_test; h_k: its held-out probes, fitted on D_tr \ S_k)
TRUTH = {
    "err_ref_train_train": "R*_tr(reference): the best linear probe's population error on the reference features",
    "err_train_train": "R*_tr(encoder): the best linear probe's population error on the encoder's train-image features",
    "err_heldout": "mean_k R_tr(h_k): train-distribution error of the tool's own held-out probes (given D_tr)",
    "err_test": "R_te(h_test): test-distribution error of the probe the tool fitted (given D_tr)",
    "approx": "R*_tr(reference)",
    "usability": "R*_tr(encoder) - R*_tr(reference)",
    "probe_gen": "mean_k R_tr(h_k) - R*_tr(encoder)",
    "enc_gen": "R_te(h_test) - mean_k R_tr(h_k)",
    "agg_risk": "R_te(h_test) (= the sum of the four true components)",
}
#: quantities whose truth is conditional on the fitted probes (varies per replicate); the others are population
#: constants of the scenario
CONDITIONAL = ("err_heldout", "err_test", "probe_gen", "enc_gen", "agg_risk")


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    n_train: int
    n_test: int
    d: int
    n_classes: int
    separation: float  # class means ~ N(0, separation^2 I_d)
    tau_train: float = 0.7
    tau_test: float = 1.0
    means_seed: int = 7

    def means(self) -> np.ndarray:
        return np.random.default_rng(self.means_seed).normal(size=(self.n_classes, self.d)) * self.separation


SCENARIOS = {s.name: s for s in (
    Scenario("moderate", "the issue's pilot shape: 2,000 train / 1,000 test, 32-d, 10 classes", 2000, 1000, 32, 10, 0.6),
    Scenario("separated", "well separated classes (errors of a few percent)", 2000, 1000, 32, 10, 0.9),
    Scenario("overlapping", "overlapping classes (errors around 50%)", 2000, 1000, 32, 10, 0.35),
    Scenario("n_le_d", "fewer train points than dimensions (200 train, 256-d): a separable train set",
             200, 1000, 256, 10, 0.2),
    # small and fast: what tests/test_calibration.py runs (more replicates, smaller problems)
    Scenario("small", "tests' scenario: 500 train / 500 test, 16-d, 5 classes", 500, 500, 16, 5, 0.6),
)}
DEFAULT_SCENARIOS = ("moderate", "separated", "overlapping", "n_le_d")


def draw(n: int, tau: float, rng: np.random.Generator, means: np.ndarray, reference: bool = True):
    """n class-balanced points (n/K per class, shuffled): (reference features z or None, encoder features x, labels
    y). Without ``reference`` x is drawn directly from its marginal N(m_y, (1 + tau^2) I) (for the truth samples)."""
    K, d = means.shape
    y = rng.permutation(np.resize(np.arange(K), n))
    if not reference:
        x = means[y].astype(np.float32) + np.float32(np.hypot(1.0, tau)) * rng.standard_normal((n, d), np.float32)
        return None, x, y
    z = means[y] + rng.standard_normal((n, d))
    x = z + tau * rng.standard_normal((n, d))
    return z.astype(np.float32), x.astype(np.float32), y


def bayes_error(means: np.ndarray, sigma: float, n: int = POP_POINTS, seed: int = 12345) -> float:
    """Error (%) of the nearest-class-mean rule (the Bayes classifier) on N(m_y, sigma^2 I), equal priors.

    Exact reduction: only the noise inside the span of the differences m_k - m_0 changes which mean is nearest
    (the rest adds the same squared distance to every class), so it is simulated in that (K-1)-dim span."""
    rng = np.random.default_rng(seed)
    K = len(means)
    q, _ = np.linalg.qr((means[1:] - means[0]).T)  # d x (K-1) orthonormal basis of the span
    m = (means - means[0]) @ q  # the means' coordinates in it (K x (K-1))
    wrong, chunk = 0, 500_000
    for start in range(0, n, chunk):
        c = min(chunk, n - start)
        y = rng.integers(K, size=c)
        x = m[y] + sigma * rng.standard_normal((c, m.shape[1]))
        dist = (x * x).sum(1)[:, None] - 2 * x @ m.T + (m * m).sum(1)[None]
        wrong += int(np.sum(dist.argmin(1) != y))
    return 100.0 * wrong / n


def population_truth(scen: Scenario) -> dict:
    means = scen.means()
    return {"R_ref": bayes_error(means, 1.0), "R_enc_train": bayes_error(means, float(np.hypot(1.0, scen.tau_train))),
            "R_enc_test": bayes_error(means, float(np.hypot(1.0, scen.tau_test)))}


def replicate(scen: Scenario, i: int, pop: dict, truth_points: int = 100_000) -> list[dict]:
    """One replicate: the tool's estimates and CIs against the truths. Returns one row per quantity."""
    from riskdecomp.estimators.decomposition import decompose

    means = scen.means()
    rng = np.random.default_rng([scen.means_seed, scen.n_train, scen.d, i])
    z_tr, x_tr, y_tr = draw(scen.n_train, scen.tau_train, rng, means)
    _, x_te, y_te = draw(scen.n_test, scen.tau_test, rng, means)
    dec = decompose(x_tr, y_tr, x_te, y_te, reference=(z_tr, y_tr), seed=i, n_boot=N_BOOT, device="cpu")
    # truths conditional on the fitted probes, on fresh points
    _, x_big_te, y_big_te = draw(truth_points, scen.tau_test, rng, means, reference=False)
    r_test = 100.0 * float(np.mean(dec.test_probe.predict(x_big_te) != y_big_te))
    del x_big_te
    _, x_big_tr, y_big_tr = draw(truth_points, scen.tau_train, rng, means, reference=False)
    again = decompose(x_tr, y_tr, x_big_tr, y_big_tr, seed=i, n_boot=0, device="cpu")
    for key in ("err_train_train", "C_heldout", "C_test"):
        if again[key] != dec[key]:
            raise RuntimeError(f"refit differs: {key} {again[key]} vs {dec[key]} (replicate {i})")
    r_heldout = float(again["err_sub_test"])
    truth = {
        "err_ref_train_train": pop["R_ref"], "approx": pop["R_ref"], "err_train_train": pop["R_enc_train"],
        "usability": pop["R_enc_train"] - pop["R_ref"], "err_heldout": r_heldout,
        "probe_gen": r_heldout - pop["R_enc_train"], "err_test": r_test, "agg_risk": r_test,
        "enc_gen": r_test - r_heldout,
    }
    return [{"scenario": scen.name, "replicate": i, "quantity": q, "estimate": float(dec[q]), "truth": truth[q],
             "lo": float(dec[f"{q}_lo"]), "hi": float(dec[f"{q}_hi"]), "C_test": float(dec["C_test"]),
             "C_train_train": float(dec["C_train_train"])} for q in QUANTITIES]


def _job(args):
    scen_name, i, pop, truth_points = args
    import torch

    torch.set_num_threads(1)
    return replicate(SCENARIOS[scen_name], i, pop, truth_points)


def run(scenarios, replicates: int, jobs: int = 1, truth_points: int = 100_000) -> tuple[pd.DataFrame, dict]:
    """All replicates of the named scenarios: (tidy frame of estimates / truths / CIs, population truths)."""
    pops = {name: population_truth(SCENARIOS[name]) for name in scenarios}
    work = [(name, i, pops[name], truth_points) for name in scenarios for i in range(replicates)]
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as ex:
            rows = [r for part in ex.map(_job, work) for r in part]
    else:
        rows = [r for w in work for r in _job(w)]
    return pd.DataFrame(rows), pops


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per scenario x quantity: mean estimate / truth, bias (+ its Monte-Carlo SE), RMSE, CI coverage, mean width.

    ``coverage_expected``: coverage of the expected truth over training sets (the mean over replicates of a
    conditional truth), i.e. also counting the probe-refit noise the CIs leave out."""
    out = []
    for (scen, q), g in frame.groupby(["scenario", "quantity"], sort=False):
        err = g["estimate"] - g["truth"]
        expected = g["truth"].mean()
        out.append({
            "scenario": scen, "quantity": q, "replicates": len(g), "estimate": g["estimate"].mean(),
            "truth": expected, "bias": err.mean(), "bias_se": err.std(ddof=1) / np.sqrt(len(g)),
            "rmse": float(np.sqrt(np.mean(err ** 2))),
            "coverage": float(np.mean((g["lo"] <= g["truth"]) & (g["truth"] <= g["hi"]))),
            "coverage_expected": float(np.mean((g["lo"] <= expected) & (expected <= g["hi"]))),
            "width": float((g["hi"] - g["lo"]).mean()),
        })
    return pd.DataFrame(out)


def bracket(frame: pd.DataFrame) -> pd.DataFrame:
    """Per scenario: how often the best linear probe's population error R*_tr(encoder) (err_train_train's truth) lies
    within [err_train_train_lo, err_heldout_hi] -- the optimistic in-sample error's lower CI end and the held-out
    error's upper one -- and the mean width of that interval."""
    out = []
    for scen, g in frame.groupby("scenario", sort=False):
        tt = g[g["quantity"] == "err_train_train"].set_index("replicate")
        ho = g[g["quantity"] == "err_heldout"].set_index("replicate").loc[tt.index]
        inside = (tt["lo"] <= tt["truth"]) & (tt["truth"] <= ho["hi"])
        out.append({"scenario": scen, "hits": int(inside.sum()), "replicates": len(tt),
                    "width": float((ho["hi"] - tt["lo"]).mean())})
    return pd.DataFrame(out)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_seconds() -> float:
    """CPU time of this process and its finished workers (user + system)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def markdown(summary: pd.DataFrame, pops: dict, frame: pd.DataFrame, *, command: str, seconds: float,
             cpu_seconds: float) -> str:
    """docs/calibration.md: scenarios, truth definitions, the bias / RMSE / coverage table."""
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Calibration of the per-run estimates (known-truth simulation)",
        "",
        "Written by `validation/simulate.py` (do not edit by hand; rerun it). Command:",
        "",
        f"    {command}",
        "",
        f"Date: {date}; code: commit {_git_commit()}; {seconds / 60:.1f} min wall time, {cpu_seconds / 60:.1f} "
        "CPU-minutes (on a machine shared with other jobs: wall time on 2 idle cores is about half the CPU time). "
        "Each replicate draws "
        "fresh train / test sets and runs `riskdecomp.decompose` as the runner calls it (reference features of the "
        f"same train points, `n_boot` = {N_BOOT}, standardized features, the default C grid, 5-fold cross-fitted "
        "held-out error, `seed` = the replicate's number). All numbers are in percentage points. How the data are "
        "drawn: the docstring of `validation/simulate.py` (Gaussian classes with a shared isotropic covariance, "
        "so the best linear probe is the Bayes classifier; the encoder's features are the reference's plus noise, "
        "more of it on test images than on the train images it was pretrained on).",
        "",
        "## Scenarios",
        "",
        "| scenario | n_train | n_test | d | classes | about | R*_tr(reference) | R*_tr(encoder) | R*_te(encoder) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, pop in pops.items():
        s = SCENARIOS[name]
        lines.append(f"| {name} | {s.n_train} | {s.n_test} | {s.d} | {s.n_classes} | {s.about} | "
                     f"{pop['R_ref']:.2f} | {pop['R_enc_train']:.2f} | {pop['R_enc_test']:.2f} |")
    lines += [
        "",
        "R*: the Bayes error (= the best linear probe's) on "
        f"{POP_POINTS:,} fresh points. C chosen by the tool: err_test's C at the grid's largest value (100) in "
        + ", ".join(f"{n} {100 * np.mean(g.drop_duplicates('replicate')['C_test'] >= 99.9):.0f}%"
                    for n, g in frame.groupby("scenario", sort=False))
        + " of the replicates.",
        "",
        "## What \"true\" means",
        "",
        "R_tr / R_te: 0-1 error on the train-image / test-image distribution; R*: the population-optimal linear "
        "probe's error; h_test: the probe the tool fitted on D_tr for err_test; h_k: its held-out probes "
        "(fitted on D_tr \\ S_k). Truths given D_tr are measured on fresh points per replicate "
        "(`--truth-points`).",
        "",
        "| quantity | truth |",
        "|---|---|",
    ]
    lines += [f"| {q} | {TRUTH[q]} |" for q in QUANTITIES]
    lines += [
        "",
        "## Bias, RMSE and coverage of the 95% CI",
        "",
        "bias = mean(estimate - truth) (± its Monte-Carlo standard error); coverage = share of replicates whose "
        "95% CI contains the truth; width = mean CI width. `coverage vs E` also counts the probe-refit noise: it "
        "is the coverage of the truth's mean over replicates (the expected value over training sets; the same as "
        "coverage for the population truths).",
        "",
    ]
    scen_names = list(dict.fromkeys(summary["scenario"]))
    cov = summary.pivot(index="quantity", columns="scenario", values="coverage")
    n_cov = summary.assign(hits=summary["coverage"] * summary["replicates"]).groupby("quantity")[["hits", "replicates"]].sum()
    lines += ["## Coverage of the 95% CI, per scenario and pooled", "",
              "| quantity | " + " | ".join(scen_names) + " | pooled |",
              "|---|" + "---|" * (len(scen_names) + 1)]
    for q in QUANTITIES:
        pooled = n_cov.loc[q, "hits"] / n_cov.loc[q, "replicates"]
        lines.append(f"| {q} | " + " | ".join(f"{cov.loc[q, s]:.2f}" for s in scen_names)
                     + f" | {pooled:.2f} ({int(round(n_cov.loc[q, 'hits']))}/{int(n_cov.loc[q, 'replicates'])}) |")
    br = bracket(frame)
    lines += ["", "A conservative interval for the best linear probe's population error (err_train_train's truth, "
              "which its own CI misses): [err_train_train_lo, err_heldout_hi] contained it in "
              + ", ".join(f"{r.scenario} {r.hits}/{r.replicates} (mean width {r.width:.2f})" for r in br.itertuples())
              + f" of the runs: {int(br['hits'].sum())}/{int(br['replicates'].sum())} in all.", ""]
    for scen, g in summary.groupby("scenario", sort=False):
        lines += [f"### {scen} ({int(g['replicates'].iloc[0])} replicates)", "",
                  "| quantity | mean estimate | mean truth | bias | RMSE | coverage | coverage vs E | CI width |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in g.itertuples():
            lines.append(f"| {r.quantity} | {r.estimate:.2f} | {r.truth:.2f} | {r.bias:+.2f} ± {r.bias_se:.2f} | "
                         f"{r.rmse:.2f} | {r.coverage:.2f} | {r.coverage_expected:.2f} | {r.width:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicates", type=int, default=50)
    ap.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                    help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    ap.add_argument("--truth-points", type=int, default=100_000,
                    help="fresh points per replicate for the truths given the fitted probes")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here (e.g. docs/calibration.md)")
    ap.add_argument("--csv", type=Path, default=None, help="also write every replicate's rows here")
    args = ap.parse_args(argv)
    names = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown or args.replicates < 2:
        ap.error(f"unknown scenario(s) {unknown}" if unknown else "--replicates must be >= 2")
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    frame, pops = run(names, args.replicates, args.jobs, args.truth_points)
    summary = summarize(frame)
    cmd = "python validation/simulate.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(summary, pops, frame, command=cmd.strip(), seconds=time.perf_counter() - t0,
                    cpu_seconds=_cpu_seconds() - cpu0)
    if args.csv:
        frame.to_csv(args.csv, index=False)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

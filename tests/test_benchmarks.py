"""The benchmark suite's entry point: ``benchmarks/run.py --quick`` writes a complete results.json, and the helpers
it relies on measure what they claim (per-child peak memory, log-log slope, balanced extraction)."""

import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import ROW_KEYS, loglog_slope, run_child  # noqa: E402

GROUPS = ("scale", "featurize", "e2e", "probes", "gflops", "knn")
BUDGET_S = 30


def test_run_quick_writes_results_json(tmp_path):
    out = tmp_path / "results.json"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--budget", str(BUDGET_S),
                           "--out", str(out)], capture_output=True, text=True, timeout=BUDGET_S + 15, cwd=ROOT)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert wall < BUDGET_S + 15
    doc = json.loads(out.read_text())
    machine = doc["machine"]
    for key in ("cpu_model", "cores", "ram_gb", "torch_version", "device", "date"):
        assert key in machine and machine[key] not in (None, "")
    assert doc["quick"] is True and doc["threads"] == 1 and doc["complete"] is True
    rows = doc["results"]
    assert rows, "no result rows"
    for r in rows:
        assert set(ROW_KEYS) <= set(r), r
        assert isinstance(r["name"], str) and r["name"]
        assert r["met"] in (True, False, None)
        assert r["seconds"] is None or r["seconds"] >= 0
        assert r["seconds"] is not None or r["notes"], f"a row without a time must say why: {r}"
    # every benchmark is accounted for: measured, or recorded as skipped / missing / failed
    names = " ".join(r["name"] for r in rows)
    for g in GROUPS:
        assert g in names or (g == "probes" and "decomposition" in names) or (g == "gflops" and "gflops" in names), g
    # nothing crashed: a row without numbers was skipped, is missing, or ran out of the budget
    for r in rows:
        if r["seconds"] is None:
            assert r["notes"].startswith(("skipped", "missing", "failed: timed out", "needs")), r
    # the first benchmark (scale, quick sizes) ran; on a loaded machine its first size may be all that fits
    scale = {r["name"]: r for r in rows if r["name"].startswith("scale_")}
    assert {"scale_n500", "scale_n1000", "scale_slope"} <= set(scale)
    if scale["scale_n500"]["seconds"] is not None:
        assert scale["scale_n500"]["seconds"] > 0 and scale["scale_n500"]["peak_memory_mb"] > 50
    if scale["scale_slope"]["ratio"] is not None:
        assert np.isfinite(scale["scale_slope"]["ratio"]) and scale["scale_slope"]["met"] in (True, False)
    # the table printed to stdout names the rows
    assert "scale_n500" in proc.stdout


def test_run_child_reports_its_own_peak_memory():
    grab = "import numpy as np; a = np.ones(200 * 2**20 // 8); print('{\"ok\": 1}')"
    big = run_child([sys.executable, "-c", grab])
    small = run_child([sys.executable, "-c", "print('{\"ok\": 2}')"])
    assert big.returncode == 0 and big.last_json() == {"ok": 1} and small.last_json() == {"ok": 2}
    assert big.peak_memory_mb - small.peak_memory_mb > 150  # the 200 MB array, not the parent's memory
    slow = run_child([sys.executable, "-c", "import time; time.sleep(30)"], timeout=1)
    assert slow.timed_out and slow.returncode is None and slow.seconds < 10


def test_loglog_slope_known_answers():
    n = np.array([25e3, 50e3, 100e3, 200e3])
    assert loglog_slope(n, 3e-5 * n) == pytest.approx(1.0)
    assert loglog_slope(n, 1e-9 * n ** 2) == pytest.approx(2.0)
    assert loglog_slope(n, 7.0 * n ** 0.5) == pytest.approx(0.5)


def test_extract_subset_is_class_balanced(tmp_path):
    from benchmarks.bench_featurize import extract_subset

    src = tmp_path / "src"
    for c in ("a", "b", "c"):
        (src / "val" / c).mkdir(parents=True)
        for i in range(6):
            (src / "val" / c / f"{i}.jpg").write_bytes(f"{c}{i}".encode())
    tarball = tmp_path / "val.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(src / "val", arcname="val")
    dest = extract_subset(tarball, tmp_path / "out", n_train=7, n_test=6)
    counts = {s: {c: len(list((dest / s / c).glob("*.jpg"))) for c in ("a", "b", "c")} for s in ("train", "test")}
    assert counts == {"train": {"a": 3, "b": 2, "c": 2}, "test": {"a": 2, "b": 2, "c": 2}}
    # train and test are disjoint files: the first ones of each class go to train
    assert (dest / "train" / "a" / "0.jpg").read_bytes() == b"a0"
    assert {p.name for p in (dest / "test" / "a").iterdir()} == {"3.jpg", "4.jpg"}


def test_gaussian_mixture_is_float32_and_learnable():
    from sklearn.neighbors import NearestCentroid

    from benchmarks.bench_scale import gaussian_mixture

    x, y = gaussian_mixture(1500, 32, 10, np.random.default_rng(0))
    assert x.dtype == np.float32 and x.shape == (1500, 32) and set(np.unique(y)) == set(range(10))
    acc = NearestCentroid().fit(x[:1000], y[:1000]).score(x[1000:], y[1000:])
    assert 0.5 < acc < 0.99  # classes overlap: neither chance nor trivially separable


def test_study_cost_is_computed_from_the_committed_anchors(tmp_path):
    """#16 section 4: the study's cost table is arithmetic on measured rows (the committed results JSONs, written by
    run.py), checked here against the anchors themselves; a figure without an anchor says "not measured"; and
    ``run.py --only studycost`` adds its rows to a results file without dropping any measured row."""
    from benchmarks.study_cost import IMAGENET_TEST, IMAGENET_TRAIN, estimate

    bench = ROOT / "benchmarks"
    cpu = {r["name"]: r for r in json.loads((bench / "results.json").read_text())["results"]}
    gpu = {r["name"]: r for r in json.loads((bench / "results-nvidia-h200.json").read_text())["results"]}
    rows = {r["name"]: r for r in estimate(bench / "results.json", bench / "results-nvidia-h200.json")}
    images = IMAGENET_TRAIN + IMAGENET_TEST
    one, hundred = rows["study_cost_resnet50"], rows["study_cost_100_resnet50"]
    assert one["disk_gb_float16"] == round(images * 2048 * 2 / 1e9, 1) == 5.5
    cores = json.loads((bench / "results.json").read_text())["machine"]["cores"]
    rate16 = cpu["featurize_resnet50"]["images_per_s"] * 16 / cores
    assert one["cpu16_featurize_hours"] == pytest.approx(images / rate16 / 3600, abs=0.01)
    dec = cpu["decomposition_2048x100"]
    work = IMAGENET_TRAIN / dec["n"] * 1000 / dec["k"]
    assert one["cpu16_decomposition_hours"] == pytest.approx(dec["seconds"] * work * cores / 16 / 3600, abs=0.01)
    assert one["h200_featurize_hours"] == pytest.approx(images / gpu["featurize_resnet50"]["images_per_s"] / 3600,
                                                        abs=0.01)
    assert one["h200_decomposition_hours"] == one["h200_total_hours"] == "not measured"
    assert hundred["cpu16_total_hours"] == pytest.approx(100 * one["cpu16_total_hours"], abs=1)
    assert rows["study_cost_vit_small"]["cpu16_decomposition_hours"] < one["cpu16_decomposition_hours"]

    out = tmp_path / "results.json"
    out.write_text((bench / "results.json").read_text())
    before = [r["name"] for r in json.loads(out.read_text())["results"] if not r["name"].startswith("study_cost")]
    proc = subprocess.run([sys.executable, str(bench / "run.py"), "--only", "studycost", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    names = [r["name"] for r in doc["results"]]
    assert [n for n in names if not n.startswith("study_cost")] == before
    assert {"study_cost_resnet50", "study_cost_100_vit_small"} <= set(names)
    assert {r["group"] for r in doc["results"] if r["name"].startswith("study_cost")} == {"studycost"}


def test_only_keeps_the_other_groups_rows(tmp_path):
    """``--only G`` replaces the rows of G and keeps every other group's measurement (with the date it was taken)."""
    out = tmp_path / "results.json"

    def run(only):
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", only,
                               "--budget", str(BUDGET_S), "--out", str(out)], capture_output=True, text=True,
                              timeout=BUDGET_S + 15, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(out.read_text())

    first = run("knn")
    knn = [r for r in first["results"] if r["group"] == "knn"]
    assert knn and all(r["measured"] == first["machine"]["date"] for r in knn)
    second = run("scale")
    groups = {r["group"] for r in second["results"]}
    assert groups == {"knn", "scale"}
    assert [r for r in second["results"] if r["group"] == "knn"] == knn  # kept as measured, not rerun
    third = run("knn")  # rerunning a group replaces its rows instead of adding a second copy
    assert sum(r["group"] == "knn" for r in third["results"]) == len(knn)


def test_fit_speed_rows_time_both_sides_at_each_C():
    """The fitspeed benchmark (quick sizes, two Cs, three distributions): one row per distribution and C with both
    sides' fastest of the alternating fits, their ratio and both test accuracies, a summary per distribution (its
    smallest ratio), then ``fit_speed``: the smallest ratio over every distribution; the two fits are of the same
    model (accuracies agree)."""
    from benchmarks.bench_probes import bench_fit_speed

    dists = ("synthetic", "easy", "illcond")
    rows = bench_fit_speed(quick=True, Cs=(0.01, 1.0), threads=1, distributions=dists, repeats=2)
    per_c = [f"fit_speed_{d}_C{c}" for d in dists for c in ("0.01", "1")]
    assert [r["name"] for r in rows] == per_c + [f"fit_speed_{d}" for d in dists] + ["fit_speed"]
    fits, summaries, overall = rows[:6], rows[6:9], rows[9]
    for r in fits:
        assert r["seconds"] > 0 and r["baseline_seconds"] > 0 and r["repeats"] == 2
        assert r["seconds"] == min(r["seconds_all"]) and r["baseline_seconds"] == min(r["baseline_seconds_all"])
        assert len(r["seconds_all"]) == len(r["baseline_seconds_all"]) == 2
        assert r["ratio"] == pytest.approx(r["baseline_seconds"] / r["seconds"])
        assert r["ours_converged"] and r["sklearn_convergence_warnings"] == 0
        assert r["accuracy_diff_points"] <= 0.3 and r["met"] == (r["ratio"] >= 3)
    sizes = {r["distribution"]: r["size"] for r in fits}
    assert len(set(sizes.values())) >= 2  # the distributions really differ (illcond is smaller)
    for d, s in zip(dists, summaries):
        mine = [r for r in fits if r["distribution"] == d]
        assert s["distribution"] == d and s["ratio"] == min(r["ratio"] for r in mine)
        assert s["met"] == all(r["met"] for r in mine)
    assert overall["ratio"] == min(r["ratio"] for r in fits)
    assert overall["distributions"] == list(dists) and overall["met"] == all(r["met"] for r in fits)
    assert ("MISSED" in overall["notes"]) == (not overall["met"])
    # the single-thread pass of run.py --only fitspeed: its own row names, one thread on both sides
    one = bench_fit_speed(quick=True, Cs=(1.0,), threads=1, distributions=("illcond",), repeats=1,
                          name="fit_speed_1thread")
    assert [r["name"] for r in one] == ["fit_speed_1thread_illcond_C1", "fit_speed_1thread_illcond", "fit_speed_1thread"]
    assert all(r["threads"] == 1 for r in one)


def test_fitspeed_alone_gets_a_budget_that_fits_its_four_distributions():
    """``run.py --only fitspeed`` without ``--budget`` is not cut by the 15-minute suite's budget (its sklearn fits
    on four distributions take ~25 minutes on 2 cores); the suite and quick runs keep theirs."""
    from benchmarks.run import DEFAULT_BUDGET_S, default_budget

    assert default_budget(["fitspeed"], quick=False) >= 1800
    assert default_budget(None, quick=False) == DEFAULT_BUDGET_S == default_budget(["knn"], quick=False)
    assert default_budget(["fitspeed"], quick=True) is None


def test_fit_speed_distributions_are_conditioned_as_described():
    """The well-conditioned distribution's z-scored covariance is near the identity; the badly conditioned one keeps
    a condition number of ~span^2 after z-scoring (per-column scaling cannot undo the rotation)."""
    from benchmarks.bench_probes import easy_features, illcond_features

    def cond(x):
        z = (x - x.mean(0)) / x.std(0)
        return np.linalg.cond(np.cov(z.T))

    assert cond(easy_features(4000, 32, 10)[0]) < 3
    assert cond(illcond_features(4000, 32, 10, span=100.0)[0]) > 1e3

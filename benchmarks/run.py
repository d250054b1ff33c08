"""Run riskdecomp's benchmark suite: print a table and write ``benchmarks/results.json``.

    python benchmarks/run.py [--quick] [--only NAME,...] [--budget SECONDS] [--threads N] [--out PATH]
                             [--device auto|cpu|cuda] [--large-baseline SECONDS]

Benchmarks (``--only`` takes these names):

  featurize  images/s of ``featurize`` vs the pure forward pass (timm resnet50 and vit_small, real JPEGs), and the
             cached rerun                                                       (benchmarks/bench_featurize.py)
  featurize_group  4 encoders sharing preprocessing, real JPEGs: one decoding pass for all (featurize_group) vs
             one-by-one vs their forward passes alone                           (benchmarks/bench_featurize.py)
  scale      time and peak memory of ``decompose`` at N = 25k..200k, log-log slope (benchmarks/bench_scale.py)
  memory     peak memory of ``decompose`` at 50k x 512 x 10 on cached features: float32 in memory vs float16
             memory-mapped (the default cache)                               (benchmarks/bench_memory.py)
  e2e        the README main job from an empty and from a full cache           (benchmarks/bench_e2e.py)
  probes     tuned decomposition at 50k x 512 x 10, our LinearProbe vs sklearn  (benchmarks/bench_probes.py)
  probes_large  the same at 50k x 2048 x 100; the sklearn side only with --large-baseline (it takes hours on
             2 cores, far beyond the 15-minute suite)                          (benchmarks/bench_probes.py)
  gflops     achieved GFLOP/s of the probe fit vs a plain matmul, at both sizes (benchmarks/bench_probes.py)
  fitspeed   one LinearProbe.fit vs one sklearn LogisticRegression(lbfgs) fit at C = 1e-3..100, CPU, alternating,
             on 4 distributions: synthetic, well-conditioned, badly conditioned, real features of the default zoo;
             each side on all cores, then both on one thread (fit_speed_1thread_*); the smallest ratio over all
             (only with --only: ~25-40 min on 2 shared cores)                    (benchmarks/bench_probes.py)
  torchmem   peak memory of the torch probe path (run on the CPU), chunked vs one pass, 100k x 32 x 1000
             (only with --only)                                                 (benchmarks/bench_probes.py)
  studycost  the 100-encoder ImageNet study's cost on a 16-core CPU and an H200, computed from the anchors
             in --out and results-nvidia-h200.json (an estimate, last)           (benchmarks/study_cost.py)
  knn        k-NN search vs sklearn brute force                                (benchmarks/bench_knn.py)

Each benchmark runs in a fresh Python process, so ``peak_memory_mb`` (the child's ``ru_maxrss``, via ``os.wait4``)
is its own; benchmarks that spawn one process per size or path (scale, e2e, memory) report each one's own peak. Ratios compare
two things measured side by side in the same process and run. A benchmark whose module is absent is recorded as
``missing``; one that fails or runs out of time is recorded with the reason, and the suite goes on.

``results.json``: ``{"machine": {cpu_model, cores, ram_gb, torch_version, device, date, ...}, "quick", "threads",
"total_seconds", "complete", "results": [{name, size, seconds, baseline_seconds, ratio, peak_memory_mb, target,
met, notes}, ...]}``, rewritten after every benchmark (``complete`` is false until the end). With ``--only``, the rows of the other groups already in ``out`` are kept (each row carries its ``group`` and the date it was ``measured``). ``--budget`` bounds the whole run (default 870 s, so the suite ends within 15 minutes; 2400 s with ``--only fitspeed``): a benchmark gets the time
left, later ones are recorded as skipped.
``--quick`` uses tiny sizes and 1 thread (meant to finish within a minute on an idle 2-core machine).
``--device`` (default ``auto``: CUDA when present) is where featurization, probes and the scale runs go; it is
passed to the children as ``$RISKDECOMP_BENCH_DEVICE``. The sklearn and k-NN baselines always run on the CPU.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROW_KEYS, machine_info, row, run_function, usable_cores  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"
ORDER = ("scale", "memory", "featurize", "featurize_group", "probes", "probes_large", "gflops", "fitspeed", "torchmem",
         "knn", "e2e", "studycost")
#: run only when ``--only`` names them: they would not fit the 15-minute suite (fitspeed: ~25 min of sklearn fits
#: on 2 cores; torchmem: two fits holding 100k x 1000 logits)
OPT_IN = ("fitspeed", "torchmem")
#: the default ``--budget`` of a run that names an opt-in group longer than the suite's budget
OPT_IN_BUDGET_S = {"fitspeed": 2400.0}
DEFAULT_BUDGET_S = 870.0  # the whole suite ends within 15 minutes; what no longer fits is recorded as skipped
DEFAULT_TARGETS = {  # used only when a benchmark module's dict states no target of its own
    "probes": ("ratio >= 10 (sklearn time / ours)", 10.0),
    "probes_large": ("ratio >= 10 (sklearn time / ours)", 10.0),
    "gflops": ("ratio >= 0.30 (probe-fit GFLOP/s / plain matmul GFLOP/s)", 0.30),
    "knn": ("ratio >= 1 vs sklearn; ours <= 3 s at full size", None),
}


# ------------------------------------------------------------------------------------------------ children
# These functions run inside the benchmark's own process (see run_function).
def _threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _missing(name: str, module: str, exc: Exception) -> list:
    return [row(name, notes=f"missing: {module} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")]


def child_featurize(model: str, quick: bool, threads: int) -> list:
    from benchmarks.bench_featurize import bench_featurize, featurize_kwargs

    return bench_featurize(model, threads=threads, **featurize_kwargs(quick))


def child_featurize_group(quick: bool, threads: int) -> list:
    from benchmarks.bench_featurize import bench_featurize_group, featurize_kwargs

    kw = featurize_kwargs(quick)
    if quick:
        kw["image_size"] = 64
    return bench_featurize_group(threads=threads, **kw)


def _call(fn, **kwargs):
    """Call ``fn`` with the keyword arguments it accepts."""
    params = inspect.signature(fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in params})


def child_probes(which: str, quick: bool, threads: int, large_baseline: float = 0) -> list:
    _threads(threads)
    try:
        import benchmarks.bench_probes as bp
        fn = getattr(bp, "bench_gflops" if which == "gflops" else "bench_decomposition")
    except (ImportError, AttributeError) as exc:
        return _missing(which, "benchmarks/bench_probes.py", exc)
    if which == "probes":
        return [_call(fn, n=50_000, d=512, k=10, seed=0, quick=quick, threads=threads)]
    if which == "probes_large":
        res = _call(fn, n=50_000, d=2048, k=100, seed=0, quick=quick, threads=threads, sklearn=bool(large_baseline),
                    sklearn_timeout=large_baseline or None)
        res["name"] = "decomposition_2048x100"
        if not large_baseline:
            res["notes"] = "ours only: the sklearn side runs with --large-baseline"
        return [res]
    rows = []
    for d, k in ((512, 10), (2048, 100)):
        res = _call(fn, d=d, k=k, quick=quick, threads=threads)
        res["name"] = "probe_fit_gflops" + ("" if d == 512 else f"_{d}x{k}")
        rows.append(res)
    return rows


def child_fitspeed(quick: bool, threads: int) -> list:
    _threads(threads)
    try:
        from benchmarks.bench_probes import bench_fit_speed
    except ImportError as exc:
        return _missing("fit_speed", "benchmarks/bench_probes.py", exc)
    # both sides on all cores (each library's default), then both on one thread: on a loaded machine, threads that
    # wait on each other slow one side more than the other; one thread each compares the solvers alone
    return (bench_fit_speed(quick=quick, threads=threads, repeats=2)
            + bench_fit_speed(quick=quick, threads=1, repeats=2, name="fit_speed_1thread"))


def child_studycost(quick: bool, threads: int, anchors: str) -> list:
    from benchmarks.study_cost import estimate

    return estimate(anchors)


def child_knn(quick: bool, threads: int) -> list:
    _threads(threads)
    try:
        from benchmarks.bench_knn import bench_knn
    except ImportError as exc:
        return _missing("knn", "benchmarks/bench_knn.py", exc)
    res = _call(bench_knn, quick=quick, threads=threads or usable_cores())
    return res if isinstance(res, list) else [res]


# ------------------------------------------------------------------------------------------------ normalising
def knn_row(d: dict) -> dict:
    """bench_knn's dict (ours_s, sklearn_s, ...) as a schema row (already one when it has a ``name``)."""
    if "name" in d:
        return d
    ours, skl = d.get("ours_s"), d.get("sklearn_s")
    ratio = skl / ours if ours and skl else None
    full = d.get("n_queries") == 10_000
    met = None
    if ratio is not None:
        met = ratio >= 1 and (not full or ours <= 3.0) and d.get("same_sets", 1) >= 0.99
    size = f"{d.get('n_queries')} queries x {d.get('n_refs')} refs x {d.get('dims')} d, k={d.get('k')}"
    extras = {k: v for k, v in d.items() if k not in ("ours_s", "sklearn_s")}
    return row("knn", size=size, seconds=ours, baseline_seconds=skl, ratio=ratio,
               peak_memory_mb=d.get("ours_peak_mb"), target=DEFAULT_TARGETS["knn"][0], met=met,
               notes=(f"sklearn brute force as baseline; peak MB = RSS delta of the search; same_sets="
                      f"{d.get('same_sets')}, k=100 {d.get('ours_k100_s')} s"), **extras)


def normalise(group: str, raw, child_peak_mb: Optional[float]) -> list:
    """Schema rows from what a benchmark returned: every key present, the child's peak memory filled in."""
    items = raw if isinstance(raw, list) else [raw]
    rows = []
    for i, d in enumerate(items):
        if not isinstance(d, dict):
            rows.append(row(f"{group}_{i}", notes=f"unexpected result {str(d)[:100]!r}"))
            continue
        if group == "knn":
            d = knn_row(d)
        d = dict(d)
        if group == "gflops" and d.get("ratio") is None and isinstance(d.get("efficiency"), (int, float)):
            d["ratio"] = d["efficiency"]  # bench_gflops states the ratio as ``efficiency``
        d.setdefault("name", group if len(items) == 1 else f"{group}_{i}")
        target, threshold = DEFAULT_TARGETS.get(group, ("", None))
        if not d.get("target") and target:
            d["target"] = target
            if d.get("met") is None and threshold is not None and isinstance(d.get("ratio"), (int, float)):
                d["met"] = d["ratio"] >= threshold
        if d.get("peak_memory_mb") is None and child_peak_mb is not None and group not in ("scale", "e2e", "studycost",
                                                                                           "memory"):
            d["peak_memory_mb"] = round(child_peak_mb, 1)
        r = row(**{k: d.get(k) for k in ROW_KEYS if k != "name"}, name=str(d["name"]))
        r["size"] = "" if r["size"] is None else str(r["size"])
        r["notes"] = "" if r["notes"] is None else str(r["notes"])
        r["target"] = "" if r["target"] is None else str(r["target"])
        r.update({k: v for k, v in d.items() if k not in r})
        rows.append(r)
    return rows


# ------------------------------------------------------------------------------------------------ the suite
def plan(only, quick: bool) -> list:
    """(group, display name, module, function, kwargs) per child process, in run order."""
    from benchmarks.bench_featurize import FULL_MODELS, QUICK_MODELS

    groups = [g for g in ORDER if g not in OPT_IN] if not only else [g for g in ORDER if g in only]
    jobs = []
    for g in groups:
        if g == "featurize":
            for m in (QUICK_MODELS if quick else FULL_MODELS):
                jobs.append((g, f"featurize[{m}]", "benchmarks.run", "child_featurize", {"model": m}))
        elif g == "featurize_group":
            jobs.append((g, "featurize_group4", "benchmarks.run", "child_featurize_group", {}))
        elif g == "scale":
            jobs.append((g, g, "benchmarks.bench_scale", "bench_scale", {}))
        elif g == "e2e":
            jobs.append((g, g, "benchmarks.bench_e2e", "bench_e2e", {}))
        elif g == "memory":
            jobs.append((g, g, "benchmarks.bench_memory", "bench_memory", {}))
        elif g in ("probes", "probes_large", "gflops"):
            jobs.append((g, g, "benchmarks.run", "child_probes", {"which": g}))
        elif g == "knn":
            jobs.append((g, g, "benchmarks.run", "child_knn", {}))
        elif g == "fitspeed":
            jobs.append((g, g, "benchmarks.run", "child_fitspeed", {}))
        elif g == "studycost":
            jobs.append((g, g, "benchmarks.run", "child_studycost", {}))
        elif g == "torchmem":
            jobs.append((g, g, "benchmarks.bench_probes", "bench_torch_memory", {}))
    return jobs


def run_suite(*, quick: bool = False, only=None, budget: Optional[float] = None, threads: Optional[int] = None,
              out: Path = DEFAULT_OUT, verbose: bool = True, device: Optional[str] = None,
              large_baseline: float = 0) -> dict:
    """Run the benchmarks, write ``out`` (JSON) and return what was written."""
    if device:
        os.environ["RISKDECOMP_BENCH_DEVICE"] = device  # the children inherit it (see common.bench_device)
    unknown = sorted(set(only or ()) - set(ORDER))
    if unknown:
        raise SystemExit(f"run.py: error: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    threads = threads if threads is not None else (1 if quick else usable_cores())
    t0 = time.perf_counter()
    machine = machine_info()
    results: list = []
    kept = kept_rows(out, only, quick)
    for group, label, module, fn, kwargs in plan(only, quick):
        _write(out, machine, quick, threads, budget, t0, results, complete=False, kept=kept)  # partial results survive a kill
        left = None if budget is None else budget - (time.perf_counter() - t0)
        if left is not None and left < 1:
            results.append(row(label if group.startswith("featurize") else group, notes="skipped: time budget spent"))
            continue
        kw = {"quick": quick, "threads": threads, **kwargs}
        if group == "probes_large":
            kw["large_baseline"] = large_baseline
        if group == "studycost":
            kw["anchors"] = str(out)  # computed from the rows written so far (and those kept with --only)
        if group in ("scale", "e2e", "memory") and left is not None:
            kw["timeout"] = max(left - 2, 1)  # they run their own children: let them stop in time and report
        if verbose:
            print(f"[{time.perf_counter() - t0:6.1f}s] {label} ...", file=sys.stderr, flush=True)
        res = run_function(module, fn, kw, timeout=left)
        raw = res.last_json() if res.returncode == 0 else None
        if raw is None:
            name = label if group.startswith("featurize") else group
            results.append(row(name, seconds=None, peak_memory_mb=res.peak_memory_mb,
                               notes=f"failed: {res.error_line()}"))
        else:
            results.extend({**r, "group": group} for r in normalise(group, raw, res.peak_memory_mb))
    doc = _write(out, machine, quick, threads, budget, t0, results, complete=True, kept=kept)
    if verbose:
        print(format_table(results))
        print(f"wrote {out} ({doc['total_seconds']:.0f} s)")
    return doc


def group_of(r: dict) -> str:
    """The benchmark group a result row belongs to (rows written before rows carried ``group``: from the name)."""
    if r.get("group"):
        return r["group"]
    name = str(r.get("name", ""))
    if name.startswith("decomposition"):
        return "probes_large" if "x" in name.split("decomposition", 1)[1] else "probes"
    if name.startswith("probe_fit_gflops"):
        return "gflops"
    if name.startswith("featurize_group"):  # featurize_group4: not of featurize
        return "featurize_group"
    for prefix, group in (("fit_speed", "fitspeed"), ("torch_probe_memory", "torchmem"), ("study_cost", "studycost")):
        if name.startswith(prefix):
            return group
    return next((g for g in ORDER if name == g or name.startswith(g + "_") or name.startswith(g + "[")), name)


def kept_rows(out: Path, only, quick: bool) -> list:
    """With ``--only``, the rows of ``out`` of the groups not run now (each row keeps its own ``measured`` date):
    running one benchmark does not erase the others' measurements. A quick run never mixes with a full one."""
    if not only or not Path(out).exists():
        return []
    try:
        old = json.loads(Path(out).read_text())
    except (OSError, ValueError):
        return []
    if bool(old.get("quick")) != quick:
        return []
    date = old.get("machine", {}).get("date")
    return [{**r, "group": group_of(r), "measured": r.get("measured", date)} for r in old.get("results", [])
            if group_of(r) not in only]


def _write(out: Path, machine: dict, quick: bool, threads: int, budget, t0: float, results: list,
           complete: bool, kept: tuple = ()) -> dict:
    """Write the results document atomically (temp file + rename); return it. ``kept``: rows of other groups
    (see :func:`kept_rows`), written before this run's."""
    doc = {"machine": machine, "quick": quick, "threads": threads, "budget_s": budget, "complete": complete,
           "total_seconds": round(time.perf_counter() - t0, 2), "results": [*kept, *({"group": group_of(r), "measured": machine.get("date"), **r} for r in results)],
           "note": "timings on a shared machine are noisy; ratios are measured side by side in the same run"}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    tmp.replace(out)
    return doc


def format_table(rows: list) -> str:
    import pandas as pd

    if not rows:
        return "(no results)"
    df = pd.DataFrame([{k: r.get(k) for k in ROW_KEYS} for r in rows])
    for c in ("seconds", "baseline_seconds", "ratio", "peak_memory_mb"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df["met"] = df["met"].map({True: "yes", False: "NO"}).fillna("-")
    df["notes"] = df["notes"].astype(str).str.slice(0, 70)
    cols = ["name", "size", "seconds", "baseline_seconds", "ratio", "peak_memory_mb", "met", "target", "notes"]
    with pd.option_context("display.max_columns", None, "display.width", 250, "display.max_colwidth", 70):
        return df[cols].rename(columns={"baseline_seconds": "baseline_s", "peak_memory_mb": "peak_MB"}).to_string(
            index=False, na_rep="-", float_format=lambda v: f"{v:.3g}")


def default_budget(only, quick: bool) -> Optional[float]:
    """The run's budget when ``--budget`` is not given: none for ``--quick``, else the suite's 870 s, or longer when
    ``only`` names an opt-in group that needs more (``OPT_IN_BUDGET_S``: fitspeed's four distributions)."""
    if quick:
        return None
    return max([DEFAULT_BUDGET_S] + [OPT_IN_BUDGET_S.get(g, 0.0) for g in only or ()])


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Run riskdecomp's benchmark suite.")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 thread (about a minute)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(ORDER)}")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for the whole run (default: {DEFAULT_BUDGET_S:.0f}, {OPT_IN_BUDGET_S['fitspeed']:.0f} "
                        "with --only fitspeed; quick: no limit; 0: no limit)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores; quick: 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (default: benchmarks/results.json)")
    p.add_argument("--device", default=None, help="auto (default: CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--large-baseline", type=float, default=0, metavar="SECONDS",
                   help="also run sklearn at 50k x 2048 x 100, stopped after SECONDS (then a lower bound of the "
                        "ratio is reported); it needs far more than the 15-minute suite on 2 cores")
    a = p.parse_args(argv)
    only = [s.strip() for s in a.only.split(",") if s.strip()] if a.only else None
    budget = default_budget(only, a.quick) if a.budget is None else (a.budget or None)
    run_suite(quick=a.quick, only=only, budget=budget, threads=a.threads, out=a.out, device=a.device,
              large_baseline=a.large_baseline)


if __name__ == "__main__":
    main()

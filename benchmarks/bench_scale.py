"""How the full risk decomposition scales with the number of training points: time and peak memory.

For each N (full: 25k, 50k, 100k, 200k; test 10k; d = 512; 10 classes) a fresh Python process generates
synthetic Gaussian-mixture features (class means in a 32-dim subspace + isotropic noise, float32, written in
chunks so generation itself never holds float64 copies) and times
``riskdecomp.estimators.decomposition.decompose(x_train, y_train, x_test, y_test, seed=0, n_boot=1000, device=...)`` on the benchmark device (``run.py --device``, default auto)
(no reference encoder: ``approx`` is NaN; every other fit of the protocol runs).

Rows:
* ``scale_n<N>``: seconds of ``decompose``; ``peak_memory_mb`` = the child's ``ru_maxrss``; ``ratio`` =
  (peak RSS - RSS after imports and a warm-up decomposition of 400 points, before the data existed) /
  feature-matrix bytes (x_train + x_test, float32): the memory
  the decomposition needs counting its own input (target <= 2.5; checked only when the matrix is >= 256 MB,
  i.e. N >= 100k at full size: below that fixed runtime allocations dominate the ratio; --quick skips the
  warm-up).
* ``scale_slope``: the least-squares log-log slope of seconds vs N over the points (target <= 1.2).

Run: ``python benchmarks/bench_scale.py [--quick]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import loglog_slope, row, run_function  # noqa: E402

FULL_NS = (25_000, 50_000, 100_000, 200_000)
QUICK_NS = (500, 1_000)
MEMORY_TARGET = 2.5
MIN_CHECKED_MB = 256  # below this, fixed runtime allocations (torch/BLAS workspaces) swamp the ratio
SLOPE_TARGET = 1.2


def gaussian_mixture(n: int, d: int, k: int, rng, *, subspace: int = 32, sep: float = 0.35,
                     chunk: int = 16384):
    """(x float32 (n, d), y int64 (n,)): y uniform over k classes; x = mean[y] @ basis + N(0, I_d).

    Means live in a random ``subspace``-dim subspace with per-axis scale ``sep / sqrt(subspace)`` times a standard
    normal draw: classes overlap, so a linear probe is right on roughly 60% of points (10 classes).
    """
    import numpy as np

    basis = np.linalg.qr(rng.standard_normal((d, subspace)))[0].T.astype(np.float32)  # (subspace, d)
    means = (rng.standard_normal((k, subspace)) * sep).astype(np.float32) @ basis
    y = rng.integers(0, k, n).astype(np.int64)
    x = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, chunk):
        j = min(n, i + chunk)
        rng.standard_normal(out=x[i:j], dtype=np.float32)
        x[i:j] += means[y[i:j]]
    return x, y


def scale_point(n: int, d: int = 512, k: int = 10, n_test: int = 10_000, n_boot: int = 1000, seed: int = 0,
                threads: int = 0, warmup: bool = True) -> dict:
    """One decomposition at ``n`` training points, meant to run in its own process (see :func:`run_point`)."""
    import time

    import numpy as np
    import torch

    from benchmarks.common import bench_device, current_rss_mb, gpu_peak_mb, peak_rss_mb
    from riskdecomp.estimators.decomposition import decompose

    device = bench_device()

    if threads:
        torch.set_num_threads(threads)
    # warm-up on a tiny problem: lazy imports, thread pools and allocator caches count in the base, not in the ratio
    if warmup:
        wx, wy = gaussian_mixture(600, d, k, np.random.default_rng(seed + 1))
        decompose(wx[:400], wy[:400], wx[400:], wy[400:], seed=seed, n_boot=10, device=device)
        del wx, wy
    base = current_rss_mb()
    rng = np.random.default_rng(seed)
    # train and test from the same mixture (one draw, then split) so the test set is in-distribution
    x, y = gaussian_mixture(n + n_test, d, k, rng)
    x_tr, y_tr, x_te, y_te = x[:n], y[:n], x[n:], y[n:]
    gpu_peak_mb(device, reset=True)
    t0 = time.perf_counter()
    dec = decompose(x_tr, y_tr, x_te, y_te, seed=seed, n_boot=n_boot, device=device)
    seconds = time.perf_counter() - t0
    out = {k_: float(v) for k_, v in dict(dec).items() if np.isscalar(v) and isinstance(v, (int, float, np.number))}
    return {"n": n, "d": d, "k": k, "n_test": n_test, "n_boot": n_boot, "seconds": seconds,
            "base_rss_mb": base, "peak_rss_mb_self": peak_rss_mb(), "matrix_mb": x.nbytes / 1024 ** 2,
            "threads": torch.get_num_threads(), "components": out, "device": device,
            "gpu_peak_mb": gpu_peak_mb(device)}


def run_point(n: int, *, d: int, k: int, n_test: int, n_boot: int, threads: int, timeout=None,
              warmup: bool = True) -> dict:
    """:func:`scale_point` in a fresh process: its result plus the child's peak RSS (``os.wait4``)."""
    res = run_function("benchmarks.bench_scale", "scale_point",
                       dict(n=n, d=d, k=k, n_test=n_test, n_boot=n_boot, threads=threads, warmup=warmup),
                       timeout=timeout)
    out = res.last_json() if res.returncode == 0 else None
    if out is None:
        return {"n": n, "error": res.error_line(), "wall_seconds": res.seconds}
    out["peak_memory_mb"] = res.peak_memory_mb
    out["wall_seconds"] = res.seconds
    return out


def bench_scale(quick: bool = False, threads: int = 0, ns=None, timeout=None) -> list:
    """Rows ``scale_n<N>`` per N and ``scale_slope`` (see the module docstring)."""
    import time

    ns = tuple(ns or (QUICK_NS if quick else FULL_NS))
    d, k, n_test, n_boot = (32, 10, 500, 50) if quick else (512, 10, 10_000, 1000)
    t_start = time.perf_counter()
    rows, done = [], []
    for n in ns:
        left = None if timeout is None else timeout - (time.perf_counter() - t_start)
        if left is not None and left <= 0:
            rows.append(row(f"scale_n{n}", size=f"N={n} d={d} k={k} test={n_test}",
                            notes="skipped: time budget spent"))
            continue
        r = run_point(n, d=d, k=k, n_test=n_test, n_boot=n_boot, threads=threads, timeout=left, warmup=not quick)
        size = f"N={n} d={d} k={k} test={n_test} n_boot={n_boot}"
        if "error" in r:
            rows.append(row(f"scale_n{n}", size=size, notes=f"failed: {r['error']}"))
            continue
        mem_ratio = (r["peak_memory_mb"] - r["base_rss_mb"]) / r["matrix_mb"]
        checked = r["matrix_mb"] >= MIN_CHECKED_MB
        comps = ", ".join(f"{c}={r['components'][c]:.2f}" for c in ("usability", "probe_gen", "enc_gen", "agg_risk")
                          if c in r["components"])
        rows.append(row(f"scale_n{n}", size=size, seconds=r["seconds"], ratio=mem_ratio,
                        peak_memory_mb=r["peak_memory_mb"],
                        target=f"(peak - base RSS) / feature matrix <= {MEMORY_TARGET}",
                        met=(mem_ratio <= MEMORY_TARGET) if checked else None,
                        notes=("" if checked else f"matrix < {MIN_CHECKED_MB} MB: runtime overhead dominates, "
                               "memory ratio not checked; ") + (f"feature matrix {r['matrix_mb']:.0f} MB, RSS after imports {r['base_rss_mb']:.0f} MB; "
                               f"threads {r['threads']}; device {r.get('device', 'cpu')}"
                               + (f", GPU peak {r['gpu_peak_mb']:.0f} MB" if r.get("gpu_peak_mb") else "")
                               + f"; {comps}")))
        done.append((n, r["seconds"]))
    if len(done) >= 2:
        slope = loglog_slope([n for n, _ in done], [s for _, s in done])
        rows.append(row("scale_slope", size=f"N={','.join(str(n) for n, _ in done)}", seconds=sum(s for _, s in done),
                        ratio=slope, target=f"log-log slope of time vs N <= {SLOPE_TARGET}", met=slope <= SLOPE_TARGET,
                        notes="ratio = slope; seconds = total decomposition time over the points"))
    else:
        rows.append(row("scale_slope", notes="needs >= 2 completed sizes"))
    return rows


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--n", type=int, action="append", help="training-set size (repeatable)")
    a = p.parse_args(argv)
    print(json.dumps(bench_scale(a.quick, a.threads, a.n), indent=1))


if __name__ == "__main__":
    main()

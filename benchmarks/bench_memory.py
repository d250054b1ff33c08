"""Peak memory of the decomposition on cached features: float32 files read into memory vs float16 files memory-mapped.

The same synthetic class-structured features (``bench_scale.gaussian_mixture``: class means in a 32-dim subspace +
isotropic noise; full size 50k train + 10k test x 512 dims x 10 classes) are written once as feature-cache entries
(``features.write_cached``, the files ``featurize`` writes) in float32 and in float16. Each path then runs in its own
fresh process (imports and a warm-up decomposition of 400 points first, so the base RSS holds them), loads its train
and test files and times ``decompose(x_train, y_train, x_test, y_test, seed=0, n_boot=1000)``:

* ``memory_float32_inmemory`` -- the old path: ``read_cached(mmap=False)``, float32 arrays in memory;
* ``memory_float16_mmap`` -- the default now: ``read_cached(mmap=True)``, read-only float16 memory maps, which
  ``decompose`` reads into its one float32 working buffer.

``ratio`` = the peak of the decomposition's heap allocations (tracemalloc: numpy's arrays, the loaded input
included; target <= 1.5 for the memory map, i.e. one float32 working copy, not several) / the float32 feature
matrix (train + test). ``rss_ratio`` = (the child's peak RSS - its RSS before loading) / the same matrix: that plus
the file pages the memory map touched (0.5x, clean pages the kernel can drop at will) and ~40 MB of BLAS/LAPACK
workspaces and allocator slack that do not grow with the matrix.
``max_abs_diff_points``: the largest difference between the two paths over every component, agg_risk and raw
error (percentage points; float16 rounding only). Run: ``python benchmarks/bench_memory.py [--quick]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import row, run_function  # noqa: E402

PATHS = {"float32_inmemory": ("float32", False), "float16_mmap": ("float16", True)}
TARGET = 1.5  # (peak - base RSS) / float32 matrix of the float16 memory-mapped path: one working copy + a bit
NUMBERS = ("approx", "usability", "probe_gen", "enc_gen", "agg_risk", "err_train_train", "err_heldout", "err_test",
           "err_sub_test")


def write_features(folder: str, n: int, d: int, k: int, n_test: int, seed: int = 0) -> dict:
    """Write train/test features as float32 and float16 cache entries under ``folder``; their paths and labels."""
    import numpy as np

    from benchmarks.bench_scale import gaussian_mixture
    from riskdecomp.features.cache import storage_array, write_cached

    x, y = gaussian_mixture(n + n_test, d, k, np.random.default_rng(seed))
    out = {"y_train": y[:n].tolist(), "y_test": y[n:].tolist(), "files": {}}
    for dtype in ("float32", "float16"):
        for split, rows in (("train", slice(0, n)), ("test", slice(n, None))):
            path = Path(folder) / f"{split}-{dtype}.npy"
            write_cached(path, storage_array(x[rows], dtype, f"benchmark ({split})"), {"split": split})
            out["files"][f"{split}-{dtype}"] = str(path)
    return out


def memory_point(which: str, data: str, n_boot: int = 1000, threads: int = 0, seed: int = 0) -> dict:
    """One path (``PATHS``) in this (fresh) process: load the cached features, decompose; RSS and heap peaks."""
    import time
    import tracemalloc

    import numpy as np
    import torch

    from benchmarks.bench_scale import gaussian_mixture
    from benchmarks.common import bench_device, current_rss_mb, gpu_peak_mb, peak_rss_mb
    from riskdecomp.estimators.decomposition import decompose
    from riskdecomp.features.cache import read_cached

    if threads:
        torch.set_num_threads(threads)
    device = bench_device()
    meta = json.loads(Path(data).read_text())
    dtype, mmap = PATHS[which]
    y_tr, y_te = np.asarray(meta["y_train"]), np.asarray(meta["y_test"])
    d = int(np.load(meta["files"]["test-float32"], mmap_mode="r").shape[1])
    wx, wy = gaussian_mixture(600, d, 10, np.random.default_rng(seed + 1))  # warm-up: lazy imports, pools
    decompose(wx[:400], wy[:400], wx[400:], wy[400:], seed=seed, n_boot=10, device=device)
    del wx, wy
    base = current_rss_mb()
    tracemalloc.start()
    x_tr = read_cached(Path(meta["files"][f"train-{dtype}"]), mmap=mmap)
    x_te = read_cached(Path(meta["files"][f"test-{dtype}"]), mmap=mmap)
    gpu_peak_mb(device, reset=True)
    t0 = time.perf_counter()
    dec = decompose(x_tr, y_tr, x_te, y_te, seed=seed, n_boot=n_boot, device=device)
    seconds = time.perf_counter() - t0
    heap_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    matrix = (len(y_tr) + len(y_te)) * d * 4
    return {"which": which, "seconds": seconds, "base_rss_mb": base, "peak_rss_mb_self": peak_rss_mb(),
            "matrix_mb": matrix / 1024 ** 2, "heap_ratio": heap_peak / matrix, "input_dtype": str(x_tr.dtype),
            "input_memmap": isinstance(x_tr, np.memmap), "threads": torch.get_num_threads(), "device": device,
            "gpu_peak_mb": gpu_peak_mb(device), "numbers": {k: float(dec[k]) for k in NUMBERS}}


def bench_memory(quick: bool = False, threads: int = 0, timeout=None) -> list:
    """Rows ``memory_float32_inmemory`` and ``memory_float16_mmap`` (see the module docstring)."""
    import tempfile
    import time

    import numpy as np

    n, d, k, n_test, n_boot = (2000, 64, 10, 500, 50) if quick else (50_000, 512, 10, 10_000, 1000)
    size = f"{n}x{d}x{k} (+{n_test} test), n_boot={n_boot}"
    t_start = time.perf_counter()
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="rd-bench-mem-") as tmp:
        data = Path(tmp) / "data.json"
        data.write_text(json.dumps(write_features(tmp, n, d, k, n_test)))
        for which in PATHS:
            left = None if timeout is None else timeout - (time.perf_counter() - t_start)
            if left is not None and left <= 0:
                rows.append(row(f"memory_{which}", size=size, notes="skipped: time budget spent"))
                continue
            res = run_function("benchmarks.bench_memory", "memory_point",
                               dict(which=which, data=str(data), n_boot=n_boot, threads=threads), timeout=left)
            r = res.last_json() if res.returncode == 0 else None
            if r is None:
                rows.append(row(f"memory_{which}", size=size, notes=f"failed: {res.error_line()}"))
                continue
            results[which] = r
            rss_ratio = (res.peak_memory_mb - r["base_rss_mb"]) / r["matrix_mb"]
            mm = which == "float16_mmap"
            rows.append(row(
                f"memory_{which}", size=size, seconds=r["seconds"], ratio=r["heap_ratio"],
                peak_memory_mb=res.peak_memory_mb,
                target=f"heap peak / float32 feature matrix <= {TARGET}" if mm else "",
                met=(r["heap_ratio"] <= TARGET) if mm else None, rss_ratio=round(rss_ratio, 3),
                base_rss_mb=round(r["base_rss_mb"], 1), matrix_mb=round(r["matrix_mb"], 1),
                notes=(f"{r['input_dtype']} {'memory-mapped' if r['input_memmap'] else 'in memory'}; ratio = heap "
                       f"peak (tracemalloc) / float32 matrix ({r['matrix_mb']:.0f} MB); (peak - base RSS) / matrix "
                       f"{rss_ratio:.2f}; RSS after imports {r['base_rss_mb']:.0f} MB; threads {r['threads']}; "
                       f"device {r['device']}"
                       + (f", GPU peak {r['gpu_peak_mb']:.0f} MB" if r.get("gpu_peak_mb") else ""))))
    if len(results) == 2:
        a, b = (results[w]["numbers"] for w in PATHS)
        diff = max(abs(a[c] - b[c]) for c in NUMBERS if np.isfinite(a[c]) and np.isfinite(b[c]))
        rows[-1]["max_abs_diff_points"] = round(diff, 4)
        rows[-1]["notes"] += f"; max |float16 - float32| over components, agg_risk, err_* = {diff:.3f} points"
    return rows


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    print(json.dumps(bench_memory(a.quick, a.threads), indent=1))


if __name__ == "__main__":
    main()

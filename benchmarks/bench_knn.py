"""Benchmark riskdecomp.estimators.neighbors.knn against sklearn brute force.

Each side runs in its own subprocess so that the peak-RSS delta (``resource.getrusage``
``ru_maxrss`` after the search minus before it, data already in memory) is the search's own
extra memory; torch allocations are invisible to tracemalloc. Data: 100 Gaussian clusters
in ``d`` dims (seeded), float32.

Run: ``python benchmarks/bench_knn.py [--quick]``. Full size: 10,000 queries x 50,000 refs x
512 dims, k = 10 (and k = 100 for our search), cosine metric.
"""

from __future__ import annotations

import json
import subprocess
import sys

_CHILD = r"""
import json, resource, sys, time
import numpy as np
n_q, n_r, d, k, which, threads = (int(a) if a.isdigit() else a for a in sys.argv[1:7])
import torch
torch.set_num_threads(threads)
rng = np.random.default_rng(0)
centers = rng.normal(size=(100, d)).astype(np.float32)
def draw(n):
    return (centers[rng.integers(0, 100, n)] + rng.normal(size=(n, d)).astype(np.float32))
q, r = draw(n_q), draw(n_r)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if which == "ours":
    from riskdecomp.estimators.neighbors import knn
    dist, idx = knn(q, r, k, metric="cosine")
else:
    from sklearn.neighbors import NearestNeighbors
    nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute", n_jobs=threads).fit(r)
    dist, idx = nn.kneighbors(q)
sec = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
np.save(sys.argv[7], idx.astype(np.int64))
np.save(sys.argv[7] + ".dist.npy", dist.astype(np.float32))
print(json.dumps({"seconds": sec, "peak_rss_delta_mb": (after - before) / 1024}))
"""


def _child(n_q: int, n_r: int, d: int, k: int, which: str, out: str, threads: int = 2) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(n_q), str(n_r), str(d), str(k), which, str(threads), out],
        capture_output=True, text=True, check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_knn(quick: bool = False, threads: int = 2) -> dict:
    """Time and memory of our k-NN vs sklearn brute force; fraction of identical neighbours.

    Returns a dict with ``ours_s``, ``ours_k100_s``, ``sklearn_s``, ``ours_peak_mb``,
    ``sklearn_peak_mb``, ``same_neighbors`` (fraction of (query, rank) slots holding the same
    index), ``same_sets`` (fraction of queries whose k-NN sets agree), ``max_dist_diff``.
    """
    import tempfile

    import numpy as np

    n_q, n_r, d, k = (2000, 10000, 128, 10) if quick else (10000, 50000, 512, 10)
    with tempfile.TemporaryDirectory() as tmp:
        ours = _child(n_q, n_r, d, k, "ours", f"{tmp}/ours.npy", threads)
        ours100 = _child(n_q, n_r, d, 100, "ours", f"{tmp}/ours100.npy", threads)
        skl = _child(n_q, n_r, d, k, "sklearn", f"{tmp}/skl.npy", threads)
        a, b = np.load(f"{tmp}/ours.npy"), np.load(f"{tmp}/skl.npy")
        da, db = np.load(f"{tmp}/ours.npy.dist.npy"), np.load(f"{tmp}/skl.npy.dist.npy")
    same_sets = np.mean([set(x) == set(y) for x, y in zip(a, b)])
    return {
        "n_queries": n_q, "n_refs": n_r, "dims": d, "k": k, "threads": threads,
        "ours_s": round(ours["seconds"], 3), "ours_peak_mb": round(ours["peak_rss_delta_mb"], 1),
        "ours_k100_s": round(ours100["seconds"], 3),
        "ours_k100_peak_mb": round(ours100["peak_rss_delta_mb"], 1),
        "sklearn_s": round(skl["seconds"], 3), "sklearn_peak_mb": round(skl["peak_rss_delta_mb"], 1),
        "same_neighbors": float(np.mean(a == b)), "same_sets": float(same_sets),
        "max_dist_diff": float(np.abs(da - db).max()),
    }


if __name__ == "__main__":
    print(json.dumps(bench_knn(quick="--quick" in sys.argv), indent=1))

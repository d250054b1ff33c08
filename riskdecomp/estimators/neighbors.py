"""Exact k-nearest-neighbour search on feature arrays, chunked so memory stays bounded.

Brute force: for a chunk of queries we compute the similarity to *all* references with one
matrix product (numpy/OpenBLAS, into a buffer shared with torch) and keep the k best with
``torch.topk``. Peak extra memory is about
``chunk * n_refs * 4`` bytes (plus the normalised copies), never ``n_q * n_refs``.

Distances
- ``"cosine"``: d(q, r) = 1 - <q/|q|, r/|r|>   (rank by largest inner product of unit vectors)
- ``"euclidean"``: d(q, r) = sqrt(max(|q|^2 + |r|^2 - 2 <q, r>, 0))  (rank by largest
  ``2<q, r> - |r|^2``)

Ties between equal distances are broken by ``torch.topk`` (unspecified but deterministic).
Faiss is not used: it is not in the environment, and the torch path is exact.
"""

from __future__ import annotations

import numpy as np
import torch

from riskdecomp.utils.errors import FeatureError

METRICS = ("cosine", "euclidean")
_CHUNK_BYTES = 1 << 27  # 128 MiB of similarity scores per query chunk


def _as_float32(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise FeatureError(f"{name} must be a 2-D array (n, d), got shape {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise FeatureError(f"{name} contains NaN or inf")
    return a


def unit_rows(a: np.ndarray) -> np.ndarray:
    """Rows (last axis) scaled to unit length; a zero row stays zero."""
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return a / np.maximum(n, np.finfo(np.float32).tiny)


def knn(
    queries: np.ndarray,
    refs: np.ndarray,
    k: int,
    metric: str = "cosine",
    exclude_self: np.ndarray | None = None,
    chunk: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest references of every query (exact, chunked).

    Parameters
    ----------
    queries, refs : (n_q, d), (n_r, d) float arrays.
    k : number of neighbours (1 <= k <= n_r, or n_r - 1 with ``exclude_self``).
    metric : ``"cosine"`` or ``"euclidean"``.
    exclude_self : optional (n_q,) int array: the index in ``refs`` of the query itself
        (or -1 if the query is not a reference). That reference is never returned.
    chunk : queries per block; default keeps one block of scores near 128 MiB.

    Returns
    -------
    dist : (n_q, k) float32, ascending along each row.
    idx : (n_q, k) int64 indices into ``refs``.
    """
    if metric not in METRICS:
        raise FeatureError(f"unknown k-NN metric {metric!r}; use one of {METRICS}")
    q = _as_float32("queries", queries)
    r = _as_float32("refs", refs)
    if q.shape[1] != r.shape[1]:
        raise FeatureError(f"queries have {q.shape[1]} dims but refs have {r.shape[1]}")
    n_q, n_r = q.shape[0], r.shape[0]
    k = int(k)
    if exclude_self is not None:
        exclude_self = np.asarray(exclude_self, dtype=np.int64).reshape(-1)
        if exclude_self.shape[0] != n_q:
            raise FeatureError(f"exclude_self has {exclude_self.shape[0]} entries for {n_q} queries")
        if (exclude_self >= n_r).any():
            raise FeatureError("exclude_self holds an index beyond the reference set")
        max_k = n_r - int((exclude_self >= 0).any())
    else:
        max_k = n_r
    if not 1 <= k <= max_k:
        raise FeatureError(f"k={k} neighbours asked but only {max_k} references are available")
    if chunk is None:
        chunk = max(1, min(n_q, _CHUNK_BYTES // (4 * max(n_r, 1))))

    if metric == "cosine":
        q, r = unit_rows(q), unit_rows(r)
        r_sq = None
    else:
        r_sq = torch.from_numpy(np.einsum("ij,ij->i", r, r))
        q_sq = np.einsum("ij,ij->i", q, q)
    rt_np = np.ascontiguousarray(r.T)

    dist = np.empty((n_q, k), dtype=np.float32)
    idx = np.empty((n_q, k), dtype=np.int64)
    s_np = np.empty((chunk, n_r), dtype=np.float32)
    buf = torch.from_numpy(s_np)  # shared memory: numpy writes, torch selects
    with torch.inference_mode():
        for lo in range(0, n_q, chunk):
            hi = min(lo + chunk, n_q)
            s = buf[: hi - lo]
            np.matmul(q[lo:hi], rt_np, out=s_np[: hi - lo])  # inner products (OpenBLAS: faster than MKL on AMD)
            if r_sq is not None:
                s.mul_(2.0).sub_(r_sq)  # 2<q,r> - |r|^2, larger = closer
            if exclude_self is not None:
                own = exclude_self[lo:hi]
                rows = np.nonzero(own >= 0)[0]
                if rows.size:
                    s[torch.from_numpy(rows), torch.from_numpy(own[rows])] = -torch.inf
            val, ind = torch.topk(s, k, dim=1, largest=True, sorted=True)
            val = val.numpy()
            if r_sq is None:
                dist[lo:hi] = 1.0 - val
            else:
                dist[lo:hi] = np.sqrt(np.maximum(q_sq[lo:hi, None] - val, 0.0))
            idx[lo:hi] = ind.numpy()
    if metric == "cosine":
        np.clip(dist, 0.0, 2.0, out=dist)
    return dist, idx

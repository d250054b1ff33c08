"""Parallel backends: a local process pool (joblib) or a dask cluster, behind one ``parallel_map``.
"""

from __future__ import annotations

import logging
from typing import Optional

from riskdecomp.utils.errors import RiskdecompError

DASK_TIMEOUT_S = 5


def dask_client(scheduler: Optional[str], jobs: int):
    """A dask client: a local cluster, or the scheduler at ``scheduler`` -- reached within ``DASK_TIMEOUT_S`` or a
    one-line error (never a long hang then a traceback)."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise RiskdecompError("the dask backend needs the optional extra: pip install 'riskdecomp[dask]'") from None
    if not scheduler:
        return Client(processes=True, n_workers=max(jobs, 1), threads_per_worker=1)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # the one-line error below says it all
    try:
        return Client(scheduler, timeout=f"{DASK_TIMEOUT_S}s")
    except Exception as exc:  # OSError, TimeoutError, ValueError (malformed address), ...
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RiskdecompError(f"--dask-scheduler {scheduler!r}: no scheduler reachable within {DASK_TIMEOUT_S} s "
                              f"({why[:200]})") from None


def _indexed(i: int, fn, *a) -> tuple:
    return i, fn(*a)


def parallel_map(fn, args: list, jobs: int, client=None, on_result=None) -> list:
    """``[fn(*a) for a in args]``, in processes when ``jobs > 1`` or on dask; ``on_result(result)`` is called in
    this process as each result comes back (in completion order); the list returned is in ``args`` order."""
    on_result = on_result or (lambda r: None)
    if client is None and jobs == 1:
        results = []
        for a in args:
            results.append(fn(*a))
            on_result(results[-1])
        return results
    from joblib import Parallel, delayed, parallel_config

    results = [None] * len(args)
    calls = (delayed(_indexed)(i, fn, *a) for i, a in enumerate(args))
    if client is not None:
        with parallel_config(backend="dask"):
            gen = Parallel(n_jobs=-1, return_as="generator_unordered")(calls)
            for i, r in gen:
                results[i] = r
                on_result(r)
        return results
    for i, r in Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered")(calls):
        results[i] = r
        on_result(r)
    return results

"""End-to-end time of the README main job, from an empty cache and again from a full one.

Full: ``riskdecomp evaluate --zoo model_zoo.yaml --out OUT`` (the default zoo: every recipe entry x seed is
pretrained on ``cifar10-mini``, featurized and evaluated; plots + report.html included) run as a subprocess with
``RISKDECOMP_CACHE`` pointing at an empty temp dir. Two rows (issue 14's budgets on 2 cores):

* ``e2e_cold``: empty cache, empty out dir, as on a fresh machine (target < 900 s);
* ``e2e_rerun``: the same command again, everything cached: run records are reused (target < 60 s).

``baseline_seconds`` of the rerun row is the cold time and ``ratio`` = cold / rerun. With
``$RISKDECOMP_BENCH_E2E_OUT`` set (an absent or empty folder), the cold run writes there instead of a temp folder
and its output is kept: that is how the committed ``results/`` are made (README, "The default zoo"). ``peak_memory_mb`` is the
``ru_maxrss`` of that command's process. Each command is killed at twice its target (or when the time budget
given to :func:`bench_e2e` runs out) and recorded as timed out.

Quick: a zoo of three ``features`` entries (synthetic .npz, 300 train / 100 test, d = 16) with ``--models`` picking
two of them and small settings, cold run and rerun only: it checks the CLI path end to end in seconds; its times
carry no target.

Run: ``python benchmarks/bench_e2e.py [--quick]``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, row, run_child  # noqa: E402

COLD_TARGET_S = 900.0
WARM_TARGET_S = 60.0
MIN_LEFT_S = {"e2e_rerun": 60.0}  # seconds of budget a run needs to be started
ZOO = REPO / "model_zoo.yaml"
QUICK_FLAGS = ["--no-report", "--n-boot", "20", "--fewshot-seeds", "1", "--shots", "1,3", "--fractions", "0.1",
               "--no-active", "--no-uncertainty", "--no-statistics"]


def write_quick_zoo(folder: Path, n_train: int = 300, n_test: int = 100, d: int = 16, k: int = 3) -> Path:
    """Three ``features`` entries on shared labels (class means + noise of decreasing quality); returns the YAML."""
    import numpy as np
    import yaml

    rng = np.random.default_rng(0)
    y_tr, y_te = rng.integers(0, k, n_train), rng.integers(0, k, n_test)
    means = rng.normal(size=(k, d))
    entries = []
    for i, noise in enumerate((0.5, 1.0, 2.0)):
        path = folder / f"feat{i}.npz"
        np.savez(path, x_train=(means[y_tr] + noise * rng.normal(size=(n_train, d))).astype(np.float32),
                 y_train=y_tr, x_test=(means[y_te] + noise * rng.normal(size=(n_test, d))).astype(np.float32),
                 y_test=y_te)
        entries.append({"name": f"feat{i}", "source": "features", "path": str(path), "dataset": "synthetic"})
    zoo = folder / "quick_zoo.yaml"
    zoo.write_text(yaml.safe_dump({"models": entries}, sort_keys=False))
    return zoo


def _cli(args: list) -> list:
    return [sys.executable, "-m", "riskdecomp.cli", *args]


def bench_e2e(quick: bool = False, timeout=None, threads: int = 0) -> list:
    """Rows ``e2e_cold``, ``e2e_rerun`` (see the module docstring)."""
    import os
    import time

    t_start = time.perf_counter()

    def left():
        return None if timeout is None else max(1.0, timeout - (time.perf_counter() - t_start))

    with tempfile.TemporaryDirectory(prefix="rd-bench-e2e-") as tmp:
        tmp = Path(tmp)
        if quick:
            zoo, extra, size = write_quick_zoo(tmp), ["--models", "feat0,feat1", *QUICK_FLAGS], \
                "quick: 2 synthetic features entries (300 train / 100 test, d 16)"
        elif ZOO.is_file():
            zoo, extra, size = ZOO, [], "README main job: model_zoo.yaml on cifar10-mini"
        else:
            note = f"skipped: {ZOO.name} not found in the repository"
            return [row(n, notes=note) for n in ("e2e_cold", "e2e_rerun")]
        env = {"RISKDECOMP_CACHE": str(tmp / "cache"), "MPLBACKEND": "Agg"}
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        base_args = ["evaluate", "--zoo", str(zoo), "--no-progress", *extra]
        runs: dict = {}
        records: dict = {}
        keep = os.environ.get("RISKDECOMP_BENCH_E2E_OUT")
        out_dir = Path(keep).resolve() if keep and not quick else tmp / "out1"
        if out_dir.exists() and any(out_dir.iterdir()):
            return [row(n, notes=f"failed: $RISKDECOMP_BENCH_E2E_OUT={keep} is not empty") for n in ("e2e_cold",
                                                                                                 "e2e_rerun")]
        for name in ("e2e_cold", "e2e_rerun"):
            if name != "e2e_cold" and runs.get("e2e_cold") is not None and runs["e2e_cold"].returncode is None:
                runs[name] = None  # the cold run timed out: the cache is not full
                continue
            cap = 2 * (COLD_TARGET_S if name == "e2e_cold" else WARM_TARGET_S)  # a hung run must not stall the suite
            if name != "e2e_cold" and left() is not None and left() < MIN_LEFT_S[name]:
                runs[name] = "budget"  # not started: it would not finish in what is left of the time budget
                continue
            limit = cap if left() is None else min(cap, left())
            runs[name] = run_child(_cli([*base_args, "--out", str(out_dir)]), timeout=limit, env=env, cwd=REPO)
            records[name] = len(list((out_dir / "runs").glob("*@*.json")))  # models done, even after a timeout
        rows = []
        cold = runs["e2e_cold"]
        for name, res in runs.items():
            if res is None or res == "budget":
                why = "the cold run did not finish" if res is None else "time budget spent"
                rows.append(row(name, size=size, notes=f"skipped: {why}"))
                continue
            target_s = COLD_TARGET_S if name == "e2e_cold" else WARM_TARGET_S
            ok = res.returncode == 0
            base = cold.seconds if name != "e2e_cold" and cold.returncode == 0 else None
            lines = [ln for ln in res.stdout.strip().splitlines() if ln.strip()]
            notes = (("ok" if ok else f"FAILED ({res.error_line()})") + f"; {records[name]} run record(s) in out"
                     + (f"; last line: {lines[-1][:160]}" if lines else ""))
            if quick:
                notes += "; quick mode: no target"
            rows.append(row(name, size=size, seconds=res.seconds, baseline_seconds=base,
                            ratio=(base / res.seconds) if base else None, peak_memory_mb=res.peak_memory_mb,
                            target="" if quick else f"< {target_s:.0f} s on 2 cores",
                            met=None if quick else (ok and res.seconds < target_s), notes=notes,
                            returncode=res.returncode))
        return rows


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    print(json.dumps(bench_e2e(a.quick), indent=1))


if __name__ == "__main__":
    main()

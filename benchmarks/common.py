"""Helpers shared by the benchmarks: machine description, timing, child processes with their own peak memory,
the result-row schema, and where the shared data lives.

Peak memory of a benchmark is the ``ru_maxrss`` of the child process that ran it, read with ``os.wait4`` on that
very child (so it is per benchmark, not the running maximum over all children that ``RUSAGE_CHILDREN`` gives) by a
small launcher process (so the caller's own memory, inherited at fork, is not counted). ``ru_maxrss`` is in KiB
on Linux.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
ROW_KEYS = ("name", "size", "seconds", "baseline_seconds", "ratio", "peak_memory_mb", "target", "met", "notes")


# ------------------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def total_ram_gb() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3, 1)
    except (ValueError, OSError, AttributeError):
        return None


def load_average() -> Optional[list]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    """CPU model, cores, RAM, torch version, the device the benchmarks ran on, date; load average as a noise hint."""
    import torch

    device = bench_device()
    cuda = device.startswith("cuda")
    return {
        "cpu_model": cpu_model(),
        "cores": usable_cores(),
        "cpu_count": os.cpu_count(),
        "ram_gb": total_ram_gb(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "gpu_present": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average": load_average(),
    }


# ------------------------------------------------------------------------------------------------ timing
def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(wall seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def current_rss_mb() -> float:
    """Resident set size of this process now (MiB), from /proc (falls back to ru_maxrss)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1024 ** 2
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """High-water resident set size of this process so far (MiB)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 ** 2 if sys.platform == "darwin" else r / 1024


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log(y) on log(x): the empirical exponent b of y ~ x^b."""
    import numpy as np

    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return float(np.polyfit(lx, ly, 1)[0])


# ------------------------------------------------------------------------------------------------ children
@dataclass
class ChildResult:
    returncode: Optional[int]  # None when killed for the timeout
    stdout: str
    stderr: str
    seconds: float
    peak_memory_mb: Optional[float]
    timed_out: bool

    def last_json(self):
        """The last stdout line that parses as JSON (the child's answer), or None."""
        for line in reversed(self.stdout.strip().splitlines()):
            line = line.strip()
            if line.startswith(("{", "[")):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    continue
        return None

    def error_line(self) -> str:
        if self.timed_out:
            return f"timed out after {self.seconds:.0f} s"
        tail = [ln for ln in self.stderr.strip().splitlines() if ln.strip()]
        return f"exit {self.returncode}: {tail[-1] if tail else 'no output'}"[:300]


# A small Python process between us and the measured command: ru_maxrss is a high-water mark that a forked child
# inherits from its parent's memory at fork time (and keeps through exec), so measuring the command as our direct
# child would count our own RSS. The launcher is small; it waits for the command with os.wait4 and writes that
# child's ru_maxrss (KiB on Linux) to a file.
_LAUNCHER = """
import json, os, subprocess, sys
p = subprocess.Popen(json.loads(sys.argv[2]))
_pid, status, usage = os.wait4(p.pid, 0)
p.returncode = code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(code if code >= 0 else 128 - code)
"""


def run_child(argv: Sequence[str], *, timeout: Optional[float] = None, env: Optional[dict] = None,
              cwd: Optional[Path] = None) -> ChildResult:
    """Run ``argv`` in a new process group; return its output, wall time and its own peak RSS.

    The peak is the command's ``ru_maxrss`` read by a small launcher process with ``os.wait4`` (see _LAUNCHER),
    so it is that command's own high-water mark, not the caller's. On timeout the whole process group is killed
    (the command's own workers included) and the peak is unknown (None).
    """
    full_env = {**os.environ, **(env or {})}
    paths = [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p]
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in paths if p != str(REPO)])
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.TemporaryDirectory(prefix="rd-bench-") as tmp:
        rss_file = Path(tmp) / "maxrss"
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(rss_file), json.dumps(list(argv))],
                                stdout=out, stderr=err, env=full_env, cwd=str(cwd or REPO), start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        try:
            kib = int(rss_file.read_text())
            maxrss = kib / (1024 ** 2 if sys.platform == "darwin" else 1024)
        except (OSError, ValueError):
            maxrss = None
        return ChildResult(None if timed_out else proc.returncode, out.read(), err.read(), seconds, maxrss,
                           timed_out)


def run_function(module: str, function: str, kwargs: dict, *, timeout: Optional[float] = None,
                 env: Optional[dict] = None) -> ChildResult:
    """Call ``module.function(**kwargs)`` in a fresh Python; it must return JSON-able data (printed last)."""
    code = ("import json, sys; sys.path.insert(0, {repo!r}); import importlib; "
            "res = getattr(importlib.import_module({m!r}), {f!r})(**json.loads(sys.argv[1])); "
            "print(); print(json.dumps(res, default=str))").format(repo=str(REPO), m=module, f=function)
    return run_child([sys.executable, "-c", code, json.dumps(kwargs)], timeout=timeout, env=env)


# ------------------------------------------------------------------------------------------------ rows
def row(name: str, *, size: str = "", seconds: Optional[float] = None, baseline_seconds: Optional[float] = None,
        ratio: Optional[float] = None, peak_memory_mb: Optional[float] = None, target: str = "",
        met: Optional[bool] = None, notes: str = "", **extra) -> dict:
    """One result row with every key of the schema (``extra`` keys are kept after them)."""
    r = {"name": name, "size": size, "seconds": _num(seconds), "baseline_seconds": _num(baseline_seconds),
         "ratio": _num(ratio), "peak_memory_mb": _num(peak_memory_mb, 1), "target": target,
         "met": None if met is None else bool(met), "notes": notes}
    r.update({k: v for k, v in extra.items() if k not in r})
    return r


def _num(v, digits: int = 4):
    if v is None:
        return None
    v = float(v)
    return None if not math.isfinite(v) else round(v, digits)


def shared_dir() -> Optional[Path]:
    """``$RISKDECOMP_SHARED`` or ``../shared`` next to the repository, when it holds ``data/``."""
    p = Path(os.environ.get("RISKDECOMP_SHARED", REPO.parent / "shared")).expanduser().resolve()
    return p if (p / "data").is_dir() else None


# ------------------------------------------------------------------------------------------------ device
def bench_device() -> str:
    """The device the benchmarks run on: ``$RISKDECOMP_BENCH_DEVICE`` (``run.py --device``), default ``auto``
    (CUDA when present, else CPU), resolved as the package resolves it."""
    from riskdecomp.utils.device import resolve_device

    return str(resolve_device(os.environ.get("RISKDECOMP_BENCH_DEVICE", "auto")))


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so wall-clock timers measure it."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def gpu_peak_mb(device: str, reset: bool = False) -> Optional[float]:
    """Peak CUDA memory allocated by torch since the last reset (None on CPU)."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return round(torch.cuda.max_memory_allocated() / 1024 ** 2, 1)

"""What a user sees while ``evaluate`` runs (on stderr; nothing with ``--no-progress``).

On a terminal: one updating line ``[3/16] simclr: decomposition`` with the count of finished models and an ETA
(tqdm), the stage shown for jobs that run in this process; worker processes (loky/dask) cannot draw on the parent's
terminal, so their models show up as their records come back. Everywhere (terminal or a log file): one line per
finished model, ``[3/16] simclr done in 12.3 s (agg_risk 31.2), ETA 1m05s``. Stages are reported with
:func:`stage`, a no-op outside an active :class:`Progress` (i.e. in worker processes).
"""

from __future__ import annotations

import sys
import time
from typing import Optional, Sequence

from riskdecomp.utils.schema import COMPONENTS

_CURRENT: Optional["Progress"] = None


def stage(model: str, text: str) -> None:
    """Show that ``model`` is at stage ``text`` (a no-op unless a :class:`Progress` is active in this process)."""
    if _CURRENT is not None:
        _CURRENT.stage(model, text)


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """Progress over the jobs of one ``evaluate`` (``names``: the models, in the order they are submitted). A
    context manager: while active, :func:`stage` calls in this process update its line."""

    def __init__(self, names: Sequence[str], enabled: bool = True, stream=None):
        self.names, self.enabled = list(names), enabled
        self.stream = stream if stream is not None else sys.stderr
        self.n, self.finished_count, self.computed_count = len(self.names), 0, 0
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled and is_terminal(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.n, file=self.stream, leave=False, dynamic_ncols=True, unit="model",
                            desc=f"evaluating {self.n} model(s)",
                            bar_format="{desc} [{n_fmt}/{total_fmt} models, {elapsed}<{remaining}]")

    def __enter__(self):
        global _CURRENT
        _CURRENT = self
        return self

    def __exit__(self, *exc):
        global _CURRENT
        _CURRENT = None
        if self.bar is not None:
            self.bar.close()

    def _index(self, model: str) -> int:
        return self.names.index(model) + 1 if model in self.names else self.finished_count + 1

    def stage(self, model: str, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(f"[{self._index(model)}/{self.n}] {model}: {text}")

    def eta(self) -> Optional[float]:
        """Seconds left, from the mean time of the models computed so far (None before the first or at the end)."""
        left = self.n - self.finished_count
        if not self.computed_count or left <= 0:
            return None
        return (time.perf_counter() - self.t0) / self.finished_count * left

    def finished(self, rec: dict) -> None:
        """A job's record came back: one line naming the model, its time and agg_risk (or why it failed)."""
        self.finished_count += 1
        model = rec.get("model", "?")
        if "error" in rec:
            what = f"FAILED: {rec['error']}"
        else:
            self.computed_count += 0 if rec.get("skipped") else 1
            risk = rec.get("row", {}).get("agg_risk")
            risk = f"agg_risk {risk:.1f}" if isinstance(risk, (int, float)) else "no agg_risk"
            took = rec.get("timings", {}).get("time_total")
            what = (f"reused ({risk})" if rec.get("skipped") or took is None else f"done in {took:.1f} s ({risk})")
        eta = self.eta()
        line = f"[{self.finished_count}/{self.n}] {model} {what}" + (f", ETA {_duration(eta)}" if eta else "")
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
            self.bar.update(1)
        else:
            print(line, file=self.stream, flush=True)


def flag_lines(board) -> list:
    """The CLI summary's line of the leaderboard's ``flags`` column (docs/protocol.md, "Flags"): each code with the
    models it applies to; none when the board has no such column (a folder of an older release)."""
    if "flags" not in getattr(board, "columns", ()):
        return []
    models: dict = {}
    for m, f in zip(board["model"], board["flags"]):
        for code in (str(f).split(";") if isinstance(f, str) and f else []):
            models.setdefault(code, []).append(str(m))
    if not models:
        return ["  flags             none"]
    parts = [f"{code} {len(ms)} ({', '.join(ms[:3])}{', ...' if len(ms) > 3 else ''})" for code, ms in models.items()]
    return [f"  flags             {'; '.join(parts)} (docs/protocol.md, Flags)"]


def summary_lines(res, report=None, wall_s: Optional[float] = None, analysis: Optional[dict] = None) -> list:
    """Where each output of a finished run is, and a short summary: the best encoder excluding references (from
    ``analysis``: analyze's summary, or any dict with its ``"best"`` / ``"inference"`` keys -- the CLI passes the
    report's ``analysis/summary.json``, or with ``--no-report`` what
    :func:`riskdecomp.analysis.comparisons_and_best` gives), with its CI, seeds and its top group (the candidates not
    significantly worse, Holm), the references named apart; the largest component (mean across models), failures,
    computed vs reused runs, wall time. Without ``analysis`` the best is the leaderboard's lowest ``agg_risk``
    outside references (``is_reference``), said to be without comparisons."""
    paths = {**res.paths, **({"report": report} if report else {})}
    def rows(name):
        df = getattr(res, name, None)
        return f" ({len(df)} rows)" if hasattr(df, "columns") else ""

    lines = ["outputs:"] + [f"  {name:<17} {path}{rows(name)}" for name, path in paths.items()]
    board = res.leaderboard
    lines.append("summary:")
    if len(board) and "agg_risk" in board:
        best = (analysis or {}).get("best") or {}
        lines += (_best_lines(best, (analysis or {}).get("inference") or {}) if best else _leaderboard_best(board))
        lines.append(_largest_line(board, (analysis or {}).get("constant_components") or {}))
    else:
        lines += ["  best encoder      none (no results)", "  largest component none"]
    lines += flag_lines(board)
    lines.append(f"  failures          {len(res.failures)}")
    reused = sum(bool(r.get("skipped")) for r in res.records)
    lines.append(f"  runs              {len(res.records) - reused} computed, {reused} reused")
    lines.append(f"  wall time         {wall_s:.1f} s" if wall_s is not None else "  wall time         -")
    return lines


def _largest_line(board, constant: dict) -> str:
    """The component with the largest mean over the candidates (references left out); a component constant across
    them by construction (analyze's ``constant_components``, e.g. approx under one reference) is named apart as the
    shared baseline, never "largest"."""
    shared = {c: v for per_ds in constant.values() for c, v in (per_ds or {}).items()}
    cands = board
    if "is_reference" in board:
        keep = ~board["is_reference"].map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))
        cands = board[keep] if keep.any() else board
    comps = [c for c in COMPONENTS if c in cands and c not in shared and cands[c].notna().any()]
    base = "; ".join(f"{c} {v:.2f} shared by every candidate (a baseline, not compared)" for c, v in shared.items()
                     if isinstance(v, (int, float)))
    if not comps:
        return f"  largest component none{' (' + base + ')' if base else ''}"
    means = cands[comps].mean()
    top = means.idxmax()
    return (f"  largest component {top} (mean {means[top]:.2f} across {len(cands)} candidate(s); largest for "
            f"{int((cands[comps].idxmax(axis=1) == top).sum())}{'; ' + base if base else ''})")


def _ci_text(lo, hi) -> str:
    ok = all(isinstance(x, (int, float)) and x == x for x in (lo, hi))
    return f" [{lo:.2f}, {hi:.2f}] 95% CI" if ok else ""


def _best_lines(best: dict, inference: dict) -> list:
    """The best-encoder lines of :func:`summary_lines` from analyze's ``"best"`` (one dataset after another)."""
    lines = []
    for ds, b in best.items():
        value = b.get("value")
        value = f"{value:.2f}" if isinstance(value, (int, float)) else "-"
        lines.append(f"  best encoder      {b['model']} on {ds}: agg_risk {value}{_ci_text(b.get('lo'), b.get('hi'))}"
                     f", {b['n_seeds']} seed(s)")
        others = [m for m in b["top_group"] if m != b["model"]]
        mde = (inference.get(ds) or {}).get("mde_agg_risk")
        detect = f"; this zoo detects differences >= {mde:.1f} points" if isinstance(mde, float) and mde == mde else ""
        lines.append(f"  top group         {len(b['top_group'])} of {b['n_candidates']} candidate(s) not significantly "
                     f"worse (Holm){': ' + ', '.join(others) if others else ''}{detect}")
        refs = b.get("references") or []
        lines.append(f"  references        {', '.join(refs) if refs else 'none'}"
                     f"{' (not candidates for best)' if refs else ''}")
    return lines


def _leaderboard_best(board) -> list:
    """Without analyze's summary: the lowest agg_risk outside references, said to be without comparisons."""
    refs = board["is_reference"].astype(str).str.lower().isin(["true", "1"]) if "is_reference" in board else None
    cands = board[~refs] if refs is not None else board
    cands = cands if len(cands) else board
    b = cands.loc[cands["agg_risk"].idxmin()]
    ci = _ci_text(b.get("agg_risk_lo"), b.get("agg_risk_hi"))
    named = ", ".join(board.loc[refs, "model"].astype(str)) if refs is not None and refs.any() else "none"
    return [f"  best encoder      {b['model']} on {b['dataset']}: agg_risk {b['agg_risk']:.2f}{ci} (lowest; no "
            "comparisons made)", f"  references        {named}"]

"""Across models: design-choice effects, controlled pairs, ranking stability, the scaling law, pooled seeds and the
published 169-model table.

:func:`analyze` runs every analysis on a leaderboard and writes ``analysis/*.csv`` + ``summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from riskdecomp.analysis.effects import (
    baseline_contrasts,
    controlled_pairs,
    design_effects,
    ranking_stability,
    seed_ranking_stability,
    summarize,
)
from riskdecomp.analysis.inference import (
    best_summary,
    comparisons,
    engines,
    reference_models,
)
from riskdecomp.analysis.scaling import fit_scaling_law
from riskdecomp.utils.atomic import atomic_write_text as _atomic_write_text
from riskdecomp.utils.atomic import jsonable, write_csv
from riskdecomp.utils.schema import OUTCOMES

# ----------------------------------------------------------------------------- orchestration
REQUIRED_COLUMNS = ("model", "dataset", "agg_risk")


def read_leaderboard(path) -> pd.DataFrame:
    """A ``leaderboard.csv`` of riskdecomp evaluate, or a one-line :class:`RiskdecompError` naming the file: missing,
    empty, binary or junk, without the columns the analyses need, or without rows (never an empty analysis)."""
    from riskdecomp.utils.errors import RiskdecompError

    path = Path(path)
    if not path.is_file():
        raise RiskdecompError(f"{path}: not found (expected the leaderboard.csv of riskdecomp evaluate)")
    try:
        df = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise RiskdecompError(f"{path}: not a readable CSV ({type(exc).__name__})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise RiskdecompError(f"{path}: not a riskdecomp leaderboard (no column(s) {', '.join(missing)})")
    if df.empty:
        raise RiskdecompError(f"{path}: the leaderboard has no rows")
    return df


def _frame(x) -> pd.DataFrame | None:
    if x is None:
        return None
    if isinstance(x, pd.DataFrame):
        return x
    path = Path(x)
    if path.suffix == ".csv" and path.name == "all_results.csv":
        from riskdecomp.analysis.published import load_published
        return load_published(path)
    return read_leaderboard(path)


def analyze(leaderboard=None, published=None, out_dir=None, seeds=None, per_sample=None) -> dict:
    """Run every analysis and write ``summary.json``, ``design_effects.csv``,
    ``controlled_pairs.csv``, ``comparisons.csv`` (+ ``ranking_moves.csv``, ``scaling_predictions.csv``) into out_dir.

    ``seeds``: our per-seed table (``leaderboard_seeds.csv``, DataFrame or path) when the zoo has pretraining
    seeds: controlled pairs then carry CIs and Holm-corrected p-values over seeds, ``baseline_contrasts.csv``
    compares every model with random init (:func:`baseline_contrasts`), and ``summary.json`` gets
    ``seed_ranking_stability`` (:func:`seed_ranking_stability`; its splits in ``seed_ranking_stability.csv``).

    ``per_sample``: a results folder's ``per_sample/`` (or a dict (run, dataset) -> DataFrame with ``err01``):
    the test-point noise of agg_risk differences from the paired per-sample errors. Our zoo's comparisons
    (:func:`comparisons_and_best`): ``comparisons.csv`` (every pair of candidates on a dataset, and the best
    against each, Holm per family), ``summary.json`` ``"best"`` and ``"inference"`` per dataset (docs/inference.md).

    ``leaderboard`` / ``published``: DataFrame or path (a file named all_results.csv is read with
    :func:`riskdecomp.analysis.published.load_published`). Each source is analysed separately (the
    published rows are ImageNet, ours may be other datasets — pooling them would mix scales).
    summary.json: the top level is the primary source (ours when given, else published) and, when
    both are given, ``per_source`` = {"ours": ..., "published": ...} plus ``primary_source``.
    The CSVs concatenate both sources with a ``source`` column. Writes are atomic. Returns the
    summary dict.
    """
    if out_dir is None:
        raise ValueError("analyze needs out_dir")
    out_dir = Path(out_dir)
    sources = {name: _frame(x) for name, x in (("ours", leaderboard), ("published", published))}
    sources = {k: v for k, v in sources.items() if v is not None}
    if not sources:
        raise ValueError("analyze needs a leaderboard or the published table")
    summaries, effects, pairs, moves, preds = {}, [], [], [], []
    seed_table = _frame(seeds)
    for name, df in sources.items():
        summaries[name] = summarize(df)
        e = design_effects(df)
        e.insert(0, "source", name)
        effects.append(e)
        p = controlled_pairs(df, seeds=seed_table if name == "ours" else None,
                             per_sample=per_sample if name == "ours" else None)
        p.insert(0, "source", name)
        pairs.append(p)
        _, m = ranking_stability(df)
        m.insert(0, "source", name)
        moves.append(m)
        try:
            _, pr = fit_scaling_law(df)
            pr.insert(0, "source", name)
            preds.append(pr)
        except ValueError:
            pass
    primary = "ours" if "ours" in summaries else "published"
    summary = dict(summaries[primary])
    summary["primary_source"] = primary
    if len(summaries) > 1:
        summary["per_source"] = summaries
    contrasts = (baseline_contrasts(sources["ours"], seed_table, per_sample=per_sample) if "ours" in sources
                 else pd.DataFrame())
    comps = pd.DataFrame()
    if "ours" in sources:
        comps, best, inference = comparisons_and_best(sources["ours"], seed_table, per_sample)
        summary.update(best=best, inference=inference)
    if len(comps):
        write_csv(comps, out_dir / "comparisons.csv")
    else:
        (out_dir / "comparisons.csv").unlink(missing_ok=True)
    if len(contrasts):
        write_csv(contrasts, out_dir / "baseline_contrasts.csv")
    else:
        (out_dir / "baseline_contrasts.csv").unlink(missing_ok=True)
    stability, splits = seed_ranking_stability(seed_table)
    if stability:
        summary["seed_ranking_stability"] = stability
        write_csv(splits, out_dir / "seed_ranking_stability.csv")
    else:
        (out_dir / "seed_ranking_stability.csv").unlink(missing_ok=True)  # not left over from a seeded run
    _atomic_write_text(out_dir / "summary.json", json.dumps(jsonable(summary), indent=2, sort_keys=False))
    write_csv(pd.concat(effects, ignore_index=True), out_dir / "design_effects.csv")
    write_csv(pd.concat(pairs, ignore_index=True), out_dir / "controlled_pairs.csv")
    write_csv(pd.concat(moves, ignore_index=True), out_dir / "ranking_moves.csv")
    if preds:
        write_csv(pd.concat(preds, ignore_index=True), out_dir / "scaling_predictions.csv")
    return summary


def comparisons_and_best(board: pd.DataFrame, seeds=None, per_sample=None) -> tuple[pd.DataFrame, dict, dict]:
    """``(comparisons, best, inference)`` of a leaderboard, from the one inference engine
    (:mod:`riskdecomp.analysis.inference`): every pair of candidates per dataset and the best against each, the
    best candidate excluding references with its top group (``summary.json`` "best") and how inference was done
    (``summary.json`` "inference"). Also what the CLI summary prints."""
    board = board if "dataset" in board else board.assign(dataset="default")
    refs = reference_models(board)
    frames, best, inference = [], {}, {}
    for ds, engine in engines(board, seeds, per_sample).items():
        outs = [c for c in OUTCOMES if c in engine.runs]
        comp = comparisons(engine, refs, outs)
        frames.append(comp)
        vs_best = comp[comp["family"] == "vs_best"] if len(comp) else comp
        b = best_summary(engine, board, [m for m in refs if m in engine.models], vs_best)
        if b is not None:
            best[str(ds)] = b
            inference[str(ds)] = engine.summary(max(b["n_candidates"] - 1, 1))
    frames = [f for f in frames if len(f)]
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), best, inference

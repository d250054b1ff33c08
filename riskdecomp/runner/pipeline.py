"""Orchestration: which (model, dataset) jobs to run, in parallel or on dask, what to skip, where results go.

One job = one zoo entry on one dataset. It gets the zoo as read once by :func:`evaluate` (the file is never read
again: ``--zoo /dev/stdin`` works, and a file edited mid-run does not mix two versions), featurizes (cached), runs every estimator on
the features and writes one run record ``<out>/runs/<model>@<dataset>.json`` (atomically; file names come from
:func:`riskdecomp.utils.names.result_path`, so no two (model, dataset) pairs share a file). A record is reused when it is
valid (:func:`check_record`: schema, model and dataset names, components that add up to ``agg_risk``) and its
``run_key`` matches: the entry (incl. :func:`riskdecomp.features.encoders.entry_identity`, i.e. the weights actually used),
its reference, the dataset fingerprint, the settings that change numbers, ``PROTOCOL_VERSION`` and the package
version. An invalid record is recomputed with a warning. Only small records travel back from workers.

An output folder holds the results of ONE set of settings (``runs/_folder.json``): a run with other settings into
it is refused (one line naming the differences) unless ``--force``, which recomputes everything and makes the new
settings the folder's (the former settings' results are moved to ``runs/_replaced/<settings key>/``, never deleted);
a run that only switches analyses on adds them to every row of the folder (:func:`_adds_analyses`). A damaged
``_folder.json`` (checked like a record: :func:`riskdecomp.runner.records.check_folder_state`) is rewritten by
:func:`evaluate` only when every record is of its settings; :func:`build` refuses it with one line and leaves the
summaries as they are. Every summary (``leaderboard.csv``, ``timings.csv``, ``fewshot.csv``, ``uncertainty.csv``,
``active_learning.csv``, ``label_efficiency.csv``, ``failures.csv``) is rebuilt by :func:`build` from ALL valid
records in ``runs/`` made with the folder's settings -- not only from this run's -- so a ``--models`` subset run adds
rows and never drops any, and a failing rerun (full disk, every model failing) leaves the good rows in place.
``riskdecomp build --results DIR`` runs the same :func:`build`. ``failures.csv`` lists the (model, dataset) pairs
whose latest attempt failed (a failed model keeps its earlier valid row, if any).

``leaderboard.csv``: one row per model x dataset, pooled over pretraining seeds (``leaderboard_seeds.csv``: one
row per pretraining seed, when the zoo has seeds: see :mod:`riskdecomp.zoo.seeds`; runs are pooled as seeds only when
their records prove it, :mod:`riskdecomp.analysis.seeds`); byte-identical for the same seed
and inputs on CPU. ``timings.csv``
holds wall-clock seconds per stage (kept out of the leaderboard so it stays reproducible).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from riskdecomp import __version__
from riskdecomp.features.datasets import DEFAULT_DATASET
from riskdecomp.runner.jobs import EvaluationResult, dataset_for, run_job
from riskdecomp.runner.parallel import dask_client, parallel_map
from riskdecomp.runner.records import (
    FAILURES_STATE,
    FOLDER_STATE,
    OUTPUT_FOLDERS,
    PROTOCOL_VERSION,
    STAGES_STATE,
    ZOO_STAGES_VERSION,
    Settings,
    dataset_name,
    positive_int,
    read_folder_state,
    read_records,
    read_state,
    settings_digest,
    write_state,
)
from riskdecomp.runner.stages import zoo_active, zoo_ensembles, zoo_uncertainty_metrics
from riskdecomp.runner.tables import build_leaderboard, with_flags
from riskdecomp.sources import source_of
from riskdecomp.utils.atomic import check_writable_dir, real_folder, write_csv
from riskdecomp.utils.errors import RiskdecompError, ZooError
from riskdecomp.utils.names import result_path, result_stem
from riskdecomp.utils.progress import Progress, is_terminal
from riskdecomp.zoo import Zoo, load_zoo

log = logging.getLogger(__name__)


def with_references(zoo: Zoo, models: Optional[Sequence[str]] = None) -> list:
    """The names of ``models`` (all when None) plus every entry they reference, transitively, in zoo order.
    A reference cycle anywhere in the zoo is a one-line :class:`ZooError`."""
    for e in zoo:
        chain = [e.name]
        while zoo[chain[-1]].reference is not None:
            nxt = zoo[chain[-1]].reference
            if nxt in chain:
                raise ZooError(f"{zoo.path or 'zoo'}: model {e.name!r}: field 'reference': references form a cycle "
                               f"({' -> '.join(chain[chain.index(nxt):] + [nxt])})")
            chain.append(nxt)
    if models is None:
        return list(zoo.names)
    models = list(models)
    if not models:
        raise RiskdecompError("--models: no model names given (leave the option out to run the whole zoo)")
    wanted, todo = set(), [zoo[n].name for n in models]
    while todo:
        n = todo.pop()
        if n not in wanted:
            wanted.add(n)
            if zoo[n].reference:
                todo.append(zoo[n].reference)
    return [n for n in zoo.names if n in wanted]


def _settings_diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


def _folder_settings(settings: Settings) -> dict:
    return {**settings.key_dict(), "protocol_version": PROTOCOL_VERSION, "riskdecomp_version": __version__}


#: the analyses a run can add to a folder: switching one on keeps every number of the others (its own columns,
#: per-sample or active files come in addition)
ANALYSES = ("uncertainty", "active", "statistics")
#: where ``--force`` moves the results of a folder's former settings: ``runs/_replaced/<settings key>/``
REPLACED = "_replaced"


def _adds_analyses(old: dict, new: dict) -> bool:
    """Whether the settings ``new`` differ from the folder's ``old`` only by analyses switched on (an addition to the
    folder, not other settings: nothing the folder holds is dropped)."""
    diff = [k for k in set(old) | set(new) if old.get(k) != new.get(k)]
    return bool(diff) and all(k in ANALYSES and old.get(k) is False and new.get(k) is True for k in diff)


def folder_settings(out) -> dict:
    """The settings recorded for the results folder ``out`` (``runs/_folder.json``), {} when it has none."""
    folder, _ = read_folder_state(Path(out) / "runs")  # a damaged state has none
    settings = folder.get("settings") if "settings_key" in folder else None
    if not isinstance(settings, dict):
        return {}
    return {k: v for k, v in settings.items() if k in Settings.__dataclass_fields__}


def _replaced_dir(out: Path, key) -> Path:
    """``runs/_replaced/<key>/``; a key that is not one :meth:`Settings.key` makes (an edited file) goes to
    ``unknown``, never outside ``out``."""
    ok = isinstance(key, str) and len(key) == 24 and all(c in "0123456789abcdef" for c in key)
    return real_folder(out, "runs", REPLACED, key if ok else "unknown")  # links there are refused, never followed


def _set_aside(out: Path, folder: dict, new_key: str) -> None:
    """``--force`` with other settings: the results of the folder's former settings are moved, not lost, to
    ``runs/_replaced/<settings key>/``, a results folder of its own (``riskdecomp build --results`` works there):
    their run records with their per-sample and active files, the ensemble scores, a copy of the summary CSVs and
    the folder state. A record of yet other settings goes to its own key's folder. A damaged folder state (``folder``
    is then {}) leaves the former settings unknown: the summaries go to ``runs/_replaced/unknown/``, every record to
    its own key's folder. Every folder on the way is checked to be real (a link is refused, never followed)."""
    import shutil

    dest = _replaced_dir(out, folder.get("settings_key"))
    real_folder(dest, "runs").mkdir(parents=True, exist_ok=True)
    for f in sorted(out.glob("*.csv")):
        target = dest / f.name
        if target.is_symlink():  # copying through a link would write outside --out
            target.unlink()
        shutil.copy2(f, target)
    for f in sorted((out / "ensemble").glob("*.csv")):
        real_folder(dest, "ensemble").mkdir(exist_ok=True)
        f.replace(dest / "ensemble" / f.name)
    if folder:
        write_state(dest / "runs" / FOLDER_STATE, folder)
    for (m, d), rec in read_records(out)[0].items():
        if rec["settings_key"] == new_key:
            continue  # made with the new settings already: --force recomputes it in place
        keep = _replaced_dir(out, rec["settings_key"])
        for kind in ("per_sample", "active", "runs"):  # the record last: a kill in between recomputes, loses nothing
            src = result_path(out, kind, m, d)
            if src.is_file():
                result_path(keep, kind, m, d).parent.mkdir(parents=True, exist_ok=True)
                src.replace(result_path(keep, kind, m, d))


def evaluate(zoo, dataset: str = DEFAULT_DATASET, out="results", *, models: Optional[Sequence[str]] = None,
             cache_dir=None, settings: Optional[Settings] = None, jobs: Optional[int] = 1, backend: str = "loky",
             scheduler: Optional[str] = None, force: bool = False) -> EvaluationResult:
    """Evaluate every zoo entry (or ``models`` and, transitively, their references) on ``dataset``; write all
    outputs to ``out`` and return every summary table (:class:`EvaluationResult`).

    Before any compute: ``out`` and the cache must be writable folders (not a filesystem root or a home folder),
    every result file name valid, and ``out`` must not hold results of other settings (unless ``force``: then
    everything is recomputed -- records, features, recipe checkpoints -- and the new settings become the folder's, the
    former ones' results moved to ``runs/_replaced/<settings key>/``); settings that only switch analyses on add
    them to every row of the folder.
    ``jobs=None`` (auto): one process per CPU core (at most one per model) on CPU, a single process on a GPU; more
    jobs than models are capped (with a warning). Each job then uses ``settings.threads`` threads (default: cores /
    jobs). Results are byte-identical for the same seed, inputs and thread count, whatever the number of jobs or the
    backend.
    """
    import os
    from dataclasses import replace

    from riskdecomp.features.encoders import default_cache_dir
    from riskdecomp.utils.device import resolve_device

    settings = settings or Settings()
    if backend not in ("loky", "dask"):
        raise RiskdecompError(f"backend {backend!r}: expected 'loky' or 'dask'")
    if jobs is not None:
        positive_int(jobs, "--jobs")
    full = load_zoo(zoo) if isinstance(zoo, (str, Path)) else zoo
    names = with_references(full, models)
    out = check_writable_dir(out, "--out")
    for sub in OUTPUT_FOLDERS:  # nothing is written or deleted through a link to elsewhere
        real_folder(out, sub)
    cache_dir = check_writable_dir(Path(cache_dir) if cache_dir else default_cache_dir(), "--cache-dir")
    ds = None
    if any(source_of(full[n]).needs_dataset for n in names):
        ds = dataset_for(None, dataset, settings.seed)  # a bad dataset is one error up front, not one per model
    for n in names:  # every output file name is valid before any compute
        try:
            result_stem(n, dataset_name(full[n], ds))
        except RiskdecompError as exc:
            hint = ("set the entry's dataset: field" if source_of(full[n]).dataset_name(full[n]) else
                    "the dataset's name comes from its folder: rename it or link it under a valid name")
            raise RiskdecompError(f"{exc} ({hint})") from None
    folder_path = out / "runs" / FOLDER_STATE
    folder, why = read_folder_state(out / "runs")
    if why:  # damaged: rewritten only when every record is of this run's settings (nothing of others is mixed in)
        others = {r["settings_key"] for r in read_records(out)[0].values()} - {settings.key()}
        if others and not force:
            raise RiskdecompError(f"{folder_path}: damaged folder state ({why}) and run records of other settings: "
                                  f"use another --out, or --force to recompute with the new settings")
        if others:  # --force: the other settings' results are set aside like any former settings', never lost
            _set_aside(out, {}, settings.key())
        log.warning("%s: damaged folder state (%s): rewritten with this run's settings", folder_path, why)
    other = folder.get("settings_key") not in (None, settings.key())
    adding = other and _adds_analyses(folder.get("settings", {}), _folder_settings(settings))
    if other and not adding and not force:
        raise RiskdecompError(f"--out {out}: holds results made with other settings "
                              f"({_settings_diff(folder.get('settings', {}), _folder_settings(settings))}); "
                              f"use another --out, or --force to recompute with the new settings")
    if other and force:
        _set_aside(out, folder, settings.key())
    elif adding:  # every row of the folder gets the added analyses (a --models run must not drop the others)
        old_rows = {md for md, r in read_records(out)[0].items() if r["settings_key"] == folder["settings_key"]}
        names = with_references(full, [n for n in full.names
                                       if n in names or (n, dataset_name(full[n], ds)) in old_rows])
    order = list(full.names) + [n for n in folder.get("order", []) if n not in full.names]
    write_state(folder_path, {"settings_key": settings.key(), "settings": _folder_settings(settings),
                               "order": order})

    cores = os.cpu_count() or 1
    if jobs is None:
        jobs = 1 if resolve_device(settings.device) != "cpu" else max(1, min(cores, len(names)))
    elif jobs > len(names):
        log.warning("--jobs %d: capped at %d (one job per model)", jobs, len(names))
        jobs = len(names)
    use_dask = backend == "dask" or scheduler is not None
    if settings.threads is None:
        settings = replace(settings, threads=1 if use_dask else max(1, cores // jobs))
    show = settings.progress
    # the per-stage bars (pretraining epochs, featurize img/s) only in this process and on a terminal: a worker
    # cannot draw on the parent's terminal, and a log file gets one line per finished model instead
    settings = replace(settings, progress=show and jobs == 1 and not use_dask and is_terminal(sys.stderr))
    client = dask_client(scheduler, jobs) if use_dask else None
    try:
        # with force, references are recomputed first, once, and then read by the models that need them
        refs = {full[n].reference for n in names if full[n].reference}
        waves = [[n for n in names if n in refs], [n for n in names if n not in refs]] if force else [names]
        records = []
        with Progress([n for wave in waves for n in wave], enabled=show) as bar:
            for wave in waves:
                args = [(full, n, dataset, str(out), str(cache_dir), settings, force) for n in wave]
                records += parallel_map(run_job, args, jobs, client, on_result=bar.finished) if args else []
    finally:
        if client is not None:
            client.close()
    ok = [r for r in records if "error" not in r]
    failed = [r for r in records if "error" in r]
    _update_failures(out, ok, failed, settings)
    for r in ok:  # a few-shot setting the data cannot support is skipped, not fatal: say so, one line each
        for key, why in sorted(r["row"].items()):
            if key.endswith("_skipped") and isinstance(why, str):
                log.warning("model %r: %s skipped: %s", r["model"], key[: -len("_skipped")], why)
    computed = {(r["model"], r["dataset"]) for r in ok if not r.get("skipped")}
    redone = [r["model"] for r in ok if r.get("active_recomputed")]
    if redone:  # reused records whose curves were stale (an older active-learning protocol) or missing
        log.warning("active-learning curves recomputed for %d reused run(s) (their curves were missing or of an older "
                    "protocol; every other number reused): %s", len(redone), ", ".join(redone))
    redo = True
    if settings.uncertainty:
        # zoo-level stages are redone only when some record changed (a rerun of finished work stays fast)
        valid, _ = read_records(out)
        current = sorted((m, d, r["run_key"]) for (m, d), r in valid.items() if r["settings_key"] == settings.key())
        zoo_key = settings_digest([current, settings.key_dict(), ZOO_STAGES_VERSION])
        stages_path = out / "runs" / STAGES_STATE
        stages = read_state(stages_path)
        redo = stages.get("uncertainty") != zoo_key or not (out / "uncertainty.csv").exists()
        if redo:
            ens_records = [valid[(m, d)] for m, d, _ in current if m in full.names]
            zoo_ensembles(full, ens_records, dataset, out, cache_dir, settings)
    res = build(out, settings=settings, computed=computed, redo_uncertainty=redo, jobs=1 if use_dask else jobs,
                zoo_names=full.names)
    res.tracebacks = {(r["model"], r["dataset"]): r.get("traceback", "") for r in failed}
    if settings.uncertainty and redo:
        write_state(stages_path, {**stages, "uncertainty": zoo_key})
    return res


def _update_failures(out: Path, ok: list, failed: list, settings: Settings) -> None:
    """``runs/_failures.json``: the (model, dataset) pairs whose latest attempt failed (cleared when one succeeds)."""
    path = real_folder(out, "runs") / FAILURES_STATE
    state = read_state(path)
    for r in ok:
        state.pop(f"{r['model']}|{r['dataset']}", None)
    for r in failed:
        state[f"{r['model']}|{r['dataset']}"] = {**{k: r[k] for k in ("model", "dataset", "error_type", "error")},
                                                 "settings_key": settings.key()}
    if state or path.exists():
        write_state(path, state)


_FAILURE_FIELDS = ("model", "dataset", "error_type", "error")


def _failure_rows(runs: Path, key: str) -> list:
    """The rows of ``failures.csv``: the entries of ``runs/_failures.json`` of settings ``key``; a damaged entry
    (not a mapping, a field missing or not a string) is left out with a warning."""
    rows = []
    for k, f in read_state(runs / FAILURES_STATE).items():
        if not isinstance(f, dict) or not all(isinstance(f.get(n), str) for n in (*_FAILURE_FIELDS, "settings_key")):
            log.warning("%s: damaged entry %r left out of failures.csv", runs / FAILURES_STATE, k)
        elif f["settings_key"] == key:
            rows.append({n: f[n] for n in _FAILURE_FIELDS})
    return rows


def build(results, *, settings: Optional[Settings] = None, computed=(), redo_uncertainty: bool = True,
          jobs: int = 1, zoo_names: Optional[Sequence[str]] = None) -> EvaluationResult:
    """Rebuild every summary CSV of a results folder from its run records (``riskdecomp build --results DIR``;
    :func:`evaluate` ends with it). Uses the valid records of the folder's settings (``settings``, default: those
    in ``runs/_folder.json``); invalid records and records of other settings are left out with a warning. A summary
    that has no rows (e.g. ``uncertainty.csv`` with uncertainty off) is removed, so no file of other settings stays
    beside the others. ``computed``: (model, dataset) pairs computed by the calling run (``timings.csv``'s
    ``reused`` column). ``redo_uncertainty=False`` keeps an existing ``uncertainty.csv``. ``jobs``: processes for the uncertainty metrics.
    ``zoo_names``: the evaluated zoo's models; records of other models (an earlier zoo's) are kept, with a warning."""
    out = Path(results)
    for sub in OUTPUT_FOLDERS:  # nothing is written or deleted through a link to elsewhere
        real_folder(out, sub)
    runs = out / "runs"
    if not runs.is_dir():
        raise RiskdecompError(f"--results {out}: no runs/ folder (not an output folder of riskdecomp evaluate)")
    folder, why = read_folder_state(runs)
    if why:  # never read as "no settings" or "no order": the summaries in place stay as they are
        raise RiskdecompError(f"--results {out}: runs/{FOLDER_STATE}: damaged folder state ({why}); nothing was "
                              "rebuilt: rerun evaluate with the folder's settings to rewrite it")
    key = settings.key() if settings is not None else folder.get("settings_key")
    valid, invalid = read_records(out)
    if settings is None:
        known = {k: v for k, v in folder.get("settings", {}).items() if k in Settings.__dataclass_fields__}
        if "settings_key" not in folder:
            raise RiskdecompError(f"--results {out}: runs/{FOLDER_STATE} is missing or unreadable; rerun evaluate")
        try:
            settings = Settings(**known)
        except (TypeError, ValueError, RiskdecompError) as exc:
            raise RiskdecompError(f"--results {out}: runs/{FOLDER_STATE}: invalid settings ({exc})") from None
        if valid and not any(r["settings_key"] == key for r in valid.values()):
            raise RiskdecompError(f"--results {out}: runs/{FOLDER_STATE}: its settings_key {key!r} matches none of "
                                  f"the {len(valid)} valid run records (a damaged folder state?); nothing was "
                                  "rebuilt: rerun evaluate with the folder's settings to rewrite it")
    for p, why in invalid:
        log.warning("%s: invalid run record (%s): left out of the summaries", p, why)
    recs = [r for r in valid.values() if r["settings_key"] == key]
    if len(recs) < len(valid):
        log.warning("%s: %d run record(s) made with other settings left out of the summaries", runs,
                    len(valid) - len(recs))
    rank = {n: i for i, n in enumerate(folder.get("order", []))}
    recs.sort(key=lambda r: (rank.get(r["model"], len(rank)), r["model"], r["dataset"]))
    computed = set(computed)
    for r in recs:  # as in a job's answer: was the record reused (not computed by the calling run)?
        r["skipped"] = (r["model"], r["dataset"]) not in computed
    from riskdecomp.analysis.seeds import aggregate_seeds

    if zoo_names is not None:  # a record of an earlier zoo still counts (nothing is lost), but not silently
        stale = sorted({r["model"] for r in recs} - set(zoo_names))
        if stale:
            log.warning("%s: %d run record(s) of model(s) not in this zoo kept in the summaries: %s (delete their "
                        "files in runs/ to drop them)", runs, len(stale), ", ".join(stale))
    # one row per model, pooled over pretraining seeds proven by the records (analysis.seeds.seed_plan)
    proof = {(r["model"], r["dataset"]): r["pretraining"] for r in recs if "pretraining" in r}
    board, per_seed = with_flags(*aggregate_seeds(build_leaderboard(recs), proof), recs)
    res = EvaluationResult(board, pd.DataFrame(), out, recs)
    tables = {
        "leaderboard": (res.leaderboard, True),
        "leaderboard_seeds": (per_seed, False),  # None (removed) without seeds
        "timings": (pd.DataFrame([{"model": r["model"], "dataset": r["dataset"], **r.get("timings", {}),
                                   "reused": r["skipped"]} for r in recs]), False),
        "fewshot": (pd.DataFrame([row for r in recs for row in r.get("fewshot", [])]), False),
        "failures": (pd.DataFrame(_failure_rows(runs, key), columns=list(_FAILURE_FIELDS)), False),
    }
    if settings.uncertainty and redo_uncertainty:
        tables["uncertainty"] = (zoo_uncertainty_metrics(recs, out, settings, jobs), False)
    elif settings.uncertainty:  # unchanged since it was written (evaluate checked its key)
        tables["uncertainty"] = (pd.read_csv(out / "uncertainty.csv"), False)
    else:
        tables["uncertainty"] = (pd.DataFrame(), False)
    curves, effs = zoo_active(recs, out) if settings.active else (pd.DataFrame(), pd.DataFrame())
    tables["active_learning"], tables["label_efficiency"] = (curves, False), (effs, False)
    for name, (df, always) in tables.items():
        df = pd.DataFrame() if df is None else df
        setattr(res, name, df)
        path = out / f"{name}.csv"
        if always or not df.empty:
            if not (name == "uncertainty" and not redo_uncertainty):
                write_csv(df, path)
            res.paths[name] = path
        else:
            path.unlink(missing_ok=True)
    return res

"""One job: one zoo entry on one dataset -> features -> every estimator -> one run record (+ per-sample tables).
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from riskdecomp import __version__
from riskdecomp.estimators.active import ACTIVE_PROTOCOL, run_active_learning
from riskdecomp.features.cache import Features, cached_feature_dim, featurize, npz_width
from riskdecomp.runner.records import (
    PROTOCOL_VERSION,
    RECORD_VERSION,
    Settings,
    check_record,
    dataset_name,
    flatten_metadata,
    pretraining_identity,
    read_record,
    run_facts,
    run_key,
)
from riskdecomp.runner.tables import per_sample_table
from riskdecomp.sources import source_of
from riskdecomp.utils.atomic import atomic_write_text, jsonable, write_csv
from riskdecomp.utils.errors import RiskdecompError, failing_stage, one_line, stage_of
from riskdecomp.utils.names import result_path
from riskdecomp.utils.progress import stage
from riskdecomp.zoo import Zoo

log = logging.getLogger(__name__)


_DATASETS: dict = {}  # per process: a dataset is scanned once, however many jobs use it


def dataset_for(entry, dataset_spec: str, seed: int):
    if entry is not None and not source_of(entry).needs_dataset:
        return None
    if (dataset_spec, seed) not in _DATASETS:
        from riskdecomp.features.datasets import load_dataset

        _DATASETS[(dataset_spec, seed)] = load_dataset(dataset_spec, seed=seed)
    return _DATASETS[(dataset_spec, seed)]


def load_run_features(entry, dataset_spec, settings, cache_dir, force: bool = False, mmap: bool = False,
          encoder=None) -> Features:
    ds = dataset_for(entry, dataset_spec, settings.seed)
    return featurize(entry, ds, cache_dir=cache_dir, device=settings.device, batch_size=settings.batch_size,
                     num_workers=settings.num_workers, progress=settings.progress, force=force,
                     dtype=settings.feature_dtype, mmap=mmap, encoder=encoder)


def run_job(zoo, name: str, dataset_spec: str, out: str, cache_dir: str, settings: Settings,
            force: bool = False) -> dict:
    """Run every estimator for one (model, dataset); write and return its record (or a failure record)."""
    from threadpoolctl import threadpool_limits

    args = (zoo, name, dataset_spec, out, cache_dir, settings, force)
    if settings.threads:
        with threadpool_limits(settings.threads):
            return _run_job(*args)
    return _run_job(*args)


def _outputs_present(out: Path, name: str, dname: str, settings: Settings) -> bool:
    return not settings.uncertainty or result_path(out, "per_sample", name, dname).is_file()


def _active_current(rec: dict, out: Path, name: str, dname: str, settings: Settings) -> bool:
    """Whether the active-learning curves of a reusable record are there and of the current protocol
    (``active_protocol`` of the record, :data:`riskdecomp.estimators.active.ACTIVE_PROTOCOL`; a record written
    before records carried it has curves of protocol 1, C fixed at 1). Curves that are not are recomputed alone:
    they are not part of the record's numbers, so its run key and every other number stay as they are."""
    return (not settings.active or (rec.get("active_protocol") == ACTIVE_PROTOCOL
                                    and result_path(out, "active", name, dname).is_file()))


def _feature_dim(entry, ds, cache_dir, dtype) -> Optional[int]:
    """The width d of an entry's features without computing them: what the entry says (a recipe's ``z_dim``), a
    features file's header, or the sidecar of its cached train features; None when none of them is at hand."""
    src = source_of(entry)
    known = src.feature_dim(entry)
    if known is not None:
        return int(known)
    if not src.has_encoder:
        return npz_width(Path(entry.path))
    return cached_feature_dim(entry, ds, cache_dir=cache_dir, dtype=dtype) if ds is not None else None


def _run_job(zoo: Zoo, name, dataset_spec, out, cache_dir, settings: Settings, force: bool) -> dict:
    import os

    import torch

    level = os.environ.get("RISKDECOMP_LOG_LEVEL")
    if level and not logging.getLogger().handlers:  # a worker process: log like the command that started it
        logging.basicConfig(level=int(level), format="%(levelname)s %(name)s: %(message)s")

    if settings.threads:
        torch.set_num_threads(settings.threads)
    t0 = time.perf_counter()
    dname = dataset_spec
    out = Path(out)
    try:
        entry = zoo[name]
        reference = zoo[entry.reference] if entry.reference else None
        # the reference of other entries is its own reference: approx = its own train->train error, usability = 0
        self_ref = reference is None and any(zoo[n].reference == name for n in zoo.names)
        ds = dataset_for(entry, dataset_spec, settings.seed)
        dname = dataset_name(entry, ds)
        rpath = result_path(out, "runs", name, dname)
        fingerprint = ds.fingerprint if ds is not None else "npz"
        stage(name, "weights (a recipe entry is pretrained once, then cached)")
        key = run_key(entry, entry if self_ref else reference, ds, fingerprint, settings, cache_dir, force)
        meta = jsonable(flatten_metadata(entry.metadata))
        pretraining = pretraining_identity(entry)
        facts = run_facts(entry)
        if not force:
            rec, why = read_record(rpath, name, dname)
            if why:
                log.warning("%s: invalid run record (%s): recomputing it", rpath, why)
            if rec is not None and rec["run_key"] == key and _outputs_present(out, name, dname, settings):
                old_meta = {k: v for k, v in rec["row"].items() if k in rec.get("metadata_fields", [])}
                if old_meta != meta:  # metadata only labels the row: refresh it, keep the numbers
                    rec["row"] = {**{k: v for k, v in rec["row"].items() if k not in old_meta}, **meta}
                    rec["metadata_fields"] = sorted(meta)
                # a record written before records held the pretraining identity, the entry's facts (reference,
                # weights) or the feature width gets them, found without computing anything (the run key is unchanged)
                changed = old_meta != meta or rec.get("pretraining", ()) != pretraining
                changed |= any(rec.get(k, ()) != v for k, v in facts.items())
                if "n_features" not in rec["row"]:
                    d = _feature_dim(entry, ds, cache_dir, settings.feature_dtype)
                    if d is not None:
                        rec["row"]["n_features"] = d
                        changed = True
                redo_active = not _active_current(rec, out, name, dname, settings)
                if redo_active:  # stale or missing curves: only they are recomputed
                    with failing_stage("featurize"):
                        feats = load_run_features(entry, dataset_spec, settings, cache_dir, mmap=True)
                    rec["timings"]["time_active"] = _active_curves(feats, settings, out)
                    rec["active_protocol"], changed = ACTIVE_PROTOCOL, True
                if changed:
                    rec.update(pretraining=pretraining, **facts)
                    atomic_write_text(rpath, json.dumps(rec, indent=1, sort_keys=True, allow_nan=False))
                rec["skipped"] = True
                rec["active_recomputed"] = redo_active
                return rec
        torch.manual_seed(settings.seed)
        timings = {}
        stage(name, "featurize")
        t = time.perf_counter()
        # one encoder per job: the features (when not cached) and the augmented views / posterior come from the same
        # network (built under the entry's init seed, so a cached rerun's views come from it too)
        with failing_stage("featurize"):
            enc = _extras_encoder(entry, ds, cache_dir, settings, force)
            feats = load_run_features(entry, dataset_spec, settings, cache_dir, force, mmap=True, encoder=enc)
        timings["time_features"] = time.perf_counter() - t
        ref = None
        if reference is not None:
            t = time.perf_counter()
            # (with force, evaluate recomputed the reference's features first, in its own job)
            with failing_stage(f"features of its reference {reference.name!r}"):
                rf = load_run_features(reference, dataset_spec, settings, cache_dir, mmap=True)
            if len(rf.y_train) != len(feats.y_train) or not np.array_equal(rf.y_train, feats.y_train):
                raise RiskdecompError(f"model {name!r}: reference {reference.name!r} features are not on the same "
                                      "train split")
            ref = (rf.x_train, rf.y_train)
            timings["time_reference_features"] = time.perf_counter() - t
        elif self_ref:
            ref = (feats.x_train, feats.y_train)
        t = time.perf_counter()
        stage(name, "augmented views")
        with failing_stage("augmented views"):
            extras = _encoder_extras(enc, entry, ds, settings)
        if extras:
            timings["time_encoder_extras"] = time.perf_counter() - t
        record = evaluate_features(feats, ref, settings, out=out, timings=timings, **extras)
        record["row"] = {"model": name, "dataset": feats.dataset, **record["row"], **meta}
        timings["time_total"] = time.perf_counter() - t0
        rec = {"version": RECORD_VERSION, "run_key": key, "settings_key": settings.key(), "model": name,
               "dataset": feats.dataset, "riskdecomp_version": __version__, "protocol_version": PROTOCOL_VERSION,
               "metadata_fields": sorted(meta), "pretraining": pretraining, **facts, "row": jsonable(record["row"]),
               **({"active_protocol": ACTIVE_PROTOCOL} if settings.active else {}),
               "fewshot": jsonable(record["fewshot"]), "timings": jsonable(timings)}
        why = check_record(rec, name, dname)
        if why:  # never write a record that a rerun would reject
            raise RiskdecompError(f"model {name!r}: inconsistent result ({why})")
        text = json.dumps(rec, indent=1, sort_keys=True, allow_nan=False)
        atomic_write_text(rpath, text)
        return json.loads(text)  # exactly what a rerun reads back: fresh and reused runs give identical tables
    except Exception as exc:  # one model failing must not stop the others
        msg = one_line(exc)
        if not isinstance(exc, RiskdecompError):
            log.debug("model %s failed:\n%s", name, traceback.format_exc())
        if stage_of(exc):  # where it failed: "decomposition: held-out probe fit (fold 2 of 5): LinAlgError: ..."
            msg = f"{stage_of(exc)}: {msg}"
        # the traceback travels back as text (a worker's traceback object does not): `--debug` prints it
        return {"model": name, "dataset": dname, "error": msg, "error_type": type(exc).__name__,
                "traceback": traceback.format_exc()}


def _wants_encoder(entry, ds, settings: Settings) -> tuple[bool, bool]:
    """``(views, posterior)``: whether the job needs the encoder itself, not just its cached features, for
    augmented views and for a stochastic recipe's posterior variance (never for a ``features`` entry)."""
    stochastic = source_of(entry).stochastic(entry)
    want_views = settings.aug_views >= 2 and (settings.uncertainty or settings.statistics)
    return ds is not None and want_views, ds is not None and stochastic and settings.uncertainty


def _extras_encoder(entry, ds, cache_dir, settings: Settings, force: bool):
    """The job's encoder when :func:`_wants_encoder` says it needs one (else None: featurize builds it if the cache
    misses): featurize then encodes with it, so features and views come from one build."""
    if not any(_wants_encoder(entry, ds, settings)):
        return None
    from riskdecomp.features.encoders import build_encoder

    return build_encoder(entry, dataset=ds, cache_dir=cache_dir, device=settings.device, progress=False,
                         force=force)


def _encoder_extras(enc, entry, ds, settings: Settings) -> dict:
    """What needs the encoder ``enc`` itself: ``test_views`` (``settings.aug_views`` random views of every test
    image, :func:`features.augmented_views_split`) and, for a stochastic recipe, ``extra_scores`` with ``post_var``
    per test point. Empty when :func:`_wants_encoder` says neither."""
    want_views, want_posterior = _wants_encoder(entry, ds, settings)
    if not (want_views or want_posterior):
        return {}
    from riskdecomp.features.cache import (
        augmented_views_split,
        posterior_variance_split,
    )

    out: dict = {}
    if want_views:
        out["test_views"] = augmented_views_split(enc, ds.test, n_views=settings.aug_views, seed=settings.seed,
                                                  device=settings.device, batch_size=settings.batch_size,
                                                  num_workers=settings.num_workers)
    if want_posterior:
        pv = posterior_variance_split(enc, ds.test, device=settings.device, batch_size=settings.batch_size)
        if pv is not None:
            out["extra_scores"] = pd.DataFrame({"post_var": pv})
    return out


def evaluate_features(feats: Features, reference, settings: Settings, *, out: Optional[Path] = None,
                      timings: Optional[dict] = None, extra_scores: Optional[pd.DataFrame] = None,
                      test_views: Optional[np.ndarray] = None) -> dict:
    """All per-model estimators on features: decomposition + CIs, few-shot, statistics, per-sample uncertainty,
    active learning. Returns ``{"row": leaderboard fields, "fewshot": tidy rows}`` and writes per-sample / active
    tables under ``out`` when given. ``extra_scores``: more per-test-point uncertainty columns (e.g. ``post_var``
    of a stochastic encoder), in test order; ``test_views`` (T, n_test, d): augmented views of the test images, for
    the augmentation-consistency scores and the ``testaug_*`` statistics (alignment, NC1 of the views)."""
    from riskdecomp.estimators.decomposition import decompose
    from riskdecomp.estimators.fewshot import fewshot_errors

    timings = {} if timings is None else timings
    x_tr, y_tr, x_te, y_te = feats.x_train, feats.y_train, feats.x_test, feats.y_test
    t = time.perf_counter()
    stage(feats.model, f"decomposition ({settings.n_boot} bootstrap resamples)")
    with failing_stage("decomposition"):
        dec = decompose(x_tr, y_tr, x_te, y_te, reference=reference, seed=settings.seed, n_boot=settings.n_boot,
                        alternative=settings.alternative, device=settings.device, standardize=settings.standardize)
    timings["time_decomposition"] = time.perf_counter() - t
    # the decomposition reads memory-mapped cache files itself; the other estimators get in-memory float32 arrays
    feats = replace(feats, x_train=_float32(feats.x_train), x_test=_float32(feats.x_test))
    x_tr, x_te = feats.x_train, feats.x_test
    row = {"n_classes": int(len(np.unique(y_tr))), "n_features": int(x_tr.shape[1]), **dict(dec)}
    t = time.perf_counter()
    stage(feats.model, "few-shot")
    with failing_stage("few-shot"):
        summary, table = fewshot_errors(x_tr, y_tr, x_te, y_te, shots=settings.shots, fractions=settings.fractions,
                                        n_seeds=settings.fewshot_seeds, seed=settings.seed, device=settings.device,
                                        standardize=settings.standardize)
    timings["time_fewshot"] = time.perf_counter() - t
    row.update(summary)
    if settings.statistics:
        from riskdecomp.estimators.statistics import representation_statistics

        t = time.perf_counter()
        stage(feats.model, "statistics")
        with failing_stage("statistics"):
            row.update(representation_statistics(x_tr, y_tr, prefix="train_", seed=settings.seed))
            row.update(representation_statistics(x_te, y_te, prefix="test_", aug_views=test_views,
                                                 seed=settings.seed))
        timings["time_statistics"] = time.perf_counter() - t
    if out is not None and settings.uncertainty:
        t = time.perf_counter()
        stage(feats.model, "uncertainty")
        with failing_stage("uncertainty"):
            per_sample = per_sample_table(feats, dec, settings, extra_scores, test_views)
        write_csv(per_sample, result_path(out, "per_sample", feats.model, feats.dataset))
        timings["time_uncertainty"] = time.perf_counter() - t
    if out is not None and settings.active:
        timings["time_active"] = _active_curves(feats, settings, out)
    fewshot_rows = table.assign(model=feats.model, dataset=feats.dataset).to_dict(orient="records")
    return {"row": row, "fewshot": fewshot_rows}


def _active_curves(feats: Features, settings: Settings, out: Path) -> float:
    """Write the active-learning curves of ``feats`` to ``active/<model>@<dataset>.csv`` (the probe's C chosen as
    few-shot chooses it, with the same standardization and device: :func:`run_active_learning`); the seconds it
    took."""
    t = time.perf_counter()
    stage(feats.model, "active learning")
    with failing_stage("active learning"):
        curves = run_active_learning(feats.x_train, feats.y_train, feats.x_test, feats.y_test,
                                     seeds=settings.active_seeds, budget_per_class=settings.active_budget_per_class,
                                     seed=settings.seed, standardize=settings.standardize, device=settings.device)
    curves.insert(0, "model", feats.model)
    curves.insert(1, "dataset", feats.dataset)
    write_csv(curves, result_path(out, "active", feats.model, feats.dataset))
    return time.perf_counter() - t


def _float32(x: np.ndarray) -> np.ndarray:
    """``x`` as an in-memory float32 array (a memory map or another dtype is copied, anything else kept)."""
    return x if type(x) is np.ndarray and x.dtype == np.float32 else np.array(x, dtype=np.float32)


# ------------------------------------------------------------------------------------------------ the zoo
@dataclass
class EvaluationResult:
    """Everything :func:`evaluate` / :func:`build` wrote: the summary tables (built from all valid records of the
    folder's settings in ``out/runs``) and ``paths`` (table name -> file). ``records``: the runs behind the
    leaderboard; ``failures``: pairs whose latest attempt failed."""

    leaderboard: pd.DataFrame
    failures: pd.DataFrame
    out: Path
    records: list = field(default_factory=list)
    leaderboard_seeds: pd.DataFrame = field(default_factory=pd.DataFrame)  # per-seed rows (riskdecomp.zoo.seeds)
    fewshot: pd.DataFrame = field(default_factory=pd.DataFrame)
    uncertainty: pd.DataFrame = field(default_factory=pd.DataFrame)
    active_learning: pd.DataFrame = field(default_factory=pd.DataFrame)
    label_efficiency: pd.DataFrame = field(default_factory=pd.DataFrame)
    timings: pd.DataFrame = field(default_factory=pd.DataFrame)
    paths: dict = field(default_factory=dict)
    tracebacks: dict = field(default_factory=dict)  # (model, dataset) -> traceback text, for this run's failures

    @property
    def ok(self) -> bool:
        return self.failures.empty

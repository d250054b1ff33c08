"""Orchestration: which (model, dataset) jobs to run, in parallel or on dask, what to skip, where results go.

One job = one zoo entry on one dataset. It loads its entry itself, featurizes (cached), runs every estimator on
the features and writes one run record ``<out>/runs/<model>@<dataset>.json`` (atomically; file names come from
:func:`riskdecomp.names.result_path`, so no two (model, dataset) pairs share a file). A record is reused when it is
valid (:func:`check_record`: schema, model and dataset names, components that add up to ``agg_risk``) and its
``run_key`` matches: the entry (incl. :func:`riskdecomp.encoders.entry_identity`, i.e. the weights actually used),
its reference, the dataset fingerprint, the settings that change numbers, ``PROTOCOL_VERSION`` and the package
version. An invalid record is recomputed with a warning. Only small records travel back from workers.

An output folder holds the results of ONE set of settings (``runs/_folder.json``): a run with other settings into
it is refused (one line naming the differences) unless ``--force``, which recomputes everything and makes the new
settings the folder's. Every summary (``leaderboard.csv``, ``timings.csv``, ``fewshot.csv``, ``uncertainty.csv``,
``active_learning.csv``, ``label_efficiency.csv``, ``failures.csv``) is rebuilt by :func:`build` from ALL valid
records in ``runs/`` made with the folder's settings -- not only from this run's -- so a ``--models`` subset run adds
rows and never drops any, and a failing rerun (full disk, every model failing) leaves the good rows in place.
``riskdecomp build --results DIR`` runs the same :func:`build`. ``failures.csv`` lists the (model, dataset) pairs
whose latest attempt failed (a failed model keeps its earlier valid row, if any).

``leaderboard.csv``: one row per model x dataset, pooled over pretraining seeds (``leaderboard_seeds.csv``: one
row per pretraining seed, when the zoo has seeds: see :mod:`riskdecomp.seeds`); byte-identical for the same seed
and inputs on CPU. ``timings.csv``
holds wall-clock seconds per stage (kept out of the leaderboard so it stays reproducible).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from . import __version__
from .atomic import atomic_write_text, check_writable_dir, jsonable, write_csv
from .datasets import DEFAULT_DATASET
from .errors import OutputError, RiskdecompError, ZooError
from .features import Features, featurize
from .names import parse_stem, result_path, result_stem
from .progress import Progress, is_terminal, stage
from .schema import COMPONENTS, OUTCOMES, PER_SAMPLE_TARGETS, score_columns
from .sources import source_of
from .zoo import Zoo, load_zoo

log = logging.getLogger(__name__)
RECORD_VERSION = 2
# Bump when an estimator changes its numbers (decomposition, few-shot, statistics, uncertainty, active learning):
# records of an older protocol are then recomputed, and a results folder is not mixed across protocols.
PROTOCOL_VERSION = 2
SUM_TOL = 1e-9  # relative: agg_risk is computed as the sum of its components, so they agree to float rounding
FOLDER_STATE = "_folder.json"
FAILURES_STATE = "_failures.json"
STAGES_STATE = "_zoo_stages.json"


def _positive(v, name, zero_ok=False) -> None:
    ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool) and (v >= 0 if zero_ok else v >= 1)
    if not ok:
        raise RiskdecompError(f"{name} {v!r}: expected an integer >= {0 if zero_ok else 1}")


@dataclass
class Settings:
    """Everything that changes the numbers of a run (part of the run key), plus execution knobs (not in the key)."""

    seed: int = 0
    n_boot: int = 1000
    shots: tuple = (1, 3, 5, 10)
    fractions: tuple = (0.01, 0.1)
    fewshot_seeds: int = 5
    statistics: bool = True
    uncertainty: bool = True
    uncertainty_boot: int = 200
    # random views per test image (crop + flip) for the augmentation-consistency scores and testaug_* statistics;
    # costs aug_views extra forward passes over the test split per encoder (0 or 1: off)
    aug_views: int = 4
    n_ref: int = 5000
    active: bool = True
    active_seeds: int = 2
    active_budget_per_class: int = 20
    alternative: bool = False
    # Standardize features (mean/std of the probe's own fitting set) before every probe: encoders emit features on
    # wildly different scales (a random-init CNN's are ~1e-3), and a fixed C grid only means the same thing across
    # encoders on a common scale. The model class is unchanged (an affine map of the features).
    standardize: bool = True
    # Precision of the feature cache (features.FEATURE_DTYPES): float16 halves disk and memory; float32 is opt-in
    feature_dtype: str = "float16"
    # execution only (not part of the run key)
    device: str = "auto"
    batch_size: int = 256
    num_workers: object = "auto"
    progress: bool = True
    threads: Optional[int] = None  # torch/BLAS threads per job (None: cores / jobs)

    EXECUTION = ("device", "batch_size", "num_workers", "progress", "threads")
    ZOO_LEVEL = ("uncertainty_boot",)  # used only by the zoo-level summaries, not by a run: not in the run key

    def __post_init__(self):
        """Settings the estimators cannot honour are a one-line error, never coerced."""
        for name in ("seed", "n_boot", "uncertainty_boot", "aug_views"):
            _positive(getattr(self, name), f"settings.{name}", zero_ok=True)
        for name in ("fewshot_seeds", "n_ref", "active_seeds", "active_budget_per_class", "batch_size"):
            _positive(getattr(self, name), f"settings.{name}")
        if self.threads is not None:
            _positive(self.threads, "settings.threads")
        from .features import check_feature_dtype

        self.feature_dtype = check_feature_dtype(self.feature_dtype)
        self.shots, self.fractions = tuple(self.shots), tuple(self.fractions)
        for k in self.shots:
            _positive(k, "shots: k")
        for f in self.fractions:
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
                raise RiskdecompError(f"fractions: {f!r}: expected a fraction of the train split in (0, 1)")

    def key_dict(self) -> dict:
        """The settings that change any output (the folder's settings key)."""
        d = asdict(self)
        for k in self.EXECUTION:
            d.pop(k)
        d["shots"], d["fractions"] = list(self.shots), list(self.fractions)
        return d

    def run_key_dict(self) -> dict:
        """The settings that change a run record or its per-sample / active files."""
        d = self.key_dict()
        for k in self.ZOO_LEVEL:
            d.pop(k)
        return d

    def key(self) -> str:
        """The settings key of records and of a results folder: the settings that change a record, the protocol and
        the package version (results are never mixed across them). Zoo-level settings (``ZOO_LEVEL``) are not in
        it: changing them just rebuilds the summaries from the same records."""
        return _digest([PROTOCOL_VERSION, __version__, self.run_key_dict()])


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _file_digest(path) -> str:
    from .sources.base import file_sha256

    p = Path(path)
    return file_sha256(p) if p.is_file() else "missing"


def entry_key(entry, ds=None, cache_dir=None, settings: Optional[Settings] = None, force: bool = False) -> dict:
    """What of an entry changes its numbers: its fields (not ``metadata``, which only labels the row and is
    refreshed on reuse, nor where its files are) and its weights -- :func:`riskdecomp.encoders.entry_identity` (file hashes, the recipe
    checkpoint) or, for a ``features`` entry, the SHA-256 of its file."""
    from . import encoders

    src = source_of(entry)
    d = entry.model_dump(mode="json", exclude={"metadata", *src.files})  # files: by content, not location
    if not src.has_encoder:
        d.update({f"{f}_sha256": _file_digest(getattr(entry, f)) for f in src.files})
    else:
        kw = {"device": settings.device, "progress": settings.progress} if settings is not None else {}
        d["identity"] = encoders.entry_identity(entry, ds, cache_dir=cache_dir, force=force, **kw)
    return d


def run_key(entry, reference, ds, dataset_fingerprint: str, settings: Settings, cache_dir=None,
            force: bool = False) -> str:
    """The key a reusable record must carry (see the module docstring). With ``force``, a recipe entry's
    checkpoint is pretrained again before its identity is taken."""
    return _digest([RECORD_VERSION, PROTOCOL_VERSION, __version__, entry_key(entry, ds, cache_dir, settings, force),
                    entry_key(reference, ds, cache_dir, settings) if reference else None, dataset_fingerprint,
                    settings.run_key_dict()])


def dataset_name(entry, ds) -> str:
    """The dataset name of an entry's results: a ``features`` entry's ``dataset:`` (else its file's stem), else the
    loaded dataset's name."""
    return source_of(entry).dataset_name(entry) or ds.name


def _flatten_metadata(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        out[k] = "|".join(map(str, v)) if isinstance(v, (list, tuple)) else v
    return out


# ------------------------------------------------------------------------------------------------ records
def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_record(rec, model: str, dataset: str) -> Optional[str]:
    """Why ``rec`` is not a valid run record of (model, dataset), or None when it is: the schema, the names (a
    record copied from another model is not trusted), finite numbers, and components that add up to ``agg_risk``
    (``approx`` is absent without a reference). The sum is exact by construction, so the tolerance is float
    rounding (``SUM_TOL`` relative), far below any meaningful edit."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if rec.get("version") != RECORD_VERSION:
        return f"record version {rec.get('version')!r}, expected {RECORD_VERSION}"
    for k, typ in (("run_key", str), ("settings_key", str), ("model", str), ("dataset", str), ("row", dict),
                   ("fewshot", list), ("timings", dict)):
        if not isinstance(rec.get(k), typ):
            return f"field {k!r} missing or not a {typ.__name__}"
    row = rec["row"]
    for who, m, d in (("record", rec["model"], rec["dataset"]), ("row", row.get("model"), row.get("dataset"))):
        if (m, d) != (model, dataset):
            return f"{who} names model {m!r} on {d!r}, not {model!r} on {dataset!r}"
    if not _number(row.get("agg_risk")):
        return "agg_risk missing or not a finite number"
    parts = []
    for c in COMPONENTS:
        v = row.get(c)
        if v is None and c == "approx":
            continue
        if not _number(v):
            return f"component {c!r} missing or not a finite number"
        parts.append(v)
    total = math.fsum(parts)
    if abs(total - row["agg_risk"]) > SUM_TOL * max(1.0, abs(row["agg_risk"])):
        return f"components add up to {total:.6g}, not agg_risk {row['agg_risk']:.6g}"
    if any(not isinstance(r, dict) or (r.get("model"), r.get("dataset")) != (model, dataset) for r in rec["fewshot"]):
        return "few-shot rows of another model or dataset"
    return None


def read_record(path: Path, model: str, dataset: str) -> tuple:
    """(record, None) when ``path`` holds a valid record of (model, dataset), else (None, why) -- why is None when
    there is simply no file."""
    if not path.exists():
        return None, None
    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"unreadable ({type(exc).__name__})"
    why = check_record(rec, model, dataset)
    return (None, why) if why else (rec, None)


def read_records(out) -> tuple:
    """All valid run records in ``out/runs`` as {(model, dataset): record}, and [(path, why)] for invalid ones."""
    valid, invalid = {}, []
    for p in sorted((Path(out) / "runs").glob("*.json")):
        md = parse_stem(p.stem)
        if md is None:
            continue  # the folder's state files (_folder.json, ...)
        rec, why = read_record(p, *md)
        if rec is None:
            invalid.append((p, why))
        else:
            valid[md] = rec
    return valid, invalid


def _read_state(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}


def _write_state(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(jsonable(data), indent=1, sort_keys=True))


# ------------------------------------------------------------------------------------------------ one job
_DATASETS: dict = {}  # per process: a dataset is scanned once, however many jobs use it


def _dataset_for(entry, dataset_spec: str, seed: int):
    if entry is not None and not source_of(entry).needs_dataset:
        return None
    if (dataset_spec, seed) not in _DATASETS:
        from .datasets import load_dataset

        _DATASETS[(dataset_spec, seed)] = load_dataset(dataset_spec, seed=seed)
    return _DATASETS[(dataset_spec, seed)]


def _load(entry, dataset_spec, settings, cache_dir, force: bool = False, mmap: bool = False) -> Features:
    ds = _dataset_for(entry, dataset_spec, settings.seed)
    return featurize(entry, ds, cache_dir=cache_dir, device=settings.device, batch_size=settings.batch_size,
                     num_workers=settings.num_workers, progress=settings.progress, force=force,
                     dtype=settings.feature_dtype, mmap=mmap)


def run_job(zoo_source, name: str, dataset_spec: str, out: str, cache_dir: str, settings: Settings,
            force: bool = False) -> dict:
    """Run every estimator for one (model, dataset); write and return its record (or a failure record)."""
    from threadpoolctl import threadpool_limits

    args = (zoo_source, name, dataset_spec, out, cache_dir, settings, force)
    if settings.threads:
        with threadpool_limits(settings.threads):
            return _run_job(*args)
    return _run_job(*args)


def _outputs_present(out: Path, name: str, dname: str, settings: Settings) -> bool:
    return ((not settings.uncertainty or result_path(out, "per_sample", name, dname).is_file())
            and (not settings.active or result_path(out, "active", name, dname).is_file()))


def _run_job(zoo_source, name, dataset_spec, out, cache_dir, settings: Settings, force: bool) -> dict:
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
        zoo = load_zoo(zoo_source) if isinstance(zoo_source, (str, Path)) else zoo_source
        entry = zoo[name]
        reference = zoo[entry.reference] if entry.reference else None
        # the reference of other entries is its own reference: approx = its own train->train error, usability = 0
        self_ref = reference is None and any(zoo[n].reference == name for n in zoo.names)
        ds = _dataset_for(entry, dataset_spec, settings.seed)
        dname = dataset_name(entry, ds)
        rpath = result_path(out, "runs", name, dname)
        fingerprint = ds.fingerprint if ds is not None else "npz"
        stage(name, "weights (a recipe entry is pretrained once, then cached)")
        key = run_key(entry, entry if self_ref else reference, ds, fingerprint, settings, cache_dir, force)
        meta = jsonable(_flatten_metadata(entry.metadata))
        if not force:
            rec, why = read_record(rpath, name, dname)
            if why:
                log.warning("%s: invalid run record (%s): recomputing it", rpath, why)
            if rec is not None and rec["run_key"] == key and _outputs_present(out, name, dname, settings):
                old_meta = {k: v for k, v in rec["row"].items() if k in rec.get("metadata_fields", [])}
                if old_meta != meta:  # metadata only labels the row: refresh it, keep the numbers
                    rec["row"] = {**{k: v for k, v in rec["row"].items() if k not in old_meta}, **meta}
                    rec["metadata_fields"] = sorted(meta)
                    atomic_write_text(rpath, json.dumps(rec, indent=1, sort_keys=True, allow_nan=False))
                rec["skipped"] = True
                return rec
        torch.manual_seed(settings.seed)
        timings = {}
        stage(name, "featurize")
        t = time.perf_counter()
        feats = _load(entry, dataset_spec, settings, cache_dir, force, mmap=True)
        timings["time_features"] = time.perf_counter() - t
        ref = None
        if reference is not None:
            t = time.perf_counter()
            # (with force, evaluate recomputed the reference's features first, in its own job)
            rf = _load(reference, dataset_spec, settings, cache_dir, mmap=True)
            if len(rf.y_train) != len(feats.y_train) or not np.array_equal(rf.y_train, feats.y_train):
                raise RiskdecompError(f"model {name!r}: reference {reference.name!r} features are not on the same "
                                      "train split")
            ref = (rf.x_train, rf.y_train)
            timings["time_reference_features"] = time.perf_counter() - t
        elif self_ref:
            ref = (feats.x_train, feats.y_train)
        t = time.perf_counter()
        stage(name, "augmented views")
        extras = _encoder_extras(entry, ds, cache_dir, settings)
        if extras:
            timings["time_encoder_extras"] = time.perf_counter() - t
        record = evaluate_features(feats, ref, settings, out=out, timings=timings, **extras)
        record["row"] = {"model": name, "dataset": feats.dataset, **record["row"], **meta}
        timings["time_total"] = time.perf_counter() - t0
        rec = {"version": RECORD_VERSION, "run_key": key, "settings_key": settings.key(), "model": name,
               "dataset": feats.dataset, "riskdecomp_version": __version__, "protocol_version": PROTOCOL_VERSION,
               "metadata_fields": sorted(meta), "row": jsonable(record["row"]), "fewshot": jsonable(record["fewshot"]),
               "timings": jsonable(timings)}
        why = check_record(rec, name, dname)
        if why:  # never write a record that a rerun would reject
            raise RiskdecompError(f"model {name!r}: inconsistent result ({why})")
        text = json.dumps(rec, indent=1, sort_keys=True, allow_nan=False)
        atomic_write_text(rpath, text)
        return json.loads(text)  # exactly what a rerun reads back: fresh and reused runs give identical tables
    except Exception as exc:  # one model failing must not stop the others
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, RiskdecompError):
            msg = f"{type(exc).__name__}: {msg}"
            log.debug("model %s failed:\n%s", name, traceback.format_exc())
        return {"model": name, "dataset": dname, "error": msg, "error_type": type(exc).__name__}


def _encoder_extras(entry, ds, cache_dir, settings: Settings) -> dict:
    """What needs the encoder itself, not just its cached features: ``test_views`` (``settings.aug_views`` random
    views of every test image, :func:`features.augmented_views_split`) and, for a stochastic recipe,
    ``extra_scores`` with ``post_var`` per test point. Empty for ``features`` entries (no encoder)."""
    stochastic = source_of(entry).stochastic(entry)
    want_views = settings.aug_views >= 2 and (settings.uncertainty or settings.statistics)
    if ds is None or not ((stochastic and settings.uncertainty) or want_views):
        return {}
    from .encoders import build_encoder
    from .features import augmented_views_split, posterior_variance_split

    enc = build_encoder(entry, dataset=ds, cache_dir=cache_dir, device=settings.device, progress=False)
    out: dict = {}
    if want_views:
        out["test_views"] = augmented_views_split(enc, ds.test, n_views=settings.aug_views, seed=settings.seed,
                                                  device=settings.device, batch_size=settings.batch_size,
                                                  num_workers=settings.num_workers)
    if stochastic and settings.uncertainty:
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
    from .decomposition import decompose
    from .fewshot import fewshot_errors

    timings = {} if timings is None else timings
    x_tr, y_tr, x_te, y_te = feats.x_train, feats.y_train, feats.x_test, feats.y_test
    t = time.perf_counter()
    stage(feats.model, f"decomposition ({settings.n_boot} bootstrap resamples)")
    dec = decompose(x_tr, y_tr, x_te, y_te, reference=reference, seed=settings.seed, n_boot=settings.n_boot,
                    alternative=settings.alternative, device=settings.device, standardize=settings.standardize)
    timings["time_decomposition"] = time.perf_counter() - t
    # the decomposition reads memory-mapped cache files itself; the other estimators get in-memory float32 arrays
    feats = replace(feats, x_train=_float32(feats.x_train), x_test=_float32(feats.x_test))
    x_tr, x_te = feats.x_train, feats.x_test
    row = {"n_classes": int(len(np.unique(y_tr))), **dict(dec)}
    t = time.perf_counter()
    stage(feats.model, "few-shot")
    summary, table = fewshot_errors(x_tr, y_tr, x_te, y_te, shots=settings.shots, fractions=settings.fractions,
                                    n_seeds=settings.fewshot_seeds, seed=settings.seed, device=settings.device,
                                    standardize=settings.standardize)
    timings["time_fewshot"] = time.perf_counter() - t
    row.update(summary)
    if settings.statistics:
        from .statistics import representation_statistics

        t = time.perf_counter()
        stage(feats.model, "statistics")
        row.update(representation_statistics(x_tr, y_tr, prefix="train_", seed=settings.seed))
        row.update(representation_statistics(x_te, y_te, prefix="test_", aug_views=test_views, seed=settings.seed))
        timings["time_statistics"] = time.perf_counter() - t
    if out is not None and settings.uncertainty:
        t = time.perf_counter()
        stage(feats.model, "uncertainty")
        per_sample = per_sample_table(feats, dec, settings, extra_scores, test_views)
        write_csv(per_sample, result_path(out, "per_sample", feats.model, feats.dataset))
        timings["time_uncertainty"] = time.perf_counter() - t
    if out is not None and settings.active:
        from .active import run_active_learning

        t = time.perf_counter()
        stage(feats.model, "active learning")
        curves = run_active_learning(x_tr, y_tr, x_te, y_te, seeds=settings.active_seeds,
                                     budget_per_class=settings.active_budget_per_class, seed=settings.seed)
        curves.insert(0, "model", feats.model)
        curves.insert(1, "dataset", feats.dataset)
        write_csv(curves, result_path(out, "active", feats.model, feats.dataset))
        timings["time_active"] = time.perf_counter() - t
    fewshot_rows = table.assign(model=feats.model, dataset=feats.dataset).to_dict(orient="records")
    return {"row": row, "fewshot": fewshot_rows}


def _float32(x: np.ndarray) -> np.ndarray:
    """``x`` as an in-memory float32 array (a memory map or another dtype is copied, anything else kept)."""
    return x if type(x) is np.ndarray and x.dtype == np.float32 else np.array(x, dtype=np.float32)


def reference_indices(n_train: int, settings: Settings) -> np.ndarray:
    from .uncertainty import reference_indices as ri

    return ri(n_train, n_ref=settings.n_ref, seed=settings.seed)


def per_sample_table(feats: Features, dec, settings: Settings, extra_scores: Optional[pd.DataFrame] = None,
                     test_views: Optional[np.ndarray] = None) -> pd.DataFrame:
    """Per test point: label, prediction, targets (err01, loss, brier_ovo) and single-encoder scores (with
    ``test_views``: ``aug_nc_<k>`` and ``aug_disp``, neighbours among the same reference set as the k-NN scores)."""
    from . import uncertainty as U
    from .reliability import targets

    proba = np.asarray(dec.test_pred_proba)
    xs_tr, xs_te = feats.x_train, feats.x_test
    if settings.standardize:  # the one-vs-one Brier probes see the features the way the main probe does
        mu, sd = xs_tr.mean(0), xs_tr.std(0) + 1e-12
        xs_tr, xs_te = (xs_tr - mu) / sd, (xs_te - mu) / sd
    tg = targets(feats.y_test, proba, xs_tr, feats.y_train, xs_te)
    ref = reference_indices(len(feats.y_train), settings)
    scores = U.label_free_scores(feats.x_test, feats.x_train, ref_idx=ref)
    probe = U.probe_scores(proba)
    probe = probe if isinstance(probe, pd.DataFrame) else pd.DataFrame(probe)
    parts = [pd.DataFrame({"index": np.arange(len(feats.y_test)), "y": feats.y_test}),
             tg.reset_index(drop=True), scores.reset_index(drop=True)]
    if test_views is not None:
        k = min(100, len(ref) - 1)
        aug = U.augmentation_consistency(test_views, feats.x_train[ref], k=k)
        parts.append(aug.reset_index(drop=True))
    if extra_scores is not None:
        if len(extra_scores) != len(feats.y_test):
            raise RiskdecompError(f"model {feats.model!r}: {len(extra_scores)} extra scores for "
                                  f"{len(feats.y_test)} test points")
        parts.append(extra_scores.reset_index(drop=True))
    df = pd.concat(parts + [probe.reset_index(drop=True)], axis=1)
    return df


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
    leaderboard_seeds: pd.DataFrame = field(default_factory=pd.DataFrame)  # per-seed rows (riskdecomp.seeds)
    fewshot: pd.DataFrame = field(default_factory=pd.DataFrame)
    uncertainty: pd.DataFrame = field(default_factory=pd.DataFrame)
    active_learning: pd.DataFrame = field(default_factory=pd.DataFrame)
    label_efficiency: pd.DataFrame = field(default_factory=pd.DataFrame)
    timings: pd.DataFrame = field(default_factory=pd.DataFrame)
    paths: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failures.empty


DASK_TIMEOUT_S = 5


def _dask_client(scheduler: Optional[str], jobs: int):
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


def _parallel_map(fn, args: list, jobs: int, client=None, on_result=None) -> list:
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


def evaluate(zoo, dataset: str = DEFAULT_DATASET, out="results", *, models: Optional[Sequence[str]] = None,
             cache_dir=None, settings: Optional[Settings] = None, jobs: Optional[int] = 1, backend: str = "loky",
             scheduler: Optional[str] = None, force: bool = False) -> EvaluationResult:
    """Evaluate every zoo entry (or ``models`` and, transitively, their references) on ``dataset``; write all
    outputs to ``out`` and return every summary table (:class:`EvaluationResult`).

    Before any compute: ``out`` and the cache must be writable folders (not a filesystem root or a home folder),
    every result file name valid, and ``out`` must not hold results of other settings (unless ``force``: then
    everything is recomputed -- records, features, recipe checkpoints -- and the new settings become the folder's).
    ``jobs=None`` (auto): one process per CPU core (at most one per model) on CPU, a single process on a GPU; more
    jobs than models are capped (with a warning). Each job then uses ``settings.threads`` threads (default: cores /
    jobs). Results are byte-identical for the same seed, inputs and thread count, whatever the number of jobs or the
    backend.
    """
    import os
    from dataclasses import replace

    from .device import resolve_device
    from .encoders import default_cache_dir

    settings = settings or Settings()
    if backend not in ("loky", "dask"):
        raise RiskdecompError(f"backend {backend!r}: expected 'loky' or 'dask'")
    if jobs is not None:
        _positive(jobs, "--jobs")
    full = load_zoo(zoo) if isinstance(zoo, (str, Path)) else zoo
    names = with_references(full, models)
    out = check_writable_dir(out, "--out")
    cache_dir = check_writable_dir(Path(cache_dir) if cache_dir else default_cache_dir(), "--cache-dir")
    ds = None
    if any(source_of(full[n]).needs_dataset for n in names):
        ds = _dataset_for(None, dataset, settings.seed)  # a bad dataset is one error up front, not one per model
    for n in names:  # every output file name is valid before any compute
        try:
            result_stem(n, dataset_name(full[n], ds))
        except RiskdecompError as exc:
            hint = ("set the entry's dataset: field" if source_of(full[n]).dataset_name(full[n]) else
                    "the dataset's name comes from its folder: rename it or link it under a valid name")
            raise RiskdecompError(f"{exc} ({hint})") from None
    folder_path = out / "runs" / FOLDER_STATE
    folder = _read_state(folder_path)
    if folder.get("settings_key") not in (None, settings.key()) and not force:
        raise RiskdecompError(f"--out {out}: holds results made with other settings "
                              f"({_settings_diff(folder.get('settings', {}), _folder_settings(settings))}); "
                              f"use another --out, or --force to recompute with the new settings")
    order = list(full.names) + [n for n in folder.get("order", []) if n not in full.names]
    _write_state(folder_path, {"settings_key": settings.key(), "settings": _folder_settings(settings),
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
    zoo_source = str(full.path) if full.path is not None else full
    show = settings.progress
    # the per-stage bars (pretraining epochs, featurize img/s) only in this process and on a terminal: a worker
    # cannot draw on the parent's terminal, and a log file gets one line per finished model instead
    settings = replace(settings, progress=show and jobs == 1 and not use_dask and is_terminal(sys.stderr))
    client = _dask_client(scheduler, jobs) if use_dask else None
    try:
        # with force, references are recomputed first, once, and then read by the models that need them
        refs = {full[n].reference for n in names if full[n].reference}
        waves = [[n for n in names if n in refs], [n for n in names if n not in refs]] if force else [names]
        records = []
        with Progress([n for wave in waves for n in wave], enabled=show) as bar:
            for wave in waves:
                args = [(zoo_source, n, dataset, str(out), str(cache_dir), settings, force) for n in wave]
                records += _parallel_map(run_job, args, jobs, client, on_result=bar.finished) if args else []
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
    redo = True
    if settings.uncertainty:
        # zoo-level stages are redone only when some record changed (a rerun of finished work stays fast)
        valid, _ = read_records(out)
        current = sorted((m, d, r["run_key"]) for (m, d), r in valid.items() if r["settings_key"] == settings.key())
        zoo_key = _digest([current, settings.key_dict()])
        stages_path = out / "runs" / STAGES_STATE
        stages = _read_state(stages_path)
        redo = stages.get("uncertainty") != zoo_key or not (out / "uncertainty.csv").exists()
        if redo:
            ens_records = [valid[(m, d)] for m, d, _ in current if m in full.names]
            zoo_ensembles(full, ens_records, dataset, out, cache_dir, settings)
    res = build(out, settings=settings, computed=computed, redo_uncertainty=redo, jobs=1 if use_dask else jobs)
    if settings.uncertainty and redo:
        _write_state(stages_path, {**stages, "uncertainty": zoo_key})
    return res


def _update_failures(out: Path, ok: list, failed: list, settings: Settings) -> None:
    """``runs/_failures.json``: the (model, dataset) pairs whose latest attempt failed (cleared when one succeeds)."""
    path = out / "runs" / FAILURES_STATE
    state = _read_state(path)
    for r in ok:
        state.pop(f"{r['model']}|{r['dataset']}", None)
    for r in failed:
        state[f"{r['model']}|{r['dataset']}"] = {**{k: r[k] for k in ("model", "dataset", "error_type", "error")},
                                                 "settings_key": settings.key()}
    if state or path.exists():
        _write_state(path, state)


def build(results, *, settings: Optional[Settings] = None, computed=(), redo_uncertainty: bool = True,
          jobs: int = 1) -> EvaluationResult:
    """Rebuild every summary CSV of a results folder from its run records (``riskdecomp build --results DIR``;
    :func:`evaluate` ends with it). Uses the valid records of the folder's settings (``settings``, default: those
    in ``runs/_folder.json``); invalid records and records of other settings are left out with a warning. A summary
    that has no rows (e.g. ``uncertainty.csv`` with uncertainty off) is removed, so no file of other settings stays
    beside the others. ``computed``: (model, dataset) pairs computed by the calling run (``timings.csv``'s
    ``reused`` column). ``redo_uncertainty=False`` keeps an existing ``uncertainty.csv``. ``jobs``: processes for the uncertainty metrics."""
    out = Path(results)
    runs = out / "runs"
    if not runs.is_dir():
        raise RiskdecompError(f"--results {out}: no runs/ folder (not an output folder of riskdecomp evaluate)")
    folder = _read_state(runs / FOLDER_STATE)
    key = settings.key() if settings is not None else folder.get("settings_key")
    if settings is None:
        known = {k: v for k, v in folder.get("settings", {}).items() if k in Settings.__dataclass_fields__}
        if "settings_key" not in folder:
            raise RiskdecompError(f"--results {out}: runs/{FOLDER_STATE} is missing or unreadable; rerun evaluate")
        try:
            settings = Settings(**known)
        except (TypeError, RiskdecompError) as exc:
            raise RiskdecompError(f"--results {out}: runs/{FOLDER_STATE}: invalid settings ({exc})") from None
    valid, invalid = read_records(out)
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
    from .seeds import aggregate_seeds

    board, per_seed = aggregate_seeds(build_leaderboard(recs))  # one row per model, pooled over pretraining seeds
    res = EvaluationResult(board, pd.DataFrame(), out, recs)
    tables = {
        "leaderboard": (res.leaderboard, True),
        "leaderboard_seeds": (per_seed, False),  # None (removed) without seeds
        "timings": (pd.DataFrame([{"model": r["model"], "dataset": r["dataset"], **r.get("timings", {}),
                                   "reused": r["skipped"]} for r in recs]), False),
        "fewshot": (pd.DataFrame([row for r in recs for row in r.get("fewshot", [])]), False),
        "failures": (pd.DataFrame([{k: f[k] for k in ("model", "dataset", "error_type", "error")}
                                   for f in _read_state(runs / FAILURES_STATE).values()
                                   if isinstance(f, dict) and f.get("settings_key") == key],
                                  columns=["model", "dataset", "error_type", "error"]), False),
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


def build_leaderboard(records: list) -> pd.DataFrame:
    if not records:
        return pd.DataFrame(columns=["model", "dataset", *OUTCOMES])
    df = pd.DataFrame([r["row"] for r in records])
    first = ["model", "dataset", "n_train", "n_test", "n_classes", "n_sub", *OUTCOMES, "approx_merged"]

    def group(c: str) -> int:
        if c in first:
            return first.index(c) - 100
        if c.startswith("err_"):
            return 0
        if c.endswith(("_lo", "_hi")):
            return 1
        if c.endswith("_clipped"):
            return 2
        if c.startswith("fewshot_"):
            return 3
        if c.startswith(("C_", "n_")):
            return 4
        if c.startswith(("train", "test")):
            return 5
        return 6  # zoo metadata

    cols = sorted(df.columns, key=lambda c: (group(c), c if group(c) >= 0 else ""))
    return df[cols]


def zoo_ensembles(zoo: Zoo, records: list, dataset: str, out: Path, cache_dir: Path, settings: Settings) -> None:
    """Ensemble scores across the zoo's self-supervised encoders (same reference set) per dataset, written into
    every member's per-sample file (``ens_*`` columns; stale ones dropped). Features come from the cache; records
    whose features cannot be loaded with this run's dataset are left as they are."""
    from .uncertainty import ensemble_scores

    per_ds: dict = {}
    for r in records:
        per_ds.setdefault(r["dataset"], []).append(r["model"])
    for ds_name, names in per_ds.items():
        feats, members = {}, []
        for n in names:
            entry = zoo[n]
            try:
                f = _load(entry, dataset, settings, cache_dir)
            except RiskdecompError:
                continue
            if f.dataset != ds_name:
                continue  # a record of another dataset: its ensemble was made by the run on that dataset
            members.append(n)
            if entry.metadata.get("objective") not in ("supervised", "init"):  # the ensemble of the SSL encoders
                feats[n] = (f.x_test, f.x_train)
        ens = None
        if len(feats) >= 2:
            n_train = len(next(iter(feats.values()))[1])
            with warnings.catch_warnings():  # members of different widths: ens_var is NaN by design
                warnings.filterwarnings("ignore", message="ens_var skipped")
                ens = ensemble_scores(feats, reference_indices(n_train, settings), k=min(100, max(1, n_train // 10)))
        for n in members:
            path = result_path(out, "per_sample", n, ds_name)
            if not path.exists():
                continue
            ps = pd.read_csv(path)
            ps = ps.drop(columns=[c for c in ps.columns if c.startswith("ens_")])
            if ens is not None:
                for c in ens.columns:
                    ps[c] = ens[c].to_numpy()
            write_csv(ps, path)


def _record_uncertainty(path: str, model: str, dataset: str, n_boot: int, seed: int) -> Optional[pd.DataFrame]:
    """One record's score metrics (``reliability.evaluate_scores``) from its per-sample file."""
    from .reliability import evaluate_scores

    ps = pd.read_csv(path)
    target_cols = [c for c in PER_SAMPLE_TARGETS if c in ps.columns]
    score_cols = score_columns(ps.columns)
    res = evaluate_scores(ps[score_cols], ps[target_cols], n_boot=n_boot, seed=seed)
    res.insert(0, "model", model)
    res.insert(1, "dataset", dataset)
    return res


def zoo_uncertainty_metrics(records: list, out: Path, settings: Settings, jobs: int = 1) -> pd.DataFrame:
    """Every per-sample score's metrics (``reliability.evaluate_scores``) per (model, dataset) record, ``jobs``
    records at a time (the result does not depend on ``jobs``)."""
    args = [(str(p), r["model"], r["dataset"], settings.uncertainty_boot, settings.seed) for r in records
            if (p := result_path(out, "per_sample", r["model"], r["dataset"])).exists()]
    frames = _parallel_map(_record_uncertainty, args, max(1, min(jobs, len(args))))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def zoo_active(records: list, out: Path) -> tuple:
    """All active-learning curves and label efficiencies of the records (from ``active/<stem>.csv``)."""
    from .active import label_efficiency

    curves, effs = [], []
    for r in records:
        p = result_path(out, "active", r["model"], r["dataset"])
        if not p.exists():
            continue
        c = pd.read_csv(p)
        curves.append(c)
        err = r["row"].get("err_test")
        full = (100.0 - float(err)) / 100.0 if err is not None else None  # curves hold accuracy fractions
        le = label_efficiency(c.drop(columns=["model", "dataset"]), full_accuracy=full)
        le.insert(0, "model", r["model"])
        le.insert(1, "dataset", r["dataset"])
        effs.append(le)
    cat = (lambda fs: pd.concat(fs, ignore_index=True) if fs else pd.DataFrame())
    return cat(curves), cat(effs)

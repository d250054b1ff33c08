"""Orchestration: which (model, dataset) jobs to run, in parallel or on dask, what to skip, where results go.

One job = one zoo entry on one dataset. It loads its entry itself, featurizes (cached), runs every estimator on
the features and writes one run record ``<out>/runs/<model>__<dataset>.json`` (atomically). A record whose
``run_key`` matches the current settings is reused, so a rerun (or a rerun after a crash) only does the missing
work. Zoo-level outputs (the leaderboard, ensemble uncertainty, active learning tables) are rebuilt from the
records and the feature cache. Only small records travel back from workers.

Outputs in ``out``: ``leaderboard.csv`` (one row per model x dataset, pooled over pretraining seeds; byte-identical
for the same seed and inputs on CPU), ``leaderboard_seeds.csv`` (one row per pretraining seed, when the zoo has
seeds: see :mod:`riskdecomp.seeds`), ``timings.csv`` (wall-clock seconds per stage: kept out of the leaderboard so
it stays reproducible),
``fewshot.csv``, ``uncertainty.csv``, ``per_sample/``, ``active_learning.csv``, ``label_efficiency.csv``,
``failures.csv`` (when a model failed: the others still complete and the exit status is non-zero).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .errors import RiskdecompError
from .atomic import jsonable
from .datasets import DEFAULT_DATASET
from .features import Features, atomic_write_text, featurize
from .zoo import FeaturesEntry, Zoo, load_zoo

log = logging.getLogger(__name__)
RECORD_VERSION = 1
COMPONENTS = ("approx", "usability", "probe_gen", "enc_gen", "agg_risk")


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
    # execution only (not part of the run key)
    device: str = "auto"
    batch_size: int = 256
    num_workers: object = "auto"
    progress: bool = True
    threads: Optional[int] = None  # torch/BLAS threads per job (None: cores / jobs)

    def key_dict(self) -> dict:
        d = asdict(self)
        for k in ("device", "batch_size", "num_workers", "progress", "threads"):
            d.pop(k)
        d["shots"], d["fractions"] = list(self.shots), list(self.fractions)
        return d


def _file_digest(path) -> str:
    from .encoders import file_sha256

    p = Path(path)
    return file_sha256(p) if p.is_file() else "missing"


def entry_key(entry) -> dict:
    d = entry.model_dump(mode="json")
    for fld in ("weights", "path"):
        if getattr(entry, fld, None) is not None:
            d[fld + "_sha256"] = _file_digest(getattr(entry, fld))
    return d


def run_key(entry, reference, dataset_fingerprint: str, settings: Settings) -> str:
    blob = json.dumps([RECORD_VERSION, entry_key(entry), entry_key(reference) if reference else None,
                       dataset_fingerprint, settings.key_dict()], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def record_path(out: Path, model: str, dataset: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset)
    return Path(out) / "runs" / f"{model}__{safe}.json"


def _flatten_metadata(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        out[k] = "|".join(map(str, v)) if isinstance(v, (list, tuple)) else v
    return out


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Atomic CSV write with fixed float formatting (reproducible bytes)."""
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.10g", lineterminator="\n")
    atomic_write_text(Path(path), buf.getvalue())


# ------------------------------------------------------------------------------------------------ one job
_DATASETS: dict = {}  # per process: a dataset is scanned once, however many jobs use it


def _dataset_for(entry, dataset_spec: str, seed: int, cache: Optional[dict] = None):
    if isinstance(entry, FeaturesEntry):
        return None
    if (dataset_spec, seed) not in _DATASETS:
        from .datasets import load_dataset

        _DATASETS[(dataset_spec, seed)] = load_dataset(dataset_spec, seed=seed)
    return _DATASETS[(dataset_spec, seed)]


def _load(entry, dataset_spec, settings, cache_dir, ds_cache) -> Features:
    ds = _dataset_for(entry, dataset_spec, settings.seed, ds_cache)
    return featurize(entry, ds, cache_dir=cache_dir, device=settings.device, batch_size=settings.batch_size,
                     num_workers=settings.num_workers, progress=settings.progress)


def run_job(zoo_source, name: str, dataset_spec: str, out: str, cache_dir: str, settings: Settings,
            force: bool = False) -> dict:
    """Run every estimator for one (model, dataset); write and return its record (or a failure record)."""
    from threadpoolctl import threadpool_limits

    if settings.threads:
        with threadpool_limits(settings.threads):
            return _run_job(zoo_source, name, dataset_spec, out, cache_dir, settings, force)
    return _run_job(zoo_source, name, dataset_spec, out, cache_dir, settings, force)


def _run_job(zoo_source, name, dataset_spec, out, cache_dir, settings: Settings, force: bool) -> dict:
    import os

    import torch

    level = os.environ.get("RISKDECOMP_LOG_LEVEL")
    if level and not logging.getLogger().handlers:  # a worker process: log like the command that started it
        logging.basicConfig(level=int(level), format="%(levelname)s %(name)s: %(message)s")

    if settings.threads:
        torch.set_num_threads(settings.threads)
    t0 = time.perf_counter()
    ds_cache: dict = {}
    try:
        zoo = load_zoo(zoo_source) if isinstance(zoo_source, (str, Path)) else zoo_source
        entry = zoo[name]
        reference = zoo[entry.reference] if entry.reference else None
        ds = _dataset_for(entry, dataset_spec, settings.seed, ds_cache)
        fingerprint = ds.fingerprint if ds is not None else "npz"
        key = run_key(entry, reference, fingerprint, settings)
        dataset_name = ds.name if ds is not None else (entry.dataset or Path(entry.path).stem)
        rpath = record_path(Path(out), name, dataset_name)
        if not force and rpath.exists():
            try:
                rec = json.loads(rpath.read_text())
                if rec.get("run_key") == key:
                    rec["skipped"] = True
                    return rec
            except (OSError, json.JSONDecodeError):
                pass  # a damaged record is simply recomputed
        torch.manual_seed(settings.seed)
        timings = {}
        t = time.perf_counter()
        feats = _load(entry, dataset_spec, settings, cache_dir, ds_cache)
        timings["time_features"] = time.perf_counter() - t
        ref = None
        if reference is not None:
            t = time.perf_counter()
            rf = _load(reference, dataset_spec, settings, cache_dir, ds_cache)
            if len(rf.y_train) != len(feats.y_train) or not np.array_equal(rf.y_train, feats.y_train):
                raise RiskdecompError(f"model {name!r}: reference {reference.name!r} features are not on the same "
                                      "train split")
            ref = (rf.x_train, rf.y_train)
            timings["time_reference_features"] = time.perf_counter() - t
        t = time.perf_counter()
        extras = _encoder_extras(entry, ds, cache_dir, settings)
        if extras:
            timings["time_encoder_extras"] = time.perf_counter() - t
        record = evaluate_features(feats, ref, settings, out=Path(out), timings=timings, **extras)
        record["row"] = {"model": name, "dataset": feats.dataset, **record["row"],
                         **_flatten_metadata(entry.metadata)}
        timings["time_total"] = time.perf_counter() - t0
        rec = {"version": RECORD_VERSION, "run_key": key, "model": name, "dataset": feats.dataset,
               "row": jsonable(record["row"]), "fewshot": jsonable(record["fewshot"]),
               "timings": jsonable(timings)}
        text = json.dumps(rec, indent=1, sort_keys=True, allow_nan=False)
        atomic_write_text(rpath, text)
        return json.loads(text)  # exactly what a rerun reads back: fresh and reused runs give identical tables
    except Exception as exc:  # one model failing must not stop the others
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, RiskdecompError):
            msg = f"{type(exc).__name__}: {msg}"
            log.debug("model %s failed:\n%s", name, traceback.format_exc())
        return {"model": name, "dataset": dataset_spec, "error": msg, "error_type": type(exc).__name__}


def _encoder_extras(entry, ds, cache_dir, settings: Settings) -> dict:
    """What needs the encoder itself, not just its cached features: ``test_views`` (``settings.aug_views`` random
    views of every test image, :func:`features.augmented_views_split`) and, for a stochastic recipe,
    ``extra_scores`` with ``post_var`` per test point. Empty for ``features`` entries (no encoder)."""
    from .zoo import RecipeEntry

    stochastic = isinstance(entry, RecipeEntry) and entry.recipe.objective == "stochastic"
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
    dec = decompose(x_tr, y_tr, x_te, y_te, reference=reference, seed=settings.seed, n_boot=settings.n_boot,
                    alternative=settings.alternative, device=settings.device, standardize=settings.standardize)
    timings["time_decomposition"] = time.perf_counter() - t
    row = {"n_classes": int(len(np.unique(y_tr))), **dict(dec)}
    t = time.perf_counter()
    summary, table = fewshot_errors(x_tr, y_tr, x_te, y_te, shots=settings.shots, fractions=settings.fractions,
                                    n_seeds=settings.fewshot_seeds, seed=settings.seed, device=settings.device,
                                    standardize=settings.standardize)
    timings["time_fewshot"] = time.perf_counter() - t
    row.update(summary)
    if settings.statistics:
        from .statistics import representation_statistics

        t = time.perf_counter()
        row.update(representation_statistics(x_tr, y_tr, prefix="train_", seed=settings.seed))
        row.update(representation_statistics(x_te, y_te, prefix="test_", aug_views=test_views, seed=settings.seed))
        timings["time_statistics"] = time.perf_counter() - t
    if out is not None and settings.uncertainty:
        t = time.perf_counter()
        per_sample = per_sample_table(feats, dec, settings, extra_scores, test_views)
        write_csv(per_sample, per_sample_path(out, feats.model, feats.dataset))
        timings["time_uncertainty"] = time.perf_counter() - t
    if out is not None and settings.active:
        from .active import run_active_learning

        t = time.perf_counter()
        curves = run_active_learning(x_tr, y_tr, x_te, y_te, seeds=settings.active_seeds,
                                     budget_per_class=settings.active_budget_per_class, seed=settings.seed)
        curves.insert(0, "model", feats.model)
        curves.insert(1, "dataset", feats.dataset)
        write_csv(curves, Path(out) / "active" / f"{feats.model}__{feats.dataset}.csv")
        timings["time_active"] = time.perf_counter() - t
    fewshot_rows = table.assign(model=feats.model, dataset=feats.dataset).to_dict(orient="records")
    return {"row": row, "fewshot": fewshot_rows}


def per_sample_path(out: Path, model: str, dataset: str) -> Path:
    return Path(out) / "per_sample" / f"{model}__{dataset}.csv"


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
    leaderboard: pd.DataFrame
    failures: pd.DataFrame
    out: Path
    records: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failures.empty


def _parallel_map(fn, args: list, jobs: int, backend: str, scheduler: Optional[str]):
    if jobs == 1 and backend != "dask" and scheduler is None:
        return [fn(*a) for a in args]
    from joblib import Parallel, delayed, parallel_config

    if backend == "dask" or scheduler:
        try:
            from dask.distributed import Client
        except ImportError:
            raise RiskdecompError("the dask backend needs the optional extra: pip install 'riskdecomp[dask]'") from None
        client = Client(scheduler) if scheduler else Client(processes=True, n_workers=max(jobs, 1), threads_per_worker=1)
        try:
            with parallel_config(backend="dask"):
                return Parallel(n_jobs=-1)(delayed(fn)(*a) for a in args)
        finally:
            client.close()
    return Parallel(n_jobs=jobs, backend="loky")(delayed(fn)(*a) for a in args)


def evaluate(zoo, dataset: str = DEFAULT_DATASET, out="results", *, models: Optional[Sequence[str]] = None,
             cache_dir=None, settings: Optional[Settings] = None, jobs: Optional[int] = 1, backend: str = "loky",
             scheduler: Optional[str] = None, force: bool = False) -> EvaluationResult:
    """Evaluate every zoo entry (or ``models`` and their references) on ``dataset``; write all outputs to ``out``.

    ``jobs=None`` (auto): one process per CPU core (at most one per model) on CPU, a single process on a GPU.
    Each job then uses ``settings.threads`` threads (default: cores / jobs). Results are byte-identical for the same
    seed, inputs and thread count, whatever the number of jobs or the backend.
    """
    import os
    from dataclasses import replace

    from .encoders import default_cache_dir, resolve_device

    settings = settings or Settings()
    zoo = load_zoo(zoo) if isinstance(zoo, (str, Path)) else zoo
    zoo = zoo.select(models) if models else zoo
    out = Path(out)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    zoo_source = str(zoo.path) if zoo.path is not None and not models else zoo
    if any(not isinstance(e, FeaturesEntry) for e in zoo):
        _dataset_for(None, dataset, settings.seed)  # a bad dataset is one error up front, not one per model
    # references first: their features are needed by the models that name them
    refs = {e.reference for e in zoo if e.reference}
    names = [e.name for e in zoo if e.name in refs] + [e.name for e in zoo if e.name not in refs]
    cores = os.cpu_count() or 1
    if jobs is None:
        jobs = 1 if resolve_device(settings.device) != "cpu" else max(1, min(cores, len(names)))
    if settings.threads is None:
        settings = replace(settings, threads=1 if (backend == "dask" or scheduler) else max(1, cores // jobs))
    args = [(zoo_source, n, dataset, str(out), str(cache_dir), settings, force) for n in names]
    records = _parallel_map(run_job, args, jobs, backend, scheduler)
    ok = [r for r in records if "error" not in r]
    failed = [r for r in records if "error" in r]
    order = {n: i for i, n in enumerate(zoo.names)}
    ok.sort(key=lambda r: order[r["model"]])
    out.mkdir(parents=True, exist_ok=True)
    from .seeds import aggregate_seeds

    board, per_seed = aggregate_seeds(build_leaderboard(ok))  # one row per model, pooled over pretraining seeds
    write_csv(board, out / "leaderboard.csv")
    if per_seed is not None:
        write_csv(per_seed, out / "leaderboard_seeds.csv")
    else:
        (out / "leaderboard_seeds.csv").unlink(missing_ok=True)
    for r in ok:  # a few-shot setting the data cannot support is skipped, not fatal: say so, one line each
        for key, why in sorted(r["row"].items()):
            if key.endswith("_skipped") and isinstance(why, str):
                log.warning("model %r: %s skipped: %s", r["model"], key[: -len("_skipped")], why)
    write_csv(pd.DataFrame([{"model": r["model"], "dataset": r["dataset"], **r.get("timings", {}),
                             "reused": bool(r.get("skipped"))} for r in ok]), out / "timings.csv")
    fs = pd.DataFrame([row for r in ok for row in r.get("fewshot", [])])
    if not fs.empty:
        write_csv(fs, out / "fewshot.csv")
    failures = pd.DataFrame(failed, columns=["model", "dataset", "error_type", "error"])
    if failed:
        write_csv(failures, out / "failures.csv")
    else:
        (out / "failures.csv").unlink(missing_ok=True)
    # zoo-level stages are redone only when some run changed (a rerun of finished work stays fast)
    zoo_key = hashlib.sha256(json.dumps([[r["run_key"] for r in ok], settings.key_dict()],
                                        sort_keys=True).encode()).hexdigest()[:24]
    state_path = out / "runs" / "_zoo_stages.json"
    try:
        state = json.loads(state_path.read_text())
    except (OSError, json.JSONDecodeError):
        state = {}
    for stage, enabled, outputs, fn in (
            ("uncertainty", settings.uncertainty, ["uncertainty.csv"],
             lambda: zoo_uncertainty(zoo, ok, dataset, out, cache_dir, settings)),
            ("active", settings.active, ["active_learning.csv", "label_efficiency.csv"], lambda: zoo_active(ok, out))):
        if not (enabled and ok):
            continue
        if state.get(stage) == zoo_key and all((out / o).exists() for o in outputs):
            continue
        fn()
        state[stage] = zoo_key
        atomic_write_text(state_path, json.dumps(state, indent=1, sort_keys=True))
    return EvaluationResult(board, failures, out, ok)


def build_leaderboard(records: list) -> pd.DataFrame:
    if not records:
        return pd.DataFrame(columns=["model", "dataset", *COMPONENTS])
    df = pd.DataFrame([r["row"] for r in records])
    first = ["model", "dataset", "n_train", "n_test", "n_classes", "n_sub", *COMPONENTS, "approx_merged"]

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


def zoo_uncertainty(zoo: Zoo, records: list, dataset: str, out: Path, cache_dir: Path, settings: Settings) -> None:
    """Ensemble scores across the zoo's encoders (same reference set), then every score's metrics per model."""
    from .reliability import evaluate_scores
    from .uncertainty import ensemble_scores

    ds_cache: dict = {}
    per_ds: dict = {}
    for r in records:
        per_ds.setdefault(r["dataset"], []).append(r["model"])
    frames = []
    for ds_name, names in per_ds.items():
        feats = {}
        for n in names:
            entry = zoo[n]
            if entry.metadata.get("objective") in ("supervised", "init"):
                continue  # the ensemble is of the self-supervised encoders
            f = _load(entry, dataset, settings, cache_dir, ds_cache)
            feats[n] = (f.x_test, f.x_train)
        ens = None
        if len(feats) >= 2:
            n_train = len(next(iter(feats.values()))[1])
            with warnings.catch_warnings():  # members of different widths: ens_var is NaN by design
                warnings.filterwarnings("ignore", message="ens_var skipped")
                ens = ensemble_scores(feats, reference_indices(n_train, settings), k=min(100, max(1, n_train // 10)))
        for n in names:
            path = per_sample_path(out, n, ds_name)
            if not path.exists():
                continue
            ps = pd.read_csv(path)
            if ens is not None:
                for c in ens.columns:
                    ps[c] = ens[c].to_numpy()
                write_csv(ps, path)
            target_cols = [c for c in ("err01", "loss", "brier_ovo") if c in ps.columns]
            score_cols = [c for c in ps.columns if c not in ("index", "y", "pred", *target_cols)]
            res = evaluate_scores(ps[score_cols], ps[target_cols], n_boot=settings.uncertainty_boot,
                                  seed=settings.seed)
            res.insert(0, "model", n)
            res.insert(1, "dataset", ds_name)
            frames.append(res)
    if frames:
        write_csv(pd.concat(frames, ignore_index=True), out / "uncertainty.csv")


def zoo_active(records: list, out: Path) -> None:
    from .active import label_efficiency

    curves, effs = [], []
    for r in records:
        p = Path(out) / "active" / f"{r['model']}__{r['dataset']}.csv"
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
    if curves:
        write_csv(pd.concat(curves, ignore_index=True), out / "active_learning.csv")
    if effs:
        write_csv(pd.concat(effs, ignore_index=True), out / "label_efficiency.csv")

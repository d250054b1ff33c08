"""Featurization with a content-addressed, checksummed, crash-safe disk cache.

Cache layout: ``<cache_dir>/features/<model>/<dataset>-<split>-<key>.npy`` plus a ``.json`` sidecar holding the
key's parts, shape, dtype and the SHA-256 of the array bytes. The key hashes the encoder identity (architecture,
weights hash, representation, preprocessing), the dataset fingerprint and the split, so changing any of them
misses the cache. Both files are written to a temporary name and renamed into place (array first, sidecar last):
an entry is trusted only when its sidecar exists and the checksum matches, so a killed run or a truncated file is
never used — it is recomputed. Concurrent processes compute each entry once (a file lock per entry). Arrays are
stored with ``allow_pickle=False`` (no pickles) and can be memory-mapped.

Precision: float16 by default (``FEATURE_DTYPES``; the dtype is part of the key, so float16 and float32 entries
never mix). Half the disk and the memory of float32; its ~3 significant digits (relative rounding <= 2^-11)
move a tuned linear probe's errors by far less than their bootstrap CIs (tested: <= 0.1 points on every
decomposition number of a real encoder whose rounding noise is <= 0.06% of each column's spread; 0.15 points for
the default zoo's ``init``, ~1.2%). Features float16 cannot hold (beyond +-65504, or a column whose
values would all round to 0) are a FeatureError naming the model, never stored as inf or 0; a column of only
float16-subnormal values (< 6.1e-5) is stored with fewer digits, with a warning. A column whose variation float16
would flatten (rounding noise above ``FLOAT16_MAX_NOISE`` of its spread: a large common offset, e.g. a LayerNorm
bias of 2000) makes its matrix stored as float32 under the same key (the sidecar's dtype says which), with one
notice naming the model. float32 is opt-in.

Decode once, many encoders: :func:`featurize_group` featurizes zoo entries that share preprocessing
(:mod:`riskdecomp.features.decode`) in one pass per split, writing each encoder's entry as :func:`featurize` would (which is
a group of one). On CUDA, JPEG files are decoded on the device (:func:`riskdecomp.features.decode.device_plan`). A group
holds its encoders' features of one split in memory until the pass ends (as one encoder does alone, times the
group's size).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from riskdecomp.features.augment import random_resized_crop
from riskdecomp.features.datasets import ArraySplit, ImageDataset, ImageSplit
from riskdecomp.features.decode import device_batches, device_plan, preprocessing_key
from riskdecomp.features.encoders import (
    Encoder,
    EncoderSpec,
    build_encoder,
    entry_identity,
)
from riskdecomp.utils.atomic import atomic_open, atomic_write_text
from riskdecomp.utils.device import resolve_device
from riskdecomp.utils.errors import FeatureError, RiskdecompError
from riskdecomp.utils.validation import check_feature_values, rounding_noise

log = logging.getLogger(__name__)
CACHE_VERSION = 1
#: precisions of the feature cache (``--feature-dtype``); the first is the default
FEATURE_DTYPES = ("float16", "float32")


@dataclass
class Features:
    """Train/test features of one encoder on one dataset (float32 arrays, int64 labels)."""

    model: str
    dataset: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: Optional[list] = None
    forward_passes: int = 0  # batches pushed through the encoder by this call (0 = all from cache)


def _atomic_save_npy(path: Path, arr: np.ndarray) -> str:
    """Save ``arr`` as .npy atomically; return the SHA-256 of the array bytes."""
    with atomic_open(path) as f:
        np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
    return array_sha256(arr)


def array_sha256(arr: np.ndarray, chunk_rows: int = 65536) -> str:
    h = hashlib.sha256()
    a = np.ascontiguousarray(arr) if not isinstance(arr, np.memmap) else arr
    for i in range(0, max(len(a), 1), chunk_rows):
        h.update(np.ascontiguousarray(a[i:i + chunk_rows]).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- cache entries
def cache_key(identity: str, dataset_fingerprint: str, split: str, dtype: str) -> str:
    blob = json.dumps([CACHE_VERSION, identity, dataset_fingerprint, split, dtype])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cache_path(cache_dir: Path, model: str, dataset: str, split: str, key: str) -> Path:
    safe_ds = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset)
    return Path(cache_dir) / "features" / model / f"{safe_ds}-{split}-{key}.npy"


def read_cached(path: Path, mmap: bool = False) -> Optional[np.ndarray]:
    """The cached array if its sidecar exists and the checksum matches; otherwise None (and a bad entry is removed)."""
    side = path.with_suffix(".json")
    if not path.exists() or not side.exists():
        return None
    try:
        meta = json.loads(side.read_text())
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        ok = list(arr.shape) == meta["shape"] and str(arr.dtype) == meta["dtype"] and array_sha256(arr) == meta["sha256"]
    except (OSError, ValueError, KeyError, EOFError, json.JSONDecodeError):
        ok = False
    if not ok:
        log.warning("feature cache %s is corrupt or incomplete: recomputing", path)
        for p in (side, path):
            p.unlink(missing_ok=True)
        return None
    return arr


def write_cached(path: Path, arr: np.ndarray, meta: dict) -> None:
    digest = _atomic_save_npy(path, arr)
    meta = {**meta, "shape": list(arr.shape), "dtype": str(arr.dtype), "sha256": digest}
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=1, sort_keys=True))


# ----------------------------------------------------------------------------------------------- forward passes
_STDLIB_START_METHODS = (None, "fork", "spawn", "forkserver")


def _num_workers(split: ImageSplit, num_workers) -> tuple[int, Optional[str]]:
    """Data-loading worker processes for ``split`` and the multiprocessing context to start them with (None: the
    default). ``auto``: none for in-memory or tiny splits; in the main process one per core (at most 8), since
    decoding + resizing JPEGs in workers overlaps with the forward pass.

    Inside a parallel job (a joblib/loky or dask worker) the default context cannot start loader processes: loky
    makes its own start method the default (torch then fails with "'Process' object has no attribute 'env'") and
    dask workers are daemonic (no children allowed). There ``auto`` means 0: the jobs already share the cores, and
    measured on 500 CIFAR / 250 Imagenette-224 JPEGs in a loky job (test_resnet, 1 thread, 2 cores) 1 or 2 forked
    loader processes were no faster than none. An explicit count is honoured with the ``fork`` context in a loky job
    (spawn/forkserver children cannot start there: they look for the 'loky' method) and falls back to 0 in a
    daemonic process or where fork is unsafe (macOS), with a warning saying why."""
    import multiprocessing as mp
    import sys

    if num_workers == "auto":
        if isinstance(split, ArraySplit) or len(split) < 64:
            return 0, None  # in-memory images: nothing to overlap
        n = max(1, min(8, (os.cpu_count() or 2)))
    else:
        n = int(num_workers)
    proc = mp.current_process()
    in_job = proc.daemon or mp.get_start_method(allow_none=True) not in _STDLIB_START_METHODS
    if n == 0 or not in_job:
        return n, None
    if num_workers == "auto":
        log.debug("%s: loading images in-process (a parallel job: the jobs already share the cores)", proc.name)
        return 0, None
    if proc.daemon or sys.platform == "darwin" or "fork" not in mp.get_all_start_methods():
        why = "a daemonic process (dask worker)" if proc.daemon else "fork is unsafe on this platform"
        log.warning("--num-workers %d ignored in %s: %s cannot start data-loading processes; loading in-process",
                    n, proc.name, why)
        return 0, None
    return n, "fork"


def _loader_kwargs(split: ImageSplit, num_workers, cuda: bool) -> dict:
    nw, context = _num_workers(split, num_workers)
    extra = {"multiprocessing_context": context, "prefetch_factor": 4} if nw else {}
    return {"num_workers": nw, "pin_memory": cuda, **extra}


def _loader(encoder: Encoder, split: ImageSplit, *, batch_size: int, num_workers, cuda: bool = False):
    """A DataLoader over ``split`` with the encoder's transform, in order; workers per :func:`_num_workers`."""
    return torch.utils.data.DataLoader(split.with_transform(encoder.transform), batch_size=batch_size, shuffle=False,
                                       **_loader_kwargs(split, num_workers, cuda))


def input_batches(encoder: Encoder, split: ImageSplit, *, device: str, batch_size: int, num_workers="auto",
                  decode: str = "auto"):
    """The encoder's preprocessed input for ``split``, batch by batch in order, on ``device`` (channels-last on
    CUDA): decoded on the device where :func:`riskdecomp.features.decode.device_plan` says so, else by PIL and the
    encoder's transform in loader workers (the CPU path)."""
    cuda = device.startswith("cuda")
    plan = device_plan(split, encoder.transform, device, decode)
    if plan is not None:
        batches = device_batches(split, plan, encoder.transform, device=device, batch_size=batch_size,
                                 loader_kwargs=_loader_kwargs(split, num_workers, False))
    else:
        batches = (xb.to(device, non_blocking=True)
                   for xb, _yb in _loader(encoder, split, batch_size=batch_size, num_workers=num_workers, cuda=cuda))
    for xb in batches:
        yield xb.to(memory_format=torch.channels_last) if cuda else xb


@torch.inference_mode()
def encode_group(encoders: Sequence[Encoder], split: ImageSplit, *, device: str = "cpu", batch_size: int = 256,
                 num_workers="auto", progress: bool = True, decode: str = "auto") -> tuple[dict, dict, dict]:
    """One pass over ``split`` for encoders that share preprocessing (equal
    :func:`riskdecomp.features.decode.preprocessing_key`): each batch is decoded and transformed once, with the first
    encoder's transform, and fed to every encoder (each gets its own copy but the last, so a module that writes
    into its input cannot change another's). Returns ``(features, errors, batches)`` keyed by encoder name: float32
    (N, D) arrays of the encoders that went through, the exception of each encoder whose forward raised (it is
    dropped from the rest of the pass; the others go on), and the number of batches each encoder processed."""
    from tqdm.auto import tqdm

    device = resolve_device(device)
    cuda = device.startswith("cuda")
    modules = {}
    for enc in encoders:
        m = enc.module.to(device).eval()
        modules[enc.name] = m.to(memory_format=torch.channels_last) if cuda else m
    out: dict = {enc.name: [] for enc in encoders}
    errors: dict = {}
    counts = {enc.name: 0 for enc in encoders}
    who = "+".join(enc.name for enc in encoders)
    bar = tqdm(total=len(split), desc=f"featurize {who} [{split.split}]", unit="img", unit_scale=True,
               disable=not progress, leave=False)
    for xb in input_batches(encoders[0], split, device=device, batch_size=batch_size, num_workers=num_workers,
                            decode=decode):
        bar.update(len(xb))
        live = [name for name in modules if name not in errors]
        for i, name in enumerate(live):
            try:
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
                    z = modules[name](xb if i == len(live) - 1 else xb.clone())
                out[name].append(z.float().reshape(len(xb), -1).cpu().numpy())
                counts[name] += 1
            except Exception as exc:  # one encoder failing does not stop the others of its group
                errors[name] = exc
        if len(errors) == len(modules):
            break
    bar.close()
    feats = {}
    for name, chunks in out.items():
        if name in errors:
            continue
        if not chunks:
            errors[name] = FeatureError(f"model {name!r}: the {split.split} split is empty")
            continue
        feats[name] = np.concatenate(chunks).astype(np.float32, copy=False)
    return feats, errors, counts


@torch.inference_mode()
def posterior_variance(logvar: np.ndarray) -> np.ndarray:
    """u(x) = mean over dimensions of sigma^2 = exp(log sigma^2) (stochastic heads)."""
    return np.exp(np.asarray(logvar, dtype=np.float64)).mean(axis=1)


def posterior_variance_split(encoder: Encoder, split: ImageSplit, *, device: str = "cpu",
                             batch_size: int = 256) -> Optional[np.ndarray]:
    """Per image of ``split``: the posterior variance of a stochastic encoder, mean over dimensions of
    exp(logvar) (``uncertainty.posterior_variance``), or None when the encoder has no posterior. Not cached:
    stochastic encoders are riskdecomp's own small recipes, and this is one forward pass over the test split."""
    module = encoder.module
    if not getattr(module, "stochastic", False):
        return None
    dev = resolve_device(device)
    module = module.to(dev).eval()
    loader = _loader(encoder, split, batch_size=batch_size, num_workers=0)
    out = [posterior_variance(module.posterior(xb.to(dev))[1].float().cpu().numpy()) for xb, _ in loader]
    return np.concatenate(out) if out else np.zeros(0)


@torch.inference_mode()
def augmented_views_split(encoder: Encoder, split: ImageSplit, *, n_views: int = 4, scale=(0.5, 1.0), seed: int = 0,
                          device: str = "cpu", batch_size: int = 256, num_workers="auto") -> np.ndarray:
    """(n_views, N, D) embeddings of random views of every image of ``split``: the encoder's own eval input, then a
    random resized crop (area fraction ~ U(``scale``), aspect ratio in [3/4, 4/3]) resized back and a horizontal
    flip with p = 0.5 -- SimCLR's geometric augmentations, which apply to any encoder's normalized input (photometric
    ones do not). Seeded: the same seed gives the same views. Not cached (the run record keeps what they give)."""
    dev = resolve_device(device)
    module = encoder.module.to(dev).eval()
    cuda = dev.startswith("cuda")
    g = torch.Generator().manual_seed(int(seed))
    loader = _loader(encoder, split, batch_size=batch_size, num_workers=num_workers, cuda=cuda)
    views: list = [[] for _ in range(n_views)]
    for xb, _yb in loader:
        for v in range(n_views):
            xv = random_resized_crop(xb.float(), scale=scale, flip=True, generator=g).to(dev)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
                z = module(xv)
            views[v].append(z.float().reshape(len(xb), -1).cpu().numpy())
    if not views[0]:
        raise FeatureError(f"model {encoder.name!r}: the {split.split} split is empty")
    out = np.stack([np.concatenate(v) for v in views]).astype(np.float32, copy=False)
    _check_finite(out.reshape(-1, out.shape[-1]), f"model {encoder.name!r} augmented views")
    return out


def check_feature_dtype(dtype) -> str:
    """``dtype`` as one of ``FEATURE_DTYPES``, else a one-line error."""
    if str(dtype) not in FEATURE_DTYPES:
        raise RiskdecompError(f"feature dtype {dtype!r}: expected one of {', '.join(FEATURE_DTYPES)}")
    return str(dtype)


#: the most rounding noise (RMS, net of its mean, relative to the column's spread: see
#: :func:`riskdecomp.utils.validation.rounding_noise`) a column may take from float16 storage. Rounding moves a value
#: by <= 2^-11 of its magnitude, so a column takes ~2^-12 x (its RMS / its std): 5.7e-4 at most for a random-init
#: resnet18 on cifar10-mini, 1.2e-2 for the default zoo's ``init`` entries (columns ~56x their spread: agg_risk of
#: init.s0 moves 0.15 points; their committed results are float16's, so the bar sits above them). Beyond it a column is flattened to a few values
#: (a large common offset: a LayerNorm bias of 2000 with variation ~0.05 becomes one constant) and the matrix is
#: stored in float32 instead.
FLOAT16_MAX_NOISE = 0.025


def storage_plan(z: np.ndarray, dtype: str, who: str) -> tuple[str, int]:
    """(the dtype to store ``z`` (float32 features) in, the number of its columns that ``dtype`` would flatten).
    Values ``dtype`` cannot hold are a FeatureError naming ``who`` (see
    :func:`riskdecomp.utils.validation.check_feature_values`), never silently inf or 0. A reduced-precision
    ``dtype`` is kept only when every column keeps its variation (rounding noise <= ``FLOAT16_MAX_NOISE`` of its
    spread); otherwise the matrix is stored in float32, so the numbers are float32's (the key still names the
    precision asked for: deterministic, and float32 requests never read these entries)."""
    if dtype == "float32":
        return dtype, 0
    tiny = check_feature_values(z, who, dtype=np.dtype(dtype), subnormal_ok=True,
                                hint="store them with --feature-dtype float32 (Settings.feature_dtype)")
    lossy = int((rounding_noise(z, np.dtype(dtype)) > FLOAT16_MAX_NOISE).sum())
    if tiny and not lossy:  # (stored as float32, they keep every digit)
        log.warning("%s: %d feature column(s) hold only values below %.3g (%s-subnormal): stored with fewer "
                    "significant digits; --feature-dtype float32 keeps them exactly", who, tiny,
                    np.finfo(dtype).tiny, dtype)
    return ("float32" if lossy else dtype), lossy


def storage_array(z: np.ndarray, dtype: str, who: str) -> np.ndarray:
    """``z`` (float32 features) as the cache stores it for precision ``dtype`` (:func:`storage_plan`)."""
    return z.astype(storage_plan(z, dtype, who)[0], copy=False)


def _check_finite(x: np.ndarray, who: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        rows = int(bad.any(axis=1).sum())
        raise FeatureError(f"{who}: {rows} feature vector(s) contain NaN or inf")


def featurize(entry: EncoderSpec, dataset: Optional[ImageDataset], *, cache_dir, device: str = "auto",
              batch_size: int = 256, num_workers="auto", dtype: str = FEATURE_DTYPES[0], progress: bool = True,
              encoder: Optional[Encoder] = None, mmap: bool = False, force: bool = False,
              decode: str = "auto") -> Features:
    """Train and test features of one zoo entry on ``dataset``, from the cache when possible. ``entry``: anything
    :class:`~riskdecomp.features.encoders.EncoderSpec` describes (a zoo entry: its source builds the encoder).

    ``features`` entries read their ``.npz`` (``allow_pickle=False``). For the others the encoder is built (a
    ``recipe`` entry is pretrained on first use), the cache consulted and missing splits encoded.
    ``dtype``: the cache's precision, float16 (default: half the disk and memory of float32) or float32 (part of
    the cache key). The arrays come back as in-memory float32, or with ``mmap`` as read-only memory maps of the cache
    files in ``dtype`` (float32 where float16 would flatten a column: :func:`storage_plan`; nothing is read until used; ``decompose`` reads them without a full float32 copy of each).
    ``force``: cached features are not read (recomputed and rewritten), and a recipe entry is pretrained again.
    ``decode``: where JPEGs are decoded (:func:`riskdecomp.features.decode.device_plan`). A group of one
    (:func:`featurize_group`).
    """
    return featurize_group([entry], dataset, cache_dir=cache_dir, device=device, batch_size=batch_size,
                           num_workers=num_workers, dtype=dtype, progress=progress, mmap=mmap, force=force,
                           decode=decode, encoders=None if encoder is None else {entry.name: encoder})[entry.name]


def featurize_group(entries: Sequence[EncoderSpec], dataset: Optional[ImageDataset], *, cache_dir, device: str = "auto",
                    batch_size: int = 256, num_workers="auto", dtype: str = FEATURE_DTYPES[0], progress: bool = True,
                    encoders: Optional[dict] = None, mmap: bool = False, force: bool = False,
                    decode: str = "auto", failures: Optional[dict] = None) -> dict:
    """:func:`featurize` for many zoo entries at once, decoding each image once per group: ``{name: Features}``.

    Per split, the entries whose cache entry is valid are read (a fully cached rerun builds no encoder); the others
    are locked (one file lock per cache entry, taken in sorted path order so two processes cannot deadlock),
    checked again, their encoders built, and grouped by :func:`riskdecomp.features.decode.preprocessing_key`: each group
    makes one pass over the split (:func:`encode_group`) and every encoder's features are written to its own cache
    entry exactly as :func:`featurize` writes them (same key, :func:`write_cached`: atomic array then sidecar with
    the checksum), so the files are byte-identical to one-by-one featurization. Entries with different
    preprocessing form different groups, run one after the other.

    Resuming: each (entry, split) file is complete or absent. A pass killed midway leaves the entries and splits
    written before it, which a rerun reads; only the rest is recomputed. An encoder whose forward raises (or whose
    features are not finite) is dropped from its group's pass and the others' files are written; then, when
    ``failures`` (a dict) is given, each failed entry is left out of the result and recorded there (name -> the
    exception, its traceback attached), else the first such error is raised at the end.
    ``encoders``: already built encoders by name (not rebuilt). Features entries read their ``.npz``.
    """
    from contextlib import ExitStack

    from filelock import FileLock

    dtype = check_feature_dtype(dtype)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise RiskdecompError(f"featurize_group: entries named twice: {sorted({n for n in names if names.count(n) > 1})}")
    built = dict(encoders or {})
    result: dict = {}
    image_entries = []
    for e in entries:
        own = e.precomputed_features()
        if own is not None:
            result[e.name] = own
        elif dataset is None:
            raise RiskdecompError(f"model {e.name!r}: needs a dataset")
        else:
            image_entries.append(e)
    if not image_entries:
        return result
    device = resolve_device(device)
    cache_dir = Path(cache_dir)
    identity = {e.name: built[e.name].identity if e.name in built else entry_identity(
        e, dataset, cache_dir=cache_dir, device=device, progress=progress, force=force) for e in image_entries}
    arrays: dict = {e.name: {} for e in image_entries}
    passes = {e.name: 0 for e in image_entries}
    failed: dict = {}
    widened: dict = {}  # name -> (columns float16 would flatten, of how many, the splits stored as float32)
    for split in ("train", "test"):
        todo = [e for e in image_entries if e.name not in failed]
        paths = {e.name: cache_path(cache_dir, e.name, dataset.name, split,
                                    cache_key(identity[e.name], dataset.fingerprint, split, dtype)) for e in todo}
        for e in todo:
            arrays[e.name][split] = None if force else read_cached(paths[e.name], mmap=True)
        missing = [e for e in todo if arrays[e.name][split] is None]
        if not missing:
            continue
        with ExitStack() as locks:
            for p in sorted(paths[e.name] for e in missing):
                p.parent.mkdir(parents=True, exist_ok=True)
                locks.enter_context(FileLock(str(p) + ".lock"))
            for e in missing:  # another process may have written it meanwhile
                arrays[e.name][split] = None if force else read_cached(paths[e.name], mmap=True)
            groups: dict = {}
            for e in missing:
                if arrays[e.name][split] is not None:
                    continue
                if e.name not in built:  # built only when something is missing: a cached rerun builds nothing
                    built[e.name] = build_encoder(e, dataset=dataset, cache_dir=cache_dir, device=device,
                                                  progress=progress, force=force)
                groups.setdefault(preprocessing_key(built[e.name].transform), []).append(built[e.name])
            for group in groups.values():
                z, errors, counts = encode_group(group, dataset.split(split), device=device, batch_size=batch_size,
                                                 num_workers=num_workers, progress=progress, decode=decode)
                for name, n in counts.items():
                    passes[name] += n
                failed.update(errors)
                for name, arr in z.items():
                    try:
                        _check_finite(arr, f"model {name!r} ({split} split)")
                        stored, lossy = storage_plan(arr, dtype, f"model {name!r} ({split} split)")
                    except FeatureError as exc:
                        failed[name] = exc
                        continue
                    extra = {"lossy_columns": lossy} if lossy else {}  # ordinary entries: the sidecar as before
                    if lossy:
                        n, _, splits = widened.get(name, (0, 0, ()))
                        widened[name] = (max(n, lossy), arr.shape[1], (*splits, split))
                    write_cached(paths[name], arr.astype(stored, copy=False), {
                        "model": name, "dataset": dataset.name, "split": split, "identity": identity[name],
                        "fingerprint": dataset.fingerprint, **extra})
                    log.info("computed features: model=%s dataset=%s split=%s", name, dataset.name, split)
                    arrays[name][split] = read_cached(paths[name], mmap=True)
    for name, (lossy, width, splits) in widened.items():  # said once per model, when its features are computed
        log.warning("model %r: %d of %d feature columns vary too little for float16 at their magnitude (a large "
                    "common offset, e.g. a LayerNorm bias): its %s features are cached as float32 instead (twice "
                    "the disk; the numbers are those of --feature-dtype float32)", name, lossy, width,
                    " and ".join(splits))
    if failed and failures is None:
        raise next(failed[n] for n in names if n in failed)
    if failures is not None:
        failures.update((n, failed[n]) for n in names if n in failed)
    for e in image_entries:
        if e.name in failed:
            continue
        # read through memory maps either way: an in-memory float32 array is then the only copy (no transient float16
        # one); np.array copies, so it does not stay tied to the file
        a = {s: v if mmap else np.array(v, dtype=np.float32) for s, v in arrays[e.name].items()}
        result[e.name] = Features(e.name, dataset.name, a["train"], dataset.train.labels, a["test"],
                                  dataset.test.labels, list(dataset.classes), forward_passes=passes[e.name])
    return {n: result[n] for n in names if n in result}


def load_features_npz(entry) -> Features:
    """Read a precomputed-features entry and check its arrays: an ``.npz`` archive (never unpickled) holding
    ``x_train``/``x_test`` (n, d) real numbers a float32 probe can honour and ``y_train``/``y_test`` (n,) integer
    class labels. Anything else is a one-line FeatureError naming the file and the array (see
    :func:`riskdecomp.utils.validation.check_feature_values`)."""
    who = f"model {entry.name!r}"
    path = Path(entry.path)
    if not path.is_file():
        raise FeatureError(f"{who}: features file {path} not found")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic == b"\x93NUMPY":
        raise FeatureError(f"{who}: {path} is a single .npy array, not an .npz archive of x_train, y_train, x_test, "
                           "y_test (write it with numpy.savez)")
    if magic[:2] != b"PK":
        raise FeatureError(f"{who}: {path} is not an .npz archive (numpy.savez) of plain arrays")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in npz.files]
            if missing:
                raise FeatureError(f"{who}: {path} lacks array(s) {', '.join(missing)}")
            arr = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except FeatureError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise FeatureError(f"{who}: {path} is not a readable .npz of plain arrays ({str(exc).splitlines()[0]})") from None
    for split in ("train", "test"):
        x, y = arr[f"x_{split}"], arr[f"y_{split}"]
        if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
            raise FeatureError(f"{who}: {path}: x_{split} must be (n, d) and y_{split} (n,) with n > 0, "
                               f"got {x.shape} and {y.shape}")
        if not np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
            kind = "strings" if y.dtype.kind in "US" else f"dtype {y.dtype}"
            raise FeatureError(f"{who}: {path}: y_{split} must hold integer class labels, got {kind}")
        check_feature_values(x, f"{who} ({path.name}, x_{split})")
    if arr["x_train"].shape[1] != arr["x_test"].shape[1]:
        raise FeatureError(f"{who}: {path}: x_train and x_test have different widths")
    xtr, xte = arr["x_train"].astype(np.float32), arr["x_test"].astype(np.float32)
    return Features(entry.name, entry.dataset or path.stem, xtr, arr["y_train"].astype(np.int64), xte,
                    arr["y_test"].astype(np.int64))


def npz_width(path: Path, array: str = "x_train") -> Optional[int]:
    """The second dimension of ``array`` in an ``.npz`` archive, read from its header (no data is loaded)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf, zf.open(f"{array}.npy") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape = read(fh)[0]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return int(shape[1]) if len(shape) == 2 else None


def cached_feature_dim(entry: EncoderSpec, dataset: ImageDataset, *, cache_dir,
                       dtype: str = FEATURE_DTYPES[0]) -> Optional[int]:
    """The width d of an entry's features without computing them, from the sidecar of its cached train features
    (None when they are not cached). For a reused run record written before records held ``n_features``."""
    try:
        identity = entry_identity(entry, dataset, cache_dir=cache_dir)
        side = cache_path(Path(cache_dir), entry.name, dataset.name, "train",
                          cache_key(identity, dataset.fingerprint, "train", check_feature_dtype(dtype)))
        shape = json.loads(side.with_suffix(".json").read_text())["shape"]
    except (OSError, KeyError, TypeError, ValueError, RiskdecompError):
        return None
    return int(shape[1]) if isinstance(shape, list) and len(shape) == 2 else None

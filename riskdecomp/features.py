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
decomposition number of a real encoder). Features float16 cannot hold (beyond +-65504, or a column whose
values would all round to 0) are a FeatureError naming the model, never stored as inf or 0; a column of only
float16-subnormal values (< 6.1e-5) is stored with fewer digits, with a warning. float32 is opt-in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .datasets import ArraySplit, ImageDataset, ImageSplit
from .encoders import Encoder, build_encoder, entry_identity, resolve_device
from .atomic import atomic_open, atomic_write_text
from .errors import FeatureError, RiskdecompError
from .zoo import FeaturesEntry

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


def _loader(encoder: Encoder, split: ImageSplit, *, batch_size: int, num_workers, cuda: bool = False):
    """A DataLoader over ``split`` with the encoder's transform, in order; workers per :func:`_num_workers`."""
    nw, context = _num_workers(split, num_workers)
    extra = {"multiprocessing_context": context, "prefetch_factor": 4} if nw else {}
    return torch.utils.data.DataLoader(split.with_transform(encoder.transform), batch_size=batch_size, shuffle=False,
                                       num_workers=nw, pin_memory=cuda, **extra)


@torch.inference_mode()
def encode_split(encoder: Encoder, split: ImageSplit, *, device: str = "cpu", batch_size: int = 256,
                 num_workers="auto", progress: bool = True, counter: Optional[list] = None) -> np.ndarray:
    """Run the encoder over a split (eval mode, batched, AMP + channels-last on CUDA). Returns float32 (N, D)."""
    from tqdm.auto import tqdm

    device = resolve_device(device)
    module = encoder.module.to(device).eval()
    cuda = device.startswith("cuda")
    if cuda:
        module = module.to(memory_format=torch.channels_last)
    loader = _loader(encoder, split, batch_size=batch_size, num_workers=num_workers, cuda=cuda)
    out = []
    bar = tqdm(total=len(split), desc=f"featurize {encoder.name} [{split.split}]", unit="img", unit_scale=True,
               disable=not progress, leave=False)
    for xb, _yb in loader:
        bar.update(len(xb))
        xb = xb.to(device, non_blocking=True)
        if cuda:
            xb = xb.to(memory_format=torch.channels_last)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            z = module(xb)
        if counter is not None:
            counter.append(len(xb))
        out.append(z.float().reshape(len(xb), -1).cpu().numpy())
    bar.close()
    if not out:
        raise FeatureError(f"model {encoder.name!r}: the {split.split} split is empty")
    return np.concatenate(out).astype(np.float32, copy=False)


@torch.inference_mode()
def posterior_variance_split(encoder: Encoder, split: ImageSplit, *, device: str = "cpu",
                             batch_size: int = 256) -> Optional[np.ndarray]:
    """Per image of ``split``: the posterior variance of a stochastic encoder, mean over dimensions of
    exp(logvar) (``uncertainty.posterior_variance``), or None when the encoder has no posterior. Not cached:
    stochastic encoders are riskdecomp's own small recipes, and this is one forward pass over the test split."""
    from .uncertainty import posterior_variance

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
    from .pretrain.augment import random_resized_crop

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


def storage_array(z: np.ndarray, dtype: str, who: str) -> np.ndarray:
    """``z`` (float32 features) cast to the cache's ``dtype``; values that dtype cannot hold are a FeatureError
    naming ``who`` (see :func:`riskdecomp.decomposition.check_feature_values`), never silently inf or 0."""
    from .decomposition import check_feature_values

    if dtype != "float32":
        tiny = check_feature_values(z, who, dtype=np.dtype(dtype), subnormal_ok=True,
                                    hint="store them with --feature-dtype float32 (Settings.feature_dtype)")
        if tiny:
            log.warning("%s: %d feature column(s) hold only values below %.3g (%s-subnormal): stored with fewer "
                        "significant digits; --feature-dtype float32 keeps them exactly", who, tiny,
                        np.finfo(dtype).tiny, dtype)
    return z.astype(dtype, copy=False)


def _check_finite(x: np.ndarray, who: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        rows = int(bad.any(axis=1).sum())
        raise FeatureError(f"{who}: {rows} feature vector(s) contain NaN or inf")


def featurize(entry, dataset: Optional[ImageDataset], *, cache_dir, device: str = "auto", batch_size: int = 256,
              num_workers="auto", dtype: str = FEATURE_DTYPES[0], progress: bool = True, encoder: Optional[Encoder] = None,
              mmap: bool = False, force: bool = False) -> Features:
    """Train and test features of one zoo entry on ``dataset``, from the cache when possible.

    ``features`` entries read their ``.npz`` (``allow_pickle=False``). For the others the encoder is built (a
    ``recipe`` entry is pretrained on first use), the cache consulted and missing splits encoded.
    ``dtype``: the cache's precision, float16 (default: half the disk and memory of float32) or float32 (part of
    the cache key). The arrays come back as in-memory float32, or with ``mmap`` as read-only memory maps of the cache
    files in ``dtype`` (nothing is read until used; ``decompose`` reads them without a full float32 copy of each).
    ``force``: cached features are not read (recomputed and rewritten), and a recipe entry is pretrained again.
    """
    from filelock import FileLock

    if isinstance(entry, FeaturesEntry):
        return load_features_npz(entry)
    if dataset is None:
        raise RiskdecompError(f"model {entry.name!r}: needs a dataset")
    dtype = check_feature_dtype(dtype)
    device = resolve_device(device)
    cache_dir = Path(cache_dir)
    identity = encoder.identity if encoder is not None else entry_identity(
        entry, dataset, cache_dir=cache_dir, device=device, progress=progress, force=force)
    counter: list = []
    arrays = {}
    for split in ("train", "test"):
        key = cache_key(identity, dataset.fingerprint, split, dtype)
        path = cache_path(cache_dir, entry.name, dataset.name, split, key)
        arr = None if force else read_cached(path, mmap=True)
        if arr is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(path) + ".lock"):
                arr = None if force else read_cached(path, mmap=True)  # another process may have written it
                if arr is None:
                    if encoder is None:  # built only when something is missing: a cached rerun builds nothing
                        encoder = build_encoder(entry, dataset=dataset, cache_dir=cache_dir, device=device,
                                                progress=progress, force=force)
                    z = encode_split(encoder, dataset.split(split), device=device, batch_size=batch_size,
                                     num_workers=num_workers, progress=progress, counter=counter)
                    _check_finite(z, f"model {entry.name!r} ({split} split)")
                    z = storage_array(z, dtype, f"model {entry.name!r} ({split} split)")
                    write_cached(path, z, {"model": entry.name, "dataset": dataset.name,
                                                         "split": split, "identity": identity,
                                                         "fingerprint": dataset.fingerprint})
                    log.info("computed features: model=%s dataset=%s split=%s", entry.name, dataset.name, split)
                    arr = read_cached(path, mmap=True)
        # read through a memory map either way: an in-memory float32 array is then the only copy (no transient
        # float16 one); np.array copies, so it does not stay tied to the file
        arrays[split] = arr if mmap else np.array(arr, dtype=np.float32)
    return Features(entry.name, dataset.name, arrays["train"], dataset.train.labels, arrays["test"],
                    dataset.test.labels, list(dataset.classes), forward_passes=len(counter))


def load_features_npz(entry: FeaturesEntry) -> Features:
    """Read a precomputed-features entry and check its arrays: an ``.npz`` archive (never unpickled) holding
    ``x_train``/``x_test`` (n, d) real numbers a float32 probe can honour and ``y_train``/``y_test`` (n,) integer
    class labels. Anything else is a one-line FeatureError naming the file and the array (see
    :func:`riskdecomp.decomposition.check_feature_values`)."""
    from .decomposition import check_feature_values

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

"""Featurization throughput of riskdecomp vs the model's pure forward pass, and the cached rerun.

Data: a class-balanced subset of the real Imagenette val JPEGs (``$RISKDECOMP_SHARED`` or ``../shared``:
``data/imagenette2-224-subset/imagenette2_224_val.tar.gz``), extracted to a temp dir as an imagefolder
(``train/<wnid>/`` + ``test/<wnid>/``, half each) and loaded with ``load_dataset("imagefolder:...")``.

Measured for one timm model (``pretrained=False``: nothing is downloaded), same batch size and torch threads:

* ``featurize_<model>``: seconds of ``riskdecomp.features.cache.featurize`` (decode + transform + forward + checksummed
  cache write of both splits; fresh cache dir; the encoder is built beforehand and passed in, so model building
  is not counted) against ``baseline_seconds``: the same module's forward pass over the same images already
  decoded and transformed into tensors in memory. ``ratio`` = baseline / featurize = featurize's rate as a
  fraction of the pure-forward rate (target >= 0.90). The baseline is timed once before and once after the
  featurize call and averaged, so a drift in machine load hits both sides alike.
* ``featurize_<model>_cached``: the second ``featurize`` call, made the way the runner makes it (no encoder
  passed: the encoder is built to get its cache key, then both splits are read and checksum-verified) against the
  first call as baseline; ``ratio`` = first / second (target >= 50). The notes also give the cached read alone
  (encoder passed).

* ``featurize_group4`` (:func:`bench_featurize_group`): four encoders that share preprocessing featurized in one
  decoding pass (``featurize_group``) vs one by one vs their forward passes alone (target: grouped <= 1.3x forward).

Run: ``python benchmarks/bench_featurize.py [--quick] [--model resnet50 | --group]``.
"""

from __future__ import annotations

import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    bench_device,
    current_rss_mb,
    peak_rss_mb,
    row,
    shared_dir,
    synchronize,
)

FULL_MODELS = ("resnet50", "vit_small_patch16_224")
QUICK_MODELS = ("test_resnet", "test_vit")  # timm's tiny test architectures: seconds, not minutes
VAL_TARBALL = Path("data") / "imagenette2-224-subset" / "imagenette2_224_val.tar.gz"


def extract_subset(tarball: Path, dest: Path, n_train: int, n_test: int) -> Path:
    """Extract a class-balanced subset of an ``val/<class>/<file>`` tarball into ``dest/{train,test}/<class>/``.

    Per class, the first files in archive order go to train, the next ones to test (``n_* // n_classes`` each,
    the remainder spread over the first classes). Members are streamed: the archive stays packed.
    """
    with tarfile.open(tarball, "r:gz") as tf:
        members = [m for m in tf.getmembers() if m.isfile() and len(Path(m.name).parts) == 3]
        by_class: dict = {}
        for m in members:
            by_class.setdefault(Path(m.name).parts[1], []).append(m)
        classes = sorted(by_class)
        want = {}
        for split, n in (("train", n_train), ("test", n_test)):
            q, r = divmod(n, len(classes))
            want[split] = {c: q + (i < r) for i, c in enumerate(classes)}
        for c in classes:
            files = sorted(by_class[c], key=lambda m: m.name)
            ntr, nte = want["train"][c], want["test"][c]
            for split, chunk in (("train", files[:ntr]), ("test", files[ntr:ntr + nte])):
                if not chunk:
                    continue
                folder = dest / split / c
                folder.mkdir(parents=True, exist_ok=True)
                for m in chunk:
                    src = tf.extractfile(m)
                    (folder / Path(m.name).name).write_bytes(src.read())
    return dest


def _forward_all(module, tensors, batch_size: int, device: str = "cpu") -> float:
    """Seconds of the pure forward pass over preloaded tensors, with the settings ``featurize`` uses on that
    device (on CUDA: tensors already on the GPU, channels-last, bfloat16 autocast)."""
    import torch

    cuda = device.startswith("cuda")
    synchronize(device)
    t0 = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
        for x in tensors:
            for i in range(0, len(x), batch_size):
                module(x[i:i + batch_size])
    synchronize(device)
    return time.perf_counter() - t0


def bench_featurize(model: str = "resnet50", n_images: int = 128, batch_size: int = 32, threads: int = 0,
                    quick: bool = False) -> list:
    """Rows ``featurize_<model>`` and ``featurize_<model>_cached`` (see the module docstring)."""
    import numpy as np
    import torch

    from riskdecomp.features.cache import featurize
    from riskdecomp.features.datasets import load_dataset
    from riskdecomp.features.encoders import build_encoder
    from riskdecomp.zoo import TimmEntry

    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    device = bench_device()
    short = model.split(".")[0].replace("_patch16_224", "")
    shared = shared_dir()
    if shared is None or not (shared / VAL_TARBALL).is_file():
        note = "skipped: shared data not found (set RISKDECOMP_SHARED)"
        return [row(f"featurize_{short}", notes=note), row(f"featurize_{short}_cached", notes=note)]
    with tempfile.TemporaryDirectory(prefix="rd-bench-feat-") as tmp:
        tmp = Path(tmp)
        n_train = n_images // 2
        extract_subset(shared / VAL_TARBALL, tmp / "images", n_train, n_images - n_train)
        ds = load_dataset(f"imagefolder:{tmp / 'images'}")
        entry = TimmEntry(name=f"bench-{short}", source="timm", model=model, pretrained=False,
                          representation="pooled")
        encoder = build_encoder(entry, device=device, progress=False)
        module = encoder.module.to(device).eval()
        if device.startswith("cuda"):
            module = module.to(memory_format=torch.channels_last)
        # preloaded input of the baseline: decoded + transformed once, outside any timing
        t0 = time.perf_counter()
        tensors = [torch.stack([s.with_transform(encoder.transform)[i][0] for i in range(len(s))])
                   for s in (ds.train, ds.test)]
        decode_s = time.perf_counter() - t0
        if device.startswith("cuda"):
            tensors = [t.to(device).contiguous(memory_format=torch.channels_last) for t in tensors]
        _forward_all(module, [tensors[0][:batch_size]], batch_size, device)  # warm-up (allocator, kernels)
        base1 = _forward_all(module, tensors, batch_size, device)
        kw = dict(cache_dir=tmp / "cache", device=device, batch_size=batch_size, progress=False)
        t0 = time.perf_counter()
        first = featurize(entry, ds, encoder=encoder, **kw)
        first_s = time.perf_counter() - t0
        base2 = _forward_all(module, tensors, batch_size, device)
        baseline = (base1 + base2) / 2
        t0 = time.perf_counter()
        cached_read = featurize(entry, ds, encoder=encoder, **kw)
        cached_read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        second = featurize(entry, ds, **kw)  # as the runner calls it: builds the encoder for its cache key
        second_s = time.perf_counter() - t0
        same = bool(np.array_equal(first.x_train, second.x_train) and np.array_equal(first.x_test, second.x_test)
                    and np.array_equal(first.x_train, cached_read.x_train))
        n = len(ds.train) + len(ds.test)
        size = (f"{n} JPEGs {tuple(tensors[0].shape[-2:])} bs{batch_size} threads{threads} d{first.x_train.shape[1]}"
                f" {device}")
        ratio = baseline / first_s
        feat = row(f"featurize_{short}", size=size, seconds=first_s, baseline_seconds=baseline, ratio=ratio,
                   target="ratio >= 0.90 (featurize rate / pure-forward rate)", met=ratio >= 0.90,
                   notes=(f"featurize {n / first_s:.1f} img/s vs forward {n / baseline:.1f} img/s "
                          f"(forward before/after: {base1:.2f}/{base2:.2f} s); decode+transform alone "
                          f"{n / decode_s:.1f} img/s; forward_passes={first.forward_passes}"),
                   images_per_s=n / first_s, forward_images_per_s=n / baseline, model=model)
        cratio = first_s / second_s
        cached = row(f"featurize_{short}_cached", size=size, seconds=second_s, baseline_seconds=first_s,
                     ratio=cratio, target="ratio >= 50 (first call / cached call)", met=cratio >= 50,
                     notes=(f"cached call incl. building the encoder for its key; cached read alone "
                            f"{cached_read_s:.3f} s ({first_s / cached_read_s:.0f}x); forward_passes="
                            f"{second.forward_passes}; identical arrays: {same}"),
                     identical=same, model=model)
        if second.forward_passes or not same:
            cached["met"] = False
        feat["rss_mb_end"] = round(current_rss_mb(), 1)
        feat["peak_rss_mb_self"] = round(peak_rss_mb(), 1)
        return [feat, cached]


GROUP_MODELS = ("resnet18", "resnet34", "efficientnet_b0", "regnety_002")  # one preprocessing at image_size 224


def bench_featurize_group(models=GROUP_MODELS, n_images: int = 128, batch_size: int = 32, image_size: int = 224,
                          threads: int = 0, quick: bool = False) -> list:
    """Row ``featurize_group4``: decode once, many encoders (``features.featurize_group``).

    Four timm encoders (``pretrained=False``) given the same ``image_size`` -- resize + center crop to that side,
    bicubic, ImageNet mean/std: one preprocessing key, so one group -- featurize both splits of the Imagenette
    subset, measured side by side in this process: ``seconds`` = the group pass (one decode per image, fresh cache,
    encoders built beforehand), ``one_by_one_seconds`` = ``featurize`` per encoder (today's way: a decode per image
    per encoder), ``baseline_seconds`` = the four forward passes alone over the images already decoded and
    transformed into tensors (timed before and after, averaged). ``ratio`` = grouped / forward (target <= 1.3).
    On CUDA the group pass decodes the JPEGs on the device (``decode="auto"``)."""
    import numpy as np
    import torch

    from riskdecomp.features.cache import featurize, featurize_group
    from riskdecomp.features.datasets import load_dataset
    from riskdecomp.features.decode import device_plan, preprocessing_key
    from riskdecomp.features.encoders import build_encoder
    from riskdecomp.zoo import TimmEntry

    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    device = bench_device()
    name = f"featurize_group{len(models)}"
    shared = shared_dir()
    if shared is None or not (shared / VAL_TARBALL).is_file():
        return [row(name, notes="skipped: shared data not found (set RISKDECOMP_SHARED)")]
    with tempfile.TemporaryDirectory(prefix="rd-bench-group-") as tmp:
        tmp = Path(tmp)
        n_train = n_images // 2
        extract_subset(shared / VAL_TARBALL, tmp / "images", n_train, n_images - n_train)
        ds = load_dataset(f"imagefolder:{tmp / 'images'}")
        entries = [TimmEntry(name=f"bench-{m}", source="timm", model=m, pretrained=False, representation="pooled",
                             image_size=image_size) for m in models]
        encoders = {e.name: build_encoder(e, device=device, progress=False) for e in entries}
        keys = {preprocessing_key(enc.transform) for enc in encoders.values()}
        if len(keys) != 1:
            return [row(name, notes=f"failed: the {len(models)} encoders do not share preprocessing")]
        cuda = device.startswith("cuda")
        modules = []
        for enc in encoders.values():
            m = enc.module.to(device).eval()
            modules.append(m.to(memory_format=torch.channels_last) if cuda else m)
        transform = next(iter(encoders.values())).transform
        tensors = [torch.stack([s.with_transform(transform)[i][0] for i in range(len(s))]) for s in (ds.train, ds.test)]
        if cuda:
            tensors = [t.to(device).contiguous(memory_format=torch.channels_last) for t in tensors]

        def forward_all() -> float:
            return sum(_forward_all(m, tensors, batch_size, device) for m in modules)

        for m in modules:  # warm-up (allocator, kernels)
            _forward_all(m, [tensors[0][:batch_size]], batch_size, device)
        base1 = forward_all()
        kw = dict(device=device, batch_size=batch_size, progress=False)
        t0 = time.perf_counter()
        grouped = featurize_group(entries, ds, cache_dir=tmp / "group", encoders=encoders, **kw)
        grouped_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        single = {e.name: featurize(e, ds, cache_dir=tmp / "single", encoder=encoders[e.name], **kw)
                  for e in entries}
        single_s = time.perf_counter() - t0
        base2 = forward_all()
        baseline = (base1 + base2) / 2
        same = all(np.array_equal(grouped[n].x_train, single[n].x_train) and
                   np.array_equal(grouped[n].x_test, single[n].x_test) for n in grouped)
        n = len(ds.train) + len(ds.test)
        decode = "device" if device_plan(ds.train, transform, device) is not None else "pil"
        size = (f"{len(models)} encoders x {n} JPEGs {tuple(tensors[0].shape[-2:])} bs{batch_size} threads{threads} "
                f"{device}")
        ratio = grouped_s / baseline
        return [row(name, size=size, seconds=grouped_s, baseline_seconds=baseline, ratio=ratio,
                    target="ratio <= 1.3 (grouped featurize time / the encoders' summed forward time)",
                    met=ratio <= 1.3 and same,
                    notes=(f"grouped {grouped_s:.2f} s, one-by-one {single_s:.2f} s ({single_s / baseline:.2f}x "
                           f"forward), forward alone {baseline:.2f} s (before/after: {base1:.2f}/{base2:.2f} s); "
                           f"decode={decode}; identical features grouped vs one-by-one: {same}; models: "
                           f"{', '.join(models)}"),
                    one_by_one_seconds=round(single_s, 4), one_by_one_ratio=round(single_s / baseline, 4),
                    identical=same, decode=decode, models=list(models))]


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model", action="append", help="timm architecture (repeatable)")
    p.add_argument("--n-images", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--group", action="store_true", help="the 4-encoder group row instead (bench_featurize_group)")
    a = p.parse_args(argv)
    if a.group:
        print(json.dumps(bench_featurize_group(**featurize_kwargs(a.quick, a.n_images, a.batch_size)), indent=1))
        return
    models = a.model or (QUICK_MODELS if a.quick else FULL_MODELS)
    rows = []
    for m in models:
        rows += bench_featurize(m, **featurize_kwargs(a.quick, a.n_images, a.batch_size))
    print(json.dumps(rows, indent=1))


def featurize_kwargs(quick: bool, n_images=None, batch_size=None) -> dict:
    """Sizes: full = 128 JPEGs (64 train + 64 test), batch 32 on CPU; 2048 JPEGs, batch 256 on a GPU (a CPU-sized
    run would time kernel launches, not throughput); quick = 20 JPEGs, batch 8."""
    gpu = bench_device().startswith("cuda")
    full_n, full_bs = (2048, 256) if gpu else (128, 32)
    return {"n_images": n_images or (20 if quick else full_n), "batch_size": batch_size or (8 if quick else full_bs),
            "quick": quick}


if __name__ == "__main__":
    main()

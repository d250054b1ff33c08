"""Build riskdecomp/data/cifar10_mini.npz, the embedded default dataset, from the CIFAR-10 JPEG tarballs.

    python scripts/build_cifar10_mini.py [--src $RISKDECOMP_SHARED/data/cifar10-jpg] [--train-per-class 500]
                                         [--test-per-class 200]

The tarballs (see their SOURCE.txt) are extracted to a temporary folder and checked against their published
SHA-256; the first N files of each class folder (by the source's numbering, 0000.jpg, 0001.jpg, ...) are kept, as
their original JPEG bytes (32x32, no re-encoding: the package holds byte-identical copies of the source files).
The .npz holds only plain arrays (no pickle): ``jpeg`` (uint8, all files concatenated), ``offsets`` (int64, n+1),
``labels`` (int64, CIFAR-10's conventional label index), ``split`` (uint8, 0 train / 1 test), ``classes`` (str); image
``k`` of class ``c`` in a split is the source file ``<split>/<c>/<k:04d>.jpg``. Rebuilding gives the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TARBALLS = {  # from SOURCE.txt
    "train": ("cifar10_train_jpg.tar.gz", "fe323be6cf40ba16fffeee9072f5f1e3f991fba84846f267e3559069a49e20aa"),
    "test": ("cifar10_test_jpg.tar.gz", "4b250120166adc690b12f1ad5ed1aa61b1a4f178e510a0c2e2647b4f2b4a4c49"),
}
ROOT = Path(__file__).resolve().parents[1]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build(src: Path, out: Path, per_class: dict) -> dict:
    blobs, labels, splits = [], [], []
    with tempfile.TemporaryDirectory(prefix="cifar10-mini-") as tmp:
        for s, (split, (fname, digest)) in enumerate(TARBALLS.items()):
            tar_path = src / fname
            if _sha256(tar_path) != digest:
                raise SystemExit(f"{tar_path}: SHA-256 differs from SOURCE.txt")
            wanted = {f"{split}/{c}/{i:04d}.jpg" for c in CLASSES for i in range(per_class[split])}
            with tarfile.open(tar_path, "r:gz") as tar:
                members = [m for m in tar.getmembers() if m.isfile() and m.name.lstrip("./") in wanted]
                tar.extractall(tmp, members=members, filter="data")
            for label, c in enumerate(CLASSES):
                for i in range(per_class[split]):
                    rel = f"{split}/{c}/{i:04d}.jpg"
                    data = (Path(tmp) / rel).read_bytes()
                    blobs.append(np.frombuffer(data, dtype=np.uint8))
                    labels.append(label)
                    splits.append(s)
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    arrays = {"jpeg": np.concatenate(blobs), "offsets": offsets, "labels": np.asarray(labels, np.int64),
              "split": np.asarray(splits, np.uint8), "classes": np.asarray(CLASSES)}
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # uncompressed: JPEG bytes do not compress further, and the bytes are reproducible
    out.write_bytes(buf.getvalue())
    return {"path": str(out), "bytes": out.stat().st_size, "images": len(labels), "sha256": _sha256(out)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(os.environ.get("RISKDECOMP_SHARED", ROOT.parent / "shared"))
    ap.add_argument("--src", type=Path, default=shared / "data" / "cifar10-jpg")
    ap.add_argument("--out", type=Path, default=ROOT / "riskdecomp" / "data" / "cifar10_mini.npz")
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=200)
    a = ap.parse_args(argv)
    print(build(a.src, a.out, {"train": a.train_per_class, "test": a.test_per_class}))


if __name__ == "__main__":
    main()

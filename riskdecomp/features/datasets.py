"""Labeled image datasets, named by a spec string.

Specs:
  ``cifar10-mini``      the default: a class-balanced subset of CIFAR-10 shipped with the package (runs offline):
                        5,000 train images (the first 500 of each class) and 2,000 test images (the first 200 of
                        each class of the CIFAR-10 test set), 32x32 RGB, stored as the source JPEG files' bytes
                        (``riskdecomp/data/cifar10_mini.npz``, built by ``scripts/build_cifar10_mini.py``; see
                        ``riskdecomp/data/CIFAR10_MINI_SOURCE.txt`` for provenance, license and citation).
  ``digits``            scikit-learn's bundled 8x8 digits, upsampled to 32x32 RGB; fixed stratified
                        70/30 train/test split. Embedded: needs no files, runs offline (quick runs, tests).
  ``imagefolder:PATH``  ``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` (``val/`` is accepted for test).
  ``cifar10:PATH``      torchvision's CIFAR-10 on disk (``--download`` fetches it when online). torchvision
                        reads the official python batches only after checking their MD5 against the published
                        ones, so no unverified pickle is ever loaded.

A dataset carries its class names, its seed and a fingerprint (used in feature-cache keys). No split depends on
the seed (digits' split is fixed, the others come from the files), so the fingerprint leaves it out: changing
``--seed`` does not recompute features. Each split is a
``torch.utils.data.Dataset`` yielding ``(image, label)`` where ``image`` is a PIL RGB image passed through the
split's ``transform`` when one is set.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from riskdecomp.utils.errors import DatasetError

DEFAULT_DATASET = "cifar10-mini"
#: The embedded CIFAR-10 subset and the SHA-256 of its bytes (checked at load: a damaged install is an error).
CIFAR10_MINI = Path(__file__).resolve().parents[1] / "data" / "cifar10_mini.npz"
CIFAR10_MINI_SHA256 = "63bde31620711236a2c6f0e5e379e9a7719ab391e95c8324e298cc5d7990ef52"
DIGITS_SPLIT_SEED = 0  # digits' train/test split is fixed: it does not follow --seed
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
SPLITS = ("train", "test")


class ImageSplit(torch.utils.data.Dataset):
    """One split of a dataset. Subclasses implement :meth:`load_image`."""

    def __init__(self, name: str, split: str, classes: Sequence[str], labels: np.ndarray):
        self.name = name
        self.split = split
        self.classes = list(classes)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform: Optional[Callable] = None

    def __len__(self) -> int:
        return len(self.labels)

    def load_image(self, index: int) -> Image.Image:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int):
        img = self.load_image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])

    def with_transform(self, transform: Optional[Callable]) -> "ImageSplit":
        """A shallow copy of this split that applies ``transform`` to each image."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.transform = transform
        return other

    def to_uint8(self, size: Optional[int] = None) -> torch.Tensor:
        """All images as one uint8 tensor (N, 3, H, W), optionally resized to ``size`` x ``size``.

        Meant for small datasets (pretraining on tiny images); it holds the whole split in memory.
        """
        out = []
        for i in range(len(self)):
            img = self.load_image(i)
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            out.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1))
        return torch.stack(out) if out else torch.zeros((0, 3, size or 1, size or 1), dtype=torch.uint8)


class ArraySplit(ImageSplit):
    """A split held in memory as a uint8 array (N, H, W, 3)."""

    def __init__(self, name, split, classes, images: np.ndarray, labels):
        super().__init__(name, split, classes, labels)
        self.images = np.ascontiguousarray(images, dtype=np.uint8)

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index], mode="RGB")

    def to_uint8(self, size: Optional[int] = None) -> torch.Tensor:
        x = torch.from_numpy(self.images).permute(0, 3, 1, 2).contiguous()
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True,
                                                align_corners=False).round().clamp(0, 255).to(torch.uint8)
        return x


class FileSplit(ImageSplit):
    """A split whose images are files on disk."""

    def __init__(self, name, split, classes, paths: Sequence[Path], labels):
        super().__init__(name, split, classes, labels)
        self.paths = [Path(p) for p in paths]

    def load_image(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            raise DatasetError(f"{path}: unreadable or corrupt image ({type(exc).__name__}: {exc})") from None


@dataclass
class ImageDataset:
    """A labeled dataset: two splits, class names, a seed and a fingerprint for cache keys."""

    name: str
    classes: list
    train: ImageSplit
    test: ImageSplit
    seed: int = 0
    fingerprint: str = ""
    skipped: list = field(default_factory=list)  # corrupt files skipped (on_corrupt="skip")

    def split(self, split: str) -> ImageSplit:
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
        return self.train if split == "train" else self.test

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def native_size(dataset: Optional[ImageDataset]) -> Optional[int]:
    """Shorter side of the dataset's first train image (None without a dataset)."""
    if dataset is None or not len(dataset.train):
        return None
    return min(dataset.train.load_image(0).size)


def _fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def load_digits_dataset(size: int = 32, test_size: float = 0.3, seed: int = 0) -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits, upsampled (bilinear) to ``size`` and made 3-channel.

    The stratified split is fixed (``DIGITS_SPLIT_SEED``); ``seed`` is only recorded on the dataset."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    imgs = (d.images / 16.0 * 255.0).round().astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im, mode="L").resize((size, size), Image.BILINEAR)) for im in imgs])
    big = np.repeat(big[..., None], 3, axis=-1)
    idx = np.arange(len(big))
    tr, te = train_test_split(idx, test_size=test_size, stratify=d.target,
                              random_state=DIGITS_SPLIT_SEED)
    classes = [str(c) for c in range(10)]
    name = "digits"
    return ImageDataset(
        name=name, classes=classes, seed=seed,
        train=ArraySplit(name, "train", classes, big[tr], d.target[tr]),
        test=ArraySplit(name, "test", classes, big[te], d.target[te]),
        fingerprint=_fingerprint("digits-v2", size, test_size, DIGITS_SPLIT_SEED),
    )


def _scan_folder(split_dir: Path, classes: Optional[list]) -> tuple[list, list[Path], list[int]]:
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = found
    paths, labels = [], []
    index = {c: i for i, c in enumerate(classes)}
    for c in found:
        if c not in index:
            raise DatasetError(f"{split_dir / c}: class {c!r} is absent from the train split")
        for root, _dirs, files in os.walk(split_dir / c):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    paths.append(Path(root) / f)
                    labels.append(index[c])
    return classes, paths, labels


def _check_decodable(paths, labels, on_corrupt: str):
    keep_p, keep_l, skipped = [], [], []
    for p, l in zip(paths, labels):
        try:
            with Image.open(p) as img:
                img.convert("RGB").load()
            keep_p.append(p)
            keep_l.append(l)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            if on_corrupt == "error":
                raise DatasetError(f"{p}: unreadable or corrupt image ({type(exc).__name__}: {exc})") from None
            skipped.append(str(p))
    return keep_p, keep_l, skipped


def load_imagefolder(path, seed: int = 0, on_corrupt: str = "error") -> ImageDataset:
    """``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` (or ``PATH/val``).

    ``on_corrupt``: ``"error"`` (default) stops at the first corrupt image, naming it, when it is read;
    ``"skip"`` decodes every image up front, drops the unreadable ones with a warning and records them in
    ``dataset.skipped``.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"imagefolder:{path}: no such directory")
    train_dir = root / "train"
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DatasetError(f"imagefolder:{path}: expected sub-folders train/ and test/ (or val/)")
    classes, tr_paths, tr_labels = _scan_folder(train_dir, None)
    _, te_paths, te_labels = _scan_folder(test_dir, classes)
    skipped = []
    if on_corrupt == "skip":
        tr_paths, tr_labels, s1 = _check_decodable(tr_paths, tr_labels, on_corrupt)
        te_paths, te_labels, s2 = _check_decodable(te_paths, te_labels, on_corrupt)
        skipped = s1 + s2
        if skipped:
            warnings.warn(f"imagefolder:{path}: skipped {len(skipped)} corrupt image(s), e.g. {skipped[0]}")
    elif on_corrupt != "error":
        raise DatasetError(f"on_corrupt={on_corrupt!r}: expected 'error' or 'skip'")
    for split, paths in (("train", tr_paths), ("test", te_paths)):
        if not paths:
            raise DatasetError(f"imagefolder:{path}: the {split} split has no images")
    name = f"imagefolder:{root.resolve()}"
    stat = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in tr_paths + te_paths]
    short = root.resolve().name
    return ImageDataset(
        name=short, classes=classes, seed=seed,
        train=FileSplit(short, "train", classes, tr_paths, tr_labels),
        test=FileSplit(short, "test", classes, te_paths, te_labels),
        fingerprint=_fingerprint(name, stat), skipped=skipped,
    )


def load_cifar10(path, download: bool = False, seed: int = 0) -> ImageDataset:
    """torchvision's CIFAR-10 under ``PATH`` (``download=True`` fetches it when online)."""
    from torchvision.datasets import CIFAR10

    root = Path(path).expanduser()
    try:
        tr = CIFAR10(str(root), train=True, download=download)
        te = CIFAR10(str(root), train=False, download=download)
    except RuntimeError as exc:
        raise DatasetError(f"cifar10:{path}: {exc} (pass --download when online)") from None
    classes = list(tr.classes)
    name = "cifar10"
    return ImageDataset(
        name=name, classes=classes, seed=seed,
        train=ArraySplit(name, "train", classes, tr.data, np.asarray(tr.targets)),
        test=ArraySplit(name, "test", classes, te.data, np.asarray(te.targets)),
        fingerprint=_fingerprint("cifar10-torchvision", str(root.resolve())),
    )


def load_cifar10_mini(seed: int = 0, path: Path = CIFAR10_MINI) -> ImageDataset:
    """The embedded CIFAR-10 subset (``cifar10-mini``): 500 train / 200 test images per class, 32x32 RGB.

    The file holds plain arrays only (read with ``allow_pickle=False``) and must match ``CIFAR10_MINI_SHA256``.
    """
    import io

    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(f"cifar10-mini: cannot read the embedded data {path} ({exc.strerror}); "
                           "reinstall riskdecomp") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != CIFAR10_MINI_SHA256:
        raise DatasetError(f"cifar10-mini: {path} is damaged (SHA-256 {digest[:12]}..., expected "
                           f"{CIFAR10_MINI_SHA256[:12]}...); reinstall riskdecomp")
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        jpeg, offsets, labels, split = z["jpeg"], z["offsets"], z["labels"], z["split"]
        classes = [str(c) for c in z["classes"]]
    images = np.empty((len(labels), 32, 32, 3), dtype=np.uint8)
    for i in range(len(labels)):
        with Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())) as img:
            images[i] = np.asarray(img.convert("RGB"))
    name = "cifar10-mini"
    tr, te = split == 0, split == 1
    return ImageDataset(
        name=name, classes=classes, seed=seed,
        train=ArraySplit(name, "train", classes, images[tr], labels[tr]),
        test=ArraySplit(name, "test", classes, images[te], labels[te]),
        fingerprint=_fingerprint("cifar10-mini", digest),
    )


def load_dataset(spec: str, *, download: bool = False, on_corrupt: str = "error", seed: int = 0) -> ImageDataset:
    """Load a dataset from its spec string (see the module docstring)."""
    spec = str(spec)
    kind, _, arg = spec.partition(":")
    if kind == "digits" and not arg:
        return load_digits_dataset(seed=seed)
    if kind == "cifar10-mini" and not arg:
        return load_cifar10_mini(seed=seed)
    if kind == "imagefolder" and arg:
        return load_imagefolder(arg, seed=seed, on_corrupt=on_corrupt)
    if kind == "cifar10" and arg:
        return load_cifar10(arg, download=download, seed=seed)
    raise DatasetError(f"unknown dataset {spec!r}: expected 'cifar10-mini', 'digits', "
                       "'imagefolder:PATH' or 'cifar10:PATH'")

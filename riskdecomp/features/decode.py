"""Input pipelines of encoders: which encoders share one (decode once, many encoders) and decoding JPEGs on the
device the encoders run on.

**Preprocessing keys.** :func:`preprocessing_key` describes an encoder's eval transform by its content: for a
torchvision ``Compose`` (timm's and torch.hub's transforms) the class and public settings of every step (resize
size and interpolation, crop, normalization mean/std, ...); for riskdecomp's own ``eval_transform`` the attribute
``preprocessing_key`` it carries. Two encoders with equal keys are fed bit-identical tensors for the same image, so
:func:`riskdecomp.features.cache.featurize_group` decodes each batch once for all of them. A transform this module cannot
describe (a ``Lambda``, a user function, an unknown step holding objects) gets a key unique to the object: it is
never grouped with another, which costs speed, never correctness.

**Device decoding.** On CUDA, decoding JPEGs with PIL on the CPU caps featurization at a few hundred images/s while
the forward pass runs at thousands. :func:`device_plan` decides, per split, whether to decode on the device: only
for files on disk (:class:`~riskdecomp.features.datasets.FileSplit`) that are all ``.jpg``/``.jpeg`` and a transform of the
form ``[Resize] [CenterCrop] ToTensor Normalize`` (what timm and torch.hub encoders use); anything else, and any
device other than CUDA, takes today's CPU path (PIL decode + the transform in loader workers). On the device path
the loader workers only read encoded bytes (:class:`EncodedFiles`, batches collated as lists of 1-D uint8 tensors),
``torchvision.io.decode_jpeg(list, device=...)`` decodes the batch on the device, and :meth:`DevicePreprocess.apply`
runs the transform as tensor ops there (antialiased resize on uint8 -- torchvision's tensor counterpart of PIL's
resize --, center crop, scale to [0, 1], normalize). The result is close to, not bit-equal with, the PIL path
(resize rounding and the JPEG IDCT differ slightly: see tests/test_group_featurize.py for the tolerance). A batch
the device decoder rejects (a CMYK or corrupt file behind a ``.jpg`` name) is decoded with PIL and the encoder's
own transform instead, with a warning. Both paths run on CPU tensors too (``device="cpu"``), which is how the
device path is tested without a GPU.
"""

from __future__ import annotations

import enum
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from riskdecomp.features.datasets import FileSplit
from riskdecomp.utils.errors import DatasetError

log = logging.getLogger(__name__)
JPEG_SUFFIXES = (".jpg", ".jpeg")


# ----------------------------------------------------------------------------------------------- grouping
def _plain(v):
    """A JSON-able description of a transform setting, or raise TypeError when it has none."""
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, enum.Enum):
        return f"{type(v).__name__}.{v.name}"
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    raise TypeError(type(v).__name__)


def _step_key(step) -> Optional[list]:
    """Class and public settings of one transform step; None when a setting is not plain data (a function, a
    module): such a step cannot be compared by content."""
    fields = {k: v for k, v in vars(step).items() if not k.startswith("_") and k != "training"}
    try:
        return [f"{type(step).__module__}.{type(step).__qualname__}", {k: _plain(v) for k, v in sorted(fields.items())}]
    except TypeError:
        return None


def preprocessing_key(transform) -> str:
    """A string equal for two transforms exactly when they are known to map an image to the same tensor (see the
    module docstring); a transform without a content description gets a key of its own."""
    from torchvision.transforms import Compose

    key = getattr(transform, "preprocessing_key", None)
    if isinstance(key, str):
        return key
    if isinstance(transform, Compose):
        steps = [_step_key(t) for t in transform.transforms]
        if None not in steps:
            return json.dumps(steps, sort_keys=True)
    return f"object:{id(transform)}"


# ----------------------------------------------------------------------------------------------- device decoding
@dataclass(frozen=True)
class DevicePreprocess:
    """An eval transform ``[Resize(resize, interpolation)] [CenterCrop(crop)] ToTensor Normalize(mean, std)`` as
    tensor ops on decoded uint8 images (on any device)."""

    resize: Optional[tuple]  # torchvision Resize ``size`` (an int list: shorter side, or (h, w)); None: no resize
    max_size: Optional[int]
    interpolation: str  # "bilinear" | "bicubic"
    crop: Optional[tuple]  # (h, w); None: no crop
    mean: tuple
    std: tuple

    @classmethod
    def from_transform(cls, transform) -> Optional["DevicePreprocess"]:
        """The tensor-op equivalent of ``transform``, or None when it is not of the supported form."""
        from torchvision import transforms as T

        if not isinstance(transform, T.Compose):
            return None
        steps = list(transform.transforms)
        resize = crop = None
        interp, max_size = "bilinear", None
        if steps and isinstance(steps[0], T.Resize):
            r = steps.pop(0)
            mode = getattr(r.interpolation, "value", r.interpolation)
            if mode not in ("bilinear", "bicubic") or r.antialias is False:
                return None
            size = r.size if isinstance(r.size, (list, tuple)) else [r.size]
            resize, interp, max_size = tuple(int(s) for s in size), mode, r.max_size
        if steps and isinstance(steps[0], T.CenterCrop):
            c = steps.pop(0).size
            crop = (int(c[0]), int(c[-1])) if isinstance(c, (list, tuple)) else (int(c), int(c))
        if len(steps) != 2 or type(steps[0]).__name__ not in ("ToTensor", "MaybeToTensor") \
                or not isinstance(steps[1], T.Normalize) or steps[1].inplace:
            return None
        mean, std = (tuple(float(v) for v in torch.as_tensor(a).flatten()) for a in (steps[1].mean, steps[1].std))
        if len(mean) != 3 or len(std) != 3:
            return None
        return cls(resize, max_size, interp, crop, mean, std)

    def apply(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decoded uint8 images (3, H_i, W_i), all on one device -> the normalized float batch (N, 3, h, w).

        Resize is torchvision's tensor resize with ``antialias=True`` on uint8 (rounded back to uint8, as PIL's
        resize returns 8-bit pixels), so the arithmetic follows PIL's separable antialiased filters."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        mode = InterpolationMode(self.interpolation)
        out = []
        for img in images:
            if self.resize is not None:
                img = F.resize(img, list(self.resize), interpolation=mode, max_size=self.max_size, antialias=True)
            if self.crop is not None:
                img = F.center_crop(img, list(self.crop))
            out.append(img)
        x = torch.stack(out).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
        return x.sub_(mean).div_(std)


def is_jpeg_split(split) -> bool:
    """Files on disk, every one named ``.jpg``/``.jpeg``."""
    return isinstance(split, FileSplit) and len(split) > 0 and all(
        p.suffix.lower() in JPEG_SUFFIXES for p in split.paths)


def device_plan(split, transform, device: str, decode: str = "auto") -> Optional[DevicePreprocess]:
    """How to feed ``split`` to encoders with ``transform`` on ``device``: a :class:`DevicePreprocess` when its
    JPEGs are decoded on the device, None for the CPU path (PIL in loader workers).

    ``decode``: ``"auto"`` -- the device path on CUDA for an all-JPEG file split with a supported transform;
    ``"cpu"`` -- always the CPU path; ``"device"`` -- the device path wherever it applies, whatever the device (on
    the CPU this is how tests and benchmarks run it)."""
    if decode not in ("auto", "cpu", "device"):
        raise ValueError(f"decode={decode!r}: expected 'auto', 'cpu' or 'device'")
    if decode == "cpu" or (decode == "auto" and not str(device).startswith("cuda")):
        return None
    if not is_jpeg_split(split):
        return None
    return DevicePreprocess.from_transform(transform)


class EncodedFiles(torch.utils.data.Dataset):
    """The encoded bytes of a file split's images, as 1-D uint8 tensors (what loader workers read on the device
    path: no decoding on the CPU)."""

    def __init__(self, split):
        self.paths = list(split.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = Path(self.paths[index])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DatasetError(f"{path}: unreadable image ({exc.strerror or exc})") from None
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _as_list(batch):
    return list(batch)


def decode_batch(encoded: list, plan: DevicePreprocess, device: str, fallback=None) -> torch.Tensor:
    """Decode a batch of encoded JPEGs on ``device`` and preprocess it there. When the decoder rejects the batch,
    ``fallback(i)`` (the PIL path for batch item i) is used for each image, with a warning."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        if fallback is None:
            raise
        log.warning("device JPEG decoding failed for a batch (%s): decoding it with PIL",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return torch.stack([fallback(i) for i in range(len(encoded))]).to(device)
    return plan.apply(images)


def device_batches(split, plan: DevicePreprocess, transform, *, device: str, batch_size: int, loader_kwargs: dict):
    """Yield the preprocessed batches of ``split`` on ``device``, in order: bytes read by loader workers
    (``loader_kwargs``: num_workers etc.), decoded and transformed on the device."""
    loader = torch.utils.data.DataLoader(EncodedFiles(split), batch_size=batch_size, shuffle=False,
                                         collate_fn=_as_list, **loader_kwargs)
    start = 0
    for encoded in loader:
        first = start

        def fallback(i, first=first):
            return transform(split.load_image(first + i))

        yield decode_batch(encoded, plan, device, fallback)
        start += len(encoded)

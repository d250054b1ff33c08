"""What featurization knows of an encoder: a built, frozen :class:`Encoder` (a module that maps a batch of
preprocessed images to the entry's representation, its preprocessing transform, and an identity string for cache
keys), and what it asks of a zoo entry to get one (:class:`EncoderSpec`).

Featurization never builds an encoder itself and never imports the sources or the zoo: an entry's source builds it
(:mod:`riskdecomp.sources`, one module per source: timm's creation and preprocessing, weights files, recipes) and
every zoo entry answers :class:`EncoderSpec` through its source. Representations (``representation:`` in the zoo)
are the sources' too (:class:`riskdecomp.sources.timm.Representation`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol

from torch import nn


@dataclass
class Encoder:
    name: str
    module: nn.Module  # eval mode; forward(batch) -> (N, D) representation
    transform: Callable  # PIL image -> float tensor (3, H, W)
    identity: str  # model identity incl. weights hash and representation (part of the feature-cache key)
    # weights keys not loaded under ``strict: false``: {"missing": model keys left at their initialization,
    # "unexpected": file keys without a place in the model}; both empty for a strict load (the default)
    ignored_keys: dict = field(default_factory=lambda: {"missing": [], "unexpected": []})
    # SHA-256 of the weights used (the weights file; a recipe's cached checkpoint); None for hub weights / random init
    weights_sha256: Optional[str] = None
    # side in pixels of the images the module is fed (the transform's output; zoo ``image_size:`` overrides it), and
    # whether that is larger than the dataset's images (judged on the first train image; None without a dataset)
    input_size: Optional[int] = None
    upscaled: Optional[bool] = None


class EncoderSpec(Protocol):
    """What featurization asks of a zoo entry (every :class:`riskdecomp.sources.base.Entry` answers it through its
    source): its name, its precomputed features if it brings its own, else the identity of its encoder without
    building it (what the feature cache is keyed by) and, when the cache misses, the built encoder. The keyword
    arguments: the cache folder (a recipe's checkpoint lives there), the device, progress bars, and ``force`` (a
    recipe entry is pretrained again)."""

    name: str

    def precomputed_features(self):  # -> Optional[riskdecomp.features.cache.Features]
        ...

    def encoder_identity(self, dataset=None, *, cache_dir=None, device: str = "cpu", progress: bool = False,
                         force: bool = False) -> str:
        ...

    def build_encoder(self, dataset=None, *, cache_dir=None, device: str = "cpu", progress: bool = True,
                      force: bool = False) -> Encoder:
        ...


def build_encoder(entry: EncoderSpec, *, dataset=None, cache_dir=None, device: str = "cpu", progress: bool = True,
                  force: bool = False) -> Encoder:
    """The frozen encoder of a zoo entry, built by its source
    (:meth:`riskdecomp.sources.base.Source.encoder`: under the entry's init seed, eval mode, no gradients).
    ``force``: a recipe entry is pretrained again even when its checkpoint is cached (once per process)."""
    return entry.build_encoder(dataset, cache_dir=cache_dir, device=device, progress=progress, force=force)


def entry_identity(entry: EncoderSpec, dataset=None, *, cache_dir=None, device: str = "cpu", progress: bool = False,
                   force: bool = False) -> str:
    """What determines an entry's features, without building the model (a fully cached rerun builds nothing):
    :meth:`riskdecomp.sources.base.Source.encoder_identity` (the weights used, architecture, representation,
    options, preprocessing). Part of the feature-cache key and of the run key, so both change when the weights do."""
    return entry.encoder_identity(dataset, cache_dir=cache_dir, device=device, progress=progress, force=force)


def default_cache_dir() -> Path:
    """``$RISKDECOMP_CACHE`` or ``~/.cache/riskdecomp``."""
    return Path(os.environ.get("RISKDECOMP_CACHE", Path.home() / ".cache" / "riskdecomp")).expanduser()

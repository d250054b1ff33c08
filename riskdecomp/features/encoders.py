"""From a validated zoo entry to an :class:`Encoder`: a frozen module that maps a batch of preprocessed images to
the entry's representation, its preprocessing transform, and an identity string for cache keys.

Representations (``representation:`` in the zoo):
  ``pooled``   the model's pooled pre-logits features (timm ``num_classes=0``; a hub model's output);
  ``cls``      a ViT's class token after the final norm;  ``avg``  the mean of its patch tokens;
  ``cls+avg``  both, concatenated;  ``4xcls``  class tokens of the last 4 blocks (normed), concatenated
               (DINO's linear-evaluation protocol).

Weights are only ever read from safetensors or with ``torch.load(weights_only=True)``: a ``.pt`` that holds pickled
code is refused.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from riskdecomp.sources import source_of
from riskdecomp.sources.base import file_sha256  # noqa: F401 (re-exported)
from riskdecomp.utils.errors import RiskdecompError, WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def load_state_dict(path: Path, who: str) -> dict:
    """A state dict from ``.safetensors`` or a weights-only ``.pt``; never executes pickled code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{who}: weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise WeightsError(f"{who}: {path} is not a valid safetensors file ({exc})") from None
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        kind = type(exc).__name__
        raise WeightsError(f"{who}: refusing {path}: not a weights-only checkpoint ({kind}); "
                           "save it with safetensors or as a plain state dict") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{who}: {path} does not hold a state dict of tensors")
    return sd


class Representation(nn.Module):
    """Wraps a timm model and extracts the named representation."""

    def __init__(self, model: nn.Module, kind: str, who: str):
        super().__init__()
        self.model = model
        self.kind = kind
        if kind != "pooled" and not hasattr(model, "num_prefix_tokens"):
            raise RiskdecompError(f"{who}: representation {kind!r} needs a vision transformer "
                                  f"({type(model).__name__} has no class token); use 'pooled'")
        if kind in ("cls", "4xcls", "cls+avg") and getattr(model, "num_prefix_tokens", 0) < 1:
            raise RiskdecompError(f"{who}: representation {kind!r}: this model has no class token; use 'avg' or 'pooled'")

    def forward(self, x):
        m = self.model
        if self.kind == "pooled":
            return m(x)
        if self.kind == "4xcls":
            inter = m.forward_intermediates(x, indices=4, return_prefix_tokens=True, norm=True,
                                            output_fmt="NLC", intermediates_only=True)
            return torch.cat([prefix[:, 0] for _spatial, prefix in inter], dim=-1)
        tokens = m.forward_features(x)
        npt = m.num_prefix_tokens
        if self.kind == "cls":
            return tokens[:, 0]
        avg = tokens[:, npt:].mean(dim=1)
        if self.kind == "avg":
            return avg
        return torch.cat([tokens[:, 0], avg], dim=-1)


def _timm_transform(model: nn.Module, image_size: Optional[int] = None):
    """timm's eval preprocessing for ``model`` (resize, center crop, normalize). With ``image_size`` (the zoo's
    per-entry override) the image is resized to that side and center-cropped square, no crop margin."""
    import timm.data

    cfg = timm.data.resolve_model_data_config(model)
    if image_size:
        cfg = {**cfg, "input_size": (cfg["input_size"][0], image_size, image_size), "crop_pct": 1.0}
    transform = timm.data.create_transform(**cfg, is_training=False)
    transform.input_size = int(cfg["input_size"][-1])
    return transform


def _imagenet_transform():
    from torchvision import transforms as T

    transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    transform.input_size = 224
    return transform


def _image_size(entry, who: str) -> Optional[int]:
    """The entry's input-size override: ``image_size:``, or ``model_kwargs: {img_size: N}`` (a ViT built for N px
    is fed N px); both given and different is an error."""
    kw = getattr(entry, "model_kwargs", {}).get("img_size")
    if kw is not None and entry.image_size is not None and kw != entry.image_size:
        raise RiskdecompError(f"{who}: image_size {entry.image_size} and model_kwargs.img_size {kw} disagree")
    size = entry.image_size or kw
    return int(size) if isinstance(size, (int, float)) and not isinstance(size, bool) else None


def _native_size(dataset) -> Optional[int]:
    """Shorter side of the dataset's first train image (None without a dataset)."""
    if dataset is None or not len(dataset.train):
        return None
    return min(dataset.train.load_image(0).size)


def _drop_classifier(model: nn.Module, sd: dict) -> dict:
    """Remove the classifier weights a checkpoint may hold (the encoder is built without one)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    heads = cfg.get("classifier") or "fc"
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    own = set(model.state_dict())
    return {k: v for k, v in sd.items() if k in own or not any(k.startswith(h + ".") for h in heads)}


def _first(keys, n: int = 3) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def load_weights(model: nn.Module, sd: dict, who: str, path, arch: str, strict: bool = True) -> dict:
    """Load state dict ``sd`` (from ``path``) into ``model``; every load of user weights goes through here.

    Strict (the default): any key of the model missing from the file, any key of the file unknown to the model, or
    any shape mismatch is a WeightsError naming the entry and the first keys -- a partial load would leave layers
    at their random initialization and still produce a full leaderboard row. ``strict=False`` (the zoo's
    ``strict: false``, e.g. for a file holding extra heads) tolerates missing and unexpected keys and returns them
    (``{"missing": [...], "unexpected": [...]}``, for the run record); shape mismatches and a file of which no
    tensor fits stay errors."""
    own = model.state_dict()
    shapes = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if shapes:
        k = shapes[0]
        raise WeightsError(f"{who}: weights {path} do not fit architecture {arch!r} (shape mismatch: {k} is "
                           f"{tuple(sd[k].shape)} in the file, {tuple(own[k].shape)} in the model"
                           f"{f'; {len(shapes)} tensors differ' if len(shapes) > 1 else ''})")
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if not set(sd) & set(own):
        raise WeightsError(f"{who}: weights {path} do not fit architecture {arch!r} (no tensor of the file has a "
                           f"place in the model; the file holds {_first(sd)})")
    if strict and (missing or unexpected):
        parts = ([f"missing {_first(missing)}"] if missing else []) + (
            [f"unexpected {_first(unexpected)}"] if unexpected else [])
        raise WeightsError(f"{who}: weights {path} do not fit architecture {arch!r} ({'; '.join(parts)}); "
                           "set strict: false to load the matching tensors only")
    model.load_state_dict(sd, strict=False)
    return {"missing": missing, "unexpected": unexpected}


def _create_timm(arch: str, who: str, kwargs: dict, pretrained: bool = False, img_size: Optional[int] = None):
    """``timm.create_model`` without a classifier; unknown names and timm's own load errors become one line.

    Hub weights (``pretrained=True``) are loaded by timm *with* the classifier, i.e. with timm's strict load (with
    ``num_classes=0`` timm loads non-strictly), and the classifier is removed afterwards. ``img_size`` is passed to
    architectures that take one (ViTs: timm resamples their position embeddings); CNNs take any size as is."""
    import timm

    if "num_classes" in kwargs:
        raise RiskdecompError(f"{who}: model_kwargs: num_classes: the encoder is always built without a classifier")

    def create(**kw):
        if pretrained:
            m = timm.create_model(arch, pretrained=True, **kw)
            m.reset_classifier(0)
            return m
        return timm.create_model(arch, pretrained=False, num_classes=0, **kw)

    try:
        if img_size and "img_size" not in kwargs:
            try:
                model = create(img_size=img_size, **kwargs)
            except TypeError as exc:
                if "img_size" not in str(exc):
                    raise
                model = create(**kwargs)
        else:
            model = create(**kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise RiskdecompError(f"{who}: unknown timm architecture {arch!r}") from None
        if "state_dict" in str(exc):
            detail = " ".join(str(exc).split())[:300]
            raise WeightsError(f"{who}: timm's weights do not fit architecture {arch!r} ({detail})") from None
        raise
    except Exception as exc:
        if "Unknown model" in str(exc) or isinstance(exc, KeyError):
            raise RiskdecompError(f"{who}: unknown timm architecture {arch!r}") from None
        if "pickle" in str(exc).lower() or "weights_only" in str(exc):
            raise WeightsError(f"{who}: refusing timm's weights for {arch!r}: not a weights-only checkpoint") from None
        raise
    return model


def _load_timm_file(model: nn.Module, path, who: str, arch: str, strict: bool) -> dict:
    """A local weights file into a timm model: the architecture's own ``checkpoint_filter_fn`` (what timm applies
    to its hub weights: layout conversions, position-embedding resampling for another ``img_size``), the classifier
    dropped, then :func:`load_weights`."""
    sd = load_state_dict(path, who)
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            sd = filter_fn(dict(sd), model)
        except Exception as exc:  # a file for another architecture can trip the converter
            raise WeightsError(f"{who}: weights {path} do not fit architecture {arch!r} "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return load_weights(model, _drop_classifier(model, sd), who, path, arch, strict)


@contextmanager
def seeded_init(seed: Optional[int]):
    """Run the block with torch's CPU generator seeded with ``seed`` (None: as it is), restoring the caller's state
    afterwards: a model built inside is initialized the same way whatever ran before it in the process."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield


def build_encoder(entry, *, dataset=None, cache_dir=None, device: str = "cpu", progress: bool = True,
                  force: bool = False) -> Encoder:
    """Build the frozen encoder of a zoo entry through its source (:mod:`riskdecomp.sources`; ``features``
    entries have none: see :mod:`riskdecomp.features.cache`), under the entry's init seed (:func:`seeded_init`: a
    random initialization is the same network in every build, and the seed is part of the identity). ``force``: a recipe entry is pretrained again even when
    its checkpoint is cached (once per process)."""
    src = source_of(entry)
    if not src.has_encoder:
        raise RiskdecompError(f"model {entry.name!r}: source {entry.source!r} has no encoder to build")
    kw = dict(cache_dir=cache_dir, device=device, progress=progress, force=force)
    with seeded_init(src.init_seed(entry)):
        module, transform, ignored, sha = src.build(entry, dataset, **kw)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    sha = sha or src.weights_sha256(entry, dataset, **kw)
    size, native = getattr(transform, "input_size", None), _native_size(dataset)
    return Encoder(entry.name, module, transform, src.full_identity(entry, dataset, sha), ignored_keys=ignored,
                   weights_sha256=sha, input_size=size,
                   upscaled=None if size is None or native is None else size > native)


def entry_identity(entry, dataset=None, *, cache_dir=None, device: str = "cpu", progress: bool = False,
                   force: bool = False) -> str:
    """What determines an entry's features, without building the model (a fully cached rerun builds nothing):
    its source's :meth:`~riskdecomp.sources.base.Source.identity` of the SHA-256 of the weights used (file entries:
    the file; recipe entries: the cached checkpoint, pretrained first when it is not in ``cache_dir`` -- with
    ``force``, pretrained again), architecture, hub tag or random init and its init seed, representation, options, and the library
    version that defines the preprocessing. Part of the feature-cache key and of the run key, so both change when
    the weights do."""
    src = source_of(entry)
    if not src.has_encoder:
        raise RiskdecompError(f"model {entry.name!r}: source {entry.source!r} has no encoder")
    sha = src.weights_sha256(entry, dataset, cache_dir=cache_dir, device=device, progress=progress, force=force)
    return src.full_identity(entry, dataset, sha)


def default_cache_dir() -> Path:
    """``$RISKDECOMP_CACHE`` or ``~/.cache/riskdecomp``."""
    import os

    return Path(os.environ.get("RISKDECOMP_CACHE", Path.home() / ".cache" / "riskdecomp")).expanduser()

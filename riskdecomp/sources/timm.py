"""``source: timm``: a timm architecture with the hub's weights, a local weights file, or a random init; and what
building any timm encoder takes (the ``checkpoint`` and ``torch_hub`` sources use it too): :func:`create_timm`,
:func:`load_timm_file`, :func:`timm_transform` (timm's eval preprocessing) and :class:`Representation`.

Representations (``representation:`` in the zoo):
  ``pooled``   the model's pooled pre-logits features (timm ``num_classes=0``; a hub model's output);
  ``cls``      a ViT's class token after the final norm;  ``avg``  the mean of its patch tokens;
  ``cls+avg``  both, concatenated;  ``4xcls``  class tokens of the last 4 blocks (normed), concatenated
               (DINO's linear-evaluation protocol).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from riskdecomp.sources.base import (
    Built,
    SeededEntry,
    Source,
    file_label,
    no_ignored,
    register,
    representation_key,
    timm_version,
)
from riskdecomp.sources.weights import load_state_dict, load_weights
from riskdecomp.utils.errors import RiskdecompError, WeightsError
from riskdecomp.utils.names import check_arch


class TimmEntry(SeededEntry):
    """A timm architecture; weights from the hub (``pretrained: true``), a local file (``weights``), or a random
    initialization, which must be asked for (``pretrained: false``): an entry with neither is an error, since
    evaluating random weights by accident (``vit_small_patch16_224.dino`` without ``pretrained``) looks like a
    result. A random initialization is made by ``init_seed`` (default 0), which is part of its identity."""

    source: Literal["timm"]
    model: str
    weights: Optional[Path] = None
    pretrained: Optional[bool] = Field(None, validate_default=True)
    strict: bool = True  # false: a weights file may miss / add tensors (listed in the run record); see encoders
    image_size: Optional[int] = Field(None, ge=8, le=4096)  # input side in px (default: the model's own)
    model_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("pretrained")
    @classmethod
    def _weights_chosen(cls, v: Optional[bool], info: ValidationInfo) -> Optional[bool]:
        weights = info.data.get("weights")
        if weights is None and v is None and "weights" in info.data:
            raise ValueError("missing: write pretrained: true (the hub's weights) or pretrained: false (a random "
                             "initialization), or give weights: FILE")
        if weights is not None and v is False:
            raise ValueError("pretrained: false contradicts weights: FILE (drop one)")
        return v

    @field_validator("strict")
    @classmethod
    def _strict_needs_file(cls, v: bool, info: ValidationInfo) -> bool:
        if not v and info.data.get("weights") is None:
            raise ValueError("strict: false applies to a weights: FILE only (hub weights always load strictly)")
        return v

    @field_validator("model")
    @classmethod
    def _safe_model(cls, v: str) -> str:
        return check_arch(v, "model")


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


def timm_transform(model: nn.Module, image_size: Optional[int] = None):
    """timm's eval preprocessing for ``model`` (resize, center crop, normalize). With ``image_size`` (the zoo's
    per-entry override) the image is resized to that side and center-cropped square, no crop margin."""
    import timm.data

    cfg = timm.data.resolve_model_data_config(model)
    if image_size:
        cfg = {**cfg, "input_size": (cfg["input_size"][0], image_size, image_size), "crop_pct": 1.0}
    transform = timm.data.create_transform(**cfg, is_training=False)
    transform.input_size = int(cfg["input_size"][-1])
    return transform


def image_size_override(entry, who: str) -> Optional[int]:
    """The entry's input-size override: ``image_size:``, or ``model_kwargs: {img_size: N}`` (a ViT built for N px
    is fed N px); both given and different is an error."""
    kw = getattr(entry, "model_kwargs", {}).get("img_size")
    if kw is not None and entry.image_size is not None and kw != entry.image_size:
        raise RiskdecompError(f"{who}: image_size {entry.image_size} and model_kwargs.img_size {kw} disagree")
    size = entry.image_size or kw
    return int(size) if isinstance(size, (int, float)) and not isinstance(size, bool) else None


def _drop_classifier(model: nn.Module, sd: dict) -> dict:
    """Remove the classifier weights a checkpoint may hold (the encoder is built without one)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    heads = cfg.get("classifier") or "fc"
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    own = set(model.state_dict())
    return {k: v for k, v in sd.items() if k in own or not any(k.startswith(h + ".") for h in heads)}


def create_timm(arch: str, who: str, kwargs: dict, pretrained: bool = False, img_size: Optional[int] = None):
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


def load_timm_file(model: nn.Module, path, who: str, arch: str, strict: bool) -> dict:
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


@register
class Timm(Source):
    name = "timm"
    entry = TimmEntry
    files = ("weights",)

    def what(self, entry) -> str:
        return entry.model

    def weights_label(self, entry) -> str:
        if entry.weights is not None:
            return file_label(entry.weights)
        return "hub" if entry.pretrained else "random"

    def build(self, entry, dataset, **_) -> Built:
        who = f"model {entry.name!r}"
        ignored = no_ignored()
        if entry.weights is not None:
            if not Path(entry.weights).is_file():
                raise WeightsError(f"{who}: weights file {entry.weights} not found")
            if Path(entry.weights).suffix not in (".safetensors", ".pt", ".pth", ".bin"):
                raise WeightsError(f"{who}: weights {entry.weights}: expected .safetensors or a weights-only .pt/.pth")
            model = create_timm(entry.model, who, dict(entry.model_kwargs), img_size=image_size_override(entry, who))
            ignored = load_timm_file(model, entry.weights, who, entry.model, entry.strict)
        else:
            model = create_timm(entry.model, who, dict(entry.model_kwargs), pretrained=bool(entry.pretrained),
                                img_size=image_size_override(entry, who))
        transform = timm_transform(model, image_size_override(entry, who))
        return Built(Representation(model, entry.representation, who), transform, ignored)

    def random_init(self, entry) -> bool:
        return entry.pretrained is False or (entry.weights is not None and not entry.strict)

    def identity(self, entry, dataset, sha) -> str:
        w = f"file:{sha}" if sha else (f"hub:{entry.model}" if entry.pretrained else "random-init")
        return (f"timm|{entry.model}|{w}|{representation_key(entry)}|{sorted(entry.model_kwargs.items())}|"
                f"{timm_version()}")

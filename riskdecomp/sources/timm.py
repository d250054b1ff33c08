"""``source: timm``: a timm architecture with the hub's weights, a local weights file, or a random init."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, ValidationInfo, field_validator

from riskdecomp.pretrain.recipe import check_arch
from riskdecomp.sources import register
from riskdecomp.sources.base import (
    Built,
    SeededEntry,
    Source,
    file_label,
    no_ignored,
    representation_key,
    timm_version,
)
from riskdecomp.utils.errors import WeightsError


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
        from riskdecomp.features.encoders import (
            Representation,
            _create_timm,
            _image_size,
            _load_timm_file,
            _timm_transform,
        )

        who = f"model {entry.name!r}"
        ignored = no_ignored()
        if entry.weights is not None:
            if not Path(entry.weights).is_file():
                raise WeightsError(f"{who}: weights file {entry.weights} not found")
            if Path(entry.weights).suffix not in (".safetensors", ".pt", ".pth", ".bin"):
                raise WeightsError(f"{who}: weights {entry.weights}: expected .safetensors or a weights-only .pt/.pth")
            model = _create_timm(entry.model, who, dict(entry.model_kwargs), img_size=_image_size(entry, who))
            ignored = _load_timm_file(model, entry.weights, who, entry.model, entry.strict)
        else:
            model = _create_timm(entry.model, who, dict(entry.model_kwargs), pretrained=bool(entry.pretrained),
                                 img_size=_image_size(entry, who))
        transform = _timm_transform(model, _image_size(entry, who))
        return Built(Representation(model, entry.representation, who), transform, ignored)

    def random_init(self, entry) -> bool:
        return entry.pretrained is False or (entry.weights is not None and not entry.strict)

    def identity(self, entry, dataset, sha) -> str:
        w = f"file:{sha}" if sha else (f"hub:{entry.model}" if entry.pretrained else "random-init")
        return (f"timm|{entry.model}|{w}|{representation_key(entry)}|{sorted(entry.model_kwargs.items())}|"
                f"{timm_version()}")

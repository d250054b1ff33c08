"""``source: checkpoint``: an architecture (timm's or one of riskdecomp's backbones) + a local weights file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from riskdecomp.features.datasets import native_size
from riskdecomp.pretrain.backbones import BACKBONES, create_backbone
from riskdecomp.pretrain.checkpoint import eval_transform, load_checkpoint, sidecar_path
from riskdecomp.sources.base import (
    Built,
    SeededEntry,
    Source,
    file_label,
    file_sha256,
    no_ignored,
    register,
    representation_key,
    timm_version,
)
from riskdecomp.sources.timm import (
    Representation,
    create_timm,
    image_size_override,
    load_timm_file,
    timm_transform,
)
from riskdecomp.sources.weights import load_state_dict, load_weights
from riskdecomp.utils.errors import RiskdecompError
from riskdecomp.utils.names import check_arch


class CheckpointEntry(SeededEntry):
    """An architecture (timm name or one of riskdecomp's backbones) + a local ``.safetensors`` / ``.pt`` file."""

    source: Literal["checkpoint"]
    architecture: str
    weights: Path
    strict: bool = True  # false: the file may miss / add tensors (listed in the run record); see encoders
    image_size: Optional[int] = Field(None, ge=8, le=4096)  # input side in px (default: the model's / sidecar's)
    model_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("architecture")
    @classmethod
    def _safe_architecture(cls, v: str) -> str:
        return check_arch(v)

    @field_validator("weights")
    @classmethod
    def _safe_suffix(cls, v: Path) -> Path:
        if v.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
            raise ValueError(f"weights {str(v)!r}: expected a .safetensors (or a weights-only .pt/.pth) file")
        return v


@register
class Checkpoint(Source):
    name = "checkpoint"
    entry = CheckpointEntry
    files = ("weights",)

    def what(self, entry) -> str:
        return entry.architecture

    def weights_label(self, entry) -> str:
        return file_label(entry.weights)

    def build(self, entry, dataset, **_) -> Built:
        who = f"model {entry.name!r}"
        ignored = no_ignored()
        if entry.architecture in BACKBONES:
            if entry.representation != "pooled":
                raise RiskdecompError(f"{who}: representation {entry.representation!r}: "
                                      f"{entry.architecture} gives a pooled vector only")
            native = native_size(dataset) or 32
            if sidecar_path(entry.weights).is_file():
                # a riskdecomp-pretrained checkpoint: its sidecar knows the input size, normalization, stochastic head
                model, _recipe = load_checkpoint(entry.weights)
                transform = eval_transform(entry.weights, native, size=entry.image_size)
            else:
                model = create_backbone(entry.architecture, **entry.model_kwargs)
                ignored = load_weights(model, load_state_dict(entry.weights, who), who, entry.weights,
                                       entry.architecture, entry.strict)
                transform = eval_transform(None, native, size=entry.image_size)
            return Built(model, transform, ignored)
        try:
            model = create_timm(entry.architecture, who, dict(entry.model_kwargs),
                                img_size=image_size_override(entry, who))
        except RiskdecompError as exc:
            if "unknown timm architecture" in str(exc):
                raise RiskdecompError(f"{who}: unknown architecture {entry.architecture!r} "
                                      "(neither a timm model nor one of riskdecomp's backbones)") from None
            raise
        ignored = load_timm_file(model, entry.weights, who, entry.architecture, entry.strict)
        transform = timm_transform(model, image_size_override(entry, who))
        return Built(Representation(model, entry.representation, who), transform, ignored)

    def random_init(self, entry) -> bool:
        return not entry.strict  # tensors missing from the file stay at their initialization

    def identity(self, entry, dataset, sha) -> str:
        ident = (f"ckpt|{entry.architecture}|{sha}|{representation_key(entry)}|{sorted(entry.model_kwargs.items())}|"
                 f"{timm_version()}")
        # build() reads the riskdecomp sidecar <weights>.json (pretrain.checkpoint.sidecar_path) when there is one:
        # its normalization, image size and backbone arguments change the features, so its bytes are identity too
        sidecar = Path(entry.weights).with_name(Path(entry.weights).name + ".json")
        if entry.architecture in BACKBONES and sidecar.is_file():
            ident += f"|sidecar:{file_sha256(sidecar)}"
        return ident

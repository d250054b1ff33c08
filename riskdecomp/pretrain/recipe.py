"""A pretraining recipe: every setting that determines a pretrained encoder (validated, hashable).

The recipe's hash (:meth:`Recipe.key`) names the cached checkpoint: two zoo entries with the same recipe
share one pretraining run.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from riskdecomp.utils.names import check_arch
from riskdecomp.utils.validation import TORCH_SEED_MAX

ObjectiveName = Literal["simclr", "byol", "simsiam", "vicreg", "barlow_twins", "stochastic", "supervised", "init"]


class HeadConfig(BaseModel):
    """Projection head on top of the representation: none, linear, or an MLP (depth = number of linear layers)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["none", "linear", "mlp"] = "mlp"
    depth: int = Field(2, ge=1, le=8)
    width: int = Field(256, ge=1)
    out_dim: int = Field(64, ge=1)


class AugmentConfig(BaseModel):
    """Which augmentations make the views (each switchable)."""

    model_config = ConfigDict(extra="forbid")
    crop: bool = True
    crop_scale: tuple[float, float] = (0.4, 1.0)
    flip: bool = False
    color_jitter: bool = True
    grayscale: bool = True
    blur: bool = False


class Recipe(BaseModel):
    """Settings of one self-supervised (or baseline) pretraining run."""

    model_config = ConfigDict(extra="forbid")
    objective: ObjectiveName
    backbone: str = "smallcnn"  # the package's own small CNN, or any timm architecture name
    width: int = Field(32, ge=1)  # base channel width of smallcnn
    z_dim: int = Field(64, ge=1)  # representation dimension
    head: HeadConfig = HeadConfig()
    augment: AugmentConfig = AugmentConfig()
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(256, ge=2)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    n_views: int = Field(2, ge=2)
    temperature: float = Field(0.2, gt=0)  # simclr / stochastic
    ema: float = Field(0.99, ge=0, le=1)  # byol target momentum
    beta: float = Field(1e-3, ge=0)  # stochastic: weight of the KL term
    image_size: Optional[int] = Field(None, ge=8, le=4096)  # None: the dataset's native size
    seed: int = Field(0, ge=0, le=TORCH_SEED_MAX)  # what torch.manual_seed accepts

    @field_validator("backbone")
    @classmethod
    def _safe_backbone(cls, v: str) -> str:
        return check_arch(v, "backbone")

    def key(self) -> str:
        """Stable content hash of the recipe (all fields, defaults included)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

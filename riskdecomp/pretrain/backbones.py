"""Backbones: the package's own small CNN for tiny images, or any timm architecture.

``create_backbone(name, width=..., z_dim=...)`` returns an ``nn.Module`` mapping a normalized float batch
(N, 3, H, W) to (N, out_dim), with the attribute ``out_dim``. Its ``state_dict`` round-trips through
``create_backbone(name, **same_kwargs).load_state_dict(sd, strict=True)``, which is how ``source: checkpoint``
zoo entries rebuild a riskdecomp-pretrained encoder.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from riskdecomp.utils.errors import WeightsError

SMALLCNN = "smallcnn"
BACKBONES = (SMALLCNN,)  # riskdecomp's own architectures (anything else is a timm name)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Four 3x3 conv blocks (BatchNorm + ReLU), widths w, 2w, 4w, 4w, max-pool 2x after the first three,
    global average pool, then a linear layer to ``z_dim``: out = W . GAP(conv(x)) + b.

    At 32x32 input the feature maps are 32, 16, 8, 4 pixels wide (any input size >= 8 works).
    """

    def __init__(self, width: int = 32, z_dim: int = 64):
        super().__init__()
        w = int(width)
        self.features = nn.Sequential(
            _block(3, w), nn.MaxPool2d(2),
            _block(w, 2 * w), nn.MaxPool2d(2),
            _block(2 * w, 4 * w), nn.MaxPool2d(2),
            _block(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(4 * w, int(z_dim))
        self.out_dim = int(z_dim)
        self.width = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class TimmBackbone(nn.Module):
    """A timm model with its classifier removed (``num_classes=0``: the pooled features, ``num_features`` wide),
    followed by a linear map to ``z_dim`` when ``z_dim`` is given; ``z_dim=None`` (or 0) keeps the pooled
    features, so ``out_dim = num_features``. Weights are random (``pretrained=False``): this is a backbone to
    pretrain, never a download.
    """

    def __init__(self, name: str, z_dim: Optional[int] = None, **kwargs):
        super().__init__()
        import timm

        try:
            self.body = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        except (RuntimeError, TypeError, ValueError) as exc:  # timm raises RuntimeError for unknown names
            raise WeightsError(f"backbone {name!r}: cannot create it with timm ({exc})") from None
        feat = int(self.body.num_features)
        self.fc = nn.Linear(feat, int(z_dim)) if z_dim else nn.Identity()
        self.out_dim = int(z_dim) if z_dim else feat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def create_backbone(name: str, *, width: int = 32, z_dim: Optional[int] = 64, **kwargs) -> nn.Module:
    """Build a backbone by name: ``"smallcnn"`` (:class:`SmallCNN`, uses ``width``) or a timm architecture
    (:class:`TimmBackbone`; ``width`` is ignored, extra ``kwargs`` go to ``timm.create_model``, e.g. ``img_size``).

    ``z_dim`` is the output (representation) dimension; for timm it sizes a linear layer on the pooled features
    (``None``/0: no layer, ``out_dim = num_features``).
    """
    if name == SMALLCNN:
        if kwargs:
            raise WeightsError(f"backbone 'smallcnn': unknown argument(s) {', '.join(sorted(kwargs))}")
        if not z_dim:
            raise WeightsError("backbone 'smallcnn': z_dim must be a positive integer")
        return SmallCNN(width=width, z_dim=z_dim)
    return TimmBackbone(name, z_dim=z_dim, **kwargs)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``module``."""
    return sum(p.numel() for p in module.parameters())


class RecipeEncoder(nn.Module):
    """What a zoo entry featurizes: ``forward(x)`` is the representation (N, z_dim), projection head excluded.

    For a stochastic encoder the backbone outputs 2 * z_dim numbers, [mu, s]; ``forward`` returns mu (the
    representation) and ``posterior(x)`` returns ``(mu, logvar)`` with logvar = s + LOGVAR_SHIFT, clamped to
    [-12, 12] for numerical safety. The shift (-6: sigma ~ 0.05 at initialization, when s ~ 0) starts training
    near-deterministic; with sigma ~ 1 at the start the samples are pure noise and the short runs learn little.
    """

    LOGVAR_RANGE = (-12.0, 12.0)
    LOGVAR_SHIFT = -6.0

    def __init__(self, backbone: nn.Module, z_dim: int, stochastic: bool = False):
        super().__init__()
        self.backbone = backbone
        self.z_dim = int(z_dim)
        self.stochastic = bool(stochastic)
        self.out_dim = self.z_dim
        expected = 2 * self.z_dim if stochastic else self.z_dim
        if getattr(backbone, "out_dim", expected) != expected:
            raise ValueError(f"backbone out_dim {backbone.out_dim} != {expected}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone(x)
        return out[:, : self.z_dim] if self.stochastic else out

    def posterior(self, x: torch.Tensor) -> tuple:
        """(mu, logvar) of the Gaussian posterior q(z | x) = N(mu, diag(exp(logvar)))."""
        if not self.stochastic:
            raise TypeError("posterior() needs a stochastic encoder (objective: stochastic)")
        out = self.backbone(x)
        return out[:, : self.z_dim], (out[:, self.z_dim:] + self.LOGVAR_SHIFT).clamp(*self.LOGVAR_RANGE)


def backbone_kwargs(recipe) -> dict:
    """The ``create_backbone`` keyword arguments that rebuild a recipe's backbone (saved in checkpoint sidecars)."""
    z = recipe.z_dim * (2 if recipe.objective == "stochastic" else 1)
    kw = {"z_dim": z}
    if recipe.backbone == SMALLCNN:
        kw["width"] = recipe.width
    elif recipe.image_size:
        kw["img_size"] = recipe.image_size  # timm ViTs need the input size; harmless to drop for CNNs
    return kw


def build_recipe_encoder(recipe) -> RecipeEncoder:
    """A freshly initialized (random) encoder for a recipe (seed the global RNG first for reproducibility)."""
    kw = backbone_kwargs(recipe)
    try:
        bb = create_backbone(recipe.backbone, **kw)
    except TypeError:
        kw.pop("img_size", None)
        bb = create_backbone(recipe.backbone, **kw)
    return RecipeEncoder(bb, recipe.z_dim, stochastic=recipe.objective == "stochastic")

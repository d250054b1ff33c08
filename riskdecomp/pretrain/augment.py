"""Batched view augmentations on tensors (whole batches at once, no per-image PIL work).

Every function takes a float batch (N, 3, H, W) in [0, 1] (:func:`to_float` converts uint8) and a
``torch.Generator``; the same generator state gives the same views. Parameters are SimCLR's (Chen et al. 2020):
random resized crop (area fraction in ``crop_scale``, aspect ratio in [3/4, 4/3]), horizontal flip (p=0.5),
color jitter (p=0.8; brightness, contrast, saturation 0.4, hue 0.1), grayscale (p=0.2), gaussian blur
(p=0.5, sigma in [0.1, 2], kernel ~10% of the image side).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from riskdecomp.features.augment import (  # noqa: F401 (random_resized_crop: also a view augmentation here)
    rand_bernoulli,
    rand_uniform,
    random_resized_crop,
)
from riskdecomp.pretrain.recipe import AugmentConfig

LUMA = (0.299, 0.587, 0.114)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 (0..255) -> float in [0, 1]; float input is returned as float32 unchanged."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def horizontal_flip(x: torch.Tensor, p: float = 0.5, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    m = rand_bernoulli(x.shape[0], p, generator, x.device)
    return torch.where(m[:, None, None, None], x.flip(-1), x)


def grayscale(x: torch.Tensor, p: float = 0.2, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Replace each image by its luma (0.299 R + 0.587 G + 0.114 B, on all 3 channels) with probability ``p``."""
    m = rand_bernoulli(x.shape[0], p, generator, x.device)
    lum = (x * torch.tensor(LUMA, device=x.device)[None, :, None, None]).sum(1, keepdim=True).expand_as(x)
    return torch.where(m[:, None, None, None], lum, x)


def color_jitter(x: torch.Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1, p: float = 0.8, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """With probability ``p`` per image: x *= b; x = c x + (1 - c) mean(luma); x = s x + (1 - s) luma;
    hue rotated by 2 pi h in YIQ space; factors b, c, s ~ U(1 -/+ strength), h ~ U(-hue, hue); clipped to [0, 1].
    """
    n, dev = x.shape[0], x.device
    b = rand_uniform(n, 1 - brightness, 1 + brightness, generator, dev)[:, None, None, None]
    c = rand_uniform(n, 1 - contrast, 1 + contrast, generator, dev)[:, None, None, None]
    s = rand_uniform(n, 1 - saturation, 1 + saturation, generator, dev)[:, None, None, None]
    h = rand_uniform(n, -hue, hue, generator, dev)
    m = rand_bernoulli(n, p, generator, dev)[:, None, None, None]
    luma_w = torch.tensor(LUMA, device=dev)[None, :, None, None]
    y = (x * b).clamp(0, 1)
    mean = (y * luma_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    y = (c * y + (1 - c) * mean).clamp(0, 1)
    lum = (y * luma_w).sum(1, keepdim=True)
    y = (s * y + (1 - s) * lum).clamp(0, 1)
    if hue > 0:
        rgb2yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=dev)
        yiq2rgb = torch.linalg.inv(rgb2yiq)
        cos, sin = torch.cos(2 * math.pi * h), torch.sin(2 * math.pi * h)
        rot = torch.zeros(n, 3, 3, device=dev)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        mat = yiq2rgb[None] @ rot @ rgb2yiq[None]  # (n, 3, 3)
        y = torch.einsum("nij,njhw->nihw", mat, y).clamp(0, 1)
    return torch.where(m, y, x)


def gaussian_blur(x: torch.Tensor, sigma=(0.1, 2.0), p: float = 0.5, kernel_size: Optional[int] = None,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """With probability ``p`` per image, blur with a separable gaussian of sigma ~ U(sigma) (one grouped conv per
    axis for the whole batch); ``kernel_size`` defaults to the odd number nearest 10% of the side (>= 3)."""
    n, c, hgt, wid = x.shape
    dev = x.device
    k = kernel_size or max(3, int(round(0.1 * max(hgt, wid))) // 2 * 2 + 1)
    sig = rand_uniform(n, sigma[0], sigma[1], generator, dev)
    m = rand_bernoulli(n, p, generator, dev)
    t = torch.arange(k, device=dev, dtype=x.dtype) - (k - 1) / 2
    ker = torch.exp(-(t[None] ** 2) / (2 * sig[:, None] ** 2))
    ker = ker / ker.sum(1, keepdim=True)  # (n, k)
    ker = ker.repeat_interleave(c, 0)  # (n*c, k)
    y = x.reshape(1, n * c, hgt, wid)
    pad = k // 2
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), ker[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), ker[:, None, :, None], groups=n * c)
    return torch.where(m[:, None, None, None], y.reshape(n, c, hgt, wid), x)


class Augmenter:
    """The view pipeline of a recipe: crop(+flip) -> color jitter -> grayscale -> blur, each switchable."""

    def __init__(self, config: AugmentConfig):
        self.config = config

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        cfg = self.config
        x = to_float(x)
        if cfg.crop:
            x = random_resized_crop(x, scale=tuple(cfg.crop_scale), flip=cfg.flip, generator=generator)
        elif cfg.flip:
            x = horizontal_flip(x, generator=generator)
        if cfg.color_jitter:
            x = color_jitter(x, generator=generator)
        if cfg.grayscale:
            x = grayscale(x, generator=generator)
        if cfg.blur:
            x = gaussian_blur(x, generator=generator)
        return x

    @property
    def names(self) -> list:
        """Names of the active augmentations (published-table vocabulary)."""
        cfg = self.config
        on = [("crop", cfg.crop), ("flip", cfg.flip), ("color", cfg.color_jitter), ("gray", cfg.grayscale),
              ("blur", cfg.blur)]
        return [n for n, v in on if v]

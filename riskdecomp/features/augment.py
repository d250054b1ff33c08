"""A batched random resized crop (+ flip) of images already turned into tensors: the geometric augmentation that
applies to any encoder's normalized input (:func:`riskdecomp.features.cache.augmented_views_split`) and the crop of
riskdecomp's own pretraining (:mod:`riskdecomp.pretrain.augment`). The same ``torch.Generator`` state gives the same
views."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def rand_uniform(n: int, lo: float, hi: float, g: Optional[torch.Generator], device) -> torch.Tensor:
    """``n`` draws of U(lo, hi) from generator ``g``."""
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def rand_bernoulli(n: int, p: float, g, device) -> torch.Tensor:
    """``n`` coin flips (True with probability ``p``) from generator ``g``."""
    return torch.rand(n, generator=g, device=device) < p


def random_resized_crop(x: torch.Tensor, scale=(0.4, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = False,
                        size: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Crop a random box (area fraction ~ U(scale), log aspect ratio ~ U(log ratio)) from each image and resize it
    back to ``size`` (default: the input size) by bilinear sampling; with ``flip`` mirror half of them.

    One affine grid for the whole batch: theta = [[w * f, 0, cx], [0, h, cy]] in normalized coordinates, where
    w, h are the box side fractions, (cx, cy) its center and f = -1 for a flipped image.
    """
    n, dev = x.shape[0], x.device
    area = rand_uniform(n, scale[0], scale[1], generator, dev)
    logr = rand_uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, dev)
    r = torch.exp(logr)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator, device=dev) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=generator, device=dev) * 2 - 1) * (1 - h)
    sign = torch.where(rand_bernoulli(n, 0.5, generator, dev), -1.0, 1.0) if flip else torch.ones(n, device=dev)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    s = size or x.shape[-1]
    grid = F.affine_grid(theta, [n, x.shape[1], s, s], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

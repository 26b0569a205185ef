"""Turning sample tensors into pictures a person can see: nearest-neighbour enlargement and grids.

The demo's images are tiny (16x16 or 32x32), so every picture is enlarged by an integer factor with
nearest-neighbour resampling: each pixel becomes a sharp square instead of a blur.
"""

from __future__ import annotations

import math

import torch
from PIL import Image
from torchvision.utils import make_grid

from ..images import to_pil

DISPLAY_SIZE = 256


def enlargement(size: int, target: int = DISPLAY_SIZE) -> int:
    """The integer factor that brings ``size`` pixels closest to ``target`` without going below 1."""
    return max(1, round(target / size))


def enlarge(image: Image.Image, factor: int) -> Image.Image:
    """``image`` enlarged ``factor`` times with nearest-neighbour resampling (no blur)."""
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def tensor_grid(x: torch.Tensor, nrow: int | None = None, target: int = DISPLAY_SIZE) -> Image.Image:
    """Images ``[N, 3, H, W]`` in [-1, 1] as one enlarged grid picture, ``nrow`` images a row
    (default: a near-square grid); each image is about ``target`` pixels wide."""
    nrow = nrow or math.ceil(math.sqrt(x.shape[0]))
    grid = make_grid(((x.detach().float().cpu() + 1) / 2).clamp(0, 1), nrow=nrow, padding=1, pad_value=1.0)
    return enlarge(to_pil(grid[None] * 2 - 1)[0], enlargement(x.shape[-1], target))

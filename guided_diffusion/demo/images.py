"""Turning sample tensors into pictures a person can see: nearest-neighbour enlargement and grids.

The demo's images are tiny (16x16 or 32x32), so every picture is enlarged by an integer factor with
nearest-neighbour resampling: each pixel becomes a sharp square instead of a blur.
"""

from __future__ import annotations

import torch
from PIL import Image

from ..images import enlarge, image_grid

DISPLAY_SIZE = 256


def enlargement(size: int, target: int = DISPLAY_SIZE) -> int:
    """The integer factor that brings ``size`` pixels closest to ``target`` without going below 1."""
    return max(1, round(target / size))


def tensor_grid(x: torch.Tensor, nrow: int | None = None, target: int = DISPLAY_SIZE) -> Image.Image:
    """Images ``[N, 3, H, W]`` in [-1, 1] as one enlarged grid picture, ``nrow`` images a row
    (default: a near-square grid); each image is about ``target`` pixels wide."""
    return enlarge(image_grid(x, nrow, padding=1, background="white"), enlargement(x.shape[-1], target))

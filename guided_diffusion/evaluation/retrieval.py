"""Prompt fidelity by retrieval: does the real image nearest to a generated one carry its prompt?

A generated image, made from the caption of some real image, counts as a top-k hit when one of the
``k`` real images nearest to it (in a stated feature space) carries the same key: the caption itself,
or a coarser identity such as the emoji's name whatever its style. The default feature space is plain
pixels, downsampled by area averaging to ``size x size`` (16 by default): simple, stated, and blind to
noise finer than a 2x2 block of a 32-pixel image; no learned network stands between the picture and
the score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def pixel_features(images: torch.Tensor, size: int = 16) -> torch.Tensor:
    """Images ``[N, C, H, W]`` in [-1, 1] -> ``[N, C * size * size]``: area-downsampled pixels (float64)."""
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    small = F.interpolate(images.double(), size=(size, size), mode="area")
    return small.flatten(1)


def nearest(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` gallery rows nearest (Euclidean) to each query: ``(distances [Q, k], indices [Q, k])``,
    nearest first. ``queries [Q, D]``, ``gallery [G, D]``."""
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} features but the gallery {gallery.shape[1]}")
    k = min(k, gallery.shape[0])
    distances = torch.cdist(queries.double(), gallery.double())
    return torch.topk(distances, k, dim=1, largest=False)


@dataclass
class RetrievalResult:
    """Per-query outcomes of :func:`retrieval_fidelity`.

    ``top1`` and ``topk`` are bool ``[Q]``; ``neighbours`` the gallery indices ``[Q, k]``, nearest first;
    ``k`` the k of ``topk``.
    """

    top1: torch.Tensor
    topk: torch.Tensor
    neighbours: torch.Tensor
    k: int

    @property
    def top1_rate(self) -> float:
        return float(self.top1.double().mean()) if self.top1.numel() else float("nan")

    @property
    def topk_rate(self) -> float:
        return float(self.topk.double().mean()) if self.topk.numel() else float("nan")


def retrieval_fidelity(
    generated: torch.Tensor,
    keys: Sequence[str],
    gallery: torch.Tensor,
    gallery_keys: Sequence[str],
    *,
    k: int = 5,
    size: int = 16,
) -> RetrievalResult:
    """Top-1 and top-``k`` retrieval of ``generated [Q, C, H, W]`` (in [-1, 1]; query ``i`` asked for
    ``keys[i]``) among the real ``gallery [G, C, H', W']`` whose rows carry ``gallery_keys``, in
    :func:`pixel_features` space of side ``size``."""
    if len(keys) != generated.shape[0] or len(gallery_keys) != gallery.shape[0]:
        raise ValueError("one key per generated image and one per gallery image are needed")
    _, neighbours = nearest(pixel_features(generated, size), pixel_features(gallery, size), k)
    found = [[gallery_keys[j] == key for j in row] for key, row in zip(keys, neighbours.tolist())]
    hits = torch.tensor(found, dtype=torch.bool).reshape(len(keys), neighbours.shape[1])
    return RetrievalResult(top1=hits[:, 0], topk=hits.any(dim=1), neighbours=neighbours, k=neighbours.shape[1])

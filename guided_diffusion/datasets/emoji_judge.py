"""Reading an emoji picture back: which emoji, in which style, is it?

The judge knows every real emoji image of the dataset (both styles, the held-out pairs included) and
answers with the nearest ones in :func:`~guided_diffusion.evaluation.retrieval.pixel_features` space
(16x16 area-averaged pixels): a generated image "retrieves its emoji" when its nearest real image
(top-1; or one of its 5 nearest, top-5) is that emoji in either style; its style is right when it is
closer to the asked style's picture of that emoji than to the other style's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import datasets
import numpy as np
import torch

from ..evaluation.retrieval import nearest, pixel_features
from ..images import from_pil


def dataset_tensor(dataset: datasets.Dataset, image_column: str = "image") -> torch.Tensor:
    """Every image of ``dataset`` as one tensor ``[N, 3, H, W]`` in [-1, 1] (images must share a size)."""
    return from_pil(dataset[image_column])


@dataclass
class EmojiVerdicts:
    """Per image: ``top1`` / ``top5`` (bool ``[N]``: the asked emoji is the nearest / among the 5
    nearest real images), ``style_right`` (bool ``[N]``: nearer to the asked style's picture of the
    asked emoji than to its other styles'), ``nearest_name`` / ``nearest_style`` / ``nearest_category``
    (what the nearest real image is)."""

    top1: torch.Tensor
    top5: torch.Tensor
    style_right: torch.Tensor
    nearest_name: list[str]
    nearest_style: list[str]
    nearest_category: list[str]


class EmojiJudge:
    """Judges generated emoji against ``dataset`` (an emoji dataset, typically split ``all``, at the
    model's resolution). ``images [N, 3, H, W]`` (in [-1, 1]) keeps the dataset's pictures, decoded once,
    for whatever else an evaluation needs of them."""

    def __init__(self, dataset: datasets.Dataset, size: int = 16) -> None:
        self.size = size
        self.names = list(dataset["name"])
        self.styles = [dataset.features["style"].int2str(s) for s in dataset["style"]]
        self.categories = [dataset.features["category"].int2str(c) for c in dataset["category"]]
        self.images = dataset_tensor(dataset)
        self.features = pixel_features(self.images, size)
        self.index = {(n, s): i for i, (n, s) in enumerate(zip(self.names, self.styles))}
        self.category_by_name = dict(zip(self.names, self.categories))

    def category_of(self, name: str) -> str:
        """The category of emoji ``name``."""
        return self.category_by_name[name]

    @property
    def emoji_ids(self) -> torch.Tensor:
        """``[N]``: one integer per real picture, the same for the pictures of one emoji."""
        return torch.from_numpy(np.unique(self.names, return_inverse=True)[1])

    def read(self, images: torch.Tensor) -> list[tuple[str, str, str]]:
        """What each of ``images [N, 3, H, W]`` (in [-1, 1]) shows: the (name, style, category) of its
        nearest real image."""
        _, first = nearest(pixel_features(images, self.size), self.features, 1)
        return [(self.names[j], self.styles[j], self.categories[j]) for j in first[:, 0].tolist()]

    def style_accuracy_of_unseen_emoji(self) -> float:
        """How often the nearest real image has the right style when the image's own emoji (in every
        style) is left out of the gallery: the nearest-image style reading of a picture that is not a
        copy of a real one, which is what a generated emoji is."""
        distances, emoji = torch.cdist(self.features, self.features), self.emoji_ids
        distances[emoji[:, None] == emoji[None, :]] = float("inf")
        first = distances.argmin(dim=1).tolist()
        return sum(self.styles[j] == s for j, s in zip(first, self.styles)) / len(first)

    @functools.cached_property
    def distance_between_emoji(self) -> float:
        """The mean distance between two real pictures of different emoji (the unit of :meth:`spread`)."""
        distances, emoji = torch.cdist(self.features, self.features), self.emoji_ids
        return float(distances[emoji[:, None] != emoji[None, :]].mean())

    def spread(self, images: torch.Tensor) -> float:
        """How different ``images [N, 3, H, W]`` (in [-1, 1], N >= 2; typically one prompt's) are from
        each other: their mean pairwise distance in the judge's feature space over
        :attr:`distance_between_emoji` (0: N copies of one picture; 1: as far apart as two real emoji are
        on average)."""
        if images.shape[0] < 2:
            raise ValueError(f"the spread of images needs at least 2 of them, got {images.shape[0]}")
        distances = torch.pdist(pixel_features(images, self.size))
        return float(distances.mean()) / self.distance_between_emoji

    def judge(self, images: torch.Tensor, names: Sequence[str], styles: Sequence[str]) -> EmojiVerdicts:
        """Verdicts on ``images [N, 3, H, W]`` in [-1, 1], image ``i`` asked for ``names[i]`` in ``styles[i]``."""
        if not (len(names) == len(styles) == images.shape[0]):
            raise ValueError("one name and one style per image are needed")
        missing = sorted({(n, s) for n, s in zip(names, styles) if (n, s) not in self.index})
        if missing:
            raise ValueError(f"the judge's dataset has no picture of {missing[0][0]!r} in style {missing[0][1]!r}")
        features = pixel_features(images, self.size)
        _, neighbours = nearest(features, self.features, 5)
        top1, top5, style_right = [], [], []
        for i, (name, style, row) in enumerate(zip(names, styles, neighbours.tolist())):
            top1.append(self.names[row[0]] == name)
            top5.append(any(self.names[j] == name for j in row))
            others = [self.index[(name, s)] for s in set(self.styles) if s != style and (name, s) in self.index]
            asked = torch.dist(features[i], self.features[self.index[(name, style)]])
            style_right.append(all(asked < torch.dist(features[i], self.features[j]) for j in others))
        first = [row[0] for row in neighbours.tolist()]
        return EmojiVerdicts(
            top1=torch.tensor(top1, dtype=torch.bool),
            top5=torch.tensor(top5, dtype=torch.bool),
            style_right=torch.tensor(style_right, dtype=torch.bool),
            nearest_name=[self.names[j] for j in first],
            nearest_style=[self.styles[j] for j in first],
            nearest_category=[self.categories[j] for j in first],
        )

"""Hard negative captions for contrastive training: each caption with one word swapped for a word that
names something else (NegCLIP: Yuksekgonul et al. 2023, "When and Why Vision-Language Models Behave
like Bags-of-Words, and What to Do About It", Sec. 4).

In a random batch, few captions differ from an image's own caption in one attribute only, so a CLIP
learns the attributes that tell most captions apart (a colour, a position) and barely the others (on
Shapes32: the shape). A hard negative is the image's own caption with one attribute changed; the
loss term :func:`hard_negative_loss` asks the image to prefer its caption over those.

The words to swap are given as *groups* of *classes* (the ``training.hard_negatives`` section of a
CLIP config)::

    hard_negatives:
      shape:                          # a group: classes that exclude each other
        circle: [circle, disk, disc]  # a class: its words (synonyms, never swapped for each other)
        square: [square]
        triangle: [triangle]

Every group with a word in a caption gives that caption one negative: one of those words (drawn at
random) replaced by a word of another class of the group (drawn at random), with an ``a`` / ``an``
before it made to agree. Words are matched whole and case-insensitively.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from guided_diffusion.errors import ConfigError

_WORD = re.compile(r"[A-Za-z0-9']+")
_ARTICLE = re.compile(r"\b([Aa])n? $")
_VOWEL = re.compile(r"[aeiouAEIOU]")


class WordSwaps:
    """The groups of :mod:`train.hard_negatives`' docstring, checked: every group has at least two
    classes, every class at least one word, and no word is in two classes."""

    def __init__(self, groups: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
        self.groups = {name: {cls: list(words) for cls, words in classes.items()} for name, classes in groups.items()}
        if not self.groups:
            raise ConfigError("training.hard_negatives must name at least one group of word classes")
        self._class_of: dict[str, tuple[str, str]] = {}  # lower-case word -> (group, class)
        for group, classes in self.groups.items():
            if len(classes) < 2:
                raise ConfigError(f"training.hard_negatives.{group} needs at least two classes to swap between, got {list(classes)}")
            for cls, words in classes.items():
                if not words:
                    raise ConfigError(f"training.hard_negatives.{group}.{cls} has no words")
                for word in words:
                    if not _WORD.fullmatch(word):
                        raise ConfigError(f"training.hard_negatives.{group}.{cls}: {word!r} is not a single word")
                    if word.lower() in self._class_of:
                        raise ConfigError(
                            f"training.hard_negatives: {word!r} is in both {'.'.join(self._class_of[word.lower()])} "
                            f"and {group}.{cls}"
                        )
                    self._class_of[word.lower()] = (group, cls)

    def negatives(
        self, captions: Sequence[str], generator: torch.Generator | None = None
    ) -> tuple[list[int], list[str], list[str]]:
        """``(owner, negatives, group)``: the hard negatives of ``captions``, ``negatives[k]`` being one
        of ``captions[owner[k]]`` (owners in increasing order) with a word of ``group[k]`` swapped.
        Random draws come from ``generator`` (default: torch's global RNG, which checkpoints save)."""
        owner, negatives, swapped = [], [], []
        for index, caption in enumerate(captions):
            matches = [m for m in _WORD.finditer(caption) if m.group().lower() in self._class_of]
            for group, classes in self.groups.items():
                hits = [m for m in matches if self._class_of[m.group().lower()][0] == group]
                if not hits:
                    continue
                hit = hits[_draw(len(hits), generator)]
                own = self._class_of[hit.group().lower()][1]
                others = [word for cls, words in classes.items() if cls != own for word in words]
                owner.append(index)
                negatives.append(_replace(caption, hit.start(), hit.end(), others[_draw(len(others), generator)]))
                swapped.append(group)
        return owner, negatives, swapped


def _draw(n: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(n, (), generator=generator))


def _replace(caption: str, start: int, end: int, word: str) -> str:
    """``caption`` with ``caption[start:end]`` replaced by ``word``, an article just before it agreeing."""
    before = caption[:start]
    article = _ARTICLE.search(before)
    if article:
        a = article.group(1)
        before = before[: article.start()] + (a + "n " if _VOWEL.match(word) else a + " ")
    return before + word + caption[end:]


def hard_negative_loss(
    image: torch.Tensor, text: torch.Tensor, negatives: torch.Tensor, owner: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of each image's own caption against its hard negatives.

    ``image [B, E]`` and ``text [B, E]`` are unit-norm embeddings of the images and of their own
    captions, ``negatives [N, E]`` those of the hard negatives, ``owner [N]`` (long, increasing) the
    image each negative belongs to, ``scale`` the logit scale. For every image with at least one
    negative: ``-log softmax(scale * [<i, t_i>, <i, n_1>, ..., <i, n_k>])[0]``; the mean over those
    images (0 when no image has one).
    """
    if owner.numel() == 0:
        return image.new_zeros(())
    positive = scale * (image * text).sum(dim=-1)  # [B]
    negative = scale * (image[owner] * negatives).sum(dim=-1)  # [N]
    counts = torch.bincount(owner, minlength=image.shape[0])  # [B]
    slot = torch.arange(owner.numel(), device=owner.device) - torch.searchsorted(owner, owner)  # place among its owner's
    logits = positive.new_full((image.shape[0], 1 + int(counts.max())), float("-inf"))
    logits[:, 0] = positive
    logits[owner, 1 + slot] = negative
    has = counts > 0
    target = torch.zeros(int(has.sum()), dtype=torch.long, device=image.device)
    return F.cross_entropy(logits[has], target)

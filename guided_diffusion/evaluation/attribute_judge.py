"""Reading one attribute (an emoji's style) off generated images with a small CNN trained on real ones.

The nearest real image is a weak judge of an attribute that lives in the drawing rather than in what is
drawn: a generated emoji that is not a copy of a real one is nearest to whichever real emoji it
resembles, in whichever style that one happens to be. :func:`train_attribute_judge` trains
:class:`~guided_diffusion.evaluation.cas.CASNet` on real images with their labels, holding out every
image of a seeded share of the *groups* (for emoji: the emoji names, both styles), and measures its
accuracy on them: how well it reads the attribute of a picture it never saw, which is what a generated
image is. That accuracy goes into every report that uses the judge. Like every CAS network it trains on
one thread on the CPU, so the same images get the same verdicts whatever the thread count. It is
deliberately not the pipeline's noise-aware classifier: images steered by that classifier's gradients
would then be judged by the network they were steered to please.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .cas import CASNet, predict, train_cas_classifier

JUDGE_EPOCHS = 20
JUDGE_HELD_OUT_FRACTION = 0.1


@dataclass
class AttributeJudge:
    """A trained judge: ``classes`` (index -> name), the ``model``, and its accuracy on the real images
    of the ``held_out_groups`` it was not trained on (``held_out_images`` of them), overall and by class
    (``held_out_accuracy_by_class``: class name -> the share of that class's held-out images read as
    it, for each class that has some: how often a real image of that class gets its due)."""

    model: CASNet
    classes: list[str]
    held_out_accuracy: float
    held_out_accuracy_by_class: dict[str, float]
    held_out_images: int
    held_out_groups: int
    epochs: int
    seed: int

    def read(self, images: torch.Tensor) -> list[str]:
        """The class name read off each of ``images [N, C, H, W]`` in [-1, 1]."""
        return [self.classes[i] for i in predict(self.model, images).tolist()]

    def summary(self) -> dict[str, float | int | dict[str, float]]:
        """What a report records about the judge."""
        return {
            "held_out_accuracy": self.held_out_accuracy,
            "held_out_accuracy_by_class": self.held_out_accuracy_by_class,
            "held_out_images": self.held_out_images,
            "held_out_groups": self.held_out_groups,
            "epochs": self.epochs,
            "seed": self.seed,
        }


def held_out_groups(groups: Sequence[str], fraction: float, seed: int) -> set[str]:
    """A seeded ``fraction`` of the distinct ``groups`` (at least one, never all of them)."""
    distinct = sorted(set(groups))
    if len(distinct) < 2:
        raise ValueError(f"a judge needs images of at least 2 groups to hold one out, got {len(distinct)}")
    count = min(max(1, round(fraction * len(distinct))), len(distinct) - 1)
    order = np.random.default_rng(seed).permutation(len(distinct))
    return {distinct[i] for i in order[:count]}


def train_attribute_judge(
    images: torch.Tensor,
    labels: torch.Tensor,
    groups: Sequence[str],
    classes: Sequence[str],
    *,
    epochs: int = JUDGE_EPOCHS,
    held_out_fraction: float = JUDGE_HELD_OUT_FRACTION,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> AttributeJudge:
    """Train a judge on real ``images [N, C, H, W]`` (in [-1, 1]) with class indices ``labels [N]`` into
    ``classes``, leaving out every image of a seeded ``held_out_fraction`` of ``groups`` (one name per
    image), on which its accuracy is measured. Weights and batches follow from ``seed`` alone."""
    if not (images.shape[0] == labels.shape[0] == len(groups)):
        raise ValueError(f"need one label and one group per image (got {images.shape[0]} images, {labels.shape[0]} labels, {len(groups)} groups)")
    held = held_out_groups(groups, held_out_fraction, seed)
    test = torch.tensor([g in held for g in groups])
    model = train_cas_classifier(
        images[~test], labels[~test], len(classes), epochs=epochs, seed=seed, device=device, description="attribute judge"
    )
    truth = labels[test].cpu()
    right = predict(model, images[test]) == truth
    return AttributeJudge(
        model=model,
        classes=list(classes),
        held_out_accuracy=float(right.double().mean()),
        held_out_accuracy_by_class={
            name: float(right[truth == i].double().mean()) for i, name in enumerate(classes) if (truth == i).any()
        },
        held_out_images=int(test.sum()),
        held_out_groups=len(held),
        epochs=epochs,
        seed=seed,
    )

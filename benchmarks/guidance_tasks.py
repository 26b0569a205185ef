"""What benchmarks/guidance_methods.py asks of a model and how it reads the answers, per dataset.

A task has ``targets`` (what each prompt asks for), and for each target: its ``caption`` (the prompt, or
the CLIP guidance prompt from the empty prompt), its ``classifier_labels`` (for classifier guidance from
the empty prompt) and the ``score`` of that target's images (per-prompt means, ``fidelity`` and
``diversity`` among them). ``negatives`` are every caption of the kind (the CLIP read as a zero-shot
classifier over them); ``columns`` name the scores for the report, ``axes`` the plot's labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from guided_diffusion import GuidedDiffusionPipeline
from guided_diffusion.datasets.emoji import canonical_caption, make_emoji
from guided_diffusion.datasets.emoji_judge import EmojiJudge
from guided_diffusion.datasets.shapes import COLORS, HELDOUT_PAIRS, POSITIONS, SHAPES, SIZES, describe_batch
from guided_diffusion.evaluation.diversity import normalized_entropy
from guided_diffusion.evaluation.emoji import read_training_pairs
from guided_diffusion.images import from_pil


class ShapesTask:
    """Shapes32: prompts "a <colour> <shape>" for every seen (or held-out) colour-shape pair. Fidelity:
    colour and shape read back from the pixels (:func:`~guided_diffusion.datasets.shapes.describe`);
    diversity: the normalised entropy of the size and position the prompt leaves free (1 is uniform)."""

    kind = "colour-shape pairs"
    columns = {"fidelity": "fidelity (colour and shape)", "colour": "colour", "shape": "shape", "diversity": "diversity",
               "entropy_size": "size entropy", "entropy_position": "position entropy"}
    axes = ("diversity: normalised entropy of size and position", "fidelity: colour and shape right")

    def __init__(self, held_out: bool) -> None:
        held = set(HELDOUT_PAIRS)
        self.targets = [(c, s) for c in COLORS for s in SHAPES if ((c, s) in held) == held_out]
        self.negatives = [self.caption(pair) for pair in ((c, s) for c in COLORS for s in SHAPES)]

    @staticmethod
    def caption(target: tuple[str, str]) -> str:
        return f"a {target[0]} {target[1]}"

    @staticmethod
    def classifier_labels(target: tuple[str, str]) -> dict[str, str]:
        return {"color": target[0], "shape": target[1]}

    @staticmethod
    def score(images: list[Image.Image], target: tuple[str, str]) -> dict[str, float]:
        found = describe_batch(images)
        colour = [f["color"] == target[0] for f in found]
        shape = [f["shape"] == target[1] for f in found]
        size = normalized_entropy([f["size"] for f in found], SIZES)
        position = normalized_entropy([f["position"] for f in found], POSITIONS)
        return {
            "fidelity": float(np.mean([c and s for c, s in zip(colour, shape)])),
            "colour": float(np.mean(colour)),
            "shape": float(np.mean(shape)),
            "entropy_size": size,
            "entropy_position": position,
            "diversity": (size + position) / 2,
        }


class EmojiTask:
    """An emoji model (its folder's ``training_data.json``): the canonical caption "<name>, <style> style"
    of ``count`` seen (or held-out) (emoji, style) pairs drawn with ``seed``, read back by the
    :class:`~guided_diffusion.datasets.emoji_judge.EmojiJudge` (nearest real pictures, from ``gd-data
    fetch emoji``). Fidelity: the nearest real picture is the asked emoji and the image is nearer to its
    asked style's picture than to the other style's. The caption leaves no attribute free, so diversity
    is the spread of each prompt's images (:meth:`EmojiJudge.spread`: 1 is as far apart as two real
    emoji). Classifier guidance steers the classifier's heads only (style and category)."""

    kind = "(emoji, style) pairs"
    columns = {"fidelity": "fidelity (emoji and style)", "top1": "top-1 emoji", "top5": "top-5 emoji", "style": "style",
               "category": "category", "diversity": "spread"}
    axes = ("diversity: spread of each prompt's images (1: as far apart as two real emoji)", "fidelity: emoji (top-1) and style right")

    def __init__(self, pipe: GuidedDiffusionPipeline, held_out: bool, count: int, seed: int, emoji_root: str | None = None) -> None:
        pairs = read_training_pairs(pipe.folder)
        group = pairs["held_out_pairs" if held_out else "train_pairs"]
        chosen = sorted(np.random.default_rng(seed).permutation(len(group))[:count])
        self.targets = [(group[i][0], group[i][1]) for i in chosen]
        self.negatives = [canonical_caption(name, style) for name, style, _ in pairs["train_pairs"] + pairs["held_out_pairs"]]
        self.judge = EmojiJudge(make_emoji("all", root=emoji_root, resolution=pipe.unet.config.image_size))

    @staticmethod
    def caption(target: tuple[str, str]) -> str:
        return canonical_caption(*target)

    def classifier_labels(self, target: tuple[str, str]) -> dict[str, str]:
        return {"style": target[1], "category": self.judge.category_of(target[0])}

    def score(self, images: list[Image.Image], target: tuple[str, str]) -> dict[str, Any]:
        pictures = from_pil(images)
        verdicts = self.judge.judge(pictures, [target[0]] * len(images), [target[1]] * len(images))
        category = self.judge.category_of(target[0])
        return {
            "fidelity": float((verdicts.top1 & verdicts.style_right).double().mean()),
            "top1": float(verdicts.top1.double().mean()),
            "top5": float(verdicts.top5.double().mean()),
            "style": float(verdicts.style_right.double().mean()),
            "category": float(np.mean([c == category for c in verdicts.nearest_category])),
            "diversity": self.judge.spread(pictures),
        }

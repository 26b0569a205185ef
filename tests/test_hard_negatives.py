"""Hard negative captions (NegCLIP) for the noise-aware CLIP: word swaps and their loss term."""

import math
import re

import pytest
import torch

from guided_diffusion.errors import ConfigError
from train.hard_negatives import WordSwaps, hard_negative_loss

GROUPS = {
    "shape": {"circle": ["circle", "disk", "disc"], "square": ["square"], "triangle": ["triangle"]},
    "color": {"red": ["red"], "orange": ["orange"], "purple": ["purple", "violet"]},
    "side": {"left": ["left"], "right": ["right"]},
}
CLASS_OF = {word: (group, cls) for group, classes in GROUPS.items() for cls, words in classes.items() for word in words}


def _changed_words(caption: str, negative: str) -> list[tuple[str, str]]:
    """The (old, new) word pairs where ``negative`` differs from ``caption``, articles aside."""
    strip = lambda text: [w for w in text.split() if w not in ("a", "an")]  # noqa: E731
    old, new = strip(caption), strip(negative)
    assert len(old) == len(new)
    return [(a, b) for a, b in zip(old, new) if a != b]


def test_each_group_in_a_caption_gives_one_negative_naming_another_class():
    swaps = WordSwaps(GROUPS)
    captions = ["a red disc on the left", "something", "a violet square", "a disc and a circle", "Red Circle"]
    torch.manual_seed(0)
    owner, negatives, groups = swaps.negatives(captions)
    assert owner == [0, 0, 0, 2, 2, 3, 4, 4]  # three groups; none; two; shape only; two (any case)
    assert groups == ["shape", "color", "side", "shape", "color", "shape", "shape", "color"]
    for index, negative in zip(owner, negatives):
        changed = _changed_words(captions[index].lower(), negative.lower())
        assert len(changed) == 1
        (old, new), = changed
        assert CLASS_OF[old][0] == CLASS_OF[new][0] and CLASS_OF[old][1] != CLASS_OF[new][1]  # same group, other class
    torch.manual_seed(0)
    assert swaps.negatives(captions) == (owner, negatives, groups)  # torch's RNG decides, so a resumed run repeats
    draws = [swaps.negatives(captions, torch.Generator().manual_seed(seed))[1] for seed in (1, 1, 2)]
    assert draws[0] == draws[1] != draws[2]


def test_every_other_class_word_is_drawn_and_synonyms_never_are():
    swaps = WordSwaps(GROUPS)
    torch.manual_seed(0)
    drawn = {swaps.negatives(["a disc"])[1][0] for _ in range(200)}
    assert drawn == {"a square", "a triangle"}
    drawn = {swaps.negatives(["a square"])[1][0] for _ in range(300)}
    assert drawn == {"a circle", "a disk", "a disc", "a triangle"}


def test_the_article_agrees_with_the_new_word():
    swaps = WordSwaps({"color": {"red": ["red"], "orange": ["orange"]}})
    assert swaps.negatives(["an orange circle"])[1] == ["a red circle"]
    assert swaps.negatives(["A red circle"])[1] == ["An orange circle"]
    assert swaps.negatives(["a bright red circle"])[1] == ["a bright orange circle"]  # not right before it: left alone


@pytest.mark.parametrize(
    "groups, message",
    [
        ({}, "must name at least one group"),
        ({"shape": {"circle": ["circle"]}}, "shape needs at least two classes"),
        ({"shape": {"circle": [], "square": ["square"]}}, "shape.circle has no words"),
        ({"where": {"top": ["top left"], "bottom": ["bottom"]}}, "where.top: 'top left' is not a single word"),
        ({"a": {"x": ["red"], "y": ["blue"]}, "b": {"z": ["Red"], "w": ["green"]}}, "'Red' is in both a.x and b.z"),
    ],
)
def test_bad_groups_are_refused(groups, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        WordSwaps(groups)


def test_the_loss_is_the_cross_entropy_of_the_own_caption_against_its_negatives():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    text = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    negatives = torch.tensor([[0.0, 1.0], [0.6, -0.8], [1.0, 0.0]], dtype=torch.float64)
    owner = torch.tensor([0, 0, 2])  # image 1 has none
    scale = torch.tensor(10.0, dtype=torch.float64)
    first = -math.log(math.exp(8.0) / (math.exp(8.0) + math.exp(0.0) + math.exp(6.0)))
    third = -math.log(math.exp(6.0) / (math.exp(6.0) + math.exp(6.0)))
    loss = hard_negative_loss(image, text, negatives, owner, scale)
    assert loss.item() == pytest.approx((first + third) / 2, rel=1e-12)
    empty = torch.zeros(0, 2, dtype=torch.float64)
    assert hard_negative_loss(image, text, empty, torch.zeros(0, dtype=torch.long), scale).item() == 0.0


def test_the_loss_pushes_the_image_towards_its_caption_and_away_from_its_negatives():
    image = torch.nn.functional.normalize(torch.randn(4, 8, dtype=torch.float64), dim=-1).requires_grad_()
    text, negatives = torch.randn(4, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    owner = torch.tensor([0, 0, 1, 1, 1, 3])
    hard_negative_loss(image, text, negatives, owner, torch.tensor(1.0, dtype=torch.float64)).backward()
    assert image.grad[2].eq(0).all()  # no negatives: no gradient
    with torch.no_grad():  # one small step down the gradient lowers the loss
        before = hard_negative_loss(image, text, negatives, owner, torch.tensor(1.0, dtype=torch.float64))
        after = hard_negative_loss(image - 1e-3 * image.grad, text, negatives, owner, torch.tensor(1.0, dtype=torch.float64))
    assert after < before

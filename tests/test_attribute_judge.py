"""The attribute judge: a CNN trained on real images that reads an attribute off pictures of groups it
never saw, and says how well it does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guided_diffusion.evaluation.attribute_judge import held_out_groups, train_attribute_judge

SIZES = {"big": 7, "small": 3}


def discs(colours: list[tuple[float, float, float]], seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Each colour as a big and a small disc (two jittered copies of each) on a white 16x16 image:
    ``images [4 * len(colours), 3, 16, 16]`` in [-1, 1], labels (0 big, 1 small), group names."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    images, labels, groups = [], [], []
    for g, colour in enumerate(colours):
        for label, radius in enumerate(SIZES.values()):
            for _ in range(2):
                centre = 7.5 + torch.randint(-2, 3, (2,), generator=generator)
                inside = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
                image = torch.ones(3, 16, 16)
                image[:, inside] = torch.tensor(colour)[:, None]
                images.append(image)
                labels.append(label)
                groups.append(f"colour {g}")
    return torch.stack(images), torch.tensor(labels), groups


def palette(count: int, seed: int) -> list[tuple[float, float, float]]:
    rng = np.random.default_rng(seed)
    return [tuple(float(v) for v in rng.uniform(-1, 0.4, size=3)) for _ in range(count)]


def test_the_judge_reads_the_attribute_of_groups_it_never_saw() -> None:
    images, labels, groups = discs(palette(20, seed=0), seed=0)
    judge = train_attribute_judge(images, labels, groups, list(SIZES), epochs=30, held_out_fraction=0.2, seed=0)
    held = held_out_groups(groups, 0.2, seed=0)
    assert judge.held_out_groups == len(held) == 4
    assert judge.held_out_images == 4 * 4  # both sizes, two copies each
    assert judge.held_out_accuracy == 1.0
    assert judge.classes == ["big", "small"]
    fresh, fresh_labels, _ = discs(palette(6, seed=1), seed=1)  # colours no real image had
    assert judge.read(fresh) == [["big", "small"][i] for i in fresh_labels.tolist()]
    assert judge.summary() == {
        "held_out_accuracy": 1.0, "held_out_accuracy_by_class": {"big": 1.0, "small": 1.0},
        "held_out_images": 16, "held_out_groups": 4, "epochs": 30, "seed": 0,
    }


def test_a_label_the_pictures_do_not_show_is_not_read_on_unseen_groups() -> None:
    # the label is each colour's coin flip, not the disc size: a judge can learn the training colours,
    # but the accuracy it reports is on colours it never saw, where there is nothing to read
    images, _, groups = discs(palette(40, seed=2), seed=2)
    coin = np.random.default_rng(3).integers(0, 2, size=40)
    labels = torch.tensor([int(coin[int(g.split()[1])]) for g in groups])
    judge = train_attribute_judge(images, labels, groups, ["heads", "tails"], epochs=30, held_out_fraction=0.5, seed=0)
    assert judge.held_out_images == 80
    assert judge.held_out_accuracy < 0.75
    # by class: the share of each label's unseen images read as it, which weight into the overall figure
    unseen = held_out_groups(groups, 0.5, seed=0)
    held = torch.tensor([g in unseen for g in groups])
    truth = labels[held].tolist()
    read = judge.read(images[held])
    for i, name in enumerate(["heads", "tails"]):
        mine = [r for r, t in zip(read, truth) if t == i]
        assert judge.held_out_accuracy_by_class[name] == pytest.approx(np.mean([r == name for r in mine]))
    counts = [truth.count(i) for i in range(2)]
    assert judge.held_out_accuracy == pytest.approx(
        sum(c * judge.held_out_accuracy_by_class[n] for c, n in zip(counts, ["heads", "tails"])) / 80
    )


def test_a_class_with_no_unseen_images_has_no_accuracy_of_its_own() -> None:
    images, labels, groups = discs(palette(6, seed=4), seed=4)
    unseen = held_out_groups(groups, 0.5, seed=0)
    labels[[g in unseen for g in groups]] = 0  # every unseen image is "big"
    judge = train_attribute_judge(images, labels, groups, list(SIZES), epochs=1, held_out_fraction=0.5, seed=0)
    assert list(judge.held_out_accuracy_by_class) == ["big"]
    assert judge.held_out_accuracy_by_class["big"] == judge.held_out_accuracy


def test_held_out_groups_are_seeded_and_never_empty_or_everything() -> None:
    groups = [f"g{i}" for i in range(30) for _ in range(3)]
    first = held_out_groups(groups, 0.1, seed=0)
    assert first == held_out_groups(list(reversed(groups)), 0.1, seed=0) and len(first) == 3
    assert first != held_out_groups(groups, 0.1, seed=1)
    assert len(held_out_groups(groups, 0.0, seed=0)) == 1
    assert len(held_out_groups(groups, 1.0, seed=0)) == 29
    with pytest.raises(ValueError, match="at least 2 groups to hold one out, got 1"):
        held_out_groups(["only"] * 5, 0.1, seed=0)


def test_the_judge_needs_one_label_and_group_per_image() -> None:
    images, labels, groups = discs(palette(3, seed=0), seed=0)
    with pytest.raises(ValueError, match=r"one label and one group per image \(got 12 images, 12 labels, 11 groups\)"):
        train_attribute_judge(images, labels, groups[:-1], list(SIZES), epochs=1)

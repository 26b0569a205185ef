"""Tests for the generated Shapes32 dataset and its attribute reader."""

from __future__ import annotations

import re

import datasets
import numpy as np
import pytest
from PIL import Image, ImageFilter

from guided_diffusion.datasets import (
    COLORS,
    HELDOUT_PAIRS,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    SPLITS,
    canonical_caption,
    caption_vocabulary,
    describe,
    describe_batch,
    make_shapes32,
    make_shapes32_dataset_dict,
    render_shape,
    sample_attributes,
)

LABELS = ("shape", "color", "size", "position")


def _labels(ds: datasets.Dataset) -> list[dict[str, str]]:
    names = {k: ds.features[k].names for k in LABELS}
    columns = {k: ds[k] for k in LABELS}
    return [{k: names[k][columns[k][i]] for k in LABELS} for i in range(len(ds))]


def _pixels(ds: datasets.Dataset) -> np.ndarray:
    return np.stack([np.asarray(image) for image in ds["image"]])


@pytest.fixture(scope="module")
def train() -> datasets.Dataset:
    return make_shapes32(1000, seed=3, split="train")


@pytest.fixture(scope="module")
def fresh() -> datasets.Dataset:
    """Images describe() has never been tuned on: all pairs, unseen seeds."""
    return datasets.concatenate_datasets(
        [
            make_shapes32(800, seed=1234, split="test"),
            make_shapes32(200, seed=1234, split="heldout"),
        ]
    )


def test_same_seed_same_dataset_and_different_seed_differs() -> None:
    a = make_shapes32(64, seed=7)
    b = make_shapes32(64, seed=7)
    c = make_shapes32(64, seed=8)
    assert a["text"] == b["text"]
    assert _labels(a) == _labels(b)
    assert np.array_equal(_pixels(a), _pixels(b))
    assert not np.array_equal(_pixels(a), _pixels(c))
    assert a["text"] != c["text"]


def test_columns_features_and_images(train: datasets.Dataset) -> None:
    assert train.column_names == ["image", "text", "shape", "color", "size", "position"]
    assert isinstance(train.features["image"], datasets.Image)
    assert train.features["text"] == datasets.Value("string")
    for column, names in zip(LABELS, (SHAPES, COLORS, SIZES, POSITIONS)):
        assert isinstance(train.features[column], datasets.ClassLabel)
        assert train.features[column].names == list(names)
    image = train[0]["image"]
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB" and image.size == (32, 32)
    # Every value of every attribute occurs.
    for column, names in zip(LABELS, (SHAPES, COLORS, SIZES, POSITIONS)):
        assert set(train[column]) == set(range(len(names)))


def test_heldout_pairs_only_in_heldout_split(train: datasets.Dataset) -> None:
    heldout_pairs = set(HELDOUT_PAIRS)
    assert len(heldout_pairs) == 3
    train_pairs = {(r["color"], r["shape"]) for r in _labels(train)}
    assert not train_pairs & heldout_pairs
    assert len(train_pairs) == len(SHAPES) * len(COLORS) - 3
    test_pairs = {
        (r["color"], r["shape"]) for r in _labels(make_shapes32(300, seed=3, split="test"))
    }
    assert not test_pairs & heldout_pairs
    heldout = {
        (r["color"], r["shape"]) for r in _labels(make_shapes32(200, seed=3, split="heldout"))
    }
    assert heldout == heldout_pairs


def test_splits_use_independent_streams() -> None:
    assert (
        make_shapes32(32, seed=0, split="train")["text"]
        != make_shapes32(32, seed=0, split="test")["text"]
    )


def test_dataset_dict_and_bad_arguments() -> None:
    dd = make_shapes32_dataset_dict(20, 10, seed=1)
    assert isinstance(dd, datasets.DatasetDict)
    assert set(dd) == {"train", "heldout"} and dd.num_rows == {"train": 20, "heldout": 10}
    assert make_shapes32_dataset_dict(4, 4, seed=1, num_test=4).num_rows["test"] == 4
    assert len(make_shapes32(0)) == 0
    with pytest.raises(ValueError, match="split"):
        make_shapes32(4, split="validation")
    with pytest.raises(ValueError, match="num_images"):
        make_shapes32(-1)


def test_save_load_round_trip(tmp_path, train: datasets.Dataset) -> None:
    ds = train.select(range(50))
    ds.save_to_disk(str(tmp_path / "shapes"))
    loaded = datasets.load_from_disk(str(tmp_path / "shapes"))
    assert loaded.features == ds.features
    assert loaded["text"] == ds["text"]
    assert _labels(loaded) == _labels(ds)
    assert np.array_equal(_pixels(loaded), _pixels(ds))


def test_canonical_caption() -> None:
    assert (
        canonical_caption("triangle", "blue", "small", "top right")
        == "a small blue triangle in the top right"
    )
    assert (
        canonical_caption("circle", "red", "large", "center") == "a large red circle in the center"
    )
    with pytest.raises(ValueError, match="shape"):
        canonical_caption("hexagon", "red", "large", "center")


# Words a caption may use for each value (the test's own reading, not the module's tables).
_SHAPE_WORDS = {
    "circle": {"circle", "disk", "disc"},
    "square": {"square"},
    "triangle": {"triangle"},
}
_COLOR_WORDS = {c: {c} for c in COLORS} | {"purple": {"purple", "violet"}}
_SIZE_WORDS = {"small": {"small", "little", "tiny"}, "large": {"large", "big"}}


def _mentioned(words: set[str], table: dict[str, set[str]]) -> set[str]:
    return {value for value, synonyms in table.items() if words & synonyms}


def _mentioned_position(words: set[str]) -> str | None:
    vertical = (
        "top" if words & {"top", "upper"} else "bottom" if words & {"bottom", "lower"} else ""
    )
    horizontal = "left" if "left" in words else "right" if "right" in words else ""
    if words & {"center", "middle"}:
        assert not vertical and not horizontal
        return "center"
    return f"{vertical} {horizontal}".strip() or None


def test_caption_vocabulary_holds_exactly_the_words_of_generated_captions() -> None:
    generated = {word for split in SPLITS for caption in make_shapes32(3000, seed=3, split=split)["text"] for word in caption.split()}
    vocabulary = caption_vocabulary()
    assert {word for caption in vocabulary for word in caption.split()} == generated
    assert len(generated) == 39 and vocabulary == sorted(set(vocabulary))
    assert "a small red circle in the top left" in vocabulary and "a violet disc" in vocabulary


def test_captions_mention_only_true_attributes(train: datasets.Dataset) -> None:
    mentions = {k: 0 for k in LABELS}
    canonical = 0
    for text, truth in zip(train["text"], _labels(train)):
        words = set(re.findall(r"[a-z]+", text))
        for column, table in (
            ("shape", _SHAPE_WORDS),
            ("color", _COLOR_WORDS),
            ("size", _SIZE_WORDS),
        ):
            said = _mentioned(words, table)
            assert said <= {truth[column]}, (text, truth)
            mentions[column] += bool(said)
        position = _mentioned_position(words)
        assert position in (None, truth["position"]), (text, truth)
        mentions["position"] += position is not None
        canonical += text == canonical_caption(**truth)
        assert not re.search(r"\ba [aeiou]", text), text
    n = len(train)
    assert 0.2 * n < canonical < 0.45 * n
    # Every attribute is mentioned in most captions but left out of some.
    for column, count in mentions.items():
        assert 0.5 * n < count < 0.95 * n, (column, count)
    assert len(set(train["text"])) > 300


def test_render_shape_geometry() -> None:
    grey = 235
    for shape, fill in (("circle", np.pi / 4), ("square", 1.0), ("triangle", 0.5)):
        image = render_shape(shape, PALETTE["blue"], 18.0, (16.25, 15.75), grey)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert (image[0] == grey).all() and (image[:, 0] == grey).all()
        assert tuple(image[17, 16]) == PALETTE["blue"]
        coverage = (grey - image[..., 0].astype(float)) / (grey - PALETTE["blue"][0])
        assert coverage.sum() == pytest.approx(fill * 18 * 18, rel=0.01)
        # Anti-aliased: some pixels are partly covered.
        assert ((coverage > 0.05) & (coverage < 0.95)).any()
    triangle = render_shape("triangle", PALETTE["red"], 18.0, (16.0, 16.0), grey)
    assert (triangle[8:10, 16] != grey).any() and (triangle[8:10, 8] == grey).all()  # apex on top
    assert (triangle[23, 8:24] != grey).all()  # base at the bottom, 18 px wide


def test_sample_attributes_ranges() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = sample_attributes(rng, split="heldout")
        assert (a.color, a.shape) in HELDOUT_PAIRS
        assert 225 <= a.background_grey <= 245
        assert all(abs(v - p) <= 12 for v, p in zip(a.color_rgb, PALETTE[a.color]))
        assert abs(a.size_px - {"small": 10, "large": 18}[a.size]) <= 1
        half = a.size_px / 2
        for value, nominal in zip(a.center_xy, _position_xy(a.position)):
            assert abs(value - nominal) <= 1 and half <= value <= 32 - half


def _position_xy(position: str) -> tuple[int, int]:
    i = POSITIONS.index(position)
    return (9, 16, 23)[i % 3], (9, 16, 23)[i // 3]


def _accuracy(images: np.ndarray, truth: list[dict[str, str]]) -> dict[str, float]:
    predicted = describe_batch(images)
    return {k: float(np.mean([p[k] == t[k] for p, t in zip(predicted, truth)])) for k in LABELS}


def test_describe_reads_fresh_images(fresh: datasets.Dataset) -> None:
    accuracy = _accuracy(_pixels(fresh), _labels(fresh))
    assert all(a >= 0.99 for a in accuracy.values()), accuracy


def test_describe_is_robust_to_noise_and_blur(fresh: datasets.Dataset) -> None:
    pixels, truth = _pixels(fresh), _labels(fresh)
    rng = np.random.default_rng(0)
    noisy = np.clip(pixels + rng.normal(0.0, 8.0, pixels.shape), 0, 255).round().astype(np.uint8)
    accuracy = _accuracy(noisy, truth)
    assert all(a >= 0.95 for a in accuracy.values()), accuracy
    blurred = np.stack(
        [np.asarray(Image.fromarray(p).filter(ImageFilter.GaussianBlur(1.0))) for p in pixels[:300]]
    )
    accuracy = _accuracy(blurred, truth[:300])
    assert all(a >= 0.95 for a in accuracy.values()), accuracy


def test_describe_inputs_and_messy_images(train: datasets.Dataset) -> None:
    row = train[0]
    truth = _labels(train.select([0]))[0]
    assert describe(row["image"]) == truth
    assert describe(row["image"].convert("RGBA")) == truth
    assert describe(np.asarray(row["image"])) == truth
    assert describe_batch([]) == []
    messy = [
        np.full((32, 32, 3), 230, np.uint8),  # nothing drawn
        np.zeros((32, 32, 3), np.uint8),
        np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8),
        np.maximum(  # two shapes
            render_shape("circle", PALETTE["red"], 10, (9, 9), 235),
            render_shape("square", PALETTE["blue"], 10, (23, 23), 235),
        ),
    ]
    for result in describe_batch(messy):
        assert set(result) == set(LABELS)
        for column, names in zip(LABELS, (SHAPES, COLORS, SIZES, POSITIONS)):
            assert result[column] in names
    with pytest.raises(ValueError, match="32x32"):
        describe(np.zeros((64, 64, 3), np.uint8))

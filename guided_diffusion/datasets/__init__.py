"""Built-in datasets. ``shapes32`` is the generated dataset the default model is trained on; ``emoji``
(npm ``emoji-datasource-*``) and ``fashion_mnist`` (Debian ``dataset-fashion-mnist``) are real data,
fetched once by ``gd-data fetch NAME`` (:data:`FETCHERS`)."""

from guided_diffusion.datasets.emoji import fetch_emoji, make_emoji
from guided_diffusion.datasets.fashion_mnist import FASHION_MNIST_CLASSES, fetch_fashion_mnist, make_fashion_mnist
from guided_diffusion.datasets.shapes import (
    COLORS,
    FEATURES,
    HELDOUT_PAIRS,
    PALETTE,
    POSITION_XY,
    POSITIONS,
    SHAPES,
    SIZE_PX,
    SIZES,
    SPLITS,
    ShapeAttributes,
    canonical_caption,
    caption_vocabulary,
    describe,
    describe_batch,
    make_shapes32,
    make_shapes32_dataset_dict,
    render_shape,
    sample_attributes,
)

FETCHERS = {"emoji": fetch_emoji, "fashion_mnist": fetch_fashion_mnist}

__all__ = [
    "FETCHERS",
    "fetch_emoji",
    "make_emoji",
    "FASHION_MNIST_CLASSES",
    "fetch_fashion_mnist",
    "make_fashion_mnist",
    "COLORS",
    "FEATURES",
    "HELDOUT_PAIRS",
    "PALETTE",
    "POSITION_XY",
    "POSITIONS",
    "SHAPES",
    "SIZE_PX",
    "SIZES",
    "SPLITS",
    "ShapeAttributes",
    "canonical_caption",
    "caption_vocabulary",
    "describe",
    "describe_batch",
    "make_shapes32",
    "make_shapes32_dataset_dict",
    "render_shape",
    "sample_attributes",
]

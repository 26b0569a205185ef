"""Shapes32: a generated, seedable dataset of one coloured shape on a plain grey background.

Every image is 32x32 RGB with a single filled, anti-aliased shape. Four attributes are drawn
independently (except that some colour-shape pairs are held out of training):

- ``shape``: circle, square (axis-aligned), triangle (upright isosceles, base at the bottom,
  width equal to height);
- ``color``: one of six palette colours, each RGB channel jittered by up to +-12;
- ``size``: small (10 px across) or large (18 px), +-1 px;
- ``position``: the shape's bounding-box centre at x, y in {9, 16, 23} px (+-1 px), named
  "top left", "top", ..., "bottom right".

Coordinates are continuous, with the image spanning [0, 32] on both axes (pixel ``i`` covers
``[i, i + 1)``), so 16 is the exact centre and 9 / 23 are symmetric about it. A large shape near a
border is nudged inwards (never by more than the +-1 px jitter) so that it always lies fully inside.

Rendering is exact in x (each sub-row of a pixel covers an interval whose overlap with the pixel is
computed analytically) and supersampled 16 times in y, then colours are blended with the background
by coverage.

The colour-shape pairs in ``HELDOUT_PAIRS`` never appear in the ``"train"`` split; the ``"heldout"``
split contains only them, to test whether a model composes attributes it saw only separately.
``describe`` reads the attributes back from an image (generated here or by a model).
"""

from __future__ import annotations

import io
import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import datasets
import numpy as np
from PIL import Image

IMAGE_SIZE = 32
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (50, 170, 70),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
}
SIZES: tuple[str, ...] = ("small", "large")
SIZE_PX: dict[str, int] = {"small": 10, "large": 18}
POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
_GRID = (9, 16, 23)
POSITION_XY: dict[str, tuple[int, int]] = {
    name: (_GRID[i % 3], _GRID[i // 3]) for i, name in enumerate(POSITIONS)
}
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("purple", "triangle"),
    ("orange", "square"),
    ("green", "circle"),
)
SPLITS: tuple[str, ...] = ("train", "test", "heldout")
BACKGROUND_GREY_RANGE: tuple[int, int] = (225, 245)
COLOR_JITTER = 12
SIZE_JITTER_PX = 1.0
POSITION_JITTER_PX = 1.0

FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "text": datasets.Value("string"),
        "shape": datasets.ClassLabel(names=list(SHAPES)),
        "color": datasets.ClassLabel(names=list(COLORS)),
        "size": datasets.ClassLabel(names=list(SIZES)),
        "position": datasets.ClassLabel(names=list(POSITIONS)),
    }
)

_SUBROWS = 16  # vertical supersampling factor of the renderer
_RENDER_CHUNK = 256  # images rendered per vectorised step (bounds memory to ~20 MB)
_PALETTE_ARRAY = np.array([PALETTE[c] for c in COLORS], dtype=np.float32)  # [6, 3]
_SIZE_ARRAY = np.array([SIZE_PX[s] for s in SIZES], dtype=np.float64)  # [2]
_POSITION_ARRAY = np.array([POSITION_XY[p] for p in POSITIONS], dtype=np.float64)  # [9, 2]
# Area of each shape divided by the area of its bounding box (order of SHAPES).
_FILL_RATIO = np.array([math.pi / 4, 1.0, 0.5])


@dataclass(frozen=True)
class ShapeAttributes:
    """Everything needed to render one Shapes32 image.

    ``shape``, ``color``, ``size`` and ``position`` are the class names; the other fields are the
    jittered values actually drawn (``center_xy`` in continuous pixel coordinates, image = [0, 32]).
    """

    shape: str
    color: str
    size: str
    position: str
    color_rgb: tuple[int, int, int]
    size_px: float
    center_xy: tuple[float, float]
    background_grey: int

    def labels(self) -> dict[str, str]:
        """The four class names as a dict, in the format returned by :func:`describe`."""
        return {
            "shape": self.shape,
            "color": self.color,
            "size": self.size,
            "position": self.position,
        }


# ----------------------------------------------------------------------------------------------
# Captions


def canonical_caption(shape: str, color: str, size: str, position: str) -> str:
    """The canonical caption, e.g. ``"a small blue triangle in the top right"``.

    Raises ``ValueError`` if an attribute is not one of ``SHAPES``, ``COLORS``, ``SIZES``,
    ``POSITIONS``.
    """
    for value, allowed, name in (
        (shape, SHAPES, "shape"),
        (color, COLORS, "color"),
        (size, SIZES, "size"),
        (position, POSITIONS, "position"),
    ):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
    return f"a {size} {color} {shape} in the {position}"


# Synonyms used by the non-canonical templates (the canonical one uses the class names).
_SHAPE_WORDS = {
    "circle": ("circle", "disk", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
}
_COLOR_WORDS = {c: (c,) for c in COLORS} | {"purple": ("purple", "violet")}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_WHERE_WORDS = {
    "top left": ("in the top left", "in the upper left", "in the top left corner"),
    "top": ("at the top", "near the top", "in the top"),
    "top right": ("in the top right", "in the upper right", "in the top right corner"),
    "left": ("on the left", "at the left", "in the left"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "at the right", "in the right"),
    "bottom left": ("in the bottom left", "in the lower left", "in the bottom left corner"),
    "bottom": ("at the bottom", "near the bottom", "in the bottom"),
    "bottom right": ("in the bottom right", "in the lower right", "in the bottom right corner"),
}
# (template, weight). Fields: size, color, shape (synonyms), where (a position phrase).
_TEMPLATES: tuple[tuple[str, float], ...] = (
    ("CANONICAL", 6.0),
    ("a {size} {color} {shape} {where}", 2.0),
    ("a picture of a {size} {color} {shape} {where}", 1.0),
    ("{where} there is a {size} {color} {shape}", 1.0),
    ("a {color} {shape} {where}", 1.0),
    ("a {size} {shape} {where}", 1.0),
    ("a {size} {color} {shape}", 1.0),
    ("a {size} {color} shape {where}", 1.0),
    ("a {color} {shape}", 1.0),
    ("a {size} {shape}", 1.0),
    ("a {shape} {where}", 1.0),
    ("something {color} {where}", 1.0),
    ("something {where}", 1.0),
    ("a {color} shape", 0.5),
    ("a {shape}", 0.5),
)
_TEMPLATE_P = np.array([w for _, w in _TEMPLATES]) / sum(w for _, w in _TEMPLATES)
_ARTICLE = re.compile(r"\ba (?=[aeiou])")


def _pick(options: Sequence[str], u: float) -> str:
    return options[min(int(u * len(options)), len(options) - 1)]


def _caption(template: str, shape: str, color: str, size: str, position: str, u: np.ndarray) -> str:
    """Fill one template; ``u`` holds four uniforms in [0, 1) choosing the synonyms."""
    if template == "CANONICAL":
        return canonical_caption(shape, color, size, position)
    text = template.format(
        shape=_pick(_SHAPE_WORDS[shape], u[0]),
        color=_pick(_COLOR_WORDS[color], u[1]),
        size=_pick(_SIZE_WORDS[size], u[2]),
        where=_pick(_WHERE_WORDS[position], u[3]),
    )
    return _ARTICLE.sub("an ", text)


# ----------------------------------------------------------------------------------------------
# Sampling


def caption_vocabulary() -> list[str]:
    """Distinct captions that together hold every word a Shapes32 caption can use: each template
    filled for every attribute value with each of its synonyms (sorted). A text encoder trained on
    Shapes32 has seen these words and no others
    (:meth:`~guided_diffusion.pipeline.GuidedDiffusionPipeline.restrict_vocabulary`)."""
    attributes = itertools.product(SHAPES, COLORS, SIZES, POSITIONS)
    choices = [np.full(4, k / 6) for k in range(6)]  # picks every synonym of lists of 1, 2 or 3
    return sorted(
        {_caption(template, *values, u) for values in attributes for template, _ in _TEMPLATES for u in choices}
    )


def _split_pairs(split: str) -> np.ndarray:
    """The allowed (color index, shape index) pairs of a split, shape [P, 2]."""
    if split not in SPLITS:
        raise ValueError(f"unknown Shapes32 split {split!r}; choose one of {', '.join(SPLITS)}")
    heldout = set(HELDOUT_PAIRS)
    pairs = [
        (ci, si)
        for ci, c in enumerate(COLORS)
        for si, s in enumerate(SHAPES)
        if ((c, s) in heldout) == (split == "heldout")
    ]
    return np.array(pairs, dtype=np.int64)


def _sample_arrays(rng: np.random.Generator, n: int, split: str) -> dict[str, np.ndarray]:
    """Draw ``n`` attribute sets at once; arrays are indexed by image along axis 0."""
    allowed = _split_pairs(split)
    pairs = allowed[rng.integers(len(allowed), size=n)]
    color_idx, shape_idx = pairs[:, 0], pairs[:, 1]
    size_idx = rng.integers(len(SIZES), size=n)
    position_idx = rng.integers(len(POSITIONS), size=n)
    jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=(n, 3))
    rgb = np.clip(_PALETTE_ARRAY[color_idx].astype(np.int64) + jitter, 0, 255)
    size_px = _SIZE_ARRAY[size_idx] + rng.uniform(-SIZE_JITTER_PX, SIZE_JITTER_PX, size=n)
    center = _POSITION_ARRAY[position_idx] + rng.uniform(
        -POSITION_JITTER_PX, POSITION_JITTER_PX, size=(n, 2)
    )
    half = size_px[:, None] / 2
    center = np.clip(center, half, IMAGE_SIZE - half)  # keep the whole shape inside the image
    lo, hi = BACKGROUND_GREY_RANGE
    grey = rng.integers(lo, hi + 1, size=n)
    return {
        "shape": shape_idx,
        "color": color_idx,
        "size": size_idx,
        "position": position_idx,
        "rgb": rgb,
        "size_px": size_px,
        "center": center,
        "grey": grey,
    }


def sample_attributes(rng: np.random.Generator, split: str = "train") -> ShapeAttributes:
    """Draw one random attribute set from the distribution of ``split``.

    ``split`` is "train" or "test" (never a colour-shape pair in ``HELDOUT_PAIRS``) or "heldout"
    (only those pairs).
    """
    a = _sample_arrays(rng, 1, split)
    return ShapeAttributes(
        shape=SHAPES[a["shape"][0]],
        color=COLORS[a["color"][0]],
        size=SIZES[a["size"][0]],
        position=POSITIONS[a["position"][0]],
        color_rgb=tuple(int(v) for v in a["rgb"][0]),
        size_px=float(a["size_px"][0]),
        center_xy=(float(a["center"][0, 0]), float(a["center"][0, 1])),
        background_grey=int(a["grey"][0]),
    )


# ----------------------------------------------------------------------------------------------
# Rendering


def _coverage(
    shape_idx: np.ndarray, size_px: np.ndarray, cx: np.ndarray, cy: np.ndarray
) -> np.ndarray:
    """Fraction of each pixel covered by each shape: [N, 32, 32] float32 in [0, 1].

    Each pixel row is split into ``_SUBROWS`` sub-rows; a sub-row crosses the shape along one
    interval [left, right], whose overlap with every pixel column is exact.
    """
    n = len(shape_idx)
    ys = ((np.arange(IMAGE_SIZE * _SUBROWS) + 0.5) / _SUBROWS).astype(np.float32)  # [R]
    half = (np.asarray(size_px, np.float32) / 2)[:, None]  # [N, 1]
    dy = ys[None, :] - np.asarray(cy, np.float32)[:, None]  # [N, R]
    inside = np.abs(dy) <= half
    half_width = np.stack(
        [
            np.sqrt(np.maximum(half * half - dy * dy, 0.0)),  # circle
            np.where(inside, half, 0.0),  # square
            np.where(inside, (dy + half) / 2, 0.0),  # triangle: width grows from apex to base
        ]
    )[np.asarray(shape_idx), np.arange(n)]  # [N, R]
    centre_x = np.asarray(cx, np.float32)[:, None, None]
    xs = np.arange(IMAGE_SIZE, dtype=np.float32)
    overlap = np.minimum(centre_x + half_width[..., None], xs + 1) - np.maximum(
        centre_x - half_width[..., None], xs
    )  # [N, R, 32]
    np.clip(overlap, 0.0, 1.0, out=overlap)
    return overlap.reshape(n, IMAGE_SIZE, _SUBROWS, IMAGE_SIZE).mean(axis=2)


def _render_arrays(a: dict[str, np.ndarray], start: int, stop: int) -> np.ndarray:
    """Render images ``start:stop`` of sampled arrays ``a``: [n, 32, 32, 3] uint8."""
    sl = slice(start, stop)
    alpha = _coverage(a["shape"][sl], a["size_px"][sl], a["center"][sl, 0], a["center"][sl, 1])
    grey = a["grey"][sl].astype(np.float32)[:, None, None, None]
    rgb = a["rgb"][sl].astype(np.float32)[:, None, None, :]
    image = grey + alpha[..., None] * (rgb - grey)
    return np.rint(image).astype(np.uint8)


def render_shape(
    shape: str,
    color_rgb: Sequence[int],
    size_px: float,
    center_xy: tuple[float, float],
    background_grey: int,
) -> np.ndarray:
    """Render one anti-aliased shape on a plain grey background: [32, 32, 3] uint8.

    ``size_px`` is the width (= height) of the shape's bounding box and ``center_xy`` its centre,
    in continuous coordinates where the image spans [0, 32] (pixel ``i`` covers ``[i, i + 1)``).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    a = {
        "shape": np.array([SHAPES.index(shape)]),
        "size_px": np.array([size_px], dtype=np.float64),
        "center": np.array([center_xy], dtype=np.float64),
        "grey": np.array([background_grey]),
        "rgb": np.array([color_rgb]),
    }
    return _render_arrays(a, 0, 1)[0]


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# Datasets


def make_shapes32(num_images: int, seed: int = 0, split: str = "train") -> datasets.Dataset:
    """Generate ``num_images`` Shapes32 images as a Hugging Face ``datasets.Dataset``.

    Columns: ``image`` (``datasets.Image``, 32x32 RGB PNG), ``text`` (a caption drawn from several
    templates, about 30% of them canonical: see :func:`canonical_caption`) and the
    ``ClassLabel`` columns ``shape``, ``color``, ``size``, ``position`` (names as in the constants).

    ``split`` picks the distribution: "train" (no pair in ``HELDOUT_PAIRS``), "test" (the same
    pairs as "train" from an independent random stream) or "heldout" (only ``HELDOUT_PAIRS``).
    The same ``(num_images, seed, split)`` always gives the same dataset (images, captions, labels).
    """
    if not isinstance(num_images, (int, np.integer)) or num_images < 0:
        raise ValueError(f"num_images must be a non-negative integer, got {num_images!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _split_pairs(split)  # validates the split name
    rng = np.random.default_rng([int(seed), SPLITS.index(split)])
    a = _sample_arrays(rng, int(num_images), split)
    templates = rng.choice(len(_TEMPLATES), size=num_images, p=_TEMPLATE_P)
    synonyms = rng.random((num_images, 4))
    texts = [
        _caption(
            _TEMPLATES[t][0],
            SHAPES[a["shape"][i]],
            COLORS[a["color"][i]],
            SIZES[a["size"][i]],
            POSITIONS[a["position"][i]],
            synonyms[i],
        )
        for i, t in enumerate(templates)
    ]
    images = []
    for start in range(0, num_images, _RENDER_CHUNK):
        chunk = _render_arrays(a, start, min(start + _RENDER_CHUNK, num_images))
        images.extend({"bytes": _png(image), "path": None} for image in chunk)
    info = datasets.DatasetInfo(
        description=f"Shapes32 ({split} split, seed {seed}): one coloured shape on grey.",
        features=FEATURES,
    )
    return datasets.Dataset.from_dict(
        {
            "image": images,
            "text": texts,
            "shape": a["shape"].tolist(),
            "color": a["color"].tolist(),
            "size": a["size"].tolist(),
            "position": a["position"].tolist(),
        },
        features=FEATURES,
        info=info,
    )


def make_shapes32_dataset_dict(
    num_train: int, num_heldout: int, seed: int = 0, num_test: int = 0
) -> datasets.DatasetDict:
    """A ``DatasetDict`` with "train" and "heldout" splits (and "test" when ``num_test > 0``)."""
    splits = {"train": num_train, "test": num_test, "heldout": num_heldout}
    return datasets.DatasetDict(
        {
            name: make_shapes32(count, seed=seed, split=name)
            for name, count in splits.items()
            if name != "test" or count > 0
        }
    )


# ----------------------------------------------------------------------------------------------
# Reading attributes back

_MIN_CONTRAST = 40.0  # RGB distance from the background below which nothing counts as a shape
_PEAK_RANK = 8  # the k-th most distinct pixel sets the foreground contrast (robust to outliers)
_WINDOW_MARGIN = 2  # px added around the shape's box before measuring its moments
_COMPARE_BLUR = 1.0  # px; templates and image are both blurred before comparison (blur tolerance)
_MIN_SATURATION = 0.7  # how far a colour may fade towards the background and still match


def _as_batch(images: Iterable[Image.Image | np.ndarray] | np.ndarray) -> np.ndarray:
    """Stack images into float32 [N, 32, 32, 3], checking sizes."""
    arrays = []
    for item in images:
        if isinstance(item, Image.Image):
            item = np.asarray(item.convert("RGB"))
        array = np.asarray(item)
        if array.shape != (IMAGE_SIZE, IMAGE_SIZE, 3) or array.dtype != np.uint8:
            raise ValueError(
                "describe expects 32x32 RGB images (PIL or uint8 arrays [32, 32, 3]), got an "
                f"array of shape {array.shape} and dtype {array.dtype}; resize to 32x32 and "
                "convert to uint8 first"
            )
        arrays.append(array)
    if not arrays:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    return np.stack(arrays).astype(np.float32)


def _heaviest_run(weights: np.ndarray) -> tuple[int, int]:
    """[start, stop) of the contiguous run of positive ``weights`` with the largest total weight."""
    best, best_mass, start, mass = (0, 0), -1.0, 0, 0.0
    for i, w in enumerate(np.append(weights, 0.0)):
        if w > 0:
            if mass == 0.0:
                start = i
            mass += float(w)
        elif mass > 0.0:
            if mass > best_mass:
                best, best_mass = (start, i), mass
            mass = 0.0
    return best


def _blur_matrix(sigma: float) -> np.ndarray:
    """[32, 32] matrix ``K`` such that ``K @ x @ K.T`` blurs x [..., 32, 32] with a Gaussian."""
    offsets = np.arange(IMAGE_SIZE)[:, None] - np.arange(IMAGE_SIZE)[None, :]
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2).astype(np.float32)
    return kernel / kernel.sum(1, keepdims=True)


_BLUR = _blur_matrix(_COMPARE_BLUR)


def _position_name(x: float, y: float) -> str:
    """Name of the grid position (x, y in {9, 16, 23}) nearest to the box centre ``(x, y)``."""
    grid = np.array(_GRID)
    col = int(np.argmin(np.abs(grid - x)))
    row = int(np.argmin(np.abs(grid - y)))
    return POSITIONS[3 * row + col]


def describe_batch(images: Iterable[Image.Image | np.ndarray] | np.ndarray) -> list[dict[str, str]]:
    """Read shape, color, size and position from 32x32 RGB images (see :func:`describe`).

    ``images`` is a sequence of PIL images or uint8 arrays [32, 32, 3], or one uint8 array
    [N, 32, 32, 3]. Returns one dict per image with keys "shape", "color", "size", "position".
    """
    batch = _as_batch(images)  # [N, 32, 32, 3]
    results: list[dict[str, str]] = []
    for start in range(0, len(batch), _RENDER_CHUNK):
        results.extend(_describe_chunk(batch[start : start + _RENDER_CHUNK]))
    return results


def _describe_chunk(batch: np.ndarray) -> list[dict[str, str]]:
    """:func:`describe_batch` on float32 images [N, 32, 32, 3] with N <= ``_RENDER_CHUNK``."""
    n = len(batch)
    border = np.concatenate(
        [batch[:, 0], batch[:, -1], batch[:, 1:-1, 0], batch[:, 1:-1, -1]], axis=1
    )  # [N, 124, 3]
    background = np.median(border, axis=1)  # [N, 3]
    diff = batch - background[:, None, None, :]
    dist = np.linalg.norm(diff, axis=-1).reshape(n, -1)  # [N, 1024]
    peak = np.partition(dist, -_PEAK_RANK, axis=1)[:, -_PEAK_RANK]  # [N]
    # Foreground colour: mean of the pixels nearly as distinct as the peak (the fully covered ones).
    core = dist >= 0.85 * peak[:, None]
    core_sum = (batch.reshape(n, -1, 3) * core[..., None]).sum(1)  # [N, 3]
    foreground = core_sum / np.maximum(core.sum(1), 1)[:, None]
    direction = foreground - background  # [N, 3]
    # Nearest palette colour, allowing it to fade towards the background (blur, thin shapes): the
    # distance from the foreground to the segment bg + t * (palette - bg), t in [_MIN_SATURATION, 1]
    towards = _PALETTE_ARRAY[None] - background[:, None, :]  # [N, 6, 3]
    t = np.einsum("nkc,nc->nk", towards, direction) / np.maximum((towards * towards).sum(-1), 1e-6)
    t = np.clip(t, _MIN_SATURATION, 1.0)
    color_idx = np.argmin(
        np.linalg.norm(direction[:, None] - t[..., None] * towards, axis=-1), axis=1
    )
    # Coverage estimate: projection of each pixel onto the background -> foreground segment.
    alpha = (
        np.einsum("npc,nc->np", diff.reshape(n, -1, 3), direction)
        / np.maximum((direction * direction).sum(1), 1e-6)[:, None]
    )
    alpha = alpha.reshape(n, IMAGE_SIZE, IMAGE_SIZE)
    has_shape = peak >= _MIN_CONTRAST

    # Restrict to the heaviest block of rows x columns, so that stray specks do not skew moments.
    window = np.zeros_like(alpha, dtype=bool)
    for i in np.flatnonzero(has_shape):
        solid = alpha[i] > 0.5
        r0, r1 = _heaviest_run(solid.sum(1).astype(np.float64))
        c0, c1 = _heaviest_run(solid[r0:r1].sum(0).astype(np.float64))
        window[
            i,
            max(r0 - _WINDOW_MARGIN, 0) : r1 + _WINDOW_MARGIN,
            max(c0 - _WINDOW_MARGIN, 0) : c1 + _WINDOW_MARGIN,
        ] = True
    mass = np.where(window, alpha, 0.0)
    area = np.maximum(mass.sum((1, 2)), 1.0)  # [N]
    coords = np.arange(IMAGE_SIZE) + 0.5
    cx = (mass.sum(1) * coords).sum(1) / area
    cy = (mass.sum(2) * coords).sum(1) / area

    # Fit each shape by its moments (area -> size, centroid -> box centre) and keep the best match.
    fit_size = np.sqrt(area[None, :] / _FILL_RATIO[:, None])  # [3, N]
    # A triangle's centroid lies d/6 below the centre of its box.
    centre_y = np.stack([cy, cy, cy - fit_size[2] / 6])  # [3, N]
    templates = _coverage(
        np.repeat(np.arange(len(SHAPES)), n),
        fit_size.ravel(),
        np.tile(cx, len(SHAPES)),
        centre_y.ravel(),
    ).reshape(len(SHAPES), n, IMAGE_SIZE, IMAGE_SIZE)
    # Compare after a light blur of both, so that blurry images still match the sharp templates.
    observed = _BLUR @ np.clip(alpha, 0.0, 1.0).astype(np.float32) @ _BLUR.T
    error = ((_BLUR @ templates @ _BLUR.T - observed[None]) ** 2).sum((2, 3))  # [3, N]
    shape_idx = np.argmin(error, axis=0)
    size_px = fit_size[shape_idx, np.arange(n)]
    box_y = centre_y[shape_idx, np.arange(n)]

    threshold = float(np.mean(_SIZE_ARRAY))
    results = []
    for i in range(n):
        if has_shape[i]:
            result = {
                "shape": SHAPES[shape_idx[i]],
                "color": COLORS[color_idx[i]],
                "size": SIZES[int(size_px[i] > threshold)],
                "position": _position_name(float(cx[i]), float(box_y[i])),
            }
        else:
            result = {
                "shape": "circle",
                "color": COLORS[color_idx[i]],
                "size": "small",
                "position": "center",
            }
        results.append(result)
    return results


def describe(image: Image.Image | np.ndarray) -> dict[str, str]:
    """Read the attributes of one 32x32 RGB image (PIL or uint8 [32, 32, 3]).

    Returns ``{"shape": ..., "color": ..., "size": ..., "position": ...}`` with values from
    ``SHAPES``, ``COLORS``, ``SIZES``, ``POSITIONS``.

    The background grey is the median of the border; each pixel's coverage is its projection onto
    the background -> foreground-colour segment, which noise and blur leave unbiased. Colour is the
    palette entry nearest the mean of the most distinct pixels (allowing it to fade part-way
    towards the background). Shape is the circle, square or triangle template, sized and placed by
    the coverage's area and centroid, that best matches the coverage; size and position come from
    that template's box. Messy images still get a best guess; an image with no visible shape gets
    a small circle in the center, coloured by its most distinct pixels.
    """
    return describe_batch([image])[0]

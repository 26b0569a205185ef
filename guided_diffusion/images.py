"""The one place for image conversions and grids.

Models see images as float tensors ``[N, 3, H, W]`` in [-1, 1]; people, files and datasets see PIL
images or uint8 arrays ``[N, H, W, 3]`` in 0..255. The conversions between them (one rounding rule:
level = round(255 * (x + 1) / 2), and back x = level / 127.5 - 1, which round-trip exactly) and the
one grid layout (:func:`image_grid`) live here, for the data pipeline, the dataset builders, the
pipeline's outputs, the CLI, the demo and the reports.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageColor, ImageDraw, ImageFont, ImageOps


Colour = str | tuple[int, int, int]


def colour_rgb(colour: Colour) -> tuple[int, int, int]:
    """A colour PIL understands ("white", "#808080", "rgb(0,0,0)") or an RGB triple, as an RGB triple;
    anything else raises ValueError naming the fix."""
    if isinstance(colour, tuple):
        return colour
    try:
        return ImageColor.getrgb(colour)[:3]
    except ValueError:
        raise ValueError(f"background {colour!r} is not a colour; use a name or hex code such as 'white' or '#ffffff'") from None


def flatten_alpha(image: Image.Image, background: Colour = "white") -> Image.Image:
    """``image`` as RGB; a transparent image (RGBA, LA, or a palette with transparency) is composited
    on ``background`` (see :func:`colour_rgb`), instead of having its alpha channel dropped (which leaves
    transparent pixels whatever colour they happen to hold, usually black)."""
    fill = colour_rgb(background)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, fill + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _check_batch(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
        what = f"a {x.dtype} tensor of shape {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected a float tensor [N, 3, H, W] in [-1, 1], got {what}")


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (any shape, device or float dtype) as float32 in [0, 1] on the CPU, out-of-range
    values clamped: what the pipeline's ``output_type="pt"`` returns."""
    return ((x.detach().float() + 1) / 2).clamp(0, 1).cpu()


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """Images ``[N, 3, H, W]`` in [-1, 1] as a float32 array ``[N, H, W, 3]`` in [0, 1] (:func:`to_unit`,
    not rounded to levels), channels last: what diffusers' and the pipeline's ``output_type="np"`` give.
    Refuses other shapes with ValueError."""
    _check_batch(x)
    return np.ascontiguousarray(to_unit(x).permute(0, 2, 3, 1).numpy())


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images ``[N, 3, H, W]`` in [-1, 1] as a uint8 array ``[N, H, W, 3]`` (channels last, as PIL has
    them): level = round(255 * :func:`to_unit` (x)), half to even, the levels of :func:`to_pil`;
    out-of-range values clamp to 0 and 255. Refuses other shapes with ValueError."""
    _check_batch(x)
    return np.ascontiguousarray((to_unit(x) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """Images ``[N, 3, H, W]`` in [-1, 1] (any device or float dtype) as N RGB PIL images, rounded as
    :func:`to_uint8` rounds."""
    return [Image.fromarray(a) for a in to_uint8(x)]


def from_uint8(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (an array or a tensor) ``[N, H, W, 3]`` or ``[N, 3, H, W]`` (or one image, ``[H, W, 3]``
    or ``[3, H, W]``) as a float32 tensor ``[N, 3, H, W]`` (``[3, H, W]``) in [-1, 1]: x = level / 127.5 - 1,
    which :func:`to_uint8` rounds back exactly. The channel axis is the one of length 3; where both ends
    could be (a 3-pixel side), a numpy array is taken as channels last and a tensor as channels first.
    Refuses other dtypes, ranks and channel counts with ValueError."""
    t = torch.tensor(pixels) if isinstance(pixels, np.ndarray) else pixels  # a copy: PIL's arrays are read-only
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() not in (3, 4):
        what = f"{t.dtype} of shape {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"expected uint8 images [N, H, W, 3] or [N, 3, H, W] (or one, [H, W, 3] or [3, H, W]), got {what}")
    first, last = t.shape[-3] == 3, t.shape[-1] == 3
    if not (first or last):
        raise ValueError(f"expected 3 (RGB) channels first or last, got shape {list(t.shape)}")
    if last and not (first and isinstance(pixels, torch.Tensor)):
        t = t.movedim(-1, -3)
    return (t.float() / 127.5 - 1).contiguous()


def from_pil(images: Image.Image | Sequence[Image.Image], size: int | None = None, background: Colour = "white") -> torch.Tensor:
    """PIL images (or one) as a float32 tensor ``[N, 3, H, W]`` in [-1, 1] (see :func:`from_uint8`).

    Transparent images are composited on ``background`` (:func:`flatten_alpha`), grey ones become three
    equal planes. With ``size``, each image is centre-cropped to a square and resized to ``size`` pixels by
    area averaging (which undoes a nearest-neighbour enlargement exactly); without it the images must
    share a size. Refuses an empty list or mixed sizes with ValueError."""
    images = [images] if isinstance(images, Image.Image) else list(images)
    if not images:
        raise ValueError("no images to convert")
    rgb = [flatten_alpha(image, background) for image in images]
    if size is not None:
        rgb = [ImageOps.fit(image, (size, size), method=Image.Resampling.BOX) for image in rgb]
    sizes = sorted({image.size for image in rgb})
    if len(sizes) > 1:
        raise ValueError(f"images of different sizes {sizes} (width, height); pass size= to crop and resize them to one")
    return from_uint8(np.stack([np.asarray(image) for image in rgb]))


def enlarge(image: Image.Image, factor: int) -> Image.Image:
    """``image`` enlarged ``factor`` times with nearest-neighbour resampling (each pixel a sharp square)."""
    if factor < 1:
        raise ValueError(f"an enlargement factor must be at least 1, got {factor}")
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def image_grid(
    images: torch.Tensor | Sequence[Image.Image], columns: int | None = None, *, padding: int = 1, background: Colour = "white"
) -> Image.Image:
    """One RGB picture of ``images`` (a tensor ``[N, 3, H, W]`` in [-1, 1], or N PIL images of one size),
    ``columns`` a row (default: a near-square grid, ceil(sqrt(N)); never more than N), in reading order.

    Every image has ``padding`` pixels of ``background`` on each side, shared between neighbours, so the
    grid is ``columns * (W + padding) + padding`` wide and ``rows * (H + padding) + padding`` high, as
    torchvision's ``make_grid`` lays it out; and, as there, a single image comes back alone, unframed.
    Refuses no images, mixed sizes, bad shapes and a bad ``columns`` or ``padding`` with ValueError."""
    if isinstance(images, torch.Tensor):
        pictures = to_pil(images)
    else:
        pictures = [image.convert("RGB") for image in images]
    if not pictures:
        raise ValueError("no images to put in a grid")
    if columns is not None and columns < 1 or padding < 0:
        raise ValueError(f"a grid needs columns >= 1 and padding >= 0, got columns={columns}, padding={padding}")
    sizes = sorted({picture.size for picture in pictures})
    if len(sizes) > 1:
        raise ValueError(f"a grid needs images of one size, got {sizes} (width, height)")
    if len(pictures) == 1:
        return pictures[0]
    columns = min(columns or math.ceil(math.sqrt(len(pictures))), len(pictures))
    rows = -(-len(pictures) // columns)
    width, height = sizes[0]
    grid = Image.new("RGB", (columns * (width + padding) + padding, rows * (height + padding) + padding), colour_rgb(background))
    for i, picture in enumerate(pictures):
        row, column = divmod(i, columns)
        grid.paste(picture, (padding + column * (width + padding), padding + row * (height + padding)))
    return grid


def captioned_grid(images: list[Image.Image], captions: list[str], *, columns: int = 8, cell: int = 128) -> Image.Image:
    """One picture of ``images`` enlarged to ``cell`` pixels (nearest neighbour, so small samples stay
    sharp), ``columns`` a row, each with its caption written under it (wrapped to the cell's width)."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    font = ImageFont.load_default()
    per_line = max(1, (cell - 4) // 6)
    wrapped = [textwrap.wrap(caption, per_line) or [""] for caption in captions]
    line_height = 12
    text_height = line_height * max(len(lines) for lines in wrapped) + 4
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * (cell + 4), rows * (cell + text_height + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, lines) in enumerate(zip(images, wrapped)):
        x, y = (i % columns) * (cell + 4) + 2, (i // columns) * (cell + text_height + 4) + 2
        sheet.paste(image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        for j, line in enumerate(lines):
            draw.text((x, y + cell + 2 + j * line_height), line, fill="black", font=font)
    return sheet

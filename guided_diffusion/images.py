"""Image conversions shared by the data pipeline, the dataset builders and the reports."""

from __future__ import annotations

import textwrap

import numpy as np
import torch
from PIL import Image, ImageColor, ImageDraw, ImageFont


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


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """Images ``[N, 3, H, W]`` in [-1, 1] (any device or float dtype) as N RGB PIL images."""
    array = ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return [Image.fromarray(np.ascontiguousarray(a.permute(1, 2, 0).numpy())) for a in array]


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

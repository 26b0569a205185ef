"""Tiny on-disk imagefolders for the training tests: 16x16 grey PNGs with one coloured rectangle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SIZE = 16
GREY = 128


def write_imagefolder(root: Path, rows: list[dict[str, Any]], seed: int = 0) -> Path:
    """Write one ``{i:03d}.png`` and one metadata.jsonl line per row under ``root`` (created).

    A row holds ``rgb`` (the rectangle's colour), ``box`` ((height, width), placed at a random spot
    drawn from ``seed``), ``metadata`` (the other columns of its metadata.jsonl line) and, optionally,
    ``broken: True`` for a file that is not an image.
    """
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    with open(root / "metadata.jsonl", "w") as meta:
        for i, row in enumerate(rows):
            path = root / f"{i:03d}.png"
            if row.get("broken"):
                path.write_bytes(b"\x89PNG broken")
            else:
                height, width = row["box"]
                pixels = np.full((SIZE, SIZE, 3), GREY, dtype=np.uint8)
                top, left = rng.integers(0, SIZE - height + 1), rng.integers(0, SIZE - width + 1)
                pixels[top : top + height, left : left + width] = row["rgb"]
                Image.fromarray(pixels).save(path)
            meta.write(json.dumps({"file_name": path.name, **row["metadata"]}) + "\n")
    return root

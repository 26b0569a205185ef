"""Writing an evaluation's report: percentages and counts as the tables and prose show them, the sample sheet, and the files."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..images import captioned_grid, to_pil


def percent(value: float) -> str:
    """``0.123`` -> ``"12.3%"``; NaN (nothing to measure) -> ``"n/a"``."""
    return "n/a" if value != value else f"{value:.1%}"


def counted(n: int, noun: str) -> str:
    """``(1, "image")`` -> ``"1 image"``; ``(2, "image")`` -> ``"2 images"``: a count as a report's prose says it."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def save_samples(images: torch.Tensor, captions: Sequence[str], path: Path) -> None:
    """Images ``[N, 3, H, W]`` in [-1, 1], 8 a row, each enlarged with its caption under it."""
    captioned_grid(to_pil(images), list(captions), columns=8).save(path)


def write_report(out: Path, report: dict[str, Any], render: Callable[[dict[str, Any]], str]) -> None:
    """``report.json`` (the report) and ``report.md`` (``render(report)``) in ``out``."""
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(render(report))

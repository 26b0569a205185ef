"""Progress of a run: a tqdm bar, ``logs/metrics.jsonl``, TensorBoard when installed, a loss curve.

Each optimizer update logs one record, e.g. ``{"step": 12, "loss": 0.31, "lr": 1e-4,
"images_per_sec": 850.0, ...}``. Only the main process writes. A resumed run first drops the records
after its checkpoint's step, so the file always describes one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator
from accelerate.utils import is_tensorboard_available
from tqdm.auto import tqdm

METRICS_NAME = "metrics.jsonl"
LOSS_CURVE_NAME = "loss_curve.png"


def tracker_backends() -> list[str]:
    """The ``accelerate`` trackers to log to: TensorBoard when it is installed."""
    return ["tensorboard"] if is_tensorboard_available() else []


def read_metrics(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``output_dir/logs/metrics.jsonl`` (empty when there is none)."""
    path = Path(output_dir) / "logs" / METRICS_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Tracker:
    """Shows and records the metrics of each update.

    Args:
        accelerator: the run's accelerator (its trackers must already be initialised).
        output_dir: the run's folder.
        total_steps: the update the run ends at.
        start_step: the update the run starts after (the resumed checkpoint's, else 0).
    """

    def __init__(
        self, accelerator: Accelerator, output_dir: str | os.PathLike, total_steps: int, start_step: int
    ) -> None:
        self.accelerator = accelerator
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / "logs" / METRICS_NAME
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            desc="train",
            unit="step",
            disable=not accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        if accelerator.is_main_process:
            kept = [r for r in read_metrics(self.output_dir) if r["step"] <= start_step]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record the metrics of update ``step``."""
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(
            loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['images_per_sec']:.1f}", lr=f"{metrics['lr']:.2e}"
        )
        if self.accelerator.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
        self.accelerator.log(metrics, step=step)

    def write(self, message: str) -> None:
        """Print a line above the progress bar (main process only)."""
        if self.accelerator.is_main_process:
            self.bar.write(message)

    def close(self) -> None:
        """Close the bar and, on the main process, draw the loss curve."""
        self.bar.close()
        if self.accelerator.is_main_process:
            plot_loss_curve(read_metrics(self.output_dir), self.output_dir / LOSS_CURVE_NAME)


def plot_loss_curve(records: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Save the loss per update, with a moving average, as a PNG (matplotlib's Agg canvas)."""
    from matplotlib.figure import Figure

    steps = [r["step"] for r in records if math.isfinite(r["loss"])]
    losses = [r["loss"] for r in records if math.isfinite(r["loss"])]
    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.subplots()
    axes.plot(steps, losses, linewidth=0.8, alpha=0.5, label="loss")
    window = max(1, len(losses) // 20)
    if window > 1:
        totals = np.cumsum([0.0, *losses])
        counts = np.minimum(np.arange(1, len(losses) + 1), window)
        smoothed = (totals[1:] - totals[np.arange(1, len(losses) + 1) - counts]) / counts
        axes.plot(steps, smoothed, linewidth=1.5, label=f"mean of {window}")
    if losses and min(losses) > 0:
        axes.set_yscale("log")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)

"""train.diffusion on the (fake) emoji dataset: the published folder records the pairs the model saw and
never saw, offers the validation prompts as examples, and the validation grid is readable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from guided_diffusion.datasets.emoji import training_pairs

from .fake_emoji import write_fake_emoji

REPO = Path(__file__).resolve().parents[1]


def test_an_emoji_run_publishes_its_training_pairs_and_a_captioned_grid(tmp_path: Path) -> None:
    root = write_fake_emoji(tmp_path / "emoji")
    out = tmp_path / "run"
    prompts = ["tiger face, google style", "rocket, twitter style"]
    env = {**os.environ, "GD_EMOJI_DIR": str(root), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "train.diffusion", "--config", "configs/tiny.yaml", "--dataset_name", "emoji",
         "--resolution", "16", "--max_train_steps", "2", "--train_batch_size", "4", "--checkpointing_steps", "2",
         "--validation_steps", "2", "--validation_sampling_steps", "2", "--output_dir", str(out),
         "--validation_prompts", *prompts],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / "training_data.json").read_text())
    assert record == training_pairs(root=root)
    assert len(record["train_pairs"]) + len(record["held_out_pairs"]) == 18
    assert json.loads((out / "pipeline.json").read_text())["example_prompts"] == prompts
    grid = Image.open(out / "validation" / "step-000002.png")
    assert grid.width == 2 * (128 + 4) and grid.height > 128 + 12  # enlarged, with a caption band

"""train.classifier end to end on a tiny imagefolder with string label columns: outputs, the accuracy
report, guidance with the trained classifier (alone and attached to a pipeline), exact resume, user
errors; and the label and evaluation helpers in process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from guided_diffusion.data import DataConfig, DataError, label_classes
from guided_diffusion.errors import ConfigError
from guided_diffusion.datasets.shapes import COLORS, make_shapes32
from guided_diffusion.diffusion import GaussianDiffusion
from guided_diffusion.guidance import classifier_cond_fn, resolve_labels
from guided_diffusion.models.classifier import NoiseAwareClassifier
from guided_diffusion.pipeline import GuidedDiffusionPipeline
from train.classifier import HeldOutTrainingConfig, split_evaluation, t_ranges
from train.config import RunConfig

from .conftest import training_error_line
from .imagefolder import write_imagefolder

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
STEPS = 8
BATCH = 4
# Listed out of alphabetical order, so that the sorted class names differ from the order of appearance.
COLOR_RGB = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}
SHAPE_SIZES = {"square": (8, 8), "bar": (4, 12)}
RANGE_KEYS = ["t0-249", "t250-499", "t500-749", "t750-999"]


def make_labelled_folder(root: Path, num_images: int) -> Path:
    """16x16 PNGs of a coloured square or bar on grey; ``shape`` and ``color`` strings in metadata.jsonl."""
    rows = []
    for i in range(num_images):
        color, shape = list(COLOR_RGB)[i % 4], list(SHAPE_SIZES)[(i // 4) % 2]
        rows.append({"rgb": COLOR_RGB[color], "box": SHAPE_SIZES[shape], "metadata": {"shape": shape, "color": color}})
    return write_imagefolder(root, rows)


def flags(data: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--config", "configs/tiny_classifier.yaml", "--train_data_dir", str(data), "--label_columns", "shape", "color",
        "--output_dir", str(output_dir), "--train_batch_size", str(BATCH), "--max_train_steps", str(STEPS),
        "--checkpointing_steps", "4", "--validation_steps", "4", "--eval_samples", "8", *extra,
    ]


def train(args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "train.classifier", *args]
    result = subprocess.run(command, check=False, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "logs" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_labelled_folder(tmp_path_factory.mktemp("data") / "images", 40)


@pytest.fixture(scope="module")
def pipeline_dir(tiny_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny pipeline for the reference run to attach its classifier to."""
    target = tmp_path_factory.mktemp("attach") / "pipeline"
    shutil.copytree(tiny_pipeline_dir, target)
    return target


@pytest.fixture(scope="module")
def reference(data: Path, pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An uninterrupted run of STEPS updates that attaches its classifier to ``pipeline_dir``; returns its
    folder and stdout."""
    output_dir = tmp_path_factory.mktemp("runs") / "reference"
    result = train(flags(data, output_dir, "--attach_to_pipeline", str(pipeline_dir)))
    return output_dir, result.stdout


# ---------------------------------------------------------------------------------- end to end


def test_run_writes_checkpoints_metrics_report_and_classifier(reference: tuple[Path, str]) -> None:
    output_dir, stdout = reference
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    records = metrics(output_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(np.isfinite(r["loss"]) and r["images_per_sec"] > 0 for r in records)
    evaluated = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in evaluated] == [4, 8]
    for attribute in ("shape", "color"):
        keys = [f"eval/accuracy/{attribute}/{k}" for k in RANGE_KEYS]
        assert all(0.0 <= evaluated[-1][key] <= 1.0 for key in keys)

    report = json.loads((output_dir / "accuracy_by_t.json").read_text())
    assert report["step"] == STEPS and report["t_ranges"] == [[0, 250], [250, 500], [500, 750], [750, 1000]]
    assert report["evaluation_data"].startswith("8 images")
    table = (output_dir / "accuracy_by_t.md").read_text()
    assert "| attribute | classes | t 0-249 | t 250-499 | t 500-749 | t 750-999 | all t | chance |" in table
    assert table in stdout and "| color | 4 |" in table

    classifier = NoiseAwareClassifier.from_pretrained(output_dir / "classifier")
    assert classifier.labels == {"shape": ["bar", "square"], "color": ["blue", "green", "red", "yellow"]}
    ema = torch.load(output_dir / "checkpoint-8" / "custom_checkpoint_1.pkl", weights_only=True)["shadow"]
    exported = load_file(str(output_dir / "classifier" / "model.safetensors"))
    assert all(torch.equal(exported[name], ema[name]) for name in ema)


def test_trained_classifier_guides_alone_and_attached(reference: tuple[Path, str], pipeline_dir: Path) -> None:
    output_dir, stdout = reference
    classifier = NoiseAwareClassifier.from_pretrained(output_dir / "classifier").eval()
    x_t, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([100, 600])
    labels = resolve_labels(classifier.labels, {"color": "red", "shape": ["bar", "square"]}, 2, "cpu")
    grad = classifier_cond_fn(classifier, labels, scale=2.0)(x_t, t)
    assert grad.shape == x_t.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0

    assert f"attached the classifier to the pipeline in {pipeline_dir}" in stdout
    pipe = GuidedDiffusionPipeline.from_pretrained(pipeline_dir)
    assert pipe.classifier is not None and pipe.classifier.labels == classifier.labels
    settings = {"num_inference_steps": 4, "seed": 0, "output_type": "pt"}
    guided = pipe("", classifier_scale=50.0, classifier_labels={"color": "blue"}, **settings).images
    assert guided.shape == (1, 3, 16, 16) and torch.isfinite(guided).all()
    assert not torch.equal(guided, pipe("", **settings).images)


def test_resume_reproduces_the_losses_and_evaluation(reference: tuple[Path, str], data: Path, tmp_path: Path) -> None:
    output_dir, _ = reference
    resumed_dir = tmp_path / "resumed"
    result = train(flags(data, resumed_dir, "--resume_from_checkpoint", str(output_dir / "checkpoint-4")))
    assert "resumed from" in result.stdout + result.stderr
    resumed, expected = metrics(resumed_dir), metrics(output_dir)[4:]
    assert [r["step"] for r in resumed] == [5, 6, 7, 8]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in expected]
    assert {k: v for k, v in resumed[-1].items() if k.startswith("eval/")} == {
        k: v for k, v in expected[-1].items() if k.startswith("eval/")
    }
    final, reference_weights = (
        load_file(str(d / "classifier" / "model.safetensors")) for d in (resumed_dir, output_dir)
    )
    assert all(torch.equal(final[k], reference_weights[k]) for k in reference_weights)


# ---------------------------------------------------------------------------------- user errors


def error_in_process(args: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run ``train.classifier.main(args)`` in this process, expecting a user error; returns its line."""
    from train.classifier import main

    return training_error_line(main, "train.classifier", args, capsys)


def test_missing_label_column_is_refused_with_the_columns(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = flags(data, tmp_path / "run")
    args[args.index("color")] = "colour"
    line = error_in_process(args, capsys)
    assert "label_columns 'colour' is not a column" in line and "its columns are: image, shape, color" in line
    assert not (tmp_path / "run").exists()


def test_pipeline_with_another_schedule_or_size_is_refused(
    data: Path, pipeline_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tiny = (REPO / "configs" / "tiny_classifier.yaml").read_text()
    for name, edited, expected in [
        ("steps.yaml", tiny.replace("num_timesteps: 1000", "num_timesteps: 500"), "diffuses over 1000 steps"),
        (
            "size.yaml",
            tiny.replace("image_size: 16", "image_size: 32").replace("resolution: 16", "resolution: 32"),
            "16x16",
        ),
    ]:
        (tmp_path / name).write_text(edited)
        output_dir = tmp_path / f"run-{name}"
        args = [*flags(data, output_dir, "--attach_to_pipeline", str(pipeline_dir)), "--config", str(tmp_path / name)]
        assert expected in error_in_process(args, capsys)
        assert not output_dir.exists()


# ---------------------------------------------------------------------------------- helpers in process


def test_label_classes_sorts_strings_and_keeps_class_label_names(data: Path) -> None:
    folder = datasets.load_dataset(str(data), split="train")
    assert label_classes(folder, ["color", "shape"]) == {
        "color": ["blue", "green", "red", "yellow"],
        "shape": ["bar", "square"],
    }
    shapes = make_shapes32(6)
    assert label_classes(shapes, ["color"]) == {"color": list(COLORS)}  # ClassLabel order, not sorted
    numbers = datasets.Dataset.from_dict({"digit": [10, 2, 2, 7]})
    assert label_classes(numbers, ["digit"]) == {"digit": ["2", "7", "10"]}
    with pytest.raises(DataError, match="single class"):
        label_classes(datasets.Dataset.from_dict({"kind": ["a", "a"]}), ["kind"])
    with pytest.raises(DataError, match="cannot be collected from a stream"):
        label_classes(folder.to_iterable_dataset(), ["color"])


def test_evaluation_rows_are_held_out_of_training() -> None:
    dataset = datasets.Dataset.from_dict({"index": list(range(20))})
    run = RunConfig(
        path=Path("x.yaml"),
        model={},
        data=DataConfig(dataset_name="unused", label_columns=["index"]),
        training=HeldOutTrainingConfig(eval_samples=5),
    )
    train_rows, eval_rows, _ = split_evaluation(dataset, run)
    assert eval_rows.num_rows == 5 and train_rows.num_rows == 15
    assert sorted([*train_rows["index"], *eval_rows["index"]]) == list(range(20))
    run.training.eval_samples = 20
    with pytest.raises(ConfigError, match="eval_samples"):
        split_evaluation(dataset, run)


@pytest.mark.parametrize("key", ["gradient_checkpointing", "snr_gamma", "validation_prompts"])
def test_diffusion_only_keys_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown key '{key}' in the training section of run.yaml; valid keys: output_dir, seed"):
        HeldOutTrainingConfig.from_dict({key: True}, source="run.yaml")


def test_t_ranges_are_the_quarters_and_match_the_diffusion() -> None:
    assert t_ranges(1000) == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    assert t_ranges(10) == [(0, 2), (2, 5), (5, 8), (8, 10)]
    assert t_ranges(GaussianDiffusion.from_config({"num_timesteps": 50}).num_timesteps)[-1] == (38, 50)

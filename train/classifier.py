"""Train a noise-aware classifier p(y | x_t, t) for classifier guidance on a Hugging Face dataset.

    accelerate launch -m train.classifier --config configs/shapes32_classifier.yaml [--flag value ...]
    python -m train.classifier --config configs/tiny_classifier.yaml --label_columns shape color

The YAML config holds ``classifier`` (the :class:`~guided_diffusion.models.classifier.ClassifierConfig`
fields but ``labels``), ``diffusion`` (that of the model the classifier will guide: the same
``num_timesteps`` and ``beta_schedule``), ``data`` (with ``label_columns``) and ``training`` (a
:class:`HeldOutTrainingConfig`); flags override single keys (``--help`` lists them). Each label column
gets one head: a ``ClassLabel`` column keeps its class names, a column of strings gets its distinct
values, sorted.

Each image is noised with ``q_sample`` at t drawn uniformly from 0..T-1; the loss is the sum over
attributes of the cross-entropy. Held-out images (``eval_samples`` rows taken out of the training data,
or the first ``eval_samples`` of ``eval_split``) measure the accuracy of each attribute in each quarter
of the t range every ``validation_steps`` updates and at the end, with the EMA weights.

``output_dir`` receives ``checkpoint-{step}/`` folders (resume with ``--resume_from_checkpoint
latest``), ``logs/metrics.jsonl`` (with the evaluations), ``loss_curve.png``, ``config.yaml``,
``accuracy_by_t.md`` and ``accuracy_by_t.json`` (the latest evaluation), and, at every checkpoint, the
EMA classifier: ``NoiseAwareClassifier.from_pretrained(output_dir / "classifier")`` loads it. With
``--attach_to_pipeline DIR`` the final classifier is also saved into that pipeline folder, whose
``GuidedDiffusionPipeline.from_pretrained(DIR)`` then guides with it.
"""

from __future__ import annotations

import sys
import dataclasses
import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed

from guided_diffusion.data import (
    DataConfig,
    DataError,
    DataPosition,
    HFDataset,
    SampleReader,
    TrainData,
    check_columns,
    collate,
    label_classes,
    load_source,
)
from guided_diffusion.diffusion import GaussianDiffusion
from guided_diffusion.errors import ConfigError, exits_on_user_errors
from guided_diffusion.models.classifier import ClassifierConfig, NoiseAwareClassifier
from guided_diffusion.models.clip import NoiseAwareCLIP
from guided_diffusion.pipeline import GuidedDiffusionPipeline
from guided_diffusion.serialization import save_json

from .config import RunConfig, TrainingConfig, parse_run_config
from .loop import EvaluateFn, LossFn, Trainer, make_accelerator

CLASSIFIER_DIR = "classifier"
REPORT_NAME = "accuracy_by_t"
NUM_T_RANGES = 4


@dataclass
class HeldOutTrainingConfig(TrainingConfig):
    """The ``training`` section of a run measured on held-out images (the classifier, the CLIP):
    :class:`~train.config.TrainingConfig` plus the evaluation.

    ``eval_samples`` images are held out for evaluation: rows of the training data, left out of training,
    or, with ``eval_split`` (a split other than ``data.split``), the first rows of that split (for
    ``shapes32``, a freshly generated split of that size). ``attach_to_pipeline`` is a pipeline folder
    that receives the final model (the classifier, or the CLIP) for guidance.
    """

    eval_samples: int = 512
    eval_split: str | None = None
    eval_batch_size: int = 256
    attach_to_pipeline: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("eval_samples", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"training.{name} must be at least 1, got {getattr(self, name)}")


HELD_OUT_FLAGS: dict[str, dict[str, Any]] = {
    "eval_samples": {"type": int, "help": "held-out images the accuracy by timestep is measured on"},
    "eval_split": {"help": "take the held-out images from this split (default: out of the training data)"},
    "eval_batch_size": {"type": int, "help": "images per forward pass of the evaluation"},
    "attach_to_pipeline": {"help": "pipeline folder to save the final model into, for guidance"},
}
CLASSIFIER_FLAGS: dict[str, dict[str, dict[str, Any]]] = {
    "data": {
        "label_columns": {"nargs": "+", "help": "the columns holding the classes to predict (one head each)"},
    },
    "training": HELD_OUT_FLAGS,
}


# ---------------------------------------------------------------------------------------- building


def build_diffusion(run: RunConfig) -> GaussianDiffusion:
    """The forward process the classifier is trained under, from the config's ``diffusion`` section."""
    if "diffusion" not in run.model:
        raise ConfigError(
            f"{run.path} has no diffusion section; copy the one of the diffusion model the classifier will guide "
            "(its num_timesteps and beta_schedule)"
        )
    try:
        return GaussianDiffusion.from_config(run.model["diffusion"])
    except ValueError as err:
        raise ConfigError(f"bad diffusion config in {run.path}: {err}") from None


def build_classifier(run: RunConfig, class_names: Mapping[str, Sequence[str]]) -> NoiseAwareClassifier:
    """A fresh classifier from the config's ``classifier`` section, one head per label column."""
    section = dict(run.model.get("classifier") or {})
    if not section:
        raise ConfigError(f"{run.path} has no classifier section (image_size, base_channels, channel_mult, ...)")
    if "labels" in section:
        raise ConfigError(f"classifier.labels in {run.path}: the labels come from data.label_columns; remove it")
    try:
        config = ClassifierConfig.from_dict({**section, "labels": {k: list(v) for k, v in class_names.items()}})
    except ValueError as err:
        raise ConfigError(f"bad classifier config in {run.path}: {err}") from None
    if run.data.resolution not in (None, config.image_size):
        raise ConfigError(
            f"data.resolution ({run.data.resolution}) differs from classifier.image_size ({config.image_size}); "
            "set both to the image size of the model the classifier will guide"
        )
    return NoiseAwareClassifier(config)


def compatible_pipeline(folder: str | Path, image_size: int, diffusion: GaussianDiffusion, what: str) -> GuidedDiffusionPipeline:
    """The pipeline in ``folder``, refused unless it samples at the image size the ``what`` (the
    classifier, the CLIP) reads, under the same diffusion schedule."""
    pipe = GuidedDiffusionPipeline.from_pretrained(folder)
    size = pipe.unet.config.image_size
    if size != image_size:
        raise ConfigError(
            f"the pipeline in {folder} makes {size}x{size} images but the {what} reads "
            f"{image_size}x{image_size}; set {what}.image_size and data.resolution to {size}"
        )
    theirs = pipe.diffusion
    if theirs.num_timesteps != diffusion.num_timesteps or not torch.allclose(theirs.betas, diffusion.betas):
        raise ConfigError(
            f"the pipeline in {folder} diffuses over {theirs.num_timesteps} steps "
            f"({pipe.diffusion.config.beta_schedule} schedule) but the {what}'s diffusion section "
            f"over {diffusion.num_timesteps}; copy the pipeline's num_timesteps and beta_schedule into it"
        )
    return pipe


def report_and_attach(
    report: Path, training: HeldOutTrainingConfig, model: NoiseAwareClassifier | NoiseAwareCLIP, diffusion: GaussianDiffusion, saved: Path
) -> None:
    """The end of a held-out run, on the main process: print its ``report`` (markdown) and, with
    ``attach_to_pipeline``, attach the saved model to that pipeline."""
    if report.is_file():
        print(report.read_text(), flush=True)
    if training.attach_to_pipeline is not None:
        attach_to_pipeline(training.attach_to_pipeline, model, diffusion, saved)


def attach_to_pipeline(folder: str | Path, model: NoiseAwareClassifier | NoiseAwareCLIP, diffusion: GaussianDiffusion, saved: Path) -> None:
    """Put the model saved in ``saved`` (a classifier or a CLIP, as ``model`` is) into the pipeline in
    ``folder`` (checked by :func:`compatible_pipeline`) and save the pipeline there."""
    what = "classifier" if isinstance(model, NoiseAwareClassifier) else "clip"
    pipe = compatible_pipeline(folder, model.config.image_size, diffusion, what)
    setattr(pipe, what, type(model).from_pretrained(saved).eval())
    pipe.save_pretrained(pipe.folder)
    print(f"attached the {what} to the pipeline in {pipe.folder}", flush=True)


# ---------------------------------------------------------------------------------------- data


def split_evaluation(dataset: HFDataset, run: RunConfig) -> tuple[HFDataset, HFDataset, str]:
    """``(training rows, evaluation rows, a description of the latter)``: ``eval_samples`` rows of
    ``eval_split``, or as many rows drawn (by the seed) out of ``dataset`` and left out of training."""
    data, training = run.data, run.training
    count = training.eval_samples
    if training.eval_split is not None:
        if training.eval_split == data.split:
            raise ConfigError(
                f"eval_split {training.eval_split!r} is the training split; name another split, or leave it out "
                "to hold out eval_samples rows of the training data"
            )
        config = dataclasses.replace(data, split=training.eval_split, num_images=count)
        held_out = load_source(config)
        check_columns(held_out, config)
        if isinstance(held_out, datasets.IterableDataset):
            held_out = held_out.take(count)
        else:
            held_out = held_out.select(range(min(count, held_out.num_rows)))
        return dataset, held_out, f"split {training.eval_split!r}"
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.skip(count), dataset.take(count), "the first rows of the stream, left out of training"
    if count >= dataset.num_rows:
        raise ConfigError(
            f"eval_samples ({count}) must be smaller than the dataset ({dataset.num_rows} rows); lower "
            "--eval_samples or pass --eval_split"
        )
    order = np.random.default_rng(training.seed).permutation(dataset.num_rows)
    return (
        dataset.select(np.sort(order[count:])),
        dataset.select(np.sort(order[:count])),
        "held out of the training data",
    )


@dataclass
class EvalSet:
    """Held-out images ``[N, 3, H, W]`` in [-1, 1], their classes ``{attribute: LongTensor [N]}`` and
    their captions (N strings, "" without a caption column)."""

    images: torch.Tensor
    labels: dict[str, torch.Tensor]
    description: str
    captions: list[str] = dataclasses.field(default_factory=list)


def load_eval_set(
    dataset: HFDataset, config: DataConfig, class_names: Mapping[str, Sequence[str]], resolution: int, description: str
) -> EvalSet:
    """Read every row of ``dataset`` into memory (centre-cropped, unflipped); unreadable images are left out."""
    config = dataclasses.replace(config, center_crop=True, random_flip=False, caption_dropout=0.0)
    reader = SampleReader(config, dataset.features, resolution, class_names)
    if isinstance((dataset.features or {}).get(config.image_column), datasets.Image):
        dataset = dataset.cast_column(config.image_column, datasets.Image(decode=False))
    rng = random.Random(0)
    samples = [(sample, DataPosition()) for sample in (reader(row, rng) for row in dataset) if sample is not None]
    if not samples:
        raise DataError("the evaluation data holds no readable image")
    batch = collate(samples)
    return EvalSet(
        batch["images"], batch.get("attributes", {}), f"{len(samples)} images ({description})", batch["captions"]
    )


# ---------------------------------------------------------------------------------------- training


def make_loss_fn(accelerator: Accelerator, diffusion: GaussianDiffusion, attributes: Sequence[str]) -> LossFn:
    """``loss_fn(model, batch)``: the sum over attributes of the mean cross-entropy of the classes of
    ``batch["images"] [B, 3, H, W]`` noised to x_t at t drawn uniformly from 0..T-1."""

    def loss_fn(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        x0 = batch["images"].to(accelerator.device, non_blocking=True)
        t = torch.randint(0, diffusion.num_timesteps, (x0.shape[0],), device=x0.device)
        logits = model(diffusion.q_sample(x0, t), t)
        targets = batch["attributes"]
        losses = [F.cross_entropy(logits[a].float(), targets[a].to(x0.device)) for a in attributes]
        return torch.stack(losses).sum()

    return loss_fn


def t_ranges(num_timesteps: int) -> list[tuple[int, int]]:
    """The quarters ``[lo, hi)`` of 0..T-1 (fewer when T < 4)."""
    edges = [round(i * num_timesteps / NUM_T_RANGES) for i in range(NUM_T_RANGES + 1)]
    return [(lo, hi) for lo, hi in itertools.pairwise(edges) if hi > lo]


@torch.no_grad()
def accuracy_by_t(
    classifier: NoiseAwareClassifier,
    diffusion: GaussianDiffusion,
    eval_set: EvalSet,
    *,
    batch_size: int,
    generator: torch.Generator,
) -> dict[str, Any]:
    """The classifier's accuracy on ``eval_set`` noised into each quarter of the t range.

    Each image is noised once per range, at a t drawn uniformly in it, with noise from ``generator``
    (drawn on the CPU). Returns ``{"t_ranges": [[lo, hi], ...], "accuracy": {attribute: [one per range]},
    "loss": the mean over images and ranges of the summed cross-entropy}``.
    """
    device = next(classifier.parameters()).device
    ranges = t_ranges(diffusion.num_timesteps)
    correct = {attribute: [0] * len(ranges) for attribute in eval_set.labels}
    loss_sum = 0.0
    total = eval_set.images.shape[0]
    for r, (lo, hi) in enumerate(ranges):
        for start in range(0, total, batch_size):
            x0 = eval_set.images[start : start + batch_size]
            t = torch.randint(lo, hi, (x0.shape[0],), generator=generator)
            x_t = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=generator))
            logits = classifier(x_t.to(device), t.to(device))
            for attribute, labels in eval_set.labels.items():
                y = labels[start : start + batch_size].to(device)
                scores = logits[attribute].float()
                correct[attribute][r] += int((scores.argmax(dim=-1) == y).sum())
                loss_sum += F.cross_entropy(scores, y, reduction="sum").item()
    return {
        "t_ranges": [[lo, hi] for lo, hi in ranges],
        "accuracy": {attribute: [c / total for c in counts] for attribute, counts in correct.items()},
        "loss": loss_sum / (total * len(ranges)),
    }


def eval_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The evaluation as flat log metrics: ``eval/loss``, ``eval/accuracy/{attribute}`` (all t) and
    ``eval/accuracy/{attribute}/t{lo}-{hi - 1}``."""
    metrics = {"eval/loss": result["loss"]}
    for attribute, accuracies in result["accuracy"].items():
        metrics[f"eval/accuracy/{attribute}"] = sum(accuracies) / len(accuracies)
        for (lo, hi), accuracy in zip(result["t_ranges"], accuracies):
            metrics[f"eval/accuracy/{attribute}/t{lo}-{hi - 1}"] = accuracy
    return metrics


def render_report(report: dict[str, Any]) -> str:
    """The markdown table of :func:`write_report`'s ``report``."""
    ranges = report["t_ranges"]
    header = ["attribute", "classes", *(f"t {lo}-{hi - 1}" for lo, hi in ranges), "all t", "chance"]
    lines = [
        "# Noise-aware classifier: accuracy by timestep",
        "",
        (
            f"Step {report['step']} ({report['weights']} weights), evaluated on {report['evaluation_data']}. "
            f"Each image is noised once per range of t, at a t drawn uniformly in it (T = {report['num_timesteps']}, "
            f"{report['beta_schedule']} schedule). Mean summed cross-entropy: {report['loss']:.4f}."
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for attribute, accuracies in report["accuracy"].items():
        cells = [attribute, str(len(report["classes"][attribute])), *(f"{a:.1%}" for a in accuracies)]
        cells += [f"{sum(accuracies) / len(accuracies):.1%}", f"{1 / len(report['classes'][attribute]):.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(output_dir: Path, report: dict[str, Any]) -> None:
    """Write ``accuracy_by_t.json`` (``report``) and ``accuracy_by_t.md`` (its table) into ``output_dir``."""
    save_json(output_dir / f"{REPORT_NAME}.json", report)
    (output_dir / f"{REPORT_NAME}.md").write_text(render_report(report))


def make_evaluate(
    accelerator: Accelerator,
    classifier: NoiseAwareClassifier,
    diffusion: GaussianDiffusion,
    eval_set: EvalSet,
    run: RunConfig,
) -> EvaluateFn:
    """``evaluate(step) -> metrics``: :func:`accuracy_by_t` with the same noise at every step, written
    to the report files and returned as log metrics."""
    training = run.training
    output_dir = Path(training.output_dir)

    def evaluate(step: int) -> dict[str, float]:
        was_training = classifier.training
        classifier.eval()
        try:
            with accelerator.autocast():
                result = accuracy_by_t(
                    classifier,
                    diffusion,
                    eval_set,
                    batch_size=training.eval_batch_size,
                    generator=torch.Generator().manual_seed(training.seed),
                )
        finally:
            classifier.train(was_training)
        report = {
            "step": step,
            "weights": "EMA" if training.use_ema else "trained",
            "evaluation_data": eval_set.description,
            "num_timesteps": diffusion.num_timesteps,
            "beta_schedule": run.model["diffusion"].get("beta_schedule", "linear"),
            **result,
            "classes": classifier.labels,
        }
        write_report(output_dir, report)
        return eval_metrics(result)

    return evaluate


@exits_on_user_errors("train.classifier")
def main(argv: Sequence[str] | None = None) -> int | None:
    run = parse_run_config(
        argv,
        description="Train a noise-aware classifier for classifier guidance.",
        extra_flags=CLASSIFIER_FLAGS,
        training_config=HeldOutTrainingConfig,
    )
    training = run.training
    if not run.data.label_columns:
        raise ConfigError("no label columns: set data.label_columns in the config, or pass --label_columns shape color")
    accelerator = make_accelerator(training)
    diffusion = build_diffusion(run)
    dataset = load_source(run.data)
    check_columns(dataset, run.data)
    class_names = label_classes(dataset, run.data.label_columns)
    set_seed(training.seed)
    classifier = build_classifier(run, class_names).to(accelerator.device)
    if training.attach_to_pipeline is not None:
        compatible_pipeline(training.attach_to_pipeline, classifier.config.image_size, diffusion, "classifier")
    resolution = classifier.config.image_size
    train_rows, eval_rows, description = split_evaluation(dataset, run)
    data = TrainData(
        train_rows,
        run.data,
        resolution=resolution,
        batch_size=training.train_batch_size,
        seed=training.seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        class_names=class_names,
    )
    eval_set = load_eval_set(eval_rows, run.data, class_names, resolution, description)
    output_dir = Path(training.output_dir)

    def publish(step: int) -> None:
        classifier.save_pretrained(output_dir / CLASSIFIER_DIR)

    trainer = Trainer(
        accelerator,
        run,
        classifier,
        data,
        make_loss_fn(accelerator, diffusion, list(class_names)),
        publish,
        evaluate=make_evaluate(accelerator, classifier, diffusion, eval_set, run),
    )
    trainer.run()
    if accelerator.is_main_process:
        report_and_attach(output_dir / f"{REPORT_NAME}.md", training, classifier, diffusion, output_dir / CLASSIFIER_DIR)


if __name__ == "__main__":
    sys.exit(main())

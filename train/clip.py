"""Train a noise-aware CLIP contrastively on captioned images.

    accelerate launch -m train.clip --config configs/emoji32_clip.yaml [--flag value ...]
    python -m train.clip --config configs/emoji32_clip.yaml              # one process

The config holds ``clip`` (the :class:`~guided_diffusion.models.clip.CLIPConfig` fields, its
``text_encoder`` included), the ``diffusion`` section of the model it will serve (the image tower sees
x_t = q_sample(x_0, t) with t uniform in 0..``max_timestep``), ``data`` (with a caption column) and
``training``. Each update minimises CLIP's symmetric cross-entropy over the global batch (open_clip's
``ClipLoss``, gathered across processes). With ``training.hard_negatives`` (groups of word classes,
:mod:`train.hard_negatives`) each caption also gets hard negatives, itself with one attribute word
swapped, and the loss adds ``hard_negative_weight`` times the cross-entropy of each image's caption
against its own negatives (NegCLIP). Every ``validation_steps`` and at the end, image-to-text top-1
retrieval among the ``eval_samples`` held-out images is measured in each quarter of the t range (and,
with hard negatives, how often each image's caption beats its negative of each group), written to
``retrieval_by_t.md`` / ``.json``.

``output_dir`` receives checkpoints (``--resume_from_checkpoint latest``), logs, ``clip/`` (the whole
model) and ``text_encoder/`` (its text tower, which a diffusion config loads with
``text_encoder: {from_pretrained: .../text_encoder}``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from open_clip.loss import ClipLoss

from guided_diffusion.data import TrainData, check_columns, load_source
from guided_diffusion.diffusion import GaussianDiffusion
from guided_diffusion.errors import ConfigError, exits_on_user_errors
from guided_diffusion.models.clip import CLIPConfig, NoiseAwareCLIP
from guided_diffusion.serialization import save_json

from .classifier import (
    HELD_OUT_FLAGS,
    EvalSet,
    HeldOutTrainingConfig,
    build_diffusion,
    compatible_pipeline,
    load_eval_set,
    report_and_attach,
    split_evaluation,
    t_ranges,
)
from .config import RunConfig, parse_run_config
from .hard_negatives import WordSwaps, hard_negative_loss
from .loop import EvaluateFn, LossFn, Trainer, make_accelerator

CLIP_DIR = "clip"
TEXT_ENCODER_DIR = "text_encoder"
REPORT_NAME = "retrieval_by_t"


@dataclass
class ClipTrainingConfig(HeldOutTrainingConfig):
    """The ``training`` section of a CLIP run: :class:`~train.classifier.HeldOutTrainingConfig` plus
    ``max_timestep``, the largest t the image tower is trained at (default: the whole range, T - 1),
    and ``hard_negatives`` (groups of word classes, :mod:`train.hard_negatives`; default none) with
    the weight of their loss term, ``hard_negative_weight``."""

    max_timestep: int | None = None
    hard_negatives: dict[str, dict[str, list[str]]] | None = None
    hard_negative_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_timestep is not None and self.max_timestep < 0:
            raise ConfigError(f"training.max_timestep must not be negative, got {self.max_timestep}")
        if self.hard_negative_weight < 0:
            raise ConfigError(f"training.hard_negative_weight must not be negative, got {self.hard_negative_weight}")
        self.word_swaps()  # refuses bad groups now, not at the first update

    def word_swaps(self) -> WordSwaps | None:
        """The :class:`~train.hard_negatives.WordSwaps` of ``hard_negatives`` (None without them)."""
        return None if self.hard_negatives is None else WordSwaps(self.hard_negatives)


CLIP_FLAGS: dict[str, dict[str, dict[str, Any]]] = {
    "training": {
        **HELD_OUT_FLAGS,
        "max_timestep": {"type": int, "help": "train the image tower at t in 0..max_timestep (default: all t)"},
        "hard_negative_weight": {"type": float, "help": "weight of the hard-negative loss term (with training.hard_negatives)"},
    },
}


def build_clip(run: RunConfig) -> NoiseAwareCLIP:
    """A fresh CLIP from the config's ``clip`` section."""
    section = dict(run.model.get("clip") or {})
    if not section:
        raise ConfigError(f"{run.path} has no clip section (image_size, embed_dim, text_encoder, ...)")
    try:
        return NoiseAwareCLIP(CLIPConfig.from_dict(section))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"bad clip config in {run.path}: {err}") from None


def timestep_limit(run: RunConfig, diffusion: GaussianDiffusion) -> int:
    """One past the largest training timestep: ``max_timestep + 1``, at most T."""
    limit = run.training.max_timestep
    if limit is not None and limit >= diffusion.num_timesteps:
        raise ConfigError(f"training.max_timestep must be below num_timesteps ({diffusion.num_timesteps}), got {limit}")
    return diffusion.num_timesteps if limit is None else limit + 1


def make_loss_fn(
    accelerator: Accelerator, diffusion: GaussianDiffusion, t_limit: int, swaps: WordSwaps | None = None, weight: float = 1.0
) -> LossFn:
    """``loss_fn(model, batch)``: CLIP's loss between ``batch["images"]`` noised to x_t (t uniform in
    0..t_limit-1) and ``batch["captions"]``, over the batch of every process; with ``swaps``, plus
    ``weight`` times :func:`~train.hard_negatives.hard_negative_loss` of this process's images."""
    contrastive = ClipLoss(
        local_loss=False,
        gather_with_grad=True,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )

    def loss_fn(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        x0 = batch["images"].to(accelerator.device, non_blocking=True)
        t = torch.randint(0, t_limit, (x0.shape[0],), device=x0.device)
        captions = list(batch["captions"])
        if swaps is None:
            image, text, scale = model(diffusion.q_sample(x0, t), t, captions)
            return contrastive(image.float(), text.float(), scale.float())
        owner, negatives, _ = swaps.negatives(captions)
        image, texts, scale = model(diffusion.q_sample(x0, t), t, captions + negatives)  # one text pass for both
        image, texts, scale = image.float(), texts.float(), scale.float()
        text, owner = texts[: len(captions)], torch.tensor(owner, dtype=torch.long, device=image.device)
        return contrastive(image, text, scale) + weight * hard_negative_loss(image, text, texts[len(captions) :], owner, scale)

    return loss_fn


def _encode_texts(clip: NoiseAwareCLIP, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    """Unit-norm text embeddings ``[len(texts), E]``, ``batch_size`` at a time."""
    return torch.cat([clip.encode_text(list(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)])


def _noised_image_embeddings(
    clip: NoiseAwareCLIP, diffusion: GaussianDiffusion, eval_set: EvalSet, batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """For each quarter of the t range: the eval images noised into it (one t per image, uniform in
    it, noise from ``generator``) and embedded, ``[N, E]`` on the CPU."""
    device = next(clip.parameters()).device
    for lo, hi in t_ranges(diffusion.num_timesteps):
        chunks = []
        for start in range(0, len(eval_set.captions), batch_size):
            x0 = eval_set.images[start : start + batch_size]
            t = torch.randint(lo, hi, (x0.shape[0],), generator=generator)
            x_t = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=generator))
            chunks.append(clip.encode_image(x_t.to(device), t.to(device)).cpu())
        yield torch.cat(chunks)


@torch.no_grad()
def retrieval_by_t(
    clip: NoiseAwareCLIP, diffusion: GaussianDiffusion, eval_set: EvalSet, *, batch_size: int, generator: torch.Generator,
    swaps: WordSwaps | None = None,
) -> dict[str, Any]:
    """Image-to-text top-1 retrieval among the eval set's captions, the images noised into each quarter
    of the t range (one t per image, uniform in it, noise from ``generator``). An image counts as right
    when its own caption scores highest (a caption shared by several images counts for each of them).
    With ``swaps``, the same images also score their own caption against its hard negative of each group
    (one per image whose caption has a word of the group, drawn from a generator of its own with
    ``generator``'s seed): the share where the caption wins, chance 50%.
    Returns ``{"t_ranges": [[lo, hi], ...], "accuracy": [one per range], "chance": 1 / distinct captions}``,
    plus ``"hard_negatives": {group: [one share per range]}`` with ``swaps`` (groups no caption uses are left out)."""
    captions = eval_set.captions
    distinct = sorted(set(captions))
    index = {caption: i for i, caption in enumerate(distinct)}
    targets = torch.tensor([index[c] for c in captions])
    text = _encode_texts(clip, distinct, batch_size).cpu()
    if swaps is not None:
        draws = torch.Generator().manual_seed(generator.initial_seed())  # leaves the noise as without swaps
        owner, negatives, groups = swaps.negatives(captions, draws)
        owner = torch.tensor(owner, dtype=torch.long)
        own, swapped = text[targets[owner]], _encode_texts(clip, negatives, batch_size).cpu()
        of_group = {group: torch.tensor([g == group for g in groups]) for group in dict.fromkeys(groups)}
    accuracy, shares = [], {group: [] for group in (of_group if swaps is not None else {})}
    for image in _noised_image_embeddings(clip, diffusion, eval_set, batch_size, generator):
        accuracy.append(float((image @ text.T).argmax(dim=-1).eq(targets).float().mean()))
        if swaps is not None:
            wins = (image[owner] * own).sum(-1) > (image[owner] * swapped).sum(-1)
            for group, chosen in of_group.items():
                shares[group].append(float(wins[chosen].float().mean()))
    result = {"t_ranges": [list(r) for r in t_ranges(diffusion.num_timesteps)], "accuracy": accuracy, "chance": 1 / len(distinct)}
    return result if swaps is None else {**result, "hard_negatives": shares}


def render_report(report: dict[str, Any]) -> str:
    """The markdown table of a :func:`retrieval_by_t` report."""
    header = ["", *(f"t {lo}-{hi - 1}" for lo, hi in report["t_ranges"]), "chance"]
    rows = [["image -> text top-1", *(f"{a:.1%}" for a in report["accuracy"]), f"{report['chance']:.2%}"]]
    for group, shares in report.get("hard_negatives", {}).items():
        rows.append([f"own caption over its {group} swap", *(f"{a:.1%}" for a in shares), "50%"])
    return "\n".join(
        [
            "# Noise-aware CLIP: retrieval by timestep",
            "",
            f"Step {report['step']} ({report['weights']} weights), on {report['evaluation_data']}; each image's own "
            "caption among the distinct captions of the set.",
            "",
            "| " + " | ".join(header) + " |",
            "|---|" + "---:|" * (len(header) - 1),
            *("| " + " | ".join(cells) + " |" for cells in rows),
        ]
    ) + "\n"


def make_evaluate(
    accelerator: Accelerator, clip: NoiseAwareCLIP, diffusion: GaussianDiffusion, eval_set: EvalSet, run: RunConfig,
    swaps: WordSwaps | None = None,
) -> EvaluateFn:
    """``evaluate(step) -> metrics``: :func:`retrieval_by_t` (with the hard negatives of ``swaps``)
    with the same noise every time, written to the report files and returned as ``eval/retrieval/t{lo}-{hi - 1}`` (and ``eval/hard_negatives/{group}/t{lo}-{hi - 1}``)
    metrics."""
    training = run.training
    output_dir = Path(training.output_dir)

    def evaluate(step: int) -> dict[str, float]:
        was_training = clip.training
        clip.eval()
        try:
            with accelerator.autocast():
                result = retrieval_by_t(
                    clip, diffusion, eval_set, batch_size=training.eval_batch_size,
                    generator=torch.Generator().manual_seed(training.seed), swaps=swaps,
                )
        finally:
            clip.train(was_training)
        report = {"step": step, "weights": "EMA" if training.use_ema else "trained", "evaluation_data": eval_set.description, **result}
        save_json(output_dir / f"{REPORT_NAME}.json", report)
        (output_dir / f"{REPORT_NAME}.md").write_text(render_report(report))
        names = [f"t{lo}-{hi - 1}" for lo, hi in result["t_ranges"]]
        metrics = {f"eval/retrieval/{name}": a for name, a in zip(names, result["accuracy"])}
        for group, shares in result.get("hard_negatives", {}).items():
            metrics |= {f"eval/hard_negatives/{group}/{name}": a for name, a in zip(names, shares)}
        return metrics

    return evaluate


@exits_on_user_errors("train.clip")
def main(argv: Sequence[str] | None = None) -> int | None:
    run = parse_run_config(
        argv, description="Train a noise-aware CLIP contrastively.", extra_flags=CLIP_FLAGS, training_config=ClipTrainingConfig
    )
    training = run.training
    if run.data.caption_column is None and run.data.caption_template is None:
        raise ConfigError("a CLIP learns from captions: set data.caption_column (or --caption_column)")
    if run.data.caption_dropout:
        raise ConfigError("set data.caption_dropout to 0: an empty caption matches no image in a contrastive batch")
    accelerator = make_accelerator(training)
    diffusion = build_diffusion(run)
    t_limit = timestep_limit(run, diffusion)
    dataset = load_source(run.data)
    check_columns(dataset, run.data)
    set_seed(training.seed)
    clip = build_clip(run).to(accelerator.device)
    if training.attach_to_pipeline is not None:
        compatible_pipeline(training.attach_to_pipeline, clip.config.image_size, diffusion, "clip")
    resolution = clip.config.image_size
    train_rows, eval_rows, description = split_evaluation(dataset, run)
    data = TrainData(
        train_rows, run.data, resolution=resolution, batch_size=training.train_batch_size, seed=training.seed,
        rank=accelerator.process_index, world_size=accelerator.num_processes,
    )
    eval_set = load_eval_set(eval_rows, run.data, {}, resolution, description)
    output_dir = Path(training.output_dir)

    def publish(step: int) -> None:
        clip.save_pretrained(output_dir / CLIP_DIR)
        clip.text.save_pretrained(output_dir / TEXT_ENCODER_DIR)

    swaps = training.word_swaps()
    trainer = Trainer(
        accelerator, run, clip, data, make_loss_fn(accelerator, diffusion, t_limit, swaps, training.hard_negative_weight), publish,
        evaluate=make_evaluate(accelerator, clip, diffusion, eval_set, run, swaps),
    )
    trainer.run()
    if accelerator.is_main_process:
        report_and_attach(output_dir / f"{REPORT_NAME}.md", training, clip, diffusion, output_dir / CLIP_DIR)


if __name__ == "__main__":
    sys.exit(main())

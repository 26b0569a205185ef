"""Train a text-conditioned diffusion model on a Hugging Face dataset.

    accelerate launch -m train.diffusion --config configs/tiny.yaml [--flag value ...]
    python -m train.diffusion --config configs/tiny.yaml                 # one process

The YAML config holds the model (``unet``, ``text_encoder``, ``diffusion``, ``sampling``), the
``data`` and the ``training`` sections; flags override single keys (``--help`` lists them). On a
machine without CUDA, ``accelerate launch --multi_gpu --num_processes 2`` runs two data-parallel CPU
processes (gloo).

``output_dir`` receives ``checkpoint-{step}/`` folders (resume with ``--resume_from_checkpoint
latest``), ``logs/metrics.jsonl`` (and TensorBoard events when installed), ``validation/`` grids,
``loss_curve.png``, ``config.yaml``, and, at every checkpoint, the pipeline itself with the EMA
weights: ``GuidedDiffusionPipeline.from_pretrained(output_dir)`` loads it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from guided_diffusion.data import EMOJI
from guided_diffusion.datasets.emoji import training_pairs
from guided_diffusion.errors import ConfigError, exits_on_user_errors
from guided_diffusion.images import captioned_grid
from guided_diffusion.pipeline import GuidedDiffusionPipeline
from guided_diffusion.serialization import TRAINING_DATA_NAME, save_json

from .conditioning import TextConditioning
from .config import RunConfig, parse_run_config
from .loop import LossFn, Trainer, make_accelerator, open_training_data

PIPELINE_SECTIONS = ("unet", "text_encoder", "diffusion", "sampling")


def build_pipeline(run: RunConfig) -> GuidedDiffusionPipeline:
    """Fresh pipeline components from the run's model sections; a bad section is a ConfigError."""
    config = {name: run.model[name] for name in PIPELINE_SECTIONS if name in run.model}
    try:
        return GuidedDiffusionPipeline.from_config(config)
    except ConfigError as err:
        raise ConfigError(f"bad model config in {run.path}: {err}") from None


def training_resolution(run: RunConfig, pipe: GuidedDiffusionPipeline) -> int:
    """The image side to train at: ``data.resolution``, which must match ``unet.image_size``."""
    image_size = pipe.unet.config.image_size
    if run.data.resolution not in (None, image_size):
        raise ConfigError(
            f"data.resolution ({run.data.resolution}) differs from unet.image_size ({image_size}); "
            "the pipeline samples at unet.image_size, so set both to the same value"
        )
    return image_size


def make_loss_fn(
    accelerator: Accelerator, pipe: GuidedDiffusionPipeline, conditioning: TextConditioning, run: RunConfig
) -> LossFn:
    """``loss_fn(model, batch)``: the mean diffusion loss of ``batch["images"] [B, 3, H, W]`` under
    their captions, at timesteps drawn by ``training.timestep_sampling`` (uniformly from 0..T-1 by
    default), weighted by min-SNR-gamma or EDM's weighting when set (the hybrid loss with ``vlb_weight``
    for learned variances)."""
    diffusion, training = pipe.diffusion, run.training
    weighting = {"snr_gamma": training.snr_gamma, "sigma_data": training.edm_sigma_data, "vlb_weight": training.vlb_weight}
    sampling = {"scheme": training.timestep_sampling, "log_normal": (training.log_normal_mean, training.log_normal_std)}

    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        x0 = batch["images"].to(accelerator.device, non_blocking=True)
        with accelerator.autocast():
            model_kwargs = conditioning.model_kwargs(batch["captions"], accelerator.device)
        t = diffusion.sample_timesteps(x0.shape[0], device=x0.device, **sampling)
        return diffusion.training_losses(model, x0, t, model_kwargs, **weighting)["loss"].mean()

    return loss_fn


def training_data_record(run: RunConfig) -> dict[str, Any] | None:
    """For a built-in dataset with held-out pairs (``emoji``, trained on split ``train``), the pairs the
    model sees and the pairs it never sees, published beside the model as ``training_data.json``."""
    data = run.data
    if data.dataset_name != EMOJI or data.train_data_dir or data.split != "train":
        return None
    return training_pairs(**{k: v for k, v in data.dataset_options.items() if k not in ("background", "resolution")})


def save_validation_grid(
    pipe: GuidedDiffusionPipeline, prompts: list[str], *, seed: int, steps: int | None, path: Path
) -> None:
    """Sample one image per prompt into a PNG, in prompt order (8 per row), each enlarged with its
    prompt written under it; ``steps`` None uses the pipeline's sampling settings."""
    images = pipe(prompts, seed=seed, num_inference_steps=steps).images
    path.parent.mkdir(parents=True, exist_ok=True)
    captioned_grid(images, prompts).save(path)


@exits_on_user_errors("train.diffusion")
def main(argv: Sequence[str] | None = None) -> int | None:
    run = parse_run_config(argv, description="Train a text-conditioned diffusion model.")
    training = run.training
    accelerator = make_accelerator(training)
    set_seed(training.seed)
    pipe = build_pipeline(run).to(accelerator.device)
    if training.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    pipe.example_prompts = list(training.validation_prompts)  # the demo offers what validation shows
    data = open_training_data(run, accelerator, training_resolution(run, pipe))
    conditioning = TextConditioning(pipe.unet, pipe.text_encoder, cache_size=training.text_feature_cache)
    output_dir = Path(training.output_dir)

    held_out_record = training_data_record(run)

    def publish(step: int) -> None:
        pipe.save_pretrained(output_dir)
        if held_out_record is not None:
            save_json(output_dir / TRAINING_DATA_NAME, held_out_record)

    def validate(step: int) -> None:
        save_validation_grid(
            pipe,
            training.validation_prompts,
            seed=training.seed,
            steps=training.validation_sampling_steps,
            path=output_dir / "validation" / f"step-{step:06d}.png",
        )

    trainer = Trainer(
        accelerator,
        run,
        conditioning.module,
        data,
        make_loss_fn(accelerator, pipe, conditioning, run),
        publish,
        validate if training.validation_prompts else None,
    )
    trainer.run()


if __name__ == "__main__":
    sys.exit(main())

"""A training run's configuration: a YAML file with command-line flags over it.

The YAML file holds every section: the model sections read by ``GuidedDiffusionPipeline``
(``unet``, ``text_encoder``, ``diffusion``, ``sampling``, and ``classifier`` or ``clip`` for those
runs), ``data`` (a :class:`~guided_diffusion.data.DataConfig`) and ``training`` (a
:class:`TrainingConfig` of the run's kind: :class:`DiffusionTrainingConfig` for diffusion runs, the
held-out ones of :mod:`train.classifier` for the classifier and the CLIP). Every section is checked by
:meth:`guided_diffusion.config.Config.from_dict`. A flag given on the command line replaces the key of
the same name; unknown sections or keys are refused with the valid ones.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DynamoBackend

from guided_diffusion.config import Config, read_yaml
from guided_diffusion.data import DataConfig
from guided_diffusion.errors import ConfigError

MODEL_SECTIONS = ("unet", "text_encoder", "diffusion", "sampling", "classifier", "clip")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
MIXED_PRECISION = ("no", "fp16", "bf16")
TIMESTEP_SAMPLING = ("uniform", "log_normal")


@dataclass
class TrainingConfig(Config):
    """Optimisation, schedule, checkpoints, EMA and validation of a run: the keys every kind of run
    reads (each kind adds its own in a subclass).

    ``max_train_steps`` (optimizer updates) wins over ``num_train_epochs`` when both are set; streaming
    data needs it. ``resume_from_checkpoint`` is a checkpoint folder or ``"latest"``. Validation runs every
    ``validation_steps`` updates and at the end.
    ``mixed_precision`` None takes accelerate's setting (``accelerate launch --mixed_precision`` or
    ``accelerate config``) when there is one; without one it is "bf16" on a CUDA device that supports
    bf16 and "no" (float32) elsewhere, the CPU included (see :func:`train.loop.choose_mixed_precision`).
    A loss above ``divergence_factor`` x the median of the last ``divergence_window`` healthy updates
    for ``divergence_patience`` updates in a row, or a loss that is not finite, stops the run (see
    :mod:`train.divergence`); ``divergence_factor`` None keeps only the second check.
    ``fused_adamw`` picks AdamW's fused kernel (None: where it pays, see
    :func:`train.optimizer.use_fused_adamw`).
    ``compile`` has accelerate run the trained module through ``torch.compile`` with ``compile_backend``
    (false: accelerate's setting, ``accelerate launch --dynamo_backend``, default none); checkpoints and
    the published model are named as without it.
    """

    section = "training"

    output_dir: str = "outputs/run"
    seed: int = 0
    train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_train_steps: int | None = None
    num_train_epochs: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0
    mixed_precision: str | None = None
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    validation_steps: int | None = None
    use_ema: bool = True
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    divergence_factor: float | None = 100.0
    divergence_patience: int = 3
    divergence_window: int = 100
    fused_adamw: bool | None = None
    compile: bool = False
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        positive = ("train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "checkpointing_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"training.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_train_steps", "validation_steps", "checkpoints_total_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"training.{name} must be at least 1 (or null), got {getattr(self, name)}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError(f"unknown lr_scheduler {self.lr_scheduler!r}; choose one of {', '.join(LR_SCHEDULERS)}")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(
                f"unknown mixed_precision {self.mixed_precision!r}; choose one of {', '.join(MIXED_PRECISION)}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"training.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.divergence_factor is not None and not self.divergence_factor > 1:
            raise ConfigError(f"training.divergence_factor must be above 1 (or null), got {self.divergence_factor}")
        for name in ("divergence_patience", "divergence_window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"training.{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"training.learning_rate must be positive, got {self.learning_rate}")
        if self.lr_warmup_steps < 0:
            raise ConfigError(f"training.lr_warmup_steps must not be negative, got {self.lr_warmup_steps}")
        if self.compile:
            backends = training_compile_backends()
            if self.compile_backend not in backends:
                raise ConfigError(
                    f"unknown compile_backend {self.compile_backend!r}; choose one of {', '.join(backends)}"
                )


@dataclass
class DiffusionTrainingConfig(TrainingConfig):
    """The ``training`` section of a diffusion run: :class:`TrainingConfig` plus what only a
    text-to-image model uses. Validation samples ``validation_prompts`` (none: no validation), with
    ``validation_sampling_steps`` sampler steps (default: the config's ``sampling.steps``).
    ``snr_gamma`` turns on min-SNR-gamma loss weighting, ``edm_sigma_data`` EDM's weighting with that
    sigma_data (one of the two; see :meth:`~guided_diffusion.diffusion.GaussianDiffusion.loss_weight`).
    ``timestep_sampling`` draws the training timesteps ``uniform`` ly or ``log_normal`` ly in sigma with
    ``log_normal_mean`` and ``log_normal_std`` (EDM's P_mean and P_std). ``vlb_weight`` is lambda of the hybrid loss
    L_simple + lambda L_vlb of a model with learned variances (``diffusion.variance: learned_range``;
    Nichol & Dhariwal 2021 use 0.001). ``text_feature_cache`` is the number of
    captions whose frozen text features are kept (0: none). ``gradient_checkpointing`` recomputes the
    UNet's activations in the backward pass."""

    validation_prompts: list[str] = field(default_factory=list)
    validation_sampling_steps: int | None = None
    snr_gamma: float | None = None
    edm_sigma_data: float | None = None
    timestep_sampling: str = "uniform"
    log_normal_mean: float = -1.2
    log_normal_std: float = 1.2
    vlb_weight: float = 0.001
    text_feature_cache: int = 4096
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.validation_sampling_steps is not None and self.validation_sampling_steps < 1:
            raise ConfigError(f"training.validation_sampling_steps must be at least 1 (or null), got {self.validation_sampling_steps}")
        if self.snr_gamma is not None and self.edm_sigma_data is not None:
            raise ConfigError("training.snr_gamma and training.edm_sigma_data are two loss weightings: set one of them")
        for name in ("snr_gamma", "edm_sigma_data", "log_normal_std"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ConfigError(f"training.{name} must be positive, got {getattr(self, name)}")
        if self.timestep_sampling not in TIMESTEP_SAMPLING:
            raise ConfigError(f"unknown timestep_sampling {self.timestep_sampling!r}; choose one of {', '.join(TIMESTEP_SAMPLING)}")
        if self.vlb_weight < 0:
            raise ConfigError(f"training.vlb_weight must not be negative, got {self.vlb_weight}")
        if self.text_feature_cache < 0:
            raise ConfigError(f"training.text_feature_cache must not be negative, got {self.text_feature_cache}")


def training_compile_backends() -> list[str]:
    """The ``torch.compile`` backends a run can train with: accelerate's (``DynamoBackend``) that torch has."""
    available = torch.compiler.list_backends(exclude_tags=())
    return [b.value.lower() for b in DynamoBackend if b.value.lower() in available]


@dataclass
class RunConfig:
    """Everything a run reads: the model sections (as the pipeline reads them), data and training."""

    path: Path
    model: dict[str, Any]
    data: DataConfig
    training: TrainingConfig

    def to_dict(self) -> dict[str, Any]:
        """All sections, in the layout of the YAML file."""
        return {**self.model, "data": dataclasses.asdict(self.data), "training": dataclasses.asdict(self.training)}


# ---------------------------------------------------------------------------------------- flags

DATA_FLAGS: dict[str, dict[str, Any]] = {
    "dataset_name": {"help": "Hub dataset, packaged builder (parquet, imagefolder, ...), local folder or 'shapes32'"},
    "dataset_config_name": {"help": "the Hub dataset's configuration"},
    "train_data_dir": {"help": "local imagefolder (metadata.jsonl captions), parquet folder or save_to_disk folder"},
    "image_column": {"help": "column holding the images"},
    "caption_column": {"help": "column holding the captions"},
    "resolution": {"type": int, "help": "side of the training images (default: unet.image_size)"},
    "center_crop": {"action": argparse.BooleanOptionalAction, "help": "center crop (else random crop)"},
    "random_flip": {"action": argparse.BooleanOptionalAction, "help": "random horizontal flips"},
    "caption_dropout": {"type": float, "help": "probability of training on the empty caption (default 0.1)"},
    "streaming": {"action": argparse.BooleanOptionalAction, "help": "stream the dataset instead of downloading it"},
    "num_images": {"type": int, "help": "images of the generated shapes32 dataset"},
    "num_workers": {"type": int, "help": "DataLoader worker processes (0: read in the training process)"},
}
TRAINING_FLAGS: dict[str, dict[str, Any]] = {
    "train_batch_size": {"type": int, "help": "images per process per micro-batch"},
    "gradient_accumulation_steps": {"type": int, "help": "micro-batches per optimizer update"},
    "max_train_steps": {"type": int, "help": "optimizer updates (overrides num_train_epochs)"},
    "num_train_epochs": {"type": int, "help": "epochs, when max_train_steps is not set"},
    "learning_rate": {"type": float},
    "lr_scheduler": {"choices": LR_SCHEDULERS},
    "lr_warmup_steps": {"type": int},
    "max_grad_norm": {"type": float, "help": "gradient clipping norm"},
    "mixed_precision": {"choices": MIXED_PRECISION},
    "seed": {"type": int},
    "output_dir": {"help": "where checkpoints, logs, validation grids and the final pipeline go"},
    "checkpointing_steps": {"type": int, "help": "save a checkpoint every N updates"},
    "checkpoints_total_limit": {"type": int, "help": "keep only the newest N checkpoints"},
    "resume_from_checkpoint": {"help": "a checkpoint folder, or 'latest' in output_dir"},
    "validation_steps": {"type": int, "help": "sample the validation prompts (or evaluate) every N updates"},
    "use_ema": {"action": argparse.BooleanOptionalAction, "help": "keep an EMA of the weights and export it"},
    "ema_decay": {"type": float},
    "ema_warmup": {
        "action": argparse.BooleanOptionalAction,
        "help": "cap the EMA's decay at (1 + n) / (10 + n) after n updates (default: yes)",
    },
    "divergence_factor": {"type": float, "help": "stop when the loss exceeds this many times its recent median (default 100)"},
    "divergence_patience": {"type": int, "help": "... for this many updates in a row (default 3)"},
    "fused_adamw": {"action": argparse.BooleanOptionalAction, "help": "AdamW's fused kernel (default: where it pays)"},
    "compile": {"action": argparse.BooleanOptionalAction, "help": "torch.compile the trained model (default: no)"},
    "compile_backend": {"help": "torch.compile backend (default: inductor)"},
}
DIFFUSION_TRAINING_FLAGS: dict[str, dict[str, Any]] = {
    "validation_prompts": {"nargs": "+", "help": "prompts sampled into output_dir/validation/"},
    "validation_sampling_steps": {"type": int, "help": "sampler steps of validation (default: sampling.steps)"},
    "snr_gamma": {"type": float, "help": "min-SNR-gamma loss weighting (e.g. 5.0)"},
    "gradient_checkpointing": {
        "action": argparse.BooleanOptionalAction,
        "help": "recompute the UNet's activations in the backward pass: less memory, one more forward",
    },
    "text_feature_cache": {"type": int, "help": "captions whose frozen text features are cached (0: none)"},
    "vlb_weight": {"type": float, "help": "lambda of the hybrid loss of learned variances (default 0.001)"},
    "edm_sigma_data": {"type": float, "help": "EDM's loss weighting with this sigma_data (instead of --snr_gamma)"},
    "timestep_sampling": {"choices": TIMESTEP_SAMPLING, "help": "how training timesteps are drawn (default uniform)"},
    "log_normal_mean": {"type": float, "help": "mean of ln sigma for log_normal timestep sampling (default -1.2)"},
    "log_normal_std": {"type": float, "help": "std of ln sigma for log_normal timestep sampling (default 1.2)"},
}
MODEL_FLAGS: dict[str, dict[str, Any]] = {
    "prediction_type": {"choices": ("eps", "x0", "v"), "help": "what the model predicts (diffusion.prediction)"},
}


# ---------------------------------------------------------------------------------------- building


def read_run_yaml(path: str | Path) -> dict[str, Any]:
    """The sections of a run's YAML config; a section no run reads is a ConfigError naming the valid ones."""
    config = read_yaml(path)
    sections = (*MODEL_SECTIONS, "data", "training")
    for section in config:
        if section not in sections:
            raise ConfigError(f"unknown section {section!r} in {path}; valid sections: {', '.join(sections)}")
    return config


def parse_run_config(
    argv: Sequence[str] | None,
    description: str,
    extra_flags: Mapping[str, Mapping[str, dict[str, Any]]] | None = None,
    training_config: type[TrainingConfig] = DiffusionTrainingConfig,
) -> RunConfig:
    """Parse ``--config`` and the override flags, and build the run's config from them.

    ``training_config`` is the kind of run's ``training`` section (a diffusion run's by default; its
    own flags come with it). ``extra_flags`` maps a section name to more flags (argparse keyword
    arguments by name) that override keys of that section; other training commands add theirs this way,
    with the keys of their ``training`` section in a subclass of :class:`TrainingConfig`. Every
    override flag defaults to None, meaning "keep the YAML value". ``--prediction_type`` sets
    ``diffusion.prediction``.
    """
    training_flags = {**TRAINING_FLAGS, **(DIFFUSION_TRAINING_FLAGS if issubclass(training_config, DiffusionTrainingConfig) else {})}
    sections_of_flags = {"data": DATA_FLAGS, "training": training_flags, "diffusion": MODEL_FLAGS}
    for section, flags in (extra_flags or {}).items():
        sections_of_flags[section] = {**sections_of_flags.get(section, {}), **flags}
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)  # a misspelt flag is refused, not guessed
    parser.add_argument("--config", required=True, help="YAML config with every section (see configs/), or a base: config and what changes")
    for section, flags in sections_of_flags.items():
        group = parser.add_argument_group(f"{section} overrides")
        for name, spec in flags.items():
            group.add_argument(f"--{name}", default=None, **spec)
    args = parser.parse_args(argv)

    path = Path(args.config)
    config = read_run_yaml(path)
    sections = {name: dict(config.get(name) or {}) for name in (*MODEL_SECTIONS, "data", "training")}
    for section, flags in sections_of_flags.items():
        for name in flags:
            value = getattr(args, name)
            if value is not None:
                sections[section]["prediction" if name == "prediction_type" else name] = value
    data = DataConfig.from_dict(sections["data"], source=path)
    training = training_config.from_dict(sections["training"], source=path)
    model = {name: sections[name] for name in MODEL_SECTIONS if name in config or sections[name]}
    return RunConfig(path=path, model=model, data=data, training=training)

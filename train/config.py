"""A training run's configuration: a YAML file with command-line flags over it.

The YAML file holds every section: the model sections read by ``GuidedDiffusionPipeline``
(``unet``, ``text_encoder``, ``diffusion``, ``sampling``, and ``classifier`` for classifier runs),
``data`` (a :class:`~guided_diffusion.data.DataConfig`) and ``training`` (a :class:`TrainingConfig`).
A flag given on the command line replaces the key of the same name; unknown sections or keys are
refused with the valid ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DynamoBackend

from guided_diffusion.data import DataConfig
from guided_diffusion.pipeline import load_config

from .errors import ConfigError

MODEL_SECTIONS = ("unet", "text_encoder", "diffusion", "sampling", "classifier", "clip")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class TrainingConfig:
    """Optimisation, schedule, checkpoints, EMA and validation of a run.

    ``max_train_steps`` (optimizer updates) wins over ``num_train_epochs`` when both are set; streaming
    data needs it. ``resume_from_checkpoint`` is a checkpoint folder or ``"latest"``. Validation
    samples ``validation_prompts`` every ``validation_steps`` updates and at the end, with
    ``validation_sampling_steps`` sampler steps (default: the config's ``sampling.steps``).
    Commands without prompts (the classifier) evaluate on held-out data on the same schedule instead.
    ``text_feature_cache`` is the number of captions whose frozen text features are kept (0: none).
    ``mixed_precision`` None takes accelerate's setting (``accelerate launch --mixed_precision`` or
    ``accelerate config``) when there is one; without one it is "bf16" on a CUDA device that supports
    bf16 and "no" (float32) elsewhere, the CPU included (see :func:`train.loop.choose_mixed_precision`).
    A loss above ``divergence_factor`` x the median of the last ``divergence_window`` healthy updates
    for ``divergence_patience`` updates in a row, or a loss that is not finite, stops the run (see
    :mod:`train.divergence`); ``divergence_factor`` None keeps only the second check.
    ``gradient_checkpointing`` recomputes the UNet's activations in the backward pass (diffusion runs).
    ``fused_adamw`` picks AdamW's fused kernel (None: where it pays, see
    :func:`train.optimizer.use_fused_adamw`).
    ``compile`` has accelerate run the trained module through ``torch.compile`` with ``compile_backend``
    (false: accelerate's setting, ``accelerate launch --dynamo_backend``, default none); checkpoints and
    the published model are named as without it.
    """

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
    validation_prompts: list[str] = field(default_factory=list)
    validation_steps: int | None = None
    validation_sampling_steps: int | None = None
    use_ema: bool = True
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    snr_gamma: float | None = None
    text_feature_cache: int = 4096
    divergence_factor: float | None = 100.0
    divergence_patience: int = 3
    divergence_window: int = 100
    gradient_checkpointing: bool = False
    fused_adamw: bool | None = None
    compile: bool = False
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        positive = ("train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "checkpointing_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"training.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_train_steps", "validation_steps", "validation_sampling_steps", "checkpoints_total_limit"):
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
        for name in ("lr_warmup_steps", "text_feature_cache"):
            if getattr(self, name) < 0:
                raise ConfigError(f"training.{name} must not be negative, got {getattr(self, name)}")
        if self.compile:
            backends = training_compile_backends()
            if self.compile_backend not in backends:
                raise ConfigError(
                    f"unknown compile_backend {self.compile_backend!r}; choose one of {', '.join(backends)}"
                )


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
    "validation_prompts": {"nargs": "+", "help": "prompts sampled into output_dir/validation/"},
    "validation_steps": {"type": int, "help": "sample the validation prompts (or evaluate) every N updates"},
    "validation_sampling_steps": {"type": int, "help": "sampler steps of validation (default: sampling.steps)"},
    "use_ema": {"action": argparse.BooleanOptionalAction, "help": "keep an EMA of the weights and export it"},
    "ema_decay": {"type": float},
    "snr_gamma": {"type": float, "help": "min-SNR-gamma loss weighting (e.g. 5.0)"},
    "divergence_factor": {"type": float, "help": "stop when the loss exceeds this many times its recent median (default 100)"},
    "divergence_patience": {"type": int, "help": "... for this many updates in a row (default 3)"},
    "gradient_checkpointing": {
        "action": argparse.BooleanOptionalAction,
        "help": "recompute the UNet's activations in the backward pass: less memory, one more forward",
    },
    "fused_adamw": {"action": argparse.BooleanOptionalAction, "help": "AdamW's fused kernel (default: where it pays)"},
    "compile": {"action": argparse.BooleanOptionalAction, "help": "torch.compile the trained model (default: no)"},
    "compile_backend": {"help": "torch.compile backend (default: inductor)"},
}
MODEL_FLAGS: dict[str, dict[str, Any]] = {
    "prediction_type": {"choices": ("eps", "x0", "v"), "help": "what the model predicts (diffusion.prediction)"},
}


# ---------------------------------------------------------------------------------------- building


def _convert(value: Any, kind: Any) -> Any:
    """``value`` as the simple type ``kind``; TypeError or ValueError when it is not one."""
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and not isinstance(value, bool):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if isinstance(value, (int, float, str)):
            return int(value)
    if kind is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return float(value)  # also YAML's "1e-4", which it reads as a string
    if kind is str and isinstance(value, str):
        return value
    if typing.get_origin(kind) is list and isinstance(value, (list, tuple)):
        return list(value)
    if typing.get_origin(kind) is dict and isinstance(value, Mapping):
        return dict(value)
    raise TypeError(value)


def _describe(kind: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(kind, {list: "a list", dict: "a mapping"}.get(typing.get_origin(kind), str(kind)))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the annotation ``hint`` (a type or a union of types)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    kinds = [o for o in options if o is not type(None)]
    for kind in kinds:
        try:
            return _convert(value, kind)
        except (TypeError, ValueError):
            continue
    expected = " or ".join(_describe(k) for k in kinds) + (" (or null)" if type(None) in options else "")
    raise ConfigError(f"{where} must be {expected}, got {value!r}")


def build_section(cls: type, values: Mapping[str, Any] | None, section: str, source: str) -> Any:
    """An instance of the dataclass ``cls`` from a config section, refusing unknown keys and wrong types."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} in the {section} section of {source}; valid keys: {', '.join(known)}"
        )
    return cls(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()})


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of sections in a YAML config file; a missing or malformed file is a ConfigError."""
    path = Path(path)
    try:
        config = load_config(path)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    sections = (*MODEL_SECTIONS, "data", "training")
    for section, values in config.items():
        if section not in sections:
            raise ConfigError(f"unknown section {section!r} in {path}; valid sections: {', '.join(sections)}")
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"section {section!r} of {path} must be a mapping of keys")
    return config


def parse_run_config(
    argv: Sequence[str] | None,
    description: str,
    extra_flags: Mapping[str, Mapping[str, dict[str, Any]]] | None = None,
    training_config: type[TrainingConfig] = TrainingConfig,
) -> RunConfig:
    """Parse ``--config`` and the override flags, and build the run's config from them.

    ``extra_flags`` maps a section name to more flags (argparse keyword arguments by name) that
    override keys of that section; other training commands add theirs this way, with the keys of their
    ``training`` section in a subclass of :class:`TrainingConfig` passed as ``training_config``. Every
    override flag defaults to None, meaning "keep the YAML value". ``--prediction_type`` sets
    ``diffusion.prediction``.
    """
    sections_of_flags = {"data": DATA_FLAGS, "training": TRAINING_FLAGS, "diffusion": MODEL_FLAGS}
    for section, flags in (extra_flags or {}).items():
        sections_of_flags[section] = {**sections_of_flags.get(section, {}), **flags}
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML config with every section (see configs/)")
    for section, flags in sections_of_flags.items():
        group = parser.add_argument_group(f"{section} overrides")
        for name, spec in flags.items():
            group.add_argument(f"--{name}", default=None, **spec)
    args = parser.parse_args(argv)

    path = Path(args.config)
    config = read_yaml(path)
    sections = {name: dict(config.get(name) or {}) for name in (*MODEL_SECTIONS, "data", "training")}
    for section, flags in sections_of_flags.items():
        for name in flags:
            value = getattr(args, name)
            if value is not None:
                sections[section]["prediction" if name == "prediction_type" else name] = value
    data = build_section(DataConfig, sections["data"], "data", str(path))
    training = build_section(training_config, sections["training"], "training", str(path))
    model = {name: sections[name] for name in MODEL_SECTIONS if name in config or sections[name]}
    return RunConfig(path=path, model=model, data=data, training=training)

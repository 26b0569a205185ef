"""Bases for the models: configuration dataclasses (JSON-able dicts in and out, unknown keys refused)
and saving/loading a model as a folder of ``config.json`` + ``model.safetensors``."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..serialization import CONFIG_NAME, CheckpointError, load_component_config, load_component_weights, save_component

Config = TypeVar("Config", bound="ModelConfig")
Model = TypeVar("Model", bound="PretrainedModel")


class ModelConfig:
    """Mixin for a ``@dataclass`` config: :meth:`to_dict` and a checking :meth:`from_dict`."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples as lists) that :meth:`from_dict` reads back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls: type[Config], d: dict[str, Any]) -> Config:
        """Build a config from a dict (e.g. a YAML section); unknown or missing keys raise ValueError."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys are {sorted(fields)}")
        missing = [
            name
            for name, f in fields.items()
            if name not in d and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ValueError(f"{cls.__name__} is missing required keys {missing}")
        return cls(**d)


class PretrainedModel:
    """Mixin for an ``nn.Module`` built from one :class:`ModelConfig` (``cls(config)``, kept as
    ``self.config``): ``save_pretrained`` / ``from_pretrained`` of its folder."""

    config_class: ClassVar[type[ModelConfig]]
    config: ModelConfig

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
        save_component(directory, self, self.config.to_dict())

    @classmethod
    def from_pretrained(cls: type[Model], directory: str | os.PathLike) -> Model:
        """Load a model saved by :meth:`save_pretrained` (on CPU); a missing, corrupt or mismatched
        file raises :class:`~guided_diffusion.serialization.CheckpointError` naming it."""
        config = load_component_config(directory)
        try:
            model_config = cls.config_class.from_dict(config)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"bad {cls.__name__} config in {Path(directory) / CONFIG_NAME}: {err}") from None
        return load_component_weights(directory, cls(model_config))

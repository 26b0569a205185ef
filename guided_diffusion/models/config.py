"""Bases for the models: configuration dataclasses (checked by :class:`~guided_diffusion.config.Config`)
and saving/loading a model as a folder of ``config.json`` + ``model.safetensors``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, TypeVar

from ..config import Config
from ..serialization import CONFIG_NAME, CheckpointError, load_component_config, load_component_weights, save_component

Model = TypeVar("Model", bound="PretrainedModel")


class ModelConfig(Config):
    """Mixin for a model's ``@dataclass`` config: :class:`~guided_diffusion.config.Config`'s checked
    ``from_dict`` and ``to_dict``, saved as the model folder's ``config.json``."""


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

"""A base for the models' configuration dataclasses: JSON-able dicts in and out, unknown keys refused."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

Config = TypeVar("Config", bound="ModelConfig")


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

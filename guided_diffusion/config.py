"""One typed config base and one YAML reader, for every section of every config.

A config section is a ``@dataclass`` that mixes in :class:`Config`: its fields, with their type hints
and defaults, are the section's keys. :meth:`Config.from_dict` is the one checker: it refuses unknown
keys (listing the valid ones), missing required keys and values of the wrong type (converting what
converts losslessly: YAML's ``1e-4`` string to a float, a JSON list to a tuple), and turns the
dataclass's own range checks into a :class:`~guided_diffusion.errors.ConfigError` naming the section.
:meth:`Config.to_dict` gives the JSON-able dict that ``from_dict`` reads back. The sections: the
diffusion process (:class:`~guided_diffusion.diffusion.DiffusionConfig`), sampling
(:class:`~guided_diffusion.request.SamplingConfig`), the text encoders (:mod:`guided_diffusion.text`),
the models (:class:`~guided_diffusion.models.config.ModelConfig`), data
(:class:`~guided_diffusion.data.DataConfig`) and training (:mod:`train.config`).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from .errors import ConfigError, UserError

C = TypeVar("C", bound="Config")


class Config:
    """Mixin for a ``@dataclass`` config section. ``section`` names it in messages (``"unet"``)."""

    section: ClassVar[str] = "config"

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any] | None, *, source: str | os.PathLike | None = None) -> C:
        """The section from a mapping (a YAML section, a saved ``config.json``); ``source`` (a file)
        is named in the messages. None is the empty section (every key at its default)."""
        where = f"the {cls.section} section" + (f" of {source}" if source is not None else "")
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where} must be a mapping of keys, got {values!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} in {where}; valid keys: {', '.join(fields)}")
        missing = [
            name
            for name, f in fields.items()
            if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ConfigError(f"{where} lacks the required key {missing[0]!r}")
        hints = typing.get_type_hints(cls)
        checked = {key: coerce(value, hints[key], f"{cls.section}.{key}") for key, value in values.items()}
        try:
            return cls(**checked)
        except UserError:
            raise
        except (TypeError, ValueError) as err:
            raise ConfigError(f"bad {where}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples as lists) that :meth:`from_dict` reads back."""
        return {k: _json_able(v) for k, v in dataclasses.asdict(self).items()}  # type: ignore[call-overload]


def _json_able(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_json_able(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_able(v) for k, v in value.items()}
    return value


def read_yaml(path_or_dict: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A YAML config file as its mapping of sections (a mapping is returned as a dict copy); a missing,
    malformed or non-mapping file is a :class:`~guided_diffusion.errors.ConfigError` naming it.

    A top-level ``base: other.yaml`` (relative to the file) starts from that config: each section of
    this file updates the base's section key by key, so a variant holds only what it changes. A section
    with ``from_pretrained`` (a saved component, which brings its own architecture) replaces the base's
    section instead."""
    if isinstance(path_or_dict, Mapping):
        return dict(path_or_dict)
    return _read_config_file(Path(path_or_dict), chain=())


def _read_config_file(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """:func:`read_yaml` of the file ``path``, reached from the files of ``chain`` (resolved) through
    their ``base:`` keys; a file that is its own base is refused with the chain."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    base = config.pop("base", None)
    for section, values in config.items():
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"section {section!r} of {path} must be a mapping of keys")
    if base is None:
        return config
    if not isinstance(base, str):
        raise ConfigError(f"base in {path} must be a config file name, got {base!r}")
    chain = (*chain, path.resolve())
    base_path = path.parent / base
    if base_path.resolve() in chain:
        raise ConfigError(f"config file {path} is its own base, through {' -> '.join(str(p) for p in (*chain, base_path))}")
    merged = {section: dict(values or {}) for section, values in _read_config_file(base_path, chain).items()}
    for section, values in config.items():
        if values and "from_pretrained" in values:
            merged[section] = dict(values)
        else:
            merged.setdefault(section, {}).update(values or {})
    return merged


# ------------------------------------------------------------------------------------- type checks


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type hint ``hint`` (a simple type, ``list[X]``, ``tuple[X, ...]``,
    ``dict[K, V]``, ``Any``, or a union of those with None); ``where`` names it in the error."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
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


def _convert(value: Any, kind: Any) -> Any:
    """``value`` as ``kind``; TypeError or ValueError when it is not one."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return value
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
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        item = args[0] if args else Any
        items = [_convert(v, item) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict and isinstance(value, Mapping):
        key, item = args if args else (Any, Any)
        return {_convert(k, key): _convert(v, item) for k, v in value.items()}
    raise TypeError(value)


def _describe(kind: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Any: "a value"}
    if kind in names:
        return names[kind]
    return {list: "a list", tuple: "a list", dict: "a mapping"}.get(typing.get_origin(kind), str(kind))

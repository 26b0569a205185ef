"""Saving and loading one component (a module and its JSON config) as a folder.

A component folder holds ``config.json`` and ``model.safetensors``. Loading never unpickles, and a
missing or corrupt file is refused with an error that names it. Writes go to a temporary file that
is renamed into place, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UserError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TRAINING_DATA_NAME = "training_data.json"  # in a pipeline folder: the pairs trained on and held out


class CheckpointError(UserError):
    """A saved component or pipeline is missing, corrupt or does not match its model."""


def _replace_atomically(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def load_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON object from ``path``; a missing or malformed file raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing file: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"corrupt JSON file {path}: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"corrupt JSON file {path}: expected an object, found {type(data).__name__}")
    return data


def save_component(directory: str | os.PathLike, module: torch.nn.Module, config: dict[str, Any]) -> None:
    """Save ``module``'s weights and its ``config`` into ``directory`` (created if needed).

    Tensors that share storage (tied weights) are saved once per name, as safetensors requires.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in module.state_dict().items()}
    _replace_atomically(directory / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    save_json(directory / CONFIG_NAME, config)


def load_component_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Read ``directory/config.json``; refuses a missing folder or file by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"missing component folder: {directory}")
    return load_json(directory / CONFIG_NAME)


def load_component_weights(directory: str | os.PathLike, module: torch.nn.Module) -> torch.nn.Module:
    """Load ``directory/model.safetensors`` into ``module`` strictly, casting to its dtypes.

    The keys are matched by ``module.load_state_dict``, so a module that renames the keys of older
    checkpoints as they load (:class:`~guided_diffusion.models.layers.RenamedKeys`) reads those too.
    Raises :class:`CheckpointError` naming the file when it is missing, unreadable, or its tensors
    do not match the module (missing, unexpected or wrongly shaped entries); the module's weights are
    then undefined.
    """
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"missing file: {path}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"corrupt weights file {path}: {err}") from None
    try:
        # Each parameter is copied in place (copy_), which casts to its dtype.
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # wrongly shaped entries
        mismatches = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        details = "; ".join(mismatches[:5]) or str(err)
        raise CheckpointError(f"weights file {path} does not match its config: {details}") from None
    missing, unexpected = sorted(result.missing_keys), sorted(result.unexpected_keys)
    if missing or unexpected:
        raise CheckpointError(
            f"weights file {path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return module


def store_half_precision(directory: str | os.PathLike) -> list[Path]:
    """Rewrite every ``model.safetensors`` under the pipeline folder ``directory`` with its floating
    tensors in float16 (halving a shipped model's size); loading casts them back to each module's
    dtype. Folders of a ``transformers`` text encoder (``text_encoder.json``) are left alone, since
    ``transformers`` reads its own weights. Returns the files rewritten."""
    rewritten = []
    for path in sorted(Path(directory).rglob(WEIGHTS_NAME)):
        if (path.parent / "text_encoder.json").is_file():
            continue
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"corrupt weights file {path}: {err}") from None
        half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        _replace_atomically(path, lambda tmp: save_file(half, str(tmp), metadata={"format": "pt"}))
        rewritten.append(path)
    return rewritten

"""Training checkpoints: ``output_dir/checkpoint-{step}/`` folders that are complete or absent.

A checkpoint holds what ``accelerator.save_state`` writes (the prepared model and optimizer, every
object registered with ``register_for_checkpointing`` such as the LR scheduler and the EMA, and the
RNG states of every process) plus ``trainer_state.json`` (the step, each process's data position,
counters). It is written into a hidden temporary folder beside the others and renamed into place
once every process has finished, so a run killed at any moment leaves each ``checkpoint-*`` folder
whole or missing. Pruned checkpoints are renamed aside before they are deleted, for the same reason.
Every process must be able to write to ``output_dir`` (one machine, or a shared file system).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from guided_diffusion.serialization import CheckpointError, load_json, save_json

STATE_NAME = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_PARTIAL_PREFIXES = (".tmp-checkpoint-", ".old-checkpoint-")


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """The complete checkpoints in ``output_dir`` as ``(step, folder)``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for folder in output_dir.iterdir():
        match = _CHECKPOINT.match(folder.name)
        if match and (folder / STATE_NAME).is_file():
            found.append((int(match.group(1)), folder))
    return sorted(found)


def remove_partial_checkpoints(output_dir: str | os.PathLike) -> None:
    """Delete the temporary folders a killed run may have left (main process only)."""
    output_dir = Path(output_dir)
    if output_dir.is_dir():
        for folder in output_dir.iterdir():
            if folder.name.startswith(_PARTIAL_PREFIXES):
                shutil.rmtree(folder, ignore_errors=True)


def resolve_resume(output_dir: str | os.PathLike, spec: str | None) -> Path | None:
    """The checkpoint folder to resume from: ``spec`` itself, the newest one in ``output_dir`` for
    ``"latest"`` (None when there is none), or None without ``spec``."""
    if spec is None:
        return None
    if spec == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    folder = Path(spec)
    if not (folder / STATE_NAME).is_file():
        raise CheckpointError(
            f"{folder} is not a complete checkpoint (no {STATE_NAME}); pass a checkpoint-<step> folder or 'latest'"
        )
    return folder


def save_checkpoint(accelerator: Accelerator, output_dir: str | os.PathLike, step: int, state: dict[str, Any]) -> Path:
    """Write ``checkpoint-{step}`` (every process must call this). ``state`` is the JSON-able trainer
    state, written by the main process."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        save_json(partial / STATE_NAME, state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            delete_checkpoint(final)
        os.replace(partial, final)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir: str | os.PathLike, total_limit: int | None) -> None:
    """Delete the oldest complete checkpoints beyond the newest ``total_limit`` (main process only)."""
    if total_limit is not None:
        for _, old in list_checkpoints(output_dir)[:-total_limit]:
            delete_checkpoint(old)


def delete_checkpoint(folder: Path) -> None:
    """Remove ``folder``, renamed aside first so that a kill midway leaves no half checkpoint."""
    aside = folder.with_name(f".old-{folder.name}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(folder, aside)
    shutil.rmtree(aside)


def load_checkpoint(accelerator: Accelerator, folder: str | os.PathLike) -> dict[str, Any]:
    """Restore the prepared objects, registered objects and RNG states from ``folder``; returns the
    trainer state. A process that the checkpoint has no random state for (it was written by fewer
    processes) keeps its own; the trainer re-seeds it (:meth:`train.loop.Trainer._start`)."""
    folder = Path(folder)
    state = load_json(folder / STATE_NAME)
    try:
        accelerator.load_state(str(folder))
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot resume from {folder}: {first_line}") from None
    return state

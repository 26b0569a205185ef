"""Getting a built-in dataset's files from a package registry into the local data cache.

Real datasets come from registry packages (npm for the emoji art, Debian for Fashion-MNIST), fetched
by ``gd-data fetch NAME``, never at import or test time. Each dataset lives in its own folder of the
cache (``$GD_DATA_DIR``, default ``~/.cache/guided_diffusion/data``). A folder appears only once it
is complete: everything is downloaded and unpacked into a temporary sibling folder first, then renamed
into place, so an interrupted fetch leaves nothing half-written that a later load could mistake for
data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import UserError

DATA_DIR_ENV = "GD_DATA_DIR"


class FetchError(UserError, RuntimeError):
    """A dataset's files could not be fetched or found; the message names the fix."""


def data_cache_dir() -> Path:
    """The root of the local data cache: ``$GD_DATA_DIR``, else ``~/.cache/guided_diffusion/data``."""
    configured = os.environ.get(DATA_DIR_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "guided_diffusion" / "data"


def run_tool(command: Sequence[str], *, cwd: Path, install_hint: str) -> None:
    """Run a registry client (``npm``, ``apt-get``, ...) in ``cwd``; a missing tool or a failing run
    raises :class:`FetchError` with the tool's last line of error output and ``install_hint``."""
    if shutil.which(command[0]) is None:
        raise FetchError(f"{command[0]} is not installed; {install_hint}")
    result = subprocess.run(list(command), cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit status {result.returncode}"
        raise FetchError(f"`{' '.join(command)}` failed ({last}); check the network to the registry, or {install_hint}")


def install_atomically(target: Path, build: Callable[[Path], None]) -> Path:
    """Create the folder ``target`` by ``build(tmp)`` into a temporary sibling, then rename it into
    place. On any error the temporary folder is removed and ``target`` is left as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target

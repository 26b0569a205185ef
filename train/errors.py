"""The errors a user can cause in a training run, and how the command line shows them.

A bad config key, a missing column, a bad path, an unusable checkpoint or a loss that stops being
finite or diverges (:mod:`train.divergence`) ends the run with one line on stderr and exit status 1, never a traceback. Anything else is a
bug and keeps its traceback.

Under ``accelerate launch`` every process usually meets the same error. The main process prints it
at once; the others wait a moment first, so the launcher (which stops all processes when one
exits) has stopped them by then, and the line appears once. An error met by a non-main process
alone is still printed, by that process.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from guided_diffusion.data import DataError
from guided_diffusion.serialization import CheckpointError

R = TypeVar("R")


class ConfigError(ValueError):
    """A config file or command-line flag the run cannot use."""


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. the loss is no longer finite)."""


USER_ERRORS = (ConfigError, DataError, CheckpointError, TrainingError)


_NON_MAIN_DELAY_S = 3.0


def exit_on_user_errors(main: Callable[..., R]) -> Callable[..., R]:
    """Wrap a command's ``main`` so that user errors print ``error: <message>`` and exit with status 1."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> R:
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as err:
            rank = int(os.environ.get("RANK", "0"))
            if rank != 0:
                time.sleep(_NON_MAIN_DELAY_S)
            where = f" (process {rank})" if rank else ""
            print(f"error{where}: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    return wrapper

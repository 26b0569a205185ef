"""The one family of errors a user can cause, and how every command shows them.

Every error a user can fix (a bad config key, argument, prompt setting, path, column, checkpoint, or a
run that stops diverging) is a :class:`UserError`; its message names the fix. The library raises them
like any exception (they are ``ValueError`` s, so ``except ValueError`` still catches them); every
command (``gd-sample``, ``gd-data``, ``gd-eval``, the demo's ``app.py``, ``train.diffusion``,
``train.classifier``, ``train.clip``) wraps its ``main`` in :func:`exits_on_user_errors`, which prints
``<command>: error: <message>`` on one line of stderr and exits with :data:`USER_ERROR_EXIT_CODE`, with
no traceback. Anything else is a bug and keeps its traceback.

Under ``accelerate launch`` every process usually meets the same error. The main process prints it at
once; the others wait a moment first, so that the launcher (which stops all processes when one exits)
has stopped them by then and the line appears once. An error met by a non-main process alone is still
printed, by that process.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable

USER_ERROR_EXIT_CODE = 2  # as argparse's for a bad command line
_NON_MAIN_DELAY_S = 3.0


class UserError(ValueError):
    """Something the user can fix; the message says what and how."""


class ConfigError(UserError):
    """A config file, config section or command-line flag that cannot be used."""


class RequestError(UserError):
    """A sampling request (prompt, sampler, steps, guidance settings, labels) the model cannot serve."""


class TrainingError(UserError, RuntimeError):
    """A training run that cannot go on (the loss is no longer finite, or diverges)."""


def exits_on_user_errors(prog: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorate a command's ``main(argv=None)`` so that a :class:`UserError` prints ``prog: error:
    <message>`` (one line) on stderr and makes ``main`` return :data:`USER_ERROR_EXIT_CODE`; ``main``
    otherwise returns its own result, 0 for None."""

    def decorate(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(*args, **kwargs) -> int:
            try:
                status = main(*args, **kwargs)
            except UserError as err:
                rank = int(os.environ.get("RANK", "0"))
                if rank != 0:
                    time.sleep(_NON_MAIN_DELAY_S)
                where = f" (process {rank})" if rank else ""
                print(f"{prog}: error{where}: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
                return USER_ERROR_EXIT_CODE
            return 0 if status is None else status

        return wrapper

    return decorate

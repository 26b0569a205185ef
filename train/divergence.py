"""Stopping a run whose loss diverges, before it overwrites what was good.

Every update's loss (the mean over processes, so every process decides alike) goes through
:meth:`DivergenceGuard.check`. A loss that is not finite stops the run at once. A loss more than
``factor`` times the median of the last ``window`` healthy losses is *suspect*; ``patience`` suspect
updates in a row stop the run. A suspect update that the next ones recover from (a spike) is not
counted against the run, and never joins the median.

The trainer uses the verdict to keep bad weights away from users: the weights saved after update k
are only known to be sound once update k + 1's loss (computed with them) is healthy, so a checkpoint
is published and older checkpoints pruned only then (see :class:`~train.loop.Trainer`).
"""

from __future__ import annotations

import math
import os
import statistics
from collections import deque

from guided_diffusion.errors import TrainingError

CAUSES = (
    "Likely causes: a learning rate too high for this model and batch (lower --learning_rate or add "
    "--lr_warmup_steps), no gradient clipping (set --max_grad_norm), or fp16 overflow (use "
    "--mixed_precision bf16 or no)."
)


def kept(last_good: os.PathLike | str | None) -> str:
    """What a stopped run leaves: its last good checkpoint, whose weights are the published model's."""
    if last_good is None:
        return "No checkpoint was confirmed good yet: none is kept and no model was published."
    return f"Last good checkpoint: {last_good}; the published model is its."


class DivergenceGuard:
    """Watches the loss of every update.

    Args:
        factor: a loss above ``factor`` x the recent median is suspect (None: only non-finite losses stop the run).
        patience: suspect updates in a row that stop the run.
        window: the number of recent healthy losses whose median is the reference.
    """

    def __init__(self, factor: float | None = 100.0, patience: int = 3, window: int = 100) -> None:
        self.factor = factor
        self.patience = patience
        self.recent: deque[float] = deque(maxlen=window)
        self.streak = 0

    @property
    def suspect(self) -> bool:
        """True while the latest loss is suspect (a streak is under way)."""
        return self.streak > 0

    def check(self, step: int, loss: float, last_good: os.PathLike | str | None) -> bool:
        """Judge update ``step``'s ``loss``: True when healthy, False when suspect; raises
        :class:`~guided_diffusion.errors.TrainingError` (naming the step, the last good checkpoint ``last_good``
        and the likely causes) when the loss is not finite or has been suspect for ``patience``
        updates in a row."""
        if not math.isfinite(loss):
            raise TrainingError(f"the loss became {loss} at step {step}; training stopped. {kept(last_good)} {CAUSES}")
        if self.factor is not None and self.recent:
            median = statistics.median(self.recent)
            if loss > self.factor * median:
                self.streak += 1
                if self.streak >= self.patience:
                    raise TrainingError(
                        f"the loss diverged: {loss:.4g} at step {step}, more than {self.factor:g}x the median "
                        f"{median:.4g} of the last {len(self.recent)} healthy updates, {self.streak} updates in a row; "
                        f"training stopped. {kept(last_good)} {CAUSES}"
                    )
                return False
        self.streak = 0
        self.recent.append(loss)
        return True

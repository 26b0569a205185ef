"""The divergence guard: non-finite losses, losses far above their recent median, spikes, patience."""

import math

import pytest

from train.config import TrainingConfig
from train.divergence import DivergenceGuard
from guided_diffusion.errors import ConfigError, TrainingError


def test_a_non_finite_loss_stops_at_once_naming_the_step_and_the_last_good_checkpoint():
    guard = DivergenceGuard()
    assert guard.check(1, 0.5, None)
    for bad in (math.inf, math.nan):
        with pytest.raises(TrainingError, match="the loss became (inf|nan) at step 2; .*Last good checkpoint: out/checkpoint-1; the published model is its. Likely causes"):
            guard.check(2, bad, "out/checkpoint-1")
    with pytest.raises(TrainingError, match="No checkpoint was confirmed good yet: none is kept and no model was published"):
        guard.check(2, math.inf, None)


def test_patience_suspect_updates_in_a_row_stop_the_run_with_the_ratio_and_the_median():
    guard = DivergenceGuard(factor=100.0, patience=3, window=4)
    for step, loss in enumerate([0.4, 0.2, 0.3, 0.1, 0.2], start=1):  # the window keeps 0.2, 0.3, 0.1, 0.2: median 0.2
        assert guard.check(step, loss, "c")
    assert not guard.check(6, 25.0, "c") and guard.suspect and guard.streak == 1
    assert not guard.check(7, 7.6e21, "c")
    with pytest.raises(TrainingError, match=r"the loss diverged: 3e\+04 at step 8, more than 100x the median 0.2 of the last 4 healthy updates, 3 updates in a row"):
        guard.check(8, 3e4, "c")


def test_a_spike_that_recovers_is_not_divergence_and_never_joins_the_median():
    guard = DivergenceGuard(factor=10.0, patience=2, window=10)
    assert guard.check(1, 1.0, "c")
    assert not guard.check(2, 50.0, "c")  # suspect
    assert guard.check(3, 1.2, "c") and not guard.suspect  # recovered: the streak restarts
    assert not guard.check(4, 11.1, "c")  # 11.1 > 10 x median(1.0, 1.2) = 11
    assert list(guard.recent) == [1.0, 1.2]
    assert guard.check(5, 10.9, "c")  # below 10 x 1.1: healthy


def test_without_a_factor_only_non_finite_losses_stop():
    guard = DivergenceGuard(factor=None)
    assert guard.check(1, 1.0, "c") and guard.check(2, 1e30, "c") and guard.check(3, 1e35, "c")
    with pytest.raises(TrainingError):
        guard.check(4, math.inf, "c")


def test_bad_divergence_settings_are_refused():
    with pytest.raises(ConfigError, match="divergence_factor must be above 1"):
        TrainingConfig(divergence_factor=0.5)
    with pytest.raises(ConfigError, match="divergence_patience must be at least 1"):
        TrainingConfig(divergence_patience=0)
    assert TrainingConfig(divergence_factor=None).divergence_factor is None

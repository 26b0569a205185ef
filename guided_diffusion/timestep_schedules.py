"""Where a sampler's steps go: the noise levels sigma_0 > sigma_1 > ... > sigma_{N-1} > sigma_N = 0.

sigma is the noise level of the scaled state x_t / sqrt(alpha_bar_t) = x_0 + sigma eps, so
sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) at the trained step t. Every schedule starts at the
last trained step's level, sigma_max = sigma_{T-1} (``"uniform"`` with one step excepted: its one step is
t = 0), takes ``steps`` levels and appends 0: a sampler takes one step per interval, the last one to x_0. Schedules that ask for levels between two trained steps
leave it to :meth:`~guided_diffusion.diffusion.GaussianDiffusion.sigma_to_timestep` to give the model a
fractional timestep (linear in log sigma between the neighbouring steps).

- ``"uniform"``: the trained steps spread evenly over 0..T-1, both ends included (the respacing
  :func:`~guided_diffusion.schedule.space_timesteps` does for ``"N"``; the toolkit's historical spacing).
- ``"trailing"``: t_i = round(T - i T / N) - 1 for i = 0..N-1, from T-1 down to T/N - 1 (the "trailing"
  spacing of Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed").
- ``"karras"``: sigma_i = (sigma_max^(1/rho) + i / (N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho with
  rho = 7 and sigma_min = sigma_0, the trained range (Karras et al. 2022, EDM, eq. 5).
- ``"log_snr"``: evenly spaced in lambda = log(alpha / sigma) = -log sigma between the trained range's ends,
  the spacing DPM-Solver (Lu et al. 2022) uses for its analysis.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .diffusion import GaussianDiffusion
from .errors import RequestError
from .schedule import space_timesteps

KARRAS_RHO = 7.0


def _at_steps(diffusion: GaussianDiffusion, steps: list[int]) -> torch.Tensor:
    """The trained levels at ``steps`` (any order), descending, then 0: float64 [len(steps) + 1]."""
    sigmas = diffusion.sigmas[torch.tensor(sorted(set(steps), reverse=True), dtype=torch.long)]
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def uniform(diffusion: GaussianDiffusion, steps: int) -> torch.Tensor:
    """The trained steps spread evenly over 0..T-1, both ends included; float64 [steps + 1]."""
    return _at_steps(diffusion, space_timesteps(diffusion.num_timesteps, steps))


def trailing(diffusion: GaussianDiffusion, steps: int) -> torch.Tensor:
    """t_i = round(T - i T / steps) - 1, i = 0..steps-1; float64 [steps + 1]."""
    T = diffusion.num_timesteps
    return _at_steps(diffusion, [round(T - i * T / steps) - 1 for i in range(steps)])


def karras(diffusion: GaussianDiffusion, steps: int, rho: float = KARRAS_RHO) -> torch.Tensor:
    """EDM's levels, evenly spaced in sigma^(1/rho) from sigma_{T-1} to sigma_0; float64 [steps + 1]."""
    high, low = diffusion.sigmas[-1] ** (1 / rho), diffusion.sigmas[0] ** (1 / rho)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    return torch.cat([(high + ramp * (low - high)) ** rho, torch.zeros(1, dtype=torch.float64)])


def log_snr(diffusion: GaussianDiffusion, steps: int) -> torch.Tensor:
    """Levels evenly spaced in log sigma (half the log-SNR) from sigma_{T-1} to sigma_0; float64 [steps + 1]."""
    high, low = diffusion.log_sigmas[-1].item(), diffusion.log_sigmas[0].item()
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    return torch.cat([torch.exp(high + ramp * (low - high)), torch.zeros(1, dtype=torch.float64)])


TIMESTEP_SCHEDULES: dict[str, Callable[[GaussianDiffusion, int], torch.Tensor]] = {
    "uniform": uniform,
    "trailing": trailing,
    "karras": karras,
    "log_snr": log_snr,
}


def checked_schedule(name: str) -> str:
    """``name`` when it is in :data:`TIMESTEP_SCHEDULES`; otherwise refused with the valid names."""
    if name not in TIMESTEP_SCHEDULES:
        raise RequestError(f"unknown timestep schedule {name!r}; choose one of {', '.join(TIMESTEP_SCHEDULES)}")
    return name


def sigma_schedule(diffusion: GaussianDiffusion, name: str, steps: int) -> torch.Tensor:
    """The levels [steps + 1] (descending, ending in 0, float64) of schedule ``name`` for ``diffusion``.

    Refuses unknown names (listing the valid ones) and ``steps`` outside 1..T.
    """
    checked_schedule(name)
    if not 1 <= steps <= diffusion.num_timesteps:
        raise RequestError(f"steps must be between 1 and {diffusion.num_timesteps}, got {steps}")
    return TIMESTEP_SCHEDULES[name](diffusion, steps)

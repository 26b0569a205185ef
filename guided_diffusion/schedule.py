"""Noise schedules (beta_t) and timestep respacing.

Notation follows Ho et al. 2020 (DDPM): beta_t is the variance added at step t, alpha_t = 1 - beta_t and
alpha_bar_t = prod_{s <= t} alpha_s. Timesteps are indexed 0..T-1 (the paper's t = 1..T shifted by one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .errors import ConfigError

BETA_SCHEDULES = ("linear", "cosine")


def get_beta_schedule(name: str, num_timesteps: int) -> torch.Tensor:
    """The betas of a named schedule, float64 [T].

    ``"linear"``: DDPM's schedule, 1e-4 to 0.02 over T=1000 steps; both ends are scaled by 1000/T so
    that other lengths keep the same total amount of noise.
    ``"cosine"``: Nichol & Dhariwal's alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2) with s=0.008,
    betas taken from consecutive ratios of alpha_bar and capped at 0.999.
    """
    if num_timesteps < 1:
        raise ConfigError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if name == "linear":
        scale = 1000.0 / num_timesteps
        if scale * 0.02 >= 1.0:
            raise ConfigError(f"the linear schedule needs more than 20 timesteps (its last beta would be {scale * 0.02:g})")
        return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
    if name == "cosine":
        s = 0.008
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ConfigError(f"unknown beta schedule {name!r}; choose one of {', '.join(BETA_SCHEDULES)}")


def space_timesteps(num_timesteps: int, spec: str | int | Sequence[int]) -> list[int]:
    """The sorted timesteps (on the original 0..T-1 scale) kept by a respacing ``spec``.

    - ``"ddimN"``: the steps 0, k, 2k, ... for the integer stride k that gives exactly N of them
      (as DDIM does); refused when no stride does.
    - ``"N"`` or ``N``: N steps spread evenly over 0..T-1, both ends included.
    - ``"10,15,20"`` or ``[10, 15, 20]``: the range is cut into as many equal sections as there are
      counts, and each section keeps its count of evenly spaced steps (improved DDPM's respacing).
    """
    if isinstance(spec, str):
        spec = spec.strip()
        if spec.startswith("ddim"):
            desired = _parse_count(spec[len("ddim"):], spec)
            for stride in range(1, num_timesteps + 1):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ConfigError(f"cannot take exactly {desired} steps from {num_timesteps} with an integer stride")
        counts = [_parse_count(part, spec) for part in spec.split(",")]
    elif isinstance(spec, int):
        counts = [spec]
    else:
        counts = [int(c) for c in spec]
    if not counts or any(c < 0 for c in counts) or sum(counts) == 0:
        raise ConfigError(f"bad respacing {spec!r}: counts must be non-negative and not all zero")

    section_size, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = section_size + (1 if i < extra else 0)
        if count > size:
            raise ConfigError(f"cannot take {count} steps from a section of {size} (respacing {spec!r})")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        kept.extend(start + round(stride * j) for j in range(count))
        start += size
    return sorted(set(kept))


def _parse_count(text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"bad respacing {spec!r}: expected 'ddimN', 'N' or comma-separated counts") from None

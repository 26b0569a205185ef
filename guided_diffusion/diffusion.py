"""Gaussian diffusion: the forward process, its posterior, the learned reverse step, losses and the VLB.

All the diffusion maths of the toolkit lives here, in the notation of Ho et al. 2020 (DDPM):

    q(x_t | x_0)        = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)
    q(x_{t-1} | x_t, x_0) = N(mu~_t(x_t, x_0), beta~_t I)
    mu~_t  = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
    beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t

Timesteps are indexed 0..T-1 (the paper's 1..T). The schedule's buffers are float64; each method
computes in the dtype of its input tensors, so float64 inputs give float64 results.

A model is called as ``model(x_t, t, **model_kwargs)`` and returns a tensor shaped like ``x_t``: the
noise eps, the clean image x_0, or the velocity v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0,
by ``prediction``. After :meth:`GaussianDiffusion.respace`, methods index the kept steps 0..K-1 while
the model and ``cond_fn`` still receive the original timesteps.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .config import Config
from .errors import ConfigError
from .guidance import reads_output_of
from .schedule import BETA_SCHEDULES, get_beta_schedule, space_timesteps
from .serialization import CONFIG_NAME, CheckpointError, load_component_config, save_json

PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned_range")


@dataclass
class DiffusionConfig(Config):
    """The ``diffusion`` section: ``num_timesteps`` T and ``beta_schedule`` (see
    :func:`~guided_diffusion.schedule.get_beta_schedule`), and :class:`GaussianDiffusion`'s
    ``prediction``, ``variance`` and ``clip_denoised``. A saved pipeline keeps it as
    ``diffusion/config.json``."""

    section = "diffusion"

    num_timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction: str = "eps"
    variance: str = "fixed_small"
    clip_denoised: bool = True

    def __post_init__(self) -> None:
        if self.num_timesteps < 1:
            raise ConfigError(f"diffusion.num_timesteps must be at least 1, got {self.num_timesteps}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(f"unknown beta_schedule {self.beta_schedule!r}; choose one of {', '.join(BETA_SCHEDULES)}")
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"unknown prediction {self.prediction!r}; choose one of {', '.join(PREDICTIONS)}")
        if self.variance not in VARIANCES:
            raise ConfigError(f"unknown variance {self.variance!r}; choose one of {', '.join(VARIANCES)}")

Model = Callable[..., torch.Tensor]
CondFn = Callable[..., torch.Tensor]


class Denoised(NamedTuple):
    """One model evaluation as the samplers use it (see :meth:`GaussianDiffusion.denoise`).

    ``x0`` and ``eps`` [B, ...] satisfy x = x0 + sigma eps for the evaluated x; ``gradient`` [B, ...] is
    ``cond_fn``'s value at x_t (None without ``cond_fn``); ``variance_fraction`` [B, ...] is a
    ``learned_range`` model's interpolation between the step's beta~ (0) and beta (1) in log space
    (None for fixed variances).
    """

    x0: torch.Tensor
    eps: torch.Tensor
    gradient: torch.Tensor | None
    variance_fraction: torch.Tensor | None = None


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats (broadcasting)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) elementwise, in nats, for data on 256 levels scaled to [-1, 1].

    Each level x owns the bin [x - 1/255, x + 1/255] of N(mean, exp(log_scale)^2); the two edge bins
    extend to -inf (x = -1) and +inf (x = 1), so the 256 probabilities sum to one (Ho et al. 2020, Eq. 13).
    """
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (x - mean + 1.0 / 255.0)
    lower = inv_std * (x - mean - 1.0 / 255.0)
    # A bin's mass as a difference of the tail on the side where it is more accurate.
    delta = torch.where(
        lower > 0, torch.special.ndtr(-lower) - torch.special.ndtr(-upper), torch.special.ndtr(upper) - torch.special.ndtr(lower)
    )
    log_delta = torch.log(delta.clamp(min=torch.finfo(delta.dtype).tiny))
    log_cdf_plus = torch.special.log_ndtr(upper)
    log_one_minus_cdf_min = torch.special.log_ndtr(-lower)
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def dynamic_threshold(x0: torch.Tensor, percentile: float) -> torch.Tensor:
    """Imagen's dynamic thresholding of x_0 estimates [B, ...]: per image, s = max(1, the ``percentile``
    quantile of |x_0|), then x_0 clamped to [-s, s] and divided by s, so the result lies in [-1, 1]."""
    if not 0 < percentile < 1:
        raise ValueError(f"thresholding must be a quantile in (0, 1), e.g. 0.995; got {percentile}")
    s = torch.quantile(x0.abs().flatten(1).float(), percentile, dim=1).clamp(min=1.0).to(x0.dtype)
    s = s.view(-1, *([1] * (x0.dim() - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all dimensions but the first: [B, ...] -> [B]."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def _interpolate(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """The piecewise-linear function through the points (xp, fp) (xp increasing) at ``x``, held at its
    end values outside [xp[0], xp[-1]]: numpy's ``interp`` in torch."""
    if xp.numel() == 1:
        return fp.expand_as(x).clone()
    high = torch.searchsorted(xp, x.contiguous()).clamp(1, xp.numel() - 1)
    low = high - 1
    w = ((x - xp[low]) / (xp[high] - xp[low])).clamp(0.0, 1.0)
    return fp[low] + w * (fp[high] - fp[low])


class GaussianDiffusion:
    """The diffusion process of a beta schedule, and everything computed from it.

    Args:
        betas: the schedule beta_t, [T], any float dtype (kept as float64).
        prediction: what the model predicts: ``"eps"``, ``"x0"`` or ``"v"``.
        variance: the reverse-step variance: ``"fixed_small"`` (beta~_t), ``"fixed_large"`` (beta_t,
            with beta~_1 at t=0), or ``"learned_range"`` (Nichol & Dhariwal 2021, Eq. 15): the model
            outputs twice the image's channels, its prediction and then v, and the log variance is
            frac log beta_t + (1 - frac) log beta~_t with frac = (v + 1) / 2, the two ends being exactly
            ``fixed_large`` and ``fixed_small``'s.
        clip_denoised: clamp the predicted x_0 to [-1, 1] before forming the posterior mean.
        timestep_map: the original timestep of each step, [T] (set by :meth:`respace`; identity when None).
    """

    def __init__(
        self,
        betas: torch.Tensor | Sequence[float],
        *,
        prediction: str = "eps",
        variance: str = "fixed_small",
        clip_denoised: bool = True,
        timestep_map: torch.Tensor | Sequence[int] | None = None,
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
        if variance not in VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() == 0 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a non-empty sequence of values in (0, 1)")
        self.prediction = prediction
        self.variance = variance
        self.clip_denoised = clip_denoised
        self.num_timesteps = betas.numel()
        if timestep_map is None:
            timestep_map = torch.arange(self.num_timesteps)
        self.timestep_map = torch.as_tensor(timestep_map, dtype=torch.long)
        if self.timestep_map.shape != (self.num_timesteps,):
            raise ValueError("timestep_map must hold one original timestep per beta")

        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log1p(-self.alphas_cumprod)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta~_0 is 0: clip its log to beta~_1 (when T > 1) so the log stays finite.
        first = self.posterior_variance[1:2] if self.num_timesteps > 1 else self.betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)
        large = torch.cat([first, betas[1:]])
        self.large_variance, self.large_log_variance = large, torch.log(large)
        self.one_minus_alphas_cumprod = 1.0 - self.alphas_cumprod
        self.snr_values = self.alphas_cumprod / self.one_minus_alphas_cumprod
        self.sigmas = (self.one_minus_alphas_cumprod / self.alphas_cumprod).sqrt()
        self.log_sigmas = torch.log(self.sigmas)
        # Copies of the schedule's tables per (table, device, dtype), made on first use, so that a step
        # on an accelerator indexes on the device instead of syncing with the host.
        self._tables: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        self.config: DiffusionConfig | None = None  # set by from_config

    @classmethod
    def from_config(cls, config: DiffusionConfig | Mapping[str, Any] | None) -> "GaussianDiffusion":
        """Build from a :class:`DiffusionConfig` or a ``diffusion`` section (missing keys take their
        default; unknown ones are refused with the valid ones). The result keeps it as ``config``."""
        if not isinstance(config, DiffusionConfig):
            config = DiffusionConfig.from_dict(config)
        diffusion = cls(
            get_beta_schedule(config.beta_schedule, config.num_timesteps),
            prediction=config.prediction,
            variance=config.variance,
            clip_denoised=config.clip_denoised,
        )
        diffusion.config = config
        return diffusion

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` (this process's :class:`DiffusionConfig`) into ``directory``; a
        process not built by :meth:`from_config` (a respaced one) has no config to save."""
        if self.config is None:
            raise ValueError("only a GaussianDiffusion built by from_config can be saved; respaced ones are rebuilt when sampling")
        save_json(Path(directory) / CONFIG_NAME, self.config.to_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "GaussianDiffusion":
        """Load a process saved by :meth:`save_pretrained`; a missing or bad config is a
        :class:`~guided_diffusion.serialization.CheckpointError` naming the file."""
        values = load_component_config(directory)
        try:
            return cls.from_config(values)
        except ConfigError as err:
            raise CheckpointError(f"bad diffusion config in {Path(directory) / CONFIG_NAME}: {err}") from None

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(T={self.num_timesteps}, prediction={self.prediction!r}, "
            f"variance={self.variance!r}, clip_denoised={self.clip_denoised})"
        )

    # ----------------------------------------------------------------------------- helpers

    def _table(self, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The schedule table ``name`` (an attribute such as ``"alphas_cumprod"``) in ``dtype`` on
        ``device``, cached by name: the tables are set once, in ``__init__``."""
        key = (name, device, dtype)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = getattr(self, name).to(dtype=dtype).to(device)
        return table

    def _extract(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The schedule table ``name`` at ``t`` as [B, 1, ..., 1], in ``like``'s dtype and device."""
        out = self._table(name, like.device, like.dtype)[t.to(like.device, torch.long)]
        return out.reshape(-1, *([1] * (like.dim() - 1)))

    def original_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The original-scale timesteps [B] that the model and ``cond_fn`` receive for steps ``t`` [B]."""
        return self._table("timestep_map", t.device, torch.long)[t.long()]

    def _noise_like(self, x: torch.Tensor, noise: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        if noise is not None:
            if noise.shape != x.shape:
                raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(x.shape)}")
            return noise.to(device=x.device, dtype=x.dtype)
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    # ----------------------------------------------------------------------------- forward process

    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_t | x_0): (mean [B, ...], variance [B, 1, ...], log_variance [B, 1, ...])."""
        mean = self._extract("sqrt_alphas_cumprod", t, x0) * x0
        variance = self._extract("one_minus_alphas_cumprod", t, x0)
        return mean, variance, self._extract("log_one_minus_alphas_cumprod", t, x0)

    def q_sample(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps. Shapes [B, ...]."""
        noise = self._noise_like(x0, noise, generator)
        return self._extract("sqrt_alphas_cumprod", t, x0) * x0 + self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_{t-1} | x_t, x_0): (mu~ [B, ...], beta~ [B, 1, ...], log beta~ clipped at t=0 [B, 1, ...])."""
        mean = self._extract("posterior_mean_coef1", t, x_t) * x0 + self._extract("posterior_mean_coef2", t, x_t) * x_t
        variance = self._extract("posterior_variance", t, x_t)
        return mean, variance, self._extract("posterior_log_variance_clipped", t, x_t)

    # ----------------------------------------------------------------------------- parameterisations

    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        return (x_t - self._extract("sqrt_one_minus_alphas_cumprod", t, x_t) * eps) / self._extract("sqrt_alphas_cumprod", t, x_t)

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t)."""
        return (x_t - self._extract("sqrt_alphas_cumprod", t, x_t) * x0) / self._extract("sqrt_one_minus_alphas_cumprod", t, x_t)

    def v_from_x0_eps(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0."""
        return self._extract("sqrt_alphas_cumprod", t, x0) * eps - self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * x0

    def x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v."""
        return self._extract("sqrt_alphas_cumprod", t, x_t) * x_t - self._extract("sqrt_one_minus_alphas_cumprod", t, x_t) * v

    def prediction_target(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """What the model should output for (x_0, eps) at t, by ``prediction``. Shapes [B, ...]."""
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        return self.v_from_x0_eps(x0, t, eps)

    def split_output(self, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A model output at steps ``t`` -> (x_0, eps) estimates, unclipped. Shapes [B, ...]."""
        a = self._extract("sqrt_alphas_cumprod", t, x_t)
        s = self._extract("sqrt_one_minus_alphas_cumprod", t, x_t)
        x0 = self._x0_of_output(x_t, output, a, s)
        return x0, output if self.prediction == "eps" else (x_t - a * x0) / s

    def _x0_of_output(self, x_t: torch.Tensor, output: torch.Tensor, a: Any, s: Any) -> torch.Tensor:
        """x_0 from a model output by ``prediction``, with a = sqrt(alpha_bar) and s = sqrt(1 - alpha_bar)
        (numbers or tensors broadcasting against x_t): eps -> (x_t - s eps) / a, v -> a x_t - s v."""
        if self.prediction == "eps":
            return (x_t - s * output) / a
        return output if self.prediction == "x0" else a * x_t - s * output

    def split_variance(self, output: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A model output for ``like`` = x_t [B, C, ...] -> (its prediction [B, C, ...], the learned
        variance's interpolation frac = (v + 1) / 2 [B, C, ...], or None for fixed variances).

        A ``learned_range`` model outputs [B, 2C, ...] (the prediction, then v); any other [B, C, ...].
        A wrong shape raises ValueError naming both.
        """
        channels = like.shape[1]
        learned = self.variance == "learned_range"
        expected = (like.shape[0], 2 * channels if learned else channels, *like.shape[2:])
        if tuple(output.shape) != expected:
            raise ValueError(f"model output has shape {tuple(output.shape)}, expected {expected}")
        if not learned:
            return output, None
        prediction, v = output.split(channels, dim=1)
        return prediction, (v + 1) / 2

    def learned_log_variance(self, fraction: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log of the learned variance at steps ``t`` [B]: frac log beta_t + (1 - frac) log beta~_t, with
        ``fraction`` [B, ...] and the clipped tables of ``fixed_large`` and ``fixed_small`` (so frac = 1
        and 0 give exactly their variances)."""
        small = self._extract("posterior_log_variance_clipped", t, fraction)
        large = self._extract("large_log_variance", t, fraction)
        return fraction * large + (1 - fraction) * small

    # ----------------------------------------------------------------------------- noise levels

    def sigma_to_timestep(self, sigma: float) -> float:
        """The step index (0..T-1, fractional between steps) of noise level ``sigma`` > 0.

        sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) is the noise level of the scaled state
        x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps, and increases with t. Between two steps the index is
        linear in log sigma (as k-diffusion's discrete-time wrappers do); levels outside the schedule's
        range are clamped to its ends. Indices within 1e-6 of an integer are returned as that integer.
        """
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        if self.num_timesteps == 1:
            return 0.0
        log_sigma = torch.tensor(math.log(sigma), dtype=torch.float64)
        high = int(torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, self.num_timesteps - 1))
        low = high - 1
        w = float((log_sigma - self.log_sigmas[low]) / (self.log_sigmas[high] - self.log_sigmas[low]))
        index = min(max(low + w, 0.0), float(self.num_timesteps - 1))
        return float(round(index)) if abs(index - round(index)) < 1e-6 else index

    def model_timesteps(self, index: float, batch_size: int, device: torch.device | str) -> torch.Tensor:
        """The timesteps [B] that the model and ``cond_fn`` receive at step ``index`` (see
        :meth:`sigma_to_timestep`): the original timestep, as a long tensor when ``index`` is a whole
        step, and otherwise as a float32 tensor interpolated linearly between the two neighbouring steps'
        original timesteps."""
        low = min(int(math.floor(index)), self.num_timesteps - 1)
        if index == low:
            return torch.full((batch_size,), int(self.timestep_map[low]), dtype=torch.long, device=device)
        w = index - low
        value = (1 - w) * float(self.timestep_map[low]) + w * float(self.timestep_map[low + 1])
        return torch.full((batch_size,), value, dtype=torch.float32, device=device)

    def timestep_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """The noise levels sigma [B] (float64) of original-scale timesteps ``t`` [B], fractional ones
        included: the inverse of :meth:`model_timesteps` (linear in the step index between two original
        timesteps, and the step index linear in log sigma)."""
        steps = torch.arange(self.num_timesteps, dtype=torch.float64)
        index = _interpolate(t.detach().cpu().double(), self.timestep_map.double(), steps)
        return torch.exp(_interpolate(index, steps, self.log_sigmas.double()))

    def estimate_x0(self, model: Model, x_t: torch.Tensor, t: torch.Tensor, model_kwargs: dict[str, Any] | None = None) -> torch.Tensor:
        """The model's x_0 estimate [B, ...] from x_t [B, ...] at original-scale timesteps ``t`` [B]
        (fractional ones included), clamped to [-1, 1] when ``clip_denoised`` as :meth:`denoise` does;
        differentiable in ``x_t``, so that guidance can read it (``guidance_reads="x0"``)."""
        return self.x0_of_output(model(x_t, t, **(model_kwargs or {})), x_t, t)

    def x0_of_output(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The x_0 estimate [B, ...] that the model's ``output`` (its whole output at x_t [B, ...] and
        original-scale timesteps ``t`` [B]) stands for, as :meth:`estimate_x0` forms it."""
        sigma = self.timestep_to_sigma(t).to(device=x_t.device, dtype=x_t.dtype).view(-1, *[1] * (x_t.ndim - 1))
        a = torch.rsqrt(1 + sigma * sigma)  # sqrt(alpha_bar)
        return self._x0_and_fraction(output, x_t, a, sigma * a)[0]

    def _x0_and_fraction(
        self, output: torch.Tensor, x_t: torch.Tensor, a: Any, s: Any, thresholding: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The x_0 estimate [B, ...] of the model's whole ``output`` at x_t (a = sqrt(alpha_bar), s =
        sqrt(1 - alpha_bar), numbers or tensors broadcasting against x_t), dynamically thresholded at
        ``thresholding`` or else clamped when ``clip_denoised``; and the learned variance's interpolation
        (None for fixed variances)."""
        output, fraction = self.split_variance(output, x_t)
        x0 = self._x0_of_output(x_t, output, a, s)
        if thresholding is not None:
            x0 = dynamic_threshold(x0, thresholding)
        elif self.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        return x0, fraction

    def denoise(
        self,
        model: Model,
        x: torch.Tensor,
        sigma: float,
        *,
        model_kwargs: dict[str, Any] | None = None,
        cond_fn: CondFn | None = None,
        score_form: bool = True,
        thresholding: float | None = None,
    ) -> Denoised:
        """The model's x_0 and eps at noise level ``sigma`` > 0 for ``x`` = x_t / sqrt(alpha_bar) [B, ...].

        x_t = x / sqrt(1 + sigma^2) and the timestep of ``sigma`` (:meth:`model_timesteps`) go to the model,
        whose output becomes (x_0, eps) by ``prediction``. Then x_0 is clamped to [-1, 1] when
        ``clip_denoised``, or, with ``thresholding`` = p in (0, 1), dynamically thresholded (Saharia et
        al. 2022, Imagen): s = max(1, the p-quantile of |x_0| per image), x_0 = clamp(x_0, -s, s) / s.
        eps follows from the clipped x_0. With ``cond_fn`` and ``score_form``, classifier guidance enters
        in score form: eps' = eps - sqrt(1 - alpha_bar) cond_fn(x_t, t), so x_0' = x_0 + (1 - alpha_bar)
        / sqrt(alpha_bar) cond_fn(x_t, t). With ``score_form=False`` x_0 and eps stay unguided and the
        caller applies ``gradient`` itself (the ancestral sampler adds it to the posterior mean). A
        ``cond_fn`` that reads this ``model``'s x_0 estimate (its denoiser a
        :class:`~guided_diffusion.guidance.ModelEstimate` of it) gets the model's output, computed once
        with its graph, instead of evaluating the model again.
        """
        alpha_bar = 1.0 / (1.0 + sigma**2)
        a, s = math.sqrt(alpha_bar), sigma * math.sqrt(alpha_bar)  # sqrt(alpha_bar), sqrt(1 - alpha_bar)
        x_t = x * a
        t = self.model_timesteps(self.sigma_to_timestep(sigma), x.shape[0], x.device)
        kwargs = model_kwargs or {}
        if cond_fn is not None and reads_output_of(cond_fn, model, t):  # one forward for the step and the guidance
            with torch.enable_grad():
                x_read = x_t.detach().requires_grad_(True)
                output = model(x_read, t, **kwargs)
                gradient = cond_fn.from_model_output(x_read, output, t, model, **kwargs)
            x0, fraction = self._x0_and_fraction(output.detach(), x_t, a, s, thresholding)
        else:
            x0, fraction = self._x0_and_fraction(model(x_t, t, **kwargs), x_t, a, s, thresholding)
            gradient = None if cond_fn is None else cond_fn(x_t, t, **kwargs)
        if gradient is not None and score_form:
            x0 = x0 + (s * s / a) * gradient
        return Denoised(x0, (x - x0) / sigma, gradient, fraction)

    # ----------------------------------------------------------------------------- reverse process

    def p_mean_variance(
        self, model: Model, x_t: torch.Tensor, t: torch.Tensor, model_kwargs: dict[str, Any] | None = None
    ) -> dict[str, torch.Tensor]:
        """p_theta(x_{t-1} | x_t): the model's estimate of x_0 plugged into the posterior.

        Returns dict(mean [B, ...], variance and log_variance ([B, 1, ...] when fixed, [B, ...] when
        learned), pred_x0 [B, ...], eps [B, ...]); with ``clip_denoised`` pred_x0 is clamped to [-1, 1]
        and eps made consistent with it.
        """
        output, fraction = self.split_variance(model(x_t, self.original_timesteps(t), **(model_kwargs or {})), x_t)
        pred_x0, eps = self.split_output(x_t, t, output)
        if self.clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
            eps = self.eps_from_x0(x_t, t, pred_x0)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        if fraction is not None:
            log_variance = self.learned_log_variance(fraction, t)
            variance = log_variance.exp()
        elif self.variance == "fixed_small":
            variance = self._extract("posterior_variance", t, x_t)
            log_variance = self._extract("posterior_log_variance_clipped", t, x_t)
        else:
            variance = self._extract("large_variance", t, x_t)
            log_variance = self._extract("large_log_variance", t, x_t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_x0": pred_x0, "eps": eps}

    def p_sample(
        self,
        model: Model,
        x_t: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
        cond_fn: CondFn | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """One ancestral step x_t -> x_{t-1} ~ p_theta(x_{t-1} | x_t); no noise is added at t=0.

        With ``cond_fn`` (the scaled gradient of log p(y | x_t, t)), the mean becomes
        ``mean + variance * cond_fn(x_t, t_original, **model_kwargs)`` (classifier guidance).
        Returns dict(sample [B, ...], pred_x0 [B, ...]).
        """
        out = self.p_mean_variance(model, x_t, t, model_kwargs)
        mean = out["mean"]
        if cond_fn is not None:
            mean = mean + out["variance"] * cond_fn(x_t, self.original_timesteps(t), **(model_kwargs or {}))
        noise = self._noise_like(x_t, noise, generator)
        nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
        sample = mean + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_x0": out["pred_x0"]}

    def condition_score(
        self,
        out: dict[str, torch.Tensor],
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond_fn: CondFn | None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (eps, pred_x0) of a :meth:`p_mean_variance` output, guided in score form when ``cond_fn`` is
        given: eps' = eps - sqrt(1 - alpha_bar_t) cond_fn(x_t, t_original), x_0 re-derived from eps'."""
        if cond_fn is None:
            return out["eps"], out["pred_x0"]
        gradient = cond_fn(x_t, self.original_timesteps(t), **(model_kwargs or {}))
        eps = out["eps"] - self._extract("sqrt_one_minus_alphas_cumprod", t, x_t) * gradient
        return eps, self.x0_from_eps(x_t, t, eps)

    def ddim_sample(
        self,
        model: Model,
        x_t: torch.Tensor,
        t: torch.Tensor,
        eta: float = 0.0,
        model_kwargs: dict[str, Any] | None = None,
        cond_fn: CondFn | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """One DDIM step x_t -> x_{t-1} (Song et al. 2021); ``eta=0`` is deterministic, ``eta=1`` has
        the ancestral step's variance beta~_t.

        With ``cond_fn``, the noise estimate takes the score form
        ``eps - sqrt(1 - alpha_bar_t) * cond_fn(x_t, t_original, **model_kwargs)`` and x_0 is re-derived
        from it. Returns dict(sample [B, ...], pred_x0 [B, ...]).
        """
        out = self.p_mean_variance(model, x_t, t, model_kwargs)
        eps, pred_x0 = self.condition_score(out, x_t, t, cond_fn, model_kwargs)
        alpha_bar = self._extract("alphas_cumprod", t, x_t)
        alpha_bar_prev = self._extract("alphas_cumprod_prev", t, x_t)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))
        mean = pred_x0 * alpha_bar_prev.sqrt() + torch.sqrt((1 - alpha_bar_prev - sigma**2).clamp(min=0)) * eps
        sample = mean
        if eta > 0:
            noise = self._noise_like(x_t, noise, generator)
            nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
            sample = mean + nonzero * sigma * noise
        return {"sample": sample, "pred_x0": pred_x0}

    # ----------------------------------------------------------------------------- losses

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t), float64 [B]."""
        return self._table("snr_values", t.device, torch.float64)[t.long()]

    def loss_weight(self, t: torch.Tensor, *, snr_gamma: float | None = None, sigma_data: float | None = None) -> torch.Tensor | None:
        """The per-example weight [B] (float64) of the squared error of the model's target at steps ``t``
        that weights the x_0 error by w(SNR_t); None for the unweighted loss.

        An error e_x0 in x_0 is an error SNR e_x0 in eps and (SNR + 1) e_x0 in v (squared), so the
        target's weight is w / SNR (eps), w (x0) or w / (SNR + 1) (v). ``snr_gamma``: min-SNR-gamma,
        w = min(SNR, gamma) (Hang et al. 2023). ``sigma_data``: EDM's weighting lambda(sigma) = (sigma^2 +
        sigma_data^2) / (sigma sigma_data)^2 = SNR + 1 / sigma_data^2 (Karras et al. 2022, Eq. 8 and
        Table 1), with sigma^2 = 1 / SNR the noise level of the scaled state; with sigma_data = 1 it is the
        plain v loss. Both at once are refused.
        """
        if snr_gamma is not None and sigma_data is not None:
            raise ValueError("choose one loss weighting: snr_gamma (min-SNR) or sigma_data (EDM), not both")
        if snr_gamma is None and sigma_data is None:
            return None
        snr = self.snr(t)
        w = snr.clamp(max=snr_gamma) if snr_gamma is not None else snr + 1.0 / sigma_data**2
        return {"eps": w / snr, "x0": w, "v": w / (snr + 1)}[self.prediction]

    def sample_timesteps(
        self,
        batch_size: int,
        *,
        scheme: str = "uniform",
        log_normal: tuple[float, float] = (-1.2, 1.2),
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Training timesteps [B] (long): ``"uniform"`` on 0..T-1, or ``"log_normal"``: ln sigma ~
        N(mean, std^2) with ``log_normal`` = (mean, std) (EDM's P_mean, P_std; Karras et al. 2022,
        Table 1), each sigma taken to the step whose log sigma is nearest (sigmas beyond the schedule's
        ends to its ends)."""
        if scheme == "uniform":
            return torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=device)
        if scheme != "log_normal":
            raise ValueError(f"unknown timestep sampling {scheme!r}; choose uniform or log_normal")
        mean, std = log_normal
        log_sigma = mean + std * torch.randn(batch_size, generator=generator, dtype=torch.float64)
        nearest = (log_sigma[:, None] - self.log_sigmas[None, :]).abs().argmin(dim=1)
        return nearest.to(device)

    def training_losses(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
        noise: torch.Tensor | None = None,
        snr_gamma: float | None = None,
        generator: torch.Generator | None = None,
        vlb_weight: float = 0.001,
        sigma_data: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """L_simple: the mean squared error between the model output and its target at x_t ~ q(x_t | x_0);
        for a ``learned_range`` model, the hybrid L_simple + lambda L_vlb (Nichol & Dhariwal 2021, Sec. 3.1).

        The target follows ``prediction`` (eps, x_0 or v). With ``snr_gamma`` (min-SNR-gamma) or
        ``sigma_data`` (EDM's weighting) the per-example loss is weighted by :meth:`loss_weight`, the same
        weight of the x_0 error for every parameterisation. With learned variances the VLB term
        of step t (:meth:`vb_terms_bpd`, bits per dimension) is computed on the prediction with its
        gradient stopped, so that it trains the variance alone and L_simple the mean; L_vlb = T L_t is
        weighted by ``vlb_weight`` = lambda (the paper's 0.001: with T = 1000, one L_t).
        Returns dict(loss [B], mse [B], x_t [B, ...], target [B, ...], output [B, ...] (the prediction),
        and vb [B] for learned variances).
        """
        noise = self._noise_like(x0, noise, generator)
        x_t = self.q_sample(x0, t, noise=noise)
        raw = model(x_t, self.original_timesteps(t), **(model_kwargs or {}))
        output, fraction = self.split_variance(raw, x_t)
        target = self.prediction_target(x0, t, noise)
        dtype = torch.promote_types(output.dtype, torch.float32)
        mse = mean_flat((output.to(dtype) - target.to(dtype)) ** 2)
        weight = self.loss_weight(t, snr_gamma=snr_gamma, sigma_data=sigma_data)
        loss = mse if weight is None else mse * weight.to(mse.dtype)
        terms = {"loss": loss, "mse": mse, "x_t": x_t, "target": target, "output": output}
        if fraction is not None:
            frozen = torch.cat([output.detach(), raw[:, output.shape[1]:]], dim=1)  # the mean's gradient stopped
            vb = self.vb_terms_bpd(lambda *_, **__: frozen, x0, x_t, t)["output"]
            terms["vb"] = vb
            terms["loss"] = loss + vlb_weight * self.num_timesteps * vb.to(loss.dtype)
        return terms

    # ----------------------------------------------------------------------------- likelihood

    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) in bits per dimension, [B]."""
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, dtype=torch.long, device=x0.device)
        mean, _, log_variance = self.q_mean_variance(x0, t)
        return mean_flat(normal_kl(mean, log_variance, torch.zeros_like(mean), torch.zeros_like(mean))) / math.log(2.0)

    def vb_terms_bpd(
        self, model: Model, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, model_kwargs: dict[str, Any] | None = None
    ) -> dict[str, torch.Tensor]:
        """The VLB term of step t in bits per dimension, [B]: KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))
        for t > 0 and the discretised decoder's -log p(x_0 | x_1) at t = 0. Returns dict(output, pred_x0)."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance(model, x_t, t, model_kwargs)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        decoder_nll = -mean_flat(
            discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"].expand_as(x0))
        ) / math.log(2.0)
        return {"output": torch.where(t == 0, decoder_nll, kl), "pred_x0": out["pred_x0"]}

    @torch.no_grad()
    def nll_bpd(
        self,
        model: Model,
        x0: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The variational bound on -log p(x_0) in bits per dimension, one model call per step.

        ``x0`` [B, ...] in [-1, 1] on 256 levels; ``noise`` optional [T, B, ...], ``noise[t]`` drawing x_t.
        Returns dict(total_bpd [B], prior_bpd [B], vb [B, T] with vb[:, t] the term of step t,
        x0_mse [B, T]).
        """
        if noise is not None and noise.shape != (self.num_timesteps, *x0.shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {(self.num_timesteps, *x0.shape)}")
        batch = x0.shape[0]
        vb = torch.zeros(batch, self.num_timesteps, dtype=x0.dtype, device=x0.device)
        x0_mse = torch.zeros_like(vb)
        for step in reversed(range(self.num_timesteps)):
            t = torch.full((batch,), step, dtype=torch.long, device=x0.device)
            x_t = self.q_sample(x0, t, noise=None if noise is None else noise[step], generator=generator)
            terms = self.vb_terms_bpd(model, x0, x_t, t, model_kwargs)
            vb[:, step] = terms["output"]
            x0_mse[:, step] = mean_flat((terms["pred_x0"] - x0) ** 2)
        prior = self.prior_bpd(x0)
        return {"total_bpd": vb.sum(dim=1) + prior, "prior_bpd": prior, "vb": vb, "x0_mse": x0_mse}

    # ----------------------------------------------------------------------------- respacing

    def respace(self, spec: str | int | Sequence[int]) -> "GaussianDiffusion":
        """The process over the kept steps of ``spec`` (see :func:`space_timesteps`), indexed 0..K-1.

        Its betas are recomputed from alpha_bar at the kept steps, beta_k = 1 - alpha_bar_k / alpha_bar_{k-1},
        so alpha_bar is unchanged there; the model and ``cond_fn`` still receive the original timesteps.
        """
        kept = torch.tensor(space_timesteps(self.num_timesteps, spec), dtype=torch.long)
        alpha_bar = self.alphas_cumprod[kept]
        previous = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        return GaussianDiffusion(
            1.0 - alpha_bar / previous,
            prediction=self.prediction,
            variance=self.variance,
            clip_denoised=self.clip_denoised,
            timestep_map=self.timestep_map[kept],
        )

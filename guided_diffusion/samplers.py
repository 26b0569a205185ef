"""Sampling loops built on :class:`~guided_diffusion.diffusion.GaussianDiffusion`.

Each loop respaces the process to the requested number of steps and walks it from pure noise to x_0,
calling ``callback(step, num_steps, x_t, pred_x0)`` after every step (step counts up from 0).

- ``"ddpm"``: ancestral sampling, x_{t-1} ~ p_theta(x_{t-1} | x_t), on the respaced steps.
- ``"ddim"``: DDIM with ``eta`` (0 deterministic, 1 ancestral-like).
- ``"dpm++"``: DPM-Solver++(2M), the second-order multistep solver of Lu et al. (2022) in x_0 form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from .diffusion import CondFn, GaussianDiffusion, Model

SAMPLERS = ("ddpm", "ddim", "dpm++")

Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def sample(
    model: Model,
    diffusion: GaussianDiffusion,
    shape: tuple[int, ...],
    *,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    model_kwargs: dict[str, Any] | None = None,
    cond_fn: CondFn | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Draw samples [B, C, H, W] (``shape``) from ``model`` in ``steps`` steps.

    ``noise`` (shape ``shape``) is the starting x_T; otherwise it is drawn from ``generator``, which also
    draws the noise of stochastic steps. ``cond_fn`` (classifier guidance) enters each step as
    :meth:`GaussianDiffusion.p_sample` / :meth:`GaussianDiffusion.ddim_sample` define.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if not 1 <= steps <= diffusion.num_timesteps:
        raise ValueError(f"steps must be between 1 and {diffusion.num_timesteps}, got {steps}")
    process = diffusion if steps == diffusion.num_timesteps else diffusion.respace(str(steps))
    x = noise.to(device=device, dtype=dtype) if noise is not None else torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if sampler == "dpm++":
        return _dpm_solver_pp_2m(model, process, x, model_kwargs, cond_fn, callback, progress)
    for i in tqdm(range(process.num_timesteps), disable=not progress, desc=sampler):
        t = torch.full((x.shape[0],), process.num_timesteps - 1 - i, dtype=torch.long, device=device)
        if sampler == "ddpm":
            out = process.p_sample(model, x, t, model_kwargs=model_kwargs, cond_fn=cond_fn, generator=generator)
        else:
            out = process.ddim_sample(model, x, t, eta=eta, model_kwargs=model_kwargs, cond_fn=cond_fn, generator=generator)
        x = out["sample"]
        if callback is not None:
            callback(i, process.num_timesteps, x, out["pred_x0"])
    return x


def _dpm_solver_pp_2m(
    model: Model,
    process: GaussianDiffusion,
    x: torch.Tensor,
    model_kwargs: dict[str, Any] | None,
    cond_fn: CondFn | None,
    callback: Callback | None,
    progress: bool,
) -> torch.Tensor:
    """DPM-Solver++(2M) over the steps of ``process``, ending at alpha_bar = alpha_bar of step 0.

    With lambda_t = log(sqrt(alpha_bar_t) / sqrt(1 - alpha_bar_t)) and h = lambda_next - lambda_t, the
    first-order update is x_next = (sigma_next / sigma_t) x - alpha_next (e^{-h} - 1) D, with D the x_0
    estimate; from the second step D extrapolates linearly over the previous estimate,
    D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev, r = h_prev / h. The step into step 0 is first order, and
    step 0 returns its x_0 estimate, as DDIM's last step does. Classifier guidance enters through the
    score form of x_0, as in DDIM.
    """
    alpha_bar = process.alphas_cumprod
    lam = 0.5 * (torch.log(alpha_bar) - torch.log1p(-alpha_bar))
    previous_x0, previous_h = None, None
    n = process.num_timesteps
    for i in tqdm(range(n), disable=not progress, desc="dpm++"):
        step = n - 1 - i
        t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
        out = process.p_mean_variance(model, x, t, model_kwargs)
        _, pred_x0 = process.condition_score(out, x, t, cond_fn, model_kwargs)
        if step == 0:
            x = pred_x0
        else:
            h = (lam[step - 1] - lam[step]).item()
            sigma_ratio = ((1 - alpha_bar[step - 1]) / (1 - alpha_bar[step])).sqrt().item()
            alpha_next = alpha_bar[step - 1].sqrt().item()
            denoised = pred_x0
            if previous_x0 is not None and step > 1:
                r = previous_h / h
                denoised = (1 + 1 / (2 * r)) * pred_x0 - (1 / (2 * r)) * previous_x0
            x = sigma_ratio * x - alpha_next * math.expm1(-h) * denoised
            previous_x0, previous_h = pred_x0, h
        if callback is not None:
            callback(i, n, x, pred_x0)
    return x

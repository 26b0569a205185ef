"""Samplers: one function per solver, registered in :data:`SAMPLERS`, and :func:`sample` around them.

Every solver walks the noise levels ``sigmas`` [N + 1] of a timestep schedule (descending, ending in 0;
see :mod:`guided_diffusion.timestep_schedules`) in the scaled state x = x_t / sqrt(alpha_bar_t) =
x_0 + sigma eps, where sigma = sqrt((1 - alpha_bar) / alpha_bar). In that state the probability-flow ODE
is dx/dsigma = (x - D(x, sigma)) / sigma = eps(x, sigma) (Karras et al. 2022), with D the model's
denoised x_0. The model is evaluated only through :meth:`GaussianDiffusion.denoise
<guided_diffusion.diffusion.GaussianDiffusion.denoise>`, which applies clipping (or dynamic
thresholding) and classifier guidance in score form, so no solver re-derives them. In the formulas below
s = sigma_i, s' = sigma_{i+1}, h = log(s / s') (the step in lambda = -log sigma, half the log-SNR), D_i the
denoised estimate at step i, and z ~ N(0, I).

A solver is called as ``solver(denoiser, x, sigmas, *, generator, on_step, **options)``: ``x`` [B, ...]
starts at sigma_0, ``on_step(i, x, x0)`` is called after step i with the new state, and the solver's own
options (``eta``) are keyword arguments with defaults. Register a new one with :func:`register`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .diffusion import CondFn, Denoised, GaussianDiffusion, Model
from .errors import RequestError
from .noise import Generators, check_generators, randn
from .timestep_schedules import TIMESTEP_SCHEDULES, sigma_schedule

__all__ = [
    "SAMPLERS",
    "TIMESTEP_SCHEDULES",
    "Denoiser",
    "Sampler",
    "checked_sampler",
    "model_evaluations",
    "register",
    "sample",
    "sampler_options",
    "steps_for_nfe",
]

Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
OnStep = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass
class Denoiser:
    """D(x, sigma) for the solvers: ``diffusion.denoise`` with the model, its kwargs, the classifier
    guidance and the thresholding of one sampling call bound."""

    diffusion: GaussianDiffusion
    model: Model
    model_kwargs: dict[str, Any] | None = None
    cond_fn: CondFn | None = None
    thresholding: float | None = None

    def __call__(self, x: torch.Tensor, sigma: float, score_form: bool = True) -> Denoised:
        """x [B, ...] at noise level ``sigma`` > 0 -> its :class:`~guided_diffusion.diffusion.Denoised`."""
        return self.diffusion.denoise(
            self.model, x, float(sigma), model_kwargs=self.model_kwargs, cond_fn=self.cond_fn,
            score_form=score_form, thresholding=self.thresholding,
        )


Solver = Callable[..., torch.Tensor]


def one_per_step(steps: int) -> int:
    """The model evaluations of a solver that calls the model once per step."""
    return steps


@dataclass(frozen=True)
class Sampler:
    """A registered solver and the number of model evaluations it makes for ``steps`` steps."""

    solve: Solver
    evaluations: Callable[[int], int] = one_per_step


SAMPLERS: dict[str, Sampler] = {}


def register(name: str, evaluations: Callable[[int], int] = one_per_step) -> Callable[[Solver], Solver]:
    """Decorator: put ``solver`` in :data:`SAMPLERS` under ``name``, which the pipeline, the CLI, the demo
    and ``gd-eval`` then offer; ``evaluations(steps)`` is its number of model calls."""

    def decorate(solver: Solver) -> Solver:
        SAMPLERS[name] = Sampler(solver, evaluations)
        return solver

    return decorate


def _noise(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    return randn(x.shape, generator, x.device, x.dtype)


def _pairs(sigmas: torch.Tensor) -> list[tuple[float, float]]:
    values = sigmas.tolist()
    return list(zip(values[:-1], values[1:]))


# ------------------------------------------------------------------------------------------ solvers


@register("ddpm")
def ddpm(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators, on_step: OnStep) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020): x_{i+1} ~ p_theta(x_{i+1} | x_i), the posterior
    q(x_{i+1} | x_i, x_0 = D_i) with the process's variance.

    Between the two levels, beta = 1 - alpha_bar_i / alpha_bar_{i+1}; the posterior mean is, in the scaled
    state, D + (s'^2 / s^2)(x - D); the variance is beta~ = beta (1 - alpha_bar_{i+1}) / (1 - alpha_bar_i)
    (``fixed_small``), beta (``fixed_large``), or, for ``learned_range``, beta^frac beta~^(1 - frac) with
    the model's frac (Nichol & Dhariwal 2021, Eq. 15, between the two levels as on a respaced process),
    all on the x_t scale; no noise is added on the step to 0, where a learned variance is beta~ = 0 as
    ``fixed_small``'s.
    Classifier guidance is Dhariwal & Nichol's Algorithm 1: the mean on the x_t scale moves by
    variance * cond_fn(x_t, t). On the ``"uniform"`` schedule this is :meth:`GaussianDiffusion.p_sample
    <guided_diffusion.diffusion.GaussianDiffusion.p_sample>` on the respaced process (with
    ``fixed_large``, but for the guidance on the step to 0, which uses beta_0 where ``p_sample`` uses the
    clipped beta~_1).
    """
    large = denoiser.diffusion.variance == "fixed_large"
    for i, (s, s_next) in enumerate(_pairs(sigmas)):
        out = denoiser(x, s, score_form=False)
        alpha_bar, alpha_bar_next = 1 / (1 + s * s), 1 / (1 + s_next * s_next)
        beta = 1 - alpha_bar / alpha_bar_next
        small = beta * (1 - alpha_bar_next) / (1 - alpha_bar)
        variance = beta if large else small  # on the x_t scale
        if out.variance_fraction is not None and s_next > 0:
            variance = torch.exp(out.variance_fraction * math.log(beta) + (1 - out.variance_fraction) * math.log(small))
        mean = out.x0 + (s_next / s) ** 2 * (x - out.x0)
        if out.gradient is not None:
            mean = mean + (variance / math.sqrt(alpha_bar_next)) * out.gradient
        if s_next > 0:
            std = (variance / alpha_bar_next).sqrt() if torch.is_tensor(variance) else math.sqrt(variance / alpha_bar_next)
            x = mean + std * _noise(x, generator)
        else:
            x = mean
        on_step(i, x, out.x0)
    return x


@register("ddim")
def ddim(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators, on_step: OnStep, eta: float = 0.0
) -> torch.Tensor:
    """DDIM (Song et al. 2021): x_{i+1} = D + sqrt(s'^2 - c^2) eps + c z with c = eta s' sqrt(1 - s'^2 / s^2).

    ``eta=0`` is deterministic (and the same update as ``"euler"``); ``eta=1`` is the ancestral step with
    the posterior variance beta~.
    """
    for i, (s, s_next) in enumerate(_pairs(sigmas)):
        out = denoiser(x, s)
        c = eta * s_next * math.sqrt(max(1 - (s_next / s) ** 2, 0.0))
        x = out.x0 + math.sqrt(max(s_next**2 - c**2, 0.0)) * out.eps
        if c > 0:
            x = x + c * _noise(x, generator)
        on_step(i, x, out.x0)
    return x


@register("euler")
def euler(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators, on_step: OnStep) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, EDM): x_{i+1} = x + (s' - s) eps_i.

    Since x = D_i + s eps_i, that is D_i + s' eps_i: deterministic DDIM's update, which runs it."""
    return ddim(denoiser, x, sigmas, generator=generator, on_step=on_step, eta=0.0)


@register("heun", evaluations=lambda steps: 2 * steps - 1)
def heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators, on_step: OnStep) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, EDM, Algorithm 1 without churn): an Euler step to
    x', then x_{i+1} = x + (s' - s)(eps_i + eps(x', s')) / 2; the step to 0 stays Euler. 2N - 1 model
    calls for N steps."""
    for i, (s, s_next) in enumerate(_pairs(sigmas)):
        out = denoiser(x, s)
        x_euler = x + (s_next - s) * out.eps
        if s_next > 0:
            x = x + (s_next - s) * 0.5 * (out.eps + denoiser(x_euler, s_next).eps)
        else:
            x = x_euler
        on_step(i, x, out.x0)
    return x


@register("dpm++")
def dpm_solver_pp_2m(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators, on_step: OnStep
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), the second-order multistep solver
    in data-prediction form: x_{i+1} = (s'/s) x - (e^{-h} - 1) D', with D' = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1},
    r = h_{i-1} / h, from the second step on (the first is first order); the step to 0 returns D_i.
    Written out, that is ``"dpm++2m-sde"``'s update without noise (eta = 0), which runs it."""
    return dpm_solver_pp_2m_sde(denoiser, x, sigmas, generator=generator, on_step=on_step, eta=0.0)


@register("dpm++2m-sde")
def dpm_solver_pp_2m_sde(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators, on_step: OnStep, eta: float = 1.0
) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", section 5 and appendix), with ``eta`` scaling
    the injected noise (1: the reverse SDE; 0: no noise, exactly ``"dpm++"``):

        x_{i+1} = (s'/s) e^{-eta h} x + (1 - e^{-(1+eta) h}) D_i
                  + (1 - e^{-(1+eta) h}) / (2r) (D_i - D_{i-1}) + s' sqrt(1 - e^{-2 eta h}) z

    with r = h_{i-1} / h; the correction starts at the second step and the step to 0 returns D_i.
    """
    previous, h_previous = None, None
    for i, (s, s_next) in enumerate(_pairs(sigmas)):
        out = denoiser(x, s)
        if s_next == 0:
            x = out.x0
        else:
            h = math.log(s / s_next)
            weight = -math.expm1(-(1 + eta) * h)
            x = (s_next / s) * math.exp(-eta * h) * x + weight * out.x0
            if previous is not None:
                x = x + (weight / (2 * h_previous / h)) * (out.x0 - previous)
            if eta > 0:
                x = x + s_next * math.sqrt(-math.expm1(-2 * eta * h)) * _noise(x, generator)
            h_previous = h
        previous = out.x0
        on_step(i, x, out.x0)
    return x


@register("dpm++3m")
def dpm_solver_pp_3m(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators, on_step: OnStep
) -> torch.Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022, "DPM-Solver++", the third-order multistep update of its
    appendix), in data-prediction form with phi_1 = e^{-h} - 1, phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 1/2:

        x_{i+1} = (s'/s) x - phi_1 D_i + phi_2 D1 - 2 phi_3 D2

    where, with r0 = h_{i-1} / h, r1 = h_{i-2} / h, d0 = (D_i - D_{i-1}) / r0 and d1 = (D_{i-1} - D_{i-2}) / r1,
    D1 = d0 + r0 / (r0 + r1) (d0 - d1) ~ h dD/dlambda and D2 = (d0 - d1) / (r0 + r1) ~ h^2 d^2D/dlambda^2 / 2.
    The exact integral weighs h^2 d^2D/dlambda^2 by -phi_3, hence the 2 on D2: with phi_3 alone on D2 (as
    some public implementations write it) the step's local error is O(h^3) and the method second order;
    with 2 phi_3 it is O(h^4), which ``tests/test_samplers.py`` measures. The first step is first order
    (D1 = D2 = 0), the second second order (D1 = d0, D2 = 0); the step to 0 returns D_i. Past its
    first-order first step (whose error is small at sigma_max, where D barely changes) it is third order.
    Like every multistep extrapolation it wants steps of similar length in log sigma: ``"log_snr"`` or
    ``"karras"``, not ``"uniform"``, whose last step is several times longer than the others (measured in
    ``benchmarks/README.md``).
    """
    history: list[tuple[torch.Tensor, float]] = []  # (D, h) of the last two steps, newest last
    for i, (s, s_next) in enumerate(_pairs(sigmas)):
        out = denoiser(x, s)
        if s_next == 0:
            x = out.x0
        else:
            h = math.log(s / s_next)
            phi_1 = math.expm1(-h)
            phi_2 = phi_1 / h + 1
            phi_3 = phi_2 / h - 0.5
            x = (s_next / s) * x - phi_1 * out.x0
            if history:
                d_previous, h_previous = history[-1]
                r0 = h_previous / h
                d0 = (out.x0 - d_previous) / r0
                if len(history) == 2:
                    r1 = history[0][1] / h
                    d1 = (d_previous - history[0][0]) / r1
                    x = x + phi_2 * (d0 + r0 / (r0 + r1) * (d0 - d1)) - 2 * phi_3 * (d0 - d1) / (r0 + r1)
                else:
                    x = x + phi_2 * d0
            history = [*history[-1:], (out.x0, h)]
        on_step(i, x, out.x0)
    return x


def _unipc_weights(ratios: list[float], h: float, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """UniPC's linear system for ``order`` with B(h) = e^{-h} - 1 (its "bh2" variant), data prediction.

    Returns R [order, order], R[k, j] = r_j^k with r = (*ratios, 1), and b [order],
    b_k = (k+1)! phi_{k+2}(-h) / B with phi_1(-h) = e^{-h} - 1, phi_{k+1}(-h) = phi_k(-h) / (-h) - 1/k!.
    """
    rs = torch.tensor([*ratios, 1.0], dtype=torch.float64)
    phi = math.expm1(-h) / -h - 1
    factorial, b = 1, []
    for k in range(1, order + 1):
        b.append(phi * factorial / math.expm1(-h))
        factorial *= k + 1
        phi = phi / -h - 1 / factorial
    return torch.stack([rs**k for k in range(order)]), torch.tensor(b, dtype=torch.float64)


def _unipc_update(
    x: torch.Tensor, s: float, s_next: float, history: list[tuple[torch.Tensor, float]], order: int, new: torch.Tensor | None
) -> torch.Tensor:
    """One UniPC update from x at level s (whose D is ``history[-1]``) to level s_next: the predictor UniP
    of ``order`` when ``new`` is None, else the corrector UniC of ``order`` with ``new`` = D at s_next."""
    d0, lam0 = history[-1]
    h = math.log(s / s_next)
    previous = history[-order:-1] if order > 1 else []
    ratios = [(lam - lam0) / h for _, lam in reversed(previous)]
    differences = [(d - d0) / r for (d, _), r in zip(reversed(previous), ratios)]
    B = math.expm1(-h)
    x_next = (s_next / s) * x - math.expm1(-h) * d0
    R, b = _unipc_weights(ratios, h, order)
    if new is None:
        if not differences:
            return x_next
        rhos = [0.5] if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        return x_next - B * sum(rho * d for rho, d in zip(rhos, differences))
    rhos = [0.5] if order == 1 else torch.linalg.solve(R, b).tolist()
    correction = sum(rho * d for rho, d in zip(rhos[:-1], differences)) + rhos[-1] * (new - d0)
    return x_next - B * correction


@register("unipc")
def unipc(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generators, on_step: OnStep, order: int = 2
) -> torch.Tensor:
    """UniPC (Zhao et al. 2023), the unified predictor-corrector, with B(h) = e^{-h} - 1 ("bh2"), in
    data-prediction form, of ``order`` (1 to 3) at most.

    The predictor UniP-p extrapolates like a p-th order multistep solver,
    x' = (s'/s) x - (e^{-h} - 1) D_i - B(h) sum_m rho_m (D_{i-m} - D_i) / r_m with r_m = (lambda_{i-m} -
    lambda_i) / h and the rho solving UniPC's order conditions (1/2 for p = 2). The corrector UniC-p then
    uses the model evaluation at x', which the next step needs anyway, to re-solve the same step with one
    more difference (D(x') - D_i), raising the order by one at no extra model call. The order starts at 1
    and grows with the history; the last step before the one to 0 is at most second order (as UniPC does
    with fewer than 15 steps), and the step to 0 is x - s eps_i from the corrected x.
    """
    if not 1 <= order <= 3:
        raise RequestError(f"unipc's order must be 1, 2 or 3, got {order}")
    pairs = _pairs(sigmas)
    to_zero = int(sigmas[-1] == 0)  # the step to 0 returns a denoised x, whatever the order
    history: list[tuple[torch.Tensor, float]] = []
    last: tuple[torch.Tensor, float, float, int] | None = None  # (x, s, s_next, order) of the previous predictor
    for i, (s, s_next) in enumerate(pairs):
        out = denoiser(x, s)
        if last is not None:
            x = _unipc_update(last[0], last[1], last[2], history, last[3], out.x0)
        history = [*history[-2:], (out.x0, -math.log(s))]
        if s_next == 0:
            x = x - s * out.eps
        else:
            step_order = min(order, len(history), len(pairs) - i + 1 - to_zero)
            last = (x, s, s_next, step_order)
            x = _unipc_update(x, s, s_next, history, step_order, None)
        on_step(i, x, out.x0)
    return x


# ------------------------------------------------------------------------------------------ the loop


def sampler_options(name: str) -> tuple[str, ...]:
    """The options (keyword arguments beyond the common ones) that sampler ``name`` takes, e.g. ``("eta",)``."""
    parameters = inspect.signature(checked_sampler(name).solve).parameters.values()
    return tuple(p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.name not in ("generator", "on_step"))


def checked_sampler(name: str) -> Sampler:
    """The registered sampler ``name``; unknown names are refused with the valid ones."""
    if name not in SAMPLERS:
        raise RequestError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def model_evaluations(name: str, steps: int) -> int:
    """The number of model calls (NFE) sampler ``name`` makes in ``steps`` steps."""
    return checked_sampler(name).evaluations(steps)


def steps_for_nfe(name: str, nfe: int) -> int:
    """The most steps (at least 1) whose model calls with sampler ``name`` stay within ``nfe``."""
    steps = 1
    while model_evaluations(name, steps + 1) <= nfe:
        steps += 1
    return steps


@torch.no_grad()
def sample(
    model: Model,
    diffusion: GaussianDiffusion,
    shape: tuple[int, ...],
    *,
    sampler: str = "ddim",
    steps: int = 50,
    timestep_schedule: str = "uniform",
    model_kwargs: dict[str, Any] | None = None,
    cond_fn: CondFn | None = None,
    thresholding: float | None = None,
    noise: torch.Tensor | None = None,
    generator: Generators = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    callback: Callback | None = None,
    progress: bool = False,
    **options: Any,
) -> torch.Tensor:
    """Draw samples x_0 [B, C, H, W] (``shape``) from ``model`` with ``sampler`` in ``steps`` steps.

    ``timestep_schedule`` (a name in :data:`TIMESTEP_SCHEDULES`) places the steps. ``noise`` (shape
    ``shape``) is the starting x_T at the schedule's first level; otherwise it is drawn from
    ``generator``, which also draws the noise of stochastic steps: one generator for the batch, or a
    list of B, one per image (see :func:`guided_diffusion.noise.randn`). ``cond_fn`` (classifier guidance) and
    ``thresholding`` enter every model evaluation as :meth:`GaussianDiffusion.denoise
    <guided_diffusion.diffusion.GaussianDiffusion.denoise>` defines. ``callback(step, num_steps, x_t,
    pred_x0)`` sees each step's new x_t (on the x_t scale) and the x_0 estimate it came from. ``options``
    are the sampler's own (see :func:`sampler_options`), e.g. ``eta`` for ``"ddim"``.
    """
    solver = checked_sampler(sampler).solve
    unknown = sorted(set(options) - set(sampler_options(sampler)))
    if unknown:
        valid = ", ".join(sampler_options(sampler)) or "none"
        raise RequestError(f"sampler {sampler!r} takes no option {unknown[0]!r}; its options: {valid}")
    check_generators(generator, shape[0])
    sigmas = sigma_schedule(diffusion, timestep_schedule, steps)
    if noise is not None:
        if tuple(noise.shape) != tuple(shape):
            raise RequestError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
        x = noise.to(device=device, dtype=dtype)
    else:
        x = randn(shape, generator, device, dtype)
    bar = tqdm(total=steps, disable=not progress, desc=sampler)

    def on_step(i: int, x_next: torch.Tensor, x0: torch.Tensor) -> None:
        bar.update(1)
        if callback is not None:
            callback(i, steps, x_next / math.sqrt(1 + float(sigmas[i + 1]) ** 2), x0)

    denoiser = Denoiser(diffusion, model, model_kwargs, cond_fn, thresholding)
    try:
        return solver(denoiser, x * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas, generator=generator, on_step=on_step, **options)
    finally:
        bar.close()

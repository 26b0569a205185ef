"""Samplers and timestep schedules against closed forms: Gaussian data, whose denoiser and
probability-flow ODE are known exactly."""

import math

import pytest
import torch

from guided_diffusion import GaussianDiffusion
from guided_diffusion.schedule import get_beta_schedule, space_timesteps
from guided_diffusion.diffusion import Denoised, dynamic_threshold
from guided_diffusion.samplers import SAMPLERS, TIMESTEP_SCHEDULES, model_evaluations, register, sample, sampler_options
from guided_diffusion.timestep_schedules import sigma_schedule

F64 = torch.float64
MU, S = 0.3, 0.5  # the data is N(MU, S^2 I)
ODE_SOLVERS = ("ddim", "euler", "heun", "dpm++", "dpm++3m", "unipc")


def gaussian_data_model(diffusion):
    """The exact eps-model for data N(MU, S^2 I) at integer or fractional timesteps:
    E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) MU) / (ab S^2 + 1 - ab), with ab interpolated as the
    samplers interpolate (linear in log sigma between steps)."""

    def model(x_t, t, **kwargs):
        low = t.floor().long().clamp(max=diffusion.num_timesteps - 2)
        w = (t.to(F64) - low).view(-1, *([1] * (x_t.dim() - 1)))
        log_sigma = (1 - w) * diffusion.log_sigmas[low].view_as(w) + w * diffusion.log_sigmas[low + 1].view_as(w)
        ab = (1 / (1 + torch.exp(2 * log_sigma))).to(x_t.dtype)
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * MU) / (ab * S**2 + 1 - ab)

    return model


class ExactDenoiser:
    """D(x, sigma) for Gaussian data in the scaled state x = x_0 + sigma eps, with no model in between."""

    diffusion = None

    def __call__(self, x, sigma, score_form=True):
        x0 = MU + S**2 / (S**2 + sigma**2) * (x - MU)
        return Denoised(x0, (x - x0) / sigma, None)


def exact_flow(x, sigma_from, sigma_to):
    """The probability-flow ODE in the scaled state keeps (x - MU) / sqrt(S^2 + sigma^2) constant."""
    return MU + math.sqrt((S**2 + sigma_to**2) / (S**2 + sigma_from**2)) * (x - MU)


def solve(name, x, sigmas, denoiser=None, **options):
    return SAMPLERS[name].solve(denoiser or ExactDenoiser(), x.clone(), sigmas, generator=None, on_step=lambda *a: None, **options)


def observed_orders(name, sigma_max=80.0, sigma_min=0.02, counts=(16, 32, 64), **options):
    """log2 of the error ratio when the steps double, on levels even in log sigma. The first interval is
    shrunk to h^2 / 10 so that the multistep solvers' lower-order start does not cap the order."""
    x = torch.randn(500, dtype=F64, generator=torch.Generator().manual_seed(0)) * sigma_max
    errors = []
    for n in counts:
        lo, hi = -math.log(sigma_max), -math.log(sigma_min)
        h = (hi - lo) / n
        lam = torch.cat([torch.tensor([lo], dtype=F64), lo + h * h / 10 + torch.linspace(0, 1, n, dtype=F64) * (hi - lo - h * h / 10)])
        out = solve(name, x, torch.exp(-lam), **options)
        errors.append((out - exact_flow(x, sigma_max, sigma_min)).abs().max().item())
    return [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]


@pytest.mark.parametrize(
    "name, options, order",
    [
        ("euler", {}, 1), ("ddim", {}, 1), ("heun", {}, 2), ("dpm++", {}, 2), ("dpm++3m", {}, 3),
        ("unipc", {"order": 1}, 2), ("unipc", {"order": 2}, 3), ("unipc", {"order": 3}, 4),  # the corrector adds one
    ],
)
def test_each_ode_solver_converges_at_its_order(name, options, order):
    orders = observed_orders(name, counts=(16, 32, 64, 128), **options)
    # at least the claimed order; the third-order solvers can do better on this smooth problem
    assert orders[-1] > order - 0.3 and (order >= 3 or orders[-1] < order + 0.3), orders


@pytest.mark.parametrize("schedule", list(TIMESTEP_SCHEDULES))
@pytest.mark.parametrize("name", ODE_SOLVERS)
def test_every_ode_solver_converges_to_the_exact_flow_on_every_schedule(name, schedule):
    d = GaussianDiffusion(get_beta_schedule("linear", 1000), clip_denoised=False)
    model = gaussian_data_model(d)
    x_T = torch.randn(64, 1, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    errors = []
    for steps in (25, 100):
        sigmas = sigma_schedule(d, schedule, steps)
        # The solvers end with D at the smallest level, so the reference is the exact flow to it, then D.
        x_min = exact_flow(x_T * math.sqrt(1 + sigmas[0].item() ** 2), sigmas[0].item(), sigmas[-2].item())
        reference = ExactDenoiser()(x_min, sigmas[-2].item()).x0
        x = sample(model, d, x_T.shape, sampler=name, steps=steps, timestep_schedule=schedule, noise=x_T, dtype=F64)
        errors.append((x - reference).abs().max().item())
    assert errors[1] < 0.05 and errors[1] < errors[0] / 1.5, errors


def test_on_the_uniform_schedule_ddpm_and_ddim_are_the_single_step_methods_of_the_respaced_process():
    d = GaussianDiffusion(get_beta_schedule("linear", 200))
    model = gaussian_data_model(d)
    grad = torch.full((3, 1, 2, 2), 0.2, dtype=F64)
    cond_fn = lambda x, t: grad  # noqa: E731
    process = d.respace("12")
    for name, step in (("ddpm", process.p_sample), ("ddim", process.ddim_sample)):
        options = {"eta": 0.7} if name == "ddim" else {}
        x_T = torch.randn(3, 1, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
        got = sample(model, d, x_T.shape, sampler=name, steps=12, noise=x_T, cond_fn=cond_fn, dtype=F64,
                     generator=torch.Generator().manual_seed(2), **options)
        generator, x = torch.Generator().manual_seed(2), x_T
        for k in reversed(range(12)):
            t = torch.full((3,), k, dtype=torch.long)
            noise = torch.randn(x.shape, generator=generator, dtype=F64) if k > 0 else None
            x = step(model, x, t, cond_fn=cond_fn, noise=noise, **options)["sample"]
        torch.testing.assert_close(got, x, rtol=1e-9, atol=1e-9)


def test_schedules_match_their_formulas():
    d = GaussianDiffusion(get_beta_schedule("linear", 1000))
    sigma = lambda t: math.sqrt((1 - d.alphas_cumprod[t].item()) / d.alphas_cumprod[t].item())  # noqa: E731
    expected_uniform = [sigma(t) for t in reversed(space_timesteps(1000, 10))] + [0.0]
    torch.testing.assert_close(sigma_schedule(d, "uniform", 10), torch.tensor(expected_uniform, dtype=F64))
    trailing = [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    torch.testing.assert_close(sigma_schedule(d, "trailing", 10), torch.tensor([sigma(t) for t in trailing] + [0.0], dtype=F64))
    karras = sigma_schedule(d, "karras", 8)
    steps = torch.diff(karras[:-1] ** (1 / 7))
    torch.testing.assert_close(steps, torch.full_like(steps, steps[0].item()))
    assert karras[0].item() == pytest.approx(sigma(999)) and karras[-2].item() == pytest.approx(sigma(0)) and karras[-1] == 0
    log_snr = sigma_schedule(d, "log_snr", 8)
    gaps = torch.diff(torch.log(log_snr[:-1]))
    torch.testing.assert_close(gaps, torch.full_like(gaps, gaps[0].item()))
    assert log_snr[0].item() == pytest.approx(sigma(999)) and log_snr[-2].item() == pytest.approx(sigma(0))
    for name in TIMESTEP_SCHEDULES:
        sigmas = sigma_schedule(d, name, 1)
        assert sigmas.shape == (2,) and sigmas[-1] == 0


def test_levels_between_steps_get_fractional_timesteps_linear_in_log_sigma():
    d = GaussianDiffusion(get_beta_schedule("linear", 1000))
    assert d.sigma_to_timestep(d.sigmas[417].item()) == 417
    middle = math.exp(0.25 * d.log_sigmas[417].item() + 0.75 * d.log_sigmas[418].item())
    assert d.sigma_to_timestep(middle) == pytest.approx(417.75, abs=1e-9)
    assert d.sigma_to_timestep(1e-9) == 0 and d.sigma_to_timestep(1e9) == 999
    t = d.model_timesteps(417.75, 2, "cpu")
    assert t.dtype == torch.float32 and t.tolist() == [417.75, 417.75]
    assert d.model_timesteps(417, 2, "cpu").dtype == torch.long
    respaced = d.respace("ddim10")  # steps 0, 100, ..., 900
    assert respaced.model_timesteps(2.5, 1, "cpu").item() == pytest.approx(250.0)
    seen = []
    model = lambda x, t: (seen.append(t), torch.zeros_like(x))[1]  # noqa: E731
    sample(model, d, (1, 2), sampler="euler", steps=6, timestep_schedule="karras")
    assert seen[0].tolist() == [999] and seen[-1].tolist() == [0]
    assert all(t.dtype == torch.float32 for t in seen[1:-1]) and all(a.item() > b.item() for a, b in zip(seen, seen[1:]))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_counts_its_evaluations_calls_back_each_step_and_is_seeded(name):
    d = GaussianDiffusion(get_beta_schedule("linear", 100))
    model = gaussian_data_model(d)
    calls, seen = [], []

    def counted(x, t):
        calls.append(t)
        return model(x, t)

    run = lambda seed: sample(  # noqa: E731
        counted, d, (2, 3, 4, 4), sampler=name, steps=8, timestep_schedule="karras", generator=torch.Generator().manual_seed(seed),
        callback=lambda i, n, x, x0: seen.append((i, n, x.shape, x0.shape)),
    )
    first = run(5)
    assert len(calls) == model_evaluations(name, 8)
    assert [s[0] for s in seen] == list(range(8)) and all(s[1] == 8 for s in seen)
    assert seen[0][2] == seen[0][3] == (2, 3, 4, 4)
    assert torch.equal(first, run(5))
    if name in ("ddpm", "dpm++2m-sde"):
        assert not torch.equal(first, run(6))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_classifier_guidance_reaches_every_sampler_and_moves_samples_its_way(name):
    d = GaussianDiffusion(get_beta_schedule("linear", 100), clip_denoised=False)
    model = gaussian_data_model(d)
    seen = []

    def cond_fn(x_t, t):
        seen.append(t)
        # grad of log p(y | x_t) = 0.5 * sum(x_t) at t <= 50 (the low-noise half): favours larger values
        return torch.full_like(x_t, 0.5) * (t <= 50).view(-1, 1)

    kwargs = dict(sampler=name, steps=10, timestep_schedule="log_snr", dtype=F64)
    plain = sample(model, d, (2000, 1), generator=torch.Generator().manual_seed(0), **kwargs)
    guided = sample(model, d, (2000, 1), generator=torch.Generator().manual_seed(0), cond_fn=cond_fn, **kwargs)
    assert len(seen) == model_evaluations(name, 10)
    assert guided.mean().item() > plain.mean().item() + 0.05


def test_dynamic_thresholding_scales_each_image_by_its_quantile():
    x0 = torch.stack([torch.linspace(-3, 3, 101), torch.linspace(-0.5, 0.5, 101)]).to(F64)
    out = dynamic_threshold(x0, 0.9)
    s = torch.quantile(x0[0].abs(), 0.9).item()
    torch.testing.assert_close(out[0], x0[0].clamp(-s, s) / s)
    torch.testing.assert_close(out[1], x0[1])  # quantile below 1: left alone
    with pytest.raises(ValueError, match="quantile in \\(0, 1\\)"):
        dynamic_threshold(x0, 99.5)
    d = GaussianDiffusion(get_beta_schedule("linear", 100), prediction="x0")
    big = lambda x, t: 3 * torch.ones_like(x)  # noqa: E731
    x = sample(big, d, (2, 4), sampler="euler", steps=3, thresholding=0.995, dtype=F64)
    torch.testing.assert_close(x, torch.ones_like(x))


def test_a_registered_sampler_is_offered_everywhere_and_bad_names_and_options_are_refused():
    from guided_diffusion.cli import _sample_parser

    @register("test-midpoint", evaluations=lambda steps: 2 * steps)
    def midpoint(denoiser, x, sigmas, *, generator, on_step, weight: float = 1.0):
        for i, (s, s_next) in enumerate(zip(sigmas[:-1].tolist(), sigmas[1:].tolist())):
            out = denoiser(x, s)
            x = x + (s_next - s) * weight * denoiser(x + 0.5 * (s_next - s) * out.eps, max(0.5 * (s + s_next), 1e-9)).eps
            on_step(i, x, out.x0)
        return x

    try:
        assert "test-midpoint" in _sample_parser()._option_string_actions["--sampler"].help
        assert sampler_options("test-midpoint") == ("weight",) and sampler_options("ddim") == ("eta",)
        d = GaussianDiffusion(get_beta_schedule("linear", 100))
        assert sample(lambda x, t: 0.1 * x, d, (1, 2), sampler="test-midpoint", steps=4, weight=0.5).shape == (1, 2)
    finally:
        del SAMPLERS["test-midpoint"]
    d = GaussianDiffusion(get_beta_schedule("linear", 100))
    with pytest.raises(ValueError, match="unknown sampler 'rk45'; choose one of ddpm, ddim, euler, heun, dpm\\+\\+"):
        sample(lambda x, t: x, d, (1, 1), sampler="rk45")
    with pytest.raises(ValueError, match="unknown timestep schedule 'cosine'; choose one of uniform, trailing, karras, log_snr"):
        sample(lambda x, t: x, d, (1, 1), timestep_schedule="cosine")
    with pytest.raises(ValueError, match="sampler 'euler' takes no option 'eta'; its options: none"):
        sample(lambda x, t: x, d, (1, 1), sampler="euler", eta=0.5)
    with pytest.raises(ValueError, match="unipc's order must be 1, 2 or 3, got 4"):
        sample(lambda x, t: x, d, (1, 1), sampler="unipc", order=4)
    with pytest.raises(ValueError, match="between 1 and 100"):
        sample(lambda x, t: x, d, (1, 1), steps=0)
    with pytest.raises(ValueError, match="noise has shape \\(2, 1\\), expected \\(1, 1\\)"):
        sample(lambda x, t: x, d, (1, 1), noise=torch.zeros(2, 1))


def test_ancestral_sampling_of_gaussian_data_has_the_data_variance():
    d = GaussianDiffusion(get_beta_schedule("linear", 200), clip_denoised=False)
    x = sample(gaussian_data_model(d), d, (4000, 1, 1, 1), sampler="ddpm", steps=200, dtype=F64,
               generator=torch.Generator().manual_seed(0))
    assert x.std().item() == pytest.approx(S, rel=0.05)
    assert x.mean().item() == pytest.approx(MU, abs=0.03)
    sde = sample(gaussian_data_model(d), d, (4000, 1, 1, 1), sampler="dpm++2m-sde", steps=50, timestep_schedule="log_snr",
                 dtype=F64, generator=torch.Generator().manual_seed(0))
    assert sde.std().item() == pytest.approx(S, rel=0.05)
    assert sde.mean().item() == pytest.approx(MU, abs=0.03)


def test_the_sde_solver_without_noise_is_the_ode_solver():
    x = torch.randn(200, dtype=F64, generator=torch.Generator().manual_seed(3)) * 50
    sigmas = torch.cat([torch.exp(torch.linspace(math.log(50), math.log(0.01), 12, dtype=F64)), torch.zeros(1, dtype=F64)])
    torch.testing.assert_close(solve("dpm++2m-sde", x, sigmas, eta=0.0), solve("dpm++", x, sigmas), rtol=1e-12, atol=1e-12)

"""Sampling loops against closed-form solutions for Gaussian data."""

import pytest
import torch

from guided_diffusion import GaussianDiffusion, get_beta_schedule
from guided_diffusion.samplers import sample

F64 = torch.float64
S = 0.5  # the data is N(0, S^2 I)


def gaussian_data_model(diffusion):
    """The exact eps-model for data N(0, S^2 I): E[eps | x_t] = sqrt(1 - ab) x_t / (ab S^2 + 1 - ab)."""

    def model(x_t, t_original, **kwargs):
        ab = diffusion.alphas_cumprod[t_original].to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
        return (1 - ab).sqrt() * x_t / (ab * S**2 + 1 - ab)

    return model


def exact_flow(diffusion, x_T):
    """The probability-flow ODE keeps x_t / sqrt(ab S^2 + 1 - ab) constant for Gaussian data."""
    ab = diffusion.alphas_cumprod
    return x_T * torch.sqrt(ab[0] * S**2 + 1 - ab[0]) / torch.sqrt(ab[-1] * S**2 + 1 - ab[-1])


def test_ode_solvers_converge_to_the_exact_flow_and_dpm_is_higher_order():
    d = GaussianDiffusion(get_beta_schedule("cosine", 1000), clip_denoised=False)
    model = gaussian_data_model(d)
    x_T = torch.randn(64, 1, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    errors = {}
    for steps in (10, 20):
        kept = d.respace(str(steps))
        # Both solvers end with the x_0 estimate at the first kept step, so the reference does too.
        x_first = exact_flow(kept, x_T)
        t0 = torch.zeros(64, dtype=torch.long)
        reference = kept.x0_from_eps(x_first, t0, model(x_first, kept.original_timesteps(t0)))
        for sampler in ("ddim", "dpm++"):
            x = sample(model, d, x_T.shape, sampler=sampler, steps=steps, noise=x_T, dtype=F64)
            errors[sampler, steps] = (x - reference).abs().max().item()
    assert errors["dpm++", 20] < errors["ddim", 20] / 5
    assert errors["dpm++", 20] < errors["dpm++", 10] / 3  # better than first order
    assert errors["ddim", 20] < errors["ddim", 10]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_every_sampler_calls_back_each_step_and_is_seeded(sampler):
    d = GaussianDiffusion(get_beta_schedule("linear", 100))
    model = gaussian_data_model(d)
    seen = []
    run = lambda: sample(  # noqa: E731
        model, d, (2, 3, 4, 4), sampler=sampler, steps=8, eta=0.5, generator=torch.Generator().manual_seed(5),
        callback=lambda i, n, x, x0: seen.append((i, n, x.shape, x0.shape)),
    )
    first, second = run(), run()
    assert torch.equal(first, second)
    assert [s[0] for s in seen[:8]] == list(range(8)) and all(s[1] == 8 for s in seen)
    assert seen[0][2] == seen[0][3] == (2, 3, 4, 4)
    third = sample(model, d, (2, 3, 4, 4), sampler=sampler, steps=8, eta=0.5, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(first, third)


def test_ancestral_sampling_of_gaussian_data_has_the_data_variance():
    d = GaussianDiffusion(get_beta_schedule("linear", 200), clip_denoised=False)
    x = sample(gaussian_data_model(d), d, (4000, 1, 1, 1), sampler="ddpm", steps=200, dtype=F64,
               generator=torch.Generator().manual_seed(0))
    assert x.std().item() == pytest.approx(S, rel=0.05)
    assert x.mean().item() == pytest.approx(0.0, abs=0.03)


def test_bad_sampler_and_steps_are_refused():
    d = GaussianDiffusion(get_beta_schedule("linear", 100))
    with pytest.raises(ValueError, match="ddpm, ddim, dpm"):
        sample(lambda x, t: x, d, (1, 1), sampler="euler")
    with pytest.raises(ValueError, match="between 1 and 100"):
        sample(lambda x, t: x, d, (1, 1), steps=0)

"""Beta schedules and timestep respacing against their definitions."""

import math

import pytest
import torch

from guided_diffusion.schedule import get_beta_schedule, space_timesteps


def test_linear_schedule_matches_ddpm_and_scales_with_length():
    betas = get_beta_schedule("linear", 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    short = get_beta_schedule("linear", 100)
    assert short[0].item() == pytest.approx(1e-3, abs=1e-15)
    assert short[-1].item() == pytest.approx(0.2, abs=1e-15)
    assert torch.all(short[1:] > short[:-1])


def test_cosine_schedule_follows_its_alpha_bar_and_is_capped():
    T, s = 1000, 0.008
    betas = get_beta_schedule("cosine", T)
    alpha_bar = torch.cumprod(1 - betas, 0)

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    for t in (0, 10, 500, 900):
        assert alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-10)
    assert betas.max().item() == pytest.approx(0.999)
    assert betas[-1].item() == pytest.approx(0.999)


def test_unknown_schedule_is_refused_with_choices():
    with pytest.raises(ValueError, match="linear, cosine"):
        get_beta_schedule("quadratic", 10)


def test_ddim_spacing_uses_the_stride_giving_exactly_n():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim1000") == list(range(1000))
    with pytest.raises(ValueError, match="exactly 6"):
        space_timesteps(10, "ddim6")


def test_even_spacing_includes_both_ends():
    kept = space_timesteps(1000, "10")
    assert len(kept) == 10 and kept[0] == 0 and kept[-1] == 999
    assert space_timesteps(1000, 1) == [0]
    assert space_timesteps(10, "10") == list(range(10))


def test_section_counts_spread_within_equal_sections():
    kept = space_timesteps(300, "10,15,20")
    assert len(kept) == 45
    assert sum(k < 100 for k in kept) == 10
    assert sum(100 <= k < 200 for k in kept) == 15
    assert sum(k >= 200 for k in kept) == 20
    assert kept[0] == 0 and kept[9] == 99 and kept[10] == 100 and kept[-1] == 299
    with pytest.raises(ValueError, match="section of 5"):
        space_timesteps(10, "6,1")
    with pytest.raises(ValueError, match="bad respacing"):
        space_timesteps(10, "fast")

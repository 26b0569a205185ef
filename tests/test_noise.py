"""Noise from one generator per image: the same seed gives the same image, alone or in a batch."""

import pytest
import torch

from guided_diffusion import GaussianDiffusion, GuidedDiffusionPipeline
from guided_diffusion.schedule import get_beta_schedule
from guided_diffusion.noise import randn
from guided_diffusion.samplers import sample

from .test_samplers import gaussian_data_model


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_runs_of_one_generator_draw_what_it_draws_alone():
    g, h = seeded(1), seeded(2)
    drawn = randn((4, 3, 2), [g, g, h, g], "cpu", torch.float64)
    assert torch.equal(drawn[:2], torch.randn(2, 3, 2, generator=seeded(1), dtype=torch.float64))
    assert torch.equal(drawn[2], torch.randn(1, 3, 2, generator=seeded(2), dtype=torch.float64)[0])
    after_two = seeded(1)
    torch.randn(2, 3, 2, generator=after_two, dtype=torch.float64)
    assert torch.equal(drawn[3], torch.randn(1, 3, 2, generator=after_two, dtype=torch.float64)[0])  # g goes on
    assert torch.equal(randn((2, 5), seeded(3), "cpu", torch.float32), torch.randn(2, 5, generator=seeded(3)))
    with pytest.raises(ValueError, match="a list of 3 \\(one per image\\), got 2 items"):
        randn((3, 5), [g, h], "cpu", torch.float32)


@pytest.mark.parametrize("name", ["ddpm", "dpm++2m-sde", "ddim"])
def test_a_batch_with_one_generator_per_request_samples_each_request_as_alone(name):
    """ddpm and the SDE solver draw noise at every step; the exact Gaussian-data model acts per image."""
    d = GaussianDiffusion(get_beta_schedule("linear", 100))
    model, options = gaussian_data_model(d), {"eta": 1.0} if name == "ddim" else {}
    run = lambda shape, generator: sample(model, d, shape, sampler=name, steps=6, generator=generator, dtype=torch.float64, **options)  # noqa: E731
    g, h = seeded(10), seeded(11)
    batched = run((3, 2, 4, 4), [g, g, h])
    assert torch.equal(batched[:2], run((2, 2, 4, 4), seeded(10)))
    assert torch.equal(batched[2:], run((1, 2, 4, 4), seeded(11)))
    with pytest.raises(ValueError, match="one per image"):
        run((3, 2, 4, 4), [g, h])


def test_the_pipeline_takes_one_generator_per_image(tiny_pipeline_dir):
    pipe = GuidedDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    g, h = seeded(4), seeded(5)
    both = pipe(["a red circle", "a red circle", "a blue square"], num_inference_steps=4, sampler="ddpm", generator=[g, g, h], output_type="pt").images
    torch.testing.assert_close(both[:2], pipe("a red circle", num_images_per_prompt=2, num_inference_steps=4, sampler="ddpm", seed=4, output_type="pt").images, rtol=0, atol=1e-4)
    torch.testing.assert_close(both[2:], pipe("a blue square", num_inference_steps=4, sampler="ddpm", seed=5, output_type="pt").images, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="a list of 2 \\(one per image\\)"):
        pipe("a red circle", num_images_per_prompt=2, num_inference_steps=2, generator=[g])

"""A text-conditioned guided diffusion toolkit: train, sample and steer diffusion models."""

from .diffusion import GaussianDiffusion, discretized_gaussian_log_likelihood, normal_kl
from .pipeline import GuidedDiffusionPipeline
from .schedule import get_beta_schedule, space_timesteps

__all__ = [
    "GaussianDiffusion",
    "GuidedDiffusionPipeline",
    "discretized_gaussian_log_likelihood",
    "get_beta_schedule",
    "normal_kl",
    "space_timesteps",
]

"""A text-conditioned guided diffusion toolkit: train, sample and steer diffusion models.

The public API, for users: the pipeline (:class:`GuidedDiffusionPipeline`, called with prompts, its
output's ``images`` the samples), its components (:class:`UNet`, :class:`GaussianDiffusion`,
:class:`NoiseAwareClassifier`, :class:`NoiseAwareCLIP`) and their configs, the sampling function and
registries (:func:`sample`, :data:`SAMPLERS`, :data:`TIMESTEP_SCHEDULES`), the guidance pieces
(:class:`ClassifierFreeGuidance`, :func:`classifier_cond_fn`, :func:`clip_cond_fn`, :class:`ModelEstimate`,
:class:`CADS`) and
the errors a user can cause (:class:`UserError` and its kinds). Everything else lives in the
submodules.
"""

from importlib.metadata import PackageNotFoundError, version

from .diffusion import DiffusionConfig, GaussianDiffusion
from .errors import ConfigError, RequestError, TrainingError, UserError
from .guidance import CADS, ClassifierFreeGuidance, ModelEstimate, classifier_cond_fn, clip_cond_fn
from .models.classifier import ClassifierConfig, NoiseAwareClassifier
from .models.clip import CLIPConfig, NoiseAwareCLIP
from .models.unet import UNet, UNetConfig
from .pipeline import GuidedDiffusionPipeline, GuidedDiffusionPipelineOutput
from .request import SamplingConfig
from .samplers import SAMPLERS, TIMESTEP_SCHEDULES, sample
from .serialization import CheckpointError

try:
    __version__ = version("guided-diffusion-toolkit")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "CADS",
    "CLIPConfig",
    "CheckpointError",
    "ClassifierConfig",
    "ClassifierFreeGuidance",
    "ConfigError",
    "DiffusionConfig",
    "GaussianDiffusion",
    "GuidedDiffusionPipeline",
    "GuidedDiffusionPipelineOutput",
    "ModelEstimate",
    "NoiseAwareCLIP",
    "NoiseAwareClassifier",
    "RequestError",
    "SAMPLERS",
    "SamplingConfig",
    "TIMESTEP_SCHEDULES",
    "TrainingError",
    "UNet",
    "UNetConfig",
    "UserError",
    "__version__",
    "classifier_cond_fn",
    "clip_cond_fn",
    "sample",
]

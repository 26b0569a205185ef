"""What a sampling call asks for: the pipeline's defaults and the one check of a request.

:class:`SamplingConfig` is the ``sampling`` section of a config (and of a saved pipeline): the
settings a call uses where it gives none. :meth:`SamplingRequest.check` is the one place where a
sampling request is checked against a pipeline: the pipeline's ``__call__``, ``gd-sample`` (through the
pipeline) and the demo (before it queues a request) all use it, so a bad sampler, step count, scale,
label, interval or prompt gets the same one-line :class:`~guided_diffusion.errors.RequestError`
everywhere.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .config import Config
from .errors import ConfigError, RequestError
from .guidance import CADS, Interval, check_interval, resolve_labels
from .samplers import checked_sampler, sampler_options
from .timestep_schedules import checked_schedule

if TYPE_CHECKING:
    from .pipeline import GuidedDiffusionPipeline

OUTPUT_TYPES = ("pil", "pt", "np")
GUIDANCE_READS = ("x_t", "x0")  # what classifier and CLIP guidance read: the noisy image, or the model's x_0 estimate


@dataclass
class SamplingConfig(Config):
    """The ``sampling`` section: the sampler (see :data:`~guided_diffusion.samplers.SAMPLERS`), its
    ``steps``, the ``timestep_schedule`` (see :data:`~guided_diffusion.samplers.TIMESTEP_SCHEDULES`),
    the classifier-free ``guidance_scale``, ``eta`` for the samplers that take it (None: each
    sampler's own default), the CLIP ``clip_guidance_scale`` (0: off) and what classifier and CLIP
    guidance read, ``guidance_reads`` (one of :data:`GUIDANCE_READS`: the noisy ``"x_t"`` or the model's
    ``"x0"`` estimate; see the pipeline's call), and ``classifier_scale_max``, the top of the classifier
    scales the demo offers and accepts for this model (a model's card says which scales help)."""

    section = "sampling"

    sampler: str = "ddim"
    steps: int = 50
    timestep_schedule: str = "uniform"
    guidance_scale: float = 3.0
    eta: float | None = None
    clip_guidance_scale: float = 0.0
    guidance_reads: str = "x_t"
    classifier_scale_max: float = 100.0

    def __post_init__(self) -> None:
        try:
            checked_sampler(self.sampler)
            checked_schedule(self.timestep_schedule)
            checked_guidance_reads(self.guidance_reads)
        except RequestError as err:
            raise ConfigError(f"sampling: {err}") from None
        if self.steps < 1:
            raise ConfigError(f"sampling.steps must be at least 1, got {self.steps}")
        for name in ("guidance_scale", "clip_guidance_scale"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"sampling.{name} must be a finite number, got {getattr(self, name)}")
        if self.clip_guidance_scale < 0:
            raise ConfigError(f"sampling.clip_guidance_scale must not be negative, got {self.clip_guidance_scale}")
        if not (math.isfinite(self.classifier_scale_max) and self.classifier_scale_max > 0):
            raise ConfigError(f"sampling.classifier_scale_max must be a finite number above 0, got {self.classifier_scale_max}")

    def sampler_settings(self, sampler: str) -> dict[str, float]:
        """This config's options for ``sampler``: ``{"eta": eta}`` when ``eta`` is set and ``sampler``
        takes it (a sampler without eta ignores the config's), else none."""
        return {"eta": float(self.eta)} if self.eta is not None and "eta" in sampler_options(sampler) else {}


def whole_number(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``low..high`` (an integral float such as JSON's 3.0 counts); refused otherwise."""
    bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise RequestError(f"{name} must be a whole number {bounds}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise RequestError(f"{name} must be {bounds}, got {int(value)}")
    return int(value)


def number(name: str, value: Any, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a finite float in ``[low, high]``; refused otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        bounds = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
        raise RequestError(f"{name} must be {bounds}, got {value:g}")
    return float(value)


@dataclass(frozen=True)
class SamplingRequest:
    """One sampling call, checked against a pipeline by :meth:`check`: every value is in range, and
    every default taken from the pipeline's :class:`SamplingConfig`.

    ``prompts`` holds one prompt per image (prompt-major); ``classifier_labels`` maps each attribute to
    a LongTensor [N] of class indices (on the CPU); ``clip_guidance_prompts`` holds one target per image
    (None: CLIP guidance off) and ``clip_guidance_negatives`` the captions every image is steered away
    from (None: none).
    """

    prompts: tuple[str, ...]
    num_images_per_prompt: int
    num_inference_steps: int
    sampler: str
    timestep_schedule: str
    sampler_options: Mapping[str, float]
    guidance_scale: float
    guidance_interval: Interval | None
    classifier_scale: float
    classifier_labels: Mapping[str, torch.Tensor] | None
    classifier_interval: Interval | None
    cads: CADS | None
    clip_guidance_scale: float
    clip_guidance_prompts: tuple[str, ...] | None
    clip_guidance_negatives: tuple[str, ...] | None
    clip_guidance_interval: Interval | None
    guidance_reads: str
    thresholding: float | None
    output_type: str

    OPTIONS: ClassVar[dict[str, Any]] = {
        "num_images_per_prompt": 1,
        "num_inference_steps": None,
        "sampler": None,
        "timestep_schedule": None,
        "eta": None,
        "guidance_scale": None,
        "guidance_interval": None,
        "classifier_scale": 0.0,
        "classifier_labels": None,
        "classifier_max_t": None,
        "classifier_interval": None,
        "cads": None,
        "clip_guidance_scale": None,
        "clip_guidance_prompt": None,
        "clip_guidance_negative_prompt": None,
        "clip_guidance_interval": None,
        "guidance_reads": None,
        "thresholding": None,
        "output_type": "pil",
    }  # the options of a request, as the pipeline's call names them, with their defaults

    @classmethod
    def check(cls, pipe: "GuidedDiffusionPipeline", prompt: str | Sequence[str], **options: Any) -> "SamplingRequest":
        """Check a call's ``prompt`` and ``options`` (the keyword arguments of
        :meth:`GuidedDiffusionPipeline.__call__ <guided_diffusion.pipeline.GuidedDiffusionPipeline.__call__>`
        named in :data:`OPTIONS`, which documents them; missing ones take their default there, None
        ones the pipeline's :class:`SamplingConfig`) against ``pipe``. The first bad one raises
        :class:`~guided_diffusion.errors.RequestError` naming it and what it may be."""
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            raise RequestError(f"unknown sampling option {unknown[0]!r}; valid options: {', '.join(cls.OPTIONS)}")
        o = SimpleNamespace(**{**cls.OPTIONS, **options})
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise RequestError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
        per_prompt = whole_number("num_images_per_prompt", o.num_images_per_prompt, 1)
        if o.output_type not in OUTPUT_TYPES:
            raise RequestError(f"unknown output_type {o.output_type!r}; choose one of {', '.join(OUTPUT_TYPES)}")
        defaults: SamplingConfig = pipe.sampling_config
        num_timesteps = pipe.diffusion.num_timesteps
        sampler = defaults.sampler if o.sampler is None else o.sampler
        if not isinstance(sampler, str):
            raise RequestError(f"sampler must be a sampler's name, got {sampler!r}")
        checked_sampler(sampler)
        steps = defaults.steps if o.num_inference_steps is None else o.num_inference_steps
        sampler_settings = defaults.sampler_settings(sampler)
        if o.eta is not None:
            if "eta" not in sampler_options(sampler):
                raise RequestError(f"sampler {sampler!r} takes no option 'eta'; its options: {', '.join(sampler_options(sampler)) or 'none'}")
            sampler_settings["eta"] = number("eta", o.eta, 0.0)
        images = [p for p in prompts for _ in range(per_prompt)]
        classifier_scale = number("classifier_scale", o.classifier_scale, 0.0)
        classifier_interval = o.classifier_interval
        if o.classifier_max_t is not None:
            if classifier_interval is not None:
                raise RequestError("give classifier_max_t or classifier_interval, not both (classifier_max_t is the interval (0, max_t))")
            classifier_interval = (0, whole_number("classifier_max_t", o.classifier_max_t, 0, num_timesteps - 1))
        clip_scale = defaults.clip_guidance_scale if o.clip_guidance_scale is None else o.clip_guidance_scale
        clip_scale = number("clip_guidance_scale", clip_scale, 0.0)
        return cls(
            prompts=tuple(images),
            num_images_per_prompt=per_prompt,
            num_inference_steps=whole_number("num_inference_steps", steps, 1, num_timesteps),
            sampler=sampler,
            timestep_schedule=checked_schedule(defaults.timestep_schedule if o.timestep_schedule is None else o.timestep_schedule),
            sampler_options=sampler_settings,
            guidance_scale=number("guidance_scale", defaults.guidance_scale if o.guidance_scale is None else o.guidance_scale),
            guidance_interval=check_interval("guidance_interval", o.guidance_interval, num_timesteps),
            classifier_scale=classifier_scale,
            classifier_labels=_classifier_labels(pipe, classifier_scale, o.classifier_labels, len(images)),
            classifier_interval=check_interval("classifier_interval", classifier_interval, num_timesteps),
            cads=_cads(o.cads),
            clip_guidance_scale=clip_scale,
            clip_guidance_prompts=_clip_targets(pipe, clip_scale, o.clip_guidance_prompt, prompts, per_prompt),
            clip_guidance_negatives=_clip_negatives(clip_scale, o.clip_guidance_negative_prompt),
            clip_guidance_interval=check_interval("clip_guidance_interval", o.clip_guidance_interval, num_timesteps),
            guidance_reads=checked_guidance_reads(defaults.guidance_reads if o.guidance_reads is None else o.guidance_reads),
            thresholding=None if o.thresholding is None else _quantile(o.thresholding),
            output_type=o.output_type,
        )


def checked_guidance_reads(value: Any) -> str:
    """What classifier and CLIP guidance read, one of :data:`GUIDANCE_READS`."""
    if value not in GUIDANCE_READS:
        raise RequestError(f"guidance_reads must be one of {', '.join(GUIDANCE_READS)}, got {value!r}")
    return value


def _quantile(value: Any) -> float:
    """A dynamic-thresholding quantile: a number in (0, 1]."""
    quantile = number("thresholding", value, 0.0, 1.0)
    if quantile == 0:
        raise RequestError("thresholding must be a quantile above 0 and at most 1, such as 0.995 (None: off), got 0")
    return quantile


def _classifier_labels(
    pipe: "GuidedDiffusionPipeline", scale: float, labels: Mapping[str, Any] | None, batch_size: int
) -> dict[str, torch.Tensor] | None:
    if not scale:
        return None
    if pipe.classifier is None:
        raise RequestError("classifier_scale needs a pipeline with a classifier; this model has no classifier")
    if not labels:
        names = {attr: list(classes) for attr, classes in pipe.classifier.labels.items()}
        raise RequestError(f"classifier_scale needs classifier_labels, e.g. one of {names}")
    if not isinstance(labels, Mapping):
        raise RequestError(f"classifier_labels must map attributes to class names, got {labels!r}")
    return resolve_labels(pipe.classifier.labels, labels, batch_size, "cpu")


def _cads(cads: CADS | bool | Mapping[str, float] | None) -> CADS | None:
    if cads is None or cads is False:
        return None
    if cads is True:
        return CADS()
    if isinstance(cads, CADS):
        return cads
    if isinstance(cads, Mapping):
        fields = [f.name for f in dataclasses.fields(CADS)]
        unknown = sorted(set(cads) - set(fields))
        if unknown:
            raise RequestError(f"unknown CADS setting {unknown[0]!r}; valid: {', '.join(fields)}")
        return CADS(**cads)
    raise RequestError(f"cads must be True, a CADS or a dict of its settings, got {cads!r}")


def _clip_targets(
    pipe: "GuidedDiffusionPipeline", scale: float, guidance_prompt: str | Sequence[str] | None, prompts: list[str], per_prompt: int
) -> tuple[str, ...] | None:
    if not scale:
        return None
    if pipe.clip is None:
        raise RequestError("clip_guidance_scale needs a pipeline with a noise-aware CLIP (pipe.clip); this model has no noise-aware CLIP")
    if guidance_prompt is None:
        targets = prompts
    elif isinstance(guidance_prompt, str):
        targets = [guidance_prompt] * len(prompts)
    elif isinstance(guidance_prompt, (list, tuple)) and all(isinstance(p, str) for p in guidance_prompt) and len(guidance_prompt) == len(prompts):
        targets = list(guidance_prompt)
    else:
        raise RequestError(
            f"clip_guidance_prompt must be a string or a list with one string per prompt ({len(prompts)}), got {guidance_prompt!r}"
        )
    return tuple(p for p in targets for _ in range(per_prompt))


def _clip_negatives(scale: float, negatives: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """The captions CLIP guidance steers away from: one string or a list of them, each kept once (so that
    requests naming the same set are equal); None or [] for none (and none when CLIP guidance is off)."""
    if isinstance(negatives, str):
        negatives = [negatives]
    if negatives is not None and not (isinstance(negatives, (list, tuple)) and all(isinstance(n, str) for n in negatives)):
        raise RequestError(f"clip_guidance_negative_prompt must be a string or a list of strings, got {negatives!r}")
    return tuple(dict.fromkeys(negatives)) if scale and negatives else None


def check_autoguidance(pipe: "GuidedDiffusionPipeline", weak: "GuidedDiffusionPipeline | None") -> None:
    """Refuse a guiding pipeline (``autoguidance``) whose predictions cannot be mixed with ``pipe``'s:
    another kind of object, another diffusion (T or prediction), image size or device; None passes."""
    if weak is None:
        return
    if not isinstance(weak, type(pipe)):
        raise RequestError(f"autoguidance must be a GuidedDiffusionPipeline (a weaker model of the same kind), got {type(weak).__name__}")
    ours, theirs = pipe.diffusion.config, weak.diffusion.config
    for key in ("num_timesteps", "prediction"):
        if getattr(ours, key) != getattr(theirs, key):
            raise RequestError(
                f"autoguidance needs a model with the same diffusion {key}: this one has {getattr(ours, key)!r}, the guide {getattr(theirs, key)!r}"
            )
    if (weak.unet.config.image_size, weak.unet.config.in_channels) != (pipe.unet.config.image_size, pipe.unet.config.in_channels):
        raise RequestError("autoguidance needs a model of the same image size and channels as this one")
    if weak.device != pipe.device:
        raise RequestError(f"autoguidance's model is on {weak.device}, this one on {pipe.device}: move it with .to()")

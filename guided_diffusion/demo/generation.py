"""Checked generation requests, independent of the web UI.

:func:`check_request` turns raw user input (from the browser or an API client) into a
:class:`GenerationRequest`, refusing bad values with a ``ValueError`` that names the valid range, and
noting when the prompt is longer than the text encoder reads. :mod:`.batching` samples them.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from ..pipeline import GuidedDiffusionPipeline
from ..samplers import checked_sampler
from ..timestep_schedules import checked_schedule
from ..text import TextEncoder

MAX_IMAGES = 16
MAX_PROMPT_CHARS = 1000
MAX_GUIDANCE_SCALE = 20.0
MAX_CLASSIFIER_SCALE = 100.0
MAX_CLIP_GUIDANCE_SCALE = 1000.0
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class GenerationRequest:
    """One checked request: every value is in range and understood by the pipeline.

    ``notices`` are things the user should be told that do not stop the request (a truncated prompt).
    """

    prompt: str
    num_images: int
    steps: int
    sampler: str
    guidance_scale: float
    classifier_scale: float
    classifier_labels: dict[str, str] | None
    seed: int
    timestep_schedule: str = "uniform"
    guidance_interval: tuple[float, float] | None = None
    classifier_interval: tuple[float, float] | None = None
    cads: bool = False
    clip_guidance_scale: float = 0.0
    clip_guidance_prompt: str | None = None
    notices: tuple[str, ...] = field(default=())

    def pipeline_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`GuidedDiffusionPipeline.__call__` for this request alone."""
        return {"prompt": self.prompt, "num_images_per_prompt": self.num_images, "seed": self.seed, **self.sampling_kwargs()}

    def sampling_kwargs(self) -> dict[str, Any]:
        """The pipeline's keyword arguments that every request sampled in one batch must share."""
        return {
            "steps": self.steps,
            "sampler": self.sampler,
            "timestep_schedule": self.timestep_schedule,
            "guidance_scale": self.guidance_scale,
            "classifier_scale": self.classifier_scale,
            "classifier_labels": self.classifier_labels,
            "guidance_interval": self.guidance_interval,
            "classifier_interval": self.classifier_interval,
            "cads": self.cads,
            "clip_guidance_scale": self.clip_guidance_scale,
            "clip_guidance_prompt": self.clip_guidance_prompt,
        }

    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can be sampled in one batch: the same settings, and classifier-free
        guidance either applied to both or to neither (the pipeline skips it for the empty prompt)."""
        settings = self.sampling_kwargs()
        settings["classifier_labels"] = tuple(sorted((self.classifier_labels or {}).items()))
        return (*settings.values(), self.guidance_scale != 1.0 and bool(self.prompt))


def _whole_number(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise ValueError(f"{name} must be a whole number between {low} and {high}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {int(value)}")
    return int(value)


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number between {low:g} and {high:g}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return float(value)


def prompt_truncation(text_encoder: TextEncoder, prompt: str) -> str | None:
    """A notice when ``prompt`` has more tokens than ``text_encoder.context_length``, else None."""
    count, context = text_encoder.token_count(prompt), text_encoder.context_length
    if count <= context:
        return None
    return (
        f"The prompt takes {count} tokens, more than the text encoder's {context} (start and end tokens "
        f"included), and was truncated: the model reads only its first {context - 2} tokens."
    )


def check_request(
    pipe: GuidedDiffusionPipeline,
    prompt: Any,
    num_images: Any,
    steps: Any,
    sampler: Any,
    guidance_scale: Any,
    classifier_attribute: Any,
    classifier_label: Any,
    classifier_scale: Any,
    seed: Any,
    timestep_schedule: Any = None,
    guidance_t_min: Any = None,
    guidance_t_max: Any = None,
    classifier_t_min: Any = None,
    classifier_t_max: Any = None,
    cads: Any = False,
    clip_guidance_scale: Any = None,
    clip_guidance_prompt: Any = None,
) -> GenerationRequest:
    """Check raw user input against ``pipe`` and the demo's limits; ``ValueError`` names the problem.

    ``steps``, ``sampler``, ``guidance_scale`` and ``timestep_schedule`` None take ``pipe``'s sampling
    config; ``seed`` None draws a random seed. Classifier settings (a non-empty attribute or label, or a
    positive scale) need a pipeline with a classifier and a label among ``pipe.classifier.labels``.
    ``guidance_t_min``/``guidance_t_max`` and ``classifier_t_min``/``classifier_t_max`` bound the
    timesteps (0..T-1) at which classifier-free and classifier guidance act (None: that end of the
    range); ``cads`` turns on condition-annealed sampling. ``clip_guidance_scale`` (None: the model's
    sampling config) > 0 needs a pipeline with a noise-aware CLIP, which steers towards
    ``clip_guidance_prompt`` (None or empty: the prompt).
    """
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be text, got {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"the prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS} "
            f"(the text encoder reads only {pipe.text_encoder.context_length} tokens anyway)"
        )
    num_images = _whole_number("num_images", num_images, 1, MAX_IMAGES)
    settings = pipe.sampling_config
    steps = settings["steps"] if steps is None else steps
    sampler = settings["sampler"] if sampler is None else sampler
    guidance_scale = settings["guidance_scale"] if guidance_scale is None else guidance_scale
    timestep_schedule = settings["timestep_schedule"] if timestep_schedule is None else timestep_schedule
    steps = _whole_number("steps", steps, 1, pipe.diffusion.num_timesteps)
    checked_sampler(sampler)
    checked_schedule(timestep_schedule)
    guidance_scale = _number("guidance_scale", guidance_scale, 0.0, MAX_GUIDANCE_SCALE)
    classifier_scale = _number("classifier_scale", classifier_scale, 0.0, MAX_CLASSIFIER_SCALE)
    labels = _classifier_labels(pipe, classifier_attribute, classifier_label, classifier_scale)
    seed = secrets.randbelow(MAX_SEED + 1) if seed is None else _whole_number("seed", seed, 0, MAX_SEED)
    last = pipe.diffusion.num_timesteps - 1
    guidance_interval = _interval("guidance", guidance_t_min, guidance_t_max, last)
    classifier_interval = _interval("classifier", classifier_t_min, classifier_t_max, last)
    if cads not in (True, False, None):
        raise ValueError(f"cads must be true or false, got {cads!r}")
    clip_scale = settings["clip_guidance_scale"] if clip_guidance_scale is None else clip_guidance_scale
    clip_scale = _number("clip_guidance_scale", clip_scale, 0.0, MAX_CLIP_GUIDANCE_SCALE)
    if clip_scale > 0 and pipe.clip is None:
        raise ValueError("this model has no noise-aware CLIP: leave clip_guidance_scale at 0")
    if clip_guidance_prompt is not None and not isinstance(clip_guidance_prompt, str):
        raise ValueError(f"clip_guidance_prompt must be text, got {type(clip_guidance_prompt).__name__}")
    if clip_guidance_prompt is not None and len(clip_guidance_prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the CLIP guidance prompt is {len(clip_guidance_prompt)} characters long; the limit is {MAX_PROMPT_CHARS}")
    notice = prompt_truncation(pipe.text_encoder, prompt)
    return GenerationRequest(
        prompt=prompt,
        num_images=num_images,
        steps=steps,
        sampler=sampler,
        guidance_scale=guidance_scale,
        classifier_scale=classifier_scale,
        classifier_labels=labels if classifier_scale > 0 else None,
        seed=seed,
        timestep_schedule=timestep_schedule,
        guidance_interval=guidance_interval,
        classifier_interval=classifier_interval if classifier_scale > 0 else None,
        cads=bool(cads),
        clip_guidance_scale=clip_scale,
        clip_guidance_prompt=(clip_guidance_prompt or None) if clip_scale > 0 else None,
        notices=(notice,) if notice else (),
    )


def _interval(kind: str, low: Any, high: Any, last: int) -> tuple[float, float] | None:
    """The interval ``(low, high)`` of timesteps (None ends: 0 and ``last``); None for the whole range."""
    low = 0.0 if low is None else _number(f"{kind}_t_min", low, 0, last)
    high = float(last) if high is None else _number(f"{kind}_t_max", high, 0, last)
    if low > high:
        raise ValueError(f"{kind}_t_min ({low:g}) must not be above {kind}_t_max ({high:g})")
    return None if (low, high) == (0.0, float(last)) else (low, high)


def _classifier_labels(
    pipe: GuidedDiffusionPipeline, attribute: Any, label: Any, scale: float
) -> dict[str, str] | None:
    if not attribute and not label and scale == 0:
        return None
    if pipe.classifier is None:
        raise ValueError("this model has no classifier: leave classifier_attribute and classifier_label empty and classifier_scale at 0")
    names = pipe.classifier.labels
    if not isinstance(attribute, str) or attribute not in names:
        raise ValueError(f"unknown classifier_attribute {attribute!r}; choose one of {', '.join(names)}")
    if not isinstance(label, str) or label not in names[attribute]:
        raise ValueError(f"unknown classifier_label {label!r} for {attribute!r}; choose one of {', '.join(names[attribute])}")
    return {attribute: label}

"""Checked generation requests, independent of the web UI.

:func:`check_request` turns raw user input (from the browser or an API client) into a
:class:`GenerationRequest`: the demo's own limits (images per request, scales, prompt length) and the
form of its inputs are checked here, everything else by the pipeline's one check,
:meth:`~guided_diffusion.request.SamplingRequest.check`; a bad value raises a
:class:`~guided_diffusion.errors.RequestError` that names it and its valid range. It also notes when
the prompt is longer than the text encoder reads, and resolves the name of an autoguidance model to
that model's pipeline among the demo's :class:`~.models.DemoModels`. :mod:`.batching` samples the
requests.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from ..errors import RequestError
from ..pipeline import GuidedDiffusionPipeline
from ..request import SamplingRequest, check_autoguidance, number, whole_number
from ..text import TextEncoder
from .models import DemoModels

MAX_IMAGES = 16
MAX_PROMPT_CHARS = 1000
MAX_GUIDANCE_SCALE = 20.0
MAX_CLIP_GUIDANCE_SCALE = 1000.0
MAX_ETA = 10.0
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class GenerationRequest:
    """One checked request: every value is in range and understood by the pipeline.

    ``autoguidance`` is the name of the guiding model (None: classifier-free guidance by the model
    itself) and ``guide`` its pipeline; ``eta`` is the sampler's eta (None: the sampler's default).
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
    eta: float | None = None
    thresholding: float | None = None
    clip_guidance_interval: tuple[float, float] | None = None
    clip_guidance_negative_prompt: tuple[str, ...] | None = None
    guidance_reads: str = "x_t"
    autoguidance: str | None = None
    guide: GuidedDiffusionPipeline | None = field(default=None, compare=False, repr=False)
    notices: tuple[str, ...] = field(default=())

    def pipeline_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`GuidedDiffusionPipeline.__call__` for this request alone."""
        return {"prompt": self.prompt, "num_images_per_prompt": self.num_images, "seed": self.seed, **self.sampling_kwargs()}

    def sampling_kwargs(self) -> dict[str, Any]:
        """The pipeline's keyword arguments that every request sampled in one batch must share
        (``autoguidance``: the guiding pipeline)."""
        return {
            "num_inference_steps": self.steps,
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
            "clip_guidance_interval": self.clip_guidance_interval,
            "clip_guidance_negative_prompt": self.clip_guidance_negative_prompt,
            "guidance_reads": self.guidance_reads,
            "eta": self.eta,
            "thresholding": self.thresholding,
            "autoguidance": self.guide,
        }

    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can be sampled in one batch: the same settings (the guiding model by
        its name), and classifier-free guidance either applied to both or to neither (the pipeline skips
        it for the empty prompt, unless a guiding model gives the unconditional branch)."""
        settings = self.sampling_kwargs()
        settings["classifier_labels"] = tuple(sorted((self.classifier_labels or {}).items()))
        settings["autoguidance"] = self.autoguidance
        return (*settings.values(), self.guidance_scale != 1.0 and (bool(self.prompt) or self.autoguidance is not None))


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
    eta: Any = None,
    thresholding: Any = None,
    clip_t_min: Any = None,
    clip_t_max: Any = None,
    autoguidance: Any = None,
    clip_guidance_negative_prompt: Any = None,
    guidance_reads: Any = None,
    *,
    models: DemoModels | None = None,
    model: str | None = None,
) -> GenerationRequest:
    """Check raw user input against ``pipe`` and the demo's limits; a ``RequestError`` names the problem.

    ``steps``, ``sampler``, ``guidance_scale`` and ``timestep_schedule`` None take ``pipe``'s sampling
    config; ``seed`` None draws a random seed. Classifier settings (a non-empty attribute or label, or a
    positive scale) need a pipeline with a classifier and a label among ``pipe.classifier.labels``.
    ``guidance_t_min``/``guidance_t_max`` and ``classifier_t_min``/``classifier_t_max`` bound the
    timesteps (0..T-1) at which classifier-free and classifier guidance act (None: that end of the
    range); ``cads`` turns on condition-annealed sampling. ``clip_guidance_scale`` (None: the model's
    sampling config) > 0 needs a pipeline with a noise-aware CLIP, which steers towards
    ``clip_guidance_prompt`` (None or empty: the prompt), at the timesteps between ``clip_t_min`` and
    ``clip_t_max``, and away from the captions of ``clip_guidance_negative_prompt`` (text, one caption
    a line; None or empty: none). ``eta`` (0..MAX_ETA; None: the model's or the sampler's default) is
    for the samplers that take it (see :func:`~guided_diffusion.samplers.sampler_options`); ``thresholding`` (a quantile
    in (0, 1] such as 0.995; None: off) turns on dynamic thresholding. ``guidance_reads`` (None: the model's default)
    says whether classifier and CLIP guidance read x_t or the model's x_0 estimate (``"x0"``). ``autoguidance`` (None or empty:
    off) names the model among ``models`` that guides in place of the unconditional model; ``model`` is
    the name of ``pipe`` there, which cannot guide itself. The guide must be compatible with ``pipe``
    (the pipeline's own check: the same diffusion process, image size and device).
    """
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise RequestError(f"prompt must be text, got {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise RequestError(
            f"the prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS} "
            f"(the text encoder reads only {pipe.text_encoder.context_length} tokens anyway)"
        )
    num_images = whole_number("num_images", num_images, 1, MAX_IMAGES)
    last = pipe.diffusion.num_timesteps - 1
    if steps is not None:
        steps = whole_number("steps", steps, 1, last + 1)
    if guidance_scale is not None:
        guidance_scale = number("guidance_scale", guidance_scale, 0.0, MAX_GUIDANCE_SCALE)
    classifier_scale = number("classifier_scale", classifier_scale, 0.0, pipe.sampling_config.classifier_scale_max)
    if clip_guidance_scale is not None:
        clip_guidance_scale = number("clip_guidance_scale", clip_guidance_scale, 0.0, MAX_CLIP_GUIDANCE_SCALE)
    seed = secrets.randbelow(MAX_SEED + 1) if seed is None else whole_number("seed", seed, 0, MAX_SEED)
    if cads not in (True, False, None):
        raise RequestError(f"cads must be true or false, got {cads!r}")
    clip_guidance_prompt = _text("clip_guidance_prompt", clip_guidance_prompt)
    negatives = _text("clip_guidance_negative_prompt", clip_guidance_negative_prompt) or ""
    if eta is not None:
        eta = number("eta", eta, 0.0, MAX_ETA)
    if autoguidance is not None and not isinstance(autoguidance, str):
        raise RequestError(f"autoguidance must be a model's name, got {type(autoguidance).__name__}")
    labels = None
    if classifier_attribute or classifier_label or classifier_scale:
        labels = {classifier_attribute: classifier_label}
    checked = SamplingRequest.check(
        pipe,
        prompt,
        num_images_per_prompt=num_images,
        num_inference_steps=steps,
        sampler=sampler,
        timestep_schedule=timestep_schedule,
        guidance_scale=guidance_scale,
        guidance_interval=_interval("guidance", guidance_t_min, guidance_t_max, last),
        classifier_scale=classifier_scale,
        classifier_labels=labels,
        classifier_interval=_interval("classifier", classifier_t_min, classifier_t_max, last),
        cads=bool(cads),
        clip_guidance_scale=clip_guidance_scale,
        clip_guidance_prompt=clip_guidance_prompt or None,
        clip_guidance_interval=_interval("clip", clip_t_min, clip_t_max, last),
        clip_guidance_negative_prompt=[line.strip() for line in negatives.splitlines() if line.strip()],  # one caption a line
        eta=eta,
        thresholding=thresholding,
        guidance_reads=guidance_reads,
    )
    guide = _guide(pipe, autoguidance, models, model)
    notice = prompt_truncation(pipe.text_encoder, prompt)
    return GenerationRequest(
        prompt=prompt,
        num_images=num_images,
        steps=checked.num_inference_steps,
        sampler=checked.sampler,
        guidance_scale=checked.guidance_scale,
        classifier_scale=checked.classifier_scale,
        classifier_labels=labels if checked.classifier_labels is not None else None,
        seed=seed,
        timestep_schedule=checked.timestep_schedule,
        guidance_interval=checked.guidance_interval,
        classifier_interval=checked.classifier_interval if checked.classifier_labels is not None else None,
        cads=checked.cads is not None,
        clip_guidance_scale=checked.clip_guidance_scale,
        clip_guidance_prompt=(clip_guidance_prompt or None) if checked.clip_guidance_prompts is not None else None,
        eta=checked.sampler_options.get("eta"),
        thresholding=checked.thresholding,
        clip_guidance_interval=checked.clip_guidance_interval if checked.clip_guidance_prompts is not None else None,
        clip_guidance_negative_prompt=checked.clip_guidance_negatives,
        guidance_reads=checked.guidance_reads,
        autoguidance=autoguidance if guide is not None else None,
        guide=guide,
        notices=(notice,) if notice else (),
    )


def _text(name: str, text: Any) -> str | None:
    """``text`` (None stays None), refused if it is not text or longer than ``MAX_PROMPT_CHARS``."""
    if text is not None and not isinstance(text, str):
        raise RequestError(f"{name} must be text, got {type(text).__name__}")
    if text is not None and len(text) > MAX_PROMPT_CHARS:
        raise RequestError(f"{name} is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}")
    return text


def _interval(kind: str, low: Any, high: Any, last: int) -> tuple[float, float] | None:
    """The interval ``(low, high)`` of timesteps (None ends: 0 and ``last``); None for the whole range."""
    low = 0.0 if low is None else number(f"{kind}_t_min", low, 0, last)
    high = float(last) if high is None else number(f"{kind}_t_max", high, 0, last)
    if low > high:
        raise RequestError(f"{kind}_t_min ({low:g}) must not be above {kind}_t_max ({high:g})")
    return None if (low, high) == (0.0, float(last)) else (low, high)


def _guide(
    pipe: GuidedDiffusionPipeline, name: str | None, models: DemoModels | None, model: str | None
) -> GuidedDiffusionPipeline | None:
    """The pipeline of the autoguidance model ``name`` among ``models`` (None for None or empty), checked
    by ``pipe``'s own check of a guide; any other name is refused with the valid ones."""
    if not name:
        return None
    valid = [n for n in (models.names if models is not None else []) if n != model]
    choices = f"choose one of {', '.join(valid)} (or none)" if valid else "no other model is offered"
    itself = f"autoguidance model {name!r} is the model being sampled, which cannot guide itself; {choices}"
    if name == model:
        raise RequestError(itself)
    if name not in valid:
        raise RequestError(f"unknown autoguidance model {name!r}; {choices}")
    guide = models.pipeline(name)
    if guide is pipe:
        raise RequestError(itself)
    check_autoguidance(pipe, guide)
    return guide

"""Checked generation requests and sampling with live previews, independent of the web UI.

:func:`check_request` turns raw user input (from the browser or an API client) into a
:class:`GenerationRequest`, refusing bad values with a ``ValueError`` that names the valid range, and
noting when the prompt is longer than the text encoder reads. :func:`sample_with_previews` runs the
pipeline in a worker thread and hands back every step as it happens, with the tensors of a handful of
evenly spaced steps for previews.
"""

from __future__ import annotations

import math
import queue
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..pipeline import GuidedDiffusionPipeline
from ..samplers import checked_sampler
from ..timestep_schedules import checked_schedule
from ..text import TextEncoder

MAX_IMAGES = 16
MAX_PROMPT_CHARS = 1000
MAX_GUIDANCE_SCALE = 20.0
MAX_CLASSIFIER_SCALE = 100.0
MAX_SEED = 2**32 - 1
MAX_PREVIEWS = 8


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
    notices: tuple[str, ...] = field(default=())

    def pipeline_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`GuidedDiffusionPipeline.__call__` for this request."""
        return {
            "prompt": self.prompt,
            "num_images_per_prompt": self.num_images,
            "steps": self.steps,
            "sampler": self.sampler,
            "timestep_schedule": self.timestep_schedule,
            "guidance_scale": self.guidance_scale,
            "classifier_scale": self.classifier_scale,
            "classifier_labels": self.classifier_labels,
            "seed": self.seed,
        }


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
) -> GenerationRequest:
    """Check raw user input against ``pipe`` and the demo's limits; ``ValueError`` names the problem.

    ``steps``, ``sampler``, ``guidance_scale`` and ``timestep_schedule`` None take ``pipe``'s sampling
    config; ``seed`` None
    draws a random seed. Classifier settings (a non-empty attribute or label, or a positive scale)
    need a pipeline with a classifier and a label among ``pipe.classifier.labels``.
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
        notices=(notice,) if notice else (),
    )


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


def preview_steps(num_steps: int, max_previews: int = MAX_PREVIEWS) -> list[int]:
    """At most ``max_previews`` evenly spaced steps of ``0..num_steps - 1``, the last one included."""
    count = min(num_steps, max_previews)
    if count == 1:
        return [num_steps - 1]
    return sorted({round(i * (num_steps - 1) / (count - 1)) for i in range(count)})


@dataclass(frozen=True)
class StepUpdate:
    """Step ``step`` (0-based) of ``num_steps`` is done; ``x_t`` and ``pred_x0`` ([N, 3, H, W] in
    [-1, 1], on the CPU) are set on preview steps and None otherwise."""

    step: int
    num_steps: int
    x_t: torch.Tensor | None = None
    pred_x0: torch.Tensor | None = None


@dataclass(frozen=True)
class SamplingDone:
    """The final images ``[N, 3, H, W]`` in [0, 1], on the CPU."""

    images: torch.Tensor


class SamplingCancelled(Exception):
    """Raised inside the worker thread when the consumer of :func:`sample_with_previews` went away."""


def sample_with_previews(
    pipe: GuidedDiffusionPipeline, request: GenerationRequest, max_previews: int = MAX_PREVIEWS
) -> Iterator[StepUpdate | SamplingDone]:
    """Sample ``request`` in a worker thread, yielding a :class:`StepUpdate` per step and then one
    :class:`SamplingDone`. Errors of the pipeline are raised here. Closing the iterator early stops
    the worker at its next step and waits for it, so no sampling outlives its consumer.
    """
    updates: queue.SimpleQueue[StepUpdate | SamplingDone | BaseException] = queue.SimpleQueue()
    stop = threading.Event()
    shown = set(preview_steps(request.steps, max_previews))

    def callback(step: int, num_steps: int, x_t: torch.Tensor, pred_x0: torch.Tensor) -> None:
        if stop.is_set():
            raise SamplingCancelled
        if step in shown:
            updates.put(StepUpdate(step, num_steps, x_t.detach().float().cpu(), pred_x0.detach().float().cpu()))
        else:
            updates.put(StepUpdate(step, num_steps))

    def work() -> None:
        try:
            updates.put(SamplingDone(pipe(**request.pipeline_kwargs(), callback=callback, output_type="pt")))
        except Exception as err:  # handed to the consumer, which raises it in its own thread
            updates.put(err)

    worker = threading.Thread(target=work, name="guided-diffusion-sampler", daemon=True)
    worker.start()
    try:
        while True:
            update = updates.get()
            if isinstance(update, BaseException):
                raise update
            yield update
            if isinstance(update, SamplingDone):
                return
    finally:
        stop.set()
        worker.join()

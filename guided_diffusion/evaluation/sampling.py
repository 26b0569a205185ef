"""Drawing an evaluation's images: many prompts, in batches, reproducibly, with a progress bar."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import RequestError
from ..pipeline import GuidedDiffusionPipeline
from ..request import SamplingConfig

CLASSIFIER_SCALE_SWEEP = (0, 1, 3, 10, 12, 15, 20)
"""The classifier-guidance scales an evaluation sweeps unless told otherwise (shapes32's range; a
model whose classifier wants other scales names them, as the emoji evaluation does)."""


def check_counts(at_least: int, **counts: int) -> None:
    """Refuse the first of ``counts`` (name -> value) below ``at_least`` with one line that names it."""
    for name, value in counts.items():
        if value < at_least:
            bound = "not be negative" if at_least == 0 else f"be at least {at_least}"
            raise RequestError(f"{name} must {bound}, got {value}")


def purpose_rng(seed: int, purpose: str) -> np.random.Generator:
    """The random stream of one choice of an evaluation, drawn from the seed and what it is for (so
    that changing one metric's options leaves the others' draws alone)."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


@dataclass
class EvalSampling(SamplingConfig):
    """How an evaluation draws images: a :class:`~guided_diffusion.request.SamplingConfig` (the sampler,
    its steps and timestep schedule, the classifier-free guidance scale, ``eta``, what classifier and
    CLIP guidance read) plus the prompts per batch and the seed (batch ``b`` uses ``seed + b``). CLIP
    guidance is left to each evaluation."""

    batch_size: int = 64
    seed: int = 0

    @classmethod
    def of(cls, pipe: GuidedDiffusionPipeline, **changes: Any) -> "EvalSampling":
        """The pipeline's own sampling settings, with ``changes`` (None values: keep the pipeline's)."""
        settings = {**pipe.sampling_config.to_dict(), **{k: v for k, v in changes.items() if v is not None}}
        return cls.from_dict(settings)

    def kwargs(self) -> dict[str, Any]:
        """The pipeline-call arguments: ``sampler``, ``num_inference_steps``, ``timestep_schedule``,
        ``guidance_scale``, ``guidance_reads``, and ``eta`` when set and the sampler takes it."""
        return {
            "sampler": self.sampler,
            "num_inference_steps": self.steps,
            "timestep_schedule": self.timestep_schedule,
            "guidance_scale": self.guidance_scale,
            "guidance_reads": self.guidance_reads,
            **self.sampler_settings(self.sampler),
        }


def guidance_reads_note(guidance_reads: str) -> str:
    """The words a report adds after its sampling settings when guidance reads the x_0 estimate."""
    return "" if guidance_reads == "x_t" else "; classifier and CLIP guidance read the model's x_0 estimate (at t = 0)"


def per_guidance_scale(
    scales: Sequence[float], sampling: EvalSampling, own: dict[str, Any], score: Callable[[EvalSampling], dict[str, Any]]
) -> list[dict[str, Any]]:
    """``{"guidance_scale": s, **scores}`` for each of ``scales``: ``own`` (the scores already taken
    with ``sampling``) at the evaluation's own scale, not sampled twice; ``score(sampling at s)`` at
    the others."""
    rows = []
    for scale in map(float, scales):
        same = scale == sampling.guidance_scale
        rows.append({"guidance_scale": scale, **(own if same else score(dataclasses.replace(sampling, guidance_scale=scale)))})
    return rows


def generate(
    pipe: GuidedDiffusionPipeline,
    prompts: Sequence[str],
    sampling: EvalSampling,
    *,
    description: str = "sampling",
    **guidance: Any,
) -> torch.Tensor:
    """One image per prompt, ``[N, 3, H, W]`` in [-1, 1] (on the CPU), in prompt order; ``guidance``
    goes to the pipeline call (``classifier_scale``, ``classifier_labels``, ``classifier_max_t``)."""
    chunks = []
    starts = range(0, len(prompts), sampling.batch_size)
    for b, start in enumerate(tqdm(starts, desc=description, unit="batch", leave=False)):
        images = pipe(
            list(prompts[start : start + sampling.batch_size]),
            **sampling.kwargs(),
            seed=sampling.seed + b,
            output_type="pt",
            **guidance,
        ).images
        chunks.append(images * 2 - 1)
    return torch.cat(chunks)

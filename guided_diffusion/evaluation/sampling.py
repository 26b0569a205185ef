"""Drawing an evaluation's images: many prompts, in batches, reproducibly, with a progress bar."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..pipeline import GuidedDiffusionPipeline


def check_counts(at_least: int, **counts: int) -> None:
    """Refuse the first of ``counts`` (name -> value) below ``at_least`` with one line that names it."""
    for name, value in counts.items():
        if value < at_least:
            bound = "not be negative" if at_least == 0 else f"be at least {at_least}"
            raise ValueError(f"{name} must {bound}, got {value}")


@dataclass
class EvalSampling:
    """How an evaluation draws images: the sampler, its steps, the classifier-free guidance scale,
    prompts per batch, the seed (batch ``b`` uses ``seed + b``) and the timestep schedule."""

    sampler: str = "ddim"
    steps: int = 50
    guidance_scale: float = 3.0
    batch_size: int = 64
    seed: int = 0
    timestep_schedule: str = "uniform"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def kwargs(self) -> dict[str, Any]:
        """The pipeline-call arguments: ``sampler``, ``steps``, ``timestep_schedule``, ``guidance_scale``."""
        return {
            "sampler": self.sampler,
            "steps": self.steps,
            "timestep_schedule": self.timestep_schedule,
            "guidance_scale": self.guidance_scale,
        }


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
        )
        chunks.append(images * 2 - 1)
    return torch.cat(chunks)

"""Standard normal noise from one random generator, or from one generator per image.

A batch may hold images that belong to different requests, each with its own seed (the demo batches
concurrent users). Drawing every image's noise from its own request's generator keeps each user's
images the ones they would get alone: the same seed gives the same image, alone or batched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import RequestError

Generators = torch.Generator | Sequence[torch.Generator] | None


def check_generators(generator: Generators, batch_size: int) -> None:
    """Refuse a sequence of generators whose length is not ``batch_size`` (one per image)."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if len(generator) != batch_size or not all(isinstance(g, torch.Generator) for g in generator):
        raise RequestError(f"generator must be one torch.Generator or a list of {batch_size} (one per image), got {len(generator)} items")


def randn(shape: Sequence[int], generator: Generators, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Noise ``[B, ...]`` (``shape``) on ``device`` in ``dtype``.

    ``generator`` None draws from torch's global generator, and one generator draws the whole batch in
    one call. A sequence of B generators (one per image, as diffusers takes them) draws each run of
    consecutive images that share one generator object in one call from it: ``[g, g, h]`` gives the
    two images that ``g`` alone draws for a batch of 2, then the one ``h`` draws for a batch of 1.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    check_generators(generator, shape[0])
    parts, start = [], 0
    for end in range(1, len(generator) + 1):
        if end == len(generator) or generator[end] is not generator[start]:
            parts.append(torch.randn((end - start, *shape[1:]), generator=generator[start], device=device, dtype=dtype))
            start = end
    return torch.cat(parts)

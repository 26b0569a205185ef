"""``torch.compile`` helpers: the backend check of :meth:`GuidedDiffusionPipeline.compile
<guided_diffusion.pipeline.GuidedDiffusionPipeline.compile>`, and the compile-time report that
``gd-sample --compile`` and compiled training runs print.

``torch.compile`` compiles lazily, at the first call with new input shapes, so its cost shows as a
slow first step. The report takes the wall seconds of the first step (sampling step or optimizer
update) and of some later ones: the compile time is about the first minus the median of the others.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from .errors import RequestError


def check_compile_backend(backend: str) -> None:
    """Refuse (RequestError) a ``torch.compile`` backend this torch does not have, naming the ones it has."""
    if backend not in torch.compiler.list_backends(exclude_tags=()):
        raise RequestError(
            f"unknown compile backend {backend!r}; choose one of {', '.join(torch.compiler.list_backends())} "
            "(or eager, aot_eager to debug)"
        )


def compile_time_report(backend: str, seconds: Sequence[float], unit: str) -> str:
    """One line on what compiling cost, from the wall ``seconds`` of the first ``unit``s ("update",
    "step") of a compiled run, the first one compiling."""
    first, later = seconds[0], seconds[1:]
    if not later:
        return f"torch.compile ({backend}): the first {unit} took {first:.1f} s, compiling included (none after it)"
    typical = statistics.median(later)
    return (
        f"torch.compile ({backend}): about {max(first - typical, 0.0):.1f} s compiling "
        f"(first {unit} {first:.2f} s, median of the next {len(later)} {typical:.3f} s)"
    )

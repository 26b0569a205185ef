"""Sampling checked requests in batches on one worker thread, with live previews for each request.

Requests that arrive together are sampled in one call of the pipeline when they can share it: the same
model and the same settings (:meth:`GenerationRequest.batch_key`; an autoguidance model, which the
request holds already resolved to its pipeline, counts by its name). Prompts and seeds may differ, and
every image's noise comes from its own request's generator (:func:`guided_diffusion.noise.randn`), so a
request gets the images it would get alone: the same seed, the same image, up to float rounding (a
batched matrix product may sum in another order).

The worker serves the oldest waiting request first and adds to its batch the later ones that match,
up to ``max_batch_images`` images (a larger request runs alone). When it is idle, it waits until no new
request has come for ``gather_seconds`` (at most ``max_gather_seconds`` in all) so that a crowd arriving
together fills one batch; requests that come while a batch runs wait for the next.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ..pipeline import GuidedDiffusionPipeline
from .generation import GenerationRequest

MAX_PREVIEWS = 8
DEFAULT_MAX_BATCH_IMAGES = 32
DEFAULT_GATHER_SECONDS = 0.05
DEFAULT_MAX_GATHER_SECONDS = 0.5


def preview_steps(num_steps: int, max_previews: int = MAX_PREVIEWS) -> list[int]:
    """At most ``max_previews`` evenly spaced steps of ``0..num_steps - 1``, the last one included
    (none for ``max_previews`` 0)."""
    count = min(num_steps, max_previews)
    if count == 0:
        return []
    if count == 1:
        return [num_steps - 1]
    return sorted({round(i * (num_steps - 1) / (count - 1)) for i in range(count)})


@dataclass(frozen=True)
class StepUpdate:
    """Step ``step`` (0-based) of ``num_steps`` is done; ``x_t`` and ``pred_x0`` ([N, 3, H, W] in
    [-1, 1], on the CPU, N the request's images) are set on preview steps and None otherwise."""

    step: int
    num_steps: int
    x_t: torch.Tensor | None = None
    pred_x0: torch.Tensor | None = None


@dataclass(frozen=True)
class SamplingDone:
    """The request's final images ``[N, 3, H, W]`` in [0, 1], on the CPU."""

    images: torch.Tensor


class SamplingCancelled(Exception):
    """Raised inside the worker when no request of the running batch has a consumer any more."""


@dataclass(eq=False)
class _Job:
    """One request waiting for, or in, a batch; ``updates`` carries its results to its consumer."""

    model: str
    pipe: GuidedDiffusionPipeline
    request: GenerationRequest
    max_previews: int
    updates: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> tuple:
        return (self.model, *self.request.batch_key())

    @property
    def preview_steps(self) -> set[int]:
        return set(preview_steps(self.request.steps, self.max_previews))


class SamplingBatcher:
    """One worker thread that samples the submitted requests, batching those that can share a call.

    :meth:`submit` is called from any thread (one per client) and returns that request's stream of
    :class:`StepUpdate` then :class:`SamplingDone`. A pipeline error reaches every request of the batch
    it broke. Closing a stream early drops that request from its batch; a batch whose requests have all
    gone stops at its next step.
    """

    def __init__(
        self,
        max_batch_images: int = DEFAULT_MAX_BATCH_IMAGES,
        gather_seconds: float = DEFAULT_GATHER_SECONDS,
        max_gather_seconds: float = DEFAULT_MAX_GATHER_SECONDS,
    ) -> None:
        if max_batch_images < 1:
            raise ValueError(f"max_batch_images must be at least 1, got {max_batch_images}")
        self.max_batch_images = max_batch_images
        self.gather_seconds = gather_seconds
        self.max_gather_seconds = max_gather_seconds
        self.batch_sizes: list[int] = []  # requests per batch run so far, for tests and benchmarks
        self._waiting: list[_Job] = []
        self._arrived = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._serve, name="guided-diffusion-batcher", daemon=True)
        self._worker.start()

    def submit(
        self, model: str, pipe: GuidedDiffusionPipeline, request: GenerationRequest, max_previews: int = MAX_PREVIEWS
    ) -> Iterator[StepUpdate | SamplingDone]:
        """Queue ``request`` for ``pipe`` (named ``model``) and stream its progress: a
        :class:`StepUpdate` per step, with tensors on at most ``max_previews`` steps, then one
        :class:`SamplingDone`. Errors of the pipeline are raised here."""
        job = _Job(model, pipe, request, max_previews)
        with self._arrived:
            if self._closed:
                raise RuntimeError("the sampling batcher is closed")
            self._waiting.append(job)
            self._arrived.notify()
        return self._stream(job)

    @staticmethod
    def _stream(job: _Job) -> Iterator[StepUpdate | SamplingDone]:
        try:
            while True:
                update = job.updates.get()
                if isinstance(update, BaseException):
                    raise update
                yield update
                if isinstance(update, SamplingDone):
                    return
        finally:
            job.cancelled.set()

    def close(self) -> None:
        """Stop the worker after its current batch; requests still waiting get an error."""
        with self._arrived:
            self._closed = True
            self._arrived.notify()
        self._worker.join()

    # ------------------------------------------------------------------------------ the worker

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self.batch_sizes.append(len(batch))
            try:
                self._run(batch)
            except SamplingCancelled:
                pass
            except Exception as err:  # handed to each consumer, which raises it in its own thread
                for job in batch:
                    job.updates.put(err)

    def _next_batch(self) -> list[_Job] | None:
        """The oldest live request and the matching ones after it, once the arrivals have settled;
        None when closed."""
        with self._arrived:
            while not self._live_waiting():
                if self._closed:
                    return None
                self._arrived.wait()
            if not self._closed:
                self._gather()
            if self._closed:
                for job in self._waiting:
                    job.updates.put(RuntimeError("the demo is shutting down"))
                return None
            waiting = self._live_waiting()
            batch, images = [waiting[0]], waiting[0].request.num_images
            for job in waiting[1:]:
                if job.key == batch[0].key and images + job.request.num_images <= self.max_batch_images:
                    batch.append(job)
                    images += job.request.num_images
            self._waiting = [job for job in waiting if job not in batch]
            return batch

    def _live_waiting(self) -> list[_Job]:
        self._waiting = [job for job in self._waiting if not job.cancelled.is_set()]
        return self._waiting

    def _gather(self) -> None:
        """Wait (holding nothing but the condition) while requests keep arriving, up to the limits."""
        deadline = time.monotonic() + self.max_gather_seconds
        while sum(job.request.num_images for job in self._waiting) < self.max_batch_images:
            count, quiet = len(self._waiting), min(self.gather_seconds, deadline - time.monotonic())
            arrived = quiet > 0 and self._arrived.wait_for(lambda: self._closed or len(self._waiting) != count, quiet)
            if not arrived or self._closed:
                return

    @staticmethod
    def _run(batch: list[_Job]) -> None:
        """Sample ``batch`` in one pipeline call and hand each request its slice of every update."""
        first = batch[0]
        pipe = first.pipe
        prompts, generators, bounds = [], [], []
        for job in batch:
            generator = torch.Generator(device=pipe.device).manual_seed(job.request.seed)
            bounds.append((len(prompts), len(prompts) + job.request.num_images))
            prompts += [job.request.prompt] * job.request.num_images
            generators += [generator] * job.request.num_images
        shown = [job.preview_steps for job in batch]

        def callback(step: int, steps: int, x_t: torch.Tensor, pred_x0: torch.Tensor) -> None:
            if all(job.cancelled.is_set() for job in batch):
                raise SamplingCancelled
            if any(step in steps_shown for steps_shown in shown):
                x_t, pred_x0 = x_t.detach().float().cpu(), pred_x0.detach().float().cpu()
            for job, (start, end), steps_shown in zip(batch, bounds, shown):
                if step in steps_shown:
                    job.updates.put(StepUpdate(step, steps, x_t[start:end], pred_x0[start:end]))
                else:
                    job.updates.put(StepUpdate(step, steps))

        images = pipe(prompts, generator=generators, callback=callback, output_type="pt", **first.request.sampling_kwargs()).images
        for job, (start, end) in zip(batch, bounds):
            job.updates.put(SamplingDone(images[start:end]))

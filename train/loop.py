"""The optimisation loop shared by the training commands, on top of ``accelerate``.

A command builds its model, its data (:class:`~guided_diffusion.data.TrainData`) and a loss function
``loss_fn(model, batch) -> scalar``, and hands them to :class:`Trainer`, which does the rest:
data-parallel processes, gradient accumulation, mixed precision, ``torch.compile``, AdamW (fused where
that pays, :mod:`train.optimizer`), clipping, the LR schedule, the EMA, checkpoints and resume,
validation or evaluation, progress and logs. Each optimizer update (a "step") reads
``gradient_accumulation_steps`` batches on every process.

Randomness: the model is built before :class:`Trainer` under ``set_seed(seed)`` (the same weights on
every process); training then draws from per-process seeds (``set_seed(seed, device_specific=True)``),
whose states the checkpoints save. Data order and augmentations depend only on the seed and the data
position. Validation runs in a forked RNG. So a resumed run repeats the losses of an uninterrupted
one bit for bit on the CPU (on GPUs, up to the non-determinism of some CUDA kernels). On another
number of processes a run resumes too (:meth:`Trainer._adapt`), reading on from the next unread row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.utils import DynamoBackend, ProjectConfiguration, TorchDynamoPlugin, set_seed
from torch import nn
from transformers import get_scheduler

from guided_diffusion.compilation import compile_time_report
from guided_diffusion.data import DataError, DataPosition, TrainData, check_columns, load_source
from guided_diffusion.errors import ConfigError, TrainingError
from guided_diffusion.serialization import CheckpointError

from .checkpoints import (
    delete_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_partial_checkpoints,
    resolve_resume,
    save_checkpoint,
)
from .config import RunConfig, TrainingConfig
from .divergence import DivergenceGuard, kept
from .ema import EMA
from .optimizer import build_adamw
from .tracking import Tracker, tracker_backends

Batch = dict[str, Any]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
EvaluateFn = Callable[[int], dict[str, float]]
MAX_EMPTY_BATCHES = 100
COMPILE_TIMING_UPDATES = 5  # a compiled run compares its first update with the median of this many after it


def choose_mixed_precision(
    configured: str | None, launcher: str | None, cuda: bool, bf16_supported: bool
) -> tuple[str, str]:
    """The run's mixed precision and where it comes from, for the log.

    ``configured`` (``training.mixed_precision``) wins; then ``launcher``, accelerate's setting
    (``ACCELERATE_MIXED_PRECISION``, which ``accelerate launch`` always sets: from its
    ``--mixed_precision`` flag, else from ``accelerate config``, else "no"); without either, "bf16"
    when training runs on a CUDA device (``cuda``) that supports it (``bf16_supported``), else "no":
    bf16 autocast costs about as much as float32 on an H200 and runs at 0.13x its rate on a CPU
    without bf16 matrix instructions (``benchmarks/README.md``), while halving activation memory.
    """
    if configured is not None:
        return configured, "training.mixed_precision"
    if launcher:
        return launcher.lower(), "accelerate's setting"
    if cuda and bf16_supported:
        return "bf16", "the default on a CUDA device with bf16"
    return "no", "the default on a CUDA device without bf16" if cuda else "the default off CUDA"


def make_accelerator(config: TrainingConfig) -> Accelerator:
    """The run's ``Accelerator``: mixed precision as :func:`choose_mixed_precision` decides (logged in
    one line), ``torch.compile`` of the prepared model with ``training.compile_backend`` when
    ``training.compile`` (else accelerate's setting: ``accelerate launch --dynamo_backend``, default
    none), TensorBoard when installed.

    fp16 on the CPU is refused. Several processes on a machine without CUDA (``accelerate launch
    --multi_gpu --num_processes 2`` on a CPU box) run data-parallel on the CPU with the gloo backend.
    """
    output_dir = Path(config.output_dir)
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    cuda = PartialState(cpu=cpu).device.type == "cuda"
    precision, source = choose_mixed_precision(
        config.mixed_precision,
        os.environ.get("ACCELERATE_MIXED_PRECISION"),
        cuda,
        cuda and torch.cuda.is_bf16_supported(),
    )
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        dynamo_plugin=TorchDynamoPlugin(backend=config.compile_backend) if config.compile else None,
        log_with=tracker_backends() or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ConfigError(
            "fp16 mixed precision needs a GPU (on the CPU it would silently train in float32); use bf16 or no"
        )
    accelerator.print(f"mixed precision: {accelerator.mixed_precision} ({source})")
    return accelerator


def open_training_data(run: RunConfig, accelerator: Accelerator, resolution: int) -> TrainData:
    """This process's share of the configured dataset, its columns checked.

    Every process opens the source itself (``datasets`` locks its cache), so that a bad path or
    column stops all of them with the same error instead of leaving some waiting at a barrier.
    """
    dataset = load_source(run.data)
    check_columns(dataset, run.data)
    return TrainData(
        dataset,
        run.data,
        resolution=resolution,
        batch_size=run.training.train_batch_size,
        seed=run.training.seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )


@dataclass
class TrainState:
    """What a checkpoint records beside the weights: the step, each process's data position, counters.

    ``position_unit`` says what a map-style position's offset counts: ``"rows"`` (all processes' rows
    of the epoch; since the toolkit could resume on another number of processes) or ``"batches"``
    (global batches, in checkpoints written before).
    """

    step: int = 0
    positions: list[DataPosition] = field(default_factory=list)
    images_seen: int = 0
    skipped_images: int = 0
    position_unit: str = "rows"

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "num_processes": len(self.positions),
            "positions": [p.to_dict() for p in self.positions],
            "position_unit": self.position_unit,
            "images_seen": self.images_seen,
            "skipped_images": self.skipped_images,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        return cls(
            step=int(d["step"]),
            positions=[DataPosition.from_dict(p) for p in d["positions"]],
            images_seen=int(d["images_seen"]),
            skipped_images=int(d["skipped_images"]),
            position_unit=d.get("position_unit", "batches"),
        )


class Trainer:
    """Trains ``model`` on ``data`` by minimising ``loss_fn`` under ``accelerator``.

    Args:
        accelerator: from :func:`make_accelerator`.
        run: the run's config (its ``training`` section drives the loop; all of it is saved with the run).
        model: the module to train (every parameter that requires grad is optimised).
        data: this process's training data.
        loss_fn: ``loss_fn(prepared_model, batch) -> scalar tensor``, the mean loss of one batch (the
            prepared model is compiled when the accelerator compiles; the run then logs what compiling
            cost once its first updates are done).
        publish: ``publish(step)`` writes the model users load into ``output_dir``; called on the
            main process, with the EMA weights in place, for every checkpoint once it is confirmed: the
            next update's loss, computed with its weights, is healthy (:mod:`train.divergence`). So a
            diverging run stops with the last good checkpoint and published model as they were, and
            the unconfirmed checkpoints after them deleted. The last checkpoint of a run has no next
            update: it is published when the run's last loss is healthy.
        validate: ``validate(step)`` samples for inspection; called on the main process with the EMA
            weights in place, every ``validation_steps`` and at the end (None: no validation).
        evaluate: ``evaluate(step) -> metrics`` measures the model on held-out data; called on the main
            process with the EMA weights in place, every ``validation_steps`` and at the end. Its
            metrics join that update's record in the logs.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        run: RunConfig,
        model: nn.Module,
        data: TrainData,
        loss_fn: LossFn,
        publish: Callable[[int], None],
        validate: Callable[[int], None] | None = None,
        evaluate: EvaluateFn | None = None,
    ) -> None:
        self.accelerator = accelerator
        self.run_config = run
        self.config = config = run.training
        self.data = data
        self.loss_fn = loss_fn
        self.publish = publish
        self.validate = validate
        self.evaluate = evaluate
        self.output_dir = Path(config.output_dir)
        self.max_steps = self._max_steps()

        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = build_adamw(trainable, config, accelerator.device.type, accelerator.mixed_precision)
        self.scheduler = get_scheduler(
            config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=self.max_steps
        )
        # Compiled, the prepared model is torch.compile's wrapper, whose parameter names start with
        # "_orig_mod."; accelerate saves the model inside it, and the EMA averages ``model`` itself, so
        # checkpoints and published weights are named as without compiling.
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        dynamo = accelerator.state.dynamo_plugin.backend
        self.compile_backend = None if dynamo == DynamoBackend.NO else dynamo.value.lower()
        accelerator.register_for_checkpointing(self.scheduler)
        self.ema: EMA | None = None
        if config.use_ema:
            self.ema = EMA(model, decay=config.ema_decay, warmup=config.ema_warmup)
            accelerator.register_for_checkpointing(self.ema)
        self.guard = DivergenceGuard(config.divergence_factor, config.divergence_patience, config.divergence_window)
        self.last_checkpoint: Path | None = None  # the last confirmed (published) or resumed checkpoint
        self.pending: tuple[int, Path] | None = None  # saved, waiting for the next update's loss
        self.unconfirmed: list[Path] = []  # saved, and the next update's loss was suspect
        self.published: Path | None = None  # confirmed since the log last said so
        self.resume_note: str | None = None  # how a resumed run on another process count differs
        self.position = DataPosition()  # this process's place in its data, after the last batch read

    def _max_steps(self) -> int:
        config = self.config
        if config.max_train_steps is not None:
            return config.max_train_steps
        if self.data.batches_per_epoch is None:
            raise ConfigError("streaming data has no epoch length: set training.max_train_steps (--max_train_steps)")
        return math.ceil(config.num_train_epochs * self.data.batches_per_epoch / config.gradient_accumulation_steps)

    def averaged_weights(self) -> contextlib.AbstractContextManager:
        """A context with the EMA weights in the model (the trained ones without EMA)."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------------------------ the run

    def run(self) -> None:
        """Train from scratch or from the configured checkpoint up to the last step."""
        accelerator = self.accelerator
        state = self._start()
        tracker = Tracker(accelerator, self.output_dir, self.max_steps, state.step)
        if state.step:
            tracker.write(f"resumed from {self.last_checkpoint} at step {state.step}")
        if self.resume_note is not None:
            tracker.write(self.resume_note)
        self.position = state.positions[accelerator.process_index]
        batches = self.data.batches(self.position)
        update_seconds: list[float] = []  # of the first updates of a compiled run, for the compile time
        try:
            while state.step < self.max_steps:
                started = time.perf_counter()
                metrics = self._update(batches, state)
                if self.compile_backend is not None and len(update_seconds) <= COMPILE_TIMING_UPDATES:
                    update_seconds.append(time.perf_counter() - started)
                    if len(update_seconds) == COMPILE_TIMING_UPDATES + 1 or state.step == self.max_steps:
                        tracker.write(compile_time_report(self.compile_backend, update_seconds, "update"))
                if self.evaluate is not None and self._on_validation_schedule(state.step):
                    metrics.update(self._on_main_with_averaged_weights(self.evaluate, state.step) or {})
                tracker.log(state.step, metrics)
                self._report_publication(tracker)
                if state.step % self.config.checkpointing_steps == 0 or state.step == self.max_steps:
                    self._checkpoint(state)
                    tracker.write(f"saved {self.pending[1]}")
                if self._validation_due(state.step):
                    self._on_main_with_averaged_weights(self.validate, state.step)
            self._finish()
            self._report_publication(tracker)
        finally:
            tracker.close()
            accelerator.end_training()

    def _start(self) -> TrainState:
        accelerator, config = self.accelerator, self.config
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            remove_partial_checkpoints(self.output_dir)
        accelerator.wait_for_everyone()
        set_seed(config.seed, device_specific=True)
        folder = resolve_resume(self.output_dir, config.resume_from_checkpoint)
        existing = list_checkpoints(self.output_dir)
        if folder is None and config.resume_from_checkpoint is None and existing:
            newest = existing[-1][1]
            raise ConfigError(
                f"{self.output_dir} already holds checkpoints (newest {newest.name}); pass "
                "--resume_from_checkpoint latest to continue, or choose another --output_dir"
            )
        state = TrainState(positions=[DataPosition()] * accelerator.num_processes)
        if folder is None and config.resume_from_checkpoint == "latest":
            accelerator.print(f"no checkpoint in {self.output_dir} yet: starting from scratch")
        if folder is not None:
            state = TrainState.from_dict(load_checkpoint(accelerator, folder))
            self.last_checkpoint = folder
            self.resume_note = self._adapt(state, folder)
        if accelerator.is_main_process:
            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(self.run_config.to_dict(), sort_keys=False))
        hyperparameters = {
            k: v for k, v in dataclasses.asdict(config).items() if isinstance(v, (bool, int, float, str))
        }
        accelerator.init_trackers(self.output_dir.name or "run", config=hyperparameters)
        return state

    def _adapt(self, state: TrainState, folder: Path) -> str | None:
        """Fit a resumed ``state`` to this run's number of processes; returns the line that says how the
        run differs from an uninterrupted one (None when it does not).

        Map-style data: every process gets the checkpoint's global position (older checkpoints'
        batch counts become rows), so the epoch goes on from its next unread row. Streaming data is
        sharded by process count, so it cannot. Processes the checkpoint has no random state for are
        seeded from (seed, step, process index)."""
        accelerator, config = self.accelerator, self.config
        written_by, now = len(state.positions), accelerator.num_processes
        if self.data.batches_per_epoch is not None and state.position_unit == "batches":
            rows = config.train_batch_size * written_by
            state.positions = [DataPosition(p.epoch, p.offset * rows) for p in state.positions]
        state.position_unit = "rows"
        if written_by == now:
            return None
        if self.data.batches_per_epoch is None:
            raise CheckpointError(
                f"{folder} was written by {written_by} process{'es' if written_by != 1 else ''} on streaming data, whose "
                f"shards depend on the number of processes; resume it with {written_by} (this run has {now})"
            )
        position = state.positions[0]
        state.positions = [position] * now
        reseeded = list(range(written_by, now))
        if accelerator.process_index in reseeded:
            set_seed(int(np.random.SeedSequence([config.seed, state.step, accelerator.process_index]).generate_state(1)[0]))
        return (
            f"resumed on {now} process{'es' if now != 1 else ''} a checkpoint written by {written_by}: the data goes on "
            f"from row {position.offset} of epoch {position.epoch} in global batches of "
            f"{config.train_batch_size * now} (was {config.train_batch_size * written_by})"
            + (f", processes {reseeded} seeded from (seed, step, process)" if reseeded else "")
            + "; the losses differ from an uninterrupted run's from here"
        )

    def _next_batch(self, batches: Iterator[Batch]) -> tuple[Batch, int]:
        """The next batch with at least one readable image, and the number of unreadable images read
        on the way (its own included); records the data position."""
        skipped = 0
        for _ in range(MAX_EMPTY_BATCHES):
            batch = next(batches)
            self.position = batch["position"]
            skipped += batch["skipped"]
            if len(batch["captions"]):
                return batch, skipped
        raise DataError(f"{MAX_EMPTY_BATCHES} batches in a row held no readable image; check the image column")

    def _update(self, batches: Iterator[Batch], state: TrainState) -> dict[str, float]:
        """One optimizer update from ``gradient_accumulation_steps`` batches; returns its metrics."""
        accelerator, config = self.accelerator, self.config
        accumulation = config.gradient_accumulation_steps
        started = time.perf_counter()
        lr = self.scheduler.get_last_lr()[0]
        loss_sum = torch.zeros((), device=accelerator.device)
        images, skipped = 0, 0
        for micro in range(accumulation):
            batch, skipped_now = self._next_batch(batches)
            images += len(batch["captions"])
            skipped += skipped_now
            last = micro == accumulation - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(self.model):
                loss = self.loss_fn(self.model, batch)
                accelerator.backward(loss / accumulation)
            loss_sum += loss.detach().float()
        totals = accelerator.reduce(
            torch.stack([loss_sum / accumulation, loss_sum.new_tensor(images), loss_sum.new_tensor(skipped)]),
            reduction="sum",
        )
        loss_value = totals[0].item() / accelerator.num_processes
        self._judge(state.step + 1, loss_value)
        if config.max_grad_norm is not None:
            accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
        self.optimizer.step()
        if not accelerator.optimizer_step_was_skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        state.step += 1
        state.images_seen += int(totals[1].item())
        state.skipped_images += int(totals[2].item())
        return {
            "loss": loss_value,
            "lr": lr,
            "images_per_sec": totals[1].item() / (time.perf_counter() - started),
            "epoch": self.position.epoch,
            "images_seen": state.images_seen,
            "skipped_images": state.skipped_images,
        }

    def _judge(self, step: int, loss: float) -> None:
        """Run update ``step``'s loss past the guard, with the weights of the previous update still in
        the model: a healthy loss confirms the pending checkpoint (saved with those weights), which is
        then published and the older checkpoints pruned; a suspect one leaves it unconfirmed; a stop
        deletes every unconfirmed checkpoint before the error goes up."""
        try:
            healthy = self.guard.check(step, loss, self.last_checkpoint)
        except TrainingError:
            self._discard_unconfirmed()
            raise
        if self.pending is None:
            return
        if healthy:
            self._confirm()
        else:
            self.unconfirmed.append(self.pending[1])
            self.pending = None

    def _confirm(self) -> None:
        """Publish the pending checkpoint (its weights are the model's now) and prune the older ones."""
        step, folder = self.pending
        self._on_main_with_averaged_weights(self.publish, step)
        if self.accelerator.is_main_process:
            prune_checkpoints(self.output_dir, self.config.checkpoints_total_limit)
        self.accelerator.wait_for_everyone()
        self.last_checkpoint = self.published = folder
        self.pending, self.unconfirmed = None, []

    def _report_publication(self, tracker: Tracker) -> None:
        if self.published is not None:
            tracker.write(f"published the model of {self.published.name} in {self.output_dir}")
            self.published = None

    def _discard_unconfirmed(self) -> None:
        folders = self.unconfirmed + ([self.pending[1]] if self.pending is not None else [])
        if self.accelerator.is_main_process:
            for folder in folders:
                if folder.exists():
                    delete_checkpoint(folder)
        self.accelerator.wait_for_everyone()
        self.unconfirmed, self.pending = [], None

    def _finish(self) -> None:
        """Publish the run's last checkpoint, unless the last loss was suspect: then stop as a
        divergence would, the last confirmed checkpoint and published model untouched."""
        if self.guard.suspect:
            self._discard_unconfirmed()
            raise TrainingError(
                f"the run ended on {self.guard.streak} suspect update(s) (loss above {self.guard.factor:g}x its recent "
                f"median), so its last weights were not published. "
                + kept(self.last_checkpoint)
            )
        if self.pending is not None:
            self._confirm()

    def _checkpoint(self, state: TrainState) -> None:
        accelerator = self.accelerator
        mine = torch.tensor([[self.position.epoch, self.position.offset]], device=accelerator.device)
        state.positions = [DataPosition(int(e), int(o)) for e, o in accelerator.gather(mine).tolist()]
        self.pending = (state.step, save_checkpoint(accelerator, self.output_dir, state.step, state.to_dict()))

    def _on_validation_schedule(self, step: int) -> bool:
        every = self.config.validation_steps
        return step == self.max_steps or (every is not None and step % every == 0)

    def _validation_due(self, step: int) -> bool:
        if self.validate is None:
            return False
        return self._on_validation_schedule(step)

    def _on_main_with_averaged_weights(self, callback: Callable[[int], Any], step: int) -> Any:
        """``callback(step)`` on the main process (None elsewhere), with the EMA weights in place and
        the RNG states restored afterwards, so that training goes on as if it had not run."""
        accelerator = self.accelerator
        result = None
        if accelerator.is_main_process:
            devices = [accelerator.device] if accelerator.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), self.averaged_weights():
                result = callback(step)
        accelerator.wait_for_everyone()
        return result

"""The training commands' optimizer: AdamW, with its fused kernel where that pays.

torch's AdamW has three implementations with the same update: a loop over the parameters (its
default on the CPU), ``foreach`` (one multi-tensor op per stage; its default on CUDA) and ``fused``
(one kernel for the whole update). ``training.fused_adamw`` None picks ``fused`` on CUDA and on the
CPU, where ``benchmarks/fused_adamw.py`` measured it fastest, and torch's default on other devices.
Under fp16 loss scaling it keeps torch's default: a fused optimizer takes the gradient scaler's
inf check into its kernel, so ``accelerate`` can no longer tell a skipped update from a made one,
and the LR schedule would advance on skipped updates. The implementations differ only in rounding
(parameters agree to ~1e-7 after a few updates) and save the same state, so a checkpoint resumes
under either.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .config import TrainingConfig

FUSED_BY_DEFAULT = ("cuda", "cpu")


def use_fused_adamw(setting: bool | None, device_type: str, mixed_precision: str) -> bool:
    """Whether AdamW runs fused: ``setting`` when given, else on the devices of :data:`FUSED_BY_DEFAULT`
    unless ``mixed_precision`` is "fp16" (loss scaling)."""
    if setting is not None:
        return setting
    return device_type in FUSED_BY_DEFAULT and mixed_precision != "fp16"


def build_adamw(
    params: Iterable[torch.nn.Parameter], config: TrainingConfig, device_type: str, mixed_precision: str
) -> torch.optim.AdamW:
    """AdamW over ``params`` (on a ``device_type`` device) with the config's hyperparameters, fused as
    :func:`use_fused_adamw` decides, else in torch's default implementation for the device."""
    return torch.optim.AdamW(
        params,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
        fused=use_fused_adamw(config.fused_adamw, device_type, mixed_precision) or None,
    )

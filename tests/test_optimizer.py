"""train.optimizer: AdamW fused where it pays, as configured, and the same updates either way."""

from __future__ import annotations

import copy

import pytest
import torch

from guided_diffusion.models import UNet, UNetConfig
from train.config import TrainingConfig
from train.optimizer import build_adamw, use_fused_adamw


@pytest.mark.parametrize(
    ("setting", "device_type", "mixed_precision", "fused"),
    [
        (None, "cuda", "bf16", True),
        (None, "cuda", "no", True),
        (None, "cpu", "no", True),
        (None, "cuda", "fp16", False),  # loss scaling: accelerate must see skipped updates
        (None, "mps", "no", False),  # not measured: torch's default
        (False, "cuda", "bf16", False),
        (True, "cuda", "fp16", True),
        (True, "mps", "no", True),
    ],
)
def test_fused_adamw_is_chosen_by_setting_device_and_precision(setting, device_type, mixed_precision, fused):
    assert use_fused_adamw(setting, device_type, mixed_precision) is fused


@pytest.mark.parametrize(("setting", "fused"), [(None, True), (True, True), (False, None)])
def test_the_built_optimizer_is_fused_as_configured(setting, fused):
    config = TrainingConfig(fused_adamw=setting, learning_rate=3e-4, adam_weight_decay=0.01, adam_epsilon=1e-6)
    optimizer = build_adamw(torch.nn.Linear(3, 2).parameters(), config, "cpu", "no")
    assert optimizer.defaults["fused"] is fused and not optimizer.defaults["foreach"]
    assert optimizer.defaults["lr"] == 3e-4 and optimizer.defaults["weight_decay"] == 0.01
    assert optimizer.defaults["eps"] == 1e-6 and optimizer.defaults["betas"] == (0.9, 0.999)


def test_fused_and_unfused_adamw_make_the_same_updates():
    torch.manual_seed(0)
    unet = UNet(UNetConfig(image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(4,), num_heads=2, text_dim=8))
    models = {fused: copy.deepcopy(unet) for fused in (True, False)}
    config = {fused: TrainingConfig(fused_adamw=fused, learning_rate=1e-2, adam_weight_decay=0.1) for fused in models}
    optimizers = {fused: build_adamw(models[fused].parameters(), config[fused], "cpu", "no") for fused in models}
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, t = torch.randn(2, 3, 8, 8, generator=g), torch.randint(0, 1000, (2,), generator=g)
        for fused, model in models.items():
            optimizers[fused].zero_grad()
            model(x, t).square().mean().backward()
            optimizers[fused].step()
    fused, unfused = (dict(models[f].named_parameters()) for f in (True, False))
    assert any(not torch.equal(fused[name], p) for name, p in unet.named_parameters())  # the updates moved them
    for name, p in unfused.items():
        torch.testing.assert_close(fused[name], p, rtol=0, atol=1e-6)

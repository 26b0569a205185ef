"""Our UNet against a matched diffusers ``UNet2DConditionModel`` on this machine's CPU, side by side.

    python benchmarks/unet_vs_diffusers.py [--quick] [--config configs/shapes32.yaml] [--threads N] [--profile]
    python benchmarks/unet_vs_diffusers.py --best [--compile] [--quick]

Both models are built from the ``unet`` section of the config (text width and token count from its
``text_encoder`` section) and timed in one process, interleaved round by round (the order alternating),
so that both see the same machine load; every figure is a median over rounds. Measured:

- training: forward + backward + ``AdamW`` step on a batch of 32, in images/s;
- sampling: one denoising forward under ``torch.no_grad`` with classifier-free guidance batching
  (each image twice, with and without its text), for 4 and 16 images, i.e. model batches 8 and 32, in ms;
- the FLOPs of our training step (``FlopCounterMode``) against the best fp32 2048x2048 matmul rate
  timed in the same rounds: the utilisation ``mfu_train``.

Unless ``OMP_WAIT_POLICY`` is already set, it is set to ``PASSIVE`` before torch loads OpenMP: on a
machine shared with other jobs, OpenMP's default spin-waiting makes each parallel region wait for a
descheduled thread, and timings swing by 10x (see benchmarks/README.md). The last line printed is one
JSON object. ``diffusers`` comes from the ``bench`` extra: ``pip install -e .[bench]``.

``--best`` compares each model in its best supported setting instead of both in fp32 as built: every
model is timed in every setting of ``SETTINGS`` (memory layout x autocast precision; bf16 only where
the CPU has bf16 matrix instructions; with ``--compile`` each also under ``torch.compile``), all in
the same interleaved rounds, and the speed-ups are the best setting's figure of ours against the best
of diffusers', for training and for sampling separately. Each setting's median is printed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Hashable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TRAIN_BATCH = 32
SAMPLE_IMAGES = (4, 16)  # the model sees twice as many: classifier-free guidance batching
UNCOND_TOKENS = 2  # the empty prompt: start and end tokens


@dataclass(frozen=True)
class Setting:
    """How a model runs: its weights' and inputs' memory layout, the autocast precision (None: fp32),
    and whether it runs under ``torch.compile``."""

    channels_last: bool = False
    autocast: str | None = None  # a torch dtype name: "bfloat16"
    compiled: bool = False

    @property
    def name(self) -> str:
        parts = ["channels_last" if self.channels_last else "contiguous", self.autocast or "float32"]
        return "+".join(parts + (["compiled"] if self.compiled else []))


AS_BUILT = Setting()
SETTINGS = tuple(Setting(layout, precision) for layout in (False, True) for precision in (None, "bfloat16"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: ``--config``, ``--quick``, ``--threads``, ``--profile``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "shapes32.yaml")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (under 5 minutes on a 2-core CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="print the top ops of our training step")
    parser.add_argument("--best", action="store_true", help="each model in its best setting (layout, precision)")
    parser.add_argument("--compile", action="store_true", help="with --best: also try torch.compile (minutes each)")
    args = parser.parse_args(argv)
    if args.compile and not args.best:
        parser.error("--compile needs --best")
    return args


def diffusers_config(unet: Any) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` keyword arguments matching our ``UNetConfig``.

    Same levels, widths and residual blocks per level; cross-attention blocks (self- and cross-attention,
    plus diffusers' feed-forward) at the levels whose resolution is in ``attention_resolutions`` and in
    the middle; the same text width and head count.
    """
    widths = [mult * unet.base_channels for mult in unet.channel_mult]
    attends = [unet.image_size // 2**level in unet.attention_resolutions for level in range(len(widths))]
    return {
        "sample_size": unet.image_size,
        "in_channels": unet.in_channels,
        "out_channels": unet.out_channels,
        "block_out_channels": tuple(widths),
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends),
        "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "layers_per_block": unet.num_res_blocks,
        "norm_num_groups": math.gcd(32, *widths),
        "cross_attention_dim": unet.text_dim,
        # diffusers reads `attention_head_dim` as the number of heads (a naming bug its source explains)
        "attention_head_dim": unet.num_heads,
        "dropout": unet.dropout,
    }


def build_models(config_path: Path) -> tuple[Any, Any, dict[str, Any], int]:
    """``(ours, theirs, theirs_kwargs, context_length)`` built with seed 0 from the config file."""
    import torch
    from diffusers import UNet2DConditionModel

    from guided_diffusion.config import read_yaml
    from guided_diffusion.models import UNet, UNetConfig

    config = read_yaml(config_path)
    text = config["text_encoder"]
    context_length = int(text["context_length"])
    unet_config = UNetConfig.from_dict({**config["unet"], "text_dim": int(text["width"])})
    torch.manual_seed(0)
    ours = UNet(unet_config)
    kwargs = diffusers_config(unet_config)
    torch.manual_seed(0)
    theirs = UNet2DConditionModel(**kwargs)
    return ours, theirs, kwargs, context_length


def text_inputs(batch: int, length: int, dim: int, generator: Any, uncond: int = 0) -> tuple[Any, Any]:
    """Random token features ``[B, L, D]`` and a padding mask ``[B, L]`` with 2..L real tokens per row;
    the last ``uncond`` rows get the empty prompt's 2 tokens."""
    import torch

    features = torch.randn(batch, length, dim, generator=generator)
    real = torch.randint(UNCOND_TOKENS, length + 1, (batch,), generator=generator)
    if uncond:
        real[-uncond:] = UNCOND_TOKENS
    return features, torch.arange(length)[None] < real[:, None]


def forward_fn(model: Any, is_ours: bool, setting: Setting = AS_BUILT) -> Callable[..., Any]:
    """``f(x, t, text_features, text_mask) -> eps`` for either model, run in ``setting`` (the model's
    weights are moved to its memory layout in place)."""
    import torch

    if setting.channels_last:
        model.to(memory_format=torch.channels_last)
    if is_ours:
        call = model
    else:
        def call(x: Any, t: Any, features: Any, mask: Any) -> Any:
            return model(x, t, encoder_hidden_states=features, encoder_attention_mask=mask).sample
    if setting.compiled:
        call = torch.compile(call)
    def forward(x: Any, t: Any, features: Any, mask: Any) -> Any:
        if setting.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=getattr(torch, setting.autocast)) if setting.autocast else nullcontext():
            return call(x, t, features, mask).float()

    return forward


def train_step(
    model: Any, is_ours: bool, size: int, in_channels: int, length: int, dim: int, setting: Setting = AS_BUILT
) -> Callable[[], None]:
    """One closure per model: forward + MSE to a fixed target + backward + AdamW step, batch 32."""
    import torch

    g = torch.Generator().manual_seed(1)
    x = torch.randn(TRAIN_BATCH, in_channels, size, size, generator=g)
    t = torch.randint(0, 1000, (TRAIN_BATCH,), generator=g)
    features, mask = text_inputs(TRAIN_BATCH, length, dim, g)
    target = torch.randn(x.shape, generator=g)
    forward = forward_fn(model, is_ours, setting)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        loss = torch.nn.functional.mse_loss(forward(x, t, features, mask), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def sample_step(
    model: Any,
    is_ours: bool,
    images: int,
    size: int,
    in_channels: int,
    length: int,
    dim: int,
    setting: Setting = AS_BUILT,
) -> Callable[[], None]:
    """One denoising forward for ``images`` images with classifier-free guidance batching (batch 2x)."""
    import torch

    g = torch.Generator().manual_seed(2)
    x = torch.randn(images, in_channels, size, size, generator=g).repeat(2, 1, 1, 1)
    t = torch.full((images,), 500).repeat(2)
    features, mask = text_inputs(2 * images, length, dim, g, uncond=images)
    forward = forward_fn(model, is_ours, setting)

    def step() -> None:
        with torch.no_grad():
            forward(x, t, features, mask)

    return step


def matmul_step(n: int = 2048) -> tuple[Callable[[], None], float]:
    """A ``n x n`` fp32 matmul closure and its FLOPs."""
    import torch

    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    return (lambda: torch.mm(a, b)), 2.0 * n**3


def interleaved(tasks: dict[Hashable, Callable[[], None]], rounds: int, warmup: int = 2) -> dict[Hashable, list[float]]:
    """Wall seconds of each task, ``rounds`` times, the tasks alternating within each round (order
    reversed every other round); ``warmup`` untimed calls first."""
    for fn in tasks.values():
        for _ in range(warmup):
            fn()
    times: dict[Hashable, list[float]] = {name: [] for name in tasks}
    names = list(tasks)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            tasks[name]()
            times[name].append(time.perf_counter() - start)
    return times


def count_flops(model: Any, is_ours: bool, size: int, in_channels: int, length: int, dim: int) -> tuple[int, int]:
    """FLOPs (matmul-like ops, as ``FlopCounterMode`` counts them) of one training forward + backward
    and of one forward alone, at batch 32."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator().manual_seed(1)
    x = torch.randn(TRAIN_BATCH, in_channels, size, size, generator=g)
    t = torch.randint(0, 1000, (TRAIN_BATCH,), generator=g)
    features, mask = text_inputs(TRAIN_BATCH, length, dim, g)
    forward = forward_fn(model, is_ours)
    with FlopCounterMode(display=False) as train:
        forward(x, t, features, mask).square().mean().backward()
    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as sample, torch.no_grad():
        forward(x, t, features, mask)
    return train.get_total_flops(), sample.get_total_flops()


def profile_table(step: Callable[[], None], rows: int = 20) -> str:
    """The top ops (by self CPU time) of two calls of ``step``, after one untimed call."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def supported_settings(compile_too: bool) -> tuple[Setting, ...]:
    """``SETTINGS`` less bf16 autocast where the CPU has no bf16 matrix instructions (oneDNN then
    emulates it, 4.6-20x slower than fp32 on a Zen 3; see benchmarks/README.md), each also compiled when
    ``compile_too``. Prints what it leaves out."""
    import torch

    settings = SETTINGS
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        settings = tuple(s for s in settings if s.autocast != "bfloat16")
        print(f"bf16 left out: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bf16 matrix instructions")
    return settings + tuple(Setting(s.channels_last, s.autocast, True) for s in settings if compile_too)


def best_comparison(
    models: dict[str, Any], is_ours: dict[str, bool], shape: tuple[int, int, int, int], rounds: dict[str, int],
    settings: tuple[Setting, ...],
) -> dict[str, Any]:
    """Each model in each setting (a copy per setting), all interleaved in the same rounds; returns the
    best setting per model and task, its figure, the speed-ups of ours' best against diffusers' best,
    and every setting's median (``ms``, keyed ``model/setting`` or ``model/setting@images``)."""
    train_tasks = {
        (name, setting, None): train_step(copy.deepcopy(m), is_ours[name], *shape, setting=setting)
        for name, m in models.items()
        for setting in settings
    }
    sample_tasks = {}
    for name, m in models.items():
        for setting in settings:
            model = copy.deepcopy(m).eval()  # one copy for both image counts
            for images in SAMPLE_IMAGES:
                sample_tasks[(name, setting, images)] = sample_step(model, is_ours[name], images, *shape, setting=setting)
    times = interleaved(train_tasks, rounds["train"]) | interleaved(sample_tasks, rounds["sample"])
    ms = {task: 1000 * statistics.median(seconds) for task, seconds in times.items()}

    def best(name: str, images: int | None) -> tuple[str, float]:
        setting = min(settings, key=lambda s: ms[(name, s, images)])
        return setting.name, round(ms[(name, setting, images)], 1)

    result: dict[str, Any] = {}
    for name in models:
        result[f"train_setting_{name}"], step_ms = best(name, None)
        result[f"train_img_s_{name}"] = round(TRAIN_BATCH / step_ms * 1000, 2)
        for images in SAMPLE_IMAGES:
            result[f"sample_setting_{name}_b{images}"], result[f"sample_ms_{name}_b{images}"] = best(name, images)
    result["train_speedup"] = round(result["train_img_s_ours"] / result["train_img_s_diffusers"], 3)
    for images in SAMPLE_IMAGES:
        ratio = result[f"sample_ms_diffusers_b{images}"] / result[f"sample_ms_ours_b{images}"]
        result[f"sample_speedup_b{images}"] = round(ratio, 3)
    result["ms"] = {
        f"{name}/{setting.name}" + (f"@{images}" if images else ""): round(value, 1)
        for (name, setting, images), value in ms.items()
    }
    return result


def run_conditions(load_before: float) -> dict[str, Any]:
    """The thread count and the load average before and after the timings, for the result; prints
    the load after."""
    import torch

    load_after = os.getloadavg()[0]
    print(f"load average after: {load_after:.2f}")
    return {"threads": torch.get_num_threads(), "load_avg_before_after": [round(load_before, 2), round(load_after, 2)]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; prints the configurations, then the result as the last line (JSON)."""
    args = parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP, i.e. below
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    ours, theirs, theirs_kwargs, length = build_models(args.config)
    cfg = ours.config
    shape = (cfg.image_size, cfg.in_channels, length, cfg.text_dim)
    params = {"ours": ours.num_parameters, "diffusers": sum(p.numel() for p in theirs.parameters())}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    load_before = os.getloadavg()[0]
    print(f"load average before: {load_before:.2f} on {os.cpu_count()} CPUs")
    print(f"ours ({params['ours']:,} parameters): {json.dumps(cfg.to_dict())}, context_length {length}")
    print(f"diffusers ({params['diffusers']:,} parameters): {json.dumps(theirs_kwargs)}")
    print(f"parameter counts differ by {abs(params['ours'] - params['diffusers']) / max(params.values()):.2%} of the larger")

    rounds = {"train": 5, "sample": 7} if args.quick else {"train": 12, "sample": 21}
    is_ours = {"ours": True, "diffusers": False}
    models = {"ours": ours, "diffusers": theirs}
    if args.best:
        settings = supported_settings(args.compile)
        result = best_comparison(models, is_ours, shape, rounds, settings)
        for key, value in result.pop("ms").items():
            print(f"{key:45s} {value:9.1f} ms")
        result |= run_conditions(load_before)
        print(json.dumps(result))
        return result
    matmul, matmul_flops = matmul_step()

    train = interleaved(
        {name: train_step(m, is_ours[name], *shape) for name, m in models.items()} | {"matmul": matmul},
        rounds["train"],
    )
    for m in models.values():
        m.eval()
    sample_tasks = {
        f"{name}@{images}": sample_step(m, is_ours[name], images, *shape)
        for images in SAMPLE_IMAGES
        for name, m in models.items()
    }
    sample = interleaved(sample_tasks | {"matmul": matmul}, rounds["sample"])
    flops, forward_flops = {}, {}
    for name, m in models.items():
        flops[name], forward_flops[name] = count_flops(m, is_ours[name], *shape)
    conditions = run_conditions(load_before)

    med = {name: statistics.median(times) for name, times in (train | sample).items()}
    peak = matmul_flops / min(train["matmul"] + sample["matmul"])
    train_img_s = {name: TRAIN_BATCH / med[name] for name in models}
    sample_ms = {key: 1000 * med[key] for key in sample_tasks}
    small, large = SAMPLE_IMAGES
    result = {
        "params_ours": params["ours"],
        "params_diffusers": params["diffusers"],
        "train_img_s_ours": round(train_img_s["ours"], 2),
        "train_img_s_diffusers": round(train_img_s["diffusers"], 2),
        "sample_ms_ours": round(sample_ms[f"ours@{large}"], 1),
        "sample_ms_diffusers": round(sample_ms[f"diffusers@{large}"], 1),
        "train_speedup": round(train_img_s["ours"] / train_img_s["diffusers"], 3),
        "sample_speedup": round(sample_ms[f"diffusers@{large}"] / sample_ms[f"ours@{large}"], 3),
        "mfu_train": round(flops["ours"] / med["ours"] / peak, 3),
        f"sample_ms_ours_b{small}": round(sample_ms[f"ours@{small}"], 1),
        f"sample_ms_diffusers_b{small}": round(sample_ms[f"diffusers@{small}"], 1),
        f"sample_speedup_b{small}": round(sample_ms[f"diffusers@{small}"] / sample_ms[f"ours@{small}"], 3),
        "mfu_train_diffusers": round(flops["diffusers"] / med["diffusers"] / peak, 3),
        "train_gflop_ours": round(flops["ours"] / 1e9, 2),
        "train_gflop_diffusers": round(flops["diffusers"] / 1e9, 2),
        "sample_gflop_ours": round(forward_flops["ours"] / 1e9, 2),
        "sample_gflop_diffusers": round(forward_flops["diffusers"] / 1e9, 2),
        "matmul_peak_gflops": round(peak / 1e9, 1),
    } | conditions
    if args.profile:
        print(profile_table(train_step(ours, True, *shape)))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

"""The CUDA path of a trained pipeline: training-step speed per precision, sampling speed, and agreement with the CPU.

    python benchmarks/cuda_path.py [--model shapes32] [--batch-size 256] [--rounds 20] [--adamw fused|foreach]
    python benchmarks/cuda_path.py --compile [BACKEND]     # also compiled (default backend: inductor)

Measures, on ``--device`` (default: cuda when available):

- ``train_img_s_{fp32,bf16,fp16}``: images/s of a whole training step (text encoder and UNet
  forward on Shapes32 images and captions, epsilon loss at uniform timesteps, backward, AdamW), each precision on a fresh copy of
  the weights; autocast for bf16 and fp16, with a gradient scaler for fp16. ``loss_*`` is the median
  loss, which must be finite and alike across precisions. AdamW runs as ``--adamw`` says (default
  ``fused``, what ``train.diffusion`` picks on CUDA); ``train_img_s_bf16_{foreach,fused}`` times the bf16
  step with the other implementation.
- ``sample_ms``: one call of the pipeline for 16 prompts, 50 DDIM steps, classifier-free guidance.
- With ``--compile``: ``train_img_s_bf16_compiled`` and ``sample_ms_compiled``, the same with the UNet
  compiled (``pipe.compile``), and ``compile_s_train`` / ``compile_s_sample``, the first step or call
  minus the median of the later ones, i.e. about what compiling cost.
- ``unet_err_*``: the largest absolute difference of one UNet forward (8 images, text features of
  real prompts) against the same forward in float64 on the CPU: fp32 without TF32, fp32 with TF32
  (cuDNN's and cuBLAS's reduced-precision fp32), and bf16 autocast; ``unet_out_max`` is the largest
  absolute value of that output, for scale.

Timings are medians over ``--rounds`` steps after warm-up, with the device synchronised around each.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from guided_diffusion import GuidedDiffusionPipeline
from guided_diffusion.datasets.shapes import canonical_caption, make_shapes32
from guided_diffusion.images import from_pil

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PROMPTS = [
    canonical_caption(shape, color, size, position)
    for shape, color, size, position in [
        ("circle", "red", "large", "center"),
        ("square", "blue", "small", "top left"),
        ("triangle", "green", "large", "bottom right"),
        ("circle", "yellow", "small", "right"),
    ]
]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, rounds: int, warmup: int = 3) -> list[float]:
    """Wall seconds of ``rounds`` calls of ``fn`` after ``warmup`` untimed ones, synchronised."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def first_and_timed(fn: Callable[[], object], device: torch.device, rounds: int) -> tuple[float, list[float]]:
    """Wall seconds of the first call of ``fn`` (a compiled one compiles there) and of ``rounds`` later ones."""
    first = timed(fn, device, 1, warmup=0)[0]
    return first, timed(fn, device, rounds, warmup=2)


def training_step(
    pipe: GuidedDiffusionPipeline, dtype: torch.dtype | None, batch_size: int, fused: bool
) -> Callable[[], float]:
    """A closure running one training step of ``pipe``'s UNet and text encoder (AdamW ``fused``, else
    ``foreach``); returns its loss."""
    device = pipe.device
    params = [p for module in (pipe.unet, pipe.text_encoder) for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, **({"fused": True} if fused else {"foreach": True}))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    generator = torch.Generator(device=device).manual_seed(0)
    data = make_shapes32(batch_size, seed=0)
    x0 = from_pil(data["image"]).to(device)
    captions = data["text"]
    pipe.unet.train()
    pipe.text_encoder.train()

    def step() -> float:
        t = torch.randint(0, pipe.diffusion.num_timesteps, (batch_size,), device=device, generator=generator)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            features, mask = pipe.text_encoder.encode(captions)
            kwargs = {"text_features": features, "text_mask": mask}
            loss = pipe.diffusion.training_losses(pipe.unet, x0, t, kwargs)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.item()

    return step


def unet_errors(model: str, device: torch.device) -> dict[str, float]:
    """Largest deviation of one UNet forward on ``device`` from the float64 CPU forward."""
    pipe = GuidedDiffusionPipeline.from_pretrained(model)
    generator = torch.Generator().manual_seed(1)
    size = pipe.unet.config.image_size
    x = torch.randn(8, 3, size, size, generator=generator, dtype=torch.float64)
    t = torch.randint(0, pipe.diffusion.num_timesteps, (8,), generator=generator)
    with torch.no_grad():
        features, mask = pipe.text_encoder.encode([PROMPTS[i % len(PROMPTS)] for i in range(8)])
        unet = pipe.unet.eval()
        reference = unet.double()(x, t, text_features=features.double(), text_mask=mask)
        unet = unet.float().to(device)
        inputs = (x.float().to(device), t.to(device))
        kwargs = {"text_features": features.float().to(device), "text_mask": mask.to(device)}
        errors = {"unet_out_max": reference.abs().max().item()}
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        try:
            for name, allow in (("fp32", False), ("tf32", True)):
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
                out = unet(*inputs, **kwargs).double().cpu()
                errors[f"unet_err_{name}"] = (out - reference).abs().max().item()
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = unet(*inputs, **kwargs).double().cpu()
        errors["unet_err_bf16"] = (out - reference).abs().max().item()
    return errors


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes32", help="a pipeline folder or a shipped model name")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--adamw", choices=("fused", "foreach"), default="fused", help="AdamW of the training steps")
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="also time the bf16 step and the pipeline call with the UNet compiled")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    result: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "adamw": args.adamw,
    }
    other = "foreach" if args.adamw == "fused" else "fused"
    variants = [(name, dtype, args.adamw, False) for name, dtype in PRECISIONS.items()]
    variants.append((f"bf16_{other}", torch.bfloat16, other, False))
    if args.compile:
        variants.append(("bf16_compiled", torch.bfloat16, args.adamw, True))
    for name, dtype, adamw, compiled in variants:
        pipe = GuidedDiffusionPipeline.from_pretrained(args.model, device=device)
        if compiled:
            pipe.compile(backend=args.compile)
        step = training_step(pipe, dtype, args.batch_size, fused=adamw == "fused")
        losses: list[float] = []
        first, times = first_and_timed(lambda: losses.append(step()), device, args.rounds)
        result[f"train_img_s_{name}"] = round(args.batch_size / statistics.median(times), 1)
        result[f"loss_{name}"] = round(statistics.median(losses), 5)
        if compiled:
            result["compile_s_train"] = round(first - statistics.median(times), 1)

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(16)]
    for suffix in ("", "_compiled") if args.compile else ("",):
        pipe = GuidedDiffusionPipeline.from_pretrained(args.model, device=device)
        if suffix:
            pipe.compile(backend=args.compile)
        first, times = first_and_timed(
            lambda: pipe(prompts, sampler="ddim", num_inference_steps=50, seed=0, output_type="pt"), device, 5
        )
        result[f"sample_ms{suffix}"] = round(1000 * statistics.median(times), 1)
        if suffix:
            result["compile_s_sample"] = round(first - statistics.median(times), 1)
    result.update({k: float(f"{v:.3g}") for k, v in unet_errors(args.model, device).items()})
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

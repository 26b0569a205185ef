"""AdamW's three implementations side by side on the parameters train.diffusion optimises for shapes32.

    python benchmarks/fused_adamw.py [--config configs/shapes32.yaml] [--rounds 15] [--steps 20] [--device D]
    python benchmarks/fused_adamw.py --unet-only      # the UNet's parameters alone

The parameters are those of the run's trained module: the UNet and, when the config trains it, the
text encoder (``--unet-only``: the UNet alone). Each implementation gets its own copy of them, fixed
random gradients, and the hyperparameters ``train/optimizer.py`` would use (the config's ``training``
section): ``loop`` (``foreach=False``, torch's default on the CPU), ``foreach`` (``foreach=True``,
torch's default on CUDA) and ``fused`` (``fused=True``). The rounds interleave them, in alternating
order, each round timing ``--steps`` optimizer steps per implementation; the figures are medians in ms
per step. ``max_abs_diff_*`` is the largest difference of the parameters from ``loop``'s after all the
steps, for scale against ``param_abs_max``. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from guided_diffusion import GuidedDiffusionPipeline  # noqa: E402
from guided_diffusion.config import read_yaml  # noqa: E402

from samplers import cpu_name  # noqa: E402  (benchmarks/samplers.py)

IMPLEMENTATIONS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes32.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per implementation per round")
    parser.add_argument("--unet-only", action="store_true", help="the UNet's parameters, without the text encoder's")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    config = read_yaml(args.config)
    training = config.get("training") or {}

    torch.manual_seed(0)
    pipe = GuidedDiffusionPipeline.from_config(config).to(device)
    modules = [pipe.unet, *([pipe.text_encoder] if pipe.text_encoder.trainable and not args.unet_only else [])]
    reference = [p.detach().clone() for m in modules for p in m.parameters() if p.requires_grad]
    grads = [torch.randn_like(p) * 1e-2 for p in reference]
    hyper = {  # train.config.TrainingConfig's defaults where the config has no value
        "lr": float(training.get("learning_rate", 1e-4)),
        "betas": (float(training.get("adam_beta1", 0.9)), float(training.get("adam_beta2", 0.999))),
        "weight_decay": float(training.get("adam_weight_decay", 0.0)),
        "eps": float(training.get("adam_epsilon", 1e-8)),
    }
    params, optimizers = {}, {}
    for name, options in IMPLEMENTATIONS.items():
        params[name] = [torch.nn.Parameter(p.clone()) for p in reference]
        for p, g in zip(params[name], grads, strict=True):
            p.grad = g.clone()
        optimizers[name] = torch.optim.AdamW(params[name], **hyper, **options)
        optimizers[name].step()  # warm-up, and the state tensors allocated

    times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    load_before = os.getloadavg()[0]
    for r in range(args.rounds):
        for name in list(IMPLEMENTATIONS) if r % 2 == 0 else list(reversed(IMPLEMENTATIONS)):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            for _ in range(args.steps):
                optimizers[name].step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append((time.perf_counter() - started) / args.steps)

    result: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in reference),
        "tensors": len(reference),
    }
    for name in IMPLEMENTATIONS:
        result[f"ms_{name}"] = round(1000 * statistics.median(times[name]), 2)
    for name in ("foreach", "fused"):
        result[f"{name}_speedup"] = round(result["ms_loop"] / result[f"ms_{name}"], 2)
        diff = max((a - b).abs().max().item() for a, b in zip(params[name], params["loop"], strict=True))
        result[f"max_abs_diff_{name}"] = float(f"{diff:.3g}")
    result["param_abs_max"] = float(f"{max(p.abs().max().item() for p in params['loop']):.3g}")
    result["load_avg_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

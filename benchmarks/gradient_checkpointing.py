"""Memory and time of a UNet training step with and without gradient checkpointing, side by side.

    python benchmarks/gradient_checkpointing.py [--config configs/shapes32.yaml] [--batch-size 64] [--rounds 5]

One forward + backward of the config's UNet (random weights, random text features of the config's
text width, 24 tokens) on a batch of random images. Peak memory: on CUDA, the peak allocated by torch
during the step; on the CPU, the peak resident set of a fresh process during its first step minus
its resident set just before (each variant runs in its own process, so one's freed pages do not hide
the other's). Time: the median of ``--rounds`` steps after that one. The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from guided_diffusion.models import UNet, UNetConfig  # noqa: E402
from guided_diffusion.config import read_yaml  # noqa: E402


def resident_bytes() -> int:
    """This process's resident set now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(
    config_path: str, batch_size: int, rounds: int, checkpointing: bool, device: torch.device
) -> dict[str, float]:
    """Peak extra memory (MiB) of the first training step and the median seconds of later ones."""
    config = read_yaml(config_path)
    text_dim = int(config["text_encoder"].get("width", 512))
    torch.manual_seed(0)
    unet = UNet(UNetConfig.from_dict({"text_dim": text_dim, **config["unet"]})).to(device).train()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    size = unet.config.image_size
    x = torch.randn(batch_size, unet.config.in_channels, size, size, device=device)
    t = torch.randint(0, 1000, (batch_size,), device=device)
    features = torch.randn(batch_size, 24, text_dim, device=device)

    def step() -> None:
        unet.zero_grad(set_to_none=True)
        unet(x, t, features).square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        before = resident_bytes()
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return {"peak_mib": round(peak / 2**20, 1), "step_s": round(statistics.median(times), 3)}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes32.yaml")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variant", choices=("on", "off"), help=argparse.SUPPRESS)  # one measurement, in a child
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.variant is not None:
        print(json.dumps(measure(args.config, args.batch_size, args.rounds, args.variant == "on", device)))
        return {}

    result: dict[str, object] = {"config": args.config, "batch_size": args.batch_size, "device": str(device)}
    for variant in ("off", "on"):
        child = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--variant", variant]
        line = subprocess.run(child, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        result.update({f"{key}_{variant}": value for key, value in json.loads(line).items()})
    result["memory_saved"] = round(1 - result["peak_mib_on"] / result["peak_mib_off"], 3)
    result["time_ratio"] = round(result["step_s_on"] / result["step_s_off"], 2)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

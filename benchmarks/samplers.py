"""Prompt adherence against model evaluations for sampler x timestep-schedule pairs on a trained Shapes32
model, and the demo call's latency against the historical ddpm-25 call, side by side in one process.

    python benchmarks/samplers.py --model shapes32 --out docs/samplers
    python benchmarks/samplers.py --samplers dpm++:karras dpm++3m:log_snr --nfe 5 10 20 --num-prompts 96
    python benchmarks/samplers.py --latency-only --rounds 9

Quality is the share of samples with all four attributes right for canonical prompts of seen
colour-shape pairs (the measure of the default-model evaluation, ``guided_diffusion.evaluate``). Each
entry of ``--samplers`` is ``SAMPLER[:SCHEDULE]``; a sampler gets the most steps whose model evaluations
fit each ``--nfe`` budget. The latency part times ``pipe(prompt, num_images_per_prompt=4)`` with the
model's own sampling config against the same call with ``sampler="ddpm", num_inference_steps=25,
timestep_schedule="uniform"``, the rounds interleaved, and reports the medians and their ratio.
Writes ``samplers.md``, ``samplers.json`` and ``samplers.png`` into ``--out``; the last line printed is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from guided_diffusion import GuidedDiffusionPipeline
from guided_diffusion.evaluate import plot_samplers, sampler_table
from guided_diffusion.evaluation.report import percent
from guided_diffusion.evaluation.sampling import EvalSampling

BASELINE = {"sampler": "ddpm", "num_inference_steps": 25, "timestep_schedule": "uniform"}
DEFAULT_SPECS = ["ddim:uniform", "ddpm:uniform", "dpm++:uniform", "dpm++:karras", "dpm++:log_snr", "dpm++3m:log_snr", "heun:karras"]


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo where there is one, else the machine type."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def latency(pipe: GuidedDiffusionPipeline, prompt: str, rounds: int) -> dict[str, Any]:
    """Median seconds of the 4-image call with the model's sampling config and with :data:`BASELINE`,
    timed in alternating order over ``rounds`` rounds after one warm-up call each."""
    calls = {"default": {}, "ddpm-25": BASELINE}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for name, kwargs in calls.items():
        pipe(prompt, num_images_per_prompt=4, seed=0, **kwargs)
    for r in range(rounds):
        for name in (list(calls) if r % 2 == 0 else list(reversed(calls))):
            started = time.perf_counter()
            pipe(prompt, num_images_per_prompt=4, seed=r, **calls[name])
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "default_call": {k: getattr(pipe.sampling_config, k) for k in ("sampler", "timestep_schedule", "steps")},
        "seconds_default": round(medians["default"], 4),
        "seconds_ddpm25": round(medians["ddpm-25"], 4),
        "ratio": round(medians["default"] / medians["ddpm-25"], 3),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes32")
    parser.add_argument("--out", type=Path, default=Path("docs/samplers"))
    parser.add_argument("--samplers", nargs="*", default=DEFAULT_SPECS, metavar="SAMPLER[:SCHEDULE]")
    parser.add_argument("--nfe", type=int, nargs="*", default=[5, 10, 20])
    parser.add_argument("--num-prompts", type=int, default=96, help="canonical prompts (one image each) per cell")
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=7, help="latency rounds")
    parser.add_argument("--latency-only", action="store_true")
    args = parser.parse_args()

    pipe = GuidedDiffusionPipeline.from_pretrained(args.model, device="cuda" if torch.cuda.is_available() else "cpu")
    scale = pipe.sampling_config.guidance_scale if args.guidance_scale is None else args.guidance_scale
    result: dict[str, Any] = {"model": args.model, "cpu": cpu_name(), "threads": torch.get_num_threads()}
    result["latency"] = latency(pipe, pipe.example_prompts[0], args.rounds)
    print(json.dumps(result["latency"]))
    if not args.latency_only:
        sampling = EvalSampling.of(pipe, guidance_scale=scale, batch_size=args.batch_size, seed=args.seed)
        rows = sampler_table(pipe, samplers=args.samplers, nfe=args.nfe, num_prompts=args.num_prompts, images_per_prompt=1, sampling=sampling)
        result["adherence"] = rows
        lines = [
            f"Prompt adherence against model evaluations: `{args.model}`, guidance scale {scale}, {args.num_prompts} "
            "canonical prompts (seen pairs, one image each) per cell.",
            "",
            "| sampler | schedule | steps | NFE | all four | shape | color | size | position | seconds |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['sampler']} | {r['timestep_schedule']} | {r['steps']} | {r['nfe']} | {percent(r['all'])} | "
                f"{percent(r['shape'])} | {percent(r['color'])} | {percent(r['size'])} | {percent(r['position'])} | {r['seconds']:.0f} |"
            )
        lat = result["latency"]
        lines += [
            "",
            f"Latency of the demo's 4-image call ({lat['rounds']} interleaved rounds, medians): the model's default "
            f"({lat['default_call']}) {lat['seconds_default']:.3f} s, ddpm-25 {lat['seconds_ddpm25']:.3f} s, ratio {lat['ratio']:.3f}.",
            "",
            "![quality against model evaluations](samplers.png)",
        ]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "samplers.md").write_text("\n".join(lines) + "\n")
        (args.out / "samplers.json").write_text(json.dumps(result, indent=2) + "\n")
        plot_samplers(rows, args.out / "samplers.png")
        print("\n".join(lines))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

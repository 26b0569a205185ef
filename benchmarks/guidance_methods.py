"""Fidelity against diversity for each guidance method on a Shapes32 model, side by side in one run.

    python benchmarks/guidance_methods.py --model shapes32 --weak outputs/shapes32_weak --out docs/guidance

Prompts name a colour and a shape only ("a red circle"), for every seen colour-shape pair (and, with
``--held-out``, the held-out pairs). Fidelity is the share of images whose colour and shape match
(read back from the pixels by :func:`guided_diffusion.datasets.shapes.describe`); diversity is the
normalised entropy of the attributes the prompt leaves free (size and position, averaged; 1 is
uniform). Methods, each across ``--scales``:

- ``cfg``: classifier-free guidance at scale w;
- ``cads``: the same with condition annealing (the paper's tau1 0.6, tau2 0.9, s 0.25, psi 1);
- ``autoguidance``: w mixes the model with ``--weak`` (a weaker model of the same kind) on the same prompt;
- ``classifier``: the empty prompt, guided to the colour and shape by the model's classifier at
  ``--classifier-scales``;
- ``clip``: the empty prompt, guided by the model's noise-aware CLIP (or ``--clip``, a folder written
  by ``train.clip``) towards "a <colour> <shape>" at ``--clip-scales``;
- ``clip-negatives``: the same, and away from every other colour-shape caption
  (``clip_guidance_negative_prompt``: the CLIP read as a zero-shot classifier over the 18 captions);

and each of them again with a guidance interval (``+interval``): by default the timesteps whose noise
level sigma = sqrt((1 - alpha_bar) / alpha_bar) lies in (0.28, 5.42], the interval Kynkaenniemi et al.
(2024) found best for EDM2. Every image of a prompt is drawn with the same seeds in every row.
``--methods`` and ``--intervals`` pick the rows; ``--sampler``, ``--steps`` and ``--timestep-schedule``
replace the model's sampling settings (classifier and CLIP guidance want ancestral sampling:
``--sampler ddpm --steps 50 --timestep-schedule uniform``). Writes
``guidance_methods.md``, ``.json`` and ``.png`` into ``--out``; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from guided_diffusion import GuidedDiffusionPipeline  # noqa: E402
from guided_diffusion.datasets.shapes import COLORS, HELDOUT_PAIRS, POSITIONS, SHAPES, SIZES, describe_batch  # noqa: E402
from guided_diffusion.evaluation.diversity import normalized_entropy  # noqa: E402
from guided_diffusion.models.clip import NoiseAwareCLIP  # noqa: E402

PAPER_SIGMAS = (0.28, 5.42)
METHODS = ("cfg", "cads", "autoguidance", "classifier", "clip", "clip-negatives")


def sigma_interval(pipe: GuidedDiffusionPipeline, low: float, high: float) -> tuple[int, int]:
    """The timesteps ``(t_low, t_high)`` whose sigma lies in ``(low, high]``."""
    alpha_bar = torch.as_tensor(pipe.diffusion.alphas_cumprod, dtype=torch.float64)
    sigmas = ((1 - alpha_bar) / alpha_bar).sqrt()
    inside = torch.nonzero((sigmas > low) & (sigmas <= high)).flatten()
    return int(inside.min()), int(inside.max())


def pairs(held_out: bool) -> list[tuple[str, str]]:
    held = set(HELDOUT_PAIRS)
    return [(c, s) for c in COLORS for s in SHAPES if ((c, s) in held) == held_out]


def measure(pipe: GuidedDiffusionPipeline, targets: Sequence[tuple[str, str]], per_pair: int, seed: int, **call: Any) -> dict[str, float]:
    """Fidelity and diversity of ``per_pair`` images for each (colour, shape) of ``targets``: prompted
    with "a <colour> <shape>", or, for classifier and CLIP guidance, with the empty prompt and guided there."""
    hits, colours, shapes, entropies = [], [], [], {"size": [], "position": []}
    for i, (color, shape) in enumerate(targets):
        text = f"a {color} {shape}"
        if call.get("classifier_scale"):
            prompt, extra = "", {"classifier_labels": {"color": color, "shape": shape}}
        elif call.get("clip_guidance_scale"):
            prompt, extra = "", {"clip_guidance_prompt": text}
        else:
            prompt, extra = text, {}
        images = pipe(prompt, num_images_per_prompt=per_pair, seed=seed + i, **extra, **call).images
        found = describe_batch(images)
        right_colour, right_shape = [f["color"] == color for f in found], [f["shape"] == shape for f in found]
        colours += right_colour
        shapes += right_shape
        hits += [c and s for c, s in zip(right_colour, right_shape)]
        entropies["size"].append(normalized_entropy([f["size"] for f in found], SIZES))
        entropies["position"].append(normalized_entropy([f["position"] for f in found], POSITIONS))
    return {
        "fidelity": float(np.mean(hits)),
        "colour": float(np.mean(colours)),
        "shape": float(np.mean(shapes)),
        "entropy_size": float(np.mean(entropies["size"])),
        "entropy_position": float(np.mean(entropies["position"])),
        "diversity": float(np.mean(entropies["size"] + entropies["position"])),
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        ax.plot([r["diversity"] for r in mine], [r["fidelity"] for r in mine], "--" if "interval" in method else "-", marker="o", label=method)
        for r in mine:
            ax.annotate(f"{r['scale']:g}", (r["diversity"], r["fidelity"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("diversity: normalised entropy of size and position")
    ax.set_ylabel("fidelity: colour and shape right")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Guidance methods on {report['model']}",
        "",
        f"{report['images']} images a row ({report['per_pair']} for each of {report['num_pairs']} {report['pairs']} colour-shape pairs), "
        f"{report['sampling']}; interval t in [{report['interval'][0]}, {report['interval'][1]}]; "
        f"{report['seconds']:.0f} s on {report['machine']}.",
        "",
        "| method | scale | fidelity (colour and shape) | colour | shape | diversity | size entropy | position entropy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['method']} | {r['scale']:g} | {100 * r['fidelity']:.1f}% | {100 * r['colour']:.1f}% | {100 * r['shape']:.1f}% | {r['diversity']:.3f} | {r['entropy_size']:.3f} | {r['entropy_position']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes32")
    parser.add_argument("--weak", default=None, help="the autoguidance guide: a pipeline folder (none: no autoguidance rows)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0, 8.0])
    parser.add_argument("--classifier-scales", type=float, nargs="+", default=[2.0, 5.0, 10.0, 20.0])
    parser.add_argument("--clip", default=None, help="a noise-aware CLIP folder (train.clip's output_dir/clip) to guide with")
    parser.add_argument("--clip-scales", type=float, nargs="+", default=[5.0, 10.0, 20.0, 40.0])
    parser.add_argument("--interval", type=int, nargs=2, default=None, metavar=("T_LOW", "T_HIGH"),
                        help="the guidance interval (default: sigma in (0.28, 5.42])")
    parser.add_argument("--per-pair", type=int, default=8, help="images per colour-shape pair")
    parser.add_argument("--held-out", action="store_true", help="the held-out colour-shape pairs instead of the seen ones")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="the methods to measure (those the model has the parts for)")
    parser.add_argument("--intervals", choices=("both", "off", "on"), default="both",
                        help="each method without its interval, with it, or both")
    parser.add_argument("--sampler", default=None, help="the sampler (default: the model's)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--timestep-schedule", default=None, help="the timestep schedule (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/guidance"))
    args = parser.parse_args()

    started = time.perf_counter()
    pipe = GuidedDiffusionPipeline.from_pretrained(args.model)
    weak = GuidedDiffusionPipeline.from_pretrained(args.weak) if args.weak else None
    if args.clip:
        pipe.clip = NoiseAwareCLIP.from_pretrained(args.clip).eval()
    interval = tuple(args.interval) if args.interval else sigma_interval(pipe, *PAPER_SIGMAS)
    targets = pairs(args.held_out)
    defaults = pipe.sampling_config
    sampling = {  # every row's sampler settings: the flags, else the model's
        "sampler": defaults.sampler if args.sampler is None else args.sampler,
        "num_inference_steps": defaults.steps if args.steps is None else args.steps,
        "timestep_schedule": defaults.timestep_schedule if args.timestep_schedule is None else args.timestep_schedule,
    }
    methods: dict[str, tuple[list[float], dict[str, Any]]] = {
        "cfg": (args.scales, {}),
        "cads": (args.scales, {"cads": True}),
    }
    if weak is not None:
        methods["autoguidance"] = (args.scales, {"autoguidance": weak})
    if pipe.classifier is not None:
        methods["classifier"] = (args.classifier_scales, {})
    if pipe.clip is not None:
        methods["clip"] = (args.clip_scales, {})
        methods["clip-negatives"] = (args.clip_scales, {"clip_guidance_negative_prompt": [f"a {c} {s}" for c in COLORS for s in SHAPES]})
    methods = {name: settings for name, settings in methods.items() if name in args.methods}
    intervals = {"both": (False, True), "off": (False,), "on": (True,)}[args.intervals]
    rows = []
    for name, (scales, extra) in methods.items():
        for with_interval in intervals:
            for scale in scales:
                if name == "classifier":
                    call = {"classifier_scale": scale, **({"classifier_interval": interval} if with_interval else {})}
                elif name.startswith("clip"):
                    call = {"clip_guidance_scale": scale, **extra, **({"clip_guidance_interval": interval} if with_interval else {})}
                else:
                    call = {"guidance_scale": scale, **extra, **({"guidance_interval": interval} if with_interval else {})}
                row = {"method": name + ("+interval" if with_interval else ""), "scale": scale}
                row.update(measure(pipe, targets, args.per_pair, args.seed, **sampling, **call))
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = {
        "model": args.model,
        "weak": Path(args.weak).name if args.weak else None,
        "pairs": "held-out" if args.held_out else "seen",
        "num_pairs": len(targets),
        "per_pair": args.per_pair,
        "images": len(targets) * args.per_pair,
        "interval": list(interval),
        "sampling": f"{sampling['sampler']}, {sampling['num_inference_steps']} steps, {sampling['timestep_schedule']} schedule",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "guidance_methods.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "guidance_methods.md").write_text(markdown(report))
    plot(rows, args.out / "guidance_methods.png")
    print(markdown(report))
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))


if __name__ == "__main__":
    main()

"""Quality against steps for the ddpm, ddim and dpm++ samplers on a trained Shapes32 model.

    python benchmarks/samplers.py --model shapes32 --out docs/samplers [--quick]
    python benchmarks/samplers.py --steps 5 10 20 50 100 --reference-steps 1000   # on a CPU

``--reference-steps`` runs only the ancestral sampler (ddpm) at those step counts: the 1000-step
reference costs as much as every other cell together, which on a CPU is what makes the table slow.

Quality is the share of samples with all four attributes right for canonical prompts of seen
colour-shape pairs (the measure of the default-model evaluation, ``guided_diffusion.evaluate``).
Writes ``samplers.md``, ``samplers.json`` and ``samplers.png`` into ``--out``; the last line printed
is the table as JSON. Target: dpm++ at 20 steps within 2 points of ancestral DDPM at 1000 steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from guided_diffusion import GuidedDiffusionPipeline
from guided_diffusion.evaluate import Sampling, plot_samplers, sampler_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes32")
    parser.add_argument("--out", type=Path, default=Path("docs/samplers"))
    parser.add_argument("--samplers", nargs="*", default=["ddpm", "ddim", "dpm++"])
    parser.add_argument("--steps", type=int, nargs="*", default=[5, 10, 20, 50, 100, 1000])
    parser.add_argument("--reference-steps", type=int, nargs="*", default=[], help="more step counts, for ddpm only")
    parser.add_argument("--num-prompts", type=int, default=96, help="canonical prompts (one image each) per cell")
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="32 prompts and at most 100 steps")
    args = parser.parse_args()
    if args.quick:
        args.num_prompts, args.steps = 32, [s for s in args.steps if s <= 100]

    pipe = GuidedDiffusionPipeline.from_pretrained(args.model, device="cuda" if torch.cuda.is_available() else "cpu")
    scale = pipe.sampling_config["guidance_scale"] if args.guidance_scale is None else args.guidance_scale
    sampling = Sampling(guidance_scale=scale, batch_size=args.batch_size, seed=args.seed)
    rows = []
    for samplers, steps in ((args.samplers, args.steps), (["ddpm"], args.reference_steps)):
        rows += sampler_table(
            pipe, samplers=samplers, steps=steps, num_prompts=args.num_prompts, images_per_prompt=1, sampling=sampling
        )
    order = {name: i for i, name in enumerate(dict.fromkeys([*args.samplers, "ddpm"]))}
    rows.sort(key=lambda r: (order[r["sampler"]], r["steps"]))
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"Quality against steps: `{args.model}`, guidance scale {scale}, {args.num_prompts} canonical prompts (seen pairs) per cell.",
        "",
        "| sampler | steps | all four | shape | color | size | position | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sampler']} | {r['steps']} | {100 * r['all']:.1f}% | {100 * r['shape']:.1f}% | {100 * r['color']:.1f}% | "
            f"{100 * r['size']:.1f}% | {100 * r['position']:.1f}% | {r['seconds']:.0f} |"
        )
    table = "\n".join(lines) + "\n\n![quality against steps](samplers.png)\n"
    (args.out / "samplers.md").write_text(table)
    (args.out / "samplers.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot_samplers(rows, args.out / "samplers.png")
    print(table)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

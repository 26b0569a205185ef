"""Fidelity against diversity for each guidance method on a Shapes32 or an emoji model, side by side in one run.

    python benchmarks/guidance_methods.py --model shapes32 --weak outputs/shapes32_weak --out docs/guidance
    python benchmarks/guidance_methods.py --model emoji32 --weak outputs/emoji32_weak --out docs/guidance/emoji32

What is asked and how it is read depends on the model's data (benchmarks/guidance_tasks.py). Shapes32:
prompts name a colour and a shape only ("a red circle"), for every seen colour-shape pair (and, with
``--held-out``, the held-out pairs); fidelity is the share of images whose colour and shape match (read
back from the pixels by :func:`guided_diffusion.datasets.shapes.describe`); diversity is the normalised
entropy of the attributes the prompt leaves free (size and position, averaged; 1 is uniform). An emoji
model (a folder with ``training_data.json``): the canonical caption "<name>, <style> style" of
``--pairs`` seen (or held-out) pairs; fidelity is the nearest real picture being the asked emoji in the
asked style; the caption leaves nothing free, so diversity is the spread of each prompt's images (their
mean distance over that between two real emoji). Methods, each across ``--scales``:

- ``cfg``: classifier-free guidance at scale w;
- ``cads``: the same with condition annealing (the paper's tau1 0.6, tau2 0.9, s 0.25, psi 1);
- ``autoguidance``: w mixes the model with ``--weak`` (a weaker model of the same kind) on the same prompt;
- ``classifier``: the empty prompt, guided by the model's classifier at ``--classifier-scales`` (to the
  colour and shape; to an emoji's style and category);
- ``clip``: the empty prompt, guided by the model's noise-aware CLIP (or ``--clip``, a folder written
  by ``train.clip``) towards the caption at ``--clip-scales``;
- ``classifier-x0`` and ``clip-x0``: the same two reading the model's x_0 estimate instead of x_t
  (``guidance_reads="x0"``: the gradient through the model, one backward more a step);
- ``clip-negatives``: the same, and away from every other caption of the kind
  (``clip_guidance_negative_prompt``: the CLIP read as a zero-shot classifier over them);
- ``cfg-clip`` and ``cfg-clip-negatives``: the caption as the prompt, with the model's classifier-free
  guidance scale, plus CLIP guidance towards the prompt (and away from the other captions);

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
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from guidance_tasks import EmojiTask, ShapesTask  # noqa: E402

from guided_diffusion import GuidedDiffusionPipeline  # noqa: E402
from guided_diffusion.evaluation.report import percent  # noqa: E402
from guided_diffusion.models.clip import NoiseAwareCLIP  # noqa: E402
from guided_diffusion.serialization import TRAINING_DATA_NAME  # noqa: E402

PAPER_SIGMAS = (0.28, 5.42)
DIVERSITIES = ("diversity", "entropy_size", "entropy_position")  # printed as numbers, the other scores as shares
METHODS = (
    "cfg", "cads", "autoguidance", "classifier", "classifier-x0", "clip", "clip-x0", "clip-negatives", "cfg-clip",
    "cfg-clip-negatives",
)


def sigma_interval(pipe: GuidedDiffusionPipeline, low: float, high: float) -> tuple[int, int]:
    """The timesteps ``(t_low, t_high)`` whose sigma lies in ``(low, high]``."""
    alpha_bar = torch.as_tensor(pipe.diffusion.alphas_cumprod, dtype=torch.float64)
    sigmas = ((1 - alpha_bar) / alpha_bar).sqrt()
    inside = torch.nonzero((sigmas > low) & (sigmas <= high)).flatten()
    return int(inside.min()), int(inside.max())


def measure(pipe: GuidedDiffusionPipeline, task: ShapesTask | EmojiTask, per_pair: int, seed: int, guide: str, from_empty: bool, **call: Any) -> dict[str, float]:
    """The task's scores of ``per_pair`` images for each of its targets (means over the targets): prompted
    with the target's caption, or, ``from_empty``, with the empty prompt and guided there by the
    classifier (``guide`` "classifier": to the target's labels) or the CLIP (to its caption)."""
    scores = []
    for i, target in enumerate(task.targets):
        if not from_empty:
            prompt, extra = task.caption(target), {}  # CLIP guidance, if any, towards the prompt
        elif guide == "classifier":
            prompt, extra = "", {"classifier_labels": task.classifier_labels(target)}
        else:
            prompt, extra = "", {"clip_guidance_prompt": task.caption(target)}
        images = pipe(prompt, num_images_per_prompt=per_pair, seed=seed + i, **extra, **call).images
        scores.append(task.score(images, target))
    return {key: float(np.mean([score[key] for score in scores])) for key in scores[0]}


def plot(rows: list[dict[str, Any]], axes: tuple[str, str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = plt.get_cmap("tab20").colors  # one colour a method: more methods than the default cycle's 10
    for i, method in enumerate(methods):
        mine = [r for r in rows if r["method"] == method]
        ax.plot([r["diversity"] for r in mine], [r["fidelity"] for r in mine], "--" if "interval" in method else "-",
                marker="o", color=colours[i % len(colours)], label=method)
        for r in mine:
            ax.annotate(f"{r['scale']:g}", (r["diversity"], r["fidelity"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    columns = report["columns"]
    lines = [
        f"# Guidance methods on {report['model']}",
        "",
        f"{report['images']} images a row ({report['per_pair']} for each of {report['num_pairs']} {report['pairs']} {report['kind']}), "
        f"{report['sampling']}; interval t in [{report['interval'][0]}, {report['interval'][1]}]; "
        f"{report['seconds']:.0f} s on {report['machine']}.",
        "",
        "| method | scale | " + " | ".join(columns.values()) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for r in report["rows"]:
        cells = [percent(r[key]) if key not in DIVERSITIES else f"{r[key]:.3f}" for key in columns]
        lines.append(f"| {r['method']} | {r['scale']:g} | " + " | ".join(cells) + " |")
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
    parser.add_argument("--per-pair", type=int, default=8, help="images per pair (prompt)")
    parser.add_argument("--held-out", action="store_true", help="the held-out pairs instead of the seen ones")
    parser.add_argument("--pairs", type=int, default=24, help="an emoji model: how many pairs to draw (with --seed)")
    parser.add_argument("--emoji-root", default=None, help="an emoji model: where gd-data fetch emoji put the packages")
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
    if pipe.folder is not None and (pipe.folder / TRAINING_DATA_NAME).is_file():
        task: ShapesTask | EmojiTask = EmojiTask(pipe, args.held_out, args.pairs, args.seed, args.emoji_root)
    else:
        task = ShapesTask(args.held_out)
    defaults = pipe.sampling_config
    sampling = {  # every row's sampler settings: the flags, else the model's
        "sampler": defaults.sampler if args.sampler is None else args.sampler,
        "num_inference_steps": defaults.steps if args.steps is None else args.steps,
        "timestep_schedule": defaults.timestep_schedule if args.timestep_schedule is None else args.timestep_schedule,
    }
    # name: (scales, the guide whose <guide>_scale and <guide>_interval the row sets, from the empty prompt?, more arguments)
    methods: dict[str, tuple[list[float], str, bool, dict[str, Any]]] = {
        "cfg": (args.scales, "guidance", False, {}),
        "cads": (args.scales, "guidance", False, {"cads": True}),
    }
    if weak is not None:
        methods["autoguidance"] = (args.scales, "guidance", False, {"autoguidance": weak})
    if pipe.classifier is not None:
        methods["classifier"] = (args.classifier_scales, "classifier", True, {})
        methods["classifier-x0"] = (args.classifier_scales, "classifier", True, {"guidance_reads": "x0"})
    if pipe.clip is not None:
        negatives = {"clip_guidance_negative_prompt": task.negatives}
        methods["clip"] = (args.clip_scales, "clip_guidance", True, {})
        methods["clip-x0"] = (args.clip_scales, "clip_guidance", True, {"guidance_reads": "x0"})
        methods["clip-negatives"] = (args.clip_scales, "clip_guidance", True, negatives)
        methods["cfg-clip"] = (args.clip_scales, "clip_guidance", False, {})
        methods["cfg-clip-negatives"] = (args.clip_scales, "clip_guidance", False, negatives)
    methods = {name: settings for name, settings in methods.items() if name in args.methods}
    intervals = {"both": (False, True), "off": (False,), "on": (True,)}[args.intervals]
    rows = []
    for name, (scales, guide, from_empty, extra) in methods.items():
        for with_interval in intervals:
            for scale in scales:
                call = {f"{guide}_scale": scale, **extra, **({f"{guide}_interval": interval} if with_interval else {})}
                row = {"method": name + ("+interval" if with_interval else ""), "scale": scale}
                row.update(measure(pipe, task, args.per_pair, args.seed, guide, from_empty, **sampling, **call))
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = {
        "model": args.model,
        "weak": Path(args.weak).name if args.weak else None,
        "pairs": "held-out" if args.held_out else "seen",
        "kind": task.kind,
        "num_pairs": len(task.targets),
        "per_pair": args.per_pair,
        "images": len(task.targets) * args.per_pair,
        "columns": task.columns,
        "interval": list(interval),
        "sampling": f"{sampling['sampler']}, {sampling['num_inference_steps']} steps, {sampling['timestep_schedule']} schedule",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "guidance_methods.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "guidance_methods.md").write_text(markdown(report))
    plot(rows, task.axes, args.out / "guidance_methods.png")
    print(markdown(report))
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))


if __name__ == "__main__":
    main()

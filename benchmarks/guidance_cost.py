"""What classifier guidance costs per sampling call, by what it reads, side by side in one process.

    python benchmarks/guidance_cost.py --model emoji32 [--images 8] [--steps 20] [--rounds 5]

Times ``sample`` (the model's own sampler, the empty prompt, so no classifier-free guidance) four
ways, interleaved round by round on the same noise: unguided; guided by the model's classifier reading
x_t; reading the model's x_0 estimate through a separate denoiser (the hook runs the model again, with
its graph); and reading it through a :class:`~guided_diffusion.guidance.ModelEstimate` of the sampled
model, whose forward the step shares. The last two must give the same images: the benchmark checks it
and prints their largest difference. The classifier guides towards the first class of its first
attribute (``--attribute`` and ``--label`` pick others) at ``--scale``. The last line printed is one
JSON object (medians in seconds, and each way's time over the unguided one).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from samplers import cpu_name  # noqa: E402  (benchmarks/samplers.py)

from guided_diffusion import GuidedDiffusionPipeline, ModelEstimate, classifier_cond_fn, sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="emoji32", help="a pipeline folder or a shipped model name (one with a classifier)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=20.0)
    parser.add_argument("--attribute", default=None)
    parser.add_argument("--label", default=None)
    args = parser.parse_args()

    pipe = GuidedDiffusionPipeline.from_pretrained(args.model)
    if pipe.classifier is None:
        parser.error(f"{args.model} has no classifier to guide with")
    attribute = args.attribute or next(iter(pipe.classifier.labels))
    label = args.label or pipe.classifier.labels[attribute][0]
    config, d = pipe.unet.config, pipe.diffusion
    shape = (args.images, config.in_channels, config.image_size, config.image_size)
    with torch.no_grad():
        features, mask = pipe.text_encoder.encode([""] * args.images)
    kwargs = {"text_features": features, "text_mask": mask}
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    separate = lambda x_t, t, **kw: d.estimate_x0(pipe.unet, x_t, t, kw)  # noqa: E731
    hooks: dict[str, Callable[..., torch.Tensor] | None] = {
        "unguided": None,
        "x_t": classifier_cond_fn(pipe.classifier, {attribute: label}, args.scale),
        "x0_separate": classifier_cond_fn(pipe.classifier, {attribute: label}, args.scale, denoiser=separate),
        "x0_shared": classifier_cond_fn(pipe.classifier, {attribute: label}, args.scale, denoiser=ModelEstimate(d, pipe.unet)),
    }
    sampling = pipe.sampling_config
    times: dict[str, list[float]] = {name: [] for name in hooks}
    images: dict[str, torch.Tensor] = {}
    pipe.unet.eval()
    pipe.classifier.eval()
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, cond_fn in hooks.items():
                start = time.perf_counter()
                images[name] = sample(
                    pipe.unet, d, shape, sampler=sampling.sampler, steps=args.steps, timestep_schedule=sampling.timestep_schedule,
                    model_kwargs=kwargs, cond_fn=cond_fn, noise=noise, generator=torch.Generator().manual_seed(1),
                    **sampling.sampler_settings(sampling.sampler),
                )
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    difference = float((images["x0_shared"] - images["x0_separate"]).abs().max())
    for name, value in medians.items():
        print(f"{name:12s} {value:7.3f} s  {value / medians['unguided']:.2f}x unguided")
    print(f"x0 shared against separate: {medians['x0_separate'] / medians['x0_shared']:.2f}x faster, images differ by at most {difference:.3g}")
    print(json.dumps({
        "model": args.model, "cpu": cpu_name(), "threads": torch.get_num_threads(), "images": args.images, "steps": args.steps,
        "sampler": sampling.sampler, "guide": f"{attribute}={label}", "scale": args.scale, "rounds": args.rounds,
        "median_s": medians, "over_unguided": {name: value / medians["unguided"] for name, value in medians.items()},
        "x0_shared_speedup": medians["x0_separate"] / medians["x0_shared"], "x0_max_difference": difference,
    }))


if __name__ == "__main__":
    main()

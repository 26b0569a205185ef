"""The Gradio demo: generate, guide, and watch the diffusion happen.

Run it from the repository root::

    python app.py                       # every shipped model, shapes32 first, on http://127.0.0.1:7860
    python app.py --model DIR           # a folder written by GuidedDiffusionPipeline.save_pretrained, as the default
    python app.py --model A --model B   # several folders (or shipped model names); the first is the default
    python app.py --host 0.0.0.0 --port 8080 --device cuda --share

The **Model** picker above the tabs lists the models given with ``--model`` and then every shipped
model; picking one switches the page to it (example prompts, sampling defaults, classifier guidance
controls, forward process, model card). Tabs: **Generate** (prompt, sampler, steps, classifier-free
and classifier guidance, seed; live x_t and predicted x_0 previews, then the images and the denoising
trajectory), **Forward process** (q(x_t | x_0) samples and the linear and cosine schedules) and
**Model** (configuration, parameter counts, and the folder's README.md and evaluation.md when present).

The generation function is also an API endpoint, ``/generate``. Every parameter but ``prompt`` has a
default: ``model`` the default model; ``steps``, ``sampler`` and ``guidance_scale`` that model's
sampling config; no classifier guidance; ``seed=0`` (``None`` draws a random seed). It returns the
images at the model's own resolution, as a list of ``{"image": path_to_png, "caption": ...}``::

    from gradio_client import Client
    from PIL import Image

    client = Client("http://127.0.0.1:7860/")
    result = client.predict(
        prompt="a large red circle in the center",
        num_images=4,
        steps=25,
        sampler="ddim",                 # ddpm | ddim | dpm++
        guidance_scale=3.0,             # classifier-free: 0 unconditional, 1 plain conditional
        classifier_attribute="shape",   # classifier guidance, for models with a classifier
        classifier_label="circle",
        classifier_scale=0.0,           # 0: off
        seed=0,
        model="shapes32",               # a name in the page's model picker
        api_name="/generate",
    )
    images = [Image.open(item["image"]) for item in result]

Requests that arrive together and share the model and settings (prompts and seeds may differ) are
sampled in one batch of at most ``--max-batch-images`` images; every image keeps its own request's
seed, so a request gets the same images alone or batched.

Bad values (an unknown model among them) raise ``gradio_client.exceptions.AppError`` with the
server's message, which names the valid values; when the queue is full the client raises
``gradio_client.utils.QueueError`` ("Queue is full! Please try again.") and the page says "This
application is currently busy. Please try again."
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from guided_diffusion.demo import DemoModels, build_demo, launch_demo
from guided_diffusion.demo.batching import DEFAULT_MAX_BATCH_IMAGES
from guided_diffusion.demo.ui import DEFAULT_MAX_QUEUE
from guided_diffusion.errors import RequestError, exits_on_user_errors
from guided_diffusion.pipeline import checked_device
from guided_diffusion.serialization import CheckpointError

DEFAULT_MODEL = "shapes32"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``python app.py``."""
    parser = argparse.ArgumentParser(prog="app.py", description="Serve the guided diffusion demo with Gradio.")
    parser.add_argument(
        "--model",
        action="append",
        help=f"a pipeline folder or a shipped model name, offered first in the model picker; repeat it for more, the "
        f"first is the default (default: {DEFAULT_MODEL}); every shipped model is offered as well",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also open a temporary public Gradio link")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: cuda if available, else cpu)"
    )
    parser.add_argument(
        "--queue-size",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help=f"requests that may wait beyond those being sampled before new ones are refused as busy (default: {DEFAULT_MAX_QUEUE})",
    )
    parser.add_argument(
        "--max-batch-images",
        type=int,
        default=DEFAULT_MAX_BATCH_IMAGES,
        help="images that concurrent requests with the same settings share in one sampling batch; also the number of "
        f"requests sampled at once (default: {DEFAULT_MAX_BATCH_IMAGES})",
    )
    return parser.parse_args(argv)


@exits_on_user_errors("app.py")
def main(argv: Sequence[str] | None = None) -> int:
    """Load the given models and serve the demo until interrupted; user errors print one line and return 2."""
    args = parse_args(argv)
    for flag, value in (("--queue-size", args.queue_size), ("--max-batch-images", args.max_batch_images)):
        if value < 1:
            raise RequestError(f"{flag} must be at least 1, got {value}")
    try:
        device = checked_device(args.device)
    except RequestError as err:
        raise RequestError(f"--device: {err}") from None
    try:
        models = DemoModels.from_names(args.model or [DEFAULT_MODEL], device=device)
    except CheckpointError as err:
        raise CheckpointError(f"cannot load the model: {err}; pass --model DIR with a folder written by save_pretrained") from None
    demo = build_demo(models, max_batch_images=args.max_batch_images, max_queue=args.queue_size)
    try:
        launch_demo(demo, host=args.host, port=args.port, share=args.share)
    except OSError as err:
        raise RequestError(f"cannot serve on {args.host}:{args.port}: {err}; pick another --port") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())

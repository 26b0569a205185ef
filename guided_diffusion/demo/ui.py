"""The Gradio app over one loaded pipeline: the Generate, Forward process and Model tabs.

Sampling runs through Gradio's queue in one concurrency group shared by the browser's streaming event
and the ``/generate`` API, ``concurrency_limit`` jobs at a time (1 on a CPU, where one job already
uses every core) and at most ``max_queue`` waiting; further requests are refused at once with Gradio's
"busy, please try again" message (``gradio_client`` raises ``QueueError``). Bad input comes back as a
``gr.Error`` naming the valid values; the server keeps running.
"""

from __future__ import annotations

import contextlib
import html
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from matplotlib.figure import Figure
from PIL import Image

from ..pipeline import GuidedDiffusionPipeline
from ..samplers import SAMPLERS
from .forward import example_images, image_to_tensor, noised_grid, schedule_figure, schedule_processes, schedule_table
from .generation import (
    MAX_CLASSIFIER_SCALE,
    MAX_GUIDANCE_SCALE,
    MAX_IMAGES,
    MAX_SEED,
    GenerationRequest,
    SamplingDone,
    check_request,
    sample_with_previews,
)
from .images import enlarge, enlargement, tensor_grid, to_pil
from .model_card import model_card

EXAMPLE_PROMPTS = (
    "a small blue triangle in the top right",
    "a large red circle in the center",
    "a green square",
    "",
)
DEFAULT_NUM_IMAGES = 4
DEFAULT_MAX_QUEUE = 8
MAX_UPLOAD = "10mb"
SAMPLING_GROUP = "sampling"
CSS = ".pixelated img { image-rendering: pixelated; }"


def default_concurrency(device: torch.device) -> int:
    """Sampling jobs run at once: 1 on a CPU (one job already uses every core), 2 on an accelerator."""
    return 1 if device.type == "cpu" else 2


def _user_error(message: str) -> gr.Error:
    return gr.Error(html.escape(message, quote=False), print_exception=False)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into ``gr.Error`` messages (shown in the page, raised by clients)."""
    try:
        yield
    except ValueError as err:
        raise _user_error(str(err)) from None
    except torch.OutOfMemoryError:
        raise _user_error("The device ran out of memory: ask for fewer images or try again later.") from None


def _picture(label: str, elem_id: str | None = None, value: Image.Image | None = None) -> gr.Image:
    """An output picture, sent as PNG and drawn with sharp pixels."""
    return gr.Image(value=value, label=label, format="png", interactive=False, elem_id=elem_id, elem_classes="pixelated")


def build_demo(
    pipe: GuidedDiffusionPipeline,
    *,
    folder: Path | None = None,
    concurrency_limit: int | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> gr.Blocks:
    """The app for ``pipe`` (loaded from ``folder``, whose README.md and evaluation.md the Model tab
    shows), with its queue set up; ``concurrency_limit`` defaults to :func:`default_concurrency`."""
    concurrency_limit = concurrency_limit or default_concurrency(pipe.device)
    sampling = pipe.sampling_config
    labels = pipe.classifier.labels if pipe.classifier is not None else {}
    first_attribute = next(iter(labels), None)
    size = pipe.unet.config.image_size
    processes = schedule_processes(pipe)
    own_schedule = next(name for name, process in processes.items() if process is pipe.diffusion)
    examples = {caption: enlarge(image, enlargement(image.width)) for caption, image in example_images().items()}
    card = model_card(pipe, folder)

    def accept(*request_args: Any) -> GenerationRequest:
        """Check a request (:func:`check_request`'s arguments after ``pipe``) and show its notices."""
        request = check_request(pipe, *request_args)
        for notice in request.notices:
            gr.Warning(html.escape(notice, quote=False))
        return request

    def generate(
        prompt: str,
        num_images: int = DEFAULT_NUM_IMAGES,
        steps: int = int(sampling["steps"]),
        sampler: str = sampling["sampler"],
        guidance_scale: float = float(sampling["guidance_scale"]),
        classifier_attribute: str | None = first_attribute,
        classifier_label: str | None = labels[first_attribute][0] if first_attribute else None,
        classifier_scale: float = 0.0,
        seed: int | None = 0,
    ) -> list[Image.Image]:
        """Sample `num_images` images for `prompt` ("" is unconditional); returns them at the model's
        resolution as PNG files. `seed` None draws a random seed."""
        with _user_errors():
            request = accept(
                prompt, num_images, steps, sampler, guidance_scale,
                classifier_attribute, classifier_label, classifier_scale, seed,
            )
            return pipe(**request.pipeline_kwargs())

    def generate_live(
        prompt: str,
        num_images: int,
        steps: int,
        sampler: str,
        guidance_scale: float,
        classifier_attribute: str | None,
        classifier_label: str | None,
        classifier_scale: float,
        seed: int | None,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[dict[gr.components.Component, Any]]:
        """The browser's Generate button: stream x_t and the predicted x_0 at a few steps, then the
        enlarged images and the trajectory strip of the first image."""
        with _user_errors():
            request = accept(
                prompt, num_images, steps, sampler, guidance_scale,
                classifier_attribute, classifier_label, classifier_scale, seed,
            )
            yield {gallery: None, trajectory: None, status: f"Sampling with seed {request.seed}..."}
            frames: list[torch.Tensor] = []
            shown: list[int] = []
            with contextlib.closing(sample_with_previews(pipe, request)) as updates:
                for update in updates:
                    if isinstance(update, SamplingDone):
                        break
                    progress((update.step + 1, update.num_steps), desc="denoising")
                    if update.x_t is None:
                        continue
                    frames += [update.x_t[:1], update.pred_x0[:1]]
                    shown.append(update.step + 1)
                    yield {
                        x_t_view: tensor_grid(update.x_t),
                        x0_view: tensor_grid(update.pred_x0),
                        status: f"Step {update.step + 1} of {update.num_steps} (seed {request.seed})",
                    }
        factor = enlargement(size)
        images = [enlarge(image, factor) for image in to_pil(update.images * 2 - 1)]
        strip = torch.cat(frames[0::2] + frames[1::2])
        yield {
            gallery: [(image, f"seed {request.seed}, image {i + 1}") for i, image in enumerate(images)],
            trajectory: tensor_grid(strip, nrow=len(shown), target=96),
            status: (
                f"Done: {request.num_images} image(s), {request.steps} {request.sampler} steps, seed {request.seed}. "
                f"Trajectory of image 1 after steps {', '.join(map(str, shown))}: x_t on top, predicted x_0 below."
            ),
        }

    def show_forward(image: Image.Image | None, t: float) -> tuple[Image.Image | None, str, Figure]:
        t = min(max(int(t), 0), pipe.diffusion.num_timesteps - 1)
        figure = schedule_figure(processes, t)
        if image is None:
            return None, "Pick an example or upload an image.", figure
        return noised_grid(processes, image_to_tensor(image, size), t), schedule_table(processes, t, own_schedule), figure

    def label_choices(attribute: str | None) -> gr.Dropdown:
        names = labels.get(attribute or "", [])
        return gr.Dropdown(choices=names, value=names[0] if names else None)

    with gr.Blocks(title="Guided diffusion", analytics_enabled=False) as demo:
        gr.Markdown(
            f"# Guided diffusion\nA text-conditioned diffusion model with classifier-free"
            f"{' and classifier' if pipe.classifier is not None else ''} guidance: "
            f"{size}x{size} images, on `{pipe.device}`."
        )
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    prompt = gr.Textbox(
                        value=None, label="Prompt", lines=2, placeholder="a large red circle in the center (empty: unconditional)"
                    )
                    gr.Examples(
                        examples=[[p] for p in EXAMPLE_PROMPTS],
                        inputs=[prompt],
                        example_labels=[p or '"" (unconditional)' for p in EXAMPLE_PROMPTS],
                        label="Example prompts",
                        api_visibility="private",
                    )
                    num_images = gr.Slider(1, MAX_IMAGES, value=DEFAULT_NUM_IMAGES, step=1, label="Number of images")
                    sampler = gr.Radio(list(SAMPLERS), value=sampling["sampler"], label="Sampler")
                    steps = gr.Slider(1, pipe.diffusion.num_timesteps, value=int(sampling["steps"]), step=1, label="Steps")
                    guidance_scale = gr.Slider(
                        0,
                        MAX_GUIDANCE_SCALE,
                        value=float(sampling["guidance_scale"]),
                        step=0.5,
                        label="Classifier-free guidance scale (0 unconditional, 1 plain conditional)",
                    )
                    with gr.Group(visible=pipe.classifier is not None, elem_id="classifier-guidance"):
                        gr.Markdown("**Classifier guidance**")
                        classifier_attribute = gr.Dropdown(list(labels), value=first_attribute, label="Attribute")
                        classifier_label = gr.Dropdown(
                            labels.get(first_attribute or "", []),
                            value=labels[first_attribute][0] if first_attribute else None,
                            label="Class",
                            allow_custom_value=True,  # choices follow the attribute; the value is checked on use
                        )
                        classifier_scale = gr.Slider(0, MAX_CLASSIFIER_SCALE, value=0.0, step=0.5, label="Classifier scale (0 off)")
                    with gr.Row(equal_height=True):
                        seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", scale=3)
                        random_seed = gr.Button("Random", scale=1)
                    run = gr.Button("Generate", variant="primary")
                with gr.Column(scale=2):
                    with gr.Row():
                        x_t_view = _picture("x_t (current noisy sample)", "x-t-preview")
                        x0_view = _picture("Predicted x_0", "x0-preview")
                    status = gr.Markdown("Press **Generate** to sample.")
                    gallery = gr.Gallery(
                        label="Samples", columns=4, height=340, format="png", object_fit="contain",
                        elem_id="samples", elem_classes="pixelated",
                    )
                    trajectory = _picture("Denoising trajectory of image 1", "trajectory")
        with gr.Tab("Forward process"):
            first_example = next(iter(examples.values()))
            first_t = pipe.diffusion.num_timesteps // 4
            initial_grid, initial_table, initial_figure = show_forward(first_example, first_t)
            with gr.Row():
                with gr.Column(scale=1):
                    x0_input = gr.Image(
                        value=first_example, type="pil", image_mode="RGB", sources=["upload", "clipboard"],
                        label="x_0", elem_classes="pixelated",
                    )
                    gr.Examples(
                        examples=[[image] for image in examples.values()],
                        inputs=[x0_input],
                        example_labels=list(examples),
                        label="Example images",
                        api_visibility="private",
                    )
                    timestep = gr.Slider(
                        0, pipe.diffusion.num_timesteps - 1, value=first_t, step=1, label="Timestep t", elem_id="timestep"
                    )
                with gr.Column(scale=2):
                    noised = _picture(f"x_0, then samples of q(x_t | x_0); rows: {', '.join(processes)} schedule", value=initial_grid)
                    values = gr.Markdown(initial_table)
            schedule_plot = gr.Plot(value=initial_figure, label="Noise schedules")
        with gr.Tab("Model"):
            gr.Markdown("## Summary\n" + card["summary"])
            with gr.Accordion("Configuration", open=False):
                gr.Markdown(card["config"])
            gr.Markdown("## Training data\n" + card["training"])
            gr.Markdown("## Evaluation\n" + card["evaluation"])

        inputs = [prompt, num_images, steps, sampler, guidance_scale, classifier_attribute, classifier_label, classifier_scale, seed]
        run.click(
            generate_live,
            inputs=inputs,
            outputs=[x_t_view, x0_view, gallery, trajectory, status],
            show_progress_on=[gallery],
            concurrency_limit=concurrency_limit,
            concurrency_id=SAMPLING_GROUP,
            api_visibility="private",
        )
        gr.Button(visible=False).click(
            generate,
            inputs=inputs,
            outputs=[gallery],
            api_name="generate",
            preprocess=False,
            concurrency_limit=concurrency_limit,
            concurrency_id=SAMPLING_GROUP,
        )
        random_seed.click(lambda: secrets.randbelow(MAX_SEED + 1), outputs=seed, queue=False, api_visibility="private")
        classifier_attribute.change(label_choices, classifier_attribute, classifier_label, queue=False, api_visibility="private")
        gr.on(
            [x0_input.change, timestep.change],
            show_forward,
            inputs=[x0_input, timestep],
            outputs=[noised, values, schedule_plot],
            queue=False,
            trigger_mode="always_last",
            api_visibility="private",
        )
    return demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue)


def launch_demo(
    demo: gr.Blocks, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False, prevent_thread_lock: bool = False
) -> str:
    """Serve ``demo`` on ``host:port`` (a public link too with ``share``); returns the local URL.
    Blocks until the server stops unless ``prevent_thread_lock``."""
    _, local_url, _ = demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=prevent_thread_lock,
        quiet=prevent_thread_lock,
        max_file_size=MAX_UPLOAD,
        css=CSS,
    )
    return local_url

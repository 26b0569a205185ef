"""The Gradio app: a model picker over the Generate, Forward process and Model tabs.

Picking a model switches the whole page to it: its example prompts, sampling defaults, classifier
attributes and classes, the other models it may be guided by (autoguidance), forward process and
model card (:func:`model_settings`, :func:`forward_view`).

Sampling runs through Gradio's queue in one concurrency group shared by the browser's streaming event
and the ``/generate`` API: ``concurrency_limit`` requests at a time go to one
:class:`~.batching.SamplingBatcher`, which samples those that arrive together in one batch (each with
its own seed, so batching changes no image), and at most ``max_queue`` more wait in Gradio's queue;
further requests are refused at once with Gradio's "busy, please try again" message
(``gradio_client`` raises ``QueueError``). Bad input comes back as a
``gr.Error`` naming the valid values; the server keeps running.
"""

from __future__ import annotations

import contextlib
import html
import secrets
from collections.abc import Iterator, Sequence
from typing import Any

import gradio as gr
import torch
from matplotlib.figure import Figure
from PIL import Image

from ..pipeline import GuidedDiffusionPipeline
from ..request import GUIDANCE_READS
from ..samplers import SAMPLERS, TIMESTEP_SCHEDULES, sampler_options
from ..schedule import BETA_SCHEDULES
from .forward import example_images, image_to_tensor, noised_grid, schedule_figure, schedule_processes, schedule_table
from .batching import DEFAULT_MAX_BATCH_IMAGES, SamplingBatcher, SamplingDone
from .generation import (
    MAX_CLIP_GUIDANCE_SCALE,
    MAX_ETA,
    MAX_GUIDANCE_SCALE,
    MAX_IMAGES,
    MAX_SEED,
    GenerationRequest,
    check_request,
)
from ..images import to_pil
from .images import enlarge, enlargement, tensor_grid
from .model_card import model_card
from .models import DemoModels
from .public import scrub_paths

UNCONDITIONAL_LABEL = '"" (unconditional)'
NO_GUIDE = ("none (the model's unconditional prediction)", "")
DEFAULT_NUM_IMAGES = 4
DEFAULT_MAX_QUEUE = 64  # beyond the requests being sampled; a crowd of 32 clients all get their images (tests/test_app.py)
MAX_UPLOAD = "10mb"
SAMPLING_GROUP = "sampling"
READY = "Press **Generate** to sample."
CSS = ".pixelated img { image-rendering: pixelated; }"


def _user_error(message: str) -> gr.Error:
    """The message a client sees: no server paths (:func:`scrub_paths`), no traceback."""
    return gr.Error(html.escape(scrub_paths(message), quote=False), print_exception=False)


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


def example_prompts(pipe: GuidedDiffusionPipeline) -> list[str]:
    """The prompts the page offers for ``pipe``: its own example prompts, then the empty prompt
    (unconditional sampling, which every classifier-free guided model can do) unless among them."""
    return pipe.example_prompts + ([] if "" in pipe.example_prompts else [""])


def takes_eta(sampler: str | None) -> bool:
    """Whether ``sampler`` takes the option ``eta`` (the page shows its control only then)."""
    return sampler in SAMPLERS and "eta" in sampler_options(sampler)


def model_settings(pipe: GuidedDiffusionPipeline, name: str, model_names: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """The properties of each control that follows the picked model, keyed by the control's name: the
    page is built with the default model's and updated with another model's when it is picked.

    The classifier-guidance controls show ``pipe``'s classifier attributes and classes (hidden without
    a classifier, with the scale back at 0 and the slider up to the sampling config's
    ``classifier_scale_max``); the sampler controls its sampling config (eta shown for the samplers
    that take it, empty: the model's default; what guidance reads, its default); the autoguidance
    picker offers the other models of ``model_names`` (the picker's) and none; the Model tab its card
    under ``name``, the name the picker shows.
    """
    size = pipe.unet.config.image_size
    last = pipe.diffusion.num_timesteps - 1
    sampling = pipe.sampling_config
    labels = pipe.classifier.labels if pipe.classifier is not None else {}
    attribute = next(iter(labels), None)
    prompts = example_prompts(pipe)
    card = model_card(pipe, name)
    return {
        "about": {
            "value": f"A text-conditioned diffusion model with classifier-free"
            f"{' and classifier' if pipe.classifier is not None else ''} guidance: {size}x{size} images, on `{pipe.device}`."
        },
        "prompt": {"placeholder": f"{prompts[0]} (empty: unconditional)" if prompts[0] else "empty: unconditional"},
        "examples": {"samples": [[p] for p in prompts], "sample_labels": [p or UNCONDITIONAL_LABEL for p in prompts]},
        "sampler": {"value": sampling.sampler},
        "eta": {"visible": takes_eta(sampling.sampler), "value": None},
        "timestep_schedule": {"value": sampling.timestep_schedule},
        "steps": {"maximum": pipe.diffusion.num_timesteps, "value": sampling.steps},
        "guidance_scale": {"value": sampling.guidance_scale},
        "autoguidance": {"choices": [NO_GUIDE, *((n, n) for n in model_names if n != name)], "value": ""},
        "thresholding": {"value": None},
        "classifier_guidance": {"visible": pipe.classifier is not None},
        "classifier_attribute": {"choices": list(labels), "value": attribute},
        "classifier_label": {"choices": labels.get(attribute or "", []), "value": labels[attribute][0] if attribute else None},
        "classifier_scale": {"maximum": sampling.classifier_scale_max, "value": 0.0},
        "clip_guidance": {"visible": pipe.clip is not None},
        "clip_guidance_scale": {"value": sampling.clip_guidance_scale},
        "guidance_reads": {"value": sampling.guidance_reads},
        **{
            f"{kind}_t_{end}": {"maximum": last, "value": 0 if end == "min" else last}
            for kind in ("guidance", "classifier", "clip")
            for end in ("min", "max")
        },
        "summary": {"value": "## Summary\n" + card["summary"]},
        "config": {"value": card["config"]},
        "training": {"value": "## Training data\n" + card["training"]},
        "evaluation": {"value": "## Evaluation\n" + card["evaluation"]},
    }


def forward_view(pipe: GuidedDiffusionPipeline, image: Image.Image | None, t: float) -> tuple[Image.Image | None, str, Figure]:
    """The Forward process tab for ``pipe`` at timestep ``t`` (clamped to 0..T-1): the noised grid of
    ``image`` (None without one), the table of schedule values, and the schedule plot."""
    processes = schedule_processes(pipe)
    t = min(max(int(t), 0), pipe.diffusion.num_timesteps - 1)
    figure = schedule_figure(processes, t)
    if image is None:
        return None, "Pick an example or upload an image.", figure
    own = next(name for name, process in processes.items() if process is pipe.diffusion)
    grid = noised_grid(processes, image_to_tensor(image, pipe.unet.config.image_size), t)
    return grid, schedule_table(processes, t, own), figure


def build_demo(
    models: DemoModels,
    *,
    max_batch_images: int = DEFAULT_MAX_BATCH_IMAGES,
    concurrency_limit: int | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    batcher: SamplingBatcher | None = None,
) -> gr.Blocks:
    """The app for ``models``, with its queue set up: the page starts on the default model and the
    model picker switches the whole page to another.

    Requests are sampled by ``batcher`` (default: a new :class:`SamplingBatcher` of
    ``max_batch_images`` images a batch), ``concurrency_limit`` at a time (default: ``max_batch_images``,
    as many as one batch can hold), with ``max_queue`` more waiting.
    """
    first = models.pipeline(models.default)
    batcher = batcher or SamplingBatcher(max_batch_images)
    concurrency_limit = concurrency_limit or batcher.max_batch_images
    settings = model_settings(first, models.default, models.names)
    examples = {caption: enlarge(image, enlargement(image.width)) for caption, image in example_images().items()}

    def accept(model: str, pipe: GuidedDiffusionPipeline, *request_args: Any) -> GenerationRequest:
        """Check a request for ``pipe``, named ``model`` (:func:`check_request`'s arguments after
        ``pipe``; an autoguidance model is looked up among ``models``) and show its notices."""
        request = check_request(pipe, *request_args, models=models, model=model)
        for notice in request.notices:
            gr.Warning(html.escape(notice, quote=False))
        return request

    def generate(
        prompt: str,
        num_images: int = DEFAULT_NUM_IMAGES,
        steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
        classifier_attribute: str | None = None,
        classifier_label: str | None = None,
        classifier_scale: float = 0.0,
        seed: int | None = 0,
        model: str = models.default,
        timestep_schedule: str | None = None,
        guidance_t_min: float | None = None,
        guidance_t_max: float | None = None,
        classifier_t_min: float | None = None,
        classifier_t_max: float | None = None,
        cads: bool = False,
        clip_guidance_scale: float | None = None,
        clip_guidance_prompt: str | None = None,
        eta: float | None = None,
        thresholding: float | None = None,
        clip_t_min: float | None = None,
        clip_t_max: float | None = None,
        autoguidance: str | None = None,
        clip_guidance_negative_prompt: str | None = None,
        guidance_reads: str | None = None,
    ) -> list[Image.Image]:
        """Sample `num_images` images for `prompt` ("" is unconditional) with the model named `model`;
        returns them at the model's resolution as PNG files. `steps`, `sampler`, `guidance_scale` and
        `timestep_schedule` None take the model's sampling config; `seed` None draws a random seed.
        Classifier-free and classifier guidance act only at timesteps between their `_t_min` and
        `_t_max` (None: 0 and T-1); `cads` anneals the condition (CADS) for diversity.
        `clip_guidance_scale` > 0 (None: the model's) steers towards `clip_guidance_prompt` (None: the
        prompt) with the model's noise-aware CLIP, between `clip_t_min` and `clip_t_max`, and away from
        the captions of `clip_guidance_negative_prompt` (one a line; None: none). `eta` (None:
        the model's default) is for the samplers that take it (ddim, dpm++2m-sde); `thresholding` (a
        quantile in (0, 1] such as 0.995; None: off) turns on dynamic thresholding; `autoguidance`
        names another model of this demo (the same diffusion process and image size) that gives the
        unconditional branch of classifier-free guidance (None: off); `guidance_reads` "x0" makes
        classifier and CLIP guidance read the model's x_0 estimate instead of x_t (None: the model's default)."""
        with _user_errors():
            pipe = models.pipeline(model)
            request = accept(
                model, pipe, prompt, num_images, steps, sampler, guidance_scale,
                classifier_attribute, classifier_label, classifier_scale, seed, timestep_schedule,
                guidance_t_min, guidance_t_max, classifier_t_min, classifier_t_max, cads,
                clip_guidance_scale, clip_guidance_prompt, eta, thresholding, clip_t_min, clip_t_max, autoguidance,
                clip_guidance_negative_prompt, guidance_reads,
            )
            with contextlib.closing(batcher.submit(model, pipe, request, max_previews=0)) as updates:
                done = next(update for update in updates if isinstance(update, SamplingDone))
        return to_pil(done.images * 2 - 1)

    def generate_live(model: str, *request_args: Any, progress: gr.Progress = gr.Progress()) -> Iterator[dict[gr.components.Component, Any]]:
        """The browser's Generate button for the model named ``model`` (``request_args``: the page's
        controls in :func:`check_request`'s order): stream x_t and the predicted x_0 at a few steps, then
        the enlarged images and the trajectory strip of the first image."""
        with _user_errors():
            pipe = models.pipeline(model)
            request = accept(model, pipe, *request_args)
            yield {gallery: None, trajectory: None, status: f"Sampling with seed {request.seed}..."}
            frames: list[torch.Tensor] = []
            shown: list[int] = []
            with contextlib.closing(batcher.submit(model, pipe, request)) as updates:
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
        factor = enlargement(pipe.unet.config.image_size)
        images = [enlarge(image, factor) for image in to_pil(update.images * 2 - 1)]
        strip = torch.cat(frames[0::2] + frames[1::2])
        yield {
            gallery: [(image, f"seed {request.seed}, image {i + 1}") for i, image in enumerate(images)],
            trajectory: tensor_grid(strip, nrow=len(shown), target=96),
            status: (
                f"Done: {request.num_images} image(s), {request.steps} {request.sampler} steps ({request.timestep_schedule}), "
                f"seed {request.seed}. "
                f"Trajectory of image 1 after steps {', '.join(map(str, shown))}: x_t on top, predicted x_0 below."
            ),
        }

    def show_forward(model: str, image: Image.Image | None, t: float) -> tuple[Image.Image | None, str, Figure]:
        with _user_errors():
            return forward_view(models.pipeline(model), image, t)

    def pick_example(model: str, index: int) -> str:
        with _user_errors():
            return example_prompts(models.pipeline(model))[index]

    def label_choices(model: str, attribute: str | None) -> gr.Dropdown:
        with _user_errors():
            pipe = models.pipeline(model)
        names = pipe.classifier.labels.get(attribute or "", []) if pipe.classifier is not None else []
        return gr.Dropdown(choices=names, value=names[0] if names else None)

    def eta_control(sampler: str | None, eta: float | None) -> gr.Number:
        """Show eta for the samplers that take it; the others get none (they would refuse one)."""
        shown = takes_eta(sampler)
        return gr.Number(visible=shown, value=eta if shown else None)

    def switch_model(model: str, image: Image.Image | None, t: float) -> dict[gr.blocks.Block, Any]:
        """The picker: show ``model``'s settings, examples, forward process and card, and clear the
        previous model's samples."""
        with _user_errors():
            pipe = models.pipeline(model)
        t = min(max(int(t), 0), pipe.diffusion.num_timesteps - 1)
        grid, table, figure = forward_view(pipe, image, t)
        return {
            **{controls[name]: type(controls[name])(**props) for name, props in model_settings(pipe, model, models.names).items()},
            timestep: gr.Slider(maximum=pipe.diffusion.num_timesteps - 1, value=t),
            noised: grid,
            values: table,
            schedule_plot: figure,
            x_t_view: None,
            x0_view: None,
            gallery: None,
            trajectory: None,
            status: READY,
        }

    with gr.Blocks(title="Guided diffusion", analytics_enabled=False) as demo:
        gr.Markdown("# Guided diffusion")
        with gr.Row(equal_height=True):
            picker = gr.Dropdown(models.names, value=models.default, label="Model", elem_id="model", scale=1)
            about = gr.Markdown(**settings["about"])
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    prompt = gr.Textbox(value=None, label="Prompt", lines=2, **settings["prompt"])
                    prompt_examples = gr.Dataset(
                        components=[prompt], type="index", label="Example prompts", elem_id="example-prompts", **settings["examples"]
                    )
                    num_images = gr.Slider(1, MAX_IMAGES, value=DEFAULT_NUM_IMAGES, step=1, label="Number of images")
                    sampler = gr.Radio(list(SAMPLERS), label="Sampler", **settings["sampler"])
                    eta = gr.Number(
                        label="Sampler eta",
                        info=f"noise added at each step, 0 (deterministic) to {MAX_ETA:g}; empty: the model's default",
                        elem_id="eta",
                        **settings["eta"],
                    )
                    timestep_schedule = gr.Radio(list(TIMESTEP_SCHEDULES), label="Timestep schedule", **settings["timestep_schedule"])
                    steps = gr.Slider(1, step=1, label="Steps", **settings["steps"])
                    guidance_scale = gr.Slider(
                        0,
                        MAX_GUIDANCE_SCALE,
                        step=0.5,
                        label="Classifier-free guidance scale (0 unconditional, 1 plain conditional)",
                        **settings["guidance_scale"],
                    )
                    autoguidance = gr.Dropdown(
                        label="Autoguidance: guide with",
                        info="a weaker model of the same kind in place of the unconditional one, mixed by the "
                        "guidance scale (Karras et al. 2024)",
                        elem_id="autoguidance",
                        **settings["autoguidance"],
                    )
                    with gr.Group(elem_id="classifier-guidance", **settings["classifier_guidance"]) as classifier_guidance:
                        gr.Markdown("**Classifier guidance**")
                        classifier_attribute = gr.Dropdown(label="Attribute", **settings["classifier_attribute"])
                        classifier_label = gr.Dropdown(
                            label="Class",
                            allow_custom_value=True,  # choices follow the attribute; the value is checked on use
                            **settings["classifier_label"],
                        )
                        classifier_scale = gr.Slider(0, step=0.5, label="Classifier scale (0 off)", **settings["classifier_scale"])
                    with gr.Group(elem_id="clip-guidance", **settings["clip_guidance"]) as clip_guidance:
                        gr.Markdown("**CLIP guidance** (the model's noise-aware CLIP; any prompt, the empty one included)")
                        clip_guidance_prompt = gr.Textbox(value=None, label="Guide towards (empty: the prompt)")
                        clip_guidance_negative_prompt = gr.Textbox(
                            value=None,
                            lines=2,
                            label="And away from (one caption a line; empty: none)",
                            info="the CLIP then guides as a classifier over the prompt and these captions",
                        )
                        clip_guidance_scale = gr.Slider(
                            0, MAX_CLIP_GUIDANCE_SCALE, step=5, label="CLIP guidance scale (0 off)", **settings["clip_guidance_scale"]
                        )
                        with gr.Row():
                            clip_t_min = gr.Slider(0, step=1, label="CLIP guidance from t", **settings["clip_t_min"])
                            clip_t_max = gr.Slider(0, step=1, label="to t", **settings["clip_t_max"])
                    with gr.Accordion("Guidance schedule", open=False, elem_id="guidance-schedule"):
                        gr.Markdown(
                            "Guidance acts only at timesteps t in [from, to] (0 is clean, T-1 pure noise; "
                            "Kynkäänniemi et al. 2024). CADS anneals noise into the prompt at high noise, "
                            "for diversity at high guidance scales (Sadat et al. 2024). Dynamic thresholding "
                            "clips each predicted x_0 at a quantile of its values (Saharia et al. 2022), "
                            "against the saturation of high guidance scales."
                        )
                        with gr.Row():
                            guidance_t_min = gr.Slider(0, step=1, label="Classifier-free guidance from t", **settings["guidance_t_min"])
                            guidance_t_max = gr.Slider(0, step=1, label="to t", **settings["guidance_t_max"])
                        with gr.Row():
                            classifier_t_min = gr.Slider(0, step=1, label="Classifier guidance from t", **settings["classifier_t_min"])
                            classifier_t_max = gr.Slider(0, step=1, label="to t", **settings["classifier_t_max"])
                        cads = gr.Checkbox(value=False, label="CADS (condition annealing)")
                        thresholding = gr.Number(
                            label="Dynamic thresholding quantile",
                            info="in (0, 1], e.g. 0.995; empty: off",
                            elem_id="thresholding",
                            **settings["thresholding"],
                        )
                        guidance_reads = gr.Radio(
                            list(GUIDANCE_READS),
                            label="Classifier and CLIP guidance read",
                            info="x_t: the noisy sample; x0: the model's estimate of the clean image (slower)",
                            elem_id="guidance-reads",
                            **settings["guidance_reads"],
                        )
                    with gr.Row(equal_height=True):
                        seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", scale=3)
                        random_seed = gr.Button("Random", scale=1)
                    run = gr.Button("Generate", variant="primary")
                with gr.Column(scale=2):
                    with gr.Row():
                        x_t_view = _picture("x_t (current noisy sample)", "x-t-preview")
                        x0_view = _picture("Predicted x_0", "x0-preview")
                    status = gr.Markdown(READY)
                    gallery = gr.Gallery(
                        label="Samples", columns=4, height=340, format="png", object_fit="contain",
                        elem_id="samples", elem_classes="pixelated",
                    )
                    trajectory = _picture("Denoising trajectory of image 1", "trajectory")
        with gr.Tab("Forward process"):
            first_example = next(iter(examples.values()))
            first_t = first.diffusion.num_timesteps // 4
            initial_grid, initial_table, initial_figure = forward_view(first, first_example, first_t)
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
                        0, first.diffusion.num_timesteps - 1, value=first_t, step=1, label="Timestep t", elem_id="timestep"
                    )
                with gr.Column(scale=2):
                    noised = _picture(f"x_0, then samples of q(x_t | x_0); rows: {', '.join(BETA_SCHEDULES)} schedule", value=initial_grid)
                    values = gr.Markdown(initial_table)
            schedule_plot = gr.Plot(value=initial_figure, label="Noise schedules")
        with gr.Tab("Model"):
            summary = gr.Markdown(**settings["summary"])
            with gr.Accordion("Configuration", open=False):
                config = gr.Markdown(**settings["config"])
            training = gr.Markdown(**settings["training"])
            evaluation = gr.Markdown(**settings["evaluation"])

        controls: dict[str, gr.blocks.Block] = {
            "about": about,
            "prompt": prompt,
            "examples": prompt_examples,
            "sampler": sampler,
            "eta": eta,
            "timestep_schedule": timestep_schedule,
            "steps": steps,
            "guidance_scale": guidance_scale,
            "autoguidance": autoguidance,
            "thresholding": thresholding,
            "classifier_guidance": classifier_guidance,
            "classifier_attribute": classifier_attribute,
            "classifier_label": classifier_label,
            "classifier_scale": classifier_scale,
            "guidance_t_min": guidance_t_min,
            "guidance_t_max": guidance_t_max,
            "classifier_t_min": classifier_t_min,
            "classifier_t_max": classifier_t_max,
            "clip_guidance": clip_guidance,
            "clip_guidance_scale": clip_guidance_scale,
            "clip_t_min": clip_t_min,
            "clip_t_max": clip_t_max,
            "guidance_reads": guidance_reads,
            "summary": summary,
            "config": config,
            "training": training,
            "evaluation": evaluation,
        }
        picker.change(
            switch_model,
            inputs=[picker, x0_input, timestep],
            outputs=[*controls.values(), timestep, noised, values, schedule_plot, x_t_view, x0_view, gallery, trajectory, status],
            queue=False,
            api_visibility="private",
        )
        run.click(
            generate_live,
            inputs=[
                picker, prompt, num_images, steps, sampler, guidance_scale,
                classifier_attribute, classifier_label, classifier_scale, seed, timestep_schedule,
                guidance_t_min, guidance_t_max, classifier_t_min, classifier_t_max, cads,
                clip_guidance_scale, clip_guidance_prompt, eta, thresholding, clip_t_min, clip_t_max, autoguidance,
                clip_guidance_negative_prompt, guidance_reads,
            ],
            outputs=[x_t_view, x0_view, gallery, trajectory, status],
            show_progress_on=[gallery],
            concurrency_limit=concurrency_limit,
            concurrency_id=SAMPLING_GROUP,
            api_visibility="private",
        )
        with gr.Column(visible=False):  # the API's own inputs: no page state, None takes the named model's settings
            api_inputs = [
                gr.Textbox(value=None, label="Prompt"),
                gr.Slider(1, MAX_IMAGES, value=DEFAULT_NUM_IMAGES, step=1, label="Number of images"),
                gr.Number(precision=0, label="Steps"),
                gr.Radio(list(SAMPLERS), label="Sampler"),
                gr.Number(label="Classifier-free guidance scale"),
                gr.Textbox(value=None, label="Classifier attribute"),
                gr.Textbox(value=None, label="Class"),
                gr.Number(value=0.0, label="Classifier scale"),
                gr.Number(value=0, precision=0, label="Seed"),
                gr.Dropdown(models.names, value=models.default, label="Model"),
                gr.Radio(list(TIMESTEP_SCHEDULES), value=None, label="Timestep schedule"),
                gr.Number(value=None, label="Classifier-free guidance from t"),
                gr.Number(value=None, label="Classifier-free guidance to t"),
                gr.Number(value=None, label="Classifier guidance from t"),
                gr.Number(value=None, label="Classifier guidance to t"),
                gr.Checkbox(value=False, label="CADS"),
                gr.Number(value=None, label="CLIP guidance scale"),
                gr.Textbox(value=None, label="CLIP guidance prompt"),
                gr.Number(value=None, label="Sampler eta"),
                gr.Number(value=None, label="Dynamic thresholding quantile"),
                gr.Number(value=None, label="CLIP guidance from t"),
                gr.Number(value=None, label="CLIP guidance to t"),
                gr.Dropdown(models.names, value=None, label="Autoguidance model"),
                gr.Textbox(value=None, label="CLIP guidance negative prompts, one a line"),
                gr.Radio(list(GUIDANCE_READS), value=None, label="Classifier and CLIP guidance read"),
            ]
            api_run = gr.Button()
        api_run.click(
            generate,
            inputs=api_inputs,
            outputs=[gallery],
            api_name="generate",
            preprocess=False,
            concurrency_limit=concurrency_limit,
            concurrency_id=SAMPLING_GROUP,
        )
        prompt_examples.click(pick_example, [picker, prompt_examples], prompt, queue=False, api_visibility="private")
        random_seed.click(lambda: secrets.randbelow(MAX_SEED + 1), outputs=seed, queue=False, api_visibility="private")
        classifier_attribute.change(
            label_choices, [picker, classifier_attribute], classifier_label, queue=False, api_visibility="private"
        )
        sampler.change(eta_control, [sampler, eta], eta, queue=False, api_visibility="private")
        gr.on(
            [x0_input.change, timestep.change],
            show_forward,
            inputs=[picker, x0_input, timestep],
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

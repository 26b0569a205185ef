"""The Gradio demo: app.py's command line, the model picker, the demo helpers, the ``/generate`` API of
a running server (good and bad input, a busy queue), and the page driven in headless Chromium."""

import importlib.util
import os
import re
import shutil
import socket
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError
from PIL import Image

from guided_diffusion import GuidedDiffusionPipeline
from guided_diffusion.demo import DemoModels, SamplingBatcher, build_demo, launch_demo
from guided_diffusion.demo.batching import SamplingDone, StepUpdate, preview_steps
from guided_diffusion.demo.forward import example_images, image_to_tensor, noised_grid, schedule_figure, schedule_processes, schedule_table
from guided_diffusion.demo.generation import check_request, prompt_truncation
from guided_diffusion.demo.model_card import model_card
from guided_diffusion.demo.ui import forward_view, model_settings
from guided_diffusion.models.classifier import ClassifierConfig, NoiseAwareClassifier
from guided_diffusion.pipeline import shipped_models
from guided_diffusion.serialization import CheckpointError

from .test_guidance import tiny_clip

REPO = Path(__file__).resolve().parents[1]
LABELS = {"shape": ["circle", "square", "triangle"], "color": ["red", "green", "blue"]}
SHAPES_PROMPTS = ["a small blue triangle in the top right", "a large red circle in the center", "a green square"]
EMOJI_LABELS = {"style": ["flat", "outlined"], "category": ["faces", "animals", "food"]}
EMOJI_PROMPTS = ["a grinning face", "a cat face", "a slice of pizza"]
EMOJI_SAMPLING = {"sampler": "dpm++", "steps": 20, "guidance_scale": 2.0, "classifier_scale_max": 500.0}
API_PARAMETERS = [
    "prompt", "num_images", "steps", "sampler", "guidance_scale",
    "classifier_attribute", "classifier_label", "classifier_scale", "seed", "model", "timestep_schedule",
    "guidance_t_min", "guidance_t_max", "classifier_t_min", "classifier_t_max", "cads",
    "clip_guidance_scale", "clip_guidance_prompt", "eta", "thresholding", "clip_t_min", "clip_t_max", "autoguidance",
    "clip_guidance_negative_prompt", "guidance_reads",
]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IN_CI = os.environ.get("CI") == "true"


def load_app_module():
    spec = importlib.util.spec_from_file_location("demo_app", REPO / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def block_by(blocks, **attributes):
    """The one block among ``blocks`` whose attributes have the given values."""
    (block,) = [b for b in blocks if all(getattr(b, k, None) == v for k, v in attributes.items())]
    return block


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return GuidedDiffusionPipeline.from_pretrained(tiny_pipeline_dir)


def tiny_classifier(labels: dict[str, list[str]]) -> NoiseAwareClassifier:
    """A small noise-aware classifier for 16x16 images with random, non-trivial weights."""
    torch.manual_seed(0)
    classifier = NoiseAwareClassifier(
        ClassifierConfig(image_size=16, labels=labels, base_channels=16, channel_mult=(1, 2), attention_resolutions=(8,), num_heads=2)
    ).eval()
    with torch.no_grad():
        for p in classifier.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return classifier


@pytest.fixture(scope="module")
def guided_dir(tiny_pipeline_dir, tmp_path_factory):
    """The tiny pipeline with a small noise-aware classifier, Shapes32 example prompts and a README,
    saved to its own folder."""
    pipe = GuidedDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.classifier = tiny_classifier(LABELS)
    pipe.clip = tiny_clip().float()
    pipe.example_prompts = SHAPES_PROMPTS
    directory = tmp_path_factory.mktemp("pipelines") / "guided"
    pipe.save_pretrained(directory)
    (directory / "README.md").write_text("Trained on 100 Shapes32 images for a test.\n")
    return directory


@pytest.fixture(scope="module")
def emoji_dir(tiny_pipeline_dir, tmp_path_factory):
    """A second model, as the emoji model will be: a style and category classifier, its own example
    prompts and sampling settings, and a cosine schedule over T = 500."""
    tiny = GuidedDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    pipe = GuidedDiffusionPipeline(
        tiny.unet,
        tiny.text_encoder,
        {**tiny.diffusion_config, "num_timesteps": 500, "beta_schedule": "cosine"},
        EMOJI_SAMPLING,
        tiny_classifier(EMOJI_LABELS),
        example_prompts=EMOJI_PROMPTS,
    )
    directory = tmp_path_factory.mktemp("pipelines") / "tiny-emoji"
    pipe.save_pretrained(directory)
    (directory / "README.md").write_text("A tiny emoji model for a test.\n")
    return directory


@pytest.fixture(scope="module")
def weak_dir(tiny_pipeline_dir, tmp_path_factory):
    """A weaker model of the tiny pipeline's kind (its UNet's weights shrunk and perturbed), to guide the
    tiny models with (autoguidance)."""
    pipe = GuidedDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.mul_(0.9).add_(torch.randn(p.shape, generator=generator) * 0.01)
    directory = tmp_path_factory.mktemp("pipelines") / "tiny-weak"
    pipe.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def server(guided_dir, emoji_dir, weak_dir):
    """The demo of the three tiny models (and the shipped ones) served in this process; one request is
    sampled at a time and at most 2 more wait in its queue."""
    demo = build_demo(DemoModels.from_names([guided_dir, emoji_dir, weak_dir]), concurrency_limit=1, max_queue=2)
    url = launch_demo(demo, port=free_port(), prevent_thread_lock=True)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


# ---------------------------------------------------------------------------------------- app.py


def test_missing_default_model_is_one_line_naming_model_flag(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("guided_diffusion.pipeline.PRETRAINED_DIR", tmp_path)
    app = load_app_module()
    assert app.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shapes32" in err and "--model" in err
    assert app.main(["--model", str(tmp_path / "nowhere")]) == 2
    assert app.main(["--device", "nonsense"]) == 2
    assert "--device" in capsys.readouterr().err


def test_app_serves_the_given_models_with_the_given_flags(monkeypatch, guided_dir, emoji_dir):
    app = load_app_module()
    launched = {}
    monkeypatch.setattr(app, "launch_demo", lambda demo, **kwargs: launched.update(demo=demo, **kwargs))
    argv = ["--model", str(guided_dir), "--model", str(emoji_dir), "--host", "0.0.0.0", "--port", "7999", "--share", "--device", "cpu"]
    assert app.main(argv) == 0
    assert {k: launched[k] for k in ("host", "port", "share")} == {"host": "0.0.0.0", "port": 7999, "share": True}
    assert "/generate" in launched["demo"].get_api_info()["named_endpoints"]
    picker = block_by(launched["demo"].blocks.values(), elem_id="model")
    assert [value for _, value in picker.choices] == ["guided", "tiny-emoji", *shipped_models()]
    assert picker.value == "guided"


# ---------------------------------------------------------------------------------------- the model picker


def test_models_are_the_given_ones_then_the_shipped_ones_each_loaded_once(monkeypatch, tiny_pipeline_dir, guided_dir, tmp_path):
    shipped = tmp_path / "pretrained"
    shutil.copytree(tiny_pipeline_dir, shipped / "guided")
    shutil.copytree(tiny_pipeline_dir, shipped / "broken")
    (shipped / "broken" / "unet" / "model.safetensors").unlink()
    monkeypatch.setattr("guided_diffusion.pipeline.PRETRAINED_DIR", shipped)

    models = DemoModels.from_names([guided_dir, "guided"])  # a folder named like a shipped model, then that model
    assert models.names == ["guided-2", "guided", "broken"] and models.default == "guided-2"  # never a path
    assert models.pipeline("guided") is models.pipeline("guided") and models.pipeline("guided").folder == shipped / "guided"
    assert models.pipeline("guided-2").classifier is not None and models.pipeline("guided-2").folder == guided_dir
    with pytest.raises(CheckpointError, match="model.safetensors"):  # shipped models load when first picked
        models.pipeline("broken")
    with pytest.raises(ValueError, match=re.escape("unknown model 'nope'; choose one of guided-2, guided, broken")):
        models.pipeline("nope")
    with pytest.raises(CheckpointError, match="model.safetensors"):  # given models load at once
        DemoModels.from_names(["broken"])
    assert DemoModels.from_names([]).names == ["broken", "guided"]  # shipped models in name order


def test_shapes32_offers_the_example_prompts_of_its_folder():
    assert GuidedDiffusionPipeline.from_pretrained("shapes32").example_prompts == SHAPES_PROMPTS


def test_page_settings_follow_the_model(pipe, guided_dir, emoji_dir):
    guided = model_settings(GuidedDiffusionPipeline.from_pretrained(guided_dir), "guided")
    emoji = model_settings(GuidedDiffusionPipeline.from_pretrained(emoji_dir), "tiny-emoji")
    plain = model_settings(pipe, "plain")
    assert guided["examples"]["samples"] == [[p] for p in [*SHAPES_PROMPTS, ""]]
    assert guided["examples"]["sample_labels"][-1] == '"" (unconditional)'
    assert emoji["examples"]["samples"] == [[p] for p in [*EMOJI_PROMPTS, ""]]
    assert plain["examples"]["samples"] == [[""]] and plain["prompt"]["placeholder"] == "empty: unconditional"
    assert guided["classifier_attribute"] == {"choices": ["shape", "color"], "value": "shape"}
    assert emoji["classifier_attribute"] == {"choices": ["style", "category"], "value": "style"}
    assert emoji["classifier_label"] == {"choices": ["flat", "outlined"], "value": "flat"}
    assert guided["classifier_scale"] == {"maximum": 100.0, "value": 0.0}  # the sampling config's default range
    assert emoji["classifier_scale"] == {"maximum": 500.0, "value": 0.0}  # the model's own
    assert plain["classifier_guidance"] == {"visible": False} and plain["classifier_attribute"]["choices"] == []
    assert (emoji["sampler"], emoji["steps"], emoji["guidance_scale"]) == ({"value": "dpm++"}, {"maximum": 500, "value": 20}, {"value": 2.0})
    assert "A tiny emoji model" in emoji["training"]["value"] and "style (flat, outlined)" in emoji["summary"]["value"]
    assert plain["guidance_reads"] == {"value": "x_t"}
    reads_x0 = GuidedDiffusionPipeline(pipe.unet, pipe.text_encoder, pipe.diffusion_config, {**pipe.sampling_config.to_dict(), "guidance_reads": "x0"})
    assert model_settings(reads_x0, "reads-x0")["guidance_reads"] == {"value": "x0"}  # the model's default on its page


def test_picking_a_model_switches_the_page(pipe, guided_dir, emoji_dir):
    demo = build_demo(DemoModels({"guided": guided_dir, "tiny-emoji": emoji_dir, "plain": pipe}))
    picker = block_by(demo.blocks.values(), elem_id="model")
    assert [value for _, value in picker.choices] == ["guided", "tiny-emoji", "plain"] and picker.value == "guided"
    assert block_by(demo.blocks.values(), elem_id="example-prompts").samples == [[p] for p in [*SHAPES_PROMPTS, ""]]
    switch = next(fn.fn for fn in demo.fns.values() if fn.name == "switch_model")

    shown = switch("tiny-emoji", next(iter(example_images().values())), 900)  # {page block: its update}
    assert shown[block_by(shown, elem_id="example-prompts")].sample_labels == [*EMOJI_PROMPTS, '"" (unconditional)']
    attribute, label = shown[block_by(shown, label="Attribute")], shown[block_by(shown, label="Class")]
    assert [value for _, value in attribute.choices] == ["style", "category"] and attribute.value == "style"
    assert [value for _, value in label.choices] == ["flat", "outlined"] and label.value == "flat"
    assert shown[block_by(shown, elem_id="classifier-guidance")].visible
    assert shown[block_by(shown, label="Steps")].maximum == 500 and shown[block_by(shown, label="Sampler")].value == "dpm++"
    timestep = shown[block_by(shown, elem_id="timestep")]
    assert (timestep.maximum, timestep.value) == (499, 499)  # t = 900 does not exist in T = 500
    assert any(isinstance(value, str) and "t = 499" in value and "cosine (this model)" in value for value in shown.values())
    assert shown[block_by(shown, elem_id="samples")] is None  # the previous model's samples are cleared
    guides = shown[block_by(shown, elem_id="autoguidance")]
    assert [value for _, value in guides.choices] == ["", "guided", "plain"] and guides.value == ""  # none, or another model
    assert not shown[block_by(shown, elem_id="eta")].visible  # dpm++ takes no eta
    assert shown[block_by(shown, label="CLIP guidance from t")].maximum == 499
    assert shown[block_by(shown, label="Classifier scale (0 off)")].maximum == 500

    hidden = switch("plain", None, 100)
    assert not hidden[block_by(hidden, elem_id="classifier-guidance")].visible
    assert not hidden[block_by(hidden, elem_id="clip-guidance")].visible
    assert hidden[block_by(hidden, elem_id="eta")].visible  # ddim takes eta
    assert [value for _, value in hidden[block_by(hidden, elem_id="autoguidance")].choices] == ["", "guided", "tiny-emoji"]
    eta_control = next(fn.fn for fn in demo.fns.values() if fn.name == "eta_control")
    assert not eta_control("euler", 0.5).visible and eta_control("euler", 0.5).value is None  # never sent to euler
    assert eta_control("dpm++2m-sde", 0.5).visible and eta_control("dpm++2m-sde", 0.5).value == 0.5
    assert hidden[block_by(hidden, label="Attribute")].choices == []
    assert hidden[block_by(hidden, label="Classifier scale (0 off)")].value == 0
    with pytest.raises(gr.Error, match="unknown model"):
        switch("nope", None, 100)


# ---------------------------------------------------------------------------------------- helpers


def test_check_request_refuses_bad_values_and_needs_a_classifier_for_guidance(pipe):
    ok = dict(prompt="a red circle", num_images=2, steps=10, sampler="ddim", guidance_scale=3.0,
              classifier_attribute=None, classifier_label=None, classifier_scale=0.0, seed=None)
    request = check_request(pipe, **ok)
    assert request.classifier_labels is None and 0 <= request.seed < 2**32 and request.notices == ()
    defaults = check_request(pipe, **{**ok, "steps": None, "sampler": None, "guidance_scale": None})
    assert (defaults.steps, defaults.sampler, defaults.guidance_scale) == (50, "ddim", 3.0)  # the model's sampling config
    with pytest.raises(ValueError, match="no classifier"):
        check_request(pipe, **{**ok, "classifier_scale": 2.0})
    with pytest.raises(ValueError, match="whole number"):
        check_request(pipe, **{**ok, "steps": 2.5})
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        check_request(pipe, **{**ok, "guidance_scale": float("inf")})
    scheduled = check_request(pipe, **ok, guidance_t_min=100, cads=True)
    assert scheduled.guidance_interval == (100.0, 999.0) and scheduled.cads and scheduled.classifier_interval is None
    assert check_request(pipe, **ok, guidance_t_min=0, guidance_t_max=999).guidance_interval is None  # the whole range
    kwargs = scheduled.pipeline_kwargs()
    assert (kwargs["guidance_interval"], kwargs["cads"]) == ((100.0, 999.0), True)
    assert scheduled.batch_key() != request.batch_key()
    with pytest.raises(ValueError, match="cads must be true or false"):
        check_request(pipe, **ok, cads="sometimes")
    reading_x0 = check_request(pipe, **ok, guidance_reads="x0")
    assert request.guidance_reads == "x_t" and reading_x0.pipeline_kwargs()["guidance_reads"] == "x0"
    assert reading_x0.batch_key() != request.batch_key()  # a batch shares what its guidance reads
    with pytest.raises(ValueError, match="guidance_reads must be one of x_t, x0, got 'x1'"):
        check_request(pipe, **ok, guidance_reads="x1")


def test_check_request_takes_eta_thresholding_a_clip_interval_and_an_autoguidance_model(guided_dir, emoji_dir, weak_dir):
    models = DemoModels({"guided": guided_dir, "tiny-emoji": emoji_dir, "tiny-weak": weak_dir})
    guided, weak = models.pipeline("guided"), models.pipeline("tiny-weak")
    ok = dict(prompt="a red circle", num_images=1, steps=4, sampler="ddim", guidance_scale=3.0,
              classifier_attribute=None, classifier_label=None, classifier_scale=0.0, seed=3)
    new = dict(eta=0.5, thresholding=0.995, clip_guidance_scale=20.0, clip_t_min=100, clip_t_max=800, autoguidance="tiny-weak")
    request = check_request(guided, **ok, **new, models=models, model="guided")
    kwargs = request.pipeline_kwargs()
    assert (kwargs["eta"], kwargs["thresholding"], kwargs["clip_guidance_interval"]) == (0.5, 0.995, (100.0, 800.0))
    assert kwargs["autoguidance"] is weak and request.autoguidance == "tiny-weak"
    direct = guided("a red circle", num_inference_steps=4, sampler="ddim", guidance_scale=3.0, eta=0.5, thresholding=0.995,
                    clip_guidance_scale=20.0, clip_guidance_interval=(100, 800), autoguidance=weak, seed=3, output_type="pt")
    assert torch.equal(guided(**kwargs, output_type="pt").images, direct.images)
    # the guide counts by its name in the (hashable) batch key; the empty prompt is guided by it too
    unguided = check_request(guided, **ok, **{**new, "autoguidance": ""}, models=models, model="guided")
    assert unguided.autoguidance is None and unguided.pipeline_kwargs()["autoguidance"] is None
    assert hash(request.batch_key()) is not None and request.batch_key() != unguided.batch_key()
    empty = check_request(guided, **{**ok, "prompt": ""}, **new, models=models, model="guided")
    assert empty.batch_key() == request.batch_key()
    defaults = check_request(guided, **{**ok, "sampler": "dpm++2m-sde"})
    assert (defaults.eta, defaults.thresholding, defaults.clip_guidance_interval, defaults.autoguidance) == (None, None, None, None)
    lines = "a red square\n\n  a green circle \na red square"  # one caption a line: blank ones dropped, repeats once
    away = check_request(guided, **ok, clip_guidance_scale=20.0, clip_guidance_negative_prompt=lines)
    assert away.pipeline_kwargs()["clip_guidance_negative_prompt"] == ("a red square", "a green circle")
    assert away.batch_key() != check_request(guided, **ok, clip_guidance_scale=20.0).batch_key()
    assert check_request(guided, **ok, clip_guidance_negative_prompt=lines).clip_guidance_negative_prompt is None  # CLIP guidance off

    def refused(message, **bad):
        with pytest.raises(ValueError, match=message):
            check_request(guided, **{**ok, **bad}, models=models, model="guided")

    refused("sampler 'euler' takes no option 'eta'; its options: none", sampler="euler", eta=0.5)  # the pipeline's message
    refused("eta must be between 0 and 10", eta=11)
    refused("eta must be between 0 and 10", eta=-0.5)
    refused("eta must be a finite number", eta="much")
    refused("thresholding must be between 0 and 1", thresholding=1.5)
    refused("thresholding must be a quantile above 0", thresholding=0)
    refused(re.escape("unknown autoguidance model 'nope'; choose one of tiny-emoji, tiny-weak (or none)"), autoguidance="nope")
    refused("'guided' is the model being sampled, which cannot guide itself", autoguidance="guided")
    refused("autoguidance needs a model with the same diffusion num_timesteps: this one has 1000, the guide 500", autoguidance="tiny-emoji")
    refused("autoguidance must be a model's name", autoguidance=3)
    refused(re.escape("clip_t_min (900) must not be above clip_t_max (100)"), clip_t_min=900, clip_t_max=100)
    refused("clip_t_max must be between 0 and 999", clip_t_max=1000)
    refused("clip_guidance_negative_prompt must be text, got list", clip_guidance_scale=20.0, clip_guidance_negative_prompt=["a"])
    refused("clip_guidance_negative_prompt is 1001 characters long; the limit is 1000", clip_guidance_negative_prompt="x" * 1001)
    with pytest.raises(ValueError, match="no other model is offered"):
        check_request(guided, **ok, autoguidance="tiny-weak")  # no models to pick a guide from


def test_over_long_prompts_are_noticed_and_truncated_at_the_context(pipe):
    context = pipe.text_encoder.context_length
    assert prompt_truncation(pipe.text_encoder, " ".join(["red"] * (context - 2))) is None  # exactly fits
    notice = prompt_truncation(pipe.text_encoder, " ".join(["red"] * (context - 1)))
    assert notice and f"text encoder's {context}" in notice and f"takes {context + 1} tokens" in notice
    assert f"first {context - 2} tokens" in notice
    request = check_request(pipe, "a small blue triangle in the top right " * 4, 1, 2, "ddim", 1.0, None, None, 0, 0)
    assert len(request.notices) == 1


def test_sampling_streams_every_step_with_a_few_previews_and_stops_when_closed(pipe):
    batcher = SamplingBatcher()
    request = check_request(pipe, "a green square", 2, 12, "ddpm", 3.0, None, None, 0, 7)
    updates = list(batcher.submit("tiny", pipe, request, max_previews=4))
    steps = [u for u in updates if isinstance(u, StepUpdate)]
    assert [u.step for u in steps] == list(range(12)) and isinstance(updates[-1], SamplingDone)
    assert [u.step for u in steps if u.x_t is not None] == preview_steps(12, 4) == [0, 4, 7, 11]
    assert preview_steps(12, 0) == [] and preview_steps(12, 1) == [11]
    assert steps[-1].pred_x0.shape == (2, 3, 16, 16)
    assert torch.equal(updates[-1].images, pipe(**request.pipeline_kwargs(), output_type="pt").images)  # alone: exactly

    evaluations = []
    hook = pipe.unet.register_forward_hook(lambda *_: evaluations.append(1))
    try:
        stream = batcher.submit("tiny", pipe, check_request(pipe, "", 1, 500, "ddim", 1.0, None, None, 0, 0))
        next(stream)
        stream.close()  # the batch has no consumer left: it stops at its next step
        batcher.close()  # joins the worker once its batch is over
    finally:
        hook.remove()
    assert len(evaluations) < 10  # of 500 steps
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("tiny", pipe, request)


def test_requests_that_arrive_together_are_batched_and_keep_their_own_images(pipe):
    """Different prompts, seeds and image counts share a batch; other settings wait for their own;
    each request gets the images it gets alone (ddpm draws fresh noise at every step)."""
    batcher = SamplingBatcher(max_batch_images=8, gather_seconds=1.0)
    raw = [
        ("a green square", 2, 10, "ddpm", 3.0, None, None, 0, 5),
        ("a red circle", 1, 10, "ddpm", 3.0, None, None, 0, 6),
        ("a green square", 3, 10, "ddpm", 3.0, None, None, 0, 5),
        ("a red circle", 2, 10, "ddpm", 2.0, None, None, 0, 6),  # another guidance scale: its own batch
        ("", 1, 10, "ddpm", 3.0, None, None, 0, 7),  # unguided: its own batch
        ("a blue triangle", 3, 10, "ddpm", 3.0, None, None, 0, 8),  # over the 8 images: the next batch
    ]
    requests = [check_request(pipe, *args) for args in raw]
    streams = [batcher.submit("tiny", pipe, request, max_previews=2) for request in requests]
    results = [list(stream) for stream in streams]
    batcher.close()
    assert batcher.batch_sizes == [3, 1, 1, 1]
    for request, updates in zip(requests, results):
        alone = pipe(**request.pipeline_kwargs(), output_type="pt").images
        assert updates[-1].images.shape == alone.shape
        torch.testing.assert_close(updates[-1].images, alone, rtol=0, atol=1e-4)
        previews = [u for u in updates if isinstance(u, StepUpdate) and u.x_t is not None]
        assert [u.step for u in previews] == [0, 9] and previews[0].x_t.shape[0] == request.num_images


def test_a_pipeline_error_reaches_every_request_of_its_batch(pipe):
    class Broken:
        device = torch.device("cpu")

        def __call__(self, *args, **kwargs):
            raise RuntimeError("the device fell over")

    batcher = SamplingBatcher(gather_seconds=1.0)
    request = check_request(pipe, "a red circle", 1, 3, "ddim", 3.0, None, None, 0, 0)
    streams = [batcher.submit("broken", Broken(), request) for _ in range(2)]
    for stream in streams:
        with pytest.raises(RuntimeError, match="the device fell over"):
            list(stream)
    assert batcher.batch_sizes == [2]
    assert isinstance(list(batcher.submit("tiny", pipe, request))[-1], SamplingDone)  # the worker goes on
    batcher.close()


def test_forward_process_shows_both_schedules(pipe):
    processes = schedule_processes(pipe)
    assert list(processes) == ["linear", "cosine"] and processes["linear"] is pipe.diffusion
    x0 = image_to_tensor(next(iter(example_images().values())), 16)
    assert x0.shape == (1, 3, 16, 16) and x0.min() >= -1 and x0.max() <= 1
    assert image_to_tensor(Image.new("RGBA", (40, 24), (255, 0, 0, 128)), 16).shape == (1, 3, 16, 16)
    grid = noised_grid(processes, x0, 500, num_samples=3)
    assert grid.width > grid.height > 16 * 2  # two enlarged rows of 1 + 3 images
    table = schedule_table(processes, 500, "linear")
    assert "linear (this model)" in table and "cosine" in table
    figure = schedule_figure(processes, 500)
    assert [axis.get_yscale() for axis in figure.axes] == ["linear", "log"]
    grid, table, _ = forward_view(pipe, next(iter(example_images().values())), 5000)
    assert grid.width > grid.height and "t = 999" in table  # clamped to the model's T
    assert forward_view(pipe, None, 10)[:2] == (None, "Pick an example or upload an image.")


def test_model_card_reads_the_folder_documents_and_names_the_model_not_its_folder(guided_dir):
    card = model_card(GuidedDiffusionPipeline.from_pretrained(guided_dir), "guided")
    assert "Trained on 100 Shapes32 images" in card["training"]
    assert "Not available" in card["evaluation"]
    assert "unet" in card["summary"] and "total" in card["summary"] and "beta_schedule" in card["config"]
    assert "- **Model:** `guided`" in card["summary"] and str(guided_dir) not in "".join(card.values())


def test_two_folders_of_one_name_are_told_apart_without_their_paths(guided_dir, tmp_path):
    twin = tmp_path / "elsewhere" / guided_dir.name
    shutil.copytree(guided_dir, twin)
    models = DemoModels.from_names([guided_dir, twin])
    assert models.names[:2] == ["guided", "guided-2"] and set(models.names[2:]) == set(shipped_models())


def test_no_page_or_api_answer_shows_the_servers_paths(server, client, guided_dir, emoji_dir, weak_dir, tmp_path):
    import urllib.request

    from guided_diffusion.demo.public import scrub_paths

    server_paths = [str(REPO), str(guided_dir), str(emoji_dir), str(weak_dir), str(guided_dir.parent), str(Path.home())]
    answers = [urllib.request.urlopen(server.rstrip("/") + path).read().decode() for path in ("/", "/config", "/gradio_api/info")]
    answers.append(str(client.view_api(print_info=False, return_format="dict")))
    with pytest.raises(AppError) as refused:
        client.predict(prompt="", num_images=1, model="/srv/models/secret", api_name="/generate")
    answers.append(str(refused.value))
    demo = build_demo(DemoModels.from_names([guided_dir, emoji_dir]))
    switch = next(fn.fn for fn in demo.fns.values() if fn.name == "switch_model")
    answers += [str(getattr(update, "value", update)) for update in switch("tiny-emoji", None, 10).values()]
    leaked = [p for p in server_paths if any(p in answer for answer in answers)]
    assert not leaked, leaked
    # a model folder that breaks when first picked: its error names the file, not where it lives
    broken = tmp_path / "broken"
    shutil.copytree(guided_dir, broken)
    (broken / "unet" / "model.safetensors").write_bytes(b"not a safetensors file")
    demo = build_demo(DemoModels({"guided": guided_dir, "broken": broken}))
    generate = next(fn.fn for fn in demo.fns.values() if fn.name == "generate")
    with pytest.raises(gr.Error) as error:
        generate("a red circle", model="broken")
    assert "model.safetensors" in error.value.message and str(tmp_path) not in error.value.message
    assert scrub_paths(f"cannot read {broken}/unet/model.safetensors") == "cannot read model.safetensors"


def test_classifier_controls_are_hidden_without_a_classifier(pipe):
    demo = build_demo(DemoModels({"plain": pipe}))
    assert block_by(demo.blocks.values(), elem_id="classifier-guidance").visible is False
    assert block_by(demo.blocks.values(), elem_id="clip-guidance").visible is False
    assert model_settings(pipe, "plain")["clip_guidance"] == {"visible": False}


# ---------------------------------------------------------------------------------------- the API


def test_generate_api_returns_the_images(client):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert list(info) == ["/generate"]
    parameters = info["/generate"]["parameters"]
    assert [p["parameter_name"] for p in parameters] == API_PARAMETERS
    assert [p["parameter_has_default"] for p in parameters] == [False] + [True] * 24
    assert [p["parameter_default"] for p in parameters[1:]] == [4, None, None, None, None, None, 0, 0, "guided", None] + [None] * 4 + [False, None, None] + [None] * 7

    result = client.predict(prompt="a large red circle in the center", num_images=4, steps=25, seed=3, api_name="/generate")
    images = [Image.open(item["image"]) for item in result]
    assert len(images) == 4 and all(image.size == (16, 16) and image.mode == "RGB" for image in images)
    again = client.predict(prompt="a large red circle in the center", num_images=1, steps=25, seed=3, api_name="/generate")
    assert Image.open(again[0]["image"]).tobytes() == images[0].tobytes()  # same seed, same image

    karras = client.predict(prompt="a green square", num_images=1, steps=4, sampler="heun", timestep_schedule="karras",
                            seed=2, api_name="/generate")
    assert Image.open(karras[0]["image"]).tobytes() != Image.open(
        client.predict(prompt="a green square", num_images=1, steps=4, sampler="heun", seed=2, api_name="/generate")[0]["image"]
    ).tobytes()

    guided = client.predict(prompt="", num_images=2, steps=5, sampler="dpm++", classifier_attribute="shape",
                            classifier_label="square", classifier_scale=20.0, seed=1, api_name="/generate")
    plain = client.predict(prompt="", num_images=2, steps=5, sampler="dpm++", seed=1, api_name="/generate")
    assert len(guided) == 2
    assert Image.open(guided[0]["image"]).tobytes() != Image.open(plain[0]["image"]).tobytes()

    def first_image(**kwargs):
        return Image.open(client.predict(prompt="a green square", num_images=1, steps=5, seed=4, api_name="/generate", **kwargs)[0]["image"]).tobytes()

    everywhere = first_image()
    steered = first_image(clip_guidance_scale=50.0, clip_guidance_prompt="a red circle")
    assert steered != everywhere and first_image(clip_guidance_scale=50.0) != steered  # default: the prompt itself
    assert first_image(guidance_t_min=0, guidance_t_max=999) == everywhere
    assert first_image(guidance_t_min=500) != everywhere and first_image(cads=True) != everywhere


def test_generate_api_samples_the_named_model_with_its_own_settings(client, emoji_dir):
    result = client.predict(prompt="a grinning face", num_images=1, seed=5, model="tiny-emoji", api_name="/generate")
    emoji = GuidedDiffusionPipeline.from_pretrained(emoji_dir)
    assert all(getattr(emoji.sampling_config, k) == v for k, v in EMOJI_SAMPLING.items())
    expected = emoji("a grinning face", seed=5).images[0]
    assert Image.open(result[0]["image"]).tobytes() == expected.tobytes()  # its sampler, steps and guidance scale
    guided = client.predict(prompt="", num_images=1, steps=3, classifier_attribute="category", classifier_label="food",
                            classifier_scale=10.0, seed=1, model="tiny-emoji", api_name="/generate")
    assert len(guided) == 1


def test_generate_api_takes_eta_thresholding_a_clip_interval_and_an_autoguidance_model(client, guided_dir, weak_dir):
    def served(**kwargs):
        result = client.predict(prompt="a green square", num_images=1, steps=5, sampler="ddim", seed=4, api_name="/generate", **kwargs)
        return Image.open(result[0]["image"]).tobytes()

    guided = GuidedDiffusionPipeline.from_pretrained(guided_dir)
    weak = GuidedDiffusionPipeline.from_pretrained(weak_dir)
    expected = guided("a green square", num_inference_steps=5, sampler="ddim", eta=0.7, thresholding=0.9, autoguidance=weak, seed=4)
    assert served(eta=0.7, thresholding=0.9, autoguidance="tiny-weak") == expected.images[0].tobytes()
    plain = served()
    assert served(eta=0.7) != plain and served(thresholding=0.9) != plain and served(autoguidance="tiny-weak") != plain
    assert served(autoguidance="") == plain  # none
    clip = served(clip_guidance_scale=50.0)
    assert served(clip_guidance_scale=50.0, clip_t_min=0, clip_t_max=999) == clip  # the whole range
    assert served(clip_guidance_scale=50.0, clip_t_min=500) != clip
    away = guided("a green square", num_inference_steps=5, sampler="ddim", clip_guidance_scale=50.0,
                  clip_guidance_negative_prompt=["a red square", "a green circle"], seed=4)
    assert served(clip_guidance_scale=50.0, clip_guidance_negative_prompt="a red square\na green circle") == away.images[0].tobytes() != clip
    through_x0 = guided("a green square", num_inference_steps=5, sampler="ddim", clip_guidance_scale=50.0, guidance_reads="x0", seed=4)
    assert served(clip_guidance_scale=50.0, guidance_reads="x0") == through_x0.images[0].tobytes() != clip


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"num_images": 0}, "num_images must be between 1 and 16"),
        ({"num_images": 17}, "num_images must be between 1 and 16"),
        ({"num_images": "four"}, "num_images must be a whole number"),
        ({"steps": 0}, "steps must be between 1 and 1000"),
        ({"sampler": "rk4"}, "unknown sampler 'rk4'; choose one of ddpm, ddim, euler, heun, dpm\\+\\+"),
        ({"timestep_schedule": "cosine"}, "unknown timestep schedule 'cosine'; choose one of uniform, trailing, karras, log_snr"),
        ({"guidance_scale": -1}, "guidance_scale must be between 0 and 20"),
        ({"classifier_scale": 3.0, "classifier_attribute": "size"}, "unknown classifier attribute 'size'; valid attributes:"),
        ({"classifier_scale": 3.0, "classifier_attribute": "shape", "classifier_label": "hexagon"}, "unknown shape 'hexagon'; valid:"),
        ({"classifier_scale": 101.0, "classifier_attribute": "shape", "classifier_label": "circle"},
         "classifier_scale must be between 0 and 100, got 101"),
        ({"model": "tiny-emoji", "classifier_scale": 501.0, "classifier_attribute": "style", "classifier_label": "flat"},
         "classifier_scale must be between 0 and 500, got 501"),
        ({"seed": -1}, "seed must be between 0 and"),
        ({"prompt": "a red circle " * 100}, "the limit is 1000"),
        ({"model": "emoji64"}, "unknown model 'emoji64'; choose one of guided, tiny-emoji"),
        ({"model": "tiny-emoji", "classifier_scale": 3.0, "classifier_attribute": "shape", "classifier_label": "circle"},
         "unknown classifier attribute 'shape'; valid attributes: style, category"),
        ({"model": "tiny-emoji", "steps": 501}, "steps must be between 1 and 500"),
        ({"guidance_t_min": 600, "guidance_t_max": 200}, "guidance_t_min \\(600\\) must not be above guidance_t_max \\(200\\)"),
        ({"model": "tiny-emoji", "classifier_t_max": 700}, "classifier_t_max must be between 0 and 499"),
        ({"model": "tiny-emoji", "clip_guidance_scale": 5}, "this model has no noise-aware CLIP"),
        ({"clip_guidance_scale": -5}, "clip_guidance_scale must be between 0 and 1000"),
        ({"sampler": "euler", "eta": 0.5}, "sampler 'euler' takes no option 'eta'; its options: none"),
        ({"sampler": "ddim", "eta": 11}, "eta must be between 0 and 10"),
        ({"thresholding": 1.5}, "thresholding must be between 0 and 1"),
        ({"thresholding": 0}, "thresholding must be a quantile above 0 and at most 1"),
        ({"autoguidance": "emoji64"}, "unknown autoguidance model 'emoji64'; choose one of tiny-emoji, tiny-weak"),
        ({"autoguidance": "guided"}, "'guided' is the model being sampled, which cannot guide itself"),
        ({"autoguidance": "tiny-emoji"}, "autoguidance needs a model with the same diffusion num_timesteps: this one has 1000, the guide 500"),
        ({"clip_t_min": 800, "clip_t_max": 100}, "clip_t_min \\(800\\) must not be above clip_t_max \\(100\\)"),
        ({"model": "tiny-emoji", "clip_t_max": 600}, "clip_t_max must be between 0 and 499"),
    ],
)
def test_bad_input_is_refused_with_a_message(client, bad, message):
    with pytest.raises(AppError, match=message):
        client.predict(**{"prompt": "a green square", "num_images": 1, "steps": 2, **bad}, api_name="/generate")


def test_server_still_answers_after_bad_input(client):
    with pytest.raises(AppError):
        client.predict(prompt=None, steps=-5, api_name="/generate")
    assert len(client.predict(prompt="a small blue triangle in the top right " * 3, num_images=1, steps=2, api_name="/generate")) == 1


def test_busy_server_refuses_excess_requests_and_recovers(server):
    clients = [Client(server, verbose=False) for _ in range(6)]
    jobs = [c.submit(prompt="a green square", num_images=8, steps=40, seed=i, api_name="/generate") for i, c in enumerate(clients)]
    outcomes = []
    for job in jobs:
        try:
            outcomes.append(len(job.result(timeout=120)))
        except QueueError as err:
            outcomes.append(str(err))
    refused = [o for o in outcomes if isinstance(o, str)]
    assert refused and all("try again" in o for o in refused)
    assert outcomes.count(8) >= 3  # one running and two waiting
    assert len(clients[0].predict(prompt="", num_images=1, steps=2, api_name="/generate")) == 1


def test_the_default_queue_serves_32_simultaneous_clients_in_batches_with_their_own_images(guided_dir):
    batcher = SamplingBatcher()
    demo = build_demo(DemoModels({"guided": guided_dir}), batcher=batcher)  # the default limits
    url = launch_demo(demo, port=free_port(), prevent_thread_lock=True)
    try:
        clients = [Client(url, verbose=False) for _ in range(32)]
        jobs = [c.submit(prompt="a red circle", num_images=2, steps=3, seed=i, api_name="/generate") for i, c in enumerate(clients)]
        results = [job.result(timeout=300) for job in jobs]
    finally:
        demo.close()
        batcher.close()
    assert [len(result) for result in results] == [2] * 32
    assert sum(batcher.batch_sizes) == 32 and max(batcher.batch_sizes) > 1
    pipe = GuidedDiffusionPipeline.from_pretrained(guided_dir)
    for seed, result in enumerate(results):
        alone = np.stack([np.asarray(image) for image in pipe("a red circle", num_images_per_prompt=2, num_inference_steps=3, seed=seed).images])
        served = np.stack([np.asarray(Image.open(item["image"])) for item in result])
        assert np.abs(served.astype(int) - alone.astype(int)).max() <= 1  # float rounding may flip a last bit


# ---------------------------------------------------------------------------------------- the page


@pytest.mark.skipif(CHROMIUM is None and not IN_CI, reason="needs Debian's chromium (apt-get install chromium)")
def test_page_generates_with_previews_in_headless_chromium(server, tmp_path):
    # CI installs both (.ci/run), so there a missing browser fails instead of skipping.
    assert CHROMIUM is not None, "chromium is not installed"
    from playwright import sync_api
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tmp_path / "profile",  # a fresh --user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
            viewport={"width": 1400, "height": 1100},
        )
        try:
            page = browser.new_page()
            page.goto(server)
            page.locator("#example-prompts").get_by_text("a large red circle in the center", exact=True).click()
            sync_api.expect(page.get_by_label("Prompt", exact=True)).to_have_value("a large red circle in the center")
            page.get_by_role("button", name="Generate").click()
            page.get_by_text("Done: 4 image(s), 50 ddim steps (uniform), seed 0").wait_for(timeout=60_000)
            page.screenshot(path=tmp_path / "generate.png", full_page=True)
            assert page.locator("#samples img").count() >= 4
            assert page.locator("#x0-preview img").count() == 1 and page.locator("#trajectory img").count() == 1

            page.get_by_label("Prompt", exact=True).fill("x" * 1001)
            page.get_by_role("button", name="Generate").click()
            page.get_by_text("the limit is 1000").first.wait_for(timeout=20_000)
            sync_api.expect(page.locator("#eta")).to_be_visible()  # ddim takes eta, euler none
            page.get_by_label("euler", exact=True).check()
            sync_api.expect(page.locator("#eta")).to_be_hidden()

            page.get_by_role("tab", name="Forward process").click()
            page.get_by_text("linear (this model)").wait_for(timeout=20_000)
            page.locator("#timestep input[type=number]").fill("900")
            page.locator("#timestep input[type=number]").press("Enter")
            page.get_by_text("t = 900").wait_for(timeout=20_000)
            page.screenshot(path=tmp_path / "forward.png", full_page=True)
            page.get_by_role("tab", name="Model").click()
            page.get_by_text("Trained on 100 Shapes32 images").wait_for(timeout=20_000)
            page.screenshot(path=tmp_path / "model.png", full_page=True)

            page.get_by_label("Model", exact=True).click()  # the picker: the whole page follows the model
            page.get_by_role("option", name="tiny-emoji").click()
            page.get_by_text("A tiny emoji model for a test").wait_for(timeout=20_000)
            page.get_by_role("tab", name="Generate").click()
            examples = page.locator("#example-prompts")
            sync_api.expect(examples.get_by_text("a large red circle in the center", exact=True)).to_have_count(0)
            sync_api.expect(page.get_by_label("Attribute", exact=True)).to_have_value("style")
            examples.get_by_text("a grinning face", exact=True).click()
            sync_api.expect(page.get_by_label("Prompt", exact=True)).to_have_value("a grinning face")
            page.get_by_role("button", name="Generate").click()
            page.get_by_text("Done: 4 image(s), 20 dpm++ steps (uniform), seed 0").wait_for(timeout=60_000)
            page.screenshot(path=tmp_path / "second-model.png", full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "generate.png").stat().st_size > 10_000

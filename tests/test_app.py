"""The Gradio demo: app.py's command line, the demo helpers, the ``/generate`` API of a running server
(good and bad input, a busy queue), and the page driven in headless Chromium."""

import importlib.util
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError
from PIL import Image

from guided_diffusion import GuidedDiffusionPipeline
from guided_diffusion.demo import build_demo, launch_demo
from guided_diffusion.demo.forward import example_images, image_to_tensor, noised_grid, schedule_figure, schedule_processes, schedule_table
from guided_diffusion.demo.generation import (
    SamplingDone,
    StepUpdate,
    check_request,
    preview_steps,
    prompt_truncation,
    sample_with_previews,
)
from guided_diffusion.demo.model_card import model_card
from guided_diffusion.models.classifier import ClassifierConfig, NoiseAwareClassifier

REPO = Path(__file__).resolve().parents[1]
LABELS = {"shape": ["circle", "square", "triangle"], "color": ["red", "green", "blue"]}
API_PARAMETERS = [
    "prompt", "num_images", "steps", "sampler", "guidance_scale",
    "classifier_attribute", "classifier_label", "classifier_scale", "seed",
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


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return GuidedDiffusionPipeline.from_pretrained(tiny_pipeline_dir)


@pytest.fixture(scope="module")
def guided_dir(tiny_pipeline_dir, tmp_path_factory):
    """The tiny pipeline with a small noise-aware classifier and a README, saved to its own folder."""
    pipe = GuidedDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    torch.manual_seed(0)
    pipe.classifier = NoiseAwareClassifier(
        ClassifierConfig(image_size=16, labels=LABELS, base_channels=16, channel_mult=(1, 2), attention_resolutions=(8,), num_heads=2)
    ).eval()
    with torch.no_grad():
        for p in pipe.classifier.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)
    directory = tmp_path_factory.mktemp("pipelines") / "guided"
    pipe.save_pretrained(directory)
    (directory / "README.md").write_text("Trained on 100 Shapes32 images for a test.\n")
    return directory


@pytest.fixture(scope="module")
def server(guided_dir):
    """The demo of the guided pipeline served in this process; at most 2 requests wait in its queue."""
    demo = build_demo(GuidedDiffusionPipeline.from_pretrained(guided_dir), folder=guided_dir, max_queue=2)
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


def test_app_serves_the_given_model_with_the_given_flags(monkeypatch, guided_dir):
    app = load_app_module()
    launched = {}
    monkeypatch.setattr(app, "launch_demo", lambda demo, **kwargs: launched.update(demo=demo, **kwargs))
    assert app.main(["--model", str(guided_dir), "--host", "0.0.0.0", "--port", "7999", "--share", "--device", "cpu"]) == 0
    assert {k: launched[k] for k in ("host", "port", "share")} == {"host": "0.0.0.0", "port": 7999, "share": True}
    assert "/generate" in launched["demo"].get_api_info()["named_endpoints"]


# ---------------------------------------------------------------------------------------- helpers


def test_check_request_refuses_bad_values_and_needs_a_classifier_for_guidance(pipe):
    ok = dict(prompt="a red circle", num_images=2, steps=10, sampler="ddim", guidance_scale=3.0,
              classifier_attribute=None, classifier_label=None, classifier_scale=0.0, seed=None)
    request = check_request(pipe, **ok)
    assert request.classifier_labels is None and 0 <= request.seed < 2**32 and request.notices == ()
    with pytest.raises(ValueError, match="no classifier"):
        check_request(pipe, **{**ok, "classifier_scale": 2.0})
    with pytest.raises(ValueError, match="whole number"):
        check_request(pipe, **{**ok, "steps": 2.5})
    with pytest.raises(ValueError, match="guidance_scale must be a number"):
        check_request(pipe, **{**ok, "guidance_scale": float("inf")})


def test_over_long_prompts_are_noticed_and_truncated_at_the_context(pipe):
    context = pipe.text_encoder.context_length
    assert prompt_truncation(pipe.text_encoder, " ".join(["red"] * (context - 2))) is None  # exactly fits
    notice = prompt_truncation(pipe.text_encoder, " ".join(["red"] * (context - 1)))
    assert notice and f"text encoder's {context}" in notice and f"takes {context + 1} tokens" in notice
    assert f"first {context - 2} tokens" in notice
    request = check_request(pipe, "a small blue triangle in the top right " * 4, 1, 2, "ddim", 1.0, None, None, 0, 0)
    assert len(request.notices) == 1


def test_sampling_streams_every_step_with_a_few_previews_and_stops_when_closed(pipe):
    request = check_request(pipe, "a green square", 2, 12, "ddpm", 3.0, None, None, 0, 7)
    updates = list(sample_with_previews(pipe, request, max_previews=4))
    steps = [u for u in updates if isinstance(u, StepUpdate)]
    assert [u.step for u in steps] == list(range(12)) and isinstance(updates[-1], SamplingDone)
    assert [u.step for u in steps if u.x_t is not None] == preview_steps(12, 4) == [0, 4, 7, 11]
    assert steps[-1].pred_x0.shape == (2, 3, 16, 16)
    assert torch.equal(updates[-1].images, pipe(**request.pipeline_kwargs(), output_type="pt"))

    stream = sample_with_previews(pipe, check_request(pipe, "", 1, 500, "ddim", 1.0, None, None, 0, 0))
    next(stream)
    stream.close()  # stops and joins the worker at its next step
    assert not any(t.name == "guided-diffusion-sampler" for t in threading.enumerate())


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


def test_model_card_reads_the_folder_documents(pipe, guided_dir):
    card = model_card(pipe, guided_dir)
    assert "Trained on 100 Shapes32 images" in card["training"]
    assert "Not available" in card["evaluation"]
    assert "unet" in card["summary"] and "total" in card["summary"] and "beta_schedule" in card["config"]


def test_classifier_controls_are_hidden_without_a_classifier(pipe):
    demo = build_demo(pipe)
    group = next(block for block in demo.blocks.values() if block.elem_id == "classifier-guidance")
    assert group.visible is False


# ---------------------------------------------------------------------------------------- the API


def test_generate_api_returns_the_images(client):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert list(info) == ["/generate"]
    parameters = info["/generate"]["parameters"]
    assert [p["parameter_name"] for p in parameters] == API_PARAMETERS
    assert [p["parameter_has_default"] for p in parameters] == [False] + [True] * 8

    result = client.predict(prompt="a large red circle in the center", num_images=4, steps=25, seed=3, api_name="/generate")
    images = [Image.open(item["image"]) for item in result]
    assert len(images) == 4 and all(image.size == (16, 16) and image.mode == "RGB" for image in images)
    again = client.predict(prompt="a large red circle in the center", num_images=1, steps=25, seed=3, api_name="/generate")
    assert Image.open(again[0]["image"]).tobytes() == images[0].tobytes()  # same seed, same image

    guided = client.predict(prompt="", num_images=2, steps=5, sampler="dpm++", classifier_attribute="shape",
                            classifier_label="square", classifier_scale=20.0, seed=1, api_name="/generate")
    plain = client.predict(prompt="", num_images=2, steps=5, sampler="dpm++", seed=1, api_name="/generate")
    assert len(guided) == 2
    assert Image.open(guided[0]["image"]).tobytes() != Image.open(plain[0]["image"]).tobytes()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"num_images": 0}, "num_images must be between 1 and 16"),
        ({"num_images": 17}, "num_images must be between 1 and 16"),
        ({"num_images": "four"}, "num_images must be a whole number"),
        ({"steps": 0}, "steps must be between 1 and 1000"),
        ({"sampler": "euler"}, "unknown sampler 'euler'; choose one of ddpm, ddim, dpm\\+\\+"),
        ({"guidance_scale": -1}, "guidance_scale must be between 0 and 20"),
        ({"classifier_scale": 3.0, "classifier_attribute": "size"}, "unknown classifier_attribute 'size'; choose one of"),
        ({"classifier_scale": 3.0, "classifier_attribute": "shape", "classifier_label": "hexagon"}, "unknown classifier_label 'hexagon'"),
        ({"seed": -1}, "seed must be between 0 and"),
        ({"prompt": "a red circle " * 100}, "the limit is 1000"),
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
            page.get_by_text("a large red circle in the center", exact=True).click()  # an example prompt
            sync_api.expect(page.get_by_label("Prompt")).to_have_value("a large red circle in the center")
            page.get_by_role("button", name="Generate").click()
            page.get_by_text("Done: 4 image(s), 50 ddim steps, seed 0").wait_for(timeout=60_000)
            page.screenshot(path=tmp_path / "generate.png", full_page=True)
            assert page.locator("#samples img").count() >= 4
            assert page.locator("#x0-preview img").count() == 1 and page.locator("#trajectory img").count() == 1

            page.get_by_label("Prompt").fill("x" * 1001)
            page.get_by_role("button", name="Generate").click()
            page.get_by_text("the limit is 1000").first.wait_for(timeout=20_000)

            page.get_by_role("tab", name="Forward process").click()
            page.get_by_text("linear (this model)").wait_for(timeout=20_000)
            page.locator("#timestep input[type=number]").fill("900")
            page.locator("#timestep input[type=number]").press("Enter")
            page.get_by_text("t = 900").wait_for(timeout=20_000)
            page.screenshot(path=tmp_path / "forward.png", full_page=True)
            page.get_by_role("tab", name="Model").click()
            page.get_by_text("Trained on 100 Shapes32 images").wait_for(timeout=20_000)
            page.screenshot(path=tmp_path / "model.png", full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "generate.png").stat().st_size > 10_000

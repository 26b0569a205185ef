"""The shipped models load offline, by name, with their classifiers, and sample."""

import json

import numpy as np
import pytest
import torch

from guided_diffusion import GuidedDiffusionPipeline
from guided_diffusion.datasets.emoji import canonical_caption as emoji_caption
from guided_diffusion.datasets.shapes import COLORS, SHAPES, canonical_caption, caption_vocabulary, describe
from guided_diffusion.pipeline import shipped_models


def test_shapes32_ships_with_its_classifier_and_samples():
    assert "shapes32" in shipped_models()
    pipe = GuidedDiffusionPipeline.from_pretrained("shapes32")
    assert pipe.unet.config.image_size == 32 and pipe.folder.name == "shapes32"
    assert set(pipe.classifier.labels) == {"shape", "color", "size", "position"}
    assert pipe.classifier.labels["shape"] == ["circle", "square", "triangle"]
    counts = pipe.parameter_counts()
    assert sum(counts.values()) * 4 <= 40 * 2**20  # the weights fit the 40 MB budget
    images = pipe("a small blue triangle in the top right", num_inference_steps=2, seed=0, output_type="np").images
    again = pipe("a small blue triangle in the top right", num_inference_steps=2, seed=0, output_type="np").images
    assert images.shape == (1, 32, 32, 3) and np.array_equal(images, again)
    guided = pipe("", num_inference_steps=2, seed=0, classifier_scale=5.0, classifier_labels={"shape": "triangle"}, output_type="np").images
    assert guided.shape == (1, 32, 32, 3)


def test_shapes32_ships_a_noise_aware_clip_and_text_towers_that_know_every_caption_word():
    pipe = GuidedDiffusionPipeline.from_pretrained("shapes32")
    words = pipe.text_encoder.tokenize(caption_vocabulary()).unique().tolist()
    for tower in (pipe.text_encoder, pipe.clip.text):  # restricted to the words of the captions, and to all of them
        assert tower.vocabulary == sorted(words) and tower.tower.token_embedding.num_embeddings == len(words) + 1
    steer = {"sampler": "ddpm", "num_inference_steps": 50, "seed": 0}
    plain = [describe(np.asarray(image))["color"] for image in pipe([""] * 4, **steer).images]
    guided = pipe([""] * 4, **steer, clip_guidance_scale=10.0, clip_guidance_prompt="a red circle").images
    assert plain != ["red"] * 4 and [describe(np.asarray(image))["color"] for image in guided] == ["red"] * 4
    every_pair = [f"a {colour} {shape}" for colour in COLORS for shape in SHAPES]  # the prompt itself is left out
    away = pipe([""] * 4, **steer, clip_guidance_scale=10.0, clip_guidance_prompt="a green triangle", clip_guidance_negative_prompt=every_pair).images
    assert [(describe(np.asarray(image))["color"], describe(np.asarray(image))["shape"]) for image in away] == [("green", "triangle")] * 4


@pytest.mark.parametrize(
    "settings",
    [{"sampler": "ddpm", "num_inference_steps": 20, "timestep_schedule": "uniform"}, {"sampler": "unipc", "num_inference_steps": 20, "timestep_schedule": "karras"}, {}],
)
def test_shapes32_draws_what_the_prompt_says(settings):
    """Four canonical prompts, the last a colour-shape pair held out of training, read back by the
    attribute reader: every attribute of every image must match (seed 0), with the model's own sampling
    config ({}: dpm++, 8 steps on the log-SNR schedule) and two others."""
    pipe = GuidedDiffusionPipeline.from_pretrained("shapes32")
    wanted = [
        ("circle", "red", "large", "top left"),
        ("square", "blue", "small", "bottom right"),
        ("triangle", "yellow", "large", "center"),
        ("triangle", "purple", "small", "right"),
    ]
    prompts = [canonical_caption(*attributes) for attributes in wanted]
    assert (pipe.sampling_config.sampler, pipe.sampling_config.timestep_schedule, pipe.sampling_config.steps) == ("dpm++", "log_snr", 8)
    images = [np.asarray(image) for image in pipe(prompts, **settings, seed=0).images]  # uint8, as describe reads them
    keys = ("shape", "color", "size", "position")
    assert [tuple(describe(image)[k] for k in keys) for image in images] == wanted


def test_emoji32_ships_with_its_classifier_training_pairs_and_samples():
    """The shipped real-data model loads offline by name, with its style/category classifier and the
    pairs it was trained on; it samples reproducibly, with and without classifier guidance."""
    assert "emoji32" in shipped_models()
    pipe = GuidedDiffusionPipeline.from_pretrained("emoji32")
    assert pipe.unet.config.image_size == 32 and pipe.diffusion_config["prediction"] == "v"
    assert pipe.classifier.labels["style"] == ["google", "twitter"]
    assert len(pipe.classifier.labels["category"]) == 8
    pairs = json.loads((pipe.folder / "training_data.json").read_text())
    assert len(pairs["train_pairs"]) == 3008 and len(pairs["held_out_pairs"]) == 262
    assert ["tiger face", "twitter", "1f42f.png"] in pairs["train_pairs"]
    held = {(name, style) for name, style, _ in pairs["held_out_pairs"]}
    assert not held & {(name, style) for name, style, _ in pairs["train_pairs"]}
    assert all((name, {"google": "twitter", "twitter": "google"}[style]) not in held for name, style in held)
    assert pipe.example_prompts[0] == "grinning face, google style"
    images = pipe("tiger face, twitter style", num_inference_steps=2, seed=0, output_type="np").images
    again = pipe("tiger face, twitter style", num_inference_steps=2, seed=0, output_type="np").images
    assert images.shape == (1, 32, 32, 3) and np.array_equal(images, again)
    steer = {"num_inference_steps": 2, "seed": 0, "classifier_scale": 5.0, "classifier_labels": {"style": "twitter"}, "output_type": "np"}
    guided = pipe("", **steer).images
    assert guided.shape == (1, 32, 32, 3)
    assert pipe.sampling_config.guidance_reads == "x0"  # its guidance reads the x_0 estimate unless a call says otherwise
    assert np.array_equal(pipe("", **steer, guidance_reads="x0").images, guided)
    assert not np.array_equal(pipe("", **steer, guidance_reads="x_t").images, guided)


def test_emoji32_ships_a_noise_aware_clip_that_steers_the_style():
    """The CLIP's text tower knows every word of the 3,270 captions (and only those); guiding the empty
    prompt towards "fire" in one style gives that style, as the shipped classifier reads it at t = 0."""
    pipe = GuidedDiffusionPipeline.from_pretrained("emoji32")
    pairs = json.loads((pipe.folder / "training_data.json").read_text())
    captions = [emoji_caption(name, style) for name, style, _ in pairs["train_pairs"] + pairs["held_out_pairs"]]
    words = pipe.clip.text.tokenize(captions).unique().tolist()
    assert pipe.clip.text.vocabulary == sorted(words) and pipe.clip.text.tower.token_embedding.num_embeddings == len(words) + 1
    steer = {"sampler": "ddpm", "num_inference_steps": 50, "seed": 0, "output_type": "pt", "clip_guidance_scale": 10.0}
    read = {}
    for style in ("google", "twitter"):
        images = pipe([""] * 4, **steer, clip_guidance_prompt=f"fire, {style} style").images
        with torch.no_grad():
            logits = pipe.classifier(images * 2 - 1, torch.zeros(4, dtype=torch.long))["style"]
        read[style] = [pipe.classifier.labels["style"][i] for i in logits.argmax(dim=-1).tolist()]
    assert read["google"].count("google") >= 3 and read["twitter"].count("twitter") >= 3, read

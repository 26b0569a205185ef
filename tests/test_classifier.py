"""The noise-aware classifier and classifier-guided sampling through the pipeline."""

import pytest
import torch

from guided_diffusion import GuidedDiffusionPipeline
from guided_diffusion.models.classifier import ClassifierConfig, NoiseAwareClassifier
from guided_diffusion.serialization import CheckpointError

LABELS = {"shape": ["circle", "square", "triangle"], "color": ["red", "green", "blue"]}


def make_classifier(**overrides):
    torch.manual_seed(0)
    config = dict(image_size=16, labels=LABELS, base_channels=16, channel_mult=(1, 2), attention_resolutions=(8,), num_heads=2)
    clf = NoiseAwareClassifier(ClassifierConfig(**{**config, **overrides}))
    with torch.no_grad():  # zero-initialised residual branches would hide the timestep at first
        for p in clf.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return clf


def test_one_head_per_attribute_and_the_output_depends_on_t():
    clf = make_classifier().eval()
    x = torch.randn(4, 3, 16, 16)
    out = clf(x, torch.tensor([0, 10, 500, 999]))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"shape": (4, 3), "color": (4, 3)}
    other = clf(x, torch.tensor([999, 500, 10, 0]))
    assert not torch.allclose(out["shape"], other["shape"])
    assert clf.labels == LABELS


def test_config_refuses_bad_labels():
    with pytest.raises(ValueError, match="at least two class names"):
        make_classifier(labels={"shape": ["circle"]})
    with pytest.raises(ValueError, match="repeated"):
        make_classifier(labels={"shape": ["circle", "circle"]})
    with pytest.raises(ValueError, match="unknown key .depth. in the classifier section"):
        ClassifierConfig.from_dict({"image_size": 16, "labels": LABELS, "depth": 3})


def test_save_load_round_trip_and_corrupt_weights_refused(tmp_path):
    clf = make_classifier().eval()
    clf.save_pretrained(tmp_path / "clf")
    loaded = NoiseAwareClassifier.from_pretrained(tmp_path / "clf").eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    assert all(torch.equal(clf(x, t)[k], loaded(x, t)[k]) for k in LABELS)
    (tmp_path / "clf" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match=r"clf/model\.safetensors"):
        NoiseAwareClassifier.from_pretrained(tmp_path / "clf")


@pytest.fixture(scope="module")
def guided_pipe(tiny_pipeline_dir):
    pipe = GuidedDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.classifier = make_classifier().eval()
    return pipe


def test_classifier_guidance_travels_with_the_pipeline_and_steers(guided_pipe, tmp_path):
    pipe = guided_pipe
    seen_t = []
    forward = pipe.classifier.forward
    pipe.classifier.forward = lambda x, t: seen_t.append(t.clone()) or forward(x, t)
    plain = pipe("", num_inference_steps=4, seed=0, output_type="pt").images
    for sampler in ("ddpm", "ddim", "dpm++"):
        guided = pipe("", num_inference_steps=4, seed=0, sampler=sampler, classifier_scale=50.0, classifier_labels={"shape": "square"}, output_type="pt").images
        assert not torch.allclose(guided, pipe("", num_inference_steps=4, seed=0, sampler=sampler, output_type="pt").images)
    del pipe.classifier.forward
    # the classifier sees the original timesteps of the respaced schedule
    assert sorted({int(t[0]) for t in seen_t}) == [0, 333, 666, 999]
    pipe.save_pretrained(tmp_path / "with_classifier")
    loaded = GuidedDiffusionPipeline.from_pretrained(tmp_path / "with_classifier")
    assert loaded.classifier is not None and loaded.classifier.labels == LABELS
    a = pipe("a circle", num_inference_steps=3, seed=1, classifier_scale=5.0, classifier_labels={"color": "red"}, output_type="pt").images
    b = loaded("a circle", num_inference_steps=3, seed=1, classifier_scale=5.0, classifier_labels={"color": "red"}, output_type="pt").images
    assert torch.equal(a, b)
    assert plain.shape == (1, 3, 16, 16)


def test_classifier_max_t_guides_only_the_late_steps(guided_pipe):
    kwargs = {"num_inference_steps": 4, "seed": 0, "sampler": "ddim", "classifier_scale": 50.0, "classifier_labels": {"shape": "square"}, "output_type": "pt"}
    full = guided_pipe("", **kwargs).images
    assert torch.equal(guided_pipe("", classifier_max_t=999, **kwargs).images, full)
    late = guided_pipe("", classifier_max_t=500, **kwargs).images  # guides at t = 333 and 0, not at 999 and 666
    assert not torch.allclose(late, full) and not torch.allclose(late, guided_pipe("", num_inference_steps=4, seed=0, sampler="ddim", output_type="pt").images)
    with pytest.raises(ValueError, match="classifier_max_t must be between 0 and 999, got 1000"):
        guided_pipe("", classifier_max_t=1000, **kwargs)


def test_unknown_attributes_and_classes_are_refused_with_the_valid_ones(guided_pipe):
    with pytest.raises(ValueError, match="valid attributes: shape, color"):
        guided_pipe("", num_inference_steps=2, classifier_scale=1.0, classifier_labels={"size": "large"})
    with pytest.raises(ValueError, match="valid: red, green, blue"):
        guided_pipe("", num_inference_steps=2, classifier_scale=1.0, classifier_labels={"color": "purple"})
    with pytest.raises(ValueError, match="needs classifier_labels"):
        guided_pipe("", num_inference_steps=2, classifier_scale=1.0)

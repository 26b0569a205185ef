"""The Shapes32 evaluation: scoring against real data, entropy, and an end-to-end report."""

import inspect
import json
import math

import numpy as np
import pytest
import torch

from guided_diffusion import GuidedDiffusionPipeline
from guided_diffusion.datasets.shapes import FEATURES, HELDOUT_PAIRS, describe_batch, make_shapes32
from guided_diffusion.errors import RequestError
from guided_diffusion.evaluation.sampling import EvalSampling
from guided_diffusion import evaluate as evaluate_module
from guided_diffusion.evaluate import (
    EVALUATION_FLAGS,
    SHARED_FLAGS,
    attribute_accuracy,
    build_parser,
    canonical_targets,
    classifier_scales_option,
    evaluate,
    main,
    normalized_entropy,
    training_data_reference,
)
from guided_diffusion.models.classifier import ClassifierConfig, NoiseAwareClassifier

from .conftest import TINY_CONFIG


def labels_of(data):
    return [{a: FEATURES[a].int2str(row[a]) for a in ("shape", "color", "size", "position")} for row in data]


def test_real_images_score_perfectly_and_shuffled_ones_do_not():
    data = make_shapes32(200, seed=7, split="test")
    targets = labels_of(data)
    found = describe_batch(data["image"])
    assert attribute_accuracy(targets, found) == {"shape": 1.0, "color": 1.0, "size": 1.0, "position": 1.0, "all": 1.0}
    shuffled = attribute_accuracy(targets[1:] + targets[:1], found)
    assert shuffled["all"] < 0.2 and shuffled["shape"] < 0.6


def test_normalized_entropy_is_one_for_uniform_and_zero_for_a_single_class():
    assert normalized_entropy(["a", "b", "c"] * 5, ["a", "b", "c"]) == pytest.approx(1.0)
    assert normalized_entropy(["a"] * 9, ["a", "b", "c"]) == 0.0
    assert normalized_entropy(["a", "a", "b", "b"], ["a", "b", "c", "d"]) == pytest.approx(0.5)


def test_canonical_targets_keep_seen_and_held_out_pairs_apart():
    held = set(HELDOUT_PAIRS)
    seen = canonical_targets(45, heldout=False)
    assert all((t["color"], t["shape"]) not in held for t in seen)
    assert len({(t["color"], t["shape"]) for t in seen}) == 15
    out = canonical_targets(9, heldout=True)
    assert {(t["color"], t["shape"]) for t in out} == held
    assert canonical_targets(9, heldout=True, seed=1) != canonical_targets(9, heldout=True, seed=2)


def test_accuracy_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="as many descriptions"):
        attribute_accuracy([{"shape": "circle"}], [])


@pytest.fixture(scope="module")
def tiny32(tmp_path_factory):
    """A tiny untrained 32x32 pipeline over 40 timesteps, with a Shapes32 classifier."""
    torch.manual_seed(0)
    config = GuidedDiffusionPipeline.from_config(TINY_CONFIG).config
    config["unet"]["image_size"] = 32
    config["diffusion"]["num_timesteps"] = 40
    pipe = GuidedDiffusionPipeline.from_config(config)
    labels = {a: list(FEATURES[a].names) for a in ("shape", "color", "size", "position")}
    pipe.classifier = NoiseAwareClassifier(
        ClassifierConfig(image_size=32, labels=labels, base_channels=16, channel_mult=(1, 2), attention_resolutions=(), num_heads=2)
    ).eval()
    directory = tmp_path_factory.mktemp("eval") / "tiny32"
    pipe.save_pretrained(directory)
    return directory


def test_evaluate_writes_a_complete_report(tiny32, tmp_path, monkeypatch):
    pipe = GuidedDiffusionPipeline.from_pretrained(tiny32)
    sampled = []
    adherence = evaluate_module.prompt_adherence
    monkeypatch.setattr(evaluate_module, "prompt_adherence", lambda *a, **kw: sampled.append((kw["sampling"].steps, kw["sampling"].guidance_scale)) or adherence(*a, **kw))
    report = evaluate(
        pipe, tmp_path, model_name="tiny32", sampling=EvalSampling(sampler="ddim", steps=2, guidance_scale=3.0, batch_size=16, seed=0), num_prompts=3, images_per_prompt=2,
        guidance_scales=(1.0, 3.0), classifier_scales=(0, 10), images_per_target=2, bpd_images=2,
        samplers=("ddim", "heun:karras"), sampler_nfe=(1, 3),
    )
    assert set(report.adherence) == {"seen", "held out"} and report.adherence["seen"]["n"] == 6
    # seen and held out, then scale 1, then the sampler sweep's four cells; the evaluation's own
    # scale reuses the seen prompts' scores
    assert sampled[:3] == [(2, 3.0), (2, 3.0), (2, 1.0)] and len(sampled) == 3 + 4
    assert [r["guidance_scale"] for r in report.guidance_scales] == [1.0, 3.0]
    assert report.guidance_scales[1] == {"guidance_scale": 3.0, **{k: v for k, v in report.adherence["seen"].items() if k != "n"}}
    assert len(report.classifier) == 2 * 3 and {r["target"] for r in report.classifier} == {"circle", "square", "triangle"}
    assert report.bpd["n"] == 2 and np.isfinite(report.bpd["mean"]) and report.bpd["mean"] > 0
    assert [(r["sampler"], r["timestep_schedule"], r["steps"], r["nfe"]) for r in report.samplers] == [
        ("ddim", "uniform", 1, 1), ("ddim", "uniform", 3, 3), ("heun", "karras", 1, 1), ("heun", "karras", 2, 3)
    ]
    for name in ("report.md", "report.json", "samples.png", "classifier_guidance.png", "samplers.png"):
        assert (tmp_path / name).is_file(), name
    text = (tmp_path / "report.md").read_text()
    assert "| seen | 6 |" in text and "## Classifier guidance on `shape`" in text and "Bits/dim on 2" in text
    assert all(r["images"] == 2 for r in report.classifier) and "| training data | 100.0% |" in text
    assert "among the 2 images per target" in text
    late = evaluate(
        pipe, tmp_path / "late", model_name="tiny32", sampling=EvalSampling(sampler="ddim", steps=2, guidance_scale=3.0, batch_size=16, seed=0), num_prompts=1, images_per_prompt=1,
        classifier_scales=(10,), images_per_target=2, classifier_max_t=20, bpd_images=0,
    )
    assert "with the empty prompt, at t <= 20 only" in (tmp_path / "late" / "report.md").read_text()
    assert json.loads((tmp_path / "late" / "report.json").read_text())["classifier_max_t"] == 20 and len(late.classifier) == 3
    assert json.loads((tmp_path / "report.json").read_text())["adherence"]["held out"]["n"] == 6


def test_evaluate_leaves_out_what_is_counted_zero(tiny32, tmp_path):
    pipe = GuidedDiffusionPipeline.from_pretrained(tiny32)
    sampling = EvalSampling(sampler="ddim", steps=2, guidance_scale=3.0, batch_size=16, seed=0)
    report = evaluate(pipe, tmp_path, model_name="tiny32", sampling=sampling, num_prompts=0, guidance_scales=(1.0,),
                      classifier_scales=(10,), images_per_target=2, bpd_images=0)
    assert report.adherence == {} and report.guidance_scales == [] and report.bpd is None and len(report.classifier) == 3
    text = (tmp_path / "report.md").read_text()
    assert "## Classifier guidance on `shape`" in text and "Prompt adherence" not in text and "samples.png" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier_guidance.png", "report.json", "report.md"]
    with pytest.raises(RequestError, match="the sampler table scores canonical prompts: give num_prompts"):
        evaluate(pipe, tmp_path / "none", model_name="tiny32", sampling=sampling, num_prompts=0, samplers=("ddim",), bpd_images=0)
    with pytest.raises(RequestError, match="num_prompts must not be negative, got -1"):
        evaluate(pipe, tmp_path / "none", model_name="tiny32", sampling=sampling, num_prompts=-1)
    assert not (tmp_path / "none").exists()  # refused before any work


def test_training_data_reference_matches_the_held_out_pairs():
    # Each shape has one held-out colour: the training data's colours of a shape are uniform over 5 of 6.
    by_shape = training_data_reference("shape", 1500)
    assert by_shape["entropy_color"] == pytest.approx(math.log(5) / math.log(6), abs=0.01)
    assert by_shape["entropy_size"] > 0.99 and by_shape["entropy_position"] > 0.99
    # Three colours lose one of the three shapes: the mean of log 2 / log 3 and 1.
    by_color = training_data_reference("color", 1500)
    assert by_color["entropy_shape"] == pytest.approx((math.log(2) / math.log(3) + 1) / 2, abs=0.01)
    assert training_data_reference("shape", 8, seed=3) == training_data_reference("shape", 8, seed=3)


def test_gd_eval_refuses_models_of_the_wrong_size(tiny_pipeline_dir, tmp_path, capsys):
    assert main(["--model", str(tiny_pipeline_dir), "--out", str(tmp_path), "--device", "cpu"]) == 2
    assert "judges 32x32" in capsys.readouterr().err


def test_gd_eval_refuses_a_flag_its_evaluation_does_not_read(tiny_pipeline_dir, tmp_path, capsys):
    """Each evaluation names its own flags when given one it would otherwise silently ignore."""
    base = ["--model", str(tiny_pipeline_dir), "--out", str(tmp_path), "--device", "cpu"]
    assert main([*base, "--num-seen", "3"]) == 2
    assert "--num-seen is not used by the shapes32 evaluation; its own flags: --num-prompts, --guidance-scales" in capsys.readouterr().err
    assert main([*base, "--dataset-name", "fashion_mnist", "--samplers", "ddim"]) == 2
    assert "--samplers is not used by the generic evaluation; its own flags: --dataset-name" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before any work


def test_every_gd_eval_flag_is_read_by_some_evaluation():
    """The table behind the refusal names exactly the parser's flags: a new flag left out of it would be
    refused everywhere, a stale name would hide a flag that is read."""
    listed = set(SHARED_FLAGS).union(*EVALUATION_FLAGS.values())
    assert listed == set(vars(build_parser().parse_args([])))


def test_classifier_scales_default_per_evaluation_and_an_empty_flag_sweeps_none():
    from guided_diffusion.evaluation.emoji import evaluate_emoji
    from guided_diffusion.evaluation.generic import evaluate_generic

    def default(function) -> tuple:
        return inspect.signature(function).parameters["classifier_scales"].default

    parser = build_parser()
    assert classifier_scales_option(parser.parse_args([])) == {}  # the evaluation's own default applies
    assert default(evaluate) == default(evaluate_generic) == (0, 1, 3, 10, 12, 15, 20)
    assert default(evaluate_emoji) == (0, 5, 20, 200, 800, 1200)
    assert classifier_scales_option(parser.parse_args(["--classifier-scales", "2", "7.5"])) == {"classifier_scales": (2.0, 7.5)}
    assert classifier_scales_option(parser.parse_args(["--classifier-scales"])) == {"classifier_scales": ()}

"""The emoji evaluation: the judge against real images, and gd-eval end to end on a tiny model and a
tiny fake emoji package."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from guided_diffusion import GuidedDiffusionPipeline
from guided_diffusion.datasets.emoji import make_emoji, training_pairs
from guided_diffusion.datasets.emoji_judge import EmojiJudge, dataset_tensor
from guided_diffusion.evaluation import emoji as emoji_evaluation
from guided_diffusion.evaluate import main
from guided_diffusion.models.classifier import ClassifierConfig, NoiseAwareClassifier
from guided_diffusion.serialization import TRAINING_DATA_NAME, save_json

from .conftest import TINY_CONFIG
from .fake_emoji import write_fake_emoji


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    return write_fake_emoji(tmp_path_factory.mktemp("emoji"))


def test_the_judge_recognises_real_images_and_their_styles(fake_root: Path) -> None:
    every = make_emoji("all", root=fake_root, resolution=16)
    judge = EmojiJudge(every)
    images = dataset_tensor(every)
    styles = [every.features["style"].int2str(s) for s in every["style"]]
    assert torch.equal(judge.images, images)
    verdicts = judge.judge(images, every["name"], styles)
    assert verdicts.top1.all() and verdicts.top5.all() and verdicts.style_right.all()
    assert verdicts.nearest_style == styles and verdicts.nearest_name == every["name"]
    assert judge.read(images[:2]) == [(every["name"][i], styles[i], judge.category_of(every["name"][i])) for i in range(2)]
    flipped = judge.judge(images, every["name"], ["twitter" if s == "google" else "google" for s in styles])
    assert flipped.top1.all() and not flipped.style_right.any()
    shifted = judge.judge(images, every["name"][1:] + every["name"][:1], styles)
    assert not shifted.top1.any()
    with pytest.raises(ValueError, match="no picture of 'unicorn face' in style 'google'"):
        judge.judge(images[:1], ["unicorn face"], ["google"])


def test_the_nearest_image_style_of_unseen_emoji_matches_a_search_by_hand(fake_root: Path) -> None:
    every = make_emoji("all", root=fake_root, resolution=16)
    judge = EmojiJudge(every)
    right = 0
    for i, (name, style) in enumerate(zip(judge.names, judge.styles)):
        others = [j for j, other in enumerate(judge.names) if other != name]
        nearest_other = min(others, key=lambda j: float(torch.dist(judge.features[i], judge.features[j])))
        right += judge.styles[nearest_other] == style
    assert judge.style_accuracy_of_unseen_emoji() == right / len(judge.names)
    # three emoji on a line: only the last google picture's nearest other emoji is in its own style
    judge.names, judge.styles = ["a", "a", "b", "b", "c", "c"], ["google", "twitter"] * 3
    judge.features = torch.tensor([[0.0], [10.0], [11.0], [1.0], [20.0], [30.0]], dtype=torch.float64)
    assert judge.style_accuracy_of_unseen_emoji() == 1 / 6


def test_the_spread_of_images_is_their_mean_distance_over_that_between_real_emoji(fake_root: Path) -> None:
    every = make_emoji("all", root=fake_root, resolution=16)
    judge = EmojiJudge(every)
    pairs = [(i, j) for i in range(len(judge.names)) for j in range(len(judge.names)) if judge.names[i] != judge.names[j]]
    by_hand = sum(float(torch.dist(judge.features[i], judge.features[j])) for i, j in pairs) / len(pairs)
    assert judge.distance_between_emoji == pytest.approx(by_hand, rel=1e-12)
    images = judge.images
    assert judge.spread(images[[0, 0, 0]]) == 0.0
    three = [float(torch.dist(judge.features[a], judge.features[b])) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert judge.spread(images[:3]) == pytest.approx(sum(three) / 3 / by_hand, rel=1e-6)
    with pytest.raises(ValueError, match="needs at least 2 of them, got 1"):
        judge.spread(images[:1])


def test_the_datas_category_entropy_at_a_sample_size_is_the_mean_over_random_draws(fake_root: Path) -> None:
    judge = EmojiJudge(make_emoji("all", root=fake_root, resolution=16))
    judge.styles, judge.categories = ["google"] * 4 + ["twitter"] * 3, ["a", "a", "b", "b", "a", "b", "c"]
    entropy = emoji_evaluation.data_category_entropy
    # all of them: google splits a / b evenly (log 2 / log 3), twitter is uniform over a, b, c (1)
    assert entropy(judge, ["google", "twitter"]) == pytest.approx({"google": math.log(2) / math.log(3), "twitter": 1.0})
    assert entropy(judge, ["google"], 4) == pytest.approx({"google": math.log(2) / math.log(3)})  # every image
    assert entropy(judge, ["twitter"], 10) == pytest.approx({"twitter": 1.0})  # fewer than asked: all of them
    assert entropy(judge, ["google", "twitter"], 1) == {"google": 0.0, "twitter": 0.0}  # one image has one category
    # two of google's four: a different pair 4 times in 6, each then with entropy log 2 / log 3
    two = entropy(judge, ["google"], 2, draws=4000)["google"]
    assert two == pytest.approx(4 / 6 * math.log(2) / math.log(3), abs=0.02)
    assert entropy(judge, ["twitter", "google"], 2, draws=4000)["google"] == two  # seeded by the style, whatever the others


@pytest.fixture(scope="module")
def tiny_emoji_model(fake_root: Path, tmp_path_factory) -> Path:
    """A tiny untrained 16x16 pipeline over 40 timesteps with a style/category classifier and the fake
    data's training pairs."""
    torch.manual_seed(0)
    config = GuidedDiffusionPipeline.from_config(TINY_CONFIG).config
    config["diffusion"]["num_timesteps"] = 40
    pipe = GuidedDiffusionPipeline.from_config(config)
    every = make_emoji("all", root=fake_root)
    labels = {"style": every.features["style"].names, "category": every.features["category"].names}
    pipe.classifier = NoiseAwareClassifier(
        ClassifierConfig(image_size=16, labels=labels, base_channels=16, channel_mult=(1, 2), attention_resolutions=(), num_heads=2)
    ).eval()
    directory = tmp_path_factory.mktemp("eval") / "tiny_emoji"
    pipe.save_pretrained(directory)
    save_json(directory / TRAINING_DATA_NAME, training_pairs(root=fake_root, held_out_fraction=0.25))
    return directory


def test_gd_eval_on_an_emoji_model_writes_a_complete_report(tiny_emoji_model: Path, fake_root: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    scored, judge_seeds = [], []
    score_pairs, train_judge = emoji_evaluation.score_pairs, emoji_evaluation.train_attribute_judge
    monkeypatch.setattr(emoji_evaluation, "score_pairs", lambda *args, **kw: scored.append(kw["description"]) or score_pairs(*args, **kw))
    monkeypatch.setattr(emoji_evaluation, "train_attribute_judge", lambda *args, **kw: judge_seeds.append(kw["seed"]) or train_judge(*args, **kw))
    status = main([
        "--model", str(tiny_emoji_model), "--out", str(tmp_path), "--emoji-root", str(fake_root), "--device", "cpu",
        "--sampler", "ddim", "--steps", "2", "--num-seen", "5", "--images-per-prompt", "2", "--seed", "3",
        "--classifier-scales", "0", "5", "--images-per-target", "3", "--classifier-max-t", "20", "--bpd-images", "2",
        "--guidance-scales", "3", "0",
    ])
    assert status == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["seen"]["prompts"] == 5 and report["seen"]["images"] == 10
    assert report["held_out"]["prompts"] == 4 and report["held_out"]["images"] == 8
    assert 0.0 <= report["seen"]["top1"] <= report["seen"]["top5"] <= 1.0
    sweep = report["style_guidance"]
    assert [row["scale"] for row in sweep["rows"]] == [0, 5] and sweep["max_t"] == 20
    assert all(0.0 <= row[key] <= 1.0 for row in sweep["rows"] for key in ("hit_rate", "nearest_image_hit_rate"))
    for row in sweep["rows"]:
        by_target = row["category_entropy_by_target"]
        assert set(by_target) == {"google", "twitter"} and row["category_entropy"] == pytest.approx(sum(by_target.values()) / 2)
    judge = sweep["judge"]
    assert judge["held_out_groups"] == 1 and judge["held_out_images"] == 2 and judge["epochs"] == 20  # 1 of 9 emoji, both styles
    assert report["sampling"]["seed"] == 3 and judge["seed"] == judge_seeds[0] == emoji_evaluation.STYLE_JUDGE_SEED  # one judge for every sampling seed
    assert judge["held_out_accuracy"] in (0.0, 0.5, 1.0) and 0.0 <= judge["nearest_image_accuracy"] <= 1.0
    by_style = judge["held_out_accuracy_by_class"]  # the unseen emoji in both styles, one image each
    assert set(by_style) == {"google", "twitter"} and all(rate in (0.0, 1.0) for rate in by_style.values())
    assert sum(by_style.values()) / 2 == judge["held_out_accuracy"]
    assert report["bits_per_dim"]["n"] == 2 and report["bits_per_dim"]["mean"] > 0
    rows = report["guidance_scales"]
    assert [row["guidance_scale"] for row in rows] == [3.0, 0.0]
    assert {"seen", "held_out"} <= set(rows[0]) and rows[0]["held_out"]["images"] == 8
    # the evaluation's own scale (3, as --guidance-scale defaults to the tiny pipeline's 3) is the
    # pairs already scored, not sampled again; scale 0 samples both groups once more
    assert rows[0]["seen"] == {k: v for k, v in report["seen"].items() if k != "prompts"}
    assert scored == ["seen pairs", "held_out pairs", "seen pairs, guidance 0", "held_out pairs, guidance 0"]
    text = (tmp_path / "report.md").read_text()
    assert "| 0 | " in text and "seen (trained on): top-1 / top-5" in text
    assert "| held out | 4 | 8 |" in text and "guided at t <= 20 only" in text and "Bits/dim on 2 held-out pairs" in text
    reference = sweep["data_category_entropy_sampled"]
    assert reference == emoji_evaluation.data_category_entropy(EmojiJudge(make_emoji("all", root=fake_root)), ["google", "twitter"], 3)
    assert f"| {(reference['google'] + reference['twitter']) / 2:.2f} |" in text and "that of 3 real images per style drawn at random" in text
    assert text.count("| ... towards google |") == text.count("| ... towards twitter |") == 2  # hit rate and category entropy
    for target in ("google", "twitter"):  # each target's row ends with its own style's reference
        entropy_row = [line for line in text.splitlines() if line.startswith(f"| ... towards {target} |")][1]
        assert entropy_row.endswith(f" | {reference[target]:.2f} |")
    assert "| style hit rate, nearest real image |" in text and "trained on the real images of all but 1 emoji (20 epochs, seed 0 whatever the sampling seed)" in text
    assert f"({100 * by_style['google']:.1f}% of the google ones, {100 * by_style['twitter']:.1f}% of the twitter ones)" in text
    assert "; 2 images per canonical prompt" in text
    assert "; 1 image per canonical prompt" in emoji_evaluation.render_emoji_report({**report, "images_per_prompt": 1})
    assert (tmp_path / "samples.png").is_file()
    assert "# Emoji evaluation" in capsys.readouterr().out


def test_gd_eval_on_an_emoji_model_leaves_out_what_is_counted_zero(tiny_emoji_model: Path, fake_root: Path, tmp_path: Path, capsys) -> None:
    flags = ["--model", str(tiny_emoji_model), "--out", str(tmp_path), "--emoji-root", str(fake_root), "--device", "cpu",
             "--sampler", "ddim", "--steps", "2", "--images-per-target", "2", "--bpd-images", "0"]
    assert main([*flags, "--num-seen", "0", "--num-held-out", "0", "--classifier-scales", "3"]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "report.json").read_text())
    assert "seen" not in report and "held_out" not in report and "bits_per_dim" not in report
    assert [row["scale"] for row in report["style_guidance"]["rows"]] == [3]
    text = (tmp_path / "report.md").read_text()
    assert "| pairs |" not in text and "![samples]" not in text and "| style hit rate |" in text
    assert "per canonical prompt" not in text
    assert not (tmp_path / "samples.png").exists()
    row = report["style_guidance"]["rows"][0]
    assert set(row["hit_rate_by_target"]) == {"google", "twitter"}
    assert row["hit_rate"] == pytest.approx(sum(row["hit_rate_by_target"].values()) / 2)
    assert "| ... towards google |" in text and "read the model's x_0 estimate" not in text
    assert main([*flags, "--num-seen", "0", "--num-held-out", "0", "--classifier-scales", "3", "--guidance-reads", "x0"]) == 0
    through_x0 = json.loads((tmp_path / "report.json").read_text())
    assert through_x0["sampling"]["guidance_reads"] == "x0"
    assert "classifier and CLIP guidance read the model's x_0 estimate" in (tmp_path / "report.md").read_text()
    assert main([*flags, "--num-seen", "-1"]) == 2
    assert "num_seen must not be negative, got -1" in capsys.readouterr().err
    assert main([*flags, "--images-per-prompt", "0"]) == 2
    assert "images_per_prompt must be at least 1, got 0" in capsys.readouterr().err
    assert main([*flags, "--samplers", "ddim"]) == 2  # a shapes32 flag: refused, not silently ignored
    error = capsys.readouterr().err
    assert "gd-eval: error: --samplers is not used by the emoji evaluation; its own flags: --num-seen" in error
    assert len(error.strip().splitlines()) == 1


def test_gd_eval_needs_the_training_pairs_and_the_data(tiny_emoji_model: Path, tiny_pipeline_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["--model", str(tiny_pipeline_dir), "--dataset", "emoji", "--out", str(tmp_path), "--device", "cpu"]) == 2
    assert "has no training_data.json" in capsys.readouterr().err
    missing = tmp_path / "nothing"
    assert main(["--model", str(tiny_emoji_model), "--out", str(tmp_path), "--emoji-root", str(missing), "--device", "cpu"]) == 2
    assert "gd-data fetch emoji" in capsys.readouterr().err

"""The generic evaluation (gd-eval --dataset-name / --train-data-dir): the CAS on data whose answer is
known, and gd-eval end to end on a tiny labelled save_to_disk dataset and a tiny captioned imagefolder
with a tiny untrained 16x16 pipeline."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion import GuidedDiffusionPipeline
from guided_diffusion.evaluate import main
from guided_diffusion.evaluation import classification_accuracy_score, train_cas_classifier
from guided_diffusion.models.classifier import ClassifierConfig, NoiseAwareClassifier

from .conftest import TINY_CONFIG
from .imagefolder import write_imagefolder

# Listed out of alphabetical order: class indices follow the ClassLabel, not the names' order.
CLASSES = ["red", "green", "blue"]
RGB = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
SIDES = {"big": 10, "small": 5}


# ----------------------------------------------------------------------------------------------
# The CAS on data whose answer is known


def quadrant_images(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes of noisy 16x16 images ``[4 * per_class, 3, 16, 16]``: class c has a bright square in
    quadrant c; labels ``[4 * per_class]``, class-major."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(4 * per_class, 3, 16, 16, generator=generator) * 0.3 - 0.5
    labels = torch.arange(4).repeat_interleave(per_class)
    for i, c in enumerate(labels.tolist()):
        top, left = 8 * (c // 2), 8 * (c % 2)
        images[i, :, top + 1 : top + 7, left + 1 : left + 7] += 1.5
    return images.clamp(-1, 1), labels


def test_cas_classifier_weights_do_not_depend_on_the_thread_count() -> None:
    """oneDNN splits a convolution's weight gradient across threads: trained on 2 threads, the weights
    would differ from 1 thread's in their last bits, and grow apart over the epochs."""
    images, labels = quadrant_images(64, seed=3)
    images = torch.nn.functional.interpolate(images, size=32)
    threads = torch.get_num_threads()
    try:
        weights = []
        for count in (1, 2):
            torch.set_num_threads(count)
            model = train_cas_classifier(images, labels, 4, epochs=2, batch_size=64, seed=0)
            weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
            assert torch.get_num_threads() == count
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(weights[0], weights[1])


def test_cas_of_real_images_matches_the_reference_and_shuffled_labels_fall_to_chance() -> None:
    train, train_labels = quadrant_images(12, seed=0)
    test, test_labels = quadrant_images(10, seed=1)
    stand_ins, stand_in_labels = quadrant_images(12, seed=2)  # "generated" images: other real images of each class

    def cas(images: torch.Tensor, labels: torch.Tensor) -> float:
        return classification_accuracy_score(images, labels, test, test_labels, 4, epochs=8, batch_size=16, seed=0).accuracy

    reference = cas(train, train_labels)
    assert reference == 1.0
    assert abs(cas(stand_ins, stand_in_labels) - reference) <= 0.05
    # every class's images spread evenly over the four labels: nothing to learn
    shuffled = torch.arange(len(train_labels)) % 4
    assert cas(train, shuffled) <= 0.5
    score = classification_accuracy_score(train, train_labels, test[:10], test_labels[:10], 4, epochs=8, batch_size=16)
    assert score.per_class[0] == 1.0 and all(v != v for v in score.per_class[1:])  # the test holds class 0 only
    with pytest.raises(ValueError, match="one label per image"):
        classification_accuracy_score(train, train_labels[:3], test, test_labels, 4, epochs=1)


# ----------------------------------------------------------------------------------------------
# gd-eval end to end


def square(colour: str, side: int, rng: np.random.Generator) -> Image.Image:
    pixels = np.full((16, 16, 3), 128, np.uint8)
    top, left = rng.integers(0, 16 - side + 1, size=2)
    pixels[top : top + side, left : left + side] = RGB[colour]
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def labelled_data(tmp_path_factory) -> Path:
    """A save_to_disk DatasetDict of 16x16 coloured squares: ``train`` 12 rows and ``test`` 6, columns
    image, text ("a big red square") and label (ClassLabel over CLASSES)."""
    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"), "label": datasets.ClassLabel(names=CLASSES)})

    def split(per_class: int) -> datasets.Dataset:
        rows = [(c, size) for c in range(len(CLASSES)) for size in list(SIDES) * (per_class // 2)]
        return datasets.Dataset.from_dict(
            {
                "image": [square(CLASSES[c], SIDES[size], rng) for c, size in rows],
                "text": [f"a {size} {CLASSES[c]} square" for c, size in rows],
                "label": [c for c, _ in rows],
            },
            features=features,
        )

    path = tmp_path_factory.mktemp("data") / "squares"
    datasets.DatasetDict({"train": split(4), "test": split(2)}).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_labelled_model(tmp_path_factory) -> Path:
    """A tiny untrained 16x16 pipeline over 40 timesteps with a classifier whose head is ``label``."""
    torch.manual_seed(0)
    config = GuidedDiffusionPipeline.from_config(TINY_CONFIG).config
    config["diffusion"]["num_timesteps"] = 40
    pipe = GuidedDiffusionPipeline.from_config(config)
    pipe.classifier = NoiseAwareClassifier(
        ClassifierConfig(image_size=16, labels={"label": CLASSES}, base_channels=16, channel_mult=(1, 2), attention_resolutions=(), num_heads=2)
    ).eval()
    directory = tmp_path_factory.mktemp("eval") / "tiny_labelled"
    pipe.save_pretrained(directory)
    return directory


def labelled_flags(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model", str(model), "--dataset-name", str(data), "--eval-split", "test", "--caption-column", "text",
        "--label-column", "label", "--out", str(out), "--device", "cpu", "--sampler", "ddim", "--steps", "2",
        "--num-prompts", "3", "--images-per-prompt", "2", "--gallery-size", "8", "--bpd-images", "2",
        "--cas-images-per-class", "2", "--cas-epochs", "2", "--cas-test-images", "4", "--cas-classifier-scale", "5",
        "--classifier-scales", "0", "5", "--images-per-target", "2", "--classifier-max-t", "20", *extra,
    ]


@pytest.fixture(scope="module")
def labelled_run(tiny_labelled_model: Path, labelled_data: Path, tmp_path_factory) -> tuple[int, Path, str]:
    out = tmp_path_factory.mktemp("report")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(labelled_flags(tiny_labelled_model, labelled_data, out))
    return status, out, stdout.getvalue()


def test_gd_eval_on_labelled_data_writes_a_complete_report(labelled_run: tuple[int, Path, str]) -> None:
    status, out, stdout = labelled_run
    assert status == 0
    report = json.loads((out / "report.json").read_text())
    data = report["data"]
    assert (data["split"], data["rows"], data["held_out_split"], data["held_out_rows"]) == ("train", 12, "test", 6)
    assert data["classes"] == CLASSES and data["image_size"] == 16 and data["label_column"] == "label"
    assert report["bits_per_dim"]["split"] == "test" and report["bits_per_dim"]["n"] == 2 and report["bits_per_dim"]["mean"] > 0
    seen, held = report["retrieval"]["seen"], report["retrieval"]["held_out"]
    assert (seen["split"], seen["prompts"], seen["images"], seen["gallery"]) == ("train", 3, 6, 8)
    assert (held["split"], held["prompts"], held["images"], held["gallery"]) == ("test", 3, 6, 6)
    for scores in (seen, held):
        assert 0.0 <= scores["top1"] <= scores["top5"] <= 1.0
        assert 0.0 < scores["top1_chance"] <= scores["label_top1_chance"] <= 1.0 and 0.0 <= scores["label_top1"] <= 1.0
    cas = report["cas"]
    assert (cas["images_per_class"], cas["train_images"], cas["test_split"], cas["test_images"], cas["epochs"]) == (2, 6, "test", 4, 2)
    assert 0.0 <= cas["real"] <= 1.0 and 0.0 <= cas["generated"] <= 1.0 and cas["chance"] == pytest.approx(1 / 3)
    assert cas["gap"] == pytest.approx(100 * (cas["real"] - cas["generated"]))
    assert cas["guided"]["scale"] == 5 and cas["guided"]["max_t"] == 20 and 0.0 <= cas["guided"]["accuracy"] <= 1.0
    assert list(cas["per_class"]) == CLASSES and set(cas["per_class"]["red"]) == {"real", "generated", "guided"}
    sweep = report["classifier_guidance"]
    assert sweep["column"] == "label" and sweep["max_t"] == 20 and sweep["images_per_target"] == 2
    assert [row["scale"] for row in sweep["rows"]] == [0, 5]
    assert all(len(row["per_class"]) == 3 and 0.0 <= row["hit_rate"] <= 1.0 and row["pairwise_distance"] >= 0 for row in sweep["rows"])
    assert sweep["real_pairwise_distance"] > 0 and list(sweep["real_per_class"]) == CLASSES
    assert report["samples"] == 3 + 3 + 2 * 3 + 3  # seen and held-out prompts, CAS (plain, guided) and the sweep per class
    assert (out / "samples.png").is_file()
    text = (out / "report.md").read_text()
    for part in ("Bits/dim on 2 rows of split `test`", "| training split (seen) `train` | 3 | 6 | 8 |", "| held-out split `test` | 3 | 6 | 6 |",
                 "## Classification Accuracy Score", "| generated, classifier guidance x5, t <= 20 |", "| real training images | |",
                 "the captions of random rows of each split, 2 images each.", "trained only on 2 generated images per class",
                 "2 images per class, guided at t <= 20 only"):
        assert part in text
    assert stdout.startswith("# Evaluation of")


def test_gd_eval_is_deterministic_for_a_seed(labelled_run: tuple[int, Path, str], tiny_labelled_model: Path, labelled_data: Path, tmp_path: Path) -> None:
    _, out, _ = labelled_run
    assert main(labelled_flags(tiny_labelled_model, labelled_data, tmp_path)) == 0
    first, again = (json.loads((folder / "report.json").read_text()) for folder in (out, tmp_path))
    first.pop("seconds"), again.pop("seconds")
    assert first == again


def test_gd_eval_refuses_a_wrong_column_with_the_columns_there_are(tiny_labelled_model: Path, labelled_data: Path, tmp_path: Path, capsys) -> None:
    assert main(labelled_flags(tiny_labelled_model, labelled_data, tmp_path, "--caption-column", "caption")) == 2
    err = capsys.readouterr().err.strip()
    assert err == "gd-eval: error: caption_column 'caption' is not a column of the dataset; its columns are: image, text, label (set --caption_column)"
    assert main(labelled_flags(tiny_labelled_model, labelled_data, tmp_path, "--label_column", "colour")) == 2
    assert "label_column 'colour' is not a column of the dataset; its columns are: image, text, label" in capsys.readouterr().err
    assert main(labelled_flags(tiny_labelled_model, labelled_data, tmp_path, "--eval-split", "validation")) == 2
    assert "split 'validation' not in" in capsys.readouterr().err
    assert main(labelled_flags(tiny_labelled_model, labelled_data, tmp_path, "--dataset", "emoji")) == 2
    assert "drop --dataset emoji" in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()


def test_gd_eval_on_a_captioned_imagefolder_without_a_test_split(tiny_labelled_model: Path, tmp_path: Path, capsys) -> None:
    rows = [
        {"rgb": RGB[colour], "box": (side, side), "metadata": {"text": f"a {size} {colour} square", "colour": colour}}
        for colour in ("red", "blue") for size, side in SIDES.items()
    ]
    folder = write_imagefolder(tmp_path / "folder", rows)
    out = tmp_path / "report"
    status = main([
        "--model", str(tiny_labelled_model), "--train-data-dir", str(folder), "--label-column", "colour", "--out", str(out),
        "--device", "cpu", "--steps", "2", "--num-prompts", "2", "--images-per-prompt", "1", "--bpd-images", "1",
        "--cas-images-per-class", "1",
    ])
    assert status == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["held_out_split"] is None and "split 'test' could not be opened" in report["data"]["held_out_note"]
    assert report["data"]["classes"] == ["blue", "red"]  # strings: sorted
    assert report["bits_per_dim"]["split"] == "train" and list(report["retrieval"]) == ["seen"]
    seen = report["retrieval"]["seen"]
    assert (seen["prompts"], seen["images"], seen["gallery"]) == (2, 2, 4) and "label_top1" in seen
    assert "no held-out split" in report["cas"]["skipped"]
    assert report["classifier_guidance"] == {"skipped": "the pipeline has no classifier with a 'colour' head"}
    assert report["samples"] == 2
    text = (out / "report.md").read_text()
    assert "no held-out split: split 'test' could not be opened" in text and "Not measured: the pipeline has no classifier" in text
    assert "the captions of random rows of each split, 1 image each." in text

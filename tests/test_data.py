"""guided_diffusion.data: sources, column checks, transforms, caption dropout, order and resume."""

from __future__ import annotations

import io
import itertools
import json
import random
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion.data import (
    DataConfig,
    DataError,
    DataPosition,
    ImageTransform,
    SampleReader,
    TrainData,
    check_columns,
    decode_image,
    load_source,
)

NUM_IMAGES = 24


def _png(seed: int, size: tuple[int, int] = (16, 16)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def make_imagefolder(root: Path, num_images: int, broken: tuple[int, ...] = ()) -> Path:
    """``num_images`` 16x16 PNGs with captions in metadata.jsonl; the ``broken`` ones are not images."""
    root.mkdir(parents=True)
    with open(root / "metadata.jsonl", "w") as meta:
        for i in range(num_images):
            if i in broken:
                (root / f"{i:03d}.png").write_bytes(b"not a png")
            else:
                _png(i).save(root / f"{i:03d}.png")
            meta.write(json.dumps({"file_name": f"{i:03d}.png", "text": f"caption {i}"}) + "\n")
    return root


def _rows(num_images: int) -> dict[str, list]:
    return {
        "image": [{"bytes": _encode(_png(i)), "path": None} for i in range(num_images)],
        "text": [f"caption {i}" for i in range(num_images)],
        "label": [i % 3 for i in range(num_images)],
    }


def _encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _features() -> datasets.Features:
    return datasets.Features(
        {
            "image": datasets.Image(),
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["cat", "dog", "bird"]),
        }
    )


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("data") / "images", NUM_IMAGES)


def _open(config: DataConfig, **kwargs) -> TrainData:
    dataset = load_source(config)
    check_columns(dataset, config)
    return TrainData(dataset, config, **{"resolution": 8, "batch_size": 4, "seed": 0, **kwargs})


def _take(data: TrainData, n: int, start: DataPosition | None = None) -> list[dict]:
    return list(itertools.islice(data.batches(start or DataPosition()), n))


# ------------------------------------------------------------------------------------ transforms


@pytest.mark.parametrize("center_crop", [True, False])
def test_transform_shape_and_range(center_crop: bool) -> None:
    transform = ImageTransform(16, center_crop=center_crop, random_flip=True)
    x = transform(_png(0, size=(40, 24)), random.Random(0))
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert -1.0 <= x.min() < x.max() <= 1.0
    assert torch.equal(transform(Image.new("RGB", (20, 20), (255, 255, 255)), random.Random(0)), torch.ones(3, 16, 16))
    assert torch.equal(transform(Image.new("L", (20, 20), 0), random.Random(0)), -torch.ones(3, 16, 16))


def test_random_crop_and_flip_follow_the_rng() -> None:
    transform = ImageTransform(8, center_crop=False, random_flip=True)
    image = _png(1, size=(32, 12))
    outputs = [transform(image, random.Random(seed)) for seed in range(8)]
    assert torch.equal(outputs[0], transform(image, random.Random(0)))
    assert len({o.numpy().tobytes() for o in outputs}) > 1


def test_decode_image_reads_every_kind_of_cell(tmp_path: Path) -> None:
    _png(0).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    encoded = _encode(_png(0))
    for cell in (str(tmp_path / "ok.png"), encoded, {"bytes": encoded, "path": None}, _png(0)):
        assert decode_image(cell).size == (16, 16)
    for cell in (str(tmp_path / "bad.png"), b"junk", {"bytes": None, "path": str(tmp_path / "missing.png")}):
        assert decode_image(cell) is None


def test_caption_dropout_rate_and_determinism() -> None:
    config = DataConfig(dataset_name="unused", caption_dropout=0.3)
    reader = SampleReader(config, _features(), resolution=4)
    row = {"image": Image.new("RGB", (4, 4)), "text": "a caption", "label": 0}
    captions = [reader(row, random.Random(i))["caption"] for i in range(2000)]
    rate = captions.count("") / len(captions)
    assert abs(rate - 0.3) < 0.04, rate
    assert set(captions) == {"", "a caption"}
    assert captions == [reader(row, random.Random(i))["caption"] for i in range(2000)]


def test_caption_template_uses_class_names() -> None:
    config = DataConfig(
        dataset_name="unused",
        caption_column=None,
        caption_template="a photo of a {label}",
        label_column="label",
        caption_dropout=0.0,
    )
    sample = SampleReader(config, _features(), resolution=4)(
        {"image": _png(0), "text": "x", "label": 2}, random.Random()
    )
    assert sample["caption"] == "a photo of a bird" and sample["label"] == 2


def test_caption_templates_are_drawn_by_weight_and_seed() -> None:
    config = DataConfig(
        dataset_name="unused",
        caption_column=None,
        caption_template=["{text}, {label}", "{text}", "never {label}"],
        caption_template_weights=[3, 1, 0],
        label_column="label",
        caption_dropout=0.0,
    )
    assert config.template_fields() == ["text", "label"]
    reader = SampleReader(config, _features(), resolution=4)
    row = {"image": _png(0), "text": "x", "label": 1}
    captions = [reader(row, random.Random(i))["caption"] for i in range(4000)]
    assert set(captions) == {"x, dog", "x"}  # the zero-weight template is never drawn
    assert abs(captions.count("x") / len(captions) - 0.25) < 0.025
    assert captions == [reader(row, random.Random(i))["caption"] for i in range(4000)]


def test_bad_caption_templates_are_refused(imagefolder: Path) -> None:
    with pytest.raises(DataError, match="2 weights for 1 caption templates"):
        DataConfig(dataset_name="x", caption_template="{text}", caption_template_weights=[1, 2])
    with pytest.raises(DataError, match="weights is set without caption_template"):
        DataConfig(dataset_name="x", caption_template_weights=[1])
    with pytest.raises(DataError, match="non-negative with a positive sum"):
        DataConfig(dataset_name="x", caption_template=["{text}", "a"], caption_template_weights=[0, 0])
    with pytest.raises(DataError, match="empty list"):
        DataConfig(dataset_name="x", caption_template=[])
    dataset = load_source(DataConfig(train_data_dir=str(imagefolder)))
    with pytest.raises(DataError, match=r"caption_template field \{style\} 'style' .* columns are: image, text"):
        check_columns(dataset, DataConfig(train_data_dir=str(imagefolder), caption_template=["{text}", "{style}"]))


# ------------------------------------------------------------------------------------ sources


def test_imagefolder_batches(imagefolder: Path) -> None:
    config = DataConfig(train_data_dir=str(imagefolder), caption_dropout=0.0)
    data = _open(config)
    assert data.batches_per_epoch == NUM_IMAGES // 4
    batch = _take(data, 1)[0]
    assert batch["images"].shape == (4, 3, 8, 8)
    assert all(c.startswith("caption ") for c in batch["captions"])
    assert batch["skipped"] == 0 and batch["position"] == DataPosition(0, 4)  # rows of the epoch read so far


def test_unreadable_images_are_skipped_and_counted(tmp_path: Path) -> None:
    folder = make_imagefolder(tmp_path / "images", 12, broken=(3, 7))
    data = _open(DataConfig(train_data_dir=str(folder)))
    epoch = _take(data, data.batches_per_epoch)
    assert sum(b["skipped"] for b in epoch) == 2
    assert sum(len(b["images"]) for b in epoch) == sum(len(b["captions"]) for b in epoch) == 10


def test_parquet_sources(tmp_path: Path) -> None:
    folder = tmp_path / "parquet"
    folder.mkdir()
    datasets.Dataset.from_dict(_rows(12), features=_features()).to_parquet(str(folder / "train.parquet"))
    by_dir = _open(DataConfig(train_data_dir=str(folder), caption_dropout=0.0, label_column="label"))
    by_files = _open(DataConfig(dataset_name="parquet", data_files=str(folder / "*.parquet"), caption_dropout=0.0))
    first, second = _take(by_dir, 1)[0], _take(by_files, 1)[0]
    assert first["captions"] == second["captions"] and torch.equal(first["images"], second["images"])
    assert first["labels"].tolist() == [int(c.split()[1]) % 3 for c in first["captions"]]


@pytest.mark.parametrize("as_dict", [False, True])
def test_save_to_disk_source(tmp_path: Path, as_dict: bool) -> None:
    dataset = datasets.Dataset.from_dict(_rows(8), features=_features())
    (datasets.DatasetDict({"train": dataset}) if as_dict else dataset).save_to_disk(str(tmp_path / "saved"))
    batch = _take(_open(DataConfig(train_data_dir=str(tmp_path / "saved"))), 1)[0]
    assert batch["images"].shape == (4, 3, 8, 8)
    if as_dict:
        with pytest.raises(DataError, match="split 'test' not in .*it has splits: train"):
            load_source(DataConfig(train_data_dir=str(tmp_path / "saved"), split="test"))


def test_missing_column_lists_existing_columns(imagefolder: Path) -> None:
    dataset = load_source(DataConfig(train_data_dir=str(imagefolder)))
    with pytest.raises(DataError, match=r"caption_column 'caption' .* columns are: image, text"):
        check_columns(dataset, DataConfig(train_data_dir=str(imagefolder), caption_column="caption"))
    with pytest.raises(DataError, match=r"image_column 'img' .* columns are: image, text"):
        check_columns(dataset, DataConfig(train_data_dir=str(imagefolder), image_column="img"))


def test_bad_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_source(DataConfig(train_data_dir=str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match="no data source"):
        DataConfig()
    with pytest.raises(DataError, match="caption_dropout"):
        DataConfig(dataset_name="x", caption_dropout=1.5)


# ------------------------------------------------------------------------------------ order and resume


def test_ranks_split_each_epoch_without_overlap(imagefolder: Path) -> None:
    config = DataConfig(train_data_dir=str(imagefolder), caption_dropout=0.0)
    per_rank = [
        [c for b in _take(_open(config, rank=r, world_size=2), NUM_IMAGES // 8) for c in b["captions"]]
        for r in range(2)
    ]
    assert sorted(per_rank[0] + per_rank[1]) == sorted(f"caption {i}" for i in range(NUM_IMAGES))


@pytest.mark.parametrize("old, new", [(1, 2), (2, 1), (2, 3)])
def test_a_position_resumes_on_another_number_of_processes_without_repeating_or_skipping(imagefolder: Path, old: int, new: int) -> None:
    """The rows the ``new`` processes read together from a position written by ``old`` are the rows
    that one process reads from it, in the same order and with the same augmentations."""
    config = DataConfig(train_data_dir=str(imagefolder), random_flip=True, center_crop=False)
    written = _take(_open(config, resolution=12, rank=0, world_size=old), 2)[-1]["position"]
    assert written == DataPosition(0, 2 * 4 * old)
    alone = _take(_open(config, resolution=12), NUM_IMAGES)  # one process, from the start, two epochs
    skip = written.offset // 4
    ranks = [_take(_open(config, resolution=12, rank=r, world_size=new), 2, start=written) for r in range(new)]
    together = [ranks[r][k] for k in range(2) for r in range(new)]  # global batch k is the ranks' slices in order
    expected = alone[skip : skip + 2 * new] if written.offset + 2 * 4 * new <= NUM_IMAGES else None
    if expected is not None:
        for a, b in zip(together, expected, strict=True):
            assert a["captions"] == b["captions"] and torch.equal(a["images"], b["images"])
    else:  # the epoch's rest cannot fill a global batch: the next epoch starts
        assert together[0]["position"].epoch == written.epoch + 1


@pytest.mark.parametrize("streaming", [False, True])
def test_resume_reproduces_the_stream(imagefolder: Path, streaming: bool) -> None:
    config = DataConfig(train_data_dir=str(imagefolder), streaming=streaming, random_flip=True, center_crop=False)
    data = _open(config, resolution=12, rank=1, world_size=2)
    straight = _take(data, 9)
    resumed = _take(data, 4, start=straight[4]["position"])
    for a, b in zip(straight[5:], resumed, strict=True):
        assert a["captions"] == b["captions"] and torch.equal(a["images"], b["images"])
        assert a["position"] == b["position"]


def test_worker_processes_give_the_same_batches(imagefolder: Path) -> None:
    config = DataConfig(train_data_dir=str(imagefolder), random_flip=True)
    direct = _take(_open(config), 3)
    config.num_workers = 2
    workers = _take(_open(config), 3)
    assert all(
        torch.equal(a["images"], b["images"]) and a["captions"] == b["captions"]
        for a, b in zip(direct, workers, strict=True)
    )

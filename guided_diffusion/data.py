"""Hugging Face datasets in, training batches out.

A :class:`DataConfig` names a source: a Hub dataset (``dataset_name``), a local folder
(``train_data_dir``: an ``imagefolder`` with ``metadata.jsonl`` captions, parquet files, or a
``save_to_disk`` folder), files for a packaged builder (``dataset_name: parquet`` + ``data_files``),
or the built-in ``shapes32``. :func:`load_source` opens it, :func:`check_columns` refuses missing
columns before training starts, and :class:`TrainData` turns it into an endless stream of batches
for one process of a data-parallel run::

    {"images": [B, 3, H, W] in [-1, 1], "captions": list[str], "labels": [B] (with label_column),
     "attributes": {column: [B]} (with label_columns),
     "skipped": int (unreadable images left out of this batch), "position": DataPosition}

``labels`` is present when ``label_column`` holds integer class ids (e.g. a ``ClassLabel``).
``attributes`` holds, for each of ``label_columns`` (the targets of a classifier), LongTensor class
indices into that column's class names (see :func:`label_classes`).

Every random choice (epoch order, crop, flip, caption dropout, which of several captions) is drawn
from ``seed`` and the sample's place in the stream, so a run restarted at a saved
:class:`DataPosition` sees exactly the batches it would have seen, whatever the worker count.
Map-style datasets are shuffled globally each epoch and dealt to processes batch by batch;
streaming datasets are buffer-shuffled, split by node, and read in the main process (a resume
re-reads, without decoding, the part of the epoch already seen).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from datasets.distributed import split_dataset_by_node
from PIL import Image

from .datasets.fetch import FetchError
from .config import Config
from .errors import UserError
from .images import colour_rgb, flatten_alpha, from_uint8

SHAPES32 = "shapes32"
EMOJI = "emoji"
FASHION_MNIST = "fashion_mnist"
BUILTIN_DATASETS = (SHAPES32, EMOJI, FASHION_MNIST)

HFDataset = datasets.Dataset | datasets.IterableDataset


class DataError(UserError):
    """A data problem the user can fix: a bad path, a missing column, an unusable option."""


@dataclass
class DataConfig(Config):
    """The ``data`` section: where the training images and captions come from and how they become tensors.

    ``caption_template`` (e.g. ``"a photo of a {label}"``) builds captions from columns instead of
    reading ``caption_column``: ``{label}`` is the name of ``label_column``'s class, and any other
    ``{column}`` is that column's value (class name for ``ClassLabel`` columns). A list of templates
    draws one per example, with probabilities proportional to ``caption_template_weights`` (equal
    without them): e.g. ``["{name}, {style} style", "{name}"]`` also teaches the name on its own.
    ``label_columns`` are the attributes a classifier learns (``ClassLabel``, string or integer
    columns); with them, captions may be left out (``caption_column`` and ``caption_template`` None:
    every caption is "").
    ``train_data_dir`` wins over ``dataset_name`` when both are set. ``resolution`` None means the
    model's image size. ``num_images`` sizes ``shapes32``; transparent images are composited on
    ``background`` (a PIL colour); ``dataset_name: emoji`` and ``fashion_mnist`` are the built-in
    real datasets (see :mod:`guided_diffusion.datasets`);
    ``dataset_options`` are keyword arguments of a built-in dataset's builder (e.g. ``styles`` or
    ``include_skin_tones`` of :func:`~guided_diffusion.datasets.emoji.make_emoji`);
    ``num_workers`` applies to map-style datasets (streams are read in the main process).
    """

    section = "data"

    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_data_dir: str | None = None
    data_files: str | list[str] | dict[str, Any] | None = None
    split: str = "train"
    image_column: str = "image"
    caption_column: str | None = "text"
    label_column: str | None = None
    label_columns: list[str] = dataclasses.field(default_factory=list)
    caption_template: str | list[str] | None = None
    caption_template_weights: list[float] | None = None
    num_images: int = 4096
    resolution: int | None = None
    center_crop: bool = True
    random_flip: bool = False
    caption_dropout: float = 0.1
    streaming: bool = False
    shuffle_buffer_size: int = 1000
    num_workers: int = 0
    cache_dir: str | None = None
    background: str = "white"
    dataset_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.dataset_name and not self.train_data_dir:
            raise DataError("no data source: set data.dataset_name (or --dataset_name) or --train_data_dir")
        if self.resolution is not None and self.resolution < 1:
            raise DataError(f"resolution must be a positive number of pixels, got {self.resolution}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise DataError(f"caption_dropout must be a probability in [0, 1], got {self.caption_dropout}")
        if self.caption_column is None and self.caption_template is None and not self.label_columns:
            raise DataError(
                "set caption_column, or caption_template to build captions from other columns "
                "(or label_columns, the classes of a classifier, which reads no captions)"
            )
        self._check_caption_templates()
        if len(set(self.label_columns)) != len(self.label_columns):
            raise DataError(f"label_columns names a column twice: {', '.join(self.label_columns)}")
        if self.num_images < 1 or self.shuffle_buffer_size < 1 or self.num_workers < 0:
            raise DataError("num_images and shuffle_buffer_size must be positive, num_workers non-negative")

    def _check_caption_templates(self) -> None:
        templates, weights = self.caption_templates(), self.caption_template_weights
        if self.caption_template is not None and not templates:
            raise DataError("caption_template is an empty list: give at least one template, or leave it unset")
        if weights is None:
            return
        if self.caption_template is None:
            raise DataError("caption_template_weights is set without caption_template: they weight its templates")
        if len(weights) != len(templates):
            raise DataError(
                f"caption_template_weights has {len(weights)} weights for {len(templates)} caption templates: "
                "give one per template"
            )
        if any(not w >= 0 for w in weights) or not sum(weights) > 0:
            raise DataError(f"caption_template_weights must be non-negative with a positive sum, got {weights}")

    def caption_templates(self) -> list[str]:
        """``caption_template`` as a list (empty without one)."""
        if self.caption_template is None:
            return []
        return [self.caption_template] if isinstance(self.caption_template, str) else list(self.caption_template)

    def template_fields(self) -> list[str]:
        """The ``{name}`` placeholders of the caption templates, each once (empty without a template)."""
        fields: dict[str, None] = {}
        for template in self.caption_templates():
            try:
                fields.update((name, None) for _, name, _, _ in string.Formatter().parse(template) if name is not None)
            except ValueError as err:
                raise DataError(f"caption_template {template!r} is not a valid format string: {err}") from None
        return list(fields)


@dataclass(frozen=True)
class DataPosition:
    """Where a run is in its data: of ``epoch``, ``offset`` rows already read by all processes together
    (map-style; the same for every process), or ``offset`` examples of this process's shard (streaming)."""

    epoch: int = 0
    offset: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> "DataPosition":
        return cls(epoch=int(d["epoch"]), offset=int(d["offset"]))


# ----------------------------------------------------------------------------------------------
# Opening a source


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _load_local(path: Path, config: DataConfig) -> HFDataset:
    if not path.exists():
        raise DataError(f"data folder {path} does not exist")
    if _is_saved_dataset(path):
        saved = datasets.load_from_disk(str(path))
        if isinstance(saved, datasets.DatasetDict):
            if config.split not in saved:
                raise DataError(f"split {config.split!r} not in {path}; it has splits: {', '.join(saved)}")
            saved = saved[config.split]
        return saved.to_iterable_dataset(num_shards=max(1, saved.num_rows // 10_000)) if config.streaming else saved
    return datasets.load_dataset(str(path), split=config.split, streaming=config.streaming, cache_dir=config.cache_dir)


def _load_builtin(config: DataConfig) -> datasets.Dataset:
    options = dict(config.dataset_options)
    if config.dataset_name == SHAPES32:
        from .datasets.shapes import make_shapes32

        return make_shapes32(config.num_images, split=config.split, **options)
    if config.dataset_name == EMOJI:
        from .datasets.emoji import make_emoji

        options.setdefault("background", config.background)
        return make_emoji(config.split, resolution=config.resolution or 64, **options)
    from .datasets.fashion_mnist import make_fashion_mnist

    return make_fashion_mnist(config.split, **options)


def load_source(config: DataConfig) -> HFDataset:
    """Open the dataset ``config`` names: a ``datasets.Dataset``, or an ``IterableDataset`` when
    ``config.streaming``. Raises :class:`DataError` for a path, name or split that cannot be loaded."""
    what = config.train_data_dir or config.dataset_name
    try:
        if config.train_data_dir:
            return _load_local(Path(config.train_data_dir), config)
        if config.dataset_name in BUILTIN_DATASETS:
            built = _load_builtin(config)
            return built.to_iterable_dataset() if config.streaming else built
        if os.path.isdir(config.dataset_name):
            return _load_local(Path(config.dataset_name), config)
        return datasets.load_dataset(
            config.dataset_name,
            config.dataset_config_name,
            data_files=config.data_files,
            split=config.split,
            streaming=config.streaming,
            cache_dir=config.cache_dir,
        )
    except DataError:
        raise
    except FetchError as err:
        raise DataError(str(err)) from None
    except (OSError, ValueError, TypeError, datasets.exceptions.DatasetsError) as err:
        raise DataError(f"could not load dataset {what!r}: {err}") from None


def _first_row(dataset: HFDataset) -> dict[str, Any]:
    for row in dataset:
        return row
    raise DataError("the dataset is empty")


def check_columns(dataset: HFDataset, config: DataConfig) -> None:
    """Refuse, before any training, a dataset that lacks the configured columns.

    The message lists the columns that do exist and names the option to change.
    """
    columns = dataset.column_names or list(_first_row(dataset).keys())
    wanted = {"image_column": config.image_column, "label_column": config.label_column}
    if config.caption_template is None:
        wanted["caption_column"] = config.caption_column
    else:
        for field in config.template_fields():
            if field != "label":
                wanted[f"caption_template field {{{field}}}"] = field
        if "label" in config.template_fields() and config.label_column is None:
            raise DataError("caption_template uses {label}: set label_column to the column of class ids")
    for option, column in wanted.items():
        if column is not None and column not in columns:
            flag = f"--{option}" if option.endswith("_column") else "caption_template"
            raise DataError(
                f"{option} {column!r} is not a column of the dataset; its columns are: {', '.join(columns)} "
                f"(set {flag})"
            )
    missing = [column for column in config.label_columns if column not in columns]
    if missing:
        raise DataError(
            f"label_columns {', '.join(map(repr, missing))} {'is' if len(missing) == 1 else 'are'} not "
            f"{'a column' if len(missing) == 1 else 'columns'} of the dataset; its columns are: {', '.join(columns)} "
            "(set --label_columns)"
        )
    if isinstance(dataset, datasets.Dataset) and dataset.num_rows == 0:
        raise DataError("the dataset is empty")


def label_classes(dataset: HFDataset, columns: Sequence[str]) -> dict[str, list[str]]:
    """Each label column's class names, in class-index order.

    A ``ClassLabel`` column gives its own names; a column of strings (or integers) gives its distinct
    values, sorted (integers by value, then written as strings). Class names cannot be collected from a
    stream, so streamed label columns must be ``ClassLabel``. Refuses a column with empty cells, with
    other kinds of values, or with fewer than two classes.
    """
    features = dataset.features or {}
    classes = {}
    for column in columns:
        feature = features.get(column)
        if isinstance(feature, datasets.ClassLabel):
            names = [str(name) for name in feature.names]
        elif isinstance(dataset, datasets.IterableDataset):
            raise DataError(
                f"label column {column!r} is not a ClassLabel, and its class names cannot be collected from a "
                "stream; turn off streaming, or cast the column to datasets.ClassLabel(names=[...])"
            )
        else:
            values = dataset.unique(column)
            if any(value is None for value in values):
                raise DataError(f"label column {column!r} has rows without a value")
            if all(isinstance(value, str) for value in values):
                names = sorted(values)
            elif all(isinstance(value, int) and not isinstance(value, bool) for value in values):
                names = [str(value) for value in sorted(values)]
            else:
                kinds = sorted({type(value).__name__ for value in values})
                raise DataError(
                    f"label column {column!r} holds {', '.join(kinds)} values; class labels must be strings, "
                    "integers or a ClassLabel"
                )
        if len(names) < 2:
            raise DataError(f"label column {column!r} has a single class {names}; a classifier needs at least two")
        classes[column] = names
    return classes


# ----------------------------------------------------------------------------------------------
# One sample


class ImageTransform:
    """PIL image -> tensor [3, resolution, resolution] in [-1, 1].

    Composites a transparent image on ``background`` (:func:`~guided_diffusion.images.flatten_alpha`),
    resizes the shorter side to ``resolution`` (bilinear, antialiased), crops the centre or a random
    square, and flips horizontally with probability 1/2 when ``random_flip``; the random choices come
    from the ``random.Random`` passed in, so a sample's augmentation is reproducible.
    """

    def __init__(
        self, resolution: int, *, center_crop: bool = True, random_flip: bool = False, background: str = "white"
    ) -> None:
        self.background = colour_rgb(background)  # parsed once, and a bad colour refused now, not mid-epoch
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip

    def __call__(self, image: Image.Image, rng: random.Random) -> torch.Tensor:
        x = TF.pil_to_tensor(flatten_alpha(image, self.background))
        x = TF.resize(x, [self.resolution], antialias=True)
        height, width = x.shape[-2:]
        if self.center_crop:
            x = TF.center_crop(x, [self.resolution, self.resolution])
        else:
            top = rng.randint(0, height - self.resolution)
            left = rng.randint(0, width - self.resolution)
            x = TF.crop(x, top, left, self.resolution, self.resolution)
        if self.random_flip and rng.random() < 0.5:
            x = TF.horizontal_flip(x)
        return from_uint8(x)


def decode_image(value: Any) -> Image.Image | None:
    """An image from a dataset cell (PIL image, ``{"bytes", "path"}`` dict, bytes or path), or None
    when it cannot be read."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, (bytes, bytearray)):
        value = {"bytes": bytes(value), "path": None}
    elif isinstance(value, str):
        value = {"bytes": None, "path": value}
    try:
        return datasets.Image().decode_example(value)
    except Exception:  # noqa: BLE001 - any decoder failure means "unreadable image", counted by the caller
        return None


class SampleReader:
    """One dataset row -> ``{"image": [3, H, W], "caption": str, "label": int, "attributes": {column:
    int}}``, or None when the image is unreadable. ``label`` is there for an integer ``label_column``,
    ``attributes`` for ``label_columns``: each value's index in ``class_names[column]`` (a value that
    is not among them is refused). Captions are dropped to "" with probability ``config.caption_dropout``."""

    def __init__(
        self,
        config: DataConfig,
        features: datasets.Features | None,
        resolution: int,
        class_names: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.config = config
        self.transform = ImageTransform(
            resolution, center_crop=config.center_crop, random_flip=config.random_flip, background=config.background
        )
        self.class_names = {
            name: feature for name, feature in (features or {}).items() if isinstance(feature, datasets.ClassLabel)
        }
        class_names = class_names or {}
        missing = [column for column in config.label_columns if column not in class_names]
        if missing:
            raise ValueError(f"SampleReader needs the class names of label columns {missing}")
        self.class_index = {
            column: {name: i for i, name in enumerate(class_names[column])} for column in config.label_columns
        }
        self.templates = config.caption_templates()
        self.template_fields = [name for name in config.template_fields() if name != "label"]

    def _field(self, row: dict[str, Any], column: str) -> Any:
        value = row[column]
        feature = self.class_names.get(column)
        return feature.int2str(value) if feature is not None and isinstance(value, int) else value

    def _attribute(self, row: dict[str, Any], column: str) -> int:
        name = str(self._field(row, column))
        index = self.class_index[column].get(name)
        if index is None:
            raise DataError(
                f"label column {column!r} holds {name!r}, which is not one of its classes "
                f"({', '.join(self.class_index[column])})"
            )
        return index

    def _caption(self, row: dict[str, Any], rng: random.Random) -> str:
        config = self.config
        if config.caption_column is None and config.caption_template is None:
            return ""
        if config.caption_template is not None:
            fields = {name: self._field(row, name) for name in self.template_fields}
            if config.label_column is not None:
                fields["label"] = self._field(row, config.label_column)
            # one template draws nothing, so a single-template run reads the same rng stream as before
            templates = self.templates
            template = templates[0] if len(templates) == 1 else rng.choices(templates, config.caption_template_weights)[0]
            return template.format(**fields)
        caption = row[config.caption_column]
        if isinstance(caption, (list, tuple)):
            caption = rng.choice(caption) if caption else ""
        return "" if caption is None else str(caption)

    def __call__(self, row: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
        image = decode_image(row[self.config.image_column])
        if image is None:
            return None
        sample = {"image": self.transform(image, rng), "caption": self._caption(row, rng)}
        if rng.random() < self.config.caption_dropout:
            sample["caption"] = ""
        label = None if self.config.label_column is None else row[self.config.label_column]
        if isinstance(label, (int, np.integer)):
            sample["label"] = int(label)
        if self.config.label_columns:
            sample["attributes"] = {column: self._attribute(row, column) for column in self.config.label_columns}
        return sample


def sample_rng(seed: int, *place: int) -> random.Random:
    """The random stream of one sample, from the run's seed and the sample's place in the data."""
    return random.Random("/".join(str(v) for v in (seed, *place)))


def collate(samples: list[tuple[dict[str, Any] | None, DataPosition]]) -> dict[str, Any]:
    """Stack readable samples into a batch; see the module docstring for its keys."""
    readable = [sample for sample, _ in samples if sample is not None]
    batch: dict[str, Any] = {
        "images": torch.stack([s["image"] for s in readable]) if readable else torch.empty(0, 3, 0, 0),
        "captions": [s["caption"] for s in readable],
        "skipped": len(samples) - len(readable),
        "position": samples[-1][1],
    }
    if readable and "label" in readable[0]:
        batch["labels"] = torch.tensor([s["label"] for s in readable], dtype=torch.long)
    if readable and "attributes" in readable[0]:
        batch["attributes"] = {
            column: torch.tensor([s["attributes"][column] for s in readable], dtype=torch.long)
            for column in readable[0]["attributes"]
        }
    return batch


# ----------------------------------------------------------------------------------------------
# Streams of batches


class _MapStyleSamples(torch.utils.data.Dataset):
    """Reads sample keys ``(epoch, offset_after, index)`` of a map-style dataset."""

    def __init__(self, dataset: datasets.Dataset, reader: SampleReader, seed: int) -> None:
        self.dataset = dataset
        self.reader = reader
        self.seed = seed

    def __len__(self) -> int:
        return self.dataset.num_rows

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[dict[str, Any] | None, DataPosition]:
        epoch, offset, index = key
        sample = self.reader(self.dataset[index], sample_rng(self.seed, epoch, index))
        return sample, DataPosition(epoch, offset)


class _EpochBatches(torch.utils.data.Sampler):
    """Endless batches of sample keys for one rank, from ``start`` on.

    Each epoch is a permutation of all rows drawn from (seed, epoch). ``start.offset`` counts the rows
    of ``start.epoch``'s permutation that all processes together have read; from there global batch k
    is rows ``[offset + k G, offset + (k + 1) G)`` with ``G = batch_size * world_size``, and rank ``r``
    reads the ``r``-th slice of ``batch_size``. A global batch the epoch cannot fill is dropped. The
    position being global, a run resumed on another number of processes reads on from the next unread
    row, neither repeating nor skipping any.
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int, rank: int, world_size: int, start: DataPosition):
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start
        self.batches_per_epoch = num_rows // (batch_size * world_size)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        global_batch = self.batch_size * self.world_size
        epoch, offset = self.start.epoch, self.start.offset
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
            while offset + global_batch <= self.num_rows:
                begin = offset + self.rank * self.batch_size
                offset += global_batch
                yield [(epoch, offset, int(i)) for i in order[begin : begin + self.batch_size]]
            epoch, offset = epoch + 1, 0


class _StreamingSamples(torch.utils.data.IterableDataset):
    """Endless ``(sample, position)`` pairs from this rank's share of a streaming dataset."""

    def __init__(
        self, dataset: datasets.IterableDataset, reader: SampleReader, seed: int, rank: int, start: DataPosition
    ) -> None:
        self.dataset = dataset
        self.reader = reader
        self.seed = seed
        self.rank = rank
        self.start = start

    def __iter__(self) -> Iterator[tuple[dict[str, Any] | None, DataPosition]]:
        epoch, offset = self.start.epoch, self.start.offset
        while True:
            self.dataset.set_epoch(epoch)
            seen = offset
            for row in itertools.islice(self.dataset, offset, None):
                seen += 1
                yield self.reader(row, sample_rng(self.seed, epoch, self.rank, seen)), DataPosition(epoch, seen)
            if seen == 0:
                raise DataError("the streaming dataset yielded no examples for this process")
            epoch, offset = epoch + 1, 0


class TrainData:
    """The training batches of one process of ``world_size``, as an endless iterator.

    Args:
        dataset: a checked ``datasets.Dataset`` or ``IterableDataset`` (see :func:`load_source`).
        config: the data config.
        resolution: the side of the square output images.
        batch_size: images per batch on this process.
        seed: the seed of the data order, augmentations and caption dropout.
        rank, world_size: this process and the number of processes.
        class_names: the class names of ``config.label_columns`` (default: :func:`label_classes` of
            ``dataset``); pass the training data's to read other data with the same class indices.

    ``batches_per_epoch`` is the number of batches each process reads per epoch (None when streaming);
    ``class_names`` maps each label column to its class names.
    """

    def __init__(
        self,
        dataset: HFDataset,
        config: DataConfig,
        *,
        resolution: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        class_names: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.config = config
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        if class_names is None:
            class_names = label_classes(dataset, config.label_columns)
        self.class_names = {column: list(names) for column, names in class_names.items()}
        self.reader = SampleReader(config, dataset.features, resolution, self.class_names)
        self.dataset = dataset
        if isinstance((dataset.features or {}).get(config.image_column), datasets.Image):
            self.dataset = dataset.cast_column(config.image_column, datasets.Image(decode=False))
        self.batches_per_epoch: int | None = None
        if isinstance(dataset, datasets.Dataset):
            self.batches_per_epoch = dataset.num_rows // (batch_size * world_size)
            if self.batches_per_epoch == 0:
                raise DataError(
                    f"the dataset has {dataset.num_rows} rows, fewer than one batch across processes "
                    f"({batch_size} x {world_size}); lower train_batch_size"
                )
        else:
            self.dataset = split_dataset_by_node(
                self.dataset.shuffle(seed=seed, buffer_size=config.shuffle_buffer_size), rank, world_size
            )

    def batches(self, start: DataPosition = DataPosition()) -> Iterator[dict[str, Any]]:
        """Endless batches from ``start`` (a position from an earlier batch's ``"position"``)."""
        # The loader's own generator keeps it from drawing on the global RNG, which training owns.
        generator = torch.Generator().manual_seed(self.seed)
        if self.batches_per_epoch is None:
            samples = _StreamingSamples(self.dataset, self.reader, self.seed, self.rank, start)
            loader = torch.utils.data.DataLoader(
                samples, batch_size=self.batch_size, collate_fn=collate, generator=generator
            )
        else:
            sampler = _EpochBatches(
                self.dataset.num_rows, self.batch_size, self.seed, self.rank, self.world_size, start
            )
            loader = torch.utils.data.DataLoader(
                _MapStyleSamples(self.dataset, self.reader, self.seed),
                batch_sampler=sampler,
                collate_fn=collate,
                num_workers=self.config.num_workers,
                generator=generator,
            )
        return iter(loader)

"""Evaluation of a pipeline on any captioned dataset, optionally with a label column
(``gd-eval --dataset-name NAME_OR_PATH`` or ``--train-data-dir DIR``).

The data is opened through :mod:`guided_diffusion.data` (a Hub name, a local imagefolder, parquet or
``save_to_disk`` folder, or a built-in dataset), and every image is resized to the model's size.
The metrics:

- bits/dim (:func:`~guided_diffusion.evaluation.likelihood.bits_per_dim`) of random rows of the
  held-out split (the training split when there is none) under their captions;
- prompt fidelity by retrieval (:func:`~guided_diffusion.evaluation.retrieval.retrieval_fidelity`,
  16x16 area-averaged pixels): the captions of random rows of the training split (seen) and of the
  held-out split prompt the model; an image is a top-1 (top-5) hit when its nearest real image (one of
  its 5 nearest) in a gallery of that split's rows, the prompted rows among them, carries the prompt's
  caption. With a label column, also the share whose nearest real image has the prompted row's label
  (what counts for class-conditional data, where many images share a caption). Chance: the hit rate of
  a gallery image drawn at random;
- with a label column and a held-out split, the Classification Accuracy Score (:mod:`.cas`): a small
  CNN trained only on ``K`` generated images per class, each prompted with the caption of a random
  training row of that class, and tested on real held-out images; beside it the same CNN trained on
  those ``K`` real training rows per class, and the gap in points. When the pipeline's classifier has a
  head for the label column, also with classifier guidance towards each image's class (same noise);
- with such a classifier head, a classifier-guidance sweep with the empty prompt: the share of images
  whose nearest real training image has the target label, and the mean pairwise 16x16-pixel distance
  among each class's guided images beside that among as many real images of the class (diversity kept
  or lost).

Without ``eval_split`` the held-out split is ``test`` when the data has one. Every random choice (rows,
prompts, noise, the CAS classifier's initial weights and batches) follows from the seed: the same seed
gives the same report on the same device.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import DataConfig, DataError, SampleReader, check_columns, label_classes, load_source, sample_rng
from ..errors import RequestError
from ..pipeline import GuidedDiffusionPipeline
from .cas import CAS_CLASSIFIER, CASScore, classification_accuracy_score
from .likelihood import bits_per_dim
from .report import counted, percent, save_samples, write_report
from .retrieval import nearest, pixel_features, retrieval_fidelity
from .sampling import CLASSIFIER_SCALE_SWEEP, EvalSampling, check_counts, generate, guidance_reads_note, purpose_rng

DEFAULT_EVAL_SPLIT = "test"
NO_EVAL_SPLIT = "none"
FEATURE_SIZE = 16
RETRIEVAL_K = 5
GRID_PER_GROUP = 8


def _listing(names: Sequence[str], limit: int = 20) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _mean(values: Sequence[float]) -> float:
    """The mean of the values that are not NaN (NaN when none is)."""
    kept = [v for v in values if v == v]
    return float(np.mean(kept)) if kept else float("nan")


def class_indices(dataset: datasets.Dataset, column: str, classes: Sequence[str], split: str) -> np.ndarray:
    """Each row's class: the index in ``classes`` of its ``column`` value, ``[N]`` int64. A ``ClassLabel``
    value is compared by its name, any other value as a string (as :func:`~guided_diffusion.data.label_classes`
    names classes); a value outside ``classes`` is refused."""
    feature = (dataset.features or {}).get(column)
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    index = {name: i for i, name in enumerate(classes)}
    found = np.empty(dataset.num_rows, dtype=np.int64)
    for row, value in enumerate(dataset[column]):
        name = names[value] if names is not None and isinstance(value, int) and 0 <= value < len(names) else str(value)
        if name not in index:
            raise DataError(
                f"label column {column!r} of split {split!r} holds {value!r}, which is not one of the training "
                f"split's classes ({_listing(list(classes))})"
            )
        found[row] = index[name]
    return found


@dataclass
class EvalSplit:
    """One split of the data under evaluation, read on demand: ``labels`` holds each row's class index
    (``[N]``, None without a label column); ``seed`` picks among several captions of a row."""

    name: str
    dataset: datasets.Dataset
    reader: SampleReader
    labels: np.ndarray | None
    seed: int

    @property
    def num_rows(self) -> int:
        return self.dataset.num_rows

    def read(self, rows: Sequence[int], description: str) -> tuple[np.ndarray, torch.Tensor, list[str]]:
        """The readable ones of ``rows``, in order: their row indices ``[n]``, images ``[n, 3, S, S]`` in
        [-1, 1] at the model's size ``S``, and captions. Unreadable images are left out; none readable
        raises :class:`DataError`."""
        rows = [int(r) for r in rows]
        kept, images, captions = [], [], []
        for index, row in zip(rows, tqdm(self.dataset.select(rows), desc=description, unit="image", leave=False)):
            sample = self.reader(row, sample_rng(self.seed, index))
            if sample is not None:
                kept.append(index)
                images.append(sample["image"])
                captions.append(sample["caption"])
        if not kept:
            raise DataError(f"none of the {len(rows)} images read from split {self.name!r} could be decoded")
        return np.array(kept, dtype=np.int64), torch.stack(images), captions


@dataclass
class EvalData:
    """The data of an evaluation: the training split, the held-out split (None, with the reason in
    ``held_out_note``, when there is none), the caption and label columns, and the label column's class
    names in class-index order (empty without a label column)."""

    source: str
    train: EvalSplit
    held_out: EvalSplit | None
    caption_column: str | None
    label_column: str | None
    classes: list[str]
    image_size: int
    held_out_note: str | None = None

    def describe(self) -> dict[str, Any]:
        """What the report says about the data."""
        return {
            "source": self.source,
            "split": self.train.name,
            "rows": self.train.num_rows,
            "held_out_split": None if self.held_out is None else self.held_out.name,
            "held_out_rows": 0 if self.held_out is None else self.held_out.num_rows,
            "held_out_note": self.held_out_note,
            "caption_column": self.caption_column,
            "label_column": self.label_column,
            "classes": self.classes,
            "image_size": self.image_size,
        }


def _eval_split(config: DataConfig, dataset: datasets.Dataset, classes: Sequence[str], seed: int) -> EvalSplit:
    """Split ``config.split`` of the data (its columns checked), its rows' classes read."""
    labels = None if config.label_column is None else class_indices(dataset, config.label_column, classes, config.split)
    reader = SampleReader(config, dataset.features, config.resolution)
    if isinstance((dataset.features or {}).get(config.image_column), datasets.Image):
        # decoded by the reader, which reports an unreadable image instead of raising
        dataset = dataset.cast_column(config.image_column, datasets.Image(decode=False))
    return EvalSplit(config.split, dataset, reader, labels, seed)


def open_eval_data(config: DataConfig, *, eval_split: str | None, resolution: int, seed: int = 0) -> EvalData:
    """Open the training split ``config.split`` of ``config``'s source and the held-out ``eval_split``
    (None: ``test`` when the data has one; ``"none"``: no held-out split), check their columns (a missing
    one is refused with the columns there are), and read the label column's classes from the training
    split. Images are read without augmentation or caption dropout, resized to ``resolution``. Raises
    :class:`~guided_diffusion.data.DataError`."""
    config = dataclasses.replace(
        config, caption_dropout=0.0, random_flip=False, center_crop=True, streaming=False, resolution=resolution
    )
    train = load_source(config)
    check_columns(train, config)
    classes = label_classes(train, [config.label_column])[config.label_column] if config.label_column else []
    data = EvalData(
        source=config.train_data_dir or str(config.dataset_name),
        train=_eval_split(config, train, classes, seed),
        held_out=None,
        caption_column=config.caption_column,
        label_column=config.label_column,
        classes=classes,
        image_size=resolution,
    )
    if eval_split is not None and eval_split.lower() == NO_EVAL_SPLIT:
        data.held_out_note = "no held-out split (--eval-split none)"
        return data
    held_config = dataclasses.replace(config, split=eval_split or DEFAULT_EVAL_SPLIT)
    try:
        held = load_source(held_config)
    except DataError as err:
        if eval_split is not None:
            raise
        data.held_out_note = f"no held-out split: split {DEFAULT_EVAL_SPLIT!r} could not be opened ({err})"
        return data
    check_columns(held, held_config)
    data.held_out = _eval_split(held_config, held, classes, seed)
    return data


# ----------------------------------------------------------------------------------------------
# The metrics


def prompt_rows(split: EvalSplit, num_prompts: int, seed: int) -> np.ndarray:
    """``num_prompts`` random rows of ``split`` (all of them when it has fewer), in drawn order."""
    return purpose_rng(seed, f"prompts/{split.name}").choice(split.num_rows, min(num_prompts, split.num_rows), replace=False)


@dataclass
class Gallery:
    """Real images of one split to retrieve from: their rows ``[G]``, images ``[G, 3, S, S]`` in [-1, 1],
    captions, and class indices (``[G]``, None without a label column)."""

    split: str
    rows: np.ndarray
    images: torch.Tensor
    captions: list[str]
    labels: np.ndarray | None


def read_gallery(split: EvalSplit, required: np.ndarray, size: int, seed: int) -> Gallery:
    """The ``required`` rows of ``split`` and random others, ``size`` rows in all (never fewer than the
    required ones), in row order."""
    others = np.setdiff1d(np.arange(split.num_rows), required)
    extra = purpose_rng(seed, f"gallery/{split.name}").choice(others, min(len(others), max(0, size - len(required))), replace=False)
    rows, images, captions = split.read(np.sort(np.concatenate([required, extra])), f"reading the {split.name} gallery")
    return Gallery(split.name, rows, images, captions, None if split.labels is None else split.labels[rows])


def split_retrieval(
    pipe: GuidedDiffusionPipeline,
    gallery: Gallery,
    rows: np.ndarray,
    *,
    images_per_prompt: int,
    sampling: EvalSampling,
) -> tuple[dict[str, Any], torch.Tensor, list[str]]:
    """Prompt with the captions of ``rows`` (readable gallery rows; ``images_per_prompt`` consecutive
    images each) and retrieve every image's nearest real images from ``gallery``. Returns the scores, the
    images ``[N, 3, S, S]`` in [-1, 1] and their prompts."""
    position = {row: i for i, row in enumerate(gallery.rows.tolist())}
    asked = [position[int(r)] for r in rows if int(r) in position]
    if not asked:
        raise DataError(f"none of the {len(rows)} rows of split {gallery.split!r} drawn for prompts has a readable image")
    prompts = [gallery.captions[i] for i in asked for _ in range(images_per_prompt)]
    images = generate(pipe, prompts, sampling, description=f"prompts of {gallery.split}")
    result = retrieval_fidelity(images, prompts, gallery.images, gallery.captions, k=RETRIEVAL_K, size=FEATURE_SIZE)
    counts = Counter(gallery.captions)
    size = len(gallery.captions)
    scores: dict[str, Any] = {
        "split": gallery.split,
        "prompts": len(asked),
        "images": len(prompts),
        "gallery": size,
        "top1": result.top1_rate,
        "top5": result.topk_rate,
        "top1_chance": float(np.mean([counts[p] / size for p in prompts])),
    }
    if gallery.labels is not None:
        wanted = np.repeat(gallery.labels[asked], images_per_prompt)
        found = gallery.labels[result.neighbours[:, 0].numpy()]
        shares = np.bincount(gallery.labels, minlength=int(gallery.labels.max()) + 1) / size
        scores["label_top1"] = float(np.mean(found == wanted))
        scores["label_top1_chance"] = float(np.mean(shares[wanted]))
    return scores, images, prompts


def split_bits_per_dim(pipe: GuidedDiffusionPipeline, split: EvalSplit, *, num_images: int, batch_size: int, seed: int) -> dict[str, Any]:
    """Bits/dim of ``num_images`` random rows of ``split`` under their captions (mean, std, n, split)."""
    rows = purpose_rng(seed, f"bpd/{split.name}").choice(split.num_rows, min(num_images, split.num_rows), replace=False)
    _, images, captions = split.read(rows, f"reading {split.name} rows for bits/dim")
    return {"split": split.name, **bits_per_dim(pipe, images, captions, batch_size=batch_size, seed=seed)}


def has_label_head(pipe: GuidedDiffusionPipeline, column: str | None, classes: Sequence[str]) -> bool:
    """Whether the pipeline's classifier has a head for ``column`` to guide with; a head that lacks some
    of the data's ``classes`` is refused."""
    if column is None or pipe.classifier is None or column not in pipe.classifier.labels:
        return False
    missing = [name for name in classes if name not in pipe.classifier.labels[column]]
    if missing:
        raise RequestError(
            f"the classifier's {column!r} head lacks the data's classes {_listing(missing)}; it has "
            f"{_listing(pipe.classifier.labels[column])} (is --label-column the column it was trained on?)"
        )
    return True


def mean_pairwise_distance(images: torch.Tensor, size: int = FEATURE_SIZE) -> float:
    """The mean Euclidean distance between two of ``images [N, 3, H, W]`` (in [-1, 1]) in
    :func:`~guided_diffusion.evaluation.retrieval.pixel_features` of side ``size``, over all N(N-1)/2
    pairs; NaN for fewer than two images."""
    if images.shape[0] < 2:
        return float("nan")
    return float(torch.pdist(pixel_features(images, size)).mean())


Shown = list[tuple[torch.Tensor, str]]


def cas_evaluation(
    pipe: GuidedDiffusionPipeline,
    data: EvalData,
    *,
    images_per_class: int,
    epochs: int,
    test_images: int,
    classifier_scale: float,
    classifier_max_t: int | None,
    sampling: EvalSampling,
) -> tuple[dict[str, Any], Shown]:
    """The Classification Accuracy Score of ``pipe`` on ``data`` (which has a label column and a held-out
    split), its real-data reference and, with ``classifier_scale`` and a classifier head for the label
    column, its guided variant; see the module docstring. Returns the scores and one generated image
    per class (guided ones too) with its caption."""
    train, test = data.train, data.held_out
    if train.labels is None or test is None or test.labels is None:
        raise RequestError("the CAS needs a label column and a held-out split")
    rng = purpose_rng(sampling.seed, "cas/train")
    chosen = [rng.permutation(np.flatnonzero(train.labels == c))[:images_per_class] for c in range(len(data.classes))]
    rows, real_images, captions = train.read(np.concatenate(chosen), "CAS: reading real training images")
    labels = torch.from_numpy(train.labels[rows])
    guide = bool(classifier_scale) and has_label_head(pipe, data.label_column, data.classes)
    generated, guided, shown = [], [], []
    first_batch = 0
    for c, name in enumerate(tqdm(data.classes, desc="CAS: sampling", unit="class", leave=False)):
        prompts = [captions[i] for i in np.flatnonzero(labels.numpy() == c)]
        if not prompts:
            continue
        # each class draws its own noise; guided and unguided images of a class share it
        seeded = dataclasses.replace(sampling, seed=sampling.seed + first_batch)
        first_batch += -(-len(prompts) // sampling.batch_size)
        generated.append(generate(pipe, prompts, seeded, description=f"CAS: {name}"))
        shown.append((generated[-1][0], f"CAS {name}: {prompts[0]}"))
        if guide:
            guided.append(generate(
                pipe, prompts, seeded, description=f"CAS: {name}, guided", classifier_scale=float(classifier_scale),
                classifier_labels={data.label_column: name}, classifier_max_t=classifier_max_t,
            ))
            shown.append((guided[-1][0], f"CAS {name}, guided x{classifier_scale:g}: {prompts[0]}"))
    test_rows = purpose_rng(sampling.seed, "cas/test").choice(test.num_rows, min(test_images, test.num_rows), replace=False)
    kept, test_set, _ = test.read(test_rows, f"CAS: reading real {test.name} images")
    test_labels = torch.from_numpy(test.labels[kept])

    def score(images: torch.Tensor, what: str) -> CASScore:
        return classification_accuracy_score(
            images, labels, test_set, test_labels, len(data.classes), epochs=epochs, seed=sampling.seed,
            device=pipe.device, description=f"CAS: training on {what}",
        )

    real, made = score(real_images, "real images"), score(torch.cat(generated), "generated images")
    report: dict[str, Any] = {
        "images_per_class": images_per_class,
        "train_images": len(rows),
        "test_split": test.name,
        "test_images": len(kept),
        "epochs": epochs,
        "classifier": CAS_CLASSIFIER,
        "chance": 1 / len(data.classes),
        "real": real.accuracy,
        "generated": made.accuracy,
        "gap": 100 * (real.accuracy - made.accuracy),
        "per_class": {name: {"real": r, "generated": g} for name, r, g in zip(data.classes, real.per_class, made.per_class)},
    }
    if guide:
        steered = score(torch.cat(guided), "guided images")
        report["guided"] = {
            "scale": float(classifier_scale),
            "max_t": classifier_max_t,
            "accuracy": steered.accuracy,
            "gap": 100 * (real.accuracy - steered.accuracy),
        }
        for name, value in zip(data.classes, steered.per_class):
            report["per_class"][name]["guided"] = value
    elif classifier_scale:
        report["guided"] = {"skipped": f"the pipeline has no classifier with a {data.label_column!r} head"}
    return report, shown


def guidance_diversity_sweep(
    pipe: GuidedDiffusionPipeline,
    data: EvalData,
    gallery: Gallery,
    *,
    scales: Sequence[float],
    images_per_target: int,
    max_t: int | None,
    sampling: EvalSampling,
) -> tuple[dict[str, Any], Shown]:
    """With the empty prompt, guide ``images_per_target`` images towards each class of the label column
    at each of ``scales``; judge each by the label of its nearest real image in ``gallery`` (training
    rows), and measure each class's diversity by :func:`mean_pairwise_distance`, beside the same for as
    many random real training images of the class. Returns the sweep and, at the largest scale, one
    image per class with its caption."""
    column, train = data.label_column, data.train
    if column is None or train.labels is None or gallery.labels is None:
        raise RequestError("the classifier-guidance sweep needs a label column")
    rng = purpose_rng(sampling.seed, "sweep/real")
    chosen = np.concatenate([
        rng.permutation(np.flatnonzero(train.labels == c))[:images_per_target] for c in range(len(data.classes))
    ])
    rows, real_images, _ = train.read(chosen, "reading real images per class")
    real = [mean_pairwise_distance(real_images[torch.from_numpy(train.labels[rows] == c)]) for c in range(len(data.classes))]
    features = pixel_features(gallery.images, FEATURE_SIZE)
    sweep, shown = [], []
    for scale in scales:
        per_class = []
        for c, name in enumerate(data.classes):
            images = generate(
                pipe, [""] * images_per_target, sampling, description=f"{column}={name}, scale {scale:g}",
                classifier_scale=float(scale), classifier_labels={column: name}, classifier_max_t=max_t,
            )
            _, neighbours = nearest(pixel_features(images, FEATURE_SIZE), features, 1)
            judged = gallery.labels[neighbours[:, 0].numpy()]
            per_class.append({"class": name, "hit_rate": float(np.mean(judged == c)), "pairwise_distance": mean_pairwise_distance(images)})
            if scale == max(scales):
                shown.append((images[0], f"guided to {name} x{scale:g}"))
        sweep.append({
            "scale": float(scale),
            "hit_rate": _mean([r["hit_rate"] for r in per_class]),
            "pairwise_distance": _mean([r["pairwise_distance"] for r in per_class]),
            "per_class": per_class,
        })
    report = {
        "column": column,
        "max_t": max_t,
        "images_per_target": images_per_target,
        "chance": 1 / len(data.classes),
        "real_pairwise_distance": _mean(real),
        "real_per_class": dict(zip(data.classes, real)),
        "rows": sweep,
    }
    return report, shown


# ----------------------------------------------------------------------------------------------
# The whole evaluation


def evaluate_generic(
    pipe: GuidedDiffusionPipeline,
    out: str | Path,
    *,
    model_name: str,
    data: EvalData,
    sampling: EvalSampling,
    num_prompts: int = 54,
    images_per_prompt: int = 4,
    gallery_size: int = 5000,
    bpd_images: int = 64,
    cas_images_per_class: int = 100,
    cas_epochs: int = 20,
    cas_test_images: int = 10_000,
    cas_classifier_scale: float = 10.0,
    classifier_scales: Sequence[float] = CLASSIFIER_SCALE_SWEEP,
    images_per_target: int = 96,
    classifier_max_t: int | None = None,
) -> dict[str, Any]:
    """Run the evaluation of ``pipe`` on ``data`` and write ``report.md``, ``report.json`` and a captioned
    ``samples.png`` into ``out``; returns the report. A count of 0 (``num_prompts``, ``bpd_images``,
    ``cas_images_per_class``) or no ``classifier_scales`` leaves that metric out."""
    check_counts(0, num_prompts=num_prompts, bpd_images=bpd_images, cas_images_per_class=cas_images_per_class,
                 images_per_target=images_per_target)
    check_counts(1, images_per_prompt=images_per_prompt, gallery_size=gallery_size, cas_epochs=cas_epochs,
                 cas_test_images=cas_test_images)
    started = time.perf_counter()
    out = Path(out)
    guide = has_label_head(pipe, data.label_column, data.classes)
    report: dict[str, Any] = {
        "model": model_name,
        "data": data.describe(),
        "sampling": sampling.to_dict(),
        "images_per_prompt": images_per_prompt,
    }
    shown: Shown = []
    if bpd_images:
        report["bits_per_dim"] = split_bits_per_dim(
            pipe, data.held_out or data.train, num_images=bpd_images, batch_size=sampling.batch_size, seed=sampling.seed
        )
    seen_rows = prompt_rows(data.train, num_prompts, sampling.seed)
    train_gallery = None
    if num_prompts or (guide and classifier_scales):
        train_gallery = read_gallery(data.train, seen_rows, gallery_size, sampling.seed)
    if num_prompts:
        report["retrieval"] = {}
        for group, split in (("seen", data.train), ("held_out", data.held_out)):
            if split is None:
                continue
            rows = seen_rows if split is data.train else prompt_rows(split, num_prompts, sampling.seed)
            gallery = train_gallery if split is data.train else read_gallery(split, rows, gallery_size, sampling.seed)
            scores, images, prompts = split_retrieval(pipe, gallery, rows, images_per_prompt=images_per_prompt, sampling=sampling)
            report["retrieval"][group] = scores
            first = slice(0, GRID_PER_GROUP * images_per_prompt, images_per_prompt)
            shown += [(image, f"{group.replace('_', ' ')}: {prompt}") for image, prompt in zip(images[first], prompts[first])]
    if data.label_column is not None and cas_images_per_class:
        if data.held_out is None:
            report["cas"] = {"skipped": "the CAS is measured on real held-out images, and the data has no held-out split"}
        else:
            report["cas"], images = cas_evaluation(
                pipe, data, images_per_class=cas_images_per_class, epochs=cas_epochs, test_images=cas_test_images,
                classifier_scale=cas_classifier_scale, classifier_max_t=classifier_max_t, sampling=sampling,
            )
            shown += images[: 2 * GRID_PER_GROUP]
    if data.label_column is not None and classifier_scales:
        if guide:
            report["classifier_guidance"], images = guidance_diversity_sweep(
                pipe, data, train_gallery, scales=classifier_scales, images_per_target=images_per_target,
                max_t=classifier_max_t, sampling=sampling,
            )
            shown += images[:GRID_PER_GROUP]
        else:
            report["classifier_guidance"] = {"skipped": f"the pipeline has no classifier with a {data.label_column!r} head"}
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples.png").unlink(missing_ok=True)
    if shown:
        save_samples(torch.stack([image for image, _ in shown]), [caption for _, caption in shown], out / "samples.png")
    report["samples"] = len(shown)  # images in samples.png
    report["seconds"] = time.perf_counter() - started
    write_report(out, report, render_generic_report)
    return report


# ----------------------------------------------------------------------------------------------
# The report



def _num(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"


def render_generic_report(report: dict[str, Any]) -> str:
    """The markdown of an :func:`evaluate_generic` report."""
    d, s = report["data"], report["sampling"]
    held = (
        f"held-out split `{d['held_out_split']}` ({d['held_out_rows']} rows)" if d["held_out_split"] else d["held_out_note"]
    )
    labels = f", labels from `{d['label_column']}` ({len(d['classes'])} classes)" if d["label_column"] else ""
    lines = [
        f"# Evaluation of `{report['model']}` on `{d['source']}`",
        "",
        f"Training split `{d['split']}` ({d['rows']} rows); {held}. Captions from `{d['caption_column']}`{labels}; "
        f"images resized to {d['image_size']}x{d['image_size']}. Sampler {s['sampler']}, {s['steps']} steps ({s.get('timestep_schedule', 'uniform')} schedule), "
        f"classifier-free guidance {s['guidance_scale']}, seed {s['seed']}{guidance_reads_note(s.get('guidance_reads', 'x_t'))}.",
    ]
    if "bits_per_dim" in report:
        b = report["bits_per_dim"]
        lines += ["", "## Likelihood", "", f"Bits/dim on {b['n']} rows of split `{b['split']}` under their captions: "
                  f"{b['mean']:.3f} (std {b['std']:.3f})."]
    if "retrieval" in report:
        with_labels = bool(d["label_column"])
        lines += [
            "",
            "## Prompt fidelity by retrieval",
            "",
            f"Prompts: the captions of random rows of each split, {counted(report['images_per_prompt'], 'image')} each. A top-1 "
            f"(top-{RETRIEVAL_K}) hit: the nearest real image (one of the {RETRIEVAL_K} nearest), in {FEATURE_SIZE}x"
            f"{FEATURE_SIZE} area-averaged pixels among a gallery of that split's rows that holds the prompted ones, "
            "carries the prompt's caption"
            + (" (label: has the prompted row's label)" if with_labels else "")
            + ". Chance: the hit rate of a random gallery image.",
            "",
            "| prompts from | prompts | images | gallery | top-1 caption | top-5 caption | chance"
            + (" | top-1 label | chance |" if with_labels else " |"),
            "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if with_labels else ""),
        ]
        for group, label in (("seen", "training split (seen)"), ("held_out", "held-out split")):
            if group in report["retrieval"]:
                r = report["retrieval"][group]
                lines.append(
                    f"| {label} `{r['split']}` | {r['prompts']} | {r['images']} | {r['gallery']} | {percent(r['top1'])} | "
                    f"{percent(r['top5'])} | {percent(r['top1_chance'])} |"
                    + (f" {percent(r['label_top1'])} | {percent(r['label_top1_chance'])} |" if with_labels else "")
                )
    if "cas" in report:
        c = report["cas"]
        lines += ["", "## Classification Accuracy Score", ""]
        if "skipped" in c:
            lines.append(f"Not measured: {c['skipped']}.")
        else:
            guided = c.get("guided", {})
            lines += [
                f"A classifier trained only on {counted(c['images_per_class'], 'generated image')} per class (each prompted with the "
                f"caption of a random training row of the class; {c['train_images']} in all), for {c['epochs']} epochs, "
                f"tested on {c['test_images']} real images of split `{c['test_split']}` (Ravuri & Vinyals 2019). The "
                f"reference: the same classifier trained on those real training rows. Chance: {percent(c['chance'])}. "
                f"Classifier: {c['classifier']}.",
                "",
                "| trained on | accuracy | gap to real (points) |",
                "|---|---:|---:|",
                f"| real training images | {percent(c['real'])} | |",
                f"| generated images | {percent(c['generated'])} | {c['gap']:.1f} |",
            ]
            if "accuracy" in guided:
                limit = "" if guided["max_t"] is None else f", t <= {guided['max_t']}"
                lines.append(
                    f"| generated, classifier guidance x{guided['scale']:g}{limit} | {percent(guided['accuracy'])} | {guided['gap']:.1f} |"
                )
            elif "skipped" in guided:
                lines += ["", f"No classifier-guided CAS: {guided['skipped']}."]
            if len(c["per_class"]) <= 20:
                columns = ["real", "generated"] + (["guided"] if "accuracy" in guided else [])
                lines += ["", "Recall per class:", "", "| class | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
                lines += [f"| {name} | " + " | ".join(percent(v[k]) for k in columns) + " |" for name, v in c["per_class"].items()]
    if "classifier_guidance" in report:
        g = report["classifier_guidance"]
        lines += ["", f"## Classifier guidance on `{d['label_column']}` with the empty prompt", ""]
        if "skipped" in g:
            lines.append(f"Not measured: {g['skipped']}.")
        else:
            limit = "every step" if g["max_t"] is None else f"t <= {g['max_t']} only"
            lines += [
                f"{counted(g['images_per_target'], 'image')} per class, guided at {limit}. Hit rate: the share whose nearest real "
                f"training image has the target label (chance {percent(g['chance'])}). Diversity: the mean pairwise distance "
                f"between a class's images in {FEATURE_SIZE}x{FEATURE_SIZE} pixels, averaged over the classes; the last row "
                "holds as many real training images of each class.",
                "",
                "| classifier scale | hit rate | pairwise distance |",
                "|---:|---:|---:|",
            ]
            lines += [f"| {row['scale']:g} | {percent(row['hit_rate'])} | {_num(row['pairwise_distance'])} |" for row in g["rows"]]
            lines.append(f"| real training images | | {_num(g['real_pairwise_distance'])} |")
    if report["samples"]:
        lines += ["", "![samples](samples.png)"]
    lines += ["", f"Took {report['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"

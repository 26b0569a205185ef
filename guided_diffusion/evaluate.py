"""Evaluation of a Shapes32 model: prompt adherence, classifier guidance, bits/dim, samplers.

Generated images are judged by :func:`guided_diffusion.datasets.shapes.describe`, which reads a
sample's shape, colour, size and position back from its pixels. ``gd-eval`` (or
``python -m guided_diffusion.evaluate``) writes a markdown report with a sample grid and plots::

    gd-eval --model shapes32 --out docs/evaluation

- prompt adherence: for canonical prompts ("a small blue triangle in the top right"), the share of
  images whose shape, colour, size, position (and all four) match, for seen and held-out
  colour-shape pairs;
- classifier guidance: with the empty prompt, for each target class of one attribute, the hit rate
  and the normalised entropy of the other attributes against the classifier scale;
- bits/dim (the variational bound of :meth:`GaussianDiffusion.nll_bpd`) on held-out images;
- optionally, quality (all-four accuracy) against sampler and number of steps.

An emoji model (``gd-eval --model emoji32``; its folder's ``training_data.json`` says so, or
``--dataset emoji``) gets the emoji evaluation of :mod:`guided_diffusion.evaluation.emoji` instead.

Any other model is evaluated on the data it was trained on, named as for training
(``--dataset-name`` or ``--train-data-dir``, which select this path; ``--split``, ``--eval-split``,
``--caption-column``, ``--label-column``), by :mod:`guided_diffusion.evaluation.generic`: bits/dim,
prompt fidelity by retrieval of seen and held-out captions and, with a label column, the
Classification Accuracy Score (``--cas-images-per-class``, ``--cas-classifier-scale``) and a
classifier-guidance sweep judged by the nearest real image's label::

    gd-eval --model outputs/fashion_mnist --dataset-name fashion_mnist --label-column label --out docs/evaluation/fashion_mnist
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .datasets.shapes import (
    COLORS,
    HELDOUT_PAIRS,
    POSITIONS,
    SHAPES,
    SIZES,
    canonical_caption,
    describe_batch,
    make_shapes32,
    sample_attributes,
)
from .errors import RequestError, exits_on_user_errors
from .evaluation.diversity import normalized_entropy
from .evaluation.likelihood import bits_per_dim
from .evaluation.report import counted, percent
from .evaluation.sampling import CLASSIFIER_SCALE_SWEEP, EvalSampling, check_counts, guidance_reads_note, per_guidance_scale
from .images import enlarge, from_pil, from_uint8, image_grid
from .pipeline import GuidedDiffusionPipeline
from .request import GUIDANCE_READS
from .samplers import SAMPLERS, TIMESTEP_SCHEDULES, checked_sampler, model_evaluations, steps_for_nfe
from .timestep_schedules import checked_schedule
from .serialization import TRAINING_DATA_NAME

ATTRIBUTES = ("shape", "color", "size", "position")
CLASSES = {"shape": SHAPES, "color": COLORS, "size": SIZES, "position": POSITIONS}


@dataclass
class Report:
    """Everything the markdown report shows."""

    model: str
    sampling: EvalSampling
    adherence: dict[str, dict[str, float]] = field(default_factory=dict)
    guidance_scales: list[dict[str, Any]] = field(default_factory=list)
    classifier: list[dict[str, Any]] = field(default_factory=list)
    classifier_reference: dict[str, float] = field(default_factory=dict)
    classifier_max_t: int | None = None
    bpd: dict[str, float] | None = None
    samplers: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def canonical_targets(num_prompts: int, *, heldout: bool, seed: int = 0) -> list[dict[str, str]]:
    """``num_prompts`` attribute combinations whose colour-shape pair is held out (or not): the allowed
    pairs in turn, each with a random size and position."""
    held = set(HELDOUT_PAIRS)
    pairs = [(c, s) for c in COLORS for s in SHAPES if ((c, s) in held) == heldout]
    rng = np.random.default_rng([seed, int(heldout)])
    return [
        {"shape": shape, "color": color, "size": SIZES[rng.integers(len(SIZES))], "position": POSITIONS[rng.integers(len(POSITIONS))]}
        for color, shape in (pairs[i % len(pairs)] for i in range(num_prompts))
    ]


def generate(pipe: GuidedDiffusionPipeline, prompts: Sequence[str], sampling: EvalSampling, **extra: Any) -> np.ndarray:
    """Images for ``prompts`` (one each) as uint8 [N, H, W, 3], in batches, seeded per batch."""
    chunks = []
    for i, start in enumerate(range(0, len(prompts), sampling.batch_size)):
        batch = list(prompts[start : start + sampling.batch_size])
        images = pipe(batch, seed=sampling.seed + i, **sampling.kwargs(), **extra).images
        chunks.append(np.stack([np.asarray(image) for image in images]))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0, 0, 3), np.uint8)


def attribute_accuracy(targets: Sequence[dict[str, str]], found: Sequence[dict[str, str]]) -> dict[str, float]:
    """Share of images whose attribute matches its target, per attribute and for all four at once."""
    if len(targets) != len(found) or not targets:
        raise RequestError(f"need as many descriptions as targets (got {len(found)} and {len(targets)}), and at least one")
    scores = {a: float(np.mean([t[a] == f[a] for t, f in zip(targets, found)])) for a in ATTRIBUTES}
    scores["all"] = float(np.mean([all(t[a] == f[a] for a in ATTRIBUTES) for t, f in zip(targets, found)]))
    return scores


def prompt_adherence(
    pipe: GuidedDiffusionPipeline, *, heldout: bool, num_prompts: int, images_per_prompt: int, sampling: EvalSampling
) -> tuple[dict[str, float], np.ndarray, list[str]]:
    """Accuracy of canonical prompts (see :func:`attribute_accuracy`), the images and their prompts."""
    targets = [t for t in canonical_targets(num_prompts, heldout=heldout, seed=sampling.seed) for _ in range(images_per_prompt)]
    prompts = [canonical_caption(**t) for t in targets]
    images = generate(pipe, prompts, sampling)
    return attribute_accuracy(targets, describe_batch(images)), images, prompts


def classifier_guidance_sweep(
    pipe: GuidedDiffusionPipeline,
    *,
    attribute: str,
    scales: Sequence[float],
    images_per_target: int,
    sampling: EvalSampling,
    prompt: str = "",
    max_t: int | None = None,
) -> list[dict[str, Any]]:
    """For each scale and each class of ``attribute``: the hit rate of samples guided to that class
    and the normalised entropy of every other attribute (diversity). Rows are dicts. ``max_t``: guide
    only at t <= max_t (see :func:`~guided_diffusion.guidance.classifier_cond_fn`)."""
    if pipe.classifier is None:
        raise RequestError("the pipeline has no classifier to guide with")
    if attribute not in pipe.classifier.labels:
        raise RequestError(f"the classifier has no {attribute!r} head; it has {', '.join(pipe.classifier.labels)}")
    rows = []
    for scale in scales:
        for target in pipe.classifier.labels[attribute]:
            images = generate(
                pipe, [prompt] * images_per_target, sampling, classifier_scale=float(scale), classifier_labels={attribute: target},
                classifier_max_t=max_t,
            )
            found = describe_batch(images)
            row = {
                "scale": float(scale),
                "target": target,
                "images": len(found),
                "hit_rate": float(np.mean([f[attribute] == target for f in found])),
            }
            for other in ATTRIBUTES:
                if other != attribute:
                    row[f"entropy_{other}"] = normalized_entropy([f[other] for f in found], CLASSES[other])
            rows.append(row)
    return rows


def training_data_reference(attribute: str, images_per_target: int, seed: int = 0) -> dict[str, float]:
    """The diversity ceiling of the classifier-guidance sweep: the normalised entropy of every other
    attribute among ``images_per_target`` training-split attribute draws of each class of ``attribute``,
    averaged over the classes (a sampler that drew each class exactly as the training data has it, with
    the sweep's sample size). Held-out colour-shape pairs make it fall short of 1 for colour and shape."""
    rng = np.random.default_rng([seed, 2])
    drawn: dict[str, list[dict[str, str]]] = {c: [] for c in CLASSES[attribute]}
    while any(len(found) < images_per_target for found in drawn.values()):
        labels = sample_attributes(rng, "train").labels()
        if len(drawn[labels[attribute]]) < images_per_target:
            drawn[labels[attribute]].append(labels)
    return {
        f"entropy_{other}": float(np.mean([normalized_entropy([d[other] for d in found], CLASSES[other]) for found in drawn.values()]))
        for other in ATTRIBUTES
        if other != attribute
    }


def shapes_bits_per_dim(pipe: GuidedDiffusionPipeline, *, num_images: int, batch_size: int, seed: int = 0) -> dict[str, float]:
    """The variational bound in bits/dim on held-out Shapes32 images, conditioned on their captions."""
    data = make_shapes32(num_images, seed=seed + 1000, split="heldout")
    return bits_per_dim(pipe, from_pil(data["image"]), data["text"], batch_size=batch_size, seed=seed)


def parse_sampler_spec(spec: str, default_schedule: str) -> tuple[str, str]:
    """``"dpm++:karras"`` -> ``("dpm++", "karras")``; ``"dpm++"`` takes ``default_schedule``. Unknown
    samplers and schedules are refused with the valid ones."""
    name, _, schedule = spec.partition(":")
    checked_sampler(name)
    return name, checked_schedule(schedule or default_schedule)


def sampler_table(
    pipe: GuidedDiffusionPipeline,
    *,
    samplers: Sequence[str],
    steps: Sequence[int] = (),
    nfe: Sequence[int] = (),
    num_prompts: int,
    images_per_prompt: int,
    sampling: EvalSampling,
) -> list[dict[str, Any]]:
    """All-four accuracy on seen-pair canonical prompts for each sampler (``"name"`` or
    ``"name:schedule"``, see :func:`parse_sampler_spec`) at each number of ``steps``, or, with ``nfe``, at
    the most steps whose model evaluations fit each budget (:func:`~guided_diffusion.samplers.steps_for_nfe`)."""
    rows = []
    for spec in samplers:
        name, schedule = parse_sampler_spec(spec, sampling.timestep_schedule)
        counts = [steps_for_nfe(name, budget) for budget in nfe] if nfe else list(steps)
        for n in counts:
            started = time.perf_counter()
            scores, _, _ = prompt_adherence(
                pipe,
                heldout=False,
                num_prompts=num_prompts,
                images_per_prompt=images_per_prompt,
                sampling=dataclasses.replace(sampling, sampler=name, steps=n, timestep_schedule=schedule),
            )
            rows.append({
                "sampler": name, "timestep_schedule": schedule, "steps": n, "nfe": model_evaluations(name, n),
                **scores, "seconds": time.perf_counter() - started,
            })
    return rows


def plot_classifier(rows: list[dict[str, Any]], attribute: str, path: Path, reference: dict[str, float] | None = None) -> None:
    """Hit rate and entropies against the scale; ``reference`` (see :func:`training_data_reference`)
    draws each entropy's ceiling as a dotted line in the same colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = sorted({r["scale"] for r in rows})
    others = [a for a in ATTRIBUTES if a != attribute]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(scales, [np.mean([r["hit_rate"] for r in rows if r["scale"] == s]) for s in scales], "o-", label=f"{attribute} hit rate")
    for other in others:
        (line,) = ax.plot(scales, [np.mean([r[f"entropy_{other}"] for r in rows if r["scale"] == s]) for s in scales], "s--", label=f"{other} entropy")
        if reference:
            ax.axhline(reference[f"entropy_{other}"], color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("classifier scale")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    ax.set_title("classifier guidance: fidelity vs diversity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_samplers(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key in dict.fromkeys((r["sampler"], r["timestep_schedule"]) for r in rows):
        mine = [r for r in rows if (r["sampler"], r["timestep_schedule"]) == key]
        ax.plot([r["nfe"] for r in mine], [100 * r["all"] for r in mine], "o-", label=" ".join(key))
    ax.set_xscale("log")
    ax.set_xlabel("model evaluations (NFE)")
    ax.set_ylabel("all four attributes right (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render_markdown(report: Report, attribute: str) -> str:
    """The report as markdown (images referenced relative to the report's folder)."""
    s = report.sampling
    lines = [
        f"# Evaluation of `{report.model}`",
        "",
        f"Sampler `{s.sampler}`, {s.steps} steps ({s.timestep_schedule} schedule), classifier-free guidance scale {s.guidance_scale}, seed {s.seed}{guidance_reads_note(s.guidance_reads)}. "
        f"Samples judged by `guided_diffusion.datasets.shapes.describe`. Took {report.seconds / 60:.1f} min.",
    ]
    if report.adherence:
        lines += [
            "",
            "![samples](samples.png)",
            "",
            "## Prompt adherence (canonical prompts)",
            "",
            "| colour-shape pairs | images | shape | color | size | position | all four |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, scores in report.adherence.items():
            lines.append(f"| {name} | {scores['n']:.0f} | " + " | ".join(percent(scores[a]) for a in (*ATTRIBUTES, "all")) + " |")
    if report.guidance_scales:
        lines += ["", "## Classifier-free guidance scale (seen pairs)", "", "| guidance scale | all four (seen) |", "|---|---|"]
        lines += [f"| {r['guidance_scale']} | {percent(r['all'])} |" for r in report.guidance_scales]
    if report.classifier:
        scales = sorted({r["scale"] for r in report.classifier})
        per_target = report.classifier[0]["images"]
        others = [a for a in ATTRIBUTES if a != attribute]
        lines += [
            "",
            f"## Classifier guidance on `{attribute}` with the empty prompt"
            + ("" if report.classifier_max_t is None else f", at t <= {report.classifier_max_t} only"),
            "",
            f"Hit rate: share of samples whose {attribute} is the target (chance: {percent(1 / len(CLASSES[attribute]))}). "
            f"Entropy: of each other attribute over its classes among the {counted(per_target, 'image')} per target, normalised "
            "to 1 for uniform. The last row is the ceiling: the training split's images of each target class, as many.",
            "",
            "| classifier scale | hit rate | " + " | ".join(f"{o} entropy" for o in others) + " |",
            "|---|---|" + "---|" * len(others),
        ]
        for scale in scales:
            mine = [r for r in report.classifier if r["scale"] == scale]
            lines.append(
                f"| {scale:g} | {percent(np.mean([r['hit_rate'] for r in mine]))} | "
                + " | ".join(f"{np.mean([r[f'entropy_{o}'] for r in mine]):.2f}" for o in others)
                + " |"
            )
        if report.classifier_reference:
            ref = report.classifier_reference
            lines.append("| training data | 100.0% | " + " | ".join(f"{ref[f'entropy_{o}']:.2f}" for o in others) + " |")
        lines += ["", "![classifier guidance](classifier_guidance.png)"]
    if report.bpd:
        lines += ["", "## Likelihood", "", f"Bits/dim on {report.bpd['n']} held-out images: {report.bpd['mean']:.3f} (std {report.bpd['std']:.3f})."]
    if report.samplers:
        lines += [
            "", "## Samplers: quality against model evaluations (seen pairs, all four right)", "",
            "| sampler | timestep schedule | steps | NFE | all four | seconds |", "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['sampler']} | {r['timestep_schedule']} | {r['steps']} | {r['nfe']} | {percent(r['all'])} | {r['seconds']:.0f} |"
            for r in report.samplers
        ]
        lines += ["", "![samplers](samplers.png)"]
    return "\n".join(lines) + "\n"


def evaluate(
    pipe: GuidedDiffusionPipeline,
    out_dir: str | Path,
    *,
    model_name: str,
    sampling: EvalSampling,
    num_prompts: int = 54,
    images_per_prompt: int = 4,
    guidance_scales: Sequence[float] = (),
    classifier_attribute: str = "shape",
    classifier_scales: Sequence[float] = CLASSIFIER_SCALE_SWEEP,
    images_per_target: int = 96,
    classifier_max_t: int | None = None,
    bpd_images: int = 64,
    samplers: Sequence[str] = (),
    sampler_steps: Sequence[int] = (5, 10, 20, 50, 100, 1000),
    sampler_nfe: Sequence[int] = (),
) -> Report:
    """Run the evaluation and write ``report.md``, ``report.json``, ``samples.png`` and plots into
    ``out_dir``. A count of 0 (``num_prompts``, ``bpd_images``) or no ``classifier_scales`` leaves that
    part out; the sampler table scores canonical prompts, so it needs some."""
    check_counts(0, num_prompts=num_prompts, bpd_images=bpd_images)
    check_counts(1, images_per_prompt=images_per_prompt, images_per_target=images_per_target)
    if samplers and not num_prompts:
        raise RequestError("the sampler table scores canonical prompts: give num_prompts (--num-prompts) above 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = Report(model=model_name, sampling=sampling)
    if num_prompts:
        grid_images, grid_prompts = [], []
        for name, heldout in (("seen", False), ("held out", True)):
            scores, images, prompts = prompt_adherence(
                pipe, heldout=heldout, num_prompts=num_prompts, images_per_prompt=images_per_prompt, sampling=sampling
            )
            report.adherence[name] = {**scores, "n": len(prompts)}
            grid_images.append(images[: 4 * images_per_prompt])
            grid_prompts += prompts[: 4 * images_per_prompt]
        enlarge(image_grid(from_uint8(np.concatenate(grid_images)), images_per_prompt * 2), 3).save(out / "samples.png")
        (out / "prompts.txt").write_text("".join(f"{i}: {p}\n" for i, p in enumerate(dict.fromkeys(grid_prompts))))
        report.guidance_scales = per_guidance_scale(  # the seen prompts at each scale
            guidance_scales,
            sampling,
            {k: v for k, v in report.adherence["seen"].items() if k != "n"},
            lambda at: prompt_adherence(pipe, heldout=False, num_prompts=num_prompts, images_per_prompt=images_per_prompt, sampling=at)[0],
        )
    if pipe.classifier is not None and classifier_scales:
        report.classifier = classifier_guidance_sweep(
            pipe,
            attribute=classifier_attribute,
            scales=classifier_scales,
            images_per_target=images_per_target,
            sampling=sampling,
            max_t=classifier_max_t,
        )
        report.classifier_max_t = classifier_max_t
        report.classifier_reference = training_data_reference(classifier_attribute, images_per_target, seed=sampling.seed)
        plot_classifier(report.classifier, classifier_attribute, out / "classifier_guidance.png", report.classifier_reference)
    if bpd_images:
        report.bpd = shapes_bits_per_dim(pipe, num_images=bpd_images, batch_size=sampling.batch_size, seed=sampling.seed)
    if samplers:
        report.samplers = sampler_table(
            pipe, samplers=samplers, steps=sampler_steps, nfe=sampler_nfe, num_prompts=num_prompts, images_per_prompt=1,
            sampling=sampling,
        )
        plot_samplers(report.samplers, out / "samplers.png")
    report.seconds = time.perf_counter() - started
    (out / "report.md").write_text(render_markdown(report, classifier_attribute))
    (out / "report.json").write_text(json.dumps({**report.__dict__, "sampling": report.sampling.__dict__}, indent=2) + "\n")
    return report


def dataset_of(pipe: GuidedDiffusionPipeline) -> str:
    """``emoji`` when the pipeline's folder records emoji training pairs, else ``shapes32``."""
    record = pipe.folder / TRAINING_DATA_NAME if pipe.folder is not None else None
    if record is not None and record.is_file() and json.loads(record.read_text()).get("dataset") == "emoji":
        return "emoji"
    return "shapes32"


SHARED_FLAGS = (
    "model", "dataset", "out", "sampler", "timestep_schedule", "steps", "guidance_scale", "images_per_prompt",
    "classifier_scales", "images_per_target", "bpd_images", "batch_size", "seed", "device", "guidance_reads",
)
EVALUATION_FLAGS = {  # the flags each evaluation reads beyond SHARED_FLAGS
    "shapes32": (
        "num_prompts", "guidance_scales", "classifier_attribute", "classifier_max_t", "samplers", "sampler_steps", "sampler_nfe",
    ),
    "emoji": ("num_seen", "num_held_out", "emoji_root", "guidance_scales", "classifier_max_t"),
    "generic": (
        "dataset_name", "dataset_config_name", "train_data_dir", "split", "eval_split", "image_column", "caption_column",
        "label_column", "num_prompts", "gallery_size", "cas_images_per_class", "cas_epochs", "cas_test_images",
        "cas_classifier_scale", "classifier_max_t",
    ),
}


def refuse_unused_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, dataset: str) -> None:
    """Refuse, in one line, a flag set away from its default that the ``dataset`` evaluation does not read
    (rather than ignore it silently), naming the flags it does read."""
    used = set(SHARED_FLAGS) | set(EVALUATION_FLAGS[dataset])
    unused = [name for name, value in vars(args).items() if name not in used and value != parser.get_default(name)]
    if unused:
        own = ", ".join(flag_name(name) for name in EVALUATION_FLAGS[dataset])
        raise RequestError(f"{flag_name(unused[0])} is not used by the {dataset} evaluation; its own flags: {own}")


def flag_name(dest: str) -> str:
    """The command-line spelling of the option stored as ``dest`` (``num_seen`` -> ``--num-seen``)."""
    return "--" + dest.replace("_", "-")


def eval_sampling(pipe: GuidedDiffusionPipeline, args: argparse.Namespace) -> EvalSampling:
    """The sampling of the emoji and generic evaluations: the flags, else the pipeline's defaults."""
    flags = ("sampler", "steps", "guidance_scale", "timestep_schedule", "batch_size", "seed", "guidance_reads")
    return EvalSampling.of(pipe, **{name: getattr(args, name) for name in flags})


def classifier_scales_option(args: argparse.Namespace) -> dict[str, tuple[float, ...]]:
    """``{"classifier_scales": ...}`` when ``--classifier-scales`` is given (without values: none, no
    sweep), else ``{}``, so that the evaluation's own default sweep applies."""
    return {} if args.classifier_scales is None else {"classifier_scales": tuple(args.classifier_scales)}


def common_options(pipe: GuidedDiffusionPipeline, args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments every evaluation takes from ``gd-eval``'s flags."""
    return {
        "model_name": str(args.model),
        "sampling": eval_sampling(pipe, args),
        "images_per_prompt": args.images_per_prompt,
        **classifier_scales_option(args),
        "images_per_target": args.images_per_target,
        "bpd_images": args.bpd_images,
    }


def emoji_main(pipe: GuidedDiffusionPipeline, args: argparse.Namespace) -> int:
    """``gd-eval`` on an emoji model: :func:`~guided_diffusion.evaluation.emoji.evaluate_emoji`."""
    from .evaluation.emoji import evaluate_emoji, render_emoji_report

    report = evaluate_emoji(
        pipe, args.out, **common_options(pipe, args), num_seen=args.num_seen, num_held_out=args.num_held_out,
        classifier_max_t=args.classifier_max_t, guidance_scales=args.guidance_scales, emoji_root=args.emoji_root,
    )
    print(render_emoji_report(report))
    return 0


def generic_main(pipe: GuidedDiffusionPipeline, args: argparse.Namespace) -> int:
    """``gd-eval`` on any captioned dataset: :func:`~guided_diffusion.evaluation.generic.evaluate_generic`."""
    from .data import DataConfig
    from .evaluation.generic import evaluate_generic, open_eval_data, render_generic_report

    columns = ("dataset_name", "dataset_config_name", "train_data_dir", "split", "image_column", "caption_column", "label_column")
    config = DataConfig(**{name: getattr(args, name) for name in columns})
    data = open_eval_data(config, eval_split=args.eval_split, resolution=pipe.unet.config.image_size, seed=args.seed)
    flags = ("num_prompts", "gallery_size", "cas_images_per_class", "cas_epochs", "cas_test_images", "cas_classifier_scale", "classifier_max_t")
    report = evaluate_generic(pipe, args.out, **common_options(pipe, args), data=data, **{name: getattr(args, name) for name in flags})
    print(render_generic_report(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """``gd-eval``'s command line; each flag is read by every evaluation (``SHARED_FLAGS``) or listed
    under the evaluations that read it (``EVALUATION_FLAGS``)."""
    parser = argparse.ArgumentParser(prog="gd-eval", description="Evaluate a pipeline on its dataset and write a markdown report.")
    parser.add_argument("--model", default="shapes32", help="a pipeline folder or a shipped model name")
    parser.add_argument("--dataset", choices=("shapes32", "emoji", "generic"), default=None, help="the data the model was trained on (default: generic with --dataset-name or --train-data-dir, else emoji when the model folder holds emoji training pairs, else shapes32)")
    parser.add_argument("--num-seen", type=int, default=200, help="emoji: seen (emoji, style) pairs to prompt")
    parser.add_argument("--num-held-out", type=int, default=None, help="emoji: held-out pairs to prompt (default: all)")
    parser.add_argument("--emoji-root", default=None, help="emoji: folder holding emoji-datasource-<style>/ (default: $GD_EMOJI_DIR or the data cache)")
    data = parser.add_argument_group("generic evaluation: the data, named as for training (either spelling)")
    data.add_argument("--dataset-name", "--dataset_name", default=None, help="Hub dataset, packaged builder, local folder, or a built-in dataset (fashion_mnist, ...)")
    data.add_argument("--dataset-config-name", "--dataset_config_name", default=None, help="the Hub dataset's configuration")
    data.add_argument("--train-data-dir", "--train_data_dir", default=None, help="local imagefolder (metadata.jsonl captions), parquet folder or save_to_disk folder")
    data.add_argument("--split", default="train", help="the training split (seen prompts, CAS real reference)")
    data.add_argument("--eval-split", "--eval_split", default=None, help="the held-out split (default: test when the data has one; 'none': no held-out split)")
    data.add_argument("--image-column", "--image_column", default="image", help="column holding the images")
    data.add_argument("--caption-column", "--caption_column", default="text", help="column holding the captions")
    data.add_argument("--label-column", "--label_column", default=None, help="column holding class labels: adds label retrieval, the CAS and the guidance sweep")
    metrics = parser.add_argument_group("generic evaluation: metrics")
    metrics.add_argument("--gallery-size", type=int, default=5000, help="real rows per split that generated images are retrieved from")
    metrics.add_argument("--cas-images-per-class", type=int, default=100, help="generated (and real reference) training images per class of the CAS (0: no CAS)")
    metrics.add_argument("--cas-epochs", type=int, default=20, help="training epochs of the CAS classifier")
    metrics.add_argument("--cas-test-images", type=int, default=10_000, help="real held-out images the CAS classifier is tested on")
    metrics.add_argument("--cas-classifier-scale", type=float, default=10.0, help="classifier scale of the guided CAS, with a classifier head for the label column (0: none)")
    parser.add_argument("--out", type=Path, default=Path("docs/evaluation"), help="report folder")
    parser.add_argument("--sampler", default=None, help=f"sampler: {', '.join(SAMPLERS)} (default: the model's)")
    parser.add_argument("--timestep-schedule", default=None, help=f"where the steps go: {', '.join(TIMESTEP_SCHEDULES)} (default: the model's)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--num-prompts", type=int, default=54, help="canonical prompts per pair group (generic: rows per split whose captions are prompted)")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--guidance-scales", type=float, nargs="*", default=[], help="also score these CFG scales")
    parser.add_argument("--classifier-attribute", default="shape")
    parser.add_argument(
        "--classifier-scales", type=float, nargs="*", default=None,
        help="classifier scales of the guidance sweep (given without values: no sweep; default: the evaluation's own sweep)",
    )
    parser.add_argument("--images-per-target", type=int, default=96)
    parser.add_argument("--classifier-max-t", type=int, default=None, help="guide only at timesteps t <= this")
    parser.add_argument(
        "--guidance-reads", choices=GUIDANCE_READS, default=None,
        help="what classifier and CLIP guidance read: the noisy x_t or the model's x_0 estimate (x0; a model backward per step); default: the model's",
    )
    parser.add_argument("--bpd-images", type=int, default=64)
    parser.add_argument(
        "--samplers", nargs="*", default=[], metavar="SAMPLER[:SCHEDULE]",
        help=f"add the sampler table for these samplers ({', '.join(SAMPLERS)}), each optionally with a timestep schedule ({', '.join(TIMESTEP_SCHEDULES)})",
    )
    parser.add_argument("--sampler-steps", type=int, nargs="*", default=[5, 10, 20, 50, 100, 1000])
    parser.add_argument("--sampler-nfe", type=int, nargs="*", default=[], help="instead of --sampler-steps: model-evaluation budgets (e.g. 5 10 20)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


@exits_on_user_errors("gd-eval")
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gd-eval``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    generic = args.dataset_name is not None or args.train_data_dir is not None
    if generic and args.dataset not in (None, "generic"):
        raise RequestError(f"--dataset-name and --train-data-dir select the generic evaluation; drop --dataset {args.dataset}")
    pipe = GuidedDiffusionPipeline.from_pretrained(args.model, device=args.device)
    dataset = "generic" if generic else args.dataset or dataset_of(pipe)
    refuse_unused_flags(parser, args, dataset)
    if dataset == "generic":
        return generic_main(pipe, args)
    if dataset == "emoji":
        return emoji_main(pipe, args)
    if pipe.unet.config.image_size != 32:
        raise RequestError(f"gd-eval judges 32x32 Shapes32 samples; this model makes {pipe.unet.config.image_size}x{pipe.unet.config.image_size}")
    report = evaluate(
        pipe, args.out, **common_options(pipe, args), num_prompts=args.num_prompts, guidance_scales=args.guidance_scales,
        classifier_attribute=args.classifier_attribute, classifier_max_t=args.classifier_max_t, samplers=args.samplers,
        sampler_steps=args.sampler_steps, sampler_nfe=args.sampler_nfe,
    )
    print(render_markdown(report, args.classifier_attribute))
    return 0


if __name__ == "__main__":
    sys.exit(main())

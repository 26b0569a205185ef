"""Evaluation of an emoji model (``gd-eval --dataset emoji``): retrieval of the asked emoji on seen and
held-out (emoji, style) pairs (optionally at several classifier-free guidance scales), the style of
held-out pairs, a classifier-guidance sweep, bits/dim.

Which pairs the model saw comes from its folder's ``training_data.json`` (``train_pairs`` and
``held_out_pairs``, each ``[name, style, image_file]``); the real images come from the emoji packages
(``gd-data fetch emoji``). Generated images are read back by
:class:`~guided_diffusion.datasets.emoji_judge.EmojiJudge` (nearest real images); the style of the
images guided by the classifier also by an :class:`~guided_diffusion.evaluation.attribute_judge.AttributeJudge`
trained on real images, whose accuracy on emoji it never saw is reported beside it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datasets.emoji import canonical_caption, make_emoji
from ..datasets.emoji_judge import EmojiJudge
from ..errors import RequestError
from ..pipeline import GuidedDiffusionPipeline
from ..serialization import TRAINING_DATA_NAME
from .attribute_judge import AttributeJudge, train_attribute_judge
from .diversity import normalized_entropy
from .likelihood import bits_per_dim
from .report import counted, percent, save_samples, write_report
from .sampling import EvalSampling, check_counts, generate, guidance_reads_note, per_guidance_scale, purpose_rng

STYLE_JUDGE_SEED = 0  # the style judge is one instrument: runs with other sampling seeds are read by it too
DATA_ENTROPY_DRAWS = 1000  # random draws of real images that the data's entropy at a sweep's sample size averages


def read_training_pairs(folder: Path) -> dict[str, list[list[str]]]:
    """The ``train_pairs`` and ``held_out_pairs`` of the model in ``folder``."""
    path = folder / TRAINING_DATA_NAME
    if not path.is_file():
        raise RequestError(
            f"{folder} has no {TRAINING_DATA_NAME}; an emoji evaluation needs the pairs the model was trained on "
            "(train.diffusion writes it for dataset_name: emoji)"
        )
    pairs = json.loads(path.read_text())
    missing = [key for key in ("train_pairs", "held_out_pairs") if key not in pairs]
    if missing:
        raise RequestError(f"{path} lacks {', '.join(missing)}")
    return pairs


def retrieval_rates(judge: EmojiJudge, images: torch.Tensor, pairs: Sequence[Sequence[str]], per_prompt: int) -> dict[str, Any]:
    """Top-1 / top-5 retrieval and style of ``images`` (``per_prompt`` consecutive images per pair)."""
    names = [p[0] for p in pairs for _ in range(per_prompt)]
    styles = [p[1] for p in pairs for _ in range(per_prompt)]
    verdicts = judge.judge(images, names, styles)
    hits = verdicts.top1
    return {
        "images": len(names),
        "top1": float(hits.double().mean()),
        "top5": float(verdicts.top5.double().mean()),
        "style_right_of_top1": float(verdicts.style_right[hits].double().mean()) if hits.any() else float("nan"),
        "style_right": float(verdicts.style_right.double().mean()),
    }


def style_guidance_sweep(
    pipe: GuidedDiffusionPipeline,
    judge: EmojiJudge,
    style_judge: AttributeJudge,
    *,
    scales: Sequence[float],
    images_per_target: int,
    max_t: int | None,
    sampling: EvalSampling,
) -> list[dict[str, Any]]:
    """With the empty prompt, guide towards each style (the classifier's ``style`` head) at each scale.
    ``style_judge`` reads the style of each image; the nearest real image (``judge``) says its category,
    and its style too, for comparison. Rows (means over the target styles): scale, ``hit_rate`` (style
    judge), ``hit_rate_by_target`` (style -> its hit rate), ``nearest_image_hit_rate``, normalised
    ``category_entropy`` and ``category_entropy_by_target``. Each (scale, target) draws the same seeds,
    so one target's row at one scale and another's at another are what per-target scales give."""
    categories = sorted(set(judge.categories))
    rows = []
    for scale in scales:
        hits, nearest_hits, entropies = [], [], []
        for target in pipe.classifier.labels["style"]:
            images = generate(
                pipe, [""] * images_per_target, sampling, description=f"style={target} scale {scale:g}",
                classifier_scale=scale, classifier_labels={"style": target}, classifier_max_t=max_t,
            )
            _, nearest_styles, nearest_categories = zip(*judge.read(images))
            hits.append(np.mean([s == target for s in style_judge.read(images)]))
            nearest_hits.append(np.mean([s == target for s in nearest_styles]))
            entropies.append(normalized_entropy(nearest_categories, categories))
        rows.append({
            "scale": scale,
            "hit_rate": float(np.mean(hits)),
            "hit_rate_by_target": {target: float(hit) for target, hit in zip(pipe.classifier.labels["style"], hits)},
            "nearest_image_hit_rate": float(np.mean(nearest_hits)),
            "category_entropy": float(np.mean(entropies)),
            "category_entropy_by_target": {target: float(e) for target, e in zip(pipe.classifier.labels["style"], entropies)},
        })
    return rows


def score_pairs(
    pipe: GuidedDiffusionPipeline,
    judge: EmojiJudge,
    pairs: Sequence[Sequence[str]],
    images_per_prompt: int,
    sampling: EvalSampling,
    *,
    description: str,
) -> tuple[dict[str, Any], torch.Tensor, list[str]]:
    """Sample ``images_per_prompt`` images for the canonical prompt of each of ``pairs`` and judge them:
    ``(retrieval rates, images [N, 3, H, W] in [-1, 1], prompts [N])``."""
    prompts = [canonical_caption(name, style) for name, style, _ in pairs for _ in range(images_per_prompt)]
    images = generate(pipe, prompts, sampling, description=description)
    return retrieval_rates(judge, images, pairs, images_per_prompt), images, prompts


def guidance_scale_row(
    pipe: GuidedDiffusionPipeline,
    judge: EmojiJudge,
    groups: dict[str, Sequence[Sequence[str]]],
    images_per_prompt: int,
    sampling: EvalSampling,
) -> dict[str, Any]:
    """Retrieval rates of each group of pairs (``seen``, ``held_out``) sampled with ``sampling`` (its
    ``guidance_scale`` is the row's scale)."""
    row: dict[str, Any] = {"guidance_scale": sampling.guidance_scale}
    for group, group_pairs in groups.items():
        description = f"{group} pairs, guidance {sampling.guidance_scale:g}"
        row[group] = score_pairs(pipe, judge, group_pairs, images_per_prompt, sampling, description=description)[0]
    return row


def data_category_entropy(
    judge: EmojiJudge, attribute_values: Sequence[str], sample_size: int | None = None, *, draws: int = DATA_ENTROPY_DRAWS, seed: int = 0,
) -> dict[str, float]:
    """Style -> the category entropy of that style's real images: of all of them (``sample_size``
    None), or the mean over ``draws`` random draws of ``sample_size`` of them without replacement (all
    of them where a style has fewer), each style's draws seeded by ``seed`` and its name. The entropy of
    a small sample reads low, by about (K - 1) / (2 N log K) for K categories and N images, so a sweep of
    N images per style is held to the data's entropy at N, as shapes32's sweep is."""
    categories = sorted(set(judge.categories))
    entropies = {}
    for style in attribute_values:
        found = [c for c, s in zip(judge.categories, judge.styles) if s == style]
        if sample_size is None or sample_size >= len(found):  # every draw would be all of them
            entropies[style] = normalized_entropy(found, categories)
            continue
        rng = purpose_rng(seed, f"data category entropy/{style}")
        entropies[style] = float(np.mean([
            normalized_entropy([found[i] for i in rng.choice(len(found), sample_size, replace=False)], categories)
            for _ in range(draws)
        ]))
    return entropies


def evaluate_emoji(
    pipe: GuidedDiffusionPipeline,
    out: Path,
    *,
    model_name: str,
    sampling: EvalSampling,
    num_seen: int,
    num_held_out: int | None,
    images_per_prompt: int,
    classifier_scales: Sequence[float] = (0, 5, 20, 200, 800, 1200),  # emoji32: twitter wants 200, google 800-1200 with ddim
    images_per_target: int,
    classifier_max_t: int | None,
    bpd_images: int,
    guidance_scales: Sequence[float] = (),
    emoji_root: str | None = None,
) -> dict[str, Any]:
    """Run the emoji evaluation of ``pipe`` and write ``report.md``, ``report.json`` and
    ``samples.png`` into ``out``; returns the report. Each of ``guidance_scales`` scores the same
    seen and held-out pairs, with the same seeds, at that classifier-free guidance scale. A count of 0
    (``num_seen``, ``num_held_out``, ``bpd_images``) or no ``classifier_scales`` leaves that part out."""
    check_counts(0, num_seen=num_seen, num_held_out=num_held_out or 0, bpd_images=bpd_images)
    check_counts(1, images_per_prompt=images_per_prompt, images_per_target=images_per_target)
    started = time.perf_counter()
    if pipe.folder is None:
        raise RequestError("evaluate a saved pipeline: its folder holds training_data.json")
    pairs = read_training_pairs(pipe.folder)
    resolution = pipe.unet.config.image_size
    every = make_emoji("all", root=emoji_root, resolution=resolution)
    judge = EmojiJudge(every)
    rng = np.random.default_rng(sampling.seed)
    seen = [pairs["train_pairs"][i] for i in sorted(rng.permutation(len(pairs["train_pairs"]))[:num_seen])]
    held = pairs["held_out_pairs"][:num_held_out] if num_held_out is not None else pairs["held_out_pairs"]
    groups = {name: group for name, group in (("seen", seen), ("held_out", held)) if group}  # a count of 0 leaves it out
    report: dict[str, Any] = {"model": model_name, "sampling": sampling.to_dict(), "images_per_prompt": images_per_prompt}
    grids, own_row = [], {}
    for group, group_pairs in groups.items():
        rates, images, prompts = score_pairs(pipe, judge, group_pairs, images_per_prompt, sampling, description=f"{group} pairs")
        report[group] = {"prompts": len(group_pairs), **rates}
        own_row[group] = rates
        grids.append((images[: 8 * images_per_prompt : images_per_prompt], prompts[: 8 * images_per_prompt : images_per_prompt]))
    if guidance_scales and groups:
        report["guidance_scales"] = per_guidance_scale(
            guidance_scales, sampling, own_row, lambda at: guidance_scale_row(pipe, judge, groups, images_per_prompt, at)
        )
    if pipe.classifier is not None and "style" in pipe.classifier.labels and classifier_scales:
        styles = pipe.classifier.labels["style"]
        style_judge = train_attribute_judge(
            judge.images, torch.tensor(every["style"]), judge.names, every.features["style"].names,
            seed=STYLE_JUDGE_SEED, device=pipe.device,
        )
        report["style_guidance"] = {
            "max_t": classifier_max_t,
            "images_per_target": images_per_target,
            "data_category_entropy": data_category_entropy(judge, styles),
            "data_category_entropy_sampled": data_category_entropy(judge, styles, images_per_target),
            "judge": {**style_judge.summary(), "nearest_image_accuracy": judge.style_accuracy_of_unseen_emoji()},
            "rows": style_guidance_sweep(
                pipe, judge, style_judge, scales=classifier_scales, images_per_target=images_per_target,
                max_t=classifier_max_t, sampling=sampling,
            ),
        }
    if bpd_images and pairs["held_out_pairs"]:
        chosen = pairs["held_out_pairs"][:bpd_images]
        rows = [judge.index[(name, style)] for name, style, _ in chosen]
        captions = [canonical_caption(name, style) for name, style, _ in chosen]
        report["bits_per_dim"] = bits_per_dim(pipe, judge.images[rows], captions, batch_size=sampling.batch_size, seed=sampling.seed)
    out.mkdir(parents=True, exist_ok=True)
    if grids:
        save_samples(torch.cat([g[0] for g in grids]), [c for g in grids for c in g[1]], out / "samples.png")
    report["seconds"] = time.perf_counter() - started
    write_report(out, report, render_emoji_report)
    return report


def render_emoji_report(report: dict[str, Any]) -> str:
    """The markdown of an :func:`evaluate_emoji` report."""
    s = report["sampling"]
    groups = [(group, label) for group, label in (("seen", "seen (trained on)"), ("held_out", "held out")) if group in report]
    lines = [
        f"# Emoji evaluation of `{report['model']}`",
        "",
        f"Sampler {s['sampler']}, {s['steps']} steps ({s.get('timestep_schedule', 'uniform')} schedule), classifier-free guidance {s['guidance_scale']}, seed {s['seed']}"
        + guidance_reads_note(s.get("guidance_reads", "x_t"))
        + (
            f"; {counted(report['images_per_prompt'], 'image')} per canonical prompt (\"<name>, <style> style\"). Judge: the nearest real "
            "emoji image (both styles, held-out pairs included) in 16x16 area-averaged pixels." if groups else "."
        ),
    ]
    if groups:
        lines += [
            "",
            "| pairs | prompts | images | top-1 own emoji | top-5 own emoji | asked style, of top-1 hits |",
            "|---|---:|---:|---:|---:|---:|",
        ]
    for group, label in groups:
        r = report[group]
        lines.append(
            f"| {label} | {r['prompts']} | {r['images']} | {percent(r['top1'])} | {percent(r['top5'])} | {percent(r['style_right_of_top1'])} |"
        )
    if report.get("guidance_scales"):
        lines += [
            "",
            "## Classifier-free guidance scales (the same pairs and seeds)",
            "",
            "| guidance scale | " + " | ".join(f"{label}: top-1 / top-5" for group, label in groups) + " |",
            "|---:|" + "---:|" * len(groups),
        ]
        for row in report["guidance_scales"]:
            cells = [f"{percent(row[group]['top1'])} / {percent(row[group]['top5'])}" for group, _ in groups]
            lines.append(f"| {row['guidance_scale']:g} | " + " | ".join(cells) + " |")
    if "style_guidance" in report:
        g, j = report["style_guidance"], report["style_guidance"]["judge"]
        limit = "every step" if g["max_t"] is None else f"t <= {g['max_t']} only"
        reference = g["data_category_entropy_sampled"]  # style -> the data's entropy at the sweep's count
        mean_reference, mean_whole = np.mean(list(reference.values())), np.mean(list(g["data_category_entropy"].values()))
        lines += [
            "",
            f"## Classifier guidance on style (empty prompt, {counted(g['images_per_target'], 'image')} per style, guided at {limit})",
            "",
            "| scale | " + " | ".join(f"{row['scale']:g}" for row in g["rows"]) + " | training data |",
            "|---|" + "---:|" * (len(g["rows"]) + 1),
            "| style hit rate | " + " | ".join(percent(row["hit_rate"]) for row in g["rows"]) + " | 100% |",
            *(
                f"| ... towards {target} | " + " | ".join(percent(row["hit_rate_by_target"][target]) for row in g["rows"]) + " | 100% |"
                for target in reference
            ),
            "| style hit rate, nearest real image | " + " | ".join(percent(row["nearest_image_hit_rate"]) for row in g["rows"])
            + " | 100% |",
            "| category entropy | " + " | ".join(f"{row['category_entropy']:.2f}" for row in g["rows"])
            + f" | {mean_reference:.2f} |",
            *(
                f"| ... towards {target} | " + " | ".join(f"{row['category_entropy_by_target'][target]:.2f}" for row in g["rows"])
                + f" | {reference[target]:.2f} |"
                for target in reference
            ),
            "",
            f"The training data's category entropy is that of {counted(g['images_per_target'], 'real image')} per style drawn at "
            f"random (the mean of {DATA_ENTROPY_DRAWS} draws; of all of them: {mean_whole:.2f}): a sample "
            "this small reads lower than the whole, so the guided images are held to the same count.",
            "",
            f"The style hit rate is read by a small CNN trained on the real images of all but {j['held_out_groups']} emoji "
            f"({j['epochs']} epochs, seed {j['seed']} whatever the sampling seed); on those {j['held_out_images']} unseen images it reads the style right "
            f"{percent(j['held_out_accuracy'])} of the time ("
            + ", ".join(f"{percent(rate)} of the {style} ones" for style, rate in j["held_out_accuracy_by_class"].items())
            + "). The nearest real image, with the image's own emoji left "
            f"out, reads the style of real images right {percent(j['nearest_image_accuracy'])} of the time. The "
            "category is the nearest real image's.",
        ]
    if "bits_per_dim" in report:
        b = report["bits_per_dim"]
        lines += ["", f"Bits/dim on {b['n']} held-out pairs: {b['mean']:.3f} (std {b['std']:.3f})."]
    lines += ["", "![samples](samples.png)"] if groups else []
    lines += ["", f"Took {report['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"

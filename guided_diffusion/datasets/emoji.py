"""Emoji: real emoji art with their Unicode names, from the npm ``emoji-datasource-*`` packages.

Two styles: ``google`` (Noto Emoji art, Apache-2.0) and ``twitter`` (Twemoji art, CC-BY-4.0), both
version 16.0.0. Each package holds ``emoji.json`` (Unicode name, short names, category,
subcategory, skin-tone variants) and 64x64 RGBA PNGs under ``img/<style>/64/``. ``gd-data fetch
emoji`` runs ``npm pack`` into the data cache; ``$GD_EMOJI_DIR`` (or ``root=``) may instead name a
folder holding ``emoji-datasource-<style>/`` folders as ``npm install`` leaves them in
``node_modules``.

Rows (one per emoji and style)::

    image       the PNG composited on ``background`` (white) and resized (Lanczos) to ``resolution``
    text        the canonical caption "<name>, <style> style", e.g. "tiger face, twitter style"
    captions    [text, then "<short name>, <style> style" for each short name]
    name        the Unicode name in lower case; a skin-tone variant says its tone(s):
                "father christmas: medium-dark skin tone"
    style       ClassLabel over the styles
    category    ClassLabel over the categories ("Smileys & Emotion", ...)
    subcategory, image_file (the PNG's file name in the package)

Held-out pairs: a seeded ``held_out_fraction`` of all (emoji, style) pairs, at most one style per
emoji, so that every held-out emoji is still seen in the other style. Split ``train`` has the rest,
``held_out`` the held-out pairs, ``all`` both. Flags and skin-tone variants are left out unless asked
for; the five skin-tone swatches ("Component") always are. Where two entries share a name, the first
in the package's sort order is kept.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image

from ..images import Colour, colour_rgb, flatten_alpha
from .fetch import FetchError, data_cache_dir, install_atomically, run_tool

EMOJI_STYLES = ("google", "twitter")
EMOJI_VERSION = "16.0.0"
EMOJI_DIR_ENV = "GD_EMOJI_DIR"
EMOJI_LICENSES = {
    "google": "Noto Emoji art by Google, Apache License 2.0 (npm emoji-datasource-google 16.0.0)",
    "twitter": "Twemoji art by Twitter, Inc and other contributors, CC-BY 4.0 (npm emoji-datasource-twitter 16.0.0)",
}
SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}
EMOJI_SPLITS = ("train", "held_out", "all")
_FEATURES_BASE = {
    "image": datasets.Image(),
    "text": datasets.Value("string"),
    "captions": datasets.Sequence(datasets.Value("string")),
    "name": datasets.Value("string"),
    "subcategory": datasets.Value("string"),
    "image_file": datasets.Value("string"),
}


def package_name(style: str) -> str:
    """The npm package of ``style``: ``emoji-datasource-<style>``."""
    return f"emoji-datasource-{style}"


def canonical_caption(name: str, style: str) -> str:
    """The caption a model trained on this data answers best: ``"<name>, <style> style"``."""
    return f"{name}, {style} style"


def _check_styles(styles: Sequence[str]) -> list[str]:
    styles = list(styles)
    unknown = [s for s in styles if s not in EMOJI_STYLES]
    if unknown or not styles:
        raise ValueError(f"emoji styles must be some of {', '.join(EMOJI_STYLES)}, got {styles}")
    return styles


def emoji_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding ``emoji-datasource-<style>/``: ``root``, else ``$GD_EMOJI_DIR``, else the
    data cache's ``emoji/`` (where ``gd-data fetch emoji`` puts it)."""
    if root is not None:
        return Path(root)
    configured = os.environ.get(EMOJI_DIR_ENV)
    return Path(configured) if configured else data_cache_dir() / "emoji"


def _package_dir(root: Path, style: str) -> Path:
    folder = root / package_name(style)
    if not (folder / "emoji.json").is_file():
        raise FetchError(
            f"no emoji data for style {style!r} in {folder} (emoji.json missing); run `gd-data fetch emoji`, "
            f"or set {EMOJI_DIR_ENV} to a folder holding {package_name(style)}/ (e.g. a node_modules folder)"
        )
    return folder


def fetch_emoji(styles: Sequence[str] = EMOJI_STYLES, *, root: str | os.PathLike | None = None) -> Path:
    """Download the styles' npm packages with ``npm pack`` and unpack them under ``root`` (default:
    the data cache's ``emoji/``); returns that folder. Styles already there are kept."""
    target_root = Path(root) if root is not None else data_cache_dir() / "emoji"
    for style in _check_styles(styles):
        target = target_root / package_name(style)
        if (target / "emoji.json").is_file():
            continue

        def build(tmp: Path, style: str = style) -> None:
            spec = f"{package_name(style)}@{EMOJI_VERSION}"
            run_tool(
                ["npm", "pack", "--silent", spec],
                cwd=tmp,
                install_hint=f"install Node.js and npm (apt-get install npm), or unpack {spec} yourself and set {EMOJI_DIR_ENV}",
            )
            archive = tmp / f"{package_name(style)}-{EMOJI_VERSION}.tgz"
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp / "unpacked", filter="data")
            except (OSError, EOFError, tarfile.TarError) as err:
                raise FetchError(f"the downloaded {archive.name} is not a readable archive ({err}); run the fetch again") from None
            unpacked = tmp / "unpacked" / "package"
            if not (unpacked / "emoji.json").is_file():
                raise FetchError(f"{archive.name} holds no package/emoji.json; run the fetch again")
            for item in unpacked.iterdir():
                item.rename(tmp / item.name)
            archive.unlink()
            shutil.rmtree(tmp / "unpacked")

        install_atomically(target, build)
    return target_root


@dataclass(frozen=True)
class EmojiRecord:
    """One (emoji, style) pair of the package metadata."""

    name: str
    style: str
    category: str
    subcategory: str
    short_names: tuple[str, ...]
    image_file: str

    @property
    def caption(self) -> str:
        return canonical_caption(self.name, self.style)


def _tone_name(key: str) -> str:
    return ", ".join(SKIN_TONES[code] for code in key.upper().split("-"))


def read_records(
    root: Path, style: str, *, include_skin_tones: bool = False, include_flags: bool = False
) -> list[EmojiRecord]:
    """The (emoji, style) pairs of one style's package that have an image, in the package's sort order."""
    package = _package_dir(root, style)
    try:
        entries = json.loads((package / "emoji.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise FetchError(f"{package / 'emoji.json'} is not readable JSON ({err}); run `gd-data fetch emoji` again") from None
    records, seen = [], set()
    for entry in sorted(entries, key=lambda e: e.get("sort_order", 0)):
        category = entry.get("category") or ""
        if category == "Component" or (category == "Flags" and not include_flags) or not entry.get("name"):
            continue
        base = entry["name"].lower()
        variants = [(base, entry)]
        if include_skin_tones:
            tones = entry.get("skin_variations") or {}
            variants += [(f"{base}: {_tone_name(key)}", tones[key]) for key in sorted(tones)]
        for name, variant in variants:
            if name in seen or not variant.get(f"has_img_{style}"):
                continue
            seen.add(name)
            short_names = tuple(s.replace("_", " ") for s in entry.get("short_names") or [])
            records.append(
                EmojiRecord(name, style, category, entry.get("subcategory") or "", short_names, variant["image"])
            )
    return records


def held_out_names(names_in_every_style: Sequence[str], styles: Sequence[str], fraction: float, seed: int) -> dict[str, str]:
    """``{name: style}``: the held-out pairs, ``fraction`` of all pairs, one style at most per name.

    Drawn by ``seed`` from the sorted names, so the choice depends only on the set of names. With one
    style nothing is held out (a held-out emoji must be seen in another style).
    """
    if len(styles) < 2 or fraction <= 0:
        return {}
    names = sorted(names_in_every_style)
    count = min(len(names), round(fraction * len(names) * len(styles)))
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(names))[:count]
    return {names[i]: styles[int(rng.integers(len(styles)))] for i in sorted(chosen)}


def emoji_image(root: Path, record: EmojiRecord, resolution: int, background: Colour = "white") -> Image.Image:
    """The record's PNG on ``background``, resized (Lanczos) to ``resolution`` pixels square."""
    path = _package_dir(root, record.style) / "img" / record.style / "64" / record.image_file
    try:
        with Image.open(path) as image:
            rgb = flatten_alpha(image, background)
    except OSError as err:
        raise FetchError(f"cannot read {path} ({err}); run `gd-data fetch emoji` again") from None
    return rgb if rgb.size == (resolution, resolution) else rgb.resize((resolution, resolution), Image.Resampling.LANCZOS)


def select_records(
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    styles: Sequence[str] = EMOJI_STYLES,
    include_skin_tones: bool = False,
    include_flags: bool = False,
    held_out_fraction: float = 0.08,
    seed: int = 0,
) -> tuple[list[EmojiRecord], list[str], list[str]]:
    """``(records of split, styles, categories)``: the (emoji, style) pairs of ``split`` without their
    images, and the class names of the ``style`` and ``category`` columns."""
    if split not in EMOJI_SPLITS:
        raise ValueError(f"emoji has splits {', '.join(EMOJI_SPLITS)}, not {split!r}")
    if not 0.0 <= held_out_fraction < 0.5:
        raise ValueError(f"held_out_fraction must be in [0, 0.5), got {held_out_fraction}")
    styles = _check_styles(styles)
    folder = emoji_root(root)
    by_style = {
        style: read_records(folder, style, include_skin_tones=include_skin_tones, include_flags=include_flags)
        for style in styles
    }
    in_every_style = set.intersection(*({r.name for r in records} for records in by_style.values()))
    held_out = held_out_names(sorted(in_every_style), styles, held_out_fraction, seed)
    records = [r for style in styles for r in by_style[style]]
    categories = sorted({r.category for r in records})
    keep = {
        "train": lambda r: held_out.get(r.name) != r.style,
        "held_out": lambda r: held_out.get(r.name) == r.style,
        "all": lambda r: True,
    }[split]
    return [r for r in records if keep(r)], styles, categories


def make_emoji(
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    resolution: int = 64,
    background: str = "white",
    **selection: Any,
) -> datasets.Dataset:
    """The emoji dataset's ``split`` (``train``, ``held_out`` or ``all``) as a ``datasets.Dataset``;
    see the module docstring for its columns. ``selection``: the options of :func:`select_records`
    (``styles``, ``include_skin_tones``, ``include_flags``, ``held_out_fraction``, ``seed``)."""
    rows, styles, categories = select_records(split, root=root, **selection)
    fill = colour_rgb(background)
    folder = emoji_root(root)
    features = datasets.Features(
        {**_FEATURES_BASE, "style": datasets.ClassLabel(names=styles), "category": datasets.ClassLabel(names=categories)}
    )
    columns = {
        "image": [emoji_image(folder, r, resolution, fill) for r in rows],
        "text": [r.caption for r in rows],
        "captions": [[r.caption] + [canonical_caption(s, r.style) for s in r.short_names if s != r.name] for r in rows],
        "name": [r.name for r in rows],
        "subcategory": [r.subcategory for r in rows],
        "image_file": [r.image_file for r in rows],
        "style": [r.style for r in rows],
        "category": [r.category for r in rows],
    }
    info = datasets.DatasetInfo(
        features=features,
        description="Emoji art with their Unicode names (" + "; ".join(EMOJI_LICENSES[s] for s in styles) + ")",
        license="; ".join(EMOJI_LICENSES[s] for s in styles),
    )
    return datasets.Dataset.from_dict(columns, features=features, info=info, split=split)


def training_pairs(*, root: str | os.PathLike | None = None, **selection: Any) -> dict[str, Any]:
    """What a model trained on split ``train`` saw and did not see, for its ``training_data.json``:
    ``{"dataset": "emoji", "train_pairs": [[name, style, image_file], ...], "held_out_pairs": [...],
    "licenses": [...]}``; ``selection`` as for :func:`make_emoji`."""
    selection.pop("split", None)
    pairs = {}
    for key, split in (("train_pairs", "train"), ("held_out_pairs", "held_out")):
        records, styles, _ = select_records(split, root=root, **selection)
        pairs[key] = [[r.name, r.style, r.image_file] for r in records]
    return {"dataset": "emoji", **pairs, "licenses": [EMOJI_LICENSES[s] for s in styles]}

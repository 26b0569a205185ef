"""A tiny fake of the npm emoji-datasource-* packages: emoji.json and 64x64 RGBA PNGs (a coloured disc
on a transparent background), laid out as ``npm install`` leaves them (``<root>/emoji-datasource-<style>/``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# name, category, subcategory, short names, image stem, RGB, skin variations (tone keys)
EMOJI = [
    ("GRINNING FACE", "Smileys & Emotion", "face-smiling", ["grinning"], "1f600", (250, 200, 20), []),
    ("TIGER FACE", "Animals & Nature", "animal-mammal", ["tiger"], "1f42f", (240, 140, 30), []),
    ("RED APPLE", "Food & Drink", "fruit", ["apple"], "1f34e", (220, 30, 30), []),
    ("ROCKET", "Travel & Places", "transport-air", ["rocket"], "1f680", (120, 120, 140), []),
    ("WAVING HAND SIGN", "People & Body", "hand-fingers-open", ["wave"], "1f44b", (250, 210, 90), ["1F3FB", "1F3FF"]),
    ("BLUE HEART", "Smileys & Emotion", "heart", ["blue_heart"], "1f499", (30, 90, 230), []),
    ("GREEN BOOK", "Objects", "book-paper", ["green_book"], "1f4d7", (40, 170, 60), []),
    ("SOCCER BALL", "Activities", "sport", ["soccer"], "26bd", (30, 30, 30), []),
    ("BLACK LARGE SQUARE", "Symbols", "geometric", ["black_large_square"], "2b1b", (10, 10, 10), []),
    ("FLAG FOR FRANCE", "Flags", "country-flag", ["fr"], "1f1eb-1f1f7", (0, 80, 200), []),
    ("EMOJI MODIFIER FITZPATRICK TYPE-4", "Component", "skin-tone", ["skin-tone-4"], "1f3fd", (160, 110, 70), []),
    ("TIGER FACE", "Animals & Nature", "animal-mammal", ["tiger2"], "1f405", (200, 100, 0), []),  # a repeated name
]
TONE_SHADE = {"1F3FB": 1.0, "1F3FF": 0.4}


def disc(rgb: tuple[int, int, int], style: str) -> Image.Image:
    """A 64x64 RGBA picture: a disc of ``rgb`` on transparent pixels whose hidden colour is black; the
    twitter style's disc is smaller."""
    yy, xx = np.mgrid[:64, :64]
    radius = 26 if style == "google" else 18
    inside = (yy - 32) ** 2 + (xx - 32) ** 2 <= radius**2
    pixels = np.zeros((64, 64, 4), dtype=np.uint8)
    pixels[inside, :3] = rgb
    pixels[inside, 3] = 255
    return Image.fromarray(pixels, "RGBA")


def write_fake_emoji(root: Path, styles: tuple[str, ...] = ("google", "twitter"), missing: dict[str, set[str]] | None = None) -> Path:
    """Write the fake packages under ``root``; ``missing[style]`` names emoji without an image in that style."""
    missing = missing or {}
    entries = []
    for order, (name, category, sub, shorts, stem, rgb, tones) in enumerate(EMOJI):
        entry = {
            "name": name, "category": category, "subcategory": sub, "short_names": shorts,
            "image": f"{stem}.png", "sort_order": order, "unified": stem.upper(),
        }
        for style in ("google", "twitter"):
            entry[f"has_img_{style}"] = name not in missing.get(style, set())
        if tones:
            entry["skin_variations"] = {
                tone: {"image": f"{stem}-{tone.lower()}.png", "has_img_google": True, "has_img_twitter": True}
                for tone in tones
            }
        entries.append(entry)
    for style in styles:
        package = root / f"emoji-datasource-{style}"
        images = package / "img" / style / "64"
        images.mkdir(parents=True)
        (package / "emoji.json").write_text(json.dumps(entries))
        for name, _, _, _, stem, rgb, tones in EMOJI:
            disc(rgb, style).save(images / f"{stem}.png")
            for tone in tones:
                shade = TONE_SHADE[tone]
                disc(tuple(int(c * shade) for c in rgb), style).save(images / f"{stem}-{tone.lower()}.png")
    return root

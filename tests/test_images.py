"""Transparent images on a background (in the data pipeline too) and the captioned grids of validation."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from guided_diffusion.data import DataConfig, DataError, ImageTransform, load_source
from guided_diffusion.images import captioned_grid, flatten_alpha


def half_transparent() -> Image.Image:
    """4x4 RGBA: left half opaque red, right half fully transparent with hidden black, one pixel half-transparent blue."""
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[:, :2] = (255, 0, 0, 255)
    pixels[0, 3] = (0, 0, 255, 128)
    return Image.fromarray(pixels, "RGBA")


def test_flatten_alpha_composites_on_the_background() -> None:
    flat = np.asarray(flatten_alpha(half_transparent()))
    assert tuple(flat[1, 0]) == (255, 0, 0) and tuple(flat[1, 3]) == (255, 255, 255)
    assert tuple(flat[0, 3]) == (127, 127, 255)  # 50% blue over white
    assert tuple(np.asarray(flatten_alpha(half_transparent(), "#000000"))[1, 3]) == (0, 0, 0)
    palette = half_transparent().convert("RGB").convert("P")
    palette.info["transparency"] = palette.getpixel((3, 1))  # (x, y): row 1, column 3
    assert tuple(np.asarray(flatten_alpha(palette))[1, 3]) == (255, 255, 255)
    grey = Image.new("L", (2, 2), 77)
    assert tuple(np.asarray(flatten_alpha(grey))[0, 0]) == (77, 77, 77)
    with pytest.raises(ValueError, match="background 'blurple' is not a colour"):
        flatten_alpha(grey, "blurple")


def test_the_training_transform_puts_transparent_pixels_on_white() -> None:
    x = ImageTransform(4)(half_transparent(), random.Random(0))
    assert x[:, 1, 3].tolist() == [1.0, 1.0, 1.0] and x[:, 1, 0].tolist() == [1.0, -1.0, -1.0]
    x = ImageTransform(4, background="black")(half_transparent(), random.Random(0))
    assert x[:, 1, 3].tolist() == [-1.0, -1.0, -1.0]
    with pytest.raises(ValueError, match="is not a colour"):
        ImageTransform(4, background="nope")


def test_an_rgba_imagefolder_trains_on_white(tmp_path) -> None:
    from guided_diffusion.data import TrainData

    folder = tmp_path / "rgba"
    folder.mkdir()
    for i in range(4):
        half_transparent().save(folder / f"{i}.png")
    (folder / "metadata.jsonl").write_text("".join(f'{{"file_name": "{i}.png", "text": "red"}}\n' for i in range(4)))
    config = DataConfig(train_data_dir=str(folder), caption_dropout=0.0)
    batch = next(TrainData(load_source(config), config, resolution=4, batch_size=4, seed=0).batches())
    assert (batch["images"][:, :, 1, 3] == 1.0).all()


def test_captioned_grid_enlarges_and_writes_the_prompts() -> None:
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue")]
    sheet = captioned_grid(images, ["a red one", "a green one", "a blue one with a very long caption to wrap"], columns=2, cell=96)
    assert sheet.width == 2 * (96 + 4)
    pixels = np.asarray(sheet)
    assert tuple(pixels[2 + 48, 2 + 48]) == (255, 0, 0) and tuple(pixels[2 + 48, 100 + 2 + 48]) == (0, 128, 0)
    caption_band = pixels[2 + 96 + 2 : 2 + 96 + 14, 2 : 2 + 96]
    assert (caption_band < 128).any()  # text is drawn under the image
    with pytest.raises(ValueError, match="3 images but 2 captions"):
        captioned_grid(images, ["a", "b"])


def test_a_bad_background_in_the_data_config_is_refused_before_training(tmp_path) -> None:
    from guided_diffusion.data import TrainData

    folder = tmp_path / "one"
    folder.mkdir()
    half_transparent().save(folder / "0.png")
    (folder / "metadata.jsonl").write_text('{"file_name": "0.png", "text": "x"}\n')
    config = DataConfig(train_data_dir=str(folder), background="nope")
    with pytest.raises((DataError, ValueError), match="background 'nope' is not a colour"):
        TrainData(load_source(config), config, resolution=4, batch_size=1, seed=0)

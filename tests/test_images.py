"""The image conversions ([-1, 1] tensors <-> uint8 arrays and PIL images), the one grid layout,
transparent images on a background (in the data pipeline too) and the captioned grids of validation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion.data import DataConfig, DataError, ImageTransform, load_source
from guided_diffusion.images import (
    captioned_grid,
    enlarge,
    flatten_alpha,
    from_pil,
    from_uint8,
    image_grid,
    to_numpy,
    to_pil,
    to_uint8,
    to_unit,
)


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


def every_level() -> np.ndarray:
    """uint8 [4, 8, 8, 3] holding each of the 256 levels in each channel."""
    levels = np.arange(256, dtype=np.uint8)
    return np.stack([np.roll(levels, 85 * c) for c in range(3)], axis=-1).reshape(4, 8, 8, 3)


def test_uint8_to_minus_one_one_and_back_is_exact() -> None:
    pixels = every_level()
    x = from_uint8(pixels)
    assert x.dtype == torch.float32 and x.shape == (4, 3, 8, 8) and x.is_contiguous()
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert torch.equal(x[:, 0], torch.from_numpy(pixels[..., 0]).float() / 127.5 - 1)
    back = to_uint8(x)
    assert back.dtype == np.uint8 and back.shape == (4, 8, 8, 3) and back.flags.c_contiguous
    np.testing.assert_array_equal(back, pixels)
    channels_first = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    assert torch.equal(from_uint8(channels_first), x)  # a tensor [N, 3, H, W] as well
    assert torch.equal(from_uint8(pixels[0]), x[0])  # one image [H, W, 3] -> [3, H, W]
    assert torch.equal(from_uint8(channels_first[0]), x[0])
    square = np.zeros((1, 3, 3, 3), np.uint8)
    square[..., 0] = 255  # ambiguous: an array is channels last, a tensor channels first
    assert from_uint8(square)[0, 0].eq(1).all() and from_uint8(torch.from_numpy(square))[0, :, :, 0].eq(1).all()


def test_pil_to_tensor_and_back_is_exact() -> None:
    images = [Image.fromarray(a) for a in every_level()]
    x = from_pil(images)
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32
    assert [a.tobytes() for a in to_pil(x)] == [a.tobytes() for a in images]
    assert all(a.mode == "RGB" and a.size == (8, 8) for a in to_pil(x))
    assert from_pil(images[0]).shape == (1, 3, 8, 8)  # one image
    grey = Image.new("L", (2, 2), 51)
    assert from_pil(grey).eq(51 / 127.5 - 1).all()
    assert from_pil(half_transparent())[0, :, 1, 3].tolist() == [1.0, 1.0, 1.0]  # on white, not hidden black
    assert from_pil(half_transparent(), background="black")[0, :, 1, 3].tolist() == [-1.0, -1.0, -1.0]


def test_from_pil_with_a_size_crops_the_centre_and_undoes_an_enlargement() -> None:
    small = Image.fromarray(every_level()[0])
    assert torch.equal(from_pil(enlarge(small, 4), 8), from_pil(small))
    wide = Image.new("RGB", (40, 24), "red")
    wide.paste((0, 0, 255), (0, 0, 8, 24))  # a blue band the centre crop cuts away
    x = from_pil([wide, small], size=16)
    assert x.shape == (2, 3, 16, 16) and x[0, 0].eq(1).all() and x[0, 2].eq(-1).all()
    with pytest.raises(ValueError, match="different sizes.*pass size="):
        from_pil([wide, small])
    with pytest.raises(ValueError, match="no images"):
        from_pil([])


def test_to_unit_and_to_uint8_clamp_and_round_as_the_pipeline_does() -> None:
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 1 / 255, 1.0, 3.0, float("inf"), float("-inf")]).repeat(3, 1)[None, :, None, :]
    unit = to_unit(x.requires_grad_())
    assert unit.dtype == torch.float32 and not unit.requires_grad and unit.device.type == "cpu"
    assert unit[0, 0, 0].tolist() == [0.0, 0.0, 0.25, 0.5, pytest.approx(0.5 + 0.5 / 255), 1.0, 1.0, 1.0, 0.0]
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 64, 128, 128, 255, 255, 255, 0]  # 127.5 -> 128, 128.0 -> 128
    assert torch.equal(torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2), (unit * 255).round().byte())
    array = to_numpy(x)
    assert array.dtype == np.float32 and array.shape == (1, 1, 9, 3) and array.flags.c_contiguous
    np.testing.assert_array_equal(array, unit.permute(0, 2, 3, 1).numpy())  # not rounded to levels
    y = torch.rand(2, 3, 5, 5, dtype=torch.float64) * 2.4 - 1.2
    np.testing.assert_array_equal(to_uint8(y), to_uint8(y.float()))  # any float dtype, computed in float32
    assert to_uint8(y.half()).dtype == np.uint8 and to_numpy(y.to(torch.bfloat16)).dtype == np.float32


@pytest.mark.parametrize("bad", [torch.zeros(3, 4, 4), torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 3), torch.zeros(1, 3, 4, 4, dtype=torch.uint8), np.zeros((1, 3, 4, 4), np.float32)])
def test_to_uint8_and_to_pil_refuse_what_is_not_a_float_batch_of_rgb(bad) -> None:
    with pytest.raises(ValueError, match=r"expected a float tensor \[N, 3, H, W\] in \[-1, 1\]"):
        to_uint8(bad)
    for convert in (to_pil, to_numpy):
        with pytest.raises(ValueError, match="expected a float tensor"):
            convert(bad)


def test_from_uint8_refuses_other_dtypes_ranks_and_channel_counts() -> None:
    with pytest.raises(ValueError, match="expected uint8 images.*float32 of shape \\[1, 4, 4, 3\\]"):
        from_uint8(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="expected uint8 images"):
        from_uint8(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"3 \(RGB\) channels first or last, got shape \[1, 4, 4, 4\]"):
        from_uint8(np.zeros((1, 4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        from_uint8(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))


def test_image_grid_lays_images_out_with_shared_padding() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9), (200, 100, 0)]
    images = [Image.new("RGB", (8, 6), c) for c in colours]
    grid = image_grid(images, 3, padding=2, background="black")
    assert grid.mode == "RGB" and grid.size == (3 * (8 + 2) + 2, 2 * (6 + 2) + 2)
    pixels = np.asarray(grid)
    for i, colour in enumerate(colours):
        row, column = divmod(i, 3)
        top, left = 2 + row * 8, 2 + column * 10
        assert (pixels[top : top + 6, left : left + 8] == colour).all()
    assert (pixels[:2] == 0).all() and (pixels[:, 10:12] == 0).all()  # the frame and the gap between columns
    assert (pixels[10:16, 22:30] == 0).all()  # the sixth cell is empty: background
    assert image_grid(images).size == (3 * 9 + 1, 2 * 7 + 1)  # default: ceil(sqrt(5)) = 3 columns, 1 pixel, white
    assert tuple(np.asarray(image_grid(images))[0, 0]) == (255, 255, 255)
    assert image_grid(images, 10).size == (5 * 9 + 1, 7 + 1)  # never more columns than images
    assert image_grid(images, 1, padding=0).size == (8, 5 * 6)
    assert image_grid(images[:1], 4).tobytes() == images[0].tobytes()  # one image: itself, unframed


def test_image_grid_takes_a_tensor_in_minus_one_one() -> None:
    x = from_uint8(every_level())
    from_tensor = image_grid(x, 2)
    assert from_tensor.size == (2 * 9 + 1, 2 * 9 + 1)
    assert from_tensor.tobytes() == image_grid(to_pil(x), 2).tobytes()
    assert enlarge(from_tensor, 3).size == (3 * 19, 3 * 19) and enlarge(from_tensor, 1) is from_tensor


def test_image_grid_refuses_bad_input() -> None:
    images = [Image.new("RGB", (4, 4)), Image.new("RGB", (4, 5))]
    with pytest.raises(ValueError, match="images of one size"):
        image_grid(images)
    with pytest.raises(ValueError, match="no images"):
        image_grid([])
    with pytest.raises(ValueError, match="columns >= 1 and padding >= 0"):
        image_grid(images[:1] * 2, 0)
    with pytest.raises(ValueError, match="columns >= 1 and padding >= 0"):
        image_grid(images[:1] * 2, padding=-1)
    with pytest.raises(ValueError, match=r"expected a float tensor \[N, 3, H, W\]"):
        image_grid(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="not a colour"):
        image_grid(images[:1] * 2, background="blurple")
    with pytest.raises(ValueError, match="at least 1"):
        enlarge(images[0], 0)

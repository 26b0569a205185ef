"""The emoji dataset on a tiny fake package: columns, captions, compositing, held-out pairs, options,
every bad-input message, and the npm fetch (with fake npm commands)."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest

from guided_diffusion.data import DataConfig, DataError, load_source
from guided_diffusion.datasets.emoji import (
    EMOJI_LICENSES,
    canonical_caption,
    fetch_emoji,
    held_out_names,
    make_emoji,
    training_pairs,
)
from guided_diffusion.datasets.fetch import FetchError

from .fake_emoji import EMOJI, write_fake_emoji

BASE_NAMES = sorted(
    {name.lower() for name, category, *_ in EMOJI if category not in ("Flags", "Component")}
)


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    return write_fake_emoji(tmp_path_factory.mktemp("emoji"))


def test_rows_columns_and_canonical_captions(fake_root: Path) -> None:
    ds = make_emoji("all", root=fake_root, resolution=32)
    assert ds.num_rows == 2 * len(BASE_NAMES) == 18
    assert set(ds.column_names) == {"image", "text", "captions", "name", "style", "category", "subcategory", "image_file"}
    assert ds.features["style"].names == ["google", "twitter"]
    assert ds.features["category"].names == sorted(
        {c for _, c, *_ in EMOJI if c not in ("Flags", "Component")}
    )
    row = next(r for r in ds if r["name"] == "tiger face" and r["style"] == 1)
    assert row["text"] == "tiger face, twitter style" == canonical_caption("tiger face", "twitter")
    assert row["captions"] == ["tiger face, twitter style", "tiger, twitter style"]
    assert row["image_file"] == "1f42f.png"  # the first of the two entries named TIGER FACE
    assert ds.features["category"].int2str(row["category"]) == "Animals & Nature"
    assert sorted(set(ds["name"])) == BASE_NAMES
    assert all(lic in ds.info.license for lic in EMOJI_LICENSES.values())


def test_images_are_composited_on_white_and_resized(fake_root: Path) -> None:
    ds = make_emoji("all", root=fake_root, resolution=32)
    row = next(r for r in ds if r["name"] == "red apple" and r["style"] == 0)
    pixels = np.asarray(row["image"])
    assert row["image"].mode == "RGB" and pixels.shape == (32, 32, 3)
    assert tuple(pixels[0, 0]) == (255, 255, 255)  # transparent (hidden black) pixels become white
    assert tuple(pixels[16, 16]) == (220, 30, 30)
    grey = make_emoji("all", root=fake_root, resolution=64, background="#808080")
    assert tuple(np.asarray(grey[0]["image"])[0, 0]) == (128, 128, 128)


def test_held_out_pairs_leave_each_emoji_seen_in_the_other_style(fake_root: Path) -> None:
    kwargs = {"root": fake_root, "held_out_fraction": 0.25, "seed": 3}
    train, held, every = (make_emoji(split, **kwargs) for split in ("train", "held_out", "all"))
    held_pairs = set(zip(held["name"], held["style"]))
    train_pairs = set(zip(train["name"], train["style"]))
    assert len(held_pairs) == round(0.25 * 18) == 4
    assert held_pairs.isdisjoint(train_pairs) and held_pairs | train_pairs == set(zip(every["name"], every["style"]))
    assert len({name for name, _ in held_pairs}) == 4  # never both styles of one emoji
    assert all((name, 1 - style) in train_pairs for name, style in held_pairs)
    again = make_emoji("held_out", **kwargs)
    assert set(zip(again["name"], again["style"])) == held_pairs
    other_seeds = {frozenset(held_out_names(BASE_NAMES, ["google", "twitter"], 0.25, s).items()) for s in range(6)}
    assert len(other_seeds) > 1


def test_one_style_holds_nothing_out(fake_root: Path) -> None:
    assert make_emoji("held_out", root=fake_root, styles=["twitter"]).num_rows == 0
    assert make_emoji("train", root=fake_root, styles=["twitter"]).num_rows == 9


def test_skin_tones_and_flags_on_request(fake_root: Path) -> None:
    names = set(make_emoji("all", root=fake_root, include_skin_tones=True, include_flags=True)["name"])
    assert {"waving hand sign: light skin tone", "waving hand sign: dark skin tone", "flag for france"} <= names
    assert not any("fitzpatrick" in name for name in names)


def test_an_emoji_missing_in_one_style_is_never_held_out(tmp_path: Path) -> None:
    root = write_fake_emoji(tmp_path, missing={"twitter": {"ROCKET"}})
    every = make_emoji("all", root=root)
    assert ("rocket", 1) not in set(zip(every["name"], every["style"])) and every.num_rows == 17
    for seed in range(10):
        assert "rocket" not in make_emoji("held_out", root=root, held_out_fraction=0.4, seed=seed)["name"]


def test_training_pairs_lists_names_styles_and_files(fake_root: Path) -> None:
    pairs = training_pairs(root=fake_root, held_out_fraction=0.25)
    assert len(pairs["train_pairs"]) == 14 and len(pairs["held_out_pairs"]) == 4
    assert ["tiger face", "google", "1f42f.png"] in pairs["train_pairs"] + pairs["held_out_pairs"]
    held = make_emoji("held_out", root=fake_root, held_out_fraction=0.25)
    styles = held.features["style"].names
    assert sorted(pairs["held_out_pairs"]) == sorted([n, styles[s], f] for n, s, f in zip(held["name"], held["style"], held["image_file"]))
    assert pairs["dataset"] == "emoji" and pairs["licenses"] == list(EMOJI_LICENSES.values())


def test_bad_input_messages(fake_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"no emoji data for style 'google'.*gd-data fetch emoji.*GD_EMOJI_DIR"):
        make_emoji(root=tmp_path / "nothing")
    with pytest.raises(ValueError, match="emoji has splits train, held_out, all, not 'test'"):
        make_emoji("test", root=fake_root)
    with pytest.raises(ValueError, match="emoji styles must be some of google, twitter, got \\['apple'\\]"):
        make_emoji(root=fake_root, styles=["apple"])
    broken = tmp_path / "broken" / "emoji-datasource-google"
    broken.mkdir(parents=True)
    (broken / "emoji.json").write_text("{not json")
    with pytest.raises(FetchError, match="is not readable JSON.*gd-data fetch emoji"):
        make_emoji(root=tmp_path / "broken", styles=["google"])


def test_the_data_pipeline_loads_emoji_by_name(fake_root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GD_EMOJI_DIR", str(fake_root))
    ds = load_source(DataConfig(dataset_name="emoji", resolution=16, dataset_options={"styles": ["google"]}))
    assert ds.num_rows == 9 and ds[0]["image"].size == (16, 16)
    monkeypatch.setenv("GD_EMOJI_DIR", str(tmp_path))
    with pytest.raises(DataError, match="gd-data fetch emoji"):
        load_source(DataConfig(dataset_name="emoji"))
    with pytest.raises(DataError, match="unexpected keyword argument 'colour'"):
        load_source(DataConfig(dataset_name="emoji", dataset_options={"colour": "red"}))


# ------------------------------------------------------------------------------------------ fetching


def fake_npm(bin_dir: Path, script: str) -> dict[str, str]:
    """A PATH whose only ``npm`` runs ``script`` (sh)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    npm = bin_dir / "npm"
    npm.write_text("#!/bin/sh\n" + script)
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def package_tarball(path: Path, style: str) -> None:
    """An npm tarball (package/...) of the fake ``style`` package."""
    source = write_fake_emoji(path.parent / f"src-{style}", styles=(style,)) / f"emoji-datasource-{style}"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source, arcname="package")


def test_fetch_unpacks_the_npm_tarballs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tarballs = tmp_path / "tarballs"
    tarballs.mkdir()
    for style in ("google", "twitter"):
        package_tarball(tarballs / f"emoji-datasource-{style}-16.0.0.tgz", style)
    env = fake_npm(tmp_path / "bin", f'name=$(echo "$3" | sed "s/@/-/"); cp {tarballs}/"$name".tgz .\n')
    monkeypatch.setenv("PATH", env["PATH"])
    root = fetch_emoji(root=tmp_path / "cache")
    assert sorted(os.listdir(root)) == ["emoji-datasource-google", "emoji-datasource-twitter"]
    assert make_emoji("all", root=root).num_rows == 18
    assert json.loads((root / "emoji-datasource-twitter" / "emoji.json").read_text())[0]["name"] == "GRINNING FACE"


def test_fetch_without_npm_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FetchError, match="npm is not installed; install Node.js and npm .*GD_EMOJI_DIR"):
        fetch_emoji(root=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_failing_npm_is_reported_in_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = fake_npm(tmp_path / "bin", 'echo "npm error code ENOTFOUND" >&2\necho "npm error network request failed" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", env["PATH"])
    with pytest.raises(FetchError, match=r"failed \(npm error network request failed\); check the network"):
        fetch_emoji(["google"], root=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_truncated_download_is_refused_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "good.tgz"
    package_tarball(good, "google")
    (tmp_path / "half.tgz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    env = fake_npm(tmp_path / "bin", f"cp {tmp_path}/half.tgz emoji-datasource-google-16.0.0.tgz\n")
    monkeypatch.setenv("PATH", env["PATH"])
    with pytest.raises(FetchError, match="is not a readable archive.*run the fetch again"):
        fetch_emoji(["google"], root=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_an_archive_without_emoji_json_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with tarfile.open(tmp_path / "empty.tgz", "w:gz") as tar:
        info = tarfile.TarInfo("package/README.md")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    env = fake_npm(tmp_path / "bin", f"cp {tmp_path}/empty.tgz emoji-datasource-google-16.0.0.tgz\n")
    monkeypatch.setenv("PATH", env["PATH"])
    with pytest.raises(FetchError, match="holds no package/emoji.json"):
        fetch_emoji(["google"], root=tmp_path / "cache")

"""Fashion-MNIST on tiny IDX files written here (gzipped and raw): columns, class names, captions,
splits, the licence, the data pipeline, every bad-input message, and the Debian fetch (with fake
``apt-get`` commands and small packages built by ``dpkg-deb``)."""

from __future__ import annotations

import gzip
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from guided_diffusion.cli import data_main
from guided_diffusion.data import DataConfig, DataError, TrainData, load_source
from guided_diffusion.datasets import FASHION_MNIST_CLASSES, FETCHERS, fetch_fashion_mnist, make_fashion_mnist
from guided_diffusion.datasets.fashion_mnist import FASHION_MNIST_LICENSE, read_idx
from guided_diffusion.datasets.fetch import FetchError

TRAIN, TEST = 12, 5
NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    """``array`` (uint8, 1 or 3 axes) as an IDX file at ``path`` (``path.gz`` when ``gz``)."""
    data = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape) + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def split_arrays(count: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images [count, 28, 28], labels [count])``: image i is uniformly ``10 * (i + offset)``, its
    label ``(i + offset) % 10``."""
    values = np.arange(offset, offset + count)
    return np.broadcast_to((10 * values)[:, None, None], (count, 28, 28)).astype(np.uint8), (values % 10).astype(np.uint8)


def write_fashion_mnist(folder: Path, *, gz: bool) -> Path:
    """A Fashion-MNIST folder of TRAIN training images (labels 0..9, 0, 1) and TEST test images
    (labels 3..7)."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, (images, labels) in (("train", split_arrays(TRAIN, 0)), ("t10k", split_arrays(TEST, 3))):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
    return folder


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion_mnist"), gz=True)


@pytest.mark.parametrize("gz", [True, False])
def test_rows_columns_class_names_and_captions(tmp_path: Path, gz: bool) -> None:
    root = write_fashion_mnist(tmp_path, gz=gz)
    ds = make_fashion_mnist("train", root=root)
    assert ds.num_rows == TRAIN and ds.split == "train"
    assert ds.column_names == ["image", "label", "text"]
    assert ds.features["label"].names == list(FASHION_MNIST_CLASSES) == [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
    ]
    assert ds["label"] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert ds["text"] == [
        "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
        "t-shirt/top", "trouser",
    ]
    image = ds[7]["image"]
    assert image.mode == "L" and image.size == (28, 28)
    assert np.array_equal(np.asarray(image), np.full((28, 28), 70, dtype=np.uint8))


def test_splits_num_images_and_licence(fake_root: Path) -> None:
    test = make_fashion_mnist("test", root=fake_root)
    assert test.num_rows == TEST and test["label"] == [3, 4, 5, 6, 7]
    assert test["text"] == ["dress", "coat", "sandal", "shirt", "sneaker"]
    assert np.asarray(test[0]["image"])[5, 9] == 30
    first = make_fashion_mnist("train", root=fake_root, num_images=3)
    assert first.num_rows == 3 and first["text"] == ["t-shirt/top", "trouser", "pullover"]
    assert make_fashion_mnist("test", root=fake_root, num_images=100).num_rows == TEST
    assert test.info.license == FASHION_MNIST_LICENSE
    assert FASHION_MNIST_LICENSE.startswith("MIT License, Copyright 2017 Zalando SE")
    assert "Zalando Research" in FASHION_MNIST_LICENSE and "dataset-fashion-mnist" in FASHION_MNIST_LICENSE
    assert test.info.homepage == "https://github.com/zalandoresearch/fashion-mnist"
    assert "Fashion-MNIST" in test.info.description


def test_raw_and_gzipped_files_may_mix(tmp_path: Path) -> None:
    root = write_fashion_mnist(tmp_path, gz=True)
    gz_path = root / "t10k-images-idx3-ubyte.gz"
    (root / "t10k-images-idx3-ubyte").write_bytes(gzip.decompress(gz_path.read_bytes()))
    gz_path.unlink()
    assert make_fashion_mnist("test", root=root)["label"] == [3, 4, 5, 6, 7]
    assert read_idx(root / "t10k-images-idx3-ubyte", 3).shape == (TEST, 28, 28)
    assert read_idx(root / "t10k-labels-idx1-ubyte.gz", 1).tolist() == [3, 4, 5, 6, 7]


def test_the_folder_comes_from_root_then_the_env_then_the_cache(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    write_fashion_mnist(cache / "fashion_mnist", gz=False)
    (cache / "fashion_mnist" / "train-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 0x801, TRAIN) + bytes([9] * TRAIN)
    )
    monkeypatch.setenv("GD_DATA_DIR", str(cache))
    monkeypatch.delenv("GD_FASHION_MNIST_DIR", raising=False)
    assert set(make_fashion_mnist()["label"]) == {9}
    monkeypatch.setenv("GD_FASHION_MNIST_DIR", str(fake_root))
    assert make_fashion_mnist()["label"][:3] == [0, 1, 2]
    assert set(make_fashion_mnist(root=cache / "fashion_mnist")["label"]) == {9}


def test_bad_input_messages(fake_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^fashion_mnist has splits train, test, not 'validation'$"):
        make_fashion_mnist("validation", root=fake_root)
    with pytest.raises(ValueError, match=r"^num_images must be at least 1 \(or None: all\), got 0$"):
        make_fashion_mnist(root=fake_root, num_images=0)
    missing = tmp_path / "nowhere"
    with pytest.raises(FetchError) as err:
        make_fashion_mnist(root=missing)
    assert str(err.value) == (
        f"no Fashion-MNIST train data in {missing} (train-images-idx3-ubyte[.gz] missing); run `gd-data fetch "
        "fashion_mnist`, or set GD_FASHION_MNIST_DIR to a folder holding the four IDX files (e.g. "
        "/usr/share/datasets/fashion-mnist after `apt-get install dataset-fashion-mnist`)"
    )
    half = write_fashion_mnist(tmp_path / "half", gz=False)
    (half / "t10k-labels-idx1-ubyte").unlink()
    assert make_fashion_mnist("train", root=half).num_rows == TRAIN
    with pytest.raises(FetchError, match=r"^no Fashion-MNIST test data in .*\(t10k-labels-idx1-ubyte\[\.gz\] missing\)"):
        make_fashion_mnist("test", root=half)


def corrupt_copy(fake_root: Path, folder: Path, name: str, data: bytes) -> Path:
    """A copy of ``fake_root`` in ``folder`` whose file ``name`` (raw, replacing the .gz) holds ``data``."""
    shutil.copytree(fake_root, folder)
    (folder / f"{name}.gz").unlink()
    (folder / name).write_bytes(data)
    return folder / name


def test_a_corrupt_file_is_named_with_the_fix(fake_root: Path, tmp_path: Path) -> None:
    fix = "; run `gd-data fetch fashion_mnist` again"
    labels = struct.pack(">II", 0x801, TRAIN) + bytes(TRAIN)
    path = corrupt_copy(fake_root, tmp_path / "magic", "train-images-idx3-ubyte", labels)
    with pytest.raises(FetchError) as err:
        make_fashion_mnist(root=path.parent)
    assert str(err.value) == f"{path} is not a valid IDX file (magic number 0x00000801, expected 0x00000803){fix}"

    images = gzip.decompress((fake_root / "train-images-idx3-ubyte.gz").read_bytes())
    path = corrupt_copy(fake_root, tmp_path / "short", "train-images-idx3-ubyte", images[:-100])
    with pytest.raises(FetchError) as err:
        make_fashion_mnist(root=path.parent)
    assert str(err.value) == f"{path} is not a valid IDX file (9324 bytes where its header (12x28x28) needs 9424){fix}"

    path = corrupt_copy(fake_root, tmp_path / "header", "train-images-idx3-ubyte", images[:10])
    with pytest.raises(FetchError, match=r"\(10 bytes, shorter than its 16-byte header\); run `gd-data fetch"):
        make_fashion_mnist(root=path.parent)

    path = corrupt_copy(fake_root, tmp_path / "empty", "train-labels-idx1-ubyte", b"")
    with pytest.raises(FetchError, match=r"\(magic number none in its 0 bytes, expected 0x00000801\)"):
        make_fashion_mnist(root=path.parent)

    root = shutil.copytree(fake_root, tmp_path / "cut_gz")
    gz = root / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:40])
    with pytest.raises(FetchError) as err:
        make_fashion_mnist(root=root)
    assert str(err.value) == (
        f"{gz} is not a valid IDX file (Compressed file ended before the end-of-stream marker was reached){fix}"
    )


def test_inconsistent_files_are_refused(fake_root: Path, tmp_path: Path) -> None:
    path = corrupt_copy(fake_root, tmp_path / "count", "train-labels-idx1-ubyte", struct.pack(">II", 0x801, 3) + bytes(3))
    with pytest.raises(FetchError) as err:
        make_fashion_mnist(root=path.parent)
    assert str(err.value) == (
        f"{path.parent / 'train-images-idx3-ubyte.gz'} holds 12 images but {path} 3 labels; "
        "run `gd-data fetch fashion_mnist` again"
    )
    path = corrupt_copy(fake_root, tmp_path / "class", "train-labels-idx1-ubyte", struct.pack(">II", 0x801, TRAIN) + bytes([10] * TRAIN))
    with pytest.raises(FetchError, match=r"holds label 10, beyond the 10 classes; run `gd-data fetch fashion_mnist` again$"):
        make_fashion_mnist(root=path.parent)


def test_the_data_pipeline_loads_fashion_mnist_by_name(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GD_FASHION_MNIST_DIR", str(fake_root))
    config = DataConfig(dataset_name="fashion_mnist", caption_column="text", label_column="label", resolution=28)
    ds = load_source(config)
    assert ds.num_rows == TRAIN and ds.features["label"].names == list(FASHION_MNIST_CLASSES)
    batch = next(TrainData(ds, config, resolution=28, batch_size=4, seed=0).batches())
    assert batch["images"].shape == (4, 3, 28, 28)
    for image, label in zip(batch["images"], batch["labels"].tolist()):
        assert np.allclose(image.numpy(), 10 * label / 127.5 - 1, atol=1e-6)  # grey -> equal RGB planes
    assert all(c in ("", FASHION_MNIST_CLASSES[label].lower()) for c, label in zip(batch["captions"], batch["labels"].tolist()))
    assert load_source(DataConfig(dataset_name="fashion_mnist", caption_column="text", split="test")).num_rows == TEST
    few = load_source(DataConfig(dataset_name="fashion_mnist", caption_column="text", dataset_options={"num_images": 2}))
    assert few["text"] == ["t-shirt/top", "trouser"]
    monkeypatch.setenv("GD_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"^no Fashion-MNIST train data in .*gd-data fetch fashion_mnist"):
        load_source(DataConfig(dataset_name="fashion_mnist", caption_column="text"))


# ------------------------------------------------------------------------------------------ fetching


def fake_apt_get(bin_dir: Path, script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Put an ``apt-get`` that runs ``script`` (sh) first on PATH (``dpkg-deb`` stays the real one)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    apt_get = bin_dir / "apt-get"
    apt_get.write_text("#!/bin/sh\n" + script)
    apt_get.chmod(apt_get.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


def build_deb(path: Path, files: dict[str, bytes]) -> Path:
    """A Debian package at ``path`` holding ``files`` (paths relative to its root), built by dpkg-deb."""
    tree = path.parent / f"{path.stem}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: dataset-fashion-mnist\nVersion: 0.1-1\nArchitecture: all\nMaintainer: Test <test@example.org>\n"
        "Description: a tiny Fashion-MNIST for tests\n"
    )
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(path)], check=True, capture_output=True)
    return path


def package_files(fake_root: Path) -> dict[str, bytes]:
    """The fake files as the real package lays them out: ``usr/share/datasets/fashion-mnist/*.gz``."""
    files = {f"usr/share/datasets/fashion-mnist/{name}.gz": (fake_root / f"{name}.gz").read_bytes() for name in NAMES}
    return files | {"usr/share/doc/dataset-fashion-mnist/copyright": b"Expat\n"}


@pytest.fixture(scope="module")
def fake_deb(fake_root: Path, tmp_path_factory) -> Path:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    return build_deb(tmp_path_factory.mktemp("deb") / "dataset-fashion-mnist_0.1-1_all.deb", package_files(fake_root))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GD_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GD_FASHION_MNIST_DIR", raising=False)
    return tmp_path / "cache"


def test_fetch_unpacks_the_debian_package_flat_into_the_cache(
    fake_deb: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert FETCHERS["fashion_mnist"] is fetch_fashion_mnist
    fake_apt_get(tmp_path / "bin", f'echo "$@" >> {tmp_path}/calls\ncp {fake_deb} .\n', monkeypatch)
    folder = fetch_fashion_mnist()
    assert folder == cache / "fashion_mnist"
    assert sorted(p.name for p in cache.iterdir()) == ["fashion_mnist"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{name}.gz" for name in NAMES)
    assert (tmp_path / "calls").read_text() == "download dataset-fashion-mnist\n"
    ds = make_fashion_mnist("test")
    assert ds["label"] == [3, 4, 5, 6, 7] and ds["text"][-1] == "sneaker"
    fake_apt_get(tmp_path / "bin", "echo 'E: should not run' >&2\nexit 100\n", monkeypatch)
    assert fetch_fashion_mnist() == folder  # already there: kept, apt-get not run


def test_fetch_without_apt_get_says_what_to_do_and_leaves_nothing(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    message = (
        "apt-get is not installed; fetch on Debian or Ubuntu (after `apt-get update` if apt cannot find the package), "
        "or set GD_FASHION_MNIST_DIR to a folder holding the four IDX files of "
        "https://github.com/zalandoresearch/fashion-mnist"
    )
    with pytest.raises(FetchError) as err:
        fetch_fashion_mnist()
    assert str(err.value) == message
    assert list(cache.iterdir()) == []
    assert data_main(["fetch", "fashion_mnist"]) == 2
    assert capsys.readouterr().err == f"gd-data: error: {message}\n"
    assert list(cache.iterdir()) == []


def test_a_failing_apt_get_is_reported_in_one_line_and_leaves_nothing(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_apt_get(
        tmp_path / "bin",
        "echo 'Reading package lists...'\necho 'W: some warning' >&2\n"
        "echo 'E: Unable to locate package dataset-fashion-mnist' >&2\nexit 100\n",
        monkeypatch,
    )
    with pytest.raises(FetchError) as err:
        fetch_fashion_mnist()
    assert str(err.value).startswith(
        "`apt-get download dataset-fashion-mnist` failed (E: Unable to locate package dataset-fashion-mnist); "
        "check the network to the registry, or fetch on Debian or Ubuntu (after `apt-get update`"
    )
    assert "\n" not in str(err.value)
    assert list(cache.iterdir()) == []


def test_apt_get_leaving_no_package_is_refused(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_apt_get(tmp_path / "bin", "touch other_1.0_all.deb\n", monkeypatch)
    with pytest.raises(FetchError) as err:
        fetch_fashion_mnist()
    assert str(err.value) == (
        "`apt-get download dataset-fashion-mnist` left no dataset-fashion-mnist_*.deb; run `gd-data fetch fashion_mnist` again"
    )
    assert list(cache.iterdir()) == []


@needs_dpkg
def test_a_corrupt_package_is_refused_and_leaves_nothing(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_apt_get(tmp_path / "bin", "echo 'not a Debian package' > dataset-fashion-mnist_0.1-1_all.deb\n", monkeypatch)
    with pytest.raises(FetchError) as err:
        fetch_fashion_mnist()
    assert str(err.value) == (
        "`dpkg-deb -x dataset-fashion-mnist_0.1-1_all.deb unpacked` failed (dpkg-deb: error: "
        "'dataset-fashion-mnist_0.1-1_all.deb' is not a Debian format archive); check the network to the registry, "
        "or the download is damaged or dpkg is missing: run `gd-data fetch fashion_mnist` again (after `apt-get install dpkg`)"
    )
    assert list(cache.iterdir()) == []


def test_a_half_downloaded_package_is_refused_and_leaves_nothing(
    fake_deb: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    half = tmp_path / "dataset-fashion-mnist_0.1-1_all.deb"
    half.write_bytes(fake_deb.read_bytes()[: fake_deb.stat().st_size // 2])
    fake_apt_get(tmp_path / "bin", f"cp {half} .\n", monkeypatch)
    with pytest.raises(FetchError, match=r"^`dpkg-deb -x dataset-fashion-mnist_0\.1-1_all\.deb unpacked` failed \(.*"
                       r"run `gd-data fetch fashion_mnist` again"):
        fetch_fashion_mnist()
    assert list(cache.iterdir()) == []


def test_a_package_without_the_files_or_with_a_corrupt_one_is_refused(
    fake_root: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    files = package_files(fake_root)
    empty = build_deb(tmp_path / "empty" / "dataset-fashion-mnist_0.1-1_all.deb", {"usr/share/doc/x/copyright": b"x"})
    fake_apt_get(tmp_path / "bin", f"cp {empty} .\n", monkeypatch)
    with pytest.raises(FetchError) as err:
        fetch_fashion_mnist()
    assert str(err.value) == (
        "dataset-fashion-mnist_0.1-1_all.deb holds no train-images-idx3-ubyte[.gz]; run `gd-data fetch fashion_mnist` again"
    )
    assert list(cache.iterdir()) == []
    labels = "usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"
    broken = build_deb(tmp_path / "broken" / "dataset-fashion-mnist_0.1-1_all.deb", files | {labels: files[labels][:20]})
    fake_apt_get(tmp_path / "bin", f"cp {broken} .\n", monkeypatch)
    with pytest.raises(FetchError, match=r"t10k-labels-idx1-ubyte\.gz is not a valid IDX file \(.*\); run `gd-data fetch fashion_mnist` again$"):
        fetch_fashion_mnist()
    assert list(cache.iterdir()) == []


def test_fetch_refuses_a_folder_holding_other_things(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    fake_apt_get(tmp_path / "bin", "exit 100\n", monkeypatch)
    with pytest.raises(FetchError) as err:
        fetch_fashion_mnist(root=mine)
    assert str(err.value) == (
        f"{mine} exists but does not hold the four Fashion-MNIST IDX files; remove it, or fetch with --root into a new folder"
    )
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

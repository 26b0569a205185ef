"""Fashion-MNIST: Zalando's article images in 10 clothing classes, from the Debian package
``dataset-fashion-mnist``.

70,000 greyscale images of 28x28 pixels (a light article on black), 60,000 in split ``train`` and
10,000 in ``test``, stored as the four IDX files of the original release
(github.com/zalandoresearch/fashion-mnist, MIT licence). The Debian package holds them gzipped under
``usr/share/datasets/fashion-mnist/``; ``gd-data fetch fashion_mnist`` runs ``apt-get download`` and
``dpkg-deb -x`` and puts the four files, flat, in the data cache's ``fashion_mnist/``.
``$GD_FASHION_MNIST_DIR`` (or ``root=``) may instead name any folder holding them, gzipped or not
(e.g. ``/usr/share/datasets/fashion-mnist`` after ``apt-get install dataset-fashion-mnist``).

Rows::

    image   the 28x28 greyscale image (PIL mode "L")
    label   ClassLabel over FASHION_MNIST_CLASSES
    text    the caption: the class name in lower case, e.g. "ankle boot", "t-shirt/top"

IDX: a big-endian header ``0x00 0x00 <type> <ndim>`` (type 0x08: unsigned bytes), ``ndim`` uint32
sizes, then the values in C order: images ``[N, 28, 28]``, labels ``[N]``.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import shutil
import struct
import zlib
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from .fetch import FetchError, data_cache_dir, install_atomically, run_tool

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_LICENSE = (
    "MIT License, Copyright 2017 Zalando SE (Fashion-MNIST by Zalando Research, "
    "https://github.com/zalandoresearch/fashion-mnist), via the Debian package dataset-fashion-mnist"
)
FASHION_MNIST_CITATION = (
    "Han Xiao, Kashif Rasul, Roland Vollgraf. Fashion-MNIST: a Novel Image Dataset for Benchmarking "
    "Machine Learning Algorithms. arXiv:1708.07747, 2017."
)
DEBIAN_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_DIR_ENV = "GD_FASHION_MNIST_DIR"
FASHION_MNIST_SPLITS = ("train", "test")
# split -> (images file, labels file), as named in the release (each may also end in .gz)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FETCH = "`gd-data fetch fashion_mnist`"
_UNSIGNED_BYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=list(FASHION_MNIST_CLASSES)),
        "text": datasets.Value("string"),
    }
)


def caption(label: int) -> str:
    """The caption of class ``label``: its name in lower case, e.g. ``"ankle boot"``."""
    return FASHION_MNIST_CLASSES[label].lower()


def fashion_mnist_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the IDX files: ``root``, else ``$GD_FASHION_MNIST_DIR``, else the data
    cache's ``fashion_mnist/`` (where ``gd-data fetch fashion_mnist`` puts them)."""
    if root is not None:
        return Path(root)
    configured = os.environ.get(FASHION_MNIST_DIR_ENV)
    return Path(configured) if configured else data_cache_dir() / "fashion_mnist"


def _find(folder: Path, name: str) -> Path | None:
    """``folder/name.gz`` or ``folder/name``, whichever exists (the gzipped one first)."""
    return next((path for path in (folder / f"{name}.gz", folder / name) if path.is_file()), None)


def _complete(folder: Path) -> bool:
    return all(_find(folder, name) is not None for names in IDX_FILES.values() for name in names)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The unsigned bytes of the IDX file ``path`` (gzipped or raw), shaped by its header: ``ndim``
    axes, e.g. images ``[N, H, W]`` (``ndim`` 3) or labels ``[N]`` (``ndim`` 1).

    A file that is unreadable, has another magic number than ``0x000008<ndim>``, or whose length
    disagrees with its header raises :class:`FetchError` naming it.
    """

    def corrupt(reason: str) -> FetchError:
        return FetchError(f"{path} is not a valid IDX file ({reason}); run {_FETCH} again")

    try:
        with open(path, "rb") as file:
            gzipped = file.read(2) == _GZIP_MAGIC
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as file:
            data = file.read()
    except (OSError, EOFError, zlib.error) as err:
        raise corrupt(str(err)) from None
    magic = bytes((0, 0, _UNSIGNED_BYTE, ndim))
    if data[:4] != magic:
        found = f"0x{data[:4].hex()}" if len(data) >= 4 else f"none in its {len(data)} bytes"
        raise corrupt(f"magic number {found}, expected 0x{magic.hex()}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise corrupt(f"{len(data)} bytes, shorter than its {header}-byte header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(shape)
    if len(data) != expected:
        raise corrupt(f"{len(data)} bytes where its header ({'x'.join(map(str, shape))}) needs {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images [N, H, W] uint8, labels [N] uint8)`` of ``split`` from the IDX files in ``folder``
    (H = W = 28 in the release); files that disagree on N, or a label beyond the classes, are refused."""
    paths = []
    for name in IDX_FILES[split]:
        path = _find(folder, name)
        if path is None:
            raise FetchError(
                f"no Fashion-MNIST {split} data in {folder} ({name}[.gz] missing); run {_FETCH}, or set "
                f"{FASHION_MNIST_DIR_ENV} to a folder holding the four IDX files "
                f"(e.g. /usr/share/datasets/fashion-mnist after `apt-get install {DEBIAN_PACKAGE}`)"
            )
        paths.append(path)
    images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1)
    if len(images) != len(labels):
        raise FetchError(
            f"{paths[0]} holds {len(images)} images but {paths[1]} {len(labels)} labels; run {_FETCH} again"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise FetchError(
            f"{paths[1]} holds label {labels.max()}, beyond the {len(FASHION_MNIST_CLASSES)} classes; "
            f"run {_FETCH} again"
        )
    return images, labels


def fetch_fashion_mnist(*, root: str | os.PathLike | None = None) -> Path:
    """Download the Debian package with ``apt-get download``, unpack it with ``dpkg-deb -x`` and put
    its four IDX files (gzipped) flat in ``root`` (default: the data cache's ``fashion_mnist/``);
    returns that folder. Files already there are kept; a folder that holds other things is refused."""
    target = Path(root) if root is not None else data_cache_dir() / "fashion_mnist"
    if _complete(target):
        return target
    if target.exists() and any(target.iterdir()):
        raise FetchError(
            f"{target} exists but does not hold the four Fashion-MNIST IDX files; remove it, or fetch with --root "
            "into a new folder"
        )

    def build(tmp: Path) -> None:
        run_tool(
            ["apt-get", "download", DEBIAN_PACKAGE],
            cwd=tmp,
            install_hint=(
                f"fetch on Debian or Ubuntu (after `apt-get update` if apt cannot find the package), or set "
                f"{FASHION_MNIST_DIR_ENV} to a folder holding the four IDX files of "
                "https://github.com/zalandoresearch/fashion-mnist"
            ),
        )
        packages = sorted(tmp.glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if not packages:
            raise FetchError(
                f"`apt-get download {DEBIAN_PACKAGE}` left no {DEBIAN_PACKAGE}_*.deb; run {_FETCH} again"
            )
        package = packages[0]
        run_tool(
            ["dpkg-deb", "-x", package.name, "unpacked"],
            cwd=tmp,
            install_hint=(
                f"the download is damaged or dpkg is missing: run {_FETCH} again (after `apt-get install dpkg`)"
            ),
        )
        for split, names in IDX_FILES.items():
            for name, ndim in zip(names, (3, 1)):
                found = sorted((tmp / "unpacked").rglob(f"{name}.gz")) or sorted((tmp / "unpacked").rglob(name))
                if not found:
                    raise FetchError(f"{package.name} holds no {name}[.gz]; run {_FETCH} again")
                found[0].rename(tmp / found[0].name)
            read_split(tmp, split)  # refuse a damaged file now, not at training time
        package.unlink()
        shutil.rmtree(tmp / "unpacked")

    return install_atomically(target, build)


def _encoded(image: np.ndarray) -> dict[str, bytes | None]:
    """A ``[H, W]`` uint8 image as ``datasets.Image`` storage: binary PGM bytes (PIL's PPM writer), which
    decode to a mode "L" image and take a tenth of the time of PNG to write."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PPM")
    return {"bytes": buffer.getvalue(), "path": None}


def make_fashion_mnist(
    split: str = "train", *, root: str | os.PathLike | None = None, num_images: int | None = None
) -> datasets.Dataset:
    """Fashion-MNIST's ``split`` (``train``: 60,000 rows, ``test``: 10,000) as a ``datasets.Dataset``,
    its first ``num_images`` rows when given (all when it has fewer); see the module docstring for the columns and
    :func:`fashion_mnist_root` for where the files are read from."""
    if split not in FASHION_MNIST_SPLITS:
        raise ValueError(f"fashion_mnist has splits {', '.join(FASHION_MNIST_SPLITS)}, not {split!r}")
    if num_images is not None and num_images < 1:
        raise ValueError(f"num_images must be at least 1 (or None: all), got {num_images}")
    images, labels = read_split(fashion_mnist_root(root), split)
    images, labels = images[:num_images], labels[:num_images]
    captions = [caption(i) for i in range(len(FASHION_MNIST_CLASSES))]
    columns = {
        "image": [_encoded(image) for image in images],
        "label": labels.astype(np.int64),
        "text": [captions[label] for label in labels],
    }
    info = datasets.DatasetInfo(
        description=(
            "Fashion-MNIST: 28x28 greyscale images of Zalando's articles in 10 classes, captioned with the class name"
        ),
        citation=FASHION_MNIST_CITATION,
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        license=FASHION_MNIST_LICENSE,
        features=_FEATURES,
    )
    return datasets.Dataset.from_dict(columns, features=_FEATURES, info=info, split=split)

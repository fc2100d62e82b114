"""The IDX files of MNIST and Fashion-MNIST, read with NumPy alone (no TensorFlow, no network).

A dataset is four files in one directory, each optionally gzip-compressed (`<stem>.gz`, as the
original downloads and Debian's `dataset-fashion-mnist` ship them):
`train-images-idx3-ubyte` [60000, 28, 28], `train-labels-idx1-ubyte` [60000],
`t10k-images-idx3-ubyte` [10000, 28, 28], `t10k-labels-idx1-ubyte` [10000].
A file is a header — two zero bytes, the type code 0x08 (unsigned byte), the number of dimensions
n — then n big-endian uint32 sizes, then prod(sizes) bytes in C order, and nothing after them.
Every check raises `DataError` in one line naming the file.
"""

from __future__ import annotations

import gzip
import math
import os
import pathlib
import struct
import zlib

import numpy as np

from vae_jax.errors import DataError

UNSIGNED_BYTE = 0x08  # the IDX type code of uint8 values
# split -> (images file, labels file), without the optional '.gz'
STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_BROKEN_GZIP = (EOFError, gzip.BadGzipFile, zlib.error)


def find(directory: str | os.PathLike, stem: str) -> pathlib.Path | None:
    """`directory/stem`, else `directory/stem.gz`, else None."""
    for name in (stem, f"{stem}.gz"):
        path = pathlib.Path(directory) / name
        if path.is_file():
            return path
    return None


def missing(directory: str | os.PathLike) -> list[str]:
    """The stems of the four files that `directory` lacks (in neither form), in STEMS order."""
    return [stem for pair in STEMS.values() for stem in pair if find(directory, stem) is None]


def _open(path: pathlib.Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _parse_header(path: pathlib.Path, head: bytes, ndim: int) -> tuple[int, ...]:
    """The sizes [ndim] that the header `head` (4 + 4·ndim bytes, or fewer if the file is
    shorter) states, after checking its magic number: 0, 0, UNSIGNED_BYTE, ndim."""
    expected = bytes([0, 0, UNSIGNED_BYTE, ndim])
    if len(head) < 4 or head[:4] != expected:
        raise DataError(
            f"{path} is not an IDX file of {ndim}-dimensional unsigned bytes: its magic number "
            f"is {head[:4].hex() or 'missing'}, expected {expected.hex()}"
        )
    if len(head) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated inside its IDX header")
    return struct.unpack(f">{ndim}I", head[4 : 4 + 4 * ndim])


def read_shape(path: str | os.PathLike, ndim: int) -> tuple[int, ...]:
    """The array shape [ndim] an IDX file's header states; reads the header only."""
    path = pathlib.Path(path)
    try:
        with _open(path) as f:
            head = f.read(4 + 4 * ndim)
    except _BROKEN_GZIP as e:
        raise DataError(f"{path} is not a readable gzip file ({e})") from None
    return _parse_header(path, head, ndim)


def read(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """The uint8 array [sizes…] of an IDX file of `ndim` dimensions, its size checked against
    its header (DataError for a truncated file or bytes after the data)."""
    path = pathlib.Path(path)
    try:
        with _open(path) as f:
            content = f.read()
    except _BROKEN_GZIP as e:
        raise DataError(f"{path} is not a readable gzip file ({e})") from None
    shape = _parse_header(path, content[: 4 + 4 * ndim], ndim)
    body = memoryview(content)[4 + 4 * ndim :]
    if len(body) != math.prod(shape):
        raise DataError(
            f"{path} holds {len(body)} bytes of data where its header "
            f"({' x '.join(map(str, shape))}) states {math.prod(shape)}"
        )
    return np.frombuffer(body, np.uint8).reshape(shape)


def _paths(directory: str | os.PathLike, split: str) -> tuple[pathlib.Path, pathlib.Path]:
    images, labels = (find(directory, stem) for stem in STEMS[split])
    if images is None or labels is None:
        absent = ", ".join(s for s in STEMS[split] if find(directory, s) is None)
        raise DataError(f"{directory} has no {absent} (nor .gz)")
    return images, labels


def num_examples(directory: str | os.PathLike, split: str) -> int:
    """The number of images of `split` ('train' | 'test'), from the images file's header."""
    return read_shape(_paths(directory, split)[0], 3)[0]


def read_split(directory: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W], labels uint8 [N]) of `split` ('train' | 'test'), the two
    files checked to hold the same number of examples."""
    images_path, labels_path = _paths(directory, split)
    images, labels = read(images_path, 3), read(labels_path, 1)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels"
        )
    return images, labels

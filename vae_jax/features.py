"""The feature network of an image dataset: a small classifier whose penultimate layer is the
feature space of the sample-quality metrics (`vae_jax.sample_metrics`).

An MLP x [H, W, C] → flatten → Dense(256) → GELU → Dense(128) → GELU (the features φ(x), [128])
→ Dense(num_classes) (the logits), trained with Adam on softmax cross-entropy against the
TRAINING split's labels less the validation examples — the very rows `experiment.build_problem`
trains the VAE on (`data.split_validation` of the first `train_subset` training examples), so
validation and test images are never trained on and the validation-vs-test "real floor" is a
fair one. Deterministic: fixed seed, fixed-order batches (a permutation per epoch drawn from the
seed), one jitted program.

Built once and cached beside the data, in
`<data_dir>/feature_nets/<name>_val<fraction>_seed<seed>[_subset<n>]_v<VERSION>/`:
`params.npz` (the Flax parameters, keys joined by '/') and `info.json` (the recipe, the split
sizes and the measured test and validation accuracies). A cache that cannot be read is derived
data: it is built again, in one line on stderr.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from vae_jax import data
from vae_jax.errors import first_line

VERSION = 1  # bump when the architecture or the training recipe changes: old caches are ignored
HIDDEN_SIZES = (256, 128)  # the last one is the feature dimension F
NUM_STEPS = 1500  # Adam steps of batch BATCH_SIZE
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
IMAGE_DATASETS = ("mnist_5k", "digits", "mnist", "fashion_mnist", "cifar10")  # with labels


class Classifier(nn.Module):
    """ONE image x [H, W, C] in [0, 1] -> (features [hidden_sizes[-1]], logits [num_classes])."""

    hidden_sizes: Sequence[int]
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x.reshape(-1)
        for i, width in enumerate(self.hidden_sizes):
            h = nn.gelu(nn.Dense(width, name=f"dense{i}")(h))
        return h, nn.Dense(self.num_classes, name="logits")(h)


def features_and_logits(
    module: Classifier, params: Any, x: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(features [N, F], logits [N, C]) of images x [N, H, W, C]; pure, traceable."""
    return jax.vmap(lambda image: module.apply(params, image))(x)


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureNet:
    """A trained classifier of one dataset and what it was measured to do."""

    name: str  # the dataset
    module: Classifier
    params: Any
    event_shape: tuple[int, ...]  # [H, W, C] of the images it takes
    test_accuracy: float  # on the test split
    val_accuracy: float | None  # on the held-out validation split (None when it holds none)
    path: pathlib.Path  # the cache directory
    info: dict[str, Any]  # info.json: recipe, split sizes, accuracies, build seconds

    def features(self, x: np.ndarray | jax.Array) -> np.ndarray:
        """φ(x): [N, H, W, C] images in [0, 1] -> [N, F] penultimate activations."""
        return np.asarray(self._apply(x)[0])

    def logits(self, x: np.ndarray | jax.Array) -> np.ndarray:
        """[N, H, W, C] -> [N, num_classes]."""
        return np.asarray(self._apply(x)[1])

    def predict(self, x: np.ndarray | jax.Array) -> np.ndarray:
        """[N, H, W, C] -> [N] predicted labels."""
        return np.argmax(self.logits(x), axis=-1)

    def _apply(self, x):
        if tuple(np.shape(x)[1:]) != self.event_shape:
            shape = ", ".join(map(str, self.event_shape))
            raise ValueError(
                f"the {self.name} feature network takes [N, {shape}] images; got {np.shape(x)}"
            )
        return _jit_features_and_logits(self.module, self.params, jnp.asarray(x, jnp.float32))


_jit_features_and_logits = jax.jit(features_and_logits, static_argnums=0)


def feature_network(
    name: str,
    *,
    validation_fraction: float,
    seed: int = 0,
    train_subset: int | None = None,
    data_dir: str | os.PathLike | None = None,
    idx_dir: str | os.PathLike | None = None,
) -> FeatureNet:
    """The feature network of dataset `name`, from the cache or built (and cached) now.

    `validation_fraction` and `train_subset` are the run's `data.validation_fraction` and
    `data.train_subset`: the net trains on exactly the VAE's training examples (`training_split`);
    `idx_dir` is `data.idx_dir` (mnist, fashion_mnist: where their IDX files are, `vae_jax.data`).
    The cache lives in `data_dir` whichever source the images came from: they are the same images.
    Raises `data.DataError` for a dataset without class labels (ppca_synthetic, binarized_mnist).
    """
    if name not in IMAGE_DATASETS:
        raise data.DataError(
            f"data.name={name!r} has no class labels to train a feature network on; sample "
            f"quality is measured for {', '.join(IMAGE_DATASETS)}"
        )
    data_dir = os.fspath(data_dir) if data_dir is not None else data.default_data_dir()
    path = cache_path(name, validation_fraction, seed, train_subset, data_dir)
    if path.exists():
        try:
            return _load(name, path)
        except Exception as e:  # npz, json and key errors: a damaged cache of derived data
            why = f"again: the cached copy could not be read ({first_line(e)})"
            shutil.rmtree(path, ignore_errors=True)
    else:
        why = "(once)"
    print(f"building the {name} feature network in {path} {why}", file=sys.stderr, flush=True)
    _build(name, validation_fraction, seed, train_subset, data_dir, idx_dir, path)
    return _load(name, path)


def cache_path(
    name: str,
    validation_fraction: float,
    seed: int,
    train_subset: int | None,
    data_dir: str | os.PathLike,
) -> pathlib.Path:
    """Where the feature network of this dataset, split rule and seed is cached."""
    subset = "" if train_subset is None else f"_subset{int(train_subset)}"
    key = f"{name}_val{float(validation_fraction)!r}_seed{int(seed)}{subset}_v{VERSION}"
    return pathlib.Path(data_dir) / "feature_nets" / key


def training_split(
    name: str,
    validation_fraction: float,
    train_subset: int | None = None,
    data_dir: str | os.PathLike | None = None,
    idx_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_labels, val_x, val_labels): the training split's first `train_subset`
    examples split by `data.split_validation`, as `experiment.build_problem` splits them."""
    x = data.load_numpy(name, "train", data_dir=data_dir, idx_dir=idx_dir)
    labels = data.load_labels(name, "train", data_dir=data_dir, idx_dir=idx_dir)
    if train_subset is not None:
        x, labels = x[:train_subset], labels[:train_subset]
    train_x, val_x = data.split_validation(x, validation_fraction)
    train_labels, val_labels = data.split_validation(labels, validation_fraction)
    return train_x, train_labels, val_x, val_labels


def train_classifier(
    module: Classifier,
    x: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int,
    num_steps: int = NUM_STEPS,
    batch_size: int = BATCH_SIZE,
    learning_rate: float = LEARNING_RATE,
) -> Any:
    """Parameters of `module` fitted to (x [N, H, W, C], labels [N]) by Adam on the mean
    softmax cross-entropy, in one jitted program: `num_steps` steps through fixed-order batches,
    epoch e visiting the examples in the order of a permutation drawn from fold_in(seed, e)."""
    batch_size = min(batch_size, len(x))
    steps_per_epoch = len(x) // batch_size
    init_rng, order_rng = jax.random.split(jax.random.key(seed))
    params = module.init(init_rng, jnp.zeros(x.shape[1:], jnp.float32))
    tx = optax.adam(learning_rate)

    def loss_fn(params, batch_x, batch_labels):
        _, logits = features_and_logits(module, params, batch_x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch_labels).mean()

    # Every epoch's order drawn once up front, as `train.make_train_chunk` draws its own.
    epochs = jnp.arange(-(-num_steps // steps_per_epoch))
    orders = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(order_rng, e), len(x)))(
        epochs
    )

    def step(carry, index):
        params, opt_state = carry
        epoch, position = jnp.divmod(index, steps_per_epoch)
        rows = jax.lax.dynamic_slice_in_dim(orders[epoch], position * batch_size, batch_size)
        loss, grads = jax.value_and_grad(loss_fn)(params, x_device[rows], labels_device[rows])
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    x_device, labels_device = jnp.asarray(x, jnp.float32), jnp.asarray(labels, jnp.int32)
    run = jax.jit(lambda carry: jax.lax.scan(step, carry, jnp.arange(num_steps)))
    (params, _), losses = run((params, tx.init(params)))
    if not np.isfinite(float(losses[-1])):
        raise FloatingPointError(f"the feature network's loss is {float(losses[-1])} at the end")
    return jax.device_get(params)


def _build(
    name, validation_fraction, seed, train_subset, data_dir, idx_dir, path: pathlib.Path
) -> None:
    start = time.perf_counter()
    train_x, train_labels, val_x, val_labels = training_split(
        name, validation_fraction, train_subset, data_dir, idx_dir
    )
    test_x = data.load_numpy(name, "test", data_dir=data_dir, idx_dir=idx_dir)
    test_labels = data.load_labels(name, "test", data_dir=data_dir, idx_dir=idx_dir)
    module = Classifier(HIDDEN_SIZES, int(train_labels.max()) + 1)
    params = train_classifier(module, train_x, train_labels, seed=seed)

    def accuracy(x, labels):
        if not len(x):
            return None
        logits = _jit_features_and_logits(module, params, jnp.asarray(x))[1]
        return float(np.mean(np.argmax(np.asarray(logits), axis=-1) == labels))

    info = {
        "dataset": name,
        "validation_fraction": float(validation_fraction),
        "seed": int(seed),
        "train_subset": train_subset,
        "version": VERSION,
        "hidden_sizes": list(HIDDEN_SIZES),
        "num_classes": module.num_classes,
        "event_shape": list(train_x.shape[1:]),
        "num_steps": NUM_STEPS,
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "num_train": len(train_x),
        "num_validation": len(val_x),
        "num_test": len(test_x),
        "train_accuracy": accuracy(train_x, train_labels),
        "val_accuracy": accuracy(val_x, val_labels),
        "test_accuracy": accuracy(test_x, test_labels),
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    # Written beside the final directory and renamed into place: a reader never sees half a
    # cache, and of two processes building at once the first rename wins.
    staging = path.with_name(f"{path.name}.incomplete-{os.getpid()}-{time.time_ns()}")
    staging.mkdir(parents=True)
    flat = traverse_util.flatten_dict(params, sep="/")
    np.savez(staging / "params.npz", **{k: np.asarray(v) for k, v in flat.items()})
    (staging / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    try:
        os.rename(staging, path)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not path.exists():
            raise


def _load(name: str, path: pathlib.Path) -> FeatureNet:
    info = json.loads((path / "info.json").read_text())
    with np.load(path / "params.npz") as stored:
        params = traverse_util.unflatten_dict({k: stored[k] for k in stored.files}, sep="/")
    module = Classifier(tuple(info["hidden_sizes"]), int(info["num_classes"]))
    return FeatureNet(
        name=name,
        module=module,
        params=jax.tree.map(jnp.asarray, params),
        event_shape=tuple(info["event_shape"]),
        test_accuracy=float(info["test_accuracy"]),
        val_accuracy=info["val_accuracy"],
        path=path,
        info=info,
    )

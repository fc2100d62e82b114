"""Tests for vae_jax.features: the feature network trains on exactly the VAE's training rows, is
deterministic, is cached beside the data and records accuracies that can be recomputed."""

import json
import shutil

import jax
import numpy as np
import pytest
from conftest import tiny_config
from test_idx import make_dataset  # real IDX files, written by the test

from vae_jax import data, experiment, features


@pytest.fixture(scope="module")
def digits_net(data_dir) -> features.FeatureNet:
    """The digits feature network in the session's data directory (built once, ~5 s)."""
    return features.feature_network("digits", validation_fraction=0.1, data_dir=data_dir)


@pytest.mark.parametrize("subset", [None, 600])
def test_training_split_is_the_vae_training_split(data_dir, subset):
    fields = {"data.validation_fraction": 0.2} | ({"data.train_subset": subset} if subset else {})
    problem = experiment.build_problem(tiny_config(fields))
    train_x, train_labels, val_x, val_labels = features.training_split(
        "digits", 0.2, subset, data_dir
    )
    np.testing.assert_array_equal(train_x, problem.train_x)
    np.testing.assert_array_equal(val_x, problem.val_x)
    # Labels travel with their images: each image's label is the one load_labels gives it.
    all_x = data.load_numpy("digits", "train", data_dir=data_dir)
    all_labels = data.load_labels("digits", "train", data_dir=data_dir)
    lookup = {all_x[i].tobytes(): all_labels[i] for i in range(len(all_x))}
    assert [lookup[x.tobytes()] for x in val_x] == list(val_labels)
    assert [lookup[x.tobytes()] for x in train_x[:50]] == list(train_labels[:50])
    # No validation image among the training images.
    train_rows = {x.tobytes() for x in train_x}
    assert not any(x.tobytes() in train_rows for x in val_x)


def test_fashion_mnist_feature_network_trains_on_its_training_split_only(tmp_path, monkeypatch):
    """From IDX files (here 40 + 12 written by the test; Debian's 60,000 + 10,000 in use): the
    classifier sees exactly the VAE's training rows, and is cached in the data dir."""
    monkeypatch.delenv("VAE_JAX_FASHION_MNIST_DIR", raising=False)
    make_dataset(tmp_path / "fashion")
    data_dir = tmp_path / "data"
    trained_on = []

    def few_steps(module, x, labels, *, seed):
        trained_on.append((x, labels))
        return real_train(module, x, labels, seed=seed, num_steps=5)

    real_train = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", few_steps)
    net = features.feature_network(
        "fashion_mnist", validation_fraction=0.1, data_dir=data_dir, idx_dir=tmp_path / "fashion"
    )
    # The rows experiment.build_problem trains the VAE on (tests/test_idx.py checks it does).
    monkeypatch.setenv("VAE_JAX_FASHION_MNIST_DIR", str(tmp_path / "fashion"))
    all_x = data.load_numpy("fashion_mnist", "train")
    all_labels = data.load_labels("fashion_mnist", "train")
    [(x, labels)] = trained_on
    np.testing.assert_array_equal(x, data.split_validation(all_x, 0.1)[0])
    np.testing.assert_array_equal(labels, data.split_validation(all_labels, 0.1)[0])
    assert net.path.parent == data_dir / "feature_nets"
    assert (net.info["num_train"], net.info["num_validation"], net.info["num_test"]) == (36, 4, 12)
    assert net.event_shape == (28, 28, 1) and net.module.num_classes == int(all_labels.max()) + 1


@pytest.mark.slow  # the default suite keeps a faster test of the same code
def test_feature_network_is_accurate_and_its_recorded_accuracies_recompute(digits_net, data_dir):
    test_x = data.load_numpy("digits", "test", data_dir=data_dir)
    test_labels = data.load_labels("digits", "test", data_dir=data_dir)
    _, _, val_x, val_labels = features.training_split("digits", 0.1, None, data_dir)
    assert digits_net.test_accuracy > 0.9
    assert digits_net.test_accuracy == pytest.approx(
        np.mean(digits_net.predict(test_x) == test_labels)
    )
    assert digits_net.val_accuracy == pytest.approx(
        np.mean(digits_net.predict(val_x) == val_labels)
    )
    phi = digits_net.features(test_x)
    assert phi.shape == (len(test_x), features.HIDDEN_SIZES[-1])
    assert np.all(np.isfinite(phi)) and np.std(phi, axis=0).max() > 0
    info = json.loads((digits_net.path / "info.json").read_text())
    assert info["num_train"] == 1293 and info["num_validation"] == 144  # 1437 train less 10%
    assert info["test_accuracy"] == digits_net.test_accuracy
    with pytest.raises(ValueError, match="8, 8, 1"):
        digits_net.features(np.zeros((2, 28, 28, 1), np.float32))


@pytest.mark.slow  # the default suite keeps a faster test of the same code
def test_feature_network_is_cached_and_reloaded_without_training(digits_net, data_dir, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt a cached feature network")

    monkeypatch.setattr(features, "_build", no_build)
    again = features.feature_network("digits", validation_fraction=0.1, data_dir=data_dir)
    assert again.path == digits_net.path
    assert again.path.parent == data_dir / "feature_nets"
    jax.tree.map(np.testing.assert_array_equal, again.params, digits_net.params)
    # Another split rule or seed is another cache entry.
    paths = {
        features.cache_path("digits", 0.1, 0, None, data_dir),
        features.cache_path("digits", 0.2, 0, None, data_dir),
        features.cache_path("digits", 0.1, 1, None, data_dir),
        features.cache_path("digits", 0.1, 0, 600, data_dir),
        features.cache_path("mnist_5k", 0.1, 0, None, data_dir),
    }
    assert len(paths) == 5


@pytest.mark.slow  # the default suite keeps a faster test of the same code
def test_damaged_cache_is_built_again(digits_net, tmp_path, monkeypatch, capsys):
    copy = features.cache_path("digits", 0.1, 0, None, tmp_path)
    shutil.copytree(digits_net.path, copy)
    (copy / "params.npz").write_bytes(b"not an npz")
    built = []

    def rebuild(name, fraction, seed, subset, data_dir, idx_dir, path):
        built.append(path)
        shutil.copytree(digits_net.path, path)

    monkeypatch.setattr(features, "_build", rebuild)
    net = features.feature_network("digits", validation_fraction=0.1, data_dir=tmp_path)
    assert built == [copy]
    assert "could not be read" in capsys.readouterr().err
    jax.tree.map(np.testing.assert_array_equal, net.params, digits_net.params)


@pytest.mark.slow  # the default suite keeps a faster test of the same code
def test_training_is_deterministic_and_seeded(data_dir):
    x, labels, _, _ = features.training_split("digits", 0.1, None, data_dir)
    module = features.Classifier((32, 16), 10)
    first = features.train_classifier(module, x, labels, seed=0, num_steps=30)
    second = features.train_classifier(module, x, labels, seed=0, num_steps=30)
    other = features.train_classifier(module, x, labels, seed=1, num_steps=30)
    jax.tree.map(np.testing.assert_array_equal, first, second)
    kernel = ("params", "dense0", "kernel")
    assert not np.array_equal(
        first[kernel[0]][kernel[1]][kernel[2]], other[kernel[0]][kernel[1]][kernel[2]]
    )


def test_datasets_without_labels_are_refused(data_dir):
    with pytest.raises(data.DataError, match="ppca_synthetic"):
        features.feature_network("ppca_synthetic", validation_fraction=0.1, data_dir=data_dir)


@pytest.mark.slow
def test_mnist_5k_feature_network(data_dir):
    net = features.feature_network("mnist_5k", validation_fraction=0.1, data_dir=data_dir)
    assert net.test_accuracy > 0.9 and net.val_accuracy > 0.88
    assert net.info["num_train"] == 3600 and net.info["build_seconds"] < 60

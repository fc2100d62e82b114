"""Catalog datasets (mnist, fashion_mnist, cifar10, binarized_mnist) end to end, on data made here.

No network: each dataset is made up here, put into a data dir through the catalog dataset's own
TFDS builder (its features, version, directory layout, ArrayRecord writer) and read back by the
real `vae_jax.data` path (`as_data_source`, PNGs decoded by PIL). Two ways in:
- "pil" (default suite, no TensorFlow): the builder's generator yields the images as PNG bytes that
  PIL encoded;
- "tensorflow" (slow, needs the `[catalog]` extra): `catalog.prepare` runs the builder's own
  code on files in the upstream formats (MNIST idx, CIFAR-10 binary batches, binarized-MNIST
  .amat) handed over by a download manager that downloads nothing; TensorFlow reads them and
  encodes the PNGs, as `experiments/prepare_data.py` does on a machine with network.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import inspect
import io
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import REPO, tiny_config
from etils import epath
from PIL import Image

from vae_jax import catalog, data, experiment, objective, pixels, train

SHAPES = {
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "binarized_mnist": (28, 28, 1),
}
# binarized_mnist ships a validation split of its own; the others have train and test only.
SPLIT_SIZES = {"train": 60, "test": 20}
BINARIZED_SPLIT_SIZES = {"train": 60, "validation": 10, "test": 20}
ROUTES = ("pil", pytest.param("tensorflow", marks=pytest.mark.slow))


def make_fake(name: str) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """split -> (uint8 images [N, H, W, C] uniform over the levels, int64 labels [N] or None)."""
    rng = np.random.default_rng(data.CATALOG.index(name))
    sizes = BINARIZED_SPLIT_SIZES if name == "binarized_mnist" else SPLIT_SIZES
    levels = 2 if name == "binarized_mnist" else 256
    fake = {}
    for split, size in sizes.items():
        images = rng.integers(0, levels, (size, *SHAPES[name]), dtype=np.uint8)
        labels = None if name == "binarized_mnist" else rng.integers(0, 10, size)
        fake[split] = (images, labels)
    return fake


# ------------------------------------------------------------------ the two ways to prepare


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="png")
    return buffer.getvalue()


def prepare_with_pil(name: str, data_dir: pathlib.Path, fake: dict) -> None:
    builder = tfds.builder(name, data_dir=os.fspath(data_dir), try_gcs=False)
    cls = type(builder)

    def examples(split):
        images, labels = fake[split]
        for i, image in enumerate(images):
            example = {"image": _png(image)}
            if labels is not None:
                example["label"] = int(labels[i])
            if name == "cifar10":
                example["id"] = f"{split}_{i:05d}"
            yield i, example

    # tfds locates a builder's checksums file through importlib_resources, which only the
    # [catalog] extra installs; this is the path it would find. (Set and deleted by hand:
    # monkeypatch would read the inherited classproperty first, which is what fails.)
    assert "code_path" not in vars(cls)
    cls.code_path = epath.Path(inspect.getfile(cls))
    try:
        builder._split_generators = lambda dl_manager: {s: examples(s) for s in fake}
        builder.download_and_prepare(file_format="array_record")
    finally:
        del cls.code_path


def write_upstream(name: str, fake: dict, directory: pathlib.Path) -> dict[str, pathlib.Path]:
    """The files the dataset's builder downloads, in their own formats: URL basename -> path."""
    directory.mkdir(parents=True)
    files = {}
    if name in ("mnist", "fashion_mnist"):  # idx files, as the download manager extracts them
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images, labels = fake[split]
            header = np.array([2051, len(images), 28, 28], ">u4").tobytes()
            files[f"{prefix}-images-idx3-ubyte.gz"] = directory / f"{prefix}-images"
            files[f"{prefix}-images-idx3-ubyte.gz"].write_bytes(header + images.tobytes())
            header = np.array([2049, len(labels)], ">u4").tobytes()
            labels = labels.astype(np.uint8)
            files[f"{prefix}-labels-idx1-ubyte.gz"] = directory / f"{prefix}-labels"
            files[f"{prefix}-labels-idx1-ubyte.gz"].write_bytes(header + labels.tobytes())
    elif name == "cifar10":  # the extracted tarball: label byte, then the R, G and B planes
        batches = directory / "cifar-10-batches-bin"
        batches.mkdir()
        (batches / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")

        def records(images, labels):
            planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
            return np.concatenate([labels.astype(np.uint8)[:, None], planes], axis=1).tobytes()

        images, labels = fake["train"]
        for i, part in enumerate(np.array_split(np.arange(len(images)), 5)):
            (batches / f"data_batch_{i + 1}.bin").write_bytes(records(images[part], labels[part]))
        (batches / "test_batch.bin").write_bytes(records(*fake["test"]))
        files["cifar-10-binary.tar.gz"] = directory
    else:  # binarized_mnist: one image per line, 784 space-separated 0/1
        for split, (images, _) in fake.items():
            path = directory / f"binarized_mnist_{'valid' if split == 'validation' else split}.amat"
            np.savetxt(path, images.reshape(len(images), -1), fmt="%d", delimiter=" ")
            files[path.name] = path
    return files


@contextlib.contextmanager
def upstream_downloads(name: str, fake: dict, directory: pathlib.Path):
    """The download manager hands the builder `fake` as its upstream files; nothing is fetched."""
    files = write_upstream(name, fake, directory)

    def download(self, url_or_urls):
        local = lambda url: files[url.rsplit("/", 1)[-1]]  # noqa: E731
        if isinstance(url_or_urls, dict):
            return {key: local(url) for key, url in url_or_urls.items()}
        return local(url_or_urls)

    with pytest.MonkeyPatch.context() as patch:
        for method in ("download", "download_and_extract"):
            patch.setattr(tfds.download.DownloadManager, method, download)
        if name in ("mnist", "fashion_mnist"):  # the builder reads exactly this many images
            mnist = importlib.import_module("tensorflow_datasets.image_classification.mnist")
            patch.setattr(mnist, "_TRAIN_EXAMPLES", len(fake["train"][0]))
            patch.setattr(mnist, "_TEST_EXAMPLES", len(fake["test"][0]))
        yield


def prepare_with_tensorflow(name: str, data_dir: pathlib.Path, fake: dict) -> None:
    with upstream_downloads(name, fake, data_dir.parent / f"{data_dir.name}_downloads" / name):
        catalog.prepare(name, data_dir)


PREPARE = {"pil": prepare_with_pil, "tensorflow": prepare_with_tensorflow}


@pytest.fixture(scope="module", params=ROUTES)
def route(request) -> str:
    if request.param == "tensorflow":
        pytest.importorskip("tensorflow", reason='needs the extra: pip install -e ".[catalog]"')
    return request.param


@pytest.fixture(scope="module")
def prepared(route, tmp_path_factory) -> dict[str, pathlib.Path]:
    """Every catalog dataset prepared twice, into two independent data dirs."""
    dirs = {}
    for copy in ("a", "b"):
        data_dir = tmp_path_factory.mktemp(f"catalog_{route}_{copy}")
        for name in data.CATALOG:
            PREPARE[route](name, data_dir, make_fake(name))
        dirs[copy] = data_dir
    return dirs


@pytest.fixture(autouse=True)
def no_idx_directories(monkeypatch):
    """These tests read TFDS's copies: no IDX directory variable of the user's comes first."""
    for variable in data.IDX_DIR_VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)


@contextlib.contextmanager
def data_dir_env(path: pathlib.Path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAE_JAX_DATA_DIR", os.fspath(path))
        yield


# ------------------------------------------------------------------ what a model sees


def _sorted_examples(images: np.ndarray, labels: np.ndarray | None) -> list:
    labels = [None] * len(images) if labels is None else labels.tolist()
    return sorted((image.tobytes(), label) for image, label in zip(images, labels, strict=True))


@pytest.mark.parametrize("name", data.CATALOG)
def test_images_and_labels_read_back_exactly_as_written(prepared, name):
    fake = make_fake(name)
    builder = tfds.builder(name, data_dir=os.fspath(prepared["a"]), try_gcs=False)
    assert set(builder.info.splits) == set(fake)
    assert "array_record" in {f.value for f in builder.info.available_file_formats()}
    for split, (images, labels) in fake.items():
        x = data.load_numpy(name, split, data_dir=prepared["a"])
        assert x.shape == images.shape and x.dtype == np.float32
        assert x.min() == 0.0 and x.max() == 1.0
        if name == "binarized_mnist":
            assert pixels.is_binary(x)
            k = x.astype(np.uint8)
            with pytest.raises(data.DataError, match="has no labels"):
                data.load_labels(name, split, data_dir=prepared["a"])
            got_labels = None
        else:
            # Pixels are the float32 nearest to k/255, so that round(x·255) gives back k.
            k = np.round(x.astype(np.float64) * 255).astype(np.uint8)
            np.testing.assert_array_equal(x, (k / 255.0).astype(np.float32))
            got_labels = data.load_labels(name, split, data_dir=prepared["a"])
            assert got_labels.dtype == np.int64 and got_labels.shape == (len(x),)
        # TFDS stores examples in an order of its own: compare (image, label) pairs as multisets.
        assert _sorted_examples(k, got_labels) == _sorted_examples(images, labels)


@pytest.mark.parametrize("name", data.CATALOG)
def test_validation_is_carved_from_train_and_test_is_kept(prepared, name):
    train_split = data.load_numpy(name, "train", data_dir=prepared["a"])
    test_split = data.load_numpy(name, "test", data_dir=prepared["a"])
    # binarized_mnist is binary already: a Bernoulli decoder takes it as it is.
    likelihood = "bernoulli" if name == "binarized_mnist" else "gaussian"
    config = tiny_config(data__name=name, likelihood__name=likelihood, data__binarize="none")
    with data_dir_env(prepared["a"]):
        problem = experiment.build_problem(config)
    num_validation = round(config.data.validation_fraction * len(train_split))
    assert problem.val_x.shape == (num_validation, *SHAPES[name])
    assert problem.train_x.shape == (len(train_split) - num_validation, *SHAPES[name])
    rows = lambda x: sorted(r.tobytes() for r in x)  # noqa: E731
    assert rows(np.concatenate([problem.train_x, problem.val_x])) == rows(train_split)
    assert not set(rows(problem.train_x)) & set(rows(problem.val_x))
    np.testing.assert_array_equal(problem.test_x, test_split)
    assert problem.transform == ("none" if name == "binarized_mnist" else "dequantize")


@pytest.mark.parametrize("name", data.CATALOG)
def test_independent_preparations_load_the_same_arrays(prepared, name):
    """What a step's batch is drawn from does not depend on which preparation was read."""
    config = tiny_config(data__name=name)
    splits = []
    for copy in ("a", "b"):
        with data_dir_env(prepared[copy]):
            problem = experiment.build_problem(config)
        splits.append((problem.train_x, problem.val_x, problem.test_x))
    for first, second in zip(*splits, strict=True):
        np.testing.assert_array_equal(first, second)


@pytest.mark.slow  # a compile per dataset: about 3 s on 2 idle cores, 30 s on busy ones
@pytest.mark.parametrize("name", data.CATALOG)
def test_each_steps_batch_is_a_pure_function_of_seed_and_step(prepared, name):
    """The on-device loop, fed from two independent preparations, one run straight and one
    handed through host memory between its chunks (as a checkpoint resume does), trains to the
    same bits step by step; another seed does not."""
    config = tiny_config(data__name=name, model__kind="linear", model__latent_dim=2)
    problems = []
    for copy in ("a", "b"):
        with data_dir_env(prepared[copy]):
            problems.append(experiment.build_problem(config))
    # One compiled chunk for all three runs: the training data is its argument.
    chunk = jax.jit(train.make_train_chunk(problems[0], 2))
    tx = train.make_optimizer(config)

    def run(train_x, seed, *, through_host):
        state = train.create_train_state(problems[0], tx, jax.random.key(seed))
        rng = jax.random.fold_in(jax.random.key(seed), 1)
        elbos = []
        for _ in range(2):
            state, step_metrics = chunk(state, train_x, objective.make_hyper(0.1, 1.0), rng)
            elbos.append(step_metrics["elbo"])
            if through_host:
                state = jax.device_put(jax.device_get(state))
        return jax.device_get(state.params), np.concatenate(elbos)

    params, elbos = run(problems[0].train_x, 0, through_host=False)
    params_again, elbos_again = run(problems[1].train_x, 0, through_host=True)
    assert elbos.shape == (4,)
    np.testing.assert_array_equal(elbos, elbos_again)
    jax.tree.map(np.testing.assert_array_equal, params, params_again)
    _, other_elbos = run(problems[0].train_x, 1, through_host=False)
    assert not np.array_equal(elbos, other_elbos)


@pytest.mark.parametrize("route", ["pil"], indirect=True)
@pytest.mark.parametrize("name", data.IDX_DATASETS)
def test_a_prepared_tfds_copy_comes_before_debians_directory(prepared, name, tmp_path, monkeypatch):
    """mnist and fashion_mnist: TFDS's copy prepared in the data dir is read before the IDX files
    of the Debian directory; a directory the user names comes before both."""
    fake = make_fake(name)
    inverted = {split: (255 - images, labels) for split, (images, labels) in fake.items()}
    idx_dir = tmp_path / "idx"
    for url_name, path in write_upstream(name, inverted, idx_dir).items():
        path.rename(idx_dir / url_name.removesuffix(".gz"))  # the files as Debian installs them
    monkeypatch.setattr(data, "SYSTEM_IDX_DIRS", {name: os.fspath(idx_dir)})

    def read(data_dir, **kwargs):
        x = data.load_numpy(name, "train", data_dir=data_dir, **kwargs)
        labels = data.load_labels(name, "train", data_dir=data_dir, **kwargs)
        return _sorted_examples(np.round(x * 255).astype(np.uint8), labels)

    assert read(prepared["a"]) == _sorted_examples(*fake["train"])
    assert read(prepared["a"], idx_dir=idx_dir) == _sorted_examples(*inverted["train"])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert read(empty) == _sorted_examples(*inverted["train"])


# ------------------------------------------------------------------ preparing, and its errors


@pytest.mark.slow
@pytest.mark.parametrize("route", ["tensorflow"], indirect=True)
def test_reading_a_prepared_catalog_dataset_never_imports_tensorflow(prepared):
    code = textwrap.dedent(f"""
      import sys
      from vae_jax import data
      for name in data.CATALOG:
          data.load_numpy(name, 'train', data_dir={os.fspath(prepared["a"])!r})
      assert 'tensorflow' not in sys.modules, 'tensorflow was imported'
  """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("route", ["tensorflow"], indirect=True)
def test_preparing_again_changes_nothing(prepared):
    files = {p: p.stat().st_mtime_ns for p in prepared["a"].rglob("*") if p.is_file()}
    for name in data.CATALOG:  # no download manager is patched: a download would fail here
        catalog.prepare(name, prepared["a"])
    assert {p: p.stat().st_mtime_ns for p in prepared["a"].rglob("*") if p.is_file()} == files


@pytest.mark.slow
def test_a_copy_tfds_load_left_as_tfrecord_is_refused_with_what_to_do(tmp_path):
    pytest.importorskip("tensorflow", reason='needs the extra: pip install -e ".[catalog]"')
    data_dir = tmp_path / "data"
    with upstream_downloads("mnist", make_fake("mnist"), tmp_path / "downloads"):
        builder = tfds.builder("mnist", data_dir=os.fspath(data_dir), try_gcs=False)
        builder.download_and_prepare(file_format="tfrecord")  # what tfds.load does
    with pytest.raises(data.DataError, match="as tfrecord, which has no random access") as error:
        data.load_numpy("mnist", "train", data_dir=data_dir)
    message = str(error.value)
    assert "stored as tfrecord, which has no random access" in message and "\n" not in message
    assert "prepare_data.py --name=mnist --data_dir=NEW_DIR" in message
    with pytest.raises(data.DataError, match="holds data.name='mnist' as tfrecord"):
        catalog.prepare("mnist", data_dir)


class HideTensorflow:
    """A meta-path finder that makes `import tensorflow` fail as if it were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


WITHOUT_EXTRA = (
    "preparing data.name='{}' needs tensorflow, which the catalog extra installs: "
    'pip install -e ".[catalog]"'
)


def test_preparing_without_the_extra_names_it(tmp_path, monkeypatch):
    for module in [m for m in sys.modules if m.partition(".")[0] == "tensorflow"]:
        monkeypatch.delitem(sys.modules, module)  # imported by the slow tests' preparation
    monkeypatch.setattr(sys, "meta_path", [HideTensorflow(), *sys.meta_path])
    with pytest.raises(data.DataError, match="'cifar10' needs tensorflow, which") as error:
        catalog.prepare("cifar10", tmp_path)
    assert str(error.value) == WITHOUT_EXTRA.format("cifar10")
    with pytest.raises(data.DataError, match="data.name='mnist_5k' is not a catalog dataset"):
        catalog.prepare("mnist_5k", tmp_path)
    assert not any(tmp_path.iterdir())


def test_prepare_cli_without_the_extra_is_one_line_exit_2(tmp_path):
    # `python experiments/prepare_data.py --name=mnist`, with TensorFlow hidden as above.
    script = REPO / "experiments" / "prepare_data.py"
    code = inspect.getsource(HideTensorflow) + textwrap.dedent(f"""
      import runpy, sys
      sys.meta_path.insert(0, HideTensorflow())
      sys.argv = [{os.fspath(script)!r}, '--name=mnist', '--data_dir={tmp_path}']
      runpy.run_path({os.fspath(script)!r}, run_name='__main__')
  """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == ["error: " + WITHOUT_EXTRA.format("mnist")]
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("route", ["pil"], indirect=True)
def test_cifar10_sigma_sweep_quick_runs_on_the_made_up_cifar10(prepared, tmp_path):
    """The config's own smoke command, on the 60 + 20 images made here instead of CIFAR-10."""
    result = subprocess.run(
        [
            sys.executable,
            "experiments/run.py",
            "--config=experiments/configs/cifar10_sigma_sweep.py:quick",
            f"--workdir={tmp_path / 'sweep'}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "VAE_JAX_DATA_DIR": os.fspath(prepared["a"])},
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "sweep" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    # σ = 0.1 and 1, summed MSE + KL's √½ and mean-over-pixels MSE + KL's √(32·32·3/2); one learned.
    sigmas = sorted(float(r["sigma"]) for r in rows if r["group"] == "gaussian")
    np.testing.assert_allclose(sigmas, [0.1, 0.5**0.5, 1.0, (32 * 32 * 3 / 2) ** 0.5], rtol=1e-5)
    assert [r["group"] for r in rows].count("gaussian_learned") == 1
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    assert all(np.isfinite(float(r["test/iwae_nll"])) for r in rows)
    assert (tmp_path / "sweep" / "report.md").exists()
    assert list((tmp_path / "sweep").rglob("events.out.tfevents.*"))  # TensorBoard, per group

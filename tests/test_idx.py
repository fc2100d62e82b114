"""Tests for vae_jax.idx and the IDX route of vae_jax.data (mnist, fashion_mnist without TFDS).

The default suite writes real IDX files here — a header packed with `struct` from the format's
definition, gzip-compressed or not — and reads them back through the library; the slow tests
read Debian's `dataset-fashion-mnist` files (`.ci/run` installs the package before them).
"""

import gzip
import hashlib
import json
import os
import pathlib
import struct

import numpy as np
import pytest
from conftest import assert_one_line_error, cli_env, config_flags, run_cli, tiny_config

from vae_jax import data, experiment, figure_data, idx, sample_quality, spec, workdir

NAMES = {  # the four files: (split, images?) -> stem
    ("train", True): "train-images-idx3-ubyte",
    ("train", False): "train-labels-idx1-ubyte",
    ("test", True): "t10k-images-idx3-ubyte",
    ("test", False): "t10k-labels-idx1-ubyte",
}
SIZES = {"train": 40, "test": 12}  # 40 training images: 36 train + 4 validation at 0.1


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: 0, 0, 0x08, ndim; ndim big-endian uint32; the bytes."""
    assert array.dtype == np.uint8
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.tobytes()


def write_file(directory: pathlib.Path, stem: str, payload: bytes, *, gz: bool) -> pathlib.Path:
    path = directory / (f"{stem}.gz" if gz else stem)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def make_dataset(directory: pathlib.Path, *, seed: int = 0, gz_test: bool = True) -> dict:
    """Four IDX files in `directory` (train plain, test gzipped unless told); returns split ->
    (images uint8 [N, 28, 28], labels uint8 [N])."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    made = {}
    for split, size in SIZES.items():
        images = rng.integers(0, 256, (size, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the grid
        labels = rng.integers(0, 10, size).astype(np.uint8)
        gz = split == "test" and gz_test
        write_file(directory, NAMES[split, True], idx_bytes(images), gz=gz)
        write_file(directory, NAMES[split, False], idx_bytes(labels), gz=gz)
        made[split] = (images, labels)
    return made


@pytest.fixture
def no_idx_env(monkeypatch, tmp_path):
    """No IDX directory variable set, an empty data dir, and no Debian directory."""
    for variable in data.IDX_DIR_VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(data, "SYSTEM_IDX_DIRS", {"fashion_mnist": str(tmp_path / "no_debian")})
    empty = tmp_path / "empty_data"
    empty.mkdir()
    return empty


# ------------------------------------------------------------------ the format


@pytest.mark.parametrize("gz", [False, True])
def test_files_read_back_exactly_as_written(tmp_path, gz):
    images = np.random.default_rng(1).integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = np.arange(12, dtype=np.uint8) % 10
    image_path = write_file(tmp_path, "train-images-idx3-ubyte", idx_bytes(images), gz=gz)
    label_path = write_file(tmp_path, "train-labels-idx1-ubyte", idx_bytes(labels), gz=gz)
    assert idx.read_shape(image_path, 3) == (12, 28, 28)
    assert idx.read_shape(label_path, 1) == (12,)
    np.testing.assert_array_equal(idx.read(image_path, 3), images)
    np.testing.assert_array_equal(idx.read(label_path, 1), labels)
    assert idx.find(tmp_path, "train-images-idx3-ubyte") == image_path
    assert idx.missing(tmp_path) == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def test_a_plain_file_is_preferred_to_its_gz_twin(tmp_path):
    stem = "t10k-labels-idx1-ubyte"
    write_file(tmp_path, stem, idx_bytes(np.zeros(3, np.uint8)), gz=False)
    write_file(tmp_path, stem, idx_bytes(np.ones(5, np.uint8)), gz=True)
    assert idx.find(tmp_path, stem) == tmp_path / stem


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (  # an images file where a labels file belongs: 3 dimensions, not 1
            idx_bytes(np.zeros((2, 28, 28), np.uint8)),
            r"^\S+ is not an IDX file of 1-dimensional unsigned bytes: its magic number is "
            r"00000803, expected 00000801$",
        ),
        (  # int32 values (type code 0x0C)
            struct.pack(">BBBBI", 0, 0, 0x0C, 1, 2) + bytes(8),
            "magic number is 00000c01, expected 00000801$",
        ),
        (b"", "magic number is missing, expected 00000801$"),
        (struct.pack(">BBBB", 0, 0, 8, 1) + b"\x00\x00", "is truncated inside its IDX header$"),
        (
            idx_bytes(np.zeros(5, np.uint8))[:-2],
            r"holds 3 bytes of data where its header \(5\) states 5$",
        ),
        (idx_bytes(np.zeros(5, np.uint8)) + b"\x07", "holds 6 bytes of data"),
    ],
    ids=["images_as_labels", "int32", "empty", "short_header", "truncated", "trailing_byte"],
)
def test_a_bad_file_is_one_line_naming_it(tmp_path, payload, message):
    path = write_file(tmp_path, "train-labels-idx1-ubyte", payload, gz=False)
    with pytest.raises(data.DataError, match=message) as raised:
        idx.read(path, 1)
    assert "\n" not in str(raised.value) and str(raised.value).startswith(str(path))


def test_a_broken_gzip_file_is_one_line_naming_it(tmp_path):
    truncated = tmp_path / "train-labels-idx1-ubyte.gz"
    truncated.write_bytes(gzip.compress(idx_bytes(np.zeros(50, np.uint8)))[:-12])
    not_gzip = tmp_path / "t10k-labels-idx1-ubyte.gz"
    not_gzip.write_bytes(b"not gzip at all")
    for path, read in ((truncated, idx.read), (not_gzip, idx.read_shape)):
        with pytest.raises(data.DataError, match=r"is not a readable gzip file \(") as raised:
            read(path, 1)
        assert "\n" not in str(raised.value) and str(raised.value).startswith(str(path))


# ------------------------------------------------------------------ through vae_jax.data


def test_load_numpy_labels_sizes_and_shape_from_a_named_directory(tmp_path, no_idx_env):
    made = make_dataset(tmp_path / "fashion")
    for split, (images, labels) in made.items():
        x = data.load_numpy(
            "fashion_mnist", split, data_dir=no_idx_env, idx_dir=tmp_path / "fashion"
        )
        assert x.shape == (SIZES[split], 28, 28, 1) and x.dtype == np.float32
        # The float32 nearest to k/255, as the TFDS route gives (mnist_5k's grid).
        np.testing.assert_array_equal(x[..., 0], (images / 255.0).astype(np.float32))
        got = data.load_labels(
            "fashion_mnist", split, data_dir=no_idx_env, idx_dir=tmp_path / "fashion"
        )
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, labels)
        assert (
            data.num_examples(
                "fashion_mnist", split, data_dir=no_idx_env, idx_dir=tmp_path / "fashion"
            )
            == SIZES[split]
        )
    assert data.event_shape("fashion_mnist") == (28, 28, 1)
    with pytest.raises(data.DataError, match="split='validation' is not a split of fashion_mnist"):
        data.num_examples("fashion_mnist", "validation", idx_dir=tmp_path / "fashion")


def test_the_order_of_places_a_dataset_is_looked_for(tmp_path, no_idx_env, monkeypatch):
    named, variable, debian = (tmp_path / n for n in ("named", "variable", "debian"))
    firsts = {}
    for seed, directory in enumerate((named, variable, debian)):
        firsts[directory] = make_dataset(directory, seed=seed)["train"][1]
    monkeypatch.setattr(data, "SYSTEM_IDX_DIRS", {"fashion_mnist": str(debian)})

    def labels(**kwargs):
        return data.load_labels("fashion_mnist", "train", data_dir=no_idx_env, **kwargs)

    np.testing.assert_array_equal(labels(), firsts[debian])
    monkeypatch.setenv("VAE_JAX_FASHION_MNIST_DIR", str(variable))
    np.testing.assert_array_equal(labels(), firsts[variable])
    np.testing.assert_array_equal(labels(idx_dir=named), firsts[named])
    # mnist has a variable of its own and no Debian package.
    with pytest.raises(data.DataError, match="data.name='mnist' needs its four IDX files"):
        data.load_labels("mnist", "train", data_dir=no_idx_env)
    monkeypatch.setenv("VAE_JAX_MNIST_DIR", str(debian))
    np.testing.assert_array_equal(data.load_labels("mnist", "train"), firsts[debian])


def test_files_found_nowhere_is_one_line_naming_each_way_to_get_them(no_idx_env):
    with pytest.raises(data.DataError, match="needs its four IDX files") as raised:
        data.num_examples("fashion_mnist", "train", data_dir=no_idx_env)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("data.name='fashion_mnist' needs its four IDX files (")
    for way in (
        "sudo apt-get install dataset-fashion-mnist",
        f"which puts them in {data.SYSTEM_IDX_DIRS['fashion_mnist']}",  # this test's stand-in
        "--config.data.idx_dir=DIR or $VAE_JAX_FASHION_MNIST_DIR=DIR",
        f"prepare_data.py --name=fashion_mnist --data_dir={no_idx_env}",
    ):
        assert way in message


def test_a_named_directory_must_hold_all_four_files(tmp_path, no_idx_env, monkeypatch):
    make_dataset(tmp_path / "partial")
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataError, match=r"^data.idx_dir=\S+partial has no t10k-labels-idx1"):
        data.load_numpy("fashion_mnist", "train", idx_dir=tmp_path / "partial")
    monkeypatch.setenv("VAE_JAX_MNIST_DIR", str(tmp_path / "partial"))
    with pytest.raises(data.DataError, match=r"^\$VAE_JAX_MNIST_DIR=\S+ has no t10k-labels"):
        data.load_numpy("mnist", "train")
    with pytest.raises(data.DataError, match="data.idx_dir is read for mnist, fashion_mnist only"):
        data.load_numpy("digits", "train", idx_dir=tmp_path / "partial")


def test_files_that_do_not_fit_the_dataset_are_refused(tmp_path, no_idx_env):
    make_dataset(tmp_path / "d")
    write_file(tmp_path / "d", NAMES["train", False], idx_bytes(np.zeros(39, np.uint8)), gz=False)
    with pytest.raises(data.DataError, match="holds 40 images but .* 39 labels$"):
        data.load_numpy("fashion_mnist", "train", idx_dir=tmp_path / "d")
    write_file(
        tmp_path / "d", NAMES["train", False], idx_bytes(np.full(40, 10, np.uint8)), gz=False
    )
    with pytest.raises(data.DataError, match=r"labels in \S+ reach 10; its classes are 0..9$"):
        data.load_labels("fashion_mnist", "train", idx_dir=tmp_path / "d")
    small = np.zeros((40, 8, 8), np.uint8)
    write_file(tmp_path / "d", NAMES["train", True], idx_bytes(small), gz=False)
    with pytest.raises(data.DataError, match=r"images in \S+ are 8x8, not 28x28$"):
        data.load_numpy("fashion_mnist", "train", idx_dir=tmp_path / "d")


def test_a_run_splits_the_idx_training_images_by_the_projects_rule(
    tmp_path, no_idx_env, monkeypatch
):
    made = make_dataset(tmp_path / "fashion")
    monkeypatch.setenv("VAE_JAX_FASHION_MNIST_DIR", str(tmp_path / "fashion"))
    config = tiny_config(data__name="fashion_mnist")
    problem = experiment.build_problem(config)
    train_x = data.load_numpy("fashion_mnist", "train")
    expected_train, expected_val = data.split_validation(train_x, config.data.validation_fraction)
    assert problem.val_x.shape == (4, 28, 28, 1) and problem.train_x.shape == (36, 28, 28, 1)
    np.testing.assert_array_equal(problem.train_x, expected_train)
    np.testing.assert_array_equal(problem.val_x, expected_val)
    np.testing.assert_array_equal(problem.test_x[..., 0], made["test"][0] / np.float32(255))
    assert problem.transform == "dequantize"


def test_the_config_field_is_what_a_run_its_figures_and_sample_quality_read(tmp_path, no_idx_env):
    """--config.data.idx_dir reaches every reader (no variable set, no Debian directory): the
    problem's splits, the figures' data and the feature network's training split."""
    made = make_dataset(tmp_path / "named")
    config = tiny_config(data__name="fashion_mnist", data__idx_dir=str(tmp_path / "named"))
    problem = experiment.build_problem(config)
    np.testing.assert_array_equal(problem.test_x[..., 0], made["test"][0] / np.float32(255))
    assert problem.train_x.shape[0] + problem.val_x.shape[0] == len(made["train"][0])
    figures = figure_data.from_config(json.loads(workdir.config_to_json(spec.parse(config))))
    assert int(figures["num_train"]) == problem.train_x.shape[0]
    config.eval.sample_quality = True
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sample_quality.features, "feature_network", _no_network)
        with pytest.raises(_Built, match="feature network for fashion_mnist"):
            sample_quality.for_sweep(spec.parse(config))


class _Built(Exception):
    pass


def _no_network(name, **kwargs):
    assert kwargs["idx_dir"] is not None, "for_sweep must hand the network data.idx_dir"
    raise _Built(f"feature network for {name}")


def test_the_config_field_is_checked(tmp_path, no_idx_env):
    with pytest.raises(spec.ConfigError, match="data.idx_dir is read for data.name mnist or"):
        spec.parse(tiny_config(data__idx_dir=str(tmp_path)))
    with pytest.raises(spec.ConfigError, match="data.idx_dir=3 must be a directory's path"):
        spec.parse(tiny_config(data__name="mnist", data__idx_dir=3))
    make_dataset(tmp_path / "mnist")
    parsed = spec.parse(tiny_config(data__name="mnist", data__idx_dir=str(tmp_path / "mnist")))
    spec.check_data(parsed)  # 40 training images: enough for the tiny config's batch of 16
    assert parsed.data.idx_dir == str(tmp_path / "mnist")


# ------------------------------------------------------------------ the command line


@pytest.mark.slow  # the CLI twin of test_files_found_nowhere_is_one_line_naming_each_way_to_…
def test_cli_without_the_files_is_one_line_and_exit_2(tmp_path):
    # mnist: no Debian package can supply it, so the files are missing on every machine; the
    # fashion_mnist line (the same function) is checked above with Debian's directory hidden.
    empty = tmp_path / "empty_data"
    empty.mkdir()
    env = cli_env(VAE_JAX_DATA_DIR=str(empty))
    for variable in data.IDX_DIR_VARIABLES.values():
        env.pop(variable, None)
    proc = run_cli(
        f"--workdir={tmp_path / 'w'}",
        *config_flags({"data.name": "mnist", "train.num_steps": 2}),
        env=env,
    )
    assert_one_line_error(proc, "data.name='mnist' needs its four IDX files", "$VAE_JAX_MNIST_DIR")
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------ Debian's real files

DEBIAN = pathlib.Path("/usr/share/datasets/fashion-mnist")
# sha256 of the decoded uint8 arrays (images [N, 28, 28] then labels [N]), computed once from
# dataset-fashion-mnist 0.0~git20200523.55506a9-1; compression-independent.
SHA256 = {
    ("train", "images"): "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
    ("train", "labels"): "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
    ("test", "images"): "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
    ("test", "labels"): "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
}


@pytest.fixture(scope="module")
def debian():
    """Debian's directory; a failure, not a skip, without it (.ci/run installs the package)."""
    if idx.missing(DEBIAN):
        pytest.fail(f"{DEBIAN} lacks {idx.missing(DEBIAN)}: apt-get install dataset-fashion-mnist")
    assert data.SYSTEM_IDX_DIRS["fashion_mnist"] == str(DEBIAN)
    return DEBIAN


@pytest.mark.slow  # decompresses 30 MB: a few seconds
@pytest.mark.parametrize("split", ["train", "test"])
def test_debian_fashion_mnist(debian, split):
    x = data.load_numpy("fashion_mnist", split, idx_dir=debian)
    labels = data.load_labels("fashion_mnist", split, idx_dir=debian)
    size = {"train": 60_000, "test": 10_000}[split]
    assert x.shape == (size, 28, 28, 1) and labels.shape == (size,)
    assert data.num_examples("fashion_mnist", split, idx_dir=debian) == size
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, size // 10))
    k = np.round(x[..., 0].astype(np.float64) * 255).astype(np.uint8)
    np.testing.assert_array_equal(x[..., 0], (k / 255.0).astype(np.float32))
    assert hashlib.sha256(k.tobytes()).hexdigest() == SHA256[split, "images"]
    assert hashlib.sha256(labels.astype(np.uint8).tobytes()).hexdigest() == SHA256[split, "labels"]


@pytest.mark.slow
def test_debian_files_are_what_a_default_run_reads(debian, monkeypatch, tmp_path):
    """With nothing set and no TFDS copy, a run reads Debian's directory: 60,000 training
    images split by data.validation_fraction (0.1 in every config: 54,000 / 6,000)."""
    monkeypatch.delenv("VAE_JAX_FASHION_MNIST_DIR", raising=False)
    parsed = spec.parse(tiny_config(data__name="fashion_mnist"))
    monkeypatch.setenv("VAE_JAX_DATA_DIR", os.fspath(tmp_path))
    spec.check_data(parsed)
    assert data.num_examples("fashion_mnist", "train") == 60_000
    assert data.num_validation(60_000, parsed.data.validation_fraction) == 6_000
    assert data.num_validation(60_000, 1 / 12) == 5_000

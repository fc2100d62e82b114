"""Shared fixtures: one embedded-data directory per session; tiny configs that train in seconds."""

import importlib.util
import os
import pathlib
import shutil
import tempfile

# Before any test module imports jax. The tests compile the same programs many times (each
# `train_and_evaluate` builds fresh closures, and the CLI tests run in subprocesses); a
# persistent compilation cache shared by the session, subprocesses included, compiles each once.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_JIT_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _JIT_CACHE = tempfile.mkdtemp(prefix="vae_jax_test_jit_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _JIT_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import ml_collections  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
# DESIGN.md's likelihood registry names, written out independently of vae_jax.likelihoods.
LIKELIHOOD_NAMES = (
    "gaussian",
    "gaussian_learned",
    "gaussian_per_pixel",
    "gaussian_decoder",
    "gaussian_optimal",
    "bernoulli",
    "continuous_bernoulli",
    "laplace",
    "discretized_logistic",
)
DEFAULT_CONFIG = REPO / "experiments" / "configs" / "default.py"


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory) -> pathlib.Path:
    """Builds the embedded datasets once per session; os.environ so subprocesses see it too."""
    path = tmp_path_factory.mktemp("vae_jax_data")
    previous = os.environ.get("VAE_JAX_DATA_DIR")
    os.environ["VAE_JAX_DATA_DIR"] = str(path)
    yield path
    if previous is None:
        del os.environ["VAE_JAX_DATA_DIR"]
    else:
        os.environ["VAE_JAX_DATA_DIR"] = previous
    if _JIT_CACHE is not None:
        shutil.rmtree(_JIT_CACHE, ignore_errors=True)


def default_config() -> ml_collections.ConfigDict:
    """experiments/configs/default.py:get_config(), loaded from its path as the CLI does."""
    spec = importlib.util.spec_from_file_location("default_config", DEFAULT_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# The tiny run: 8×8 digits, one hidden layer, 20 steps in two chunks of 10, a checkpoint each.
TINY = {
    "data.name": "digits",
    "model.hidden_sizes": (32,),
    "model.latent_dim": 4,
    "train.num_steps": 20,
    "train.log_every": 10,
    "train.checkpoint_every": 10,
    "train.batch_size": 16,
    "eval.iwae_samples": 4,
}


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """The default config made tiny, then `overrides` ('__' for '.': likelihood__name='laplace')."""
    config = default_config()
    fields = dict(TINY)
    fields.update({k.replace("__", "."): v for k, v in overrides.items()})
    for field, value in fields.items():
        *parents, leaf = field.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


@pytest.fixture(name="tiny_config")
def tiny_config_fixture():
    return tiny_config

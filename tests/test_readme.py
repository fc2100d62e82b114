"""README.md's scoring snippet, run as written (issue 39): the fenced block after its marker is
executed verbatim on a PyTorch-free stand-in, a `torch`-like module and a `model` of the same
shapes as an ordinary MLP VAE (encode: mean and log-variance [N, latents]; decode: flat [N, 784],
or [N, C, H, W]), on the embedded mnist_5k the snippet loads itself.
"""

import contextlib
import io
import math
import re
import sys
import types

import numpy as np
import pytest
from conftest import REPO, load_config

import vae_jax
from vae_jax import data, scoring

MARKER = "<!-- scoring snippet: tests/test_readme.py runs this block as written -->"
LATENTS = 8
# What the test changes of the snippet's run, to be quick, without touching its text: `score` gets
# the first images of each set and its documented `num_samples` (K of the IWAE bound) small.
NUM_IMAGES, NUM_SAMPLES = 100, 4


def snippet() -> str:
    """The ```python block right after MARKER in README.md, as written."""
    readme = (REPO / "README.md").read_text()
    assert readme.count(MARKER) == 1, "README.md's scoring snippet marker is missing or repeated"
    match = re.match(r"\n```python\n(.*?)\n```\n", readme.split(MARKER)[1], re.DOTALL)
    assert match, "README.md's marker is not followed by a ```python block"
    return match.group(1)


class Tensor:
    """The few `torch.Tensor` methods the snippet may call, on a NumPy array."""

    def __init__(self, array: np.ndarray):
        self.array = np.asarray(array)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    def permute(self, *dims: int) -> "Tensor":
        assert len(dims) == self.array.ndim, f"permute{dims} of a {self.array.ndim}-d tensor"
        return Tensor(np.transpose(self.array, dims))

    def reshape(self, *shape: int) -> "Tensor":
        return Tensor(self.array.reshape(shape))

    def detach(self) -> "Tensor":
        return self

    def numpy(self) -> np.ndarray:
        return self.array


def fake_torch() -> types.ModuleType:
    """A module named torch with `as_tensor` and `no_grad`: all the snippet may use of it."""
    torch = types.ModuleType("torch")
    torch.Tensor = Tensor
    torch.as_tensor = lambda a: Tensor(np.asarray(a))
    torch.no_grad = contextlib.nullcontext
    return torch


class PCAModel:
    """A PyTorch-style VAE stand-in: a PCA of mnist_5k's training images. encode takes
    [N, C, H, W] (or flat [N, C·H·W]) and returns (mu, logvar) [N, LATENTS]; decode returns the
    mean flat [N, C·H·W] (an MLP's layout) or [N, C, H, W], in PyTorch's channel-first order."""

    def __init__(self, train: np.ndarray, *, flat_output: bool):
        flat = train.transpose(0, 3, 1, 2).reshape(len(train), -1)
        self.image_shape = train.shape[1:]
        self.offset = flat.mean(axis=0)
        self.basis = np.linalg.svd(flat - self.offset, full_matrices=False)[2][:LATENTS]
        self.flat_output = flat_output

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        assert isinstance(x, Tensor) and x.shape[1:] == (1, 28, 28), x.shape
        mu = (x.array.reshape(len(x.array), -1) - self.offset) @ self.basis.T
        return Tensor(mu.astype(np.float32)), Tensor(np.full_like(mu, -4.0, np.float32))

    def decode(self, z: Tensor) -> Tensor:
        assert isinstance(z, Tensor) and z.shape[1:] == (LATENTS,), z.shape
        mean = (self.offset + z.array @ self.basis).astype(np.float32)
        height, width, channels = self.image_shape
        return Tensor(mean if self.flat_output else mean.reshape(-1, channels, height, width))


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    return data.load_numpy("mnist_5k", "train")


def quick_score(encode, decode, x_validation, x_test, **kwargs) -> dict:
    """`vae_jax.score` on the first NUM_IMAGES of each set, with K = NUM_SAMPLES."""
    return scoring.score(
        encode,
        decode,
        x_validation[:NUM_IMAGES],
        x_test[:NUM_IMAGES],
        num_samples=NUM_SAMPLES,
        **kwargs,
    )


@pytest.fixture(
    scope="module",
    params=[True, pytest.param(False, marks=pytest.mark.slow)],  # [N, 1, 28, 28]: slow
    ids=["flat_784", "nchw"],
)
def ran(request, train) -> tuple[PCAModel, dict, str]:
    """(the stand-in model, the snippet's namespace after running it with the model and the
    fake torch, what it printed)."""
    model = PCAModel(train, flat_output=request.param)
    namespace = {"__name__": "readme_snippet", "model": model}
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setitem(sys.modules, "torch", fake_torch())
        patch.setattr(vae_jax, "score", quick_score)
        exec(compile(snippet(), "README.md", "exec"), namespace)
    return model, namespace, printed.getvalue()


def test_readme_scoring_snippet_runs_as_written(ran, train):
    _, namespace, printed = ran
    scores = namespace["scores"]
    assert str(scores) in printed  # it prints the dict it returns
    expected = {f"test/{key}" for key in scoring.SCORED} | {"sigma_refit"}
    implied = {"sigma_implied", "test/iwae_nll_implied", "test/elbo_implied", "test/implied_cost"}
    assert set(scores) == expected | implied
    assert all(math.isfinite(scores[key]) for key in scores)
    assert scores["test/iwae_nll"] <= scores["test/iwae_nll_implied"]  # the refit is σ's best
    # The snippet's validation images are those the project holds out (the default config's
    # fraction), its test images mnist_5k's test split.
    fraction = load_config().data.validation_fraction
    np.testing.assert_array_equal(namespace["x_val"], data.split_validation(train, fraction)[1])
    assert namespace["x_test"].shape == (data.num_examples("mnist_5k", "test"), 28, 28, 1)


def test_readme_snippet_s_callables_turn_pytorch_layouts_into_nhwc(ran):
    model, namespace, _ = ran
    x = namespace["x_test"][:5]
    mu, logvar = namespace["encode"](x)
    flat = x.reshape(len(x), -1)  # one channel: channel-first and channel-last flatten alike
    np.testing.assert_allclose(mu, (flat - model.offset) @ model.basis.T, rtol=1e-5, atol=1e-5)
    assert logvar.shape == (5, LATENTS)
    decoded = namespace["decode"](mu)
    assert decoded.shape == x.shape
    np.testing.assert_allclose(
        decoded.reshape(5, -1), model.offset + mu @ model.basis, rtol=1e-5, atol=1e-5
    )

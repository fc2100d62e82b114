"""Tests for vae_jax.flops' conv VAE count: every layer of the model Flax builds, its kernel and
the size of the activation it produces, independent of flops.py's list of layers."""

import jax
import jax.numpy as jnp
import pytest

from vae_jax import flops, models


def layer_flops(event_shape, hidden_sizes, latent_dim, likelihood) -> dict[str, int]:
    """{'encoder', 'decoder'}: 2·(kernel size)·(positions it is applied at), summed over the
    layers of the initialised model: a Dense kernel once; an encoder convolution at each output
    pixel; a transposed convolution at each input pixel (a quarter of its output pixels)."""
    vae = models.VAE("conv", latent_dim, event_shape, likelihood, hidden_sizes=hidden_sizes)
    x = jnp.zeros(event_shape)
    variables = vae.init(jax.random.key(0), x)
    _, state = vae.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    counts = {}
    for part, per_pixel in (("encoder", 1), ("decoder", 4)):
        total = 0
        for name, layer in variables["params"][part].items():
            kernel = layer["kernel"]
            if kernel.ndim == 2:
                total += 2 * kernel.size
            else:
                out = state["intermediates"][part][name]["__call__"][0]
                total += 2 * kernel.size * out.shape[0] * out.shape[1] // per_pixel
        counts[part] = total
    return counts


@pytest.mark.parametrize(
    "event_shape, hidden_sizes, latent_dim, likelihood, num_outputs",
    [
        pytest.param((28, 28, 1), (16, 32), 32, "gaussian", 1, marks=pytest.mark.slow),
        ((28, 28, 1), (16, 32), 32, "gaussian_decoder", 2),
        pytest.param((32, 32, 3), (8, 16, 24), 16, "gaussian", 1, marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("num_samples", [1, 3])
def test_conv_count_matches_the_layers_flax_builds(
    event_shape, hidden_sizes, latent_dim, likelihood, num_outputs, num_samples
):
    expected = layer_flops(event_shape, hidden_sizes, latent_dim, likelihood)
    count = flops.model_forward_flops(
        kind="conv",
        event_shape=event_shape,
        hidden_sizes=hidden_sizes,
        latent_dim=latent_dim,
        num_samples=num_samples,
        num_outputs=num_outputs,
    )
    assert count == expected["encoder"] + num_samples * expected["decoder"]


def test_the_common_conv_vae_counts_as_the_docstring_says():
    count = flops.conv_forward_flops(
        event_shape=(28, 28, 1), hidden_sizes=(16, 32), latent_dim=32, num_samples=1
    )
    assert count == 2_107_392


def test_the_linear_model_is_not_counted():
    count = flops.model_forward_flops(
        kind="linear", event_shape=(8, 8, 1), hidden_sizes=(), latent_dim=4, num_samples=1
    )
    assert count is None

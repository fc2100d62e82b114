"""Tests for vae_jax.metrics on constructed arrays with known answers and numpy references."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import metrics


def test_active_units_counts_latents_whose_posterior_mean_varies():
    rs = np.random.default_rng(0)
    n = 1000
    posterior_means = np.stack(
        [
            rs.normal(0.0, 1.0, n),  # informative
            rs.normal(3.0, 0.5, n),  # informative, offset
            np.full(n, 0.7),  # constant: collapsed onto one value
            rs.normal(0.0, 0.01, n),  # var 1e-4: inactive
            rs.normal(0.0, 0.2, n),  # var 0.04: just active
        ],
        axis=1,
    )
    got = jax.jit(metrics.active_units)(jnp.asarray(posterior_means, jnp.float32))
    chex.assert_shape(got, ())
    assert int(got) == 3
    assert int(got) == np.sum(np.var(posterior_means, axis=0) > 0.01)
    assert int(metrics.active_units(jnp.asarray(posterior_means), threshold=0.1)) == 2
    with pytest.raises(AssertionError, match=r"rank 1 \(shape \(5,\)\) but expected 2"):
        metrics.active_units(jnp.zeros(5))  # one example's means, not [N, k]


def test_kl_per_latent_dim_matches_numpy():
    rs = np.random.default_rng(1)
    means = rs.normal(size=(50, 4))
    log_vars = rs.normal(size=(50, 4))
    expected = np.mean(0.5 * (np.exp(log_vars) + means**2 - 1 - log_vars), axis=0)
    got = jax.jit(metrics.kl_per_latent_dim)(
        jnp.asarray(means, jnp.float32), jnp.asarray(log_vars, jnp.float32)
    )
    chex.assert_shape(got, (4,))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    with pytest.raises(AssertionError, match=r"different shapes: \[\(50, 4\), \(50, 3\)\]"):
        metrics.kl_per_latent_dim(jnp.zeros((50, 4)), jnp.zeros((50, 3)))


def _kl_with_uses(num_used_per_latent, n=100, epsilon=0.01):
    """[n, k] KL where latent i has KL = ε (not below ε) on num_used_per_latent[i] examples."""
    kl = np.full((n, len(num_used_per_latent)), 0.1 * epsilon)
    for i, used in enumerate(num_used_per_latent):
        kl[:used, i] = epsilon
    return jnp.asarray(kl, jnp.float32)


def test_collapsed_fraction_delta_edge():
    # Latents used on 0, 100, 1 and 2 of 100 examples; δ = 0.01 allows exactly one.
    kl = _kl_with_uses([0, 100, 1, 2])
    got = jax.jit(metrics.collapsed_fraction)(kl)
    chex.assert_shape(got, ())
    np.testing.assert_allclose(got, 2 / 4)
    np.testing.assert_allclose(metrics.collapsed_fraction(kl, delta=0.02), 3 / 4)
    np.testing.assert_allclose(metrics.collapsed_fraction(kl, delta=0.0), 1 / 4)
    # Used examples have KL exactly 0.01: a larger ε makes every latent collapsed.
    np.testing.assert_allclose(metrics.collapsed_fraction(kl, epsilon=0.011), 1.0)


def test_collapsed_fraction_is_robust_to_rounding_of_delta_times_n():
    assert 0.29 * 100 < 29  # floating point: the edge case below
    kl = _kl_with_uses([29, 30])
    np.testing.assert_allclose(metrics.collapsed_fraction(kl, delta=0.29), 1 / 2)


def test_bits_per_dim_known_values():
    d = 784
    # A uniform density on [0, 1]^D and uniform probabilities over 256 bins both cost 8 bits.
    np.testing.assert_allclose(metrics.bits_per_dim(jnp.float32(0.0), d), 8.0, rtol=1e-6)
    np.testing.assert_allclose(
        metrics.bits_per_dim(jnp.float32(d * math.log(256)), d, discrete=True), 8.0, rtol=1e-6
    )
    np.testing.assert_allclose(
        metrics.bits_per_dim(jnp.float32(d * math.log(2)), d, discrete=True), 1.0, rtol=1e-6
    )
    np.testing.assert_allclose(
        metrics.bits_per_dim(jnp.float32(-d * math.log(256)), d), 0.0, atol=1e-5
    )
    nll = jnp.array([-1000.0, 0.0, 500.0])
    got = jax.jit(metrics.bits_per_dim, static_argnums=1)(nll, d)
    chex.assert_shape(got, (3,))
    np.testing.assert_allclose(got, (np.asarray(nll) / d + math.log(256)) / math.log(2), rtol=1e-6)


def test_psnr_matches_numpy_scalar_and_batched():
    rs = np.random.default_rng(2)
    x = rs.uniform(size=(4, 8, 8, 1))
    x_hat = np.clip(x + rs.normal(0, 0.05, size=x.shape), 0, 1)
    expected = 10 * np.log10(1.0 / np.mean((x - x_hat) ** 2, axis=(1, 2, 3)))
    x, x_hat = jnp.asarray(x, jnp.float32), jnp.asarray(x_hat, jnp.float32)
    one = jax.jit(metrics.psnr)(x[0], x_hat[0])
    chex.assert_shape(one, ())
    np.testing.assert_allclose(one, expected[0], rtol=1e-5)
    batched = jax.jit(jax.vmap(metrics.psnr))(x, x_hat)
    chex.assert_shape(batched, (4,))
    np.testing.assert_allclose(batched, expected, rtol=1e-5)
    np.testing.assert_allclose(
        metrics.psnr(255 * x[0], 255 * x_hat[0], max_value=255.0), expected[0], rtol=1e-5
    )
    assert np.isposinf(metrics.psnr(x[0], x[0]))
    with pytest.raises(AssertionError, match=r"different shapes: \[\(8, 8, 1\), \(8, 8\)\]"):
        metrics.psnr(x[0], x_hat[0, :, :, 0])


def test_collapsed_by_mean_kl_counts_latents_below_epsilon():
    kl = jnp.array([0.0, 0.003, 0.0099, 0.0101, 2.0])
    np.testing.assert_allclose(jax.jit(metrics.collapsed_by_mean_kl)(kl), 3 / 5)
    np.testing.assert_allclose(metrics.collapsed_by_mean_kl(kl, epsilon=0.001), 1 / 5)
    with pytest.raises(AssertionError, match=r"rank 2 \(shape \(2, 3\)\) but expected 1"):
        metrics.collapsed_by_mean_kl(jnp.zeros((2, 3)))


def test_pixel_levels_on_the_grid_and_after_dequantisation():
    levels = np.array([0, 1, 127, 254, 255])
    np.testing.assert_array_equal(metrics.pixel_levels(levels / 255, dequantized=False), levels)
    u = np.array([0.0, 0.999, 0.5, 0.25, 0.999])
    np.testing.assert_array_equal(
        metrics.pixel_levels((levels + u) / 256, dequantized=True), levels
    )


def test_saturation_split_on_hand_made_values():
    # Two images of four pixels; levels 0 and 255 are saturated.
    levels = np.array([[0, 0, 128, 255], [3, 0, 255, 200]])
    log_prob = np.array([[5.0, 4.0, -1.0, 2.0], [-2.0, 5.5, 1.0, 0.5]])
    got = jax.jit(metrics.saturation_split)(log_prob, levels)
    # Saturated: 5 + 4 + 2 (image 1), 5.5 + 1 (image 2) = 17.5 over 5 pixels and 2 images.
    # Interior: −1 (image 1), −2 + 0.5 (image 2) = −2.5 over 3 pixels.
    np.testing.assert_allclose(got["saturated_per_image"], 17.5 / 2)
    np.testing.assert_allclose(got["interior_per_image"], -2.5 / 2)
    np.testing.assert_allclose(got["saturated_per_pixel"], 17.5 / 5)
    np.testing.assert_allclose(got["interior_per_pixel"], -2.5 / 3)
    np.testing.assert_allclose(got["saturated_fraction"], 5 / 8)
    np.testing.assert_allclose(
        got["saturated_per_image"] + got["interior_per_image"], log_prob.sum(axis=1).mean()
    )


def test_saturation_split_with_no_interior_pixel_and_other_levels():
    got = metrics.saturation_split(np.ones((1, 3)), np.array([[0, 16, 0]]), num_bins=17)
    np.testing.assert_allclose(got["interior_per_image"], 0.0)
    assert np.isnan(got["interior_per_pixel"]) and got["saturated_fraction"] == 1.0


def test_saturation_split_refuses_mismatched_or_unbatched_input():
    with pytest.raises(AssertionError, match="different shapes"):
        metrics.saturation_split(np.zeros((2, 3)), np.zeros((2, 4), int))
    with pytest.raises(ValueError, match=r"must be \[N, \*event\]"):
        metrics.saturation_split(np.zeros(3), np.zeros(3, int))

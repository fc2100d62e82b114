"""Pixel transforms of ONE batch or array: uniform dequantisation onto a bin's interval, and
dynamic or fixed binarisation. Pure functions (a key in, an array out)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import threefry


def dequantize(rng: jax.Array, x: jax.Array, *, num_bins: int = 256) -> jax.Array:
    """Uniform dequantisation: x = k/(num_bins − 1) ↦ (k + u)/num_bins, u ~ U[0, 1).

    x: [...] on the grid, returns [...] in [0, 1) with floor(result · num_bins) = k, so the
    dequantised density on [0, 1) is the discrete model's probability mass times num_bins.
    """
    k = jnp.round(x * (num_bins - 1))
    u = threefry.uniform(rng, x.shape, dtype=x.dtype)  # jax.random.uniform's numbers
    # k + u rounds up to k + 1 in float32 when u is within an ulp of 1: keep it inside bin k.
    return jnp.minimum((k + u) / num_bins, jnp.nextafter((k + 1) / num_bins, jnp.zeros_like(x)))


def binarize(rng: jax.Array, x: jax.Array) -> jax.Array:
    """Dynamic binarisation: a Bernoulli(x) sample as x.dtype, x: [...] in [0, 1]."""
    return jax.random.bernoulli(rng, x).astype(x.dtype)


def fixed_binarize(x: np.ndarray, seed: int) -> np.ndarray:
    """One Bernoulli(x) sample drawn once at load time, float32 like x; same seed, same bits."""
    return (np.random.default_rng(seed).random(x.shape) < x).astype(np.float32)


def is_binary(x: np.ndarray) -> bool:
    """Whether every element of x is exactly 0 or 1."""
    return bool(np.all((x == 0) | (x == 1)))

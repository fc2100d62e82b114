"""The Laplace density on the real line: pure functions of ONE example, registered by
`vae_jax.likelihoods` (its closed-form scale and its capabilities live in the registry).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vae_jax.shapes import check_same_shape, check_scale_shape

_LOG_2 = math.log(2.0)


def laplace_log_prob(x: jax.Array, loc: jax.Array, log_scale: jax.Array) -> jax.Array:
    """log Laplace(x; loc, b) summed over elements: Σ_i [ −|x_i − loc_i|/b_i − log(2b_i) ].

    Args:
      x: [*event].
      loc: [*event].
      log_scale: [] or [*event], log b (the standard deviation is √2·b).

    Returns:
      [] log-density in nats.
    """
    check_same_shape(x, loc, "loc")
    check_scale_shape(x, log_scale, "log_scale")
    log_scale = jnp.broadcast_to(log_scale, jnp.shape(x))
    return jnp.sum(-jnp.abs(x - loc) * jnp.exp(-log_scale) - log_scale - _LOG_2)


def laplace_mean(loc: jax.Array) -> jax.Array:
    """E[x] of Laplace(loc, b): `loc` itself. [*event] -> [*event]."""
    return loc


def laplace_sample(rng: jax.Array, loc: jax.Array, log_scale: jax.Array) -> jax.Array:
    """x = loc + b·ε, ε ~ Laplace(0, 1). loc: [*event], log_scale: [] or [*event] -> [*event]."""
    check_scale_shape(loc, log_scale, "log_scale")
    eps = jax.random.laplace(rng, jnp.shape(loc), jnp.result_type(loc, float))
    return loc + jnp.exp(log_scale) * eps

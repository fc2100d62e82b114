"""Shape checks shared by the likelihoods: one example in, shapes equal, never broadcast."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_same_shape(x: jax.Array, other: jax.Array, name: str) -> None:
    if jnp.shape(x) != jnp.shape(other):
        raise ValueError(
            f"x has shape {jnp.shape(x)} but {name} has shape {jnp.shape(other)}; they must be "
            "equal (one example; batch with jax.vmap)"
        )


def check_scale_shape(x: jax.Array, log_scale: jax.Array, name: str) -> None:
    if jnp.ndim(log_scale) != 0 and jnp.shape(log_scale) != jnp.shape(x):
        raise ValueError(
            f"{name} has shape {jnp.shape(log_scale)}; it must be a scalar or have the shape of x "
            f"{jnp.shape(x)}"
        )

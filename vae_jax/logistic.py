"""The discretised logistic (Salimans et al. 2017, PixelCNN++): a probability over the pixel grid
k/(num_bins − 1), pure functions of ONE example, registered by `vae_jax.likelihoods`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vae_jax.shapes import check_same_shape, check_scale_shape


def discretized_logistic_log_prob(
    x: jax.Array, loc: jax.Array, log_scale: jax.Array, num_bins: int = 256
) -> jax.Array:
    """log P(x) of a logistic(loc, s) discretised to the grid k/(K − 1), k = 0…K − 1, summed.

    With k = x·(K − 1), a = ((k + ½)/(K − 1) − loc)/s and b = ((k − ½)/(K − 1) − loc)/s:
        P(x) = σ(a) − σ(b)      interior bins,
        P(0) = σ(a)             the lowest bin extends to −∞,
        P(1) = 1 − σ(b)         the highest bin extends to +∞.
    The interior case uses the exact identity (a > b)
        log(σ(a) − σ(b)) = log σ(a) + log σ(−b) + log(1 − e^{−(a−b)}),
    whose terms are all stable (log σ via softplus, the last via expm1), so it never underflows
    the way the PixelCNN++ difference of CDFs does, and no log pdf · bin width fallback is needed.

    Args:
      x: [*event], values on the grid k/(K − 1) (an off-grid value is scored as its nearest grid
        point; not checked, as it cannot be under jit).
      loc: [*event].
      log_scale: [] or [*event], log s (the standard deviation is s·π/√3).
      num_bins: K, the number of grid points (256 for 8-bit pixels).

    Returns:
      [] log-probability in nats.
    """
    check_same_shape(x, loc, "loc")
    check_scale_shape(x, log_scale, "log_scale")
    # Edges from the bin index, so that bin k's upper edge is bitwise bin k+1's lower edge and
    # the probabilities of all bins sum to 1 up to rounding, even for a tiny scale.
    bin_index = jnp.round(x * (num_bins - 1))
    inv_scale = jnp.exp(-jnp.broadcast_to(log_scale, jnp.shape(x)))
    upper = ((bin_index + 0.5) / (num_bins - 1) - loc) * inv_scale
    lower = ((bin_index - 0.5) / (num_bins - 1) - loc) * inv_scale
    log_cdf_upper = jax.nn.log_sigmoid(upper)
    log_sf_lower = jax.nn.log_sigmoid(-lower)
    log_interior = log_cdf_upper + log_sf_lower + jnp.log(-jnp.expm1(lower - upper))
    log_prob = jnp.where(
        bin_index <= 0,
        log_cdf_upper,
        jnp.where(bin_index >= num_bins - 1, log_sf_lower, log_interior),
    )
    return jnp.sum(log_prob)


def discretized_logistic_mean(
    loc: jax.Array, log_scale: jax.Array, num_bins: int = 256
) -> jax.Array:
    """Exact E[x] of the discretised logistic: Σ_{k=1}^{K−1} P(x ≥ k/(K−1)) / (K − 1).

    P(x ≥ k/(K−1)) = 1 − σ(((k − ½)/(K − 1) − loc)/s).

    Args:
      loc: [*event].
      log_scale: [] or [*event].
      num_bins: K.

    Returns:
      [*event] mean in [0, 1].
    """
    check_scale_shape(loc, log_scale, "log_scale")
    dtype = jnp.result_type(loc, float)
    edges = (jnp.arange(1, num_bins, dtype=dtype) - 0.5) / (num_bins - 1)
    log_scale = jnp.broadcast_to(log_scale, jnp.shape(loc))
    z = (edges - loc[..., None]) * jnp.exp(-log_scale)[..., None]
    return jnp.mean(jax.nn.sigmoid(-z), axis=-1)


def discretized_logistic_sample(
    rng: jax.Array, loc: jax.Array, log_scale: jax.Array, num_bins: int = 256
) -> jax.Array:
    """x ~ discretised logistic: loc + s·logistic noise, clipped to [0, 1], rounded to the grid.

    Args:
      rng: PRNG key.
      loc: [*event].
      log_scale: [] or [*event].
      num_bins: K.

    Returns:
      [*event] values k/(K − 1).
    """
    check_scale_shape(loc, log_scale, "log_scale")
    eps = jax.random.logistic(rng, jnp.shape(loc), jnp.result_type(loc, float))
    y = jnp.clip(loc + jnp.exp(log_scale) * eps, 0.0, 1.0)
    return jnp.round(y * (num_bins - 1)) / (num_bins - 1)

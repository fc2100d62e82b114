"""Per-example ELBO, importance-weighted bound and analytic Gaussian KL.

Every function takes ONE example: `x: [..event]`, posterior parameters `mean, log_var: [k]` of
q(z|x) = N(mean, diag(exp(log_var))), prior p(z) = N(0, I). Batches go through `jax.vmap`;
`batch_elbo` and `batch_iwae_bound` are exactly that.

The decoder and the likelihood are passed in as functions, so this module knows nothing about
Flax or about which likelihood family is used:
  decode(z: [k]) -> out                  any array or pytree (e.g. a mean, or (mean, log_sigma))
  log_likelihood(x, out) -> []           log p(x | z), summed over the event, constants included
"""

import math
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp

from vae_jax import threefry

Decode = Callable[[jax.Array], Any]
LogLikelihood = Callable[[jax.Array, Any], jax.Array]

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_kl(mean: jax.Array, log_var: jax.Array) -> jax.Array:
    """KL(N(mean, diag exp(log_var)) || N(0, I)) for each latent.

    kl_i = 0.5 * (exp(log_var_i) + mean_i² − 1 − log_var_i)

    Args:
      mean: [k] posterior mean.
      log_var: [k] posterior log-variance.
    Returns:
      kl_per_latent: [k], in nats; sum it for the KL of the whole posterior.
    """
    chex.assert_equal_shape([mean, log_var])
    # expm1 keeps the exp(log_var) − 1 − log_var term accurate near log_var = 0,
    # where the posterior of a collapsed latent sits.
    return 0.5 * (jnp.expm1(log_var) - log_var + jnp.square(mean))


def log_normal_diag(z: jax.Array, mean: jax.Array, log_var: jax.Array) -> jax.Array:
    """log N(z; mean, diag exp(log_var)), summed over the latents.

    log N = −0.5 · Σ_i [log 2π + log_var_i + (z_i − mean_i)² / exp(log_var_i)]

    Args:
      z, mean, log_var: [k], equal shapes.
    Returns:
      []: the log-density in nats.
    """
    chex.assert_equal_shape([z, mean, log_var])
    return -0.5 * jnp.sum(_LOG_2PI + log_var + jnp.square(z - mean) * jnp.exp(-log_var))


def sample_posterior(
    rng: jax.Array, mean: jax.Array, log_var: jax.Array, num_samples: int
) -> jax.Array:
    """Reparameterised z_s = mean + exp(log_var / 2) · ε_s, ε_s ~ N(0, I); returns [K, k]."""
    chex.assert_rank(mean, 1)  # one example: a batch here means a missing jax.vmap
    chex.assert_equal_shape([mean, log_var])
    eps = threefry.normal(rng, (num_samples, *mean.shape), dtype=mean.dtype)  # jax.random's
    return mean + jnp.exp(0.5 * log_var) * eps


def elbo(
    rng: jax.Array,
    x: jax.Array,
    mean: jax.Array,
    log_var: jax.Array,
    decode: Decode,
    log_likelihood: LogLikelihood,
    *,
    num_samples: int = 1,
    beta: float | jax.Array = 1.0,
) -> dict[str, jax.Array]:
    """Evidence lower bound of one example, reconstruction term by K reparameterised samples.

    recon     = (1/K) Σ_s log p(x | z_s),  z_s = mean + exp(log_var/2) · ε_s   (≈ E_q log p(x|z))
    kl        = Σ_i gaussian_kl(mean, log_var)_i                               (analytic)
    elbo      = recon − kl          ≤ log p(x)
    objective = recon − beta · kl   what training maximises; beta = 1 gives the ELBO

    Args:
      rng: PRNG key for the K samples.
      x: [..event] one example.
      mean, log_var: [k] parameters of q(z|x).
      decode: z [k] -> decoder output (any pytree).
      log_likelihood: (x, decoder output) -> [] log p(x|z).
      num_samples: K, a Python int (static under jit).
      beta: weight of the KL in `objective`; may be a traced array (a sweep axis).
    Returns:
      dict of `elbo`, `objective`, `recon`, `kl`: [] each; `kl_per_latent`: [k].
    """
    z = sample_posterior(rng, mean, log_var, num_samples)
    log_liks = jax.vmap(lambda z_s: log_likelihood(x, decode(z_s)))(z)
    chex.assert_shape(log_liks, (num_samples,))  # log_likelihood must sum over the event
    recon = jnp.mean(log_liks)
    kl_per_latent = gaussian_kl(mean, log_var)
    kl = jnp.sum(kl_per_latent)
    return {
        "elbo": recon - kl,
        "objective": recon - beta * kl,
        "recon": recon,
        "kl": kl,
        "kl_per_latent": kl_per_latent,
    }


def batch_elbo(
    rng: jax.Array,
    x: jax.Array,
    mean: jax.Array,
    log_var: jax.Array,
    decode: Decode,
    log_likelihood: LogLikelihood,
    *,
    num_samples: int = 1,
    beta: float | jax.Array = 1.0,
) -> dict[str, jax.Array]:
    """`elbo` vmapped over a leading batch axis of rng [B], x [B, ..event], mean, log_var [B, k].

    Returns the same dict as `elbo` with a leading [B] on every value; average it yourself.
    """
    per_example = lambda r, x_, m, lv: elbo(
        r, x_, m, lv, decode, log_likelihood, num_samples=num_samples, beta=beta
    )
    return jax.vmap(per_example)(rng, x, mean, log_var)


def iwae_bound(
    rng: jax.Array,
    x: jax.Array,
    mean: jax.Array,
    log_var: jax.Array,
    decode: Decode,
    log_likelihood: LogLikelihood,
    *,
    num_samples: int,
    chunk_size: int | None = 100,
) -> jax.Array:
    """Importance-weighted bound (Burda et al. 2016) of one example, K samples from q(z|x).

    log w_s = log p(x | z_s) + log N(z_s; 0, I) − log q(z_s | x)
    iwae    = logsumexp_s(log w_s) − log K        ≤ log p(x), increasing in K, → log p(x)

    K = 1 is the single-sample ELBO with a sampled KL. With q = p(z|x) every log w_s equals
    log p(x), so the bound is exact for any K.

    Args:
      rng: PRNG key for the K samples.
      x: [..event] one example.
      mean, log_var: [k] parameters of q(z|x).
      decode, log_likelihood: as in `elbo`.
      num_samples: K, a Python int.
      chunk_size: the decoder sees at most this many samples at once (`jax.lax.map` with
        `batch_size`), so evaluation with K = 1000 or more keeps memory bounded; None decodes
        all K at once. The result does not depend on it.
    Returns:
      []: the bound in nats; −iwae is the IWAE estimate of the negative log-likelihood.
    """
    z = sample_posterior(rng, mean, log_var, num_samples)
    prior_mean = jnp.zeros_like(mean)

    def log_weight(z_s: jax.Array) -> jax.Array:
        return (
            log_likelihood(x, decode(z_s))
            + log_normal_diag(z_s, prior_mean, prior_mean)
            - log_normal_diag(z_s, mean, log_var)
        )

    if chunk_size is None or chunk_size >= num_samples:
        log_w = jax.vmap(log_weight)(z)
    else:
        log_w = jax.lax.map(log_weight, z, batch_size=chunk_size)
    chex.assert_shape(log_w, (num_samples,))
    return jax.nn.logsumexp(log_w) - math.log(num_samples)


def batch_iwae_bound(
    rng: jax.Array,
    x: jax.Array,
    mean: jax.Array,
    log_var: jax.Array,
    decode: Decode,
    log_likelihood: LogLikelihood,
    *,
    num_samples: int,
    chunk_size: int | None = 100,
) -> jax.Array:
    """`iwae_bound` vmapped over a leading batch axis; returns [B]."""
    per_example = lambda r, x_, m, lv: iwae_bound(
        r, x_, m, lv, decode, log_likelihood, num_samples=num_samples, chunk_size=chunk_size
    )
    return jax.vmap(per_example)(rng, x, mean, log_var)

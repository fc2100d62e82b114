"""The Gaussian truncated to [0, 1], with its exact normaliser: pure functions of ONE example,
registered by `vae_jax.likelihoods` as `gaussian_truncated`.

It has the Gaussian's shape and the continuous Bernoulli's support, so set beside both it shows
how much of a family's likelihood comes from putting no mass outside the pixels' range.

With α = (0 − μ)/σ and β = (1 − μ)/σ per element, the normaliser is Z = Φ(β) − Φ(α), the
Gaussian's mass inside [0, 1]. `log_mass_between(α, β)` computes log Z without cancellation:
    α ≤ 0 ≤ β, or both |α|, |β| < 1:  log(½·(erf(β/√2) − erf(α/√2)))   (the terms' signs differ,
        or erf is near 0, where it has full relative precision);
    otherwise, both on one side: mirrored (α, β → −β, −α) so that both are left of 0, then
        log Φ(β) + log(1 − exp(log Φ(α) − log Φ(β)))   with log Φ = `log_ndtr`,
which holds its digits however far [0, 1] lies in the tail (μ = −50, σ = 0.1 included).
The inverse: `ndtri`, and Newton steps on `log_ndtr` where Φ underflows.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import erf, log_ndtr, ndtri

from vae_jax import threefry
from vae_jax.shapes import check_same_shape, check_scale_shape

_LOG_2PI = math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)
# Below this log Φ, Φ underflows (float32) and the inverse starts from the tail's asymptote.
_DEEP_TAIL_LOG_CDF = -30.0
_NEWTON_STEPS = 6


def _log1mexp(d: jax.Array) -> jax.Array:
    """log(1 − e^d) for d < 0, accurate on both sides of d = −log 2 (Mächler 2012)."""
    return jnp.where(d > -_LOG_2, jnp.log(-jnp.expm1(d)), jnp.log1p(-jnp.exp(d)))


def _left_of_zero(alpha: jax.Array, beta: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(flip, lo, hi): the interval [α, β] mirrored to [−β, −α] where its midpoint is right of 0,
    so that lo + hi ≤ 0 and Φ(hi) is never close to 1 by rounding."""
    flip = alpha + beta > 0
    return flip, jnp.where(flip, -beta, alpha), jnp.where(flip, -alpha, beta)


def log_mass_between(alpha: jax.Array, beta: jax.Array) -> jax.Array:
    """log(Φ(β) − Φ(α)) for α < β, elementwise and stable in both tails (see module docstring).

    Both branches are evaluated on safe stand-in inputs where they are not used, so that
    neither the value nor the gradient picks up a NaN from the branch not taken.
    """
    central = ((alpha <= 0) & (beta >= 0)) | ((jnp.abs(alpha) < 1) & (jnp.abs(beta) < 1))
    a = jnp.where(central, alpha, -1.0)
    b = jnp.where(central, beta, 1.0)
    by_erf = jnp.log(0.5 * (erf(b / math.sqrt(2.0)) - erf(a / math.sqrt(2.0))))
    _, lo, hi = _left_of_zero(alpha, beta)
    lo = jnp.where(central, -2.0, lo)
    hi = jnp.where(central, -1.0, hi)
    log_cdf_hi = log_ndtr(hi)
    by_tails = log_cdf_hi + _log1mexp(log_ndtr(lo) - log_cdf_hi)
    return jnp.where(central, by_erf, by_tails)


def _standardised_bounds(mean: jax.Array, log_sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
    inv_sigma = jnp.exp(-log_sigma)
    return -mean * inv_sigma, (1.0 - mean) * inv_sigma


def truncated_gaussian_log_prob(
    x: jax.Array, mean: jax.Array, *, log_sigma: jax.Array
) -> jax.Array:
    """log of N(x; μ, σ²) truncated to [0, 1], summed over elements:

        Σ_i [ log N(x_i; μ_i, σ_i²) − log(Φ((1 − μ_i)/σ_i) − Φ(−μ_i/σ_i)) ],   x_i ∈ [0, 1],

    and −∞ if any x_i lies outside [0, 1]. μ is the parent Gaussian's location (any real), σ its
    scale; the truncated distribution's own mean and standard deviation differ from them.

    Args:
      x: [*event], in [0, 1].
      mean: [*event], μ.
      log_sigma: [] or [*event], log σ of the parent Gaussian (keyword-only, as the Gaussian's).

    Returns:
      [] log-density in nats.
    """
    check_same_shape(x, mean, "mean")
    check_scale_shape(x, log_sigma, "log_sigma")
    log_sigma = jnp.broadcast_to(log_sigma, jnp.shape(x))
    alpha, beta = _standardised_bounds(mean, log_sigma)
    z = (x - mean) * jnp.exp(-log_sigma)
    log_density = -0.5 * jnp.square(z) - log_sigma - 0.5 * _LOG_2PI
    inside = jnp.all((x >= 0) & (x <= 1))
    return jnp.where(inside, jnp.sum(log_density - log_mass_between(alpha, beta)), -jnp.inf)


def truncated_gaussian_mean(mean: jax.Array, log_sigma: jax.Array) -> jax.Array:
    """E[x] = μ + σ·(φ(α) − φ(β))/Z, each ratio taken as exp(log φ − log Z) so that it stays
    finite when Z underflows; clipped to [0, 1] against rounding. [*event] -> [*event]."""
    check_scale_shape(mean, log_sigma, "log_sigma")
    alpha, beta = _standardised_bounds(mean, log_sigma)
    log_z = log_mass_between(alpha, beta)
    log_phi = lambda t: -0.5 * jnp.square(t) - 0.5 * _LOG_2PI  # noqa: E731
    shift = jnp.exp(log_phi(alpha) - log_z) - jnp.exp(log_phi(beta) - log_z)
    return jnp.clip(mean + jnp.exp(log_sigma) * shift, 0.0, 1.0)


def inverse_log_ndtr(log_p: jax.Array) -> jax.Array:
    """z with log Φ(z) = log_p (log_p ≤ 0): `ndtri(exp(log_p))`, and in the deep tail, where
    exp(log_p) underflows, Newton steps on log Φ from the asymptote Φ(z) ≈ φ(z)/(−z), i.e.
    z₀ = −√(−2·log_p − log(2π·(−2·log_p))); log Φ is concave, so Newton converges from there."""
    deep = log_p < _DEEP_TAIL_LOG_CDF
    mild = ndtri(jnp.exp(jnp.maximum(log_p, _DEEP_TAIL_LOG_CDF)))
    target = jnp.minimum(log_p, _DEEP_TAIL_LOG_CDF)
    z = -jnp.sqrt(-2.0 * target - jnp.log(2.0 * math.pi * (-2.0 * target)))
    for _ in range(_NEWTON_STEPS):
        log_cdf = log_ndtr(z)
        log_ratio = log_cdf - (-0.5 * jnp.square(z) - 0.5 * _LOG_2PI)  # log(Φ/φ)
        z = z - (log_cdf - target) * jnp.exp(log_ratio)
    return jnp.where(deep, z, mild)


def truncated_gaussian_sample(rng: jax.Array, mean: jax.Array, log_sigma: jax.Array) -> jax.Array:
    """x ~ N(μ, σ²) truncated to [0, 1] by the inverse CDF, in log space on the side of 0 where
    [α, β] lies (mirrored otherwise): with u ~ U(0, 1),
        log Φ(z) = logaddexp(log(1 − u) + log Φ(lo), log u + log Φ(hi)),  x = μ ± σ·z,
    clipped to [0, 1] against rounding. mean: [*event], log_sigma: [] or [*event] -> [*event]."""
    check_scale_shape(mean, log_sigma, "log_sigma")
    dtype = jnp.result_type(mean, float)
    alpha, beta = _standardised_bounds(mean, log_sigma)
    flip, lo, hi = _left_of_zero(alpha, beta)
    u = threefry.uniform(rng, jnp.shape(mean), dtype)
    log_p = jnp.logaddexp(jnp.log1p(-u) + log_ndtr(lo), jnp.log(u) + log_ndtr(hi))
    z = jnp.clip(inverse_log_ndtr(log_p), lo, hi)
    return jnp.clip(mean + jnp.exp(log_sigma) * jnp.where(flip, -z, z), 0.0, 1.0)

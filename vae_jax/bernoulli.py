"""The Bernoulli on {0, 1} and the continuous Bernoulli on [0, 1] (Loaiza-Ganem & Cunningham
2019, stable at logits 0): pure functions of ONE example, registered by `vae_jax.likelihoods`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vae_jax.shapes import check_same_shape

_LOG_2 = math.log(2.0)


# ---------------------------------------------------------------------------------- Bernoulli


def bernoulli_log_prob(x: jax.Array, logits: jax.Array) -> jax.Array:
    """log Bernoulli(x; sigmoid(logits)) summed over elements, x in {0, 1}.

        Σ_i [ x_i·log σ(η_i) + (1 − x_i)·log σ(−η_i) ],  η = logits,

    with log σ(η) = −softplus(−η), finite for any finite η. For x in (0, 1) this is −BCE, which is
    not a normalised density over [0, 1] (see `continuous_bernoulli_log_prob`).

    Args:
      x: [*event].
      logits: [*event].

    Returns:
      [] log-probability in nats.
    """
    check_same_shape(x, logits, "logits")
    return jnp.sum(x * jax.nn.log_sigmoid(logits) + (1.0 - x) * jax.nn.log_sigmoid(-logits))


def bernoulli_mean(logits: jax.Array) -> jax.Array:
    """E[x] = sigmoid(logits). [*event] -> [*event]."""
    return jax.nn.sigmoid(logits)


def bernoulli_sample(rng: jax.Array, logits: jax.Array) -> jax.Array:
    """x ~ Bernoulli(sigmoid(logits)) in {0, 1}, the dtype of `logits`. [*event] -> [*event]."""
    dtype = jnp.result_type(logits, float)
    return jax.random.bernoulli(rng, jax.nn.sigmoid(logits)).astype(dtype)


# Near logits = 0 the continuous-Bernoulli normaliser and mean are 0/0 in closed form and lose
# digits (in value and gradient) to cancellation, so there they use their Taylor series, whose
# coefficients come from the Bernoulli numbers B_2n:
#   log(η / tanh(η/2)) = log 2 + Σ_n (2^2n − 2)·B_2n / (2n·(2n)!) · η^2n   (converges for |η| < π)
#   coth u − 1/u       =         Σ_n 2^2n·B_2n / (2n)! · u^(2n−1)         (converges for |u| < π)
# Ten terms leave a truncation error below 1e-17 inside the thresholds.
_CB_LOG_NORM_TAYLOR_MAX = 0.5  # |η|
_CB_LOG_NORM_COEFFS = (
    1 / 12,
    -7 / 1440,
    31 / 90720,
    -2.6248346560846562e-05,
    2.1336045641601195e-06,
    -1.8027895356488832e-07,
    1.565947953183403e-08,
    -1.3883706783700259e-09,
    1.2504263775315483e-10,
    -1.1402553853609105e-11,
)
_CB_MEAN_TAYLOR_MAX = 0.5  # |u| = |η|/2
_LANGEVIN_COEFFS = (
    1 / 3,
    -1 / 45,
    2 / 945,
    -1 / 4725,
    2 / 93555,
    -2.1644042808063972e-06,
    2.1925947851873778e-07,
    -2.2214608789979678e-08,
    2.2507846516808994e-09,
    -2.2805151204592183e-10,
)


def _polynomial(coeffs: tuple[float, ...], t: jax.Array) -> jax.Array:
    """Σ_n coeffs[n]·t^n by Horner's rule."""
    return jnp.polyval(jnp.asarray(coeffs[::-1], dtype=t.dtype), t)


def _continuous_bernoulli_log_norm(logits: jax.Array) -> jax.Array:
    """log C(η), elementwise, with C(λ) = 2·atanh(1 − 2λ)/(1 − 2λ) and λ = sigmoid(η).

    Since 1 − 2λ = −tanh(η/2) and atanh(1 − 2λ) = −η/2, C = η / tanh(η/2). Evaluated as
      log|η| − log(1 − e^{−|η|}) + log(1 + e^{−|η|})    for |η| ≥ 0.5 (expm1 / log1p),
      its Taylor series in η² (see _CB_LOG_NORM_COEFFS)  for |η| < 0.5.
    """
    abs_logits = jnp.abs(logits)
    small = abs_logits < _CB_LOG_NORM_TAYLOR_MAX
    # Double-where: neither branch may see inputs outside its range (η = 0 in the closed form,
    # a huge η in the polynomial) or the unselected branch's gradient is 0·inf = NaN.
    safe = jnp.where(small, 1.0, abs_logits)
    exact = jnp.log(safe) - jnp.log(-jnp.expm1(-safe)) + jnp.log1p(jnp.exp(-safe))
    sq = jnp.square(jnp.where(small, logits, 0.0))
    taylor = _LOG_2 + sq * _polynomial(_CB_LOG_NORM_COEFFS, sq)
    return jnp.where(small, taylor, exact)


def continuous_bernoulli_log_prob(x: jax.Array, logits: jax.Array) -> jax.Array:
    """log CB(x; λ) summed over elements, x in [0, 1] (Loaiza-Ganem & Cunningham 2019).

        CB(x; λ) = C(λ)·λ^x·(1 − λ)^(1−x),  λ = sigmoid(η),  C = η / tanh(η/2)  (C(0) = 2),
        log p = Σ_i [ log C(η_i) + x_i·log σ(η_i) + (1 − x_i)·log σ(−η_i) ].

    The normaliser is evaluated stably for all η (Taylor series near 0, where the closed form is
    0/0); values and gradients are finite for |η| up to at least 1e4 in float32 and float64.

    Args:
      x: [*event].
      logits: [*event].

    Returns:
      [] log-density in nats.
    """
    check_same_shape(x, logits, "logits")
    return bernoulli_log_prob(x, logits) + jnp.sum(_continuous_bernoulli_log_norm(logits))


def continuous_bernoulli_mean(logits: jax.Array) -> jax.Array:
    """Exact E[x] of CB(λ): λ/(2λ − 1) + 1/(2·atanh(1 − 2λ)), λ = sigmoid(logits).

    In u = η/2 this is ½ + ½·(coth u − 1/u) (½ plus half the Langevin function), which tends to
    ½ at η = 0; for |u| < 0.5 its Taylor series (see _LANGEVIN_COEFFS) is used.

    Args:
      logits: [*event].

    Returns:
      [*event] mean in (0, 1).
    """
    u = 0.5 * logits
    small = jnp.abs(u) < _CB_MEAN_TAYLOR_MAX
    safe = jnp.where(small, 1.0, u)  # double-where, as in _continuous_bernoulli_log_norm
    exact = 1.0 / jnp.tanh(safe) - 1.0 / safe
    u_small = jnp.where(small, u, 0.0)
    taylor = u_small * _polynomial(_LANGEVIN_COEFFS, jnp.square(u_small))
    return 0.5 + 0.5 * jnp.where(small, taylor, exact)


def continuous_bernoulli_sample(rng: jax.Array, logits: jax.Array) -> jax.Array:
    """x ~ CB(sigmoid(logits)) in [0, 1] by the inverse CDF. [*event] -> [*event].

    For η = −a ≤ 0, F⁻¹(v) = log(1 + v·(e^{−a} − 1)) / (−a); for η > 0 the reflection
    X ~ CB(η) ⇔ 1 − X ~ CB(−η) gives F⁻¹(v) = 1 − F⁻¹_{−η}(1 − v), so e^{η} never overflows.
    Near a = 0 the first-order series v + a·v(v − 1)/2 replaces the 0/0 form.
    """
    dtype = jnp.result_type(logits, float)
    v = jax.random.uniform(rng, jnp.shape(logits), dtype)
    a = jnp.abs(logits)
    w = jnp.where(logits > 0, 1.0 - v, v)
    small = a < 1e-3
    safe = jnp.where(small, 1.0, a)
    inv_cdf = jnp.where(
        small, w + a * w * (w - 1.0) / 2.0, jnp.log1p(w * jnp.expm1(-safe)) / (-safe)
    )
    return jnp.clip(jnp.where(logits > 0, 1.0 - inv_cdf, inv_cdf), 0.0, 1.0)

"""Decoder likelihoods log p(x | decoder output) with every normalising constant included.

Each density is a pure function of ONE example of any event shape and returns a scalar: the
log-density summed over all elements. Batch with `jax.vmap`. Shapes are checked rather than
broadcast: `x` and the location/logits must have identical shapes; a log scale may be a scalar
or have the shape of `x`.

A registry (`LIKELIHOODS`, `get_likelihood`) maps config names to a uniform interface used by the
model and training code: `log_prob(x, out, log_sigma)`, `mean(out, log_sigma)` and
`sample(rng, out, log_sigma)`, where `out[0]` is the location/logits and `out[1]` (only when
`scale == 'decoder'`) the log scale predicted by the decoder.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

_LOG_2PI = math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)
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


def _check_same_shape(x: jax.Array, other: jax.Array, name: str) -> None:
    if jnp.shape(x) != jnp.shape(other):
        raise ValueError(
            f"x has shape {jnp.shape(x)} but {name} has shape {jnp.shape(other)}; they must be "
            "equal (one example; batch with jax.vmap)"
        )


def _check_scale_shape(x: jax.Array, log_scale: jax.Array, name: str) -> None:
    if jnp.ndim(log_scale) != 0 and jnp.shape(log_scale) != jnp.shape(x):
        raise ValueError(
            f"{name} has shape {jnp.shape(log_scale)}; it must be a scalar or have the shape of x "
            f"{jnp.shape(x)}"
        )


# ----------------------------------------------------------------------------------- Gaussian


def mse_weight(sigma: jax.Array) -> jax.Array:
    """1 / (2σ²): the weight that turns a summed squared error into −log N(x; mean, σ²I) + const.

    Args:
      sigma: σ > 0, any shape.

    Returns:
      1 / (2σ²), the shape of `sigma`.
    """
    sigma = jnp.asarray(sigma)
    return 1.0 / (2.0 * jnp.square(sigma))


def gaussian_log_prob(x: jax.Array, mean: jax.Array, log_sigma: jax.Array) -> jax.Array:
    """log N(x; mean, σ²) summed over elements.

        Σ_i [ −(x_i − mean_i)² / (2σ_i²) − log σ_i − ½ log 2π ]
      = −mse_weight(σ)·‖x − mean‖² − (D/2)·log(2πσ²)   for a scalar σ.

    Args:
      x: [*event].
      mean: [*event].
      log_sigma: [] or [*event], log of the standard deviation.

    Returns:
      [] log-density in nats.
    """
    _check_same_shape(x, mean, "mean")
    _check_scale_shape(x, log_sigma, "log_sigma")
    log_sigma = jnp.broadcast_to(log_sigma, jnp.shape(x))
    z = (x - mean) * jnp.exp(-log_sigma)
    return jnp.sum(-0.5 * jnp.square(z) - log_sigma - 0.5 * _LOG_2PI)


def optimal_gaussian_log_prob(x: jax.Array, mean: jax.Array, min_sigma: float = 1e-3) -> jax.Array:
    """Gaussian log-density at the per-example optimal σ (σ-VAE, Rybkin et al. 2021).

        σ*² = max(mean_i (x_i − mean_i)², min_sigma²)
        log p = −D/2 · mse/σ*² − (D/2)·log(2πσ*²)  = −(D/2)·(1 + log(2π·mse)) when not floored.

    σ* is the maximiser of the Gaussian log-density over a shared σ for this example. It is kept
    differentiable, as in the σ-VAE paper; since ∂log p/∂σ = 0 at σ*, the gradient with respect to
    `mean` equals the one with σ* held fixed (except at the floor).

    Args:
      x: [*event].
      mean: [*event].
      min_sigma: floor on σ*, so a perfect reconstruction does not give +∞.

    Returns:
      [] log-density in nats.
    """
    _check_same_shape(x, mean, "mean")
    mse = jnp.mean(jnp.square(x - mean))
    sigma_sq = jnp.maximum(mse, min_sigma**2)
    return gaussian_log_prob(x, mean, 0.5 * jnp.log(sigma_sq))


def gaussian_mean(mean: jax.Array) -> jax.Array:
    """E[x] of N(mean, σ²): `mean` itself. [*event] -> [*event]."""
    return mean


def gaussian_sample(rng: jax.Array, mean: jax.Array, log_sigma: jax.Array) -> jax.Array:
    """x = mean + σ·ε, ε ~ N(0, I). mean: [*event], log_sigma: [] or [*event] -> [*event]."""
    _check_scale_shape(mean, log_sigma, "log_sigma")
    eps = jax.random.normal(rng, jnp.shape(mean), jnp.result_type(mean, float))
    return mean + jnp.exp(log_sigma) * eps


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
    _check_same_shape(x, logits, "logits")
    return jnp.sum(x * jax.nn.log_sigmoid(logits) + (1.0 - x) * jax.nn.log_sigmoid(-logits))


def bernoulli_mean(logits: jax.Array) -> jax.Array:
    """E[x] = sigmoid(logits). [*event] -> [*event]."""
    return jax.nn.sigmoid(logits)


def bernoulli_sample(rng: jax.Array, logits: jax.Array) -> jax.Array:
    """x ~ Bernoulli(sigmoid(logits)) in {0, 1}, the dtype of `logits`. [*event] -> [*event]."""
    dtype = jnp.result_type(logits, float)
    return jax.random.bernoulli(rng, jax.nn.sigmoid(logits)).astype(dtype)


# ----------------------------------------------------------------------- continuous Bernoulli


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
    _check_same_shape(x, logits, "logits")
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


# ------------------------------------------------------------------------------------ Laplace


def laplace_log_prob(x: jax.Array, loc: jax.Array, log_scale: jax.Array) -> jax.Array:
    """log Laplace(x; loc, b) summed over elements: Σ_i [ −|x_i − loc_i|/b_i − log(2b_i) ].

    Args:
      x: [*event].
      loc: [*event].
      log_scale: [] or [*event], log b (the standard deviation is √2·b).

    Returns:
      [] log-density in nats.
    """
    _check_same_shape(x, loc, "loc")
    _check_scale_shape(x, log_scale, "log_scale")
    log_scale = jnp.broadcast_to(log_scale, jnp.shape(x))
    return jnp.sum(-jnp.abs(x - loc) * jnp.exp(-log_scale) - log_scale - _LOG_2)


def laplace_mean(loc: jax.Array) -> jax.Array:
    """E[x] of Laplace(loc, b): `loc` itself. [*event] -> [*event]."""
    return loc


def laplace_sample(rng: jax.Array, loc: jax.Array, log_scale: jax.Array) -> jax.Array:
    """x = loc + b·ε, ε ~ Laplace(0, 1). loc: [*event], log_scale: [] or [*event] -> [*event]."""
    _check_scale_shape(loc, log_scale, "log_scale")
    eps = jax.random.laplace(rng, jnp.shape(loc), jnp.result_type(loc, float))
    return loc + jnp.exp(log_scale) * eps


# ----------------------------------------------------------------------- discretised logistic


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
    _check_same_shape(x, loc, "loc")
    _check_scale_shape(x, log_scale, "log_scale")
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
    _check_scale_shape(loc, log_scale, "log_scale")
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
    _check_scale_shape(loc, log_scale, "log_scale")
    eps = jax.random.logistic(rng, jnp.shape(loc), jnp.result_type(loc, float))
    y = jnp.clip(loc + jnp.exp(log_scale) * eps, 0.0, 1.0)
    return jnp.round(y * (num_bins - 1)) / (num_bins - 1)


# ------------------------------------------------------------------------------------ registry


@dataclasses.dataclass(frozen=True)
class Likelihood:
    """A decoder likelihood in the uniform interface used by the model and training code.

    `out` has a leading axis of size `num_outputs`: out[0] is the mean/logits/loc and out[1]
    (only when scale == 'decoder') the log scale, already bounded by the model. `log_sigma` is
    the fixed or learned log scale, used only when scale is 'fixed', 'shared' or 'per_pixel'.
    """

    name: str
    num_outputs: int  # decoder output maps: 1 (mean/logits/loc) or 2 (+ log scale)
    scale: str  # where σ comes from: 'none'|'fixed'|'shared'|'per_pixel'|'decoder'|'optimal'
    support: str  # 'real' (dequantised), 'unit' ([0, 1]), 'binary', 'discrete' (grid k/255)
    log_prob: Callable  # (x[*event], out[num_outputs, *event], log_sigma) -> []
    mean: Callable  # (out, log_sigma) -> [*event]
    sample: Callable  # (rng, out, log_sigma) -> [*event]


def _make_likelihood(
    name: str,
    num_outputs: int,
    scale: str,
    support: str,
    log_prob_fn: Callable,
    mean_fn: Callable,
    sample_fn: Callable,
) -> Likelihood:
    """Wraps per-family functions of (…, loc, log_scale) into the registry's `out` interface."""

    def split(out, log_sigma):
        if jnp.ndim(out) < 1 or jnp.shape(out)[0] != num_outputs:
            raise ValueError(
                f"likelihood {name!r} expects decoder output of shape [{num_outputs}, *event], "
                f"got {jnp.shape(out)}"
            )
        return out[0], (out[1] if scale == "decoder" else log_sigma)

    def log_prob(x, out, log_sigma):
        return log_prob_fn(x, *split(out, log_sigma))

    def mean(out, log_sigma):
        return mean_fn(*split(out, log_sigma))

    def sample(rng, out, log_sigma):
        return sample_fn(rng, *split(out, log_sigma))

    return Likelihood(name, num_outputs, scale, support, log_prob, mean, sample)


def _optimal_gaussian_sample(rng, mean, log_sigma):
    # σ* is defined only against an observed x, so there is no σ to sample with at generation
    # time; generation uses the decoder mean instead.
    del rng, log_sigma
    return mean


_gaussian_entry = functools.partial(
    _make_likelihood,
    log_prob_fn=gaussian_log_prob,
    mean_fn=lambda loc, _: gaussian_mean(loc),
    sample_fn=gaussian_sample,
    support="real",
)

# Families without a scale (or whose scale is not an input) ignore the `log_scale` slot (`_`).
LIKELIHOODS: dict[str, Likelihood] = {
    lik.name: lik
    for lik in (
        _gaussian_entry("gaussian", 1, "fixed"),
        _gaussian_entry("gaussian_learned", 1, "shared"),
        _gaussian_entry("gaussian_per_pixel", 1, "per_pixel"),
        _gaussian_entry("gaussian_decoder", 2, "decoder"),
        _make_likelihood(
            "gaussian_optimal",
            1,
            "optimal",
            "real",
            lambda x, loc, _: optimal_gaussian_log_prob(x, loc),
            lambda loc, _: gaussian_mean(loc),
            _optimal_gaussian_sample,
        ),
        _make_likelihood(
            "bernoulli",
            1,
            "none",
            "binary",
            lambda x, logits, _: bernoulli_log_prob(x, logits),
            lambda logits, _: bernoulli_mean(logits),
            lambda rng, logits, _: bernoulli_sample(rng, logits),
        ),
        _make_likelihood(
            "continuous_bernoulli",
            1,
            "none",
            "unit",
            lambda x, logits, _: continuous_bernoulli_log_prob(x, logits),
            lambda logits, _: continuous_bernoulli_mean(logits),
            lambda rng, logits, _: continuous_bernoulli_sample(rng, logits),
        ),
        _make_likelihood(
            "laplace",
            1,
            "shared",
            "real",
            laplace_log_prob,
            lambda loc, _: laplace_mean(loc),
            laplace_sample,
        ),
        _make_likelihood(
            "discretized_logistic",
            2,
            "decoder",
            "discrete",
            discretized_logistic_log_prob,
            discretized_logistic_mean,
            discretized_logistic_sample,
        ),
    )
}


def get_likelihood(name: str) -> Likelihood:
    """The registry entry for a config's `likelihood.name`; ValueError naming the allowed ones."""
    if name not in LIKELIHOODS:
        raise ValueError(
            f"likelihood.name={name!r} is not known; allowed: {', '.join(LIKELIHOODS)}"
        )
    return LIKELIHOODS[name]

"""Decoder likelihoods log p(x | decoder output) with every normalising constant included.

Each density is a pure function of ONE example of any event shape and returns a scalar: the
log-density summed over all elements. Batch with `jax.vmap`. Shapes are checked rather than
broadcast: `x` and the location/logits must have identical shapes; a log scale may be a scalar
or have the shape of `x`.

A registry (`LIKELIHOODS`, `get_likelihood`) maps config names to a uniform interface used by the
model and training code: `log_prob(x, out, log_sigma)`, `mean(out, log_sigma)` and
`sample(rng, out, log_sigma)`, where `out[0]` is the location/logits and `out[1]` (only when
`scale == 'decoder'`) the log scale predicted by the decoder. The Bernoulli and continuous
Bernoulli densities live in `vae_jax.bernoulli`, the discretised logistic in `vae_jax.logistic`,
the Laplace in `vae_jax.laplace`, the Gaussian truncated to [0, 1] in `vae_jax.truncated`; all
are registered here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from vae_jax import threefry
from vae_jax.bernoulli import (
    bernoulli_log_prob,
    bernoulli_mean,
    bernoulli_sample,
    continuous_bernoulli_log_prob,
    continuous_bernoulli_mean,
    continuous_bernoulli_sample,
)
from vae_jax.laplace import laplace_log_prob, laplace_mean, laplace_sample
from vae_jax.logistic import (
    discretized_logistic_log_prob,
    discretized_logistic_mean,
    discretized_logistic_sample,
)
from vae_jax.shapes import check_same_shape, check_scale_shape
from vae_jax.truncated import (
    truncated_gaussian_log_prob,
    truncated_gaussian_mean,
    truncated_gaussian_sample,
)

_LOG_2PI = math.log(2.0 * math.pi)
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


def implicit_sigmas(num_dims: int) -> dict[str, float]:
    """σ that plain "MSE + KL" code chooses without saying so: `mse_weight(σ)` = 1 for a summed
    squared error (σ² = 1/2) and 1/D for one averaged over the D pixels (σ² = D/2)."""
    return {
        "summed MSE + KL (σ² = 1/2)": math.sqrt(0.5),
        f"mean MSE + KL (σ² = D/2, D = {num_dims})": math.sqrt(num_dims / 2),
    }


def gaussian_log_prob(
    x: jax.Array,
    mean: jax.Array,
    *,
    log_sigma: jax.Array | None = None,
    sigma: jax.Array | None = None,
) -> jax.Array:
    """log N(x; mean, σ²) summed over elements.

        Σ_i [ −(x_i − mean_i)² / (2σ_i²) − log σ_i − ½ log 2π ]
      = −mse_weight(σ)·‖x − mean‖² − (D/2)·log(2πσ²)   for a scalar σ.

    The scale is given by name, as exactly one of `log_sigma=` or `sigma=`: keyword-only, so
    that σ = 0.1 cannot be passed where log σ is meant (and silently score with σ = e^0.1).

    Args:
      x: [*event].
      mean: [*event].
      log_sigma: [] or [*event], log of the standard deviation; or
      sigma: [] or [*event], the standard deviation (> 0), pixel units.

    Returns:
      [] log-density in nats.
    """
    if (log_sigma is None) == (sigma is None):
        raise TypeError("gaussian_log_prob takes exactly one of log_sigma= or sigma=")
    if log_sigma is None:
        check_scale_shape(x, sigma, "sigma")
        log_sigma = jnp.log(sigma)
    check_same_shape(x, mean, "mean")
    check_scale_shape(x, log_sigma, "log_sigma")
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
    check_same_shape(x, mean, "mean")
    mse = jnp.mean(jnp.square(x - mean))
    sigma_sq = jnp.maximum(mse, min_sigma**2)
    return gaussian_log_prob(x, mean, log_sigma=0.5 * jnp.log(sigma_sq))


def gaussian_mean(mean: jax.Array) -> jax.Array:
    """E[x] of N(mean, σ²): `mean` itself. [*event] -> [*event]."""
    return mean


def gaussian_sample(rng: jax.Array, mean: jax.Array, log_sigma: jax.Array) -> jax.Array:
    """x = mean + σ·ε, ε ~ N(0, I). mean: [*event], log_sigma: [] or [*event] -> [*event]."""
    check_scale_shape(mean, log_sigma, "log_sigma")
    eps = threefry.normal(rng, jnp.shape(mean), jnp.result_type(mean, float))
    return mean + jnp.exp(log_sigma) * eps


# ------------------------------------------------------------------------------------ registry


@dataclasses.dataclass(frozen=True)
class Likelihood:
    """A decoder likelihood in the uniform interface used by the model and training code.

    `out` has a leading axis of size `num_outputs`: out[0] is the mean/logits/loc and out[1]
    (only when scale == 'decoder') the log scale, already bounded by the model. `log_sigma` is
    the fixed, learned or fitted log scale, used when scale is 'fixed', 'shared', 'per_pixel' or
    'optimal'. `log_prob` is normalised in x for every entry: it is what test data are scored
    with. (The optimal-σ Gaussian TRAINS with σ read off each example, see
    `optimal_gaussian_log_prob`; that is an objective, not a density, and is not in here.)
    """

    name: str
    num_outputs: int  # decoder output maps: 1 (mean/logits/loc) or 2 (+ log scale)
    scale: str  # where σ comes from: 'none'|'fixed'|'shared'|'per_pixel'|'decoder'|'optimal'
    support: str  # 'real' (dequantised), 'unit' ([0, 1]), 'binary', 'discrete' (grid k/255)
    log_prob: Callable  # (x[*event], out[num_outputs, *event], log_sigma, *, flat=False) -> []
    mean: Callable  # (out, log_sigma) -> [*event]
    sample: Callable  # (rng, out, log_sigma) -> [*event]
    # The family's standard deviation is std_factor × its scale (Gaussian σ, Laplace b,
    # logistic s), so one `sigma` column means the same thing for every family.
    std_factor: float | None = None
    # The scale's maximum-likelihood value from residual moments x − loc: its log, from the mean
    # of r² (Gaussian) or |r| (Laplace) — None where the scale has no closed form here.
    log_scale_mle: Callable | None = None  # (mean_sq_residual, mean_abs_residual) -> log scale
    # p in log p(x | loc, c·s) = log p(x | loc, s) + T·(1 − c^−p) − D·log c, T = Σ|r/s|^p / p:
    # how the log-density moves with one factor c on the scale (2: Gaussian, 1: Laplace).
    scale_power: int | None = None

    # Capabilities: what the middle layer asks of a family, instead of comparing strings.
    @property
    def fixed_sigma(self) -> bool:
        """σ is set by the config (and may be swept, or moved by GECO's multiplier)."""
        return self.scale == "fixed"

    @property
    def shared_learned_scale(self) -> bool:
        """One trainable scale for all pixels (σ, or Laplace's b)."""
        return self.scale == "shared"

    @property
    def per_pixel_scale(self) -> bool:
        """A trainable scale map of the event's shape."""
        return self.scale == "per_pixel"

    @property
    def learns_scale(self) -> bool:
        """The model carries a trainable scale parameter (shared or per pixel)."""
        return self.scale in ("shared", "per_pixel")

    @property
    def scale_from_decoder(self) -> bool:
        """The scale is a decoder output (out[1]), a function of z."""
        return self.scale == "decoder"

    @property
    def optimal_scale(self) -> bool:
        """Trains with σ*² read off each example (σ-VAE); scored with a σ fitted on data."""
        return self.scale == "optimal"

    @property
    def refits(self) -> bool:
        """The scale has a closed-form refit (`log_scale_mle`) and a search on the bound. A scale
        the decoder predicts has none: `log_prob` reads it from the decoder output, never from
        `log_sigma`, so a refitted log σ would change nothing it scores."""
        return self.log_scale_mle is not None and not self.scale_from_decoder

    @property
    def binary_data(self) -> bool:
        """Scores binarised pixels."""
        return self.support == "binary"

    @property
    def dequantized_data(self) -> bool:
        """A density on uniformly dequantised pixels (on the real line or on [0, 1])."""
        return self.support in ("real", "unit")

    @property
    def discrete_data(self) -> bool:
        """A probability over the pixel grid k/(num_bins − 1)."""
        return self.support == "discrete"

    @property
    def data_model(self) -> str:
        """What the family's numbers are a probability of: 'continuous' (a density on the
        dequantised pixels), 'discrete' (a probability over the pixel values) or 'binarized' (a
        probability of binarised pixels). Nats and bits/dim compare only within one."""
        return DATA_MODELS[self.support]


# A family's support -> its data model (`Likelihood.data_model`).
DATA_MODELS = {
    "real": "continuous",
    "unit": "continuous",
    "discrete": "discrete",
    "binary": "binarized",
}


def gaussian_log_sigma_mle(mean_sq_residual: jax.Array, mean_abs_residual: jax.Array) -> jax.Array:
    """log σ̂ = ½·log E[r²]: the Gaussian σ that maximises Σ log N(r; 0, σ²) over residuals r."""
    del mean_abs_residual
    return 0.5 * jnp.log(mean_sq_residual)


def laplace_log_scale_mle(mean_sq_residual: jax.Array, mean_abs_residual: jax.Array) -> jax.Array:
    """log b̂ = log E|r|: the Laplace scale that maximises Σ log Laplace(r; 0, b) over residuals."""
    del mean_sq_residual
    return jnp.log(mean_abs_residual)


def _flat(a: jax.Array) -> jax.Array:
    return jnp.reshape(a, -1) if jnp.ndim(a) else a


def _make_likelihood(
    name: str,
    num_outputs: int,
    scale: str,
    support: str,
    log_prob_fn: Callable,
    mean_fn: Callable,
    sample_fn: Callable,
    std_factor: float | None = None,
    log_scale_mle: Callable | None = None,
    scale_power: int | None = None,
) -> Likelihood:
    """Wraps per-family functions of (…, loc, log_scale) into the registry's `out` interface."""

    def split(out, log_sigma):
        if jnp.ndim(out) < 1 or jnp.shape(out)[0] != num_outputs:
            raise ValueError(
                f"likelihood {name!r} expects decoder output of shape [{num_outputs}, *event], "
                f"got {jnp.shape(out)}"
            )
        return out[0], (out[1] if scale == "decoder" else log_sigma)

    def log_prob(x, out, log_sigma, *, flat=False):
        loc, log_scale = split(out, log_sigma)
        if not flat:
            return log_prob_fn(x, loc, log_scale)
        check_same_shape(x, loc, "the decoder's location")
        check_scale_shape(x, log_scale, "log_sigma")
        # Every family sums over the event, so it may be scored flat: XLA's CPU backend
        # vectorises the innermost axis, which is 1 for an image's [H, W, 1] (what that gains:
        # docs/speed.md). The same density; only the order of its sum moves.
        return log_prob_fn(x.reshape(-1), loc.reshape(-1), _flat(log_scale))

    def mean(out, log_sigma):
        return mean_fn(*split(out, log_sigma))

    def sample(rng, out, log_sigma):
        return sample_fn(rng, *split(out, log_sigma))

    return Likelihood(
        name,
        num_outputs,
        scale,
        support,
        log_prob,
        mean,
        sample,
        std_factor,
        log_scale_mle,
        scale_power,
    )


_gaussian_entry = functools.partial(
    _make_likelihood,
    log_prob_fn=lambda x, loc, log_scale: gaussian_log_prob(x, loc, log_sigma=log_scale),
    mean_fn=lambda loc, _: gaussian_mean(loc),
    sample_fn=gaussian_sample,
    support="real",
    std_factor=1.0,
    log_scale_mle=gaussian_log_sigma_mle,
    scale_power=2,
)

# Families without a scale (or whose scale is not an input) ignore the `log_scale` slot (`_`).
LIKELIHOODS: dict[str, Likelihood] = {
    lik.name: lik
    for lik in (
        _gaussian_entry("gaussian", 1, "fixed"),
        _gaussian_entry("gaussian_learned", 1, "shared"),
        _gaussian_entry("gaussian_per_pixel", 1, "per_pixel"),
        _gaussian_entry("gaussian_decoder", 2, "decoder"),
        # Scored with the σ it carries (fitted on training data), trained with σ* per example.
        _gaussian_entry("gaussian_optimal", 1, "optimal"),
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
            std_factor=math.sqrt(2.0),
            log_scale_mle=laplace_log_scale_mle,
            scale_power=1,
        ),
        _make_likelihood(
            "discretized_logistic",
            2,
            "decoder",
            "discrete",
            discretized_logistic_log_prob,
            discretized_logistic_mean,
            discretized_logistic_sample,
            std_factor=math.pi / math.sqrt(3.0),
        ),
        # Last, so that the families before it keep their plot colours (plots.FAMILY_COLORS).
        # The Gaussian's shape on the continuous Bernoulli's support, with a learned shared σ
        # (the comparison is gaussian_learned). Its `sigma` column is the parent Gaussian's σ
        # (std_factor 1): the truncated std depends on the location too. No closed-form refit:
        # the normaliser moves with σ, so neither E[r²] nor the profile identity holds.
        _make_likelihood(
            "gaussian_truncated",
            1,
            "shared",
            "unit",
            lambda x, loc, log_scale: truncated_gaussian_log_prob(x, loc, log_sigma=log_scale),
            truncated_gaussian_mean,
            truncated_gaussian_sample,
            std_factor=1.0,
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


def elementwise_log_prob(
    likelihood: Likelihood, x: jax.Array, out: jax.Array, log_sigma: jax.Array
) -> jax.Array:
    """Each element's term of `likelihood.log_prob(x, out, log_sigma)`: [*event] terms whose sum
    is that scalar. Every family is a product over independent elements, so element i's term is
    the family's log_prob of the one-element event (x_i, out[:, i], log σ_i); the scalar contract
    is unchanged.

    Args:
      likelihood: a registry entry.
      x: [*event].
      out: [num_outputs, *event], the decoder output.
      log_sigma: [] or [*event], as `log_prob` takes it.

    Returns:
      [*event] log-density (or log-probability) of each element, in nats.
    """
    if jnp.shape(out) != (likelihood.num_outputs, *jnp.shape(x)):
        raise ValueError(
            f"likelihood {likelihood.name!r} expects decoder output of shape "
            f"[{likelihood.num_outputs}, *event] = {(likelihood.num_outputs, *jnp.shape(x))}, "
            f"got {jnp.shape(out)}"
        )
    check_scale_shape(x, log_sigma, "log_sigma")
    one_element = lambda x_i, out_i, log_sigma_i: likelihood.log_prob(  # noqa: E731
        x_i[None], out_i[:, None], log_sigma_i[None]
    )
    terms = jax.vmap(one_element)(
        jnp.reshape(x, -1),
        jnp.reshape(out, (likelihood.num_outputs, -1)).T,
        jnp.reshape(jnp.broadcast_to(log_sigma, jnp.shape(x)), -1),
    )
    return jnp.reshape(terms, jnp.shape(x))

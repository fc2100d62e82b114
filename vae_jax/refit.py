"""The scale refit: a model scored *refit* carries the scale recalibrated on held-out
VALIDATION images — its scale times the one factor c that maximises the validation IWAE bound,
the score itself.

The search starts from the closed form that maximises the one-sample ELBO (c² = mean over
pixels of E_x E_q r²/σ² for a Gaussian, c = mean E|r|/b for Laplace, r = x − f(z); for a
shared scale σ̂² = E_x E_q‖x − f(z)‖²/D) and moves along log c to the maximum of the bound on
the very draws the validation images are then scored with (`make_iwae_profile`,
`best_log_factor`: never worse there than the closed form). A per-pixel scale keeps its shape.
The scale is a choice, so it is made on held-out data like every other choice: σ fitted to
training residuals is too small wherever the network overfits. Families whose scale is a
decoder output, or that have none, have no refit (`Likelihood.refits`).

  residual_moments(params, x, log_sigma, rng) -> (E r², E|r|) maps  (`make_residual_moments`)
  profile(params, x, log_sigma, rng) -> (log_w, t)                   (`make_iwae_profile`)
  make_refit(model, ...).refit(params, x_val, log_scale, keys) -> the refit log scale
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vae_jax import elbo
from vae_jax.scorable import Scorable, batched, jit_members


class RefitKeys(NamedTuple):
    """The draws of a refit and its scores."""

    moments: jax.Array  # the closed form's residual moments on the validation images
    search: jax.Array  # the validation bound the factor is searched on = validation's score
    test: jax.Array  # the test images' score at the refit scale


def make_residual_moments(model: Scorable, *, batch_size: int) -> Callable:
    """residual_moments(params, x, log_sigma, rng) -> (E r², E|r|), each [*event].

    r = x − loc(z), z ~ q(z|x) one sample per example, averaged over the examples of x: the
    sufficient statistics of the closed-form scale (`Likelihood.log_scale_mle`).
    """

    def one_example(params, x, log_sigma, rng):
        transform_rng, z_rng = jax.random.split(rng)
        x = model.transform(transform_rng, x)
        mean, log_var = model.encode(params, x)
        z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(z_rng, mean.shape, mean.dtype)
        residual = x - model.decode(params, z)[0]
        return residual**2, jnp.abs(residual)

    per_example = batched(one_example, batch_size)

    def residual_moments(params, x, log_sigma, rng):
        squared, absolute = per_example(params, x, log_sigma, rng)
        return jnp.mean(squared, axis=0), jnp.mean(absolute, axis=0)

    return residual_moments


def refit_log_scale(
    model: Scorable, log_scale: jax.Array, mean_sq: jax.Array, mean_abs: jax.Array
) -> jax.Array:
    """The closed-form log scale from residual moments, floored at `model.sigma_floor`.

    A shared scale gets the scalar MLE of the residuals pooled over pixels. A per-pixel
    likelihood's scale keeps its shape: `log_scale + log c`, c the one factor that maximises
    the likelihood of the residuals (`log_scale_mle` of the pooled moments of r / scale).
    `log_scale` is the scale the model carries (scalar or per-pixel map). With
    `model.fit_each_pixel` every pixel gets the MLE of its own moments.
    """
    mle = model.likelihood.log_scale_mle
    if model.fit_each_pixel:
        fitted = mle(mean_sq, mean_abs)
    elif model.likelihood.per_pixel_scale:
        scale = jnp.exp(log_scale)
        fitted = log_scale + mle(jnp.mean(mean_sq / scale**2), jnp.mean(mean_abs / scale))
    else:
        fitted = mle(jnp.mean(mean_sq), jnp.mean(mean_abs))
    return jnp.maximum(fitted, math.log(model.sigma_floor))


def make_iwae_profile(model: Scorable, *, iwae_samples: int, batch_size: int) -> Callable:
    """profile(params, x, log_sigma, rng) -> (log_w [N, K], t [N, K]): the IWAE bound of x as a
    function of one factor c = e^u on the scale, exactly and without decoding again.

    With r = x − loc(z_k) and T_k = Σ|r/s|^p / p (p = `Likelihood.scale_power`), a scale c·s
    gives log w_k(u) = log w_k + T_k·(1 − e^(−p·u)) − D·u, so the bound at any u is a logsumexp
    over the K stored terms (`iwae_at_factor`). The draws are `make_evaluate`'s at the same rng
    (the same key splits), so the bound it maximises is the one evaluation then scores.
    """
    likelihood = model.likelihood

    def one_example(params, x, log_sigma, rng):
        transform_rng, _, iwae_rng = jax.random.split(rng, 3)
        x = model.transform(transform_rng, x)
        mean, log_var = model.encode(params, x)
        z = elbo.sample_posterior(iwae_rng, mean, log_var, iwae_samples)
        prior = jnp.zeros_like(mean)

        def terms(z_k):
            out = model.decode(params, z_k)
            log_w = (
                likelihood.log_prob(x, out, log_sigma, flat=True)
                + elbo.log_normal_diag(z_k, prior, prior)
                - elbo.log_normal_diag(z_k, mean, log_var)
            )
            scaled = jnp.abs(x - out[0]) * jnp.exp(-log_sigma)
            return log_w, jnp.sum(scaled**likelihood.scale_power) / likelihood.scale_power

        return jax.lax.map(terms, z, batch_size=min(100, iwae_samples))

    return batched(one_example, batch_size)


def iwae_at_factor(log_w: jax.Array, t: jax.Array, u: jax.Array, power: int, num_dims: int):
    """Mean IWAE bound over examples, log_w and t [N, K] from `make_iwae_profile`, at scale
    factor e^u: mean_n logsumexp_k(log w_nk + t_nk·(1 − e^(−p·u)) − D·u) − log K."""
    shifted = log_w + t * (1.0 - jnp.exp(-power * u)) - num_dims * u
    return jnp.mean(jax.nn.logsumexp(shifted, axis=-1)) - math.log(log_w.shape[-1])


def best_log_factor(
    log_w: jax.Array, t: jax.Array, power: int, num_dims: int, *, width: float = 0.5
) -> jax.Array:
    """The u in [−width, width] that maximises `iwae_at_factor` (golden-section search, 40
    steps: the interval shrinks to 0.618^40·2·width ≈ 4·10⁻⁹), or 0 when u = 0 scores at least
    as well — so the searched scale is never worse than the one the profile was taken at."""

    def bound(u):
        return iwae_at_factor(log_w, t, u, power, num_dims)

    ratio = (math.sqrt(5.0) - 1.0) / 2.0

    def step(_, interval):
        low, high = interval
        a = high - ratio * (high - low)
        b = low + ratio * (high - low)
        keep_left = bound(a) > bound(b)
        return jnp.where(keep_left, low, a), jnp.where(keep_left, b, high)

    low, high = jax.lax.fori_loop(0, 40, step, (jnp.float32(-width), jnp.float32(width)))
    u = 0.5 * (low + high)
    return jnp.where(bound(u) > bound(jnp.float32(0.0)), u, 0.0)


class Refit(NamedTuple):
    """`make_refit`'s jitted pieces; call `refit` to run them in order."""

    moments: Callable  # (params, x, log_scale, rng) -> (E r², E|r|)
    closed_form: Callable  # (log_scale, E r², E|r|) -> the closed-form log scale
    profile: Callable  # (params, x, log_scale, rng) -> (log_w, t)
    search: Callable  # (log_scale, log_w, t) -> the log scale that maximises the bound

    def refit(self, params, x: jax.Array, log_scale: jax.Array, keys: RefitKeys):
        """(closed form, (log_w, t), refit log scale) on the validation images x: the closed
        form from one z each (key `keys.moments`), then the factor on it that maximises the
        IWAE bound (key `keys.search`), never below the floor."""
        mean_sq, mean_abs = self.moments(params, x, log_scale, keys.moments)
        closed = self.closed_form(log_scale, mean_sq, mean_abs)
        log_w, t = self.profile(params, x, closed, keys.search)
        return closed, (log_w, t), self.search(closed, log_w, t)


def make_refit(model: Scorable, *, iwae_samples: int, batch_size: int, members: bool) -> Refit:
    """The scale refit (module docstring) as jitted pieces, one program each."""
    power = model.likelihood.scale_power
    num_dims = math.prod(model.event_shape)
    floor = math.log(model.sigma_floor)
    return Refit(
        moments=jit_members(
            make_residual_moments(model, batch_size=batch_size), (0, None, 0, 0), members
        ),
        closed_form=jit_members(
            lambda s, sq, ab: refit_log_scale(model, s, sq, ab), (0, 0, 0), members
        ),
        profile=jit_members(
            make_iwae_profile(model, iwae_samples=iwae_samples, batch_size=batch_size),
            (0, None, 0, 0),
            members,
        ),
        search=jit_members(
            lambda s, log_w, t: jnp.maximum(s + best_log_factor(log_w, t, power, num_dims), floor),
            (0, 0, 0),
            members,
        ),
    )

"""A model + a likelihood + σ → the per-example objective the train step and evaluation use.

`Problem` is everything static about a run (model, likelihood, data, what each step does to a
batch); `Hyper` holds the per-member arrays the step takes, so `jax.vmap` over members is a sweep.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import data, elbo, likelihoods, linear, models


@flax.struct.dataclass
class Hyper:
    """Per-member hyper-parameters that enter the step as arrays (vmappable)."""

    log_sigma: jax.Array  # log σ of a fixed-σ Gaussian decoder (ignored by other likelihoods)
    beta: jax.Array  # KL weight of the training objective
    active: jax.Array  # False once a sweep member is stopped (non-finite): its state is frozen


@dataclasses.dataclass(frozen=True)
class Problem:
    """Everything static about a run: data, model, likelihood and the step's settings."""

    model: models.VAE
    likelihood: likelihoods.Likelihood
    train_x: np.ndarray
    test_x: np.ndarray
    transform: str  # 'dequantize' | 'binarize' | 'none': what each step does to a batch
    num_bins: int  # pixel levels of the data (dequantisation and bits/dim); 256 for 8-bit
    batch_size: int
    num_samples: int
    # A linear model with a Gaussian decoder of fixed or shared σ: its ELBO is closed-form
    # (`linear.linear_vae_elbo`), so training and evaluation use it instead of z samples.
    exact_linear: bool = False


def make_hyper(sigma: float, beta: float) -> Hyper:
    return Hyper(
        log_sigma=jnp.log(jnp.float32(sigma)), beta=jnp.float32(beta), active=jnp.bool_(True)
    )


def observation_log_sigma(problem: Problem, params: Any, hyper: Hyper) -> jax.Array:
    """The σ the likelihood uses: the config's (fixed), the model's (learned) or unused (0)."""
    scale = problem.likelihood.scale
    if scale == "fixed":
        return hyper.log_sigma
    if scale in ("shared", "per_pixel"):
        return problem.model.apply(params, method=models.VAE.learned_log_sigma)
    return jnp.zeros(())


def example_elbo(
    problem: Problem, params: Any, x: jax.Array, hyper: Hyper, rng: jax.Array, num_samples: int
) -> dict[str, jax.Array]:
    """ELBO terms of ONE example under the problem's model and likelihood (`vae_jax.elbo.elbo`);
    exact for `problem.exact_linear`, where `rng` and `num_samples` go unused."""
    if problem.exact_linear:
        return _exact_linear_elbo(problem, params, x, hyper)
    mean, log_var = problem.model.apply(params, x, method=models.VAE.encode)
    decode, log_likelihood = decoder_and_likelihood(problem, params, hyper)
    return elbo.elbo(
        rng, x, mean, log_var, decode, log_likelihood, num_samples=num_samples, beta=hyper.beta
    )


def _exact_linear_elbo(problem: Problem, params: Any, x: jax.Array, hyper: Hyper):
    sigma_sq = jnp.exp(2.0 * observation_log_sigma(problem, params, hyper))
    terms = linear.linear_vae_elbo(x.reshape(-1), **models.linear_params(params), sigma_sq=sigma_sq)
    return {**terms, "objective": terms["recon"] - hyper.beta * terms["kl"]}


def decoder_and_likelihood(
    problem: Problem, params: Any, hyper: Hyper
) -> tuple[Callable, Callable]:
    """decode(z) -> out and log_likelihood(x, out) -> [], as `vae_jax.elbo` takes them."""
    log_sigma = observation_log_sigma(problem, params, hyper)
    decode = functools.partial(problem.model.apply, params, method=models.VAE.decode)
    return decode, lambda x, out: problem.likelihood.log_prob(x, out, log_sigma)


def transform_batch(problem: Problem, rng: jax.Array, batch: jax.Array) -> jax.Array:
    if problem.transform == "dequantize":
        return data.dequantize(rng, batch, num_bins=problem.num_bins)
    if problem.transform == "binarize":
        return data.binarize(rng, batch)
    return batch

"""A model + a likelihood + σ → the per-example objective the train step and evaluation use.

`Problem` is everything static about a run (model, likelihood, data, what each step does to a
batch); `Hyper` holds the per-member arrays the step takes (hyper-parameters, and whether the member
is still running), so `jax.vmap` over members is a sweep.
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

from vae_jax import data, elbo, likelihoods, models


@flax.struct.dataclass
class Hyper:
    """Per-member arrays the step takes (vmappable): two hyper-parameters and one run flag."""

    log_sigma: jax.Array  # log σ of a fixed-σ Gaussian decoder (ignored by other likelihoods)
    beta: jax.Array  # KL weight of the training objective
    # Run state, not a hyper-parameter: False once a sweep member is stopped (non-finite loss) or
    # for the padding copies of a sharded sweep; the step then leaves its parameters unchanged.
    running: jax.Array


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


def make_hyper(sigma: float, beta: float) -> Hyper:
    return Hyper(
        log_sigma=jnp.log(jnp.float32(sigma)), beta=jnp.float32(beta), running=jnp.bool_(True)
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
    """ELBO terms of ONE example under the problem's model and likelihood (`vae_jax.elbo.elbo`)."""
    mean, log_var = problem.model.apply(params, x, method=models.VAE.encode)
    decode, log_likelihood = decoder_and_likelihood(problem, params, hyper)
    return elbo.elbo(
        rng, x, mean, log_var, decode, log_likelihood, num_samples=num_samples, beta=hyper.beta
    )


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

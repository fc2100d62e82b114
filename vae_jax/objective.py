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
from vae_jax.shapes import check_same_shape


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
    train_x: np.ndarray  # the training split minus the validation examples
    val_x: np.ndarray  # held out from the training split for selection (may be empty)
    test_x: np.ndarray
    test_grey: np.ndarray | None  # the grey test images a binarised family's test_x came from
    transform: str  # 'dequantize' | 'binarize' | 'none': what each step does to a batch
    num_bins: int  # pixel levels of the data (dequantisation and bits/dim); 256 for 8-bit
    batch_size: int
    num_samples: int
    sigma_floor: float  # lower bound on any learned, predicted or closed-form σ


def make_hyper(sigma: float, beta: float) -> Hyper:
    return Hyper(
        log_sigma=jnp.log(jnp.float32(sigma)), beta=jnp.float32(beta), running=jnp.bool_(True)
    )


def observation_log_sigma(problem: Problem, params: Any, hyper: Hyper) -> jax.Array:
    """The σ the likelihood scores with: the config's (fixed), the model's (learned), the one an
    optimal-σ member carries (fitted on training data after training), or unused (0)."""
    scale = problem.likelihood.scale
    if scale in ("fixed", "optimal"):
        return hyper.log_sigma
    if scale in ("shared", "per_pixel"):
        return problem.model.apply(params, method=models.VAE.learned_log_sigma)
    return jnp.zeros(())


def example_elbo(
    problem: Problem, params: Any, x: jax.Array, hyper: Hyper, rng: jax.Array, num_samples: int
) -> dict[str, jax.Array]:
    """The TRAINING objective's terms for ONE example (`vae_jax.elbo.elbo`, β from `hyper`)."""
    mean, log_var = problem.model.apply(params, x, method=models.VAE.encode)
    log_sigma = observation_log_sigma(problem, params, hyper)
    decode, log_likelihood = decoder_and_likelihood(problem, params, log_sigma, train=True)
    return elbo.elbo(
        rng, x, mean, log_var, decode, log_likelihood, num_samples=num_samples, beta=hyper.beta
    )


def decoder_and_likelihood(
    problem: Problem, params: Any, log_sigma: jax.Array, *, train: bool
) -> tuple[Callable, Callable]:
    """decode(z) -> out and log_likelihood(x, out) -> [], as `vae_jax.elbo` takes them.

    With `train=False` the likelihood is the registry's normalised density at `log_sigma`. With
    `train=True` an optimal-σ model uses σ*² = mean((x − f(z))²) of the example it scores
    (σ-VAE's objective): a training objective only, since a σ read off x is not a density in x.
    """
    decode = functools.partial(problem.model.apply, params, method=models.VAE.decode)
    if train and problem.likelihood.scale == "optimal":
        floor = problem.sigma_floor

        def optimal_log_prob(x, out):
            check_same_shape(x, out[0], "mean")
            # Flat, as the registry's log_prob: an [H, W, 1] event vectorises poorly on CPU.
            return likelihoods.optimal_gaussian_log_prob(x.reshape(-1), out[0].reshape(-1), floor)

        return decode, optimal_log_prob
    return decode, lambda x, out: problem.likelihood.log_prob(x, out, log_sigma)


def transform_batch(problem: Problem, rng: jax.Array, batch: jax.Array) -> jax.Array:
    if problem.transform == "dequantize":
        return data.dequantize(rng, batch, num_bins=problem.num_bins)
    if problem.transform == "binarize":
        return data.binarize(rng, batch)
    return batch

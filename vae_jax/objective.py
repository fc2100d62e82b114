"""A model + a likelihood + σ → the per-example objective the train step and evaluation use.

`Problem` is everything static about a run (model, likelihood, data, what each step does to a
batch); `Hyper` holds the per-member arrays the step takes (hyper-parameters, and whether the member
is still running), so `jax.vmap` over members is a sweep. `Remedy` (in `Hyper`) holds what a
member's TRAINING objective does beyond the β-ELBO — KL warm-up, free bits, GECO — and
`batch_objective` applies it; evaluation never reads it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import elbo, likelihoods, linear, models, pixels
from vae_jax.spec_types import Train


@flax.struct.dataclass
class Remedy:
    """How one member's training objective departs from the β-ELBO (each off at 0)."""

    kl_warmup_start: jax.Array  # KL weight at step 0 (× β), ramping linearly to β
    kl_warmup_steps: jax.Array  # steps the ramp takes; 0: no warm-up
    free_bits: jax.Array  # λ nats: latent j's batch-mean KL enters as max(λ, KL_j); 0: off
    geco_kappa: jax.Array  # GECO's constraint mean((x − f(z))²) ≤ κ², κ in pixel units; 0: off
    geco_rate: jax.Array  # α in λ ← λ·exp(α·C_ma), C in squared pixel units
    geco_decay: jax.Array  # C_ma ← decay·C_ma + (1 − decay)·C


@flax.struct.dataclass
class Geco:
    """GECO's multiplier state (in the TrainState, so checkpoints carry it)."""

    log_lambda: jax.Array  # log λ, λ the multiplier of the per-pixel MSE constraint
    constraint_ma: jax.Array  # moving average of C = mean((x − f(z))²) − κ² over steps


@flax.struct.dataclass
class Hyper:
    """Per-member arrays the step takes (vmappable): hyper-parameters, the training objective's
    remedies and one run flag."""

    log_sigma: jax.Array  # log σ of a fixed-σ Gaussian decoder (ignored by other likelihoods)
    remedy: Remedy  # the training objective's departures from the β-ELBO (all off: the ELBO)
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
    # A linear model with a Gaussian decoder of fixed or shared σ: its ELBO is closed-form
    # (`linear.linear_vae_elbo`), so training and evaluation use it instead of z samples.
    exact_linear: bool = False
    # A shared learned scale fitted on the validation split between chunks
    # (`likelihood.sigma_fit='validation'`, `loop.make_scale_fit`): the gradient leaves it alone.
    scale_on_validation: bool = False


def make_hyper(sigma: float, beta: float, remedy: Remedy | None = None) -> Hyper:
    return Hyper(
        log_sigma=jnp.log(jnp.float32(sigma)),
        remedy=remedy if remedy is not None else make_remedy(),
        beta=jnp.float32(beta),
        running=jnp.bool_(True),
    )


def make_remedy(
    kl_warmup_start: float = 0.0,
    kl_warmup_steps: int = 0,
    free_bits: float = 0.0,
    geco_kappa: float = 0.0,
    geco_rate: float = 0.1,
    geco_decay: float = 0.99,
) -> Remedy:
    """A `Remedy` of arrays; the defaults turn every remedy off."""
    return Remedy(
        kl_warmup_start=jnp.float32(kl_warmup_start),
        kl_warmup_steps=jnp.int32(kl_warmup_steps),
        free_bits=jnp.float32(free_bits),
        geco_kappa=jnp.float32(geco_kappa),
        geco_rate=jnp.float32(geco_rate),
        geco_decay=jnp.float32(geco_decay),
    )


def remedy_of(train: Train, only: str | None = None) -> Remedy:
    """The `Remedy` a run spec's train section sets; `only` (a remedy's name, or 'none' for the
    plain β-ELBO) keeps just that one on."""
    on = {name: name in train.remedies for name in ("kl_warmup", "free_bits", "geco")}
    if only is not None:
        on = {name: name == only for name in on}
    return make_remedy(
        kl_warmup_start=train.kl_warmup_start if on["kl_warmup"] else 0.0,
        kl_warmup_steps=train.kl_warmup_steps if on["kl_warmup"] else 0,
        free_bits=train.free_bits if on["free_bits"] else 0.0,
        geco_kappa=train.geco_kappa if on["geco"] else 0.0,
        geco_rate=train.geco_rate,
        geco_decay=train.geco_decay,
    )


def kl_weight(hyper: Hyper, step: jax.Array) -> jax.Array:
    """β·w(step), w ramping linearly from kl_warmup_start at step 0 to 1 at kl_warmup_steps."""
    r = hyper.remedy
    progress = jnp.minimum(step / jnp.maximum(r.kl_warmup_steps, 1), 1.0)
    ramp = r.kl_warmup_start + (1.0 - r.kl_warmup_start) * progress
    return hyper.beta * jnp.where(r.kl_warmup_steps > 0, ramp, 1.0)


def batch_objective(per_example: dict[str, jax.Array], hyper: Hyper, step: jax.Array):
    """The training objective of a batch (maximised): mean recon − kl_weight · Σ_j KL̃_j.

    KL̃_j is latent j's KL averaged over the batch, with free bits max(λ, ·) — the clamp is on
    the batch average per latent, as in Kingma et al. (2016)'s code (openai/iaf, tf_train.py:
    `kl_ave = tf.maximum(tf.reduce_mean(kl, [0]), kl_min)`), so a latent below λ gets no KL
    gradient. `per_example`: `example_elbo`'s dict with a leading batch axis.
    """
    kl_per_latent = jnp.mean(per_example["kl_per_latent"], axis=0)  # [k]
    free_bits = hyper.remedy.free_bits
    clamped = jnp.where(free_bits > 0, jnp.maximum(kl_per_latent, free_bits), kl_per_latent)
    return jnp.mean(per_example["recon"]) - kl_weight(hyper, step) * jnp.sum(clamped)


def with_geco_sigma(problem: Problem, hyper: Hyper, geco: Geco, step: jax.Array) -> Hyper:
    """`hyper` with a GECO member's σ set by its multiplier. The multiplier starts from the
    member's own weighting, λ₀ = D/(2σ²), read off `hyper.log_sigma` at step 0."""
    log_half_dims = math.log(math.prod(problem.train_x.shape[1:]) / 2.0)
    log_lambda = jnp.where(step == 0, log_half_dims - 2.0 * hyper.log_sigma, geco.log_lambda)
    on = hyper.remedy.geco_kappa > 0
    return hyper.replace(
        log_sigma=jnp.where(on, geco_log_sigma(problem, log_lambda), hyper.log_sigma)
    )


def geco_log_sigma(problem: Problem, log_lambda: jax.Array) -> jax.Array:
    """The σ a multiplier λ weights the MSE with: λ·mean_d (x − f)² = Σ_d (x − f)²/(2σ²), so
    σ² = D/(2λ)."""
    return 0.5 * (math.log(math.prod(problem.train_x.shape[1:]) / 2.0) - log_lambda)


def update_geco(
    problem: Problem, geco: Geco, hyper: Hyper, per_example: dict[str, jax.Array], step: jax.Array
) -> Geco:
    """GECO (Rezende & Viola 2018, Algorithm 1) after a step: C = batch MSE − κ², its moving
    average C_ma (C itself at step 0), λ ← λ·exp(α·C_ma), with σ(λ) kept in [sigma_floor,
    1/sigma_floor] (pixel units: beyond either end the weighting means nothing, and exp(2 log σ)
    would overflow).

    `hyper` is the step's (its σ from `with_geco_sigma`); `per_example`: `example_elbo`'s
    dict over the batch, whose `sq_err` only a fixed-σ Gaussian has (others: `geco` unchanged).
    """
    if "sq_err" not in per_example:
        return geco
    r = hyper.remedy
    num_dims = math.prod(problem.train_x.shape[1:])
    constraint = jnp.mean(per_example["sq_err"]) / num_dims - r.geco_kappa**2
    average = r.geco_decay * geco.constraint_ma + (1.0 - r.geco_decay) * constraint
    average = jnp.where(step == 0, constraint, average)
    log_lambda = math.log(num_dims / 2.0) - 2.0 * hyper.log_sigma + r.geco_rate * average
    bound = 2.0 * math.log(1.0 / problem.sigma_floor)
    log_lambda = jnp.clip(
        log_lambda, math.log(num_dims / 2.0) - bound, math.log(num_dims / 2.0) + bound
    )
    on = r.geco_kappa > 0
    return Geco(
        log_lambda=jnp.where(on, log_lambda, geco.log_lambda),
        constraint_ma=jnp.where(on, average, geco.constraint_ma),
    )


def initial_geco() -> Geco:
    """A placeholder until the first step reads λ₀ off the member's σ (`with_geco_sigma`)."""
    return Geco(log_lambda=jnp.zeros((), jnp.float32), constraint_ma=jnp.zeros((), jnp.float32))


def scored_hyper(problem: Problem, hyper: Hyper, geco: Geco) -> Hyper:
    """The hyper a trained member is scored with: a GECO member's σ is where its multiplier
    ended (the fixed σ it started from is not what it trained with)."""
    on = hyper.remedy.geco_kappa > 0
    return hyper.replace(
        log_sigma=jnp.where(on, geco_log_sigma(problem, geco.log_lambda), hyper.log_sigma)
    )


def observation_log_sigma(problem: Problem, params: Any, hyper: Hyper) -> jax.Array:
    """The σ the likelihood scores with: the config's (fixed), the model's (learned; no gradient
    flows to one fitted on validation data), the one an optimal-σ member carries (fitted on
    training data after training), or unused (0)."""
    likelihood = problem.likelihood
    if likelihood.fixed_sigma or likelihood.optimal_scale:
        return hyper.log_sigma
    if likelihood.learns_scale:
        log_sigma = problem.model.apply(params, method=models.VAE.learned_log_sigma)
        if problem.scale_on_validation:
            return jax.lax.stop_gradient(log_sigma)
        return log_sigma
    return jnp.zeros(())


def example_elbo(
    problem: Problem, params: Any, x: jax.Array, hyper: Hyper, rng: jax.Array, num_samples: int
) -> dict[str, jax.Array]:
    """The TRAINING objective's terms for ONE example (`vae_jax.elbo.elbo`, β from `hyper`).

    A fixed-σ Gaussian also returns `sq_err` = E_q‖x − f(z)‖² (GECO's constraint): its
    likelihood enters `elbo.elbo` as −mse_weight(σ)·‖x − f(z)‖² and the normaliser
    −(D/2)·log(2πσ²) is added after, so the squared error is read back exactly instead of as
    the small difference of two large numbers that it is at a large σ.

    For `problem.exact_linear` the terms are closed-form (`exact_linear_elbo`; `rng` and
    `num_samples` go unused) and `sq_err` is the expected E_q‖x − f(z)‖² the ELBO weighs.
    """
    log_sigma = observation_log_sigma(problem, params, hyper)
    if problem.exact_linear:
        terms = exact_linear_elbo(params, x, log_sigma)
        terms["objective"] = terms["recon"] - hyper.beta * terms["kl"]
        if problem.likelihood.fixed_sigma:
            terms["sq_err"] = terms["expected_sq_error"]
        return terms
    mean, log_var = problem.model.apply(params, x, method=models.VAE.encode)
    decode, log_likelihood = decoder_and_likelihood(problem, params, log_sigma, train=True)
    weight = likelihoods.mse_weight(jnp.exp(log_sigma))
    if problem.likelihood.fixed_sigma:

        def log_likelihood(x, out):
            return -weight * squared_error(x, out[0])

    terms = elbo.elbo(
        rng, x, mean, log_var, decode, log_likelihood, num_samples=num_samples, beta=hyper.beta
    )
    if not problem.likelihood.fixed_sigma:
        return terms
    log_norm = -0.5 * x.size * (math.log(2.0 * math.pi) + 2.0 * log_sigma)
    shifted = {k: terms[k] + log_norm for k in ("recon", "elbo", "objective")}
    return {**terms, **shifted, "sq_err": -terms["recon"] / weight}


def squared_error(x: jax.Array, mean: jax.Array) -> jax.Array:
    """‖x − mean‖² of one example, shapes checked (no silent broadcast)."""
    likelihoods.check_same_shape(x, mean, "mean")
    return jnp.sum(jnp.square(x - mean))


def exact_linear_elbo(params: Any, x: jax.Array, log_sigma: jax.Array) -> dict[str, jax.Array]:
    """The closed-form ELBO terms (`linear.linear_vae_elbo`) of ONE example x [..event] under a
    linear VAE with a Gaussian decoder of scalar σ = exp(log_sigma)."""
    mats = models.linear_vae_matrices(params)
    return linear.linear_vae_elbo(x.reshape(-1), **mats, sigma_sq=jnp.exp(2.0 * log_sigma))


def decoder_and_likelihood(
    problem: Problem, params: Any, log_sigma: jax.Array, *, train: bool
) -> tuple[Callable, Callable]:
    """decode(z) -> out and log_likelihood(x, out) -> [], as `vae_jax.elbo` takes them.

    With `train=False` the likelihood is the registry's normalised density at `log_sigma`. With
    `train=True` an optimal-σ model uses σ*² = mean((x − f(z))²) of the example it scores
    (σ-VAE's objective): a training objective only, since a σ read off x is not a density in x.
    """
    decode = functools.partial(problem.model.apply, params, method=models.VAE.decode)
    if train and problem.likelihood.optimal_scale:
        floor = problem.sigma_floor
        return decode, lambda x, out: likelihoods.optimal_gaussian_log_prob(x, out[0], floor)
    # Every event is scored flat: XLA's CPU backend vectorises the innermost axis, which is 1 for
    # an image's [H, W, 1] (what that gains: docs/speed.md). It leaves the parameters
    # bit-identical (elementwise values and their gradients do not change; only the loss's sum
    # is reordered). The optimal σ's σ*² is a mean over the event: flat would reorder it and
    # move its trained numbers, so it keeps the event's shape.
    return decode, lambda x, out: problem.likelihood.log_prob(x, out, log_sigma, flat=True)


def transform_batch(problem: Problem, rng: jax.Array, batch: jax.Array) -> jax.Array:
    if problem.transform == "dequantize":
        return pixels.dequantize(rng, batch, num_bins=problem.num_bins)
    if problem.transform == "binarize":
        return pixels.binarize(rng, batch)
    return batch

"""Training a linear VAE with a Gaussian decoder to its optimum, not near it.

For `model.kind='linear'` with a fixed or shared σ (`Problem.exact_linear`), whole-training-set
steps (`train.full_batch`) and data used as they are (no dequantisation), the objective is
deterministic and every block of parameters has a closed-form maximiser, so each step is one
sweep of `linear.coordinate_ascent_step` (variational EM): the objective never decreases and no
learning rate is involved. A chunk has the signature and metrics of `train.make_train_chunk`, so
`loop.fit`, checkpoints, sweeps and `vae_jax.convergence` treat it like any other.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from vae_jax import linear, models
from vae_jax.objective import Hyper, Problem, observation_log_sigma


def applies(problem: Problem) -> bool:
    """Whether `problem` trains by coordinate ascent (else by `train.make_train_chunk`)."""
    full_batch = problem.batch_size == len(problem.train_x)
    return problem.exact_linear and full_batch and problem.transform == "none"


def make_chunk(problem: Problem, num_steps: int) -> Callable:
    """chunk(state, train_x, hyper, rng) -> (state, per-step metrics): `num_steps` sweeps.

    Each step's metrics (loss = −objective, elbo, recon, kl, kl_per_latent: means over the
    training set) are those of the parameters it starts from, as in `train.make_train_step`.
    """
    learn_sigma = problem.likelihood.shared_learned_scale
    floor = problem.model.sigma_floor

    def chunk(state, train_x: jax.Array, hyper: Hyper, rng: jax.Array):
        del rng  # nothing is sampled
        x = train_x.reshape(train_x.shape[0], -1)
        mean = jnp.mean(x, axis=0)
        cov = (x - mean).T @ (x - mean) / x.shape[0]

        def step(state, _):
            params = state.params
            sigma_sq = jnp.exp(2.0 * observation_log_sigma(problem, params, hyper))
            mats = models.linear_vae_matrices(params)
            per_example = jax.vmap(
                lambda x_: linear.linear_vae_elbo(x_, **mats, sigma_sq=sigma_sq)
            )(x)
            objective = per_example["recon"] - hyper.beta * per_example["kl"]
            metrics = {
                "loss": -jnp.mean(objective),
                "elbo": jnp.mean(per_example["elbo"]),
                "recon": jnp.mean(per_example["recon"]),
                "kl": jnp.mean(per_example["kl"]),
                "kl_per_latent": jnp.mean(per_example["kl_per_latent"], axis=0),
            }
            new = linear.coordinate_ascent_step(
                mean, cov, **mats, sigma_sq=sigma_sq, beta=hyper.beta, learn_sigma=learn_sigma
            )
            new_params = models.with_linear_vae_matrices(params, new)
            if learn_sigma:
                new_params = models.with_learned_sigma(new_params, jnp.sqrt(new["sigma_sq"]), floor)
            # As in the train step: a stopped member (or a non-finite update) keeps its params.
            keep = hyper.running & jnp.all(
                jnp.array([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(new_params)])
            )
            params = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new_params, params)
            return state.replace(step=state.step + 1, params=params), metrics

        return jax.lax.scan(step, state, length=num_steps)

    return chunk

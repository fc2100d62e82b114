"""Training: TrainState, the optimiser, the pure train step and the on-device chunk (`lax.scan`).

The pieces are pure functions of arrays so that `vae_jax.sweep` can stack many members and run
`jax.vmap` of the very same step (the host loop that runs the chunks is `vae_jax.loop.fit`):

  train_step(state, batch, hyper, rng) -> (state, metrics)      one optimiser step
  train_chunk(state, train_x, hyper, rng) -> (state, metrics)   `lax.scan` of steps; each step's
                                                                 batch is a pure function of
                                                                 (rng, step), so resuming from a
                                                                 checkpoint replays the same data
Anything a sweep varies (σ, β, learning rate, seed) is an array: σ and β in `Hyper`, the learning
rate inside the optimiser state (`optax.inject_hyperparams`), the seed in `rng`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import NamedSharding

from vae_jax import objective
from vae_jax.objective import Hyper, Problem, example_elbo, transform_batch
from vae_jax.spec import RunSpec


class TrainState(train_state.TrainState):
    geco: objective.Geco  # GECO's multiplier and constraint average (unused by other members)


def make_optimizer(spec: RunSpec) -> optax.GradientTransformation:
    """Adam with the learning rate as optimiser state, so a sweep can vary it per member.

    `train.lr_schedule='cosine'` multiplies it by a cosine decay to 1% over `train.num_steps`
    (the shape is shared by all members; the peak rate stays a per-member array).
    """
    if spec.train.lr_schedule == "cosine":
        schedule = optax.cosine_decay_schedule(1.0, spec.train.num_steps, alpha=0.01)
    else:
        schedule = optax.constant_schedule(1.0)

    def adam(learning_rate):
        return optax.chain(
            optax.scale_by_adam(), optax.scale_by_schedule(schedule), optax.scale(-learning_rate)
        )

    return optax.inject_hyperparams(adam)(learning_rate=spec.train.learning_rate)


def create_train_state(
    problem: Problem, tx: optax.GradientTransformation, rng: jax.Array
) -> TrainState:
    x = jnp.zeros(problem.train_x.shape[1:], jnp.float32)
    params = problem.model.init(rng, x)
    return TrainState.create(
        apply_fn=problem.model.apply, params=params, tx=tx, geco=objective.initial_geco()
    )


def make_train_step(problem: Problem, *, batch_sharding: NamedSharding | None = None) -> Callable:
    """train_step(state, batch, hyper, rng) -> (state, metrics); pure, jit/vmap it.

    `batch_sharding` (a `NamedSharding` over a 'batch' mesh axis) splits the batch's examples
    across devices, for sweeps with fewer members than devices (`vae_jax.sweep`).
    """

    def train_step(state: TrainState, batch: jax.Array, hyper: Hyper, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        data_rng, sample_rng = jax.random.split(rng)
        x = transform_batch(problem, data_rng, batch)
        if batch_sharding is not None:
            x = jax.lax.with_sharding_constraint(x, batch_sharding)
        sample_rngs = jax.random.split(sample_rng, x.shape[0])
        hyper = objective.with_geco_sigma(problem, hyper, state.geco, state.step)

        def loss_fn(params):
            per_example = jax.vmap(
                lambda x, r: example_elbo(problem, params, x, hyper, r, problem.num_samples)
            )(x, sample_rngs)
            return -objective.batch_objective(per_example, hyper, state.step), per_example

        (loss, per_example), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        step_metrics = {
            "loss": loss,
            "elbo": jnp.mean(per_example["elbo"]),
            "recon": jnp.mean(per_example["recon"]),
            "kl": jnp.mean(per_example["kl"]),
        }
        if problem.likelihood.fixed_sigma or problem.likelihood.learns_scale:  # GECO's: σ(λ)
            log_sigma = objective.observation_log_sigma(problem, state.params, hyper)
            step_metrics["sigma"] = jnp.sqrt(jnp.mean(jnp.exp(2.0 * log_sigma)))
        if "sq_err" in per_example:  # a fixed σ: the per-pixel MSE GECO constrains
            step_metrics["mse"] = jnp.mean(per_example["sq_err"]) / math.prod(x.shape[1:])
        geco = objective.update_geco(problem, state.geco, hyper, per_example, state.step)
        # A non-finite step (or a stopped member) leaves the parameters at their last good
        # values, so a sweep's other members go on; the host sees the metric and stops the run
        # or the member for good (its optimiser state is then never used again). The updates
        # are masked, not the whole state, so the select fuses into the parameter update
        # instead of copying the parameters and both Adam moments.
        keep = hyper.running & jnp.isfinite(loss)
        keep &= jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: jnp.where(keep, u, 0.0), updates)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            geco=jax.tree.map(lambda new, old: jnp.where(keep, new, old), geco, state.geco),
        )
        return new_state, step_metrics

    return train_step


def make_train_chunk(
    problem: Problem, num_steps: int, *, batch_sharding: NamedSharding | None = None
) -> Callable:
    """train_chunk(state, train_x, hyper, rng): `num_steps` steps as one on-device `lax.scan`.

    The batch of step s is rows perm_e[(s mod S)·B : ...] of the device-resident train set, with
    perm_e a permutation drawn from (rng, epoch e = s // S): no host transfer in the loop, and
    the data order depends only on the seed and the step number.
    """
    train_step = make_train_step(problem, batch_sharding=batch_sharding)
    batch_size = problem.batch_size

    def train_chunk(state: TrainState, train_x: jax.Array, hyper: Hyper, rng: jax.Array):
        perm_rng, step_rng = jax.random.split(rng)
        num_examples = train_x.shape[0]
        steps_per_epoch = num_examples // batch_size
        # The permutations of every epoch this chunk touches, drawn once up front rather than
        # one per step: the same batches, without a full permutation inside every step.
        first_epoch = state.step // steps_per_epoch
        epochs = first_epoch + jnp.arange(num_steps // steps_per_epoch + 2)
        perms = jax.vmap(
            lambda e: jax.random.permutation(jax.random.fold_in(perm_rng, e), num_examples)
        )(epochs)

        def body(state, _):
            epoch, position = jnp.divmod(state.step, steps_per_epoch)
            perm = perms[epoch - first_epoch]
            idx = jax.lax.dynamic_slice_in_dim(perm, position * batch_size, batch_size)
            state, step_metrics = train_step(state, train_x[idx], hyper, step_rng)
            return state, step_metrics

        return jax.lax.scan(body, state, length=num_steps)

    return train_chunk


def log_interval(spec: RunSpec) -> int:
    """Steps per on-device chunk: they divide train.log_every and train.num_steps, and for a
    scale fitted on validation data (`spec.Likelihood.scale_on_validation`)
    likelihood.sigma_fit_every."""
    steps = math.gcd(spec.train.log_every, spec.train.num_steps)
    if spec.likelihood.scale_on_validation:
        steps = math.gcd(steps, spec.likelihood.sigma_fit_every)
    return steps

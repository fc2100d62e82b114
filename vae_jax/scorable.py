"""What gets scored: a `Scorable` is a VAE seen one example at a time — encode(x) → (mean, log
variance), decode(z) → decoder output, its likelihood family, how images are transformed
before scoring, and the floor of a fitted scale. A sweep member (`of_problem`) and a user's
callables (`vae_jax.scoring.as_scorable`) are both one, so `vae_jax.evaluate` and
`vae_jax.refit` score them with the same code; `batched` and `jit_members` run that code over
the examples of a split and over a sweep's members.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from vae_jax import likelihoods, models
from vae_jax.objective import Problem, exact_linear_elbo, transform_batch


@dataclasses.dataclass(frozen=True)
class Scorable:
    """A thing that can be scored, one example at a time: a trained member (`of_problem`) or a
    user's callables (`vae_jax.scoring`). `params` is whatever encode and decode take (a
    member's Flax parameters; None for callables that carry their own)."""

    encode: Callable  # (params, x [*event]) -> (mean [k], log_var [k]): q(z|x)
    decode: Callable  # (params, z [k]) -> out [num_outputs, *event], the registry's decoder output
    likelihood: likelihoods.Likelihood  # log p(x | out) at a log scale, normalised in x
    transform: Callable  # (rng, x) -> x as scored: dequantised, binarised or as given
    event_shape: tuple[int, ...]
    latent_dim: int
    sigma_floor: float  # every fitted scale is at least this
    num_bins: int  # pixel levels, for bits/dim
    # The refit gives every pixel its own scale (a user's per-pixel fit); otherwise a shared
    # scale pools the pixels and a per-pixel likelihood's map keeps its shape.
    fit_each_pixel: bool = False
    # (params, x, log_sigma) -> the ELBO's terms in closed form (a linear VAE), else sampled.
    exact_elbo: Callable | None = None
    keep_reconstruction: bool = False  # also return the decoder mean (binarised data's grey MSE)


def of_problem(problem: Problem) -> Scorable:
    """A trained member of `problem` as a `Scorable` (params: its Flax parameters)."""
    model = problem.model
    return Scorable(
        encode=lambda params, x: model.apply(params, x, method=models.VAE.encode),
        decode=lambda params, z: model.apply(params, z, method=models.VAE.decode),
        likelihood=problem.likelihood,
        transform=functools.partial(transform_batch, problem),
        event_shape=tuple(problem.test_x.shape[1:]),
        latent_dim=model.latent_dim,
        sigma_floor=problem.sigma_floor,
        num_bins=problem.num_bins,
        exact_elbo=exact_linear_elbo if problem.exact_linear else None,
        keep_reconstruction=problem.test_grey is not None,
    )


def batched(one_example: Callable, batch_size: int) -> Callable:
    """f(params, x[N], log_sigma, rng) -> per-example outputs [N, ...]: `one_example` vmapped
    over batches of `batch_size`, the batches run one after another (`lax.map`) to bound memory;
    the last batch is padded and the padding dropped."""

    def run(params, x, log_sigma, rng):
        n = x.shape[0]
        num_batches = -(-n // batch_size)
        padded = jnp.concatenate(
            [x, jnp.zeros((num_batches * batch_size - n, *x.shape[1:]), x.dtype)]
        )
        rngs = jax.random.split(rng, num_batches * batch_size)
        batches = padded.reshape(num_batches, batch_size, *x.shape[1:])
        rngs = rngs.reshape(num_batches, batch_size, *rngs.shape[1:])
        per_batch = jax.lax.map(
            lambda b: jax.vmap(one_example, in_axes=(None, 0, None, 0))(
                params, b[0], log_sigma, b[1]
            ),
            (batches, rngs),
        )
        return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n], per_batch)

    return run


def jit_members(fn: Callable, in_axes: tuple, members: bool) -> Callable:
    """fn jitted; with `members`, vmapped first over a leading sweep-member axis."""
    return jax.jit(jax.vmap(fn, in_axes=in_axes) if members else fn)

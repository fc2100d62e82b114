"""Evaluation: per-example test metrics of a trained model (jit it), and their summary."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vae_jax import elbo, metrics, models
from vae_jax.objective import (
    Problem,
    decoder_and_likelihood,
    example_elbo,
    observation_log_sigma,
    transform_batch,
)


def make_evaluate(problem: Problem, *, iwae_samples: int, batch_size: int) -> Callable:
    """evaluate(params, test_x, hyper, rng) -> per-example arrays over the test set (jit it)."""

    def one_example(params, x, hyper, rng):
        transform_rng, elbo_rng, iwae_rng = jax.random.split(rng, 3)
        x = transform_batch(problem, transform_rng, x)
        terms = example_elbo(problem, params, x, hyper, elbo_rng, 1)
        mean, log_var = problem.model.apply(params, x, method=models.VAE.encode)
        log_sigma = observation_log_sigma(problem, params, hyper)
        out = problem.model.apply(params, mean, method=models.VAE.decode)
        recon = problem.likelihood.mean(out, log_sigma)
        decode, log_likelihood = decoder_and_likelihood(problem, params, hyper)
        iwae = elbo.iwae_bound(
            iwae_rng, x, mean, log_var, decode, log_likelihood, num_samples=iwae_samples
        )
        sq_err = jnp.sum((x - recon) ** 2)
        return {
            "elbo": terms["elbo"],
            "recon": terms["recon"],
            "kl": terms["kl"],
            "kl_per_latent": terms["kl_per_latent"],
            "posterior_mean": mean,
            "iwae": iwae,
            "sq_err": sq_err,
            "psnr": metrics.psnr(x, recon),
            "log_sigma": jnp.mean(_reported_log_sigma(problem, log_sigma, out, x, recon)),
        }

    def evaluate(params, test_x, hyper, rng):
        n = test_x.shape[0]
        num_batches = -(-n // batch_size)
        padded = jnp.concatenate(
            [test_x, jnp.zeros((num_batches * batch_size - n, *test_x.shape[1:]), test_x.dtype)]
        )
        rngs = jax.random.split(rng, num_batches * batch_size)
        batches = padded.reshape(num_batches, batch_size, *test_x.shape[1:])
        rngs = rngs.reshape(num_batches, batch_size, *rngs.shape[1:])
        per_batch = jax.lax.map(
            lambda b: jax.vmap(one_example, in_axes=(None, 0, None, 0))(params, b[0], hyper, b[1]),
            (batches, rngs),
        )
        return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n], per_batch)

    return evaluate


def _reported_log_sigma(problem, log_sigma, out, x, recon):
    scale = problem.likelihood.scale
    if scale == "decoder":
        return out[1]
    if scale == "optimal":
        return 0.5 * jnp.log(jnp.maximum(jnp.mean((x - recon) ** 2), 1e-6))
    return log_sigma


def summarize(per_example: dict[str, np.ndarray], problem: Problem) -> dict[str, float | None]:
    """Final test metrics (docs/design.md keys) from `evaluate`'s per-example arrays."""
    num_dims = math.prod(problem.test_x.shape[1:])
    iwae_nll = -float(np.mean(per_example["iwae"]))
    scale = problem.likelihood.scale
    return {
        "test/elbo": float(np.mean(per_example["elbo"])),
        "test/recon_log_prob": float(np.mean(per_example["recon"])),
        "test/recon_mse": float(np.mean(per_example["sq_err"]) / num_dims),
        "test/kl": float(np.mean(per_example["kl"])),
        "test/active_units": int(metrics.active_units(per_example["posterior_mean"])),
        "test/collapsed_fraction": float(metrics.collapsed_fraction(per_example["kl_per_latent"])),
        "test/iwae_nll": iwae_nll,
        "test/bits_per_dim": float(
            metrics.bits_per_dim(
                iwae_nll,
                num_dims,
                discrete=problem.likelihood.support in ("binary", "discrete"),
                num_bins=problem.num_bins,
            )
        ),
        "test/psnr": float(np.mean(per_example["psnr"])),
        "sigma": None if scale == "none" else float(np.exp(np.mean(per_example["log_sigma"]))),
    }


def eval_batch_size(config: ml_collections.ConfigDict) -> int:
    """Examples per evaluation batch: keeps K·batch decoder outputs to ~16M floats."""
    return max(1, min(config.eval.batch_size, (1 << 24) // (config.eval.iwae_samples * 1024)))

"""Evaluation: every score is a normalised density whose parameters never looked at test data.

A member is scored twice, both proper densities:
- *as trained*: with the scale it trained with (the config's σ, the learned σ; an optimal-σ
  member carries the closed-form σ of its training data, since σ read off the scored image is
  no density);
- *refit*: with its scale recalibrated on the held-out VALIDATION split after training — the
  trained scale times the one factor c that maximises the validation IWAE bound, the score
  itself. The search starts from the closed form that maximises the one-sample ELBO (c² = mean
  over pixels of E_x E_q r²/σ² for a Gaussian, c = mean E|r|/b for Laplace, r = x − f(z); for a
  shared scale σ̂² = E_x E_q‖x − f(z)‖²/D) and moves along log c to the maximum of the bound
  on the very draws `val_refit` is scored with (`make_iwae_profile`, `best_log_factor`: never
  worse there than the closed form). A per-pixel σ keeps its shape. The scale is a choice, so
  it is made on held-out data like every other choice: σ fitted to training residuals is too
  small wherever the network overfits. Families whose scale is a decoder output, or that have
  none, have no refit; nor has a run without a validation split.
The training split gives an optimal-σ member its σ and a train NLL (to show overfitting), the
validation split the refit and the scores that selections use (one fitted scalar makes the refit's
validation score optimistic by O(1/N) nats per example), the test split the reported metrics.

  evaluate(params, x, log_sigma, rng) -> per-example arrays         (`make_evaluate`, jit it)
  residual_moments(params, x, log_sigma, rng) -> (E r², E|r|) maps  (`make_residual_moments`)
  evaluate_member(params, hyper, rng, splits) -> per-split arrays   (`make_evaluate_member`)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import elbo, metrics, models
from vae_jax.objective import (
    Hyper,
    Problem,
    decoder_and_likelihood,
    exact_linear_elbo,
    observation_log_sigma,
    transform_batch,
)

SPLITS = ("train", "val", "test")
# Per-example arrays `summarize` keeps for the splits other than test (their NLL only).
NLL_KEYS = ("elbo", "iwae", "sq_err")


def _batched(one_example: Callable, batch_size: int) -> Callable:
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


def make_evaluate(problem: Problem, *, iwae_samples: int, batch_size: int) -> Callable:
    """evaluate(params, x, log_sigma, rng) -> per-example arrays over x (jit it).

    Scores x with the registry's normalised density at `log_sigma` (unused by families whose
    scale is a decoder output or that have none): the ELBO (β = 1, one sample; closed-form for
    `problem.exact_linear`), the IWAE bound with `iwae_samples`, and the statistics the summary
    needs.
    """
    likelihood = problem.likelihood

    def one_example(params, x, log_sigma, rng):
        transform_rng, elbo_rng, iwae_rng = jax.random.split(rng, 3)
        x = transform_batch(problem, transform_rng, x)
        mean, log_var = problem.model.apply(params, x, method=models.VAE.encode)
        decode, log_likelihood = decoder_and_likelihood(problem, params, log_sigma, train=False)
        if problem.exact_linear:  # closed form: no sampling noise in the scores
            terms = exact_linear_elbo(params, x, log_sigma)
        else:
            terms = elbo.elbo(elbo_rng, x, mean, log_var, decode, log_likelihood, num_samples=1)
        iwae = elbo.iwae_bound(
            iwae_rng, x, mean, log_var, decode, log_likelihood, num_samples=iwae_samples
        )
        out = decode(mean)
        recon = likelihood.mean(out, log_sigma)
        # The decoder's variance (std_factor·scale)², averaged over pixels: a decoder-predicted
        # scale depends on z, so it is read at the posterior mean; the others are parameters.
        log_scale = out[1] if likelihood.scale_from_decoder else log_sigma
        variance = jnp.mean(jnp.broadcast_to(jnp.exp(2.0 * log_scale), x.shape))
        stats = {
            "elbo": terms["elbo"],
            "recon": terms["recon"],
            "kl": terms["kl"],
            "kl_per_latent": terms["kl_per_latent"],
            "posterior_mean": mean,
            "iwae": iwae,
            "sq_err": jnp.sum((x - recon) ** 2),
            "psnr": metrics.psnr(x, recon),
            "scale_variance": variance * (likelihood.std_factor or 1.0) ** 2,
        }
        if problem.test_grey is not None:  # binarised data: also compared with the grey images
            stats["recon_image"] = recon
        return stats

    return _batched(one_example, batch_size)


def make_residual_moments(problem: Problem, *, batch_size: int) -> Callable:
    """residual_moments(params, x, log_sigma, rng) -> (E r², E|r|), each [*event].

    r = x − loc(z), z ~ q(z|x) one sample per example, averaged over the examples of x: the
    sufficient statistics of the closed-form scale (`Likelihood.log_scale_mle`).
    """

    def one_example(params, x, log_sigma, rng):
        transform_rng, z_rng = jax.random.split(rng)
        x = transform_batch(problem, transform_rng, x)
        mean, log_var = problem.model.apply(params, x, method=models.VAE.encode)
        z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(z_rng, mean.shape, mean.dtype)
        residual = x - problem.model.apply(params, z, method=models.VAE.decode)[0]
        return residual**2, jnp.abs(residual)

    per_example = _batched(one_example, batch_size)

    def residual_moments(params, x, log_sigma, rng):
        squared, absolute = per_example(params, x, log_sigma, rng)
        return jnp.mean(squared, axis=0), jnp.mean(absolute, axis=0)

    return residual_moments


def refits(problem: Problem) -> bool:
    """Whether the family's scale has a closed-form refit (`Likelihood.log_scale_mle`)."""
    return problem.likelihood.refits


def refit_log_scale(
    problem: Problem, log_scale: jax.Array, mean_sq: jax.Array, mean_abs: jax.Array
) -> jax.Array:
    """The closed-form log scale from residual moments, floored at `problem.sigma_floor`.

    A shared scale gets the scalar MLE of the residuals pooled over pixels. A per-pixel scale
    keeps its shape: `log_scale + log c`, c the one factor that maximises the likelihood of the
    residuals (`log_scale_mle` of the pooled moments of r / scale). `log_scale` is the scale the
    model carries (scalar or per-pixel map).
    """
    if problem.likelihood.per_pixel_scale:
        scale = jnp.exp(log_scale)
        log_factor = problem.likelihood.log_scale_mle(
            jnp.mean(mean_sq / scale**2), jnp.mean(mean_abs / scale)
        )
        fitted = log_scale + log_factor
    else:
        fitted = problem.likelihood.log_scale_mle(jnp.mean(mean_sq), jnp.mean(mean_abs))
    return jnp.maximum(fitted, math.log(problem.sigma_floor))


def make_iwae_profile(problem: Problem, *, iwae_samples: int, batch_size: int) -> Callable:
    """profile(params, x, log_sigma, rng) -> (log_w [N, K], t [N, K]): the IWAE bound of x as a
    function of one factor c = e^u on the scale, exactly and without decoding again.

    With r = x − loc(z_k) and T_k = Σ|r/s|^p / p (p = `Likelihood.scale_power`), a scale c·s
    gives log w_k(u) = log w_k + T_k·(1 − e^(−p·u)) − D·u, so the bound at any u is a logsumexp
    over the K stored terms (`iwae_at_factor`). The draws are `make_evaluate`'s at the same rng
    (the same key splits), so the bound it maximises is the one evaluation then scores.
    """
    likelihood = problem.likelihood

    def one_example(params, x, log_sigma, rng):
        transform_rng, _, iwae_rng = jax.random.split(rng, 3)
        x = transform_batch(problem, transform_rng, x)
        mean, log_var = problem.model.apply(params, x, method=models.VAE.encode)
        decode, log_likelihood = decoder_and_likelihood(problem, params, log_sigma, train=False)
        z = elbo.sample_posterior(iwae_rng, mean, log_var, iwae_samples)
        prior = jnp.zeros_like(mean)

        def terms(z_k):
            out = decode(z_k)
            log_w = (
                log_likelihood(x, out)
                + elbo.log_normal_diag(z_k, prior, prior)
                - elbo.log_normal_diag(z_k, mean, log_var)
            )
            scaled = jnp.abs(x - out[0]) * jnp.exp(-log_sigma)
            return log_w, jnp.sum(scaled**likelihood.scale_power) / likelihood.scale_power

        return jax.lax.map(terms, z, batch_size=min(100, iwae_samples))

    return _batched(one_example, batch_size)


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


def make_fit_scale(problem: Problem, *, batch_size: int) -> Callable:
    """fit_scale(params, x, rng) -> params: a copy whose shared learned scale is its closed-form
    MLE on x (`refit_log_scale` of one z sample per example), the training-time counterpart of
    the refit (`likelihood.sigma_fit='validation'` calls it on the validation split)."""
    moments = make_residual_moments(problem, batch_size=batch_size)

    def fit_scale(params, x, rng):
        log_scale = problem.model.apply(params, method=models.VAE.learned_log_sigma)
        mean_sq, mean_abs = moments(params, x, log_scale, rng)
        fitted = refit_log_scale(problem, log_scale, mean_sq, mean_abs)
        return models.with_learned_sigma(params, jnp.exp(fitted), problem.sigma_floor)

    return fit_scale


def make_evaluate_member(
    problem: Problem,
    *,
    iwae_samples: int,
    batch_size: int,
    num_train_scored: int,
    members: bool = False,
) -> Callable:
    """evaluate_member(params, hyper, rng, train_x, val_x, test_x) -> (per-split arrays, scales).

    Returns `({split: per-example arrays, split + '_refit': ...}, {'trained': log scale,
    'refit': log scale})`. The first `num_train_scored` training examples are scored (train NLL);
    the validation split gives the refit, the whole training split an optimal-σ member's σ. With
    `members=True`, params, hyper and rng carry a leading sweep-member axis (the data does not)
    and so does every output. The pieces are jitted one by one — one program per split shape,
    not one program holding every split.
    """

    def jit(fn, in_axes):
        return jax.jit(jax.vmap(fn, in_axes=in_axes) if members else fn)

    evaluate = jit(
        make_evaluate(problem, iwae_samples=iwae_samples, batch_size=batch_size), (0, None, 0, 0)
    )
    moments = jit(make_residual_moments(problem, batch_size=batch_size), (0, None, 0, 0))
    trained_scale = jit(lambda params, hyper: observation_log_sigma(problem, params, hyper), (0, 0))
    refit_scale = jit(lambda s, sq, ab: refit_log_scale(problem, s, sq, ab), (0, 0, 0))
    num_dims = math.prod(problem.test_x.shape[1:])
    if refits(problem):
        profile = jit(
            make_iwae_profile(problem, iwae_samples=iwae_samples, batch_size=batch_size),
            (0, None, 0, 0),
        )
        power = problem.likelihood.scale_power
        floor = math.log(problem.sigma_floor)
        searched_scale = jit(
            lambda s, log_w, t: jnp.maximum(s + best_log_factor(log_w, t, power, num_dims), floor),
            (0, 0, 0),
        )
    split_rng = jit(lambda rng: jax.random.split(rng, 1 + 2 * len(SPLITS)), (0,))

    def evaluate_member(params, hyper: Hyper, rng, train_x, val_x, test_x):
        rngs = split_rng(rng)
        rng_at = (lambda i: rngs[:, i]) if members else (lambda i: rngs[i])
        scales = {"trained": trained_scale(params, hyper)}
        if problem.likelihood.optimal_scale:
            # Its σ as trained: the closed-form σ of its training data, fitted after training.
            mean_sq, mean_abs = moments(params, train_x, scales["trained"], rng_at(0))
            scales["trained"] = refit_scale(scales["trained"], mean_sq, mean_abs)
        if refits(problem) and val_x.shape[0] > 0:
            # Key 1 + len(SPLITS) belongs to the training split's refit score, which is never
            # computed: the validation moments take it, and no other score's draws move.
            mean_sq, mean_abs = moments(params, val_x, scales["trained"], rng_at(1 + len(SPLITS)))
            closed_form = refit_scale(scales["trained"], mean_sq, mean_abs)
            # From the closed form (which maximises the one-sample ELBO) to the scale that
            # maximises the validation IWAE bound — the score — drawn as its score is drawn.
            val_key = rng_at(1 + len(SPLITS) + SPLITS.index("val"))
            log_w, t = profile(params, val_x, closed_form, val_key)
            scales["refit"] = searched_scale(closed_form, log_w, t)
        inputs = {"train": train_x[:num_train_scored], "val": val_x, "test": test_x}
        outputs = {}
        for i, split in enumerate(SPLITS):
            if inputs[split].shape[0] == 0:
                continue
            outputs[split] = evaluate(params, inputs[split], scales["trained"], rng_at(1 + i))
            if "refit" not in scales or split == "train":
                continue
            outputs[split + "_refit"] = evaluate(
                params, inputs[split], scales["refit"], rng_at(1 + len(SPLITS) + i)
            )
        return outputs, scales

    return evaluate_member


def summarize(outputs: dict[str, dict[str, Any]], problem: Problem) -> dict[str, float | None]:
    """Final metrics from `evaluate_member`'s per-split arrays (host numpy).

    test/*: the as-trained scores and statistics; test/*_refit, val/*: NLLs for the refit and
    for selection; train/iwae_nll: the same bound on training examples (overfitting); sigma and
    sigma_refit: the decoder's standard deviation (std_factor × scale, root-mean-square over
    pixels), None for families without a scale.
    """
    num_dims = math.prod(problem.test_x.shape[1:])
    discrete = problem.likelihood.data_model != "continuous"

    def nll(per_example):
        value = -float(np.mean(per_example["iwae"]))
        bpd = metrics.bits_per_dim(value, num_dims, discrete=discrete, num_bins=problem.num_bins)
        return value, float(bpd)

    test = outputs["test"]
    test_nll, test_bpd = nll(test)
    kl_per_latent = np.mean(test["kl_per_latent"], axis=0)
    results = {
        "test/elbo": float(np.mean(test["elbo"])),
        "test/recon_log_prob": float(np.mean(test["recon"])),
        "test/recon_mse": float(np.mean(test["sq_err"]) / num_dims),
        "test/kl": float(np.mean(test["kl"])),
        "test/active_units": int(metrics.active_units(test["posterior_mean"])),
        "test/collapsed_fraction": float(metrics.collapsed_by_mean_kl(kl_per_latent)),
        "test/iwae_nll": test_nll,
        "test/bits_per_dim": test_bpd,
        "test/psnr": float(np.mean(test["psnr"])),
        "sigma": None,
        "sigma_refit": None,
    }
    if problem.likelihood.std_factor is not None:
        results["sigma"] = float(np.sqrt(np.mean(test["scale_variance"])))
    if "test_refit" in outputs:
        refit = outputs["test_refit"]
        results["test/elbo_refit"] = float(np.mean(refit["elbo"]))
        results["test/iwae_nll_refit"], results["test/bits_per_dim_refit"] = nll(refit)
        results["sigma_refit"] = float(np.sqrt(np.mean(refit["scale_variance"])))
    for split in ("val", "val_refit", "train"):
        if split in outputs:
            name = split.replace("_refit", "")
            suffix = "_refit" if split.endswith("_refit") else ""
            results[f"{name}/iwae_nll{suffix}"] = nll(outputs[split])[0]
    if "train" in outputs:
        results["train/recon_mse"] = float(np.mean(outputs["train"]["sq_err"]) / num_dims)
    if problem.test_grey is not None:  # test/recon_mse is against the binarised images
        grey = problem.test_grey.reshape(test["recon_image"].shape)
        results["test/recon_mse_grey"] = float(np.mean((grey - test["recon_image"]) ** 2))
    return results


def eval_batch_size(spec: Any, num_dims: int) -> int:
    """Examples per evaluation batch for a run spec (`vae_jax.spec.RunSpec`): eval.batch_size,
    capped so that the K·batch decoder outputs stay near 16M floats."""
    per_example = spec.eval.iwae_samples * num_dims
    return max(1, min(spec.eval.batch_size, (1 << 24) // per_example))

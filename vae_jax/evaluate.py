"""Evaluation: every score is a normalised density whose parameters never looked at test data.

What is scored is a `scorable.Scorable` — a sweep member or a user's callables (`vae_jax.score`)
— and this module is the one place its ELBO, IWAE bound, per-example statistics and summary are
computed. A member is scored twice, both proper densities:
- *as trained*: with the scale it trained with (the config's σ, the learned σ; an optimal-σ
  member carries the closed-form σ of its training data, since σ read off the scored image is
  no density);
- *refit*: with its scale recalibrated on the held-out VALIDATION split after training
  (`vae_jax.refit`, which explains it). A run without a validation split has no refit.
The training split gives an optimal-σ member its σ and a train NLL (to show overfitting), the
validation split the refit and the scores that selections use (one fitted scalar makes the refit's
validation score optimistic by O(1/N) nats per example), the test split the reported metrics.

  evaluate(params, x, log_sigma, rng) -> per-example arrays         (`make_evaluate`, jit it)
  evaluate_member(params, hyper, rng, splits) -> per-split arrays   (`make_evaluate_member`)
  set_summary(per-example arrays) -> one scored set's means; summarize: a member's metrics
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import elbo, likelihoods, metrics, models
from vae_jax.objective import Hyper, Problem, observation_log_sigma
from vae_jax.refit import RefitKeys, make_refit, make_residual_moments, refit_log_scale
from vae_jax.scorable import Scorable, batched, jit_members, of_problem

if TYPE_CHECKING:
    from vae_jax.spec import RunSpec

SPLITS = ("train", "val", "test")
# Per-example arrays `summarize` keeps for the splits other than test (their NLL only).
NLL_KEYS = ("elbo", "iwae", "sq_err")


class MemberKeys(NamedTuple):
    """Every draw of `make_evaluate_member`, from one key (`member_keys`)."""

    trained_fit: jax.Array  # an optimal-σ member's σ from its training data
    trained: dict[str, jax.Array]  # each split's score at the trained scale
    refit: RefitKeys


def member_keys(rng: jax.Array) -> MemberKeys:
    """The one layout of a member evaluation's keys: split(rng, 1 + 2·len(SPLITS)) = [trained
    fit, each split as trained, each split refit]. The training split is never scored refit, so
    its slot draws the refit's moments; the validation split's refit score is the search's
    bound, drawn as it is scored."""
    rngs = jax.random.split(rng, 1 + 2 * len(SPLITS))
    refit = {split: rngs[1 + len(SPLITS) + i] for i, split in enumerate(SPLITS)}
    return MemberKeys(
        trained_fit=rngs[0],
        trained={split: rngs[1 + i] for i, split in enumerate(SPLITS)},
        refit=RefitKeys(moments=refit["train"], search=refit["val"], test=refit["test"]),
    )


def make_evaluate(model: Scorable, *, iwae_samples: int, batch_size: int) -> Callable:
    """evaluate(params, x, log_sigma, rng) -> per-example arrays over x (jit it).

    Scores x with the registry's normalised density at `log_sigma` (unused by families whose
    scale is a decoder output or that have none): the ELBO (β = 1, one sample; closed-form
    where `model.exact_elbo` is given), the IWAE bound with `iwae_samples`, and the statistics
    the summary needs.
    """
    likelihood = model.likelihood

    def one_example(params, x, log_sigma, rng):
        transform_rng, elbo_rng, iwae_rng = jax.random.split(rng, 3)
        x = model.transform(transform_rng, x)
        mean, log_var = model.encode(params, x)
        decode = functools.partial(model.decode, params)

        def log_likelihood(x, out):
            return likelihood.log_prob(x, out, log_sigma, flat=True)

        if model.exact_elbo is not None:  # closed form: no sampling noise in the scores
            terms = model.exact_elbo(params, x, log_sigma)
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
        # Where the reconstruction term at the posterior mean is earned: saturated pixels
        # (level 0 or K − 1 of the data as scored) against interior ones.
        pixel_log_prob = likelihoods.elementwise_log_prob(likelihood, x, out, log_sigma)
        levels = metrics.pixel_levels(
            x, dequantized=likelihood.dequantized_data, num_bins=model.num_bins
        )
        split = metrics.saturation_sums(pixel_log_prob, levels, num_bins=model.num_bins)
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
            "recon_saturated": split["saturated"],
            "recon_interior": split["interior"],
            "num_saturated": split["num_saturated"],
        }
        if model.keep_reconstruction:  # binarised data: also compared with the grey images
            stats["recon_image"] = recon
        return stats

    return batched(one_example, batch_size)


def make_fit_scale(problem: Problem, *, batch_size: int) -> Callable:
    """fit_scale(params, x, rng) -> params: a copy whose shared learned scale is its closed-form
    MLE on x (`refit_log_scale` of one z sample per example), the training-time counterpart of
    the refit (`likelihood.sigma_fit='validation'` calls it on the validation split)."""
    model = of_problem(problem)
    moments = make_residual_moments(model, batch_size=batch_size)

    def fit_scale(params, x, rng):
        log_scale = problem.model.apply(params, method=models.VAE.learned_log_sigma)
        mean_sq, mean_abs = moments(params, x, log_scale, rng)
        fitted = refit_log_scale(model, log_scale, mean_sq, mean_abs)
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
    not one program holding every split. The draws are `member_keys(rng)`.
    """
    model = of_problem(problem)
    evaluate = jit_members(
        make_evaluate(model, iwae_samples=iwae_samples, batch_size=batch_size),
        (0, None, 0, 0),
        members,
    )
    refit = make_refit(model, iwae_samples=iwae_samples, batch_size=batch_size, members=members)
    trained_scale = jit_members(
        lambda params, hyper: observation_log_sigma(problem, params, hyper), (0, 0), members
    )
    keys_of = jit_members(member_keys, (0,), members)

    def evaluate_member(params, hyper: Hyper, rng, train_x, val_x, test_x):
        keys = keys_of(rng)
        scales = {"trained": trained_scale(params, hyper)}
        if model.likelihood.optimal_scale:
            # Its σ as trained: the closed-form σ of its training data, fitted after training.
            mean_sq, mean_abs = refit.moments(params, train_x, scales["trained"], keys.trained_fit)
            scales["trained"] = refit.closed_form(scales["trained"], mean_sq, mean_abs)
        if model.likelihood.refits and val_x.shape[0] > 0:
            *_, scales["refit"] = refit.refit(params, val_x, scales["trained"], keys.refit)
        inputs = {"train": train_x[:num_train_scored], "val": val_x, "test": test_x}
        refit_keys = {"val": keys.refit.search, "test": keys.refit.test}
        outputs = {}
        for split in SPLITS:
            if inputs[split].shape[0] == 0:
                continue
            outputs[split] = evaluate(params, inputs[split], scales["trained"], keys.trained[split])
            if "refit" in scales and split in refit_keys:
                outputs[split + "_refit"] = evaluate(
                    params, inputs[split], scales["refit"], refit_keys[split]
                )
        return outputs, scales

    return evaluate_member


def set_summary(per_example: dict[str, np.ndarray], model: Scorable) -> dict[str, float | None]:
    """One scored set's means over its examples (host numpy): nats per example, bits/dim
    (`metrics.bits_per_dim`), the reconstruction's MSE per pixel, active units (posterior-mean
    variance > 0.01), the collapsed fraction, PSNR and `sigma`, the decoder's standard
    deviation (std_factor × scale, root-mean-square over pixels; None without a scale)."""
    num_dims = math.prod(model.event_shape)
    iwae_nll, bpd = _nll(per_example, model)
    kl_per_latent = np.mean(per_example["kl_per_latent"], axis=0)
    sigma = None
    if model.likelihood.std_factor is not None:
        sigma = float(np.sqrt(np.mean(per_example["scale_variance"])))
    return {
        "elbo": float(np.mean(per_example["elbo"])),
        "recon_log_prob": float(np.mean(per_example["recon"])),
        "recon_mse": float(np.mean(per_example["sq_err"]) / num_dims),
        "kl": float(np.mean(per_example["kl"])),
        "active_units": int(metrics.active_units(per_example["posterior_mean"])),
        "collapsed_fraction": float(metrics.collapsed_by_mean_kl(kl_per_latent)),
        "iwae_nll": iwae_nll,
        "bits_per_dim": bpd,
        "psnr": float(np.mean(per_example["psnr"])),
        "sigma": sigma,
    }


def saturation_summary(per_example: dict[str, np.ndarray], model: Scorable) -> dict[str, float]:
    """The reconstruction log-likelihood at the posterior mean split into saturated pixels
    (level 0 or K − 1) and interior ones (`metrics.saturation_summary` of the per-example sums):
    nats per image (`recon_saturated` + `recon_interior` = the whole term), nats per pixel of
    each kind, and the saturated fraction of the pixels."""
    split = metrics.saturation_summary(
        np.asarray(per_example["recon_saturated"], np.float64),
        np.asarray(per_example["recon_interior"], np.float64),
        np.asarray(per_example["num_saturated"], np.int64),
        num_pixels=math.prod(model.event_shape),
    )
    return {
        "recon_saturated": float(split["saturated_per_image"]),
        "recon_interior": float(split["interior_per_image"]),
        "recon_saturated_per_pixel": float(split["saturated_per_pixel"]),
        "recon_interior_per_pixel": float(split["interior_per_pixel"]),
        "saturated_fraction": float(split["saturated_fraction"]),
    }


# `saturation_summary`'s keys that a refit scores again (the fraction is the data's).
SATURATION_REFIT_KEYS = (
    "recon_saturated",
    "recon_interior",
    "recon_saturated_per_pixel",
    "recon_interior_per_pixel",
)


def _nll(per_example: dict[str, np.ndarray], model: Scorable) -> tuple[float, float]:
    """(−mean IWAE bound, its bits/dim)."""
    value = -float(np.mean(per_example["iwae"]))
    bpd = metrics.bits_per_dim(
        value,
        math.prod(model.event_shape),
        discrete=not model.likelihood.dequantized_data,
        num_bins=model.num_bins,
    )
    return value, float(bpd)


def summarize(
    outputs: dict[str, dict[str, np.ndarray]], problem: Problem
) -> dict[str, float | None]:
    """Final metrics from `evaluate_member`'s per-split arrays (host numpy).

    test/*: the as-trained scores and statistics (`set_summary`) and the reconstruction term's
    saturated / interior split (`saturation_summary`); test/*_refit, val/*: the refit's scores
    and NLLs for selection; train/iwae_nll: the same bound on training examples
    (overfitting); sigma and sigma_refit: the decoder's standard deviation, None for families
    without a scale.
    """
    model = of_problem(problem)
    num_dims = math.prod(model.event_shape)
    test = set_summary(outputs["test"], model)
    results = {f"test/{key}": value for key, value in test.items() if key != "sigma"}
    results |= {"sigma": test["sigma"], "sigma_refit": None}
    results |= {f"test/{k}": v for k, v in saturation_summary(outputs["test"], model).items()}
    if "test_refit" in outputs:
        refit = set_summary(outputs["test_refit"], model)
        results["test/elbo_refit"] = refit["elbo"]
        results["test/iwae_nll_refit"] = refit["iwae_nll"]
        results["test/bits_per_dim_refit"] = refit["bits_per_dim"]
        results["sigma_refit"] = refit["sigma"]
        split = saturation_summary(outputs["test_refit"], model)
        results |= {f"test/{k}_refit": split[k] for k in SATURATION_REFIT_KEYS}
    for split in ("val", "val_refit", "train"):
        if split in outputs:
            name = split.replace("_refit", "")
            suffix = "_refit" if split.endswith("_refit") else ""
            results[f"{name}/iwae_nll{suffix}"] = _nll(outputs[split], model)[0]
    if "train" in outputs:
        results["train/recon_mse"] = float(np.mean(outputs["train"]["sq_err"]) / num_dims)
    if problem.test_grey is not None:  # test/recon_mse is against the binarised images
        grey = problem.test_grey.reshape(outputs["test"]["recon_image"].shape)
        results["test/recon_mse_grey"] = float(
            np.mean((grey - outputs["test"]["recon_image"]) ** 2)
        )
    return results


def eval_batch_size(spec: RunSpec, num_dims: int) -> int:
    """Examples per evaluation batch for a run spec: eval.batch_size, capped so that the
    K·batch decoder outputs stay near 16M floats."""
    per_example = spec.eval.iwae_samples * num_dims
    return max(1, min(spec.eval.batch_size, (1 << 24) // per_example))

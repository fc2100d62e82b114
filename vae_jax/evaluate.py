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

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import elbo, likelihoods, metrics, models
from vae_jax.objective import (
    Hyper,
    Problem,
    exact_linear_elbo,
    observation_log_sigma,
    transform_batch,
)

if TYPE_CHECKING:
    from vae_jax.spec import RunSpec

SPLITS = ("train", "val", "test")
# Per-example arrays `summarize` keeps for the splits other than test (their NLL only).
NLL_KEYS = ("elbo", "iwae", "sq_err")


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


class RefitKeys(NamedTuple):
    """The draws of a refit and its scores."""

    moments: jax.Array  # the closed form's residual moments on the validation images
    search: jax.Array  # the validation bound the factor is searched on = validation's score
    test: jax.Array  # the test images' score at the refit scale


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
        if model.keep_reconstruction:  # binarised data: also compared with the grey images
            stats["recon_image"] = recon
        return stats

    return _batched(one_example, batch_size)


def make_residual_moments(model: Scorable, *, batch_size: int) -> Callable:
    """residual_moments(params, x, log_sigma, rng) -> (E r², E|r|), each [*event].

    r = x − loc(z), z ~ q(z|x) one sample per example, averaged over the examples of x: the
    sufficient statistics of the closed-form scale (`Likelihood.log_scale_mle`).
    """

    def one_example(params, x, log_sigma, rng):
        transform_rng, z_rng = jax.random.split(rng)
        x = model.transform(transform_rng, x)
        mean, log_var = model.encode(params, x)
        z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(z_rng, mean.shape, mean.dtype)
        residual = x - model.decode(params, z)[0]
        return residual**2, jnp.abs(residual)

    per_example = _batched(one_example, batch_size)

    def residual_moments(params, x, log_sigma, rng):
        squared, absolute = per_example(params, x, log_sigma, rng)
        return jnp.mean(squared, axis=0), jnp.mean(absolute, axis=0)

    return residual_moments


def refit_log_scale(
    model: Scorable, log_scale: jax.Array, mean_sq: jax.Array, mean_abs: jax.Array
) -> jax.Array:
    """The closed-form log scale from residual moments, floored at `model.sigma_floor`.

    A shared scale gets the scalar MLE of the residuals pooled over pixels. A per-pixel
    likelihood's scale keeps its shape: `log_scale + log c`, c the one factor that maximises
    the likelihood of the residuals (`log_scale_mle` of the pooled moments of r / scale).
    `log_scale` is the scale the model carries (scalar or per-pixel map). With
    `model.fit_each_pixel` every pixel gets the MLE of its own moments.
    """
    mle = model.likelihood.log_scale_mle
    if model.fit_each_pixel:
        fitted = mle(mean_sq, mean_abs)
    elif model.likelihood.per_pixel_scale:
        scale = jnp.exp(log_scale)
        fitted = log_scale + mle(jnp.mean(mean_sq / scale**2), jnp.mean(mean_abs / scale))
    else:
        fitted = mle(jnp.mean(mean_sq), jnp.mean(mean_abs))
    return jnp.maximum(fitted, math.log(model.sigma_floor))


def make_iwae_profile(model: Scorable, *, iwae_samples: int, batch_size: int) -> Callable:
    """profile(params, x, log_sigma, rng) -> (log_w [N, K], t [N, K]): the IWAE bound of x as a
    function of one factor c = e^u on the scale, exactly and without decoding again.

    With r = x − loc(z_k) and T_k = Σ|r/s|^p / p (p = `Likelihood.scale_power`), a scale c·s
    gives log w_k(u) = log w_k + T_k·(1 − e^(−p·u)) − D·u, so the bound at any u is a logsumexp
    over the K stored terms (`iwae_at_factor`). The draws are `make_evaluate`'s at the same rng
    (the same key splits), so the bound it maximises is the one evaluation then scores.
    """
    likelihood = model.likelihood

    def one_example(params, x, log_sigma, rng):
        transform_rng, _, iwae_rng = jax.random.split(rng, 3)
        x = model.transform(transform_rng, x)
        mean, log_var = model.encode(params, x)
        z = elbo.sample_posterior(iwae_rng, mean, log_var, iwae_samples)
        prior = jnp.zeros_like(mean)

        def terms(z_k):
            out = model.decode(params, z_k)
            log_w = (
                likelihood.log_prob(x, out, log_sigma, flat=True)
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


class Refit(NamedTuple):
    """`make_refit`'s jitted pieces; call `refit` to run them in order."""

    moments: Callable  # (params, x, log_scale, rng) -> (E r², E|r|)
    closed_form: Callable  # (log_scale, E r², E|r|) -> the closed-form log scale
    profile: Callable  # (params, x, log_scale, rng) -> (log_w, t)
    search: Callable  # (log_scale, log_w, t) -> the log scale that maximises the bound

    def refit(self, params, x: jax.Array, log_scale: jax.Array, keys: RefitKeys):
        """(closed form, (log_w, t), refit log scale) on the validation images x: the closed
        form from one z each (key `keys.moments`), then the factor on it that maximises the
        IWAE bound (key `keys.search`), never below the floor."""
        mean_sq, mean_abs = self.moments(params, x, log_scale, keys.moments)
        closed = self.closed_form(log_scale, mean_sq, mean_abs)
        log_w, t = self.profile(params, x, closed, keys.search)
        return closed, (log_w, t), self.search(closed, log_w, t)


def _compile(fn: Callable, in_axes: tuple, members: bool) -> Callable:
    """fn jitted; with `members`, vmapped first over a leading sweep-member axis."""
    return jax.jit(jax.vmap(fn, in_axes=in_axes) if members else fn)


def make_refit(model: Scorable, *, iwae_samples: int, batch_size: int, members: bool) -> Refit:
    """The scale refit (module docstring) as jitted pieces, one program each."""
    power = model.likelihood.scale_power
    num_dims = math.prod(model.event_shape)
    floor = math.log(model.sigma_floor)
    return Refit(
        moments=_compile(
            make_residual_moments(model, batch_size=batch_size), (0, None, 0, 0), members
        ),
        closed_form=_compile(
            lambda s, sq, ab: refit_log_scale(model, s, sq, ab), (0, 0, 0), members
        ),
        profile=_compile(
            make_iwae_profile(model, iwae_samples=iwae_samples, batch_size=batch_size),
            (0, None, 0, 0),
            members,
        ),
        search=_compile(
            lambda s, log_w, t: jnp.maximum(s + best_log_factor(log_w, t, power, num_dims), floor),
            (0, 0, 0),
            members,
        ),
    )


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
    evaluate = _compile(
        make_evaluate(model, iwae_samples=iwae_samples, batch_size=batch_size),
        (0, None, 0, 0),
        members,
    )
    refit = make_refit(model, iwae_samples=iwae_samples, batch_size=batch_size, members=members)
    trained_scale = _compile(
        lambda params, hyper: observation_log_sigma(problem, params, hyper), (0, 0), members
    )
    keys_of = _compile(member_keys, (0,), members)

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

    test/*: the as-trained scores and statistics (`set_summary`); test/*_refit, val/*: NLLs for
    the refit and for selection; train/iwae_nll: the same bound on training examples
    (overfitting); sigma and sigma_refit: the decoder's standard deviation, None for families
    without a scale.
    """
    model = of_problem(problem)
    num_dims = math.prod(model.event_shape)
    test = set_summary(outputs["test"], model)
    results = {f"test/{key}": value for key, value in test.items() if key != "sigma"}
    results |= {"sigma": test["sigma"], "sigma_refit": None}
    if "test_refit" in outputs:
        refit = set_summary(outputs["test_refit"], model)
        results["test/elbo_refit"] = refit["elbo"]
        results["test/iwae_nll_refit"] = refit["iwae_nll"]
        results["test/bits_per_dim_refit"] = refit["bits_per_dim"]
        results["sigma_refit"] = refit["sigma"]
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

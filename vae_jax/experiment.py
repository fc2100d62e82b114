"""The single-run driver: a config → data and model (`build_problem`) → fit → evaluate → files.

`experiments/run.py` calls `train_and_evaluate(config, workdir)`; tests and notebooks call the same.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vae_jax import (
    data,
    evaluate,
    likelihoods,
    linear,
    linear_fit,
    models,
    pixels,
    plots,
    train,
    validate,
    workdir,
)
from vae_jax.errors import ConfigError
from vae_jax.objective import (
    Hyper,
    Problem,
    enabled_remedies,
    make_hyper,
    remedy_from_config,
    scale_on_validation,
    scored_hyper,
)

# Gaussian decoders whose σ is one number (fixed or learned): a linear VAE's ELBO is closed-form.
EXACT_LINEAR_LIKELIHOODS = ("gaussian", "gaussian_learned")


def build_problem(config: ml_collections.ConfigDict) -> Problem:
    """Load the data and build the model the config describes (raises ConfigError/DataError)."""
    validate.check_config(config)
    spec = likelihoods.get_likelihood(config.likelihood.name)
    train_x = data.load_numpy(config.data.name, "train")
    subset = config.data.get("train_subset")
    if subset is not None:
        # The first examples as the data set orders them, before the validation carve, so a
        # subset names the same images whatever data.validation_fraction is.
        validate.positive(config, "data.train_subset", integer=True)
        if subset > len(train_x):
            raise ConfigError(
                f"data.train_subset={subset} is more than the {len(train_x)} training examples "
                f"of data.name='{config.data.name}'"
            )
        train_x = train_x[:subset]
    train_x, val_x = data.split_validation(train_x, config.data.validation_fraction)
    test_x = data.load_numpy(config.data.name, "test")
    test_grey = None
    transform = "none"
    if spec.binary_data:
        binarize = config.data.binarize
        if binarize in ("fixed", "dynamic"):
            test_grey = test_x
        if binarize == "fixed":
            train_x = pixels.fixed_binarize(train_x, config.seed)
            test_x = pixels.fixed_binarize(test_x, config.seed + 1)
            val_x = pixels.fixed_binarize(val_x, config.seed + 2)
        elif binarize == "dynamic":
            transform = "binarize"
            test_x = pixels.fixed_binarize(test_x, config.seed + 1)
            val_x = pixels.fixed_binarize(val_x, config.seed + 2)
        elif not (pixels.is_binary(train_x) and pixels.is_binary(test_x)):
            raise ConfigError(
                f"likelihood.name='{spec.name}' needs binary data but data.name="
                f"'{config.data.name}' has grey values; set data.binarize to 'dynamic' or 'fixed'"
            )
    elif spec.dequantized_data and config.data.dequantize:
        if config.data.name in data.PIXEL_DATASETS:
            transform = "dequantize"
    num_bins = data.NUM_BINS.get(config.data.name, 256)
    if spec.discrete_data and num_bins != 256:
        raise ConfigError(
            f"likelihood.name='{spec.name}' models 256 pixel levels but data.name="
            f"'{config.data.name}' has {num_bins}; use an 8-bit dataset (mnist_5k, mnist, ...)"
        )
    full_batch = bool(config.train.get("full_batch"))
    if not full_batch and config.train.batch_size > train_x.shape[0]:
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} is larger than the "
            f"{train_x.shape[0]} training examples of data.name='{config.data.name}'"
        )
    model = models.VAE(
        kind=config.model.kind,
        latent_dim=config.model.latent_dim,
        event_shape=tuple(train_x.shape[1:]),
        likelihood=spec.name,
        hidden_sizes=tuple(config.model.hidden_sizes),
        sigma_floor=config.likelihood.sigma_floor,
        sigma_init=initial_scale(config, spec, train_x, transform, num_bins),
    )
    problem = Problem(
        model=model,
        likelihood=spec,
        train_x=train_x,
        val_x=val_x,
        test_x=test_x,
        test_grey=test_grey,
        transform=transform,
        batch_size=train_x.shape[0] if full_batch else config.train.batch_size,
        num_samples=config.train.num_samples,
        num_bins=num_bins,
        sigma_floor=config.likelihood.sigma_floor,
        exact_linear=config.model.kind == "linear" and spec.name in EXACT_LINEAR_LIKELIHOODS,
        scale_on_validation=scale_on_validation(config),
    )
    if problem.scale_on_validation and not len(val_x):
        raise ConfigError(
            f"likelihood.sigma_fit='validation' fits the scale of {spec.name!r} on the validation "
            f"split, but data.validation_fraction={config.data.validation_fraction} holds none "
            "out; set it > 0, or likelihood.sigma_fit='gradient'"
        )
    if problem.scale_on_validation and linear_fit.applies(problem):
        raise ConfigError(
            "likelihood.sigma_fit='validation': this linear Gaussian VAE trains by coordinate "
            "ascent on the exact ELBO (train.full_batch=True), which fits σ on the training data "
            "in closed form; set likelihood.sigma_fit='gradient' (or train.full_batch=False)"
        )
    remedies = enabled_remedies(config)
    if remedies and linear_fit.applies(problem):
        raise ConfigError(
            f"train: {', '.join(remedies)} change the objective of gradient steps, but this "
            "linear Gaussian VAE trains by coordinate ascent on the exact ELBO "
            "(train.full_batch=True); set train.full_batch=False to train it with them"
        )
    return problem


def initial_scale(
    config: ml_collections.ConfigDict,
    spec: likelihoods.Likelihood,
    train_x: np.ndarray,
    transform: str,
    num_bins: int,
) -> float:
    """Where a learned scale starts: `likelihood.sigma_init`, or when that is unset the rule
    every learned-scale family shares — the σ of the best linear VAE with the same number of
    latents (the pPCA MLE: σ² = mean of the training covariance's discarded eigenvalues, plus
    the dequantisation noise's variance), converted to the family's scale (Laplace b = σ/√2)."""
    std = config.likelihood.sigma_init
    if std is None:
        if not spec.learns_scale:
            return 1.0  # no learned scale: the model does not read it
        flat = jnp.asarray(train_x.reshape(len(train_x), -1))
        eigvals, _, _ = linear.data_spectrum(flat)
        k = config.model.latent_dim
        # k ≥ D latents discard no eigenvalue: the MLE noise is 0 (the floor below applies).
        sigma_sq = float(linear.ppca_sigma_sq_mle(eigvals, k)) if k < len(eigvals) else 0.0
        if transform == "dequantize":
            sigma_sq += 1.0 / (12.0 * num_bins**2)  # Var of u/num_bins, u ~ U[0, 1)
        std = max(math.sqrt(sigma_sq), 2.0 * config.likelihood.sigma_floor)
    return std / (spec.std_factor or 1.0)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir_path: str, *, reevaluate: bool = False
) -> dict[str, Any]:
    """Train one model as the config says, evaluate it, write the workdir; returns results.

    A workdir holding this run finished is left as it is and its stored results are returned,
    unless `reevaluate` (then the final checkpoint is evaluated again, its speeds kept).
    """
    with jax.debug_nans(config.debug_nans):
        return _train_and_evaluate(config, workdir_path, reevaluate=reevaluate)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir_path: str, *, reevaluate: bool
) -> dict[str, Any]:
    stored = pathlib.Path(workdir_path) / "results.json"
    if workdir.is_finished(config, workdir_path, stored.name, ["checkpoints"]):
        if not reevaluate:
            train.phase(
                f"{workdir_path} holds this run, already finished: its stored results follow, "
                "results.json is left as it is (--reevaluate evaluates it again)"
            )
            return json.loads(stored.read_text())
        previous = json.loads(stored.read_text())
    else:
        previous = {}
    problem = build_problem(config)
    # Before the workdir is touched: a remedy the likelihood cannot take is a ConfigError.
    hyper = make_hyper(config.likelihood.sigma, config.train.beta, remedy_from_config(config))
    with workdir.prepare(config, workdir_path) as path:  # locked until the run ends
        return _fit_evaluate_write(config, problem, hyper, path, previous)


def _fit_evaluate_write(
    config: ml_collections.ConfigDict,
    problem: Problem,
    hyper: Hyper,
    path: pathlib.Path,
    previous: dict[str, Any],
) -> dict[str, Any]:
    init_rng, train_rng, eval_rng = jax.random.split(jax.random.key(config.seed), 3)
    state = train.create_train_state(problem, train.make_optimizer(config), init_rng)

    def raise_nonfinite(step_metrics, first_step, hyper):
        train.check_finite(step_metrics, first_step)
        return hyper

    fitted = train.fit(
        config,
        path,
        (linear_fit.make_chunk if linear_fit.applies(problem) else train.make_train_chunk)(
            problem, train.log_interval(config)
        ),
        state,
        hyper,
        jnp.asarray(problem.train_x),
        train_rng,
        on_nonfinite=raise_nonfinite,
        after_chunk=train.make_scale_fit(config, problem, train_rng),
    )
    params, hyper = fitted.state.params, scored_hyper(problem, fitted.hyper, fitted.state.geco)
    train.phase(
        f"evaluating on {len(problem.train_x)} training, {len(problem.val_x)} validation (σ refit) "
        f"and {len(problem.test_x)} test examples (IWAE with K = {config.eval.iwae_samples})"
    )
    member = make_member_evaluation(config, problem)
    outputs, scales = train.fetch(member(params, hyper, eval_rng, *device_splits(problem)))
    results = evaluate.summarize(outputs, problem)
    speeds = train.speed_metrics(fitted, config.train.batch_size)
    if not fitted.trained_steps:  # re-evaluated: keep the speeds measured while it trained
        speeds = {key: previous.get(key, value) for key, value in speeds.items()}
    results.update(speeds)
    results["step"] = int(fitted.state.step)
    train.phase(f"writing plots/ and results.json in {path}")
    plots.single_run_plots(path, problem, params, scales["trained"], outputs["test"], eval_rng)
    workdir.write_json_atomic(path / "results.json", results)  # last: it marks the run finished
    return results


def make_member_evaluation(
    config: ml_collections.ConfigDict, problem: Problem, *, members: bool = False
) -> Callable:
    """`evaluate.make_evaluate_member` as the config sets it up: (params, hyper, rng, train_x,
    val_x, test_x) -> (per-split arrays, scales); `members=True` for stacked sweep members."""
    num_dims = math.prod(problem.test_x.shape[1:])
    return evaluate.make_evaluate_member(
        problem,
        iwae_samples=config.eval.iwae_samples,
        batch_size=evaluate.eval_batch_size(config, num_dims),
        num_train_scored=len(problem.test_x),
        members=members,
    )


def device_splits(problem: Problem) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(train_x, val_x, test_x) as the arguments `make_member_evaluation`'s function takes."""
    return tuple(jnp.asarray(x) for x in (problem.train_x, problem.val_x, problem.test_x))


# How `result_lines` shows a metric, by its name after the split prefix (`test/`, `val/`,
# `train/`) and without a `_refit` suffix: (format, unit). Keys not listed are shown as they are.
_NATS = "nats per example"
_METRIC_FORMATS = {
    "elbo": ("{:.1f}", f"{_NATS} (higher is better)"),
    "iwae_nll": ("{:.1f}", f"{_NATS}, −log p(x) by the IWAE bound (lower is better)"),
    "bits_per_dim": ("{:.3f}", "bits/dim (lower is better)"),
    "recon_log_prob": ("{:.1f}", _NATS),
    "kl": ("{:.2f}", _NATS),
    "recon_mse": ("{:.4f}", "mean squared error per pixel, pixels in [0, 1]"),
    "recon_mse_grey": ("{:.4f}", "mean squared error per pixel against the grey images"),
    "psnr": ("{:.2f}", "dB"),
    "active_units": ("{}", "latents"),
    "collapsed_fraction": ("{:.2f}", "of the latents"),
    "sigma": ("{:.4g}", "decoder σ, pixel units"),
    "steps_per_sec": ("{:.1f}", "steps/s"),
    "examples_per_sec": ("{:.0f}", "examples/s"),
    "compile_s": ("{:.1f}", "s compiling"),
    "step": ("{}", "steps trained"),
}
_SPLITS = ("test", "val", "train")


def _metric(key: str) -> tuple[str, str]:
    split, _, name = key.rpartition("/")
    return split, name.removesuffix("_refit")


def result_lines(results: dict[str, Any]) -> list[str]:
    """A single run's results for the terminal: rounded, with units, known metrics first.

    A negative −log p(x) gets one note: p is a density on [0, 1]^D, which can exceed 1.
    """
    order = list(_METRIC_FORMATS)

    def rank(key):
        split, name = _metric(key)
        known = name in _METRIC_FORMATS
        split_rank = _SPLITS.index(split) if split in _SPLITS else len(_SPLITS)
        return (not known, split_rank, order.index(name) if known else 0, key)

    keys = sorted(results, key=rank)
    width = max(map(len, keys), default=0)
    lines = []
    for key in keys:
        value = results[key]
        fmt, unit = _METRIC_FORMATS.get(_metric(key)[1], ("{:.4g}", ""))
        if value is None:
            shown = "–"
        elif isinstance(value, int | float) and not isinstance(value, bool):
            shown = fmt.format(value)
        else:
            shown = str(value)
        lines.append(f"  {key:<{width}}  {shown:>10}  {unit}".rstrip())
    negative = [
        k
        for k, v in results.items()
        if isinstance(v, int | float)
        and ((_metric(k)[1] == "iwae_nll" and v < 0) or (_metric(k)[1] == "elbo" and v > 0))
    ]
    if negative:
        lines.append(
            f"  ({', '.join(sorted(negative))}: −log p(x) below 0 is no error: pixels are "
            "continuous, so p is a density on [0, 1]^D, which exceeds 1 where the model "
            "concentrates its mass)"
        )
    return lines

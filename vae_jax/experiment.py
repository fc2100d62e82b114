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
    console,
    data,
    evaluate,
    figure_data,
    linear,
    linear_fit,
    loop,
    models,
    pixels,
    report,
    train,
    workdir,
)
from vae_jax import spec as spec_lib
from vae_jax.objective import Hyper, Problem, make_hyper, remedy_of, scored_hyper


def build_problem(config: spec_lib.RunSpec | ml_collections.ConfigDict) -> Problem:
    """Load the data and build the model the run spec describes (a ConfigDict is parsed first;
    ConfigError/DataError before any data loads)."""
    spec = spec_lib.of(config)
    spec_lib.check_data(spec)
    family = spec.likelihood.family
    train_x = data.load_numpy(spec.data.name, "train")
    if spec.data.train_subset is not None:
        # The first examples as the data set orders them, before the validation carve, so a
        # subset names the same images whatever data.validation_fraction is.
        train_x = train_x[: spec.data.train_subset]
    train_x, val_x = data.split_validation(train_x, spec.data.validation_fraction)
    test_x = data.load_numpy(spec.data.name, "test")
    test_grey = None
    if family.binary_data and spec.data.binarize in ("fixed", "dynamic"):
        test_grey = test_x
        if spec.data.binarize == "fixed":
            train_x = pixels.fixed_binarize(train_x, spec.seed)
        test_x = pixels.fixed_binarize(test_x, spec.seed + 1)
        val_x = pixels.fixed_binarize(val_x, spec.seed + 2)
    num_bins = data.NUM_BINS.get(spec.data.name, 256)
    model = models.VAE(
        kind=spec.model.kind,
        latent_dim=spec.model.latent_dim,
        event_shape=tuple(train_x.shape[1:]),
        likelihood=family.name,
        hidden_sizes=spec.model.hidden_sizes,
        sigma_floor=spec.likelihood.sigma_floor,
        sigma_init=initial_scale(spec, train_x, num_bins),
    )
    return Problem(
        model=model,
        likelihood=family,
        train_x=train_x,
        val_x=val_x,
        test_x=test_x,
        test_grey=test_grey,
        transform=spec.transform,
        batch_size=train_x.shape[0] if spec.train.full_batch else spec.train.batch_size,
        num_samples=spec.train.num_samples,
        num_bins=num_bins,
        sigma_floor=spec.likelihood.sigma_floor,
        exact_linear=spec.exact_linear,
        scale_on_validation=spec.likelihood.scale_on_validation,
    )


def initial_scale(spec: spec_lib.RunSpec, train_x: np.ndarray, num_bins: int) -> float:
    """Where a learned scale starts: `likelihood.sigma_init`, or when that is unset the rule
    every learned-scale family shares — the σ of the best linear VAE with the same number of
    latents (the pPCA MLE: σ² = mean of the training covariance's discarded eigenvalues, plus
    the dequantisation noise's variance), converted to the family's scale (Laplace b = σ/√2)."""
    family = spec.likelihood.family
    std = spec.likelihood.sigma_init
    if std is None:
        if not family.learns_scale:
            return 1.0  # no learned scale: the model does not read it
        flat = jnp.asarray(train_x.reshape(len(train_x), -1))
        eigvals, _, _ = linear.data_spectrum(flat)
        k = spec.model.latent_dim
        # k ≥ D latents discard no eigenvalue: the MLE noise is 0 (the floor below applies).
        sigma_sq = float(linear.ppca_sigma_sq_mle(eigvals, k)) if k < len(eigvals) else 0.0
        if spec.transform == "dequantize":
            sigma_sq += 1.0 / (12.0 * num_bins**2)  # Var of u/num_bins, u ~ U[0, 1)
        std = max(math.sqrt(sigma_sq), 2.0 * spec.likelihood.sigma_floor)
    return std / (family.std_factor or 1.0)


def train_and_evaluate(
    config: spec_lib.RunSpec | ml_collections.ConfigDict,
    workdir_path: str,
    *,
    reevaluate: bool = False,
) -> dict[str, Any]:
    """Train one model as the spec says, evaluate it, write the workdir; returns results.

    A workdir holding this run finished is left as it is and its stored results are returned,
    unless `reevaluate` (then the final checkpoint is evaluated again, its speeds kept).
    """
    spec = spec_lib.of(config)
    with jax.debug_nans(spec.debug_nans):
        return _train_and_evaluate(spec, workdir_path, reevaluate=reevaluate)


def _train_and_evaluate(
    spec: spec_lib.RunSpec, workdir_path: str, *, reevaluate: bool
) -> dict[str, Any]:
    stored = pathlib.Path(workdir_path) / "results.json"
    if workdir.is_finished(spec, workdir_path, stored.name, ["checkpoints"]):
        if not reevaluate:
            console.phase(
                f"{workdir_path} holds this run, already finished: its stored results follow, "
                "results.json is left as it is (--reevaluate evaluates it again)"
            )
            return json.loads(stored.read_text())
        previous = json.loads(stored.read_text())
    else:
        previous = {}
    problem = build_problem(spec)
    hyper = make_hyper(spec.likelihood.sigma, spec.train.beta, remedy_of(spec.train))
    with workdir.prepare(spec, workdir_path) as path:  # locked until the run ends
        return _fit_evaluate_write(spec, problem, hyper, path, previous)


def _fit_evaluate_write(
    spec: spec_lib.RunSpec,
    problem: Problem,
    hyper: Hyper,
    path: pathlib.Path,
    previous: dict[str, Any],
) -> dict[str, Any]:
    init_rng, train_rng, eval_rng = jax.random.split(jax.random.key(spec.seed), 3)
    state = train.create_train_state(problem, train.make_optimizer(spec), init_rng)

    def raise_nonfinite(step_metrics, first_step, hyper):
        loop.check_finite(step_metrics, first_step)
        return hyper

    fitted = loop.fit(
        spec,
        path,
        (linear_fit.make_chunk if linear_fit.applies(problem) else train.make_train_chunk)(
            problem, train.log_interval(spec)
        ),
        state,
        hyper,
        jnp.asarray(problem.train_x),
        train_rng,
        on_nonfinite=raise_nonfinite,
        after_chunk=loop.make_scale_fit(spec, problem, train_rng),
    )
    params, hyper = fitted.state.params, scored_hyper(problem, fitted.hyper, fitted.state.geco)
    console.phase(
        f"evaluating on {len(problem.train_x)} training, {len(problem.val_x)} validation (σ refit) "
        f"and {len(problem.test_x)} test examples (IWAE with K = {spec.eval.iwae_samples})"
    )
    member = make_member_evaluation(spec, problem)
    outputs, scales = console.fetch(member(params, hyper, eval_rng, *device_splits(problem)))
    results = evaluate.summarize(outputs, problem)
    speeds = loop.speed_metrics(fitted, spec.train.batch_size)
    if not fitted.trained_steps:  # re-evaluated: keep the speeds measured while it trained
        speeds = {key: previous.get(key, value) for key, value in speeds.items()}
    results.update(speeds)
    results["step"] = int(fitted.state.step)
    console.phase(f"writing plots/ and results.json in {path}")
    figure_data.write_single_run(
        path, problem, params, scales["trained"], outputs["test"], eval_rng
    )
    report.single_run_plots(path)
    workdir.write_json_atomic(path / "results.json", results)  # last: it marks the run finished
    return results


def make_member_evaluation(
    spec: spec_lib.RunSpec, problem: Problem, *, members: bool = False
) -> Callable:
    """`evaluate.make_evaluate_member` as the spec sets it up: (params, hyper, rng, train_x,
    val_x, test_x) -> (per-split arrays, scales); `members=True` for stacked sweep members."""
    num_dims = math.prod(problem.test_x.shape[1:])
    return evaluate.make_evaluate_member(
        problem,
        iwae_samples=spec.eval.iwae_samples,
        batch_size=evaluate.eval_batch_size(spec, num_dims),
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

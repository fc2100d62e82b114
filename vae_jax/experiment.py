"""The single-run driver: a config → data and model (`build_problem`) → fit → evaluate → files.

`experiments/run.py` calls `train_and_evaluate(config, workdir)`; tests and notebooks call the same.
"""

from __future__ import annotations

import json
import math
import pathlib
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
    runner,
    train,
    workdir,
)
from vae_jax import spec as spec_lib
from vae_jax.objective import Problem, make_hyper, remedy_of


def build_problem(config: spec_lib.RunSpec | ml_collections.ConfigDict) -> Problem:
    """Load the data and build the model the run spec describes (a ConfigDict is parsed first;
    ConfigError/DataError before any data loads)."""
    spec = spec_lib.of(config)
    spec_lib.check_data(spec)
    family = spec.likelihood.family
    train_x = data.load_numpy(spec.data.name, "train", idx_dir=spec.data.idx_dir)
    if spec.data.train_subset is not None:
        # The first examples as the data set orders them, before the validation carve, so a
        # subset names the same images whatever data.validation_fraction is.
        train_x = train_x[: spec.data.train_subset]
    train_x, val_x = data.split_validation(train_x, spec.data.validation_fraction)
    test_x = data.load_numpy(spec.data.name, "test", idx_dir=spec.data.idx_dir)
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
    workdir_path: str | pathlib.Path,
    *,
    reevaluate: bool = False,
) -> dict[str, Any]:
    """Train one model as the spec says, evaluate it, write the workdir; returns results.json's
    contents. The public entry point of a single run: a ConfigDict is parsed here, once.

    A workdir holding this run finished is left as it is and its stored results are returned,
    unless `reevaluate` (then the final checkpoint is evaluated again, its speeds kept):
    `runner.run`, the steps a sweep goes through too.
    """
    spec = config if isinstance(config, spec_lib.RunSpec) else spec_lib.parse(config)
    with jax.debug_nans(spec.debug_nans):
        (results,) = runner.run(
            spec, workdir_path, LAYOUT, lambda: SingleRun(spec), reevaluate=reevaluate
        )
    return results


LAYOUT = runner.Layout(
    results="results.json",
    checkpoints=("checkpoints",),
    read=lambda path: [json.loads(path.read_text())],
    left_as_is="its stored results follow, results.json is left as it is",
)


class SingleRun:
    """One model: `runner.Job`'s train (fit, evaluate, one row) and write (plots/, results.json)."""

    def __init__(self, spec: spec_lib.RunSpec):
        self.spec = spec
        self.problem = build_problem(spec)  # ConfigError/DataError before the workdir is touched
        self.trained: runner.Trained | None = None

    def train(self, path: pathlib.Path) -> list[dict[str, Any]]:
        spec, problem = self.spec, self.problem
        init_rng, train_rng, eval_rng = jax.random.split(jax.random.key(spec.seed), 3)
        state = train.create_train_state(problem, train.make_optimizer(spec), init_rng)
        hyper = make_hyper(spec.likelihood.sigma, spec.train.beta, remedy_of(spec.train))
        make_chunk = (
            linear_fit.make_chunk if linear_fit.applies(problem) else train.make_train_chunk
        )

        def raise_nonfinite(step_metrics, first_step, hyper):
            loop.check_finite(step_metrics, first_step)
            return hyper

        self.trained = trained = runner.fit_and_evaluate(
            spec,
            problem,
            path,
            (state, hyper, train_rng, eval_rng),
            make_chunk(problem, train.log_interval(spec)),
            on_nonfinite=raise_nonfinite,
            after_chunk=loop.make_scale_fit(spec, problem, train_rng),
            splits=runner.device_splits(problem),
            train_x=jnp.asarray(problem.train_x),
            members=False,
            announce=lambda: (
                f"evaluating on {len(problem.train_x)} training, {len(problem.val_x)} validation "
                f"(σ refit) and {len(problem.test_x)} test examples (IWAE with "
                f"K = {spec.eval.iwae_samples})"
            ),
        )
        results = evaluate.summarize(trained.outputs, problem)
        results.update(loop.speed_metrics(trained.fitted, spec.train.batch_size))
        results["step"] = int(trained.fitted.state.step)
        return [results]

    def write(self, path: pathlib.Path, rows: list[dict[str, Any]]) -> None:
        trained = self.trained
        console.phase(f"writing plots/ and results.json in {path}")
        figure_data.write_single_run(
            path,
            self.problem,
            trained.fitted.state.params,
            trained.scales["trained"],
            trained.outputs["test"],
            trained.eval_rngs,
        )
        report.single_run_plots(path)
        workdir.write_json_atomic(path / "results.json", rows[0])  # last: marks the run finished


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

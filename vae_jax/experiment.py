"""The single-run driver: a config → data and model (`build_problem`) → fit → evaluate → files.

`experiments/run.py` calls `train_and_evaluate(config, workdir)`; tests and notebooks call the same.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vae_jax import data, evaluate, likelihoods, models, plots, train, validate, workdir
from vae_jax.errors import ConfigError
from vae_jax.objective import Problem, make_hyper


def build_problem(config: ml_collections.ConfigDict) -> Problem:
    """Load the data and build the model the config describes (raises ConfigError/DataError)."""
    validate.check_config(config)
    spec = likelihoods.get_likelihood(config.likelihood.name)
    train_x = data.load_numpy(config.data.name, "train")
    test_x = data.load_numpy(config.data.name, "test")
    transform = "none"
    if spec.support == "binary":
        binarize = config.data.binarize
        if binarize == "fixed":
            train_x = data.fixed_binarize(train_x, config.seed)
            test_x = data.fixed_binarize(test_x, config.seed + 1)
        elif binarize == "dynamic":
            transform = "binarize"
            test_x = data.fixed_binarize(test_x, config.seed + 1)
        elif not (data.is_binary(train_x) and data.is_binary(test_x)):
            raise ConfigError(
                f"likelihood.name='{spec.name}' needs binary data but data.name="
                f"'{config.data.name}' has grey values; set data.binarize to 'dynamic' or 'fixed'"
            )
    elif spec.support in ("real", "unit") and config.data.dequantize:
        if config.data.name in data.PIXEL_DATASETS:
            transform = "dequantize"
    num_bins = data.NUM_BINS.get(config.data.name, 256)
    if spec.support == "discrete" and num_bins != 256:
        raise ConfigError(
            f"likelihood.name='{spec.name}' models 256 pixel levels but data.name="
            f"'{config.data.name}' has {num_bins}; use an 8-bit dataset (mnist_5k, mnist, ...)"
        )
    if config.train.batch_size > train_x.shape[0]:
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
        sigma_init=config.likelihood.sigma_init,
    )
    return Problem(
        model=model,
        likelihood=spec,
        train_x=train_x,
        test_x=test_x,
        transform=transform,
        batch_size=config.train.batch_size,
        num_samples=config.train.num_samples,
        num_bins=num_bins,
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir_path: str) -> dict[str, Any]:
    """Train one model as the config says, evaluate it, write the workdir; returns results."""
    with jax.debug_nans(config.debug_nans):
        return _train_and_evaluate(config, workdir_path)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir_path: str) -> dict[str, Any]:
    problem = build_problem(config)
    path = workdir.prepare(config, workdir_path)
    init_rng, train_rng, eval_rng = jax.random.split(jax.random.key(config.seed), 3)
    state = train.create_train_state(problem, train.make_optimizer(config), init_rng)

    def raise_nonfinite(step_metrics, first_step, hyper):
        train.check_finite(step_metrics, first_step)
        return hyper

    hyper = make_hyper(config.likelihood.sigma, config.train.beta)
    fitted = train.fit(
        config,
        path,
        train.make_train_chunk(problem, train.log_interval(config)),
        state,
        hyper,
        jnp.asarray(problem.train_x),
        train_rng,
        on_nonfinite=raise_nonfinite,
    )
    evaluate_fn = jax.jit(
        evaluate.make_evaluate(
            problem,
            iwae_samples=config.eval.iwae_samples,
            batch_size=evaluate.eval_batch_size(config),
        )
    )
    params = fitted.state.params
    hyper = fitted.hyper
    per_example = train.fetch(evaluate_fn(params, jnp.asarray(problem.test_x), hyper, eval_rng))
    results = evaluate.summarize(per_example, problem)
    results.update(train.speed_metrics(fitted, config.train.batch_size))
    results["step"] = int(fitted.state.step)
    workdir.write_json_atomic(path / "results.json", results)
    plots.single_run_plots(path, problem, params, hyper, per_example, eval_rng)
    return results

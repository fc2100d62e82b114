"""Tests for a learned scale fitted on validation data during training
(`likelihood.sigma_fit='validation'`, `train.make_scale_fit`): the gradient leaves the scale
alone, each fit sets it to the validation MLE, a sweep member equals its single run, a resumed
run replays the fits, and the configs it cannot serve are refused in one line."""

import dataclasses
import json
import shutil

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import figures_skipped, tiny_config, without_speeds

from vae_jax import experiment, models, objective, spec, sweep, train
from vae_jax.errors import ConfigError

# Two chunks of 10 steps with a fit after each (steps 10 and 20) and a checkpoint after each.
FIELDS = {
    "likelihood.name": "gaussian_learned",
    "likelihood.sigma_fit_every": 10,
    "train.log_every": 20,
}


def learned_sigma(params) -> float:
    problem = experiment.build_problem(tiny_config(FIELDS))
    return float(np.exp(problem.model.apply(params, method=models.VAE.learned_log_sigma)))


def restored(path, step: int):
    manager = ocp.CheckpointManager(path / "checkpoints")
    tree = manager.restore(step, args=ocp.args.StandardRestore())
    manager.close()
    return tree["state"]


def read_metrics(path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    path = tmp_path_factory.mktemp("scale_fit")
    with figures_skipped():
        results = experiment.train_and_evaluate(tiny_config(FIELDS), path)
    return {"path": path, "results": results}


def test_the_gradient_does_not_reach_a_scale_fitted_on_validation_data():
    # Where every objective reads the learned σ; that Adam then leaves it where the last fit
    # put it is checked on a trained run below.
    fitted_on_val = experiment.build_problem(tiny_config(FIELDS))
    by_gradient = dataclasses.replace(fitted_on_val, scale_on_validation=False)
    params = fitted_on_val.model.init(jax.random.key(0), jnp.zeros((8, 8)))
    hyper = objective.make_hyper(0.1, 1.0)
    grads = {}
    for name, problem in (("validation", fitted_on_val), ("gradient", by_gradient)):
        log_sigma = jax.grad(
            lambda p, problem=problem: objective.observation_log_sigma(problem, p, hyper)
        )
        grads[name] = float(log_sigma(params)["params"]["sigma_raw"])
    assert grads["validation"] == 0.0
    assert grads["gradient"] > 0.0


def test_the_scale_is_the_validation_mle_set_at_each_fit(fitted):
    path = fitted["path"]
    config = tiny_config(FIELDS)
    problem = experiment.build_problem(config)
    records = read_metrics(path)
    assert [r["step"] for r in records] == [10, 20]
    # Steps 1-10 score with the starting σ, steps 11-20 with the σ the fit at step 10 set: the
    # chunk's mean σ is that one value (Adam, fed a zero gradient, never moves it).
    np.testing.assert_allclose(records[0]["sigma"], problem.model.sigma_init, rtol=1e-5)
    at_10 = learned_sigma(restored(path, 10)["params"])
    np.testing.assert_allclose(records[1]["sigma"], at_10, rtol=1e-5)
    assert abs(at_10 / problem.model.sigma_init - 1.0) > 1e-3  # the fit moved it

    # The final σ is the closed-form MLE of the final network's validation residuals:
    # σ̂² = mean over examples and pixels of (x − f(z))², z ~ q(z|x), recomputed here by hand.
    final = restored(path, 20)["params"]
    _, train_rng, _ = jax.random.split(jax.random.key(config.seed), 3)
    rng = jax.random.fold_in(jax.random.fold_in(train_rng, train._SCALE_FIT_STREAM), 20)
    keys = jax.random.split(rng, 250)[: len(problem.val_x)]  # one evaluation batch, padded

    @jax.jit
    @jax.vmap
    def squared_residual(x, key):
        transform_key, z_key = jax.random.split(key)
        x = objective.transform_batch(problem, transform_key, x)
        mean, log_var = problem.model.apply(final, x, method=models.VAE.encode)
        z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(z_key, mean.shape)
        return jnp.square(x - problem.model.apply(final, z, method=models.VAE.decode)[0])

    squares = squared_residual(jnp.asarray(problem.val_x), keys)
    np.testing.assert_allclose(learned_sigma(final), np.sqrt(np.mean(squares)), rtol=1e-4)
    # As trained, the run scores with that σ.
    np.testing.assert_allclose(fitted["results"]["sigma"], learned_sigma(final), rtol=1e-5)


def test_a_resumed_run_replays_the_fits(fitted, tmp_path, no_figures):
    path = tmp_path / "resumed"
    shutil.copytree(fitted["path"], path)
    shutil.rmtree(path / "checkpoints" / "20")
    (path / "results.json").unlink()
    results = experiment.train_and_evaluate(tiny_config(FIELDS), path)
    assert results["train/steps_per_sec"] is not None  # it trained steps 11-20 again
    assert without_speeds(results) == without_speeds(fitted["results"])
    chex.assert_trees_all_equal(restored(path, 20), restored(fitted["path"], 20))


@pytest.mark.slow  # 7 s: a vmapped group's own programs (the fit, under vmap, is the single run's)
def test_a_sweep_member_fits_its_scale_as_its_single_run(fitted, tmp_path, no_figures):
    config = tiny_config(FIELDS)  # one group: the learned σ's own, seeds 0 and 1
    config.sweep = ml_collections.ConfigDict({"sigma": (0.1,), "seeds": (0, 1), "references": ()})
    rows = sweep.train_and_evaluate(config, tmp_path)
    learned = [r for r in rows if r["group"] == "gaussian_learned"]
    assert [r["seed"] for r in learned] == [0, 1]
    single = fitted["results"]
    for key in ("sigma", "sigma_refit", "test/iwae_nll", "test/elbo", "val/iwae_nll"):
        np.testing.assert_allclose(learned[0][key], single[key], rtol=1e-4, err_msg=key)
    stacked = restored(tmp_path / "groups" / "gaussian_learned", 20)["params"]
    chex.assert_trees_all_close(
        jax.tree.map(lambda a: np.asarray(a)[0], stacked),
        restored(fitted["path"], 20)["params"],
        rtol=1e-4,
        atol=1e-6,
    )
    assert learned[1]["sigma"] != learned[0]["sigma"]  # each member's own fit


def test_the_fit_happens_at_multiples_of_sigma_fit_every_and_after_the_last_step():
    config = spec.parse(tiny_config(FIELDS, likelihood__sigma_fit_every=15, train__num_steps=30))
    assert train.log_interval(config) == 5  # chunks end at 15 and at 30
    calls = []
    problem = experiment.build_problem(config)
    after = train.make_scale_fit(config, problem, jax.random.key(0))
    state = train.create_train_state(problem, train.make_optimizer(config), jax.random.key(1))
    hyper = objective.make_hyper(0.1, 1.0)
    for step in range(5, 31, 5):
        state = state.replace(step=jnp.int32(step))  # as if trained: each fit draws anew
        before = learned_sigma(state.params)
        state = after(state, hyper, step)
        calls.append(learned_sigma(state.params) != before)
    assert calls == [False, False, True, False, False, True]
    # A fixed σ or a gradient-learned one has nothing to fit, and chunks keep train.log_every.
    for fields in ({"likelihood.name": "gaussian"}, {"likelihood.sigma_fit": "gradient"}):
        other = spec.parse(
            tiny_config(FIELDS | fields, likelihood__sigma_fit_every=15, train__num_steps=30)
        )
        assert train.make_scale_fit(other, experiment.build_problem(other), None) is None
        assert train.log_interval(other) == 10


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"likelihood.sigma_fit": "test"}, "likelihood.sigma_fit='test' is not known"),
        ({"likelihood.sigma_fit_every": 0}, "likelihood.sigma_fit_every=0 must be > 0"),
        ({"data.validation_fraction": 0.0}, "data.validation_fraction=0.0 holds none out"),
        (
            {"model.kind": "linear", "train.full_batch": True, "data.dequantize": False},
            "likelihood.sigma_fit='validation': this linear Gaussian VAE",
        ),
    ],
)
def test_configs_the_fit_cannot_serve_are_refused_in_one_line(fields, message):
    with pytest.raises(ConfigError) as raised:
        experiment.build_problem(tiny_config(FIELDS | fields))
    assert message in str(raised.value) and "\n" not in str(raised.value)

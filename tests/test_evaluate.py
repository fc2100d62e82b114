"""Evaluation scores proper densities only: the refit σ is the closed form on VALIDATION data, the
optimal-σ member's σ is fitted on training data and never depends on test data, and `sigma` is the
decoder's std per family."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from vae_jax import evaluate, experiment, train
from vae_jax.objective import make_hyper


def _member(likelihood: str, **overrides):
    config = tiny_config(likelihood__name=likelihood, eval__iwae_samples=2, **overrides)
    problem = experiment.build_problem(config)
    state = train.create_train_state(problem, train.make_optimizer(config), jax.random.key(0))
    member = experiment.make_member_evaluation(config, problem)
    return config, problem, state, member


def test_refit_sigma_maximises_the_validation_elbo_and_never_reads_test_or_training_data():
    config, problem, state, member = _member("gaussian")
    hyper = make_hyper(0.3, 1.0)
    train_x, val_x, test_x = experiment.device_splits(problem)
    _, scales = member(state.params, hyper, jax.random.key(1), train_x, val_x, test_x)
    refit = float(scales["refit"])
    evaluate_fn = jax.jit(evaluate.make_evaluate(problem, iwae_samples=2, batch_size=64))

    def val_elbo(log_sigma):
        out = evaluate_fn(state.params, val_x, jnp.float32(log_sigma), jax.random.key(2))
        return float(np.mean(out["elbo"]))

    best = val_elbo(refit)
    assert best > val_elbo(refit + math.log(1.1)) and best > val_elbo(refit - math.log(1.1))
    assert abs(refit - math.log(0.3)) > 0.05  # it moved away from the training σ
    # Other training and test images leave it where it is; other validation images move it.
    _, same = member(state.params, hyper, jax.random.key(1), 1 - train_x, val_x, 1 - test_x)
    assert float(same["refit"]) == refit
    _, moved = member(state.params, hyper, jax.random.key(1), train_x, 1 - val_x, test_x)
    assert abs(float(moved["refit"]) - refit) > 1e-3


def test_per_pixel_refit_keeps_the_shape_and_rescales_by_the_validation_mle_factor():
    config, problem, state, member = _member("gaussian_per_pixel", likelihood__sigma_init=0.2)
    hyper = make_hyper(config.likelihood.sigma, 1.0)
    train_x, val_x, test_x = experiment.device_splits(problem)
    _, scales = member(state.params, hyper, jax.random.key(5), train_x, val_x, test_x)
    trained, refit = np.asarray(scales["trained"]), np.asarray(scales["refit"])
    assert trained.shape == refit.shape == problem.train_x.shape[1:]
    shift = refit - trained
    np.testing.assert_allclose(shift, shift.flat[0], atol=1e-5)  # one factor for every pixel
    evaluate_fn = jax.jit(evaluate.make_evaluate(problem, iwae_samples=2, batch_size=64))

    def val_recon(log_factor):
        log_sigma = jnp.asarray(trained + log_factor, jnp.float32)
        out = evaluate_fn(state.params, val_x, log_sigma, jax.random.key(6))
        return float(np.mean(out["recon"]))

    best = val_recon(shift.flat[0])
    assert best > val_recon(shift.flat[0] + 0.1) and best > val_recon(shift.flat[0] - 0.1)


def test_no_validation_split_means_no_refit():
    config, problem, state, member = _member(
        "gaussian_learned", data__validation_fraction=0.0, likelihood__sigma_fit="gradient"
    )
    hyper = make_hyper(config.likelihood.sigma, 1.0)
    train_x, val_x, test_x = experiment.device_splits(problem)
    assert val_x.shape[0] == 0
    outputs, scales = member(state.params, hyper, jax.random.key(7), train_x, val_x, test_x)
    assert "refit" not in scales and "test_refit" not in outputs
    results = evaluate.summarize(train.fetch(outputs), problem)
    assert results["sigma_refit"] is None and "test/iwae_nll_refit" not in results


def test_optimal_sigma_member_is_scored_with_a_sigma_fitted_on_training_data():
    config, problem, state, member = _member("gaussian_optimal")
    hyper = make_hyper(config.likelihood.sigma, 1.0)
    train_x, val_x, test_x = experiment.device_splits(problem)
    rng = jax.random.key(3)
    outputs, scales = member(state.params, hyper, rng, train_x, val_x, test_x)
    other_outputs, other_scales = member(state.params, hyper, rng, train_x, val_x, 1 - test_x)
    # The σ it is scored with does not move when the test images change...
    assert float(scales["trained"]) == float(other_scales["trained"])
    # ...it is the training data's: other training images move it.
    _, moved = member(state.params, hyper, rng, 1 - train_x, val_x, test_x)
    assert abs(float(moved["trained"]) - float(scales["trained"])) > 1e-3
    # ...and the test score is the fixed-σ Gaussian's at that σ, a normalised density.
    fixed = jax.jit(evaluate.make_evaluate(problem, iwae_samples=2, batch_size=64))
    rngs = jax.random.split(rng, 7)
    direct = fixed(state.params, test_x, scales["trained"], rngs[3])
    np.testing.assert_allclose(outputs["test"]["iwae"], direct["iwae"], rtol=1e-5)


@pytest.mark.parametrize("name, factor", [("laplace", math.sqrt(2.0)), ("gaussian_learned", 1.0)])
def test_sigma_column_is_the_decoder_standard_deviation(name, factor):
    config, problem, state, member = _member(name, likelihood__sigma_init=0.2)
    hyper = make_hyper(config.likelihood.sigma, 1.0)
    outputs, _ = member(state.params, hyper, jax.random.key(4), *experiment.device_splits(problem))
    results = evaluate.summarize(train.fetch(outputs), problem)
    # sigma_init is a standard deviation: the Laplace scale starts at 0.2/√2, its std at 0.2.
    np.testing.assert_allclose(results["sigma"], 0.2, rtol=1e-4)
    scale = float(np.exp(problem.model.apply(state.params, method=problem.model.learned_log_sigma)))
    np.testing.assert_allclose(scale * factor, 0.2, rtol=1e-4)


def test_unset_sigma_init_starts_at_the_ppca_sigma_of_the_training_data():
    config, problem, _, _ = _member("gaussian_per_pixel")
    x = problem.train_x.reshape(len(problem.train_x), -1).astype(np.float64)
    eigvals = np.linalg.eigvalsh(np.cov(x.T, bias=True))[::-1]
    expected = math.sqrt(eigvals[config.model.latent_dim :].mean() + 1 / (12 * 17**2))
    np.testing.assert_allclose(problem.model.sigma_init, expected, rtol=1e-3)


def test_unset_sigma_init_with_as_many_latents_as_pixels_starts_at_the_dequantisation_noise():
    """k = D discards no eigenvalue: the pPCA noise is 0 and only dequantisation's is left."""
    _, problem, _, _ = _member("gaussian_learned", model__latent_dim=64)  # digits: D = 8·8
    np.testing.assert_allclose(problem.model.sigma_init, math.sqrt(1 / (12 * 17**2)), rtol=1e-6)

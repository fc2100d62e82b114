"""Evaluation scores proper densities only: the refit σ is the closed form on TRAINING data, the
optimal-σ member's σ never depends on test data, and `sigma` is the decoder's std per family."""

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


def test_refit_sigma_maximises_the_training_elbo():
    config, problem, state, member = _member("gaussian")
    hyper = make_hyper(0.3, 1.0)
    splits = experiment.device_splits(problem)
    _, scales = member(state.params, hyper, jax.random.key(1), *splits)
    refit = float(scales["refit"])
    evaluate_fn = jax.jit(evaluate.make_evaluate(problem, iwae_samples=2, batch_size=64))

    def train_elbo(log_sigma):
        out = evaluate_fn(state.params, splits[0], jnp.float32(log_sigma), jax.random.key(2))
        return float(np.mean(out["elbo"]))

    best = train_elbo(refit)
    assert best > train_elbo(refit + math.log(1.1)) and best > train_elbo(refit - math.log(1.1))
    assert abs(refit - math.log(0.3)) > 0.05  # it moved away from the training σ


def test_optimal_sigma_member_is_scored_with_a_sigma_fitted_on_training_data():
    config, problem, state, member = _member("gaussian_optimal")
    hyper = make_hyper(config.likelihood.sigma, 1.0)
    train_x, val_x, test_x = experiment.device_splits(problem)
    rng = jax.random.key(3)
    outputs, scales = member(state.params, hyper, rng, train_x, val_x, test_x)
    other_outputs, other_scales = member(state.params, hyper, rng, train_x, val_x, 1 - test_x)
    # The σ it is scored with does not move when the test images change...
    assert float(scales["trained"]) == float(other_scales["trained"])
    assert float(scales["trained"]) == float(scales["refit"])
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

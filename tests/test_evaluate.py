"""Evaluation scores proper densities only: the refit σ maximises the IWAE bound on VALIDATION
data, the optimal-σ member's σ is fitted on training data and never depends on test data, and
`sigma` is the decoder's std per family."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from vae_jax import console, evaluate, experiment, runner, train
from vae_jax.objective import make_hyper
from vae_jax.refit import (
    best_log_factor,
    iwae_at_factor,
    make_iwae_profile,
    make_residual_moments,
    refit_log_scale,
)
from vae_jax.scorable import of_problem


def _member(likelihood: str, **overrides):
    config = tiny_config(likelihood__name=likelihood, eval__iwae_samples=2, **overrides)
    problem = experiment.build_problem(config)
    state = train.create_train_state(problem, train.make_optimizer(config), jax.random.key(0))
    member = runner.make_member_evaluation(config, problem)
    return config, problem, state, member


def _val_iwae(problem, params, val_x, rng, iwae_samples=2):
    """The validation IWAE bound as evaluation scores `val_refit`: its key and its draws."""
    model = of_problem(problem)
    evaluate_fn = jax.jit(evaluate.make_evaluate(model, iwae_samples=iwae_samples, batch_size=64))
    key = evaluate.member_keys(rng).refit.search

    def bound(log_sigma):
        out = evaluate_fn(params, val_x, jnp.asarray(log_sigma, jnp.float32), key)
        return float(np.mean(out["iwae"]))

    return bound


def test_refit_sigma_maximises_the_validation_iwae_bound_and_never_reads_test_or_training_data():
    config, problem, state, member = _member("gaussian")
    hyper = make_hyper(0.3, 1.0)
    train_x, val_x, test_x = runner.device_splits(problem)
    rng = jax.random.key(1)
    outputs, scales = member(state.params, hyper, rng, train_x, val_x, test_x)
    refit = float(scales["refit"])
    bound = _val_iwae(problem, state.params, val_x, rng)
    best = bound(refit)
    np.testing.assert_allclose(best, float(np.mean(outputs["val_refit"]["iwae"])), rtol=1e-5)
    assert best >= bound(refit + 0.02) and best >= bound(refit - 0.02)
    # At least as good on validation as the closed form it starts from (the ELBO's optimum).
    model = of_problem(problem)
    moments = jax.jit(make_residual_moments(model, batch_size=64))
    key = evaluate.member_keys(rng).refit.moments
    mean_sq, mean_abs = moments(state.params, val_x, jnp.log(0.3), key)
    closed = refit_log_scale(model, jnp.log(0.3), mean_sq, mean_abs)
    assert best >= bound(float(closed)) - 1e-4
    assert abs(refit - math.log(0.3)) > 0.05  # it moved away from the training σ
    # Other training and test images leave it where it is; other validation images move it.
    _, same = member(state.params, hyper, rng, 1 - train_x, val_x, 1 - test_x)
    assert float(same["refit"]) == refit
    _, moved = member(state.params, hyper, rng, train_x, 1 - val_x, test_x)
    assert abs(float(moved["refit"]) - refit) > 1e-3


def test_iwae_profile_is_the_bound_at_every_scale_factor():
    """The profile's logsumexp at factor e^u equals evaluation at scale e^u·σ, same draws."""
    _, problem, state, _ = _member("laplace", likelihood__sigma_init=0.2)
    x = jnp.asarray(problem.val_x)
    rng = jax.random.key(8)
    model = of_problem(problem)
    profile = jax.jit(make_iwae_profile(model, iwae_samples=2, batch_size=64))
    evaluate_fn = jax.jit(evaluate.make_evaluate(model, iwae_samples=2, batch_size=64))
    log_b = jnp.float32(math.log(0.1))
    log_w, t = profile(state.params, x, log_b, rng)
    num_dims = math.prod(x.shape[1:])
    for u in (-0.3, 0.0, 0.2):
        direct = float(np.mean(evaluate_fn(state.params, x, log_b + u, rng)["iwae"]))
        via_profile = float(iwae_at_factor(log_w, t, jnp.float32(u), 1, num_dims))
        np.testing.assert_allclose(via_profile, direct, rtol=1e-5)


def test_best_log_factor_finds_the_maximum_and_never_returns_a_worse_scale():
    rng = np.random.default_rng(0)
    log_w = jnp.asarray(rng.normal(size=(50, 4)), jnp.float32)
    t = jnp.asarray(rng.uniform(20.0, 40.0, size=(50, 4)), jnp.float32)

    def bound(u, scale=1.0):
        return float(iwae_at_factor(log_w, t * scale, jnp.float32(u), 2, 64))

    u = float(best_log_factor(log_w, t, 2, 64))
    grid = np.linspace(-0.5, 0.5, 401)
    assert abs(u - grid[int(np.argmax([bound(g) for g in grid]))]) < 3e-3
    # An optimum outside the bracket: the search ends at its edge, never worse than u = 0.
    far = float(best_log_factor(log_w, t * 100, 2, 64))
    assert bound(far, 100) >= bound(0.0, 100) and abs(far - 0.5) < 1e-3


@pytest.mark.slow  # the default suite keeps a faster test of the same code
def test_per_pixel_refit_keeps_the_shape_and_rescales_by_the_validation_iwae_factor():
    config, problem, state, member = _member("gaussian_per_pixel", likelihood__sigma_init=0.2)
    hyper = make_hyper(config.likelihood.sigma, 1.0)
    train_x, val_x, test_x = runner.device_splits(problem)
    rng = jax.random.key(5)
    _, scales = member(state.params, hyper, rng, train_x, val_x, test_x)
    trained, refit = np.asarray(scales["trained"]), np.asarray(scales["refit"])
    assert trained.shape == refit.shape == problem.train_x.shape[1:]
    shift = refit - trained
    np.testing.assert_allclose(shift, shift.flat[0], atol=1e-5)  # one factor for every pixel
    bound = _val_iwae(problem, state.params, val_x, rng)
    best = bound(refit)
    assert best >= bound(refit + 0.05) and best >= bound(refit - 0.05)


def test_no_validation_split_means_no_refit():
    config, problem, state, member = _member(
        "gaussian_learned", data__validation_fraction=0.0, likelihood__sigma_fit="gradient"
    )
    hyper = make_hyper(config.likelihood.sigma, 1.0)
    train_x, val_x, test_x = runner.device_splits(problem)
    assert val_x.shape[0] == 0
    outputs, scales = member(state.params, hyper, jax.random.key(7), train_x, val_x, test_x)
    assert "refit" not in scales and "test_refit" not in outputs
    results = evaluate.summarize(console.fetch(outputs), problem)
    assert results["sigma_refit"] is None and "test/iwae_nll_refit" not in results


def test_optimal_sigma_member_is_scored_with_a_sigma_fitted_on_training_data():
    config, problem, state, member = _member("gaussian_optimal")
    hyper = make_hyper(config.likelihood.sigma, 1.0)
    train_x, val_x, test_x = runner.device_splits(problem)
    rng = jax.random.key(3)
    outputs, scales = member(state.params, hyper, rng, train_x, val_x, test_x)
    other_outputs, other_scales = member(state.params, hyper, rng, train_x, val_x, 1 - test_x)
    # The σ it is scored with does not move when the test images change...
    assert float(scales["trained"]) == float(other_scales["trained"])
    # ...it is the training data's: other training images move it.
    _, moved = member(state.params, hyper, rng, 1 - train_x, val_x, test_x)
    assert abs(float(moved["trained"]) - float(scales["trained"])) > 1e-3
    # ...and the test score is the fixed-σ Gaussian's at that σ, a normalised density.
    model = of_problem(problem)
    fixed = jax.jit(evaluate.make_evaluate(model, iwae_samples=2, batch_size=64))
    key = evaluate.member_keys(rng).trained["test"]
    direct = fixed(state.params, test_x, scales["trained"], key)
    np.testing.assert_allclose(outputs["test"]["iwae"], direct["iwae"], rtol=1e-5)


@pytest.mark.parametrize(
    "name, factor",
    [("laplace", math.sqrt(2.0)), pytest.param("gaussian_learned", 1.0, marks=pytest.mark.slow)],
)
def test_sigma_column_is_the_decoder_standard_deviation(name, factor):
    config, problem, state, member = _member(name, likelihood__sigma_init=0.2)
    hyper = make_hyper(config.likelihood.sigma, 1.0)
    outputs, _ = member(state.params, hyper, jax.random.key(4), *runner.device_splits(problem))
    results = evaluate.summarize(console.fetch(outputs), problem)
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

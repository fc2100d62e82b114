"""Tests for vae_jax.objective: σ and β are one knob of the objective; the flat event."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LIKELIHOOD_NAMES, tiny_config

from vae_jax import experiment, objective, spec, train
from vae_jax.report import sigma

KEY = jax.random.key(0)
SLOW = pytest.mark.slow


def test_sigma_and_beta_are_one_knob(tmp_path, no_figures):
    """(σ₀, β) trains the same model as (σ₀·√β, β = 1): recon_σ₀ − β·KL is β·(recon_{σ₀√β} − KL)
    plus a constant, and Adam ignores the gradient's scale (up to its ε), so KL and MSE agree."""
    weighted = experiment.train_and_evaluate(
        tiny_config(likelihood__sigma=0.1, train__beta=4.0), str(tmp_path / "beta4")
    )
    plain = experiment.train_and_evaluate(
        tiny_config(likelihood__sigma=0.2, train__beta=1.0), str(tmp_path / "beta1")
    )
    for key in ("test/kl", "test/recon_mse"):
        assert weighted[key] == pytest.approx(plain[key], rel=1e-5), key
    # Not the same likelihood: the ELBO at σ = 0.1 is another number.
    assert not np.isclose(weighted["test/elbo"], plain["test/elbo"], rtol=1e-3)


def test_the_sweep_report_says_it_where_beta_appears():
    assert sigma.beta_note([{"beta": 1.0}, {"beta": 1.0}]) == []
    (line,) = [s for s in sigma.beta_note([{"beta": 1.0}, {"beta": 4.0}]) if s]
    assert "β = 4" in line and "σ·√β" in line


@pytest.mark.parametrize(
    "name",  # the two families the flat event sped up most by default, the others with -m slow
    [
        n if n in ("continuous_bernoulli", "discretized_logistic") else pytest.param(n, marks=SLOW)
        for n in LIKELIHOOD_NAMES
    ],
)
def test_training_on_the_flat_event_gives_bit_identical_gradients(name, monkeypatch):
    """The train step scores each event flat (XLA vectorises its axis; the shaped [H, W, 1] event
    has an innermost axis of 1). Elementwise values and their gradients do not change, so the
    gradient equals the shaped one bit for bit and no trained number moves."""
    config = tiny_config(likelihood__name=name)
    if name == "bernoulli":
        config.data.binarize = "fixed"
    if name == "discretized_logistic":  # 256 pixel levels; digits has 17
        config.data.name = "mnist_5k"
    problem = experiment.build_problem(config)
    state = train.create_train_state(problem, train.make_optimizer(spec.parse(config)), KEY)
    hyper = objective.make_hyper(0.3, 1.0)
    x = jnp.asarray(problem.train_x[:8])

    def gradient():
        def loss(params):
            terms = jax.vmap(
                lambda xi, r: objective.example_elbo(problem, params, xi, hyper, r, 1)
            )(x, jax.random.split(KEY, len(x)))
            return -jnp.mean(terms["objective"])

        return jax.jit(jax.grad(loss))(state.params)

    flat = gradient()
    shaped_likelihood = objective.decoder_and_likelihood

    def shaped(problem, params, log_sigma, *, train):
        decode, log_likelihood = shaped_likelihood(problem, params, log_sigma, train=train)
        if train and not problem.likelihood.optimal_scale:
            return decode, lambda xi, out: problem.likelihood.log_prob(xi, out, log_sigma)
        return decode, log_likelihood

    monkeypatch.setattr(objective, "decoder_and_likelihood", shaped)
    chex.assert_trees_all_equal(flat, gradient())

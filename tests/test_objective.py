"""Tests for vae_jax.objective: σ and β are one knob of the objective."""

import numpy as np
import pytest
from conftest import tiny_config

from vae_jax import experiment
from vae_jax.report import sigma


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

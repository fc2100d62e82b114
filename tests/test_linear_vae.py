"""The linear-VAE theory (Lucas et al. 2019) with TRAINED models, not only formulas.

On ppca_synthetic, a linear VAE trained at σ² above λ_1, between two eigenvalues and below λ_k
must collapse exactly #{i ≤ k : λ_i ≤ σ²} latents, and its exact ELBO must come within 1% of the
analytic pPCA log-likelihood for that σ².
"""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import data, linear, linear_report, sweep

REPO = pathlib.Path(__file__).resolve().parents[1]


def linear_config():
    path = REPO / "experiments" / "configs" / "linear_vae.py"
    spec = importlib.util.spec_from_file_location("linear_vae_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def train_linear_vaes(path, num_steps, pick):
    """Train the config's linear VAE at the σ² `pick(grid)` chooses, as one vmapped group."""
    config = linear_config()
    config.train.num_steps = num_steps
    config.train.log_every = 500
    config.train.checkpoint_every = num_steps
    config.eval.iwae_samples = 4
    x = data.load_numpy("ppca_synthetic", "train")
    eigvals, _, _ = linear.data_spectrum(jnp.asarray(x.reshape(len(x), -1)))
    k = config.model.latent_dim
    grid = np.asarray(linear.sigma_sq_grid_across_spectrum(eigvals, k))
    lr = config.train.learning_rate
    members = [sweep.Member("gaussian", float(np.sqrt(s)), 0, 1.0, lr) for s in pick(grid)]
    rows, problem, fitted, per_example, eval_rngs = sweep.train_group(
        config, path, "gaussian", members, sweep.member_mesh()
    )
    outputs = {"gaussian": (problem, fitted, per_example, eval_rngs)}
    return linear_report.linear_theory_rows(rows, outputs, k), np.asarray(eigvals), k


@pytest.fixture(scope="module")
def three_sigmas(tmp_path_factory):
    """Above λ_1, between λ_2 and λ_3, below λ_k; short training (enough for collapse)."""
    path = tmp_path_factory.mktemp("linear_vae_3")
    return train_linear_vaes(path, 1500, lambda grid: [grid[0], grid[2], grid[-1]])


def test_the_grid_straddles_the_spectrum(three_sigmas):
    theory, eigvals, k = three_sigmas
    assert theory[0]["sigma_sq"] > eigvals[0]
    assert eigvals[2] < theory[1]["sigma_sq"] < eigvals[1]
    assert theory[2]["sigma_sq"] < eigvals[k - 1]
    assert [t["predicted_collapsed"] for t in theory] == [k, k - 2, 0]


def test_trained_collapse_equals_the_prediction(three_sigmas):
    theory, _, k = three_sigmas
    for t in theory:
        assert t["trained_collapsed"] == t["predicted_collapsed"], t
        assert t["trained_active"] == k - t["predicted_collapsed"], t


@pytest.mark.slow
def test_every_sigma_of_the_config_collapses_as_predicted_with_elbo_within_one_percent(
    tmp_path,
):
    """The config's whole σ² grid and training length: exact collapse, ELBO gap < 1%."""
    num_steps = linear_config().train.num_steps
    theory, _, k = train_linear_vaes(tmp_path, num_steps, lambda grid: list(grid))
    assert [t["predicted_collapsed"] for t in theory] == list(range(k, -1, -1))
    for t in theory:
        assert t["trained_collapsed"] == t["predicted_collapsed"], t
        assert t["trained_elbo"] <= t["analytic_log_p"] + 1e-3 * abs(t["analytic_log_p"]), t
        assert t["gap_percent"] < 1.0, t


def test_linear_params_match_the_flax_model():
    """`models.linear_vae_matrices` reads the Flax linear VAE in `vae_jax.linear`'s conventions."""
    from vae_jax import models

    model = models.VAE(kind="linear", latent_dim=3, event_shape=(1, 5, 1), likelihood="gaussian")
    x = jax.random.normal(jax.random.key(0), (1, 5, 1))
    params = model.init(jax.random.key(1), x)
    mats = models.linear_vae_matrices(params)
    mean, log_var = model.apply(params, x, method=models.VAE.encode)
    np.testing.assert_allclose(mats["enc_W"] @ x.reshape(-1) + mats["enc_b"], mean, rtol=1e-5)
    np.testing.assert_allclose(mats["enc_log_var"], log_var)
    z = jnp.array([0.3, -1.0, 2.0])
    out = model.apply(params, z, method=models.VAE.decode)
    np.testing.assert_allclose(mats["dec_W"] @ z + mats["dec_b"], out[0].reshape(-1), rtol=1e-5)

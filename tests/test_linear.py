"""Tests for vae_jax.linear: pPCA closed forms and the exact linear-VAE ELBO.

Expected values come from numpy/scipy computed here; most tests run in float64.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vae_jax import linear

DIM, LATENT = 6, 3


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _random_ppca(seed: int, dim: int = DIM, latent: int = LATENT, sigma_sq: float = 0.2):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(dim, latent)), rng.normal(size=dim), sigma_sq


def _numpy_ppca_data(seed: int, num: int, W: np.ndarray, mu: np.ndarray, sigma_sq: float):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(num, W.shape[1]))
    return z @ W.T + mu + np.sqrt(sigma_sq) * rng.normal(size=(num, W.shape[0]))


def _spectrum_data(seed: int = 0, num: int = 400) -> np.ndarray:
    """Anisotropic data with well separated covariance eigenvalues."""
    rng = np.random.default_rng(seed)
    scales = np.array([3.0, 2.0, 1.4, 1.0, 0.7, 0.4])
    basis, _ = np.linalg.qr(rng.normal(size=(DIM, DIM)))
    return (rng.normal(size=(num, DIM)) * scales) @ basis.T + rng.normal(size=DIM)


def test_data_spectrum_matches_numpy(x64):
    x = _spectrum_data()
    eigvals, eigvecs, mean = jax.jit(linear.data_spectrum)(jnp.asarray(x))
    chex.assert_shape([eigvals, mean], (DIM,))
    chex.assert_shape(eigvecs, (DIM, DIM))
    expected_cov = np.cov(x, rowvar=False, bias=True)  # 1/N normalisation
    expected_vals, expected_vecs = np.linalg.eigh(expected_cov)
    expected_vals, expected_vecs = expected_vals[::-1], expected_vecs[:, ::-1]
    assert np.all(np.diff(eigvals) <= 0)
    chex.assert_trees_all_close(eigvals, expected_vals, rtol=1e-10)
    chex.assert_trees_all_close(mean, x.mean(axis=0), rtol=1e-12)
    # Eigenvectors are defined up to sign.
    chex.assert_trees_all_close(
        np.abs(np.sum(np.asarray(eigvecs) * expected_vecs, axis=0)), np.ones(DIM), atol=1e-8
    )
    chex.assert_trees_all_close((eigvecs * eigvals) @ eigvecs.T, expected_cov, atol=1e-10)


def test_data_spectrum_rejects_single_example():
    with pytest.raises(AssertionError, match=r"rank 1 \(shape \(6,\)\) but expected 2"):
        linear.data_spectrum(jnp.ones(DIM))


def test_ppca_mle_recovers_population_covariance(x64):
    W, mu, sigma_sq = _random_ppca(seed=1, sigma_sq=0.3)
    x = _numpy_ppca_data(seed=2, num=200_000, W=W, mu=mu, sigma_sq=sigma_sq)
    params = jax.jit(linear.ppca_mle, static_argnums=1)(jnp.asarray(x), LATENT)
    chex.assert_shape(params["W"], (DIM, LATENT))
    chex.assert_shape(params["mu"], (DIM,))
    chex.assert_shape(params["sigma_sq"], ())
    chex.assert_tree_all_finite(params)
    model_cov = params["W"] @ params["W"].T + params["sigma_sq"] * jnp.eye(DIM)
    population_cov = W @ W.T + sigma_sq * np.eye(DIM)
    scale = np.abs(population_cov).max()
    chex.assert_trees_all_close(model_cov, population_cov, atol=0.02 * scale)
    chex.assert_trees_all_close(params["mu"], mu, atol=0.02 * scale)
    chex.assert_trees_all_close(params["sigma_sq"], sigma_sq, rtol=0.02)


def test_ppca_mle_sigma_sq_is_mean_discarded_eigenvalue(x64):
    x = _spectrum_data()
    expected_vals = np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True))[::-1]
    for latent_dim in (1, 3, 5):
        params = linear.ppca_mle(jnp.asarray(x), latent_dim)
        chex.assert_trees_all_close(
            params["sigma_sq"], expected_vals[latent_dim:].mean(), rtol=1e-10
        )
    with pytest.raises(ValueError, match="latent_dim"):
        linear.ppca_sigma_sq_mle(jnp.asarray(expected_vals), DIM)


def test_ppca_mle_collapses_columns_exactly(x64):
    x = jnp.asarray(_spectrum_data())
    eigvals, _, _ = linear.data_spectrum(x)
    # Between eigenvalues, and exactly equal to one (which counts as collapsed).
    for sigma_sq in (0.5 * (eigvals[1] + eigvals[2]), eigvals[1], eigvals[0] + 1.0, 1e-3):
        params = linear.ppca_mle(x, 4, sigma_sq)
        column_norms = np.linalg.norm(np.asarray(params["W"]), axis=0)
        collapsed = np.asarray(eigvals[:4] <= sigma_sq)
        assert np.all(column_norms[collapsed] == 0.0)
        assert np.all(column_norms[~collapsed] > 0.0)
        # Surviving columns have length² λ_i − σ².
        chex.assert_trees_all_close(
            column_norms[~collapsed] ** 2, np.asarray(eigvals[:4] - sigma_sq)[~collapsed], rtol=1e-9
        )


@pytest.mark.parametrize("latent_dim", [1, LATENT])
def test_log_marginal_matches_scipy(x64, latent_dim):
    W, mu, sigma_sq = _random_ppca(seed=3, latent=latent_dim)
    x = _numpy_ppca_data(seed=4, num=5, W=W, mu=mu, sigma_sq=sigma_sq)
    expected = stats.multivariate_normal(mu, W @ W.T + sigma_sq * np.eye(DIM)).logpdf(x)
    log_marginal = jax.jit(linear.linear_gaussian_log_marginal)
    # Scalar case.
    single = log_marginal(jnp.asarray(x[0]), jnp.asarray(W), jnp.asarray(mu), sigma_sq)
    chex.assert_shape(single, ())
    chex.assert_trees_all_close(single, expected[0], rtol=1e-10)
    # Batched case.
    batched = jax.vmap(log_marginal, in_axes=(0, None, None, None))(
        jnp.asarray(x), jnp.asarray(W), jnp.asarray(mu), sigma_sq
    )
    chex.assert_shape(batched, (5,))
    chex.assert_trees_all_close(batched, expected, rtol=1e-10)


def test_log_marginal_float32_is_finite():
    W, mu, sigma_sq = _random_ppca(seed=5)
    x = _numpy_ppca_data(seed=6, num=1, W=W, mu=mu, sigma_sq=sigma_sq)[0]
    value = jax.jit(linear.linear_gaussian_log_marginal)(
        jnp.asarray(x, jnp.float32), jnp.asarray(W, jnp.float32), jnp.asarray(mu, jnp.float32), 0.2
    )
    chex.assert_tree_all_finite(value)
    expected = stats.multivariate_normal(mu, W @ W.T + sigma_sq * np.eye(DIM)).logpdf(x)
    chex.assert_trees_all_close(value, expected, rtol=1e-4)


def test_log_marginal_shape_mismatch():
    W, mu, _ = _random_ppca(seed=7)
    with pytest.raises(AssertionError, match=r"different shapes: \[\(7,\), \(6,\)\]"):
        linear.linear_gaussian_log_marginal(jnp.ones(DIM + 1), jnp.asarray(W), jnp.asarray(mu), 0.2)
    with pytest.raises(AssertionError, match=r"shape \(5,\) but expected \(6\)"):
        linear.linear_gaussian_log_marginal(jnp.ones(DIM), jnp.asarray(W), jnp.ones(DIM - 1), 0.2)
    with pytest.raises(AssertionError, match="dimension equal to '6' on axis '1' but got '5'"):
        linear.ppca_log_likelihood(jnp.ones((4, DIM - 1)), jnp.asarray(W), jnp.asarray(mu), 0.2)


def test_ppca_log_likelihood_is_mean_of_log_marginals(x64):
    W, mu, sigma_sq = _random_ppca(seed=8)
    x = jnp.asarray(_numpy_ppca_data(seed=9, num=50, W=W, mu=mu, sigma_sq=sigma_sq))
    # Parameters that are not the MLE, so S about mu is not the sample covariance.
    W_model, mu_model = jnp.asarray(W + 0.3), jnp.asarray(mu - 0.5)
    mean_ll = jax.jit(linear.ppca_log_likelihood)(x, W_model, mu_model, 0.4)
    chex.assert_shape(mean_ll, ())
    per_example = jax.vmap(linear.linear_gaussian_log_marginal, in_axes=(0, None, None, None))(
        x, W_model, mu_model, 0.4
    )
    chex.assert_trees_all_close(mean_ll, jnp.mean(per_example), rtol=1e-12)
    cov = np.asarray(W_model @ W_model.T) + 0.4 * np.eye(DIM)
    expected = stats.multivariate_normal(np.asarray(mu_model), cov).logpdf(np.asarray(x)).mean()
    chex.assert_trees_all_close(mean_ll, expected, rtol=1e-10)


@pytest.mark.parametrize("fixed_sigma_sq", [None, 0.8, 3.0])
def test_ppca_mle_maximises_log_likelihood(x64, fixed_sigma_sq):
    x = jnp.asarray(_spectrum_data(seed=10, num=300))
    params = linear.ppca_mle(x, LATENT, fixed_sigma_sq)
    W, mu, sigma_sq = params["W"], params["mu"], params["sigma_sq"]
    best = linear.ppca_log_likelihood(x, W, mu, sigma_sq)
    rng = np.random.default_rng(11)
    for _ in range(20):
        perturbed_W = W + 0.05 * rng.normal(size=W.shape)
        assert linear.ppca_log_likelihood(x, perturbed_W, mu, sigma_sq) < best
        perturbed_mu = mu + 0.05 * rng.normal(size=mu.shape)
        assert linear.ppca_log_likelihood(x, W, perturbed_mu, sigma_sq) < best
    if fixed_sigma_sq is None:
        for factor in (0.9, 0.99, 1.01, 1.1):
            assert linear.ppca_log_likelihood(x, W, mu, factor * sigma_sq) < best
    # Rotating the latent space (W R, R orthogonal) leaves the likelihood unchanged.
    rotation, _ = np.linalg.qr(rng.normal(size=(LATENT, LATENT)))
    chex.assert_trees_all_close(
        linear.ppca_log_likelihood(x, W @ rotation, mu, sigma_sq), best, rtol=1e-12
    )


def _random_encoder_decoder(seed: int, latent: int = LATENT):
    rng = np.random.default_rng(seed)
    return dict(
        enc_W=jnp.asarray(rng.normal(size=(latent, DIM)) * 0.5),
        enc_b=jnp.asarray(rng.normal(size=latent)),
        enc_log_var=jnp.asarray(rng.normal(size=latent)),
        dec_W=jnp.asarray(rng.normal(size=(DIM, latent))),
        dec_b=jnp.asarray(rng.normal(size=DIM)),
    )


def test_linear_vae_elbo_below_log_marginal(x64):
    x = jnp.asarray(_spectrum_data(seed=12, num=40))
    elbo_fn = jax.jit(
        jax.vmap(linear.linear_vae_elbo, in_axes=(0, None, None, None, None, None, None))
    )
    for seed in range(10):
        p = _random_encoder_decoder(seed)
        for sigma_sq in (0.1, 1.0, 5.0):
            out = elbo_fn(
                x, p["enc_W"], p["enc_b"], p["enc_log_var"], p["dec_W"], p["dec_b"], sigma_sq
            )
            chex.assert_shape([out["elbo"], out["recon"], out["kl"]], (40,))
            chex.assert_tree_all_finite(out)
            chex.assert_trees_all_close(out["elbo"], out["recon"] - out["kl"])
            assert np.all(np.asarray(out["kl"]) >= 0.0)
            log_px = jax.vmap(linear.linear_gaussian_log_marginal, in_axes=(0, None, None, None))(
                x, p["dec_W"], p["dec_b"], sigma_sq
            )
            assert np.all(np.asarray(out["elbo"]) < np.asarray(log_px))


def test_linear_vae_elbo_tight_at_ppca_optimum(x64):
    x = jnp.asarray(_spectrum_data(seed=13, num=60))
    eigvals, _, _ = linear.data_spectrum(x)
    latent_dim = 4
    sigma_sqs = [
        None,  # learned σ² (MLE)
        0.05,  # below every eigenvalue: no collapse
        float(0.5 * (eigvals[1] + eigvals[2])),  # between eigenvalues: latents 3, 4 collapse
        float(eigvals[0] + 1.0),  # above every eigenvalue: everything collapses
    ]
    elbo_fn = jax.vmap(linear.linear_vae_elbo, in_axes=(0, None, None, None, None, None, None))
    marginal_fn = jax.vmap(linear.linear_gaussian_log_marginal, in_axes=(0, None, None, None))
    for fixed_sigma_sq in sigma_sqs:
        params = linear.ppca_mle(x, latent_dim, fixed_sigma_sq)
        W, mu, sigma_sq = params["W"], params["mu"], params["sigma_sq"]
        enc_W, enc_b, enc_log_var = jax.jit(linear.optimal_linear_encoder)(W, mu, sigma_sq)
        chex.assert_shape(enc_W, (latent_dim, DIM))
        chex.assert_shape([enc_b, enc_log_var], (latent_dim,))
        out = elbo_fn(x, enc_W, enc_b, enc_log_var, W, mu, sigma_sq)
        chex.assert_trees_all_close(out["elbo"], marginal_fn(x, W, mu, sigma_sq), atol=1e-5)
        # Collapsed latents carry no information: q(z_j|x) = N(0, 1) = p(z_j).
        collapsed = np.asarray(eigvals[:latent_dim] <= sigma_sq)
        np.testing.assert_array_equal(np.asarray(enc_W)[collapsed], 0.0)
        chex.assert_trees_all_close(np.asarray(enc_log_var)[collapsed], 0.0, atol=1e-12)


def test_linear_vae_elbo_matches_monte_carlo(x64):
    rng = np.random.default_rng(14)
    p = _random_encoder_decoder(seed=15)
    x = _spectrum_data(seed=16, num=1)[0]
    sigma_sq = 0.7
    out = linear.linear_vae_elbo(jnp.asarray(x), *p.values(), sigma_sq)
    chex.assert_shape(out["elbo"], ())

    mean = np.asarray(p["enc_W"]) @ x + np.asarray(p["enc_b"])
    std = np.exp(0.5 * np.asarray(p["enc_log_var"]))
    num_samples = 400_000
    z = mean + std * rng.normal(size=(num_samples, LATENT))
    decoded = z @ np.asarray(p["dec_W"]).T + np.asarray(p["dec_b"])
    log_px_given_z = stats.multivariate_normal(np.zeros(DIM), sigma_sq * np.eye(DIM)).logpdf(
        x - decoded
    )
    log_pz = stats.norm.logpdf(z).sum(axis=1)
    log_qz = stats.norm.logpdf(z, loc=mean, scale=std).sum(axis=1)
    for name, samples in (
        ("recon", log_px_given_z),
        ("kl", log_qz - log_pz),
        ("elbo", log_px_given_z + log_pz - log_qz),
    ):
        standard_error = samples.std() / np.sqrt(num_samples)
        assert abs(float(out[name]) - samples.mean()) < 5 * standard_error + 1e-9, name


def test_linear_vae_elbo_shape_mismatch():
    p = _random_encoder_decoder(seed=17)
    with pytest.raises(AssertionError, match=r"shape \(3, 6\) but expected \(3, 7\)"):
        linear.linear_vae_elbo(jnp.ones(DIM + 1), *p.values(), 1.0)
    with pytest.raises(AssertionError, match=r"shape \(3, 6\) but expected \(6, 3\)"):
        linear.linear_vae_elbo(
            jnp.ones(DIM), p["enc_W"], p["enc_b"], p["enc_log_var"], p["dec_W"].T, p["dec_b"], 1.0
        )
    with pytest.raises(AssertionError, match=r"shape \(2,\) but expected \(3\)"):
        linear.linear_vae_elbo(
            jnp.ones(DIM),
            p["enc_W"],
            p["enc_b"][:-1],
            p["enc_log_var"],
            p["dec_W"],
            p["dec_b"],
            1.0,
        )


def test_predicted_collapsed_hand_made_spectrum():
    eigvals = jnp.array([5.0, 3.0, 2.0, 1.0, 0.5])
    assert int(linear.predicted_collapsed(eigvals, 2.0, 4)) == 2  # λ = 2 counts as collapsed
    assert int(linear.predicted_collapsed(eigvals, 2.0, 2)) == 0  # only the first k count
    assert int(linear.predicted_collapsed(eigvals, 0.1, 5)) == 0
    assert int(linear.predicted_collapsed(eigvals, 5.0, 5)) == 5
    sigma_sqs = jnp.array([0.1, 1.0, 2.0, 2.5, 3.0, 10.0])
    counts = jax.jit(linear.predicted_collapsed, static_argnums=2)(eigvals, sigma_sqs, 3)
    chex.assert_shape(counts, (6,))
    np.testing.assert_array_equal(counts, [0, 0, 1, 1, 2, 3])
    grid = jnp.stack([sigma_sqs, 2.0 * sigma_sqs])
    chex.assert_shape(linear.predicted_collapsed(eigvals, grid, 3), (2, 6))
    with pytest.raises(ValueError, match="latent_dim"):
        linear.predicted_collapsed(eigvals, 1.0, 6)


def test_predicted_collapsed_counts_zero_columns_of_ppca_mle(x64):
    x = jnp.asarray(_spectrum_data(seed=18))
    eigvals, _, _ = linear.data_spectrum(x)
    sigma_sqs = jnp.concatenate(
        [eigvals, 0.5 * (eigvals[1:] + eigvals[:-1]), jnp.array([1e-4, 20.0])]
    )
    weights = jax.vmap(lambda s: linear.ppca_mle(x, 5, s)["W"])(sigma_sqs)
    zero_columns = jnp.sum(jnp.all(weights == 0.0, axis=1), axis=-1)
    np.testing.assert_array_equal(zero_columns, linear.predicted_collapsed(eigvals, sigma_sqs, 5))


def test_ppca_sample_moments(x64):
    W, mu, sigma_sq = _random_ppca(seed=19)
    samples = jax.jit(linear.ppca_sample, static_argnums=4)(
        jax.random.key(0), jnp.asarray(W), jnp.asarray(mu), sigma_sq, 100_000
    )
    chex.assert_shape(samples, (100_000, DIM))
    chex.assert_tree_all_finite(samples)
    population_cov = W @ W.T + sigma_sq * np.eye(DIM)
    scale = np.abs(population_cov).max()
    chex.assert_trees_all_close(
        np.cov(np.asarray(samples), rowvar=False), population_cov, atol=0.03 * scale
    )
    chex.assert_trees_all_close(samples.mean(axis=0), mu, atol=0.03 * scale)


def test_linear_vae_elbo_terms_add_up(x64):
    p = _random_encoder_decoder(seed=20)
    x = jnp.asarray(_spectrum_data(seed=21, num=1)[0])
    out = jax.jit(linear.linear_vae_elbo)(x, *p.values(), 0.3)
    chex.assert_shape(out["kl_per_latent"], (LATENT,))
    chex.assert_trees_all_close(jnp.sum(out["kl_per_latent"]), out["kl"], rtol=1e-12)
    dim = DIM
    recon = -0.5 * dim * np.log(2 * np.pi * 0.3) - out["expected_sq_error"] / (2 * 0.3)
    chex.assert_trees_all_close(out["recon"], recon, rtol=1e-12)


def test_linear_vae_expected_sq_error_matches_monte_carlo(x64):
    rng = np.random.default_rng(22)
    p = {k: np.asarray(v) for k, v in _random_encoder_decoder(seed=23).items()}
    x = _spectrum_data(seed=24, num=1)[0]
    out = linear.linear_vae_elbo(jnp.asarray(x), *p.values(), 0.7)
    mean = p["enc_W"] @ x + p["enc_b"]
    z = mean + np.exp(0.5 * p["enc_log_var"]) * rng.normal(size=(200_000, LATENT))
    sq_err = np.sum((x - z @ p["dec_W"].T - p["dec_b"]) ** 2, axis=1)
    standard_error = sq_err.std() / np.sqrt(len(sq_err))
    assert abs(float(out["expected_sq_error"]) - sq_err.mean()) < 5 * standard_error


def test_optimal_kl_per_latent_hand_made_spectrum():
    eigvals = jnp.array([4.0, 2.0, 1.0, 0.5])
    kl = jax.jit(linear.optimal_kl_per_latent, static_argnums=2)(eigvals, 1.0, 3)
    np.testing.assert_allclose(kl, [0.5 * np.log(4.0), 0.5 * np.log(2.0), 0.0], atol=1e-7)
    grid = jnp.array([[0.5, 1.0], [2.0, 8.0]])
    kl = linear.optimal_kl_per_latent(eigvals, grid, 2)
    chex.assert_shape(kl, (2, 2, 2))
    expected = 0.5 * np.log(np.maximum(np.array([4.0, 2.0]) / np.asarray(grid)[..., None], 1.0))
    np.testing.assert_allclose(kl, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="latent_dim"):
        linear.optimal_kl_per_latent(eigvals, 1.0, 5)


def test_rate_distortion_hand_made_spectrum():
    eigvals = jnp.array([4.0, 2.0, 1.0, 0.5])
    rd = jax.jit(linear.rate_distortion, static_argnums=2)(eigvals, jnp.array([1.5, 10.0]), 2)
    chex.assert_shape([rd["rate"], rd["distortion"], rd["distortion_at_mean"]], (2,))
    # σ² = 1.5: both kept latents active (water level below 4 and 2); σ² = 10: none.
    np.testing.assert_allclose(rd["rate"], [0.5 * np.log(4 / 1.5) + 0.5 * np.log(2 / 1.5), 0.0])
    np.testing.assert_allclose(rd["distortion"], [1.5 + 1.5 + 1.5, 7.5], rtol=1e-6)
    np.testing.assert_allclose(
        rd["distortion_at_mean"], [1.5**2 / 4 + 1.5**2 / 2 + 1.5, 7.5], rtol=1e-6
    )


@pytest.mark.parametrize("between", [1, 3])
def test_rate_distortion_is_the_optimum_on_data(x64, between):
    """At the pPCA optimum (with its optimal encoder) on the data itself: the mean KL per latent,
    the ELBO's distortion E_q‖x − Wz − μ‖² and the posterior-mean reconstruction's error are the
    closed forms, and −R − D/(2σ²) − (D_x/2)·log 2πσ² is the pPCA log-likelihood."""
    x = jnp.asarray(_spectrum_data(seed=25))
    eigvals, _, _ = linear.data_spectrum(x)
    latent_dim = 4
    sigma_sq = float(np.sqrt(eigvals[between] * eigvals[between + 1]))
    ppca = linear.ppca_mle(x, latent_dim, sigma_sq)
    enc = linear.optimal_linear_encoder(ppca["W"], ppca["mu"], sigma_sq)
    out = jax.vmap(lambda x_: linear.linear_vae_elbo(x_, *enc, ppca["W"], ppca["mu"], sigma_sq))(x)
    rd = linear.rate_distortion(eigvals, sigma_sq, latent_dim)
    kl = np.sort(np.asarray(jnp.mean(out["kl_per_latent"], axis=0)))[::-1]
    np.testing.assert_allclose(kl, linear.optimal_kl_per_latent(eigvals, sigma_sq, 4), atol=1e-10)
    np.testing.assert_allclose(jnp.mean(out["kl"]), rd["rate"], rtol=1e-10)
    np.testing.assert_allclose(jnp.mean(out["expected_sq_error"]), rd["distortion"], rtol=1e-10)
    recon_at_mean = (x @ np.asarray(enc[0]).T + np.asarray(enc[1])) @ np.asarray(ppca["W"]).T
    sq_err_at_mean = np.sum((np.asarray(x) - recon_at_mean - np.asarray(ppca["mu"])) ** 2, axis=1)
    np.testing.assert_allclose(sq_err_at_mean.mean(), rd["distortion_at_mean"], rtol=1e-10)
    elbo = (
        -rd["rate"] - rd["distortion"] / (2 * sigma_sq) - 0.5 * DIM * np.log(2 * np.pi * sigma_sq)
    )
    log_p = linear.ppca_log_likelihood(x, ppca["W"], ppca["mu"], sigma_sq)
    np.testing.assert_allclose(elbo, log_p, rtol=1e-10)


def _ascent(x, params, num_steps, *, beta=1.0, learn_sigma=False):
    """`num_steps` coordinate-ascent sweeps from `params` (with "sigma_sq"), as one jitted scan;
    returns the final params and the mean objective before every sweep and after the last."""
    mean, cov = jnp.mean(x, axis=0), jnp.cov(x, rowvar=False, bias=True)

    def objective(p):
        mats = {k: v for k, v in p.items() if k != "sigma_sq"}
        out = jax.vmap(lambda x_: linear.linear_vae_elbo(x_, **mats, sigma_sq=p["sigma_sq"]))(x)
        return jnp.mean(out["recon"] - beta * out["kl"])

    def body(p, _):
        mats = {k: v for k, v in p.items() if k != "sigma_sq"}
        new = linear.coordinate_ascent_step(
            mean, cov, **mats, sigma_sq=p["sigma_sq"], beta=beta, learn_sigma=learn_sigma
        )
        return new, objective(p)

    @jax.jit
    def run(p):
        p, values = jax.lax.scan(body, p, length=num_steps)
        return p, jnp.append(values, objective(p))

    return run({k: jnp.asarray(v, jnp.float64) for k, v in params.items()})


@pytest.mark.parametrize(
    ("sigma_sq", "beta", "learn_sigma"), [(0.5, 1.0, False), (0.5, 2.0, False), (1.0, 1.0, True)]
)
def test_coordinate_ascent_never_decreases_the_objective(x64, sigma_sq, beta, learn_sigma):
    x = jnp.asarray(_spectrum_data(seed=26, num=200))
    params = {**_random_encoder_decoder(seed=27), "sigma_sq": sigma_sq}
    _, values = _ascent(x, params, 30, beta=beta, learn_sigma=learn_sigma)
    values = np.asarray(values)
    assert np.all(np.diff(values) >= -1e-9 * np.abs(values[1:])), values
    assert values[-1] > values[0]


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_coordinate_ascent_reaches_the_ppca_optimum(x64, learn_sigma):
    x = jnp.asarray(_spectrum_data(seed=28))
    eigvals, _, _ = linear.data_spectrum(x)
    sigma_sq = float(np.sqrt(eigvals[1] * eigvals[2]))  # latents 3 and 4 collapse
    params = {**_random_encoder_decoder(seed=29, latent=4), "sigma_sq": sigma_sq}
    params, values = _ascent(x, params, 1000, learn_sigma=learn_sigma)
    best = linear.ppca_mle(x, 4, None if learn_sigma else sigma_sq)
    if learn_sigma:
        np.testing.assert_allclose(params["sigma_sq"], best["sigma_sq"], rtol=1e-8)
    log_p = linear.ppca_log_likelihood(x, best["W"], best["mu"], best["sigma_sq"])
    np.testing.assert_allclose(values[-1], log_p, rtol=1e-8)


def test_coordinate_ascent_shape_mismatch():
    p = _random_encoder_decoder(seed=31)
    with pytest.raises(AssertionError, match=r"shape \(7, 7\) but expected \(6, 6\)"):
        linear.coordinate_ascent_step(jnp.zeros(DIM), jnp.eye(DIM + 1), *p.values(), 1.0)
    with pytest.raises(AssertionError, match=r"different shapes: \[\(7,\), \(6,\)\]"):
        linear.coordinate_ascent_step(jnp.zeros(DIM + 1), jnp.eye(DIM), *p.values(), 1.0)

"""Tests for vae_jax.elbo against closed forms of the linear-Gaussian model, numpy and scipy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from vae_jax import elbo as elbo_lib

SIGMA = 0.5  # decoder noise of the linear-Gaussian test model


def gaussian_log_lik(x, mean):
    """log N(x; mean, SIGMA² I) summed over the event; independent of vae_jax.likelihoods."""
    return jnp.sum(-0.5 * jnp.log(2 * jnp.pi * SIGMA**2) - 0.5 * jnp.square(x - mean) / SIGMA**2)


def linear_gaussian(seed=0, data_dim=6, latent_dim=3, orthogonal=False):
    """p(z) = N(0, I), p(x|z) = N(W z + b, σ² I); one x drawn from it, and its exact posterior."""
    rs = np.random.default_rng(seed)
    w = rs.normal(size=(data_dim, latent_dim))
    if orthogonal:  # orthogonal columns make p(z|x) diagonal, so q can match it exactly
        q, _ = np.linalg.qr(w)
        w = q * np.array([2.0, 1.0, 0.5])[:latent_dim]
    b = rs.normal(size=data_dim)
    x = w @ rs.normal(size=latent_dim) + b + SIGMA * rs.normal(size=data_dim)
    post_cov = np.linalg.inv(np.eye(latent_dim) + w.T @ w / SIGMA**2)
    post_mean = post_cov @ w.T @ (x - b) / SIGMA**2
    log_px = stats.multivariate_normal(b, w @ w.T + SIGMA**2 * np.eye(data_dim)).logpdf(x)
    w, b, x = (jnp.asarray(a, jnp.float32) for a in (w, b, x))
    decode = lambda z: w @ z + b
    return dict(w=w, b=b, x=x, decode=decode, post_mean=post_mean, post_cov=post_cov, log_px=log_px)


# ---------------------------------------------------------------- gaussian_kl / log_normal_diag


def test_gaussian_kl_is_zero_at_the_prior():
    kl = jax.jit(elbo_lib.gaussian_kl)(jnp.zeros(4), jnp.zeros(4))
    chex.assert_shape(kl, (4,))
    np.testing.assert_array_equal(kl, np.zeros(4))


@pytest.mark.parametrize("mean, log_var", [(0.7, -1.3), (-2.0, 0.5), (0.0, 1e-3)])
def test_gaussian_kl_matches_quadrature(mean, log_var):
    q = stats.norm(mean, np.exp(0.5 * log_var))
    p = stats.norm(0.0, 1.0)
    expected, _ = integrate.quad(lambda z: q.pdf(z) * (q.logpdf(z) - p.logpdf(z)), -30, 30)
    kl = jax.jit(elbo_lib.gaussian_kl)(jnp.float32(mean), jnp.float32(log_var))
    chex.assert_shape(kl, ())
    np.testing.assert_allclose(kl, expected, rtol=1e-5, atol=1e-7)


def test_gaussian_kl_matches_monte_carlo_batched():
    rs = np.random.default_rng(1)
    means = rs.normal(size=(5, 3))
    log_vars = rs.normal(size=(5, 3)) * 0.5
    z = means + np.exp(0.5 * log_vars) * rs.normal(size=(200_000, 5, 3))
    mc = np.mean(
        stats.norm(means, np.exp(0.5 * log_vars)).logpdf(z) - stats.norm(0, 1).logpdf(z), axis=0
    )
    kl = jax.jit(jax.vmap(elbo_lib.gaussian_kl))(
        jnp.asarray(means, jnp.float32), jnp.asarray(log_vars, jnp.float32)
    )
    chex.assert_shape(kl, (5, 3))
    np.testing.assert_allclose(kl, mc, atol=0.02)


def test_gaussian_kl_shape_mismatch():
    with pytest.raises(AssertionError, match=r"Arrays have different shapes: \[\(3,\), \(4,\)\]"):
        elbo_lib.gaussian_kl(jnp.zeros(3), jnp.zeros(4))


def test_log_normal_diag_matches_scipy():
    rs = np.random.default_rng(2)
    z, mean, log_var = (rs.normal(size=4) for _ in range(3))
    expected = stats.multivariate_normal(mean, np.diag(np.exp(log_var))).logpdf(z)
    got = jax.jit(elbo_lib.log_normal_diag)(
        *(jnp.asarray(a, jnp.float32) for a in (z, mean, log_var))
    )
    chex.assert_shape(got, ())
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    with pytest.raises(AssertionError, match=r"different shapes: \[\(3,\), \(4,\), \(4,\)\]"):
        elbo_lib.log_normal_diag(jnp.zeros(3), jnp.zeros(4), jnp.zeros(4))


# ---------------------------------------------------------------- elbo


def test_elbo_shapes_and_keys():
    m = linear_gaussian()
    out = jax.jit(
        lambda r, x, mu, lv: elbo_lib.elbo(
            r, x, mu, lv, m["decode"], gaussian_log_lik, num_samples=3
        )
    )(jax.random.key(0), m["x"], jnp.zeros(3), jnp.zeros(3))
    assert set(out) == {"elbo", "objective", "recon", "kl", "kl_per_latent"}
    chex.assert_shape([out["elbo"], out["objective"], out["recon"], out["kl"]], ())
    chex.assert_shape(out["kl_per_latent"], (3,))
    chex.assert_tree_all_finite(out)


def test_elbo_recon_matches_analytic_expectation():
    """E_q‖x − Wz − b‖² = ‖x − Wm − b‖² + tr(W diag(s²) Wᵀ) for z ~ N(m, diag s²)."""
    m = linear_gaussian()
    w, b, x = (np.asarray(m[k], np.float64) for k in ("w", "b", "x"))
    mean = np.array([0.3, -0.4, 1.1])
    log_var = np.array([-1.0, -0.3, -2.0])
    num_samples = 100_000
    run = jax.jit(
        lambda r, mu, lv: elbo_lib.elbo(
            r, m["x"], mu, lv, m["decode"], gaussian_log_lik, num_samples=num_samples
        )
    )
    out = run(jax.random.key(1), jnp.asarray(mean, jnp.float32), jnp.asarray(log_var, jnp.float32))

    residual = x - w @ mean - b
    b_mat = w * np.exp(0.5 * log_var)  # x − Wz − b = residual − B ε
    cov = b_mat @ b_mat.T
    expected_sq = residual @ residual + np.trace(cov)
    expected_recon = -0.5 * len(x) * np.log(2 * np.pi * SIGMA**2) - expected_sq / (2 * SIGMA**2)
    # Var‖r − Bε‖² = 4 rᵀBBᵀr + 2 tr((BBᵀ)²): the Monte-Carlo error of the K-sample mean.
    std_sq = np.sqrt(4 * residual @ cov @ residual + 2 * np.trace(cov @ cov))
    mc_error = std_sq / (2 * SIGMA**2) / np.sqrt(num_samples)
    np.testing.assert_allclose(out["recon"], expected_recon, atol=5 * mc_error)

    expected_kl = np.sum(0.5 * (np.exp(log_var) + mean**2 - 1 - log_var))
    np.testing.assert_allclose(out["kl"], expected_kl, rtol=1e-5)
    np.testing.assert_allclose(out["elbo"], out["recon"] - out["kl"], rtol=1e-6)


def test_beta_changes_objective_only():
    m = linear_gaussian()
    run = jax.jit(
        lambda beta: elbo_lib.elbo(
            jax.random.key(3),
            m["x"],
            jnp.array([0.1, 0.2, -0.3]),
            jnp.array([-0.5, 0.1, 0.0]),
            m["decode"],
            gaussian_log_lik,
            num_samples=4,
            beta=beta,
        )
    )
    base, weighted = run(1.0), run(4.0)
    for key in ("elbo", "recon", "kl", "kl_per_latent"):
        np.testing.assert_array_equal(base[key], weighted[key])
    np.testing.assert_allclose(base["objective"], base["elbo"], rtol=1e-6)
    np.testing.assert_allclose(weighted["objective"], base["recon"] - 4.0 * base["kl"], rtol=1e-6)


def _batch(m, batch_size=5, seed=4):
    rs = np.random.default_rng(seed)
    x = m["x"] + jnp.asarray(rs.normal(size=(batch_size, m["x"].shape[0])), jnp.float32)
    means = jnp.asarray(rs.normal(size=(batch_size, 3)), jnp.float32)
    log_vars = jnp.asarray(rs.normal(size=(batch_size, 3)) * 0.3, jnp.float32)
    rngs = jax.random.split(jax.random.key(seed), batch_size)
    return rngs, x, means, log_vars


def test_batch_elbo_equals_loop_over_examples():
    m = linear_gaussian()
    rngs, x, means, log_vars = _batch(m)
    kwargs = dict(num_samples=3, beta=0.5)
    batched = jax.jit(lambda *a: elbo_lib.batch_elbo(*a, m["decode"], gaussian_log_lik, **kwargs))(
        rngs, x, means, log_vars
    )
    chex.assert_shape(
        [batched["elbo"], batched["objective"], batched["recon"], batched["kl"]], (5,)
    )
    chex.assert_shape(batched["kl_per_latent"], (5, 3))
    one = jax.jit(lambda *a: elbo_lib.elbo(*a, m["decode"], gaussian_log_lik, **kwargs))
    looped = [one(rngs[i], x[i], means[i], log_vars[i]) for i in range(5)]
    chex.assert_trees_all_close(batched, jax.tree.map(lambda *v: jnp.stack(v), *looped), rtol=1e-5)


def test_jitted_batch_elbo_traces_once():
    m = linear_gaussian()
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(rngs, x, means, log_vars, beta):
        out = elbo_lib.batch_elbo(
            rngs, x, means, log_vars, m["decode"], gaussian_log_lik, num_samples=2, beta=beta
        )
        return jnp.mean(out["objective"])

    step(*_batch(m, seed=5), 1.0)
    step(*_batch(m, seed=6), 2.0)  # new values, same shapes: a retrace would raise


def test_elbo_rejects_a_batch_and_a_non_scalar_log_likelihood():
    m = linear_gaussian()
    rngs, x, means, log_vars = _batch(m)
    with pytest.raises(AssertionError, match=r"rank 2 \(shape \(5, 3\)\)"):  # a batch, not vmapped
        elbo_lib.elbo(rngs[0], x, means, log_vars, m["decode"], gaussian_log_lik)
    per_pixel = lambda x_, mean: -0.5 * jnp.square(x_ - mean)  # forgot to sum over the event
    with pytest.raises(AssertionError, match=r"shape \(1, 6\) but expected \(1\)"):
        elbo_lib.elbo(rngs[0], x[0], means[0], log_vars[0], m["decode"], per_pixel)


# ---------------------------------------------------------------- iwae_bound


def test_exact_posterior_makes_every_sample_exact():
    """With q = p(z|x): log p(x|z) + log p(z) − log q(z) = log p(x) for every z."""
    m = linear_gaussian(orthogonal=True)
    np.testing.assert_allclose(m["post_cov"], np.diag(np.diag(m["post_cov"])), atol=1e-12)
    mean = jnp.asarray(m["post_mean"], jnp.float32)
    log_var = jnp.asarray(np.log(np.diag(m["post_cov"])), jnp.float32)
    single_sample = jax.jit(
        jax.vmap(
            lambda r: elbo_lib.iwae_bound(
                r, m["x"], mean, log_var, m["decode"], gaussian_log_lik, num_samples=1
            )
        )
    )(jax.random.split(jax.random.key(7), 50))
    np.testing.assert_allclose(single_sample, np.full(50, m["log_px"]), rtol=1e-5)

    # The analytic-KL ELBO is then exact in expectation; its K-sample recon is still noisy.
    out = elbo_lib.elbo(
        jax.random.key(8), m["x"], mean, log_var, m["decode"], gaussian_log_lik, num_samples=20_000
    )
    # Per-sample log p(x|z) has std ≈ 1.05 nats here: 0.04 is about 5 standard errors.
    np.testing.assert_allclose(out["elbo"], m["log_px"], atol=0.04)


def test_iwae_increases_with_k_and_approaches_log_px():
    m = linear_gaussian()
    # A mean-field encoder slightly off the true (full-covariance) posterior.
    post_std = np.sqrt(np.diag(m["post_cov"]))
    mean = jnp.asarray(m["post_mean"] + 0.3 * post_std, jnp.float32)
    log_var = jnp.asarray(np.log(np.diag(m["post_cov"])), jnp.float32)
    averages, errors = [], []
    for num_samples, num_seeds in [(1, 4096), (10, 4096), (100, 2048), (1000, 512)]:
        bounds = jax.jit(
            jax.vmap(
                lambda r, k=num_samples: elbo_lib.iwae_bound(
                    r, m["x"], mean, log_var, m["decode"], gaussian_log_lik, num_samples=k
                )
            )
        )(jax.random.split(jax.random.key(num_samples), num_seeds))
        averages.append(float(np.mean(bounds)))
        errors.append(float(np.std(bounds) / np.sqrt(num_seeds)))
    averages, errors = np.array(averages), np.array(errors)
    assert np.all(averages <= m["log_px"] + 3 * errors), (averages, m["log_px"])
    assert np.all(np.diff(averages) > 0), averages
    assert m["log_px"] - averages[-1] < 0.03, (averages, m["log_px"])
    assert m["log_px"] - averages[0] > 1.0  # the test would be vacuous with a near-exact q


def test_iwae_does_not_depend_on_chunk_size():
    m = linear_gaussian()
    args = (
        jax.random.key(9),
        m["x"],
        jnp.zeros(3),
        jnp.full(3, -1.0),
        m["decode"],
        gaussian_log_lik,
    )
    bound = lambda chunk_size: jax.jit(
        lambda: elbo_lib.iwae_bound(*args, num_samples=1000, chunk_size=chunk_size)
    )()
    whole, chunked = bound(None), bound(64)  # 1000 = 15·64 + 40
    chex.assert_shape(chunked, ())
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)


def test_batch_iwae_equals_loop_over_examples():
    m = linear_gaussian()
    rngs, x, means, log_vars = _batch(m)
    batched = jax.jit(
        lambda *a: elbo_lib.batch_iwae_bound(
            *a, m["decode"], gaussian_log_lik, num_samples=50, chunk_size=16
        )
    )(rngs, x, means, log_vars)
    chex.assert_shape(batched, (5,))
    one = jax.jit(lambda *a: elbo_lib.iwae_bound(*a, m["decode"], gaussian_log_lik, num_samples=50))
    looped = jnp.stack([one(rngs[i], x[i], means[i], log_vars[i]) for i in range(5)])
    chex.assert_trees_all_close(batched, looped, rtol=1e-5)

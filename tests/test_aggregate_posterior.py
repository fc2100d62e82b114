"""vae_jax.aggregate_posterior: the Gaussian-fit upper bound on I(x; z) against closed forms
(a linear-Gaussian encoder, where it is exact) and quadrature (a two-point aggregate, where its
gap is KL(q(z) ‖ r))."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from vae_jax import aggregate_posterior as ap


def _kl_numpy(mu, var, m, cov):
    """KL(N(μ, diag var) ‖ N(m, C)) from the textbook formula with an explicit inverse."""
    inv = np.linalg.inv(cov)
    diff = m - mu
    return 0.5 * (
        np.trace(inv @ np.diag(var))
        + diff @ inv @ diff
        - len(mu)
        + np.linalg.slogdet(cov)[1]
        - np.sum(np.log(var))
    )


def test_kl_diagonal_to_full_gaussian_matches_the_textbook_formula():
    rs = np.random.default_rng(0)
    a = rs.normal(size=(5, 7))
    cov = a @ a.T / 7 + 0.1 * np.eye(5)
    mu, log_var, m = rs.normal(size=5), rs.normal(size=5) * 0.5, rs.normal(size=5)
    with jax.enable_x64(True):
        got = jax.jit(ap.kl_diagonal_to_full_gaussian)(mu, log_var, m, np.linalg.cholesky(cov))
    np.testing.assert_allclose(float(got), _kl_numpy(mu, np.exp(log_var), m, cov), rtol=1e-10)


def _linear_gaussian(rs, num_images, *, dim_x=8, k=6, posterior_std=0.01):
    """x ~ N(0, Σx), q(z|x) = N(Ax + b, s²I): q(z) = N(b, AΣxAᵀ + s²I) exactly, so
    I(x; z) = ½ log det(AΣxAᵀ + s²I) − ½ k log s²."""
    r = np.random.default_rng(7)  # the model, fixed; `rs` draws the images
    a = r.normal(size=(k, dim_x)) / math.sqrt(dim_x)
    b = r.normal(size=k)
    root = r.normal(size=(dim_x, dim_x)) / math.sqrt(dim_x)
    cov_x = root @ root.T + 0.2 * np.eye(dim_x)
    x = rs.multivariate_normal(np.zeros(dim_x), cov_x, size=num_images)
    means = x @ a.T + b
    log_vars = np.full_like(means, 2.0 * math.log(posterior_std))
    cov_z = a @ cov_x @ a.T + posterior_std**2 * np.eye(k)
    truth = 0.5 * np.linalg.slogdet(cov_z)[1] - 0.5 * k * math.log(posterior_std**2)
    return means, log_vars, truth


def _mixture_estimates(means, log_vars, rs):
    """The rate split's I(x; z) (Hoffman & Johnson 2016): one z_n ~ q(z|x_n) per image,
    mean_n [log q(z_n|x_n) − log (1/N) Σ_m q(z_n|x_m)], and its leave-one-out form (m ≠ n)."""
    n = len(means)
    sd = np.exp(0.5 * log_vars)
    z = means + sd * rs.standard_normal(means.shape)
    log_q = np.sum(stats.norm.logpdf(z[:, None, :], means[None], sd[None]), axis=-1)  # [n, m]
    own = np.diag(log_q)
    others = np.where(np.eye(n, dtype=bool), -np.inf, log_q)
    info = np.mean(own - (special.logsumexp(log_q, axis=1) - math.log(n)))
    info_loo = np.mean(own - (special.logsumexp(others, axis=1) - math.log(n - 1)))
    return info, info_loo


def test_upper_bound_is_exact_for_a_linear_gaussian_encoder_far_above_log_n():
    """I(x; z) = 23.5 nats; N = 500 scored images (log N = 6.2). The mixture estimate the
    project reported before (`_mixture_estimates`) is capped at log N (6.21 here) and its
    leave-one-out one reads ~1,800; the Gaussian-fit bound, fitted on 4,000 other images,
    recovers the closed form (23.56)."""
    rs = np.random.default_rng(1)
    means, log_vars, truth = _linear_gaussian(rs, 500)
    fit_means, fit_log_vars, _ = _linear_gaussian(rs, 4000)
    assert truth > 20.0
    with jax.enable_x64(True):
        got = ap.mutual_information_upper_bound(
            means, log_vars, fit_means=fit_means, fit_log_vars=fit_log_vars
        )
    capped, capped_loo = _mixture_estimates(means, log_vars, np.random.default_rng(0))
    assert capped <= math.log(500) + 1e-6
    # Its leave-one-out partner is uncapped but, with posteriors this narrow, no bound at all.
    assert capped_loo > 10 * truth
    assert abs(float(got["mutual_information_upper"]) - truth) < 0.3
    np.testing.assert_allclose(
        got["marginal_kl_lower"], got["rate"] - got["mutual_information_upper"], rtol=1e-12
    )
    rate = np.mean(np.sum(0.5 * (np.exp(log_vars) + means**2 - 1.0 - log_vars), axis=1))
    np.testing.assert_allclose(got["rate"], rate, rtol=1e-10)


def test_the_gap_is_the_aggregates_kl_to_its_gaussian_fit_by_quadrature():
    """1 latent, two equally likely images with posteriors N(±a, s²): q(z) is a two-bump
    mixture, I(x; z) = h(z) − ½ log(2πe s²) by quadrature, and the bound exceeds it by exactly
    KL(q(z) ‖ N(0, a² + s²)) (the fit's moments are exact for the two posteriors)."""
    a, s = 1.5, 0.6
    q = lambda z: 0.5 * (stats.norm.pdf(z, -a, s) + stats.norm.pdf(z, a, s))  # noqa: E731
    r = stats.norm(0.0, math.sqrt(a**2 + s**2))
    quad = dict(limit=200, epsabs=1e-13, epsrel=1e-12)
    entropy = integrate.quad(lambda z: -q(z) * np.log(q(z)), -12, 12, **quad)[0]
    truth = entropy - 0.5 * math.log(2 * math.pi * math.e * s**2)
    gap = integrate.quad(lambda z: q(z) * (np.log(q(z)) - r.logpdf(z)), -12, 12, **quad)[0]
    with jax.enable_x64(True):
        got = ap.mutual_information_upper_bound(
            np.array([[-a], [a]]), np.full((2, 1), 2 * math.log(s))
        )
    assert gap > 0.05  # a bound that is not tight here
    np.testing.assert_allclose(float(got["mutual_information_upper"]), truth + gap, rtol=1e-9)
    # The marginal KL's lower bound is KL(r ‖ N(0, 1)) in closed form.
    var = a**2 + s**2
    np.testing.assert_allclose(
        float(got["marginal_kl_lower"]), 0.5 * (var - 1 - math.log(var)), rtol=1e-9
    )


def test_batched_over_members_and_refusals():
    rs = np.random.default_rng(2)
    means = jnp.asarray(rs.normal(size=(3, 50, 4)), jnp.float32)
    log_vars = jnp.asarray(rs.normal(size=(3, 50, 4)) * 0.3 - 1.0, jnp.float32)
    batched = jax.jit(jax.vmap(ap.mutual_information_upper_bound))(means, log_vars)
    chex.assert_shape(batched["mutual_information_upper"], (3,))
    for i in range(3):
        one = ap.mutual_information_upper_bound(means[i], log_vars[i])
        chex.assert_trees_all_close(
            batched["mutual_information_upper"][i], one["mutual_information_upper"], rtol=1e-5
        )
    with pytest.raises(ValueError, match="given together or not at all"):
        ap.mutual_information_upper_bound(means[0], log_vars[0], fit_means=means[1])
    with pytest.raises(AssertionError, match="different shapes"):
        ap.mutual_information_upper_bound(means[0], log_vars[0][:, :3])


def _fit_numpy(means, log_vars):
    """The aggregate posterior's mean and covariance, from their definition."""
    centred = means - means.mean(0)
    return means.mean(0), centred.T @ centred / len(means) + np.diag(np.exp(log_vars).mean(0))


def test_cross_fitted_bound_scores_each_half_against_the_other_halfs_fit():
    """N = 41 (halves of 21 and 20): each image's KL to the fit of the half it is not in, averaged
    over all N; far above log N on the linear-Gaussian encoder, within its fit's noise of the
    truth, and the rate is the whole set's."""
    means, log_vars, truth = _linear_gaussian(np.random.default_rng(5), 41)
    even, odd = np.arange(0, 41, 2), np.arange(1, 41, 2)
    fits = {0: _fit_numpy(means[odd], log_vars[odd]), 1: _fit_numpy(means[even], log_vars[even])}
    kls = [_kl_numpy(means[n], np.exp(log_vars[n]), *fits[n % 2]) for n in range(len(means))]
    rate = np.mean(np.sum(0.5 * (np.exp(log_vars) + means**2 - 1.0 - log_vars), axis=1))
    with jax.enable_x64(True):
        got = jax.jit(ap.cross_fitted_upper_bound)(means, log_vars)
    np.testing.assert_allclose(float(got["mutual_information_upper"]), np.mean(kls), rtol=1e-9)
    np.testing.assert_allclose(float(got["rate"]), rate, rtol=1e-9)
    np.testing.assert_allclose(
        float(got["marginal_kl_lower"]), rate - np.mean(kls), rtol=1e-9, atol=1e-9
    )
    assert float(got["mutual_information_upper"]) > truth > 3 * math.log(41)
    with pytest.raises(ValueError, match="needs N ≥ 4 posteriors; got 3"):
        ap.cross_fitted_upper_bound(means[:3], log_vars[:3])

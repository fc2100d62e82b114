"""An upper bound on I(x; z) that is not capped at log N: the aggregate posterior's Gaussian fit.

The rate split's mixture estimate of I(x; z) (Hoffman & Johnson 2016: q(z) the mixture of the N
posteriors) cannot exceed log N (the InfoNCE bound, Poole et al. 2019), so for every member that
uses its latents it reads log N whatever the true value; the project no longer reports it. No
sample-based LOWER bound can do much better (McAllester & Stratos 2020, "Formal Limitations on
the Measurement of Mutual Information"); an UPPER bound can, since for any density r(z)

    I(x; z) = E_x KL(q(z|x) ‖ q(z)) = E_x KL(q(z|x) ‖ r(z)) − KL(q(z) ‖ r(z)) ≤ E_x KL(q(z|x) ‖ r).

With r = N(m, C), the Gaussian with the aggregate posterior q(z)'s mean and covariance,
    m = E_x μ(x),   C = Cov_x μ(x) + E_x diag σ²(x),
every term is closed form, nothing is sampled, and the gap is exactly KL(q(z) ‖ r): zero when
q(z) is Gaussian (a linear encoder of Gaussian data), larger the less Gaussian q(z) is. Because
log r − log p(z) is quadratic in z and r matches q(z)'s first two moments,
    E_x KL(q(z|x) ‖ r) = rate − KL(r ‖ p(z)),
so `marginal_kl_lower = rate − mutual_information_upper = KL(r ‖ N(0, I)) ≤ KL(q(z) ‖ N(0, I))`.

Its own bias: m and C are estimated from images. Fitted on the same N images that are scored, the
fit is optimistic (r moves towards those images' posteriors) and the bound can dip below the
true I by O(k²/N) nats for k latents; fitted on other images (`fit_means`, `fit_log_vars`: e.g.
the training split's posteriors, when the test split is scored) it is a valid upper bound in
expectation for any N. Together with the capped lower bound it brackets I(x; z); a reader should
take a wide bracket as "not measured", not as either end.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from vae_jax.elbo import gaussian_kl


def gaussian_fit_of_aggregate(means: jax.Array, log_vars: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(m [k], C [k, k]) of q(z) = (1/N) Σ_n N(μ_n, diag σ²_n): m = mean_n μ_n and
    C = (1/N) Σ_n (μ_n − m)(μ_n − m)ᵀ + diag(mean_n σ²_n) (the mixture's exact moments).

    Args:
      means, log_vars: [N, k] posterior parameters.
    """
    chex.assert_rank([means, log_vars], 2)
    chex.assert_equal_shape([means, log_vars])
    mean = jnp.mean(means, axis=0)
    centred = means - mean
    cov = centred.T @ centred / means.shape[0] + jnp.diag(jnp.mean(jnp.exp(log_vars), axis=0))
    return mean, cov


def kl_diagonal_to_full_gaussian(
    mean: jax.Array, log_var: jax.Array, target_mean: jax.Array, target_chol: jax.Array
) -> jax.Array:
    """KL(N(μ, diag σ²) ‖ N(m, C)) of ONE posterior, C = L Lᵀ given by its Cholesky factor L:

        ½ [ tr(C⁻¹ diag σ²) + (m − μ)ᵀ C⁻¹ (m − μ) − k + log det C − Σ_i log σ²_i ].

    mean, log_var: [k]; target_mean: [k]; target_chol: [k, k] lower triangular -> [] nats.
    """
    chex.assert_equal_shape([mean, log_var, target_mean])
    k = mean.shape[0]
    chex.assert_shape(target_chol, (k, k))
    solve = lambda b: jax.scipy.linalg.solve_triangular(target_chol, b, lower=True)  # noqa: E731
    whitened_diff = solve(target_mean - mean)
    whitened_std = solve(jnp.diag(jnp.exp(0.5 * log_var)))  # L⁻¹ diag σ: tr(C⁻¹ D) = ‖·‖²_F
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(target_chol)))
    return 0.5 * (
        jnp.sum(jnp.square(whitened_std))
        + jnp.sum(jnp.square(whitened_diff))
        - k
        + log_det
        - jnp.sum(log_var)
    )


def mutual_information_upper_bound(
    means: jax.Array,
    log_vars: jax.Array,
    *,
    fit_means: jax.Array | None = None,
    fit_log_vars: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """I(x; z) ≤ (1/N) Σ_n KL(q(z|x_n) ‖ r), r the aggregate posterior's Gaussian fit (module
    docstring), and the marginal KL's matching lower bound rate − that.

    Args:
      means, log_vars: [N, k] posterior parameters of the scored images.
      fit_means, fit_log_vars: [M, k] posteriors r is fitted on (both or neither); default the
        scored images themselves (then slightly optimistic, see the module docstring).
    Returns:
      {'rate', 'mutual_information_upper', 'marginal_kl_lower'}: [] each, nats.
    """
    chex.assert_rank([means, log_vars], 2)
    chex.assert_equal_shape([means, log_vars])
    if (fit_means is None) != (fit_log_vars is None):
        raise ValueError("fit_means and fit_log_vars are given together or not at all")
    if fit_means is None:
        fit_means, fit_log_vars = means, log_vars
    chex.assert_equal_shape_suffix([means, fit_means, fit_log_vars], 1)
    target_mean, target_cov = gaussian_fit_of_aggregate(fit_means, fit_log_vars)
    target_chol = jnp.linalg.cholesky(target_cov)
    upper = jnp.mean(
        jax.vmap(kl_diagonal_to_full_gaussian, in_axes=(0, 0, None, None))(
            means, log_vars, target_mean, target_chol
        )
    )
    rate = jnp.mean(jnp.sum(jax.vmap(gaussian_kl)(means, log_vars), axis=-1))
    return {"rate": rate, "mutual_information_upper": upper, "marginal_kl_lower": rate - upper}


def cross_fitted_upper_bound(means: jax.Array, log_vars: jax.Array) -> dict[str, jax.Array]:
    """`mutual_information_upper_bound` of N posteriors [N, k] with r never fitted on the images
    it scores: the even-indexed images are scored against the fit of the odd-indexed ones and
    vice versa, each half weighted by its count, so the bound holds in expectation at any N
    (module docstring) at the price of fitting r on N/2 images.

    Returns: {'rate', 'mutual_information_upper', 'marginal_kl_lower'}: [] each, nats.
    """
    chex.assert_rank([means, log_vars], 2)
    n = means.shape[0]
    if n < 4:
        raise ValueError(f"the cross-fitted bound needs N ≥ 4 posteriors; got {n}")
    even, odd = slice(0, None, 2), slice(1, None, 2)
    halves = [
        mutual_information_upper_bound(
            means[scored], log_vars[scored], fit_means=means[fit], fit_log_vars=log_vars[fit]
        )
        for scored, fit in ((even, odd), (odd, even))
    ]
    weights = ((n + 1) // 2 / n, n // 2 / n)
    return {key: weights[0] * halves[0][key] + weights[1] * halves[1][key] for key in halves[0]}

"""Closed forms for probabilistic PCA and the linear VAE.

Model (Tipping & Bishop 1999): x = W z + μ + ε with z ~ N(0, I_k), ε ~ N(0, σ² I_D), so the
marginal is p(x) = N(x; μ, C) with C = W Wᵀ + σ² I_D. Lucas et al. (2019, "Don't Blame the
ELBO!") show that a linear VAE with a diagonal-Gaussian encoder and decoder
p(x|z) = N(W z + μ, σ² I) has the pPCA maximum-likelihood solution as the optimum of its ELBO,
where the bound is tight, and that latent i collapses (its column of W is zero and
q(z_i|x) = p(z_i)) exactly when the data covariance's eigenvalue λ_i ≤ σ².

Conventions: a data set is a matrix `x: [N, D]` of flattened examples; `W: [D, k]`, `mu: [D]`,
`sigma_sq: []` (the observation-noise variance σ², not σ). Eigenvalues are sorted in descending
order. The sample covariance uses the 1/N normalisation (the maximum-likelihood convention), so the
pPCA MLE is exact for the data it is given. Everything here is a pure function of arrays;
`latent_dim` and `num` are Python ints (static under `jax.jit`).
"""

import math

import chex
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

_LOG_2PI = math.log(2.0 * math.pi)


def data_spectrum(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Eigen-decomposition of the sample covariance S = (1/N) Σ_n (x_n − x̄)(x_n − x̄)ᵀ.

    The 1/N normalisation is the maximum-likelihood convention (not the unbiased 1/(N − 1)).

    Args:
      x: data, [N, D].

    Returns:
      eigvals: [D], descending, λ_1 ≥ … ≥ λ_D.
      eigvecs: [D, D], column i is the unit eigenvector of λ_i (sign arbitrary).
      mean: [D], the sample mean x̄.
    """
    chex.assert_rank(x, 2)
    mean = jnp.mean(x, axis=0)
    centred = x - mean
    covariance = centred.T @ centred / x.shape[0]
    eigvals, eigvecs = jnp.linalg.eigh(covariance)  # ascending
    return eigvals[::-1], eigvecs[:, ::-1], mean


def ppca_sigma_sq_mle(eigvals: jax.Array, latent_dim: int) -> jax.Array:
    """Maximum-likelihood noise variance: the mean discarded eigenvalue, σ² = Σ_{i>k} λ_i / (D − k).

    Args:
      eigvals: [D], descending.
      latent_dim: k, with 1 ≤ k < D (no eigenvalue is discarded when k = D).

    Returns:
      σ², [].
    """
    chex.assert_rank(eigvals, 1)
    dim = eigvals.shape[0]
    if not 1 <= latent_dim < dim:
        raise ValueError(
            f"latent_dim must be in [1, D) = [1, {dim}) for the MLE σ², got {latent_dim}"
        )
    return jnp.mean(eigvals[latent_dim:])


def ppca_mle(
    x: jax.Array, latent_dim: int, sigma_sq: float | jax.Array | None = None
) -> dict[str, jax.Array]:
    """Maximum-likelihood pPCA: W = U_k (Λ_k − σ² I)_+^{1/2} R with R = I, μ = x̄.

    U_k, Λ_k are the top-k eigenvectors/eigenvalues of the sample covariance. With σ² fixed this W
    maximises the likelihood over W; a column with λ_i ≤ σ² is exactly zero (the latent
    collapses). With `sigma_sq=None`, σ² is also learned: its MLE is the mean discarded eigenvalue.

    Args:
      x: data, [N, D].
      latent_dim: k, 1 ≤ k ≤ D (k < D when σ² is learned).
      sigma_sq: fixed noise variance σ² > 0, [] — or None to use the MLE.

    Returns:
      {"W": [D, k], "mu": [D], "sigma_sq": []}.
    """
    eigvals, eigvecs, mean = data_spectrum(x)
    dim = eigvals.shape[0]
    if not 1 <= latent_dim <= dim:
        raise ValueError(f"latent_dim must be in [1, D] = [1, {dim}], got {latent_dim}")
    if sigma_sq is None:
        sigma_sq = ppca_sigma_sq_mle(eigvals, latent_dim)
    sigma_sq = jnp.asarray(sigma_sq, dtype=eigvals.dtype)
    chex.assert_shape(sigma_sq, ())
    # The clamp yields exactly 0.0 for λ_i ≤ σ², so collapsed columns are exactly zero.
    scale = jnp.sqrt(jnp.maximum(eigvals[:latent_dim] - sigma_sq, 0.0))
    weights = eigvecs[:, :latent_dim] * scale
    return {"W": weights, "mu": mean, "sigma_sq": sigma_sq}


def _check_ppca_params(W: jax.Array, mu: jax.Array, sigma_sq: jax.Array) -> None:
    chex.assert_rank(W, 2)
    chex.assert_shape(mu, (W.shape[0],))
    chex.assert_shape(sigma_sq, ())


def _posterior_precision_cholesky(W: jax.Array, sigma_sq: jax.Array) -> jax.Array:
    """Lower Cholesky factor L of M = Wᵀ W + σ² I_k, [k, k]."""
    gram = W.T @ W + sigma_sq * jnp.eye(W.shape[1], dtype=W.dtype)
    return jnp.linalg.cholesky(gram)


def _log_det_covariance(chol_m: jax.Array, dim: int, sigma_sq: jax.Array) -> jax.Array:
    """log|W Wᵀ + σ² I_D| = (D − k) log σ² + log|M|  (matrix determinant lemma)."""
    latent_dim = chol_m.shape[0]
    return (dim - latent_dim) * jnp.log(sigma_sq) + 2.0 * jnp.sum(jnp.log(jnp.diag(chol_m)))


def linear_gaussian_log_marginal(
    x: jax.Array, W: jax.Array, mu: jax.Array, sigma_sq: float | jax.Array
) -> jax.Array:
    """Exact log N(x; μ, C), C = W Wᵀ + σ² I_D, for ONE example (batch with `jax.vmap`).

    Uses Woodbury with M = Wᵀ W + σ² I_k = L Lᵀ, so the cost is O(D k + k³), not O(D³):
      log|C|    = (D − k) log σ² + log|M|,
      rᵀ C⁻¹ r  = (‖r‖² − ‖L⁻¹ Wᵀ r‖²) / σ²,   r = x − μ,
      log p(x)  = −½ [D log 2π + log|C| + rᵀ C⁻¹ r].

    Args:
      x: one example, [D].
      W: [D, k]; mu: [D]; sigma_sq: σ² > 0, [].

    Returns:
      log p(x), [].
    """
    sigma_sq = jnp.asarray(sigma_sq, dtype=W.dtype)
    _check_ppca_params(W, mu, sigma_sq)
    chex.assert_equal_shape([x, mu])
    dim = x.shape[0]
    chol_m = _posterior_precision_cholesky(W, sigma_sq)
    residual = x - mu
    whitened = jsl.solve_triangular(chol_m, W.T @ residual, lower=True)
    quad = (residual @ residual - whitened @ whitened) / sigma_sq
    return -0.5 * (dim * _LOG_2PI + _log_det_covariance(chol_m, dim, sigma_sq) + quad)


def ppca_log_likelihood(
    x: jax.Array, W: jax.Array, mu: jax.Array, sigma_sq: float | jax.Array
) -> jax.Array:
    """Mean per-example log-likelihood (1/N) Σ_n log N(x_n; μ, C) over a data set.

    Computed from the covariance about μ, S = (1/N) Σ_n (x_n − μ)(x_n − μ)ᵀ, without forming it:
      (1/N) Σ_n log p(x_n) = −½ [D log 2π + log|C| + tr(C⁻¹ S)],
      tr(C⁻¹ S) = (tr S − tr(L⁻¹ Wᵀ S W L⁻ᵀ)) / σ²,   Wᵀ S W = (R W)ᵀ (R W) / N,   R = x − μ.
    Equals the mean of `jax.vmap(linear_gaussian_log_marginal)`.

    Args:
      x: data, [N, D].
      W: [D, k]; mu: [D]; sigma_sq: σ² > 0, [].

    Returns:
      mean log p(x_n) in nats per example, [].
    """
    sigma_sq = jnp.asarray(sigma_sq, dtype=W.dtype)
    _check_ppca_params(W, mu, sigma_sq)
    chex.assert_rank(x, 2)
    num, dim = x.shape
    chex.assert_axis_dimension(x, 1, mu.shape[0])
    chol_m = _posterior_precision_cholesky(W, sigma_sq)
    residuals = x - mu
    trace_s = jnp.sum(residuals**2) / num
    whitened = jsl.solve_triangular(chol_m, (residuals @ W).T, lower=True)  # [k, N]
    trace_c_inv_s = (trace_s - jnp.sum(whitened**2) / num) / sigma_sq
    return -0.5 * (dim * _LOG_2PI + _log_det_covariance(chol_m, dim, sigma_sq) + trace_c_inv_s)


def linear_vae_elbo(
    x: jax.Array,
    enc_W: jax.Array,
    enc_b: jax.Array,
    enc_log_var: jax.Array,
    dec_W: jax.Array,
    dec_b: jax.Array,
    sigma_sq: float | jax.Array,
) -> dict[str, jax.Array]:
    """Exact (sampling-free) ELBO of a linear VAE for ONE example.

    Encoder q(z|x) = N(m, diag s²) with m = enc_W x + enc_b and s² = exp(enc_log_var) (the variance
    does not depend on x); decoder p(x|z) = N(dec_W z + dec_b, σ² I_D); prior N(0, I_k).
      recon = E_q log p(x|z) = −(D/2) log(2πσ²)
              − (‖x − dec_W m − dec_b‖² + Σ_j s_j² ‖dec_W[:, j]‖²) / (2σ²),
      kl    = KL(q ‖ p(z)) = ½ Σ_j (m_j² + s_j² − 1 − log s_j²),
      elbo  = recon − kl ≤ log p(x), with equality iff q(z|x) = p(z|x).

    Args:
      x: one example, [D].
      enc_W: [k, D]; enc_b: [k]; enc_log_var: [k].
      dec_W: [D, k]; dec_b: [D]; sigma_sq: σ² > 0, [].

    Returns:
      {"elbo": [], "recon": [], "kl": []} in nats; "kl_per_latent": [k] (sums to kl);
      "expected_sq_error": [], the distortion E_q ‖x − dec_W z − dec_b‖² the recon term weighs.
    """
    chex.assert_rank([x, enc_W, dec_W], [1, 2, 2])
    dim, latent_dim = x.shape[0], enc_W.shape[0]
    chex.assert_shape(enc_W, (latent_dim, dim))
    chex.assert_shape([enc_b, enc_log_var], (latent_dim,))
    chex.assert_shape(dec_W, (dim, latent_dim))
    chex.assert_shape(dec_b, (dim,))
    sigma_sq = jnp.asarray(sigma_sq, dtype=dec_W.dtype)
    chex.assert_shape(sigma_sq, ())

    mean = enc_W @ x + enc_b
    var = jnp.exp(enc_log_var)
    residual = x - dec_W @ mean - dec_b
    # E_q ‖x − dec_W z − dec_b‖² = ‖x − dec_W m − dec_b‖² + tr(dec_W diag(s²) dec_Wᵀ).
    expected_sq_error = residual @ residual + jnp.sum(var * jnp.sum(dec_W**2, axis=0))
    recon = -0.5 * dim * (_LOG_2PI + jnp.log(sigma_sq)) - expected_sq_error / (2.0 * sigma_sq)
    # expm1 keeps s² − 1 − log s² accurate near s² = 1, where a collapsed latent sits.
    kl_per_latent = 0.5 * (mean**2 + jnp.expm1(enc_log_var) - enc_log_var)
    kl = jnp.sum(kl_per_latent)
    return {
        "elbo": recon - kl,
        "recon": recon,
        "kl": kl,
        "kl_per_latent": kl_per_latent,
        "expected_sq_error": expected_sq_error,
    }


def optimal_linear_encoder(
    W: jax.Array, mu: jax.Array, sigma_sq: float | jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Encoder matching the pPCA posterior p(z|x) = N(M⁻¹ Wᵀ (x − μ), σ² M⁻¹), M = Wᵀ W + σ² I_k.

    The mean is exact; the diagonal variance is log diag(σ² M⁻¹), which equals the true posterior
    covariance only when M is diagonal — as at the pPCA MLE, whose columns of W are orthogonal.
    There the linear-VAE ELBO equals log p(x). A collapsed (zero) column gives s_j² = 1, m_j = 0.

    Args:
      W: [D, k]; mu: [D]; sigma_sq: σ² > 0, [].

    Returns:
      enc_W = M⁻¹ Wᵀ, [k, D]; enc_b = −M⁻¹ Wᵀ μ, [k]; enc_log_var = log diag(σ² M⁻¹), [k].
    """
    sigma_sq = jnp.asarray(sigma_sq, dtype=W.dtype)
    _check_ppca_params(W, mu, sigma_sq)
    chol_m = _posterior_precision_cholesky(W, sigma_sq)
    enc_W = jsl.cho_solve((chol_m, True), W.T)
    enc_b = -enc_W @ mu
    m_inv = jsl.cho_solve((chol_m, True), jnp.eye(W.shape[1], dtype=W.dtype))
    enc_log_var = jnp.log(sigma_sq * jnp.diag(m_inv))
    return enc_W, enc_b, enc_log_var


LENGTH_STEP_ABOVE_NOISE = 10.0  # `coordinate_ascent_step` sets lengths where ℓ_j > this·βσ²


def coordinate_ascent_step(
    mean: jax.Array,
    cov: jax.Array,
    enc_W: jax.Array,
    enc_b: jax.Array,
    enc_log_var: jax.Array,
    dec_W: jax.Array,
    dec_b: jax.Array,
    sigma_sq: float | jax.Array,
    *,
    beta: float | jax.Array = 1.0,
    learn_sigma: bool = False,
) -> dict[str, jax.Array]:
    """One sweep of exact block maximisations of the mean over a data set of recon − β·kl
    (`linear_vae_elbo`), which depends on the data only through its mean x̄ and covariance S.
    Each block is maximised in closed form, so the objective never decreases (variational EM):
      decoder:  W = S Aᵀ (A S Aᵀ + diag s²)⁻¹ (m = A x + a), and b = x̄, a = −A x̄: the best
                means jointly (EM's own b = x̄ − W m̄ reaches x̄ only by 1 − O(σ²/λ) a step);
      rotation: W ← W V, V the eigenvectors of WᵀW: log p(x) is invariant under rotations of the
                latents and the diagonal posterior is exact once WᵀW is diagonal, so this is the
                best rotation;
      lengths:  ‖w_j‖² ← ℓ_j − βσ² where ℓ_j = u_jᵀ S u_j > 10·βσ² (u_j = w_j/‖w_j‖), the best
                length of an orthogonal column (EM's own reaches it by 1 − O(σ²/ℓ) a step);
      encoder:  A = M⁻¹ Wᵀ,  a = −A b,  s_j² = βσ² / (‖w_j‖² + βσ²),  M = WᵀW + βσ² I;
      σ²:       (if learned) E_q ‖x − W z − b‖² / D over the data.
    Fixed points are stationary points; the stable one is the optimum, pPCA at this σ² (Lucas
    et al. 2019; Tipping & Bishop 1999).

    Args: mean [D], cov [D, D] (1/N); the rest as in `linear_vae_elbo`; beta: β > 0.
    Returns: the updated {"enc_W", "enc_b", "enc_log_var", "dec_W", "dec_b", "sigma_sq"}.
    """
    chex.assert_rank([mean, cov, enc_W, dec_W], [1, 2, 2, 2])
    dim, latent_dim = dec_W.shape
    chex.assert_shape(cov, (dim, dim))
    chex.assert_shape(enc_W, (latent_dim, dim))
    chex.assert_shape([enc_b, enc_log_var], (latent_dim,))
    chex.assert_equal_shape([mean, dec_b])
    eye = jnp.eye(latent_dim, dtype=dec_W.dtype)

    cov_xm = cov @ enc_W.T  # Cov(x, m), [D, k]
    second_moment = enc_W @ cov_xm + jnp.diag(jnp.exp(enc_log_var))  # Cov(m) + diag s², [k, k]
    dec_W = jsl.cho_solve((jnp.linalg.cholesky(second_moment), True), cov_xm.T).T
    dec_b = mean
    _, rotation = jnp.linalg.eigh(dec_W.T @ dec_W)
    dec_W = dec_W @ rotation[:, ::-1]  # latent 1 on the largest column

    noise = beta * sigma_sq
    # Orthogonal columns: log p separates over them, and column j's best length is
    # ‖w_j‖² = ℓ_j − βσ², ℓ_j the data's variance along it. Set only where ℓ_j ≫ βσ²: there EM's
    # own length update is slow; near βσ² it is fast, and a column whose direction is still
    # settling, set to its length, can hold the ascent near a saddle (seen on digits, k = 32).
    column_sq = jnp.sum(dec_W**2, axis=0)
    spread = jnp.sum(dec_W * (cov @ dec_W), axis=0) / column_sq
    grow = (column_sq > 0) & (spread > LENGTH_STEP_ABOVE_NOISE * noise)
    dec_W = dec_W * jnp.where(grow, jnp.sqrt((spread - noise) / column_sq), 1.0)
    column_sq = jnp.sum(dec_W**2, axis=0)
    precision = jnp.linalg.cholesky(dec_W.T @ dec_W + noise * eye)
    enc_W = jsl.cho_solve((precision, True), dec_W.T)
    enc_b = -enc_W @ dec_b
    enc_var = noise / (column_sq + noise)
    if learn_sigma:
        # E_q‖x − W z − b‖² = tr((I − WA) S (I − WA)ᵀ) + Σ_j s_j² ‖w_j‖² (b = x̄, m̄ = 0).
        a_cov = enc_W @ cov
        expected_sq_error = (
            jnp.trace(cov)
            - 2.0 * jnp.sum(a_cov * dec_W.T)
            + jnp.sum((dec_W.T @ dec_W) * (a_cov @ enc_W.T))
            + enc_var @ column_sq
        )
        sigma_sq = expected_sq_error / dim
    return {
        "enc_W": enc_W,
        "enc_b": enc_b,
        "enc_log_var": jnp.log(enc_var),
        "dec_W": dec_W,
        "dec_b": dec_b,
        "sigma_sq": jnp.asarray(sigma_sq, dec_W.dtype),
    }


def _check_latent_dim(eigvals: jax.Array, latent_dim: int) -> None:
    chex.assert_rank(eigvals, 1)
    if not 1 <= latent_dim <= eigvals.shape[0]:
        raise ValueError(
            f"latent_dim must be in [1, D] = [1, {eigvals.shape[0]}], got {latent_dim}"
        )


def predicted_collapsed(
    eigvals: jax.Array, sigma_sq: float | jax.Array, latent_dim: int
) -> jax.Array:
    """Number of collapsed latents predicted by the linear-VAE theory: #{i ≤ k : λ_i ≤ σ²}.

    Equality λ_i = σ² counts as collapsed (the column of W is exactly zero).

    Args:
      eigvals: [D], descending.
      sigma_sq: σ², any shape [...] (e.g. a sweep of σ² values).
      latent_dim: k ≤ D.

    Returns:
      integer counts, [...] (the shape of `sigma_sq`).
    """
    eigvals = jnp.asarray(eigvals)
    _check_latent_dim(eigvals, latent_dim)
    sigma_sq = jnp.asarray(sigma_sq)
    collapsed = eigvals[:latent_dim] <= sigma_sq[..., None]
    return jnp.sum(collapsed, axis=-1)


def optimal_kl_per_latent(
    eigvals: jax.Array, sigma_sq: float | jax.Array, latent_dim: int
) -> jax.Array:
    """KL of each latent at the linear VAE's optimum: ½·log⁺(λ_i / σ²) for i = 1 … k.

    At the optimum (pPCA at this σ²) latent i has posterior mean √(λ_i − σ²)/λ_i · u_iᵀ(x − μ)
    and variance σ²/λ_i, so its KL averaged over data of covariance eigenvalues λ is
    ½[(λ_i − σ²)/λ_i + σ²/λ_i − 1 − log(σ²/λ_i)] = ½·log(λ_i/σ²); a collapsed latent has 0.

    Args: eigvals [D], descending (of the data averaged over); sigma_sq: σ², [...]; k ≤ D.
    Returns: [..., k] in nats, descending.
    """
    eigvals = jnp.asarray(eigvals)
    _check_latent_dim(eigvals, latent_dim)
    ratio = eigvals[:latent_dim] / jnp.asarray(sigma_sq)[..., None]
    return 0.5 * jnp.log(jnp.maximum(ratio, 1.0))


def rate_distortion(
    eigvals: jax.Array, sigma_sq: float | jax.Array, latent_dim: int
) -> dict[str, jax.Array]:
    """Rate and distortion of the optimal linear VAE at σ²: reverse water-filling on the spectrum.

      rate       R(σ²) = Σ_{i≤k} ½·log⁺(λ_i/σ²)                  (the KL term, nats/example)
      distortion D(σ²) = Σ_{i≤k} min(λ_i, σ²) + Σ_{i>k} λ_i      (E_q ‖x − W z − μ‖²/example)

    D is the squared error the ELBO's reconstruction term weighs, the posterior noise included:
    along an active direction (λ_i > σ²) the posterior-mean reconstruction leaves σ⁴/λ_i and the
    posterior noise adds s_i²‖w_i‖² = σ²(λ_i − σ²)/λ_i, together exactly σ²; a collapsed or
    discarded direction keeps its whole variance λ_i. (R, D) is the Gaussian source's
    rate–distortion function at water level σ² (Cover & Thomas, Thm 10.3.3) restricted to k
    components, and the optimal ELBO is −R − D/(2σ²) − (D_x/2)·log(2πσ²).
    `distortion_at_mean` = Σ_{i≤k, λ_i>σ²} σ⁴/λ_i + the rest's λ_i is the error of the
    reconstruction decoded from the posterior mean, ‖x − W E_q[z] − μ‖², what an MSE metric reads.

    Args: eigvals [D_x], descending; sigma_sq: σ², any shape [...]; latent_dim: k ≤ D_x.
    Returns: {"rate", "distortion", "distortion_at_mean"}, each [...] (the shape of σ²).
    """
    eigvals = jnp.asarray(eigvals)
    _check_latent_dim(eigvals, latent_dim)
    sigma_sq = jnp.asarray(sigma_sq)[..., None]
    top = eigvals[:latent_dim]
    discarded = jnp.sum(eigvals[latent_dim:])
    active = top > sigma_sq
    return {
        "rate": jnp.sum(optimal_kl_per_latent(eigvals, sigma_sq[..., 0], latent_dim), axis=-1),
        "distortion": jnp.sum(jnp.minimum(top, sigma_sq), axis=-1) + discarded,
        "distortion_at_mean": jnp.sum(jnp.where(active, sigma_sq**2 / top, top), axis=-1)
        + discarded,
    }


def ppca_sample(
    rng: jax.Array, W: jax.Array, mu: jax.Array, sigma_sq: float | jax.Array, num: int
) -> jax.Array:
    """Draws x_n = W z_n + μ + σ ε_n with z_n ~ N(0, I_k), ε_n ~ N(0, I_D).

    Args: rng: PRNG key; W: [D, k]; mu: [D]; sigma_sq: σ² ≥ 0, []; num: N (static).
    Returns: samples, [N, D].
    """
    sigma_sq = jnp.asarray(sigma_sq, dtype=W.dtype)
    _check_ppca_params(W, mu, sigma_sq)
    dim, latent_dim = W.shape
    rng_z, rng_eps = jax.random.split(rng)
    z = jax.random.normal(rng_z, (num, latent_dim), dtype=W.dtype)
    eps = jax.random.normal(rng_eps, (num, dim), dtype=W.dtype)
    return z @ W.T + mu + jnp.sqrt(sigma_sq) * eps


def sigma_sq_grid_across_spectrum(eigvals: jax.Array, latent_dim: int) -> jax.Array:
    """σ² values that straddle the spectrum λ_1 ≥ … ≥ λ_k: one above λ_1, one in each gap.

    [2·λ_1] + [√(λ_i·λ_{i+1}) for i = 1 … k−1] + [λ_k / 2]: a geometric mid-point between each
    pair of neighbouring eigenvalues (so no σ² sits on an eigenvalue), one value where every
    latent collapses and one where none does. Returns [k + 1], descending.

    Args:
      eigvals: [D] eigenvalues of the data covariance, descending.
      latent_dim: k ≤ D.
    """
    top = eigvals[:latent_dim]
    gaps = jnp.sqrt(top[:-1] * top[1:])
    return jnp.concatenate([2.0 * top[:1], gaps, top[-1:] / 2.0])

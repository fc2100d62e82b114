"""Evaluation metrics: pure functions of arrays, no config, no I/O.

Latent-usage metrics take statistics of a whole evaluation set, `[N, k]` (N examples, k latents):
active units (Burda et al. 2016), mean KL per latent, ε-δ collapse (Lucas et al. 2019).
Likelihood and reconstruction metrics take per-example values.
"""

import math

import chex
import jax
import jax.numpy as jnp

from vae_jax.elbo import gaussian_kl


def active_units(posterior_means: jax.Array, threshold: float = 0.01) -> jax.Array:
    """Number of active latents (Burda et al. 2016, "Importance Weighted Autoencoders").

    A_u = Cov_x(E_{q(u|x)}[u]) > threshold: latent u is active when its posterior mean varies
    across the data. The variance is the population variance (ddof = 0) over the N examples.

    Args:
      posterior_means: [N, k] E_q[z] of each example.
      threshold: variance above which a latent counts as active (0.01 in the paper).
    Returns:
      []: an integer array, 0 ≤ active ≤ k.
    """
    chex.assert_rank(posterior_means, 2)
    return jnp.sum(jnp.var(posterior_means, axis=0) > threshold)


def kl_per_latent_dim(means: jax.Array, log_vars: jax.Array) -> jax.Array:
    """Mean over the data of KL(q(z_i|x) || N(0, 1)) for each latent i.

    kl_i = (1/N) Σ_n 0.5 · (exp(log_var_ni) + mean_ni² − 1 − log_var_ni)

    Args:
      means, log_vars: [N, k] posterior parameters of each example.
    Returns:
      [k] in nats; a latent with kl_i ≈ 0 carries no information about x.
    """
    chex.assert_rank(means, 2)
    chex.assert_equal_shape([means, log_vars])
    return jnp.mean(jax.vmap(gaussian_kl)(means, log_vars), axis=0)


def collapsed_fraction(
    kl_per_example_latent: jax.Array, *, epsilon: float = 0.01, delta: float = 0.01
) -> jax.Array:
    """Fraction of ε-δ collapsed latents (Lucas et al. 2019, "Don't Blame the ELBO!").

    Latent i is (ε, δ)-collapsed when P_x[KL(q(z_i|x) || p(z_i)) < ε] ≥ 1 − δ, i.e. its KL is
    below ε on at least a fraction 1 − δ of the data: at most δ·N examples may have KL ≥ ε.

    Args:
      kl_per_example_latent: [N, k] per-example, per-latent KL in nats.
      epsilon: KL below which a latent counts as unused on an example.
      delta: fraction of examples on which a collapsed latent may still be used.
    Returns:
      []: the collapsed fraction of the k latents, in [0, 1].
    """
    chex.assert_rank(kl_per_example_latent, 2)
    num_examples = kl_per_example_latent.shape[0]
    num_used = jnp.sum(kl_per_example_latent >= epsilon, axis=0)
    # Counts are integers, so compare with floor(δ·N); the small offset keeps e.g.
    # 0.29 · 100 = 28.999999999999996 from losing an allowed example to rounding.
    max_used = jnp.floor(delta * num_examples + 1e-6)
    return jnp.mean(num_used <= max_used)


def collapsed_by_mean_kl(kl_per_latent: jax.Array, *, epsilon: float = 0.01) -> jax.Array:
    """Fraction of latents whose KL, averaged over the data, is below ε nats: they carry (almost)
    no information about x — the per-latent rate of the rate–distortion picture.

    A latent the model uses has E_x KL_i ≥ ½·Var_x(E_q[z_i]) (the KL of a unit-variance
    posterior mean alone), so a latent that counts as active (`active_units`, variance > 0.01)
    has mean KL ≥ 0.005, and one left at the prior by an unfinished optimisation (posterior
    log-variance −0.05…−0.1, KL ≈ 0.001–0.003) counts as collapsed here, as it does there.

    Args:
      kl_per_latent: [k] per-latent KL in nats averaged over examples (`kl_per_latent_dim`).
      epsilon: mean KL below which a latent counts as collapsed.
    Returns:
      []: the collapsed fraction of the k latents, in [0, 1].
    """
    chex.assert_rank(kl_per_latent, 1)
    return jnp.mean(kl_per_latent < epsilon)


def bits_per_dim(
    nll_nats: jax.Array, num_dims: int, *, discrete: bool = False, num_bins: int = 256
) -> jax.Array:
    """Negative log-likelihood of an example in bits per dimension on the 8-bit scale.

    Continuous (`discrete=False`): `nll_nats` = −log p(x) of a density over pixels scaled to
    [0, 1] and uniformly dequantised, x = (k + u)/256. Rescaling to the 8-bit range [0, 256]
    divides the density by 256 per dimension, so −log p on that scale is nll + D·log 256, and
      bpd = (nll + D · log 256) / (D · log 2).
    By Jensen this upper-bounds the discrete code length of the 8-bit image under the model the
    density induces on the bins (docs/design.md, "Families on the 8-bit scale").

    Discrete (`discrete=True`): `nll_nats` = −log P(x) of probabilities over the 256 bins of
    each pixel (e.g. a discretised logistic); no change of variables is needed:
      bpd = nll / (D · log 2).

    Args:
      nll_nats: [] or any shape, −log p(x) in nats per example (e.g. the IWAE NLL).
      num_dims: D, the number of pixels × channels of one example.
      discrete: whether `nll_nats` comes from probabilities over 256 bins.
      num_bins: pixel levels of the data (256 for 8-bit images; 17 for sklearn's digits, whose
        dequantised scale is (k + u)/17 and whose "8-bit scale" is its own 17 levels).
    Returns:
      bits per dimension, the shape of `nll_nats`.
    """
    if discrete:
        return nll_nats / (num_dims * math.log(2.0))
    return (nll_nats + num_dims * math.log(num_bins)) / (num_dims * math.log(2.0))


def psnr(x: jax.Array, x_hat: jax.Array, max_value: float = 1.0) -> jax.Array:
    """Peak signal-to-noise ratio of one reconstruction, in dB.

    psnr = 10 · log10(max_value² / mse),  mse = mean over all elements of (x − x_hat)²

    Args:
      x, x_hat: [..event] one example and its reconstruction, equal shapes.
      max_value: the largest possible pixel value (1.0 for pixels in [0, 1]).
    Returns:
      []: infinite for a perfect reconstruction.
    """
    chex.assert_equal_shape([x, x_hat])
    mse = jnp.mean(jnp.square(x - x_hat))
    return 10.0 * jnp.log10(max_value**2 / mse)


def pixel_levels(x: jax.Array, *, dequantized: bool, num_bins: int = 256) -> jax.Array:
    """The 8-bit level k of each pixel of x in [0, 1]: floor(x·K) after uniform dequantisation
    (x = (k + u)/K, u in [0, 1)), round(x·(K − 1)) on the grid x = k/(K − 1). Any shape -> int32
    of that shape, in 0…K − 1."""
    scaled = jnp.floor(x * num_bins) if dequantized else jnp.round(x * (num_bins - 1))
    return jnp.clip(scaled, 0, num_bins - 1).astype(jnp.int32)


def saturation_sums(
    pixel_log_prob: jax.Array, levels: jax.Array, *, num_bins: int = 256
) -> dict[str, jax.Array]:
    """One image's reconstruction term split into saturated pixels (level k = 0 or k = K − 1)
    and interior ones (0 < k < K − 1): the per-example form of `saturation_split`.

        saturated = Σ_{i saturated} ℓ_i,   interior = Σ_{i interior} ℓ_i,
        saturated + interior = Σ_i ℓ_i (the whole term).

    Args:
      pixel_log_prob: [*event] each pixel's log p(x_i | z) in nats
        (`likelihoods.elementwise_log_prob`).
      levels: [*event] each pixel's level (`pixel_levels`), integers in 0…K − 1.
      num_bins: K, the number of pixel levels.
    Returns:
      {'saturated', 'interior'}: [] nats; {'num_saturated'}: [] int32, the saturated pixels.
    """
    chex.assert_equal_shape([pixel_log_prob, levels])
    saturated = (levels == 0) | (levels == num_bins - 1)
    return {
        "saturated": jnp.sum(jnp.where(saturated, pixel_log_prob, 0.0)),
        "interior": jnp.sum(jnp.where(saturated, 0.0, pixel_log_prob)),
        "num_saturated": jnp.sum(saturated, dtype=jnp.int32),
    }


def saturation_summary(
    saturated: jax.Array, interior: jax.Array, num_saturated: jax.Array, *, num_pixels: int
) -> dict[str, jax.Array]:
    """`saturation_sums` of N images aggregated (`saturation_split` gives the formulas).

    Args:
      saturated, interior: [N] each image's sums, nats.
      num_saturated: [N] each image's saturated pixel count.
      num_pixels: D, the pixels of one image.
    Returns:
      `saturation_split`'s dict.
    """
    chex.assert_rank([saturated, interior, num_saturated], 1)
    chex.assert_equal_shape([saturated, interior, num_saturated])
    num_images = saturated.shape[0]
    on_saturated, on_interior = jnp.sum(saturated), jnp.sum(interior)
    total_saturated = jnp.sum(num_saturated)
    total_interior = num_images * num_pixels - total_saturated
    return {
        "saturated_per_image": on_saturated / num_images,
        "interior_per_image": on_interior / num_images,
        "saturated_per_pixel": on_saturated / jnp.where(total_saturated, total_saturated, jnp.nan),
        "interior_per_pixel": on_interior / jnp.where(total_interior, total_interior, jnp.nan),
        "saturated_fraction": total_saturated / (num_images * num_pixels),
    }


def saturation_split(
    pixel_log_prob: jax.Array, levels: jax.Array, *, num_bins: int = 256
) -> dict[str, jax.Array]:
    """Where a reconstruction term is earned: its per-pixel log-likelihoods split into saturated
    pixels (level k = 0 or k = K − 1) and interior ones (0 < k < K − 1).

        per image:  S = mean_n Σ_{i saturated} ℓ_ni,   I = mean_n Σ_{i interior} ℓ_ni,
                    S + I = mean_n Σ_i ℓ_ni (the whole term);
        per pixel:  Σ_{n, i saturated} ℓ_ni / #saturated, and the same over interior pixels
                    (NaN where a part has no pixel).

    `saturation_sums` per image, then `saturation_summary` over the images: evaluation stores
    the first per example and summarises with the second.

    Args:
      pixel_log_prob: [N, *event] each pixel's log p(x_i | z) in nats
        (`likelihoods.elementwise_log_prob`, vmapped over the images).
      levels: [N, *event] each pixel's 8-bit level (`pixel_levels`), integers in 0…K − 1.
      num_bins: K, the number of pixel levels.
    Returns:
      {'saturated_per_image', 'interior_per_image', 'saturated_per_pixel',
       'interior_per_pixel', 'saturated_fraction'}: [] each, nats (the fraction of pixels that
      are saturated is a number in [0, 1]).
    """
    chex.assert_equal_shape([pixel_log_prob, levels])
    if jnp.ndim(pixel_log_prob) < 2:
        raise ValueError(
            f"pixel_log_prob must be [N, *event], got shape {jnp.shape(pixel_log_prob)}"
        )
    sums = jax.vmap(lambda lp, k: saturation_sums(lp, k, num_bins=num_bins))(
        jnp.asarray(pixel_log_prob), jnp.asarray(levels)
    )
    return saturation_summary(**sums, num_pixels=math.prod(jnp.shape(pixel_log_prob)[1:]))

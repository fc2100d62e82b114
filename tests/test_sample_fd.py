"""Tests for vae_jax.sample_fd: the FD columns at N and extrapolated, against a hand computation
with numpy and scipy (the subsets drawn as the code draws them: one generator, seed 0, for each
size `REPEATS` pairs of subsets, set 1's then set 2's)."""

import numpy as np
import pytest
import scipy.linalg

from vae_jax import sample_fd


def scipy_frechet(f1, f2):
    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    root = np.real(scipy.linalg.sqrtm(c1 @ c2))
    return np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2.0 * root)


def hand_fd_inf(f1, f2, sizes):
    """FD at each size, averaged over the subsets, then the intercept of a line in 1/N."""
    rng = np.random.default_rng(0)
    means = []
    for size in sizes:
        values = []
        for _ in range(sample_fd.REPEATS):
            a = f1[rng.choice(len(f1), size, replace=False)]
            b = f2[rng.choice(len(f2), size, replace=False)]
            values.append(scipy_frechet(a, b))
        means.append(np.mean(values))
    _, intercept = np.polyfit(1.0 / np.asarray(sizes, np.float64), means, 1)
    return intercept


def test_the_grid_spans_the_smaller_set():
    assert sample_fd.extrapolation_sizes(400) == (160, 220, 280, 340, 400)
    assert sample_fd.extrapolation_sizes(1000)[-1] == 1000
    with pytest.raises(ValueError, match="at least 5 images; the smallest holds 3"):
        sample_fd.extrapolation_sizes(3)


def test_columns_equal_a_hand_computation_in_both_spaces():
    rng = np.random.default_rng(3)
    generated = rng.normal(0.3, 1.2, size=(300, 6))
    reference = rng.normal(size=(500, 6))
    pca_generated, pca_reference = generated[:, :4] ** 2, reference[:, :4] ** 2
    sizes = sample_fd.extrapolation_sizes(300)
    got = sample_fd.columns(
        "test/", "_prior_mean", generated, reference, sizes, pca_generated, pca_reference
    )
    np.testing.assert_allclose(
        got["test/fd_prior_mean"], scipy_frechet(generated, reference), rtol=1e-8
    )
    np.testing.assert_allclose(
        got["test/fd_inf_prior_mean"], hand_fd_inf(generated, reference, sizes), rtol=1e-8
    )
    np.testing.assert_allclose(
        got["test/fd_pca_prior_mean"], scipy_frechet(pca_generated, pca_reference), rtol=1e-8
    )
    np.testing.assert_allclose(
        got["test/fd_inf_pca_prior_mean"],
        hand_fd_inf(pca_generated, pca_reference, sizes),
        rtol=1e-8,
    )
    # The extrapolation removes most of the 1/N bias: two draws of one Gaussian in 40 dimensions
    # score FD ≈ 2 at N = 400 and 500, FD_∞ near the true 0.
    one, other = rng.normal(size=(400, 40)), rng.normal(size=(500, 40))
    same = sample_fd.columns("floor/", "", one, other, (100, 200, 400))
    assert same["floor/fd"] > 1.5 and abs(same["floor/fd_inf"]) < 0.2 * same["floor/fd"]


def test_a_non_finite_set_scores_nan_and_pca_needs_both_sets():
    rng = np.random.default_rng(4)
    generated, reference = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    generated[7, 1] = np.nan
    got = sample_fd.columns("test/", "_x", generated, reference, (20, 30, 50))
    assert np.isnan(got["test/fd_x"]) and np.isnan(got["test/fd_inf_x"])
    with pytest.raises(ValueError, match="pca_features and pca_reference are given together"):
        sample_fd.columns("test/", "_x", reference, reference, (20, 50), reference, None)


def test_pca_features_of_uint8_images_are_their_projection():
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(200, 9, 9, 1), dtype=np.uint8)
    mean, components = sample_fd.fit_pca(images)
    assert components.shape == (sample_fd.PCA_COMPONENTS, 81)
    x = images.reshape(200, -1) / 255.0
    np.testing.assert_allclose(mean, x.mean(0))
    np.testing.assert_allclose(
        sample_fd.pca_of(images[:5], (mean, components)), (x[:5] - mean) @ components.T
    )

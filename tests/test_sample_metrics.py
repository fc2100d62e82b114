"""Tests for vae_jax.sample_metrics against scipy, closed forms and brute-force loops."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats

from vae_jax import sample_metrics


def _random_spd(rs: np.random.Generator, dim: int, *, rank: int | None = None) -> np.ndarray:
    a = rs.normal(size=(dim, rank or dim + 3))
    return a @ a.T / a.shape[1]


# ------------------------------------------------------------------------ Fréchet distance


def test_sqrtm_psd_matches_scipy_on_random_spd_matrices():
    rs = np.random.default_rng(0)
    for dim in (1, 5, 40):
        a = _random_spd(rs, dim)
        root = sample_metrics.sqrtm_psd(a)
        np.testing.assert_allclose(root, np.real(scipy.linalg.sqrtm(a)), atol=1e-9)
        np.testing.assert_allclose(root @ root, a, atol=1e-9)
        np.testing.assert_allclose(root, root.T, atol=0)


def test_frechet_distance_matches_the_scipy_sqrtm_formula():
    rs = np.random.default_rng(1)
    for dim in (2, 16, 64):
        mu1, mu2 = rs.normal(size=dim), rs.normal(size=dim)
        c1, c2 = _random_spd(rs, dim), _random_spd(rs, dim)
        # pytorch-fid's formula: the square root of the (non-symmetric) product C1 C2.
        expected = (
            np.sum((mu1 - mu2) ** 2)
            + np.trace(c1)
            + np.trace(c2)
            - 2.0 * np.trace(np.real(scipy.linalg.sqrtm(c1 @ c2)))
        )
        got = sample_metrics.frechet_distance(mu1, c1, mu2, c2)
        assert isinstance(got, float)
        np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-9)
        # Symmetric in its two distributions.
        np.testing.assert_allclose(
            sample_metrics.frechet_distance(mu2, c2, mu1, c1), got, rtol=1e-9, atol=1e-9
        )


def test_frechet_distance_closed_forms():
    rs = np.random.default_rng(2)
    a, b = rs.uniform(0.1, 3.0, 8), rs.uniform(0.1, 3.0, 8)
    mu1, mu2 = rs.normal(size=8), rs.normal(size=8)
    # Diagonal covariances: ‖μ₁ − μ₂‖² + Σ (√a − √b)².
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = sample_metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # Identical distributions: 0. A singular covariance's zero eigenvalues come out of eigh
    # as ±1e-16, whose square roots are 1e-8 each: zero to within F·sqrt(ε‖C‖).
    c = _random_spd(rs, 10)
    assert abs(sample_metrics.frechet_distance(mu1[:1].repeat(10), c, mu1[:1].repeat(10), c)) < 1e-9
    c = _random_spd(rs, 10, rank=3)
    assert abs(sample_metrics.frechet_distance(mu1[:1].repeat(10), c, mu1[:1].repeat(10), c)) < 1e-6
    # Equal covariances: only the means differ.
    c = _random_spd(rs, 8)
    np.testing.assert_allclose(
        sample_metrics.frechet_distance(mu1, c, mu2, c), np.sum((mu1 - mu2) ** 2), rtol=1e-8
    )
    # Scaled isotropic: N(0, s²I) against N(0, t²I) in d dims is d (s − t)².
    np.testing.assert_allclose(
        sample_metrics.frechet_distance(np.zeros(5), 4.0 * np.eye(5), np.zeros(5), np.eye(5)),
        5.0,
        rtol=1e-12,
    )


def test_frechet_distance_handles_rank_deficient_covariances():
    # Rank-deficient products (fewer samples than features) are where sqrtm needs an offset.
    rs = np.random.default_rng(3)
    c1, c2 = _random_spd(rs, 30, rank=5), _random_spd(rs, 30, rank=7)
    mu = np.zeros(30)
    got = sample_metrics.frechet_distance(mu, c1, mu, c2)
    # Independent value: the trace root from the singular values of C1^{1/2} C2^{1/2}.
    r1, r2 = np.real(scipy.linalg.sqrtm(c1 + 0j)), np.real(scipy.linalg.sqrtm(c2 + 0j))
    nuclear = np.sum(scipy.linalg.svdvals(r1 @ r2))
    np.testing.assert_allclose(got, np.trace(c1) + np.trace(c2) - 2.0 * nuclear, atol=1e-6)
    assert got > 0


def test_frechet_distance_of_features_matches_the_gaussian_fits():
    rs = np.random.default_rng(4)
    f1 = rs.normal(size=(500, 6)) @ rs.normal(size=(6, 6))
    f2 = rs.normal(size=(400, 6)) + 0.5
    expected = sample_metrics.frechet_distance(f1.mean(0), np.cov(f1.T), f2.mean(0), np.cov(f2.T))
    np.testing.assert_allclose(
        sample_metrics.frechet_distance_of_features(f1, f2), expected, rtol=1e-12
    )
    # A large sample of one Gaussian against another: near the population distance.
    big1 = rs.normal(size=(200_000, 2)) * np.array([1.0, 2.0])
    big2 = rs.normal(size=(200_000, 2)) + np.array([1.0, 0.0])
    population = 1.0 + (2.0 - 1.0) ** 2  # ‖Δμ‖² + Σ(√a − √b)² with a = (1, 4), b = (1, 1)
    np.testing.assert_allclose(
        sample_metrics.frechet_distance_of_features(big1, big2), population, atol=0.03
    )
    assert math.isnan(sample_metrics.frechet_distance_of_features(f1 * np.nan, f1))


def test_frechet_distance_shape_mismatch():
    with pytest.raises(ValueError, match="one F"):
        sample_metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="square"):
        sample_metrics.frechet_distance(np.zeros(3), np.ones((3, 2)), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="one F"):
        sample_metrics.frechet_distance_of_features(np.zeros((5, 3)), np.zeros((5, 4)))


def _closed_form_fd(mu1, cov1, mu2, cov2):
    """‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) with scipy's general matrix square root."""
    root = scipy.linalg.sqrtm(cov1 @ cov2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2.0 * root))


@pytest.mark.parametrize("scale, shift", [(1.0, 0.0), (1.2, 0.05)])
def test_extrapolated_fd_is_closer_to_the_true_distance_than_the_finite_n_one(scale, shift):
    """Two Gaussians in F = 16: the plug-in FD of 1,000 images each sits ~0.2 above the closed
    form (the c/N term); the intercept of FD against 1/N removes most of it."""
    dim = 16
    a = np.random.default_rng(0).normal(size=(dim, dim)) / math.sqrt(dim)
    cov1 = a @ a.T + 0.5 * np.eye(dim)
    cov2, mu1, mu2 = scale * cov1, np.zeros(dim), np.full(dim, shift)
    truth = _closed_form_fd(mu1, cov1, mu2, cov2)
    finite_errors, extrapolated_errors = [], []
    for seed in range(4):
        rs = np.random.default_rng(100 + seed)
        x1 = rs.multivariate_normal(mu1, cov1, size=1000)
        x2 = rs.multivariate_normal(mu2, cov2, size=1000)
        finite = sample_metrics.frechet_distance_of_features(x1, x2)
        fit = sample_metrics.frechet_distance_extrapolated(
            x1, x2, sizes=tuple(range(200, 1001, 100)), repeats=5, seed=seed
        )
        assert fit.fds[-1] == pytest.approx(finite)  # the whole sets, in another order
        assert fit.slope > 0  # the bias is upward
        finite_errors.append(abs(finite - truth))
        extrapolated_errors.append(abs(fit.fd_infinity - truth))
    assert np.mean(finite_errors) > 0.15
    assert np.mean(extrapolated_errors) < np.mean(finite_errors) / 3


def test_extrapolated_fd_fits_the_line_through_its_points():
    rs = np.random.default_rng(1)
    x1, x2 = rs.normal(size=(300, 4)), rs.normal(0.3, 1.0, size=(200, 4))
    fit = sample_metrics.frechet_distance_extrapolated(
        x1, x2, sizes=(50, 100, 200, 300), subsample_both=False, repeats=2
    )
    slope, intercept = np.polyfit(1.0 / np.array(fit.sizes), fit.fds, 1)
    np.testing.assert_allclose([fit.fd_infinity, fit.slope], [intercept, slope], rtol=1e-9)
    # Set 2 whole: the size-300 point is the plug-in FD of both whole sets.
    assert fit.fds[-1] == pytest.approx(sample_metrics.frechet_distance_of_features(x1, x2))
    again = sample_metrics.frechet_distance_extrapolated(
        x1, x2, sizes=(50, 100, 200, 300), subsample_both=False, repeats=2
    )
    assert again == fit


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sizes=(100,)), "at least 2 distinct sizes"),
        (dict(sizes=(100, 100)), "at least 2 distinct sizes"),
        (dict(sizes=(100, 250)), r"in \[2, 200\]"),
        (dict(sizes=(1, 100)), r"in \[2, 200\]"),
        (dict(sizes=(100, 200), repeats=0), "repeats must be"),
    ],
)
def test_extrapolated_fd_refuses_bad_sizes(kwargs, match):
    rs = np.random.default_rng(2)
    with pytest.raises(ValueError, match=match):
        sample_metrics.frechet_distance_extrapolated(
            rs.normal(size=(300, 3)), rs.normal(size=(200, 3)), **kwargs
        )
    with pytest.raises(ValueError, match="of one F"):
        sample_metrics.frechet_distance_extrapolated(
            rs.normal(size=(300, 3)), rs.normal(size=(200, 4)), sizes=(10, 20)
        )


# ------------------------------------------------------------------------- PCA features


def test_pca_matches_sklearn_up_to_each_components_sign():
    from sklearn.decomposition import PCA

    rs = np.random.default_rng(3)
    # Distinct variances per pixel, so that the principal directions are well separated.
    images = rs.normal(size=(200, 6, 5, 1)) * np.linspace(0.2, 2.0, 30).reshape(6, 5, 1)
    mean, components = sample_metrics.pca_fit(images, 8)
    chex.assert_shape((mean, components), ((30,), (8, 30)))
    reference = PCA(n_components=8, svd_solver="full").fit(images.reshape(200, -1))
    signs = np.sign(np.sum(components * reference.components_, axis=1))
    np.testing.assert_allclose(components, signs[:, None] * reference.components_, atol=1e-10)
    np.testing.assert_allclose(mean, reference.mean_, atol=1e-12)
    test_images = rs.normal(size=(20, 6, 5, 1))
    features = sample_metrics.pca_features(test_images, mean, components)
    want = reference.transform(test_images.reshape(20, -1)) * signs
    np.testing.assert_allclose(features, want, atol=1e-10)
    np.testing.assert_allclose(components @ components.T, np.eye(8), atol=1e-12)


def test_pca_refuses_bad_sizes_and_mismatched_images():
    images = np.zeros((10, 4))
    with pytest.raises(
        ValueError, match=r"num_components must lie in \[1, min\(N, D\)\] = \[1, 4\]"
    ):
        sample_metrics.pca_fit(images, 5)
    mean, components = sample_metrics.pca_fit(np.random.default_rng(4).normal(size=(10, 4)), 2)
    with pytest.raises(ValueError, match="do not match components"):
        sample_metrics.pca_features(np.zeros((3, 5)), mean, components)


# ------------------------------------------------------------------- precision and recall


def _brute_force_precision_recall(real: np.ndarray, fake: np.ndarray, k: int):
    """Double loops in float64, straight from the definition."""

    def radii(points):
        out = []
        for p in points:
            distances = sorted(float(np.sqrt(np.sum((p - q) ** 2))) for q in points)
            out.append(distances[k])  # distances[0] is the point itself
        return out

    def covered(points, reference, reference_radii):
        hits = 0
        for p in points:
            inside = False
            for q, r in zip(reference, reference_radii, strict=True):
                if np.sqrt(np.sum((p - q) ** 2)) <= r:
                    inside = True
                    break
            hits += inside
        return hits / len(points)

    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_matches_a_brute_force_double_loop(k):
    rs = np.random.default_rng(10 + k)
    real = rs.normal(size=(120, 5))
    fake = 0.7 * rs.normal(size=(90, 5)) + np.array([0.8, 0, 0, 0, 0])  # shifted, narrower
    expected = _brute_force_precision_recall(real, fake, k)
    precision, recall = jax.jit(sample_metrics.precision_recall, static_argnames="k")(
        jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32), k=k
    )
    chex.assert_shape([precision, recall], ())
    # Exact: no draw lies within float32 rounding of a ball's boundary.
    np.testing.assert_allclose([float(precision), float(recall)], expected, atol=1e-6)
    assert 0.0 < float(recall) < 1.0 and 0.0 < float(precision) <= 1.0


def test_precision_recall_extremes():
    rs = np.random.default_rng(20)
    real = rs.normal(size=(200, 4)).astype(np.float32)
    # The same set: every point lies in its own ball.
    np.testing.assert_array_equal(sample_metrics.precision_recall(real, real), (1.0, 1.0))
    # A far-away generated set: neither covers the other.
    np.testing.assert_array_equal(sample_metrics.precision_recall(real, real + 100.0), (0.0, 0.0))
    # Mode collapse onto one real point: precision 1, recall ≈ 1/N (the radii are 0).
    collapsed = np.repeat(real[:1], 200, axis=0)
    precision, recall = sample_metrics.precision_recall(real, collapsed)
    assert float(precision) == 1.0 and float(recall) == pytest.approx(1 / 200)


@pytest.mark.slow  # the default suite keeps a faster test of the same code
def test_precision_recall_batched_over_members():
    rs = np.random.default_rng(21)
    real = jnp.asarray(rs.normal(size=(60, 3)), jnp.float32)
    fakes = jnp.asarray(rs.normal(size=(4, 60, 3)) * np.array([0.5, 1, 2, 4])[:, None, None])
    batched = jax.vmap(sample_metrics.precision_recall, in_axes=(None, 0))(real, fakes)
    for i in range(4):
        single = sample_metrics.precision_recall(real, fakes[i])
        np.testing.assert_allclose([batched[0][i], batched[1][i]], single)
    # Wider generated sets: lower precision, higher recall.
    assert float(batched[0][0]) > float(batched[0][3])
    assert float(batched[1][0]) < float(batched[1][3])


def test_knn_sq_radii_and_shape_mismatch():
    points = jnp.asarray([[0.0], [1.0], [3.0], [7.0]])
    # Sorted distances of 0: 0, 1, 3, 7; of 1: 0, 1, 2, 6; of 3: 0, 2, 3, 4; of 7: 0, 4, 6, 7.
    np.testing.assert_allclose(sample_metrics.knn_sq_radii(points, 2), [9.0, 4.0, 9.0, 36.0])
    with pytest.raises(ValueError, match="k=4"):
        sample_metrics.knn_sq_radii(points, 4)
    with pytest.raises(AssertionError, match=r"different shape suffixes: \[\(3,\), \(4,\)\]"):
        sample_metrics.precision_recall(jnp.zeros((10, 3)), jnp.zeros((10, 4)))


# ----------------------------------------------------------------------------- accuracy


def test_classification_accuracy():
    rs = np.random.default_rng(30)
    logits = rs.normal(size=(200, 10))
    labels = rs.integers(0, 10, 200)
    expected = sum(int(np.argmax(row) == y) for row, y in zip(logits, labels, strict=True)) / 200
    got = jax.jit(sample_metrics.classification_accuracy)(jnp.asarray(logits), jnp.asarray(labels))
    chex.assert_shape(got, ())
    assert float(got) == pytest.approx(expected)
    one_hot = np.eye(10)[labels]
    assert float(sample_metrics.classification_accuracy(one_hot, labels)) == 1.0
    with pytest.raises(AssertionError, match=r"different shape prefixes: \[\(5,\), \(4,\)\]"):
        sample_metrics.classification_accuracy(jnp.zeros((5, 10)), jnp.zeros(4, jnp.int32))

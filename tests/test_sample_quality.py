"""Tests for vae_jax.sample_quality on the tiny digits problem: images as the model makes them,
metrics recomputed from the returned uint8 arrays by independent code (scipy, scikit-learn)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.spatial
from conftest import tiny_config
from sklearn.neighbors import NearestNeighbors
from test_sample_fd import hand_fd_inf

from vae_jax import (
    aggregate_posterior,
    data,
    experiment,
    features,
    models,
    sample_fd,
    sample_quality,
    train,
)
from vae_jax.objective import make_hyper, observation_log_sigma

SIGMAS = (0.05, 0.3, 1.0)


# A tiny VAE's sample metrics take seconds each: the default suite keeps the pure metrics
# (test_sample_metrics.py); CI runs these with the slow tests.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits_net(data_dir) -> features.FeatureNet:
    return features.feature_network("digits", validation_fraction=0.1, data_dir=data_dir)


@pytest.fixture(scope="module")
def test_labels(data_dir) -> np.ndarray:
    return data.load_labels("digits", "test", data_dir=data_dir)


def _members(problem, sigmas, seeds):
    """Stacked freshly initialised params, their log σ and one key per member."""
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    x = jnp.zeros(problem.train_x.shape[1:])
    params = jax.vmap(lambda key: problem.model.init(key, x))(keys)
    hyper = jax.tree.map(lambda *a: jnp.stack(a), *[make_hyper(s, 1.0) for s in sigmas])
    log_sigma = jax.vmap(functools.partial(observation_log_sigma, problem))(params, hyper)
    return params, log_sigma, keys


def _uint8(x):
    return np.round(255.0 * np.clip(np.asarray(x, np.float64), 0.0, 1.0)).astype(np.uint8)


def _scipy_frechet(f1, f2):
    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    root = np.real(scipy.linalg.sqrtm(c1 @ c2))
    return np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2.0 * root)


def _sklearn_precision_recall(real, fake, k=3):
    def radii(points):  # column 0 is the point itself
        return NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)[0][:, k]

    def covered(queries, reference):
        distances = scipy.spatial.distance.cdist(queries, reference)
        return np.mean(np.any(distances <= radii(reference)[None, :], axis=1))

    return covered(fake, real), covered(real, fake)


@pytest.fixture(scope="module")
def pca(data_dir):
    train_x, _, _, _ = features.training_split("digits", 0.1, data_dir=data_dir)
    return sample_fd.fit_pca(_uint8(train_x))


@pytest.fixture(scope="module")
def gaussian_quality(data_dir, digits_net, test_labels, pca):
    problem = experiment.build_problem(tiny_config())
    # Members 0 and 2 share a seed (same parameters and key), only their σ differs.
    params, log_sigma, keys = _members(problem, SIGMAS, seeds=(0, 1, 0))
    quality = sample_quality.make_sample_quality(
        problem, digits_net, test_labels, members_per_block=2, fd_sizes=FD_SIZES, pca=pca
    )
    return problem, params, log_sigma, quality(params, log_sigma, keys)


FD_SIZES = (144, 216, 288, 360)  # above the 128 features, so that scipy's sqrtm is accurate


def test_images_have_the_samples_npz_shapes(gaussian_quality):
    problem, _, _, result = gaussian_quality
    num = len(problem.test_x)  # digits: 360 test images, fewer than the default 1,000
    for name in sample_quality.IMAGE_SETS:
        assert result.images[name].shape == (3, num, 8, 8, 1)
        assert result.images[name].dtype == np.uint8
    np.testing.assert_array_equal(result.images["test"], _uint8(problem.test_x))
    assert set(result.metrics) >= {
        "test/fd_prior_mean",
        "test/precision_prior_sample",
        "test/recall_reconstruction",
        "test/recon_accuracy",
        "test/mutual_information_upper",
        "test/marginal_kl_lower",
        *(f"test/{m}_{s}" for m in ("fd_inf", "fd_pca", "fd_inf_pca") for s in ("prior_mean",)),
    }
    assert all(v.shape == (3,) for v in result.metrics.values())
    assert len(result.rows()) == 3 and result.rows()[1]["test/fd_prior_mean"] > 0


def test_reconstructions_are_decoder_means_at_the_posterior_mean(gaussian_quality):
    problem, params, _, result = gaussian_quality
    member = jax.tree.map(lambda a: a[1], params)
    mean, _ = jax.vmap(lambda x: problem.model.apply(member, x, method=models.VAE.encode))(
        jnp.asarray(problem.test_x)
    )
    out = jax.vmap(lambda z: problem.model.apply(member, z, method=models.VAE.decode))(mean)
    expected = _uint8(out[:, 0])  # a Gaussian decoder's mean is its first output map
    got = result.images["reconstruction"][1].astype(int)
    assert np.max(np.abs(got - expected.astype(int))) <= 1  # float rounding at a .5 boundary
    assert np.mean(got == expected) > 0.99


def test_prior_samples_share_z_and_scatter_by_sigma(gaussian_quality):
    _, _, _, result = gaussian_quality
    # Members 0 and 2: the same network and key, so the same z and the same decoder means.
    np.testing.assert_array_equal(result.images["prior_mean"][0], result.images["prior_mean"][2])
    # Drawn samples scatter about the mean as clip(f(z) + σε, 0, 1) does, simulated here; on
    # the pixels whose mean f(z) is inside (0, 1), so that the stored mean is f(z) itself.
    rs = np.random.default_rng(0)
    for i in (0, 2):
        inside = (result.images["prior_mean"][i] > 0) & (result.images["prior_mean"][i] < 255)
        assert inside.sum() > 1000
        mean = result.images["prior_mean"][i][inside] / 255.0
        drawn = result.images["prior_sample"][i][inside] / 255.0
        simulated = np.clip(mean + SIGMAS[i] * rs.standard_normal(mean.shape), 0.0, 1.0)
        assert np.std(drawn - mean) == pytest.approx(np.std(simulated - mean), rel=0.05)
        assert np.mean(drawn) == pytest.approx(np.mean(simulated), abs=0.01)
    assert not np.array_equal(result.images["prior_sample"][0], result.images["prior_sample"][2])


def test_metrics_recompute_from_the_returned_images(gaussian_quality, digits_net, test_labels, pca):
    _, _, _, result = gaussian_quality
    real = digits_net.features(result.images["test"] / np.float32(255.0)).astype(np.float64)
    flat = result.images["test"].reshape(len(real), -1) / 255.0
    real_pca = (flat - pca[0]) @ pca[1].T
    for name in sample_quality.IMAGE_SETS:
        for i in range(3):
            fake = digits_net.features(result.images[name][i] / np.float32(255.0))
            fake = fake.astype(np.float64)
            np.testing.assert_allclose(
                result.metrics[f"test/fd_{name}"][i], _scipy_frechet(fake, real), rtol=1e-3
            )
            np.testing.assert_allclose(
                result.metrics[f"test/fd_inf_{name}"][i],
                hand_fd_inf(fake, real, FD_SIZES),
                rtol=1e-3,
            )
            fake_pca = (result.images[name][i].reshape(len(real), -1) / 255.0 - pca[0]) @ pca[1].T
            np.testing.assert_allclose(
                result.metrics[f"test/fd_pca_{name}"][i],
                _scipy_frechet(fake_pca, real_pca),
                rtol=1e-6,
            )
            np.testing.assert_allclose(
                result.metrics[f"test/fd_inf_pca_{name}"][i],
                hand_fd_inf(fake_pca, real_pca, FD_SIZES),
                rtol=1e-6,
            )
            precision, recall = _sklearn_precision_recall(real, fake)
            np.testing.assert_allclose(result.metrics[f"test/precision_{name}"][i], precision)
            np.testing.assert_allclose(result.metrics[f"test/recall_{name}"][i], recall)
    _, _, _, result = gaussian_quality
    recon = result.images["reconstruction"] / np.float32(255.0)
    expected_accuracy = [np.mean(digits_net.predict(recon[i]) == test_labels) for i in range(3)]
    np.testing.assert_allclose(result.metrics["test/recon_accuracy"], expected_accuracy)


def test_information_bounds_are_the_cross_fitted_bound_of_the_members_posteriors(
    gaussian_quality,
):
    problem, params, _, result = gaussian_quality
    m = result.metrics
    for i in range(3):
        member = jax.tree.map(lambda a, i=i: a[i], params)
        mean, log_var = jax.vmap(
            lambda x, p=member: problem.model.apply(p, x, method=models.VAE.encode)
        )(jnp.asarray(problem.test_x))
        mean, log_var = np.asarray(mean, np.float64), np.asarray(log_var, np.float64)
        rate = np.mean(np.sum(0.5 * (np.exp(log_var) + mean**2 - 1.0 - log_var), axis=1))
        np.testing.assert_allclose(m["test/rate"][i], rate, rtol=1e-5)
        # Each half of the test images scored against the other half's aggregate fit.
        even, odd = slice(0, None, 2), slice(1, None, 2)
        halves = [
            aggregate_posterior.mutual_information_upper_bound(
                mean[a], log_var[a], fit_means=mean[b], fit_log_vars=log_var[b]
            )["mutual_information_upper"]
            for a, b in ((even, odd), (odd, even))
        ]
        counts = (len(mean[even]), len(mean[odd]))
        expected = (counts[0] * halves[0] + counts[1] * halves[1]) / len(mean)
        np.testing.assert_allclose(m["test/mutual_information_upper"][i], expected, rtol=1e-4)
    np.testing.assert_allclose(
        m["test/mutual_information_upper"] + m["test/marginal_kl_lower"], m["test/rate"], rtol=1e-5
    )


@pytest.mark.slow  # the default suite keeps a faster test of the same code
def test_real_floor_is_far_below_an_untrained_model(gaussian_quality, digits_net, data_dir, pca):
    problem, _, _, result = gaussian_quality
    floor = sample_quality.real_floor(digits_net, data_dir=data_dir, pca=pca)
    # The validation images the VAE held out (grey: the floor does not depend on the family).
    assert floor["floor/num_validation"] == len(problem.val_x) == 144
    real = digits_net.features(_uint8(problem.test_x) / np.float32(255.0)).astype(np.float64)
    val = digits_net.features(_uint8(problem.val_x) / np.float32(255.0)).astype(np.float64)
    np.testing.assert_allclose(floor["floor/fd"], _scipy_frechet(val, real), rtol=1e-3)
    # FD_∞ on the grid of the smaller (validation) set; here in PCA space, whose 64 components
    # keep N = 58 (the grid's smallest) above the dimension.
    sizes = sample_fd.extrapolation_sizes(144)
    assert floor["floor/fd_inf_sizes"] == list(sizes) == [58, 79, 101, 122, 144]
    real_pca = (_uint8(problem.test_x).reshape(360, -1) / 255.0 - pca[0]) @ pca[1].T
    val_pca = (_uint8(problem.val_x).reshape(144, -1) / 255.0 - pca[0]) @ pca[1].T
    np.testing.assert_allclose(floor["floor/fd_pca"], _scipy_frechet(val_pca, real_pca), rtol=1e-6)
    np.testing.assert_allclose(
        floor["floor/fd_inf_pca"], hand_fd_inf(val_pca, real_pca, sizes), rtol=1e-6
    )
    assert floor["floor/fd_inf"] < floor["floor/fd"]  # the 1/N bias removed
    precision, recall = _sklearn_precision_recall(real, val)
    np.testing.assert_allclose(
        [floor["floor/precision"], floor["floor/recall"]], [precision, recall]
    )
    assert floor["floor/fd"] < 0.2 * np.min(result.metrics["test/fd_prior_mean"])
    assert floor["feature_net/test_accuracy"] == digits_net.test_accuracy
    # Fewer test images: the same validation set against the first 50.
    small = sample_quality.real_floor(digits_net, num_examples=50, data_dir=data_dir)
    assert small["floor/num_validation"] == 50
    assert small["floor/fd"] != floor["floor/fd"]


@pytest.mark.slow  # the default suite keeps a faster test of the same code
def test_binarised_family_is_compared_with_grey_images(data_dir, digits_net, test_labels):
    problem = experiment.build_problem(tiny_config({"likelihood.name": "bernoulli"}))
    assert problem.test_grey is not None
    params, log_sigma, keys = _members(problem, (1.0, 1.0), seeds=(0, 1))
    quality = sample_quality.make_sample_quality(problem, digits_net, test_labels, num_examples=50)
    result = quality(params, log_sigma, keys)
    np.testing.assert_array_equal(result.images["test"], _uint8(problem.test_grey[:50]))
    assert result.images["prior_sample"].shape == (2, 50, 8, 8, 1)
    assert set(np.unique(result.images["prior_sample"])) <= {0, 255}  # Bernoulli draws
    assert len(np.unique(result.images["prior_mean"])) > 2  # probabilities, grey
    assert np.all(np.isfinite(result.metrics["test/fd_prior_sample"]))


@pytest.mark.slow  # the default suite keeps a faster test of the same code
def test_diverged_member_scores_nan_without_breaking_the_others(data_dir, digits_net, test_labels):
    problem = experiment.build_problem(tiny_config())
    params, log_sigma, keys = _members(problem, (0.1, 0.1), seeds=(0, 1))
    params = jax.tree.map(lambda a: a.at[1].set(jnp.nan), params)
    quality = sample_quality.make_sample_quality(problem, digits_net, test_labels, num_examples=40)
    result = quality(params, log_sigma, keys)
    for key, values in result.metrics.items():
        assert np.isfinite(values[0]), key
        assert np.isnan(values[1]), key
    assert np.all(result.images["reconstruction"][1] == 0)
    assert np.any(result.images["reconstruction"][0] > 0)


@pytest.mark.slow  # the default suite keeps a faster test of the same code
def test_a_trained_member_reconstructs_digits_that_keep_their_label(
    gaussian_quality, digits_net, test_labels
):
    _, _, _, untrained = gaussian_quality
    # Wider than TINY, whose 3 latents and 16 units keep too little of a digit.
    config = tiny_config({"model.latent_dim": 8, "model.hidden_sizes": (64,)})
    problem = experiment.build_problem(config)
    state = train.create_train_state(problem, train.make_optimizer(config), jax.random.key(0))
    chunk = jax.jit(train.make_train_chunk(problem, 2000))
    state, _ = chunk(state, jnp.asarray(problem.train_x), make_hyper(0.1, 1.0), jax.random.key(1))
    stacked = jax.tree.map(lambda a: a[None], state.params)
    quality = sample_quality.make_sample_quality(problem, digits_net, test_labels)
    trained = quality(stacked, jnp.log(jnp.full((1,), 0.1)), jax.random.key(2)[None]).metrics
    assert (
        trained["test/recon_accuracy"][0] > 0.8 > np.max(untrained.metrics["test/recon_accuracy"])
    )
    assert trained["test/fd_reconstruction"][0] < 0.1 * np.min(
        untrained.metrics["test/fd_reconstruction"]
    )
    assert trained["test/precision_reconstruction"][0] > 0.5
    assert trained["test/recall_reconstruction"][0] > 0.3
    # The encoder tells the 360 images apart: the bound on I(x; z) is not held at log N.
    assert trained["test/mutual_information_upper"][0] > math.log(360)

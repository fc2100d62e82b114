"""vae_jax.truncated: the Gaussian truncated to [0, 1] against scipy.stats.truncnorm and
quadrature; scalar, vmapped, jitted and shape-mismatch cases; the tails' values and gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from vae_jax import likelihoods as lik
from vae_jax import truncated

EVENT = (3, 4, 2)
# (μ, σ): inside, near an edge, far outside on either side, tiny and huge σ.
CASES = [
    (0.3, 0.1),
    (0.5, 0.3),
    (1.2, 0.05),
    (-5.0, 0.1),
    (6.0, 0.2),
    (-50.0, 0.1),
    (0.5, 1e-3),
    (0.02, 1e-3),
    (0.3, 1e3),
]


def _log_prob(x, mean, log_sigma):
    return truncated.truncated_gaussian_log_prob(x, mean, log_sigma=log_sigma)


def _scipy_log_prob(x, mean, sigma):
    return stats.truncnorm.logpdf(x, -mean / sigma, (1 - mean) / sigma, loc=mean, scale=sigma)


@pytest.mark.parametrize("mean, sigma", CASES)
def test_matches_scipy_truncnorm_in_float64(mean, sigma):
    x = np.array([0.0, 1e-3, 0.25, 0.5, 0.999, 1.0])
    with jax.enable_x64(True):
        got = jax.jit(_log_prob)(x, np.full_like(x, mean), np.log(sigma))
    want = _scipy_log_prob(x, mean, sigma).sum()
    np.testing.assert_allclose(float(got), want, rtol=1e-10, atol=1e-11)  # σ = 1e3: log p ≈ 0


def test_matches_scipy_with_a_per_element_scale_in_float32():
    r = np.random.default_rng(0)
    x = r.uniform(size=EVENT).astype(np.float32)
    mean = r.uniform(-0.5, 1.5, size=EVENT).astype(np.float32)
    log_sigma = np.log(r.uniform(0.05, 0.5, size=EVENT)).astype(np.float32)
    got = jax.jit(_log_prob)(x, mean, log_sigma)
    assert got.dtype == np.float32
    sigma = np.exp(log_sigma.astype(np.float64))
    want = _scipy_log_prob(x.astype(np.float64), mean.astype(np.float64), sigma).sum()
    np.testing.assert_allclose(float(got), want, rtol=2e-5)


@pytest.mark.parametrize("mean, sigma", CASES)
def test_integrates_to_one_with_its_mean_by_quadrature(mean, sigma):
    with jax.enable_x64(True):
        log_prob = jax.jit(_log_prob)

        def density(x):
            return float(np.exp(log_prob(np.array([x]), np.array([mean]), np.log(sigma))))

        peak = [min(max(mean, 0.0), 1.0)]
        quad = dict(points=peak, limit=400, epsabs=1e-13, epsrel=1e-11)
        total = integrate.quad(density, 0.0, 1.0, **quad)[0]
        first_moment = integrate.quad(lambda x: x * density(x), 0.0, 1.0, **quad)[0]
        got_mean = float(truncated.truncated_gaussian_mean(np.array([mean]), np.log(sigma))[0])
    np.testing.assert_allclose(total, 1.0, rtol=1e-8)
    # σ = 1e3: the mean's μ + σ·(φ(α) − φ(β))/Z cancels to ~eps·σ² absolute.
    np.testing.assert_allclose(got_mean, first_moment, rtol=1e-8, atol=1e-9 if sigma < 10 else 1e-7)


@pytest.mark.parametrize("mean, sigma", [c for c in CASES if c[1] < 10 and c[0] > -10])
def test_mean_matches_scipy(mean, sigma):
    with jax.enable_x64(True):
        got = truncated.truncated_gaussian_mean(np.array([mean]), np.log(sigma))
    want = stats.truncnorm.mean(-mean / sigma, (1 - mean) / sigma, loc=mean, scale=sigma)
    np.testing.assert_allclose(float(got[0]), want, rtol=1e-6, atol=1e-12)


def test_mean_far_in_the_tail_matches_the_asymptote():
    """μ = −50, σ = 0.1 (α = 500), where scipy's truncnorm.mean loses digits (1.999991e-4): the
    mean is μ + σ·φ(α)/(1 − Φ(α)) (β's terms underflow), and the inverse Mills ratio is
    α + 1/α − 2/α³ + 10/α⁵ − …, so with μ = −σα it is σ/α·(1 − 2/α² + 10/α⁴)."""
    alpha = 500.0
    with jax.enable_x64(True):
        got = float(truncated.truncated_gaussian_mean(np.array([-50.0]), np.log(0.1))[0])
    # log φ(α) − log Z ≈ −125000 + 125006 keeps ~eps·125000 of the ratio: ~1e-7 relative here.
    np.testing.assert_allclose(got, 0.1 / alpha * (1 - 2 / alpha**2 + 10 / alpha**4), rtol=1e-6)


def test_log_mass_between_matches_scipy_on_both_sides_and_across_zero():
    alpha = np.array([-40.0, -3.0, -1e-6, 0.5, 3.0, 30.0, -8.0, 1e-5])
    beta = np.array([-39.0, -2.5, 1e-6, 0.6, 3.5, 31.0, 8.0, 2e-5])
    with jax.enable_x64(True):
        got = np.asarray(truncated.log_mass_between(alpha, beta))
    # scipy's log(Φ(β) − Φ(α)) in the form that keeps digits on each side.
    right = alpha > 0
    with np.errstate(divide="ignore"):  # np.where evaluates both forms everywhere
        want = np.where(
            right,
            special.log_ndtr(-alpha)
            + np.log(-np.expm1(special.log_ndtr(-beta) - special.log_ndtr(-alpha))),
            special.log_ndtr(beta)
            + np.log(-np.expm1(special.log_ndtr(alpha) - special.log_ndtr(beta))),
        )
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)  # [−8, 8]: log(1 − 1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tails_are_finite_with_finite_gradients(dtype):
    with jax.enable_x64(dtype == np.float64):
        x = jnp.array([0.0, 1.0, 0.5, 1e-3, 0.999, 0.3, 0.0, 1.0], dtype)
        mean = jnp.array([-50.0, 60.0, 0.5, -3.0, 4.0, 0.3, 1.5, -0.5], dtype)
        for sigma in (1e-4, 1e-2, 1.0, 1e4):
            value, grads = jax.jit(jax.value_and_grad(_log_prob, argnums=(1, 2)))(
                x, mean, jnp.log(jnp.asarray(sigma, dtype))
            )
            chex.assert_tree_all_finite((value, grads))


def test_gradients_match_finite_differences():
    with jax.enable_x64(True):
        x, mean, log_sigma = np.array([0.0, 0.2, 0.9]), np.array([-3.0, 0.4, 2.0]), np.log(0.2)
        log_prob = jax.jit(_log_prob)
        grad_mean, grad_log_sigma = jax.jit(jax.grad(_log_prob, argnums=(1, 2)))(x, mean, log_sigma)
        h = 1e-6
        for i in range(3):
            step = np.eye(3)[i] * h
            fd = (log_prob(x, mean + step, log_sigma) - log_prob(x, mean - step, log_sigma)) / 2 / h
            np.testing.assert_allclose(grad_mean[i], fd, rtol=1e-6)
        fd = (log_prob(x, mean, log_sigma + h) - log_prob(x, mean, log_sigma - h)) / (2 * h)
        np.testing.assert_allclose(grad_log_sigma, fd, rtol=1e-6)


def test_outside_the_unit_interval_is_minus_infinity():
    mean = jnp.full((2,), 0.5)
    for bad in ([-1e-3, 0.5], [0.5, 1.001]):
        assert jax.jit(_log_prob)(jnp.array(bad), mean, 0.0) == -jnp.inf


@pytest.mark.parametrize("mean, sigma", [(0.3, 0.1), (1.2, 0.05), (-5.0, 0.1), (-50.0, 0.1)])
def test_sampler_stays_in_the_unit_interval_with_the_right_distribution(mean, sigma):
    n = 20_000
    with jax.enable_x64(True):
        draws = truncated.truncated_gaussian_sample(
            jax.random.key(0), jnp.full(n, mean), jnp.log(sigma)
        )
    draws = np.asarray(draws)
    assert draws.min() >= 0.0 and draws.max() <= 1.0
    a, b = -mean / sigma, (1 - mean) / sigma
    dist = stats.truncnorm(a, b, loc=mean, scale=sigma)
    np.testing.assert_allclose(draws.mean(), dist.mean(), atol=4 * dist.std() / np.sqrt(n))
    assert stats.kstest(draws, dist.cdf).pvalue > 1e-3


def test_inverse_log_ndtr_inverts_scipys_log_ndtr_into_the_deep_tail():
    z = np.array([-60.0, -38.0, -10.0, -7.0, -1.0, 0.0, 2.0])
    with jax.enable_x64(True):
        got = truncated.inverse_log_ndtr(special.log_ndtr(z))
    np.testing.assert_allclose(got, z, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------- scalar, batch, shape checks


def test_scalar_event():
    got = jax.jit(_log_prob)(jnp.float32(0.3), jnp.float32(0.1), jnp.float32(np.log(0.2)))
    chex.assert_shape(got, ())
    np.testing.assert_allclose(float(got), _scipy_log_prob(0.3, 0.1, 0.2), rtol=1e-5)


def test_vmap_equals_loop():
    r = np.random.default_rng(1)
    x = r.uniform(size=(5, *EVENT)).astype(np.float32)
    mean = r.uniform(-0.2, 1.2, size=(5, *EVENT)).astype(np.float32)
    log_sigma = np.float32(-1.5)
    batched = jax.jit(jax.vmap(_log_prob, in_axes=(0, 0, None)))(x, mean, log_sigma)
    chex.assert_shape(batched, (5,))
    loop = jnp.stack([_log_prob(x[i], mean[i], log_sigma) for i in range(5)])
    chex.assert_trees_all_close(batched, loop, rtol=1e-6)


def test_shape_mismatch_raises():
    x = jnp.zeros((4, 3))
    for bad in (jnp.zeros((3,)), jnp.zeros((1, 3)), jnp.zeros((2, 4, 3))):
        with pytest.raises(ValueError, match="shape"):
            _log_prob(x, bad, 0.0)
        with pytest.raises(ValueError, match="shape"):
            jax.jit(_log_prob)(x, bad, 0.0)
    with pytest.raises(ValueError, match="must be a scalar or have the shape of x"):
        _log_prob(x, x, jnp.zeros((3,)))


def test_the_scale_is_keyword_only():
    with pytest.raises(TypeError, match="positional"):
        truncated.truncated_gaussian_log_prob(jnp.zeros(2), jnp.zeros(2), 0.0)


def test_registry_entry_is_a_unit_interval_density_with_a_learned_shared_scale():
    entry = lik.get_likelihood("gaussian_truncated")
    assert entry.data_model == "continuous" and entry.dequantized_data
    assert entry.shared_learned_scale and not entry.refits and entry.std_factor == 1.0
    x, out = jnp.array([0.1, 0.9]), jnp.array([[0.2, 1.4]])
    np.testing.assert_allclose(
        float(entry.log_prob(x, out, jnp.log(0.3))),
        _scipy_log_prob(np.array([0.1, 0.9]), np.array([0.2, 1.4]), 0.3).sum(),
        rtol=1e-5,
    )

"""Tests for vae_jax.likelihoods: values against scipy / numpy formulas / quadrature."""

import contextlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LIKELIHOOD_NAMES
from scipy import integrate, special, stats

from vae_jax import likelihoods as lik

EVENT = (3, 4, 2)
DTYPES = {"float32": (np.float32, dict(rtol=2e-5, atol=1e-4)), "float64": (np.float64, {})}


@pytest.fixture(params=["float32", "float64"])
def dtype_and_tol(request):
    """Yields (numpy dtype, tolerance kwargs), with 64-bit JAX enabled for float64."""
    dtype, tol = DTYPES[request.param]
    tol = tol or dict(rtol=1e-10, atol=1e-10)
    ctx = jax.enable_x64(True) if dtype == np.float64 else contextlib.nullcontext()
    with ctx:
        yield dtype, tol


def _rng(seed=0):
    return np.random.default_rng(seed)


def _grid(num_bins=256):
    return np.arange(num_bins) / (num_bins - 1)


def _cb_log_prob_numpy(x, logits):
    """Continuous Bernoulli from its definition in λ (float64, |logits| not near 0)."""
    lam = special.expit(logits)
    log_c = np.log(2.0 * np.arctanh(1.0 - 2.0 * lam) / (1.0 - 2.0 * lam))
    return np.sum(log_c + x * np.log(lam) + (1.0 - x) * np.log1p(-lam))


def _disc_logistic_log_prob_scipy(x, loc, scale, num_bins=256):
    h = 0.5 / (num_bins - 1)
    upper = np.where(x > 1 - h, 1.0, stats.logistic.cdf(x + h, loc, scale))
    lower = np.where(x < h, 0.0, stats.logistic.cdf(x - h, loc, scale))
    return np.sum(np.log(upper - lower))


# ------------------------------------------------------------------------ values vs references


def _gaussian(x, mean, log_sigma):
    """`gaussian_log_prob` with its keyword-only scale in the (x, mean, log_scale) order the
    other families take, for tests that run several families alike."""
    return lik.gaussian_log_prob(x, mean, log_sigma=log_sigma)


def test_gaussian_matches_scipy(dtype_and_tol):
    dtype, tol = dtype_and_tol
    r = _rng(1)
    x, mean = r.normal(size=(2, *EVENT)).astype(dtype)
    for log_sigma in (dtype(-0.7), r.normal(size=EVENT).astype(dtype) * 0.5):
        got = jax.jit(_gaussian)(x, mean, log_sigma)
        want = stats.norm.logpdf(x, mean, np.exp(log_sigma.astype(np.float64))).sum()
        assert got.dtype == dtype
        chex.assert_trees_all_close(got, want.astype(dtype), **tol)


def test_gaussian_is_weighted_mse_plus_constant(dtype_and_tol):
    dtype, tol = dtype_and_tol
    r = _rng(2)
    x, mean = r.uniform(size=(2, *EVENT)).astype(dtype)
    sigma = dtype(0.3)
    d = x.size
    want = -lik.mse_weight(sigma) * np.sum((x - mean) ** 2) - d / 2 * np.log(2 * np.pi * sigma**2)
    chex.assert_trees_all_close(lik.gaussian_log_prob(x, mean, sigma=sigma), want, **tol)


def test_mse_weight():
    chex.assert_trees_all_close(lik.mse_weight(jnp.array([0.5, 2.0])), jnp.array([2.0, 0.125]))
    # σ² = 1/2 is the one σ for which summed MSE is exactly −log p up to a constant.
    chex.assert_trees_all_close(lik.mse_weight(jnp.sqrt(0.5)), 1.0, rtol=1e-6)


def test_optimal_gaussian_uses_per_example_mse(dtype_and_tol):
    dtype, tol = dtype_and_tol
    r = _rng(3)
    x, mean = r.uniform(size=(2, *EVENT)).astype(dtype)
    mse = np.mean((x.astype(np.float64) - mean) ** 2)
    got = jax.jit(lik.optimal_gaussian_log_prob)(x, mean)
    want = -x.size / 2 * (1.0 + np.log(2 * np.pi * mse))
    chex.assert_trees_all_close(got, want.astype(dtype), **tol)
    # σ* maximises the Gaussian log-density over a shared σ.
    for factor in (0.9, 1.1):
        log_sigma = np.log(factor * np.sqrt(mse)).astype(dtype)
        assert lik.gaussian_log_prob(x, mean, log_sigma=log_sigma) < got
    # A perfect reconstruction is floored at min_sigma, not +inf.
    floored = lik.optimal_gaussian_log_prob(x, x, min_sigma=1e-3)
    want_floor = -x.size / 2 * np.log(2 * np.pi * 1e-6)
    chex.assert_trees_all_close(floored, want_floor.astype(dtype), **tol)


def test_optimal_gaussian_gradient_matches_fixed_sigma():
    # ∂/∂σ log p = 0 at σ*, so differentiating through σ* gives the fixed-σ* gradient.
    r = _rng(4)
    x, mean = r.uniform(size=(2, *EVENT)).astype(np.float32)
    log_sigma_star = 0.5 * np.log(np.mean((x - mean) ** 2))
    got = jax.grad(lik.optimal_gaussian_log_prob, argnums=1)(x, mean)
    want = jax.grad(_gaussian, argnums=1)(x, mean, log_sigma_star)
    chex.assert_trees_all_close(got, want, rtol=1e-4)


def test_bernoulli_matches_scipy(dtype_and_tol):
    dtype, tol = dtype_and_tol
    r = _rng(5)
    x = r.integers(0, 2, size=EVENT).astype(dtype)
    logits = (3.0 * r.normal(size=EVENT)).astype(dtype)
    got = jax.jit(lik.bernoulli_log_prob)(x, logits)
    want = stats.bernoulli.logpmf(x, special.expit(logits.astype(np.float64))).sum()
    chex.assert_trees_all_close(got, want.astype(dtype), **tol)


def test_continuous_bernoulli_matches_definition(dtype_and_tol):
    dtype, tol = dtype_and_tol
    r = _rng(6)
    x = r.uniform(size=EVENT).astype(dtype)
    logits = (r.choice([-1, 1], size=EVENT) * r.uniform(0.05, 8.0, size=EVENT)).astype(dtype)
    got = jax.jit(lik.continuous_bernoulli_log_prob)(x, logits)
    want = _cb_log_prob_numpy(x.astype(np.float64), logits.astype(np.float64))
    chex.assert_trees_all_close(got, want.astype(dtype), **tol)


@pytest.mark.parametrize("logits", [-50.0, -5.0, -1e-7, 0.0, 1e-7, 5.0, 50.0])
def test_continuous_bernoulli_normalised_and_mean_by_quadrature(logits):
    with jax.enable_x64(True):
        log_prob = jax.jit(lik.continuous_bernoulli_log_prob)
        eta = np.array([logits])

        def density(x):
            return float(np.exp(log_prob(np.array([x]), eta)))

        total, _ = integrate.quad(density, 0.0, 1.0, limit=200, epsabs=1e-12, epsrel=1e-12)
        first_moment, _ = integrate.quad(
            lambda x: x * density(x), 0.0, 1.0, limit=200, epsabs=1e-12, epsrel=1e-12
        )
        np.testing.assert_allclose(total, 1.0, rtol=1e-9)
        mean = lik.continuous_bernoulli_mean(jnp.asarray(eta))
        chex.assert_shape(mean, (1,))
        np.testing.assert_allclose(float(mean[0]), first_moment, rtol=1e-9, atol=1e-12)


def test_continuous_bernoulli_smooth_across_series_threshold():
    # The normaliser and mean switch from Taylor series to closed form at |logits| = 0.5 and 1;
    # both sides must agree with the float64 closed form.
    with jax.enable_x64(True):
        eta = np.array([-1.0001, -0.9999, -0.5001, -0.4999, -0.2, 0.2, 0.4999, 0.5001, 0.9999])
        x = np.full_like(eta, 0.3)
        got = jax.vmap(lik.continuous_bernoulli_log_prob)(x[:, None], eta[:, None])
        want = [_cb_log_prob_numpy(xi, e) for xi, e in zip(x, eta, strict=True)]
        chex.assert_trees_all_close(got, np.array(want), rtol=1e-12)
        u = eta / 2
        chex.assert_trees_all_close(
            lik.continuous_bernoulli_mean(eta), 0.5 + 0.5 * (1 / np.tanh(u) - 1 / u), rtol=1e-12
        )


def test_laplace_matches_scipy(dtype_and_tol):
    dtype, tol = dtype_and_tol
    r = _rng(7)
    x, loc = r.normal(size=(2, *EVENT)).astype(dtype)
    for log_scale in (dtype(0.4), (0.5 * r.normal(size=EVENT)).astype(dtype)):
        got = jax.jit(lik.laplace_log_prob)(x, loc, log_scale)
        want = stats.laplace.logpdf(x, loc, np.exp(log_scale.astype(np.float64))).sum()
        chex.assert_trees_all_close(got, want.astype(dtype), **tol)


def test_discretized_logistic_matches_scipy(dtype_and_tol):
    dtype, tol = dtype_and_tol
    r = _rng(8)
    x = (r.integers(0, 256, size=EVENT) / 255.0).astype(dtype)
    x[0, 0, :] = [0.0, 1.0]  # both edge bins
    loc = (x + 0.05 * r.normal(size=EVENT)).astype(dtype)
    log_scale = np.log(r.uniform(0.01, 0.2, size=EVENT)).astype(dtype)
    got = jax.jit(lik.discretized_logistic_log_prob)(x, loc, log_scale)
    want = _disc_logistic_log_prob_scipy(
        x.astype(np.float64), loc.astype(np.float64), np.exp(log_scale.astype(np.float64))
    )
    chex.assert_trees_all_close(got, want.astype(dtype), **tol)


_all_bins_log_prob = jax.jit(
    jax.vmap(lik.discretized_logistic_log_prob, in_axes=(0, None, None)),
)


@pytest.mark.parametrize(
    "loc,log_scale",
    [(0.5, -3.0), (0.0, -1.0), (1.0, 0.5), (-0.7, -2.0), (1.8, -4.0), (0.3, -12.0), (0.5, 3.0)],
)
def test_discretized_logistic_sums_to_one(loc, log_scale):
    grid = _grid().astype(np.float32)
    per_bin = _all_bins_log_prob(grid[:, None], jnp.array([loc], jnp.float32), log_scale)
    chex.assert_shape(per_bin, (256,))
    chex.assert_tree_all_finite(per_bin)
    chex.assert_trees_all_close(jax.nn.logsumexp(per_bin), 0.0, atol=1e-5)


def test_discretized_logistic_mean_matches_bin_probabilities():
    grid = _grid()
    with jax.enable_x64(True):
        for loc, log_scale in [(0.3, -3.0), (-0.2, -1.0), (1.1, -5.0)]:
            per_bin = _all_bins_log_prob(grid[:, None], np.array([loc]), np.float64(log_scale))
            want = np.sum(grid * np.exp(per_bin))
            got = lik.discretized_logistic_mean(np.array([loc]), np.float64(log_scale))
            chex.assert_trees_all_close(got, np.array([want]), rtol=1e-10)


# ------------------------------------------------------------------------------------ extremes


def _assert_finite_with_grad(fn, *args):
    value, grads = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(args)))))(*args)
    chex.assert_tree_all_finite((value, grads))


@pytest.mark.parametrize("dtype", ["float32", pytest.param("float64", marks=pytest.mark.slow)])
def test_extremes_are_finite_with_finite_gradients(dtype):
    with jax.enable_x64(dtype == "float64"):
        dtype = jnp.dtype(dtype)
        x_bin = jnp.array([0.0, 1.0, 0.0, 1.0], dtype)
        big = jnp.array([100.0, -100.0, -100.0, 100.0], dtype)
        _assert_finite_with_grad(lik.bernoulli_log_prob, x_bin, big)
        x_unit = jnp.array([0.0, 1.0, 0.5, 0.2, 0.9, 0.3, 0.0, 1.0], dtype)
        eta = jnp.array([100.0, -100.0, 1e-7, -1e-7, 0.0, 1e-30, 1e4, -1e4], dtype)
        _assert_finite_with_grad(lik.continuous_bernoulli_log_prob, x_unit, eta)
        chex.assert_tree_all_finite(jax.jacfwd(lik.continuous_bernoulli_mean)(eta))
        x = jnp.array([0.1, 0.9, 0.5, 0.3], dtype)
        mean = jnp.array([0.2, 0.4, 0.5, 0.3], dtype)
        for sigma in (1e-4, 1e4):
            log_sigma = jnp.log(jnp.asarray(sigma, dtype))
            _assert_finite_with_grad(_gaussian, x, mean, log_sigma)
            _assert_finite_with_grad(lik.laplace_log_prob, x, mean, log_sigma)
        _assert_finite_with_grad(lik.optimal_gaussian_log_prob, x, mean)
        _assert_finite_with_grad(lik.optimal_gaussian_log_prob, x, x)
        # Edge bins far from loc, interior bins far from loc, tiny and huge scales.
        x_disc = jnp.array([0.0, 1.0, 0.0, 1.0, 128 / 255, 3 / 255], dtype)
        loc = jnp.array([1.0, 0.0, 5.0, -5.0, 0.9, 0.5], dtype)
        for log_scale in (-12.0, -3.0, 5.0):
            _assert_finite_with_grad(
                lik.discretized_logistic_log_prob, x_disc, loc, jnp.asarray(log_scale, dtype)
            )


def test_continuous_bernoulli_near_zero_logits_is_uniform():
    # CB(λ = ½) is the uniform density: log p = 0 for every x, and ∂log p/∂η = x − ½ at η = 0.
    x = jnp.array([0.1, 0.5, 0.9])
    value_and_grad = jax.jit(jax.value_and_grad(lik.continuous_bernoulli_log_prob, argnums=1))
    for eta in (0.0, 1e-7, -1e-7):
        logits = jnp.full(3, eta, jnp.float32)
        value, grad = value_and_grad(x, logits)
        chex.assert_trees_all_close(value, 0.0, atol=1e-6)
        chex.assert_trees_all_close(grad, x - 0.5, atol=1e-6)
        chex.assert_trees_all_close(lik.continuous_bernoulli_mean(logits), jnp.full(3, 0.5))


# ------------------------------------------------------------------- scalar, batch, shape checks


def test_scalar_event():
    x, m = jnp.float32(0.3), jnp.float32(0.1)
    got = jax.jit(_gaussian)(x, m, jnp.float32(0.0))
    chex.assert_shape(got, ())
    chex.assert_trees_all_close(got, stats.norm.logpdf(0.3, 0.1).astype(np.float32), rtol=1e-6)
    chex.assert_shape(lik.continuous_bernoulli_log_prob(x, m), ())
    chex.assert_shape(lik.discretized_logistic_log_prob(jnp.float32(1.0), m, -2.0), ())


BATCHED_CASES = {
    "gaussian": lambda x, p: lik.gaussian_log_prob(x, p, log_sigma=jnp.log(0.3)),
    "optimal_gaussian": lik.optimal_gaussian_log_prob,
    "bernoulli": lambda x, p: lik.bernoulli_log_prob(jnp.round(x), p),
    "continuous_bernoulli": lik.continuous_bernoulli_log_prob,
    "laplace": lambda x, p: lik.laplace_log_prob(x, p, -1.0),
    "discretized_logistic": lambda x, p: lik.discretized_logistic_log_prob(
        jnp.round(x * 255) / 255, p, -3.0
    ),
}


@pytest.mark.parametrize("name", list(BATCHED_CASES))
def test_vmap_equals_loop(name):
    fn = BATCHED_CASES[name]
    r = _rng(9)
    x = r.uniform(size=(5, *EVENT)).astype(np.float32)
    params = r.uniform(size=(5, *EVENT)).astype(np.float32)
    batched = jax.jit(jax.vmap(fn))(x, params)
    chex.assert_shape(batched, (5,))
    loop = jnp.stack([fn(x[i], params[i]) for i in range(5)])
    chex.assert_trees_all_close(batched, loop, rtol=1e-6)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, p: lik.gaussian_log_prob(x, p, log_sigma=0.0),
        lik.optimal_gaussian_log_prob,
        lik.bernoulli_log_prob,
        lik.continuous_bernoulli_log_prob,
        lambda x, p: lik.laplace_log_prob(x, p, 0.0),
        lambda x, p: lik.discretized_logistic_log_prob(x, p, 0.0),
    ],
)
def test_shape_mismatch_raises(fn):
    x = jnp.zeros((4, 3))
    for bad in (jnp.zeros((3,)), jnp.zeros((1, 3)), jnp.zeros((2, 4, 3))):
        with pytest.raises(ValueError, match="shape"):
            fn(x, bad)
        with pytest.raises(ValueError, match="shape"):
            jax.jit(fn)(x, bad)


def test_log_scale_shape_mismatch_raises():
    x = jnp.zeros((4, 3))
    for fn in (_gaussian, lik.laplace_log_prob, lik.discretized_logistic_log_prob):
        with pytest.raises(ValueError, match="must be a scalar or have the shape of x"):
            fn(x, x, jnp.zeros((3,)))


# ------------------------------------------------------------------------------------ samplers


def test_samplers_match_means_and_support():
    n = 20_000
    keys = jax.random.split(jax.random.key(0), 5)
    for key, eta in zip(keys[:3], (3.0, -20.0, 1e-5), strict=True):
        samples = lik.continuous_bernoulli_sample(key, jnp.full(n, eta))
        assert float(samples.min()) >= 0.0 and float(samples.max()) <= 1.0
        want = float(lik.continuous_bernoulli_mean(jnp.array(eta)))
        np.testing.assert_allclose(float(samples.mean()), want, atol=0.01)
    # CB(λ) has CDF (λ^x (1−λ)^(1−x) + λ − 1)/(2λ − 1): compare by Kolmogorov–Smirnov.
    lam = special.expit(3.0)
    samples = lik.continuous_bernoulli_sample(keys[0], jnp.full(n, 3.0))
    cdf = lambda x: (lam**x * (1 - lam) ** (1 - x) + lam - 1) / (2 * lam - 1)
    assert stats.kstest(np.asarray(samples, np.float64), cdf).pvalue > 1e-3

    loc, log_scale = jnp.full(n, 0.4), jnp.float32(-2.5)
    disc = lik.discretized_logistic_sample(keys[3], loc, log_scale)
    np.testing.assert_allclose(np.asarray(disc) * 255, np.round(np.asarray(disc) * 255), atol=1e-4)
    np.testing.assert_allclose(
        float(disc.mean()), float(lik.discretized_logistic_mean(loc, log_scale)[0]), atol=0.01
    )
    lap = lik.laplace_sample(keys[4], jnp.full(n, 1.0), jnp.log(0.5))
    np.testing.assert_allclose(float(lap.mean()), 1.0, atol=0.02)
    np.testing.assert_allclose(float(lap.std()), 0.5 * np.sqrt(2), rtol=0.03)


# ------------------------------------------------------------------------------------ registry


SUPPORT_CHECKS = {
    "real": lambda s: True,
    "unit": lambda s: bool(jnp.all((s >= 0) & (s <= 1))),
    "binary": lambda s: bool(jnp.all((s == 0) | (s == 1))),
    "discrete": lambda s: bool(
        jnp.all((s >= 0) & (s <= 1)) and jnp.allclose(s * 255, jnp.round(s * 255), atol=1e-4)
    ),
}


def test_registry_names_and_contract():
    assert list(lik.LIKELIHOODS) == list(LIKELIHOOD_NAMES)
    for name, entry in lik.LIKELIHOODS.items():
        assert lik.get_likelihood(name) is entry and entry.name == name
        assert entry.num_outputs == (2 if entry.scale == "decoder" else 1)
        assert entry.support in SUPPORT_CHECKS


@pytest.mark.parametrize("name", list(lik.LIKELIHOODS))
def test_registry_entry_runs(name):
    entry = lik.get_likelihood(name)
    r = _rng(10)
    out = r.normal(size=(entry.num_outputs, *EVENT)).astype(np.float32)
    if entry.scale == "decoder":
        out[1] = np.clip(out[1], -4.0, -1.0)
    log_sigma = np.full(EVENT, -1.0, np.float32) if entry.scale == "per_pixel" else np.float32(-1.0)
    x = {
        "real": r.normal(size=EVENT),
        "unit": r.uniform(size=EVENT),
        "binary": r.integers(0, 2, size=EVENT),
        "discrete": r.integers(0, 256, size=EVENT) / 255,
    }[entry.support].astype(np.float32)

    log_prob = jax.jit(entry.log_prob)(x, out, log_sigma)
    chex.assert_shape(log_prob, ())
    chex.assert_tree_all_finite(log_prob)
    chex.assert_tree_all_finite(jax.grad(entry.log_prob, argnums=(1, 2))(x, out, log_sigma))
    mean = jax.jit(entry.mean)(out, log_sigma)
    sample = jax.jit(entry.sample)(jax.random.key(1), out, log_sigma)
    chex.assert_shape((mean, sample), EVENT)
    chex.assert_tree_all_finite((mean, sample))
    assert SUPPORT_CHECKS[entry.support](sample)
    if entry.support != "real":
        assert SUPPORT_CHECKS["unit"](mean)
    # The vmapped batch is how the ELBO uses it.
    batched = jax.vmap(entry.log_prob, in_axes=(0, 0, None))(
        np.stack([x, x]), np.stack([out, out]), log_sigma
    )
    chex.assert_trees_all_close(batched, jnp.stack([log_prob, log_prob]), rtol=1e-6)
    with pytest.raises(ValueError, match=name):
        entry.log_prob(x, np.zeros((3, *EVENT), np.float32), log_sigma)


def test_registry_log_sigma_is_used_only_where_declared():
    r = _rng(11)
    x = r.uniform(size=EVENT).astype(np.float32)
    for entry in lik.LIKELIHOODS.values():
        out = r.uniform(size=(entry.num_outputs, *EVENT)).astype(np.float32)
        a = entry.log_prob(x, out, np.float32(-1.0))
        b = entry.log_prob(x, out, np.float32(0.5))
        if entry.scale in ("fixed", "shared", "per_pixel", "optimal"):
            assert not np.isclose(a, b)
        else:
            assert a == b


@pytest.mark.parametrize("name", list(lik.LIKELIHOODS))
def test_registry_log_prob_is_normalised_in_x(name):
    """What evaluation scores test data with integrates (sums) to 1 over x in one dimension,
    given the decoder output and the model's σ — the optimal-σ entry included: its σ is one it
    carries, not one read off the x it scores."""
    entry = lik.get_likelihood(name)
    out = np.array([0.3, -2.0][: entry.num_outputs], np.float32).reshape(entry.num_outputs, 1)
    log_sigma = np.full((1,), -2.0, np.float32) if entry.scale == "per_pixel" else np.float32(-2.0)

    def density(x):
        return float(np.exp(entry.log_prob(np.array([x], np.float32), out, log_sigma)))

    if entry.support == "binary":
        total = density(0.0) + density(1.0)
    elif entry.support == "discrete":
        total = sum(density(k / 255) for k in range(256))
    elif entry.support == "unit":
        total = integrate.quad(density, 0.0, 1.0, limit=200)[0]
    else:  # a scale of e^-2 ≈ 0.135 around 0.3: the mass lies well inside ±3
        total = integrate.quad(density, -3.0, 3.0, points=[0.3], limit=200)[0]
    assert abs(total - 1.0) < 1e-3, (name, total)


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")  # the 1/|x| peak
def test_optimal_sigma_objective_is_not_a_density():
    """σ*² read off the scored x makes the optimal-σ objective integrate to far more than 1 —
    why it may train a model but never score one."""
    total = integrate.quad(
        lambda x: float(np.exp(lik.optimal_gaussian_log_prob(np.float32([x]), np.float32([0.3])))),
        -3.0,
        3.0,
        points=[0.3],
        limit=400,
    )[0]
    assert total > 2.0


def test_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match="likelihood.name='nope' is not known; allowed:") as err:
        lik.get_likelihood("nope")
    message = str(err.value)
    assert message.startswith("likelihood.name='nope' is not known; allowed: ")
    for name in lik.LIKELIHOODS:
        assert name in message


def test_readme_library_snippet_runs_and_is_the_exact_gaussian_log_density():
    """README's five-line library use, executed as written, against scipy."""
    import pathlib
    import re

    from scipy import stats

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "likelihoods" in b)
    scope: dict = {}
    exec(block, scope)
    expected = stats.norm(0.45, 0.1).logpdf(np.full((28, 28, 1), 0.5)).sum()
    np.testing.assert_allclose(float(scope["log_p"]), expected, rtol=1e-5)
    x = np.stack([np.asarray(scope["x"])] * 3)
    batched = scope["batched"](x, x - 0.05)
    np.testing.assert_allclose(np.asarray(batched), expected, rtol=1e-5)


def test_the_gaussian_takes_its_scale_by_name_only():
    """σ = 0.1 cannot be passed where log σ is meant: the scale is keyword-only, one of two."""
    x, mean = jnp.full((3,), 0.5), jnp.full((3,), 0.4)
    by_sigma = lik.gaussian_log_prob(x, mean, sigma=0.1)
    by_log = lik.gaussian_log_prob(x, mean, log_sigma=jnp.log(0.1))
    chex.assert_trees_all_close(by_sigma, by_log, rtol=1e-6)
    np.testing.assert_allclose(by_sigma, stats.norm(0.4, 0.1).logpdf(np.full(3, 0.5)).sum(), 1e-5)
    with pytest.raises(TypeError, match="positional"):
        lik.gaussian_log_prob(x, mean, 0.1)
    for scales in ({}, {"sigma": 0.1, "log_sigma": 0.0}):
        with pytest.raises(TypeError, match="exactly one of log_sigma= or sigma="):
            lik.gaussian_log_prob(x, mean, **scales)
    with pytest.raises(ValueError, match=r"sigma has shape \(2,\); it must be"):  # not broadcast
        lik.gaussian_log_prob(x, mean, sigma=jnp.ones(2))


# ------------------------------------------------------------------------ per-element log-probs


@pytest.mark.parametrize("name", list(lik.LIKELIHOODS))
def test_elementwise_log_prob_sums_to_the_scalar(name):
    entry = lik.get_likelihood(name)
    r = _rng(12)
    out = r.uniform(0.05, 0.95, size=(entry.num_outputs, *EVENT)).astype(np.float32)
    if entry.scale == "decoder":
        out[1] = -3.0
    log_sigma = np.log(r.uniform(0.1, 0.4, size=EVENT)).astype(np.float32)
    if entry.scale != "per_pixel":
        log_sigma = np.float32(-1.5)
    x = (r.integers(0, 256, size=EVENT) / 255).astype(np.float32)
    if entry.binary_data:
        x = np.round(x)
    terms = jax.jit(lik.elementwise_log_prob, static_argnums=0)(entry, x, out, log_sigma)
    chex.assert_shape(terms, EVENT)
    chex.assert_trees_all_close(jnp.sum(terms), entry.log_prob(x, out, log_sigma), rtol=1e-5)


def test_elementwise_gaussian_matches_scipy_per_pixel():
    r = _rng(13)
    x, mean = r.uniform(size=(2, *EVENT))
    with jax.enable_x64(True):
        terms = lik.elementwise_log_prob(lik.get_likelihood("gaussian"), x, mean[None], np.log(0.2))
    np.testing.assert_allclose(terms, stats.norm.logpdf(x, mean, 0.2), rtol=1e-12)


def test_elementwise_log_prob_refuses_a_mismatched_output():
    entry = lik.get_likelihood("gaussian_decoder")
    x = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match=r"'gaussian_decoder' expects decoder output of shape"):
        lik.elementwise_log_prob(entry, x, jnp.zeros((1, 4, 3)), 0.0)
    with pytest.raises(ValueError, match="must be a scalar or have the shape of x"):
        lik.elementwise_log_prob(entry, x, jnp.zeros((2, 4, 3)), jnp.zeros(3))


def test_elementwise_log_prob_vmapped_over_images_with_a_decoder_scale():
    entry = lik.get_likelihood("gaussian_decoder")
    r = _rng(14)
    x = r.uniform(size=(3, *EVENT)).astype(np.float32)
    out = np.stack([r.uniform(size=(3, *EVENT)), np.full((3, *EVENT), -2.0)], axis=1)
    out = out.astype(np.float32)
    terms = jax.jit(jax.vmap(lambda x_, o: lik.elementwise_log_prob(entry, x_, o, 0.0)))(x, out)
    chex.assert_shape(terms, (3, *EVENT))
    want = stats.norm.logpdf(x, out[:, 0], np.exp(-2.0))
    chex.assert_trees_all_close(terms, want.astype(np.float32), rtol=1e-5, atol=1e-5)

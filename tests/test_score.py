"""vae_jax.score and experiments/score.py: an honest likelihood for a VAE trained anywhere.

Expected values come from the project's own evaluation of a model it trained (the same keys, so
the same numbers), from the exact marginal likelihood of a linear Gaussian decoder (scipy's
multivariate normal: the IWAE bound must sit below it and close to it), and from the same model
written in NumPy and in JAX (the host path and the jitted path must agree).
"""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, assert_one_line_error, cli_env, tiny_config
from scipy import stats

import vae_jax
from vae_jax import evaluate, experiment, models, runner, train
from vae_jax.errors import InputError
from vae_jax.objective import make_hyper
from vae_jax.scorable import of_problem

# --------------------------------------------------------------- a model the project trained


@pytest.fixture(scope="module")
def trained():
    """TINY (digits, 3 latents, σ = 0.1) trained 20 steps by the project's own train chunk, and
    evaluated by `runner.make_member_evaluation` as a run evaluates it."""
    config = tiny_config(eval__iwae_samples=8)
    problem = experiment.build_problem(config)
    state = train.create_train_state(problem, train.make_optimizer(config), jax.random.key(0))
    hyper = make_hyper(0.1, 1.0)
    chunk = jax.jit(train.make_train_chunk(problem, 20))
    state, _ = chunk(state, jnp.asarray(problem.train_x), hyper, jax.random.key(1))
    eval_rng = jax.random.key(2)
    member = runner.make_member_evaluation(config, problem)
    outputs, scales = member(state.params, hyper, eval_rng, *runner.device_splits(problem))
    model, params = problem.model, state.params
    encode = jax.vmap(lambda x: model.apply(params, x, method=models.VAE.encode))
    decode = jax.vmap(lambda z: model.apply(params, z, method=models.VAE.decode)[0])
    return dict(
        config=config,
        problem=problem,
        params=params,
        outputs=jax.device_get(outputs),
        scales=scales,
        results=evaluate.summarize(jax.device_get(outputs), problem),
        eval_rng=eval_rng,
        encode=encode,
        decode=decode,
    )


@pytest.mark.slow  # trains and compiles a model (or runs a CLI); CI runs it
def test_a_project_model_scores_what_the_projects_evaluation_scores(trained):
    """Given the member's draws (`evaluate.member_keys`: the evaluation decides them), the
    public score of the member's encode/decode callables is the evaluation's refit, number for
    number: one pipeline (`evaluate.make_refit`, `make_evaluate`, `set_summary`) scores both."""
    problem, config = trained["problem"], trained["config"]
    ours = vae_jax.score(
        trained["encode"], trained["decode"], problem.val_x, problem.test_x,
        num_samples=8, num_bins=17, keys=evaluate.member_keys(trained["eval_rng"]).refit,
        batch_size=evaluate.eval_batch_size(config, 64),
    )  # fmt: skip
    results = trained["results"]
    assert ours["sigma_refit"] == results["sigma_refit"]
    for key in ("iwae_nll", "bits_per_dim", "elbo"):
        assert ours[f"test/{key}"] == results[f"test/{key}_refit"], key
    refit = evaluate.set_summary(trained["outputs"]["test_refit"], of_problem(problem))
    for key in ("kl", "active_units", "recon_mse"):
        assert ours[f"test/{key}"] == refit[key], key


@pytest.mark.slow  # builds the digits feature network (a few seconds) in this worker
def test_a_project_models_sample_metrics_are_those_of_the_sweeps_program(trained, data_dir):
    """The member's callables through `vae_jax.score`'s sample metrics and the member through
    the sweep's (`make_sample_quality`), at one scale and one key: the same numbers."""
    from vae_jax import data, features, sample_quality
    from vae_jax.scoring import as_scorable

    problem = trained["problem"]
    net = features.feature_network("digits", validation_fraction=0.1, data_dir=data_dir)
    labels = data.load_labels("digits", "test", data_dir=data_dir)
    log_scale, rng = jnp.float32(np.log(0.2)), jax.random.key(9)
    member = sample_quality.make_sample_quality(problem, net, labels, num_examples=100)
    params = jax.tree.map(lambda a: a[None], trained["params"])
    sweep = member(params, log_scale[None], rng[None]).rows()[0]
    model = as_scorable(
        trained["encode"], trained["decode"], problem.test_x[:2], likelihood="gaussian",
        scale="shared", dequantize=True, num_bins=17, batch_size=64,
    )  # fmt: skip
    ours = sample_quality.callable_sample_metrics(
        model, problem.test_x, net, log_scale=log_scale, rng=rng, labels=labels, num_examples=100
    )
    assert set(ours) == set(sweep) and "test/recon_accuracy" in ours
    for key, value in sweep.items():
        assert ours[key] == value, key


@pytest.mark.slow  # the default suite keeps a faster test of the same code
def test_the_public_score_agrees_with_evaluation_within_monte_carlo_error(trained):
    """`vae_jax.score` draws its own keys: the same NLL within 4 standard errors of the mean of
    the per-example differences (other dequantisation noise and other z, same images)."""
    problem = trained["problem"]
    results = vae_jax.score(
        trained["encode"], trained["decode"], problem.val_x, problem.test_x,
        num_samples=8, num_bins=17, batch_size=64, seed=3,
    )  # fmt: skip
    assert set(results) == {
        "sigma_refit",
        "test/iwae_nll",
        "test/bits_per_dim",
        "test/elbo",
        "test/kl",
        "test/active_units",
        "test/recon_mse",
    }
    spread = np.std(trained["outputs"]["test_refit"]["iwae"]) * math.sqrt(2 / len(problem.test_x))
    assert abs(results["test/iwae_nll"] - trained["results"]["test/iwae_nll_refit"]) < 4 * spread
    assert results["sigma_refit"] == pytest.approx(trained["results"]["sigma_refit"], rel=0.05)
    assert results["test/active_units"] == trained["results"]["test/active_units"]


# ------------------------------------------------------------- a linear Gaussian VAE in NumPy

# x = μ + W z + ε, z ~ N(0, I_k), ε ~ N(0, σ²I_D), W with orthogonal columns: the exact posterior
# is then diagonal, N(M⁻¹Wᵀ(x − μ), σ²M⁻¹) with M = WᵀW + σ²I, and the encoder below returns it.
DIMS, LATENTS, SIGMA = 16, 3, 0.05


def linear_vae(seed: int = 0):
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(DIMS, LATENTS)))
    w = basis * np.array([0.12, 0.08, 0.05])
    mu = np.full(DIMS, 0.5)
    m_diag = np.sum(w**2, axis=0) + SIGMA**2

    def encode(x):
        x = np.asarray(x).reshape(len(x), DIMS)
        mean = (x - mu) @ w / m_diag
        return mean, np.broadcast_to(np.log(SIGMA**2 / m_diag), mean.shape)

    def decode(z):
        return (mu + np.asarray(z) @ w.T).reshape(len(z), 4, 4, 1)

    def draw(n):
        x = mu + rng.normal(size=(n, LATENTS)) @ w.T + SIGMA * rng.normal(size=(n, DIMS))
        return np.clip(x, 0, 1).reshape(n, 4, 4, 1).astype(np.float32)

    return encode, decode, draw, w, mu


def test_numpy_callables_score_below_and_close_to_the_exact_marginal_likelihood():
    encode, decode, draw, w, mu = linear_vae()
    x_val, x_test = draw(400), draw(200)
    results = vae_jax.score(encode, decode, x_val, x_test, dequantize=False, num_samples=50)
    sigma = results["sigma_refit"]
    assert sigma == pytest.approx(SIGMA, rel=0.1)  # σ̂ of the residuals: the true σ, roughly
    covariance = w @ w.T + sigma**2 * np.eye(DIMS)  # scipy's density at the fitted σ
    exact = stats.multivariate_normal(mu, covariance).logpdf(x_test.reshape(-1, DIMS))
    nll_exact = -float(np.mean(exact))
    # A lower bound on log p, within a few hundredths of a nat at K = 50 (q is near p(z|x)).
    assert nll_exact - 1e-3 <= results["test/iwae_nll"] <= nll_exact + 0.05
    expected_bpd = (nll_exact + DIMS * math.log(256)) / (DIMS * math.log(2))
    assert results["test/bits_per_dim"] == pytest.approx(expected_bpd, abs=0.01)
    assert results["test/active_units"] == LATENTS


@pytest.mark.slow  # the default suite keeps a faster test of the same code
def test_numpy_and_jax_callables_give_the_same_numbers():
    """The host path (pure_callback, batches) and the jitted path score the same model alike."""
    encode, decode, draw, w, mu = linear_vae(1)
    x_val, x_test = draw(100), draw(30)
    m_diag = jnp.sum(jnp.asarray(w) ** 2, axis=0) + SIGMA**2

    def jax_encode(x):
        mean = (x.reshape(x.shape[0], DIMS) - mu) @ w / m_diag
        return mean, jnp.broadcast_to(jnp.log(SIGMA**2 / m_diag), mean.shape)

    def jax_decode(z):
        return (mu + z @ w.T).reshape(z.shape[0], 4, 4, 1)

    options = dict(dequantize=False, num_samples=20, batch_size=16, scale="per_pixel")
    with pytest.raises(InputError, match="at least 100"):  # 100 validation images: enough
        vae_jax.score(encode, decode, x_val[:99], x_test, **options)
    host = vae_jax.score(encode, decode, x_val, x_test, **options)
    jitted = vae_jax.score(jax_encode, jax_decode, x_val, x_test, **options)
    for key in host:
        assert host[key] == pytest.approx(jitted[key], rel=1e-4, abs=1e-3), key


@pytest.mark.slow  # the default suite runs a flat decoder through README's snippet
def test_a_flat_decoder_output_scores_as_the_image_shaped_one():
    """decode(z) -> [N, D] is reshaped to x's images: the same numbers as [N, 4, 4, 1], on the
    host path (NumPy) and the jitted path (JAX)."""
    encode, decode, draw, w, mu = linear_vae(4)
    x_val, x_test = draw(20), draw(10)
    options = dict(dequantize=False, num_samples=4, batch_size=8)
    shaped = vae_jax.score(encode, decode, x_val, x_test, **options)
    flat = vae_jax.score(
        encode, lambda z: decode(z).reshape(len(z), DIMS), x_val, x_test, **options
    )
    assert flat == shaped
    m_diag = jnp.sum(jnp.asarray(w) ** 2, axis=0) + SIGMA**2

    def jax_encode(x):
        mean = (x.reshape(x.shape[0], DIMS) - mu) @ w / m_diag
        return mean, jnp.broadcast_to(jnp.log(SIGMA**2 / m_diag), mean.shape)

    jax_shaped = vae_jax.score(
        jax_encode, lambda z: (mu + z @ w.T).reshape(len(z), 4, 4, 1), x_val, x_test, **options
    )
    jax_flat = vae_jax.score(jax_encode, lambda z: mu + z @ w.T, x_val, x_test, **options)
    assert jax_flat == jax_shaped


@pytest.mark.slow  # the default suite keeps a faster test of the same code
def test_a_training_convention_is_scored_at_the_sigma_it_implied():
    encode, decode, draw, _, _ = linear_vae(2)
    x_val, x_test = draw(100), draw(50)
    convention = dict(recon="mean", kl_weight=0.05, batch_size=64)  # σ² = 0.05·16/2 = 0.4
    results = vae_jax.score(
        encode, decode, x_val, x_test, dequantize=False, num_samples=10, convention=convention
    )
    assert results["sigma_implied"] == pytest.approx(math.sqrt(0.05 * DIMS / 2))
    # At σ = 0.63 instead of ≈ 0.05 each pixel costs about log(σ/σ̂) − ½ + σ̂²/(2σ²) nats.
    per_pixel = math.log(0.632 / 0.05) - 0.5
    assert results["test/implied_cost"] == pytest.approx(DIMS * per_pixel, rel=0.1)
    assert results["test/implied_cost"] == pytest.approx(
        results["test/iwae_nll_implied"] - results["test/iwae_nll"]
    )
    with pytest.raises(InputError, match="pass likelihood='laplace'"):
        vae_jax.score(
            encode, decode, x_val, x_test, dequantize=False, convention="latent_diffusion"
        )


# ------------------------------------------------------------------------------ bad input


def _bad(fn_encode=None, fn_decode=None, **kwargs):
    encode, decode, draw, _, _ = linear_vae(3)
    x_val, x_test = kwargs.pop("x_val", draw(20)), kwargs.pop("x_test", draw(5))
    kwargs.setdefault("dequantize", False)
    vae_jax.score(fn_encode or encode, fn_decode or decode, x_val, x_test, num_samples=2, **kwargs)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize(
    "case, message",
    [
        (
            dict(fn_encode=lambda x: np.zeros((len(x), 3))),
            r"encode\(x\) must return \(mean, log_var\)",
        ),
        (
            dict(fn_encode=lambda x: (np.zeros((len(x), 3)), np.zeros((len(x), 2)))),
            r"encode\(x\) must return",
        ),
        (
            dict(fn_decode=lambda z: np.zeros((len(z), 4, 4))),
            r"decode\(z\) must return .* \(2, 4, 4, 1\)",
        ),
        (
            dict(fn_decode=lambda z: np.zeros((len(z), 15))),
            r"decode\(z\) returned 15 values per image, but x's images \(4, 4, 1\) have 16",
        ),
        (dict(fn_decode=lambda z: np.full((len(z), 4, 4, 1), np.nan)), "non-finite"),
        (
            dict(fn_encode=lambda x: (np.full((len(x), 3), np.inf), np.zeros((len(x), 3)))),
            "non-finite",
        ),
        (
            dict(x_test=np.full((5, 4, 4, 1), 1.5, np.float32)),
            r"x_test has values outside \[0, 1\]",
        ),
        (dict(x_val=np.full((5, 4, 4, 1), 0.5, np.float32)), "x_validation has 5 images; a shared"),
        (dict(dequantize=True), "not on the grid k/255"),
        (dict(likelihood="bernoulli"), "likelihood='bernoulli' is not known"),
        (dict(scale="per_example"), "scale='per_example' is not known"),
        (dict(convention=dict(error="bce")), "a BCE implies no scale"),
        (dict(fn_decode="not a function"), "is not callable"),
    ],
)
def test_bad_input_is_one_input_error_line(case, message):
    with pytest.raises(InputError, match=message) as raised:
        _bad(**case)
    assert "\n" not in str(raised.value)


# ---------------------------------------------------------------------------- the command line

MODEL_FILE = """
import numpy as np

_W = np.random.default_rng(0).normal(size=(64, 3)) * 0.1

def encode(x):
    x = np.asarray(x).reshape(len(x), 64)
    mean = (x - 0.3) @ _W
    return mean, np.full_like(mean, -2.0)

def decode(z):
    return np.clip(0.3 + np.asarray(z) @ _W.T, 0, 1).reshape(len(z), 8, 8, 1){suffix}
"""


def run_score(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "experiments" / "score.py"), *args],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # the default suite keeps a faster test of the same code
def test_cli_scores_a_numpy_model_file_and_refuses_a_bad_one_in_one_line(tmp_path):
    model = tmp_path / "my_vae.py"
    model.write_text(MODEL_FILE.format(suffix=""))
    proc = run_score(f"--model={model}", "--data=digits", "--num_samples=4", "--json")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert set(results) >= {"sigma_refit", "test/iwae_nll", "test/bits_per_dim", "test/kl"}
    assert math.isfinite(results["test/iwae_nll"]) and 0 < results["sigma_refit"] < 1
    broken = tmp_path / "broken_vae.py"
    broken.write_text(MODEL_FILE.format(suffix=".reshape(len(z), 64)[:, :60]"))
    assert_one_line_error(run_score(f"--model={broken}", "--data=digits"), "decode(z)")


@pytest.mark.slow
def test_cli_bad_flags_are_one_line_exit_2(tmp_path):
    from vae_jax import data

    data.load_numpy("digits", "test")  # built here, so no subprocess reports building it
    model = tmp_path / "my_vae.py"
    model.write_text(MODEL_FILE.format(suffix=""))
    proc = run_score(f"--model={model}", "--data=digits", "--convention=flax")
    assert_one_line_error(proc, "bernoulli", "likelihood='gaussian'")
    assert_one_line_error(run_score(f"--model={tmp_path}/none.py"), "--model", "no such file")
    assert_one_line_error(run_score(f"--model={model}", "--data=nope"), "--data=nope")
    assert_one_line_error(run_score(f"--model={model}", "--scale=pixel"), "--scale")


@pytest.mark.slow  # builds the digits feature network (a few seconds) in this worker
def test_a_feature_network_adds_the_sample_metrics_of_a_numpy_model():
    """A PCA VAE of the digits in NumPy, scored with the digits feature network: the sample
    metrics are there, and the reconstructions' Fréchet distance is the one recomputed here
    from the same uint8 images with scipy's matrix square root."""
    from scipy import linalg

    from vae_jax import data, features

    train_x = data.load_numpy("digits", "train").reshape(-1, 64)
    test_x = data.load_numpy("digits", "test")
    mu = train_x.mean(0)
    _, _, vt = np.linalg.svd(train_x - mu, full_matrices=False)
    w = vt[:8].T  # 64 × 8, orthonormal columns

    def encode(x):
        mean = (np.asarray(x).reshape(len(x), 64) - mu) @ w
        return mean, np.full_like(mean, -4.0)

    def decode(z):
        return np.clip(mu + np.asarray(z) @ w.T, 0, 1).reshape(len(z), 8, 8, 1)

    net = features.feature_network("digits", validation_fraction=0.1)
    labels = data.load_labels("digits", "test")
    results = vae_jax.score(
        encode,
        decode,
        test_x[:200],
        test_x,
        num_samples=4,
        num_bins=17,
        feature_net=net,
        labels=labels,
    )
    for name in ("prior_mean", "prior_sample", "reconstruction"):
        assert np.isfinite(results[f"test/fd_{name}"])
        assert 0.0 <= results[f"test/precision_{name}"] <= 1.0
    assert results["test/recon_accuracy"] > 0.5  # 8 principal components keep most digits
    recon = decode(encode(test_x)[0])
    as_uint8 = lambda x: np.round(255 * np.clip(x, 0, 1)).astype(np.uint8) / np.float32(255)
    f_recon = np.asarray(net.features(as_uint8(recon)), np.float64)
    f_real = np.asarray(net.features(as_uint8(test_x)), np.float64)
    mean_a, mean_b = f_recon.mean(0), f_real.mean(0)
    cov_a, cov_b = np.cov(f_recon, rowvar=False), np.cov(f_real, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    expected = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * root)
    np.testing.assert_allclose(results["test/fd_reconstruction"], expected, rtol=1e-3)

"""vae_jax.conventions and experiments/implied_sigma.py: loss conventions → σ, ELBO, verdicts.

Expected values come from the losses themselves, written out in NumPy as each convention defines
them, and from scipy's Gaussian density — never from the formula the module implements.
"""

import itertools
import math
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from scipy import stats

from vae_jax import conventions, elbo, likelihoods

REPO = pathlib.Path(__file__).resolve().parents[1]


def convention_loss(se_data, kl, *, recon, recon_weight, kl_weight, recon_batch, kl_batch):
    """The loss as a convention computes it, from per-example squared errors and KLs, [B]."""
    dims = se_data.shape[1]
    per_example = se_data.sum(axis=1) / (dims if recon == "mean" else 1)
    reduce = {"mean": np.mean, "sum": np.sum}
    return recon_weight * reduce[recon_batch](per_example) + kl_weight * reduce[kl_batch](kl)


def random_batch(rng, batch, dims):
    """Pixels in [0, 1], reconstructions, and per-example KLs that vary independently."""
    x = rng.uniform(size=(batch, dims))
    f = np.clip(x + rng.normal(scale=rng.uniform(0.05, 0.3), size=(batch, dims)), 0, 1)
    return x, f, rng.uniform(1.0, 50.0, size=batch)


CONVENTIONS = [
    dict(recon=r, recon_batch=rb, kl_batch=kb)
    for r, rb, kb in itertools.product(("sum", "mean"), ("mean", "sum"), ("mean", "sum"))
]


@pytest.mark.parametrize("convention", CONVENTIONS, ids=lambda c: "-".join(c.values()))
@pytest.mark.parametrize("data_range", [1.0, 2.0, 255.0])
def test_loss_is_a_fixed_multiple_of_the_negative_elbo_at_the_implied_sigma(convention, data_range):
    """Over batches whose squared errors and KLs vary independently, loss / (−ELBO − normaliser)
    is one positive constant only at the right σ (scipy's density on [0, 1] pixels)."""
    rng = np.random.default_rng(0)
    batch, dims = 8, 12
    kwargs = dict(convention, recon_weight=0.7, kl_weight=0.3)
    sigma = conventions.implied_sigma(dims, **kwargs, batch_size=batch, data_range=data_range)

    def neg_elbo_without_normaliser(x, f, kl, s):
        # −log N(x; f, s²) summed, minus its normaliser D·log(s·√(2π)) per example, plus the KL.
        return (
            -stats.norm.logpdf(x, f, s).sum()
            - x.size * math.log(s * math.sqrt(2 * math.pi))
            + kl.sum()
        )

    ratios, wrong = [], []
    for _ in range(4):
        x, f, _ = random_batch(rng, batch, dims)
        # KLs on the scale of the recon term, so that a wrong σ shows in either regime.
        kl = np.square(x - f).sum(axis=1) / (2 * sigma**2) * rng.uniform(0.2, 5.0, size=batch)
        # The loss sees the data on its own scale: width r, shifted anywhere, e.g. [−1, 1].
        loss = convention_loss(np.square((x - f) * data_range), kl, **kwargs)
        ratios.append(loss / neg_elbo_without_normaliser(x, f, kl, sigma))
        wrong.append(loss / neg_elbo_without_normaliser(x, f, kl, 1.1 * sigma))
    assert np.all(np.array(ratios) > 0)
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)
    assert np.ptp(wrong) / abs(wrong[0]) > 1e-3  # the check can fail: 1.1σ gives no constant


def test_summed_and_mean_mse_identities():
    for dims in (1, 64, 784, 3072):
        assert conventions.implied_sigma(dims) == pytest.approx(math.sqrt(0.5), rel=1e-12)
        assert conventions.implied_sigma(dims, recon="mean") == pytest.approx(
            math.sqrt(dims / 2), rel=1e-12
        )


def test_batch_size_matters_only_when_the_reductions_differ():
    for recon, kl in (("mean", "mean"), ("sum", "sum")):
        sigmas = {
            conventions.implied_sigma(784, recon_batch=recon, kl_batch=kl, batch_size=b)
            for b in (1, 7, 128)
        }
        assert len(sigmas) == 1
    # Recon averaged and KL summed over the batch: the KL weighs B times more, σ² = B/2.
    for b in (1, 7, 128):
        assert conventions.implied_sigma(
            784, recon_batch="mean", kl_batch="sum", batch_size=b
        ) == pytest.approx(math.sqrt(b / 2))
        assert conventions.implied_sigma(
            784, recon_batch="sum", kl_batch="mean", batch_size=b
        ) == pytest.approx(math.sqrt(0.5 / b))


def test_data_range_rescales_sigma_to_pixel_units():
    # [0, 255] data: summed SE is 255² times larger, so the same loss is a 255× smaller pixel σ.
    assert conventions.implied_sigma(784, data_range=255.0) == pytest.approx(math.sqrt(0.5) / 255)
    assert conventions.implied_sigma(784, recon="mean", data_range=2.0) == pytest.approx(
        math.sqrt(392) / 2
    )


def test_weights_scale_sigma_squared():
    assert conventions.implied_sigma(784, kl_weight=4.0) == pytest.approx(math.sqrt(2.0))
    assert conventions.implied_sigma(784, recon_weight=0.5) == pytest.approx(1.0)


def _batch_elbo(x_pixel, f_pixel, mean, log_var, sigma):
    """Mean per-example ELBO from the project's own densities, jitted and vmapped."""

    @jax.jit
    @jax.vmap
    def per_example(x, f, m, lv):
        log_p = likelihoods.gaussian_log_prob(x, f, np.float32(math.log(sigma)))
        return log_p - elbo.gaussian_kl(m, lv).sum()

    return float(np.mean(np.asarray(per_example(x_pixel, f_pixel, mean, log_var), np.float64)))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(recon="sum"),
        dict(recon="mean", kl_weight=0.00025),
        dict(recon="mean", recon_batch="mean", kl_batch="sum"),
        dict(recon="sum", recon_weight=0.5, recon_batch="sum", kl_batch="sum", data_range=2.0),
        dict(recon="mean", recon_batch="sum", kl_batch="mean", kl_weight=3.0, data_range=255.0),
    ],
    ids=["summed", "pytorch-vae", "sigma-vae-mse", "sum-sum-[-1,1]", "mixed-[0,255]"],
)
def test_loss_to_elbo_matches_gaussian_log_prob_and_gaussian_kl(kwargs):
    rng = np.random.default_rng(1)
    batch, dims, latents = 16, 20, 3
    x, f, _ = random_batch(rng, batch, dims)
    mean = rng.normal(size=(batch, latents))
    log_var = rng.normal(scale=0.5, size=(batch, latents))
    kl = 0.5 * np.sum(np.exp(log_var) + mean**2 - 1 - log_var, axis=1)  # closed form, NumPy
    full = dict(recon_weight=1.0, kl_weight=1.0, recon_batch="mean", kl_batch="mean")
    full.update({k: v for k, v in kwargs.items() if k != "data_range"})
    data_range = kwargs.get("data_range", 1.0)
    loss = convention_loss(np.square((x - f) * data_range), kl, **full)

    result = conventions.loss_to_elbo(float(loss), dims, **kwargs, batch_size=batch)
    sigma = conventions.implied_sigma(dims, **kwargs, batch_size=batch)
    f32 = np.float32
    expected = _batch_elbo(f32(x), f32(f), f32(mean), f32(log_var), sigma)
    assert result.sigma == sigma
    assert result.nats == pytest.approx(expected, rel=1e-5, abs=1e-3)
    assert result.bits_per_dim == pytest.approx(
        (-expected + dims * math.log(256)) / (dims * math.log(2)), rel=1e-5
    )


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(recon="avg"), "recon"),
        (dict(recon_batch="none"), "recon_batch"),
        (dict(kl_batch="batchmean"), "kl_batch"),
        (dict(kl_weight=0.0), "kl_weight"),
        (dict(recon_weight=-1.0), "recon_weight"),
        (dict(kl_weight=float("nan")), "kl_weight"),
        (dict(data_range=0), "data_range"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(kl_weight="1"), "kl_weight"),
    ],
)
def test_bad_input_raises_a_value_error_naming_the_argument(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}=.*(pass|must be)"):
        conventions.implied_sigma(784, **kwargs)


@pytest.mark.parametrize("num_dims", [0, -3, 784.0, True])
def test_bad_num_dims(num_dims):
    with pytest.raises(ValueError, match=r"^num_dims=.*positive integer"):
        conventions.implied_sigma(num_dims)


def test_loss_to_elbo_refuses_a_non_finite_loss():
    with pytest.raises(ValueError, match=r"^loss_value=inf must be finite"):
        conventions.loss_to_elbo(float("inf"), 784)


# σ each known code base implies for 784-dim [0, 1] data at its default batch size, worked out by
# hand from the quoted lines in docs/conventions.md.
KNOWN_SIGMA = {
    "pythae": 1.0,  # 0.5·SE summed, both terms averaged over the batch: σ² = 1
    "disentanglement_lib": math.sqrt(0.5),  # SE summed + β·KL, β = 1: σ² = β/2
    "pytorch_vae": math.sqrt(0.00025 * 784 / 2),  # mean over B·D + 0.00025·mean KL
    "sigma_vae_mse": math.sqrt(784 * 128 / 2),  # mean over B·D + KL summed over B = 128
    "pytorch_examples": None,  # BCE
    "keras": None,
    "flax": None,
}


def test_known_conventions_imply_the_sigma_worked_out_by_hand():
    assert {c.name for c in conventions.KNOWN_CONVENTIONS} == set(KNOWN_SIGMA)
    for convention in conventions.KNOWN_CONVENTIONS:
        sigma = conventions.convention_sigma(convention, 784)
        expected = KNOWN_SIGMA[convention.name]
        assert (sigma is None) == (expected is None), convention.name
        if expected is not None:
            assert sigma == pytest.approx(expected, rel=1e-12), convention.name


def test_docs_table_shows_each_conventions_sigma():
    doc = (REPO / "docs" / "conventions.md").read_text()
    for convention in conventions.KNOWN_CONVENTIONS:
        row = next((line for line in doc.splitlines() if f"`{convention.name}`" in line), None)
        assert row is not None, f"docs/conventions.md has no row for {convention.name}"
        assert convention.repo in row and convention.paths[0] in row
        sigma = conventions.convention_sigma(convention, 784)
        assert (f"{sigma:.3g}" if sigma is not None else "Bernoulli") in row


def test_marked_sigmas_are_the_gaussian_conventions_in_ascending_order():
    marks = conventions.marked_sigmas(784)
    gaussian = [c for c in conventions.KNOWN_CONVENTIONS if c.likelihood == "gaussian"]
    assert sorted(label for label, _ in marks) == sorted(c.label for c in gaussian)
    sigmas = [s for _, s in marks]
    assert sigmas == sorted(sigmas)
    by_label = dict(marks)
    pytorch_vae = conventions.get_convention("pytorch_vae")
    assert by_label[pytorch_vae.label] == pytest.approx(KNOWN_SIGMA["pytorch_vae"])
    # The sigma-vae MSE convention depends on the batch size; the others do not.
    at_32 = dict(conventions.marked_sigmas(784, batch_size=32))
    sigma_vae = conventions.get_convention("sigma_vae_mse").label
    assert at_32[sigma_vae] == pytest.approx(math.sqrt(784 * 32 / 2))
    assert at_32[pytorch_vae.label] == by_label[pytorch_vae.label]


# ------------------------------------------------------------------------------ the command line


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """experiments/implied_sigma.py in the repo root; data dir and JAX platform inherited."""
    return subprocess.run(
        [sys.executable, "experiments/implied_sigma.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args, names",
    [
        (["--recon=avg", "--num_dims=784"], "--recon"),
        (["--recon=mean", "--num_dims=784", "--kl_weight=-2"], "--kl_weight"),
        (["--recon=mean"], "--num_dims"),
        (["--num_dims=784", "--results=no/such/results.csv"], "--results"),
    ],
)
def test_cli_bad_flags_are_one_line_exit_2(args, names):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and names in lines[0], result.stderr
    assert result.stdout == ""


def test_cli_happy_path_with_data_results_and_loss(tmp_path):
    """PyTorch-VAE's convention on digits (D = 64): σ² = 0.00025·64/2 = 0.008."""
    sigma = math.sqrt(0.00025 * 64 / 2)
    header = (
        "group,likelihood,sigma,seed,status,extra,test/iwae_nll,test/active_units,test/recon_mse"
    )
    rows = [
        "gaussian,gaussian,0.05,0,ok,x,-10.0,4,0.010",
        "gaussian,gaussian,0.05,1,ok,x,-12.0,4,0.012",  # best: mean −11
        "gaussian,gaussian,0.2,0,ok,x,5.0,2,0.030",
        "gaussian,gaussian,0.02,0,stopped: non-finite,x,,,",
        "gaussian,gaussian,0.5,0,ok,x,40.0,0,0.070",
        "laplace,laplace,0.1,0,ok,x,-99.0,4,0.010",  # another family: never the best fixed σ
    ]
    results = tmp_path / "results.csv"
    results.write_text("\n".join([header, *rows]) + "\n")
    result = run_cli(
        "--convention=pytorch_vae",
        "--data=digits",
        f"--results={results}",
        "--loss_value=0.01",
        "--batch_size=32",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"σ = {sigma:.4g}" in out and "D = 64" in out and "batch 32" in out

    from vae_jax import data, linear

    x = data.load_numpy("digits", "train").reshape(-1, 64)
    kept = int(np.sum(np.asarray(linear.data_spectrum(x)[0]) > sigma**2))
    assert f"{kept} of 64 covariance eigenvalues exceed" in out

    elbo_nats = -0.01 / 0.00025 - 32 * math.log(2 * math.pi * sigma**2)
    assert f"ELBO {elbo_nats:.1f} nats" in out

    assert "best fixed σ = 0.05" in out and "test NLL -11.0 nats" in out
    assert f"σ = {sigma:.4g} lies between the measured σ = 0.05 and 0.2" in out
    assert "σ = 0.2: test NLL 5.0 nats (+16.0 against the best), 2.0 active units" in out
    assert "σ = 0.5:" not in out

"""vae_jax.conventions and experiments/implied_sigma.py: loss conventions → σ, ELBO, verdicts.

Expected values come from the losses themselves, written out in NumPy as each convention defines
them, and from scipy's Gaussian density — never from the formula the module implements.
"""

import csv
import itertools
import math

import jax
import numpy as np
import pytest
from conftest import REPO, run_cli
from scipy import stats

from vae_jax import conventions, elbo, likelihoods


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
        log_p = likelihoods.gaussian_log_prob(x, f, log_sigma=np.float32(math.log(sigma)))
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
        (dict(kl="avg"), "kl"),
        (dict(kl="mean", latent_dim=0), "latent_dim"),
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
    "latent_diffusion": None,  # L1: a Laplace decoder, no Gaussian σ
    "jax_ai_stack": None,  # BCE
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
        shown = {"gaussian": f"{sigma:.3g}" if sigma else "", "laplace": "Laplace"}
        assert shown.get(convention.likelihood, "Bernoulli") in row


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


# ---------------------------------------------------- the wider translator, each derived here


@pytest.mark.parametrize("kl", ["sum", "mean"])
@pytest.mark.parametrize("recon, recon_batch", [("sum", "mean"), ("mean", "sum")])
def test_l1_loss_is_a_fixed_multiple_of_the_negative_laplace_elbo_at_the_implied_b(
    kl, recon, recon_batch
):
    """loss = a·R(Σ|x − f|·r / D^m) + c·K(KL / k^n): only at the implied b is loss / (−ELBO −
    normaliser) one constant, −ELBO from scipy's Laplace density on [0, 1] pixels."""
    rng = np.random.default_rng(3)
    batch, dims, latents, r = 8, 12, 5, 2.0
    kwargs = dict(recon=recon, recon_batch=recon_batch, kl=kl, recon_weight=0.7, kl_weight=0.3)
    t = conventions.translate(
        dims, error="absolute", latent_dim=latents, batch_size=batch, data_range=r, **kwargs
    )
    assert t.likelihood == "laplace" and t.std == pytest.approx(math.sqrt(2) * t.scale)

    def loss(x, f, kl_per_latent):
        per_example = np.abs((x - f) * r).sum(axis=1) / (dims if recon == "mean" else 1)
        per_kl = kl_per_latent.sum(axis=1) / (latents if kl == "mean" else 1)
        reduce = {"mean": np.mean, "sum": np.sum}[recon_batch]
        return 0.7 * reduce(per_example) + 0.3 * np.mean(per_kl)

    def neg_elbo(x, f, kl_sum, b):  # −log Laplace minus its normaliser D·log 2b, plus KL
        return -stats.laplace.logpdf(x, f, b).sum() - x.size * math.log(2 * b) + kl_sum.sum()

    ratios, wrong = [], []
    for _ in range(4):
        x, f, _ = random_batch(rng, batch, dims)
        kl_per_latent = rng.uniform(0.1, 20.0, size=(batch, latents))
        value = loss(x, f, kl_per_latent)
        ratios.append(value / neg_elbo(x, f, kl_per_latent.sum(axis=1), t.scale))
        wrong.append(value / neg_elbo(x, f, kl_per_latent.sum(axis=1), 1.1 * t.scale))
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)
    assert np.ptp(wrong) / abs(wrong[0]) > 1e-3


def test_kl_averaged_over_latents_weighs_the_kl_k_times_less():
    # Summed SE + mean-over-k KL: the KL weight is c/k, so σ² = 1/(2k).
    for k in (1, 8, 32):
        assert conventions.implied_sigma(784, kl="mean", latent_dim=k) == pytest.approx(
            math.sqrt(1 / (2 * k))
        )
    with pytest.raises(ValueError, match=r"^latent_dim=None must be a positive integer"):
        conventions.implied_sigma(784, kl="mean")


def test_latent_diffusion_loss_is_a_laplace_beta_vae_with_beta_kl_weight():
    """contperceptual.py at perceptual_weight = 0: Σ(|x − x̂|/e^s + s)/B + c·Σ KL/B on [−1, 1]
    data. Per example that is −Σ log Laplace(x; x̂, e^s) − D·log 2 (scipy), so the loss is a
    β-VAE with β = c against its own Laplace, and the ELBO of b = c·e^s/2 in [0, 1] pixels."""
    rng = np.random.default_rng(4)
    batch, dims, s, c = 6, 10, -2.3, 1e-6
    ldm = conventions.get_convention("latent_diffusion")
    assert ldm.likelihood == "laplace" and ldm.learned_log_scale
    assert ldm.kwargs["kl_weight"] == c and ldm.kwargs["data_range"] == 2.0
    kwargs = dict(ldm.kwargs, recon_weight=math.exp(-s), batch_size=batch)
    t = conventions.translate(dims, **kwargs)
    assert t.scale == pytest.approx(c * math.exp(s) / 2)
    x, f, kl = random_batch(rng, batch, dims)
    x_data, f_data = 2 * x - 1, 2 * f - 1  # the code's [−1, 1] images
    nll = (np.abs(x_data - f_data) / math.exp(s) + s).sum() / batch  # the source, line for line
    loss = nll + c * kl.sum() / batch
    own = -stats.laplace.logpdf(x_data, f_data, math.exp(s)).sum() / batch - dims * math.log(2)
    assert nll == pytest.approx(own, rel=1e-12)
    # loss − D·s = c · mean_b[−log Laplace_b(x) − normaliser + KL] on [0, 1] pixels.
    # (Written out: scipy's log-density underflows at b ≈ 5·10⁻⁸.)
    log_laplace = -np.abs(x - f) / t.scale - math.log(2 * t.scale)
    pixel = -log_laplace.sum() / batch - dims * math.log(2 * t.scale)
    assert loss - dims * s == pytest.approx(c * (pixel + kl.mean()), rel=1e-9)


def test_free_bits_leave_sigma_and_bound_the_gap_to_the_elbo():
    rng = np.random.default_rng(5)
    plain = conventions.translate(784, recon="mean")
    t = conventions.translate(784, recon="mean", free_bits=0.5)
    assert t.scale == plain.scale and plain.is_elbo and not t.is_elbo
    kl = rng.uniform(0.0, 1.0, size=(64, 8)) * np.linspace(0.2, 3.0, 8)  # below λ and above
    batch_mean = kl.mean(axis=0)
    gap = np.maximum(0.5, batch_mean).sum() - batch_mean.sum()  # nats per example
    assert np.any(batch_mean < 0.5) and np.any(batch_mean > 0.5)
    assert 0 < gap <= 8 * 0.5
    with pytest.raises(ValueError, match=r"^free_bits=-1"):
        conventions.translate(784, free_bits=-1)


def test_bce_conventions_are_proper_elbos_only_at_beta_one():
    """BCE summed over pixels + KL is −ELBO of a Bernoulli decoder (scipy's log-pmf); the JAX AI
    Stack tutorial's mean BCE + 0.1·mean-over-8-latents KL is, ×64, BCE + 0.8·KL: β = 0.8."""
    for name in ("pytorch_examples", "keras", "flax"):
        t = conventions.convention_translation(conventions.get_convention(name), 784)
        assert t.likelihood == "bernoulli" and t.beta == pytest.approx(1.0) and t.is_elbo
    tutorial = conventions.convention_translation(conventions.get_convention("jax_ai_stack"), 64)
    assert tutorial.beta == pytest.approx(0.8) and not tutorial.is_elbo
    rng = np.random.default_rng(6)
    x = (rng.uniform(size=(16, 20)) > 0.5).astype(float)
    p = rng.uniform(0.05, 0.95, size=(16, 20))
    kl = rng.uniform(1.0, 9.0, size=16)
    bce = -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(axis=1)
    loss = bce.mean() + kl.mean()  # Keras' reductions
    result = conventions.loss_to_elbo(float(loss), 20, error="bce", batch_size=16)
    expected = np.mean(stats.bernoulli.logpmf(x, p).sum(axis=1) - kl)
    assert result.nats == pytest.approx(expected, rel=1e-9) and result.sigma is None
    with pytest.raises(ValueError, match="only β = 1 is an ELBO"):
        conventions.loss_to_elbo(1.0, 64, **conventions.get_convention("jax_ai_stack").kwargs)


# ------------------------------------------------------------------------------ the command line


# experiments/implied_sigma.py takes no --config: conftest's `run_cli(..., config=None, script=)`.
IMPLIED_SIGMA = REPO / "experiments" / "implied_sigma.py"


@pytest.mark.parametrize(
    "args, names",
    [
        (["--recon=avg", "--num_dims=784"], "--recon"),
        *(  # the other flags with -m slow: each case is a process of its own
            pytest.param(args, names, marks=pytest.mark.slow)
            for args, names in [
                (["--recon=mean", "--num_dims=784", "--kl_weight=-2"], "--kl_weight"),
                (["--recon=mean"], "--num_dims"),
                (["--num_dims=784", "--results=no/such/results.csv"], "--results"),
            ]
        ),
    ],
)
def test_cli_bad_flags_are_one_line_exit_2(args, names):
    result = run_cli(*args, config=None, script=IMPLIED_SIGMA)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and names in lines[0], result.stderr
    assert result.stdout == ""


@pytest.mark.slow  # the default suite keeps a faster test of the same code
def test_cli_happy_path_with_data_results_and_loss(tmp_path):
    """PyTorch-VAE's convention on digits (D = 64): σ² = 0.00025·64/2 = 0.008. Each score is
    compared with the best fixed σ for that score, chosen on validation: as trained σ = 0.05
    (val −20 against −15), refit σ = 0.2 (val −31 against −30)."""
    sigma = math.sqrt(0.00025 * 64 / 2)
    header = (
        "group,likelihood,sigma,seed,status,extra,test/iwae_nll,test/active_units,"
        "test/recon_mse,val/iwae_nll,test/iwae_nll_refit,val/iwae_nll_refit"
    )
    rows = [
        "gaussian,gaussian,0.05,0,ok,x,-10.0,4,0.010,-19,-28,-29",
        "gaussian,gaussian,0.05,1,ok,x,-12.0,4,0.012,-21,-30,-31",  # best as trained: −11
        "gaussian,gaussian,0.2,0,ok,x,5.0,2,0.030,-15,-33,-31",  # best refit: −33
        "gaussian,gaussian,0.02,0,stopped: non-finite,x,,,,,,",
        "gaussian,gaussian,0.5,0,ok,x,40.0,0,0.070,30,-20,-18",
        "laplace,laplace,0.1,0,ok,x,-99.0,4,0.010,-99,-99,-99",  # another family: never the best
    ]
    results = tmp_path / "results.csv"
    results.write_text("\n".join([header, *rows]) + "\n")

    def implied(results_flag: str):
        flags = ["--convention=pytorch_vae", "--data=digits", "--loss_value=0.01"]
        return run_cli(*flags, results_flag, "--batch_size=32", config=None, script=IMPLIED_SIGMA)

    result = implied(f"--results={results}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"σ = {sigma:.4g}" in out and "D = 64" in out and "batch 32" in out

    from vae_jax import data, linear

    x = data.load_numpy("digits", "train").reshape(-1, 64)
    kept = int(np.sum(np.asarray(linear.data_spectrum(x)[0]) > sigma**2))
    assert f"{kept} of 64 covariance eigenvalues exceed" in out

    elbo_nats = -0.01 / 0.00025 - 32 * math.log(2 * math.pi * sigma**2)
    assert f"ELBO {elbo_nats:.1f} nats" in out

    assert "best fixed σ as trained = 0.05 (by val/iwae_nll): test NLL -11.0 nats" in out
    assert "best fixed σ refit = 0.2 (by val/iwae_nll_refit): test NLL -33.0 nats" in out
    assert f"σ = {sigma:.4g} lies between the measured σ = 0.05 and 0.2" in out
    assert "σ = 0.2: test NLL 5.0 nats (+16.0 against the best as trained), 2.0 active units" in out
    assert "refit -29.0 nats (+4.0 against the best refit)" in out  # σ = 0.05's refit mean
    assert "with σ refitted on the validation data: +4.0 and +0.0 nats" in out
    assert "σ = 0.5:" not in out
    # The linear theory's verdict comes before the measured costs, and closes the translation.
    assert out.index("linear theory on digits") < out.index("measured in")

    # The directory holding results.csv (a workdir, docs/results/NAME) reads the same file.
    by_dir = implied(f"--results={tmp_path}")
    assert by_dir.returncode == 0, by_dir.stderr
    assert by_dir.stdout == out


def test_cli_prints_the_refit_costs_of_the_stored_sigma_sweep():
    """README's example: σ = 0.313 between the swept σ = 0.293 and 0.682, each cost printed as
    trained and refit, each against the best fixed σ for that score chosen on validation —
    recomputed here from the stored results.csv with the csv module."""
    path = REPO / "docs/results/sigma_sweep/results.csv"
    with open(path, newline="") as f:
        rows = [
            r
            for r in csv.DictReader(f)
            if r["group"] == "gaussian" and r["status"] == "ok" and r["remedy"] in ("", "none")
        ]
    by_sigma = {}
    for r in rows:
        by_sigma.setdefault(round(float(r["sigma"]), 4), []).append(r)

    def mean(members, key):
        return float(np.mean([float(r[key]) for r in members]))

    expected = {}
    for suffix in ("", "_refit"):
        best = min(by_sigma, key=lambda s: mean(by_sigma[s], "val/iwae_nll" + suffix))
        best_nll = mean(by_sigma[best], "test/iwae_nll" + suffix)
        expected[suffix] = [
            mean(by_sigma[s], "test/iwae_nll" + suffix) - best_nll for s in (0.2932, 0.6822)
        ]
    result = run_cli(
        "--convention=pytorch_vae",
        "--num_dims=784",
        f"--results={path}",
        config=None,
        script=IMPLIED_SIGMA,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "σ = 0.313 (σ² = 0.098)" in out and "β = 0.098" in out
    assert "lies between the measured σ = 0.2932 and 0.6822" in out
    for cost in expected[""]:  # with its paired interval, from per_example.npz beside the csv
        assert f"({cost:+.1f} against the best as trained, 95% CI " in out
    refit = " and ".join(f"{cost:+.1f}" for cost in expected["_refit"])
    assert f"with σ refitted on the validation data: {refit} nats" in out


@pytest.mark.slow  # a CLI subprocess each; translate() is tested in-process above
@pytest.mark.parametrize(
    "args, expected",
    [
        (["--convention=pytorch_examples", "--num_dims=784"], "a proper ELBO on binary data"),
        (["--convention=jax_ai_stack", "--num_dims=64"], "β = 0.8: a β-VAE with a Bernoulli"),
        (
            ["--convention=latent_diffusion", "--num_dims=784", "--logvar=-3"],
            f"b = {1e-6 * math.exp(-3) / 2:.4g} in [0, 1] pixel units",
        ),
        (["--error=absolute", "--num_dims=784"], "b = 1 in [0, 1] pixel units"),
        (["--recon=mean", "--num_dims=784", "--free_bits=0.25"], "free bits λ = 0.25 nats"),
        (["--kl=mean", "--latent_dim=8", "--num_dims=784"], f"σ = {math.sqrt(1 / 16):.4g}"),
    ],
)
def test_cli_answers_each_wider_convention(args, expected):
    result = run_cli(*args, config=None, script=IMPLIED_SIGMA)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout, result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("linear theory")


@pytest.mark.slow  # a CLI subprocess each; translate() is tested in-process above
def test_cli_refuses_kl_mean_without_latent_dim_in_one_line():
    result = run_cli("--kl=mean", "--num_dims=784", config=None, script=IMPLIED_SIGMA)
    assert result.returncode == 2 and result.stderr.startswith("error: --latent_dim=None")

"""The linear-VAE theory (Lucas et al. 2019) with TRAINED models, not only formulas.

Linear VAEs trained to convergence (`vae_jax.linear_fit`) must collapse exactly the latents with
λ_i ≤ σ², reach the analytic pPCA optimum, carry ½·log⁺(λ_i/σ²) nats in latent i and sit on the
rate–distortion curve of reverse water-filling. Expected values are the closed forms of
`vae_jax.linear` (themselves tested against numpy/scipy in test_linear.py) and numpy.
"""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, tiny_config

from vae_jax import (
    convergence,
    data,
    experiment,
    figure_data,
    linear_fit,
    models,
    spec,
    sweep,
)
from vae_jax.errors import ConfigError
from vae_jax.report import linear as report_linear
from vae_jax.report import plots
from vae_jax.report import sigma as report_sigma

REPO = pathlib.Path(__file__).resolve().parents[1]
LINEAR_CONFIG = REPO / "experiments" / "configs" / "linear_vae.py"


def linear_config(arg=None):
    return load_config(LINEAR_CONFIG, arg)


def digits_spectrum(validation_fraction: float) -> np.ndarray:
    """Eigenvalues of the covariance of digits' training split minus its validation examples
    (what `experiment.build_problem` trains on), by numpy."""
    x, _ = data.split_validation(data.load_numpy("digits", "train"), validation_fraction)
    x = x.reshape(len(x), -1).astype(np.float64)
    return np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True))[::-1]


def train_groups(config, path):
    """Train every group of the linear sweep `config` as `sweep.train_and_evaluate` does, then
    write its linear section (linear_theory.json and the figures); skips the sweep's σ plots."""
    rows, outputs = [], {}
    mesh = sweep.member_mesh()
    run_spec = spec.parse(config)
    for group, members in sweep.members_by_group(run_spec).items():
        outputs[group] = sweep.train_group(run_spec, path, group, members, mesh)
        rows += outputs[group].rows
    groups = {
        g: figure_data.Trained(r.problem, r.fitted.state.params, r.fitted.hyper)
        for g, r in outputs.items()
    }
    latent_dim = config.model.latent_dim
    figure_data.write(path, rows, groups, latent_dim=latent_dim, member_images_too=False)
    theory = json.loads((path / "linear_theory.json").read_text())
    (path / "plots").mkdir(exist_ok=True)
    figures = figure_data.read(path, config.to_dict())
    lines = report_linear.linear_section(path, rows, theory, figures, latent_dim)
    return rows, theory, lines


@pytest.fixture(scope="module")
def digits_sweep(tmp_path_factory):
    """digits, k = 6: σ² above λ_1, between λ_2 and λ_3 (5% from λ_3, where the ELBO is
    flattest) and below λ_6. (The learned σ is `test_lucas_notebook_check`'s.)"""
    config = linear_config()
    config.data.name = "digits"
    eigvals = digits_spectrum(config.data.validation_fraction)
    config.sweep.sigma_from_spectrum = False
    sigma_sq = [1.5 * eigvals[0], 1.05 * eigvals[2], 0.5 * eigvals[5]]
    config.sweep.sigma = tuple(float(np.sqrt(s)) for s in sigma_sq)
    config.sweep.references = ()
    config.eval.iwae_samples = 2
    path = tmp_path_factory.mktemp("linear_digits")
    rows, theory, lines = train_groups(config, path)
    return config, path, rows, theory, lines, eigvals


@pytest.mark.slow  # the trained linear sweep (~10 s); test_linear.py holds the closed forms
def test_every_member_converges_with_the_predicted_active_units(digits_sweep):
    config, _, rows, theory, *_ = digits_sweep
    assert all(r["converged"] for r in rows), rows
    assert all(r["train/steps"] < config.train.num_steps for r in rows)
    test = [t for t in theory if t["split"] == "test"]
    assert [t["predicted_active"] for t in test] == [0, 2, 6]
    for t in test:
        assert t["trained_active"] == t["predicted_active"], t
        assert t["gap_percent"] < 1.0, t


@pytest.mark.slow  # the trained linear sweep (~10 s); test_linear.py holds the closed forms
def test_trained_rate_and_distortion_are_the_theorys(digits_sweep):
    """On the training split, where the optimum is exact: KL per latent, rate and distortion."""
    *_, theory, _, eigvals = digits_sweep
    for t in (t for t in theory if t["split"] == "train"):
        predicted = 0.5 * np.log(np.maximum(eigvals[:6] / t["sigma_sq"], 1.0))
        np.testing.assert_allclose(t["kl_per_latent_predicted"], predicted, rtol=1e-6)
        np.testing.assert_allclose(t["kl_per_latent_trained"], predicted, atol=0.01)
        np.testing.assert_allclose(t["rate_trained"], predicted.sum(), atol=0.01)
        distortion = np.sum(np.minimum(eigvals[:6], t["sigma_sq"])) + np.sum(eigvals[6:])
        np.testing.assert_allclose(t["distortion_trained"], distortion, rtol=1e-3)
        np.testing.assert_allclose(t["trained_elbo"], t["analytic_log_p"], atol=1e-3)


@pytest.mark.slow  # the trained linear sweep (~10 s); test_linear.py holds the closed forms
def test_report_has_the_theory_and_the_rate_distortion_plane(digits_sweep):
    _, path, _, _, lines, _ = digits_sweep
    assert "## Linear VAE against the pPCA theory (Lucas et al. 2019)" in lines
    assert any("3 of 3 members" in line for line in lines)
    assert "![rate_distortion.png](plots/rate_distortion.png)" in lines
    assert (path / "plots/rate_distortion.png").stat().st_size > 0


@pytest.mark.slow  # the trained linear sweep (~10 s); test_linear.py holds the closed forms
def test_the_report_says_the_steps_are_a_cap_over_the_whole_training_set(digits_sweep):
    config, path = digits_sweep[:2]
    figures = figure_data.read(path, config.to_dict())
    text, _ = report_sigma.describe_run(config.to_dict(), figures, 3)
    assert text.startswith(f"at most {config.train.num_steps} steps of the whole training set")


def test_rate_distortion_plot_takes_plain_rows(tmp_path):
    """What the σ-sweep report hands it: rows with σ, KL and per-pixel MSE (some without σ)."""
    x = np.random.default_rng(0).normal(size=(200, 8)) * np.linspace(2.0, 0.1, 8)
    curve = figure_data.spectrum_and_curve(x.reshape(200, 1, 8, 1), 3)
    np.testing.assert_allclose(
        curve["eigenvalues"], np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True))[::-1]
    )
    assert np.all(np.diff(curve["rd_rate"]) <= 0) and np.all(np.diff(curve["rd_distortion"]) >= 0)
    # k up to the data's rank and beyond (a constant pixel: λ_8 = 0): still a finite curve.
    constant_pixel = x * (np.arange(8) < 7)
    full = figure_data.spectrum_and_curve(constant_pixel.reshape(200, 1, 8, 1), 8)
    keys = ("rd_sigma_sq", "rd_rate", "rd_distortion")
    assert all(np.all(np.isfinite(full[key])) for key in keys)
    rows = [
        {"sigma": 0.5, "test/kl": 3.0, "test/recon_mse": 0.1},
        {"sigma": None, "test/kl": 1.0, "test/recon_mse": 0.2},  # e.g. a Bernoulli member
    ]
    (tmp_path / "plots").mkdir()
    name = plots.plot_rate_distortion(tmp_path, rows, curve)
    assert (tmp_path / "plots" / name).stat().st_size > 0


@pytest.mark.slow  # the trained linear sweep (~10 s); test_linear.py holds the closed forms
def test_a_resumed_sweep_keeps_its_converged_members(digits_sweep):
    """Run again on the same workdir: nothing trains, the members stay converged at their steps."""
    config, path, rows, *_ = digits_sweep
    run_spec = spec.parse(config)
    members = sweep.members_by_group(run_spec)["gaussian"]
    metrics = (path / "groups/gaussian/metrics.jsonl").read_text()
    again = sweep.train_group(run_spec, path, "gaussian", members, sweep.member_mesh()).rows
    assert (path / "groups/gaussian/metrics.jsonl").read_text() == metrics
    for old, new in zip(rows, again, strict=True):
        assert (new["converged"], new["train/steps"]) == (old["converged"], old["train/steps"])
        assert new["test/elbo"] == pytest.approx(old["test/elbo"], rel=1e-6)


def test_converged_members_reads_the_chunk():
    loss = np.array([[-10.0, -10.000001], [-10.0, -10.1], [-10.0, -10.0], [1e-3, 1e-3 + 5e-7]])
    kl = np.zeros((4, 2, 4))
    kl[2, 1, 3] = 1e-3  # member 2: a latent still moving
    done = convergence.converged_members(loss, kl, objective_rtol=1e-6, kl_atol=1e-4)
    np.testing.assert_array_equal(done, [True, False, False, True])
    # An objective near 0 is held to 1e-6 nats, not to 1e-6 of itself.
    loss[3, 1] = 3e-3
    assert not convergence.converged_members(loss, kl, objective_rtol=1e-6, kl_atol=1e-4)[3]


def test_linear_params_match_the_flax_model():
    """`models.linear_vae_matrices` reads the Flax linear VAE in `vae_jax.linear`'s conventions
    and `models.with_linear_vae_matrices` writes them back."""
    model = models.VAE(kind="linear", latent_dim=3, event_shape=(1, 5, 1), likelihood="gaussian")
    x = jax.random.normal(jax.random.key(0), (1, 5, 1))
    params = model.init(jax.random.key(1), x)
    mats = models.linear_vae_matrices(params)
    mean, log_var = model.apply(params, x, method=models.VAE.encode)
    np.testing.assert_allclose(mats["enc_W"] @ x.reshape(-1) + mats["enc_b"], mean, rtol=1e-5)
    np.testing.assert_allclose(mats["enc_log_var"], log_var)
    z = jnp.array([0.3, -1.0, 2.0])
    out = model.apply(params, z, method=models.VAE.decode)
    np.testing.assert_allclose(mats["dec_W"] @ z + mats["dec_b"], out[0].reshape(-1), rtol=1e-5)
    doubled = models.with_linear_vae_matrices(params, jax.tree.map(lambda a: 2 * a, mats))
    assert jax.tree.structure(doubled) == jax.tree.structure(params)
    jax.tree.map(
        np.testing.assert_allclose,
        models.linear_vae_matrices(doubled),
        {k: 2 * v for k, v in mats.items()},
    )


def test_with_learned_sigma_sets_the_models_sigma():
    model = models.VAE(
        kind="linear", latent_dim=2, event_shape=(1, 4, 1), likelihood="gaussian_learned"
    )
    params = model.init(jax.random.key(0), jnp.zeros((1, 4, 1)))
    for sigma in (0.01, 0.3, 7.0):
        new = models.with_learned_sigma(params, jnp.float32(sigma), model.sigma_floor)
        log_sigma = model.apply(new, method=models.VAE.learned_log_sigma)
        np.testing.assert_allclose(np.exp(log_sigma), sigma, rtol=1e-5)


def test_only_full_batch_linear_gaussian_problems_train_by_coordinate_ascent():
    def problem(**overrides):
        config = linear_config()
        del config["sweep"]  # one run: its likelihood may be one the sweep lists as a reference
        config.data.name = "digits"
        for field, value in overrides.items():
            section, name = field.split("__")
            config[section][name] = value
        return experiment.build_problem(config)

    assert linear_fit.applies(problem())
    assert linear_fit.applies(problem(likelihood__name="gaussian_learned"))
    assert not linear_fit.applies(problem(train__full_batch=False))
    assert not linear_fit.applies(problem(likelihood__name="laplace"))
    assert not linear_fit.applies(problem(data__dequantize=True))
    assert not linear_fit.applies(experiment.build_problem(tiny_config()))  # an MLP
    # Remedies change gradient steps; coordinate ascent has none, so it refuses them.
    with pytest.raises(ConfigError, match="free_bits.*train.full_batch=False"):
        problem(train__free_bits=0.5)
    assert not linear_fit.applies(problem(train__free_bits=0.5, train__full_batch=False))


def test_train_subset_is_the_first_training_images():
    config = linear_config("lucas")
    config.data.name = "digits"  # as the variant's mnist_5k, without building it here
    config.model.latent_dim = 6  # fewer than digits' 64 pixels
    config.data.train_subset = 50
    first = data.load_numpy("digits", "train")[:50]
    problem = experiment.build_problem(config)
    np.testing.assert_array_equal(problem.train_x, first)
    assert problem.batch_size == 50 and problem.transform == "none" and len(problem.val_x) == 0
    # With a validation split, it is carved from those same images.
    config.data.validation_fraction = 0.2
    problem = experiment.build_problem(config)
    assert (len(problem.train_x), len(problem.val_x)) == (40, 10)
    together = np.concatenate([problem.train_x, problem.val_x])
    np.testing.assert_array_equal(np.sort(together, axis=0), np.sort(first, axis=0))
    config.data.train_subset = 1438
    with pytest.raises(ConfigError, match="data.train_subset=1438"):
        experiment.build_problem(config)


def test_the_lucas_variant():
    """Its data, model and likelihood (test_run checks that others are refused)."""
    config = linear_config("lucas")
    assert config.data.name == "mnist_5k" and config.data.train_subset == 1000
    assert config.data.validation_fraction == 0.0 and not config.data.dequantize
    assert config.model.latent_dim == 200 and config.likelihood.name == "gaussian_learned"


@pytest.mark.slow
def test_lucas_notebook_check(tmp_path):
    """Lucas et al.'s notebook: 1,000 MNIST images, k = 200, σ learned. The training-set ELBO
    reaches the pPCA maximum log-likelihood within 0.05 nats, σ² its MLE within 0.5%."""
    config = linear_config("lucas")
    config.eval.iwae_samples = 4
    sweep.train_and_evaluate(config, str(tmp_path))
    theory = json.loads((tmp_path / "linear_theory.json").read_text())
    (t,) = [t for t in theory if t["split"] == "train"]
    assert abs(t["trained_elbo"] - t["analytic_log_p"]) < 0.05, t
    assert abs(t["sigma_sq"] / t["sigma_sq_mle"] - 1) < 5e-3, t


@pytest.mark.slow
def test_every_sigma_five_percent_from_the_spectrum_on_digits_and_mnist(tmp_path, capsys):
    """Issue 12's check: digits and mnist_5k, k = 6, 16, 32, every σ² ≥ 5% from every λ."""
    spec = importlib.util.spec_from_file_location(
        "check_linear_theory", REPO / "experiments" / "check_linear_theory.py"
    )
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    assert check.main([f"--workdir={tmp_path}"]) == 0, capsys.readouterr().out

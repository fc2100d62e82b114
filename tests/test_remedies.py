"""Tests for the remedies (vae_jax.objective): KL warm-up's schedule, free bits' clamp and its
zero gradient, GECO's multiplier, one program per group with remedies as members, and test
metrics that stay the β = 1 ELBO whatever the training objective."""

import csv
import json
import math
import pathlib
import shutil
import types

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO, counting_traces, load_config, tiny_config

from vae_jax import (
    elbo,
    evaluate,
    experiment,
    objective,
    report,
    runner,
    sharding,
    spec,
    sweep,
    train,
)
from vae_jax.errors import ConfigError
from vae_jax.report import compare, remedies
from vae_jax.report import rows as report_rows

SMALL = {"model__hidden_sizes": (16,), "model__latent_dim": 3}
REMEDIES = ("none", "kl_warmup", "free_bits", "geco")


def hyper(*, beta=1.0, sigma=0.5, **remedy):
    return objective.make_hyper(sigma, beta, objective.make_remedy(**remedy))


# ----------------------------------------------------------------------------- KL warm-up


@pytest.mark.parametrize("start, steps, beta", [(0.0, 10, 1.0), (0.2, 7, 2.0), (0.5, 0, 1.5)])
def test_kl_warmup_weight_ramps_linearly_from_start_to_beta(start, steps, beta):
    h = hyper(beta=beta, kl_warmup_start=start, kl_warmup_steps=steps)
    at = np.array([0, 1, 3, 6, 7, 10, 25])
    weights = jax.jit(jax.vmap(objective.kl_weight, in_axes=(None, 0)))(h, jnp.asarray(at))
    expected = beta * np.interp(at, [0, steps], [start, 1.0]) if steps else np.full(7, beta)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)


# ----------------------------------------------------------------------------- free bits


def posterior(batch=6, latents=4):
    """Posterior means whose latents 0 and 1 carry ~0.005 nats and 2 and 3 several nats."""
    rng = np.random.default_rng(0)
    scale = np.array([0.1, 0.1, 2.0, 3.0])[:latents]
    mean = rng.normal(size=(batch, latents)) * scale
    log_var = rng.normal(size=(batch, latents)) * 0.01
    return jnp.asarray(mean, jnp.float32), jnp.asarray(log_var, jnp.float32)


def numpy_kl(mean, log_var):
    return 0.5 * (np.exp(log_var) - 1.0 - log_var + mean**2)


def free_bits_objective(mean, log_var, h, step=0):
    per_example = {
        "recon": jnp.zeros(mean.shape[0]),
        "kl_per_latent": jax.vmap(elbo.gaussian_kl)(mean, log_var),
    }
    return objective.batch_objective(per_example, h, step)


def test_free_bits_clamps_the_batch_mean_kl_of_each_latent():
    mean, log_var = posterior()
    kl_per_latent = numpy_kl(np.asarray(mean, np.float64), np.asarray(log_var, np.float64))
    batch_kl = kl_per_latent.mean(axis=0)
    floor = 0.5
    assert (batch_kl[:2] < floor).all() and (batch_kl[2:] > floor).all()
    value = jax.jit(free_bits_objective)(mean, log_var, hyper(free_bits=floor, beta=2.0))
    np.testing.assert_allclose(value, -2.0 * np.maximum(batch_kl, floor).sum(), rtol=1e-5)
    # Per example, the clamp would not bind: a batch-average clamp differs from it here.
    per_example_clamp = np.maximum(kl_per_latent, floor).sum(axis=1).mean()
    assert abs(per_example_clamp - np.maximum(batch_kl, floor).sum()) > 0.1


def test_free_bits_give_zero_gradient_below_the_floor():
    mean, log_var = posterior()
    batch = mean.shape[0]
    floor, beta = 0.5, 1.5
    grad = jax.jit(jax.grad(free_bits_objective))(mean, log_var, hyper(free_bits=floor, beta=beta))
    # d/dμ_bj of −β·max(λ, mean_b KL_bj) = −β·μ_bj/B above the floor, 0 below it.
    above = numpy_kl(np.asarray(mean), np.asarray(log_var)).mean(axis=0) > floor
    expected = np.where(above, -beta * np.asarray(mean) / batch, 0.0)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=0)
    assert np.all(grad[:, ~above] == 0.0) and np.all(grad[:, above] != 0.0)


def test_no_remedy_is_the_beta_elbo():
    mean, log_var = posterior()
    recon = jnp.arange(6.0)
    per_example = {"recon": recon, "kl_per_latent": jax.vmap(elbo.gaussian_kl)(mean, log_var)}
    value = objective.batch_objective(per_example, hyper(beta=0.7), jnp.int32(5))
    kl = numpy_kl(np.asarray(mean), np.asarray(log_var)).sum(axis=1)
    np.testing.assert_allclose(value, np.mean(np.asarray(recon) - 0.7 * kl), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- GECO

# update_geco reads only the data's shape and σ's floor from the problem.
TOY = types.SimpleNamespace(train_x=np.zeros((1, 8, 8, 1)), sigma_floor=1e-3)
NUM_DIMS = 64


def squared_errors(x, f):
    return {"sq_err": jnp.asarray(((x - f) ** 2).reshape(len(x), -1).sum(axis=1), jnp.float32)}


@pytest.mark.parametrize("kappa, grows", [(0.05, True), (0.5, False)])
def test_geco_multiplier_follows_the_constraint(kappa, grows):
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(5, 8, 8, 1))
    f = x + rng.normal(scale=0.2, size=x.shape)  # MSE ≈ 0.04: above 0.05², below 0.5²
    mse = np.mean((x - f) ** 2)
    h = hyper(sigma=0.3, geco_kappa=kappa, geco_rate=2.0, geco_decay=0.9)
    geco = objective.initial_geco()
    h = objective.with_geco_sigma(TOY, h, geco, 0)
    np.testing.assert_allclose(np.exp(h.log_sigma), 0.3, rtol=1e-6)  # λ₀ = D/(2σ²)
    geco = objective.update_geco(TOY, geco, h, squared_errors(x, f), 0)
    constraint = mse - kappa**2
    np.testing.assert_allclose(geco.constraint_ma, constraint, rtol=1e-4)  # C itself at step 0
    lambda0 = NUM_DIMS / (2 * 0.3**2)
    np.testing.assert_allclose(geco.log_lambda, math.log(lambda0) + 2.0 * constraint, rtol=1e-5)
    # Next step: the moving average, then λ ← λ·exp(α·C_ma); σ(λ) = √(D/(2λ)).
    h = objective.with_geco_sigma(TOY, h, geco, 1)
    sigma = math.sqrt(NUM_DIMS / (2 * math.exp(float(geco.log_lambda))))
    np.testing.assert_allclose(np.exp(h.log_sigma), sigma, rtol=1e-5)
    after = objective.update_geco(TOY, geco, h, squared_errors(x, f), 1)
    average = 0.9 * constraint + 0.1 * constraint
    np.testing.assert_allclose(after.log_lambda, geco.log_lambda + 2.0 * average, rtol=1e-5)
    assert (after.log_lambda > geco.log_lambda) == grows


def test_geco_is_off_at_kappa_zero():
    h = hyper(sigma=0.3)
    geco = objective.Geco(log_lambda=jnp.float32(3.0), constraint_ma=jnp.float32(0.1))
    assert objective.with_geco_sigma(TOY, h, geco, 4).log_sigma == h.log_sigma
    after = objective.update_geco(TOY, geco, h, {"sq_err": jnp.ones(3)}, 4)
    chex.assert_trees_all_equal(after, geco)


@pytest.fixture(scope="module")
def problem():
    return experiment.build_problem(tiny_config(**SMALL))


@pytest.mark.slow  # ~10 s: compiles a vmapped training chunk
def test_geco_multiplier_moves_the_right_way_while_training(problem):
    """Toy problem: κ far below the reachable error drives λ up (σ down); κ far above it (the
    untrained decoder's per-pixel MSE is ~1), down."""
    members = [hyper(sigma=0.3, geco_kappa=0.01, geco_rate=1.0), hyper(sigma=0.3, geco_kappa=3.0)]
    tx = train.make_optimizer(tiny_config(**SMALL))
    states = [train.create_train_state(problem, tx, jax.random.key(0))] * 2
    chunk = jax.jit(jax.vmap(train.make_train_chunk(problem, 10), in_axes=(0, None, 0, None)))
    state, metrics = chunk(
        sharding.stack(states),
        jnp.asarray(problem.train_x),
        sharding.stack(members),
        jax.random.key(1),
    )
    lambda0 = math.log(NUM_DIMS / (2 * 0.3**2))
    tight, loose = np.asarray(state.geco.log_lambda)
    assert tight > lambda0 + 1.0 and loose < lambda0 - 1.0, (tight, loose, lambda0)
    sigma = np.asarray(metrics["sigma"])  # [member, step]: σ(λ) each step trained with
    assert sigma[0, -1] < 0.3 < sigma[1, -1]
    assert np.all(np.diff(sigma[0]) < 0) and np.all(np.diff(sigma[1]) > 0)


def test_geco_findings_read_sigma_and_constraint_from_metrics(tmp_path):
    rows = [
        {"group": "gaussian", "remedy": r, "sigma_start": 0.5, "status": "ok"}
        for r in ("none", "geco")
    ]
    lines = [
        {"step": 10, "kl": [1.0, 2.0], "sigma": [0.5, 0.2], "mse": [0.3, 0.3]},
        {"step": 20, "kl": [1.0, 2.0], "sigma": [0.5, 0.1], "mse": [0.2, 0.1]},
        {"step": 30, "kl": [1.0, 2.0], "sigma": [0.5, 0.15], "mse": [0.2, 0.03]},
    ]
    (tmp_path / "groups" / "gaussian").mkdir(parents=True)
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (tmp_path / "groups" / "gaussian" / "metrics.jsonl").write_text(text)
    assert remedies.geco_findings(tmp_path, rows, kappa=0.2) == [
        "- GECO from σ = 0.5: σ(λ) at its lowest 0.1 (in the chunk ending at step 20), at the "
        "end 0.15; constrained MSE 0.3000 in the first chunk, 0.0300 in the last, against "
        "κ² = 0.0400."
    ]


def _verdict_rows(learned_refit: tuple[float, float], learned_gap: float = 5.0) -> list[dict]:
    """Two fixed σ (0.1 best on validation as trained, 0.3 best refit) and a learned σ, 2 seeds;
    each −ELBO is its IWAE NLL + 5 nats, the learned σ's refit one + `learned_gap`."""

    def row(group, remedy, sigma, seed, test, val, refit, val_refit, gap=5.0):
        return {
            "group": group,
            "likelihood": group,
            "remedy": remedy,
            "sigma": sigma,
            "sigma_start": sigma,
            "seed": seed,
            "status": "ok",
            "test/iwae_nll": test,
            "val/iwae_nll": val,
            "test/iwae_nll_refit": refit,
            "val/iwae_nll_refit": val_refit,
            "test/elbo": -test - 5.0,
            "test/elbo_refit": -refit - gap,
            "sigma_refit": 0.15,
            "train/recon_mse": 0.01,
            "test/recon_mse": 0.02,
            "train/iwae_nll": -90.0,
        }

    return report_rows.with_index(
        [
            row("gaussian", "none", 0.1, 0, -99.5, -100.0, -101.0, -101.0),
            row("gaussian", "none", 0.1, 1, -98.5, -100.0, -99.0, -101.0),
            row("gaussian", "none", 0.3, 0, -80.0, -80.0, -108.5, -110.0),
            row("gaussian", "none", 0.3, 1, -80.0, -80.0, -107.5, -110.0),
            *(
                row(
                    "gaussian_learned",
                    "learned_sigma",
                    0.08,
                    seed,
                    -90.0,
                    -90.0,
                    learned_refit[seed],
                    0.0,
                    learned_gap,
                )
                for seed in (0, 1)
            ),
        ]
    )


def _per_example(rows: list[dict], noise: float, num_examples: int = 200) -> dict:
    """Each row's test NLL per image: its mean plus zero-mean noise of this size."""
    rng = np.random.default_rng(0)
    arrays = {}
    for key, column in (("test_nll", "test/iwae_nll"), ("test_nll_refit", "test/iwae_nll_refit")):
        table = np.zeros((len(rows), num_examples))
        for r in rows:
            draw = rng.normal(0.0, noise, num_examples)
            table[r["_index"]] = r[column] + draw - draw.mean()
        arrays[key] = table
    return arrays


@pytest.mark.parametrize(
    "learned_refit, gap, noise, verdict",
    [
        ((-100.5, -99.5), 5.0, 1.0, "behind it"),  # +8.0 against -108.0 in both seeds, both bounds
        ((-107.5, -108.5), 5.0, 30.0, "indistinguishable"),  # +1.0 and -1.0: seeds disagree
        ((-118.5, -117.5), 5.0, 1.0, "ahead of it"),  # -10.0 in both seeds, both bounds
        # IWAE -10.0, but the learned σ's ELBO gap is 20 nats wider: −ELBO +5.0, a sign apart.
        ((-118.5, -117.5), 25.0, 1.0, "indistinguishable"),
    ],
)
def test_learned_sigma_verdicts_compare_like_with_like(learned_refit, gap, noise, verdict):
    rows = _verdict_rows(learned_refit, gap)
    per_example = _per_example(rows, noise)
    lines = remedies.learned_sigma_verdict(rows, "gaussian", per_example=per_example)
    assert len(lines) == 3
    # As trained: against σ = 0.1 (best validation NLL as trained), gap +9.0 by both bounds.
    assert lines[1].startswith("  - As trained: +9.0 nats (95% CI")
    assert "against the best fixed σ as trained (-99.0) — behind it." in lines[1]
    # Refit: against σ = 0.3, whose refit scores best on validation (-108.0).
    refit = compare.difference(rows[4:], rows[2:4], per_example, "_refit")
    elbo = compare.seed_difference(rows[4:], rows[2:4], "test/elbo_refit", sign=-1.0)
    np.testing.assert_allclose(elbo.mean, np.mean(learned_refit) + gap - (-108.0 + 5.0))
    assert (
        f"{refit.text()} by the IWAE bound, {elbo.text()} by the −ELBO, against the best fixed "
        f"σ refitted the same way (σ 0.3 → 0.15, -108.0) — {verdict}." in lines[2]
    )


def test_without_elbo_columns_the_verdict_says_it_rests_on_the_iwae_bound_only():
    rows = [
        {k: v for k, v in r.items() if not k.startswith("test/elbo")}
        for r in _verdict_rows((-100.5, -99.5))
    ]
    lines = remedies.learned_sigma_verdict(rows, "gaussian", per_example=_per_example(rows, 1.0))
    assert lines[2].endswith("— behind it (IWAE bound only).")


def test_a_validation_fitted_sigma_is_compared_refit_to_refit_only():
    rows = _verdict_rows((-104.0, -106.0))
    fit = remedies.learned_fit({"sigma_fit": "validation", "sigma_fit_every": 250})
    lines = remedies.learned_sigma_verdict(rows, "gaussian", fit, _per_example(rows, 1.0))
    assert len(lines) == 2 and "compared with nothing as trained" in lines[0]
    assert lines[1].startswith("  - Refit to refit")


# ----------------------------------------------------------------------------- configs


def test_bad_remedy_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.free_bits=-1\.0 must be >= 0"):
        experiment.build_problem(tiny_config(train__free_bits=-1.0))
    with pytest.raises(ConfigError, match=r"train\.geco_decay=1\.0 must be in \[0, 1\)"):
        experiment.build_problem(tiny_config(train__geco_decay=1.0))
    config = tiny_config(likelihood__name="gaussian_learned", train__geco_kappa=0.1)
    with pytest.raises(ConfigError, match="GECO.*not 'gaussian_learned'"):
        experiment.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the workdir is made

    def sweep_with(**fields):
        config = tiny_config(**SMALL, train__free_bits=0.5)
        config.sweep = ml_collections.ConfigDict(
            {"sigma": (0.5,), "seeds": (0,), "references": (), **fields}
        )
        return config

    with pytest.raises(ConfigError, match="sweep.remedies holds 'bogus'; allowed: none, kl_"):
        spec.parse(sweep_with(remedies=("none", "bogus")))
    with pytest.raises(ConfigError, match="holds 'geco' but train.geco_kappa=0 turns it off"):
        spec.parse(sweep_with(remedies=("geco",)))
    # Without sweep.remedies every member trains as config.train says.
    groups = sweep.members_by_group(spec.parse(sweep_with(references=("gaussian_learned",))))
    assert [m.remedy for ms in groups.values() for m in ms] == ["free_bits", "free_bits"]


REMEDIES_CONFIG = REPO / "experiments" / "configs" / "remedies.py"


def test_remedies_config_lists_every_remedy_beside_the_learned_scales():
    for arg in (None, "quick"):
        config = load_config(REMEDIES_CONFIG, arg)
        assert tuple(config.sweep.remedies) == REMEDIES
        assert set(config.sweep.references) >= {"gaussian_learned", "gaussian_optimal"}
        assert config.sweep.implicit_sigmas and config.sweep.seeds == (
            (0,) if arg else (0, 1, 2, 3, 4)
        )
        assert spec.parse(config).train.remedies == ("kl_warmup", "free_bits", "geco")
    with pytest.raises(ValueError, match="unknown variant 'bogus'; allowed: quick"):
        load_config(REMEDIES_CONFIG, "bogus")


# ----------------------------------------------------------------------------- one sweep


def remedies_sweep_config() -> ml_collections.ConfigDict:
    config = tiny_config(
        **SMALL,
        train__kl_warmup_steps=10,
        train__free_bits=0.5,
        train__geco_kappa=0.2,
    )
    config.sweep = ml_collections.ConfigDict(
        {
            "sigma": (0.5,),
            "seeds": (0,),
            "remedies": REMEDIES,
            "references": ("gaussian_learned",),
        }
    )
    return config


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A remedies sweep (4 remedies at σ = 0.5, and a learned σ) with every group's train
    chunk wrapped to count its traces."""
    path = tmp_path_factory.mktemp("remedies")
    with counting_traces() as traces:
        rows = sweep.train_and_evaluate(remedies_sweep_config(), path)
    return {"path": path, "rows": rows, "traces": traces}


def report_findings(path: pathlib.Path) -> list[str]:
    """GECO's lines of the findings that `python -m vae_jax.report` prints from the files."""
    return [s for s in report.findings_from_workdir(path) if s.startswith("- GECO from")]


def read_csv(path: pathlib.Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def saved_state(path: pathlib.Path, group: str, step: int):
    manager = ocp.CheckpointManager(path / "groups" / group / "checkpoints")
    tree = manager.restore(step, args=ocp.args.StandardRestore())
    manager.close()
    return tree["state"]


@pytest.mark.slow  # the sweep fixture: ~25 s
def test_remedies_are_members_of_one_program_per_group(swept):
    rows = read_csv(swept["path"] / "results.csv")
    assert [(r["group"], r["remedy"]) for r in rows] == [
        *(("gaussian", name) for name in REMEDIES),
        ("gaussian_learned", "learned_sigma"),
    ]
    assert all(r["status"] == "ok" for r in rows)
    assert swept["traces"] == {"gaussian": 1, "gaussian_learned": 1}
    report = (swept["path"] / "report.md").read_text()
    assert "## What to do instead" in report
    # The findings name GECO's constraint against κ² = 0.2², as metrics.jsonl logged it.
    assert "- GECO from σ = 0.5: σ(λ) at its lowest" in report and "κ² = 0.0400" in report
    assert report_findings(swept["path"]) == [
        line for line in report.splitlines() if line.startswith("- GECO from")
    ]
    assert (swept["path"] / "plots" / "remedy_curves.png").is_file()


@pytest.mark.slow
def test_geco_sigma_is_where_its_multiplier_ended(swept):
    rows = read_csv(swept["path"] / "results.csv")
    steps = remedies_sweep_config().train.num_steps
    log_lambda = np.asarray(saved_state(swept["path"], "gaussian", steps)["geco"]["log_lambda"])
    geco = REMEDIES.index("geco")
    sigma = math.sqrt(NUM_DIMS / (2 * math.exp(float(log_lambda[geco]))))
    np.testing.assert_allclose(float(rows[geco]["sigma"]), sigma, rtol=1e-5)
    assert float(rows[geco]["sigma_start"]) == 0.5 and float(rows[geco]["sigma"]) != 0.5
    assert [float(r["sigma"]) for i, r in enumerate(rows[:4]) if i != geco] == [0.5] * 3


@pytest.fixture(scope="module")
def plain_evaluation():
    """Scores params with the plain β = 1 ELBO: (params, σ) -> `evaluate.summarize`'s dict."""
    config = remedies_sweep_config()
    problem = experiment.build_problem(spec.parse(config).for_group("gaussian"))
    member = jax.jit(runner.make_member_evaluation(config, problem))
    eval_rng = jax.random.split(jax.random.key(0), 3)[2]  # seed 0's, as `init_group` splits it

    def score(params, sigma):
        hyper = objective.make_hyper(sigma, 1.0)  # no remedy
        outputs, _ = member(params, hyper, eval_rng, *runner.device_splits(problem))
        return evaluate.summarize(jax.device_get(outputs), problem)

    return score


@pytest.mark.slow
@pytest.mark.parametrize("remedy", ["free_bits", "geco", "kl_warmup"])
def test_reported_metrics_are_the_plain_elbo_of_the_trained_params(swept, plain_evaluation, remedy):
    """A remedied member's test/elbo and NLL equal scoring its params with the β = 1 ELBO and
    no remedy at its reported σ, and test/elbo = test/recon_log_prob − test/kl."""
    i = REMEDIES.index(remedy)
    row = read_csv(swept["path"] / "results.csv")[i]
    steps = remedies_sweep_config().train.num_steps
    params = jax.tree.map(lambda a: a[i], saved_state(swept["path"], "gaussian", steps)["params"])
    scored = plain_evaluation(params, float(row["sigma"]))
    for key in ("test/elbo", "test/iwae_nll", "test/kl", "test/iwae_nll_refit"):
        np.testing.assert_allclose(float(row[key]), scored[key], rtol=1e-4, err_msg=key)
    elbo_value = float(row["test/recon_log_prob"]) - float(row["test/kl"])
    np.testing.assert_allclose(float(row["test/elbo"]), elbo_value, rtol=1e-5)


@pytest.mark.slow  # two single runs
def test_resume_carries_the_geco_multiplier(tmp_path):
    config = tiny_config(**SMALL, train__geco_kappa=0.2, likelihood__sigma=2.0)
    first = experiment.train_and_evaluate(config, tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / str(config.train.num_steps))
    (tmp_path / "b" / "results.json").unlink()
    resumed = experiment.train_and_evaluate(config, tmp_path / "b")
    assert first["sigma"] != 2.0
    for key in ("sigma", "test/elbo", "test/iwae_nll"):
        np.testing.assert_allclose(resumed[key], first[key], rtol=1e-5, err_msg=key)


@pytest.mark.slow  # loads and splits mnist_5k (~8 s)
def test_remedies_geco_kappa_is_the_ppca_sigma_of_the_training_split():
    """remedies.py's κ: σ² = the mean of the training covariance's 784 − 32 smallest eigenvalues
    (numpy), plus the dequantisation noise's variance 1/(12·256²)."""
    config = load_config(REMEDIES_CONFIG)
    train_x = experiment.build_problem(config).train_x.reshape(-1, 784).astype(np.float64)
    eigvals = np.linalg.eigvalsh(np.cov(train_x, rowvar=False, bias=True))  # ascending
    sigma_sq = eigvals[: 784 - config.model.latent_dim].mean() + 1.0 / (12.0 * 256**2)
    np.testing.assert_allclose(config.train.geco_kappa, math.sqrt(sigma_sq), rtol=1e-5)


def test_the_learned_verdict_says_how_its_scale_was_fitted():
    fit = remedies.learned_fit({"sigma_fit": "validation", "sigma_fit_every": 250})
    assert fit.on_validation
    assert str(fit) == "fitted on the validation data every 250 steps and after the last"
    # A config.json from before likelihood.sigma_fit existed: the gradient was all there was.
    assert str(remedies.learned_fit({})) == "learned by gradient on the training data"
    assert not remedies.learned_fit({}).on_validation
    rows = _verdict_rows((-90.0, -92.0))
    line = remedies.learned_sigma_verdict(rows, "gaussian", fit)[0]
    assert line.startswith(f"- **Learned σ, {fit}** (from σ₀ = 0.080, the pPCA σ")

"""vae_jax.report.compare: one rule — each score against its own best fixed σ, chosen on validation,
within one data model, paired by seed and image."""

import numpy as np
import pytest
from scipy import stats

from vae_jax.report import compare
from vae_jax.report import rows as report_rows


def member(group, sigma, seed, nll, val, nll_refit=None, val_refit=None, likelihood=None):
    return {
        "group": group,
        "likelihood": likelihood or group,
        "remedy": "none",
        "sigma": sigma,
        "sigma_start": sigma,
        "seed": seed,
        "status": "ok",
        "test/iwae_nll": nll,
        "val/iwae_nll": val,
        "test/iwae_nll_refit": nll_refit,
        "val/iwae_nll_refit": val_refit,
    }


ROWS = report_rows.with_index(
    [
        # σ = 0.1 is best on validation as trained; σ = 1 is best refit.
        member("gaussian", 0.1, 0, 10.0, 11.0, 5.0, 6.0),
        member("gaussian", 0.1, 1, 12.0, 13.0, 5.0, 6.0),
        member("gaussian", 1.0, 0, 20.0, 21.0, 3.0, 4.0),
        member("gaussian", 1.0, 1, 22.0, 23.0, 3.0, 4.0),
        member("laplace", 0.2, 1, 1.0, 2.0, 0.5, 1.0),
        member("discretized_logistic", 0.3, 0, -50.0, -49.0),
        member("laplace", 0.2, 0, 2.0, 3.0, 1.5, 2.0),
    ]
)


def per_example(num_examples=20):
    rng = np.random.default_rng(0)
    arrays = {}
    for key, column in (("test_nll", "test/iwae_nll"), ("test_nll_refit", "test/iwae_nll_refit")):
        table = np.full((len(ROWS), num_examples), np.nan)
        for r in ROWS:
            if r[column] is not None:
                table[r["_index"]] = r[column] + rng.normal(size=num_examples)
        arrays[key] = table
    return arrays


def test_the_best_fixed_sigma_is_chosen_on_validation_for_each_score():
    assert compare.best_fixed_sigma(ROWS, "gaussian")[0] == 0.1
    assert compare.best_fixed_sigma(ROWS, "gaussian", "_refit")[0] == 1.0
    assert [r["seed"] for r in compare.best_fixed_sigma(ROWS, "gaussian")[1]] == [0, 1]


def t_interval(a, b):
    """The seed-level paired t-interval by hand: per-seed mean differences, scipy's t quantile."""
    per_seed = (a - b).mean(axis=1)
    half = stats.t.ppf(0.975, len(per_seed) - 1) * stats.sem(per_seed)
    return per_seed.mean(), per_seed.mean() - half, per_seed.mean() + half


def test_each_score_is_compared_with_its_own_best():
    arrays = per_example()
    laplace = [ROWS[4], ROWS[6]]
    trained = compare.against_best(laplace, ROWS, "gaussian", arrays)
    refit = compare.against_best(laplace, ROWS, "gaussian", arrays, "_refit")
    # Paired by seed (0, 1): laplace rows 6, 4 against σ = 0.1's rows 0, 1 as trained, against
    # σ = 1's rows 2, 3 refit; a t-interval over the two seeds' mean differences.
    for diff, key, best in ((trained, "test_nll", [0, 1]), (refit, "test_nll_refit", [2, 3])):
        expected = t_interval(arrays[key][[6, 4]], arrays[key][best])
        np.testing.assert_allclose((diff.mean, diff.low, diff.high), expected, rtol=1e-9)
        assert diff.num_seeds == 2 and diff.method == "paired t over seeds"
    assert trained.mean < 0 and refit.mean < 0


def test_one_shared_seed_gives_no_interval():
    """A seed-level interval needs two seeds: one shared seed is stated without one."""
    assert compare.against_best([ROWS[4]], ROWS, "gaussian", per_example()) is None


def test_fd_difference_is_the_seed_level_interval_of_per_seed_fds():
    a = [
        dict(ROWS[0], **{"test/fd_prior_mean": 40.0}),
        dict(ROWS[1], **{"test/fd_prior_mean": 44.0}),
    ]
    b = [
        dict(ROWS[2], **{"test/fd_prior_mean": 90.0}),
        dict(ROWS[3], **{"test/fd_prior_mean": 70.0}),
    ]
    diff = compare.fd_difference(a, b, "test/fd_prior_mean")
    expected = t_interval(np.array([[40.0], [44.0]]), np.array([[90.0], [70.0]]))
    np.testing.assert_allclose((diff.mean, diff.low, diff.high), expected, rtol=1e-9)
    assert compare.fd_said(diff) == (
        f"{expected[0]:+.1f} (95% CI {expected[1]:+.1f} to {expected[2]:+.1f}, not resolved)"
    )
    assert compare.fd_difference(a[:1], b, "test/fd_prior_mean") is None
    assert compare.fd_difference(a, b, "test/fd_prior_sample") is None  # no FD: no interval
    assert compare.fd_said(None) == "–"


@pytest.mark.parametrize("same", [True, False])
def test_a_self_comparison_has_a_zero_width_interval(same):
    """The rule itself: a member against itself is 0 with a zero-width interval (not resolved),
    which is why reports skip it rather than state it."""
    arrays = per_example()
    members = [ROWS[0], ROWS[1]]
    diff = compare.difference(members, members if same else [ROWS[2], ROWS[3]], arrays)
    assert (diff.low == diff.high == 0.0) == same


def test_no_difference_across_data_models_or_without_scores():
    arrays = per_example()
    logistic = [ROWS[5]]
    assert logistic[0]["data_model"] == "discrete" and ROWS[0]["data_model"] == "continuous"
    assert compare.against_best(logistic, ROWS, "gaussian", arrays) is None
    assert compare.against_best([ROWS[4]], ROWS, "gaussian", None) is None
    assert compare.said(None, 2.0) == "+2.0 nats (no interval)"


def test_ranking_within_a_data_model_uses_each_members_best_calibrated_score():
    ranked = compare.ranking(ROWS, "gaussian", "continuous")
    # laplace refit val 1.0, best fixed σ refit (σ = 1) val 4.0.
    assert [(name, suffix) for name, suffix, _ in ranked] == [
        ("laplace", "_refit"),
        ("best fixed σ = 1", "_refit"),
    ]
    assert [name for name, _, _ in compare.ranking(ROWS, "gaussian", "discrete")] == [
        "discretized_logistic"
    ]

"""vae_jax.report.compare: one rule — each score against its own best fixed σ, chosen on validation,
within one data model, paired by seed and image."""

import numpy as np

from vae_jax import intervals
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


def test_each_score_is_compared_with_its_own_best():
    arrays = per_example()
    laplace = [ROWS[4]]
    trained = compare.against_best(laplace, ROWS, "gaussian", arrays)
    refit = compare.against_best(laplace, ROWS, "gaussian", arrays, "_refit")
    # Paired on the one seed both have (seed 1): laplace row 4 against σ = 0.1's row 1 as
    # trained, against σ = 1's row 3 refit.
    expected_trained = intervals.paired_difference(arrays["test_nll"][[4]], arrays["test_nll"][[1]])
    expected_refit = intervals.paired_difference(
        arrays["test_nll_refit"][[4]], arrays["test_nll_refit"][[3]]
    )
    assert trained == expected_trained and refit == expected_refit
    assert trained.num_seeds == 1


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

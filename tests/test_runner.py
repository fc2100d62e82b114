"""vae_jax.runner: both drivers go through it — a single run and a sweep of one member get the
same numbers from the one fit → evaluate sequence — and a re-evaluated row keeps its speeds."""

import csv

import ml_collections
import pytest
from conftest import SPEED_KEYS, tiny_config

from vae_jax import experiment, runner, sweep


def test_a_reevaluated_row_keeps_the_speeds_it_trained_at():
    previous = [{"test/elbo": -5.0, "train/steps_per_sec": 40.0, "train/examples_per_sec": 80.0}]
    rows = [{"test/elbo": -4.0, "train/steps_per_sec": None, "train/examples_per_sec": None}]
    runner.keep_speeds(rows, previous)
    assert rows == [
        {"test/elbo": -4.0, "train/steps_per_sec": 40.0, "train/examples_per_sec": 80.0}
    ]
    trained = [{"train/steps_per_sec": 12.0, "train/compile_s": 3.0}]
    runner.keep_speeds(trained, [{"train/steps_per_sec": 40.0, "train/compile_s": 9.0}])
    assert trained == [{"train/steps_per_sec": 12.0, "train/compile_s": 3.0}]  # it trained
    other = [{"train/steps_per_sec": None}]
    runner.keep_speeds(other, previous * 2)  # another run's rows: left alone
    assert other == [{"train/steps_per_sec": None}]


@pytest.mark.slow  # the one-runner twin of test_sweep's test_sweep_member_equals_single_run
def test_a_single_run_and_a_one_member_sweep_give_the_same_numbers(
    tmp_path, monkeypatch, no_figures
):
    calls = []
    fit_and_evaluate = runner.fit_and_evaluate

    def spy(*args, members, **kwargs):
        calls.append(members)
        return fit_and_evaluate(*args, members=members, **kwargs)

    monkeypatch.setattr(runner, "fit_and_evaluate", spy)
    config = tiny_config()
    single = experiment.train_and_evaluate(config, tmp_path / "single")
    config.sweep = ml_collections.ConfigDict(
        {"sigma": (config.likelihood.sigma,), "seeds": (config.seed,), "references": ()}
    )
    (row,) = sweep.train_and_evaluate(config, tmp_path / "sweep")
    assert calls == [False, True]  # the single run unstacked, the sweep's member stacked
    with open(tmp_path / "sweep" / "results.csv", newline="") as f:
        (stored,) = csv.DictReader(f)
    metrics = sorted(k for k in single if "/" in k and k not in SPEED_KEYS)
    assert len(metrics) > 10 and set(metrics) <= set(row)
    # The same program on one member: bit for bit, vmapped over a member axis of 1 or not.
    assert {k: row[k] for k in metrics} == {k: single[k] for k in metrics}
    assert {k: float(stored[k]) for k in metrics} == {k: single[k] for k in metrics}
    # σ: the sweep reports the config's value, the single run exp(log σ) in float32.
    assert row["sigma"] == config.likelihood.sigma
    assert single["sigma"] == pytest.approx(config.likelihood.sigma, rel=1e-6)

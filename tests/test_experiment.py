"""vae_jax.experiment: the result lines a run prints (rounded, with units, new keys taken, a
negative NLL explained once), a single run's phase and per-chunk progress lines, a finished run
left as it is (and `reevaluate` evaluating it again), and `debug_nans` scoped to the run."""

import json

import jax
import pytest
from conftest import TINY, fingerprint, mode, tiny_config, umask

from vae_jax import experiment

# ---------------------------------------------------------------------------------------------
# Result lines.


def test_result_lines_round_with_units_and_take_new_keys():
    results = {
        "test/elbo": -1474.17297,
        "test/iwae_nll": 1461.99451,
        "test/bits_per_dim": 10.6903217,
        "test/kl": 82.2376,
        "test/recon_mse": 0.0630313,
        "test/active_units": 32,
        "train/steps_per_sec": None,  # not measured: a resumed run trained no step
        "val/elbo": -1500.04,
        "train/iwae_nll": 1400.06,
        "test/iwae_nll_refit": 1450.0,
        "sigma_refit": 0.0996,
        "sigma": 0.1,
        "step": 20,
        "zz/new_metric": 1.23456789,
        "zz/label": "ok",
    }
    lines = experiment.result_lines(results)
    by_key = {line.split()[0]: line for line in lines}
    assert set(by_key) == set(results)
    assert "-1474.2" in by_key["test/elbo"] and "nats per example" in by_key["test/elbo"]
    assert "1462.0" in by_key["test/iwae_nll"] and "nats per example" in by_key["test/iwae_nll"]
    assert "10.690" in by_key["test/bits_per_dim"] and "bits/dim" in by_key["test/bits_per_dim"]
    assert "-1500.0" in by_key["val/elbo"] and "nats per example" in by_key["val/elbo"]
    assert "nats per example" in by_key["train/iwae_nll"]
    assert "nats per example" in by_key["test/iwae_nll_refit"]
    assert "0.0996" in by_key["sigma_refit"] and "σ" in by_key["sigma_refit"]
    assert "1.235" in by_key["zz/new_metric"] and "ok" in by_key["zz/label"]
    assert "–" in by_key["train/steps_per_sec"]
    assert [line.split()[0] for line in lines][:2] == ["test/elbo", "test/iwae_nll"]
    assert not any("density" in line for line in lines)  # nothing negative to explain


def test_result_lines_explain_a_negative_nll_once():
    lines = experiment.result_lines(
        {"test/elbo": 380.0, "test/iwae_nll": -534.0, "val/iwae_nll": -530.0}
    )
    notes = [line for line in lines if "density" in line]
    assert len(notes) == 1 and "exceed" in notes[0]


# ---------------------------------------------------------------------------------------------
# Whole runs.


@pytest.mark.slow  # two whole single runs
def test_single_run_shows_its_phases_and_a_finished_run_stays_finished(tmp_path, capsys):
    path = tmp_path / "run"
    with umask(0o022):
        results = experiment.train_and_evaluate(tiny_config(), path)
    err = capsys.readouterr().err  # not a terminal: a plain line per phase and per chunk
    steps = TINY["train.num_steps"]
    for line in (
        "train: compiling the training program",
        f"train: training to step {steps}",
        f"train: step {TINY['train.log_every']}/{steps}, loss ",
        f"train: step {steps}/{steps}, loss ",
        "evaluating on ",
        "writing plots/ and results.json",
    ):
        assert line in err, err
    for name in ("config.json", "results.json"):
        assert mode(path / name) == 0o644, name

    files = [path / name for name in ("config.json", "results.json", "metrics.jsonl")]
    before = [fingerprint(f) for f in files]
    again = experiment.train_and_evaluate(tiny_config(), path)
    err = capsys.readouterr().err
    assert "already finished" in err and "compiling" not in err and "evaluating" not in err
    assert [fingerprint(f) for f in files] == before
    assert again == results == json.loads((path / "results.json").read_text())

    reevaluated = experiment.train_and_evaluate(tiny_config(), path, reevaluate=True)
    err = capsys.readouterr().err
    assert "evaluating on " in err and "compiling" not in err
    assert reevaluated == results  # same checkpoint, same evaluation rng; speeds kept


def test_debug_nans_flag_turns_on_jax_debug_nans(monkeypatch, tmp_path):
    seen = {}

    class Stop(Exception):
        pass

    def record(config):
        seen["debug_nans"] = jax.config.jax_debug_nans
        raise Stop

    monkeypatch.setattr(experiment, "build_problem", record)
    assert jax.config.jax_debug_nans is False
    with pytest.raises(Stop, match="^$"):
        experiment.train_and_evaluate(tiny_config({"debug_nans": False}), str(tmp_path / "a"))
    assert seen["debug_nans"] is False
    with pytest.raises(Stop, match="^$"):
        experiment.train_and_evaluate(tiny_config({"debug_nans": True}), str(tmp_path / "b"))
    assert seen["debug_nans"] is True
    # Scoped to the run (`with jax.debug_nans`): nothing global is left for a test to undo.
    assert jax.config.jax_debug_nans is False

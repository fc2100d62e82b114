"""What a newcomer sees (issue 11): one-line messages, --help/--print_config, results with units,
phase and per-chunk progress lines, quiet first runs, result files that honour the umask, and a
finished run that stays finished."""

import contextlib
import json
import os
import pathlib
import stat
import subprocess
import sys

import ml_collections
import pytest
from conftest import REPO, TINY, load_config, tiny_config

from vae_jax import experiment, sweep, workdir

DEFAULT = "--config=experiments/configs/default.py"
QUICK_SWEEP = "--config=experiments/configs/sigma_sweep.py:quick"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "experiments/run.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


@contextlib.contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def fingerprint(path: pathlib.Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


# ----------------------------------------------------------------------------- messages, flags


def test_config_field_typo_suggests_the_close_match(tmp_path):
    line = one_line_error(
        run_cli(DEFAULT, "--config.likelihood.sigmaa=0.1", f"--workdir={tmp_path}")
    )
    assert (
        "--config.likelihood.sigmaa: no such config field 'sigmaa' (did you mean 'sigma'?)" in line
    )
    assert "\\" not in line


def test_config_field_without_a_close_match_names_it_once(tmp_path):
    line = one_line_error(run_cli(DEFAULT, "--config.train.zzz=1", f"--workdir={tmp_path}"))
    assert "--config.train.zzz: no such config field 'zzz'" in line
    assert "did you mean" not in line


def test_scalar_for_a_tuple_field_is_refused_with_the_spelling_that_works(tmp_path):
    line = one_line_error(
        run_cli(QUICK_SWEEP, "--config.sweep.sigma=0.1", f"--workdir={tmp_path}/w")
    )
    assert "sweep.sigma" in line and "--config.sweep.sigma='(0.1,)'" in line
    assert not (tmp_path / "w").exists()
    # A string element needs its quotes inside the tuple; the message must spell them.
    line = one_line_error(
        run_cli(QUICK_SWEEP, "--config.sweep.references=laplace", f"--workdir={tmp_path}/w")
    )
    assert "--config.sweep.references=\"('laplace',)\"" in line


def test_help_exits_0_and_mentions_print_config_and_reevaluate():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "--print_config" in result.stdout and "--reevaluate" in result.stdout


def test_print_config_lists_every_field_with_overrides_and_exits_0(tmp_path):
    result = run_cli(
        QUICK_SWEEP,
        "--config.likelihood.sigma=0.3",
        "--config.sweep.sigma=0.2",  # a repeated flag builds a tuple: accepted
        "--config.sweep.sigma=0.4",
        "--print_config",
        f"--workdir={tmp_path}/w",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "likelihood.sigma = 0.3" in lines
    assert "sweep.sigma = (0.2, 0.4)" in lines
    fields = {line.split(" = ")[0] for line in lines}
    flat = {
        f"{group}.{key}"
        for group, sub in load_config().items()
        if hasattr(sub, "items")
        for key in sub
    }
    assert flat <= fields
    assert not (tmp_path / "w").exists()


def test_first_run_prints_only_its_own_build_line(tmp_path):
    """Fresh data and matplotlib dirs: no TFDS "Downloading ..." and no fontManager INFO line.
    The run stops at a config error right after building the data, so it stays cheap."""
    env = dict(
        os.environ,
        VAE_JAX_DATA_DIR=str(tmp_path / "data"),
        MPLCONFIGDIR=str(tmp_path / "mpl"),
    )
    result = run_cli(
        DEFAULT,
        "--config.data.name=digits",
        "--config.train.batch_size=100000",
        f"--workdir={tmp_path}/w",
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("building the embedded dataset digits")
    assert lines[0].endswith("(once)")
    assert lines[1].startswith("error: train.batch_size=100000")


# ----------------------------------------------------------------------------- results, files


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


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(mask, tmp_path):
    with umask(mask):
        workdir.write_text_atomic(tmp_path / "atomic.txt", "x")
        with open(tmp_path / "plain.txt", "w") as f:  # what the umask gives any new file
            f.write("x")
    assert mode(tmp_path / "atomic.txt") == mode(tmp_path / "plain.txt") == 0o666 & ~mask


# ----------------------------------------------------------------------------- whole runs


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


@pytest.mark.slow  # a whole sweep and its report figures: outside the default suite's time budget
def test_finished_sweep_is_left_as_it_is(tmp_path, capsys):
    # test_sweep.py's sweep: the persistent compilation cache compiles it once per session.
    config = tiny_config(model__hidden_sizes=(16,), model__latent_dim=3)
    config.sweep = ml_collections.ConfigDict(
        {"sigma": [0.1, 0.5, 2.0], "seeds": [0, 1], "references": ()}
    )
    rows = sweep.train_and_evaluate(config, tmp_path)
    assert "gaussian: step 20/20, loss " in capsys.readouterr().err
    files = [tmp_path / "results.csv", tmp_path / "report.md"]
    before = [fingerprint(f) for f in files]
    stored = sweep.train_and_evaluate(config, tmp_path)
    err = capsys.readouterr().err
    assert "already finished" in err and str(tmp_path / "report.md") in err
    assert "compiling" not in err and "evaluating" not in err
    assert [fingerprint(f) for f in files] == before
    assert [(r["sigma"], r["seed"], r["status"]) for r in stored] == [
        (r["sigma"], r["seed"], r["status"]) for r in rows
    ]
    for new, old in zip(stored, rows, strict=True):
        assert new["test/elbo"] == pytest.approx(old["test/elbo"], rel=1e-12)

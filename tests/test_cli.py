"""End-to-end tests of experiments/run.py, run as a user runs it: a subprocess in the repo root."""

import json
import pathlib
import subprocess
import sys

from conftest import LIKELIHOOD_NAMES, TINY

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = "--config=experiments/configs/default.py"
TINY_FLAGS = [f"--config.{field}={value}" for field, value in TINY.items()]
# DESIGN.md's registry names, which a bad likelihood.name must list.


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI with `args`; the environment (data dir, JAX platform and cache) is inherited."""
    return subprocess.run(
        [sys.executable, "experiments/run.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_tiny_config_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    result = run_cli(DEFAULT, *TINY_FLAGS, f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr
    results = json.loads((workdir / "results.json").read_text())
    assert results["step"] == TINY["train.num_steps"]
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["data"]["name"] == "digits" and saved["model"]["hidden_sizes"] == [32]
    assert f"workdir: {workdir}" in result.stdout


def test_unknown_override_is_one_line_exit_2(tmp_path):
    line = assert_one_line_error(run_cli(DEFAULT, "--config.nope=1", f"--workdir={tmp_path}/w"))
    assert "nope" in line
    assert not (tmp_path / "w").exists()


def test_unknown_likelihood_names_the_allowed_values(tmp_path):
    line = assert_one_line_error(
        run_cli(DEFAULT, "--config.likelihood.name=nope", f"--workdir={tmp_path}/w")
    )
    assert "likelihood.name" in line
    missing = [name for name in LIKELIHOOD_NAMES if name not in line]
    assert not missing
    assert not (tmp_path / "w").exists()


def test_missing_config_file_is_one_line_exit_2(tmp_path):
    line = assert_one_line_error(
        run_cli("--config=experiments/configs/no_such_file.py", f"--workdir={tmp_path}/w")
    )
    assert "no_such_file.py" in line
    assert not (tmp_path / "w").exists()

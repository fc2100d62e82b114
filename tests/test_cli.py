"""What every command line shares (experiments/cli.py), as a user meets it (issue 39): `--help`
exits 0 with readable usage, Ctrl-C in any phase is one line and exit status 130, no JAX
backend-probe log line on a CPU-only machine (its warnings still shown), a missing --model file
says what its path is relative to, and score.py's table labels each score."""

import logging
import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import REPO, TINY, cli_env, config_flags, run_cli

from experiments import cli

SCORE = REPO / "experiments" / "score.py"
IMPLIED_SIGMA = REPO / "experiments" / "implied_sigma.py"
RUN = REPO / "experiments" / "run.py"

# A NumPy VAE of the 8×8 digits (tests/test_score.py's). `{slow_encode}` may put a pause into
# its third call of encode: the first two are score's shape checks, the third runs inside
# `jax.pure_callback` in the compiled scale fit.
MODEL_FILE = """
import sys, time
import numpy as np

_W = np.random.default_rng(0).normal(size=(64, 3)) * 0.1
_CALLS = []
{on_import}

def encode(x):
    _CALLS.append(1)
    {slow_encode}
    x = np.asarray(x).reshape(len(x), 64)
    mean = (x - 0.3) @ _W
    return mean, np.full_like(mean, -2.0)

def decode(z):
    return np.clip(0.3 + np.asarray(z) @ _W.T, 0, 1).reshape(len(z), 8, 8, 1)
"""
PAUSE = 'print("{marker}", file=sys.stderr, flush=True); time.sleep(120)'


def model_file(tmp_path, *, on_import: str = "", slow_encode: str = "pass"):
    path = tmp_path / "my_vae.py"
    path.write_text(MODEL_FILE.format(on_import=on_import, slow_encode=slow_encode))
    return path


def interrupt_at(args: list[str], marker: str, env: dict[str, str] | None = None) -> tuple:
    """Run `args`, send SIGINT once stderr shows a line holding `marker`; (exit status, the
    stderr lines that came after it)."""
    proc = subprocess.Popen(
        [sys.executable, *map(str, args)],
        cwd=REPO,
        env=env or cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if marker in line:
                break
        else:
            raise AssertionError(f"{marker!r} never came; stderr:\n{''.join(seen)}")
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=300)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, rest.splitlines()


# ------------------------------------------------------------------------------------ --help


@pytest.mark.parametrize(
    "script, example",
    [
        (
            IMPLIED_SIGMA,
            "    python experiments/implied_sigma.py --convention=pytorch_vae --data=mnist_5k \\",
        ),
        (SCORE, "    python experiments/score.py --model=path/to/my_vae.py --data=mnist_5k"),
    ],
)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_0_with_each_example_on_its_own_line(script, example, flag):
    proc = run_cli(flag, config=None, script=script)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert example in lines, proc.stdout  # a continued example keeps its backslash and newline
    assert not re.search(r"\S {6,}--", proc.stdout), "examples run together"
    assert any(line.startswith("  --[no]verbose:") for line in lines), proc.stdout


def test_score_usage_says_what_the_first_run_builds_not_seconds():
    proc = run_cli("--help", config=None, script=SCORE)
    assert "seconds" not in proc.stdout
    assert "feature network" in proc.stdout and "--sample_quality=false" in proc.stdout


# ------------------------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_while_loading_the_model_is_one_line_and_exit_130(tmp_path):
    on_import = PAUSE.format(marker="importing my_vae")
    path = model_file(tmp_path, on_import=on_import)
    status, after = interrupt_at([SCORE, f"--model={path}", "--data=digits"], "importing my_vae")
    assert (status, after) == (cli.INTERRUPTED, ["interrupted (Ctrl-C)"])


@pytest.mark.slow  # loads jax and the data and compiles the scale fit (about 20 s)
def test_ctrl_c_inside_a_callback_of_a_compiled_program_is_one_line_and_exit_130(tmp_path):
    """A KeyboardInterrupt raised in the user's encode inside `jax.pure_callback` reaches the
    command as jax's JaxRuntimeError, after jax logged its traceback: still one line."""
    slow = f"if len(_CALLS) == 3: {PAUSE.format(marker='third encode')}"
    path = model_file(tmp_path, slow_encode=slow)
    args = [SCORE, f"--model={path}", "--data=digits", "--num_samples=2", "--sample_quality=false"]
    status, after = interrupt_at(args, "third encode")
    assert (status, after) == (cli.INTERRUPTED, ["interrupted (Ctrl-C)"])


@pytest.mark.slow  # compiles the tiny model without the session's compilation cache (~30 s)
def test_ctrl_c_while_compiling_is_one_line_naming_the_workdir_and_exit_130(tmp_path):
    env = cli_env()
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a real compilation, long enough to interrupt
    workdir = tmp_path / "run"
    args = [RUN, f"--config={REPO / 'experiments/configs/default.py'}", f"--workdir={workdir}"]
    status, after = interrupt_at(
        [*args, *config_flags(TINY)], "compiling the training program", env
    )
    # One line and 130, not a segmentation fault (-11) in the interpreter's teardown while XLA's
    # compiler threads still run (`cli.interrupted`).
    line = (
        "interrupted (Ctrl-C); the checkpoints and results saved so far are kept: resume with "
        f"the same command and --workdir={workdir}"
    )
    assert (status, after) == (cli.INTERRUPTED, [line])


# A command whose Ctrl-C lands in a finalizer: Python prints the KeyboardInterrupt raised there
# ("Exception ignored in …") and goes on; so may C++ code that checks for signals.
SWALLOWING_COMMAND = """
import os, signal, sys, time
sys.path.insert(0, {repo!r})
from experiments import cli

class Finalized:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the handler runs here, inside __del__

def main(argv):
    Finalized()
    print("finished", flush=True)

cli.run(main, usage="a command whose Ctrl-C a finalizer swallows")
"""


def test_ctrl_c_that_a_finalizer_swallowed_still_ends_the_command_as_interrupted(tmp_path):
    script = tmp_path / "command.py"
    script.write_text(SWALLOWING_COMMAND.format(repo=str(REPO)))
    proc = subprocess.run(
        [sys.executable, str(script)], env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.stdout == "finished\n"  # the interrupt was swallowed where it landed
    # One line: not Python's "Exception ignored in …" report with its traceback.
    assert (proc.returncode, proc.stderr) == (cli.INTERRUPTED, "interrupted (Ctrl-C)\n")


# ------------------------------------------------------------------------------- log lines


def test_jax_logs_below_warning_are_left_out_and_its_warnings_kept():
    loggers = {name: logging.getLogger(name) for name in ("jax", "absl", "matplotlib")}
    levels = {name: logger.level for name, logger in loggers.items()}
    try:
        cli._quiet_logs(verbose=False)
        probe = logging.getLogger("jax._src.xla_bridge")  # "Unable to initialize backend 'tpu'"
        assert not probe.isEnabledFor(logging.INFO)
        assert probe.isEnabledFor(logging.WARNING)
    finally:
        for name, logger in loggers.items():
            logger.setLevel(levels[name])


@pytest.mark.slow  # loads jax and the digits (about 10 s)
def test_no_backend_probe_line_with_jax_platforms_unset():
    """jax probes every backend it knows when JAX_PLATFORMS is unset; on this machine it logged
    "I… xla_bridge.py:…] Unable to initialize backend 'tpu'" before experiments/cli.py."""
    env = {k: v for k, v in cli_env().items() if k != "JAX_PLATFORMS"}
    proc = subprocess.run(
        [sys.executable, str(IMPLIED_SIGMA), "--recon=mean", "--data=digits"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "xla_bridge" not in proc.stderr and "Unable to initialize" not in proc.stderr
    assert proc.stderr == "", proc.stderr


# ---------------------------------------------------------------------------- bad flags


@pytest.mark.parametrize(
    "script, arg, line",
    [
        (IMPLIED_SIGMA, "--recon=avg", "error: --recon=avg is not known; allowed: sum, mean"),
        (IMPLIED_SIGMA, "--num_dims=7.5", "error: --num_dims=7.5 must be an integer"),
        (SCORE, "--scale=pixel", "error: --scale=pixel is not known; allowed: shared, per_pixel"),
        (
            SCORE,
            "my_vae.py",
            "error: unexpected arguments: my_vae.py (flags are written --name=value)",
        ),
    ],
)
def test_an_argument_that_cannot_be_read_is_one_line_naming_what_works(script, arg, line):
    proc = run_cli(arg, config=None, script=script)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [line]


# ----------------------------------------------------------------------------- score.py


def test_a_missing_model_file_says_what_its_path_is_relative_to():
    proc = run_cli("--model=no/such_vae.py", config=None, script=SCORE)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: --model=no/such_vae.py: no such file (paths are relative to {REPO})"
    ]


@pytest.mark.slow  # scores a NumPy model of the digits (about 20 s)
def test_score_prints_each_score_with_its_unit_and_direction(tmp_path):
    path = model_file(tmp_path)
    args = [f"--model={path}", "--data=digits", "--num_samples=4", "--sample_quality=false"]
    proc = run_cli(*args, config=None, script=SCORE)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{path} scored on the test split of digits:"
    rows = {}
    for line in lines[1:]:
        if row := re.fullmatch(r"  (\S+) +(\S+)  (.+)", line):
            rows[row.group(1)] = row.group(3)
    assert set(rows) == {
        "test/elbo",
        "test/iwae_nll",
        "test/bits_per_dim",
        "test/kl",
        "test/recon_mse",
        "test/active_units",
        "sigma_refit",
    }, proc.stdout
    assert (
        rows["test/iwae_nll"].startswith("nats per example")
        and "(lower is better)" in rows["test/iwae_nll"]
    )
    assert rows["test/bits_per_dim"] == "bits/dim (lower is better)"
    assert rows["test/elbo"] == "nats per example (higher is better)"
    assert any("−log p(x) can be below 0" in line for line in lines), proc.stdout


def test_cli_run_module_reads_no_jax():
    """The edge every command shares loads no jax: --help and bad flags stay fast."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; import experiments.cli; print('jax' in sys.modules)"],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == "False", proc.stderr

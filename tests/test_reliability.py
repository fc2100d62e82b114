"""Reliability: bad input, non-finite numbers, preemption and resume, determinism.

The promise (docs/design.md "Errors", docs/troubleshooting.md): bad input prints ONE line that
starts with "error:" and names the field, exits with status 2, shows a traceback only with
--verbose, and leaves every file of an earlier run in the workdir as it was. What only the command
line can show (flag parsing, config files, what reaches stderr, exit statuses) goes through the
real CLI (`experiments/run.py` in a subprocess); the messages of errors raised once the flags are
parsed, and the files those errors leave, are checked in-process (`run.py` prints any ConfigError
as one line and exits 2, which the CLI cases show).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import (
    DEFAULT_CONFIG,
    LIKELIHOOD_NAMES,
    RUN,
    SIGMA_SWEEP_CONFIG,
    TINY,
    assert_one_line_error,
    cli_env,
    config_flags,
    figures_skipped,
    load_config,
    run_cli,
    snapshot,
    tiny_config,
    without_speeds,
)

from vae_jax import experiment, likelihoods, models, spec, sweep, workdir
from vae_jax.errors import ConfigError, UsageError, WorkdirError

# Long enough to be killed mid-run (80 chunks and 10 checkpoints after the first metrics line);
# TINY's shapes and chunk length, so it runs the programs TINY compiled.
KILLABLE = TINY | {"train.num_steps": 800, "train.checkpoint_every": 80}


def metrics_lines(path: pathlib.Path) -> list[dict]:
    """metrics.jsonl without the (machine-dependent) speeds."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in line.items() if k != "steps_per_sec"} for line in lines]


def checkpoint_steps(path: pathlib.Path) -> list[int]:
    directory = path / "checkpoints"
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def corrupt_checkpoint(path: pathlib.Path, step: int) -> None:
    """Overwrite a checkpoint's metadata and array data with garbage (a damaged disk)."""
    root = path / "checkpoints" / str(step) / "default"
    damaged = [root / "_METADATA", *(root / "ocdbt.process_0" / "d").iterdir()]
    for file in damaged:
        file.write_bytes(b"\x93garbage" * 8)


def assert_config_error(error: pytest.ExceptionInfo, *names: str) -> None:
    """A ConfigError whose message is one line naming each of `names` (run.py prints it)."""
    message = str(error.value)
    assert "\n" not in message, message
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"


# ---------------------------------------------------------------------------------------------
# Runs shared by several tests.


@pytest.fixture(scope="module")
def earlier_run(tiny_run) -> pathlib.Path:
    """A finished tiny run (conftest's, through the CLI): what bad input must leave untouched."""
    path = tiny_run[0]
    assert checkpoint_steps(path) == [10, 20]
    return path


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> pathlib.Path:
    """An uninterrupted run of the killable config: what every resumed run must reproduce (run
    in this process: test_train shows that a CLI process gives the same numbers)."""
    path = tmp_path_factory.mktemp("reference") / "run"
    with figures_skipped():
        experiment.train_and_evaluate(tiny_config(KILLABLE), path)
    return path


def assert_same_run(path: pathlib.Path, reference: pathlib.Path) -> None:
    """Final metrics and every logged step's losses identical to the bit (CPU)."""
    results = json.loads((path / "results.json").read_text())
    expected = json.loads((reference / "results.json").read_text())
    assert without_speeds(results) == without_speeds(expected)
    assert metrics_lines(path / "metrics.jsonl") == metrics_lines(reference / "metrics.jsonl")


def test_tiny_config_end_to_end(tiny_run):
    path, proc = tiny_run
    assert f"workdir: {path}" in proc.stdout
    results = json.loads((path / "results.json").read_text())
    assert results["step"] == TINY["train.num_steps"]
    saved = json.loads((path / "config.json").read_text())
    assert saved["data"]["name"] == "digits" and saved["model"]["hidden_sizes"] == [16]


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2, the earlier run untouched.

CLI_CASES = {  # what the flag parser refuses, and one error raised after it (likelihood.name)
    "unknown override": (["--config.train.no_such_field=1"], ["no_such_field"]),
    "sigma string": (["--config.likelihood.sigma=abc"], ["likelihood.sigma", "abc"]),
    "unknown likelihood.name": (
        ["--config.likelihood.name=gauss"],
        ["likelihood.name", "gauss", *LIKELIHOOD_NAMES],
    ),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_bad_config_through_the_cli_is_one_line_and_leaves_the_earlier_run(case, earlier_run):
    overrides, names = CLI_CASES[case]
    before = snapshot(earlier_run)
    proc = run_cli(f"--workdir={earlier_run}", *config_flags(TINY), *overrides)
    assert_one_line_error(proc, *names)
    assert snapshot(earlier_run) == before


CONFIG_CASES = {
    "unknown data.name": ({"data.name": "imagenet"}, ["data.name", "imagenet", "digits"]),
    "unknown model.kind": ({"model.kind": "resnet"}, ["model.kind", "resnet", "mlp"]),
    "sigma zero": ({"likelihood.sigma": 0.0}, ["likelihood.sigma", "> 0"]),
    "sigma negative": ({"likelihood.sigma": -0.5}, ["likelihood.sigma", "> 0"]),
    "sigma nan": ({"likelihood.sigma": math.nan}, ["likelihood.sigma", "nan"]),
    "latent_dim zero": ({"model.latent_dim": 0}, ["model.latent_dim", "> 0"]),
    "latent_dim negative": ({"model.latent_dim": -3}, ["model.latent_dim"]),
    "batch larger than data": (
        {"train.batch_size": 100000},
        ["train.batch_size", "100000", "1293"],  # digits' 1437 less the validation tenth
    ),
    "bernoulli on grey data": (
        {"likelihood.name": "bernoulli", "data.binarize": "none"},
        ["bernoulli", "data.binarize"],
    ),
    "different config in workdir": ({"seed": 7}, ["different config", "seed"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_is_one_line_and_leaves_the_earlier_run(case, earlier_run):
    fields, names = CONFIG_CASES[case]
    before = snapshot(earlier_run)
    with pytest.raises(UsageError) as error:
        experiment.train_and_evaluate(tiny_config(fields), earlier_run)
    assert_config_error(error, *names)
    assert snapshot(earlier_run) == before


def test_missing_config_file(earlier_run, tmp_path):
    missing = tmp_path / "no_such_config.py"
    before = snapshot(earlier_run)
    proc = run_cli(f"--workdir={earlier_run}", config=missing)
    assert_one_line_error(proc, "--config", "no_such_config.py")
    assert snapshot(earlier_run) == before


def test_missing_config_file_with_overrides(tmp_path):
    proc = run_cli(
        f"--workdir={tmp_path / 'w'}", "--config.seed=1", config=tmp_path / "no_such_config.py"
    )
    assert_one_line_error(proc, "--config", "no_such_config.py")
    assert not (tmp_path / "w").exists()


def test_config_file_without_get_config(tmp_path):
    config = tmp_path / "no_get_config.py"
    config.write_text("SEED = 0\n")
    proc = run_cli(f"--workdir={tmp_path / 'w'}", config=config)
    assert_one_line_error(proc, "--config", "get_config")
    assert not (tmp_path / "w").exists()


def test_config_file_that_raises_on_import(tmp_path):
    config = tmp_path / "broken.py"
    config.write_text("import no_such_module_for_vae_jax\n")
    proc = run_cli(f"--workdir={tmp_path / 'w'}", config=config)
    assert_one_line_error(proc, "--config", "no_such_module_for_vae_jax")


@pytest.mark.parametrize(
    "config, allowed",
    [
        ("default.py", "default.py has none"),
        ("sigma_sweep.py", "allowed: quick"),
        ("linear_vae.py", "allowed: lucas"),
    ],
)
def test_config_files_refuse_an_unknown_variant(config, allowed, tmp_path):
    path = SIGMA_SWEEP_CONFIG.parent / config
    proc = run_cli(f"--workdir={tmp_path / 'w'}", config=f"{path}:fast")
    assert_one_line_error(proc, "--config", "unknown variant 'fast'", allowed)
    assert not (tmp_path / "w").exists()


def test_verbose_adds_the_traceback(earlier_run):
    before = snapshot(earlier_run)
    proc = run_cli(
        f"--workdir={earlier_run}",
        *config_flags(TINY),
        "--config.likelihood.sigma=0",
        "--verbose",
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: likelihood.sigma"), proc.stderr
    assert snapshot(earlier_run) == before


def test_workdir_is_a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("keep me\n")
    with pytest.raises(WorkdirError) as error:
        experiment.train_and_evaluate(tiny_config(), path)
    assert_config_error(error, "--workdir", "a_file")
    assert path.read_text() == "keep me\n"


def test_workdir_under_a_file_cannot_be_created(tmp_path):
    # We run as root, so a chmod'ed directory stays writable; a path below a file cannot be made.
    path = tmp_path / "a_file"
    path.write_text("keep me\n")
    with pytest.raises(WorkdirError) as error:
        experiment.train_and_evaluate(tiny_config(), path / "run")
    assert_config_error(error, "--workdir", "cannot be created")
    assert path.read_text() == "keep me\n"


def test_workdir_not_writable_in_process(tmp_path, monkeypatch):
    # chmod does not stop root: pretend the access check fails, as it would for a normal user.
    monkeypatch.setattr(workdir.os, "access", lambda *args, **kwargs: False)
    with pytest.raises(WorkdirError, match="--workdir=.* is not writable"):
        workdir.prepare(tiny_config(), tmp_path / "run")
    assert not (tmp_path / "run" / "config.json").exists()


def test_catalog_dataset_offline_with_empty_data_dir(tmp_path):
    # Through the CLI: tfds' absl warnings ("Variant folder ... has no dataset_info.json") must
    # not reach stderr as a second line.
    empty = tmp_path / "empty_data"
    empty.mkdir()
    proc = run_cli(
        f"--workdir={tmp_path / 'w'}",
        *config_flags(TINY),
        "--config.data.name=mnist",
        env=cli_env(VAE_JAX_DATA_DIR=str(empty)),
    )
    assert_one_line_error(proc, "data.name", "mnist", "prepare_data.py --name=mnist", "[catalog]")
    assert not (tmp_path / "w").exists()


# Sweeps: `sweep.sigma` must be non-empty and numeric. A config file sets a bad list (lists cannot
# be given on the command line); the overrides need `sweep.sigma` to be a tuple in the config.
# In-process, test_sweep_lists_name_the_field checks every bad list; the slow cases show the line.
SWEEP_FIELDS = dict(TINY) | {"sweep.references": ("gaussian_learned",)}


def sweep_config_file(tmp_path: pathlib.Path, sigma_expr: str) -> pathlib.Path:
    path = tmp_path / "bad_sweep.py"
    path.write_text(
        "from experiments.configs import sigma_sweep\n\n\n"
        "def get_config(arg=None):\n"
        "    config = sigma_sweep.get_config('quick')\n"
        f"    config.sweep.sigma = {sigma_expr}\n"
        "    return config\n"
    )
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "sigma_expr, names",
    [("[]", ["sweep.sigma", "non-empty"]), ("[0.1, 'a']", ["sweep.sigma", "'a'"])],
)
def test_bad_sweep_sigma_in_config_file(sigma_expr, names, tmp_path):
    config = sweep_config_file(tmp_path, sigma_expr)
    proc = run_cli(f"--workdir={tmp_path / 'w'}", *config_flags(SWEEP_FIELDS), config=config)
    assert_one_line_error(proc, *names)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "override, names",
    [
        pytest.param(
            "--config.sweep.sigma=()", ["sweep.sigma", "non-empty"], marks=pytest.mark.slow
        ),
        ("--config.sweep.sigma=abc", ["sweep.sigma", "'abc'"]),
        pytest.param(
            "--config.sweep.sigma=(0.1,-2.0)", ["sweep.sigma", "-2"], marks=pytest.mark.slow
        ),
    ],
)
def test_bad_sweep_sigma_override(override, names, tmp_path):
    proc = run_cli(
        f"--workdir={tmp_path / 'w'}",
        *config_flags(SWEEP_FIELDS),
        override,
        config=f"{SIGMA_SWEEP_CONFIG}:quick",
    )
    assert_one_line_error(proc, *names)
    assert not (tmp_path / "w").exists()


def test_sweep_data_error_leaves_no_workdir_behind(tmp_path):
    # Every group's problem is built before workdir.prepare: a refused sweep leaves no
    # config.json that would refuse the corrected command as "a run of a different config".
    path = tmp_path / "w"
    config = tiny_config(
        SWEEP_FIELDS | {"train.batch_size": 100000}, base=load_config(SIGMA_SWEEP_CONFIG, "quick")
    )
    with pytest.raises(UsageError) as error:
        sweep.train_and_evaluate(config, path)
    assert_config_error(error, "train.batch_size")
    assert not (path / "config.json").exists()


# ---------------------------------------------------------------------------------------------
# Bad input in-process: every field check_config guards (cheap, no subprocess).

VALIDATION_CASES = [
    ({"data.name": "imagenet"}, "data.name"),
    ({"data.binarize": "sometimes"}, "data.binarize"),
    ({"model.kind": "resnet"}, "model.kind"),
    ({"likelihood.name": "poisson"}, "likelihood.name"),
    ({"model.latent_dim": 0}, "model.latent_dim"),
    ({"model.latent_dim": -1}, "model.latent_dim"),
    ({"model.latent_dim": 2.5}, "model.latent_dim"),
    ({"model.hidden_sizes": (16, 0)}, "model.hidden_sizes"),
    ({"model.hidden_sizes": ()}, "model.hidden_sizes"),
    ({"likelihood.sigma": 0.0}, "likelihood.sigma"),
    ({"likelihood.sigma": -1.0}, "likelihood.sigma"),
    ({"likelihood.sigma": math.nan}, "likelihood.sigma"),
    ({"likelihood.sigma": math.inf}, "likelihood.sigma"),
    ({"likelihood.sigma_floor": 0.0}, "likelihood.sigma_floor"),
    ({"likelihood.sigma_init": 1e-4}, "likelihood.sigma_init"),
    ({"train.num_steps": 0}, "train.num_steps"),
    ({"train.batch_size": 0}, "train.batch_size"),
    ({"train.learning_rate": 0.0}, "train.learning_rate"),
    ({"train.learning_rate": math.nan}, "train.learning_rate"),
    ({"train.beta": -1.0}, "train.beta"),
    ({"train.log_every": 0}, "train.log_every"),
    ({"train.checkpoint_every": 0}, "train.checkpoint_every"),
    ({"eval.iwae_samples": 0}, "eval.iwae_samples"),
    ({"seed": -1}, "seed"),
]


@pytest.mark.parametrize("fields, name", VALIDATION_CASES, ids=lambda x: str(x))
def test_check_config_names_the_field(fields, name):
    with pytest.raises(ConfigError) as raised:
        spec.parse(tiny_config(fields))
    message = str(raised.value)
    assert name in message
    assert "\n" not in message


def test_check_config_accepts_the_tiny_config():
    spec.parse(tiny_config())


@pytest.mark.parametrize(
    "field, values",
    [
        ("sigma", []),
        ("sigma", ()),
        ("sigma", "0.1"),
        ("sigma", [0.1, "a"]),
        ("sigma", [0.1, math.nan]),
        ("sigma", [0.1, 0.0]),
        ("sigma", [True]),
        ("seeds", [-1]),
        ("seeds", [0.5]),
        ("seeds", []),
    ],
)
def test_sweep_lists_name_the_field(field, values):
    config = tiny_config()
    config.sweep = ml_collections.ConfigDict({"sigma": [0.1, 1.0], "seeds": [0]} | {field: values})
    with pytest.raises(ConfigError, match=f"sweep.{field}"):
        sweep.members_by_group(config)


# ---------------------------------------------------------------------------------------------
# Numbers: σ driven to its floor, non-finite loss, debug_nans. (The bounds of learned and decoded
# σ themselves: test_models.py.)


def test_gradient_steps_toward_sigma_zero_stop_at_the_floor():
    # A perfect reconstruction: −log p falls without bound as σ → 0, so Adam with a huge step
    # drives the raw parameter to −∞. σ must stop at the floor, loss and gradients finite.
    floor = 1e-2
    x = jax.random.uniform(jax.random.key(0), (8, 8, 1))
    spec = likelihoods.get_likelihood("gaussian_learned")

    def loss(raw):
        log_sigma = models.bounded_log_sigma(raw, floor)
        return -spec.log_prob(x, x[None], log_sigma)

    tx = optax.adam(1e3)

    @jax.jit
    def step(raw, opt_state):
        value, grad = jax.value_and_grad(loss)(raw)
        update, opt_state = tx.update(grad, opt_state)
        return optax.apply_updates(raw, update), opt_state, value, grad

    raw = jnp.asarray(models.raw_for_sigma(1.0, floor), jnp.float32)
    opt_state = tx.init(raw)
    for _ in range(200):
        raw, opt_state, value, grad = step(raw, opt_state)
        assert np.isfinite(value) and np.isfinite(grad) and np.isfinite(raw)
    sigma = float(jnp.exp(models.bounded_log_sigma(raw, floor)))
    assert math.isfinite(sigma)
    assert sigma >= floor * (1 - 1e-6)
    assert sigma < 1.01 * floor  # it did get driven to the floor


def test_nonfinite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    # lr=1e30: the first update is finite, the loss after it is not. One step per chunk and a
    # checkpoint after each, so the last good checkpoint is the step just before the bad one.
    path = tmp_path / "run"
    fields = TINY | {"train.log_every": 1, "train.checkpoint_every": 1}
    proc = run_cli(f"--workdir={path}", *config_flags(fields), "--config.train.learning_rate=1e30")
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr
    # The progress lines of the steps before it, then the error as the one last line.
    lines = [line for line in proc.stderr.splitlines() if line.strip()][-1:]
    assert lines[0].startswith("error: non-finite loss at step "), proc.stderr
    assert proc.stderr.count("error:") == 1, proc.stderr
    assert "recon" in lines[0] or "kl" in lines[0]
    bad_step = int(lines[0].split("at step ")[1].split()[0])
    steps = checkpoint_steps(path)
    assert steps, "the good steps before the blow-up were not checkpointed"
    assert max(steps) == bad_step - 1
    assert not (path / "results.json").exists()
    assert max(line["step"] for line in metrics_lines(path / "metrics.jsonl")) == bad_step - 1
    restored = ocp.StandardCheckpointer().restore(
        path / "checkpoints" / str(max(steps)) / "default"
    )
    assert int(restored["state"]["step"]) == bad_step - 1
    for leaf in jax.tree.leaves(restored["state"]["params"]):
        assert np.all(np.isfinite(np.asarray(leaf)))


def test_debug_nans_flag_turns_on_jax_debug_nans(monkeypatch, tmp_path):
    seen = {}

    class Stop(Exception):
        pass

    def record(config):
        seen["debug_nans"] = jax.config.jax_debug_nans
        raise Stop

    monkeypatch.setattr(experiment, "build_problem", record)
    assert jax.config.jax_debug_nans is False
    with pytest.raises(Stop):
        experiment.train_and_evaluate(tiny_config({"debug_nans": False}), str(tmp_path / "a"))
    assert seen["debug_nans"] is False
    with pytest.raises(Stop):
        experiment.train_and_evaluate(tiny_config({"debug_nans": True}), str(tmp_path / "b"))
    assert seen["debug_nans"] is True
    # Scoped to the run (`with jax.debug_nans`): nothing global is left for a test to undo.
    assert jax.config.jax_debug_nans is False


# ---------------------------------------------------------------------------------------------
# Corrupted checkpoints.


def test_corrupted_newest_checkpoint_falls_back_to_the_previous_one(
    earlier_run, tmp_path, caplog, no_figures
):
    path = tmp_path / "run"
    shutil.copytree(earlier_run, path)
    corrupt_checkpoint(path, 20)
    with caplog.at_level(logging.WARNING):
        results = experiment.train_and_evaluate(tiny_config(), path)
    warnings = [r.getMessage() for r in caplog.records if r.name == "root"]
    assert any("resuming from the checkpoint at step 10" in w and "step 20" in w for w in warnings)
    expected = json.loads((earlier_run / "results.json").read_text())
    assert without_speeds(results) == without_speeds(expected)


def test_only_checkpoint_corrupted_exits_2_naming_it(earlier_run, tmp_path):
    # Through the CLI: restore_latest may not log a per-step warning line before the error.
    path = tmp_path / "run"
    shutil.copytree(earlier_run, path)
    shutil.rmtree(path / "checkpoints" / "10")
    corrupt_checkpoint(path, 20)
    before = snapshot(path)
    proc = run_cli(f"--workdir={path}", *config_flags(TINY))
    assert_one_line_error(proc, "no readable checkpoint", "step 20", str(path / "checkpoints"))
    assert snapshot(path) == before


def start(path: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(RUN), f"--config={DEFAULT_CONFIG}", f"--workdir={path}"]
        + config_flags(KILLABLE),
        cwd=RUN.parent.parent,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(proc: subprocess.Popen, condition, timeout: float = 300) -> bool:
    """Poll `condition()` until it holds (True) or the process ends first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return condition()
        time.sleep(0.002)
    raise TimeoutError("the run neither reached the awaited state nor ended")


def has_metrics(path: pathlib.Path) -> bool:
    metrics = path / "metrics.jsonl"
    return metrics.exists() and metrics.stat().st_size > 0


def kill_and_resume(path: pathlib.Path, condition, delay: float = 0.0) -> None:
    """Start the killable run, SIGKILL it `delay` s after `condition()` holds; nothing finished."""
    proc = start(path)
    try:
        wait_for(proc, condition)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate()
    assert not (path / "results.json").exists(), "the run finished before it was killed"


@pytest.mark.parametrize(
    "signum",
    # Both take the same path in `fit`; SIGINT runs with the slow tests.
    [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
)
def test_sigterm_saves_and_says_how_to_resume(signum, reference_run, tmp_path):
    path = tmp_path / "run"
    proc = start(path)
    try:
        assert wait_for(proc, lambda: has_metrics(path)), proc.communicate()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, stderr
    assert "Resume" in stderr and f"--workdir={path}" in stderr, stderr
    assert "Traceback" not in stderr
    assert not (path / "results.json").exists()
    stopped_at = max(line["step"] for line in metrics_lines(path / "metrics.jsonl"))
    assert max(checkpoint_steps(path)) == stopped_at  # saved where it stopped, not before
    # "The same command" runs train_and_evaluate on the same config: resumed here, in-process.
    with figures_skipped():
        experiment.train_and_evaluate(tiny_config(KILLABLE), path)
    assert_same_run(path, reference_run)


# In-process, test_train's test_interrupted_run_resumes_to_the_same_final_metrics resumes from
# an older checkpoint the same way.
@pytest.mark.slow
def test_sigkill_after_first_checkpoint_resumes_to_the_same_numbers(reference_run, tmp_path):
    path = tmp_path / "run"
    kill_and_resume(path, lambda: bool(checkpoint_steps(path)))
    proc = run_cli(f"--workdir={path}", *config_flags(KILLABLE))
    assert proc.returncode == 0, proc.stderr
    assert_same_run(path, reference_run)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["first_metrics", "random_early", "random_late", "twice"])
def test_sigkill_at_any_moment_resumes_to_the_same_numbers(moment, reference_run, tmp_path):
    path = tmp_path / "run"
    rng = random.Random(f"{moment}-{os.getpid()}")
    if moment == "first_metrics":
        kill_and_resume(path, lambda: has_metrics(path))
    elif moment == "random_early":  # often before training starts: compile, data, config.json
        deadline = time.monotonic() + rng.uniform(0.5, 4.0)
        kill_and_resume(path, lambda: time.monotonic() > deadline)
    elif moment == "random_late":  # somewhere in the training loop
        kill_and_resume(path, lambda: has_metrics(path), delay=rng.uniform(0.0, 0.5))
    else:  # killed, resumed, killed again at its next checkpoint, resumed
        kill_and_resume(path, lambda: bool(checkpoint_steps(path)))
        first = max(checkpoint_steps(path))
        kill_and_resume(path, lambda: max(checkpoint_steps(path), default=0) > first)
    proc = run_cli(f"--workdir={path}", *config_flags(KILLABLE))
    assert proc.returncode == 0, proc.stderr
    assert_same_run(path, reference_run)


# ---------------------------------------------------------------------------------------------
# Atomic result files.


def test_write_text_atomic_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "results.json"
    for i in range(20):
        workdir.write_text_atomic(target, f"version {i}\n")
    assert target.read_text() == "version 19\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_write_text_atomic_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "results.csv"
    workdir.write_text_atomic(target, "old,complete\n")
    with pytest.raises(UnicodeEncodeError):
        workdir.write_text_atomic(target, "new," + "x" * 100_000 + "\ud800")  # unencodable
    assert target.read_text() == "old,complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_concurrent_reader_never_sees_a_partial_file(tmp_path):
    target = tmp_path / "results.json"
    versions = [json.dumps({"v": i, "pad": "x" * 200_000}) for i in range(2)]
    workdir.write_text_atomic(target, versions[0])
    done = threading.Event()

    def write():
        for i in range(200):
            workdir.write_text_atomic(target, versions[i % 2])
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    reads = 0
    while not done.is_set():
        assert target.read_text() in versions
        reads += 1
    writer.join()
    assert reads > 0
    assert not [p for p in tmp_path.iterdir() if p.name != "results.json"]


# ---------------------------------------------------------------------------------------------
# Determinism of a sweep: two processes, and a killed one resumed as a whole. (Single runs in two
# processes: test_train.py.)


def read_csv_without_speeds(path: pathlib.Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [without_speeds(row) for row in rows]


@pytest.mark.slow
def test_sweep_is_deterministic_and_resumes_as_a_whole(tmp_path):
    sweep_flags = config_flags(SWEEP_FIELDS | {"train.num_steps": 200})
    config = f"{SIGMA_SWEEP_CONFIG}:quick"
    runs = {}
    for name in ("a", "b"):
        runs[name] = tmp_path / name
        proc = run_cli(f"--workdir={runs[name]}", *sweep_flags, config=config)
        assert proc.returncode == 0, proc.stderr
    expected = read_csv_without_speeds(runs["a"] / "results.csv")
    assert read_csv_without_speeds(runs["b"] / "results.csv") == expected
    assert all(row["status"] == "ok" for row in expected)

    # Killed once the first group has a checkpoint; the re-run finishes every group.
    path = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(RUN), f"--config={config}", f"--workdir={path}", *sweep_flags],
        cwd=RUN.parent.parent,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first_group = path / "groups" / "gaussian"
    try:
        wait_for(proc, lambda: bool(checkpoint_steps(first_group)))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate()
    assert not (path / "results.csv").exists()
    resumed = run_cli(f"--workdir={path}", *sweep_flags, config=config)
    assert resumed.returncode == 0, resumed.stderr
    assert read_csv_without_speeds(path / "results.csv") == expected

"""Reliability: bad input, non-finite numbers, preemption and resume, determinism.

The promise (DESIGN.md "Errors", docs/troubleshooting.md): bad input prints ONE line that starts
with "error:" and names the field, exits with status 2, shows a traceback only with --verbose,
and leaves every file of an earlier run in the workdir as it was. Most cases go through the real
CLI (`experiments/run.py` in a subprocess), the rest through `vae_jax.validate.check_config`.
"""

from __future__ import annotations

import csv
import importlib.util
import json
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

from vae_jax import experiment, likelihoods, models, sweep, validate, workdir
from vae_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
RUN = REPO / "experiments" / "run.py"
DEFAULT = REPO / "experiments" / "configs" / "default.py"
SIGMA_SWEEP = REPO / "experiments" / "configs" / "sigma_sweep.py"

# The tiny run: 8×8 digits, 20 steps in two chunks of 10, a checkpoint after each.
TINY = {
    "data.name": "digits",
    "model.hidden_sizes": (16,),
    "model.latent_dim": 3,
    "train.num_steps": 20,
    "train.log_every": 10,
    "train.checkpoint_every": 10,
    "train.batch_size": 16,
    "eval.iwae_samples": 4,
}
# Long enough to be killed mid-run (a couple of seconds of training on a 2-core CPU).
KILLABLE = dict(TINY) | {
    "model.hidden_sizes": (32,),
    "train.num_steps": 2000,
    "train.log_every": 20,
    "train.checkpoint_every": 40,
}
# Keys of results.json that measure the machine, not the model.
SPEED_KEYS = ("train/steps_per_sec", "train/examples_per_sec", "train/compile_s")


def flags(fields: dict) -> list[str]:
    return [f"--config.{k}={_flag_value(v)}" for k, v in fields.items()]


def _flag_value(value) -> str:
    if isinstance(value, tuple):
        return "(" + ",".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def config_of(fields: dict) -> ml_collections.ConfigDict:
    """default.py's get_config() (loaded from its path, as the CLI does) with `fields` set.

    Types are not enforced, so a test can set what a config file could (a float latent_dim).
    """
    spec = importlib.util.spec_from_file_location("reliability_default_config", DEFAULT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for field, value in fields.items():
        *parents, leaf = field.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        with node.ignore_type():
            node[leaf] = value
    return config


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """Subprocess environment: CPU, and a module-own data dir (embedded datasets build there)."""
    data_dir = tmp_path_factory.mktemp("reliability_data")
    environment = dict(os.environ, JAX_PLATFORMS="cpu", VAE_JAX_DATA_DIR=str(data_dir))
    environment.pop("XLA_FLAGS", None)  # one CPU device: the numbers tests compare must match
    return environment


def cli(
    *args: str, env: dict[str, str], config: str | os.PathLike = DEFAULT, timeout: float = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RUN), f"--config={config}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    """Exit status 2, stderr is exactly one non-empty line 'error: ...' naming each of `names`."""
    report = f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, report
    assert "Traceback" not in proc.stderr, report
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, report
    assert lines[0].startswith("error:"), report
    for name in names:
        assert name in lines[0], f"{name!r} not in the error line\n{report}"
    return lines[0]


def snapshot(path: pathlib.Path) -> dict[str, tuple[bytes, int] | None]:
    """Every file (bytes, mtime) and directory under `path`."""
    out: dict[str, tuple[bytes, int] | None] = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
    return out


def model_metrics(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in SPEED_KEYS}


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


# ---------------------------------------------------------------------------------------------
# Runs shared by several tests (module scope: each is one real CLI process).


@pytest.fixture(scope="module")
def earlier_run(env, tmp_path_factory) -> pathlib.Path:
    """A finished tiny run: the workdir that bad input must leave untouched."""
    path = tmp_path_factory.mktemp("earlier") / "run"
    proc = cli(f"--workdir={path}", *flags(TINY), env=env)
    assert proc.returncode == 0, proc.stderr
    assert checkpoint_steps(path) == [10, 20]
    return path


@pytest.fixture(scope="module")
def reference_run(env, tmp_path_factory) -> pathlib.Path:
    """An uninterrupted run of the killable config: what every resumed run must reproduce."""
    path = tmp_path_factory.mktemp("reference") / "run"
    proc = cli(f"--workdir={path}", *flags(KILLABLE), env=env)
    assert proc.returncode == 0, proc.stderr
    return path


def assert_same_run(path: pathlib.Path, reference: pathlib.Path) -> None:
    """Final metrics and every logged step's losses identical to the bit (CPU)."""
    results = json.loads((path / "results.json").read_text())
    expected = json.loads((reference / "results.json").read_text())
    assert model_metrics(results) == model_metrics(expected)
    assert metrics_lines(path / "metrics.jsonl") == metrics_lines(reference / "metrics.jsonl")


# ---------------------------------------------------------------------------------------------
# Bad input through the CLI: one line, exit status 2, the earlier run untouched.

CONFIG_CASES = {
    "unknown data.name": (["--config.data.name=imagenet"], ["data.name", "imagenet", "digits"]),
    "unknown likelihood.name": (
        ["--config.likelihood.name=gauss"],
        ["likelihood.name", "gauss", "bernoulli"],
    ),
    "unknown model.kind": (["--config.model.kind=resnet"], ["model.kind", "resnet", "mlp"]),
    "sigma zero": (["--config.likelihood.sigma=0"], ["likelihood.sigma", "> 0"]),
    "sigma negative": (["--config.likelihood.sigma=-0.5"], ["likelihood.sigma", "> 0"]),
    "sigma nan": (["--config.likelihood.sigma=nan"], ["likelihood.sigma", "nan"]),
    "sigma string": (["--config.likelihood.sigma=abc"], ["likelihood.sigma", "abc"]),
    "latent_dim zero": (["--config.model.latent_dim=0"], ["model.latent_dim", "> 0"]),
    "latent_dim negative": (["--config.model.latent_dim=-3"], ["model.latent_dim"]),
    "batch larger than data": (
        ["--config.train.batch_size=100000"],
        ["train.batch_size", "100000", "1437"],
    ),
    "bernoulli on grey data": (
        ["--config.likelihood.name=bernoulli", "--config.data.binarize=none"],
        ["bernoulli", "data.binarize"],
    ),
    "unknown override": (["--config.train.no_such_field=1"], ["no_such_field"]),
    "different config in workdir": (["--config.seed=7"], ["different config", "seed"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_is_one_line_and_leaves_the_earlier_run(case, earlier_run, env):
    overrides, names = CONFIG_CASES[case]
    before = snapshot(earlier_run)
    proc = cli(f"--workdir={earlier_run}", *flags(TINY), *overrides, env=env)
    assert_one_line_error(proc, *names)
    assert snapshot(earlier_run) == before


def test_missing_config_file(earlier_run, env, tmp_path):
    # Fails until run.py reports ml_collections' deferred load error (see the report's fix 1).
    missing = tmp_path / "no_such_config.py"
    before = snapshot(earlier_run)
    proc = cli(f"--workdir={earlier_run}", env=env, config=missing)
    assert_one_line_error(proc, "--config", "no_such_config.py")
    assert snapshot(earlier_run) == before


def test_missing_config_file_with_overrides(env, tmp_path):
    proc = cli(
        f"--workdir={tmp_path / 'w'}",
        "--config.seed=1",
        env=env,
        config=tmp_path / "no_such_config.py",
    )
    assert_one_line_error(proc, "--config", "no_such_config.py")
    assert not (tmp_path / "w").exists()


def test_config_file_without_get_config(env, tmp_path):
    config = tmp_path / "no_get_config.py"
    config.write_text("SEED = 0\n")
    proc = cli(f"--workdir={tmp_path / 'w'}", env=env, config=config)
    assert_one_line_error(proc, "--config", "get_config")
    assert not (tmp_path / "w").exists()


def test_config_file_that_raises_on_import(env, tmp_path):
    config = tmp_path / "broken.py"
    config.write_text("import no_such_module_for_vae_jax\n")
    proc = cli(f"--workdir={tmp_path / 'w'}", env=env, config=config)
    assert_one_line_error(proc, "--config", "no_such_module_for_vae_jax")


def test_unknown_config_variant(env, tmp_path):
    # Fails until run.py reports the last line of ml_collections' wrapped traceback (fix 7); today
    # the line is "... Error whilst parsing config file:" and the reason is lost.
    proc = cli(f"--workdir={tmp_path / 'w'}", env=env, config=f"{SIGMA_SWEEP}:fast")
    assert_one_line_error(proc, "--config", "unknown variant 'fast'", "quick")
    assert not (tmp_path / "w").exists()


def test_verbose_adds_the_traceback(earlier_run, env):
    before = snapshot(earlier_run)
    proc = cli(
        f"--workdir={earlier_run}",
        *flags(TINY),
        "--config.likelihood.sigma=0",
        "--verbose",
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: likelihood.sigma"), proc.stderr
    assert snapshot(earlier_run) == before


def test_workdir_is_a_file(env, tmp_path):
    path = tmp_path / "a_file"
    path.write_text("keep me\n")
    proc = cli(f"--workdir={path}", *flags(TINY), env=env)
    assert_one_line_error(proc, "--workdir", "a_file")
    assert path.read_text() == "keep me\n"


def test_workdir_under_a_file_cannot_be_created(env, tmp_path):
    # We run as root, so a chmod'ed directory stays writable; a path below a file cannot be made.
    path = tmp_path / "a_file"
    path.write_text("keep me\n")
    proc = cli(f"--workdir={path / 'run'}", *flags(TINY), env=env)
    assert_one_line_error(proc, "--workdir", "cannot be created")
    assert path.read_text() == "keep me\n"


def test_workdir_not_writable_in_process(tmp_path, monkeypatch):
    # chmod does not stop root: pretend the access check fails, as it would for a normal user.
    monkeypatch.setattr(workdir.os, "access", lambda *args, **kwargs: False)
    with pytest.raises(ConfigError, match="--workdir=.* is not writable"):
        workdir.prepare(config_of(TINY), tmp_path / "run")
    assert not (tmp_path / "run" / "config.json").exists()


def test_catalog_dataset_offline_with_empty_data_dir(env, tmp_path):
    # Fails while tfds' absl warning ("Variant folder ... has no dataset_info.json") reaches
    # stderr as a second line (see the report's fix 2).
    empty = tmp_path / "empty_data"
    empty.mkdir()
    proc = cli(
        f"--workdir={tmp_path / 'w'}",
        *flags(TINY),
        "--config.data.name=mnist",
        env=dict(env, VAE_JAX_DATA_DIR=str(empty)),
    )
    assert_one_line_error(proc, "data.name", "mnist", "prepare_data.py --name=mnist", "[catalog]")
    assert not (tmp_path / "w").exists()


# Sweeps: `sweep.sigma` must be non-empty and numeric. A config file sets a bad list (lists cannot
# be given on the command line); the overrides need `sweep.sigma` to be a tuple in the config.
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


@pytest.mark.parametrize(
    "sigma_expr, names",
    [("[]", ["sweep.sigma", "non-empty"]), ("[0.1, 'a']", ["sweep.sigma", "'a'"])],
)
def test_bad_sweep_sigma_in_config_file(sigma_expr, names, env, tmp_path):
    config = sweep_config_file(tmp_path, sigma_expr)
    proc = cli(f"--workdir={tmp_path / 'w'}", *flags(SWEEP_FIELDS), env=env, config=config)
    assert_one_line_error(proc, *names)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "override, names",
    [
        ("--config.sweep.sigma=()", ["sweep.sigma", "non-empty"]),
        ("--config.sweep.sigma=abc", ["sweep.sigma", "'abc'"]),
        ("--config.sweep.sigma=(0.1,-2.0)", ["sweep.sigma", "-2"]),
    ],
)
def test_bad_sweep_sigma_override(override, names, env, tmp_path):
    # Fails until sigma_sweep.py makes sweep.sigma a tuple (see the report's fix 3): ml_collections
    # cannot override a list field at all, so the message is about the type, not the value.
    proc = cli(
        f"--workdir={tmp_path / 'w'}",
        *flags(SWEEP_FIELDS),
        override,
        env=env,
        config=f"{SIGMA_SWEEP}:quick",
    )
    assert_one_line_error(proc, *names)
    assert not (tmp_path / "w").exists()


def test_sweep_data_error_leaves_no_workdir_behind(env, tmp_path):
    # Fails until sweep.train_and_evaluate builds its problems before workdir.prepare (fix 4):
    # today the refused sweep leaves a config.json, and the corrected command is then refused as
    # "a run of a different config".
    path = tmp_path / "w"
    proc = cli(
        f"--workdir={path}",
        *flags(SWEEP_FIELDS),
        "--config.train.batch_size=100000",
        env=env,
        config=f"{SIGMA_SWEEP}:quick",
    )
    assert_one_line_error(proc, "train.batch_size")
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
        validate.check_config(config_of(TINY | fields))
    message = str(raised.value)
    assert name in message
    assert "\n" not in message


def test_check_config_accepts_the_tiny_config():
    validate.check_config(config_of(TINY))


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
    config = config_of(TINY)
    config.sweep = ml_collections.ConfigDict({"sigma": [0.1, 1.0], "seeds": [0]} | {field: values})
    with pytest.raises(ConfigError, match=f"sweep.{field}"):
        sweep.members_by_group(config)


# ---------------------------------------------------------------------------------------------
# Numbers: bounded σ, non-finite loss, debug_nans.


def test_learned_sigma_is_bounded_by_floor_and_cap():
    floor = 1e-3
    raw = jnp.array([-1e30, -1e4, -50.0, 0.0, 50.0, 1e4, 1e30, -jnp.inf, jnp.inf], jnp.float32)
    log_sigma = models.bounded_log_sigma(raw, floor)
    sigma = np.exp(np.asarray(log_sigma, np.float64))
    assert np.all(np.isfinite(log_sigma))
    assert np.all(sigma >= np.float32(floor) * (1 - 1e-6))
    assert np.all(sigma <= models.MAX_SIGMA * (1 + 1e-6))


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


def test_learned_sigma_model_parameter_respects_the_floor():
    floor = 0.05
    model = models.VAE(
        kind="mlp",
        latent_dim=2,
        event_shape=(8, 8, 1),
        likelihood="gaussian_learned",
        hidden_sizes=(8,),
        sigma_floor=floor,
        sigma_init=1.0,
    )
    params = model.init(jax.random.key(0), jnp.zeros((8, 8, 1)))
    for raw in (-1e30, 1e30):
        pushed = jax.tree_util.tree_map_with_path(
            lambda path, leaf, raw=raw: (
                jnp.full_like(leaf, raw) if "sigma_raw" in str(path) else leaf
            ),
            params,
        )
        log_sigma = model.apply(pushed, method=models.VAE.learned_log_sigma)
        assert np.isfinite(log_sigma)
        assert floor * (1 - 1e-6) <= float(jnp.exp(log_sigma)) <= models.MAX_SIGMA * (1 + 1e-6)


def test_nonfinite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(env, tmp_path):
    # lr=1e30: the first update is finite, the loss after it is not. One step per chunk and a
    # checkpoint after each, so the last good checkpoint is the step just before the bad one.
    path = tmp_path / "run"
    fields = TINY | {"train.log_every": 1, "train.checkpoint_every": 1}
    proc = cli(f"--workdir={path}", *flags(fields), "--config.train.learning_rate=1e30", env=env)
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: non-finite loss at step "), proc.stderr
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
    previous = jax.config.jax_debug_nans
    try:
        with pytest.raises(Stop):
            experiment.train_and_evaluate(
                config_of(TINY | {"debug_nans": False}), str(tmp_path / "a")
            )
        assert seen["debug_nans"] is False
        with pytest.raises(Stop):
            experiment.train_and_evaluate(
                config_of(TINY | {"debug_nans": True}), str(tmp_path / "b")
            )
        assert seen["debug_nans"] is True
    finally:
        jax.config.update("jax_debug_nans", previous)


# ---------------------------------------------------------------------------------------------
# Corrupted checkpoints.


def test_corrupted_newest_checkpoint_falls_back_to_the_previous_one(earlier_run, env, tmp_path):
    # Fails until the unreadable step is moved out of orbax's way before it is saved again
    # (today: StepAlreadyExistsError for step 20; see the report's fix 5).
    path = tmp_path / "run"
    shutil.copytree(earlier_run, path)
    corrupt_checkpoint(path, 20)
    proc = cli(f"--workdir={path}", *flags(TINY), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "resuming from the checkpoint at step 10" in proc.stderr
    assert "step 20" in proc.stderr
    results = json.loads((path / "results.json").read_text())
    expected = json.loads((earlier_run / "results.json").read_text())
    assert model_metrics(results) == model_metrics(expected)


def test_only_checkpoint_corrupted_exits_2_naming_it(earlier_run, env, tmp_path):
    # Fails while restore_latest also logs a per-step warning line before the error (fix 6).
    path = tmp_path / "run"
    shutil.copytree(earlier_run, path)
    shutil.rmtree(path / "checkpoints" / "10")
    corrupt_checkpoint(path, 20)
    before = snapshot(path)
    proc = cli(f"--workdir={path}", *flags(TINY), env=env)
    assert_one_line_error(proc, "no readable checkpoint", "step 20", str(path / "checkpoints"))
    assert snapshot(path) == before


# ---------------------------------------------------------------------------------------------
# Preemption: SIGTERM/SIGINT save and say how to resume; SIGKILL at any moment resumes exactly.


def start(path: pathlib.Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(RUN), f"--config={DEFAULT}", f"--workdir={path}", *flags(KILLABLE)],
        cwd=REPO,
        env=env,
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


def kill_and_resume(path: pathlib.Path, env: dict[str, str], condition, delay: float = 0.0) -> None:
    """Start the killable run, SIGKILL it `delay` s after `condition()` holds; nothing finished."""
    proc = start(path, env)
    try:
        wait_for(proc, condition)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate()
    assert not (path / "results.json").exists(), "the run finished before it was killed"


@pytest.mark.parametrize(
    "signum",
    # Both take the same path in `fit`; SIGINT runs with the long tests to keep the default
    # suite under ~5 minutes on 2 cores.
    [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
)
def test_sigterm_saves_and_says_how_to_resume(signum, reference_run, env, tmp_path):
    path = tmp_path / "run"
    proc = start(path, env)
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
    resumed = cli(f"--workdir={path}", *flags(KILLABLE), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(path, reference_run)


def test_sigkill_after_first_checkpoint_resumes_to_the_same_numbers(reference_run, env, tmp_path):
    path = tmp_path / "run"
    kill_and_resume(path, env, lambda: bool(checkpoint_steps(path)))
    proc = cli(f"--workdir={path}", *flags(KILLABLE), env=env)
    assert proc.returncode == 0, proc.stderr
    assert_same_run(path, reference_run)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["first_metrics", "random_early", "random_late", "twice"])
def test_sigkill_at_any_moment_resumes_to_the_same_numbers(moment, reference_run, env, tmp_path):
    path = tmp_path / "run"
    rng = random.Random(f"{moment}-{os.getpid()}")
    if moment == "first_metrics":
        kill_and_resume(path, env, lambda: has_metrics(path))
    elif moment == "random_early":  # often before training starts: compile, data, config.json
        deadline = time.monotonic() + rng.uniform(0.5, 4.0)
        kill_and_resume(path, env, lambda: time.monotonic() > deadline)
    elif moment == "random_late":  # somewhere in the training loop
        kill_and_resume(path, env, lambda: has_metrics(path), delay=rng.uniform(0.0, 0.5))
    else:  # killed, resumed, killed again at its next checkpoint, resumed
        kill_and_resume(path, env, lambda: bool(checkpoint_steps(path)))
        first = max(checkpoint_steps(path))
        kill_and_resume(path, env, lambda: max(checkpoint_steps(path), default=0) > first)
    proc = cli(f"--workdir={path}", *flags(KILLABLE), env=env)
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
# Determinism: same config and seed, two fresh processes, identical numbers.


def test_two_fresh_processes_give_identical_results(reference_run, env, tmp_path):
    path = tmp_path / "run"
    proc = cli(f"--workdir={path}", *flags(KILLABLE), env=env)
    assert proc.returncode == 0, proc.stderr
    assert_same_run(path, reference_run)


def read_csv_without_speeds(path: pathlib.Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in row.items() if k not in SPEED_KEYS} for row in rows]


@pytest.mark.slow
def test_sweep_is_deterministic_and_resumes_as_a_whole(env, tmp_path):
    sweep_flags = [*flags(SWEEP_FIELDS | {"train.num_steps": 200})]
    config = f"{SIGMA_SWEEP}:quick"
    runs = {}
    for name in ("a", "b"):
        runs[name] = tmp_path / name
        proc = cli(f"--workdir={runs[name]}", *sweep_flags, env=env, config=config)
        assert proc.returncode == 0, proc.stderr
    expected = read_csv_without_speeds(runs["a"] / "results.csv")
    assert read_csv_without_speeds(runs["b"] / "results.csv") == expected
    assert all(row["status"] == "ok" for row in expected)

    # Killed once the first group has a checkpoint; the re-run finishes every group.
    path = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(RUN), f"--config={config}", f"--workdir={path}", *sweep_flags],
        cwd=REPO,
        env=env,
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
    resumed = cli(f"--workdir={path}", *sweep_flags, env=env, config=config)
    assert resumed.returncode == 0, resumed.stderr
    assert read_csv_without_speeds(path / "results.csv") == expected

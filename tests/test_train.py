"""Tests for vae_jax.train: the jitted step, the on-device chunk, non-finite handling, the
workdir contract of `train_and_evaluate` (files, determinism, resume, config guard), a learned
scale fitted on validation data during training (`make_scale_fit`), and through the CLI a
non-finite loss, SIGTERM/SIGINT and SIGKILL at any moment, each resumed to the same numbers as
an uninterrupted run."""

import dataclasses
import json
import math
import os
import pathlib
import random
import shutil
import signal
import struct
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import (
    DEFAULT_CONFIG,
    LIKELIHOOD_NAMES,
    RUN,
    TINY,
    checkpoint_steps,
    cli_env,
    config_flags,
    figures_skipped,
    run_cli,
    snapshot,
    tiny_config,
    wait_for,
    without_speeds,
)

from vae_jax import checkpoint, console, experiment, loop, models, objective, spec, sweep, train
from vae_jax.errors import ConfigError, NonFiniteError, WorkdirError

# docs/design.md, "Final metric keys".
FINAL_KEYS = (
    "test/elbo",
    "test/recon_mse",
    "test/kl",
    "test/active_units",
    "test/collapsed_fraction",
    "test/iwae_nll",
    "test/bits_per_dim",
    "train/examples_per_sec",
    "train/steps_per_sec",
    "sigma",
)


def read_metrics(path: pathlib.Path) -> list[dict]:
    """metrics.jsonl without its wall-clock speed, the only entry two identical runs differ in."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "steps_per_sec"} for line in lines]


@pytest.fixture(scope="module")
def problem():
    return experiment.build_problem(tiny_config())


# One optimiser for the module: `tx` is static metadata of TrainState, so a new one retraces.
TX = train.make_optimizer(tiny_config())


def initial_state(problem, learning_rate=1e-3):
    state = train.create_train_state(problem, TX, jax.random.key(0))
    # The learning rate is optimiser state (inject_hyperparams): changing it needs no retrace.
    hyperparams = {**state.opt_state.hyperparams, "learning_rate": jnp.float32(learning_rate)}
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))


def hyper():
    return objective.make_hyper(0.1, 1.0)


@pytest.fixture(scope="module")
def step(problem):
    """The jitted train step, shared by this module's tests: all of them together trace it once."""
    chex.clear_trace_counter()
    return jax.jit(chex.assert_max_traces(train.make_train_step(problem), n=1))


@pytest.fixture(scope="module")
def chunk(problem):
    """Three steps per call, as `loop.fit` runs it (jit, state donated)."""
    return jax.jit(train.make_train_chunk(problem, 3), donate_argnums=0)


# ----------------------------------------------------------------------------- the step


def test_train_step_traces_once(problem, step):
    state = initial_state(problem)
    batch = jnp.asarray(problem.train_x[:16])
    for _ in range(3):  # a fresh state's step is a Python int, later ones are arrays: no retrace
        state, step_metrics = step(state, batch, hyper(), jax.random.key(1))
    assert int(state.step) == 3
    chex.assert_tree_all_finite(step_metrics)


def test_train_step_lowers_the_loss_on_a_fixed_batch(problem, step):
    state = initial_state(problem, learning_rate=3e-3)
    batch = jnp.asarray(problem.train_x[:16])
    losses = []
    for _ in range(15):
        state, step_metrics = step(state, batch, hyper(), jax.random.key(1))
        losses.append(float(step_metrics["loss"]))
    assert np.mean(losses[-3:]) < 0.9 * losses[0], losses


def test_chunk_equals_single_steps_with_the_same_batches(problem, step, chunk):
    """Two chunks of 3 steps == 6 single steps on the batches the chunk docstring defines."""
    batch_size, rng = problem.batch_size, jax.random.key(7)
    train_x = jnp.asarray(problem.train_x[:40])  # 2 steps per epoch: the chunks cross epochs
    chunked = initial_state(problem)
    chunk_metrics = []
    for _ in range(2):
        chunked, m = chunk(chunked, train_x, hyper(), rng)
        chunk_metrics.append(m)
    chunk_metrics = jax.tree.map(lambda *m: jnp.concatenate(m), *chunk_metrics)

    perm_rng, step_rng = jax.random.split(rng)
    steps_per_epoch = train_x.shape[0] // batch_size
    single = initial_state(problem)
    step_metrics = []
    for s in range(6):
        epoch, position = divmod(s, steps_per_epoch)
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(perm_rng, epoch), 40))
        batch = train_x[perm[position * batch_size : (position + 1) * batch_size]]
        single, m = step(single, batch, hyper(), step_rng)
        step_metrics.append(m)
    step_metrics = jax.tree.map(lambda *m: jnp.stack(m), *step_metrics)

    assert int(chunked.step) == int(single.step) == 6
    chex.assert_trees_all_close(chunked.params, single.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(chunk_metrics, step_metrics, rtol=1e-5, atol=1e-5)


def test_chunk_runs_on_device_without_host_transfers(problem, chunk):
    state = jax.device_put(initial_state(problem))
    train_x, hyper_, rng = jax.device_put((problem.train_x[:40], hyper(), jax.random.key(0)))
    state, _ = chunk(state, train_x, hyper_, rng)  # compiles (if no other test did) outside
    with jax.transfer_guard("disallow"):
        state, step_metrics = chunk(state, train_x, hyper_, rng)
        state, step_metrics = chunk(state, train_x, hyper_, rng)
    assert int(state.step) == 9
    chex.assert_shape(step_metrics["loss"], (3,))


def test_non_finite_step_keeps_the_state_and_check_finite_names_step_and_term(problem, step):
    state = initial_state(problem)
    batch = np.array(problem.train_x[:16])
    batch[3, 2, 5, 0] = np.nan
    new_state, step_metrics = step(state, jnp.asarray(batch), hyper(), jax.random.key(1))
    assert not np.isfinite(step_metrics["loss"])
    # Parameters are kept (the run or member then stops for good, so its optimiser state is
    # never used again); the step counter advances in lockstep (train.py).
    chex.assert_trees_all_equal(new_state.params, state.params)
    assert int(new_state.step) == int(state.step) + 1
    as_chunk = {k: np.asarray(v)[None] for k, v in jax.device_get(step_metrics).items()}
    with pytest.raises(NonFiniteError, match=r"step 8 .*recon"):
        loop.check_finite(as_chunk, first_step=7)

    # A stopped member is frozen the same way, even on a finite batch.
    stopped = hyper().replace(running=jnp.bool_(False))
    batch = jnp.asarray(problem.train_x[:16])
    frozen, frozen_metrics = step(state, batch, stopped, jax.random.key(1))
    assert np.isfinite(frozen_metrics["loss"])
    chex.assert_trees_all_equal(frozen.params, state.params)


def test_check_finite_names_the_first_bad_step_and_only_the_bad_term():
    step_metrics = {
        "loss": np.array([1.0, 2.0, np.inf, np.nan]),
        "recon": np.array([1.0, 2.0, 3.0, np.nan]),
        "kl": np.array([0.1, 0.2, np.inf, 0.4]),
    }
    with pytest.raises(NonFiniteError, match=r"step 13 in the kl term") as info:
        loop.check_finite(step_metrics, first_step=10)
    assert "recon" not in str(info.value)
    loop.check_finite({k: v[:2] for k, v in step_metrics.items()}, first_step=10)


# Compiling a chunk costs ~2 s of CPU per likelihood even unoptimised (conftest); the default
# selection keeps a decoder σ head and the discrete data (the widest decoder), and `-m slow` runs
# the rest (test_objective's flat-event test builds every family's problem and gradient too).
QUICK_LIKELIHOODS = ("gaussian_decoder", "discretized_logistic")


@pytest.mark.parametrize(
    "name",
    [
        name if name in QUICK_LIKELIHOODS else pytest.param(name, marks=pytest.mark.slow)
        for name in LIKELIHOOD_NAMES
    ],
)
def test_every_likelihood_trains_five_finite_steps(name):
    # The discretised logistic models 256 pixel levels: digits (17 levels) is refused for it.
    data_name = "mnist_5k" if name == "discretized_logistic" else "digits"
    problem = experiment.build_problem(
        tiny_config(likelihood__name=name, data__binarize="dynamic", data__name=data_name)
    )
    args = (initial_state(problem), jnp.asarray(problem.train_x[:40]), hyper(), jax.random.key(0))
    state, step_metrics = jax.jit(train.make_train_chunk(problem, 5))(*args)
    assert int(state.step) == 5
    chex.assert_tree_all_finite((state.params, step_metrics))


def test_discretized_logistic_on_data_without_256_levels_is_a_config_error():
    with pytest.raises(ConfigError, match="256 pixel levels.*digits.*17"):
        experiment.build_problem(tiny_config(likelihood__name="discretized_logistic"))


def test_bernoulli_on_grey_data_without_binarisation_is_a_config_error(tmp_path):
    config = tiny_config(likelihood__name="bernoulli", data__binarize="none")
    with pytest.raises(ConfigError, match="binar"):
        experiment.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory):
    """The tiny config run to completion twice: `a` by the CLI in another process (conftest's
    `tiny_run`), `b` here in-process. Returns ({name: workdir}, this process's results)."""
    path = tmp_path_factory.mktemp("runs") / "b"
    return {"a": tiny_run[0], "b": path}, experiment.train_and_evaluate(tiny_config(), path)


def copy_of(runs, name: str, tmp_path: pathlib.Path) -> pathlib.Path:
    copy = tmp_path / f"copy_of_{name}"
    shutil.copytree(runs[0][name], copy)
    return copy


def results_of(path: pathlib.Path) -> dict:
    return json.loads((path / "results.json").read_text())


def test_run_writes_the_workdir_contract(runs):
    path, results = runs[0]["b"], runs[1]
    assert json.loads((path / "config.json").read_text()) == json.loads(
        json.dumps(tiny_config().to_dict())
    )
    assert [m["step"] for m in read_metrics(path / "metrics.jsonl")] == [10, 20]
    saved = json.loads((path / "results.json").read_text())
    assert saved == results
    missing = [k for k in FINAL_KEYS if k not in saved]
    assert not missing
    for key in FINAL_KEYS:
        assert isinstance(saved[key], int | float) and math.isfinite(saved[key]), key
    assert saved["step"] == 20
    assert 0 <= saved["test/active_units"] <= 3
    np.testing.assert_allclose(saved["sigma"], 0.1, rtol=1e-5)  # the config's fixed σ
    assert checkpoint.Checkpoints(path / "checkpoints").latest_step() == 20
    plots = sorted((path / "plots").glob("*.png"))
    assert plots and all(p.read_bytes().startswith(b"\x89PNG") for p in plots)


def read_events(path: pathlib.Path) -> list:
    """The events of path's TensorBoard files, oldest file first; the TFRecord framing (length,
    its CRC, the Event proto, its CRC) read here, only the proto decoded by tensorboardX."""
    from tensorboardX.proto import event_pb2

    events = []
    for file in sorted(path.glob("events.out.tfevents.*")):
        raw, offset = file.read_bytes(), 0
        while offset < len(raw):
            (length,) = struct.unpack("<Q", raw[offset : offset + 8])
            events.append(event_pb2.Event.FromString(raw[offset + 12 : offset + 12 + length]))
            offset += 12 + length + 4
        assert offset == len(raw)
    return events


def scalars(events: list) -> dict[str, list[tuple[int, float]]]:
    out = {}
    for event in events:
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_tensorboard_events_beside_metrics_jsonl_hold_its_numbers(runs):
    path = runs[0]["a"]
    lines = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    logged = scalars(read_events(path))
    assert set(logged) == set(lines[0]) - {"step"}
    for tag, points in logged.items():
        assert [step for step, _ in points] == [line["step"] for line in lines]
        np.testing.assert_allclose([v for _, v in points], [line[tag] for line in lines], rtol=1e-6)


def test_tensorboard_tags_sweep_members_and_purges_after_a_resume(tmp_path):
    writer = console.EventWriter(tmp_path, 10)  # as `fit` opens it when resuming at step 10
    writer.write({"elbo": [1.5, -2.0], "steps_per_sec": 3.0, "step": 20})
    writer.close()
    events = read_events(tmp_path)
    assert scalars(events) == {
        "elbo/member_0": [(20, 1.5)],
        "elbo/member_1": [(20, -2.0)],
        "steps_per_sec": [(20, 3.0)],
    }
    restart = [e for e in events if e.HasField("session_log")]
    assert [(e.step, e.session_log.status) for e in restart] == [(10, 1)]  # 1: START
    console.EventWriter(tmp_path / "unused", 0).close()
    assert not (tmp_path / "unused").exists()


def test_same_config_and_seed_give_identical_metrics_in_two_processes(runs):
    paths = runs[0]
    assert without_speeds(results_of(paths["a"])) == without_speeds(results_of(paths["b"]))
    assert read_metrics(paths["a"] / "metrics.jsonl") == read_metrics(paths["b"] / "metrics.jsonl")


def test_reevaluating_a_finished_workdir_resumes_without_training(runs, tmp_path, no_figures):
    path = copy_of(runs, "a", tmp_path)
    results = experiment.train_and_evaluate(tiny_config(), path, reevaluate=True)
    assert results["step"] == 20
    stored = results_of(runs[0]["a"])
    assert results["train/steps_per_sec"] == stored["train/steps_per_sec"]  # kept
    assert without_speeds(results) == without_speeds(stored)
    assert read_metrics(path / "metrics.jsonl") == read_metrics(runs[0]["a"] / "metrics.jsonl")


def test_workdir_of_another_config_is_refused_and_untouched(runs, tmp_path):
    path = copy_of(runs, "a", tmp_path)
    before = snapshot(path)
    with pytest.raises(WorkdirError, match=r"different config.*train\.num_steps"):
        experiment.train_and_evaluate(tiny_config(train__num_steps=30), path)
    assert snapshot(path) == before


def test_interrupted_run_resumes_to_the_same_final_metrics(runs, tmp_path, no_figures):
    """A run stopped after its first checkpoint (step 10 of 20) ends as an uninterrupted one."""
    path = copy_of(runs, "b", tmp_path)
    ckpt = checkpoint.Checkpoints(path / "checkpoints")
    assert ckpt.latest_step() == 20
    ckpt.close()
    shutil.rmtree(ckpt.directory / "20")
    (path / "results.json").unlink()
    assert checkpoint.Checkpoints(path / "checkpoints").latest_step() == 10

    results = experiment.train_and_evaluate(tiny_config(), path)
    assert results["train/steps_per_sec"] is not None  # it did train steps 11..20
    assert without_speeds(results) == without_speeds(runs[1])
    assert read_metrics(path / "metrics.jsonl") == read_metrics(runs[0]["a"] / "metrics.jsonl")


# ---------------------------------------------------------------------------------------------
# A learned scale fitted on validation data (`likelihood.sigma_fit='validation'`,
# `make_scale_fit`): the gradient leaves the scale alone, each fit sets it to the validation MLE, a
# sweep member equals its single run, a resumed run replays the fits, and the configs it cannot
# serve are refused in one line.


# Two chunks of 10 steps with a fit after each (steps 10 and 20) and a checkpoint after each.
SCALE_FIT_FIELDS = {
    "likelihood.name": "gaussian_learned",
    "likelihood.sigma_fit_every": 10,
    "train.log_every": 20,
}


def learned_sigma(params) -> float:
    problem = experiment.build_problem(tiny_config(SCALE_FIT_FIELDS))
    return float(np.exp(problem.model.apply(params, method=models.VAE.learned_log_sigma)))


def restored(path, step: int):
    manager = ocp.CheckpointManager(path / "checkpoints")
    tree = manager.restore(step, args=ocp.args.StandardRestore())
    manager.close()
    return tree["state"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    path = tmp_path_factory.mktemp("scale_fit")
    with figures_skipped():
        results = experiment.train_and_evaluate(tiny_config(SCALE_FIT_FIELDS), path)
    return {"path": path, "results": results}


def test_the_gradient_does_not_reach_a_scale_fitted_on_validation_data():
    # Where every objective reads the learned σ; that Adam then leaves it where the last fit
    # put it is checked on a trained run below.
    fitted_on_val = experiment.build_problem(tiny_config(SCALE_FIT_FIELDS))
    by_gradient = dataclasses.replace(fitted_on_val, scale_on_validation=False)
    params = fitted_on_val.model.init(jax.random.key(0), jnp.zeros((8, 8)))
    hyper = objective.make_hyper(0.1, 1.0)
    grads = {}
    for name, problem in (("validation", fitted_on_val), ("gradient", by_gradient)):
        log_sigma = jax.grad(
            lambda p, problem=problem: objective.observation_log_sigma(problem, p, hyper)
        )
        grads[name] = float(log_sigma(params)["params"]["sigma_raw"])
    assert grads["validation"] == 0.0
    assert grads["gradient"] > 0.0


def test_the_scale_is_the_validation_mle_set_at_each_fit(fitted):
    path = fitted["path"]
    config = tiny_config(SCALE_FIT_FIELDS)
    problem = experiment.build_problem(config)
    records = read_metrics(path / "metrics.jsonl")
    assert [r["step"] for r in records] == [10, 20]
    # Steps 1-10 score with the starting σ, steps 11-20 with the σ the fit at step 10 set: the
    # chunk's mean σ is that one value (Adam, fed a zero gradient, never moves it).
    np.testing.assert_allclose(records[0]["sigma"], problem.model.sigma_init, rtol=1e-5)
    at_10 = learned_sigma(restored(path, 10)["params"])
    np.testing.assert_allclose(records[1]["sigma"], at_10, rtol=1e-5)
    assert abs(at_10 / problem.model.sigma_init - 1.0) > 1e-3  # the fit moved it

    # The final σ is the closed-form MLE of the final network's validation residuals:
    # σ̂² = mean over examples and pixels of (x − f(z))², z ~ q(z|x), recomputed here by hand.
    final = restored(path, 20)["params"]
    _, train_rng, _ = jax.random.split(jax.random.key(config.seed), 3)
    rng = jax.random.fold_in(jax.random.fold_in(train_rng, loop._SCALE_FIT_STREAM), 20)
    keys = jax.random.split(rng, 250)[: len(problem.val_x)]  # one evaluation batch, padded

    @jax.jit
    @jax.vmap
    def squared_residual(x, key):
        transform_key, z_key = jax.random.split(key)
        x = objective.transform_batch(problem, transform_key, x)
        mean, log_var = problem.model.apply(final, x, method=models.VAE.encode)
        z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(z_key, mean.shape)
        return jnp.square(x - problem.model.apply(final, z, method=models.VAE.decode)[0])

    squares = squared_residual(jnp.asarray(problem.val_x), keys)
    np.testing.assert_allclose(learned_sigma(final), np.sqrt(np.mean(squares)), rtol=1e-4)
    # As trained, the run scores with that σ.
    np.testing.assert_allclose(fitted["results"]["sigma"], learned_sigma(final), rtol=1e-5)


@pytest.mark.slow  # a twin of the resume tests above, for the scale fit
def test_a_resumed_run_replays_the_fits(fitted, tmp_path, no_figures):
    path = tmp_path / "resumed"
    shutil.copytree(fitted["path"], path)
    shutil.rmtree(path / "checkpoints" / "20")
    (path / "results.json").unlink()
    results = experiment.train_and_evaluate(tiny_config(SCALE_FIT_FIELDS), path)
    assert results["train/steps_per_sec"] is not None  # it trained steps 11-20 again
    assert without_speeds(results) == without_speeds(fitted["results"])
    chex.assert_trees_all_equal(restored(path, 20), restored(fitted["path"], 20))


@pytest.mark.slow  # 7 s: a vmapped group's own programs (the fit, under vmap, is the single run's)
def test_a_sweep_member_fits_its_scale_as_its_single_run(fitted, tmp_path, no_figures):
    config = tiny_config(SCALE_FIT_FIELDS)  # one group: the learned σ's own, seeds 0 and 1
    config.sweep = ml_collections.ConfigDict({"sigma": (0.1,), "seeds": (0, 1), "references": ()})
    rows = sweep.train_and_evaluate(config, tmp_path)
    learned = [r for r in rows if r["group"] == "gaussian_learned"]
    assert [r["seed"] for r in learned] == [0, 1]
    single = fitted["results"]
    for key in ("sigma", "test/iwae_nll", "test/elbo", "val/iwae_nll"):
        np.testing.assert_allclose(learned[0][key], single[key], rtol=1e-4, err_msg=key)
    # The refit σ is the argmax of a bound flat at its maximum: a vmapped member's sums, in
    # another order, move it by ~2e-4 (the sharded and two-process sweeps' tests allow 1e-3).
    np.testing.assert_allclose(learned[0]["sigma_refit"], single["sigma_refit"], rtol=1e-3)
    stacked = restored(tmp_path / "groups" / "gaussian_learned", 20)["params"]
    chex.assert_trees_all_close(
        jax.tree.map(lambda a: np.asarray(a)[0], stacked),
        restored(fitted["path"], 20)["params"],
        rtol=1e-4,
        atol=1e-6,
    )
    assert learned[1]["sigma"] != learned[0]["sigma"]  # each member's own fit


def test_the_fit_happens_at_multiples_of_sigma_fit_every_and_after_the_last_step():
    config = spec.parse(
        tiny_config(SCALE_FIT_FIELDS, likelihood__sigma_fit_every=15, train__num_steps=30)
    )
    assert train.log_interval(config) == 5  # chunks end at 15 and at 30
    calls = []
    problem = experiment.build_problem(config)
    after = loop.make_scale_fit(config, problem, jax.random.key(0))
    state = train.create_train_state(problem, train.make_optimizer(config), jax.random.key(1))
    hyper = objective.make_hyper(0.1, 1.0)
    for step in range(5, 31, 5):
        state = state.replace(step=jnp.int32(step))  # as if trained: each fit draws anew
        before = learned_sigma(state.params)
        state = after(state, hyper, step)
        calls.append(learned_sigma(state.params) != before)
    assert calls == [False, False, True, False, False, True]
    # A fixed σ or a gradient-learned one has nothing to fit, and chunks keep train.log_every.
    for fields in ({"likelihood.name": "gaussian"}, {"likelihood.sigma_fit": "gradient"}):
        other = spec.parse(
            tiny_config(
                SCALE_FIT_FIELDS | fields, likelihood__sigma_fit_every=15, train__num_steps=30
            )
        )
        assert loop.make_scale_fit(other, experiment.build_problem(other), None) is None
        assert train.log_interval(other) == 10


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"likelihood.sigma_fit": "test"}, "likelihood.sigma_fit='test' is not known"),
        ({"likelihood.sigma_fit_every": 0}, "likelihood.sigma_fit_every=0 must be > 0"),
        ({"data.validation_fraction": 0.0}, "data.validation_fraction=0.0 holds none out"),
        (
            {"model.kind": "linear", "train.full_batch": True, "data.dequantize": False},
            "likelihood.sigma_fit='validation': this linear Gaussian VAE",
        ),
    ],
)
def test_configs_the_fit_cannot_serve_are_refused_in_one_line(fields, message):
    with pytest.raises(ConfigError, match=message) as raised:
        experiment.build_problem(tiny_config(SCALE_FIT_FIELDS | fields))
    assert message in str(raised.value) and "\n" not in str(raised.value)


# ---------------------------------------------------------------------------------------------
# Through the CLI: a non-finite loss, SIGTERM/SIGINT, SIGKILL at any moment, then resumed.

# Long enough to be killed mid-run (80 chunks and 10 checkpoints after the first metrics line);
# TINY's shapes and chunk length, so it runs the programs TINY compiled.
KILLABLE = TINY | {"train.num_steps": 800, "train.checkpoint_every": 80}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> pathlib.Path:
    """An uninterrupted run of the killable config: what every resumed run must reproduce (run
    in this process: test_same_config_and_seed_give_identical_metrics_in_two_processes shows
    that a CLI process gives the same numbers)."""
    path = tmp_path_factory.mktemp("reference") / "run"
    with figures_skipped():
        experiment.train_and_evaluate(tiny_config(KILLABLE), path)
    return path


def assert_same_run(path: pathlib.Path, reference: pathlib.Path) -> None:
    """Final metrics and every logged step's losses identical to the bit (CPU)."""
    results = json.loads((path / "results.json").read_text())
    expected = json.loads((reference / "results.json").read_text())
    assert without_speeds(results) == without_speeds(expected)
    assert read_metrics(path / "metrics.jsonl") == read_metrics(reference / "metrics.jsonl")


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
    assert max(line["step"] for line in read_metrics(path / "metrics.jsonl")) == bad_step - 1
    restored = ocp.StandardCheckpointer().restore(
        path / "checkpoints" / str(max(steps)) / "default"
    )
    assert int(restored["state"]["step"]) == bad_step - 1
    for leaf in jax.tree.leaves(restored["state"]["params"]):
        assert np.all(np.isfinite(np.asarray(leaf)))


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


# A subprocess run, signalled: test_interrupted_run_resumes_to_the_same_final_metrics is its
# in-process twin.
@pytest.mark.slow
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
    stopped_at = max(line["step"] for line in read_metrics(path / "metrics.jsonl"))
    assert max(checkpoint_steps(path)) == stopped_at  # saved where it stopped, not before
    # "The same command" runs train_and_evaluate on the same config: resumed here, in-process.
    with figures_skipped():
        experiment.train_and_evaluate(tiny_config(KILLABLE), path)
    assert_same_run(path, reference_run)


# In-process, test_interrupted_run_resumes_to_the_same_final_metrics resumes from an older
# checkpoint the same way.
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

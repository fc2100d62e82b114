"""Training: TrainState, the jitted train step, the on-device epoch loop, and the host loop `fit`.

The pieces are pure functions of arrays so that `vae_jax.sweep` can stack many members and run
`jax.vmap` of the very same step:

  train_step(state, batch, hyper, rng) -> (state, metrics)      one optimiser step
  train_chunk(state, train_x, hyper, rng) -> (state, metrics)   `lax.scan` of steps; each step's
                                                                 batch is a pure function of
                                                                 (rng, step), so resuming from a
                                                                 checkpoint replays the same data
Anything a sweep varies (σ, β, learning rate, seed) is an array: σ and β in `Hyper`, the learning
rate inside the optimiser state (`optax.inject_hyperparams`), the seed in `rng`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.experimental import multihost_utils

from vae_jax import checkpoint, evaluate, objective, workdir
from vae_jax.errors import NonFiniteError
from vae_jax.objective import Hyper, Problem, example_elbo, transform_batch
from vae_jax.spec import RunSpec


class TrainState(train_state.TrainState):
    geco: objective.Geco  # GECO's multiplier and constraint average (unused by other members)


def make_optimizer(spec: RunSpec) -> optax.GradientTransformation:
    """Adam with the learning rate as optimiser state, so a sweep can vary it per member.

    `train.lr_schedule='cosine'` multiplies it by a cosine decay to 1% over `train.num_steps`
    (the shape is shared by all members; the peak rate stays a per-member array).
    """
    if spec.train.lr_schedule == "cosine":
        schedule = optax.cosine_decay_schedule(1.0, spec.train.num_steps, alpha=0.01)
    else:
        schedule = optax.constant_schedule(1.0)

    def adam(learning_rate):
        return optax.chain(
            optax.scale_by_adam(), optax.scale_by_schedule(schedule), optax.scale(-learning_rate)
        )

    return optax.inject_hyperparams(adam)(learning_rate=spec.train.learning_rate)


def create_train_state(
    problem: Problem, tx: optax.GradientTransformation, rng: jax.Array
) -> TrainState:
    x = jnp.zeros(problem.train_x.shape[1:], jnp.float32)
    params = problem.model.init(rng, x)
    return TrainState.create(
        apply_fn=problem.model.apply, params=params, tx=tx, geco=objective.initial_geco()
    )


def make_train_step(problem: Problem, *, batch_sharding: Any = None) -> Callable:
    """train_step(state, batch, hyper, rng) -> (state, metrics); pure, jit/vmap it.

    `batch_sharding` (a `NamedSharding` over a 'batch' mesh axis) splits the batch's examples
    across devices, for sweeps with fewer members than devices (`vae_jax.sweep`).
    """

    def train_step(state: TrainState, batch: jax.Array, hyper: Hyper, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        data_rng, sample_rng = jax.random.split(rng)
        x = transform_batch(problem, data_rng, batch)
        if batch_sharding is not None:
            x = jax.lax.with_sharding_constraint(x, batch_sharding)
        sample_rngs = jax.random.split(sample_rng, x.shape[0])
        hyper = objective.with_geco_sigma(problem, hyper, state.geco, state.step)

        def loss_fn(params):
            per_example = jax.vmap(
                lambda x, r: example_elbo(problem, params, x, hyper, r, problem.num_samples)
            )(x, sample_rngs)
            return -objective.batch_objective(per_example, hyper, state.step), per_example

        (loss, per_example), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        step_metrics = {
            "loss": loss,
            "elbo": jnp.mean(per_example["elbo"]),
            "recon": jnp.mean(per_example["recon"]),
            "kl": jnp.mean(per_example["kl"]),
        }
        if problem.likelihood.fixed_sigma or problem.likelihood.learns_scale:  # GECO's: σ(λ)
            log_sigma = objective.observation_log_sigma(problem, state.params, hyper)
            step_metrics["sigma"] = jnp.sqrt(jnp.mean(jnp.exp(2.0 * log_sigma)))
        if "sq_err" in per_example:  # a fixed σ: the per-pixel MSE GECO constrains
            step_metrics["mse"] = jnp.mean(per_example["sq_err"]) / math.prod(x.shape[1:])
        geco = objective.update_geco(problem, state.geco, hyper, per_example, state.step)
        # A non-finite step (or a stopped member) leaves the parameters at their last good
        # values, so a sweep's other members go on; the host sees the metric and stops the run
        # or the member for good (its optimiser state is then never used again). Masking the
        # updates, not the whole state, fuses into the parameter update: selecting over params
        # and both Adam moments cost 8% of a batch-128 step.
        keep = hyper.running & jnp.isfinite(loss)
        keep &= jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: jnp.where(keep, u, 0.0), updates)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            geco=jax.tree.map(lambda new, old: jnp.where(keep, new, old), geco, state.geco),
        )
        return new_state, step_metrics

    return train_step


def make_train_chunk(problem: Problem, num_steps: int, *, batch_sharding: Any = None) -> Callable:
    """train_chunk(state, train_x, hyper, rng): `num_steps` steps as one on-device `lax.scan`.

    The batch of step s is rows perm_e[(s mod S)·B : ...] of the device-resident train set, with
    perm_e a permutation drawn from (rng, epoch e = s // S): no host transfer in the loop, and
    the data order depends only on the seed and the step number.
    """
    train_step = make_train_step(problem, batch_sharding=batch_sharding)
    batch_size = problem.batch_size

    def train_chunk(state: TrainState, train_x: jax.Array, hyper: Hyper, rng: jax.Array):
        perm_rng, step_rng = jax.random.split(rng)
        num_examples = train_x.shape[0]
        steps_per_epoch = num_examples // batch_size
        # The permutations of every epoch this chunk touches, drawn once up front: a
        # permutation per step cost ~1.6 ms (17% of a batch-128 step, measured when this
        # replaced it) and gives the very same batches.
        first_epoch = state.step // steps_per_epoch
        epochs = first_epoch + jnp.arange(num_steps // steps_per_epoch + 2)
        perms = jax.vmap(
            lambda e: jax.random.permutation(jax.random.fold_in(perm_rng, e), num_examples)
        )(epochs)

        def body(state, _):
            epoch, position = jnp.divmod(state.step, steps_per_epoch)
            perm = perms[epoch - first_epoch]
            idx = jax.lax.dynamic_slice_in_dim(perm, position * batch_size, batch_size)
            state, step_metrics = train_step(state, train_x[idx], hyper, step_rng)
            return state, step_metrics

        return jax.lax.scan(body, state, length=num_steps)

    return train_chunk


# ----------------------------------------------------------------------------- the host loop


class _StopRequested:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next chunk boundary."""

    def __init__(self):
        self.signal: int | None = None

    def __enter__(self):
        self._previous = {
            s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)
        }
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class Preempted(Exception):
    """Raised after a SIGTERM/SIGINT once the state is checkpointed."""

    def __init__(self, message: str, signal: int):
        super().__init__(message)
        self.signal = signal


def check_finite(step_metrics: dict[str, np.ndarray], first_step: int, where: str = "") -> None:
    """Raise NonFiniteError naming the first step and term whose value is not finite."""
    bad = ~np.isfinite(step_metrics["loss"])
    if not bad.any():
        return
    i = int(np.argmax(bad))
    terms = [t for t in ("recon", "kl") if not np.isfinite(step_metrics[t][i])]
    raise NonFiniteError(
        f"{where}non-finite loss at step {first_step + i + 1} in the "
        f"{' and '.join(terms) or 'gradient'} term; the last good checkpoint is kept "
        "(try a smaller train.learning_rate or a larger likelihood.sigma_floor)"
    )


def log_interval(spec: RunSpec) -> int:
    """Steps per on-device chunk: they divide train.log_every and train.num_steps, and for a
    scale fitted on validation data (`spec.Likelihood.scale_on_validation`)
    likelihood.sigma_fit_every."""
    steps = math.gcd(spec.train.log_every, spec.train.num_steps)
    if spec.likelihood.scale_on_validation:
        steps = math.gcd(steps, spec.likelihood.sigma_fit_every)
    return steps


# Folded into a member's training key for the draws of its validation scale fits, a stream of
# its own (the steps fold the step number into a split of the same key).
_SCALE_FIT_STREAM = 0x5CA1E


def make_scale_fit(
    spec: RunSpec,
    problem: Problem,
    train_rng: jax.Array,
    *,
    members: bool = False,
    val_x: jax.Array | None = None,
) -> Callable[[Any, Hyper, int], Any] | None:
    """after_chunk(state, hyper, step) -> state for `fit`: at every multiple of
    likelihood.sigma_fit_every steps and after the last, a shared learned scale is set to its
    closed-form MLE on the validation split (`evaluate.make_fit_scale`: one z sample per
    example, keyed by the member's training key and step). None unless
    `problem.scale_on_validation`. With `members`, state, hyper and `train_rng` carry a leading
    member axis; a stopped member keeps its scale. `val_x`: the validation split as a device
    array placed for the program (default: `problem.val_x` on the default device).
    """
    if not problem.scale_on_validation:
        return None
    every, last = spec.likelihood.sigma_fit_every, spec.train.num_steps
    fit_scale = evaluate.make_fit_scale(problem, batch_size=spec.eval.batch_size)

    def one(state, running, val_x, rng):
        rng = jax.random.fold_in(jax.random.fold_in(rng, _SCALE_FIT_STREAM), state.step)
        fitted = fit_scale(state.params, val_x, rng)
        params = jax.tree.map(lambda new, old: jnp.where(running, new, old), fitted, state.params)
        return state.replace(params=params)

    program = jax.jit(jax.vmap(one, in_axes=(0, 0, None, 0)) if members else one, donate_argnums=0)
    val_x = jnp.asarray(problem.val_x) if val_x is None else val_x

    def after_chunk(state, hyper: Hyper, step: int):
        if step % every and step != last:
            return state
        return program(state, hyper.running, val_x, train_rng)

    return after_chunk


def phase(message: str) -> None:
    """One plain line on stderr as a run enters a phase, so a job log shows where it is."""
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def progress_bar(total: int, initial: int, desc: str):
    """tqdm on a terminal, left on screen when done; off when stderr is a file (`fit` then logs
    one line per chunk instead)."""
    import tqdm

    return tqdm.tqdm(
        total=total, initial=initial, desc=desc, disable=not sys.stderr.isatty(), leave=True
    )


def chunk_line(desc: str, record: dict[str, Any], total: int) -> str:
    """`desc: step 10/20, loss 123.4, 45.6 steps/s` from a metrics.jsonl record; a sweep's loss
    is the mean over its members whose loss is finite."""
    loss = np.asarray(record["loss"], np.float64)
    shown = f"{np.mean(loss[np.isfinite(loss)]):.4g}" if np.isfinite(loss).any() else "nan"
    speed = record["steps_per_sec"]
    return f"{desc}: step {record['step']}/{total}, loss {shown}, {speed:.1f} steps/s"


def fetch(tree: Any) -> Any:
    """Device arrays → host numpy. On a multi-host slice every process gets the whole global
    array (`process_allgather`), since a sharded array is not addressable from one host."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


@dataclasses.dataclass
class FitResult:
    state: Any
    hyper: Hyper
    train_seconds: float  # wall time of the chunks this process ran, compilation excluded
    trained_steps: int  # steps this process ran (0 when it only resumed a finished run)
    compile_seconds: float


def fit(
    spec: RunSpec,
    path: pathlib.Path,
    chunk_fn: Callable,
    state: Any,
    hyper: Hyper,
    train_x: jax.Array,
    train_rng: jax.Array,
    *,
    on_nonfinite: Callable[[dict[str, np.ndarray], int, Hyper], Hyper],
    after_chunk: Callable[[Any, Hyper, int], Any] | None = None,
    desc: str = "train",
) -> FitResult:
    """The host loop shared by single runs and sweeps: resume, run chunks, log, checkpoint.

    `chunk_fn(state, train_x, hyper, rng) -> (state, per-step metrics)` runs `log_interval`
    steps on device; `state` and `hyper` may carry a leading member axis. The checkpoint holds
    the state and `hyper` (whose `running` mask records stopped sweep members). After each chunk
    `on_nonfinite(metrics, first_step, hyper)` raises (single run) or returns `hyper` with the bad
    (or converged) members stopped (sweep); the loop ends at `train.num_steps` or when no
    member is running. `after_chunk(state, hyper, step) -> state` (`make_scale_fit`) runs next,
    before the checkpoint, so a resumed run replays it. SIGTERM/SIGINT checkpoint and raise
    `Preempted`.
    """
    with contextlib.closing(checkpoint.Checkpoints(path / "checkpoints")) as ckpt:
        restored = ckpt.restore_latest({"state": _saveable(state), "hyper": hyper})
        if restored is not None:
            state = _restore_into(state, restored[1]["state"])
            hyper = restored[1]["hyper"]
            phase(f"{desc}: resuming from the checkpoint at step {restored[0]}")
        step = int(np.max(fetch(state.step)))
        workdir.truncate_metrics(path / "metrics.jsonl", step)

        # Also done once no member is running (every one converged, `vae_jax.convergence`).
        done = step >= spec.train.num_steps or not np.any(fetch(hyper.running))
        t0 = time.perf_counter()
        chunk = jax.jit(chunk_fn, donate_argnums=0)
        if not done:  # a finished run is only evaluated: nothing to compile
            phase(f"{desc}: compiling the training program")
            chunk = chunk.lower(state, train_x, hyper, train_rng).compile()
            phase(f"{desc}: training to step {spec.train.num_steps}")
        compile_seconds = time.perf_counter() - t0

        chunk_steps = log_interval(spec)
        train_seconds, trained_steps = 0.0, 0
        bar = progress_bar(spec.train.num_steps, step, desc)
        events = _EventWriter(path, step)
        with contextlib.closing(bar), contextlib.closing(events), _StopRequested() as stop:
            while not done:
                t0 = time.perf_counter()
                state, step_metrics = chunk(state, train_x, hyper, train_rng)
                step_metrics = fetch(step_metrics)
                elapsed = time.perf_counter() - t0
                hyper = on_nonfinite(step_metrics, step, hyper)
                train_seconds += elapsed
                trained_steps += chunk_steps
                step += chunk_steps
                if after_chunk is not None:
                    state = after_chunk(state, hyper, step)
                # Mean over the chunk's steps (the last axis): a number, or one per sweep member.
                # Per-step arrays (a linear fit's KL per latent) are for `on_nonfinite` only.
                logged = {k: v for k, v in step_metrics.items() if k != "kl_per_latent"}
                record = {k: np.mean(v, axis=-1).tolist() for k, v in logged.items()}
                record.update(step=step, steps_per_sec=chunk_steps / elapsed)
                workdir.append_jsonl(path / "metrics.jsonl", record)
                events.write(record)
                bar.update(chunk_steps)
                if bar.disable:
                    phase(chunk_line(desc, record, spec.train.num_steps))
                done = step == spec.train.num_steps or not np.any(fetch(hyper.running))
                if step % spec.train.checkpoint_every == 0 or done or stop.signal:
                    ckpt.save(step, {"state": _saveable(state), "hyper": hyper})
                if stop.signal is not None:
                    raise Preempted(
                        f"stopped by signal {stop.signal} at step {step}; checkpoint saved in "
                        f"{ckpt.directory}. Resume with the same command and --workdir",
                        stop.signal,
                    )
    return FitResult(state, hyper, train_seconds, trained_steps, compile_seconds)


class _EventWriter:
    """TensorBoard event files beside metrics.jsonl, the same numbers (tensorboardX: no TF).

    A sweep group's metrics hold one value per member: tag `<metric>/member_<i>`. Opened at the
    first write (a finished run resumed writes none); after a resume, TensorBoard drops what an
    earlier run logged past the restored step (`purge_step`).
    """

    def __init__(self, path: pathlib.Path, step: int):
        self._path, self._first_step, self._writer = path, step, None

    def write(self, record: dict[str, Any]) -> None:
        if jax.process_index() != 0:  # one host logs
            return
        if self._writer is None:
            import tensorboardX

            self._writer = tensorboardX.SummaryWriter(
                os.fspath(self._path), purge_step=self._first_step or None
            )
        for key, value in record.items():
            if key == "step":
                continue
            if isinstance(value, list):
                for i, member_value in enumerate(value):
                    self._writer.add_scalar(f"{key}/member_{i}", member_value, record["step"])
            else:
                self._writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def speed_metrics(fit_result: FitResult, batch_size: int) -> dict[str, float | None]:
    seconds, steps = fit_result.train_seconds, fit_result.trained_steps
    return {
        "train/steps_per_sec": steps / seconds if steps else None,
        "train/examples_per_sec": steps * batch_size / seconds if steps else None,
        "train/compile_s": fit_result.compile_seconds,
    }


def _saveable(state: TrainState) -> dict[str, Any]:
    return {
        "params": state.params,
        "opt_state": state.opt_state,
        "step": state.step,
        "geco": state.geco,
    }


def _restore_into(state: TrainState, tree: dict[str, Any]) -> TrainState:
    return state.replace(
        params=tree["params"], opt_state=tree["opt_state"], step=tree["step"], geco=tree["geco"]
    )

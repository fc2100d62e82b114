"""The host loop `fit`, shared by single runs and sweeps: resume, run on-device chunks, log,
checkpoint, stop on a signal; and what runs between chunks — the non-finite check and the
validation scale fit (`make_scale_fit`)."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import checkpoint, evaluate, workdir
from vae_jax.console import EventWriter, chunk_line, fetch, phase, progress_bar
from vae_jax.errors import NonFiniteError
from vae_jax.objective import Hyper, Problem
from vae_jax.spec import RunSpec
from vae_jax.train import TrainState, log_interval


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
) -> Callable[[TrainState, Hyper, int], TrainState] | None:
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


@dataclasses.dataclass
class FitResult:
    state: TrainState  # a sweep group's: stacked along a leading member axis
    hyper: Hyper
    train_seconds: float  # wall time of the chunks this process ran, compilation excluded
    trained_steps: int  # steps this process ran (0 when it only resumed a finished run)
    compile_seconds: float


def fit(
    spec: RunSpec,
    path: pathlib.Path,
    chunk_fn: Callable,
    state: TrainState,
    hyper: Hyper,
    train_x: jax.Array,
    train_rng: jax.Array,
    *,
    on_nonfinite: Callable[[dict[str, np.ndarray], int, Hyper], Hyper],
    after_chunk: Callable[[TrainState, Hyper, int], TrainState] | None = None,
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
        events = EventWriter(path, step)
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

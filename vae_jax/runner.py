"""The one runner behind both drivers: a single run (`experiment`: results.json) and a sweep
(`sweep`: results.csv, per_example.npz, samples.npz) go through the same steps.

  `run`               the finished-check (a workdir holding this run finished is left as it is,
                      unless re-evaluated), then the driver's data and members are built — before
                      the workdir is touched, so a refused run leaves nothing behind — then under
                      the workdir's lock: train and score, keep the measured speeds when only
                      re-evaluating (`keep_speeds`), write the files (results file: the end)
  `fit_and_evaluate`  the host loop `loop.fit`, the scored hyper (GECO's σ), the evaluation of
                      every member on the three splits, everything fetched to the host
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from vae_jax import console, evaluate, loop, timing, workdir
from vae_jax.objective import Hyper, Problem, scored_hyper
from vae_jax.spec import RunSpec
from vae_jax.train import TrainState

# The measured speeds: a re-evaluated run trained no step, so it keeps the ones it trained at.
SPEED_KEYS = ("train/examples_per_sec", "train/steps_per_sec", "train/compile_s")


@dataclasses.dataclass(frozen=True)
class Layout:
    """What marks a driver's run finished in its workdir."""

    results: str  # results.json or results.csv: written after the run's data, it marks the end
    checkpoints: Sequence[str]  # checkpoint directories, each holding the step train.num_steps
    read: Callable[[pathlib.Path], list[dict[str, Any]]]  # the results file → its rows
    left_as_is: str  # the finished-message's account of what stays as it is


class Job(Protocol):
    """A driver's run once its data and members are built; nothing is in the workdir yet."""

    def train(self, path: pathlib.Path) -> list[dict[str, Any]]:
        """Fit and evaluate every member; the rows of the results file, in order."""

    def write(self, path: pathlib.Path, rows: list[dict[str, Any]]) -> None:
        """The run's files; the results file after every file a finished run is read from."""


def run(
    spec: RunSpec,
    workdir_path: str | pathlib.Path,
    layout: Layout,
    build: Callable[[], Job],
    *,
    reevaluate: bool,
) -> list[dict[str, Any]]:
    """Run a driver's job in `workdir_path`; returns the rows its results file holds.

    A workdir holding this very run finished (`workdir.is_finished`) is left as it is and its
    stored rows are returned, unless `reevaluate`: then the final checkpoints are evaluated
    again (the loop resumes at the last step and trains none) and the speeds measured while
    training are kept.
    """
    path = pathlib.Path(workdir_path)
    previous: list[dict[str, Any]] = []
    if workdir.is_finished(spec, path, layout.results, list(layout.checkpoints)):
        previous = layout.read(path / layout.results)
        if not reevaluate:
            console.phase(
                f"{path} holds this {'sweep' if spec.sweep else 'run'}, already finished: "
                f"{layout.left_as_is} (--reevaluate evaluates it again)"
            )
            return previous
    job = build()
    with workdir.prepare(spec, path) as locked:  # locked until the run ends
        rows = job.train(locked)
        keep_speeds(rows, previous)
        job.write(locked, rows)
    return rows


def keep_speeds(rows: list[dict[str, Any]], previous: list[dict[str, Any]]) -> None:
    """A re-evaluated row (it trained no step: its steps/s is None) takes the speeds its
    previous row measured (`SPEED_KEYS` that both hold). In place; rows of another run (a
    different count) are left alone."""
    if len(previous) != len(rows):
        return
    for row, old in zip(rows, previous, strict=True):
        if row.get("train/steps_per_sec") is None:
            row.update({key: old[key] for key in SPEED_KEYS if key in row and key in old})


@dataclasses.dataclass
class Trained:
    """Members fitted and scored, on the host: what rows, plots and files are made from."""

    fitted: loop.FitResult  # final state; hyper as scored (GECO's σ where it ran)
    outputs: dict  # `evaluate.make_evaluate_member`'s per-split arrays
    scales: dict  # the scales scored: as trained and refit
    eval_rngs: jax.Array  # the evaluation key(s)


def fit_and_evaluate(
    spec: RunSpec,
    problem: Problem,
    path: pathlib.Path,
    start: tuple[TrainState, Hyper, jax.Array, jax.Array],
    chunk: Callable,
    *,
    on_nonfinite: Callable,
    after_chunk: Callable | None,
    splits: tuple[jax.Array, jax.Array, jax.Array],
    train_x: jax.Array,
    members: bool,
    announce: Callable[[], str],
    desc: str = "train",
    timer: timing.PhaseTimer | None = None,
) -> Trained:
    """`loop.fit` from `start` = (state, hyper, train rng(s), eval rng(s)), the scored hyper,
    then every member evaluated on `splits` (train, validation, test) with its eval key.

    `members`: state, hyper and keys carry a leading member axis (a sweep group). `announce()`
    is the phase line printed as evaluation starts; `timer` (a sweep's) marks it.
    """
    state, hyper, train_rngs, eval_rngs = start
    fitted = loop.fit(
        spec,
        path,
        chunk,
        state,
        hyper,
        train_x,
        train_rngs,
        on_nonfinite=on_nonfinite,
        after_chunk=after_chunk,
        desc=desc,
    )
    fitted.hyper = scored_hyper(problem, fitted.hyper, fitted.state.geco)
    if timer is not None:
        timer.mark("evaluate", desc)
    console.phase(announce())
    evaluate_member = make_member_evaluation(spec, problem, members=members)
    outputs, scales = console.fetch(
        evaluate_member(fitted.state.params, fitted.hyper, eval_rngs, *splits)
    )
    if jax.process_count() > 1:  # rows, plots and samples index members on the host
        fitted = dataclasses.replace(
            fitted, state=console.fetch(fitted.state), hyper=console.fetch(fitted.hyper)
        )
        eval_rngs = jax.random.wrap_key_data(console.fetch(jax.random.key_data(eval_rngs)))
    return Trained(fitted, outputs, scales, eval_rngs)


def make_member_evaluation(spec: RunSpec, problem: Problem, *, members: bool = False) -> Callable:
    """`evaluate.make_evaluate_member` as the spec sets it up: (params, hyper, rng, train_x,
    val_x, test_x) -> (per-split arrays, scales); `members=True` for stacked sweep members."""
    num_dims = math.prod(problem.test_x.shape[1:])
    return evaluate.make_evaluate_member(
        problem,
        iwae_samples=spec.eval.iwae_samples,
        batch_size=evaluate.eval_batch_size(spec, num_dims),
        num_train_scored=len(problem.test_x),
        members=members,
    )


def device_splits(problem: Problem) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(train_x, val_x, test_x) as the arguments `make_member_evaluation`'s function takes."""
    return tuple(jnp.asarray(x) for x in (problem.train_x, problem.val_x, problem.test_x))

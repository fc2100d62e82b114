"""How long compiling the sweep's programs takes, and how much of the machine it keeps busy.

    python experiments/profiling.py --compile        # the table, about 1.5 minutes

`profile_compile` compiles each named group's train chunk and evaluation programs as a sweep does
and reports, per program, the wall seconds jax spends compiling it and the process's CPU seconds
inside that time. Their ratio is how many cores compilation keeps busy, so how much of it running
another program beside it could hide (docs/speed.md, "Compilation ≤ 10%").
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections

from vae_jax import experiment, runner, train
from vae_jax import group as group_lib
from vae_jax import spec as spec_lib
from vae_jax.members import members_by_group
from vae_jax.timing import PhaseTimer, union_of_spans

# The widest and the slowest group of the default σ sweep.
COMPILE_GROUPS = ("gaussian", "discretized_logistic")


def lower_and_compile(jitted, *args: Any) -> None:
    jitted.lower(*args).compile()


def compile_cpu(fn: Callable, *args: Any, interval: float = 0.005) -> tuple[float, float]:
    """(wall, CPU) seconds spent compiling while `fn(*args)` runs: the union of the compile spans
    jax reports (`timing.PhaseTimer`), and the process's CPU time inside them, sampled every
    `interval` s by a thread. With `jax_cpu_enable_async_dispatch` off (`--compile` sets it before
    jax starts), no program runs while the next one compiles."""
    samples = [(time.time(), time.process_time())]
    done = threading.Event()

    def sample():
        while not done.wait(interval):
            samples.append((time.time(), time.process_time()))

    sampler = threading.Thread(target=sample, daemon=True)
    timer = PhaseTimer()
    timer.mark("train")
    sampler.start()
    try:
        jax.block_until_ready(fn(*args))
    finally:
        done.set()
        sampler.join()
        timer.stop()
    samples.append((time.time(), time.process_time()))
    spans = union_of_spans(timer.compile_spans)
    cpu_s = 0.0
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        inside = sum(max(0.0, min(b, t1) - max(a, t0)) for a, b in spans)
        cpu_s += (c1 - c0) * inside / (t1 - t0) if t1 > t0 else 0.0
    return sum(b - a for a, b in spans), cpu_s


def profile_compile(config: ml_collections.ConfigDict, groups: Sequence[str]) -> list[dict]:
    """Wall and CPU seconds of compiling each sweep group's train chunk and evaluation programs.

    `config` is a sweep's (its members, its model); `groups` name some of its groups. The train
    chunk is lowered and compiled as `loop.fit` does, on one device with every member in one
    vmap (the default σ sweep's programs on this CPU; a mesh or `sweep.members_per_slice` would
    change them); the evaluation's programs (every one
    `make_member_evaluation` runs) compile inside its first call (`compile_cpu`). `cores` =
    CPU / wall: how much of the machine compilation keeps busy, so how much of it a compilation
    overlapped with running could hide.
    """
    spec = spec_lib.parse(config)
    rows = []
    for group in groups:
        problem = experiment.build_problem(spec.for_group(group))
        members = members_by_group(spec, problem.train_x)[group]
        state, hyper, train_rngs, eval_rngs = group_lib.init_group(
            spec, problem, members, len(members)
        )
        chunk = jax.jit(
            group_lib.make_group_chunk(problem, train.log_interval(spec.for_group(group))),
            donate_argnums=0,
        )
        evaluate_members = runner.make_member_evaluation(spec, problem, members=True)
        splits = runner.device_splits(problem)

        timed = {
            "train chunk": compile_cpu(
                lower_and_compile, chunk, state, problem.train_x, hyper, train_rngs
            ),
            "evaluation": compile_cpu(evaluate_members, state.params, hyper, eval_rngs, *splits),
        }
        for program, (wall_s, cpu_s) in timed.items():
            rows.append(
                {
                    "variant": f"{group} ({len(members)} members): {program}",
                    "group": group,
                    "members": len(members),
                    "program": program,
                    "wall_s": wall_s,
                    "cpu_s": cpu_s,
                    "cores": cpu_s / wall_s,
                }
            )
    return rows

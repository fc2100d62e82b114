"""The σ sweep's speed: an 8-member sweep program against sequential runs, and a whole sweep's
time split and efficiency figure from its workdir's timing.json (`vae_jax.timing`).

    python experiments/benchmark.py --run-sweep --sweep-workdir runs/sigma_sweep_timed --json s.json
    python experiments/benchmark.py --sweep-workdir runs/sigma_sweep    # a finished sweep
    python experiments/benchmark.py --run-sweep experiments/configs/sigma_sweep.py:quick

`--run-sweep [CONFIG]` runs CONFIG (default: the default σ sweep) through experiments/run.py in
a process of its own, as a user runs it, into a new workdir; either way the table shows each
group's compile, train (steps, checkpoints, logs; no compilation), evaluate (IWAE and refit)
and sample-quality seconds, its examples/s and their ratio to the Gaussian group's, and the
whole sweep's split, useful FLOPs, ceiling and efficiency, with the issue's targets. A workdir
without timing.json (a sweep run before it existed) still gives the examples/s from results.csv.
"""

from __future__ import annotations

import datetime
import json
import math
import pathlib
import subprocess
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

from experiments.cli import fail
from experiments.measure import SWEEP_MEMBERS, compile_timed, setup, sweep_members
from vae_jax import group as group_lib
from vae_jax import sharding, train, workdir
from vae_jax.flops import train_step_flops
from vae_jax.timing import Ceiling

REPO = pathlib.Path(__file__).resolve().parent.parent
RUN = REPO / "experiments" / "run.py"
DEFAULT_SWEEP = "experiments/configs/sigma_sweep.py"
REFERENCE_GROUP = "gaussian"  # the fixed-σ group every other group's throughput is compared to
SWEEP_TARGETS = {
    "efficiency": 0.6,  # useful FLOPs / (wall × ceiling × devices), end to end
    "family_vs_gaussian": 0.8,  # every group's examples/s against the Gaussian group's
    "compile_fraction": 0.10,  # compilation's share of the wall time
}

# ----------------------------------------------------------------------------- 8 members, 1 program


def run_vmapped_sweep(problem, states, train_x, hypers, rngs, num_steps, members_per_slice):
    """Wall seconds of the whole sweep program (stack, compile, run) and its compile seconds."""
    t0 = time.perf_counter()
    chunk = group_lib.make_group_chunk(problem, num_steps, members_per_slice=members_per_slice)
    sweep = jax.jit(chunk, donate_argnums=0)
    stacked = (sharding.stack(states), sharding.stack(hypers), jnp.stack(rngs))
    compiled, compile_s = compile_timed(sweep, stacked[0], train_x, stacked[1], stacked[2])
    jax.block_until_ready(compiled(stacked[0], train_x, stacked[1], stacked[2]))
    return time.perf_counter() - t0, compile_s


def run_sequential(problem, states, train_x, hypers, rngs, num_steps, *, compile_each: bool):
    """Wall seconds of the members one after another, each a single run as `fit` does it.

    compile_each=True: every member builds and compiles its own chunk, as 8 single runs
    (`train_and_evaluate`, one per member) do. False: one `jax.jit` shared by all members, so it
    compiles once — the cheapest conceivable sequential baseline, reported beside it.
    Returns (wall seconds, seconds of the first compile).
    """
    t0 = time.perf_counter()
    chunk = jax.jit(train.make_train_chunk(problem, num_steps), donate_argnums=0)
    first_compile_s = None
    for state, hyper, rng in zip(states, hypers, rngs, strict=True):
        if compile_each:
            chunk = jax.jit(train.make_train_chunk(problem, num_steps), donate_argnums=0)
        if first_compile_s is None or compile_each:
            chunk, compile_s = compile_timed(chunk, state, train_x, hyper, rng)
            first_compile_s = compile_s if first_compile_s is None else first_compile_s
        jax.block_until_ready(chunk(state, train_x, hyper, rng))
    return time.perf_counter() - t0, first_compile_s


def bench_sweep(
    config, steps: int, reps: int, ceiling: Ceiling, members_per_slice: int | None = None
) -> dict:
    """The sweep's program as `vae_jax.sweep` builds it (`members_per_slice`: None, every member
    in one vmap, the default) against sequential single runs."""
    config, problem, tx, _, _, train_x = setup(config, config.train.batch_size)
    vmapped, sequential, shared, compiles, shared_runs, probes = [], [], [], [], [], []
    for _ in range(reps):
        probes.append(ceiling.probe())
        states, hypers, rngs = sweep_members(config, problem, tx, SWEEP_MEMBERS)
        seconds, compile_s = run_vmapped_sweep(
            problem, states, train_x, hypers, rngs, steps, members_per_slice
        )
        vmapped.append(seconds)
        compiles.append(compile_s)
        for times, compile_each in ((sequential, True), (shared, False)):
            states, hypers, rngs = sweep_members(config, problem, tx, SWEEP_MEMBERS)
            seconds, compile_s = run_sequential(
                problem,
                states,
                train_x,
                hypers,
                rngs,
                steps,
                compile_each=compile_each,
            )
            times.append(seconds)
            if not compile_each:
                shared_runs.append(seconds - compile_s)
    probes.append(ceiling.probe())
    vmapped_s, sequential_s, local_ceiling = min(vmapped), min(sequential), max(probes)
    # Achieved rate of the vmapped program itself: its run time without compilation.
    run_s = max(vmapped_s - min(compiles), 1e-9)
    flops = (
        train_step_flops(config, math.prod(problem.train_x.shape[1:]), config.train.batch_size)
        * steps
        * SWEEP_MEMBERS
    )
    return {
        "members": SWEEP_MEMBERS,
        "members_per_slice": members_per_slice or SWEEP_MEMBERS,
        "steps": steps,
        "vmapped_s": vmapped_s,
        "sequential_s": sequential_s,
        "ratio": vmapped_s / sequential_s,
        "sequential_shared_compile_s": min(shared),
        "ratio_shared_compile": vmapped_s / min(shared),
        "compile_s": min(compiles),
        # After compilation only: the ratio a sweep of many more steps tends to.
        "run_s": run_s,
        "sequential_shared_compile_run_s": min(shared_runs),
        "run_ratio_shared_compile": run_s / min(shared_runs),
        "gflops": flops / run_s / 1e9,
        "fraction_of_ceiling": flops / run_s / 1e9 / local_ceiling,
    }


# ----------------------------------------------------------------------------- a whole sweep


def run_sweep(config: str, path: pathlib.Path) -> None:
    """experiments/run.py --config=CONFIG --workdir=PATH in its own process (its progress on
    this stderr). A half-run workdir is refused: a resumed sweep's timing covers its last part."""
    if path.is_dir() and any(path.iterdir()) and not (path / "results.csv").exists():
        fail(
            f"--sweep-workdir={path} holds an unfinished sweep; its timing would cover only the "
            "resumed part: use a new directory"
        )
    print(f"running {config} into {path} (experiments/run.py, its own process)", flush=True)
    proc = subprocess.run(
        [sys.executable, str(RUN), f"--config={config}", f"--workdir={path}"], cwd=REPO, check=False
    )
    if proc.returncode:
        print(f"error: the sweep exited with status {proc.returncode}", file=sys.stderr)
        sys.exit(proc.returncode)


def default_workdir() -> pathlib.Path:
    return REPO / "runs" / f"sigma_sweep-timed-{datetime.datetime.now():%Y%m%d-%H%M%S}"


def sweep_report(path: pathlib.Path) -> dict[str, Any]:
    """The finished sweep in `path`: its timing.json (None if it has none), each group's members,
    examples/s (results.csv) and ratio to the Gaussian group's, the compile fraction, and the
    targets met (None: not judged, for a smoke-test sweep or what the workdir lacks)."""
    if not (path / "results.csv").is_file():
        fail(f"--sweep-workdir={path} holds no finished sweep (no results.csv)")
    rows = workdir.read_results_csv(path / "results.csv")
    timing = (
        json.loads((path / "timing.json").read_text()) if (path / "timing.json").exists() else None
    )
    config = json.loads((path / "config.json").read_text())
    smoke_test = bool(config.get("sweep", {}).get("smoke_test"))
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        group = groups.setdefault(row["group"], {"members": 0, "likelihood": row["likelihood"]})
        group["members"] += 1
        group["examples_per_sec"] = row["train/examples_per_sec"]
    reference = groups.get(REFERENCE_GROUP, {}).get("examples_per_sec")
    for name, group in groups.items():
        speed = group["examples_per_sec"]
        group["vs_gaussian"] = speed / reference if speed and reference else None
        group.update((timing or {}).get("groups", {}).get(name, {}) | group)
    others = [g["vs_gaussian"] for n, g in groups.items() if n != REFERENCE_GROUP]
    total = timing["total"] if timing else None
    compile_fraction = total["compile_s"] / total["wall_s"] if total else None
    efficiency = timing["efficiency"] if timing else None
    met = {
        "efficiency": None if efficiency is None else efficiency >= SWEEP_TARGETS["efficiency"],
        "family_vs_gaussian": None
        if not others or None in others
        else min(others) >= SWEEP_TARGETS["family_vs_gaussian"],
        "compile_fraction": None
        if compile_fraction is None
        else compile_fraction <= SWEEP_TARGETS["compile_fraction"],
    }
    return {
        "workdir": str(path),
        "smoke_test": smoke_test,
        "groups": groups,
        "compile_fraction": compile_fraction,
        "efficiency": efficiency,
        "timing": timing,
        "targets": {
            name: {"target": SWEEP_TARGETS[name], "met": None if smoke_test else met[name]}
            for name in SWEEP_TARGETS
        },
    }


def _verdict(target: dict[str, Any], smoke_test: bool) -> str:
    if target["met"] is None:
        return "not judged (a smoke-test sweep)" if smoke_test else "not judged (no figure)"
    return "met" if target["met"] else "NOT met"


def _flop(value: float) -> str:
    return f"{value / 1e12:.3g} TFLOP" if value >= 1e12 else f"{value / 1e9:.3g} GFLOP"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_sweep_report(report: dict[str, Any]) -> None:
    timing, targets, smoke = report["timing"], report["targets"], report["smoke_test"]
    members = sum(g["members"] for g in report["groups"].values())
    where = f", {timing['backend']} ({timing['device_kind']})" if timing else ""
    groups = len(report["groups"])
    print(f"\nsweep in {report['workdir']}: {members} members in {groups} groups{where}")
    print(
        f"  {'group':<22}{'members':>8}{'compile s':>11}{'train s':>9}{'steps s':>9}"
        f"{'evaluate s':>12}{'samples s':>11}{'examples/s':>12}{'× Gaussian':>12}"
    )
    for name, g in report["groups"].items():
        speed = "-" if g["examples_per_sec"] is None else f"{g['examples_per_sec']:,.0f}"
        ratio = "-" if g["vs_gaussian"] is None else f"{g['vs_gaussian']:.2f}"
        print(
            f"  {name:<22}{g['members']:>8}{_seconds(g.get('compile_s')):>11}"
            f"{_seconds(g.get('train_s')):>9}{_seconds(g.get('steps_s')):>9}"
            f"{_seconds(g.get('evaluate_s')):>12}{_seconds(g.get('sample_quality_s')):>11}"
            f"{speed:>12}{ratio:>12}"
        )
    family = targets["family_vs_gaussian"]
    print(
        f"  every group ≥ {family['target']}× the Gaussian group's examples/s: "
        f"{_verdict(family, smoke)}"
    )
    if timing is None:
        print("  no timing.json (a sweep run before it existed): no time split, no efficiency")
        return
    total, work, ceiling = timing["total"], timing["flops"], timing["ceiling"]
    phases = ", ".join(
        f"{name.replace('_', ' ')} {total[f'{name}_s']:.1f}"
        for name in ("setup", "compile", "train", "evaluate", "sample_quality", "write")
    )
    compile_in = ", ".join(
        f"{name.removesuffix('_s').replace('_', ' ')} {seconds:.1f}"
        for name, seconds in sorted(total["compile_in"].items(), key=lambda kv: -kv[1])
        if seconds >= 0.05
    )
    print(f"  whole sweep (s): {phases}; wall {total['wall_s']:.1f}")
    print(f"  compilation in (s): {compile_in}")
    compile_target = targets["compile_fraction"]
    print(
        f"  compile {report['compile_fraction']:.1%} of the wall time (target ≤ "
        f"{compile_target['target']:.0%}: {_verdict(compile_target, smoke)})"
    )
    if work["useful_flops"] is None:
        print("  useful FLOPs: not counted for this model (MLP only): no efficiency figure")
        return
    print(
        f"  useful matmul work {_flop(work['useful_flops'])} (train {_flop(work['train_flops'])}, "
        f"evaluate {_flop(work['evaluate_flops'])}); at the ceiling ({ceiling['gflops']:.1f} "
        f"GFLOP/s, {ceiling['size']}² float32 matmul probed after the run, × "
        f"{ceiling['devices']} device(s)) {timing['seconds_at_limit']:.3g} s"
    )
    efficiency = targets["efficiency"]
    print(
        f"  sweep efficiency {timing['efficiency']:.3g} of the limit end to end (target ≥ "
        f"{efficiency['target']}: {_verdict(efficiency, smoke)})"
    )


def whole_sweep(config: str | None, path: pathlib.Path | None) -> dict[str, Any]:
    """Run `config` into `path` (when given), then report the sweep in `path`."""
    path = path or default_workdir()
    if config:
        run_sweep(config, path)
    report = sweep_report(path)
    print_sweep_report(report)
    return report

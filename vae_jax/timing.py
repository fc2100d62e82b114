"""Where a sweep's wall time goes, and how near the machine's limit it runs: timing.json.

`PhaseTimer` splits a run's wall time into consecutive phases (`mark(name, group)` ends one and
starts the next). While it is open, JAX reports every trace, lowering to StableHLO and XLA
compilation as a time span (`jax.monitoring`); the union of those spans inside a phase counts as
"compile" and the rest as the phase's own, so compilation is found wherever it happens (the
train chunk, the scale fit, the evaluation's programs, sample quality's), no program is compiled
twice to time it, and the split sums to the wall time. A program read from the persistent
compilation cache counts its retrieval as its compilation.

The sweep-efficiency figure: the run's useful matmul FLOPs (`vae_jax.flops`: training and IWAE
evaluation) over wall time × the matmul ceiling, a dense float32 2048×2048 matmul probed in the
same process (`probe_ceiling`, under a second, after the timed part) × the devices used.

Clocks are `time.time()`, the clock of JAX's spans.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import flops, loop
from vae_jax.objective import Problem

# Phases a sweep marks, in its order; "compile" is carved out of each of them.
PHASES = ("setup", "compile", "train", "evaluate", "sample_quality", "write")
# jax's own event names (jax._src.dispatch): tracing, lowering, backend compilation.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
CEILING_SIZE = 2048

_OPEN: weakref.WeakSet[PhaseTimer] = weakref.WeakSet()
_listening = False


def _on_span(event: str, start: float, end: float, **kwargs: Any) -> None:
    if event in COMPILE_EVENTS:
        for timer in list(_OPEN):
            timer.compile_spans.append((start, end))


class PhaseTimer:
    """Consecutive phases of a run and the compile spans JAX reports inside them.

    Open from construction until `stop()` (one listener, registered with JAX once per process,
    serves every open timer; a timer dropped without `stop()` stops being served).
    """

    def __init__(self):
        global _listening
        if not _listening:
            jax.monitoring.register_event_time_span_listener(_on_span)
            _listening = True
        self.start = time.time()
        self.end: float | None = None
        self.compile_spans: list[tuple[float, float]] = []
        self.phases: list[tuple[str, str | None, float, float]] = []
        self.groups: dict[str, dict[str, Any]] = {}
        self._current: tuple[str, str | None, float] | None = None
        _OPEN.add(self)

    def mark(self, name: str, group: str | None = None) -> None:
        """End the current phase (if any) and start `name` (one of `PHASES`, not "compile")."""
        if name not in PHASES or name == "compile":
            raise ValueError(f"unknown phase {name!r}; allowed: {PHASES}")
        now = time.time()
        self._close(now)
        self._current = (name, group, now)

    def record(self, group: str, values: dict[str, Any]) -> None:
        """Add `values` (work and speeds) to `group`'s entry in the summary."""
        self.groups.setdefault(group, {}).update(values)

    def stop(self) -> None:
        if self.end is None:
            self.end = time.time()
            self._close(self.end)
            _OPEN.discard(self)

    def _close(self, now: float) -> None:
        if self._current is not None:
            name, group, start = self._current
            self.phases.append((name, group, start, now))
            self._current = None

    def split(self) -> dict[str, Any]:
        """Seconds by phase: {'total': {'<phase>_s', 'wall_s', 'unaccounted_s', 'compile_in':
        {'<phase>_s'}}, 'groups': {group: the same without wall and unaccounted}}. A phase's
        seconds exclude its compilations, which 'compile_s' sums and 'compile_in' breaks down."""
        spans = union_of_spans(self.compile_spans)
        total: dict[str, Any] = {}
        groups: dict[str, dict[str, Any]] = {}
        for name, group, start, stop in self.phases:
            compiling = sum(max(0.0, min(b, stop) - max(a, start)) for a, b in spans)
            for table in [total] + ([groups.setdefault(group, {})] if group else []):
                _add(table, f"{name}_s", stop - start - compiling)
                _add(table, "compile_s", compiling)
                _add(table.setdefault("compile_in", {}), f"{name}_s", compiling)
        total = {f"{name}_s": total.get(f"{name}_s", 0.0) for name in PHASES} | total
        total["compile_in"] = total.get("compile_in", {})
        total["wall_s"] = (self.end if self.end is not None else time.time()) - self.start
        phases = sum(total[f"{name}_s"] for name in PHASES)
        total["unaccounted_s"] = total["wall_s"] - phases
        return {"total": total, "groups": groups}

    def finish(self) -> dict[str, Any]:
        """Stop, probe the ceiling, and return timing.json's contents (`summary`); the sweep
        runs on every device (`sharding.member_mesh`)."""
        self.stop()
        return summary(self, probe_ceiling(), jax.device_count())


def _add(table: dict[str, float], key: str, seconds: float) -> None:
    table[key] = table.get(key, 0.0) + seconds


def union_of_spans(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping spans merged (a jit traced inside another's trace is one stretch of time)."""
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def group_record(problem: Problem, fitted: loop.FitResult, *, members: int, iwae_samples: int):
    """A sweep group's entry beside its phases: members, family, useful FLOPs and step speeds."""
    speeds = loop.speed_metrics(fitted, problem.batch_size * members)
    return {
        "members": members,
        "likelihood": problem.likelihood.name,
        "trained_steps": fitted.trained_steps,
        "steps_s": fitted.train_seconds,  # the chunks themselves: no compile, checkpoint, log
        "train_program_compile_s": fitted.compile_seconds,  # loop.fit's own measurement
        "examples_per_sec": speeds["train/examples_per_sec"],
        **flops.sweep_group_flops(
            problem,
            iwae_samples=iwae_samples,
            num_members=members,
            trained_steps=fitted.trained_steps,
        ),
    }


def summary(timer: PhaseTimer, ceiling: dict[str, float], num_devices: int) -> dict[str, Any]:
    """timing.json: the split, each group's work, the ceiling and the efficiency figure."""
    split = timer.split()
    groups = {}
    for name, record in timer.groups.items():
        groups[name] = {**split["groups"].get(name, {}), **record}
    for name, phases in split["groups"].items():
        groups.setdefault(name, phases)
    work = {"train_flops": 0, "evaluate_flops": 0}
    for record in groups.values():
        for key in work:
            value = record.get(key)
            work[key] = None if value is None or work[key] is None else work[key] + value
    useful = None if None in work.values() else sum(work.values())
    limit_flops_per_s = ceiling["gflops"] * 1e9 * num_devices
    wall = split["total"]["wall_s"]
    return {
        "total": split["total"],
        "groups": groups,
        "flops": {**work, "useful_flops": useful},
        "ceiling": {**ceiling, "devices": num_devices},
        "seconds_at_limit": None if useful is None else useful / limit_flops_per_s,
        "efficiency": None if useful is None else useful / (wall * limit_flops_per_s),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
    }


# ----------------------------------------------------------------------------- the ceiling


def best_and_median(fn: Callable[[], Any], reps: int) -> tuple[float, float]:
    """Seconds of `fn()` (its outputs blocked on): best and median of `reps` calls."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


class Ceiling:
    """Dense float32 size×size matmul GFLOP/s (2·n³ FLOPs), kept compiled for re-measuring.

    On a shared machine the load drifts between sections, so every timing also probes the matmul
    between its own reps and divides by the best probe of those same moments. The operands come
    from numpy, so only the matmul compiles.
    """

    def __init__(self, size: int = CEILING_SIZE):
        self.size = size
        self.flops = 2 * size**3
        rng = np.random.default_rng(0)
        self.a = jnp.asarray(rng.standard_normal((size, size), np.float32))
        self.b = jnp.asarray(rng.standard_normal((size, size), np.float32))
        self.matmul = jax.jit(jnp.matmul)
        jax.block_until_ready(self.matmul(self.a, self.b))

    def measure(self, reps: int) -> tuple[float, float]:
        """GFLOP/s: best and median of `reps` calls."""
        best, median = best_and_median(lambda: self.matmul(self.a, self.b), reps)
        return self.flops / best / 1e9, self.flops / median / 1e9

    def probe(self) -> float:
        """GFLOP/s of one call."""
        return self.measure(1)[0]


def probe_ceiling(seconds: float = 0.4, max_reps: int = 200, size: int = CEILING_SIZE) -> dict:
    """The ceiling for timing.json: best of as many calls as fit in about `seconds` (at least 3;
    a CPU does about 5, an accelerator `max_reps`), compile included in `probe_s`."""
    t0 = time.perf_counter()
    ceiling = Ceiling(size)
    times = []
    while len(times) < max_reps and (len(times) < 3 or sum(times) < seconds):
        times.append(best_and_median(lambda: ceiling.matmul(ceiling.a, ceiling.b), 1)[0])
    return {
        "gflops": ceiling.flops / min(times) / 1e9,
        "median_gflops": ceiling.flops / float(np.median(times)) / 1e9,
        "size": size,
        "reps": len(times),
        "probe_s": time.perf_counter() - t0,
    }

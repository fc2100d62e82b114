"""Where the train step's and the sweep's time goes: the project's own pieces, one thing changed.

    python experiments/profiling.py                  # several minutes; --quick: 2 rounds, not 6
    python experiments/profiling.py --quick --json p.json
    python experiments/profiling.py --compile        # compilation's wall and CPU seconds
    python experiments/benchmark.py --profile        # the benchmark, then these tables

Every variant runs the real `vae_jax.train.make_train_chunk` (or `vae_jax.group.make_group_chunk`)
and changes one thing around it: the optimiser in the TrainState (the step calls `state.tx`),
donation, how members are batched, the random draws (`jax.random`'s own instead of
`vae_jax.threefry`'s, the same numbers), an XLA flag (each in its own process, timing
`benchmark.py --step-only`). A table of one draw's time by either sits beside them. The one
variant with other code is its floor: the same matmuls as a bare batched MLP with Adam, no VAE.
Variants are timed round-robin in one process (min over rounds), so a cost is the difference of
two timings taken moments apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

# Run as a script: experiments/ shares measure.py with benchmark.py.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from experiments.compile_profile import COMPILE_GROUPS, profile_compile  # noqa: E402
from experiments.configs import sigma_sweep  # noqa: E402
from experiments.measure import (  # noqa: E402
    SWEEP_MEMBERS,
    compile_timed,
    copy_tree,
    default_config,
    setup,
    sweep_members,
)
from vae_jax import group as group_lib  # noqa: E402
from vae_jax import objective, sharding, threefry, train  # noqa: E402
from vae_jax.flops import train_step_flops  # noqa: E402
from vae_jax.timing import Ceiling, best_and_median  # noqa: E402

BENCHMARK = pathlib.Path(__file__).parent / "benchmark.py"
PROJECT = "project chunk (donated)"


def make_bare_mlp_chunk(config, problem: objective.Problem, num_steps: int):
    """Floor: the same matmuls as a batched jnp MLP (no vmap, no RNG, no likelihood) + Adam."""
    widths = list(config.model.hidden_sizes)
    k = config.model.latent_dim
    d = math.prod(problem.train_x.shape[1:])
    shapes = list(zip([d, *widths], [*widths, 2 * k], strict=True))
    shapes += list(zip([k, *reversed(widths)], [*reversed(widths), d], strict=True))
    tx = optax.adam(config.train.learning_rate)

    def forward(params, x):
        h = x
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i == len(widths):  # the latent: take the mean half
                h = h[:, :k]
            elif i != len(params) - 1:
                h = jax.nn.gelu(h)
        return jnp.sum(jnp.square(h - x))

    def init(rng):
        keys = jax.random.split(rng, len(shapes))
        params = [
            (jax.random.normal(r, s) / math.sqrt(s[0]), jnp.zeros(s[1]))
            for r, s in zip(keys, shapes, strict=True)
        ]
        return params, tx.init(params)

    def chunk(carry, train_x, hyper, rng):
        del hyper, rng

        def body(carry, i):
            params, opt_state = carry
            batch = jax.lax.dynamic_slice_in_dim(
                train_x, i * problem.batch_size, problem.batch_size
            )
            loss, grads = jax.value_and_grad(forward)(params, batch.reshape(batch.shape[0], -1))
            updates, opt_state = tx.update(grads, opt_state)
            return (optax.apply_updates(params, updates), opt_state), loss

        steps_per_epoch = train_x.shape[0] // problem.batch_size
        return jax.lax.scan(body, carry, jnp.arange(num_steps) % steps_per_epoch)

    return chunk, init


@contextlib.contextmanager
def jax_random_draws():
    """While open, `vae_jax.threefry`'s draws are `jax.random`'s own: the same numbers, drawn
    with jax's CPU lowering (a rolled loop carrying the key at the draw's full shape)."""
    saved = threefry.uniform, threefry.normal
    threefry.uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype)
    threefry.normal = lambda key, shape, dtype=jnp.float32: jax.random.normal(key, shape, dtype)
    try:
        yield
    finally:
        threefry.uniform, threefry.normal = saved


def traced_with_jax_random(fn):
    """`fn`, traced (when jitted) with `jax_random_draws` open: one thing changed."""

    def wrapped(*args):
        with jax_random_draws():
            return fn(*args)

    return wrapped


JAX_RANDOM = "jax.random draws instead of vae_jax.threefry"


def profile_draws(rounds: int) -> list[dict]:
    """ms of one dequantisation-sized uniform draw, alone and vmapped over 8 keys, by
    `jax.random` and by `vae_jax.threefry` (the same numbers)."""
    shape, keys = (1024, 784), jax.random.split(jax.random.key(0), SWEEP_MEMBERS)
    rows = []
    for label, key, vmapped in (("one key", keys[0], False), ("vmap over 8 keys", keys, True)):
        times = {}
        for name, draw in (
            ("jax.random", jax.random.uniform),
            ("vae_jax.threefry", threefry.uniform),
        ):
            fn = lambda k, draw=draw: draw(k, shape)
            fn = jax.jit(jax.vmap(fn) if vmapped else fn)
            jax.block_until_ready(fn(key))
            times[name] = best_and_median(lambda fn=fn, key=key: fn(key), 3 * rounds)[0]
        rows.append(
            {
                "variant": f"uniform {shape}, {label}",
                "jax_random_ms": times["jax.random"] * 1e3,
                "threefry_ms": times["vae_jax.threefry"] * 1e3,
                "speedup": times["jax.random"] / times["vae_jax.threefry"],
            }
        )
    return rows


def time_round_robin(variants: dict, train_x, hyper, rng, rounds: int):
    """Compile every (fn, initial carry, donate) variant, then time them in turn `rounds` times.

    Returns {name: (wall seconds per call, CPU seconds per call, compile seconds)}, min over
    rounds. CPU time (all threads) is the work done, which other processes' load changes far less.
    """
    compiled, holders, compile_s, times, cpu_times = {}, {}, {}, {}, {}
    for name, (fn, init, donate) in variants.items():
        jitted = jax.jit(fn, donate_argnums=0 if donate else ())
        holders[name] = copy_tree(init)
        compiled[name], compile_s[name] = compile_timed(jitted, holders[name], train_x, hyper, rng)
        holders[name] = jax.block_until_ready(compiled[name](holders[name], train_x, hyper, rng)[0])
        times[name], cpu_times[name] = [], []
    for _ in range(rounds):
        for name in variants:
            t0, c0 = time.perf_counter(), time.process_time()
            holders[name] = jax.block_until_ready(
                compiled[name](holders[name], train_x, hyper, rng)[0]
            )
            times[name].append(time.perf_counter() - t0)
            cpu_times[name].append(time.process_time() - c0)
    return {name: (min(times[name]), min(cpu_times[name]), compile_s[name]) for name in variants}


STEP_VARIANTS_1024 = ("SGD instead of Adam", "bare batched MLP + Adam (floor)", JAX_RANDOM)


def profile_step(
    config: ml_collections.ConfigDict,
    batch_size: int,
    num_steps: int,
    rounds: int,
    ceiling: Ceiling,
    names: Sequence[str] | None = None,
) -> list[dict]:
    """ms/step of the project chunk with one piece changed, timed round-robin."""
    config, problem, _, state, hyper, train_x = setup(config, batch_size)
    chunk = train.make_train_chunk(problem, num_steps)

    def with_tx(tx):
        return train.create_train_state(problem, tx, jax.random.key(0))

    lr = config.train.learning_rate
    bare_chunk, bare_init = make_bare_mlp_chunk(config, problem, num_steps)
    variants = {
        PROJECT: (chunk, state, True),
        "project chunk, no donation": (chunk, state, False),
        "plain optax.adam (no inject_hyperparams)": (chunk, with_tx(optax.adam(lr)), True),
        "optax.flatten(adam)": (chunk, with_tx(optax.flatten(optax.adam(lr))), True),
        "SGD instead of Adam": (chunk, with_tx(optax.sgd(lr)), True),
        "bare batched MLP + Adam (floor)": (bare_chunk, bare_init(jax.random.key(0)), True),
        JAX_RANDOM: (traced_with_jax_random(chunk), state, True),
    }
    if names is not None:
        variants = {k: v for k, v in variants.items() if k in names or k == PROJECT}
    probe = ceiling.probe()
    timed = time_round_robin(variants, train_x, hyper, jax.random.key(1), rounds)
    local_ceiling = max(probe, ceiling.probe())
    flops = train_step_flops(config, math.prod(problem.train_x.shape[1:]), batch_size)
    base_s, base_cpu, _ = timed[PROJECT]
    rows = []
    for name, (seconds, cpu_seconds, compile_s) in timed.items():
        rows.append(
            {
                "variant": name,
                "ms_per_step": seconds / num_steps * 1e3,
                "vs_project": seconds / base_s,
                "cpu_ms_per_step": cpu_seconds / num_steps * 1e3,
                "cpu_vs_project": cpu_seconds / base_cpu,
                "fraction_of_ceiling": flops * num_steps / seconds / 1e9 / local_ceiling,
                "compile_s": compile_s,
            }
        )
    return rows


def profile_sweep(config: ml_collections.ConfigDict, num_steps: int, rounds: int) -> list[dict]:
    """Run time (after compile) of 8 members × `num_steps` steps, organised several ways."""
    config, problem, tx, _, _, train_x = setup(config, config.train.batch_size)
    states, hypers, rngs = sweep_members(config, problem, tx)
    stacked_hypers, stacked_rngs = sharding.stack(hypers), jnp.stack(rngs)
    flat_tx = optax.flatten(optax.adam(config.train.learning_rate))
    flat_states, _, _ = sweep_members(config, problem, flat_tx)
    chunk = train.make_train_chunk(problem, num_steps)
    group = group_lib.make_group_chunk(problem, num_steps)

    def sliced(size):
        return group_lib.make_group_chunk(problem, num_steps, members_per_slice=size)

    stacked = sharding.stack(states)
    variants = {
        "jit(vmap(chunk)), donated [all members in one slice]": (group, stacked, True),
        "jit(vmap(chunk)), not donated": (group, stacked, False),
        "jit(vmap(chunk)), optax.flatten(adam)": (group, sharding.stack(flat_states), True),
        **{f"members_per_slice={n}": (sliced(n), stacked, True) for n in (1, 2, 4)},
        f"jit(vmap(chunk)), {JAX_RANDOM}": (traced_with_jax_random(group), stacked, True),
    }
    timed = time_round_robin(variants, train_x, stacked_hypers, stacked_rngs, rounds)
    # The baseline: each member its own call of the single run's program, one after another.
    single = jax.jit(chunk, donate_argnums=0)
    members = zip(states, hypers, rngs, strict=True)
    singles = [single(copy_tree(s), train_x, h, r)[0] for s, h, r in members]
    jax.block_until_ready(singles)
    seq_times = []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(SWEEP_MEMBERS):
            singles[i] = single(singles[i], train_x, hypers[i], rngs[i])[0]
        jax.block_until_ready(singles)
        seq_times.append((time.perf_counter() - t0, time.process_time() - c0))
    timed["8 sequential jit(chunk) calls"] = (*min(seq_times), None)
    base_s, base_cpu, _ = timed["8 sequential jit(chunk) calls"]
    return [
        {
            "variant": name,
            "run_s": seconds,
            "ms_per_member_step": seconds / (SWEEP_MEMBERS * num_steps) * 1e3,
            "vs_sequential": seconds / base_s,
            "cpu_vs_sequential": cpu_seconds / base_cpu,
            "compile_s": compile_s,
        }
        for name, (seconds, cpu_seconds, compile_s) in timed.items()
    ]


FLAG_VARIANTS = {
    "default": {},
    "--xla_cpu_multi_thread_eigen=false": {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"},
    "--xla_cpu_use_xnnpack=true": {"XLA_FLAGS": "--xla_cpu_use_xnnpack=true"},
    "--xla_cpu_enable_fast_math=true": {"XLA_FLAGS": "--xla_cpu_enable_fast_math=true"},
    "matmul precision bfloat16": {"JAX_DEFAULT_MATMUL_PRECISION": "bfloat16"},
    "2 host devices (1 per core)": {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
}


def profile_flags(batch_size: int, quick: bool) -> list[dict]:
    """The project step and the matmul ceiling, each flag set in its own subprocess."""
    rows = []
    for name, env in FLAG_VARIANTS.items():
        cmd = [sys.executable, str(BENCHMARK), "--step-only", str(batch_size)]
        if quick:
            cmd.append("--quick")
        merged = {**os.environ, **env}
        if "XLA_FLAGS" in env and os.environ.get("XLA_FLAGS"):
            merged["XLA_FLAGS"] = os.environ["XLA_FLAGS"] + " " + env["XLA_FLAGS"]
        out = subprocess.run(cmd, env=merged, capture_output=True, text=True, check=False)
        if out.returncode:
            rows.append({"variant": name, "error": out.stderr.strip().splitlines()[-1]})
            continue
        rows.append({"variant": name, **json.loads(out.stdout.strip().splitlines()[-1])})
    return rows


def print_table(title: str, rows: list[dict], columns: Sequence[str]) -> None:
    print(f"\n{title}")
    width = max(len(r["variant"]) for r in rows) + 2
    print("  " + "variant".ljust(width) + "".join(c.rjust(20) for c in columns))
    for r in rows:
        cells = ["-" if r.get(c) is None else f"{r[c]:.3g}" for c in columns]
        error = f"  error: {r['error']}" if "error" in r else ""
        print("  " + r["variant"].ljust(width) + "".join(c.rjust(20) for c in cells) + error)


def run(config: ml_collections.ConfigDict, ceiling: Ceiling, *, quick: bool) -> dict:
    """Every table, printed; returns them as benchmark.py's JSON "profile" field."""
    rounds = 2 if quick else 6
    results = {}
    for batch_size, steps, names in ((128, 20, None), (1024, 4, STEP_VARIANTS_1024)):
        rows = profile_step(config, batch_size, steps, rounds, ceiling, names)
        results[f"step_{batch_size}"] = rows
        print_table(
            f"step variants, batch {batch_size} (min of {rounds} round-robin rounds)",
            rows,
            ("ms_per_step", "vs_project", "cpu_ms_per_step", "cpu_vs_project")
            + ("fraction_of_ceiling", "compile_s"),
        )
    rows = profile_sweep(config, 10, rounds)
    results["sweep"] = rows
    print_table(
        f"sweep variants, {SWEEP_MEMBERS} members, batch 128, run time after compile",
        rows,
        ("run_s", "ms_per_member_step", "vs_sequential", "cpu_vs_sequential", "compile_s"),
    )
    rows = profile_draws(rounds)
    results["draws"] = rows
    print_table(
        f"random draws (best of {3 * rounds}), the same numbers either way",
        rows,
        ("jax_random_ms", "threefry_ms", "speedup"),
    )
    rows = profile_flags(128, quick)
    results["flags_128"] = rows
    print_table(
        "XLA/JAX flag variants (each its own process), project step at batch 128",
        rows,
        ("matmul_gflops", "ms_per_step", "fraction_of_ceiling", "compile_s"),
    )
    return results


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 6")
    parser.add_argument("--json", type=pathlib.Path, help="write the tables here")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="only the compilation table: the default σ sweep's Gaussian and discretised "
        "logistic groups (about 1.5 minutes)",
    )
    args = parser.parse_args(argv)
    if args.compile:
        jax.config.update("jax_cpu_enable_async_dispatch", False)  # before the CPU client starts
        rows = profile_compile(sigma_sweep.get_config(), COMPILE_GROUPS)
        results = {"compile": rows}
        print_table(
            "compilation, the default σ sweep's programs (CPU / wall = cores busy)",
            rows,
            ("wall_s", "cpu_s", "cores"),
        )
    else:
        results = run(default_config(), Ceiling(), quick=args.quick)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()

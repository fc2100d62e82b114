"""Speed of the train step, IWAE evaluation and σ sweep, against this machine's matmul ceiling.

    python experiments/benchmark.py                      # ~1.5 min on a quiet 2-core CPU
    python experiments/benchmark.py --quick --json b.json  # ~20-30 s, for CI smoke tests
    python experiments/benchmark.py --profile            # + where the step's time goes (~6 min)

One process measures, in order:
  1. the ceiling: dense float32 2048×2048 matmul GFLOP/s (compiled, best of several reps);
  2. the real project step (`vae_jax.train.make_train_chunk`, jitted with the state donated, as
     `train_and_evaluate` runs it) for experiments/configs/default.py at batch 128 and 1024:
     ms/step, examples/s, achieved GFLOP/s and its fraction of the ceiling;
  3. IWAE evaluation throughput (`vae_jax.evaluate.make_evaluate`, K = 1000);
  4. an 8-member σ sweep as one vmapped program against 8 sequential single runs, compile included.
Timings are best-of-reps after compilation (the machine is shared and noisy: read the ratios,
which come from the same process). Targets are printed as met / NOT met; nothing here fails.

`--profile` adds local variants of the train step (same maths, one thing changed) and of the sweep,
and XLA-flag variants in subprocesses, so each cost is a difference of two timings of one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vae_jax import evaluate, experiment, objective, train
from vae_jax import sweep as sweep_lib

CONFIG_PATH = pathlib.Path(__file__).parent / "configs" / "default.py"
SWEEP_MEMBERS = 8
TARGETS = {  # fraction of the matmul ceiling, and the sweep's time against sequential runs
    "train_128": 0.75,
    "train_1024": 0.90,
    "sweep_fraction": 0.70,
    "sweep_ratio": 0.75,
    "compile_s": 10.0,
}


@dataclasses.dataclass(frozen=True)
class Settings:
    matmul_reps: int
    train_steps: int  # steps per timed chunk; per-step time = chunk time / train_steps
    train_reps: int
    iwae_samples: int
    iwae_examples: int
    sweep_steps: int
    sweep_reps: int


FULL = Settings(
    matmul_reps=20,
    train_steps=50,
    train_reps=5,
    iwae_samples=1000,
    iwae_examples=160,
    sweep_steps=100,
    sweep_reps=2,
)
QUICK = Settings(
    matmul_reps=5,
    train_steps=5,
    train_reps=2,
    iwae_samples=100,
    iwae_examples=100,
    sweep_steps=3,
    sweep_reps=1,
)


# ----------------------------------------------------------------------------- helpers


def default_config() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("default_config", CONFIG_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def best_and_median(fn: Callable[[], Any], reps: int) -> tuple[float, float]:
    """Seconds of `fn()` (its outputs blocked on): best and median of `reps` calls."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def compile_timed(jitted, *args) -> tuple[Any, float]:
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def copy_tree(tree):
    """Fresh buffers, so a donated call cannot delete arrays the caller still holds."""
    return jax.tree.map(jnp.copy, tree)


# ----------------------------------------------------------------------------- flop counts


def forward_matmul_flops(config: ml_collections.ConfigDict, event_size: int) -> int:
    """Matmul FLOPs of ONE example's forward pass through the MLP VAE (K = num_samples).

    A Dense layer n_in → n_out costs 2·n_in·n_out FLOPs (multiply + add). Default config,
    D = 784, hidden (512, 512), k = 32:
      encoder  784·512 + 512·512 + 512·(32 + 32)      (mean and log-variance heads)
      decoder  (32·512 + 512·512 + 512·784) per z sample
    = 2·(696,320 + 679,936) = 2,752,512 FLOPs per example per sample of z.
    Biases, activations, the likelihood, Adam and the RNG are not counted: they are O(D), not
    O(D·width), and are the overhead this benchmark is meant to expose.
    """
    widths = list(config.model.hidden_sizes)
    k = config.model.latent_dim
    encoder = [event_size, *widths]
    encoder_flops = (
        sum(a * b for a, b in zip(encoder, encoder[1:], strict=False)) + widths[-1] * 2 * k
    )
    decoder = [k, *reversed(widths), event_size]
    decoder_flops = sum(a * b for a, b in zip(decoder, decoder[1:], strict=False))
    return 2 * (encoder_flops + config.train.num_samples * decoder_flops)


def train_step_flops(config: ml_collections.ConfigDict, event_size: int, batch_size: int) -> int:
    """FLOPs of one train step: forward + backward ≈ 3 × forward matmul FLOPs, times the batch.

    The backward pass does two matmuls per layer (gradient w.r.t. the input and the weights), each
    as large as the forward one. (Strictly the first layer needs no input gradient, so the exact
    count is 3·F − 2·784·512·B; we keep the conventional 3·F, 1.057 GFLOP at batch 128.)
    """
    return 3 * forward_matmul_flops(config, event_size) * batch_size


def iwae_flops_per_example(config: ml_collections.ConfigDict, event_size: int, k: int) -> int:
    """Evaluation FLOPs of one example: encoder once, decoder K + 2 times (IWAE, ELBO, mean)."""
    one_sample = config.copy_and_resolve_references()
    one_sample.train.num_samples = k + 2
    return forward_matmul_flops(one_sample, event_size)


# ----------------------------------------------------------------------------- 1. the ceiling


class Ceiling:
    """Dense float32 size×size matmul GFLOP/s (2·n³ FLOPs), kept compiled for re-measuring.

    On a shared machine the load drifts between sections, so every timing below also probes the
    matmul between its own reps and divides by the best probe of those same moments.
    """

    def __init__(self, size: int = 2048):
        self.flops = 2 * size**3
        self.a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
        self.b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
        self.matmul = jax.jit(jnp.matmul)
        jax.block_until_ready(self.matmul(self.a, self.b))

    def measure(self, reps: int) -> tuple[float, float]:
        """GFLOP/s: best and median of `reps` calls."""
        best, median = best_and_median(lambda: self.matmul(self.a, self.b), reps)
        return self.flops / best / 1e9, self.flops / median / 1e9

    def probe(self) -> float:
        """GFLOP/s of one call."""
        return self.measure(1)[0]


# ----------------------------------------------------------------------------- 2. the train step


def setup(config: ml_collections.ConfigDict, batch_size: int, seed: int = 0):
    config = config.copy_and_resolve_references()
    config.train.batch_size = batch_size
    problem = experiment.build_problem(config)
    tx = train.make_optimizer(config)
    state = train.create_train_state(problem, tx, jax.random.key(seed))
    hyper = objective.make_hyper(config.likelihood.sigma, config.train.beta)
    return config, problem, tx, state, hyper, jnp.asarray(problem.train_x)


def time_chunk(chunk_fn, state, train_x, hyper, rng, num_steps: int, reps: int, ceiling):
    """`chunk_fn` jitted and donated as `train_and_evaluate` runs it, a matmul probe between reps.

    Returns (best s/step, median s/step, compile s, best probed ceiling GFLOP/s).
    """
    jitted = jax.jit(chunk_fn, donate_argnums=0)
    state = copy_tree(state)
    compiled, compile_s = compile_timed(jitted, state, train_x, hyper, rng)
    state = jax.block_until_ready(compiled(state, train_x, hyper, rng)[0])  # untimed warm-up
    times, probes = [], []
    for _ in range(reps):
        probes.append(ceiling.probe())
        t0 = time.perf_counter()
        state = jax.block_until_ready(compiled(state, train_x, hyper, rng)[0])
        times.append(time.perf_counter() - t0)
    probes.append(ceiling.probe())
    return min(times) / num_steps, float(np.median(times)) / num_steps, compile_s, max(probes)


def bench_train_step(config, batch_size: int, settings: Settings, ceiling: Ceiling) -> dict:
    config, problem, _, state, hyper, train_x = setup(config, batch_size)
    chunk = train.make_train_chunk(problem, settings.train_steps)
    best, median, compile_s, local_ceiling = time_chunk(
        chunk,
        state,
        train_x,
        hyper,
        jax.random.key(1),
        settings.train_steps,
        settings.train_reps,
        ceiling,
    )
    flops = train_step_flops(config, math.prod(problem.train_x.shape[1:]), batch_size)
    gflops = flops / best / 1e9
    return {
        "ms_per_step": best * 1e3,
        "ms_per_step_median": median * 1e3,
        "examples_per_sec": batch_size / best,
        "gflops": gflops,
        "fraction_of_ceiling": gflops / local_ceiling,
        "ceiling_gflops": local_ceiling,
        "compile_s": compile_s,
    }


# ----------------------------------------------------------------------------- 3. IWAE evaluation


def bench_iwae(config, settings: Settings, ceiling: Ceiling) -> dict:
    config, problem, _, state, hyper, _ = setup(config, config.train.batch_size)
    config.eval.iwae_samples = settings.iwae_samples
    # Whole evaluation batches only: `evaluate` pads the last batch, which would count as work.
    batch_size = evaluate.eval_batch_size(config, math.prod(problem.test_x.shape[1:]))
    num_examples = batch_size * max(1, settings.iwae_examples // batch_size)
    test_x = jnp.asarray(np.resize(problem.test_x, (num_examples, *problem.test_x.shape[1:])))
    evaluate_fn = jax.jit(
        evaluate.make_evaluate(
            problem,
            iwae_samples=settings.iwae_samples,
            batch_size=batch_size,
        )
    )
    rng = jax.random.key(2)
    log_sigma = hyper.log_sigma
    compiled, compile_s = compile_timed(evaluate_fn, state.params, test_x, log_sigma, rng)
    jax.block_until_ready(compiled(state.params, test_x, log_sigma, rng))
    local_ceiling = ceiling.probe()
    best, _ = best_and_median(lambda: compiled(state.params, test_x, log_sigma, rng), 2)
    local_ceiling = max(local_ceiling, ceiling.probe())
    flops = iwae_flops_per_example(config, math.prod(test_x.shape[1:]), settings.iwae_samples)
    examples_per_sec = test_x.shape[0] / best
    return {
        "examples_per_sec": examples_per_sec,
        "num_samples": settings.iwae_samples,
        "gflops": flops * examples_per_sec / 1e9,
        "fraction_of_ceiling": flops * examples_per_sec / 1e9 / local_ceiling,
        "compile_s": compile_s,
    }


# ----------------------------------------------------------------------------- 4. the σ sweep


def stack_trees(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def sweep_members(config, problem, tx, members: int):
    """Member i: seed i, σ from a geometric grid 0.03…1 (what a σ sweep config varies)."""
    sigmas = np.geomspace(0.03, 1.0, members)
    states = [train.create_train_state(problem, tx, jax.random.key(i)) for i in range(members)]
    hypers = [objective.make_hyper(float(s), config.train.beta) for s in sigmas]
    rngs = [jax.random.key(1000 + i) for i in range(members)]
    return states, hypers, rngs


def make_vmapped_sweep(problem: objective.Problem, num_steps: int) -> Callable:
    """sweep(states, train_x, hypers, rngs): `vae_jax.sweep`'s own program, jitted as `fit` does."""
    return jax.jit(sweep_lib.make_group_chunk(problem, num_steps), donate_argnums=0)


def run_vmapped_sweep(problem, states, train_x, hypers, rngs, num_steps):
    """Wall seconds of the whole vmapped sweep (stack, compile, run) and its compile seconds."""
    t0 = time.perf_counter()
    sweep = make_vmapped_sweep(problem, num_steps)
    stacked = (stack_trees(states), stack_trees(hypers), jnp.stack(rngs))
    compiled, compile_s = compile_timed(sweep, stacked[0], train_x, stacked[1], stacked[2])
    jax.block_until_ready(compiled(stacked[0], train_x, stacked[1], stacked[2]))
    return time.perf_counter() - t0, compile_s


def run_sequential(problem, states, train_x, hypers, rngs, num_steps, *, compile_each: bool):
    """Wall seconds of the members one after another, each a single run as `fit` does it.

    compile_each=True: every member builds and compiles its own chunk, as 8 single runs
    (`train_and_evaluate`, one per member) do. False: one `jax.jit` shared by all members, so it
    compiles once — the cheapest conceivable sequential baseline, reported beside it.
    """
    t0 = time.perf_counter()
    chunk = jax.jit(train.make_train_chunk(problem, num_steps), donate_argnums=0)
    for state, hyper, rng in zip(states, hypers, rngs, strict=True):
        if compile_each:
            chunk = jax.jit(train.make_train_chunk(problem, num_steps), donate_argnums=0)
        jax.block_until_ready(chunk(state, train_x, hyper, rng))
    return time.perf_counter() - t0


def bench_sweep(config, settings: Settings, ceiling: Ceiling) -> dict:
    config, problem, tx, _, _, train_x = setup(config, config.train.batch_size)
    vmapped, sequential, shared, compiles, probes = [], [], [], [], []
    for _ in range(settings.sweep_reps):
        probes.append(ceiling.probe())
        states, hypers, rngs = sweep_members(config, problem, tx, SWEEP_MEMBERS)
        seconds, compile_s = run_vmapped_sweep(
            problem, states, train_x, hypers, rngs, settings.sweep_steps
        )
        vmapped.append(seconds)
        compiles.append(compile_s)
        for times, compile_each in ((sequential, True), (shared, False)):
            states, hypers, rngs = sweep_members(config, problem, tx, SWEEP_MEMBERS)
            times.append(
                run_sequential(
                    problem,
                    states,
                    train_x,
                    hypers,
                    rngs,
                    settings.sweep_steps,
                    compile_each=compile_each,
                )
            )
    probes.append(ceiling.probe())
    vmapped_s, sequential_s, local_ceiling = min(vmapped), min(sequential), max(probes)
    # Achieved rate of the vmapped program itself: its run time without compilation.
    run_s = max(vmapped_s - min(compiles), 1e-9)
    flops = (
        train_step_flops(config, math.prod(problem.train_x.shape[1:]), config.train.batch_size)
        * settings.sweep_steps
        * SWEEP_MEMBERS
    )
    return {
        "members": SWEEP_MEMBERS,
        "steps": settings.sweep_steps,
        "vmapped_s": vmapped_s,
        "sequential_s": sequential_s,
        "ratio": vmapped_s / sequential_s,
        "sequential_shared_compile_s": min(shared),
        "ratio_shared_compile": vmapped_s / min(shared),
        "compile_s": min(compiles),
        "gflops": flops / run_s / 1e9,
        "fraction_of_ceiling": flops / run_s / 1e9 / local_ceiling,
    }


# ------------------------------------------------------------------------ profile: step variants


def make_step_variant(
    problem: objective.Problem,
    tx: optax.GradientTransformation,
    *,
    finite: str = "where",
    optimizer: str = "adam",
    gradient: bool = True,
) -> Callable:
    """`train.make_train_step` with one thing changed (the maths is otherwise the same).

    finite: 'where' (the project: `hyper.active` & per-leaf isfinite, then `where` over the
      whole new state; the step counter advances regardless),
      'global_norm' (one fused reduction, then the same `where`), 'cond' (`lax.cond` between the
      updated and the old state: a real branch unvmapped, a select under vmap), 'none'.
    optimizer: 'adam' (the state's own tx), 'sgd' (params − 1e-3·g: the gradient's cost alone).
    gradient: False replaces the backward pass by a constant tree (the optimiser's cost alone).
    """

    def train_step(state, batch, hyper, rng):
        rng = jax.random.fold_in(rng, state.step)
        data_rng, sample_rng = jax.random.split(rng)
        x = objective.transform_batch(problem, data_rng, batch)
        sample_rngs = jax.random.split(sample_rng, x.shape[0])

        def loss_fn(params):
            per_example = jax.vmap(
                lambda x, r: objective.example_elbo(
                    problem, params, x, hyper, r, problem.num_samples
                )
            )(x, sample_rngs)
            return -jnp.mean(per_example["objective"]), per_example

        if gradient:
            grads, per_example = jax.grad(loss_fn, has_aux=True)(state.params)
            loss = -jnp.mean(per_example["objective"])
        else:
            grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), state.params)
            loss = jnp.mean(x)
        if optimizer == "adam":
            new_state = state.apply_gradients(grads=grads)
        else:
            params = jax.tree.map(lambda p, g: p - 1e-3 * g, state.params, grads)
            new_state = state.replace(step=state.step + 1, params=params)
        if finite == "where":
            keep = hyper.active & jnp.isfinite(loss)
            keep &= jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
            new_state = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new_state, state)
        elif finite == "global_norm":
            keep = hyper.active & jnp.isfinite(loss + optax.global_norm(grads))
            new_state = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new_state, state)
        elif finite == "cond":
            keep = hyper.active & jnp.isfinite(loss + optax.global_norm(grads))
            new_state = jax.lax.cond(keep, lambda: new_state, lambda: state)
        return new_state.replace(step=state.step + 1), {"loss": loss}

    return train_step


def make_chunk_variant(
    problem: objective.Problem, step: Callable, num_steps: int, *, perms_per_chunk: bool = False
) -> Callable:
    """`train.make_train_chunk`'s scan and batch indexing around another step function.

    perms_per_chunk: draw the permutations of the (at most num_steps // S + 2) epochs the chunk
    touches once, before the scan, instead of one permutation of the whole train set per step.
    The batches are bitwise the same (perm_e depends only on rng and e), and it works under vmap.
    """
    batch_size = problem.batch_size

    def train_chunk(state, train_x, hyper, rng):
        perm_rng, step_rng = jax.random.split(rng)
        steps_per_epoch = train_x.shape[0] // batch_size
        first_epoch = state.step // steps_per_epoch
        num_epochs = num_steps // steps_per_epoch + 2
        perms = jax.vmap(
            lambda e: jax.random.permutation(jax.random.fold_in(perm_rng, e), train_x.shape[0])
        )(first_epoch + jnp.arange(num_epochs))

        def body(state, _):
            epoch, position = jnp.divmod(state.step, steps_per_epoch)
            if perms_per_chunk:
                perm = perms[epoch - first_epoch]
            else:
                perm = jax.random.permutation(jax.random.fold_in(perm_rng, epoch), train_x.shape[0])
            idx = jax.lax.dynamic_slice_in_dim(perm, position * batch_size, batch_size)
            return step(state, train_x[idx], hyper, step_rng)

        return jax.lax.scan(body, state, length=num_steps)

    return train_chunk


def make_bare_mlp_chunk(config, problem: objective.Problem, num_steps: int) -> Callable:
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


PROFILE_1024 = (  # the variants worth their time at batch 1024
    "permutation once per epoch (per chunk)",
    "finite check: none",
    "finite check: global_norm + lax.cond",
    "gradient only (SGD, no finite check)",
    "optimizer only (Adam + finite where)",
    "bare batched MLP + Adam (floor)",
)


def profile_step(
    config,
    batch_size: int,
    num_steps: int,
    rounds: int,
    ceiling: Ceiling,
    names: Sequence[str] | None = None,
) -> list:
    """ms/step of step variants, timed round-robin (min over rounds) so noise hits all alike.

    cpu_ms_per_step is the process's CPU time (all threads) per step: the work done, which
    other processes' load changes far less than wall time.
    """
    config, problem, tx, state, hyper, train_x = setup(config, batch_size)
    plain_adam = optax.adam(config.train.learning_rate)
    plain_state = train.create_train_state(problem, plain_adam, jax.random.key(0))
    flat_adam = optax.flatten(optax.adam(config.train.learning_rate))
    flat_state = train.create_train_state(problem, flat_adam, jax.random.key(0))
    bare_chunk, bare_init = make_bare_mlp_chunk(config, problem, num_steps)

    def variant(perms_per_chunk=False, **kwargs):
        step = make_step_variant(problem, tx, **kwargs)
        return make_chunk_variant(problem, step, num_steps, perms_per_chunk=perms_per_chunk)

    variants = {
        "project chunk (donated)": (train.make_train_chunk(problem, num_steps), state, True),
        "project chunk, no donation": (train.make_train_chunk(problem, num_steps), state, False),
        "local replica of the project step": (variant(), state, True),
        "permutation once per epoch (per chunk)": (variant(perms_per_chunk=True), state, True),
        "per-chunk permutation + no finite check": (
            variant(perms_per_chunk=True, finite="none"),
            state,
            True,
        ),
        "finite check: none": (variant(finite="none"), state, True),
        "finite check: global_norm + where": (variant(finite="global_norm"), state, True),
        "finite check: global_norm + lax.cond": (variant(finite="cond"), state, True),
        "SGD instead of Adam (finite where kept)": (variant(optimizer="sgd"), state, True),
        "gradient only (SGD, no finite check)": (
            variant(optimizer="sgd", finite="none"),
            state,
            True,
        ),
        "optimizer only (Adam + finite where)": (variant(gradient=False), state, True),
        "optimizer only (Adam, no finite check)": (
            variant(gradient=False, finite="none"),
            state,
            True,
        ),
        "data only (batch, RNG; no grad/update)": (
            variant(gradient=False, optimizer="sgd", finite="none"),
            state,
            True,
        ),
        "plain optax.adam (no inject_hyperparams)": (variant(), plain_state, True),
        "optax.flatten(adam)": (variant(), flat_state, True),
        "optax.flatten(adam), no finite check": (variant(finite="none"), flat_state, True),
        "bare batched MLP + Adam (floor)": (bare_chunk, bare_init(jax.random.key(0)), True),
    }
    if names is not None:
        variants = {k: v for k, v in variants.items() if k in names or k.startswith("project")}
    flops = train_step_flops(config, math.prod(problem.train_x.shape[1:]), batch_size)
    rng = jax.random.key(1)
    compiled, holders, compile_s, times, cpu_times = {}, {}, {}, {}, {}
    for name, (chunk, init_state, donate) in variants.items():
        jitted = jax.jit(chunk, donate_argnums=0 if donate else ())
        holders[name] = copy_tree(init_state)
        compiled[name], compile_s[name] = compile_timed(jitted, holders[name], train_x, hyper, rng)
        holders[name] = jax.block_until_ready(compiled[name](holders[name], train_x, hyper, rng)[0])
        times[name], cpu_times[name] = [], []
    probes = []
    for _ in range(rounds):
        probes.append(ceiling.probe())
        for name in variants:
            t0, c0 = time.perf_counter(), time.process_time()
            holders[name] = jax.block_until_ready(
                compiled[name](holders[name], train_x, hyper, rng)[0]
            )
            times[name].append((time.perf_counter() - t0) / num_steps)
            cpu_times[name].append((time.process_time() - c0) / num_steps)
    local_ceiling = max(probes)
    base = min(times["project chunk (donated)"])
    rows = []
    for name in variants:
        best = min(times[name])
        rows.append(
            {
                "variant": name,
                "ms_per_step": best * 1e3,
                "vs_project": best / base,
                "cpu_ms_per_step": min(cpu_times[name]) * 1e3,
                "cpu_vs_project": min(cpu_times[name]) / min(cpu_times["project chunk (donated)"]),
                "fraction_of_ceiling": flops / best / 1e9 / local_ceiling,
                "compile_s": compile_s[name],
            }
        )
    return rows


# ----------------------------------------------------------------------- profile: sweep variants


def profile_sweep(config, num_steps: int, rounds: int) -> list:
    """Run time (after compile) of 8 members × `num_steps` steps, organised several ways."""
    config, problem, tx, _, _, train_x = setup(config, config.train.batch_size)
    states, hypers, rngs = sweep_members(config, problem, tx, SWEEP_MEMBERS)
    stacked_states, stacked_hypers, stacked_rngs = (
        stack_trees(states),
        stack_trees(hypers),
        jnp.stack(rngs),
    )
    chunk = train.make_train_chunk(problem, num_steps)
    no_finite = make_chunk_variant(
        problem, make_step_variant(problem, tx, finite="none"), num_steps
    )
    flat_tx = optax.flatten(optax.adam(config.train.learning_rate))
    flat_states = stack_trees(
        [train.create_train_state(problem, flat_tx, jax.random.key(i)) for i in range(8)]
    )

    def over_members(chunk):
        return lambda s, x, h, r: jax.lax.map(lambda a: chunk(a[0], x, a[1], a[2]), (s, h, r))

    vmap = lambda c: jax.vmap(c, in_axes=(0, None, 0, 0))
    variants = {
        "jit(vmap(chunk)), donated [benchmark's sweep]": (vmap(chunk), stacked_states, True),
        "jit(vmap(chunk)), not donated": (vmap(chunk), stacked_states, False),
        "jit(vmap(chunk)), no finite where": (vmap(no_finite), stacked_states, True),
        "jit(vmap(chunk)), optax.flatten(adam)": (
            vmap(make_chunk_variant(problem, make_step_variant(problem, flat_tx), num_steps)),
            flat_states,
            True,
        ),
        "jit(lax.map(chunk)) over members": (over_members(chunk), stacked_states, True),
    }
    rows, compiled, holders, times, cpu_times, compile_s = [], {}, {}, {}, {}, {}
    for name, (fn, init_states, donate) in variants.items():
        jitted = jax.jit(fn, donate_argnums=0 if donate else ())
        holders[name] = copy_tree(init_states)
        compiled[name], compile_s[name] = compile_timed(
            jitted, holders[name], train_x, stacked_hypers, stacked_rngs
        )
        holders[name] = jax.block_until_ready(
            compiled[name](holders[name], train_x, stacked_hypers, stacked_rngs)[0]
        )
        times[name], cpu_times[name] = [], []
    single = jax.jit(chunk, donate_argnums=0)
    single_states = [copy_tree(s) for s in states]
    single_states = [
        jax.block_until_ready(single(s, train_x, h, r)[0])
        for s, h, r in zip(single_states, hypers, rngs, strict=True)
    ]
    seq = "8 sequential jit(chunk) calls"
    times[seq], cpu_times[seq], compile_s[seq] = [], [], None
    for _ in range(rounds):
        for name in variants:
            t0, c0 = time.perf_counter(), time.process_time()
            holders[name] = jax.block_until_ready(
                compiled[name](holders[name], train_x, stacked_hypers, stacked_rngs)[0]
            )
            times[name].append(time.perf_counter() - t0)
            cpu_times[name].append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        for i, (h, r) in enumerate(zip(hypers, rngs, strict=True)):
            single_states[i] = jax.block_until_ready(single(single_states[i], train_x, h, r)[0])
        times[seq].append(time.perf_counter() - t0)
        cpu_times[seq].append(time.process_time() - c0)
    for name, ts in times.items():
        rows.append(
            {
                "variant": name,
                "run_s": min(ts),
                "ms_per_member_step": min(ts) / (SWEEP_MEMBERS * num_steps) * 1e3,
                "vs_sequential": min(ts) / min(times[seq]),
                "cpu_vs_sequential": min(cpu_times[name]) / min(cpu_times[seq]),
                "compile_s": compile_s[name],
            }
        )
    return rows


# ----------------------------------------------------------------------------- profile: XLA flags


FLAG_VARIANTS = {
    "default": {},
    "--xla_cpu_multi_thread_eigen=false": {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"},
    "--xla_cpu_use_xnnpack=true": {"XLA_FLAGS": "--xla_cpu_use_xnnpack=true"},
    "--xla_cpu_enable_fast_math=true": {"XLA_FLAGS": "--xla_cpu_enable_fast_math=true"},
    "matmul precision bfloat16": {"JAX_DEFAULT_MATMUL_PRECISION": "bfloat16"},
    "2 host devices (1 per core)": {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
}


def profile_flags(batch_size: int, quick: bool) -> list:
    """The project step and the matmul ceiling, each flag set in its own subprocess."""
    rows = []
    for name, env in FLAG_VARIANTS.items():
        cmd = [sys.executable, __file__, "--step-only", str(batch_size)]
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


def step_only(batch_size: int, settings: Settings) -> dict:
    ceiling = Ceiling()
    result = bench_train_step(default_config(), batch_size, settings, ceiling)
    return {"matmul_gflops": result["ceiling_gflops"], **result}


# ----------------------------------------------------------------------------- report


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def print_table(title: str, rows: list[dict], columns: Sequence[str]) -> None:
    print(f"\n{title}")
    width = max(len(r["variant"]) for r in rows) + 2
    print("  " + "variant".ljust(width) + "".join(c.rjust(20) for c in columns))
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            cells.append(("-" if v is None else f"{v:.3g}").rjust(20))
        print(
            "  "
            + r["variant"].ljust(width)
            + "".join(cells)
            + (f"  error: {r['error']}" if "error" in r else "")
        )


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer reps/steps, K = 100 (<1 min)")
    parser.add_argument("--json", type=pathlib.Path, help="write the results here")
    parser.add_argument("--profile", action="store_true", help="also time step/sweep variants")
    parser.add_argument("--step-only", type=int, metavar="BATCH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.step_only:
        print(json.dumps(step_only(args.step_only, settings)))
        return {}

    config = default_config()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs")
    ceiling = Ceiling()
    ceiling_gflops, ceiling_median = ceiling.measure(settings.matmul_reps)
    print(
        f"ceiling: 2048² float32 matmul {ceiling_gflops:.1f} GFLOP/s "
        f"(median {ceiling_median:.1f}); each fraction below divides by the best matmul\n"
        "  probed between that section's own reps, as the load on a shared machine drifts"
    )

    steps = {}
    for batch_size in (128, 1024):
        steps[str(batch_size)] = bench_train_step(config, batch_size, settings, ceiling)
    iwae = bench_iwae(config, settings, ceiling)
    sweep = bench_sweep(config, settings, ceiling)
    results = {
        "matmul_gflops": ceiling_gflops,
        "train_step": steps,
        "iwae": iwae,
        "sweep": sweep,
        "compile_s": steps["128"]["compile_s"],
    }

    print("\ntrain step (experiments/configs/default.py, make_train_chunk, donated)")
    print(
        f"  {'batch':>6}{'ms/step':>10}{'median':>10}{'examples/s':>12}{'GFLOP/s':>10}"
        f"{'of ceiling':>12}{'ceiling':>9}{'compile s':>11}  target"
    )
    for batch_size, target in (("128", TARGETS["train_128"]), ("1024", TARGETS["train_1024"])):
        r = steps[batch_size]
        print(
            f"  {batch_size:>6}{r['ms_per_step']:>10.2f}{r['ms_per_step_median']:>10.2f}"
            f"{r['examples_per_sec']:>12.0f}{r['gflops']:>10.1f}{r['fraction_of_ceiling']:>12.0%}"
            f"{r['ceiling_gflops']:>9.1f}{r['compile_s']:>11.2f}  "
            f"≥ {target:.0%}: {met(r['fraction_of_ceiling'] >= target)}"
        )
    print(
        f"\nIWAE evaluation (K = {iwae['num_samples']}): "
        f"{iwae['examples_per_sec']:.1f} examples/s, "
        f"{iwae['gflops']:.1f} GFLOP/s ({iwae['fraction_of_ceiling']:.0%} of ceiling)"
    )
    print(
        f"\nσ sweep, {sweep['members']} members × {sweep['steps']} steps, compile included: "
        f"vmapped {sweep['vmapped_s']:.2f} s (compile {sweep['compile_s']:.2f} s), "
        f"8 sequential single runs {sweep['sequential_s']:.2f} s, ratio {sweep['ratio']:.2f}; "
        f"sequential sharing one compile {sweep['sequential_shared_compile_s']:.2f} s, "
        f"ratio {sweep['ratio_shared_compile']:.2f}"
    )
    print(
        f"  vmapped run {sweep['gflops']:.1f} GFLOP/s = {sweep['fraction_of_ceiling']:.0%} of "
        f"ceiling (target ≥ {TARGETS['sweep_fraction']:.0%}: "
        f"{met(sweep['fraction_of_ceiling'] >= TARGETS['sweep_fraction'])}); "
        f"ratio ≤ {TARGETS['sweep_ratio']}: {met(sweep['ratio'] <= TARGETS['sweep_ratio'])}"
    )
    print(
        f"\ncompile (first step, default config): {results['compile_s']:.2f} s; "
        f"< {TARGETS['compile_s']:.0f} s: {met(results['compile_s'] < TARGETS['compile_s'])}"
    )

    if args.profile:
        rounds = 2 if args.quick else 6
        results["profile"] = {}
        for batch_size, steps, names in ((128, 20, None), (1024, 4, PROFILE_1024)):
            rows = profile_step(config, batch_size, steps, rounds, ceiling, names)
            results["profile"][f"step_{batch_size}"] = rows
            print_table(
                f"step variants, batch {batch_size} (min of {rounds} round-robin rounds)",
                rows,
                (
                    "ms_per_step",
                    "vs_project",
                    "cpu_ms_per_step",
                    "cpu_vs_project",
                    "fraction_of_ceiling",
                    "compile_s",
                ),
            )
        rows = profile_sweep(config, 10, rounds)
        results["profile"]["sweep"] = rows
        print_table(
            "sweep variants, 8 members, batch 128, run time after compile",
            rows,
            ("run_s", "ms_per_member_step", "vs_sequential", "cpu_vs_sequential", "compile_s"),
        )
        rows = profile_flags(128, args.quick)
        results["profile"]["flags_128"] = rows
        print_table(
            "XLA/JAX flag variants (each its own process), project step at batch 128",
            rows,
            ("matmul_gflops", "ms_per_step", "fraction_of_ceiling", "compile_s"),
        )

    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()

"""What experiments/benchmark.py and experiments/profiling.py share: compile timing, the project's
own problem, state and sweep members for a batch size, and the PyTorch reference. The FLOP counts
(`vae_jax.flops`) and the matmul ceiling (`vae_jax.timing.Ceiling`) live in the library, since
every sweep's timing.json uses them too."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vae_jax import conv, experiment, objective, train
from vae_jax.flops import problem_train_step_flops
from vae_jax.timing import Ceiling

CONFIG_PATH = pathlib.Path(__file__).parent / "configs" / "default.py"
CONV_HIDDEN = (16, 32)  # the common small conv VAE (vae_jax.models), as torch_reference.py's
SWEEP_MEMBERS = 8
TORCH_REFERENCE = pathlib.Path(__file__).parent / "torch_reference.py"


def default_config() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("default_config", CONFIG_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def conv_config() -> ml_collections.ConfigDict:
    """default.py's run with the conv VAE (hidden sizes 16, 32; 32 latents) instead of the MLP."""
    config = default_config()
    config.model.kind = "conv"
    config.model.hidden_sizes = CONV_HIDDEN
    return config


@contextlib.contextmanager
def plain_convolutions():
    """While open, the conv VAE's layers are lax's own convolutions (`vae_jax.conv`'s references,
    the same function): what a program traced inside runs in place of patches and one matmul."""
    saved = conv.conv_stride2, conv.conv_transpose_stride2
    conv.conv_stride2 = conv.conv_reference
    conv.conv_transpose_stride2 = conv.conv_transpose_reference
    try:
        yield
    finally:
        conv.conv_stride2, conv.conv_transpose_stride2 = saved


def compile_timed(jitted, *args) -> tuple[Any, float]:
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def copy_tree(tree: Any) -> Any:
    """Fresh buffers, so a donated call cannot delete arrays the caller still holds."""
    return jax.tree.map(jnp.copy, tree)


# ----------------------------------------------------------------------------- the project's pieces


def setup(config: ml_collections.ConfigDict, batch_size: int, seed: int = 0):
    """(config, problem, tx, state, hyper, train_x) of the project at `batch_size`."""
    config = config.copy_and_resolve_references()
    config.train.batch_size = batch_size
    problem = experiment.build_problem(config)
    tx = train.make_optimizer(config)
    state = train.create_train_state(problem, tx, jax.random.key(seed))
    hyper = objective.make_hyper(config.likelihood.sigma, config.train.beta)
    return config, problem, tx, state, hyper, jnp.asarray(problem.train_x)


def sweep_members(
    config: ml_collections.ConfigDict,
    problem: objective.Problem,
    tx: optax.GradientTransformation,
    members: int = SWEEP_MEMBERS,
):
    """Member i: seed i, σ from a geometric grid 0.03…1 (what a σ sweep config varies)."""
    sigmas = np.geomspace(0.03, 1.0, members)
    states = [train.create_train_state(problem, tx, jax.random.key(i)) for i in range(members)]
    hypers = [objective.make_hyper(float(s), config.train.beta) for s in sigmas]
    rngs = [jax.random.key(1000 + i) for i in range(members)]
    return states, hypers, rngs


# ----------------------------------------------------------------------------- the train step


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


def bench_train_step(config, batch_size: int, steps: int, reps: int, ceiling: Ceiling) -> dict:
    """The project's train chunk of `steps` steps (`train.make_train_chunk`) at `batch_size`,
    best of `reps` after compilation: ms/step, examples/s, useful GFLOP/s and their fraction of
    the ceiling probed between the reps."""
    _, problem, _, state, hyper, train_x = setup(config, batch_size)
    chunk = train.make_train_chunk(problem, steps)
    best, median, compile_s, local_ceiling = time_chunk(
        chunk, state, train_x, hyper, jax.random.key(1), steps, reps, ceiling
    )
    flops = problem_train_step_flops(problem)
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


# ------------------------------------------------------------------ the PyTorch reference


def torch_python(requested: str | None) -> str | None:
    """The interpreter that runs the PyTorch reference: --torch-python, or this one if it has
    torch; None when neither does."""
    if requested:
        return requested
    return sys.executable if importlib.util.find_spec("torch") else None


def bench_torch(
    python: str | None,
    config,
    steps: int,
    reps: int,
    *,
    model: str = "mlp",
    batch_sizes: tuple[int, ...] = (128, 1024),
) -> dict | None:
    """experiments/torch_reference.py (its `model`: mlp or conv) on the same training images, in
    its own process (its threads then do not compete with JAX's); None, with a line saying why,
    when it cannot run."""
    if python is None:
        print(
            "\nPyTorch reference: skipped (torch is not importable here; pass --torch-python "
            "PYTHON of an environment that has torch)"
        )
        return None
    _, problem, _, _, _, _ = setup(config, config.train.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        images = pathlib.Path(tmp) / "train_x.npy"
        np.save(images, np.asarray(problem.train_x, np.float32))
        command = [python, str(TORCH_REFERENCE), str(images), "--model", model]
        command += ["--steps", str(steps), "--reps", str(reps), "--batch-sizes"]
        out = subprocess.run(
            command + [str(b) for b in batch_sizes],
            capture_output=True,
            text=True,
            check=False,
        )
    if out.returncode:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"\nPyTorch reference: skipped ({python} failed: {last})")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])

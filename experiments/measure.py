"""What experiments/benchmark.py and experiments/profiling.py share: compile timing, the project's
own problem, state and sweep members for a batch size, and the PyTorch reference. The FLOP counts
(`vae_jax.flops`) and the matmul ceiling (`vae_jax.timing.Ceiling`) live in the library, since
every sweep's timing.json uses them too."""

from __future__ import annotations

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

from vae_jax import experiment, objective, train

CONFIG_PATH = pathlib.Path(__file__).parent / "configs" / "default.py"
SWEEP_MEMBERS = 8
TORCH_REFERENCE = pathlib.Path(__file__).parent / "torch_reference.py"


def default_config() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("default_config", CONFIG_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


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


# ------------------------------------------------------------------ the PyTorch reference


def torch_python(requested: str | None) -> str | None:
    """The interpreter that runs the PyTorch reference: --torch-python, or this one if it has
    torch; None when neither does."""
    if requested:
        return requested
    return sys.executable if importlib.util.find_spec("torch") else None


def bench_torch(python: str | None, config, steps: int, reps: int) -> dict | None:
    """experiments/torch_reference.py on the same training images, in its own process (its
    threads then do not compete with JAX's); None, with a line saying why, when it cannot run."""
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
        out = subprocess.run(
            [python, str(TORCH_REFERENCE), str(images), "--steps", str(steps), "--reps", str(reps)],
            capture_output=True,
            text=True,
            check=False,
        )
    if out.returncode:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"\nPyTorch reference: skipped ({python} failed: {last})")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])

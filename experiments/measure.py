"""What experiments/benchmark.py and experiments/profiling.py share: timers, FLOP counts, the
matmul ceiling, and the project's own problem, state and sweep members for a batch size."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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


def copy_tree(tree: Any) -> Any:
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


# ----------------------------------------------------------------------------- the ceiling


class Ceiling:
    """Dense float32 size×size matmul GFLOP/s (2·n³ FLOPs), kept compiled for re-measuring.

    On a shared machine the load drifts between sections, so every timing also probes the matmul
    between its own reps and divides by the best probe of those same moments.
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

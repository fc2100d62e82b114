"""Stopping sweep members whose deterministic training objective has converged.

With the exact linear-VAE ELBO on the whole training set at every step (`Problem.exact_linear`,
`train.full_batch`) the step's loss IS the objective, with no sampling noise, so convergence can
be read off it. Over one chunk of `train.log_every` steps a member has converged when

  |L_last − L_first| ≤ objective_rtol · max(|L_last|, 1)   and   max_i |ΔKL_i| ≤ kl_atol,

L the objective and KL_i latent i's KL averaged over the training set. The KL test matters: where
λ_i is close to σ² the ELBO is flat while latent i still moves, and it is absolute, since a
collapsing latent's KL decays geometrically, so its relative change stays large however small
it gets. A converged member is made inactive exactly as a non-finite one is (`Hyper.running`): its
parameters stay where they converged, and `loop.fit` ends once no member is active.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Callable, Sequence

import jax
import numpy as np

from vae_jax import console, workdir

RECORD = "converged.json"  # in a group's directory: {member index: step}, survives a resume


def converged_members(
    loss: np.ndarray, kl_per_latent: np.ndarray, *, objective_rtol: float, kl_atol: float
) -> np.ndarray:
    """Which members converged over a chunk: loss [members, steps], kl_per_latent
    [members, steps, k] → bool [members]."""
    # Relative, but in nats for an objective under 1 nat in size (ELBOs can cross 0).
    scale = np.maximum(np.abs(loss[:, -1]), 1.0)
    moved = np.abs(loss[:, -1] - loss[:, 0]) > objective_rtol * scale
    moved |= np.max(np.abs(kl_per_latent[:, -1] - kl_per_latent[:, 0]), axis=-1) > kl_atol
    return ~moved


def read_record(group_path: pathlib.Path) -> dict[int, int]:
    path = group_path / RECORD
    if not path.exists():
        return {}
    return {int(i): step for i, step in json.loads(path.read_text()).items()}


def make_handler(
    handle_nonfinite: Callable,
    names: Sequence[str],
    tolerance,
    converged: dict[int, int],
    group_path: pathlib.Path,
    put: Callable,
) -> Callable:
    """`loop.fit`'s after-chunk callback: `handle_nonfinite`, then stop converged members.

    `tolerance` holds `objective_rtol` and `kl_atol`; `converged` (filled from the group's record
    first) maps each converged member to its step; `put(mask, sharding)` places the new
    `Hyper.running` mask as the sweep places its arrays.
    """
    converged.update(read_record(group_path))

    def handle(step_metrics: dict[str, np.ndarray], first_step: int, hyper):
        hyper = handle_nonfinite(step_metrics, first_step, hyper)
        active = np.array(console.fetch(hyper.running))
        done = converged_members(
            step_metrics["loss"],
            step_metrics["kl_per_latent"],
            objective_rtol=tolerance.objective_rtol,
            kl_atol=tolerance.kl_atol,
        )
        newly = [i for i in range(len(names)) if active[i] and done[i]]
        if not newly:
            return hyper
        for i in newly:
            converged[i] = first_step + step_metrics["loss"].shape[1]
            active[i] = False
            print(f"converged: {names[i]} at step {converged[i]}", file=sys.stderr, flush=True)
        if jax.process_index() == 0:
            record = {str(i): step for i, step in sorted(converged.items())}
            workdir.write_json_atomic(group_path / RECORD, record)
        return hyper.replace(running=put(active, hyper.running.sharding))

    return handle

"""One structure group as one program: its members' stacked initial state, the vmapped (and
sharded, and sliced) train chunk they run, and which of them stop early — a non-finite loss or,
for a deterministic objective, convergence. The sweep driver (`vae_jax.sweep`) puts them
together; the benchmarks time the same pieces.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vae_jax import console, convergence, linear_fit, loop, train
from vae_jax import spec as spec_lib
from vae_jax.errors import NonFiniteError
from vae_jax.members import Member, member_remedy
from vae_jax.objective import Problem, make_hyper
from vae_jax.sharding import in_slices, put, slice_size, stack
from vae_jax.spec import RunSpec


def make_group_chunk(
    problem: Problem,
    num_steps: int,
    mesh: Mesh | None = None,
    *,
    members_per_slice: int | None = None,
):
    """The sweep's program: the single run's train chunk, vmapped over stacked members.

    (state, hyper, rng) carry the member axis; the device-resident train set is shared.
    `loop.fit` jits it with the stacked state donated. With a mesh whose 'batch' axis has
    more than one device, each member's batch is split over it (`spmd_axis_name` puts the
    member axis in front of that constraint). `members_per_slice` (None: all at once) vmaps
    that many members at a time, the slices one after another inside the same program.
    """
    if linear_fit.applies(problem):  # whole-set steps: nothing to split over 'batch'
        return jax.vmap(linear_fit.make_chunk(problem, num_steps), in_axes=(0, None, 0, 0))
    batch_sharding, spmd_axis_name = None, None
    if mesh is not None and mesh.shape["batch"] > 1:
        spec_lib.check_batch_split(problem.batch_size, mesh.shape["batch"])
        batch_sharding = NamedSharding(mesh, PartitionSpec("batch"))
        spmd_axis_name = "members"
    chunk = train.make_train_chunk(problem, num_steps, batch_sharding=batch_sharding)
    vmapped = jax.vmap(chunk, in_axes=(0, None, 0, 0), spmd_axis_name=spmd_axis_name)
    return in_slices(chunk, vmapped, members_per_slice)


def members_per_slice(spec: RunSpec, mesh: Mesh, num_members: int):
    """`sweep.members_per_slice` for a group of `num_members` on `mesh` (None: one vmap of all),
    rounded down to a divisor of the member count; unset, every member in one vmap."""
    return slice_size(spec.sweep.members_per_slice, num_members, mesh)


def init_group(spec: RunSpec, problem, members: list[Member], num_padded: int):
    """Stacked TrainStates, Hyper and per-member rngs, exactly as single runs would make them.
    `spec` is the sweep's (`member_remedy` reads `sweep.remedies`)."""
    tx = train.make_optimizer(spec)
    padded = members + [members[-1]] * (num_padded - len(members))
    keys = [jax.random.split(jax.random.key(m.seed), 3) for m in padded]
    states = [train.create_train_state(problem, tx, k[0]) for k in keys]
    states = [
        s.replace(
            opt_state=_with_learning_rate(s.opt_state, m.learning_rate),
        )
        for s, m in zip(states, padded, strict=True)
    ]
    hypers = [make_hyper(m.sigma, m.beta, member_remedy(spec, m.remedy)) for m in padded]
    hypers = [h.replace(running=jnp.bool_(i < len(members))) for i, h in enumerate(hypers)]
    return (
        stack(states),
        stack(hypers),
        jnp.stack([k[1] for k in keys]),
        jnp.stack([k[2] for k in keys]),
    )


def _with_learning_rate(opt_state, learning_rate: float):
    hyperparams = dict(opt_state.hyperparams)
    hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
    return opt_state._replace(hyperparams=hyperparams)


def make_nonfinite_handler(
    members: list[Member],
    group: str,
    stopped: dict[int, str],
    converged: dict[int, int] | None = None,
):
    """Stop members whose loss went non-finite: mark them inactive and remember why. Raises once
    no member is left active unless some converged (`convergence.make_handler`)."""

    def handle(step_metrics: dict[str, np.ndarray], first_step: int, hyper):
        active = np.array(console.fetch(hyper.running))
        for i, member in enumerate(members):
            if not active[i]:
                continue
            try:
                loop.check_finite(
                    {k: v[i] for k, v in step_metrics.items()},  # [members, steps]
                    first_step,
                    where=f"{group} member σ={member.sigma:g} seed={member.seed} "
                    f"β={member.beta:g} lr={member.learning_rate:g} remedy={member.remedy}: ",
                )
            except NonFiniteError as e:
                stopped[i] = str(e)
                print(f"stopped: {e}", file=sys.stderr, flush=True)
                active[i] = False
        if all(not active[i] for i in range(len(members))) and not converged:
            first = next(iter(stopped.values()), "non-finite loss")
            raise NonFiniteError(f"every member of group {group} stopped; first: {first}")
        return hyper.replace(running=put(active, hyper.running.sharding))

    return handle


class GroupStops:
    """Which members of a group stopped early and why: a non-finite loss (`stopped`, member →
    message) or, for a deterministic objective with `train.convergence` set, convergence
    (`converged`, member → step)."""

    def __init__(self, members: list[Member], group: str):
        self.members, self.group = members, group
        self.stopped: dict[int, str] = {}
        self.converged: dict[int, int] = {}
        self.tracks_convergence = False

    def handler(self, spec: RunSpec, problem: Problem, gpath: pathlib.Path) -> Callable:
        """`loop.fit`'s on_nonfinite: the non-finite handler, then (a convergence test needs an
        objective without sampling noise: a linear fit's) the convergence test."""
        on_chunk = make_nonfinite_handler(self.members, self.group, self.stopped, self.converged)
        tolerance = spec.train.convergence
        self.tracks_convergence = tolerance is not None and linear_fit.applies(problem)
        if not self.tracks_convergence:
            return on_chunk
        names = [f"{self.group} member σ={m.sigma:g} seed={m.seed}" for m in self.members]
        return convergence.make_handler(on_chunk, names, tolerance, self.converged, gpath, put)

    def note_resumed(self, active: np.ndarray) -> None:
        """Members inactive in a resumed checkpoint, neither stopped nor converged in this
        process: they stopped on a non-finite loss before the last resume."""
        for i in range(len(self.members)):
            if not active[i] and i not in self.stopped and i not in self.converged:
                self.stopped[i] = "stopped before the last resume (non-finite loss)"

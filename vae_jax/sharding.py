"""Placing a sweep's stacked members on devices: the mesh, host values as global arrays, and
slices of members run one after another on one device.

Pure placement, no model or config: `vae_jax.sweep` shapes a ('members', 'batch') mesh per
structure group and puts each group's stacked states, hypers and data on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def stack(trees: list[Any]) -> Any:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def member_mesh() -> Mesh:
    """All devices (of every host) in one axis; `group_mesh` shapes it for each group."""
    return Mesh(np.array(jax.devices()), ("members",))


def put(tree: Any, sharding: NamedSharding) -> Any:
    """Place host values (the same on every process) as global arrays with `sharding`.

    One process: `jax.device_put`. A multi-host slice: each process builds its own shards
    (`make_array_from_callback`), since no process can address the others' devices.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put_leaf(leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put_leaf(jax.random.key_data(leaf)))
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put_leaf, tree)


def shard_members(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf's leading (member) axis across the mesh's devices."""
    return put(tree, NamedSharding(mesh, PartitionSpec("members")))


def group_mesh(devices: np.ndarray, num_members: int) -> Mesh:
    """A ('members', 'batch') mesh over `devices` for a group of `num_members`.

    Members take as many devices as they can use (the largest divisor of the device count that is
    ≤ num_members); where members are fewer than devices, the remaining factor splits each
    member's batch of examples. 8 devices: 24 members → (8, 1); 2 members → (2, 4).
    """
    n = devices.size
    m = max(k for k in range(1, n + 1) if n % k == 0 and k <= max(num_members, 1))
    return Mesh(np.asarray(devices).reshape(m, n // m), ("members", "batch"))


def in_slices(chunk: Callable, vmapped: Callable, members_per_slice: int | None) -> Callable:
    """A group's program over stacked members: `vmapped` over all at once (None), or slices of
    `members_per_slice` members run one after another (`jax.lax.map`) inside the same program.

    A slice of 1 runs `chunk` itself, with no member axis: a vmap over one member keeps that
    axis in every op, which cost 1.3x the CPU time of the plain step (measured).
    """
    if members_per_slice is None:
        return vmapped
    per_slice = chunk if members_per_slice == 1 else vmapped

    def sliced(state, train_x, hyper, rng):
        def split(tree):
            if members_per_slice == 1:
                return tree
            return jax.tree.map(lambda a: a.reshape(-1, members_per_slice, *a.shape[1:]), tree)

        out = jax.lax.map(
            lambda s: per_slice(s[0], train_x, s[1], s[2]), split((state, hyper, rng))
        )
        if members_per_slice == 1:
            return out
        return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), out)

    return sliced


def slice_size(requested: int | None, num_members: int, mesh: Mesh) -> int | None:
    """Members per slice: `requested` rounded down to a divisor of `num_members`; None (one vmap
    of all) when unset, when it covers the group, or when the member axis spans devices."""
    if requested is None or mesh.shape["members"] > 1 or requested >= num_members:
        return None
    return max(k for k in range(1, requested + 1) if num_members % k == 0)

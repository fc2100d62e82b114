"""The hot paths' random numbers: `jax.random`'s own threefry streams, bit for bit, faster.

  uniform(key, shape) -> U[0, 1) float32   == jax.random.uniform(key, shape)
  normal(key, shape)  -> N(0, 1) float32   == jax.random.normal(key, shape)

For a threefry key and float32 these compute the very numbers `jax.random` does (threefry2x32 of
the element's index, as `jax_threefry_partitionable` defines it, the default since jax 0.5), so
no trained or reported number moves. They only write the hash's 20 rounds out as elementwise
jnp: on CPU, jax lowers threefry as a rolled five-iteration loop, and under `jax.vmap` (a
sweep's members, a batch's examples) it broadcasts the key to the draw's full shape and carries
it through that loop (both timed: docs/speed.md, "Random numbers"). Any other key
implementation (`JAX_DEFAULT_PRNG_IMPL=rbg`), a raw uint32 key, or another dtype goes to
`jax.random` itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)
# jax.random.normal's uniform draw is on [nextafter(−1, 0), 1); sqrt(2)·erfinv maps it to N(0, 1).
_NORMAL_LO = np.nextafter(np.float32(-1.0), np.float32(0.0), dtype=np.float32)
_NORMAL_WIDTH = np.float32(1.0) - _NORMAL_LO
_SQRT2 = np.float32(np.sqrt(2.0))


def _threefry2x32(k0: jax.Array, k1: jax.Array, x0: jax.Array, x1: jax.Array):
    """The Threefry-2x32 block function (20 rounds) with key (k0, k1) on counters (x0, x1)."""
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = (x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))
            x1 = x0 ^ x1
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def _fast(key: jax.Array, dtype) -> bool:
    return (
        jnp.dtype(dtype) == jnp.float32
        and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        and str(jax.random.key_impl(key)) == "threefry2x32"
    )


def _unit_floats(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 in [0, 1) from 23 random mantissa bits, as `jax.random.uniform` makes them."""
    words = jax.random.key_data(key)
    size = int(np.prod(shape))
    if size >= 2**32:
        raise ValueError(f"vae_jax.threefry: {size} numbers in one draw; at most 2**32 - 1")
    counter = jax.lax.iota(jnp.uint32, size).reshape(shape)
    high, low = _threefry2x32(words[0], words[1], jnp.zeros_like(counter), counter)
    bits = high ^ low
    mantissa = (bits >> np.uint32(9)) | np.uint32(0x3F800000)  # 1.m in [1, 2)
    return jax.lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1.0)


def uniform(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """`jax.random.uniform(key, shape, dtype)` on [0, 1), the same numbers."""
    shape = tuple(shape)
    if not _fast(key, dtype):
        return jax.random.uniform(key, shape, dtype)
    return jnp.maximum(np.float32(0.0), _unit_floats(key, shape))


def normal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """`jax.random.normal(key, shape, dtype)`, the same numbers."""
    shape = tuple(shape)
    if not _fast(key, dtype):
        return jax.random.normal(key, shape, dtype)
    u = jnp.maximum(_NORMAL_LO, _unit_floats(key, shape) * _NORMAL_WIDTH + _NORMAL_LO)
    return _SQRT2 * jax.lax.erf_inv(u)

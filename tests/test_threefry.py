"""vae_jax.threefry draws jax.random's very numbers (threefry keys, float32), in single draws, under
vmap and jit, and hands every other key or dtype to jax.random."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import threefry

SHAPES = [(), (7,), (3, 5), (128, 784), (2, 3, 4, 5)]


@pytest.mark.parametrize("name", ["uniform", "normal"])
def test_same_numbers_as_jax_random(name):
    ours, theirs = getattr(threefry, name), getattr(jax.random, name)
    key = jax.random.fold_in(jax.random.key(12345), 7)

    def draws(fn):
        return jax.jit(lambda k: [fn(k, shape) for shape in SHAPES])(key)

    for mine, expected in zip(draws(ours), draws(theirs), strict=True):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(expected))
    # Outside jit too.
    np.testing.assert_array_equal(np.asarray(ours(key, (3, 5))), np.asarray(theirs(key, (3, 5))))


@pytest.mark.parametrize("name", ["uniform", "normal"])
def test_same_numbers_under_nested_vmap(name):
    """A sweep's members × a batch's examples: the keys are batched, the numbers unchanged."""
    ours, theirs = getattr(threefry, name), getattr(jax.random, name)
    keys = jax.random.split(jax.random.key(3), (4, 6))

    def draw(fn):
        return jax.jit(jax.vmap(jax.vmap(lambda k: fn(k, (5, 32)))))(keys)

    np.testing.assert_array_equal(np.asarray(draw(ours)), np.asarray(draw(theirs)))


def test_statistics_are_those_of_the_distributions():
    u = np.asarray(threefry.uniform(jax.random.key(0), (200_000,)))
    z = np.asarray(threefry.normal(jax.random.key(1), (200_000,)))
    assert u.min() >= 0.0 and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.005
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1.0) < 0.01


@pytest.mark.parametrize(
    "key, dtype",
    [
        (jax.random.key(0, impl="rbg"), jnp.float32),
        (jax.random.PRNGKey(0), jnp.float32),  # a raw uint32 key
        (jax.random.key(0), jnp.float16),
    ],
)
def test_other_keys_and_dtypes_are_jax_random_itself(key, dtype):
    for ours, theirs in (
        (threefry.uniform, jax.random.uniform),
        (threefry.normal, jax.random.normal),
    ):
        out = ours(key, (3, 4), dtype)
        assert out.dtype == dtype
        np.testing.assert_array_equal(np.asarray(out), np.asarray(theirs(key, (3, 4), dtype)))

"""Tests for vae_jax.conv: lax's convolutions against PyTorch's definitions written out in numpy,
then the patches-and-one-matmul forms against lax's, outputs and gradients, for random inputs and
kernels, one example, a vmapped batch, and a batch of members each with its own kernel."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import conv


def random(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def torch_conv2d(x, w):
    """PyTorch's Conv2d(k=4, s=2, p=1, no bias) by its definition: x [H, W, I], w [4, 4, I, O]."""
    height, width, _ = x.shape
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((height // 2, width // 2, w.shape[-1]))
    for m in range(height // 2):
        for n in range(width // 2):
            out[m, n] = np.einsum("kli,klio->o", padded[2 * m : 2 * m + 4, 2 * n : 2 * n + 4], w)
    return out


def torch_conv_transpose2d(x, w):
    """PyTorch's ConvTranspose2d(k=4, s=2, p=1): input pixel (i, j) adds x[i, j]·w[k, l] to output
    pixel (2i − 1 + k, 2j − 1 + l), kept where it lies inside [2H, 2W]."""
    height, width, _ = x.shape
    out = np.zeros((2 * height + 2, 2 * width + 2, w.shape[-1]))  # one spare row/column per side
    for i in range(height):
        for j in range(width):
            out[2 * i : 2 * i + 4, 2 * j : 2 * j + 4] += np.einsum("i,klio->klo", x[i, j], w)
    return out[1:-1, 1:-1]


SHAPES = [((8, 6, 1), 3), ((6, 8, 3), 5), ((14, 14, 16), 2)]


@pytest.mark.parametrize("x_shape, features", SHAPES)
def test_lax_references_are_pytorchs_layers(x_shape, features):
    x = random(x_shape, 0)
    kernel = random((4, 4, x_shape[-1], features), 1)
    expected = torch_conv2d(np.float64(x), np.float64(kernel))
    np.testing.assert_allclose(conv.conv_reference(x, kernel), expected, rtol=1e-4, atol=1e-4)
    # lax's transposed convolution (flax's ConvTranspose) is PyTorch's with the kernel flipped.
    expected = torch_conv_transpose2d(np.float64(x), np.float64(kernel)[::-1, ::-1])
    out = conv.conv_transpose_reference(x, kernel)
    chex.assert_shape(out, (2 * x_shape[0], 2 * x_shape[1], features))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


PAIRS = [
    (conv.conv_stride2, conv.conv_reference, 0.5),
    (conv.conv_transpose_stride2, conv.conv_transpose_reference, 2),
]


def outputs_and_gradients(layer, x, kernel, cotangent):
    """(layer(x, kernel), d⟨layer(x, kernel), cotangent⟩ / d(x, kernel)), jitted."""

    def pairing(x, kernel):
        out = layer(x, kernel)
        return jnp.sum(out * cotangent), out

    (_, out), grads = jax.jit(jax.value_and_grad(pairing, argnums=(0, 1), has_aux=True))(x, kernel)
    return out, grads


@pytest.mark.parametrize("fast, reference, scale", PAIRS)
@pytest.mark.parametrize("x_shape, features", SHAPES)
def test_fast_forms_equal_lax_outputs_and_gradients(fast, reference, scale, x_shape, features):
    x = random(x_shape, 2)
    kernel = random((4, 4, x_shape[-1], features), 3)
    out_shape = (int(x_shape[0] * scale), int(x_shape[1] * scale), features)
    cotangent = random(out_shape, 4)
    fast_out, fast_grads = outputs_and_gradients(fast, x, kernel, cotangent)
    ref_out, ref_grads = outputs_and_gradients(reference, x, kernel, cotangent)
    chex.assert_shape(fast_out, out_shape)
    chex.assert_trees_all_close(fast_out, ref_out, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(fast_grads, ref_grads, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fast, reference, scale", PAIRS)
def test_fast_forms_equal_lax_over_a_batch_and_over_members(fast, reference, scale):
    # vmap over a batch (one kernel), then over members (each its own kernel and batch), as a
    # sweep's group runs them.
    members, batch, x_shape, features = 3, 4, (8, 8, 2), 5
    x = random((members, batch, *x_shape), 5)
    kernels = random((members, 4, 4, x_shape[-1], features), 6)
    cotangent = random((members, batch, int(8 * scale), int(8 * scale), features), 7)

    def batched(layer):
        over_batch = jax.vmap(layer, in_axes=(0, None))
        return jax.vmap(lambda x, k, c: outputs_and_gradients(over_batch, x, k, c))(
            x, kernels, cotangent
        )

    chex.assert_trees_all_close(batched(fast), batched(reference), rtol=1e-5, atol=1e-5)


def test_space_to_depth_orders_block_pixels_row_column_channel():
    x = jnp.arange(4 * 6 * 2).reshape(4, 6, 2)
    blocks = conv.space_to_depth(x)
    chex.assert_shape(blocks, (2, 3, 8))
    # Block (1, 2) holds pixels (2, 4), (2, 5), (3, 4), (3, 5), each with its 2 channels.
    expected = np.concatenate([x[2, 4], x[2, 5], x[3, 4], x[3, 5]])
    np.testing.assert_array_equal(blocks[1, 2], expected)


def test_subpixel_kernel_has_each_tap_once_and_zeros_elsewhere():
    kernel = random((4, 4, 2, 3), 8)
    taps = conv.subpixel_kernel(kernel)
    chex.assert_shape(taps, (9 * 2, 4 * 3))
    # 16 taps of the 4×4 kernel, each read by exactly one phase: 9·4 − 16 = 20 (offset, phase)
    # blocks of zeros; no tap lost or repeated.
    blocks = np.asarray(taps).reshape(3, 3, 2, 2, 2, 3).transpose(0, 1, 3, 4, 2, 5)
    nonzero = [blocks[idx] for idx in np.ndindex(3, 3, 2, 2) if np.any(blocks[idx])]
    assert len(nonzero) == 16
    flat = np.asarray(kernel).reshape(16, 2, 3)
    for block in nonzero:
        assert sum(np.array_equal(block, tap) for tap in flat) == 1


@pytest.mark.parametrize("layer", [conv.conv_stride2, conv.conv_transpose_stride2])
def test_mismatched_kernel_is_refused(layer):
    with pytest.raises(ValueError, match=r"kernel \[4, 4, C_in, C_out\]"):
        layer(jnp.zeros((8, 8, 3)), jnp.zeros((4, 4, 2, 5)))
    with pytest.raises(ValueError, match=r"kernel \[4, 4, C_in, C_out\]"):
        layer(jnp.zeros((8, 8, 3)), jnp.zeros((3, 3, 3, 5)))


def test_odd_sides_are_refused_by_the_strided_convolution():
    with pytest.raises(ValueError, match="needs even sides; got"):
        conv.conv_stride2(jnp.zeros((7, 8, 1)), jnp.zeros((4, 4, 1, 2)))

"""The conv VAE's layers, 4×4 stride-2 convolutions and transposed convolutions, each written as
patches and ONE matrix multiplication: the same function of the same parameters as the plain
convolution, in the form XLA's CPU backend runs fastest.

One example in (``x: [H, W, C_in]``), vmap does the batch; a kernel is ``[4, 4, C_in, C_out]``
(HWIO, as `flax.linen.Conv` and `flax.linen.ConvTranspose` store it). Under vmap over a batch
the dot becomes one ``[B·pixels, K] × [K, C_out]`` matmul; under vmap over a sweep's members as
well (each with its own kernel) it is one batched contraction, where a plain convolution with a
batched kernel becomes a grouped convolution, the slowest case of XLA's CPU convolutions.

- `conv_stride2` = `conv_reference`: PyTorch's Conv2d(k=4, s=2, p=1); [H, W] → [H/2, W/2].
  Pad by 1, space-to-depth (2×2 blocks → channels), and the stride-2 4×4 convolution is a
  stride-1 2×2 one on the ``[H/2 + 1, W/2 + 1, 4·C_in]`` blocks: 4 shifted slices concatenated,
  ``K = 16·C_in``.
- `conv_transpose_stride2` = `conv_transpose_reference`: ConvTranspose(k=4, s=2, p=1) as
  PyTorch's ConvTranspose2d sizes it; [H, W] → [2H, 2W]. Sub-pixel form: output pixel (2m + a,
  2n + b) reads input rows m − 1 + a, m + a and columns n − 1 + b, n + b only, so every output
  phase (a, b) is a 2×2 convolution of the input padded by 1, and the four phases together are ONE
  3×3 stride-1 convolution with ``4·C_out`` channels (zeros where a phase skips a tap), followed
  by depth-to-space. Its matmul does 9/4 of the useful multiply-adds, in one large dot instead of
  four narrow ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

KERNEL = 4
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
# Transposed kernel, phase a of an output side, offset d in the 3-tap window of the padded
# input: kernel tap 2d − a where the phase reads that offset (d − a ∈ {0, 1}), else tap 4 (zero).
_TAP = np.array([[0, 4], [2, 1], [4, 3]])


def _check(x: jax.Array, kernel: jax.Array) -> None:
    if x.ndim != 3 or kernel.shape != (KERNEL, KERNEL, x.shape[-1], kernel.shape[-1]):
        raise ValueError(
            f"need x [H, W, C_in] and kernel [4, 4, C_in, C_out]; got {x.shape}, {kernel.shape}"
        )


def conv_reference(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Conv2d(4×4, stride 2, padding 1), lax's convolution: x [H, W, C_in] → [H/2, W/2, C_out].

    out[m, n] = Σ_{k, l} x_pad[2m + k, 2n + l] · kernel[k, l] (x_pad: x with one zero row/column
    on every side), as `flax.linen.Conv(features, (4, 4), (2, 2), padding=((1, 1), (1, 1)))`."""
    _check(x, kernel)
    return lax.conv_general_dilated(
        x[None], kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=_DIMENSIONS
    )[0]


def conv_transpose_reference(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """ConvTranspose(4×4, stride 2, padding 1), lax's: x [H, W, C_in] → [2H, 2W, C_out].

    out[o, p] = Σ x[i, j] · kernel[2i − o + 2, 2j − p + 2] over the taps inside the kernel, as
    `flax.linen.ConvTranspose(features, (4, 4), (2, 2), padding=((2, 2), (2, 2)))`; PyTorch's
    ConvTranspose2d(4, 2, 1) is the same map with its kernel flipped in both spatial axes."""
    _check(x, kernel)
    return lax.conv_transpose(
        x[None], kernel, (2, 2), ((2, 2), (2, 2)), dimension_numbers=_DIMENSIONS
    )[0]


def _even_sides(x: jax.Array) -> None:
    if x.shape[0] % 2 or x.shape[1] % 2:
        raise ValueError(f"a stride-2 convolution needs even sides; got {x.shape[:2]}")


def space_to_depth(x: jax.Array) -> jax.Array:
    """[2H, 2W, C] → [H, W, 4C]: each 2×2 block's pixels as channels, ordered (row, column, c)."""
    _even_sides(x)
    height, width, channels = x.shape
    blocks = x.reshape(height // 2, 2, width // 2, 2, channels).transpose(0, 2, 1, 3, 4)
    return blocks.reshape(height // 2, width // 2, 4 * channels)


def conv_stride2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`conv_reference` as patches and one dot: x [H, W, C_in] → [H/2, W/2, C_out].

    Kernel tap (2i + a, 2j + b) reads block (m + i, n + j)'s pixel (a, b) of the padded input, so
    patches [H/2, W/2, (i, j, a, b, c)] times the kernel reordered to the same axes."""
    _check(x, kernel)
    _even_sides(x)
    height, width, channels = x.shape
    blocks = space_to_depth(jnp.pad(x, ((1, 1), (1, 1), (0, 0))))
    rows, cols = height // 2, width // 2
    patches = jnp.concatenate(
        [blocks[i : i + rows, j : j + cols] for i in (0, 1) for j in (0, 1)], axis=-1
    )
    weights = kernel.reshape(2, 2, 2, 2, channels, -1).transpose(0, 2, 1, 3, 4, 5)
    return jnp.dot(patches, weights.reshape(16 * channels, -1))


def subpixel_kernel(kernel: jax.Array) -> jax.Array:
    """[4, 4, C_in, C_out] → [9·C_in, 4·C_out]: the transposed convolution's kernel as one 3×3
    convolution's, rows (row offset, column offset, c_in), columns (row phase, column phase,
    c_out); taps a phase does not read are zero."""
    c_in, c_out = kernel.shape[2:]
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
    taps = padded[_TAP[:, :, None, None], _TAP[None, None, :, :]]  # [3, 2, 3, 2, C_in, C_out]
    return taps.transpose(0, 2, 4, 1, 3, 5).reshape(9 * c_in, 4 * c_out)


def adjoint_kernel(kernel: jax.Array) -> jax.Array:
    """[4, 4, C_in, C_out] → [4, 4, C_out, C_in], flipped in both spatial axes: the transposed
    convolution with `kernel` is the adjoint (the input-gradient map) of `conv_stride2` with this
    kernel, and the reverse; its own inverse."""
    return kernel[::-1, ::-1].swapaxes(2, 3)


@jax.custom_vjp
def conv_transpose_stride2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`conv_transpose_reference` in sub-pixel form: x [H, W, C_in] → [2H, 2W, C_out].

    3×3 patches of x padded by 1 [H, W, 9·C_in] times `subpixel_kernel` give the four output
    phases [H, W, 2, 2, C_out]; depth-to-space interleaves them. Its gradients, for a cotangent g
    [2H, 2W, C_out], come from `conv_stride2` of g (the adjoint map): dx = conv_stride2(g,
    adjoint_kernel(kernel)), and d kernel from that convolution's kernel gradient with x as its
    cotangent. Both then use g's 4×4 patches [H, W, 16·C_out] and do the useful multiply-adds
    only, instead of the 9·C_in-wide patches' gradient (a narrow output layer's is 9·C_in / (16·
    C_out) times larger)."""
    _check(x, kernel)
    height, width, channels = x.shape
    padded = jnp.pad(x, ((1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate(
        [padded[d : d + height, e : e + width] for d in range(3) for e in range(3)], axis=-1
    )
    phases = jnp.dot(patches, subpixel_kernel(kernel)).reshape(height, width, 2, 2, -1)
    return phases.transpose(0, 2, 1, 3, 4).reshape(2 * height, 2 * width, -1)


def _conv_transpose_forward(x: jax.Array, kernel: jax.Array):
    return conv_transpose_stride2(x, kernel), (x, kernel)


def _conv_transpose_backward(residuals, cotangent: jax.Array):
    x, kernel = residuals
    dx, kernel_vjp = jax.vjp(lambda k: conv_stride2(cotangent, k), adjoint_kernel(kernel))
    (d_adjoint,) = kernel_vjp(x)
    return dx, adjoint_kernel(d_adjoint)


conv_transpose_stride2.defvjp(_conv_transpose_forward, _conv_transpose_backward)

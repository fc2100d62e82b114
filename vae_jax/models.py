"""Flax encoders and decoders: `linear`, `mlp` and `conv`.

`conv` is the common small conv VAE, one 4×4 stride-2 layer per entry of ``hidden_sizes``; with
``hidden_sizes=(16, 32)``, 28×28×C images and k latents: encoder Conv(16, 4×4, s2, p1) → ReLU →
Conv(32, 4×4, s2, p1) → ReLU → flatten (7·7·32) → Dense(2k) (the mean and log-variance heads);
decoder Dense(7·7·32) → ReLU → ConvTranspose(16, 4×4, s2, p1) → ReLU → ConvTranspose(the
likelihood's parameter channels, 4×4, s2, p1), padding as PyTorch's p=1 (each layer halves or
doubles the sides). The layers are `vae_jax.conv`'s patches-and-one-matmul forms, the same
function of the same parameters as `flax.linen.Conv` / `ConvTranspose`.

Every module works on ONE example (``x: [H, W, C]``, ``z: [latent_dim]``); batches come from
``jax.vmap`` in the ELBO, exactly as for the likelihoods. The decoder's output has a leading axis of
``likelihood.num_outputs`` maps (mean/logits/loc, and a log scale for decoder-predicted σ), so
``out: [num_outputs, H, W, C]`` is what `vae_jax.likelihoods` reads.

Scales are bounded below so they cannot reach 0 and above so they cannot overflow:
``σ = floor + softplus(raw)``, clipped at ``MAX_SIGMA``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import conv, likelihoods

MODEL_KINDS = ("linear", "mlp", "conv")
MAX_SIGMA = 1e4


def bounded_log_sigma(raw: jax.Array, floor: float) -> jax.Array:
    """log σ with σ = min(floor + softplus(raw), MAX_SIGMA): never 0, never inf, smooth in raw."""
    return jnp.log(jnp.minimum(floor + jax.nn.softplus(raw), MAX_SIGMA))


def raw_for_sigma(sigma: float, floor: float) -> float:
    """Inverse of `bounded_log_sigma` (for initialising a learned σ at a given value)."""
    s = max(sigma - floor, 1e-6)
    return s + math.log(-math.expm1(-s))


def check_conv_sides(event_shape: Sequence[int], num_layers: int) -> None:
    """A conv VAE halves the sides once per layer: they must divide by 2**num_layers."""
    factor = 2**num_layers
    height, width = event_shape[:2]
    if height % factor or width % factor:
        raise ValueError(
            f"model.kind='conv' needs image sides divisible by {factor} "
            f"(2**len(model.hidden_sizes)); got {height}x{width}"
        )


class StridedConv(nn.Module):
    """4×4 stride-2 convolution (or, with ``transpose``, transposed convolution), padding 1, of one
    example: [H, W, C_in] → [H/2, W/2, features] (transposed: [2H, 2W, features]). Parameters as
    `flax.linen.Conv` / `ConvTranspose` name, shape and initialise them (kernel [4, 4, C_in,
    features], LeCun normal; bias zeros); computed by `vae_jax.conv`."""

    features: int
    transpose: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (conv.KERNEL, conv.KERNEL, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        layer = conv.conv_transpose_stride2 if self.transpose else conv.conv_stride2
        return layer(x, kernel) + bias


class Encoder(nn.Module):
    """x [H, W, C] -> (mean [k], log_var [k]) of the diagonal Gaussian posterior q(z|x)."""

    kind: str
    latent_dim: int
    hidden_sizes: Sequence[int] = ()

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.kind == "linear":
            # Lucas et al. (2019): linear mean, diagonal variance that does not depend on x.
            mean = nn.Dense(self.latent_dim, name="mean")(x.reshape(-1))
            log_var = self.param("log_var", nn.initializers.zeros, (self.latent_dim,))
            return mean, log_var
        h = x
        if self.kind == "conv":
            check_conv_sides(x.shape, len(self.hidden_sizes))
            for i, features in enumerate(self.hidden_sizes):
                h = nn.relu(StridedConv(features, name=f"conv{i}")(h))
            h = h.reshape(-1)
        else:
            h = h.reshape(-1)
            for i, features in enumerate(self.hidden_sizes):
                h = nn.gelu(nn.Dense(features, name=f"dense{i}")(h))
        mean = nn.Dense(self.latent_dim, name="mean")(h)
        log_var = nn.Dense(self.latent_dim, name="log_var")(h)
        return mean, log_var


class Decoder(nn.Module):
    """z [k] -> out [num_outputs, *event_shape]; out[1] (if present) is a bounded log scale."""

    kind: str
    event_shape: tuple[int, ...]
    num_outputs: int
    hidden_sizes: Sequence[int] = ()
    sigma_floor: float = 1e-3

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        size = math.prod(self.event_shape)
        if self.kind == "conv":
            height, width, channels = self.event_shape
            sizes = list(reversed(self.hidden_sizes))
            check_conv_sides(self.event_shape, len(sizes))
            factor = 2 ** len(sizes)
            base = (height // factor, width // factor, sizes[0])
            h = nn.relu(nn.Dense(math.prod(base), name="project")(z)).reshape(base)
            for i, features in enumerate(sizes[1:]):
                h = nn.relu(StridedConv(features, transpose=True, name=f"deconv{i}")(h))
            h = StridedConv(channels * self.num_outputs, transpose=True, name="out")(h)
            out = jnp.moveaxis(h.reshape(height, width, self.num_outputs, channels), 2, 0)
        else:
            h = z
            if self.kind == "mlp":
                for i, features in enumerate(reversed(self.hidden_sizes)):
                    h = nn.gelu(nn.Dense(features, name=f"dense{i}")(h))
            out = nn.Dense(size * self.num_outputs, name="out")(h).reshape(self.num_outputs, -1)
            if self.num_outputs == 2:  # bounded on the flat outputs: XLA vectorises their axis
                out = out.at[1].set(bounded_log_sigma(out[1], self.sigma_floor))
            return out.reshape(self.num_outputs, *self.event_shape)
        if self.num_outputs == 2:
            out = out.at[1].set(bounded_log_sigma(out[1], self.sigma_floor))
        return out


class VAE(nn.Module):
    """Encoder, decoder and (for learned-σ likelihoods) the observation σ as a parameter."""

    kind: str
    latent_dim: int
    event_shape: tuple[int, ...]
    likelihood: str
    hidden_sizes: Sequence[int] = ()
    sigma_floor: float = 1e-3
    sigma_init: float = 1.0

    def setup(self):
        spec = likelihoods.get_likelihood(self.likelihood)
        self.encoder = Encoder(self.kind, self.latent_dim, tuple(self.hidden_sizes))
        self.decoder = Decoder(
            self.kind,
            tuple(self.event_shape),
            spec.num_outputs,
            tuple(self.hidden_sizes),
            self.sigma_floor,
        )
        if spec.learns_scale:
            shape = () if spec.shared_learned_scale else tuple(self.event_shape)
            raw = raw_for_sigma(self.sigma_init, self.sigma_floor)
            self.sigma_raw = self.param("sigma_raw", nn.initializers.constant(raw), shape)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        mean, log_var = self.encode(x)
        return mean, log_var, self.decode(mean)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        return self.decoder(z)

    def learned_log_sigma(self) -> jax.Array:
        """Bounded log σ of a learned-σ likelihood (scalar or per pixel)."""
        return bounded_log_sigma(self.sigma_raw, self.sigma_floor)


def linear_vae_matrices(params: Any) -> dict[str, jax.Array]:
    """A `kind='linear'` VAE's matrices in `vae_jax.linear`'s conventions (enc_W [k, D], enc_b [k],
    enc_log_var [k], dec_W [D, k], dec_b [D]), read from its Flax parameters.

    The decoder's mean map only: a Gaussian decoder with a fixed or shared σ has one output map.
    """
    p = params["params"]
    return {
        "enc_W": p["encoder"]["mean"]["kernel"].T,
        "enc_b": p["encoder"]["mean"]["bias"],
        "enc_log_var": p["encoder"]["log_var"],
        "dec_W": p["decoder"]["out"]["kernel"].T,
        "dec_b": p["decoder"]["out"]["bias"],
    }


def with_linear_vae_matrices(params: Any, mats: dict[str, jax.Array]) -> Any:
    """Inverse of `linear_vae_matrices`: a copy of `params` holding the matrices `mats` instead."""
    p = dict(params["params"])
    p["encoder"] = {
        "mean": {"kernel": mats["enc_W"].T, "bias": mats["enc_b"]},
        "log_var": mats["enc_log_var"],
    }
    p["decoder"] = {"out": {"kernel": mats["dec_W"].T, "bias": mats["dec_b"]}}
    return {**params, "params": p}


def with_learned_sigma(params: Any, sigma: jax.Array, floor: float) -> Any:
    """A copy of `params` whose shared learned σ is `sigma` (clipped to the bounds of
    `bounded_log_sigma`; traceable, unlike `raw_for_sigma`)."""
    excess = jnp.clip(sigma - floor, 1e-6, MAX_SIGMA)
    raw = excess + jnp.log(-jnp.expm1(-excess))  # softplus⁻¹
    return {**params, "params": {**params["params"], "sigma_raw": raw}}

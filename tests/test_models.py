"""Tests for vae_jax.models: shapes of every kind, the bounds on learned and decoded σ, and σ
driven to its floor by gradient steps.

Random initialisers compile once per distinct shape (about a second each on a 2-core CPU), so the
shape checks run abstractly (`jax.eval_shape`) and the value checks share the tiny run's sizes.
"""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax import likelihoods, models

FLOOR = 1e-3
# log σ may not go below log(floor): the float32 log of float32(floor), less a rounding ulp.
LOG_FLOOR_F32 = float(np.log(np.float32(FLOOR))) - 1e-6
LATENT_DIM = 4
HIDDEN = (32,)
EVENT = (8, 8, 1)


def make_vae(kind, event_shape, likelihood, **kwargs):
    return models.VAE(
        kind=kind,
        latent_dim=LATENT_DIM,
        event_shape=event_shape,
        likelihood=likelihood,
        hidden_sizes=HIDDEN,
        sigma_floor=FLOOR,
        **kwargs,
    )


def numpy_params(module, *example_args, seed=0, scale=0.3):
    """Parameters of `module` drawn with numpy (no initialiser to compile), N(0, scale²)."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), *example_args)
    rs = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(scale * rs.normal(size=s.shape), s.dtype), shapes)


@pytest.mark.parametrize("kind", ["linear", "mlp", "conv"])
@pytest.mark.parametrize("event_shape", [(28, 28, 1), (32, 32, 3)])
@pytest.mark.parametrize("likelihood, num_outputs", [("gaussian", 1), ("gaussian_decoder", 2)])
def test_encode_decode_shapes(kind, event_shape, likelihood, num_outputs):
    vae = make_vae(kind, event_shape, likelihood)
    x = jnp.zeros(event_shape)
    params = jax.eval_shape(vae.init, jax.random.key(0), x)

    mean, log_var = jax.eval_shape(lambda p, x: vae.apply(p, x, method=vae.encode), params, x)
    chex.assert_shape([mean, log_var], (LATENT_DIM,))
    out = jax.eval_shape(lambda p, z: vae.apply(p, z, method=vae.decode), params, mean)
    chex.assert_shape(out, (num_outputs, *event_shape))

    # A batch goes through vmap, one example at a time.
    batch = jnp.zeros((2, *event_shape))
    means, log_vars, outs = jax.eval_shape(
        lambda p, b: jax.vmap(lambda x: vae.apply(p, x))(b), params, batch
    )
    chex.assert_shape([means, log_vars], (2, LATENT_DIM))
    chex.assert_shape(outs, (2, num_outputs, *event_shape))


@pytest.mark.parametrize("kind", ["linear", "mlp", "conv"])
def test_decoder_log_scale_is_bounded_for_extreme_latents(kind):
    decoder = models.Decoder(kind, EVENT, 2, hidden_sizes=HIDDEN, sigma_floor=FLOOR)
    params = numpy_params(decoder, jnp.zeros(LATENT_DIM))
    decode = jax.jit(decoder.apply)
    for z in (jnp.zeros(LATENT_DIM), jnp.full(LATENT_DIM, 1e4), jnp.full(LATENT_DIM, -1e4)):
        out = decode(params, z)
        chex.assert_shape(out, (2, *EVENT))
        chex.assert_tree_all_finite(out[1])
        assert float(jnp.min(out[1])) >= LOG_FLOOR_F32
        assert float(jnp.max(out[1])) <= math.log(models.MAX_SIGMA) + 1e-5
    # The extreme latents do reach both bounds, so the check above is not vacuous.
    both = jnp.stack([decode(params, jnp.full(LATENT_DIM, v))[1] for v in (1e4, -1e4)])
    np.testing.assert_allclose(jnp.min(both), np.log(FLOOR), rtol=1e-5)


@pytest.mark.parametrize(
    "likelihood, sigma_shape",
    [("gaussian_learned", ()), ("gaussian_per_pixel", EVENT), ("laplace", ())],
)
def test_learned_sigma_shape_init_and_bounds(likelihood, sigma_shape):
    vae = make_vae("mlp", EVENT, likelihood, sigma_init=0.3)
    params = vae.init(jax.random.key(0), jnp.zeros(EVENT))
    log_sigma = jax.jit(lambda p: vae.apply(p, method=vae.learned_log_sigma))

    chex.assert_shape(params["params"]["sigma_raw"], sigma_shape)
    chex.assert_shape(log_sigma(params), sigma_shape)
    np.testing.assert_allclose(log_sigma(params), np.log(0.3), rtol=1e-5)

    def with_raw(value):
        raw = jnp.full(sigma_shape, value, jnp.float32)
        return {"params": {**params["params"], "sigma_raw": raw}}

    low, high = log_sigma(with_raw(-1e30)), log_sigma(with_raw(1e30))
    chex.assert_tree_all_finite((low, high))
    assert float(jnp.min(low)) >= LOG_FLOOR_F32
    np.testing.assert_allclose(low, np.log(FLOOR), rtol=1e-6)
    np.testing.assert_allclose(high, np.log(models.MAX_SIGMA), rtol=1e-6)
    # Near the floor the gradient still flows, so σ can move away from it.
    grad = jax.grad(lambda p: jnp.sum(vae.apply(p, method=vae.learned_log_sigma)))(with_raw(-10.0))
    assert float(jnp.min(grad["params"]["sigma_raw"])) > 0


@pytest.mark.parametrize("likelihood", ["gaussian", "gaussian_decoder", "bernoulli"])
def test_no_sigma_parameter_without_a_learned_sigma(likelihood):
    vae = make_vae("mlp", EVENT, likelihood)
    params = jax.eval_shape(vae.init, jax.random.key(0), jnp.zeros(EVENT))
    assert "sigma_raw" not in params["params"]


@pytest.mark.parametrize("floor", [1e-3, 1e-2, 0.05])
@pytest.mark.parametrize("sigma", [0.06, 0.1, 1.0, 10.0, 100.0])
def test_raw_for_sigma_inverts_bounded_log_sigma(sigma, floor):
    raw = models.raw_for_sigma(sigma, floor)
    # softplus⁻¹(s) = log(eˢ − 1), in float64 numpy.
    np.testing.assert_allclose(raw, np.log(np.expm1(sigma - floor)), rtol=1e-12, atol=1e-12)
    log_sigma = models.bounded_log_sigma(jnp.float32(raw), floor)
    np.testing.assert_allclose(log_sigma, np.log(sigma), rtol=1e-5, atol=1e-6)


def test_bounded_log_sigma_matches_numpy_formula():
    # Up to ±inf: an optimiser can push the raw parameter anywhere; σ stays in [floor, MAX_SIGMA].
    raw = np.concatenate([np.linspace(-30.0, 30.0, 61), [-1e30, -1e4, 1e4, 1e30, -np.inf, np.inf]])
    expected = np.log(np.minimum(FLOOR + np.logaddexp(0.0, raw), models.MAX_SIGMA))
    log_sigma = jax.jit(models.bounded_log_sigma, static_argnums=1)(
        jnp.asarray(raw, jnp.float32), FLOOR
    )
    chex.assert_tree_all_finite(log_sigma)
    np.testing.assert_allclose(log_sigma, expected, rtol=1e-5, atol=1e-6)


def test_conv_rejects_sides_not_divisible_by_the_stride_product():
    vae = models.VAE("conv", LATENT_DIM, (30, 30, 1), "gaussian", hidden_sizes=(4, 8))
    with pytest.raises(ValueError, match="divisible by 4"):
        jax.eval_shape(vae.init, jax.random.key(0), jnp.zeros((30, 30, 1)))


# ---------------------------------------------------------------------------------------------
# The conv VAE: the common small architecture, and its layers equal to flax's own.


@pytest.mark.parametrize(
    "event_shape, likelihood, out_channels",
    [((28, 28, 1), "gaussian", 1), ((28, 28, 3), "gaussian_decoder", 6)],
)
def test_conv_vae_is_the_common_small_architecture(event_shape, likelihood, out_channels):
    vae = models.VAE("conv", 32, event_shape, likelihood, hidden_sizes=(16, 32))
    params = jax.eval_shape(vae.init, jax.random.key(0), jnp.zeros(event_shape))["params"]
    shapes = jax.tree.map(lambda a: a.shape, params)
    channels = event_shape[-1]
    assert shapes == {
        "encoder": {  # Conv(16, 4×4, s2) → Conv(32, 4×4, s2) → flatten 7·7·32 → Dense(2·32)
            "conv0": {"kernel": (4, 4, channels, 16), "bias": (16,)},
            "conv1": {"kernel": (4, 4, 16, 32), "bias": (32,)},
            "mean": {"kernel": (7 * 7 * 32, 32), "bias": (32,)},
            "log_var": {"kernel": (7 * 7 * 32, 32), "bias": (32,)},
        },
        "decoder": {  # Dense(7·7·32) → ConvTranspose(16, 4×4, s2) → ConvTranspose(out, 4×4, s2)
            "project": {"kernel": (32, 7 * 7 * 32), "bias": (7 * 7 * 32,)},
            "deconv0": {"kernel": (4, 4, 32, 16), "bias": (16,)},
            "out": {"kernel": (4, 4, 16, out_channels), "bias": (out_channels,)},
        },
    }


HIDDEN_CONV = (3, 5)


class PlainConvEncoder(nn.Module):
    """The conv encoder written with flax's own Conv (PyTorch's padding 1)."""

    @nn.compact
    def __call__(self, x):
        h = x
        for i, features in enumerate(HIDDEN_CONV):
            conv = nn.Conv(features, (4, 4), (2, 2), padding=((1, 1), (1, 1)), name=f"conv{i}")
            h = nn.relu(conv(h))
        h = h.reshape(-1)
        return nn.Dense(LATENT_DIM, name="mean")(h), nn.Dense(LATENT_DIM, name="log_var")(h)


class PlainConvDecoder(nn.Module):
    """The conv decoder with flax's ConvTranspose, padded to PyTorch's p=1 (sides × 2)."""

    @nn.compact
    def __call__(self, z):
        h = nn.relu(nn.Dense(2 * 2 * HIDDEN_CONV[1], name="project")(z))
        h = h.reshape(2, 2, HIDDEN_CONV[1])
        up = dict(kernel_size=(4, 4), strides=(2, 2), padding=((2, 2), (2, 2)))
        h = nn.relu(nn.ConvTranspose(HIDDEN_CONV[0], name="deconv0", **up)(h))
        h = nn.ConvTranspose(2 * EVENT[-1], name="out", **up)(h)
        out = jnp.moveaxis(h.reshape(*EVENT[:2], 2, EVENT[-1]), 2, 0)
        return out.at[1].set(models.bounded_log_sigma(out[1], FLOOR))


def test_conv_encoder_and_decoder_equal_flax_layers_outputs_and_gradients():
    encoder = models.Encoder("conv", LATENT_DIM, HIDDEN_CONV)
    decoder = models.Decoder("conv", EVENT, 2, HIDDEN_CONV, FLOOR)
    x = jax.random.uniform(jax.random.key(1), (5, *EVENT))
    z = jax.random.normal(jax.random.key(2), (5, LATENT_DIM))
    pairs = [
        (encoder, PlainConvEncoder(), x, numpy_params(encoder, x[0], scale=0.2)),
        (decoder, PlainConvDecoder(), z, numpy_params(decoder, z[0], seed=1, scale=0.2)),
    ]
    for ours, plain, inputs, params in pairs:
        # The same parameter tree: flax's layers read the parameters ours declare.
        chex.assert_trees_all_equal_shapes(
            params, jax.eval_shape(plain.init, jax.random.key(0), inputs[0])
        )

        def loss(params, inputs, module):
            outs = jax.vmap(lambda a: module.apply(params, a))(inputs)
            return sum(jnp.sum(jnp.sin(o)) for o in jax.tree.leaves(outs)), outs

        grad = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True), static_argnums=2)
        (_, ours_out), ours_grads = grad(params, inputs, ours)
        (_, plain_out), plain_grads = grad(params, inputs, plain)
        chex.assert_trees_all_close(ours_out, plain_out, rtol=1e-5, atol=1e-5)
        chex.assert_trees_all_close(ours_grads, plain_grads, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# σ driven to its floor by gradient steps.


def test_gradient_steps_toward_sigma_zero_stop_at_the_floor():
    # A perfect reconstruction: −log p falls without bound as σ → 0, so Adam with a huge step
    # drives the raw parameter to −∞. σ must stop at the floor, loss and gradients finite.
    floor = 1e-2
    x = jax.random.uniform(jax.random.key(0), (8, 8, 1))
    spec = likelihoods.get_likelihood("gaussian_learned")

    def loss(raw):
        log_sigma = models.bounded_log_sigma(raw, floor)
        return -spec.log_prob(x, x[None], log_sigma)

    tx = optax.adam(1e3)

    @jax.jit
    def step(raw, opt_state):
        value, grad = jax.value_and_grad(loss)(raw)
        update, opt_state = tx.update(grad, opt_state)
        return optax.apply_updates(raw, update), opt_state, value, grad

    raw = jnp.asarray(models.raw_for_sigma(1.0, floor), jnp.float32)
    opt_state = tx.init(raw)
    for _ in range(200):
        raw, opt_state, value, grad = step(raw, opt_state)
        assert np.isfinite(value) and np.isfinite(grad) and np.isfinite(raw)
    sigma = float(jnp.exp(models.bounded_log_sigma(raw, floor)))
    assert math.isfinite(sigma)
    assert sigma >= floor * (1 - 1e-6)
    assert sigma < 1.01 * floor  # it did get driven to the floor

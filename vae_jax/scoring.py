"""Bring your own VAE: an honest likelihood for a VAE trained anywhere (`score`).

The user's model enters as two batch functions, on NumPy or JAX arrays:

  encode(x: [N, *image]) -> (mean [N, k], log_var [N, k])   q(z|x) = N(mean, diag e^log_var)
  decode(z: [N, k]) -> [N, *image]                          the decoder's mean (Gaussian, Laplace)

(or a flat [N, D], D the number of pixels of an image, reshaped to x's image shape).

A JAX-traceable pair is jitted as it is; any other (a PyTorch model behind a NumPy wrapper) is
called from the same jitted program through `jax.pure_callback`, in batches. The pair becomes a
`scorable.Scorable` and is scored by the project's own evaluation, the code that scores a sweep's
members (`vae_jax.evaluate`):

1. The decoder's scale (σ of a Gaussian, b of a Laplace; shared, or one per pixel) is fitted on
   the VALIDATION images as the project refits its own (`vae_jax.refit`): the closed form
   from one z ~ q(z|x) each (σ̂² = E r², b̂ = E|r|), then the factor that maximises the
   validation IWAE bound. A per-pixel fit has no trained shape to keep, so it fits each pixel.
2. The TEST images are scored at that scale (`evaluate.make_evaluate`): the ELBO (one sample)
   and the importance-weighted bound with K = `num_samples`, log p(x|z) the registry's
   normalised density; the summary is `evaluate.set_summary`'s.
`dequantize=True` scores pixels k/(num_bins − 1) as (k + u)/num_bins, u ~ U[0, 1), as the project
does (`pixels.dequantize`); False scores the images as given. Given a member's keys
(`evaluate.member_keys(rng).refit`), a model the project trained scores here exactly what its
evaluation scored (tests/test_score.py). Given the training convention (`conventions.translate`'s
arguments or a known name), `score` also scores the test images at the scale that loss implied,
and what that costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from vae_jax import conventions, evaluate, likelihoods, pixels
from vae_jax.errors import InputError
from vae_jax.refit import RefitKeys, make_refit
from vae_jax.scorable import Scorable
from vae_jax.score_inputs import FAMILIES, MIN_VALIDATION, check_images, check_options

if TYPE_CHECKING:
    from vae_jax.features import FeatureNet

SIGMA_FLOOR = 1e-3  # as the project's likelihood.sigma_floor (experiments/configs/default.py)
Encode = Callable[[ArrayLike], tuple[ArrayLike, ArrayLike]]
Decode = Callable[[ArrayLike], ArrayLike]


def _wrapped(encode: Encode, decode: Decode, probe: np.ndarray, *, batch_size: int):
    """(encode_one, decode_one, k): one example in, one out, traceable; host callables behind
    `jax.pure_callback`, after checking both return the shapes `score` needs."""
    image_shape = probe.shape[1:]
    for fn, name in ((encode, "encode"), (decode, "decode")):
        if not callable(fn):
            raise InputError(f"{name}={fn!r} is not callable: pass a function of a batch")
    try:  # a JAX-traceable pair is jitted as it is; anything else is called on the host
        encoded = jax.eval_shape(encode, jax.ShapeDtypeStruct(probe.shape, jnp.float32))
        traceable = True
    except Exception:  # noqa: BLE001 — NumPy or PyTorch code fails on a tracer in its own ways
        encoded, traceable = encode(probe), False
    shapes = [np.shape(a) for a in encoded] if isinstance(encoded, tuple | list) else None
    if not shapes or len(shapes) != 2 or shapes[0] != shapes[1] or shapes[0][:1] != (len(probe),):
        raise InputError(
            f"encode(x) must return (mean, log_var), each [N, k]; for x of shape {probe.shape} "
            f"it returned {shapes if shapes else type(encoded).__name__}"
        )
    if len(shapes[0]) != 2:
        raise InputError(f"encode(x) must return [N, k] arrays; it returned {shapes[0]}")
    k = shapes[0][1]
    z_probe = np.zeros((len(probe), k), np.float32)
    if traceable:
        try:
            decoded = jax.eval_shape(decode, jax.ShapeDtypeStruct(z_probe.shape, jnp.float32))
        except Exception:  # noqa: BLE001 — a JAX encoder beside a NumPy decoder
            traceable = False
    if not traceable:
        decoded = decode(z_probe)
    num_dims = math.prod(image_shape)
    # A flat [N, D] output is reshaped to x's image shape, row by row (`host` reshapes too).
    if np.shape(decoded) not in (probe.shape, (len(probe), num_dims)):
        shape = np.shape(decoded)
        if len(shape) == 2 and shape[0] == len(probe):
            raise InputError(
                f"decode(z) returned {shape[1]} values per image, but x's images {image_shape} "
                f"have {num_dims}: return [N, *image_shape] or a flat [N, {num_dims}]"
            )
        raise InputError(
            f"decode(z) must return the decoder's mean of shape [N, *image_shape] = "
            f"{probe.shape} (or flat [N, {num_dims}]); for z of shape {z_probe.shape} it "
            f"returned {shape}"
        )
    if traceable:
        return (
            lambda x: tuple(a[0] for a in encode(x[None])),
            lambda z: jnp.reshape(decode(z[None])[0], image_shape),
            k,
        )

    def host(fn: Callable, out_tails: tuple[tuple[int, ...], ...], num_in_dims: int):
        """fn on the host in batches of ≤ batch_size rows, whatever leading (vmap) axes the
        argument carries; returns a tuple of arrays [*lead, *tail] for each tail."""

        def run(a):
            lead = a.shape[: a.ndim - num_in_dims]
            rows = np.asarray(a, np.float32).reshape(-1, *a.shape[len(lead) :])
            parts = [fn(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
            parts = [p if len(out_tails) > 1 else (p,) for p in parts]
            return tuple(
                np.concatenate([np.asarray(p[j], np.float32) for p in parts]).reshape(*lead, *tail)
                for j, tail in enumerate(out_tails)
            )

        def call(a):
            lead = a.shape[: a.ndim - num_in_dims]
            shapes = tuple(jax.ShapeDtypeStruct((*lead, *tail), jnp.float32) for tail in out_tails)
            return jax.pure_callback(run, shapes, a, vmap_method="expand_dims")

        return call

    host_encode = host(encode, ((k,), (k,)), len(image_shape))
    host_decode = host(decode, (image_shape,), 1)
    return (
        lambda x: tuple(a[0] for a in host_encode(x[None])),
        lambda z: host_decode(z[None])[0][0],
        k,
    )


def as_scorable(
    encode: Encode,
    decode: Decode,
    probe: np.ndarray,
    *,
    likelihood: str,
    scale: str,
    dequantize: bool,
    num_bins: int,
    batch_size: int,
) -> Scorable:
    """The user's batch callables as a `Scorable` of images shaped like `probe`
    (params: None): the registry's family for `likelihood`, dequantised or scored as given."""
    encode_one, decode_one, latent_dim = _wrapped(encode, decode, probe, batch_size=batch_size)

    def transform(rng: jax.Array, x: jax.Array) -> jax.Array:
        return pixels.dequantize(rng, x, num_bins=num_bins) if dequantize else x

    return Scorable(
        encode=lambda params, x: encode_one(x),
        decode=lambda params, z: decode_one(z)[None],  # the registry's out: [1, *image]
        likelihood=likelihoods.get_likelihood(FAMILIES[likelihood]),
        transform=transform,
        event_shape=tuple(probe.shape[1:]),
        latent_dim=latent_dim,
        sigma_floor=SIGMA_FLOOR,
        num_bins=num_bins,
        fit_each_pixel=scale == "per_pixel",
    )


def seed_keys(seed: int) -> RefitKeys:
    """`score`'s draws from its seed: (fit, test) = split(key(seed)), (moments, search) =
    split(fit)."""
    fit_rng, test_rng = jax.random.split(jax.random.key(seed))
    moments_rng, search_rng = jax.random.split(fit_rng)
    return RefitKeys(moments=moments_rng, search=search_rng, test=test_rng)


def _finite_scores(scores: dict[str, np.ndarray], num: int) -> dict[str, np.ndarray]:
    """`scores` after checking that encode and decode gave finite values on every image."""
    for key, culprit in (("posterior_mean", "encode"), ("kl", "encode"), ("sq_err", "decode")):
        bad = ~np.all(np.isfinite(scores[key].reshape(num, -1)), axis=1)
        if bad.any():
            raise InputError(
                f"{culprit} returned non-finite values for {bad.sum()} of {num} images "
                f"(first: image {int(np.argmax(bad))})"
            )
    if not np.all(np.isfinite(scores["iwae"])):
        raise InputError("the IWAE bound is non-finite: decode(z) is non-finite for some z ~ q")
    return scores


def _implied_log_scale(convention: str | dict, likelihood: str, num_dims: int) -> float:
    """log of the scale (σ or b, pixel units) the training convention implies."""
    if isinstance(convention, str):
        try:
            kwargs = dict(conventions.get_convention(convention).kwargs)
        except ValueError as e:
            raise InputError(str(e)) from None
    elif isinstance(convention, dict):
        kwargs = dict(convention)
    else:
        raise InputError(
            f"convention={convention!r}: pass a known convention's name or a dict of "
            "vae_jax.conventions.translate's arguments"
        )
    try:
        translation = conventions.translate(num_dims, **kwargs)
    except (ValueError, TypeError) as e:
        raise InputError(f"convention: {e}") from None
    if translation.likelihood != likelihood:
        fix = f"pass likelihood={translation.likelihood!r}" if translation.scale else "no scale"
        raise InputError(
            f"convention is a {translation.likelihood} loss but likelihood={likelihood!r}: "
            + ("a BCE implies no scale to score at" if fix == "no scale" else fix)
        )
    return math.log(translation.scale)


# `score`'s keys: `evaluate.set_summary`'s for the test images at the fitted scale.
SCORED = ("iwae_nll", "bits_per_dim", "elbo", "kl", "active_units", "recon_mse")


def score(
    encode: Encode,
    decode: Decode,
    x_validation: ArrayLike,
    x_test: ArrayLike,
    *,
    likelihood: str = "gaussian",
    scale: str = "shared",
    num_samples: int = 100,
    dequantize: bool = True,
    seed: int = 0,
    num_bins: int = 256,
    batch_size: int = 100,
    convention: str | dict | None = None,
    feature_net: FeatureNet | None = None,
    labels: ArrayLike | None = None,
    keys: RefitKeys | None = None,
) -> dict[str, float | int]:
    """An honest likelihood for a VAE trained anywhere: scale fitted on validation, test scored.

    Args:
      encode: x [N, *image] -> (mean, log_var) [N, k] each, NumPy or JAX.
      decode: z [N, k] -> the decoder's mean [N, *image], or flat [N, D] (D pixels per image).
      x_validation, x_test: images in [0, 1], [N, *image] (on the k/(num_bins − 1) grid when
        `dequantize`); the scale is fitted on the first, the second is only scored.
      likelihood: "gaussian" (σ) or "laplace" (b).
      scale: "shared" (one scale) or "per_pixel".
      num_samples: K of the importance-weighted bound.
      dequantize: score x = (k + u)/num_bins as the project does; False scores x as given.
      seed: of every draw (dequantisation, z): `seed_keys(seed)`.
      num_bins: pixel levels (256 for 8-bit images).
      batch_size: images per jitted batch, and rows per call of a host callable.
      convention: the loss the model trained with (`conventions.translate`'s keyword arguments,
        or a known convention's name): also score at the scale it implied.
      feature_net, labels: a dataset's `features.FeatureNet` and test labels: also the sample
        metrics (`sample_quality.callable_sample_metrics`, a sweep member's: each image set's
        Fréchet distance at N and extrapolated to N → ∞, precision and recall, the rate and
        a bound on I(x; z); with labels the reconstructions' accuracy).
      keys: the draws instead of `seed`'s; `evaluate.member_keys(rng).refit` are those a sweep
        member's evaluation at `rng` makes, so its refit scores come out here exactly.

    Returns:
      {"sigma_refit", "test/iwae_nll", "test/bits_per_dim", "test/elbo", "test/kl",
      "test/active_units", "test/recon_mse"} (`evaluate.set_summary`); with a convention also
      "sigma_implied" (its decoder std), "test/iwae_nll_implied", "test/elbo_implied" and
      "test/implied_cost" = test/iwae_nll_implied − test/iwae_nll (nats per example, paired:
      the same images and draws).

    Raises InputError, one line naming the bad input: an unknown name, images outside [0, 1],
    too few validation images, a callable's output of the wrong shape or non-finite.
    """
    check_options(likelihood, scale, num_samples, batch_size)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed={seed!r} must be an integer")
    x_val = check_images(x_validation, "x_validation", dequantize=dequantize, num_bins=num_bins)
    x_test = check_images(x_test, "x_test", dequantize=dequantize, num_bins=num_bins)
    if x_val.shape[1:] != x_test.shape[1:]:
        raise InputError(
            f"x_validation's images are {x_val.shape[1:]} but x_test's {x_test.shape[1:]}"
        )
    if len(x_val) < MIN_VALIDATION[scale]:
        raise InputError(
            f"x_validation has {len(x_val)} images; a {scale} scale fit needs at least "
            f"{MIN_VALIDATION[scale]}"
        )
    num_dims = math.prod(x_test.shape[1:])
    implied = None if convention is None else _implied_log_scale(convention, likelihood, num_dims)
    model = as_scorable(
        encode,
        decode,
        x_val[:2],
        likelihood=likelihood,
        scale=scale,
        dequantize=dequantize,
        num_bins=num_bins,
        batch_size=batch_size,
    )
    keys = seed_keys(seed) if keys is None else keys
    refit = make_refit(model, iwae_samples=num_samples, batch_size=batch_size, members=False)
    # No scale to start from: the closed form of a shared or an each-pixel fit ignores it.
    closed, profile, log_scale = refit.refit(None, x_val, jnp.float32(0.0), keys)
    if not all(np.all(np.isfinite(a)) for a in (closed, *profile)):
        raise InputError("encode or decode returned non-finite values on x_validation")
    evaluate_fn = jax.jit(
        evaluate.make_evaluate(model, iwae_samples=num_samples, batch_size=batch_size)
    )

    def scores_at(log_scale: jax.Array) -> dict[str, float | int | None]:
        scores = jax.device_get(evaluate_fn(None, x_test, log_scale, keys.test))
        return evaluate.set_summary(_finite_scores(scores, len(x_test)), model)

    fitted = scores_at(log_scale)
    results = {"sigma_refit": fitted["sigma"]} | {f"test/{key}": fitted[key] for key in SCORED}
    if implied is not None:
        at_implied = scores_at(jnp.float32(implied))
        results["sigma_implied"] = model.likelihood.std_factor * math.exp(implied)
        results["test/iwae_nll_implied"] = at_implied["iwae_nll"]
        results["test/elbo_implied"] = at_implied["elbo"]
        results["test/implied_cost"] = results["test/iwae_nll_implied"] - results["test/iwae_nll"]
    if feature_net is not None:
        from vae_jax import sample_quality  # the feature network's code, only when asked for

        results |= sample_quality.callable_sample_metrics(
            model,
            x_test,
            feature_net,
            log_scale=log_scale,
            rng=keys.test,
            labels=None if labels is None else np.asarray(labels),
        )
    return results

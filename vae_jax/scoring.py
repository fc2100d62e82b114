"""Bring your own VAE: an honest likelihood for a VAE trained anywhere (`score`).

The user's model enters as two batch functions, on NumPy or JAX arrays:

  encode(x: [N, *image]) -> (mean [N, k], log_var [N, k])   q(z|x) = N(mean, diag e^log_var)
  decode(z: [N, k]) -> [N, *image]                          the decoder's mean (Gaussian, Laplace)

A JAX-traceable pair is jitted as it is; any other (a PyTorch model behind a NumPy wrapper) is
called from the same jitted program through `jax.pure_callback`, in batches, with a progress bar.
Scoring follows the project's own evaluation (`vae_jax.evaluate`), example by example:

1. The decoder's scale (σ of a Gaussian, b of a Laplace; shared, or one per pixel) is fitted on
   the VALIDATION images as the project refits its own (`fit_log_scale`): the closed form from
   one z ~ q(z|x) each (σ̂² = E r², b̂ = E|r|), then the factor that maximises the validation
   IWAE bound. A per-pixel fit has no trained shape to keep, so it fits each pixel.
2. The TEST images are scored at that scale: the ELBO (one sample) and the importance-weighted
   bound with K = `num_samples` (`vae_jax.elbo`), log p(x|z) the registry's normalised density.
`dequantize=True` scores pixels k/(num_bins − 1) as (k + u)/num_bins, u ~ U[0, 1), as the project
does (`pixels.dequantize`); False scores the images as given. Keys are split as evaluation splits
them, so a model the project trained scores here what `evaluate` scores (tests/test_score.py).
Given the training convention (`conventions.translate`'s arguments or a known name), `score`
also scores the test images at the scale that loss implied, and what that costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import conventions, elbo, evaluate, likelihoods, metrics, pixels, train
from vae_jax.errors import InputError
from vae_jax.score_inputs import FAMILIES, MIN_VALIDATION, check_images, check_options

SIGMA_FLOOR = 1e-3  # as the project's likelihood.sigma_floor (experiments/configs/default.py)
Encode = Callable[[Any], tuple[Any, Any]]
Decode = Callable[[Any], Any]


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
    if np.shape(decoded) != probe.shape:
        raise InputError(
            f"decode(z) must return the decoder's mean of shape [N, *image_shape] = "
            f"{probe.shape}; for z of shape {z_probe.shape} it returned {np.shape(decoded)}"
        )
    if traceable:
        return (
            lambda x: tuple(a[0] for a in encode(x[None])),
            lambda z: decode(z[None])[0],
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


def _map_examples(
    one_example: Callable, x: np.ndarray, rng: jax.Array, *shared: Any, batch_size: int, desc: str
) -> dict[str, np.ndarray]:
    """one_example(x[*image], rng, *shared) -> pytree over x [N, *image], in jitted batches run
    from the host with a progress bar; example i gets key i of split(rng, N), as in evaluation."""
    num_batches = -(-len(x) // batch_size)
    pad = np.zeros((num_batches * batch_size - len(x), *x.shape[1:]), x.dtype)
    padded = np.concatenate([x, pad])
    keys = jax.random.split(rng, len(padded))
    batch = jax.jit(jax.vmap(one_example, in_axes=(0, 0, *(None for _ in shared))))
    outputs = []
    with train.progress_bar(len(x), 0, desc) as bar:
        for i in range(num_batches):
            rows = slice(i * batch_size, (i + 1) * batch_size)
            outputs.append(jax.device_get(batch(padded[rows], keys[rows], *shared)))
            bar.update(min(batch_size, len(x) - i * batch_size))
    return jax.tree.map(lambda *o: np.concatenate(o)[: len(x)], *outputs)


def _transform(x: jax.Array, rng: jax.Array, dequantize: bool, num_bins: int) -> jax.Array:
    return pixels.dequantize(rng, x, num_bins=num_bins) if dequantize else x


def fit_log_scale(
    encode: Encode,
    decode: Decode,
    x_validation: Any,
    rng: jax.Array,
    *,
    likelihood: str = "gaussian",
    scale: str = "shared",
    num_samples: int = 100,
    dequantize: bool = True,
    num_bins: int = 256,
    batch_size: int = 100,
    search_rng: jax.Array | None = None,
) -> jax.Array:
    """The decoder's log scale fitted on validation images: [] (shared) or [*image] (per_pixel).

    First the closed form that maximises the one-sample ELBO (key `rng`),

        log σ̂ = ½·log E r²  (Gaussian),   log b̂ = log E|r|  (Laplace),   floored at log SIGMA_FLOOR,

    r = x − decode(z), one z ~ q(z|x) per image, E over images (and pixels, when shared); then
    the one factor e^u on it that maximises the validation IWAE bound with K = num_samples, the
    score itself (key `search_rng`), as the project's refit does (`evaluate.best_log_factor` on
    the profile log w_k(u) = log w_k + T_k·(1 − e^(−p·u)) − D·u, T_k = Σ|r/s|^p / p). Without
    `search_rng` both keys are split from `rng`.
    """
    check_options(likelihood, scale, num_samples, batch_size)
    if search_rng is None:
        rng, search_rng = jax.random.split(rng)
    x = check_images(x_validation, "x_validation", dequantize=dequantize, num_bins=num_bins)
    if len(x) < MIN_VALIDATION[scale]:
        raise InputError(
            f"x_validation has {len(x)} images; a {scale} scale fit needs at least "
            f"{MIN_VALIDATION[scale]}"
        )
    encode_one, decode_one, _ = _wrapped(encode, decode, x[:2], batch_size=batch_size)
    spec = likelihoods.get_likelihood(FAMILIES[likelihood])
    power = spec.scale_power

    def residual_moments(x, rng):
        transform_rng, z_rng = jax.random.split(rng)
        x = _transform(x, transform_rng, dequantize, num_bins)
        mean, log_var = encode_one(x)
        z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(z_rng, mean.shape, mean.dtype)
        residual = x - decode_one(z)
        return residual**2, jnp.abs(residual)

    def profile(x, rng, log_scale):
        transform_rng, _, iwae_rng = jax.random.split(rng, 3)  # `score_images`' draws
        x = _transform(x, transform_rng, dequantize, num_bins)
        mean, log_var = encode_one(x)
        z = elbo.sample_posterior(iwae_rng, mean, log_var, num_samples)
        prior = jnp.zeros_like(mean)

        def terms(z_k):
            loc = decode_one(z_k)
            log_w = (
                spec.log_prob(x, loc[None], log_scale, flat=True)
                + elbo.log_normal_diag(z_k, prior, prior)
                - elbo.log_normal_diag(z_k, mean, log_var)
            )
            return log_w, jnp.sum((jnp.abs(x - loc) * jnp.exp(-log_scale)) ** power) / power

        return jax.lax.map(terms, z, batch_size=min(100, num_samples))

    squared, absolute = _map_examples(
        residual_moments, x, rng, batch_size=batch_size, desc="fitting the scale on validation"
    )
    mean_sq, mean_abs = np.mean(squared, axis=0), np.mean(absolute, axis=0)
    if scale == "shared":
        mean_sq, mean_abs = np.mean(mean_sq), np.mean(mean_abs)
    floor = math.log(SIGMA_FLOOR)
    closed = jnp.maximum(jnp.asarray(spec.log_scale_mle(mean_sq, mean_abs), jnp.float32), floor)
    if not np.all(np.isfinite(closed)):
        raise InputError("encode or decode returned non-finite values on x_validation")
    log_w, t = _map_examples(
        profile, x, search_rng, closed, batch_size=batch_size, desc="searching the scale"
    )
    if not (np.all(np.isfinite(log_w)) and np.all(np.isfinite(t))):
        raise InputError("encode or decode returned non-finite values on x_validation")
    u = evaluate.best_log_factor(jnp.asarray(log_w), jnp.asarray(t), power, math.prod(x.shape[1:]))
    return jnp.maximum(closed + u, floor)


def score_images(
    encode: Encode,
    decode: Decode,
    x: Any,
    log_scale: jax.Array,
    rng: jax.Array,
    *,
    likelihood: str = "gaussian",
    num_samples: int = 100,
    dequantize: bool = True,
    num_bins: int = 256,
    batch_size: int = 100,
) -> dict[str, np.ndarray]:
    """Per-example scores of images x [N, *image] at the decoder scale `log_scale` ([] or
    [*image]): `elbo`, `kl`, `iwae` (the bound with K = num_samples), `sq_err` = ‖x − decode(mean)‖²
    [N] each, `kl_per_latent`, `posterior_mean` [N, k] — keyed and drawn as `vae_jax.evaluate`."""
    check_options(likelihood, "shared", num_samples, batch_size)
    x = check_images(x, "x_test", dequantize=dequantize, num_bins=num_bins)
    encode_one, decode_one, _ = _wrapped(encode, decode, x[:2], batch_size=batch_size)
    spec = likelihoods.get_likelihood(FAMILIES[likelihood])

    def one_example(x, rng, log_scale):
        transform_rng, elbo_rng, iwae_rng = jax.random.split(rng, 3)
        x = _transform(x, transform_rng, dequantize, num_bins)
        mean, log_var = encode_one(x)
        decode_out = lambda z: decode_one(z)[None]  # the registry's out: [1, *image]
        log_likelihood = lambda x, out: spec.log_prob(x, out, log_scale, flat=True)
        terms = elbo.elbo(elbo_rng, x, mean, log_var, decode_out, log_likelihood, num_samples=1)
        iwae = elbo.iwae_bound(
            iwae_rng, x, mean, log_var, decode_out, log_likelihood, num_samples=num_samples
        )
        return {
            "elbo": terms["elbo"],
            "kl": terms["kl"],
            "kl_per_latent": terms["kl_per_latent"],
            "posterior_mean": mean,
            "log_var": log_var,
            "iwae": iwae,
            "sq_err": jnp.sum((x - decode_one(mean)) ** 2),
        }

    out = _map_examples(
        one_example,
        x,
        rng,
        jnp.asarray(log_scale, jnp.float32),
        batch_size=batch_size,
        desc=f"scoring {len(x)} images (IWAE, K = {num_samples})",
    )
    for key, culprit in (("posterior_mean", "encode"), ("log_var", "encode"), ("sq_err", "decode")):
        bad = ~np.all(np.isfinite(out[key].reshape(len(x), -1)), axis=1)
        if bad.any():
            raise InputError(
                f"{culprit} returned non-finite values for {bad.sum()} of {len(x)} images "
                f"(first: image {int(np.argmax(bad))})"
            )
    if not np.all(np.isfinite(out["iwae"])):
        raise InputError("the IWAE bound is non-finite: decode(z) is non-finite for some z ~ q")
    return out


def summarize(
    scores: dict[str, np.ndarray],
    log_scale: jax.Array,
    num_dims: int,
    *,
    likelihood: str = "gaussian",
    num_bins: int = 256,
) -> dict[str, float | int]:
    """results.csv's keys from `score_images`' per-example arrays at `log_scale`: means over the
    images (nats per example), bits/dim on the 8-bit scale ((NLL + D·log num_bins)/(D·log 2)),
    active units (posterior-mean variance > 0.01), and `sigma_refit`, the decoder's standard
    deviation (σ, or √2·b for a Laplace), root-mean-square over pixels."""
    std_factor = likelihoods.get_likelihood(FAMILIES[likelihood]).std_factor
    nll = -float(np.mean(scores["iwae"]))
    return {
        "sigma_refit": float(std_factor * np.sqrt(np.mean(np.exp(2.0 * np.asarray(log_scale))))),
        "test/iwae_nll": nll,
        "test/bits_per_dim": float(metrics.bits_per_dim(nll, num_dims, num_bins=num_bins)),
        "test/elbo": float(np.mean(scores["elbo"])),
        "test/kl": float(np.mean(scores["kl"])),
        "test/active_units": int(metrics.active_units(scores["posterior_mean"])),
        "test/recon_mse": float(np.mean(scores["sq_err"]) / num_dims),
    }


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


def score(
    encode: Encode,
    decode: Decode,
    x_validation: Any,
    x_test: Any,
    *,
    likelihood: str = "gaussian",
    scale: str = "shared",
    num_samples: int = 100,
    dequantize: bool = True,
    seed: int = 0,
    num_bins: int = 256,
    batch_size: int = 100,
    convention: str | dict | None = None,
    feature_net: Any = None,
    labels: Any = None,
) -> dict[str, float | int]:
    """An honest likelihood for a VAE trained anywhere: scale fitted on validation, test scored.

    Args:
      encode: x [N, *image] -> (mean, log_var) [N, k] each, NumPy or JAX.
      decode: z [N, k] -> the decoder's mean [N, *image].
      x_validation, x_test: images in [0, 1], [N, *image] (on the k/(num_bins − 1) grid when
        `dequantize`); the scale is fitted on the first, the second is only scored.
      likelihood: "gaussian" (σ) or "laplace" (b).
      scale: "shared" (one scale) or "per_pixel".
      num_samples: K of the importance-weighted bound.
      dequantize: score x = (k + u)/num_bins as the project does; False scores x as given.
      seed: of every draw (dequantisation, z).
      num_bins: pixel levels (256 for 8-bit images).
      batch_size: images per jitted batch, and rows per call of a host callable.
      convention: the loss the model trained with (`conventions.translate`'s keyword arguments,
        or a known convention's name): also score at the scale it implied.
      feature_net, labels: a dataset's `features.FeatureNet` and test labels: also the sample
        metrics (`sample_quality.callable_sample_metrics`).

    Returns:
      {"sigma_refit", "test/iwae_nll", "test/bits_per_dim", "test/elbo", "test/kl",
      "test/active_units", "test/recon_mse"} (`summarize`); with a convention also
      "sigma_implied" (its decoder std), "test/iwae_nll_implied", "test/elbo_implied" and
      "test/implied_cost" = test/iwae_nll_implied − test/iwae_nll (nats per example, paired:
      the same images and draws).

    Raises InputError, one line naming the bad input: an unknown name, images outside [0, 1],
    too few validation images, a callable's output of the wrong shape or non-finite.
    """
    check_options(likelihood, scale, num_samples, batch_size)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed={seed!r} must be an integer")
    options = dict(dequantize=dequantize, num_bins=num_bins, batch_size=batch_size)
    x_val = check_images(x_validation, "x_validation", dequantize=dequantize, num_bins=num_bins)
    x_test = check_images(x_test, "x_test", dequantize=dequantize, num_bins=num_bins)
    if x_val.shape[1:] != x_test.shape[1:]:
        raise InputError(
            f"x_validation's images are {x_val.shape[1:]} but x_test's {x_test.shape[1:]}"
        )
    num_dims = math.prod(x_test.shape[1:])
    implied = None if convention is None else _implied_log_scale(convention, likelihood, num_dims)
    fit_rng, test_rng = jax.random.split(jax.random.key(seed))
    scored = dict(likelihood=likelihood, num_samples=num_samples, **options)
    log_scale = fit_log_scale(encode, decode, x_val, fit_rng, scale=scale, **scored)
    scores = score_images(encode, decode, x_test, log_scale, test_rng, **scored)
    results = summarize(scores, log_scale, num_dims, likelihood=likelihood, num_bins=num_bins)
    if implied is not None:
        at_implied = score_images(encode, decode, x_test, implied, test_rng, **scored)
        std_factor = likelihoods.get_likelihood(FAMILIES[likelihood]).std_factor
        results["sigma_implied"] = std_factor * math.exp(implied)
        results["test/iwae_nll_implied"] = -float(np.mean(at_implied["iwae"]))
        results["test/elbo_implied"] = float(np.mean(at_implied["elbo"]))
        results["test/implied_cost"] = results["test/iwae_nll_implied"] - results["test/iwae_nll"]
    if feature_net is not None:
        from vae_jax import sample_quality  # the feature network's code, only when asked for

        results |= sample_quality.callable_sample_metrics(
            encode,
            decode,
            x_test,
            feature_net,
            likelihood_name=FAMILIES[likelihood],
            log_scale=log_scale,
            rng=test_rng,
            labels=None if labels is None else np.asarray(labels),
        )
    return results

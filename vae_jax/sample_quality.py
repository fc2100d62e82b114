"""Sample quality of trained members beside their likelihood: images, feature-space metrics,
the rate and a bound on I(x; z), for stacked sweep members in two jitted programs (the images and
posteriors, which need the VAE; the metrics, which do not, so every group of a sweep shares its
compilation).

Per member, against the first N test images (N = `num_examples`, default 1,000, the same for
every member, since the Fréchet distance and the k-NN metrics depend on N):
- `prior_mean`: decoder means f(z), z ~ N(0, I) — what people display;
- `prior_sample`: x ~ p(x | z) at the same z, clipped to [0, 1] for display (a Gaussian's draws
  leave the pixel range; the clip is what is shown and scored, not the density's draw);
- `reconstruction`: the decoder mean at the posterior mean E_q[z | x] of each test image.
Every image set is stored as uint8 = round(255·clip(x, 0, 1)) (digits' 17 levels included)
and scored as those uint8 / 255, the test images too, so the metrics can be recomputed from
`samples.npz` alone. For each set: Fréchet distance at N and extrapolated to N → ∞, in the
feature network's space and in the training images' PCA space (`vae_jax.sample_fd`), precision
and recall against the test images' features (`vae_jax.sample_metrics`); for the reconstructions
also the feature network's accuracy on the test labels (is the digit kept?); per member the rate
and an upper bound on I(x; z) that is not capped at log N
(`aggregate_posterior.cross_fitted_upper_bound`). `real_floor`
scores the held-out validation images against the same test images: what a model whose samples
were real images would get.

Images that the encoder reads are the test images as the model sees them (`problem.test_x`, not
dequantised; binarised for a Bernoulli family); the reference set is the grey test images
(`problem.test_grey` where the family binarises), which is what the feature network knows.
A sweep's members and a user's callables (`vae_jax.score`) are both a `scorable.Scorable`
and go through the same two programs (`make_quality`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import aggregate_posterior, data, features, sample_fd, sample_metrics
from vae_jax.objective import Problem
from vae_jax.scorable import Scorable, of_problem

if TYPE_CHECKING:
    from vae_jax.spec import RunSpec

IMAGE_SETS = ("prior_mean", "prior_sample", "reconstruction")
# Folded into each member's key, so a caller may pass the keys its likelihood evaluation uses
# and still get a stream of its own.
_STREAM = 27


@dataclasses.dataclass(frozen=True)
class SampleQuality:
    """What `make_sample_quality`'s function returns for M members."""

    # 'test/fd_<set>', 'test/fd_inf_<set>', 'test/precision_<set>', 'test/recall_<set>' (with a
    # PCA also 'test/fd_pca_<set>', 'test/fd_inf_pca_<set>') for each set of IMAGE_SETS,
    # 'test/recon_accuracy', 'test/rate', 'test/mutual_information_upper',
    # 'test/marginal_kl_lower': each float64 [M].
    metrics: dict[str, np.ndarray]
    # samples.npz: 'prior_mean', 'prior_sample', 'reconstruction' uint8 [M, N, H, W, C];
    # 'test' uint8 [N, H, W, C], the real images they were compared with.
    images: dict[str, np.ndarray]

    def rows(self) -> list[dict[str, float]]:
        """`metrics` as one dict per member, in member order (results.csv's columns)."""
        count = len(next(iter(self.metrics.values())))
        return [{k: float(v[i]) for k, v in self.metrics.items()} for i in range(count)]


def to_uint8(x: jax.Array) -> jax.Array:
    """round(255·clip(x, 0, 1)) as uint8, non-finite pixels (a diverged member's) as 0."""
    return jnp.round(255.0 * jnp.clip(jnp.nan_to_num(x, nan=0.0), 0.0, 1.0)).astype(jnp.uint8)


def as_scored(images_uint8: jax.Array) -> jax.Array:
    """uint8 images -> the float32 in [0, 1] the feature network scores (uint8 / 255)."""
    return images_uint8.astype(jnp.float32) / 255.0


def reference_images(problem: Problem, num_examples: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(encoded [N, ...], real [N, ...]): the first N test images as the model reads them, and
    as grey images to compare with (the same unless the family binarises)."""
    num = min(num_examples, len(problem.test_x))
    grey = problem.test_grey if problem.test_grey is not None else problem.test_x
    return np.asarray(problem.test_x[:num]), np.asarray(grey[:num])


def make_sample_quality(
    problem: Problem,
    feature_net: features.FeatureNet,
    test_labels: np.ndarray,
    *,
    num_examples: int = 1000,
    **options,
) -> Callable[[Any, jax.Array, jax.Array], SampleQuality]:
    """`make_quality` for the members of `problem` against its first N test images
    (`reference_images`, N = `num_examples` capped at the test split's size); `test_labels`:
    [num_test] int labels of the test split, in `problem.test_x`'s order."""
    return make_quality(
        of_problem(problem),
        reference_images(problem, num_examples),
        feature_net,
        test_labels,
        **options,
    )


def make_quality(
    model: Scorable,
    reference: tuple[np.ndarray, np.ndarray],
    feature_net: features.FeatureNet,
    labels: np.ndarray | None,
    *,
    k: int = 3,
    members_per_block: int = 8,
    validation_features: np.ndarray | None = None,
    fd_sizes: tuple[int, ...] | None = None,
    pca: tuple[np.ndarray, np.ndarray] | None = None,
) -> Callable[[Any, jax.Array, jax.Array], SampleQuality]:
    """quality(params, log_sigma, rngs) -> SampleQuality for M stacked members of `model`.

    Args of the returned function:
      params: the members' parameters with a leading member axis [M, ...] (`fitted.state.params`
        of `sweep.train_group`, the padding copies sliced off; None for callables).
      log_sigma: [M] or [M, H, W, C] the σ each member's likelihood samples with
        (`objective.observation_log_sigma` vmapped over members).
      rngs: [M] keys; members given the same key decode the same z (common random numbers).
    Args here:
      reference: (encoded [N, ...], real [N, ...]): the images the encoder reads and the grey
        images every set is compared with (`reference_images`).
      labels: int labels of the reference images (their first N are used), or None: no
        reconstruction accuracy.
      k: neighbourhood size of precision and recall; members_per_block: members vmapped at a
        time (a member's float32 images and [N, N] distances take a few tens of MB at N = 1,000
        on 28×28 images).
      validation_features: [N_val, F] features of the held-out validation images; with them
        each prior set also gets `val/fd_<set>`, its Fréchet distance to the validation images,
        which selections use (the test images are for reporting only).
      fd_sizes: the subset sizes of FD_∞; default `sample_fd.extrapolation_sizes(N)`, up to
        the whole set.
      pca: (mean, components) of `sample_fd.fit_pca`: with it, the FD columns in PCA space too.
    """
    encoded, real = reference
    num = len(encoded)
    if labels is not None:
        labels = jnp.asarray(np.asarray(labels)[:num], jnp.int32)
    real_uint8 = np.asarray(to_uint8(jnp.asarray(real)))
    real_features = np.asarray(feature_net.features(as_scored(real_uint8)), np.float64)
    real_mean, _ = sample_metrics.gaussian_fit(real_features)
    real_pca = None if pca is None else sample_fd.pca_of(real_uint8, pca)
    sizes = sample_fd.extrapolation_sizes(num) if fd_sizes is None else tuple(fd_sizes)
    # The real manifold is shared by every member and set: centred and its radii found once.
    centre = jnp.asarray(real_mean, jnp.float32)
    real_centred = jnp.asarray(real_features - real_mean, jnp.float32)
    real_sq_radii = sample_metrics.knn_sq_radii(real_centred, k)
    validation = None
    if validation_features is not None:
        val_mean, val_cov = sample_metrics.gaussian_fit(np.asarray(validation_features, np.float64))
        validation = (val_mean, val_cov, sample_metrics.sqrtm_psd(val_cov))
    encoded = jnp.asarray(encoded)
    member = functools.partial(_images_and_posterior, model, num=num)

    @jax.jit
    def images_and_posteriors(params, log_sigma, rngs, encoded):
        return jax.lax.map(
            lambda args: member(*args, encoded),
            (params, log_sigma, rngs),
            batch_size=members_per_block,
        )

    def quality(params: Any, log_sigma: jax.Array, rngs: jax.Array) -> SampleQuality:
        images, valid, posterior = images_and_posteriors(params, log_sigma, rngs, encoded)
        set_features, scalars = jax.device_get(
            _metrics_of_members(
                feature_net.module,
                feature_net.params,
                images,
                valid,
                real_centred,
                real_sq_radii,
                centre,
                labels,
                k=k,
                members_per_block=members_per_block,
            )
        )
        metrics = {key: np.asarray(value, np.float64) for key, value in scalars.items()}
        # The bound on I(x; z), one member at a time in its own small program: inside the
        # members' lax.map, its Cholesky factorisation and triangular solves left XLA's CPU
        # runtime waiting forever on a 60-member group (a deadlock, reproduced 2026-12-07).
        bounds = [_upper_bound(mean, log_var) for mean, log_var in zip(*posterior, strict=True)]
        for key in bounds[0]:
            metrics[f"test/{key}"] = np.asarray([float(b[key]) for b in bounds], np.float64)
        images = {name: np.asarray(value) for name, value in jax.device_get(images).items()}
        for name in IMAGE_SETS:
            per_member = [
                sample_fd.columns(
                    "test/",
                    f"_{name}",
                    feats,
                    real_features,
                    sizes,
                    *(() if pca is None else (_pca_unless_nan(pixels, feats, pca), real_pca)),
                )
                for feats, pixels in zip(set_features[name], images[name], strict=True)
            ]
            metrics |= {key: np.asarray([c[key] for c in per_member]) for key in per_member[0]}
            if validation is not None and name != "reconstruction":
                metrics[f"val/fd_{name}"] = np.asarray(
                    [_frechet_to_real(f, *validation) for f in set_features[name]]
                )
        return SampleQuality(metrics=metrics, images={**images, "test": real_uint8})

    return quality


def _pca_unless_nan(images_uint8: np.ndarray, feats: np.ndarray, pca) -> np.ndarray:
    """PCA features of a set's uint8 images, NaN where its network features are (a set with a
    non-finite pixel is stored black, and scores NaN in every space)."""
    projected = sample_fd.pca_of(images_uint8, pca)
    return projected if np.all(np.isfinite(feats)) else np.full_like(projected, np.nan)


def _frechet_to_real(generated, real_mean, real_cov, real_root) -> float:
    """The Fréchet distance of generated features [N, F] to the real set's fit (NaN when a
    feature is not finite: a diverged member)."""
    if not np.all(np.isfinite(generated)):
        return np.nan
    mean, cov = sample_metrics.gaussian_fit(generated)
    return sample_metrics.frechet_distance(real_mean, real_cov, mean, cov, sqrt_cov1=real_root)


def _images_and_posterior(
    model: Scorable,
    params: Any,
    log_sigma: jax.Array,
    rng: jax.Array,
    encoded: jax.Array,
    *,
    num: int,
):
    """ONE member's uint8 image sets, whether each set's pixels were finite, and its posterior
    on the N test images: (mean [N, k], log_var [N, k])."""
    # Three keys, as when a third drew the rate split's z, so the images stay as they were.
    prior_rng, sample_rng, _ = jax.random.split(jax.random.fold_in(rng, _STREAM), 3)
    decode = jax.vmap(lambda z: model.decode(params, z))
    mean_of = jax.vmap(lambda out: model.likelihood.mean(out, log_sigma))
    draw = jax.vmap(lambda r, out: model.likelihood.sample(r, out, log_sigma))

    prior_out = decode(jax.random.normal(prior_rng, (num, model.latent_dim)))
    posterior_mean, posterior_log_var = jax.vmap(lambda x: model.encode(params, x))(encoded)
    pixels = {
        "prior_mean": mean_of(prior_out),
        "prior_sample": draw(jax.random.split(sample_rng, num), prior_out),
        "reconstruction": mean_of(decode(posterior_mean)),
    }
    return (
        {name: to_uint8(x) for name, x in pixels.items()},
        {name: jnp.all(jnp.isfinite(x)) for name, x in pixels.items()},
        (posterior_mean, posterior_log_var),
    )


_upper_bound = jax.jit(aggregate_posterior.cross_fitted_upper_bound)


@functools.partial(jax.jit, static_argnames=("feature_module", "k", "members_per_block"))
def _metrics_of_members(
    feature_module: features.Classifier,
    feature_params: Any,
    images: dict[str, jax.Array],
    valid: dict[str, jax.Array],
    real_centred: jax.Array,
    real_sq_radii: jax.Array,
    centre: jax.Array,
    labels: jax.Array | None,
    *,
    k: int,
    members_per_block: int,
):
    """Every member's features [M, N, F] per set and scalar metrics [M]. Its own program, the
    same for every group of a sweep (it never sees the VAE), so it compiles once."""

    def one(member):
        images, valid = member
        scalars, set_features = {}, {}
        for name in IMAGE_SETS:
            # A set with a non-finite pixel (a diverged member) is stored black, scores NaN.
            def nan_unless_valid(value, ok=valid[name]):
                return jnp.where(ok, value, jnp.nan)

            feats, logits = features.features_and_logits(
                feature_module, feature_params, as_scored(images[name])
            )
            set_features[name] = nan_unless_valid(feats)
            generated = feats - centre
            precision = sample_metrics.on_manifold(real_centred, real_sq_radii, generated)
            generated_radii = sample_metrics.knn_sq_radii(generated, k)
            recall = sample_metrics.on_manifold(generated, generated_radii, real_centred)
            scalars[f"test/precision_{name}"] = nan_unless_valid(jnp.mean(precision))
            scalars[f"test/recall_{name}"] = nan_unless_valid(jnp.mean(recall))
            if name == "reconstruction" and labels is not None:
                accuracy = sample_metrics.classification_accuracy(logits, labels)
                scalars["test/recon_accuracy"] = nan_unless_valid(accuracy)
        return set_features, scalars

    return jax.lax.map(one, (images, valid), batch_size=members_per_block)


def real_floor(
    feature_net: features.FeatureNet,
    *,
    num_examples: int = 1000,
    k: int = 3,
    data_dir: str | os.PathLike | None = None,
    idx_dir: str | os.PathLike | None = None,
    pca: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The validation images (grey, as the data set stores them) against the first N test
    images through the same features: what a model whose samples were real images would score.
    The validation images are those the feature network and the VAE held out (the split rule
    recorded in `feature_net.info`).

    The validation split may hold fewer than N images (mnist_5k: 400); then all of them are
    used, and the floor's fixed-N Fréchet distance `floor/fd` carries the larger bias of the
    smaller set (`floor/num_validation` says how many): compare members with `floor/fd_inf`,
    the FD extrapolated to N → ∞ on `floor/fd_inf_sizes` (`sample_fd`), as the members'
    `test/fd_inf_<set>` are. With `pca` (`sample_fd.fit_pca`) also floor/fd_pca and
    floor/fd_inf_pca. Other keys: floor/precision, floor/recall, feature_net/test_accuracy,
    feature_net/val_accuracy.
    """
    info = feature_net.info
    _, _, validation, _ = features.training_split(
        feature_net.name, info["validation_fraction"], info["train_subset"], data_dir, idx_dir
    )
    real = data.load_numpy(feature_net.name, "test", data_dir=data_dir, idx_dir=idx_dir)
    real = real[:num_examples]
    validation = validation[: len(real)]
    if len(validation) <= k:
        raise ValueError(
            f"the real floor needs more than k={k} validation images; the validation split "
            f"holds {len(validation)} (data.validation_fraction)"
        )
    real_uint8 = np.asarray(to_uint8(jnp.asarray(real)))
    val_uint8 = np.asarray(to_uint8(jnp.asarray(validation)))
    real_features = feature_net.features(as_scored(real_uint8))
    val_features = feature_net.features(as_scored(val_uint8))
    precision, recall = sample_metrics.precision_recall(
        jnp.asarray(real_features), jnp.asarray(val_features), k=k
    )
    sizes = sample_fd.extrapolation_sizes(len(validation))
    spaces = (
        () if pca is None else (sample_fd.pca_of(val_uint8, pca), sample_fd.pca_of(real_uint8, pca))
    )
    return {
        **sample_fd.columns(
            "floor/",
            "",
            np.asarray(val_features, np.float64),
            np.asarray(real_features, np.float64),
            sizes,
            *spaces,
        ),
        "floor/fd_inf_sizes": list(sizes),
        "floor/precision": float(precision),
        "floor/recall": float(recall),
        "floor/num_validation": len(validation),
        "feature_net/test_accuracy": feature_net.test_accuracy,
        "feature_net/val_accuracy": feature_net.val_accuracy,
    }


@dataclasses.dataclass(frozen=True)
class SweepQuality:
    """What every group of a sweep shares: the feature network, the training images' PCA, the
    test labels, the validation images' features (for selections) and the real floor."""

    net: features.FeatureNet
    pca: tuple[np.ndarray, np.ndarray]
    test_labels: np.ndarray
    validation_features: np.ndarray
    floor: dict[str, Any]
    num_examples: int


def for_sweep(spec: RunSpec) -> SweepQuality | None:
    """The sweep's shared pieces, or None where `eval.sample_quality` is off, the dataset has no
    feature network (no class labels: ppca_synthetic, binarized_mnist), or there is no
    validation split to hold the floor and the selections (`data.validation_fraction` 0, as
    `linear_vae.py:lucas` sets)."""
    if not spec.eval.sample_quality or spec.data.name not in features.IMAGE_DATASETS:
        return None
    if spec.data.validation_fraction <= 0:
        return None
    net = features.feature_network(
        spec.data.name,
        validation_fraction=spec.data.validation_fraction,
        train_subset=spec.data.train_subset,
        idx_dir=spec.data.idx_dir,
    )
    train, _, validation, _ = features.training_split(
        spec.data.name,
        spec.data.validation_fraction,
        spec.data.train_subset,
        idx_dir=spec.data.idx_dir,
    )
    num = spec.eval.sample_examples
    pca = sample_fd.fit_pca(np.asarray(to_uint8(jnp.asarray(train[: sample_fd.PCA_FIT_IMAGES]))))
    return SweepQuality(
        net=net,
        pca=pca,
        test_labels=data.load_labels(spec.data.name, "test", idx_dir=spec.data.idx_dir),
        validation_features=np.asarray(
            net.features(as_scored(to_uint8(jnp.asarray(validation)))), np.float64
        ),
        floor=real_floor(net, num_examples=num, idx_dir=spec.data.idx_dir, pca=pca),
        num_examples=num,
    )


def score_members(
    quality: SweepQuality, problem: Problem, params: Any, log_sigma: jax.Array, rngs: jax.Array
) -> SampleQuality:
    """`make_sample_quality` for one group's members (padding copies already sliced off)."""
    return make_sample_quality(
        problem,
        quality.net,
        quality.test_labels,
        num_examples=quality.num_examples,
        validation_features=quality.validation_features,
        pca=quality.pca,
    )(params, log_sigma, rngs)


def callable_sample_metrics(
    model: Scorable,
    x_test: np.ndarray,
    feature_net: features.FeatureNet,
    *,
    log_scale: jax.Array,
    rng: jax.Array,
    labels: np.ndarray | None = None,
    num_examples: int = 1000,
    k: int = 3,
) -> dict[str, float]:
    """The sample metrics of a VAE given as callables (`vae_jax.score`), as one member of
    `make_quality` at the scale `vae_jax.score` fitted, against the first N test images (they
    are both what the encoder reads and the reference); with `labels`, the reconstructions'
    accuracy. Keys as results.csv's."""
    real = np.asarray(x_test[:num_examples], np.float32)
    quality = make_quality(model, (real, real), feature_net, labels, k=k)
    return quality(None, jnp.asarray(log_scale)[None], rng[None]).rows()[0]

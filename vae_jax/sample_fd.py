"""The Fréchet distances of an image set against the reference images, in two feature spaces, at
the set's N and extrapolated to N → ∞: results.csv's `test/fd_<set>`, `test/fd_inf_<set>`,
`test/fd_pca_<set>`, `test/fd_inf_pca_<set>` and sample_quality.json's real floor
(`floor/fd`, `floor/fd_inf`, `floor/fd_pca`, `floor/fd_inf_pca`).

Why both N. The plug-in FD is biased upward by about c/N, c depending on both sets, so an FD of
1,000 generated images and one of the 400 validation images (the real floor of mnist_5k) cannot
be compared. FD_∞ removes that term for every set alike (`sample_metrics.
frechet_distance_extrapolated`, the method of M. J. Chong and D. Forsyth, "Effectively Unbiased
FID and Inception Score and where to find them", CVPR 2020, as read in the authors'
score_infinity.py): FD on random subsets of both sets at each size of one grid, a line in 1/N,
its intercept. Each set is extrapolated from sizes up to the whole of the smaller set, as
Chong & Forsyth do (`extrapolation_sizes`: 400, 550, 700, 850, 1,000 for a member's 1,000
images; 160, 220, 280, 340, 400 for mnist_5k's 400 validation images, the floor), since the
larger the N, the smaller both the noise and the terms beyond 1/N that the line leaves in
its intercept; `REPEATS` subsets per size, the subsets drawn from a fixed seed. The fixed-N
columns stay: every member is scored at the same N = 1,000, so they rank members, but only FD_∞
is compared with the floor.

Why two spaces. The feature network (`vae_jax.features`) is a digit classifier's hidden layer;
a ranking that holds only there says more about the network than the images. The second space is
the top `PCA_COMPONENTS` principal directions of the training images (`fit_pca`, once per
sweep): a space no network learned.
"""

from __future__ import annotations

import math

import numpy as np

from vae_jax import sample_metrics

REPEATS = 3  # subsets per size in the extrapolation
PCA_COMPONENTS = 64
PCA_FIT_IMAGES = 10_000  # the first this many training images fit the PCA
_GRID = (0.4, 0.55, 0.7, 0.85, 1.0)  # the sizes as fractions of the largest
_SEED = 0


def extrapolation_sizes(largest: int) -> tuple[int, ...]:
    """The subset sizes FD_∞ is fitted on: round(f·largest) for f = 0.4, 0.55, 0.7, 0.85, 1
    (evenly spaced in N up to the whole set, as Chong & Forsyth space theirs, over a 2.5× range);
    `largest` is the smallest set that is subsampled."""
    sizes = tuple(int(round(f * largest)) for f in _GRID)
    if sizes[0] < 2 or len(set(sizes)) < 2:
        raise ValueError(f"FD_∞ needs sets of at least 5 images; the smallest holds {largest}")
    return sizes


def as_pixels(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 images -> float64 in [0, 1], as the feature network scores them (uint8 / 255)."""
    return np.asarray(images_uint8, np.float64) / 255.0


def fit_pca(images_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], components [k, D]) of the first `PCA_FIT_IMAGES` uint8 images [N, H, W, C]
    scored as uint8 / 255 (`sample_metrics.pca_fit`), k = `PCA_COMPONENTS` or fewer where the
    images have fewer pixels or are fewer."""
    pixels = as_pixels(images_uint8[:PCA_FIT_IMAGES]).reshape(
        min(len(images_uint8), PCA_FIT_IMAGES), -1
    )
    return sample_metrics.pca_fit(pixels, min(PCA_COMPONENTS, *pixels.shape))


def pca_of(images_uint8: np.ndarray, pca: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """uint8 images [N, H, W, C] -> their PCA features [N, PCA_COMPONENTS]."""
    return sample_metrics.pca_features(as_pixels(images_uint8), *pca)


def fd_and_fd_inf(
    generated: np.ndarray, reference: np.ndarray, sizes: tuple[int, ...]
) -> tuple[float, float]:
    """(FD of the whole sets, FD_∞ on `sizes`) of features [N, F] against [N_ref, F]; NaN for
    both where a generated feature is not finite (a diverged member's set)."""
    if not np.all(np.isfinite(generated)):
        return math.nan, math.nan
    extrapolated = sample_metrics.frechet_distance_extrapolated(
        generated, reference, sizes=sizes, repeats=REPEATS, subsample_both=True, seed=_SEED
    )
    # The reference set first, as every member's fixed-N FD has been computed.
    fd = sample_metrics.frechet_distance(
        *sample_metrics.gaussian_fit(reference), *sample_metrics.gaussian_fit(generated)
    )
    return fd, extrapolated.fd_infinity


def columns(
    prefix: str,
    suffix: str,
    features: np.ndarray,
    reference: np.ndarray,
    sizes: tuple[int, ...],
    pca_features: np.ndarray | None = None,
    pca_reference: np.ndarray | None = None,
) -> dict[str, float]:
    """{prefix}fd{suffix}, {prefix}fd_inf{suffix} and, with PCA features of both sets,
    {prefix}fd_pca{suffix}, {prefix}fd_inf_pca{suffix}: e.g. prefix 'test/', suffix
    '_prior_mean' for a member's set, prefix 'floor/', suffix '' for the floor."""
    fd, fd_inf = fd_and_fd_inf(features, reference, sizes)
    out = {f"{prefix}fd{suffix}": fd, f"{prefix}fd_inf{suffix}": fd_inf}
    if (pca_features is None) != (pca_reference is None):
        raise ValueError("pca_features and pca_reference are given together or not at all")
    if pca_features is not None:
        fd, fd_inf = fd_and_fd_inf(pca_features, pca_reference, sizes)
        out |= {f"{prefix}fd_pca{suffix}": fd, f"{prefix}fd_inf_pca{suffix}": fd_inf}
    return out

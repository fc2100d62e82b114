"""What `vae_jax.score` accepts: the decoder families and scales it fits, how many validation
images a fit needs, and the checks that refuse anything else in one line (InputError)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from vae_jax.errors import InputError

# Decoder families `score` fits a scale for: the registry entries whose density it scores with.
FAMILIES = {"gaussian": "gaussian_learned", "laplace": "laplace"}
SCALES = ("shared", "per_pixel")
# Validation images a scale fit needs: a shared scale pools every pixel's residual; a per-pixel
# σ² from N residuals has a relative standard error √(2/N), 0.14 at N = 100.
MIN_VALIDATION = {"shared": 10, "per_pixel": 100}


def check_images(x: ArrayLike, name: str, *, dequantize: bool, num_bins: int) -> np.ndarray:
    """x as float32 [N, *image] after checking it is what `score` can score."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 2 or not len(x):
        raise InputError(f"{name} has shape {x.shape}: pass images as an array [N, *image_shape]")
    if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
        raise InputError(
            f"{name} has values outside [0, 1] (min {np.nanmin(x):g}, max {np.nanmax(x):g}): "
            "scale the images to [0, 1]"
        )
    if dequantize:
        levels = x * (num_bins - 1)
        if np.max(np.abs(levels - np.round(levels))) > 1e-3:
            raise InputError(
                f"{name} is not on the grid k/{num_bins - 1} of {num_bins} pixel levels, which "
                "dequantize=True needs; pass dequantize=False to score the images as given"
            )
    return x


def check_options(likelihood: str, scale: str, num_samples: int, batch_size: int) -> None:
    if likelihood not in FAMILIES:
        raise InputError(f"likelihood={likelihood!r} is not known; pass one of {list(FAMILIES)}")
    if scale not in SCALES:
        raise InputError(f"scale={scale!r} is not known; pass one of {list(SCALES)}")
    for value, name in ((num_samples, "num_samples"), (batch_size, "batch_size")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name}={value!r} must be a positive integer")

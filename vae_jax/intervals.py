"""Paired differences with 95% intervals that carry both the test images' and the seeds' spread.

Two members A and B are scored on the same N test images by S seeds each (seed s of A and seed s
of B start from the same key). Their difference is d[s, n] = nll_A[s, n] − nll_B[s, n]; the
reported difference is its mean over seeds and images, the mean difference in nats per example.

The interval is a two-stage paired bootstrap: each of `num_resamples` replicates draws S seeds
with replacement and then N images with replacement (the same images for every seed, and for A and
B: the pairing), and takes the mean of d over the draw; the interval is the 2.5th and 97.5th
percentile of the replicates. Resampling images carries the test set's sampling error; resampling
seeds carries training's seed-to-seed variation (with S = 2 that stage sees only two values and
understates the seeds' variance by a factor (S − 1)/S, as any bootstrap over S units does; more
seeds tighten it). A difference whose interval contains 0 is not resolved by the data.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Difference:
    """A − B in nats per example (negative: A scores a higher likelihood), with its interval."""

    mean: float
    low: float
    high: float
    num_seeds: int
    num_examples: int

    @property
    def resolved(self) -> bool:
        """Whether the 95% interval excludes 0."""
        return not self.low <= 0.0 <= self.high

    def text(self, digits: int = 1) -> str:
        """'+12.3 nats (95% CI +10.1 to +14.5)', with ', not resolved' when the CI holds 0."""
        f = f"{{:+.{digits}f}}"
        verdict = "" if self.resolved else ", not resolved"
        return (
            f"{f.format(self.mean)} nats (95% CI {f.format(self.low)} to "
            f"{f.format(self.high)}{verdict})"
        )

    def short(self, digits: int = 1) -> str:
        """'+12.3 [+10.1, +14.5]' for a table cell, with ' not resolved' when the CI holds 0."""
        f = f"{{:+.{digits}f}}"
        verdict = "" if self.resolved else " not resolved"
        return f"{f.format(self.mean)} [{f.format(self.low)}, {f.format(self.high)}]{verdict}"


def paired_difference(
    a: np.ndarray, b: np.ndarray, *, num_resamples: int = 2000, seed: int = 0
) -> Difference:
    """The mean of a − b over seeds and examples with its two-stage paired bootstrap interval.

    Args:
      a, b: [S, N] per-example scores of the two members, row s of each the same seed, column n
        the same test image; finite.
      num_resamples: bootstrap replicates.
      seed: the bootstrap's own random seed (the interval is reproducible).
    Returns:
      `Difference` of a − b.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"a and b must be [seeds, examples] of one shape, got {a.shape}, {b.shape}"
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("per-example scores must be finite")
    d = a - b
    num_seeds, num_examples = d.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(num_seeds, size=(num_resamples, num_seeds))
    images = rng.integers(num_examples, size=(num_resamples, num_examples))
    over_seeds = d[seeds].mean(axis=1)  # [R, N]: each replicate's seeds, every image
    replicates = np.take_along_axis(over_seeds, images, axis=1).mean(axis=1)
    low, high = np.percentile(replicates, [2.5, 97.5])
    return Difference(float(d.mean()), float(low), float(high), num_seeds, num_examples)

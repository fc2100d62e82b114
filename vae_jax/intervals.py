"""Paired differences with 95% intervals that carry both the test images' and the seeds' spread.

Two members A and B are scored on the same N test images by S seeds each (seed s of A and seed s
of B start from the same key). Their difference is d[s, n] = nll_A[s, n] − nll_B[s, n]; the
reported difference is its mean over seeds and images, the mean difference in nats per example.

Two intervals of it:

- `seed_t_difference`, the seed-level interval: each seed's mean over the test images,
  d̄_s = (1/N) Σ_n d[s, n], is one draw of the training run's outcome, and the interval is the
  paired Student t-interval over those S values,
      d̄ ± t_{0.975, S−1} · sd(d̄_s) / √S,   sd with S − 1 in the denominator.
  The test images' noise is inside each d̄_s, so the interval carries both sources, and with few
  seeds the t quantile (12.71 for S = 2, 2.78 for S = 5) makes it as wide as two or five training
  runs can honestly support. It needs S ≥ 2 and assumes the per-seed means are roughly normal.
- `paired_difference`, a two-stage paired bootstrap: each of `num_resamples` replicates draws S
  seeds with replacement and then N images with replacement (the same images for every seed, and
  for A and B: the pairing), and takes the mean of d over the draw; the interval is the 2.5th and
  97.5th percentile of the replicates. Its seed stage can only reuse the S observed seeds (with
  S = 2 it sees two values, and understates the seeds' variance by (S − 1)/S with no t
  correction), so with few seeds it covers mostly the test images' noise.

A difference whose interval contains 0 is not resolved by the data.
"""

from __future__ import annotations

import dataclasses
import math

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


def _paired_scores(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a and b as float64 [seeds, examples] of one shape, every score finite (ValueError)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"a and b must be [seeds, examples] of one shape, got {a.shape}, {b.shape}"
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("per-example scores must be finite")
    return a, b


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
    a, b = _paired_scores(a, b)
    d = a - b
    num_seeds, num_examples = d.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(num_seeds, size=(num_resamples, num_seeds))
    images = rng.integers(num_examples, size=(num_resamples, num_examples))
    over_seeds = d[seeds].mean(axis=1)  # [R, N]: each replicate's seeds, every image
    replicates = np.take_along_axis(over_seeds, images, axis=1).mean(axis=1)
    low, high = np.percentile(replicates, [2.5, 97.5])
    return Difference(float(d.mean()), float(low), float(high), num_seeds, num_examples)


@dataclasses.dataclass(frozen=True)
class SeedDifference(Difference):
    """A seed-level `Difference`: also each seed's mean difference and the interval's method."""

    per_seed: tuple[float, ...]  # [S] each seed's mean of a − b over the test images
    method: str


def student_t_two_sided_quantile(dof: int, coverage: float = 0.95) -> float:
    """The t > 0 with P(|T| < t) = coverage for Student's T with `dof` ≥ 1 (integer) degrees.

    P(|T| < t) is written in closed form for integer ν (Abramowitz & Stegun 26.7.3–4), with
    θ = arctan(t/√ν):
        ν odd:  (2/π)·(θ + sin θ·Σ_{j=1}^{(ν−1)/2} c_j cos^{2j−1} θ),
                c_1 = 1, c_{j+1} = c_j·2j/(2j + 1)   (the sum is empty for ν = 1),
        ν even: sin θ·Σ_{j=0}^{ν/2−1} e_j cos^{2j} θ,   e_0 = 1, e_{j+1} = e_j·(2j + 1)/(2j + 2),
    which increases with θ in (0, π/2); θ is found by bisection to double precision.
    """
    if dof < 1 or int(dof) != dof:
        raise ValueError(f"degrees of freedom must be a positive integer, got {dof}")
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must lie in (0, 1), got {coverage}")

    def central_mass(theta: float) -> float:
        sin, cos = math.sin(theta), math.cos(theta)
        if dof % 2:
            total, term = 0.0, 1.0
            for j in range(1, (dof - 1) // 2 + 1):
                total += term * cos ** (2 * j - 1)
                term *= 2 * j / (2 * j + 1)
            return 2.0 / math.pi * (theta + sin * total)
        total, term = 0.0, 1.0
        for j in range(dof // 2):
            total += term * cos ** (2 * j)
            term *= (2 * j + 1) / (2 * j + 2)
        return sin * total

    low, high = 0.0, math.pi / 2
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if central_mass(mid) < coverage else (low, mid)
    return math.sqrt(dof) * math.tan(0.5 * (low + high))


def seed_t_difference(a: np.ndarray, b: np.ndarray, *, coverage: float = 0.95) -> SeedDifference:
    """The mean of a − b with the seed-level paired t-interval (see the module docstring).

        d̄_s = mean_n (a[s, n] − b[s, n]),  d̄ = mean_s d̄_s,
        interval d̄ ± t_{(1+coverage)/2, S−1} · sd(d̄_s) / √S.

    Args:
      a, b: [S, N] per-example scores of the two members, row s of each the same seed, column n
        the same test image; finite; S ≥ 2. A score with one value per seed (a member's FD)
        is [S, 1].
      coverage: the interval's coverage (0.95: a 95% interval).
    Returns:
      `SeedDifference` of a − b, method 'paired t over seeds'.
    """
    a, b = _paired_scores(a, b)
    num_seeds, num_examples = a.shape
    if num_seeds < 2:
        raise ValueError(f"a seed-level interval needs at least 2 seeds, got {num_seeds}")
    per_seed = (a - b).mean(axis=1)
    mean = float(per_seed.mean())
    half_width = student_t_two_sided_quantile(num_seeds - 1, coverage) * float(
        per_seed.std(ddof=1) / math.sqrt(num_seeds)
    )
    return SeedDifference(
        mean,
        mean - half_width,
        mean + half_width,
        num_seeds,
        num_examples,
        tuple(float(v) for v in per_seed),
        "paired t over seeds",
    )

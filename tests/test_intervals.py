"""vae_jax.intervals: the paired two-stage bootstrap against an independent loop, and its cases."""

import numpy as np
import pytest

from vae_jax import intervals


def loop_bootstrap(a, b, num_resamples, seed):
    """The same two-stage paired bootstrap written as a plain loop with its own generator."""
    rng = np.random.RandomState(seed)
    num_seeds, num_examples = a.shape
    means = []
    for _ in range(num_resamples):
        seeds = rng.randint(num_seeds, size=num_seeds)
        images = rng.randint(num_examples, size=num_examples)
        total = 0.0
        for s in seeds:
            total += np.mean(a[s, images] - b[s, images])
        means.append(total / num_seeds)
    return np.percentile(means, [2.5, 97.5])


def test_interval_agrees_with_an_independent_loop_bootstrap():
    rng = np.random.default_rng(0)
    shared = rng.normal(0.0, 20.0, size=(1, 300))  # image difficulty, common to both members
    a = 100.0 + shared + rng.normal(0.0, 2.0, size=(3, 300)) + np.array([[0.0], [0.5], [1.0]])
    b = 99.0 + shared + rng.normal(0.0, 2.0, size=(3, 300))
    diff = intervals.paired_difference(a, b, num_resamples=4000)
    np.testing.assert_allclose(diff.mean, np.mean(a - b))
    low, high = loop_bootstrap(a, b, 4000, seed=7)
    width = high - low
    assert abs(diff.low - low) < 0.1 * width and abs(diff.high - high) < 0.1 * width
    # Pairing removes the shared image difficulty: the interval is far narrower than sd 20/√300.
    assert width < 0.5 * 2 * 1.96 * 20.0 / np.sqrt(300)
    assert diff.resolved and diff.num_seeds == 3 and diff.num_examples == 300


def test_seeds_spread_widens_the_interval():
    rng = np.random.default_rng(1)
    noise = rng.normal(0.0, 1.0, size=(4, 200))
    same = intervals.paired_difference(noise + 1.0, np.zeros((4, 200)))
    spread = intervals.paired_difference(noise + np.array([[0.0], [2.0], [0.0], [2.0]]), 0 * noise)
    assert (spread.high - spread.low) > 2 * (same.high - same.low)


def test_a_constant_difference_has_a_degenerate_interval_and_text():
    diff = intervals.paired_difference(np.full((2, 10), 3.0), np.zeros((2, 10)))
    assert (diff.mean, diff.low, diff.high) == (3.0, 3.0, 3.0)
    assert diff.text() == "+3.0 nats (95% CI +3.0 to +3.0)"
    assert diff.short() == "+3.0 [+3.0, +3.0]"


def test_an_interval_holding_zero_is_not_resolved():
    rng = np.random.default_rng(2)
    diff = intervals.paired_difference(rng.normal(size=(2, 100)), rng.normal(size=(2, 100)))
    assert diff.low < 0 < diff.high and not diff.resolved
    assert diff.text().endswith(", not resolved)") and diff.short().endswith(" not resolved")


def test_the_interval_is_reproducible():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 50)), rng.normal(size=(2, 50))
    assert intervals.paired_difference(a, b) == intervals.paired_difference(a, b)


@pytest.mark.parametrize(
    "a, b, message",
    [
        (np.zeros((2, 5)), np.zeros((2, 4)), r"got \(2, 5\), \(2, 4\)"),  # not the same images
        (np.zeros(5), np.zeros(5), r"must be \[seeds, examples\]"),  # no seed axis
        (np.full((1, 3), np.nan), np.zeros((1, 3)), "per-example scores must be finite"),
    ],
)
def test_mismatched_or_missing_scores_are_refused(a, b, message):
    with pytest.raises(ValueError, match=message):
        intervals.paired_difference(a, b)

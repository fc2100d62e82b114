"""vae_jax.intervals: the paired two-stage bootstrap against an independent loop, and its cases."""

import numpy as np
import pytest
from scipy import stats

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


# ------------------------------------------------------------------ seed-level paired t-interval


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 5, 9, 30])
@pytest.mark.parametrize("coverage", [0.9, 0.95, 0.99])
def test_t_quantile_matches_scipy(dof, coverage):
    want = stats.t.ppf(0.5 + coverage / 2, dof)
    np.testing.assert_allclose(intervals.student_t_two_sided_quantile(dof, coverage), want, 1e-12)


@pytest.mark.parametrize(
    "dof, coverage, match",
    [(0, 0.95, "degrees of freedom"), (1.5, 0.95, "degrees of freedom"), (3, 1.0, "coverage")],
)
def test_t_quantile_refuses_bad_arguments(dof, coverage, match):
    with pytest.raises(ValueError, match=match):
        intervals.student_t_two_sided_quantile(dof, coverage)


def test_seed_t_interval_by_hand_on_the_audits_warm_up_seeds():
    """Per-seed means −58.3 and −78.3 (KL warm-up against no remedy): mean −68.3, sd of the two
    √2·10 = 14.142, standard error 10, t_{0.975, 1} = 12.706 from tables: −68.3 ± 127.06."""
    images = np.linspace(-5.0, 5.0, 40)  # zero-mean image noise, the same for both seeds
    a = np.stack([-58.3 + images, -78.3 + images]) + 200.0
    diff = intervals.seed_t_difference(a, np.full_like(a, 200.0))
    np.testing.assert_allclose(diff.per_seed, [-58.3, -78.3], atol=1e-12)
    np.testing.assert_allclose(diff.mean, -68.3, atol=1e-12)
    np.testing.assert_allclose([diff.low, diff.high], [-68.3 - 127.062, -68.3 + 127.062], atol=1e-3)
    assert not diff.resolved and diff.num_seeds == 2 and diff.num_examples == 40
    assert diff.method == "paired t over seeds"
    assert diff.short() == "-68.3 [-195.4, +58.8] not resolved"


def test_seed_t_interval_matches_scipy_on_five_seeds():
    rng = np.random.default_rng(4)
    a = rng.normal(0.0, 3.0, size=(5, 120)) + rng.normal(2.0, 1.0, size=(5, 1))
    b = rng.normal(0.0, 3.0, size=(5, 120))
    diff = intervals.seed_t_difference(a, b)
    per_seed = (a - b).mean(axis=1)
    low, high = stats.t.interval(0.95, 4, loc=per_seed.mean(), scale=stats.sem(per_seed))
    np.testing.assert_allclose([diff.mean, diff.low, diff.high], [per_seed.mean(), low, high])
    np.testing.assert_allclose(diff.per_seed, per_seed)
    assert diff.resolved == (not low <= 0 <= high)


def test_seed_t_interval_is_wider_than_the_bootstrap_when_seeds_disagree():
    """Two seeds 20 nats apart: the bootstrap's seed stage sees two values and no t correction;
    the seed-level interval holds 0 where the bootstrap's does not."""
    rng = np.random.default_rng(5)
    noise = rng.normal(0.0, 1.0, size=(2, 300))
    a = noise + np.array([[-58.3], [-78.3]])
    boot = intervals.paired_difference(a, np.zeros_like(a))
    seed = intervals.seed_t_difference(a, np.zeros_like(a))
    assert boot.resolved and not seed.resolved
    assert seed.high - seed.low > 5 * (boot.high - boot.low)


def test_seed_t_interval_of_a_per_seed_score_such_as_the_fd():
    """FD of σ = 0.126 against σ = 0.682 in five seeds, one number per seed: the interval is the
    one-sample t-interval of the five differences (scipy's)."""
    fd_a = np.array([[165.0], [200.0], [181.0], [172.0], [190.0]])
    fd_b = np.array([[33.0], [35.5], [31.0], [36.0], [34.0]])
    diff = intervals.seed_t_difference(fd_a, fd_b)
    d = (fd_a - fd_b)[:, 0]
    low, high = stats.t.interval(0.95, 4, loc=d.mean(), scale=stats.sem(d))
    np.testing.assert_allclose([diff.low, diff.high], [low, high])
    assert diff.resolved and diff.num_examples == 1


@pytest.mark.parametrize(
    "a, b, match",
    [
        (np.zeros((1, 5)), np.zeros((1, 5)), "at least 2 seeds, got 1"),
        (np.zeros((2, 5)), np.zeros((2, 4)), "one shape"),
        (np.zeros(5), np.zeros(5), "one shape"),
        (np.full((2, 3), np.inf), np.zeros((2, 3)), "finite"),
    ],
)
def test_seed_t_interval_refuses_one_seed_and_bad_scores(a, b, match):
    with pytest.raises(ValueError, match=match):
        intervals.seed_t_difference(a, b)

"""vae_jax.report.compare: one rule — each score against its own best fixed σ, chosen on validation,
within one data model, paired by seed and image."""

import dataclasses

import numpy as np
import pytest
from scipy import stats

from vae_jax.report import compare
from vae_jax.report import rows as report_rows


def member(group, sigma, seed, nll, val, nll_refit=None, val_refit=None, likelihood=None):
    return {
        "group": group,
        "likelihood": likelihood or group,
        "remedy": "none",
        "sigma": sigma,
        "sigma_start": sigma,
        "seed": seed,
        "status": "ok",
        "test/iwae_nll": nll,
        "val/iwae_nll": val,
        "test/iwae_nll_refit": nll_refit,
        "val/iwae_nll_refit": val_refit,
    }


ROWS = report_rows.with_index(
    [
        # σ = 0.1 is best on validation as trained; σ = 1 is best refit.
        member("gaussian", 0.1, 0, 10.0, 11.0, 5.0, 6.0),
        member("gaussian", 0.1, 1, 12.0, 13.0, 5.0, 6.0),
        member("gaussian", 1.0, 0, 20.0, 21.0, 3.0, 4.0),
        member("gaussian", 1.0, 1, 22.0, 23.0, 3.0, 4.0),
        member("laplace", 0.2, 1, 1.0, 2.0, 0.5, 1.0),
        member("discretized_logistic", 0.3, 0, -50.0, -49.0),
        member("laplace", 0.2, 0, 2.0, 3.0, 1.5, 2.0),
    ]
)


def per_example(num_examples=20):
    rng = np.random.default_rng(0)
    arrays = {}
    for key, column in (("test_nll", "test/iwae_nll"), ("test_nll_refit", "test/iwae_nll_refit")):
        table = np.full((len(ROWS), num_examples), np.nan)
        for r in ROWS:
            if r[column] is not None:
                table[r["_index"]] = r[column] + rng.normal(size=num_examples)
        arrays[key] = table
    return arrays


def test_the_best_fixed_sigma_is_chosen_on_validation_for_each_score():
    assert compare.best_fixed_sigma(ROWS, "gaussian")[0] == 0.1
    assert compare.best_fixed_sigma(ROWS, "gaussian", "_refit")[0] == 1.0
    assert [r["seed"] for r in compare.best_fixed_sigma(ROWS, "gaussian")[1]] == [0, 1]


def t_interval(a, b):
    """The seed-level paired t-interval by hand: per-seed mean differences, scipy's t quantile."""
    per_seed = (a - b).mean(axis=1)
    half = stats.t.ppf(0.975, len(per_seed) - 1) * stats.sem(per_seed)
    return per_seed.mean(), per_seed.mean() - half, per_seed.mean() + half


def test_each_score_is_compared_with_its_own_best():
    arrays = per_example()
    laplace = [ROWS[4], ROWS[6]]
    trained = compare.against_best(laplace, ROWS, "gaussian", arrays)
    refit = compare.against_best(laplace, ROWS, "gaussian", arrays, "_refit")
    # Paired by seed (0, 1): laplace rows 6, 4 against σ = 0.1's rows 0, 1 as trained, against
    # σ = 1's rows 2, 3 refit; a t-interval over the two seeds' mean differences.
    for diff, key, best in ((trained, "test_nll", [0, 1]), (refit, "test_nll_refit", [2, 3])):
        expected = t_interval(arrays[key][[6, 4]], arrays[key][best])
        np.testing.assert_allclose((diff.mean, diff.low, diff.high), expected, rtol=1e-9)
        assert diff.num_seeds == 2 and diff.method == "paired t over seeds"
    assert trained.mean < 0 and refit.mean < 0


def test_one_shared_seed_gives_no_interval():
    """A seed-level interval needs two seeds: one shared seed is stated without one."""
    assert compare.against_best([ROWS[4]], ROWS, "gaussian", per_example()) is None


def test_fd_difference_is_the_seed_level_interval_of_per_seed_fds():
    a = [
        dict(ROWS[0], **{"test/fd_prior_mean": 40.0}),
        dict(ROWS[1], **{"test/fd_prior_mean": 44.0}),
    ]
    b = [
        dict(ROWS[2], **{"test/fd_prior_mean": 90.0}),
        dict(ROWS[3], **{"test/fd_prior_mean": 70.0}),
    ]
    diff = compare.fd_difference(a, b, "test/fd_prior_mean")
    expected = t_interval(np.array([[40.0], [44.0]]), np.array([[90.0], [70.0]]))
    np.testing.assert_allclose((diff.mean, diff.low, diff.high), expected, rtol=1e-9)
    assert compare.fd_said(diff) == (
        f"{expected[0]:+.1f} (95% CI {expected[1]:+.1f} to {expected[2]:+.1f}, not resolved)"
    )
    assert compare.fd_difference(a[:1], b, "test/fd_prior_mean") is None
    assert compare.fd_difference(a, b, "test/fd_prior_sample") is None  # no FD: no interval
    assert compare.fd_said(None) == "–"


@pytest.mark.parametrize("same", [True, False])
def test_a_self_comparison_has_a_zero_width_interval(same):
    """The rule itself: a member against itself is 0 with a zero-width interval (not resolved),
    which is why reports skip it rather than state it."""
    arrays = per_example()
    members = [ROWS[0], ROWS[1]]
    diff = compare.difference(members, members if same else [ROWS[2], ROWS[3]], arrays)
    assert (diff.low == diff.high == 0.0) == same


def test_no_difference_across_data_models_or_without_scores():
    arrays = per_example()
    logistic = [ROWS[5]]
    assert logistic[0]["data_model"] == "discrete" and ROWS[0]["data_model"] == "continuous"
    assert compare.against_best(logistic, ROWS, "gaussian", arrays) is None
    assert compare.against_best([ROWS[4]], ROWS, "gaussian", None) is None
    assert compare.said(None, 2.0) == "+2.0 nats (no interval)"


def test_ranking_within_a_data_model_uses_each_members_best_calibrated_score():
    ranked = compare.ranking(ROWS, "gaussian", "continuous")
    # laplace refit val 1.0, best fixed σ refit (σ = 1) val 4.0.
    assert [(name, suffix) for name, suffix, _ in ranked] == [
        ("laplace", "_refit"),
        ("best fixed σ = 1", "_refit"),
    ]
    assert [name for name, _, _ in compare.ranking(ROWS, "gaussian", "discrete")] == [
        "discretized_logistic"
    ]


def test_seed_difference_of_a_per_seed_score_with_sign_and_shift_by_hand():
    """−ELBO of a + shift − (−ELBO of b), seeds paired by number: scipy's one-sample t over the
    per-seed differences."""
    a = [dict(ROWS[1], **{"test/elbo": -7.0}), dict(ROWS[0], **{"test/elbo": -3.0})]
    b = [dict(ROWS[2], **{"test/elbo": -1.0}), dict(ROWS[3], **{"test/elbo": -4.0})]
    diff = compare.seed_difference(a, b, "test/elbo", sign=-1.0, shift=2.0)
    per_seed = np.array([3.0 + 2.0 - 1.0, 7.0 + 2.0 - 4.0])  # seed 0, seed 1
    half = stats.t.ppf(0.975, 1) * per_seed.std(ddof=1) / np.sqrt(2)
    np.testing.assert_allclose(
        (diff.mean, diff.low, diff.high),
        (per_seed.mean(), per_seed.mean() - half, per_seed.mean() + half),
        rtol=1e-12,
    )
    assert compare.seed_difference(a, b, "test/elbo_refit") is None  # no such score


def test_eight_bit_labels_and_shifts_follow_the_registrys_capabilities(monkeypatch):
    """A family's label and offset come from its data, not its name: a renamed discretised
    logistic is an exact probability, a renamed Gaussian a bound shifted by D·log K."""
    from vae_jax import likelihoods

    for twin, source in (("pixels_twin", "discretized_logistic"), ("density_twin", "gaussian")):
        monkeypatch.setitem(
            likelihoods.LIKELIHOODS,
            twin,
            dataclasses.replace(likelihoods.get_likelihood(source), name=twin),
        )
    assert compare.eight_bit_label("pixels_twin") == compare.EXACT
    assert compare.eight_bit_label("density_twin") == compare.BOUND
    assert compare.eight_bit_label("continuous_bernoulli") == compare.BOUND
    assert compare.eight_bit_label("bernoulli") is None
    assert compare.eight_bit_shift("pixels_twin", 784, 256) == 0.0
    np.testing.assert_allclose(compare.eight_bit_shift("density_twin", 64, 17), 64 * np.log(17))
    with pytest.raises(ValueError, match="likelihood='bernoulli' scores binarised pixels"):
        compare.eight_bit_shift("bernoulli", 784, 256)


def test_eight_bit_ranking_puts_every_data_model_but_binarised_on_one_scale():
    """The discretised logistic (val −49) and the densities (+ D·log K) on one scale: with
    D = 1 and K = 256 the densities move up by log 256 = 5.5 nats, so σ = 1 refit (val 4.0 →
    9.5) and laplace refit (1.0 → 6.5) rank after the logistic; a Bernoulli is left out."""
    rows = report_rows.with_index(
        [
            *ROWS,
            member("discretized_logistic", 0.3, 1, -52.0, -49.0),
            member("bernoulli", 0, 0, 1.0, 1.0),
        ]
    )
    ranked = compare.eight_bit_ranking(rows, "gaussian", num_dims=1, num_bins=256)
    assert [(c.name, c.label) for c in ranked] == [
        ("discretized_logistic", compare.EXACT),
        ("laplace", compare.BOUND),
        ("best fixed σ = 1", compare.BOUND),
    ]
    np.testing.assert_allclose(ranked[1].nll(), 1.0 + np.log(256))  # laplace refit (0.5, 1.5)
    diff = compare.eight_bit_difference(ranked[1], ranked[0])
    per_seed = np.array([1.5 + np.log(256) + 50.0, 0.5 + np.log(256) + 52.0])  # seed 0, seed 1
    half = stats.t.ppf(0.975, 1) * stats.sem(per_seed)
    np.testing.assert_allclose(
        (diff.mean, diff.low, diff.high),
        (per_seed.mean(), per_seed.mean() - half, per_seed.mean() + half),
        rtol=1e-12,
    )


def scored(seed, elbo, nll):
    """A member with hand-made per-seed ELBO and IWAE NLL, as trained."""
    return {"seed": seed, "test/elbo": elbo, "test/iwae_nll": nll}


@pytest.mark.parametrize(
    ("a", "b", "verdict"),
    [
        # A better by both bounds in every seed, with little spread: resolved.
        ([(-110.0, 100.0), (-111.0, 101.0), (-112.0, 102.0)], [(-120.0, 110.0)] * 3, "resolved"),
        # The IWAE bound puts A ahead, the ELBO behind, both resolved: the signs disagree.
        (
            [(-125.0, 100.0), (-126.0, 101.0), (-125.5, 100.5)],
            [(-120.0, 110.0)] * 3,
            "indistinguishable",
        ),
        # Both ahead, but the IWAE interval holds 0 (the seeds spread by ±30 nats).
        (
            [(-110.0, 80.0), (-111.0, 140.0), (-112.0, 100.0)],
            [(-120.0, 110.0)] * 3,
            "indistinguishable",
        ),
    ],
)
def test_a_claim_is_resolved_only_when_both_bounds_resolve_it_with_one_sign(a, b, verdict):
    members_a = [scored(s, *v) for s, v in enumerate(a)]
    members_b = [scored(s, *v) for s, v in enumerate(b)]
    claim = compare.claim(members_a, members_b)
    np.testing.assert_allclose(claim.iwae.mean, np.mean([v[1] for v in a]) - 110.0)
    np.testing.assert_allclose(claim.elbo.mean, -np.mean([v[0] for v in a]) - 120.0)  # −ELBO
    assert claim.verdict == verdict
    assert claim.text().endswith(f": {verdict}") and claim.text().startswith("IWAE ")


def test_a_claim_without_one_bound_has_no_verdict():
    a = [{"seed": s, "test/iwae_nll": 1.0 + s} for s in range(2)]
    b = [{"seed": s, "test/iwae_nll": 3.0 * s} for s in range(2)]
    claim = compare.claim(a, b)
    assert claim.verdict == "no interval" and claim.elbo is None
    half = stats.t.ppf(0.975, 1) * stats.sem([1.0 - 0.0, 2.0 - 3.0])  # mean 0 over seeds
    assert claim.text() == (
        f"IWAE +0.0 nats (95% CI {-half:+.1f} to {half:+.1f}, not resolved), ELBO –: no interval"
    )


def test_a_claim_with_one_seed_states_the_bare_means():
    a = [scored(0, -110.0, 100.0)]
    b = [scored(0, -120.0, 103.0)]
    text = compare.claim(a, b, shift=2.0).text()
    assert text == "IWAE -1.0 nats (no interval), ELBO -8.0 nats (no interval): no interval"


def test_close_claims_name_the_learned_scale_and_pairs_closer_than_their_seeds_spread():
    """laplace (a shared learned scale) is stated against the best fixed σ by both bounds even
    when far from it; the logistic and laplace are about 57 nats apart, their seeds 2 apart: no
    claim."""
    rows = report_rows.with_index(
        [
            *(dict(r, **{"test/elbo": -r["test/iwae_nll"] - 1.0}) for r in ROWS),
            member("discretized_logistic", 0.3, 1, -52.0, -49.0),
        ]
    )
    for r in rows:
        if r["test/iwae_nll_refit"] is not None:
            r["test/elbo_refit"] = -r["test/iwae_nll_refit"] - 1.0
    rows[-1]["test/elbo"] = 51.0
    ranked = compare.eight_bit_ranking(rows, "gaussian", num_dims=1, num_bins=256)
    claims = compare.close_claims(ranked, rows, "gaussian")
    assert [(compare.named(a), compare.named(b)) for a, b, _ in claims] == [
        ("laplace refit", "best fixed σ = 1 refit")
    ]
    claim = claims[0][2]
    assert claim.iwae.mean == pytest.approx(1.0 - 3.0) and claim.elbo.mean == pytest.approx(-2.0)


def test_closer_than_seeds_weighs_the_difference_against_the_seeds_spread():
    near = [scored(0, 0.0, 10.0), scored(1, 0.0, 14.0)]  # range 4
    far = [scored(0, 0.0, 20.0), scored(1, 0.0, 21.0)]
    base = [scored(0, 0.0, 11.0), scored(1, 0.0, 11.0)]
    assert compare.closer_than_seeds(near, base, "test/iwae_nll", "test/iwae_nll")  # 1 < 4
    assert not compare.closer_than_seeds(far, base, "test/iwae_nll", "test/iwae_nll")  # 9.5 > 1
    # Shifted onto another scale, the same pair is 9.5 − 9 = 0.5 apart: within 1.
    assert compare.closer_than_seeds(far, base, "test/iwae_nll", "test/iwae_nll", shift=-9.0)


def test_a_fixed_sigma_within_the_seeds_spread_of_the_best_is_a_claim_by_both_bounds():
    """As trained σ = 0.1 is best and σ = 1 is 10 nats behind it in both seeds: no claim. Refit,
    σ = 1 is best and σ = 0.1 is 2 nats behind it, per seed +4 and 0 (range 4): a claim, stated
    by both bounds."""
    rows = [dict(r, **{"test/elbo": -r["test/iwae_nll"]}) for r in ROWS]
    rows[0]["test/iwae_nll_refit"], rows[1]["test/iwae_nll_refit"] = 7.0, 3.0
    for r in rows:
        if r["test/iwae_nll_refit"] is not None:
            r["test/elbo_refit"] = -r["test/iwae_nll_refit"] - 1.0
    ranked = compare.eight_bit_ranking(rows, "gaussian", num_dims=1, num_bins=256)
    claims = compare.close_claims(ranked, rows, "gaussian")
    grid = [(compare.named(a), compare.named(b), c) for a, b, c in claims if a.name == "σ = 0.1"]
    assert [(a, b) for a, b, _ in grid] == [("σ = 0.1 refit", "best fixed σ = 1 refit")]
    claim = grid[0][2]
    assert claim.iwae.mean == pytest.approx(2.0) and claim.elbo.mean == pytest.approx(2.0)
    assert claim.verdict == "indistinguishable"  # per-seed +4 and 0: the t-interval holds 0

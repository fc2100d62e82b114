"""The one comparison rule every report uses: like with like, chosen on validation data.

- The yardstick is the best fixed σ: among the main group's no-remedy members, the σ whose mean
  VALIDATION NLL is lowest — chosen separately for each score, as trained (`suffix=''`) and
  refit (`suffix='_refit'`).
- A member's as-trained test NLL is compared with the yardstick's as-trained test NLL; its refit
  test NLL with the refit yardstick's refit test NLL. Never one against the other.
- Members are compared only within one data model (`Likelihood.data_model`): a density on
  dequantised pixels, a probability over pixel values and a probability of binarised pixels
  are numbers about different data.
- Every difference is paired over the same test images and seeds, with a seed-level 95%
  interval (`vae_jax.intervals.seed_t_difference`): a paired t-interval over the seeds' mean
  differences (Student t, S − 1 degrees of freedom), so it covers training randomness; one whose
  interval holds 0 is "not resolved". A difference of FDs (one value per seed) is the same
  interval over [S, 1] per-seed FDs.

- Across data models, families are ranked on the 8-bit scale (`eight_bit_ranking`): a density
  on dequantised pixels x = (k + u)/K is moved there by + D·log K nats, which makes its NLL an
  upper bound on the NLL of the 8-bit image under the discrete model it induces (docs/design.md,
  "Families on the 8-bit scale"); a probability over the K pixel values is there already.
  Binarised pixels are other data and are not ranked with either.
- A claim within a few nats is stated by both bounds, the ELBO and the IWAE bound, each with
  its seed-level interval (`claim`); it is "indistinguishable" unless both resolve it the same way.

Rows are results.csv's (dicts) with `_index`, their row in per_example.npz (`with_index`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from vae_jax import intervals, likelihoods
from vae_jax.report.rows import PLAIN, is_plain, mean, ok_rows

# What a family's number on the 8-bit scale is, by its registry capability.
BOUND = "bound (dequantised density + IWAE)"
EXACT = "exact probability of the 8-bit pixels (IWAE bound)"


def fixed_sigma_groups(rows: list[dict], main: str) -> dict[float, list[dict]]:
    """σ -> the finished no-remedy members of the main group trained at that fixed σ."""
    grouped: dict[float, list[dict]] = {}
    for r in ok_rows(rows):
        if r["group"] == main and (r.get("remedy") or PLAIN) == PLAIN:
            grouped.setdefault(r["sigma"], []).append(r)
    return dict(sorted(grouped.items()))


def members_at(rows: list[dict], main: str, sigma: float) -> list[dict]:
    """The no-remedy members of the main group within 1% of `sigma` (e.g. σ² = ½), or []."""
    groups = fixed_sigma_groups(rows, main)
    if not groups:
        return []
    nearest = min(groups, key=lambda s: abs(s - sigma))
    return [r for r in groups[nearest] if abs(r["sigma"] - sigma) / sigma < 0.01]


def best_fixed_sigma(rows: list[dict], main: str, suffix: str = "") -> tuple[float, list[dict]]:
    """(σ, its members) of the fixed σ with the best mean validation NLL for this score, or
    None when no member has that score."""
    scored = {
        s: v
        for s, members in fixed_sigma_groups(rows, main).items()
        if (v := mean(members, "val/iwae_nll" + suffix)) is not None
    }
    if not scored:
        return None
    best = min(scored, key=scored.get)
    return best, fixed_sigma_groups(rows, main)[best]


def per_example_matrix(
    members: list[dict], per_example: dict[str, np.ndarray], key: str, seeds: list[int]
) -> np.ndarray | None:
    """[seeds, examples] of `key` ('test_nll', 'test_nll_refit', …) for `members` in `seeds`'
    order, or None if any is missing."""
    by_seed = {r["seed"]: r for r in members}
    matrix = np.stack([per_example[key][by_seed[s]["_index"]] for s in seeds])
    return None if not np.all(np.isfinite(matrix)) else matrix


def difference(
    a: list[dict],
    b: list[dict],
    per_example: dict[str, np.ndarray] | None,
    suffix: str = "",
    suffix_b: str | None = None,
) -> intervals.Difference | None:
    """Test NLL of members `a` − members `b` for one score (`suffix`; `suffix_b` for b's, when
    each side is scored at its own best calibration), paired over the seeds both have and the
    same test images, with the seed-level interval; None across data models, without
    per-example scores, with fewer than 2 shared seeds, or where either lacks the score."""
    if not a or not b or {r["data_model"] for r in a} != {r["data_model"] for r in b}:
        return None
    seeds = sorted({r["seed"] for r in a} & {r["seed"] for r in b})
    if per_example is None or len(seeds) < 2:
        return None
    keys = ("test_nll" + suffix, "test_nll" + (suffix if suffix_b is None else suffix_b))
    matrices = [
        per_example_matrix(m, per_example, k, seeds) for m, k in zip((a, b), keys, strict=True)
    ]
    if any(m is None for m in matrices):
        return None
    return intervals.seed_t_difference(*matrices)


def seed_difference(
    a: list[dict],
    b: list[dict],
    key_a: str,
    key_b: str | None = None,
    *,
    sign: float = 1.0,
    shift: float = 0.0,
) -> intervals.SeedDifference | None:
    """sign·a[key_a] + shift − sign·b[key_b] over the seeds both members have, each seed's
    value one [S, 1] score, with the seed-level paired t-interval. A per-image score's seed
    means are results.csv's values, so this is `difference`'s interval without per_example.npz.

    sign = −1 turns an ELBO into the NLL bound −ELBO; `shift` is a's offset relative to b's on a
    common scale (`eight_bit_shift`). None with fewer than 2 shared seeds or a missing value.
    """
    key_b = key_a if key_b is None else key_b
    by_seed = [{r["seed"]: r.get(k) for r in m} for m, k in ((a, key_a), (b, key_b))]
    seeds = sorted(set(by_seed[0]) & set(by_seed[1]))
    if len(seeds) < 2 or any(m[s] is None for m in by_seed for s in seeds):
        return None
    values = sign * np.array([[by_seed[i][s] for s in seeds] for i in (0, 1)], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        return None
    return intervals.seed_t_difference(values[0][:, None] + shift, values[1][:, None])


def fd_difference(a: list[dict], b: list[dict], key: str) -> intervals.SeedDifference | None:
    """FD `key` ('test/fd_prior_mean', …) of members `a` − members `b`, paired over the seeds
    both have (each seed's FD is one [S, 1] score); None with fewer than 2 such seeds or where
    either lacks the FD."""
    return seed_difference(a, b, key)


def fd_said(diff: intervals.Difference | None) -> str:
    """An FD difference as a report states it: '-144.0 (95% CI -… to -…)', with ', not
    resolved' when the interval holds 0; '–' without one."""
    if diff is None:
        return "–"
    return diff.text().replace(" nats (", " (")


def against_best(
    members: list[dict], rows: list[dict], main: str, per_example, suffix: str = ""
) -> intervals.Difference | None:
    """`members` against the best fixed σ of the same score (the rule above)."""
    best = best_fixed_sigma(rows, main, suffix)
    return None if best is None else difference(members, best[1], per_example, suffix)


def said(diff: intervals.Difference | None, fallback: float | None = None) -> str:
    """A difference as a report states it; without an interval (no per-example scores, as in a
    workdir written before per_example.npz), the bare mean says so."""
    if diff is not None:
        return diff.text()
    if fallback is None:
        return "–"
    return f"{fallback:+.1f} nats (no interval)"


def both_bounds_verdict(a: list[dict], b: list[dict], diff, suffix: str = "") -> str:
    """`verdict` of members `a` − `b` by the IWAE bound (`diff`) checked against the ELBO's
    (`claim`): 'ahead of it' / 'behind it' only when both resolve it with one sign,
    'indistinguishable' when not, and the IWAE verdict marked '(IWAE bound only)' where the
    rows have no ELBO of that score."""
    both = claim(a, b, suffix)
    if both.elbo is None:
        return f"{verdict(diff)} (IWAE bound only)"
    return verdict(diff) if both.verdict == "resolved" else both.verdict


def verdict(diff: intervals.Difference | None) -> str:
    """'ahead of it' / 'behind it' when the interval excludes 0, else 'not resolved'."""
    if diff is None:
        return "no interval"
    if not diff.resolved:
        return "not resolved"
    return "ahead of it" if diff.mean < 0 else "behind it"


def best_score(members: list[dict]) -> str:
    """The suffix of a member's best-calibrated score: '_refit' where its scale was refitted on
    validation data, '' where it has no scale to refit."""
    return "_refit" if mean(members, "test/iwae_nll_refit") is not None else ""


def ranking(rows: list[dict], main: str, data_model: str) -> list[tuple[str, str, list[dict]]]:
    """(name, score suffix, members) of one data model's candidates, best first by mean
    VALIDATION NLL: every family other than the main group, each at its best-calibrated score,
    and the main group's best fixed σ for that score."""
    candidates = []
    groups = dict.fromkeys(r["group"] for r in ok_rows(rows) if r["data_model"] == data_model)
    for group in groups:
        members = [r for r in ok_rows(rows) if r["group"] == group]
        if group == main:
            suffix = best_score(members)
            best = best_fixed_sigma(rows, main, suffix)
            if best is not None:
                candidates.append((f"best fixed σ = {best[0]:.3g}", suffix, best[1]))
            continue
        members = [r for r in members if is_plain(r)]
        suffix = best_score(members)
        if members and mean(members, "val/iwae_nll" + suffix) is not None:
            candidates.append((group, suffix, members))
    return sorted(candidates, key=lambda c: mean(c[2], "val/iwae_nll" + c[1]))


def eight_bit_label(likelihood: str) -> str | None:
    """What family `likelihood`'s NLL is on the 8-bit scale, by its registry capability: a bound
    (a density on dequantised pixels, + D·log K), an exact probability of the pixel values (both
    through the IWAE bound), or None for binarised pixels (other data)."""
    family = likelihoods.get_likelihood(likelihood)
    if family.dequantized_data:
        return BOUND
    return EXACT if family.discrete_data else None


def eight_bit_shift(likelihood: str, num_dims: int, num_bins: int) -> float:
    """Nats added to family `likelihood`'s NLL per image to put it on the 8-bit scale: D·log K
    for a density on pixels dequantised to [0, 1] (the change of variables to the bins' scale),
    0 for a probability over the K pixel values (ValueError for binarised pixels)."""
    if eight_bit_label(likelihood) is None:
        raise ValueError(f"likelihood={likelihood!r} scores binarised pixels: no 8-bit scale")
    return (
        num_dims * math.log(num_bins)
        if likelihoods.get_likelihood(likelihood).dequantized_data
        else 0.0
    )


@dataclasses.dataclass(frozen=True)
class Ranked:
    """One family on the 8-bit scale: its members scored at `suffix`, `shift` nats added."""

    name: str
    suffix: str
    members: list[dict]
    label: str
    shift: float

    def nll(self, split: str = "test") -> float:
        """Mean over seeds of the split's IWAE NLL on the 8-bit scale, nats per image."""
        return mean(self.members, f"{split}/iwae_nll{self.suffix}") + self.shift


def eight_bit_ranking(rows: list[dict], main: str, num_dims: int, num_bins: int) -> list[Ranked]:
    """Every family not on binarised pixels, best first by its mean VALIDATION NLL on the 8-bit
    scale: each of `ranking`'s candidates (the main group by its best fixed σ, refit where it
    refits), labelled and shifted by `eight_bit_label` and `eight_bit_shift`."""
    ranked = []
    for data_model in dict.fromkeys(r["data_model"] for r in ok_rows(rows)):
        for name, suffix, members in ranking(rows, main, data_model):
            likelihood = members[0]["likelihood"]
            label = eight_bit_label(likelihood)
            if label is not None:
                shift = eight_bit_shift(likelihood, num_dims, num_bins)
                ranked.append(Ranked(name, suffix, members, label, shift))
    return sorted(ranked, key=lambda c: c.nll("val"))


def eight_bit_difference(a: Ranked, b: Ranked) -> intervals.SeedDifference | None:
    """a − b of the test IWAE NLL on the 8-bit scale, nats per image, with its seed-level
    interval (`seed_difference`)."""
    key = "test/iwae_nll"
    return seed_difference(
        a.members, b.members, key + a.suffix, key + b.suffix, shift=a.shift - b.shift
    )


@dataclasses.dataclass(frozen=True)
class Claim:
    """A − B by both bounds, nats per image (negative: A scores the higher likelihood): the
    ELBO's as −ELBO and the IWAE bound's NLL, each with its seed-level interval."""

    elbo: intervals.Difference | None
    iwae: intervals.Difference | None
    # The bare mean differences (−ELBO, IWAE NLL), stated where a bound has no interval.
    means: tuple[float | None, float | None] = (None, None)

    @property
    def verdict(self) -> str:
        """'resolved' when both intervals exclude 0 with one sign; 'no interval' where a bound
        lacks one; else 'indistinguishable'."""
        if self.elbo is None or self.iwae is None:
            return "no interval"
        agree = np.sign(self.elbo.mean) == np.sign(self.iwae.mean)
        return (
            "resolved"
            if agree and self.elbo.resolved and self.iwae.resolved
            else "indistinguishable"
        )

    def text(self) -> str:
        """'IWAE +0.7 nats (95% CI …), ELBO −1.8 nats (95% CI …): indistinguishable'."""
        elbo, iwae = (said(d, m) for d, m in zip((self.elbo, self.iwae), self.means, strict=True))
        return f"IWAE {iwae}, ELBO {elbo}: {self.verdict}"


def claim(
    a: list[dict],
    b: list[dict],
    suffix_a: str = "",
    suffix_b: str | None = None,
    shift: float = 0.0,
) -> Claim:
    """Members `a` − members `b` by the ELBO (test/elbo) and the IWAE bound (test/iwae_nll),
    each at its score (`suffix_a`, `suffix_b`: '' as trained, '_refit'), paired over seeds."""
    suffix_b = suffix_a if suffix_b is None else suffix_b
    keys = {"test/elbo": -1.0, "test/iwae_nll": 1.0}
    means = []
    for key, sign in keys.items():
        mean_a, mean_b = mean(a, key + suffix_a), mean(b, key + suffix_b)
        both = mean_a is not None and mean_b is not None
        means.append(sign * (mean_a - mean_b) + shift if both else None)
    elbo, iwae = (
        seed_difference(a, b, key + suffix_a, key + suffix_b, sign=sign, shift=shift)
        for key, sign in keys.items()
    )
    return Claim(elbo, iwae, tuple(means))


def spread(members: list[dict], key: str) -> float:
    """The seeds' range (max − min) of `key` over `members`; 0 for one seed."""
    values = [r[key] for r in members if r.get(key) is not None]
    return float(max(values) - min(values)) if values else 0.0


def closer_than_seeds(
    a: list[dict], b: list[dict], key_a: str, key_b: str, shift: float = 0.0
) -> bool:
    """Whether a[key_a] + shift − b[key_b] (means over seeds) is smaller in size than the seeds'
    spread: the larger of each side's range over seeds and the range of the per-seed
    differences (`seed_difference`)."""
    diff = seed_difference(a, b, key_a, key_b, shift=shift)
    per_seed = diff.per_seed if diff is not None else (0.0,)
    width = max(spread(a, key_a), spread(b, key_b), max(per_seed) - min(per_seed))
    return abs(mean(a, key_a) + shift - mean(b, key_b)) < width


def close_claims(
    ranked: list[Ranked], rows: list[dict], main: str
) -> list[tuple[Ranked, Ranked, Claim]]:
    """The claims within a few nats, each by both bounds (`claim`): every family whose scale is
    learned as one shared parameter or read off each example (registry capabilities) against the
    best fixed σ, and any other pair of `ranked` whose test NLLs differ by less than their
    seeds' spread (`closer_than_seeds`), in ranking order, the better-ranked first; then a
    family with σ read off each example as trained against the best fixed σ as trained, and
    every other fixed σ of the grid as close to the best fixed σ of its score (`rows`, `main`:
    the grid)."""
    grid = next((c for c in ranked if c.name.startswith("best fixed σ")), None)
    pairs = []
    for a, b in itertools.combinations(ranked, 2):
        family = {likelihoods.get_likelihood(c.members[0]["likelihood"]) for c in (a, b)}
        named = grid in (a, b) and any(f.shared_learned_scale or f.optimal_scale for f in family)
        key_a, key_b = "test/iwae_nll" + a.suffix, "test/iwae_nll" + b.suffix
        if named or closer_than_seeds(a.members, b.members, key_a, key_b, a.shift - b.shift):
            pairs.append((a, b, claim(a.members, b.members, a.suffix, b.suffix, a.shift - b.shift)))
    best = best_fixed_sigma(rows, main)
    for c in ranked:
        optimal = likelihoods.get_likelihood(c.members[0]["likelihood"]).optimal_scale
        if grid is None or best is None or not optimal or mean(c.members, "test/iwae_nll") is None:
            continue
        trained = dataclasses.replace(c, suffix="")
        yardstick = dataclasses.replace(
            grid, name=f"best fixed σ = {best[0]:.3g}", suffix="", members=best[1]
        )
        pairs.append((trained, yardstick, claim(c.members, best[1], shift=c.shift - grid.shift)))
    return pairs + ([] if grid is None else _close_to_the_grid(grid, rows, main))


def _close_to_the_grid(grid: Ranked, rows: list[dict], main: str) -> list[tuple]:
    """Every other fixed σ against the best fixed σ of the same score (as trained, refit) where
    their test NLLs differ by less than their seeds' spread (`closer_than_seeds`)."""
    pairs = []
    for suffix in ("", "_refit"):
        best = best_fixed_sigma(rows, main, suffix)
        if best is None:
            continue
        yardstick = dataclasses.replace(
            grid, name=f"best fixed σ = {best[0]:.3g}", suffix=suffix, members=best[1]
        )
        key = "test/iwae_nll" + suffix
        for sigma, members in fixed_sigma_groups(rows, main).items():
            if sigma == best[0] or mean(members, key) is None:
                continue
            if closer_than_seeds(members, best[1], key, key):
                other = dataclasses.replace(yardstick, name=f"σ = {sigma:.3g}", members=members)
                pairs.append((other, yardstick, claim(members, best[1], suffix)))
    return pairs


def named(c: Ranked) -> str:
    """A ranked family as a report names it: its name, ' refit' where scored refit."""
    return c.name + (" refit" if c.suffix else "")

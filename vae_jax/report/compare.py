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

Rows are results.csv's (dicts) with `_index`, their row in per_example.npz (`with_index`).
"""

from __future__ import annotations

import numpy as np

from vae_jax import intervals
from vae_jax.report.rows import PLAIN, is_plain, mean, ok_rows


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


def fd_difference(a: list[dict], b: list[dict], key: str) -> intervals.SeedDifference | None:
    """FD `key` ('test/fd_prior_mean', …) of members `a` − members `b`, paired over the seeds
    both have (each seed's FD is one [S, 1] score); None with fewer than 2 such seeds or where
    either lacks the FD."""
    by_seed = [{r["seed"]: r.get(key) for r in m} for m in (a, b)]
    seeds = sorted(set(by_seed[0]) & set(by_seed[1]))
    if len(seeds) < 2:
        return None
    values = np.array([[by_seed[i][s] for s in seeds] for i in (0, 1)], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        return None
    return intervals.seed_t_difference(values[0][:, None], values[1][:, None])


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

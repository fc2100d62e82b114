"""report.md's "Where each family earns its reconstruction term", and README's sentence on it.

The reconstruction log-likelihood at the posterior mean, log p(x | f(E_q[z|x])), split into the
pixels whose level is saturated (k = 0 or the top level of the data as scored) and the interior
ones: results.csv's `test/recon_saturated`, `test/recon_interior` (nats per image, their sum the
whole term), `…_per_pixel` (nats per pixel of each kind) and `test/saturated_fraction`, with
`_refit` versions where a family's scale is refitted (`vae_jax.evaluate.saturation_summary`).
Each family is read at its best-calibrated score (`compare.best_score`: refit where its scale
refits, else as trained) and set against the best fixed σ Gaussian of the same rule
(`compare.best_fixed_sigma`, chosen on validation data); differences are paired over seeds with
the seed-level interval, and only within one data model.
"""

from __future__ import annotations

import math

from vae_jax import intervals
from vae_jax.report import compare
from vae_jax.report.rows import fmt, is_plain, mean, ok_rows

PER_IMAGE = ("test/recon_saturated", "test/recon_interior")
PER_PIXEL = ("test/recon_saturated_per_pixel", "test/recon_interior_per_pixel")
FRACTION = "test/saturated_fraction"
# The Gaussian that plain summed "MSE + KL" trains: σ² = ½.
SUMMED_MSE_SIGMA = math.sqrt(0.5)


def candidates(rows: list[dict], main: str) -> list[tuple[str, str, list[dict]]]:
    """(label, score suffix, members) of every row of the section, each at its best-calibrated
    score: the main group's best fixed σ (first; chosen on validation data) and its σ² = ½
    members, then every other family's plain members, in row order. Only those whose rows
    carry the split (a results.csv written before it has none): [] without a best fixed σ."""
    main_rows = [r for r in ok_rows(rows) if r["group"] == main]
    suffix = compare.best_score(main_rows)
    best = compare.best_fixed_sigma(rows, main, suffix)
    if best is None:
        return []
    found = [(f"best fixed σ = {best[0]:.3g}", suffix, best[1])]
    summed = compare.members_at(rows, main, SUMMED_MSE_SIGMA)
    if summed and summed[0]["sigma"] != best[0]:
        found.append(("σ² = ½ (summed MSE + KL)", suffix, summed))
    for group in dict.fromkeys(r["group"] for r in ok_rows(rows) if r["group"] != main):
        members = [r for r in ok_rows(rows) if r["group"] == group and is_plain(r)]
        if members:
            found.append((group, compare.best_score(members), members))
    return [c for c in found if mean(c[2], PER_IMAGE[0] + c[1]) is not None]


def gain(
    members: list[dict], suffix: str, best: tuple[str, str, list[dict]], column: str
) -> intervals.SeedDifference | None:
    """Column `column` (a nats column without its suffix) of `members` at `suffix` minus the best
    fixed σ's at its own suffix: positive where the family earns more log-likelihood, paired over
    the seeds both have with the seed-level interval (`compare.fd_difference`: one value per
    seed); None across data models or with fewer than 2 shared seeds."""
    _, best_suffix, best_members = best
    if {r["data_model"] for r in members} != {r["data_model"] for r in best_members}:
        return None
    scored = [
        [dict(r, _score=r.get(column + s)) for r in group]
        for group, s in ((members, suffix), (best_members, best_suffix))
    ]
    return compare.fd_difference(*scored, "_score")


def _cell(diff, members: list[dict], suffix: str, best, column: str) -> str:
    """A Δ cell: the seed-level interval, or the difference of means, saying it has no interval,
    where none can be given (fewer than 2 shared seeds); '–' across data models."""
    if diff is not None:
        return diff.short()
    if {r["data_model"] for r in members} != {r["data_model"] for r in best[2]}:
        return "–"
    gap = mean(members, column + suffix) - mean(best[2], column + best[1])
    return f"{gap:+.1f} (no interval)"


def families_section(rows: list[dict], main: str) -> list[str]:
    """The section's lines: one table row per family (mean over seeds), or [] where the rows
    carry no split."""
    found = candidates(rows, main)
    if not found:
        return []
    best = found[0]
    lines = [
        "## Where each family earns its reconstruction term",
        "",
        "The reconstruction log-likelihood at the posterior mean, log p(x | f(E[z|x])) on the "
        "test images, split into saturated pixels (level k = 0 or the top level of the data as "
        "scored) and interior ones: nats (higher is better), mean over seeds; each family at its "
        "best-calibrated score (score column: refit where its scale is refitted on validation "
        "data, else as trained). Δ: the family minus the "
        f"{best[0]}{' refit' if best[1] else ''} Gaussian, with the seed-level 95% interval; "
        "only within one data model (a binarised family's pixels are all saturated; the "
        "discretised logistic's terms are probabilities of pixel values, not densities).",
        "",
        "| family | score | saturated, nats/image | interior, nats/image | saturated, "
        "nats/pixel | interior, nats/pixel | saturated pixels | Δ saturated | Δ interior |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, suffix, members in found:
        cells = [label, "refit" if suffix else "as trained"]
        cells += [fmt(mean(members, c + suffix)) for c in PER_IMAGE]
        cells += [fmt(mean(members, c + suffix), 3) for c in PER_PIXEL]
        fraction = mean(members, FRACTION)
        cells.append("–" if fraction is None else f"{100 * fraction:.1f}%")
        for column in PER_IMAGE:
            if members is best[2]:
                cells.append("0")
                continue
            diff = gain(members, suffix, best, column)
            cells.append(_cell(diff, members, suffix, best, column))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def gain_sentence(
    rows: list[dict], main: str, *, family: str | None = None, num_bins: int = 256
) -> str | None:
    """README's sentence on where a family's gain over the best fixed σ Gaussian comes from —
    `family`'s, or by default the first-ranked family's (`compare.ranking` on the main group's
    data model, the best fixed σ skipped) — from the means over seeds:

        "Of <family>'s +X nats per image over the best fixed σ = s Gaussian in the
         reconstruction term at the posterior mean, +Y (Z%) come from saturated pixels
         (k = 0 or K − 1), which are W% of the test pixels."

    X = Δ saturated + Δ interior, Y = Δ saturated, Z = 100·Y/X; None without the split or when
    `family` is not on the Gaussian's data model."""
    found = candidates(rows, main)
    data_model = next((r["data_model"] for r in ok_rows(rows) if r["group"] == main), None)
    if not found or data_model is None:
        return None
    best = found[0]
    ranked = [
        c for c in compare.ranking(rows, main, data_model) if not c[0].startswith("best fixed σ")
    ]
    name = family if family is not None else (ranked[0][0] if ranked else None)
    first = next((c for c in found if c[0] == name), None)
    if first is None or {r["data_model"] for r in first[2]} != {data_model}:
        return None
    name, suffix, members = first
    saturated, interior = (
        mean(members, c + suffix) - mean(best[2], c + best[1]) for c in PER_IMAGE
    )
    total = saturated + interior
    share = f" ({100 * saturated / total:.0f}%)" if total else ""
    return (
        f"Of `{name}`'s {total:+.1f} nats per image over the {best[0]} Gaussian in the "
        f"reconstruction term at the posterior mean, {saturated:+.1f}{share} come from saturated "
        f"pixels (k = 0 or {num_bins - 1}), which are {100 * mean(members, FRACTION):.1f}% of the "
        "test pixels."
    )

"""report.md's section "What to do instead": the remedies for a badly weighted MSE side by side.

Rows are results.csv's (`vae_jax.sweep`, column `remedy`; `rows.with_index`); the figure is
`plots.plot_remedy_curves`. Every NLL is the β = 1 IWAE bound of a normalised density, whatever
objective the member trained with. Every difference follows `vae_jax.report.compare`'s one rule: as
trained against the best fixed σ as trained, refit against the best fixed σ refit, both chosen on
VALIDATION data, paired over the same test images with a 95% interval.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from vae_jax.report import compare, plots
from vae_jax.report.rows import fitted_on_validation, ok_rows
from vae_jax.report.rows import fmt as _fmt
from vae_jax.report.rows import mean as _mean


@dataclasses.dataclass(frozen=True)
class LearnedFit:
    """How a run's shared learned σ was fitted (`learned_fit`); str() is the report's phrase."""

    on_validation: bool  # set to its MLE on the validation split as it trained
    every: int | None = None  # steps between those fits

    def __str__(self) -> str:
        if self.on_validation:
            return f"fitted on the validation data every {self.every} steps and after the last"
        return "learned by gradient on the training data"


GRADIENT = LearnedFit(on_validation=False)


def remedy_groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """(group, remedy, σ at start) -> its finished members (the seeds), in row order."""
    grouped: dict[tuple, list[dict]] = {}
    for r in ok_rows(rows):
        grouped.setdefault((r["group"], r["remedy"], r["sigma_start"]), []).append(r)
    return grouped


def spread(members: list[dict], key: str = "test/iwae_nll") -> float:
    values = [r[key] for r in members]
    return float(np.max(values) - np.min(values))


def _as_trained_compared(members: list[dict], fit: LearnedFit) -> bool:
    """False for a scale fitted on validation data as it trained: a calibration like the refit's,
    compared refit to refit only."""
    return not (fit.on_validation and fitted_on_validation(members[0]["group"]))


def _cell(members, rows, main, per_example, suffix) -> str:
    best = compare.best_fixed_sigma(rows, main, suffix)
    if best is not None and [r["_index"] for r in members] == [r["_index"] for r in best[1]]:
        return "the yardstick"
    diff = compare.against_best(members, rows, main, per_example, suffix)
    if diff is not None:
        return diff.short()
    nll = _mean(members, "test/iwae_nll" + suffix)
    if best is None or nll is None:
        return "–"
    return f"{nll - _mean(best[1], 'test/iwae_nll' + suffix):+.1f}"


def remedy_table(
    rows: list[dict], main: str, per_example: dict | None = None, fit: LearnedFit = GRADIENT
) -> list[str]:
    """One line per (remedy, σ at start); 'vs best': the paired difference and its 95% interval
    against the best fixed σ of the same score (`fit`: how a learned σ was fitted)."""
    table = [
        "| remedy | σ at start | final σ | val NLL | test NLL | vs best fixed σ | "
        "test NLL refit | refit vs best fixed σ refit | bits/dim | active units | MSE | KL |",
        "|" + "---|" * 12,
    ]
    for (_, remedy, start), members in remedy_groups(rows).items():
        trained = "refit only"
        if _as_trained_compared(members, fit):
            trained = _cell(members, rows, main, per_example, "")
        table.append(
            f"| {remedy} | {_fmt(start, 3) if start is not None else '–'} | "
            f"{_fmt(_mean(members, 'sigma'), 3)} | {_fmt(_mean(members, 'val/iwae_nll'))} | "
            f"{_fmt(_mean(members, 'test/iwae_nll'))} | "
            f"{trained} | "
            f"{_fmt(_mean(members, 'test/iwae_nll_refit'))} | "
            f"{_cell(members, rows, main, per_example, '_refit')} | "
            f"{_fmt(_mean(members, 'test/bits_per_dim'), 3)} | "
            f"{_fmt(_mean(members, 'test/active_units'))} | "
            f"{_fmt(_mean(members, 'test/recon_mse'), 4)} | {_fmt(_mean(members, 'test/kl'))} |"
        )
    return table


def learned_fit(likelihood_config) -> LearnedFit:
    """How a run's learned σ was fitted, from its config's `likelihood` fields (config.json of a
    run from before `sigma_fit` existed: by gradient, all there was)."""
    if likelihood_config.get("sigma_fit", "gradient") == "validation":
        return LearnedFit(on_validation=True, every=likelihood_config["sigma_fit_every"])
    return GRADIENT


def learned_sigma_verdict(
    rows: list[dict],
    main: str,
    fit: LearnedFit = GRADIENT,
    per_example: dict | None = None,
) -> list[str]:
    """The default learned σ against the best fixed σ (`comparison`'s rule). A σ fitted on the
    validation data as it trains is already calibrated as the refit is, so it is compared
    refit to refit only; one learned by gradient is compared under both scores. `fit`: how it
    was fitted (`learned_fit`)."""
    learned = [r for r in ok_rows(rows) if r["remedy"] == "learned_sigma"]
    best = compare.best_fixed_sigma(rows, main)
    if best is None or not learned:
        return []
    on_validation = fit.on_validation
    lines = [
        f"- **Learned σ, {fit}** (from σ₀ = {_fmt(learned[0]['sigma_start'], 3)}, the pPCA σ "
        f"of the training data): test NLL {_mean(learned, 'test/iwae_nll'):.1f} nats; it ends "
        f"at σ = {_mean(learned, 'sigma'):.3g}, against √(training MSE) = "
        f"{np.sqrt(_mean(learned, 'train/recon_mse')):.3g} and √(test MSE) = "
        f"{np.sqrt(_mean(learned, 'test/recon_mse')):.3g}; train NLL "
        f"{_mean(learned, 'train/iwae_nll'):.1f} against {_mean(best[1], 'train/iwae_nll'):.1f} "
        f"for the best fixed σ = {best[0]:.3g}."
    ]
    if on_validation:
        lines[0] = lines[0] + (
            " Its σ is a validation fit, the same calibration the refit gives every fixed σ, so "
            "its as-trained score is compared with nothing as trained."
        )
    else:
        diff = compare.against_best(learned, rows, main, per_example)
        elbo = compare.claim(learned, best[1]).elbo
        lines.append(
            f"  - As trained: {compare.said(diff)} by the IWAE bound, {compare.said(elbo)} by "
            f"the −ELBO, against the best fixed σ as trained "
            f"({_mean(best[1], 'test/iwae_nll'):.1f}) — "
            f"{compare.both_bounds_verdict(learned, best[1], diff)}."
        )
    return lines + _refit_verdict(rows, main, learned, per_example)


def _refit_verdict(rows: list[dict], main: str, learned: list[dict], per_example) -> list[str]:
    """The learned σ refit against the fixed σ whose refit scores best on validation."""
    best = compare.best_fixed_sigma(rows, main, "_refit")
    key = "test/iwae_nll_refit"
    if best is None or _mean(learned, key) is None or _mean(best[1], key) is None:
        return []
    best_sigma, best_members = best
    diff = compare.difference(learned, best_members, per_example, "_refit")
    elbo = compare.claim(learned, best_members, "_refit").elbo
    return [
        f"  - Refit to refit (σ {_mean(learned, 'sigma'):.3g} → "
        f"{_mean(learned, 'sigma_refit'):.3g}): test NLL {_mean(learned, key):.1f} nats, "
        f"{compare.said(diff)} by the IWAE bound, {compare.said(elbo)} by the −ELBO, against "
        f"the best fixed σ refitted the same way (σ {best_sigma:.3g} → "
        f"{_mean(best_members, 'sigma_refit'):.3g}, {_mean(best_members, key):.1f}) — "
        f"{compare.both_bounds_verdict(learned, best_members, diff, '_refit')}."
    ]


def start_findings(
    rows: list[dict], main: str, per_example: dict | None = None, fit: LearnedFit = GRADIENT
) -> list[str]:
    """Per σ at start: each remedy's test NLL against the best fixed σ, as trained and refit
    (each against its own score's best), its active units and its final σ; then the
    learned-scale families."""
    best = compare.best_fixed_sigma(rows, main)
    if best is None:
        return []
    by_start: dict[float, list[str]] = {}
    families = []
    for (group, remedy, start), members in remedy_groups(rows).items():
        if members == best[1]:
            by_start.setdefault(start, []).append(f"{remedy} is the yardstick")
            continue
        trained = compare.against_best(members, rows, main, per_example)
        refit = compare.against_best(members, rows, main, per_example, "_refit")
        scores = f"as trained {compare.said(trained)}; refit {compare.said(refit)}"
        if not _as_trained_compared(members, fit):
            scores = f"refit {compare.said(refit)} (fitted on validation data as it trained)"
        if group != main:
            families.append(f"{remedy}: {scores}")
            continue
        by_start.setdefault(start, []).append(
            f"{remedy} {scores} ({_fmt(_mean(members, 'test/active_units'))} active; "
            f"final σ {_fmt(_mean(members, 'sigma'), 3)})"
        )
    lines = [
        f"- From σ = {start:.3g}{' (the best fixed σ)' if start == best[0] else ''}, against "
        f"the best fixed σ of each score: {'; '.join(parts)}."
        for start, parts in by_start.items()
    ]
    if families:
        lines.append(f"- Learned scales against the best fixed σ: {'; '.join(families)}.")
    return lines


def geco_findings(path: pathlib.Path, rows: list[dict], kappa: float) -> list[str]:
    """GECO's σ(λ) along training, per σ at start, and the constrained MSE against κ² (per-chunk
    means over the training batches, from metrics.jsonl)."""
    lines = []
    for (remedy, start), curve in plots.remedy_curves(path, rows).items():
        if remedy != "geco" or "sigma" not in curve:
            continue
        low = int(np.argmin(curve["sigma"]))
        text = (
            f"- GECO from σ = {start:.3g}: σ(λ) at its lowest {curve['sigma'][low]:.3g} (in the "
            f"chunk ending at step {curve['step'][low]}), at the end {curve['sigma'][-1]:.3g}"
        )
        if "mse" in curve:
            text += (
                f"; constrained MSE {curve['mse'][0]:.4f} in the first chunk, "
                f"{curve['mse'][-1]:.4f} in the last, against κ² = {kappa**2:.4f}"
            )
        lines.append(text + ".")
    return lines


def remedies_findings(
    path: pathlib.Path,
    rows: list[dict],
    main: str,
    kappa: float,
    fit: LearnedFit,
    per_example: dict | None = None,
) -> list[str]:
    """The findings under the table; `python -m vae_jax.report WORKDIR` prints them too. `fit`:
    how the learned σ was fitted (`learned_fit`)."""
    return [
        *start_findings(rows, main, per_example, fit),
        *learned_sigma_verdict(rows, main, fit, per_example),
        *geco_findings(path, rows, kappa),
    ]


def remedies_section(
    path: pathlib.Path,
    rows: list[dict],
    main: str,
    *,
    kappa: float,
    fit: LearnedFit,
    smoke_test: bool,
    per_example: dict | None = None,
) -> list[str]:
    """The section's lines: table, findings (not for a smoke test), the training curves."""
    figure = plots.plot_remedy_curves(path, rows)
    lines = [
        "## What to do instead",
        "",
        "Each remedy trains with its own objective; every score below is the β = 1 ELBO / IWAE "
        "bound of a normalised density (no warm-up weight, no free-bits clamp). σ at start: the "
        "fixed σ whose weighting is being remedied (GECO's multiplier starts at λ₀ = D/(2σ²)), "
        "or a learned σ's initial value. Final σ: the σ each member is scored with as trained "
        "(GECO's σ(λ) = √(D/(2λ)) at the end). Means over seeds; NLL in nats (IWAE). 'vs best "
        "fixed σ': the paired difference over the same test images against the no-remedy fixed "
        "σ with the best validation NLL of the same score (as trained against as trained, refit "
        "against refit), with its 95% interval (a paired t-interval over per-seed mean "
        "differences, n − 1 degrees of freedom for n seeds, so it covers training randomness; "
        "with 2 seeds it is wide); 'not resolved': the interval holds 0. Refit: σ refitted on "
        "the validation data after training to the scale that maximises the validation IWAE bound.",
        "",
        *remedy_table(rows, main, per_example, fit),
        "",
    ]
    if not smoke_test:
        lines += [*remedies_findings(path, rows, main, kappa, fit, per_example), ""]
    return lines + [f"![{figure}](plots/{figure})", ""]

"""report.md's section "What to do instead": the remedies for a badly weighted MSE side by side.

Rows are results.csv's (`vae_jax.sweep`, column `remedy`); the figure is
`plots.plot_remedy_curves`. Every NLL is the β = 1 IWAE bound of a normalised density, whatever
objective the member trained with; the yardstick is the no-remedy fixed σ with the best mean
VALIDATION NLL.
"""

from __future__ import annotations

import pathlib

import numpy as np

from vae_jax import plots


def _fmt(value, digits=1) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def remedy_groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """(group, remedy, σ at start) -> its finished members (the seeds), in row order."""
    grouped: dict[tuple, list[dict]] = {}
    for r in plots.ok_rows(rows):
        grouped.setdefault((r["group"], r["remedy"], r["sigma_start"]), []).append(r)
    return grouped


def yardstick(rows: list[dict], main: str, suffix: str = "") -> tuple[tuple, list[dict]] | None:
    """The no-remedy fixed σ of the main group with the best mean validation NLL (scored as
    trained, or refit with `suffix='_refit'`)."""
    plain = {k: v for k, v in remedy_groups(rows).items() if k[0] == main and k[1] == "none"}
    scored = {k: _mean(v, "val/iwae_nll" + suffix) for k, v in plain.items()}
    scored = {k: v for k, v in scored.items() if v is not None}
    if not scored:
        return None
    best = min(scored, key=scored.get)
    return best, plain[best]


def spread(members: list[dict], key: str = "test/iwae_nll") -> float:
    values = [r[key] for r in members]
    return float(np.max(values) - np.min(values))


def remedy_table(rows: list[dict], main: str) -> list[str]:
    best = yardstick(rows, main)
    best_nll = _mean(best[1], "test/iwae_nll") if best else None
    table = [
        "| remedy | σ at start | final σ | val NLL | test NLL | seeds' range | vs best fixed σ | "
        "test NLL refit | bits/dim | active units | MSE | KL |",
        "|" + "---|" * 12,
    ]
    for (_, remedy, start), members in remedy_groups(rows).items():
        nll = _mean(members, "test/iwae_nll")
        table.append(
            f"| {remedy} | {_fmt(start, 3) if start is not None else '–'} | "
            f"{_fmt(_mean(members, 'sigma'), 3)} | {_fmt(_mean(members, 'val/iwae_nll'))} | "
            f"{_fmt(nll)} | {_fmt(spread(members))} | "
            f"{f'{nll - best_nll:+.1f}' if best_nll is not None else '–'} | "
            f"{_fmt(_mean(members, 'test/iwae_nll_refit'))} | "
            f"{_fmt(_mean(members, 'test/bits_per_dim'), 3)} | "
            f"{_fmt(_mean(members, 'test/active_units'))} | "
            f"{_fmt(_mean(members, 'test/recon_mse'), 4)} | {_fmt(_mean(members, 'test/kl'))} |"
        )
    return table


def _verdict(gap: float, tolerance: float) -> str:
    """A gap in NLL (learned − best fixed σ; negative: the learned σ is better) read against the
    seeds' spread."""
    if abs(gap) <= tolerance:
        return "within the seeds' spread"
    return f"{'ahead of' if gap < 0 else 'behind'} it by more than the seeds' spread"


def learned_fit(likelihood_config) -> str:
    """How a run's learned σ was fitted, from its config's `likelihood` fields (config.json of a
    run from before `sigma_fit` existed: by gradient, all there was)."""
    if likelihood_config.get("sigma_fit", "gradient") == "validation":
        every = likelihood_config["sigma_fit_every"]
        return f"fitted on the validation data every {every} steps and after the last"
    return "learned by gradient on the training data"


def learned_sigma_verdict(
    rows: list[dict], main: str, fit: str = "learned by gradient on the training data"
) -> list[str]:
    """Whether the default learned σ matches the best fixed σ within the seeds' spread: the gap
    of the means against the larger of the two seed ranges. `fit`: how it was fitted
    (`learned_fit`)."""
    best = yardstick(rows, main)
    learned = [r for r in plots.ok_rows(rows) if r["remedy"] == "learned_sigma"]
    if best is None or not learned:
        return []
    (_, _, best_sigma), best_members = best
    gap = _mean(learned, "test/iwae_nll") - _mean(best_members, "test/iwae_nll")
    tolerance = max(spread(learned), spread(best_members))
    return [
        f"- **Learned σ, {fit}** (from σ₀ = {_fmt(learned[0]['sigma_start'], 3)}, the "
        f"pPCA σ of the training data): test NLL {_mean(learned, 'test/iwae_nll'):.1f} nats, "
        f"{gap:+.1f} against the best fixed σ = {best_sigma:.3g} "
        f"({_mean(best_members, 'test/iwae_nll'):.1f}) — {_verdict(gap, tolerance)} "
        f"(larger seed range {tolerance:.1f} nats); it ends at σ = "
        f"{_mean(learned, 'sigma'):.3g}, against √(training MSE) = "
        f"{np.sqrt(_mean(learned, 'train/recon_mse')):.3g} and √(test MSE) = "
        f"{np.sqrt(_mean(learned, 'test/recon_mse')):.3g}; train NLL "
        f"{_mean(learned, 'train/iwae_nll'):.1f} against "
        f"{_mean(best_members, 'train/iwae_nll'):.1f} for the best fixed σ.",
        *_refit_verdict(rows, main, learned),
    ]


def _refit_verdict(rows: list[dict], main: str, learned: list[dict]) -> list[str]:
    """The same comparison with every σ refitted on the validation data after training: the
    learned σ against the fixed σ whose refit scores best on validation."""
    best = yardstick(rows, main, "_refit")
    key = "test/iwae_nll_refit"
    if best is None or _mean(learned, key) is None or _mean(best[1], key) is None:
        return []
    (_, _, best_sigma), best_members = best
    gap = _mean(learned, key) - _mean(best_members, key)
    tolerance = max(spread(learned, key), spread(best_members, key))
    return [
        f"- **The same learned σ, refitted on the validation data** (σ "
        f"{_mean(learned, 'sigma'):.3g} → {_mean(learned, 'sigma_refit'):.3g}): test NLL "
        f"{_mean(learned, key):.1f} nats, {gap:+.1f} against the best fixed σ refitted the same "
        f"way (σ {best_sigma:.3g} → {_mean(best_members, 'sigma_refit'):.3g}, "
        f"{_mean(best_members, key):.1f}) — {_verdict(gap, tolerance)} (larger seed range "
        f"{tolerance:.1f} nats)."
    ]


def start_findings(rows: list[dict], main: str) -> list[str]:
    """Per σ at start: each remedy's test NLL (as trained and refit) against the best fixed σ,
    its active units and its final σ; then the learned-scale families' gaps."""
    best = yardstick(rows, main)
    if best is None:
        return []
    best_nll = _mean(best[1], "test/iwae_nll")
    by_start: dict[float, list[str]] = {}
    families = []
    for (group, remedy, start), members in remedy_groups(rows).items():
        gap = f"{_mean(members, 'test/iwae_nll') - best_nll:+.1f}"
        refit = _mean(members, "test/iwae_nll_refit")
        if group != main:
            families.append(f"{remedy} {gap}")
            continue
        by_start.setdefault(start, []).append(
            f"{remedy} {gap} (refit {refit - best_nll:+.1f}; "
            f"{_fmt(_mean(members, 'test/active_units'))} active; "
            f"final σ {_fmt(_mean(members, 'sigma'), 3)})"
        )
    lines = [
        f"- From σ = {start:.3g}{' (the best fixed σ)' if start == best[0][2] else ''}, nats "
        f"against the best fixed σ: {'; '.join(parts)}."
        for start, parts in by_start.items()
    ]
    if families:
        lines.append(f"- Learned scales against the best fixed σ: {'; '.join(families)} nats.")
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
    path: pathlib.Path, rows: list[dict], main: str, kappa: float, fit: str
) -> list[str]:
    """The findings under the table; `python -m vae_jax.report WORKDIR` prints them too. `fit`:
    how the learned σ was fitted (`learned_fit`)."""
    return [
        *start_findings(rows, main),
        *learned_sigma_verdict(rows, main, fit),
        *geco_findings(path, rows, kappa),
    ]


def remedies_section(
    path: pathlib.Path, rows: list[dict], main: str, *, kappa: float, fit: str, smoke_test: bool
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
        "(GECO's σ(λ) = √(D/(2λ)) at the end). Means over seeds; NLL in nats (IWAE); 'vs best "
        "fixed σ': against the no-remedy fixed σ with the best validation NLL; refit: σ "
        "refitted in closed form on the validation data after training.",
        "",
        *remedy_table(rows, main),
        "",
    ]
    if not smoke_test:
        lines += [*remedies_findings(path, rows, main, kappa, fit), ""]
    return lines + [f"![{figure}](plots/{figure})", ""]

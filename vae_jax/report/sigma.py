"""report.md's σ-sweep sections: findings, where common code lands, the summary and member
tables — every sentence filled in from the members' rows (`vae_jax.report.rows`) and, for every
difference it states, the paired interval of `vae_jax.report.compare`.
"""

from __future__ import annotations

import numpy as np

from vae_jax import conventions, likelihoods
from vae_jax.likelihoods import implicit_sigmas
from vae_jax.report import compare
from vae_jax.report.rows import (
    by_sigma,
    fitted_on_validation,
    fmt,
    group_mean,
    has_own_scale,
    mean,
    ok_rows,
)

# What each data model's numbers are (`Likelihood.data_model`); nats, bits/dim and rankings
# compare only within one.
DATA_MODEL_TEXT = {
    "continuous": "a density on the dequantised pixels x = (k+u)/256, like the Gaussian's",
    "discrete": "a probability over the 256 pixel values: another data model, not ranked "
    "against the densities",
    "binarized": "a probability of BINARISED pixels: other data, not ranked against the densities",
}
# The two questions a σ answers, each a proper density (see `vae_jax.evaluate`).
SCORES = {
    "": "as trained (each model scored with the σ it trained with)",
    "_refit": "refit (σ refitted on the validation data after training, to the scale that "
    "maximises the validation IWAE bound)",
}


def _chosen(main_rows: list[dict], suffix: str) -> int | None:
    """Index into `plots.by_sigma`'s σ of the best fixed σ for this score
    (`compare.best_fixed_sigma`, chosen on validation data)."""
    best = compare.best_fixed_sigma(main_rows, main_rows[0]["group"], suffix)
    if best is None:
        return None
    all_sig, _, _, _ = by_sigma(main_rows, "test/iwae_nll" + suffix)
    return int(np.flatnonzero(all_sig == best[0])[0])


def _members(rows: list[dict], group: str, sigma: float | None = None) -> list[dict]:
    return [
        r for r in ok_rows(rows) if r["group"] == group and (sigma is None or r["sigma"] == sigma)
    ]


def _others(rows: list[dict], main: str, *, own_scale: bool) -> list[str]:
    """The finished families other than the main group, in row order, that estimate a scale of
    their own (`rows.has_own_scale`) on the main group's data model (`own_scale`), or not."""
    ok = [r for r in ok_rows(rows) if r["group"] != main]
    main_model = likelihoods.get_likelihood(main).data_model
    scaled = {r["group"]: has_own_scale(r["group"]) and r["data_model"] == main_model for r in ok}
    return [g for g, has in scaled.items() if has == own_scale]


def sweep_summary(
    rows: list[dict],
    main: str,
    num_dims: int,
    latent_dim: int,
    per_example: dict | None = None,
    *,
    validation_fitted: bool = False,
    num_bins: int = 256,
) -> list[str]:
    """The report's findings, every number read from `rows` (`rows.with_index` of
    results.csv's rows) and `per_example` (per_example.npz's arrays).

    Every cost is a paired difference against the best fixed σ of the same score
    (`comparison`), with its 95% interval. `validation_fitted`: a shared learned scale was
    fitted on validation data while it trained, so its as-trained score is a refit score too
    and it is compared refit to refit only. `num_bins`: the data's pixel levels K, the 8-bit
    scale's (`compare.eight_bit_shift`).
    """
    main_rows = [r for r in ok_rows(rows) if r["group"] == main]
    if not main_rows:
        return ["No member of the main group finished; see the status column."]
    sig, _, _, _ = by_sigma(main_rows, "test/iwae_nll")
    _, active, _, _ = by_sigma(main_rows, "test/active_units")
    _, collapsed, _, _ = by_sigma(main_rows, "test/collapsed_fraction")
    lines = []
    implicit = implicit_sigmas(num_dims)
    for suffix, what in SCORES.items():
        _, nll, _, _ = by_sigma(main_rows, "test/iwae_nll" + suffix)
        _, bpd, _, _ = by_sigma(main_rows, "test/bits_per_dim" + suffix)
        best = _chosen(main_rows, suffix)
        if best is None or len(nll) != len(sig):
            continue
        best_members = _members(rows, main, sig[best])
        lines.append(
            f"- **Scored {what}.** Best fixed σ on validation data: σ = {sig[best]:.3g}, test "
            f"NLL {nll[best]:.1f} nats ({bpd[best]:.3f} bits/dim)."
        )
        for name, s in implicit.items():
            i = int(np.argmin(np.abs(sig - s)))
            if abs(sig[i] - s) / s < 0.01:
                diff = compare.difference(
                    _members(rows, main, sig[i]), best_members, per_example, suffix
                )
                lines.append(
                    f"  - {name}, σ = {s:.3g}: {compare.said(diff, nll[i] - nll[best])} "
                    f"({bpd[i] - bpd[best]:+.3f} bits/dim) against it."
                )
        for group in _others(rows, main, own_scale=True):
            value = group_mean(rows, group, "test/iwae_nll" + suffix)
            if value is None:
                continue
            sigma = group_mean(rows, group, "sigma" + suffix)
            if suffix == "" and validation_fitted and fitted_on_validation(group):
                lines.append(
                    f"  - {group} (decoder std ≈ {fmt(sigma, 3)}): NLL {value:.1f} nats; its "
                    "scale was fitted on the validation data as it trained — a calibration "
                    "like the refit's — so it is compared with the grid refit to refit only."
                )
                continue
            diff = compare.difference(_members(rows, group), best_members, per_example, suffix)
            lines.append(
                f"  - {group} (decoder std ≈ {fmt(sigma, 3)}): NLL {value:.1f} nats, "
                f"{compare.said(diff, value - nll[best])} against the best fixed σ."
            )
    if any(collapsed > 0):
        i = int(np.flatnonzero(collapsed > 0)[0])
        lines.append(
            f"- **Collapse** (a latent is collapsed when its KL averaged over the test data is "
            f"below 0.01 nats): latents start collapsing at σ = {sig[i]:.3g} "
            f"({collapsed[i]:.0%} of {latent_dim} collapsed, {active[i]:.1f} active units); "
            f"at σ = {sig[-1]:.3g}: {collapsed[-1]:.0%} collapsed, {active[-1]:.1f} active."
        )
    else:
        lines.append(f"- **Collapse:** no latent collapsed at any σ up to {sig[-1]:.3g}.")
    for name, s in implicit.items():
        i = int(np.argmin(np.abs(sig - s)))
        if abs(sig[i] - s) / s < 0.01:
            lines.append(f"  - {name}: {active[i]:.1f} active units, {collapsed[i]:.0%} collapsed.")
    disagree = [
        r
        for r in main_rows
        if round((1 - r["test/collapsed_fraction"]) * latent_dim) != r["test/active_units"]
    ]
    if disagree:
        where = ", ".join(sorted({f"{r['sigma']:.3g}" for r in disagree}))
        lines.append(
            f"  - Active units and the KL criterion disagree for {len(disagree)} member(s) "
            f"(σ = {where})."
        )
    best = _chosen(main_rows, "")
    if best is not None:
        _, train_nll, _, _ = by_sigma(main_rows, "train/iwae_nll")
        _, test_nll, _, _ = by_sigma(main_rows, "test/iwae_nll")
        if len(train_nll) == len(sig):
            gaps = test_nll - train_nll
            lines.append(
                f"- **Overfitting:** at the chosen σ = {sig[best]:.3g} the training NLL is "
                f"{train_nll[best]:.1f} nats and the test NLL {test_nll[best]:.1f} "
                f"({gaps[best]:+.1f}); the test−train gap is largest at σ = "
                f"{sig[int(np.argmax(gaps))]:.3g} ({np.max(gaps):+.1f}) and smallest at "
                f"σ = {sig[int(np.argmin(gaps))]:.3g} ({np.min(gaps):+.1f})."
            )
    for group in sorted(_others(rows, main, own_scale=False)):
        members = _members(rows, group)
        mse = group_mean(rows, group, "test/recon_mse")
        grey = group_mean(rows, group, "test/recon_mse_grey")
        grey_text = f", MSE against the grey images {grey:.4f}" if grey is not None else ""
        best = compare.best_fixed_sigma(rows, main)
        diff = compare.difference(members, best[1], per_example) if best else None
        against = f"; {diff.text()} against the best fixed σ as trained" if diff else ""
        lines.append(
            f"- **{group}**: NLL {fmt(group_mean(rows, group, 'test/iwae_nll'))} nats, "
            f"{fmt(group_mean(rows, group, 'test/bits_per_dim'), 3)} bits/dim, MSE "
            f"{fmt(mse, 4)}{grey_text} — {DATA_MODEL_TEXT[members[0]['data_model']]}{against}."
        )
    return lines + ranking_lines(rows, main, num_dims, num_bins)


def ranking_lines(rows: list[dict], main: str, num_dims: int, num_bins: int) -> list[str]:
    """Every family not on binarised pixels ranked on the 8-bit scale (`compare.eight_bit_ranking`,
    best first on validation data), a table with each one's label, test NLL and bits/dim (means
    over seeds) and its difference to the first with the seed-level interval; then the claims
    within a few nats by both bounds (`claim_lines`)."""
    ranked = compare.eight_bit_ranking(rows, main, num_dims, num_bins)
    if len(ranked) < 2:
        return []
    per_bit = num_dims * np.log(2.0)
    table = [
        f"- **Families on the 8-bit scale**, ranked on validation data (test NLL of the 8-bit "
        f"image in nats and bits/dim, means over seeds; a density on the dequantised pixels "
        f"x = (k + u)/{num_bins} plus D·log {num_bins}, which bounds the NLL of the 8-bit image "
        f"— docs/design.md; each at its best calibration, refit where it refits; the difference "
        f"to the first with its seed-level 95% interval; binarised pixels are other data and "
        f"not ranked here):",
        "",
        "| rank | family | on the 8-bit scale | test NLL | bits/dim | − first, nats per image "
        "| − first, bits/dim |",
        "|---|---|---|---|---|---|---|",
    ]
    first = ranked[0]
    for i, c in enumerate(ranked):
        against = "–", "–"
        if i:
            diff = compare.eight_bit_difference(c, first)
            gap = c.nll() - first.nll()
            against = f"{gap:+.1f} (no interval)", f"{gap / per_bit:+.3f} (no interval)"
            if diff is not None:
                against = (
                    diff.short(),
                    f"{diff.mean / per_bit:+.3f} [{diff.low / per_bit:+.3f}, "
                    f"{diff.high / per_bit:+.3f}]",
                )
        table.append(
            f"| {i + 1} | {compare.named(c)} | {c.label} | {c.nll():.1f} | "
            f"{c.nll() / per_bit:.3f} | {against[0]} | {against[1]} |"
        )
    return [*table, "", *claim_lines(ranked, rows, main)]


def claim_lines(ranked: list[compare.Ranked], rows: list[dict], main: str) -> list[str]:
    """`compare.close_claims` as findings: each pair by the IWAE bound and the ELBO."""
    claims = compare.close_claims(ranked, rows, main)
    if not claims:
        return []
    parts = [f"{compare.named(a)} − {compare.named(b)}: {c.text()}" for a, b, c in claims]
    return [
        "- **Claims within a few nats, by both bounds** (each family with a learned shared scale "
        "or an optimal σ against the best fixed σ, and every pair closer than its seeds' spread; "
        "the −ELBO's and the IWAE NLL's difference, each with its seed-level interval; "
        "indistinguishable when the two disagree in sign or an interval holds 0): "
        f"{'; '.join(parts)}."
    ]


def beta_note(rows: list[dict]) -> list[str]:
    """σ and β are one knob: said wherever a member's KL weight β is not 1."""
    betas = sorted({r["beta"] for r in rows if r.get("beta") is not None} - {1.0})
    if not betas:
        return []
    return [
        f"KL weights β = {', '.join(f'{b:g}' for b in betas)}: a Gaussian decoder with σ and KL "
        "weight β trains the same model as σ·√β with β = 1 — the objective is β times the "
        "other's plus a constant, and Adam's steps do not depend on the gradient's scale — so "
        "each such member is the β = 1 ELBO at σ·√β.",
        "",
    ]


def convention_lines(
    rows: list[dict], main: str, num_dims: int, per_example: dict | None = None
) -> list[str]:
    """Where widely used VAE code lands on the σ axis (`conventions.KNOWN_CONVENTIONS`, at each
    library's own batch size) and what the nearest measured members cost against the best fixed
    σ of the same score, with intervals."""
    main_rows = [r for r in ok_rows(rows) if r["group"] == main]
    sig, _, _, _ = by_sigma(main_rows, "test/iwae_nll")
    bests = {
        suffix: best[1]
        for suffix in SCORES
        if (best := compare.best_fixed_sigma(main_rows, main, suffix)) is not None
    }
    if not bests or not len(sig):
        return []
    lines = ["## Where common code lands", ""]
    for label, s in conventions.marked_sigmas(num_dims):
        near = [i for i in range(len(sig)) if abs(sig[i] - s) / s < 0.01]
        if near:
            at = near
        elif sig[0] < s < sig[-1]:
            upper = int(np.searchsorted(sig, s))
            at = [upper - 1, upper]
        else:
            lines.append(f"- {label}: σ = {s:.3g}, outside the measured grid.")
            continue
        measured = "; ".join(
            f"σ = {sig[i]:.3g}: "
            + ", ".join(
                f"{_cost(_members(rows, main, sig[i]), best, per_example, suffix)} "
                f"{'as trained' if suffix == '' else 'refit'}"
                for suffix, best in bests.items()
            )
            for i in at
        )
        lines.append(f"- {label}: σ = {s:.3g} — {measured}.")
    return lines + [""]


def _cost(members: list[dict], best: list[dict], per_example: dict | None, suffix: str) -> str:
    if members == best:
        return "the best fixed σ itself"
    diff = compare.difference(members, best, per_example, suffix)
    fallback = mean(members, "test/iwae_nll" + suffix)
    reference = mean(best, "test/iwae_nll" + suffix)
    if fallback is None or reference is None:
        return "–"
    return compare.said(diff, fallback - reference)


def describe_run(config: dict, figures: dict, num_sigmas: int) -> list[str]:
    """What was run, in one paragraph, from config.json (`config`) and figures.npz's split sizes
    (`figures`); a smoke test says that its numbers carry no finding."""
    train, sweep = config["train"], config["sweep"]
    seeds = len(sweep["seeds"])
    steps = f"{train['num_steps']} steps"
    if train.get("convergence") is not None:  # members stop once converged
        steps = f"at most {steps}"
    batch = f"batch {train['batch_size']}"
    if train.get("full_batch"):
        batch = "the whole training set"
    text = (
        f"{steps} of {batch}, {seeds} seed(s); "
        f"{int(figures['num_train'])} training, {int(figures['num_validation'])} validation "
        f"(selections) and {int(figures['num_test'])} test examples; IWAE with K = "
        f"{config['eval']['iwae_samples']}. Nats "
        "per example; higher ELBO and lower NLL are better; a negative NLL is a density above "
        "1, as densities on [0, 1]^D can be."
    )
    lines = [text, ""]
    if sweep.get("smoke_test"):
        lines += [
            f"**Smoke test.** {num_sigmas} fixed σ, {train['num_steps']} steps, "
            f"{seeds} seed(s), a small model: it shows that every member trains and is scored. "
            "It is too short and too coarse to say which σ is best or what a weighting costs — "
            "run the full config for that. The findings section is left out on purpose.",
            "",
        ]
    return lines


def summary_table(rows: list[dict], main: str, num_dims: int) -> list[str]:
    """One line per σ of the main group and per other family, means over seeds (README's table)."""
    implicit = {round(v, 6): name.split(" (")[0] for name, v in implicit_sigmas(num_dims).items()}
    keys = (
        ("sigma", 3),
        ("sigma_refit", 3),
        ("test/iwae_nll", 1),
        ("test/iwae_nll_refit", 1),
        ("test/bits_per_dim", 3),
        ("test/bits_per_dim_refit", 3),
        ("train/iwae_nll", 1),
        ("test/recon_mse", 4),
        ("test/kl", 1),
        ("test/active_units", 1),
        ("test/collapsed_fraction", 2),
    )
    table = [
        "| member | σ | σ refit | test NLL | test NLL refit | bits/dim | bits/dim refit | "
        "train NLL | MSE | KL | active | collapsed |",
        "|---|" + "---|" * len(keys),
    ]
    ok = ok_rows(rows)
    groups = [(main, s) for s in sorted({r["sigma"] for r in ok if r["group"] == main})]
    groups += [(g, None) for g in dict.fromkeys(r["group"] for r in ok if r["group"] != main)]
    for group, sigma in groups:
        members = [r for r in ok if r["group"] == group and (sigma is None or r["sigma"] == sigma)]
        cells = []
        for key, digits in keys:
            values = [r[key] for r in members if r.get(key) is not None]
            cells.append(fmt(float(np.mean(values)), digits) if values else "–")
        name = group
        if sigma is not None and likelihoods.get_likelihood(group).fixed_sigma:
            name = " — ".join(
                ["fixed σ"] + [implicit[s] for s in [round(sigma, 6)] if s in implicit]
            )
        table.append(f"| {name} | " + " | ".join(cells) + " |")
    return table


def members_table(rows: list[dict]) -> list[str]:
    header = (
        "| group | σ | σ refit | seed | test NLL | test NLL refit | val NLL | train NLL | "
        "bits/dim | MSE | KL | active | collapsed |"
    )
    table = [header, "|" + "---|" * 13]
    for r in rows:
        group = r["group"] if r.get("remedy", "none") == "none" else f"{r['group']}, {r['remedy']}"
        if r["status"] != "ok":
            table.append(f"| {group} | {fmt(r['sigma'], 3)} | | {r['seed']} | {r['status']} |")
            continue
        table.append(
            f"| {group} | {fmt(r['sigma'], 3)} | {fmt(r.get('sigma_refit'), 3)} | "
            f"{r['seed']} | {fmt(r['test/iwae_nll'])} | {fmt(r.get('test/iwae_nll_refit'))} | "
            f"{fmt(r.get('val/iwae_nll'))} | {fmt(r.get('train/iwae_nll'))} | "
            f"{fmt(r['test/bits_per_dim'], 3)} | {fmt(r['test/recon_mse'], 4)} | "
            f"{fmt(r['test/kl'])} | {r['test/active_units']} | "
            f"{fmt(r['test/collapsed_fraction'], 2)} |"
        )
    return table

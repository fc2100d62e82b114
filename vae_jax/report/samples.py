"""report.md's "What it looks like" section: sample quality beside the likelihood, per member.

The metrics are `vae_jax.sample_quality`'s (results.csv columns `test/fd_<set>` at N = 1,000,
`test/fd_inf_<set>` extrapolated to N → ∞, `test/fd_pca_<set>` and `test/fd_inf_pca_<set>` in
the training images' PCA space (`vae_jax.sample_fd`), `test/precision_<set>`,
`test/recall_<set>`, `test/recon_accuracy`, `test/rate`, `test/mutual_information_upper`,
`test/marginal_kl_lower`; `val/fd_<set>` for selections), the feature network and the real floor
from the workdir's sample_quality.json. The Fréchet distance is a statistic of a whole image
set, not a mean over images, so its differences carry no paired interval: a member's value is
its mean over seeds with the seeds' range beside it, and no difference smaller than both members'
ranges is stated as one. Only FD_∞ is compared with the real floor (its fixed-N FD is at the
validation split's N); a workdir written before FD_∞ (no such column) is reported at fixed N.
"""

from __future__ import annotations

import math

from vae_jax.report import compare
from vae_jax.report.rows import fmt, mean, ok_rows

# σ² = ½: summed MSE + KL's implicit σ, whatever D (`likelihoods.implicit_sigmas`).
SUMMED_SIGMA = math.sqrt(0.5)
# Why I(x; z) is bounded from above, in the section's words.
INFORMATION = (
    "I(x; z) ≤: an upper bound on the information the latents carry (the aggregate posterior's "
    "Gaussian fit, cross-fitted on halves of the test images: "
    "`aggregate_posterior.cross_fitted_upper_bound`) and marginal KL ≥ rate − that; the mixture "
    "estimate these columns replace cannot exceed log N (6.9 nats at N = 1,000), so it read "
    "log N for every member that uses its latents and told a reader nothing"
)

SETS = {
    "prior_mean": "decoder means f(z), z ~ N(0, I)",
    "prior_sample": "draws x ~ p(x | z) at the same z, clipped to [0, 1]",
    "reconstruction": "reconstructions of test images (decoder mean at the posterior mean)",
}


def spread(members: list[dict], key: str) -> str:
    values = [r[key] for r in members if r.get(key) is not None and math.isfinite(r[key])]
    if not values:
        return "–"
    low, high = min(values), max(values)
    return (
        f"{sum(values) / len(values):.1f} ({low:.1f}–{high:.1f})" if len(values) > 1 else fmt(low)
    )


def _label(group: str, main: str, sigma: float | None) -> str:
    return f"fixed σ = {sigma:.3g}" if group == main else group


def candidates(rows: list[dict], main: str) -> list[tuple[str, list[dict]]]:
    """(label, members) per fixed σ of the main group and per other family, no remedies."""
    out = [(_label(main, main, s), m) for s, m in compare.fixed_sigma_groups(rows, main).items()]
    for group in dict.fromkeys(r["group"] for r in ok_rows(rows) if r["group"] != main):
        out.append((group, [r for r in ok_rows(rows) if r["group"] == group]))
    return out


def has_samples(rows: list[dict]) -> bool:
    return any(r.get("test/fd_prior_mean") is not None for r in ok_rows(rows))


def has(rows: list[dict], key: str) -> bool:
    return any(r.get(key) is not None for r in ok_rows(rows))


def floor_fd_key(rows: list[dict], name: str = "prior_mean") -> str:
    """The FD column a member is compared with the floor by: FD_∞ (`test/fd_inf_<set>`), or the
    fixed-N FD in a workdir written before FD_∞."""
    extrapolated = f"test/fd_inf_{name}"
    return extrapolated if has(rows, extrapolated) else f"test/fd_{name}"


def floor_fd(quality: dict) -> tuple[str, float]:
    """(how it is read, value) of the real floor's FD that members are compared with."""
    if "floor/fd_inf" in quality:
        return "FD_∞", quality["floor/fd_inf"]
    return "FD", quality["floor/fd"]


def samples_table(rows: list[dict], main: str) -> list[str]:
    """One line per fixed σ and family: NLL beside every sample metric (means over seeds; the
    Fréchet distances with the seeds' range)."""
    extra = [
        (title, key)
        for title, key in (
            ("FD_∞ decoder means", "test/fd_inf_prior_mean"),
            ("FD_∞ decoder means, PCA-64", "test/fd_inf_pca_prior_mean"),
        )
        if has(rows, key)
    ]
    table = [
        "| member | data model | test NLL (refit where it has one) | FD decoder means | "
        + "".join(f"{title} | " for title, _ in extra)
        + "FD draws | precision / recall, means | FD reconstructions | recon accuracy | rate | "
        "I(x; z) ≤ | marginal KL ≥ |",
        "|" + "---|" * (11 + len(extra)),
    ]
    for label, members in candidates(rows, main):
        suffix = compare.best_score(members)
        precision = fmt(mean(members, "test/precision_prior_mean"), 2)
        recall = fmt(mean(members, "test/recall_prior_mean"), 2)
        table.append(
            f"| {label} | {members[0]['data_model']} | "
            f"{fmt(mean(members, 'test/iwae_nll' + suffix))} | "
            f"{spread(members, 'test/fd_prior_mean')} | "
            + "".join(f"{spread(members, key)} | " for _, key in extra)
            + f"{spread(members, 'test/fd_prior_sample')} | "
            f"{precision} / {recall} | {spread(members, 'test/fd_reconstruction')} | "
            f"{fmt(mean(members, 'test/recon_accuracy'), 3)} | "
            f"{fmt(mean(members, 'test/rate'))} | "
            f"{fmt(mean(members, 'test/mutual_information_upper'))} | "
            f"{fmt(mean(members, 'test/marginal_kl_lower'))} |"
        )
    return table


def best_by(rows: list[dict], main: str, key: str) -> tuple[float, list[dict]] | None:
    groups = compare.fixed_sigma_groups(rows, main)
    scored = {s: v for s, m in groups.items() if (v := mean(m, key)) is not None}
    if not scored:
        return None
    best = min(scored, key=scored.get)
    return best, groups[best]


def feature_spaces(rows: list[dict], main: str) -> list[str]:
    """Whether the fixed σ's ranking by the decoder means' FD_∞ (test images) depends on the
    feature space: the best σ in each, the pairs of σ both order alike, and each space's
    FD_∞(best σ) / FD_∞(σ² = ½), the size of the effect."""
    spaces = {"the feature net": "test/fd_inf_prior_mean", "PCA-64": "test/fd_inf_pca_prior_mean"}
    groups = compare.fixed_sigma_groups(rows, main)
    values = {
        space: {s: v for s, m in groups.items() if (v := mean(m, key)) is not None}
        for space, key in spaces.items()
    }
    sigmas = sorted(set.intersection(*(set(v) for v in values.values())))
    if len(sigmas) < 2:
        return []
    net, pca = (values[space] for space in spaces)
    pairs = [(a, b) for i, a in enumerate(sigmas) for b in sigmas[i + 1 :]]
    alike = sum((net[a] < net[b]) == (pca[a] < pca[b]) for a, b in pairs)
    best = {space: min(sigmas, key=v.get) for space, v in values.items()}
    summed = next((s for s in sigmas if abs(s - SUMMED_SIGMA) / SUMMED_SIGMA < 0.01), None)
    ratio = ""
    if summed is not None:
        ratio = "; FD_∞(best σ) / FD_∞(σ² = ½) is " + " and ".join(
            f"{values[space][best[space]] / values[space][summed]:.2f} in {space}"
            for space in spaces
        )
    return [
        "- **Does the ranking depend on the feature network?** σ best by the decoder means' "
        "FD_∞ on the test images: "
        + " and ".join(f"{best[space]:.3g} in {space}" for space in spaces)
        + f" (a space no network learned: the top 64 principal directions of the training "
        f"images); {alike} of {len(pairs)} pairs of fixed σ ordered alike{ratio}."
    ]


def _describe(label: str, members: list[dict]) -> str:
    return (
        f"{label}: FD decoder means {spread(members, 'test/fd_prior_mean')}, draws "
        f"{spread(members, 'test/fd_prior_sample')}, reconstructions "
        f"{spread(members, 'test/fd_reconstruction')}, recon accuracy "
        f"{fmt(mean(members, 'test/recon_accuracy'), 3)}"
    )


def samples_findings(rows: list[dict], main: str, quality: dict | None) -> list[str]:
    """The section's findings: the feature network and the floor, the σ each criterion picks on
    validation data and what each pick looks like, and the prior holes."""
    if not has_samples(rows):
        return []
    lines = []
    if quality is not None and "floor/fd_inf" in quality:
        sizes = quality["floor/fd_inf_sizes"]
        pca, pca_fixed = "", ""
        if "floor/fd_inf_pca" in quality:
            pca = f" (PCA-64: {quality['floor/fd_inf_pca']:.2f})"
            pca_fixed = f" (PCA-64: {quality['floor/fd_pca']:.2f})"
        lines.append(
            f"- **Feature network**: an MLP classifier trained on the training split's labels "
            f"(validation held out), test accuracy {quality['feature_net/test_accuracy']:.3f}, "
            f"validation {quality['feature_net/val_accuracy']:.3f}. **Real floor** "
            f"({quality['floor/num_validation']} validation images against the test images): "
            f"FD_∞ {quality['floor/fd_inf']:.1f}{pca} — the FD extrapolated to N → ∞ from "
            f"subsets of N = {', '.join(str(n) for n in sizes)} (Chong & Forsyth 2020), as "
            f"every member's FD_∞ is from its own N — against FD {quality['floor/fd']:.1f}"
            f"{pca_fixed} at N = {sizes[-1]}, which no member's FD at N = 1,000 may be set "
            f"against; precision {quality['floor/precision']:.2f}, "
            f"recall {quality['floor/recall']:.2f}."
        )
    elif quality is not None:
        lines.append(
            f"- **Feature network**: an MLP classifier trained on the training split's labels "
            f"(validation held out), test accuracy {quality['feature_net/test_accuracy']:.3f}, "
            f"validation {quality['feature_net/val_accuracy']:.3f}. **Real floor** "
            f"({quality['floor/num_validation']} validation images against the test images): FD "
            f"{quality['floor/fd']:.1f}, precision {quality['floor/precision']:.2f}, recall "
            f"{quality['floor/recall']:.2f}."
        )
    picks = [
        ("the test NLL as trained", "val/iwae_nll"),
        ("the test NLL refit", "val/iwae_nll_refit"),
        ("the decoder means' FD", "val/fd_prior_mean"),
        ("the draws' FD", "val/fd_prior_sample"),
    ]
    chosen = [(what, best_by(rows, main, key)) for what, key in picks]
    chosen = [(what, best) for what, best in chosen if best is not None]
    if chosen:
        lines.append(
            "- **The fixed σ each criterion picks on validation data**: "
            + "; ".join(f"by {what}, σ = {best[0]:.3g}" for what, best in chosen)
            + "."
        )
        for sigma in dict.fromkeys(best[0] for _, best in chosen):
            members = compare.fixed_sigma_groups(rows, main)[sigma]
            lines.append(f"  - {_describe(f'σ = {sigma:.3g}', members)}.")
    families = [(label, m) for label, m in candidates(rows, main) if m[0]["group"] != main]
    for label, members in families:
        if mean(members, "test/fd_prior_mean") is not None:
            lines.append(f"  - {_describe(label, members)}.")
    lines += feature_spaces(rows, main)
    holes = [
        (mean(m, "test/marginal_kl_lower"), label, m)
        for label, m in candidates(rows, main)
        if mean(m, "test/marginal_kl_lower") is not None
    ]
    if holes:
        kl, label, members = max(holes, key=lambda h: h[0])
        lines.append(
            f"- **Prior holes**: the marginal KL(q(z) ‖ p(z)) — the part of the rate that is not "
            f"information about x — is at least {kl:.1f} nats for {label}, the largest lower "
            f"bound of any member (its rate {mean(members, 'test/rate'):.1f}, I(x; z) ≤ "
            f"{mean(members, 'test/mutual_information_upper'):.1f}), with draws' FD "
            f"{spread(members, 'test/fd_prior_sample')}."
        )
    return lines


def samples_section(rows: list[dict], main: str, quality: dict | None, smoke_test: bool):
    """report.md's lines (empty without sample metrics)."""
    if not has_samples(rows):
        return []
    lines = [
        "## What it looks like",
        "",
        "Sample quality beside the likelihood, per member, against the test images through the "
        "feature network: " + "; ".join(f"{k}: {v}" for k, v in SETS.items()) + ". FD: "
        "Fréchet distance (lower is better; biased upwards at finite N, so every member uses "
        "the same N = 1,000); FD_∞: extrapolated to N → ∞ (what the real floor is compared "
        "with); PCA-64: the same in the training images' top 64 principal directions; "
        "precision / recall: improved precision and recall (k = 3); recon accuracy: the "
        "classifier's accuracy on the reconstructions; rate = I(x; z) + marginal KL; "
        f"{INFORMATION}. Means over seeds; the FD's seed range in brackets (no paired interval: "
        "it is not a mean over images). Images: samples.npz.",
        "",
        *samples_table(rows, main),
        "",
    ]
    if not smoke_test:
        lines += [*samples_findings(rows, main, quality), ""]
    return lines

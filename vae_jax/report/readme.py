"""README's answer in a few bullets, every number computed from the stored runs' files.

`answer(sweep_path, remedies_path)` reads the σ sweep's and the remedies' results.csv and
per_example.npz; README carries its lines verbatim between `<!-- answer -->` markers, and a test
checks they are what this computes. Each difference follows `vae_jax.report.compare`'s rule (the
best fixed σ of the same score, chosen on validation data; paired 95% intervals).
"""

from __future__ import annotations

import json
import math
import pathlib

from vae_jax.likelihoods import implicit_sigmas
from vae_jax.report import compare, families, replication, samples
from vae_jax.report.rows import mean, ok_rows, plain_rows
from vae_jax.report.write import QUALITY_FILE, load_sweep, pixel_levels

NAMES = {"kl_warmup": "KL warm-up", "free_bits": "free bits"}
MARKERS = ("<!-- answer -->", "<!-- /answer -->")


def _weighting_lines(rows, main, num_dims, latent_dim, per_example) -> list[str]:
    summed, averaged = implicit_sigmas(num_dims).values()
    best = compare.best_fixed_sigma(rows, main)
    best_refit = compare.best_fixed_sigma(rows, main, "_refit")
    summed_rows, mean_rows = (
        compare.members_at(rows, main, summed),
        compare.members_at(rows, main, averaged),
    )
    if best is None or best_refit is None or not summed_rows or not mean_rows:
        return []

    def cost(members, suffix):
        return compare.said(compare.against_best(members, rows, main, per_example, suffix))

    return [
        f"- **Read as a likelihood**, summed MSE + KL (σ² = ½) scores {cost(summed_rows, '')} "
        f"and mean-over-pixels MSE + KL (σ² = D/2) {cost(mean_rows, '')} against the best fixed "
        f"σ = {best[0]:.3g} (chosen on validation data; test NLL "
        f"{mean(best[1], 'test/iwae_nll'):.1f} nats per image).",
        f"- **What the weighting does to the model it trains**: with every σ refitted on "
        f"validation data, summed MSE costs {cost(summed_rows, '_refit')} and mean MSE "
        f"{cost(mean_rows, '_refit')} against the best fixed σ refitted the same way.",
        f"- **Collapse follows σ**: {mean(summed_rows, 'test/active_units'):.1f} of {latent_dim} "
        f"latents active at σ² = ½, {mean(mean_rows, 'test/active_units'):.1f} at σ² = D/2, "
        f"{mean(best[1], 'test/active_units'):.1f} at the best fixed σ.",
    ]


def _learned_line(rows, main, per_example) -> list[str]:
    learned = [r for r in ok_rows(rows) if r["group"] == "gaussian_learned"]
    best = compare.best_fixed_sigma(rows, main, "_refit")
    if not learned or best is None:
        return []
    claim = compare.claim(learned, best[1], "_refit")
    return [
        f"- **A shared σ fitted on validation data** as the model trains (`gaussian_learned`, "
        f"σ = {mean(learned, 'sigma'):.3g}), refit to refit against the best fixed σ, by both "
        f"bounds: {claim.text()}; one run instead of a grid."
    ]


def _family_line(rows, main, num_dims, num_bins) -> list[str]:
    ranked = compare.eight_bit_ranking(rows, main, num_dims, num_bins)
    if len(ranked) < 2:
        return []
    per_bit = num_dims * math.log(2.0)
    first, second = ranked[:2]
    diff = compare.eight_bit_difference(second, first)
    grid = next((c for c in ranked if c.name.startswith("best fixed σ")), None)
    grid_text = ""
    if grid is not None and grid not in (first, second):
        to_grid = compare.eight_bit_difference(grid, first)
        grid_text = f", the {compare.named(grid)} {compare.said(to_grid)}"
    bits = "" if diff is None else f" ({diff.mean / per_bit:+.3f} bits/dim)"
    return [
        f"- **The decoder family on the 8-bit scale** (every family but the binarised Bernoulli, "
        f"ranked on validation data; a density on the dequantised pixels + D·log "
        f"{num_bins} bounds the 8-bit image's NLL): {first.name} is first at "
        f"{first.nll() / per_bit:.3f} bits/dim — {first.label}; {compare.named(second)}, a "
        f"{second.label}, is {compare.said(diff)}{bits} behind it per image{grid_text}."
    ]


def _support_sentence(rows, main, num_dims, num_bins) -> str | None:
    """How much of the first density's lead over the best fixed σ the support alone earns: the
    Gaussian truncated to [0, 1] (the fixed-σ family's shape on a bounded support) against the
    first family of the Gaussian's data model, test NLL means on the 8-bit scale."""
    ranked = compare.eight_bit_ranking(rows, main, num_dims, num_bins)
    grid = next((c for c in ranked if c.name.startswith("best fixed σ")), None)
    same = [c for c in ranked if grid and c.label == grid.label and c is not grid]
    truncated = next((c for c in same if c.name == "gaussian_truncated"), None)
    if grid is None or truncated is None or same[0] is truncated:
        return None
    first = same[0]
    lead = grid.nll() - first.nll()
    share = (grid.nll() - truncated.nll()) / lead if lead else float("nan")
    return (
        f"The truncated Gaussian — the fixed-σ Gaussian's shape on [0, 1] — is "
        f"{compare.said(compare.eight_bit_difference(truncated, first))} behind {first.name}: "
        f"the bounded support alone earns {100 * share:.0f}% of {first.name}'s "
        f"{lead:.1f}-nat lead over the {compare.named(grid)} (test NLL means)."
    )


def _gain_lines(rows, main, num_dims, num_bins) -> list[str]:
    """Where the gains over the best fixed σ come from: the first family on the Gaussian's own
    data model, the Gaussian truncated to [0, 1] (the same shape, the support alone), and how
    much of the first's lead the support earns."""
    said = [families.gain_sentence(rows, main, num_bins=num_bins)]
    if not said[0] or "`gaussian_truncated`" not in said[0]:
        said.append(
            families.gain_sentence(rows, main, family="gaussian_truncated", num_bins=num_bins)
        )
    said.append(_support_sentence(rows, main, num_dims, num_bins))
    said = [s for s in said if s]
    if not said:
        return []
    return [
        f"- **Where the gains are earned** (reconstruction term split by pixel): {' '.join(said)}"
    ]


def _samples_line(rows, main, quality) -> list[str]:
    by_nll = samples.best_by(rows, main, "val/iwae_nll")
    by_fd = samples.best_by(rows, main, "val/fd_prior_mean")
    if by_nll is None or by_fd is None:
        return []
    # Set against the floor: FD_∞ where the workdir has it, both extrapolated alike.
    key = samples.floor_fd_key(rows)
    test_fd = "test FD_∞" if key != "test/fd_prior_mean" else "test FD"
    floor = ""
    if quality:
        floor_name, floor_value = samples.floor_fd(quality)
        floor = (
            f"; {quality['floor/num_validation']} real validation images score "
            f"{floor_value:.1f}{' (FD_∞)' if floor_name == 'FD_∞' else ''}"
        )
    if by_nll[0] == by_fd[0]:
        verdict = f"both pick σ = {by_nll[0]:.3g}"
    else:
        verdict = (
            f"the σ whose decoder means f(z) are closest to the validation digits is "
            f"σ = {by_fd[0]:.3g} ({test_fd} {samples.spread(by_fd[1], key)}), "
            f"not the likelihood's σ = {by_nll[0]:.3g} "
            f"({samples.spread(by_nll[1], key)}; difference "
            f"{compare.fd_said(compare.fd_difference(by_fd[1], by_nll[1], key))})"
        )
    return [
        f"- **What people look at can part from the likelihood**: by the Fréchet distance of "
        f"prior samples in a digit classifier's features (lower is better, seeds' range in "
        f"brackets{floor}), {verdict}; draws from p(x | z) at σ = {by_fd[0]:.3g} score "
        f"{samples.spread(by_fd[1], 'test/fd_prior_sample')}. Samples and FD per member: "
        f"docs/findings.md."
    ]


def _choices_line(rows, main, per_example) -> list[str]:
    """Each choice a reader might make, on both axes: its test NLL against the best fixed σ
    (each at its best-calibrated score) and its samples' Fréchet distances."""
    best = compare.best_fixed_sigma(rows, main, "_refit")
    by_fd = samples.best_by(rows, main, "val/fd_prior_mean")
    if best is None or by_fd is None or mean(best[1], "test/fd_prior_mean") is None:
        return []
    choices = [(f"the FD's σ = {by_fd[0]:.3g}", by_fd[1])]
    for group in ("gaussian_learned", "gaussian_per_pixel", "laplace", "continuous_bernoulli"):
        members = [r for r in ok_rows(rows) if r["group"] == group]
        if members and mean(members, "test/fd_prior_mean") is not None:
            choices.append((group, members))
    parts = []
    for name, members in choices:
        suffix = compare.best_score(members)
        diff = compare.difference(members, best[1], per_example, suffix, "_refit")
        parts.append(
            f"{name}: {compare.said(diff)}, FD {samples.spread(members, 'test/fd_prior_mean')} / "
            f"{samples.spread(members, 'test/fd_prior_sample')}"
        )
    return [
        f"- **Each choice on both axes** (test NLL against the best fixed σ = {best[0]:.3g} "
        f"refit, each scored at its best calibration; FD of decoder means / of draws, the best "
        f"fixed σ's being {samples.spread(best[1], 'test/fd_prior_mean')} / "
        f"{samples.spread(best[1], 'test/fd_prior_sample')}): {'; '.join(parts)}."
    ]


def _remedy_lines(rows, main, num_dims, per_example) -> list[str]:
    summed = list(implicit_sigmas(num_dims).values())[0]
    parts = []
    for remedy in NAMES:
        members = [
            r
            for r in ok_rows(rows)
            if r["group"] == main
            and r["remedy"] == remedy
            and abs(r["sigma_start"] - summed) / summed < 0.01
        ]
        if not members:
            continue
        trained = compare.against_best(members, rows, main, per_example)
        refit = compare.against_best(members, rows, main, per_example, "_refit")
        none = [r for r in compare.members_at(rows, main, summed) if r["remedy"] == "none"]
        gain = compare.difference(members, none, per_example, "_refit")
        parts.append(
            f"{NAMES[remedy]} {compare.said(trained)} as trained and "
            f"{compare.said(refit)} refit against the best fixed σ ({compare.said(gain)} refit "
            f"against no remedy)"
        )
    if not parts:
        return []
    return [f"- **KL warm-up and free bits at σ² = ½**: {'; '.join(parts)}."]


def answer(sweep_path: str | pathlib.Path, remedies_path: str | pathlib.Path) -> list[str]:
    """README's bullets, from the stored σ sweep and remedies runs."""
    config, rows, num_dims, per_example = load_sweep(pathlib.Path(sweep_path))
    main, latent_dim = config["likelihood"]["name"], config["model"]["latent_dim"]
    rows = plain_rows(rows, main)
    lines = _weighting_lines(rows, main, num_dims, latent_dim, per_example)
    lines += _learned_line(rows, main, per_example)
    lines += _family_line(rows, main, num_dims, pixel_levels(config))
    lines += _gain_lines(rows, main, num_dims, pixel_levels(config))
    quality_path = pathlib.Path(sweep_path) / QUALITY_FILE
    quality = json.loads(quality_path.read_text()) if quality_path.exists() else None
    lines += _samples_line(rows, main, quality) + samples.feature_spaces(rows, main)
    lines += _choices_line(rows, main, per_example)
    r_config, r_rows, _, r_per_example = load_sweep(pathlib.Path(remedies_path))
    return lines + _remedy_lines(r_rows, r_config["likelihood"]["name"], num_dims, r_per_example)


def _between(text: str, markers: tuple[str, str], lines: list[str]) -> str:
    start, end = text.index(markers[0]) + len(markers[0]), text.index(markers[1])
    return text[:start] + "\n" + "\n".join(lines) + "\n" + text[end:]


def rewrite(text: str, results: str | pathlib.Path) -> str:
    """README's text with its answer and replication blocks computed again from the stored runs
    under `results` (docs/results): `python -m vae_jax.report --readme README.md docs/results`."""
    results = pathlib.Path(results)
    text = _between(text, MARKERS, answer(results / "sigma_sweep", results / "remedies"))
    return _between(text, replication.MARKERS, replication.readme_block(results))

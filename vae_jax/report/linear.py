"""report.md's linear-VAE section: trained linear VAEs against the pPCA theory (Lucas et al.
2019) and on the rate–distortion plane, from linear_theory.json and figures.npz (the numbers
`vae_jax.figure_data` computed with `vae_jax.linear`'s maths); this module only writes text and
draws.
"""

from __future__ import annotations

import pathlib

import numpy as np

from vae_jax import likelihoods, linear
from vae_jax.report import plots
from vae_jax.report.rows import by_sigma, ok_rows

TRAINING = (
    "Each step is one closed-form coordinate-ascent sweep of the exact ELBO on the whole "
    "training set (`vae_jax.linear_fit`: decoder and means, a rotation of the latents and their "
    "lengths, encoder, σ² if learned), which never lowers it; a member stops once its objective "
    "and every latent's KL "
    "stop moving (steps: ✓ converged, (cap) stopped at train.num_steps). "
)


def _steps(t: dict) -> str:
    if t["steps"] is None:
        return "–"
    return f"{t['steps']}" + (" ✓" if t["converged"] else " (cap)")


def linear_section(
    path: pathlib.Path,
    rows: list[dict],
    theory: list[dict],
    figures: dict[str, np.ndarray],
    latent_dim: int,
) -> list[str]:
    """report.md lines for a linear VAE: the Lucas et al. (2019) theory (`theory`:
    linear_theory.json's rows) against the trained runs; `figures`: figures.npz's arrays."""
    eigvals = figures["eigenvalues"]
    test = [t for t in theory if t["split"] == "test"]
    train = [t for t in theory if t["split"] == "train"]
    spectrum_plot = plots.plot_spectrum(path, eigvals, test, latent_dim)
    rd_plot = plots.plot_rate_distortion(path, [r for r in rows if r["status"] == "ok"], figures)
    agree = sum(t["predicted_active"] == t["trained_active"] for t in test)
    lines = [
        "## Linear VAE against the pPCA theory (Lucas et al. 2019)",
        "",
        f"Latent i collapses exactly when λ_i ≤ σ² (λ: training-data covariance eigenvalues, "
        f"top {min(len(eigvals), 8)}: {', '.join(f'{v:.3g}' for v in eigvals[:8])}). "
        f"{TRAINING if any(r.get('converged') is not None for r in rows) else ''}"
        f"Trained active units (Burda et al.: Cov_x E_q[z_i] > 0.01) equal the predicted "
        f"k − #{{i ≤ k : λ_i ≤ σ²}} for {agree} of {len(test)} members; the collapsed "
        f"count (latents whose test-averaged KL is below 0.01 nats) is shown too; largest test "
        f"ELBO gap {max((t['gap_percent'] for t in test), default=float('nan')):.3f}%.",
        "",
        "| group | seed | σ² | steps | predicted active | trained active | trained collapsed "
        "(mean KL < 0.01) | analytic log p (test) | trained ELBO (test, exact) | gap % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in test:
        lines.append(
            f"| {t['group']} | {t['seed']} | {t['sigma_sq']:.4g} | {_steps(t)} | "
            f"{t['predicted_active']} | {t['trained_active']} | {t['trained_collapsed']} | "
            f"{t['analytic_log_p']:.3f} | {t['trained_elbo']:.3f} | {t['gap_percent']:.3f} |"
        )
    lines += [
        "",
        "On the training split, where the theory is exact: latent i's KL is ½·log⁺(λ_i/σ²) "
        "(the largest error over the k latents, sorted), the rate is their sum and the "
        "distortion E_q‖x − Wz − μ‖² (per example, posterior noise included) is "
        "Σ_{i≤k} min(λ_i, σ²) + Σ_{i>k} λ_i — reverse water-filling on the spectrum.",
        "",
        "| group | σ² | trained ELBO (train) | analytic log p (train) | max \\|ΔKL_i\\| (nats) | "
        "rate: trained / theory | distortion: trained / theory |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in train:
        lines.append(
            f"| {t['group']} | {t['sigma_sq']:.4g} | {t['trained_elbo']:.3f} | "
            f"{t['analytic_log_p']:.3f} | {t['kl_per_latent_max_error']:.4f} | "
            f"{t['rate_trained']:.3f} / {t['rate_predicted']:.3f} | "
            f"{t['distortion_trained']:.4g} / {t['distortion_predicted']:.4g} |"
        )
    for t in train:
        if "sigma_sq_mle" in t:
            lines.append(
                f"\nLearned σ² = {t['sigma_sq']:.5g} (seed {t['seed']}) against its MLE, the mean "
                f"of the discarded eigenvalues λ_{{k+1..D}}: {t['sigma_sq_mle']:.5g} "
                f"({100 * (t['sigma_sq'] / t['sigma_sq_mle'] - 1):+.4f}%); training-set ELBO "
                f"{t['trained_elbo']:.4f} against the pPCA maximum log-likelihood "
                f"{t['analytic_log_p']:.4f} ({t['trained_elbo'] - t['analytic_log_p']:+.4f} nats)."
            )
    lines += [
        "",
        f"![{spectrum_plot}](plots/{spectrum_plot})",
        "",
        "Each member on the rate–distortion plane, with the optimal linear VAE's curve for this "
        "data: a σ picks the point of the trade-off the loss lands on.",
        "",
        f"![{rd_plot}](plots/{rd_plot})",
        "",
    ]
    return lines


def predicted_active(eigvals: np.ndarray, sigma: float, latent_dim: int) -> int:
    """k − #{i ≤ k : λ_i ≤ σ²}: the latents a linear VAE keeps at decoder std `sigma`
    (`vae_jax.linear.predicted_collapsed`)."""
    return latent_dim - int(linear.predicted_collapsed(eigvals, sigma**2, latent_dim))


def collapse_against_theory(
    rows: list[dict], main: str, eigvals: np.ndarray, latent_dim: int
) -> list[str]:
    """Findings lines: per fixed σ of a nonlinear sweep, the linear theory's active count (the
    eigenvalues of the training data above σ², of the k latents) beside the trained members'
    active units (mean over seeds and their range). [] for a sweep without fixed σ members."""
    main_rows = [r for r in ok_rows(rows) if r["group"] == main]
    if not main_rows or not likelihoods.get_likelihood(main).fixed_sigma:
        return []
    sig, active, low, high = by_sigma(main_rows, "test/active_units")
    predicted = np.array([predicted_active(eigvals, s, latent_dim) for s in sig])
    above = int(np.sum(low > predicted))
    below = int(np.sum(high < predicted))
    cells = [
        f"σ = {s:.3g}: {p} / {a:.1f}" + (f" ({lo:g}–{hi:g})" if lo != hi else "")
        for s, p, a, lo, hi in zip(sig, predicted, active, low, high, strict=True)
    ]
    return [
        f"- **Linear theory's collapse count** (a linear VAE keeps latent i exactly when "
        f"λ_i > σ², λ the training data's covariance eigenvalues; λ_1 = {eigvals[0]:.3g}, "
        f"λ_{latent_dim} = {eigvals[latent_dim - 1]:.3g}) against the trained members' active "
        f"units, predicted / trained (seeds' range): {'; '.join(cells)}.",
        f"  - Every seed keeps more latents than the linear prediction at {above} of "
        f"{len(sig)} σ and every seed fewer at {below}; at the others the prediction lies "
        "within the seeds' range.",
    ]

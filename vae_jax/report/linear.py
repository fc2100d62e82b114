"""report.md's linear-VAE section and linear_theory.json: trained linear VAEs against the pPCA
theory (Lucas et al. 2019) and on the rate–distortion plane. The maths is `vae_jax.linear`'s;
this module only evaluates it for each member and writes text and files.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import linear, metrics, models, plots, workdir


def _flat(x: np.ndarray) -> jax.Array:
    return jnp.asarray(x.reshape(len(x), -1), jnp.float64)


def train_spectrum(problem) -> np.ndarray:
    """Eigenvalues of the training data's covariance (float64), descending."""
    with jax.enable_x64(True):
        return np.asarray(linear.data_spectrum(_flat(problem.train_x))[0])


def rate_distortion_curve(train_x: np.ndarray, latent_dim: int, num: int = 200) -> dict[str, Any]:
    """The optimal linear VAE's (rate, distortion) for the training data, as σ² sweeps the
    spectrum; `plots.plot_rate_distortion` draws it (see `linear.rate_distortion`).

    Returns {"sigma_sq", "rate", "distortion", "distortion_at_mean"}: [num] each, and
    "num_dims": D, the pixels per example.
    """
    with jax.enable_x64(True):
        eigvals = linear.data_spectrum(_flat(train_x))[0]
        top = float(eigvals[0])
        # λ_k may be 0 (or round below it) when k reaches the data's rank.
        bottom = max(float(eigvals[min(latent_dim, eigvals.shape[0]) - 1]), 1e-6 * top)
        sigma_sq = jnp.geomspace(bottom / 20.0, 4.0 * top, num)
        curve = {
            k: np.asarray(v)
            for k, v in linear.rate_distortion(eigvals, sigma_sq, latent_dim).items()
        }
    curve["sigma_sq"] = np.asarray(sigma_sq)
    curve["num_dims"] = int(eigvals.shape[0])
    return curve


@jax.jit
def _split_stats(x, mats, sigma_sq, ppca):
    """Means over the data set `x` [N, D] of the member's exact ELBO terms, its active units and
    collapsed fraction (mean KL < 0.01 nats, as `evaluate` counts it), and the pPCA
    log-likelihood `ppca` reaches there."""
    per_example = jax.vmap(lambda x_: linear.linear_vae_elbo(x_, **mats, sigma_sq=sigma_sq))(x)
    means = {k: jnp.mean(v, axis=0) for k, v in per_example.items()}
    means["active"] = metrics.active_units(x @ mats["enc_W"].T + mats["enc_b"])
    means["collapsed"] = metrics.collapsed_by_mean_kl(means["kl_per_latent"])
    means["log_p"] = linear.ppca_log_likelihood(x, ppca["W"], ppca["mu"], ppca["sigma_sq"])
    return means


_ppca_mle = jax.jit(linear.ppca_mle, static_argnums=1)
_theory = jax.jit(
    lambda eigvals, sigma_sq, k: {
        "kl_per_latent": linear.optimal_kl_per_latent(eigvals, sigma_sq, k),
        "collapsed": linear.predicted_collapsed(eigvals, sigma_sq, k),
        **linear.rate_distortion(eigvals, sigma_sq, k),
    },
    static_argnums=2,
)


def _member_rows(problem, params, row, eigvals, latent_dim) -> list[dict]:
    """One row per split: the member's exact ELBO, KL per latent, rate and distortion against the
    theory at its σ² (for a learned σ, the log-likelihood at the MLE σ² is the optimum)."""
    mats = {k: jnp.asarray(v, jnp.float64) for k, v in models.linear_vae_matrices(params).items()}
    sigma_sq = float(row["sigma"]) ** 2
    learned = problem.likelihood.shared_learned_scale
    if learned:
        sigma_sq_mle = float(linear.ppca_sigma_sq_mle(jnp.asarray(eigvals), latent_dim))
    train_x = _flat(problem.train_x)
    ppca = _ppca_mle(train_x, latent_dim, sigma_sq_mle if learned else sigma_sq)
    theory = jax.tree.map(np.asarray, _theory(jnp.asarray(eigvals), sigma_sq, latent_dim))
    predicted_collapsed = int(theory["collapsed"])
    out = []
    for split, x in (("train", train_x), ("test", _flat(problem.test_x))):
        stats = jax.tree.map(np.asarray, _split_stats(x, mats, sigma_sq, ppca))
        log_p, trained_elbo = float(stats["log_p"]), float(stats["elbo"])
        trained_kl = np.sort(stats["kl_per_latent"])[::-1]
        active = int(stats["active"])
        entry = {
            "group": row["group"],
            "seed": row["seed"],
            "split": split,
            "sigma_sq": sigma_sq,
            "steps": row.get("train/steps"),
            "converged": row.get("converged"),
            "predicted_collapsed": predicted_collapsed,
            "predicted_active": latent_dim - predicted_collapsed,
            "trained_active": active,
            "trained_collapsed": int(round(float(stats["collapsed"]) * latent_dim)),
            "analytic_log_p": log_p,
            "trained_elbo": trained_elbo,
            "gap_percent": 100.0 * abs(trained_elbo - log_p) / abs(log_p),
            "kl_per_latent_trained": trained_kl.tolist(),
            "kl_per_latent_predicted": theory["kl_per_latent"].tolist(),
            "kl_per_latent_max_error": float(np.max(np.abs(trained_kl - theory["kl_per_latent"]))),
            "rate_trained": float(stats["kl"]),
            "rate_predicted": float(theory["rate"]),
            "distortion_trained": float(stats["expected_sq_error"]),
            "distortion_predicted": float(theory["distortion"]),
            # Trained latents are unordered (any rotation of the optimum is optimal), but the
            # a active ones span the top a eigen-directions; the rest stand for ranks a+1…k.
            "collapsed_latents": list(range(active + 1, latent_dim + 1)),
        }
        if learned:
            entry["sigma_sq_mle"] = sigma_sq_mle
        out.append(entry)
    return out


def linear_theory_rows(rows: list[dict], results: dict, latent_dim: int) -> list[dict]:
    """Rows of linear_theory.json: every finished member, on the train and on the test split.

    `split` is the data the numbers are averaged over; the theory (eigenvalues λ, the pPCA W) is
    always the training split's, so "train" rows test the optimum itself and "test" rows how it
    generalises. Computed in float64.
    """
    out = []
    with jax.enable_x64(True):
        for group, result in results.items():
            problem, fitted = result.problem, result.fitted
            eigvals = np.asarray(linear.data_spectrum(_flat(problem.train_x))[0])
            group_rows = [r for r in rows if r["group"] == group]
            for i, row in enumerate(group_rows):
                if row["status"] != "ok":
                    continue
                params = jax.tree.map(lambda a, i=i: a[i], fitted.state.params)
                out += _member_rows(problem, params, row, eigvals, latent_dim)
    return out


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


def linear_section(path: pathlib.Path, rows: list[dict], results: dict, latent_dim: int):
    """report.md lines for a linear VAE: the Lucas et al. (2019) theory against the trained runs."""
    theory = linear_theory_rows(rows, results, latent_dim)
    workdir.write_json_atomic(path / "linear_theory.json", theory)
    problem = next(iter(results.values())).problem
    eigvals = train_spectrum(problem)
    test = [t for t in theory if t["split"] == "test"]
    train = [t for t in theory if t["split"] == "train"]
    spectrum_plot = plots.plot_spectrum(path, eigvals, test, latent_dim)
    curve = rate_distortion_curve(problem.train_x, latent_dim)
    rd_plot = plots.plot_rate_distortion(path, [r for r in rows if r["status"] == "ok"], curve)
    agree = sum(t["predicted_active"] == t["trained_active"] for t in test)
    lines = [
        "## Linear VAE against the pPCA theory (Lucas et al. 2019)",
        "",
        f"Latent i collapses exactly when λ_i ≤ σ² (λ: training-data covariance eigenvalues, "
        f"top {min(len(eigvals), 8)}: {', '.join(f'{v:.3g}' for v in eigvals[:8])}). "
        f"{TRAINING if any('converged' in r for r in rows) else ''}"
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

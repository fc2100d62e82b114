"""report.md's section for linear VAEs: the Lucas et al. (2019) theory against the trained runs.

Per member: predicted collapse (#{i ≤ k : λ_i ≤ σ²}) against trained active units, and the exact
trained ELBO against the analytic pPCA log-likelihood; written as linear_theory.json too.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import linear, models, plots, workdir


def linear_theory_rows(rows: list[dict], outputs: dict, latent_dim: int) -> list[dict]:
    """Per member: predicted vs trained collapse, exact trained ELBO vs analytic pPCA log p."""
    out = []
    for group, (problem, fitted, _, _) in outputs.items():
        train_x = jnp.asarray(problem.train_x.reshape(len(problem.train_x), -1))
        test_x = jnp.asarray(problem.test_x.reshape(len(problem.test_x), -1))
        eigvals, _, _ = linear.data_spectrum(train_x)
        group_rows = [r for r in rows if r["group"] == group]
        for i, row in enumerate(group_rows):
            if row["status"] != "ok":
                continue
            params = jax.tree.map(lambda a, i=i: a[i], fitted.state.params)
            sigma_sq = jnp.float32(row["sigma"] ** 2)
            mats = models.linear_vae_matrices(params)
            trained_elbo = jax.vmap(
                lambda x, m=mats, s=sigma_sq: linear.linear_vae_elbo(x, **m, sigma_sq=s)["elbo"]
            )(test_x)
            ppca = linear.ppca_mle(train_x, latent_dim, sigma_sq)
            log_p = linear.ppca_log_likelihood(test_x, ppca["W"], ppca["mu"], sigma_sq)
            trained_elbo = float(jnp.mean(trained_elbo))
            entry = {
                "group": group,
                "seed": row["seed"],
                "sigma_sq": float(sigma_sq),
                "predicted_collapsed": int(
                    linear.predicted_collapsed(eigvals, sigma_sq, latent_dim)
                ),
                "trained_collapsed": int(round(row["test/collapsed_fraction"] * latent_dim)),
                "trained_active": int(row["test/active_units"]),
                "analytic_log_p": float(log_p),
                "trained_elbo": trained_elbo,
                "gap_percent": 100.0 * abs(trained_elbo - float(log_p)) / abs(float(log_p)),
                # Trained latents are unordered (any rotation of the optimum is optimal), but the
                # a active ones span the top a eigen-directions; the rest stand for ranks a+1…k.
                "collapsed_latents": list(range(int(row["test/active_units"]) + 1, latent_dim + 1)),
            }
            if problem.likelihood.scale == "shared":
                entry["sigma_sq_mle"] = float(linear.ppca_sigma_sq_mle(eigvals, latent_dim))
            out.append(entry)
    return out


def linear_section(path: pathlib.Path, rows: list[dict], outputs: dict, latent_dim: int):
    """report.md lines for a linear VAE: the Lucas et al. (2019) theory against the trained runs."""
    theory = linear_theory_rows(rows, outputs, latent_dim)
    problem = next(iter(outputs.values()))[0]
    train_x = jnp.asarray(problem.train_x.reshape(len(problem.train_x), -1))
    eigvals = np.asarray(linear.data_spectrum(train_x)[0])
    plot = plots.plot_spectrum(path, eigvals, theory, latent_dim)
    workdir.write_json_atomic(path / "linear_theory.json", theory)
    agree = sum(latent_dim - t["predicted_collapsed"] == t["trained_active"] for t in theory)
    lines = [
        "## Linear VAE against the pPCA theory (Lucas et al. 2019)",
        "",
        f"Latent i collapses exactly when λ_i ≤ σ² (λ: training-data covariance eigenvalues, "
        f"top {min(len(eigvals), 8)}: {', '.join(f'{v:.3g}' for v in eigvals[:8])}). "
        f"Trained active units (Burda et al.: Cov_x E_q[z_i] > 0.01) equal the predicted "
        f"k − #{{i ≤ k : λ_i ≤ σ²}} for {agree} of {len(theory)} members; the collapsed "
        f"count (latents whose test-averaged KL is below 0.01 nats) is shown too; largest "
        f"ELBO gap {max((t['gap_percent'] for t in theory), default=float('nan')):.3f}%.",
        "",
        "| group | seed | σ² | predicted collapsed | trained collapsed (mean KL < 0.01) | "
        "trained active | analytic log p (test) | trained ELBO (test, exact) | gap % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in theory:
        lines.append(
            f"| {t['group']} | {t['seed']} | {t['sigma_sq']:.4g} | {t['predicted_collapsed']} | "
            f"{t['trained_collapsed']} | {t['trained_active']} | {t['analytic_log_p']:.3f} | "
            f"{t['trained_elbo']:.3f} | {t['gap_percent']:.3f} |"
        )
    for t in theory:
        if "sigma_sq_mle" in t:
            lines.append(
                f"\nLearned σ² = {t['sigma_sq']:.4g} (seed {t['seed']}) against its MLE, the mean "
                f"of the discarded eigenvalues λ_{{k+1..D}}: {t['sigma_sq_mle']:.4g} "
                f"({100 * (t['sigma_sq'] / t['sigma_sq_mle'] - 1):+.2f}%)."
            )
    lines += ["", f"![{plot}](plots/{plot})", ""]
    return lines

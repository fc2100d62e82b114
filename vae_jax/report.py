"""A sweep's report.md: every sentence filled in from the members' rows (figures: `plots`)."""

from __future__ import annotations

import pathlib

import numpy as np

from vae_jax import likelihoods, linear_report, plots, workdir


def _fmt(value, digits=1):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


COMPARABLE = {
    "real": "density on the dequantised pixels, x = (k+u)/256: comparable with the Gaussian",
    "unit": "density on the same dequantised pixels in [0, 1]: comparable with the Gaussian",
    "binary": "probability of BINARISED pixels: other data, NOT comparable in nats",
    "discrete": "probability of the 256 pixel bins: compare by bits/dim (continuous bpd is an "
    "upper bound on the discrete one)",
}


def sweep_summary(rows: list[dict], main: str, num_dims: int, latent_dim: int) -> list[str]:
    """The report's text, every number read from `rows`."""
    main_rows = [r for r in plots.ok_rows(rows) if r["group"] == main]
    lines = []
    sig, nll, _, _ = plots.by_sigma(main_rows, "test/iwae_nll")
    if not len(sig):
        return ["No member of the main group finished; see the status column."]
    best = int(np.argmin(nll))
    _, bpd, _, _ = plots.by_sigma(main_rows, "test/bits_per_dim")
    lines.append(
        f"- **Best fixed σ:** σ = {sig[best]:.3g} maximises the test likelihood: IWAE NLL "
        f"{nll[best]:.1f} nats ({bpd[best]:.3f} bits/dim), mean over seeds."
    )
    _, active, _, _ = plots.by_sigma(main_rows, "test/active_units")
    _, collapsed, _, _ = plots.by_sigma(main_rows, "test/collapsed_fraction")
    starts = [i for i in range(len(sig)) if collapsed[i] > 0]
    if starts:
        i = starts[0]
        lines.append(
            f"- **Collapse:** latents start collapsing at σ = {sig[i]:.3g} "
            f"({collapsed[i]:.0%} of {latent_dim} collapsed, {active[i]:.1f} active units); "
            f"at σ = {sig[-1]:.3g}: {collapsed[-1]:.0%} collapsed, {active[-1]:.1f} active."
        )
    else:
        lines.append(f"- **Collapse:** no latent collapsed at any σ up to {sig[-1]:.3g}.")
    for name, s in plots.implicit_sigmas(num_dims).items():
        i = int(np.argmin(np.abs(sig - s)))
        if abs(sig[i] - s) / s < 0.01:
            lines.append(
                f"- **{name}**, σ = {s:.3g}: NLL {nll[i]:.1f} nats, {nll[i] - nll[best]:+.1f} "
                f"nats ({bpd[i] - bpd[best]:+.3f} bits/dim) against the best σ; "
                f"{active[i]:.1f} active units, {collapsed[i]:.0%} collapsed."
            )
    for group in ("gaussian_learned", "gaussian_per_pixel", "gaussian_optimal"):
        value = plots.group_mean(rows, group, "test/iwae_nll")
        if value is not None:
            sigma = plots.group_mean(rows, group, "sigma")
            lines.append(
                f"- **{group}** (σ ≈ {_fmt(sigma, 3)}): NLL {value:.1f} nats, "
                f"{value - nll[best]:+.1f} against the best fixed σ."
            )
    for group in sorted({r["group"] for r in plots.ok_rows(rows)} - {main}):
        support = next(r["support"] for r in plots.ok_rows(rows) if r["group"] == group)
        if group.startswith("gaussian"):
            continue
        lines.append(
            f"- **{group}**: NLL {_fmt(plots.group_mean(rows, group, 'test/iwae_nll'))} nats, "
            f"{_fmt(plots.group_mean(rows, group, 'test/bits_per_dim'), 3)} bits/dim — "
            f"{COMPARABLE[support]}."
        )
    return lines


def beta_note(rows: list[dict]) -> list[str]:
    """σ and β are one knob: said wherever a member's KL weight β is not 1."""
    betas = sorted({r["beta"] for r in rows if r.get("beta") is not None} - {1.0})
    if not betas:
        return []
    return [
        "",
        f"KL weights β = {', '.join(f'{b:g}' for b in betas)}: a Gaussian decoder with σ and KL "
        "weight β trains the same model as σ·√β with β = 1 — the objective is β times the "
        "other's plus a constant, and Adam's steps do not depend on the gradient's scale — so "
        "each such member is the β = 1 ELBO at σ·√β.",
    ]


def sweep_report(path: pathlib.Path, config, rows: list[dict], outputs: dict) -> None:
    """plots/ and report.md of a sweep (results.csv is written by `vae_jax.sweep`)."""
    main = config.likelihood.name
    problem = outputs[main][0]
    num_dims = int(np.prod(problem.test_x.shape[1:]))
    for r in rows:
        r["support"] = likelihoods.get_likelihood(r["likelihood"]).support
    (path / "plots").mkdir(exist_ok=True)
    figures = [plots.plot_summary(path, rows, main, num_dims)] + plots.plot_against_sigma(
        path, rows, main, num_dims
    )
    images = plots.plot_member_images(path, main, outputs)
    header = "| group | σ | seed | ELBO | IWAE NLL | bits/dim | MSE | KL | active | collapsed |"
    table = [header, "|" + "---|" * 10]
    for r in rows:
        if r["status"] != "ok":
            table.append(f"| {r['group']} | {_fmt(r['sigma'], 3)} | {r['seed']} | {r['status']} |")
            continue
        table.append(
            f"| {r['group']} | {_fmt(r['sigma'], 3)} | {r['seed']} | {_fmt(r['test/elbo'])} | "
            f"{_fmt(r['test/iwae_nll'])} | {_fmt(r['test/bits_per_dim'], 3)} | "
            f"{_fmt(r['test/recon_mse'], 4)} | {_fmt(r['test/kl'])} | "
            f"{r['test/active_units']} | {_fmt(r['test/collapsed_fraction'], 2)} |"
        )
    text = [
        f"# σ sweep: {config.data.name}, {config.model.kind} VAE, "
        f"{config.model.latent_dim} latents",
        "",
        f"{config.train.num_steps} steps of batch {config.train.batch_size}; test metrics on "
        f"{problem.test_x.shape[0]} test examples, IWAE with K = {config.eval.iwae_samples}. "
        "Nats per example; higher ELBO and lower NLL are better.",
        *beta_note(rows),
        "",
        "## What the numbers say",
        *sweep_summary(rows, main, num_dims, config.model.latent_dim),
        "",
        "## Plots",
        *[f"![{p}](plots/{p})" for p in figures + ([images] if images else [])],
        "",
        *(
            linear_report.linear_section(path, rows, outputs, config.model.latent_dim)
            if config.model.kind == "linear" and main.startswith("gaussian")
            else []
        ),
        "## All members",
        *table,
        "",
    ]
    workdir.write_text_atomic(path / "report.md", "\n".join(text))

"""A sweep's report.md and figures, and its findings, rendered from a workdir's files alone.

render(path)                          plots/ and report.md (`python -m vae_jax.report WORKDIR`)
findings_from_workdir(path) -> lines  the findings and the summary table
headline(path) -> lines               what a finished sweep prints (`verdict`)

The files: config.json, results.csv, per_example.npz, figures.npz (`vae_jax.figure_data`; a
workdir written before it gets its arrays recomputed from the data its config names), and where
the sweep wrote them samples.npz, sample_quality.json, linear_theory.json and
groups/*/metrics.jsonl. Nothing here trains, evaluates or runs a model.
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np

from vae_jax import data, figure_data, likelihoods, workdir
from vae_jax.report import (
    families,
    linear,
    plots,
    remedies,
    sample_plots,
    samples,
    sigma,
    verdict,
)
from vae_jax.report.rows import ok_rows, plain_rows, with_index

QUALITY_FILE = figure_data.QUALITY_FILE


def _read_json(path: pathlib.Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.exists() else None


def _read_images(path: pathlib.Path, figures: dict) -> dict:
    """samples.npz's image sets, or the member images figures.npz holds in its layout; {}."""
    if (path / "samples.npz").exists():
        with np.load(path / "samples.npz") as f:
            return {k: f[k] for k in f.files}
    return {k: figures[k] for k in ("reconstruction", "prior_mean", "test") if k in figures}


def render(path: str | pathlib.Path) -> None:
    """plots/*.png and report.md of the sweep in `path`, from its files alone."""
    path = pathlib.Path(path)
    config, rows, num_dims, per_example = load_sweep(path)
    main = config["likelihood"]["name"]
    fit = remedies.learned_fit(config["likelihood"])
    smoke_test = bool(config["sweep"].get("smoke_test"))
    latent_dim = config["model"]["latent_dim"]
    figures = figure_data.read(path, config)
    images = _read_images(path, figures)
    quality = _read_json(path / QUALITY_FILE)
    theory = _read_json(path / figure_data.LINEAR_THEORY_FILE)
    (path / "plots").mkdir(exist_ok=True)
    remedies_lines = (
        remedies.remedies_section(
            path,
            rows,
            main,
            kappa=config["train"]["geco_kappa"],
            fit=fit,
            smoke_test=smoke_test,
            per_example=per_example,
        )
        if config["sweep"].get("remedies")
        else []
    )
    all_rows, rows = rows, plain_rows(rows, main)
    model, fixed = config["model"], likelihoods.get_likelihood(main).fixed_sigma
    main_ok = [r for r in ok_rows(rows) if r["group"] == main]
    figures_shown = []
    if main_ok:  # a sweep of remedies only: none
        figures_shown = [plots.plot_summary(path, rows, main, num_dims)] + plots.plot_against_sigma(
            path, rows, main, num_dims
        )
    if figures_shown and fixed and model["kind"] != "linear":
        # The fixed-σ members on the rate–distortion plane, with the optimal linear VAE's curve
        # (a linear VAE's section draws its own).
        figures_shown.append(plots.plot_rate_distortion(path, main_ok, figures))
    shown_images = [plots.plot_member_images(path, rows, main, images)]
    if samples.has_samples(rows) and main_ok:
        figures_shown.append(sample_plots.plot_nll_and_fd(path, rows, main))
    if "prior_sample" in images:
        shown_images.append(sample_plots.plot_sample_grid(path, grid_rows(rows, main), images))
    shown = figures_shown + [name for name in shown_images if name]
    findings = (
        []
        if smoke_test
        else [
            *_verdict_section(config, rows, num_dims, per_example),
            "## What the numbers say",
            *sigma.sweep_summary(
                rows,
                main,
                num_dims,
                latent_dim,
                per_example,
                validation_fitted=fit.on_validation,
                num_bins=pixel_levels(config),
            ),
            *_against_theory(config, rows, figures),
            "",
        ]
    )
    num_sigmas = len({r["sigma"] for r in rows if r["group"] == main})
    text = [
        f"# σ sweep: {config['data']['name']}, {model['kind']} VAE, {latent_dim} latents",
        "",
        *sigma.describe_run(config, figures, num_sigmas),
        *sigma.beta_note(rows),
        *findings,
        *remedies_lines,
        *samples.samples_section(rows, main, quality, smoke_test),
        *families.families_section(rows, main),
        "## Plots",
        *[f"![{p}](plots/{p})" for p in shown],
        "",
        *(
            linear.linear_section(path, rows, theory, figures, latent_dim)
            if theory is not None
            else []
        ),
        "## All members",
        "",
        "σ: the decoder's standard deviation (Gaussian σ; Laplace √2·b; logistic π·s/√3; "
        "root-mean-square over pixels for a per-pixel or predicted scale); NLLs: IWAE bound, "
        "nats per example; bits/dim and MSE as trained; collapsed: fraction of latents whose "
        "mean KL is below 0.01 nats.",
        "",
        *sigma.members_table(all_rows),
        "",
    ]
    workdir.write_text_atomic(path / "report.md", "\n".join(text))


def _against_theory(config: dict, rows: list[dict], figures: dict) -> list[str]:
    """The linear theory's collapse count beside a nonlinear sweep's active units ([] for a
    linear VAE, whose own section compares every member with the theory)."""
    if config["model"]["kind"] == "linear":
        return []
    main = config["likelihood"]["name"]
    latent_dim = config["model"]["latent_dim"]
    return linear.collapse_against_theory(rows, main, figures["eigenvalues"], latent_dim)


def _verdict_section(config: dict, rows: list[dict], num_dims: int, per_example) -> list[str]:
    lines = verdict.verdict_lines(config, rows, num_dims, per_example)
    return ["## The verdict", "", *lines, ""] if lines else []


def grid_rows(rows: list[dict], main: str) -> list[dict]:
    """The first seed of every fixed σ and of every other family, labelled, for the grid."""
    shown = []
    for label, members in samples.candidates(rows, main):
        shown.append(dict(members[0], label=f"{label}, seed {members[0]['seed']}"))
    return shown


def load_sweep(path: pathlib.Path) -> tuple[dict, list[dict], int, dict | None]:
    """config.json, results.csv's rows (`comparison.with_index`), D and per_example.npz's arrays
    (None if the workdir predates them) of a sweep's workdir."""
    config = json.loads((path / "config.json").read_text())
    rows = with_index(workdir.read_results_csv(path / "results.csv"))
    num_dims = math.prod(data.event_shape(config["data"]["name"]))
    return config, rows, num_dims, workdir.read_per_example(path / "per_example.npz")


def pixel_levels(config: dict) -> int:
    """K, the pixel levels of the config's dataset (`data.NUM_BINS`; 256 for data without a
    grid of its own): the 8-bit scale the report ranks families on."""
    return data.NUM_BINS.get(config["data"]["name"], 256)


def findings_from_workdir(path: str | pathlib.Path) -> list[str]:
    """The findings and the summary table of a finished sweep, recomputed from its results.csv
    and config.json alone (`python -m vae_jax.report WORKDIR` prints them; README's numbers
    come from here)."""
    path = pathlib.Path(path)
    config, all_rows, num_dims, per_example = load_sweep(path)
    main = config["likelihood"]["name"]
    rows = plain_rows(all_rows, main)
    remedies_lines = []
    if config["sweep"].get("remedies"):
        remedies_lines = [
            "",
            *remedies.remedy_table(
                all_rows, main, per_example, remedies.learned_fit(config["likelihood"])
            ),
            "",
            *remedies.remedies_findings(
                path,
                all_rows,
                main,
                config["train"]["geco_kappa"],
                remedies.learned_fit(config["likelihood"]),
                per_example,
            ),
        ]
    fitted = remedies.learned_fit(config["likelihood"]).on_validation
    quality_path = path / QUALITY_FILE
    quality = json.loads(quality_path.read_text()) if quality_path.exists() else None
    sample_lines = []
    if samples.has_samples(rows):
        sample_lines = [
            "",
            *samples.samples_table(rows, main),
            "",
            *samples.samples_findings(rows, main, quality),
        ]
    return [
        *sigma.sweep_summary(
            rows,
            main,
            num_dims,
            config["model"]["latent_dim"],
            per_example,
            validation_fitted=fitted,
            num_bins=pixel_levels(config),
        ),
        *_against_theory(config, rows, figure_data.read(path, config)),
        "",
        *sigma.convention_lines(rows, main, num_dims, per_example),
        *sigma.summary_table(rows, main, num_dims),
        *sample_lines,
        *remedies_lines,
    ]


def headline(path: str | pathlib.Path) -> list[str]:
    """What a finished sweep prints: where report.md is and its verdict (a smoke test: none)."""
    path = pathlib.Path(path)
    config, rows, num_dims, per_example = load_sweep(path)
    lines = [f"report: {path / 'report.md'}"]
    if config["sweep"].get("smoke_test"):
        ok = len(ok_rows(rows))
        return lines + [
            f"smoke test: {ok} of {len(rows)} members trained and were scored; too small to carry "
            "findings (run the full config for those)"
        ]
    main = config["likelihood"]["name"]
    rows = plain_rows(rows, main)
    said = verdict.verdict_lines(config, rows, num_dims, per_example)
    if not said:  # a sweep of remedies: its findings
        latent_dim = config["model"]["latent_dim"]
        fitted = remedies.learned_fit(config["likelihood"]).on_validation
        said = sigma.sweep_summary(
            rows,
            main,
            num_dims,
            latent_dim,
            per_example,
            validation_fitted=fitted,
            num_bins=pixel_levels(config),
        )
    return lines + said

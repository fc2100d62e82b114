"""A sweep's report.md: every sentence filled in from the members' rows (figures: `plots`)."""

from __future__ import annotations

import json
import math
import pathlib
import sys

import numpy as np

from vae_jax import (
    conventions,
    data,
    likelihoods,
    linear_report,
    objective,
    plots,
    report_remedies,
    workdir,
)


def _fmt(value, digits=1):
    if value is None or value == "" or (isinstance(value, float) and not np.isfinite(value)):
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
# The two questions a σ answers, each a proper density (see `vae_jax.evaluate`).
SCORES = {
    "": "as trained (each model scored with the σ it trained with)",
    "_refit": "refit (σ refitted in closed form on the validation data after training)",
}


def _chosen(main_rows: list[dict], suffix: str) -> int | None:
    """Index into `plots.by_sigma`'s σ of the σ with the best mean VALIDATION NLL."""
    sig, val, _, _ = plots.by_sigma(main_rows, "val/iwae_nll" + suffix)
    if not len(sig):
        return None
    all_sig, _, _, _ = plots.by_sigma(main_rows, "test/iwae_nll" + suffix)
    return int(np.flatnonzero(all_sig == sig[int(np.argmin(val))])[0])


def sweep_summary(rows: list[dict], main: str, num_dims: int, latent_dim: int) -> list[str]:
    """The report's findings, every number read from `rows` (results.csv's rows).

    The best fixed σ is chosen on validation data, separately for each score; every cost is the
    test NLL of a member minus the test NLL of that choice (means over seeds).
    """
    main_rows = [r for r in plots.ok_rows(rows) if r["group"] == main]
    if not main_rows:
        return ["No member of the main group finished; see the status column."]
    sig, _, _, _ = plots.by_sigma(main_rows, "test/iwae_nll")
    _, active, _, _ = plots.by_sigma(main_rows, "test/active_units")
    _, collapsed, _, _ = plots.by_sigma(main_rows, "test/collapsed_fraction")
    lines = []
    implicit = plots.implicit_sigmas(num_dims)
    for suffix, what in SCORES.items():
        _, nll, _, _ = plots.by_sigma(main_rows, "test/iwae_nll" + suffix)
        _, bpd, _, _ = plots.by_sigma(main_rows, "test/bits_per_dim" + suffix)
        best = _chosen(main_rows, suffix)
        if best is None or len(nll) != len(sig):
            continue
        lines.append(
            f"- **Scored {what}.** Best fixed σ on validation data: σ = {sig[best]:.3g}, test "
            f"NLL {nll[best]:.1f} nats ({bpd[best]:.3f} bits/dim)."
        )
        for name, s in implicit.items():
            i = int(np.argmin(np.abs(sig - s)))
            if abs(sig[i] - s) / s < 0.01:
                lines.append(
                    f"  - {name}, σ = {s:.3g}: {nll[i] - nll[best]:+.1f} nats "
                    f"({bpd[i] - bpd[best]:+.3f} bits/dim) against it."
                )
        for group in ("gaussian_learned", "gaussian_per_pixel", "gaussian_optimal", "laplace"):
            value = plots.group_mean(rows, group, "test/iwae_nll" + suffix)
            if value is not None:
                sigma = plots.group_mean(rows, group, "sigma" + suffix)
                lines.append(
                    f"  - {group} (decoder std ≈ {_fmt(sigma, 3)}): NLL {value:.1f} nats, "
                    f"{value - nll[best]:+.1f} against the best fixed σ."
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
        _, train_nll, _, _ = plots.by_sigma(main_rows, "train/iwae_nll")
        _, test_nll, _, _ = plots.by_sigma(main_rows, "test/iwae_nll")
        if len(train_nll) == len(sig):
            gaps = test_nll - train_nll
            lines.append(
                f"- **Overfitting:** at the chosen σ = {sig[best]:.3g} the training NLL is "
                f"{train_nll[best]:.1f} nats and the test NLL {test_nll[best]:.1f} "
                f"({gaps[best]:+.1f}); the test−train gap is largest at σ = "
                f"{sig[int(np.argmax(gaps))]:.3g} ({np.max(gaps):+.1f}) and smallest at "
                f"σ = {sig[int(np.argmin(gaps))]:.3g} ({np.min(gaps):+.1f})."
            )
    for group in sorted({r["group"] for r in plots.ok_rows(rows)} - {main}):
        support = next(r["support"] for r in plots.ok_rows(rows) if r["group"] == group)
        if group.startswith("gaussian") or group == "laplace":
            continue
        mse = plots.group_mean(rows, group, "test/recon_mse")
        grey = plots.group_mean(rows, group, "test/recon_mse_grey")
        grey_text = f", MSE against the grey images {grey:.4f}" if grey is not None else ""
        lines.append(
            f"- **{group}**: NLL {_fmt(plots.group_mean(rows, group, 'test/iwae_nll'))} nats, "
            f"{_fmt(plots.group_mean(rows, group, 'test/bits_per_dim'), 3)} bits/dim, MSE "
            f"{_fmt(mse, 4)}{grey_text} — {COMPARABLE[support]}."
        )
    return lines


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


def convention_lines(rows: list[dict], main: str, num_dims: int) -> list[str]:
    """Where widely used VAE code lands on the σ axis (`conventions.KNOWN_CONVENTIONS`, at each
    library's own batch size) and what the nearest measured members cost, both scores."""
    main_rows = [r for r in plots.ok_rows(rows) if r["group"] == main]
    sig, _, _, _ = plots.by_sigma(main_rows, "test/iwae_nll")
    costs = {}
    for suffix in SCORES:
        best = _chosen(main_rows, suffix)
        _, nll, _, _ = plots.by_sigma(main_rows, "test/iwae_nll" + suffix)
        if best is not None and len(nll) == len(sig):
            costs[suffix] = nll - nll[best]
    if not costs or not len(sig):
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
                f"{cost[i]:+.1f} nats {'as trained' if suffix == '' else 'refit'}"
                for suffix, cost in costs.items()
            )
            for i in at
        )
        lines.append(f"- {label}: σ = {s:.3g} — {measured}.")
    return lines + [""]


def describe_run(config, problem, num_sigmas: int) -> list[str]:
    """What was run, in one paragraph; a smoke test says that its numbers carry no finding."""
    seeds = len(config.sweep.seeds)
    steps = f"{config.train.num_steps} steps"
    if config.train.get("convergence") is not None:  # members stop once converged
        steps = f"at most {steps}"
    batch = f"batch {config.train.batch_size}"
    if config.train.get("full_batch"):
        batch = "the whole training set"
    text = (
        f"{steps} of {batch}, {seeds} seed(s); "
        f"{len(problem.train_x)} training, {len(problem.val_x)} validation (selections) and "
        f"{len(problem.test_x)} test examples; IWAE with K = {config.eval.iwae_samples}. Nats "
        "per example; higher ELBO and lower NLL are better; a negative NLL is a density above "
        "1, as densities on [0, 1]^D can be."
    )
    lines = [text, ""]
    if config.sweep.get("smoke_test"):
        lines += [
            f"**Smoke test.** {num_sigmas} fixed σ, {config.train.num_steps} steps, "
            f"{seeds} seed(s), a small model: it shows that every member trains and is scored. "
            "It is too short and too coarse to say which σ is best or what a weighting costs — "
            "run the full config for that. The findings section is left out on purpose.",
            "",
        ]
    return lines


def summary_table(rows: list[dict], main: str, num_dims: int) -> list[str]:
    """One line per σ of the main group and per other family, means over seeds (README's table)."""
    implicit = {
        round(v, 6): name.split(" (")[0] for name, v in plots.implicit_sigmas(num_dims).items()
    }
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
    ok = plots.ok_rows(rows)
    groups = [(main, s) for s in sorted({r["sigma"] for r in ok if r["group"] == main})]
    groups += [(g, None) for g in dict.fromkeys(r["group"] for r in ok if r["group"] != main)]
    for group, sigma in groups:
        members = [r for r in ok if r["group"] == group and (sigma is None or r["sigma"] == sigma)]
        cells = []
        for key, digits in keys:
            values = [r[key] for r in members if r.get(key) is not None]
            cells.append(_fmt(float(np.mean(values)), digits) if values else "–")
        name = group
        if sigma is not None and group == "gaussian":
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
            table.append(f"| {group} | {_fmt(r['sigma'], 3)} | | {r['seed']} | {r['status']} |")
            continue
        table.append(
            f"| {group} | {_fmt(r['sigma'], 3)} | {_fmt(r.get('sigma_refit'), 3)} | "
            f"{r['seed']} | {_fmt(r['test/iwae_nll'])} | {_fmt(r.get('test/iwae_nll_refit'))} | "
            f"{_fmt(r.get('val/iwae_nll'))} | {_fmt(r.get('train/iwae_nll'))} | "
            f"{_fmt(r['test/bits_per_dim'], 3)} | {_fmt(r['test/recon_mse'], 4)} | "
            f"{_fmt(r['test/kl'])} | {r['test/active_units']} | "
            f"{_fmt(r['test/collapsed_fraction'], 2)} |"
        )
    return table


def plain_rows(rows: list[dict], main: str) -> list[dict]:
    """The rows the σ-sweep sections read: the main group's plain-ELBO members (a remedy changes
    the objective; a learned-scale family's own label, e.g. `learned_sigma`, does not) and the
    reference families."""
    remedies = set(objective.REMEDIES) - {"none"}

    def plain(row: dict) -> bool:
        return not set(str(row.get("remedy") or "none").split("+")) & remedies

    return [r for r in rows if r["group"] != main or plain(r)]


def sweep_report(path: pathlib.Path, config, rows: list[dict], outputs: dict) -> None:
    """plots/ and report.md of a sweep (results.csv is written by `vae_jax.sweep`)."""
    main = config.likelihood.name
    problem = outputs[main][0]
    num_dims = int(np.prod(problem.test_x.shape[1:]))
    for r in rows:
        r["support"] = likelihoods.get_likelihood(r["likelihood"]).support
    (path / "plots").mkdir(exist_ok=True)
    remedies = (
        report_remedies.remedies_section(
            path,
            rows,
            main,
            kappa=config.train.geco_kappa,
            fit=report_remedies.learned_fit(config.likelihood),
            smoke_test=bool(config.sweep.get("smoke_test")),
        )
        if config.sweep.get("remedies")
        else []
    )
    all_rows, rows = rows, plain_rows(rows, main)
    figures = []
    if any(r["group"] == main for r in plots.ok_rows(rows)):  # a sweep of remedies only: none
        figures = [plots.plot_summary(path, rows, main, num_dims)] + plots.plot_against_sigma(
            path, rows, main, num_dims
        )
    if figures and main == "gaussian" and config.model.kind != "linear":  # linear: its section
        # The fixed-σ members on the rate–distortion plane, with the optimal linear VAE's curve.
        curve = linear_report.rate_distortion_curve(problem.train_x, config.model.latent_dim)
        main_rows = [r for r in plots.ok_rows(rows) if r["group"] == main]
        figures.append(plots.plot_rate_distortion(path, main_rows, curve))
    images = plots.plot_member_images(path, main, outputs)
    findings = (
        []
        if config.sweep.get("smoke_test")
        else [
            "## What the numbers say",
            *sweep_summary(rows, main, num_dims, config.model.latent_dim),
            "",
        ]
    )
    text = [
        f"# σ sweep: {config.data.name}, {config.model.kind} VAE, "
        f"{config.model.latent_dim} latents",
        "",
        *describe_run(config, problem, len({r["sigma"] for r in rows if r["group"] == main})),
        *beta_note(rows),
        *findings,
        *remedies,
        "## Plots",
        *[f"![{p}](plots/{p})" for p in figures + ([images] if images else [])],
        "",
        *(
            linear_report.linear_section(path, rows, outputs, config.model.latent_dim)
            if config.model.kind == "linear" and main.startswith("gaussian")
            else []
        ),
        "## All members",
        "",
        "σ: the decoder's standard deviation (Gaussian σ; Laplace √2·b; logistic π·s/√3; "
        "root-mean-square over pixels for a per-pixel or predicted scale); NLLs: IWAE bound, "
        "nats per example; bits/dim and MSE as trained; collapsed: fraction of latents whose "
        "mean KL is below 0.01 nats.",
        "",
        *members_table(all_rows),
        "",
    ]
    workdir.write_text_atomic(path / "report.md", "\n".join(text))


# ----------------------------------------------------------------------------- from the files


def _load_sweep(path: pathlib.Path) -> tuple[dict, list[dict], int]:
    """config.json, results.csv's rows (with each family's support) and D of a sweep's workdir."""
    config = json.loads((path / "config.json").read_text())
    rows = workdir.read_results_csv(path / "results.csv")
    for r in rows:
        r["support"] = likelihoods.get_likelihood(r["likelihood"]).support
    num_dims = math.prod(data.load_numpy(config["data"]["name"], "test").shape[1:])
    return config, rows, num_dims


def findings_from_workdir(path: str | pathlib.Path) -> list[str]:
    """The findings and the summary table of a finished sweep, recomputed from its results.csv
    and config.json alone (`python -m vae_jax.report WORKDIR` prints them; README's numbers
    come from here)."""
    path = pathlib.Path(path)
    config, all_rows, num_dims = _load_sweep(path)
    main = config["likelihood"]["name"]
    rows = plain_rows(all_rows, main)
    remedies = []
    if config["sweep"].get("remedies"):
        remedies = [
            "",
            *report_remedies.remedy_table(all_rows, main),
            "",
            *report_remedies.remedies_findings(
                path,
                all_rows,
                main,
                config["train"]["geco_kappa"],
                report_remedies.learned_fit(config["likelihood"]),
            ),
        ]
    return [
        *sweep_summary(rows, main, num_dims, config["model"]["latent_dim"]),
        "",
        *convention_lines(rows, main, num_dims),
        *summary_table(rows, main, num_dims),
        *remedies,
    ]


def headline(path: str | pathlib.Path) -> list[str]:
    """What a finished sweep prints: where report.md is and its findings (a smoke test: none)."""
    path = pathlib.Path(path)
    config, rows, num_dims = _load_sweep(path)
    lines = [f"report: {path / 'report.md'}"]
    if config["sweep"].get("smoke_test"):
        ok = len(plots.ok_rows(rows))
        return lines + [
            f"smoke test: {ok} of {len(rows)} members trained and were scored; too small to carry "
            "findings (run the full config for those)"
        ]
    main = config["likelihood"]["name"]
    return lines + sweep_summary(
        plain_rows(rows, main), main, num_dims, config["model"]["latent_dim"]
    )


if __name__ == "__main__":
    for line in findings_from_workdir(sys.argv[1]):
        print(line)

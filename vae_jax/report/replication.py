"""README's replication table: does the answer hold beyond one dataset and one model?

One row per stored σ sweep (dataset, model), every cell computed from that run's files by the
rules of `vae_jax.report.compare` (choices on validation data, each score against the best fixed
σ of the same score, seed-level 95% intervals, "not resolved" where one holds 0):
- the best fixed σ on validation data;
- what summed MSE + KL (σ² = ½) and mean MSE + KL (σ² = D/2) cost against it, as trained and
  refit, nats per image;
- the latents in use at σ² = ½ (of the model's latents) by two measures — active (the variance
  of the posterior mean over the test images above 0.01, `metrics.active_units`) and not
  collapsed (KL averaged over the test images ≥ 0.01 nats, `metrics.collapsed_by_mean_kl`) —
  beside the linear VAE theory's count for the same data (`report.linear.predicted_active`: the
  eigenvalues of the training data's covariance above σ², of the k latents). The two measures
  agree on a latent the model uses or leaves at the prior; one carrying between 0.005 and 0.01
  nats can count as active and collapsed at once;
- the σ best by the Fréchet distance of its decoder means (chosen on validation images) against
  the σ best by the likelihood (`differences` compares which is larger: the grids differ between
  configs, so the σ values themselves need not match);
- the family first on the 8-bit scale (`compare.eight_bit_ranking`, chosen on validation data).
A run that is not stored is a row saying so, never a filled-in cell. `differences(table)`
names in words where a conclusion differs between rows.
"""

from __future__ import annotations

import dataclasses
import pathlib

from vae_jax import figure_data
from vae_jax.likelihoods import implicit_sigmas
from vae_jax.report import compare, linear, samples
from vae_jax.report.rows import mean, plain_rows
from vae_jax.report.write import load_sweep, pixel_levels

MARKERS = ("<!-- replication -->", "<!-- /replication -->")
# (row label, stored run) of README's table.
RUNS = (
    ("mnist_5k, MLP", "sigma_sweep"),
    ("Fashion-MNIST, MLP", "fashion_sigma_sweep"),
    ("Fashion-MNIST, conv", "fashion_conv_sweep"),
)
HEADER = (
    "| data, model | seeds | best fixed σ | summed MSE + KL, as trained / refit | "
    "mean MSE + KL, as trained / refit | latents at σ² = ½: active / not collapsed "
    "(linear theory) | "
    "σ best by FD / by NLL | "
    "first on the 8-bit scale |",
    "|---|---|---|---|---|---|---|---|",
)


@dataclasses.dataclass(frozen=True)
class Row:
    """One stored sweep's cells; `stored` False: the run is not in docs/results yet."""

    label: str
    stored: bool
    seeds: int = 0
    best_sigma: float | None = None
    summed: tuple = (None, None)  # intervals.Difference as trained, refit
    averaged: tuple = (None, None)
    active: float | None = None
    not_collapsed: float | None = None  # latent_dim · (1 − test/collapsed_fraction)
    latent_dim: int = 0
    active_linear: int | None = None  # the linear VAE theory's active count at σ² = ½
    sigma_by_fd: float | None = None
    sigma_by_nll: float | None = None
    first_family: str | None = None


def _at(rows: list[dict], main: str, sigma: float) -> list[dict]:
    for s, members in compare.fixed_sigma_groups(rows, main).items():
        if abs(s - sigma) / sigma < 0.01:
            return members
    return []


def row_of(label: str, path: pathlib.Path) -> Row:
    """The table row of the stored sweep in `path` (Row(stored=False) if it has no results)."""
    if not (path / "results.csv").exists():
        return Row(label, stored=False)
    config, rows, num_dims, per_example = load_sweep(path)
    main = config["likelihood"]["name"]
    rows = plain_rows(rows, main)
    best = compare.best_fixed_sigma(rows, main)
    summed, averaged = (_at(rows, main, s) for s in implicit_sigmas(num_dims).values())

    def costs(members):
        return tuple(
            compare.against_best(members, rows, main, per_example, suffix) if members else None
            for suffix in ("", "_refit")
        )

    by_fd = samples.best_by(rows, main, "val/fd_prior_mean")
    by_nll = samples.best_by(rows, main, "val/iwae_nll")
    ranked = compare.eight_bit_ranking(rows, main, num_dims, pixel_levels(config))
    latent_dim = config["model"]["latent_dim"]
    eigvals = figure_data.read(path, config)["eigenvalues"]
    half, _ = implicit_sigmas(num_dims).values()  # σ² = ½
    return Row(
        label,
        stored=True,
        seeds=len({r["seed"] for r in rows}),
        best_sigma=None if best is None else best[0],
        summed=costs(summed),
        averaged=costs(averaged),
        active=mean(summed, "test/active_units") if summed else None,
        not_collapsed=(
            latent_dim * (1 - mean(summed, "test/collapsed_fraction")) if summed else None
        ),
        latent_dim=latent_dim,
        active_linear=linear.predicted_active(eigvals, half, latent_dim),
        sigma_by_fd=None if by_fd is None else by_fd[0],
        sigma_by_nll=None if by_nll is None else by_nll[0],
        first_family=ranked[0].name if ranked else None,
    )


def table(results: str | pathlib.Path, runs=RUNS) -> list[Row]:
    """The rows of `runs` under the results directory `results` (docs/results)."""
    return [row_of(label, pathlib.Path(results) / name) for label, name in runs]


def _cell(diff) -> str:
    return "–" if diff is None else diff.short(0)


def _sigma(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _active(r: Row) -> str:
    if r.active is None:
        return "–"
    return f"{r.active:.1f} / {r.not_collapsed:.1f} of {r.latent_dim} ({r.active_linear})"


def markdown(rows: list[Row]) -> list[str]:
    """README's table, one line per row."""
    lines = list(HEADER)
    for r in rows:
        if not r.stored:
            lines.append(f"| {r.label} | not stored yet | " + " | ".join(["–"] * 6) + " |")
            continue
        lines.append(
            f"| {r.label} | {r.seeds} | {_sigma(r.best_sigma)} | {_cell(r.summed[0])} / "
            f"{_cell(r.summed[1])} | {_cell(r.averaged[0])} / {_cell(r.averaged[1])} | "
            f"{_active(r)} | "
            f"{_sigma(r.sigma_by_fd)} / {_sigma(r.sigma_by_nll)} | {r.first_family or '–'} |"
        )
    return lines


def _fewer_than_linear(r: Row) -> str:
    if r.active is None:
        return "–"
    counts = (r.active, r.not_collapsed)
    if all(c < r.active_linear for c in counts):
        return "fewer by both measures"
    if all(c >= r.active_linear for c in counts):
        return "not fewer by either measure"
    return "fewer by one measure only"


def _fd_against_nll(r: Row) -> str:
    if r.sigma_by_fd is None or r.sigma_by_nll is None:
        return "–"
    if r.sigma_by_fd == r.sigma_by_nll:
        return "the same σ"
    return "larger" if r.sigma_by_fd > r.sigma_by_nll else "smaller"


def differences(rows: list[Row]) -> list[str]:
    """Bullets naming where a conclusion differs between the stored rows, and what they agree on."""
    stored = [r for r in rows if r.stored]
    missing = [r.label for r in rows if not r.stored]
    said = []
    checks = {
        "the best fixed σ": lambda r: _sigma(r.best_sigma),
        "whether summed MSE + KL costs nats refit": lambda r: compare.verdict(r.summed[1]),
        "whether the σ best by FD is larger than the likelihood's": _fd_against_nll,
        "the family first on the 8-bit scale": lambda r: r.first_family,
        "whether σ² = ½ keeps fewer latents than the linear theory predicts": _fewer_than_linear,
    }
    agreed = []
    for what, of in checks.items():
        values = {r.label: of(r) for r in stored}
        if len(set(values.values())) > 1:
            each = "; ".join(f"{k}: {v}" for k, v in values.items())
            said.append(f"- {what[0].upper()}{what[1:]} differs: {each}.")
        elif len(stored) > 1:
            agreed.append(f"{what} ({next(iter(values.values()))})")
    if agreed:
        said.append(f"- The stored rows agree on {'; '.join(agreed)}.")
    if missing:
        said.append(f"- Not stored yet (no claim is made for them): {', '.join(missing)}.")
    return said


def readme_block(results: str | pathlib.Path) -> list[str]:
    """README's lines between MARKERS: the table and the sentences, from `results`."""
    rows = table(results)
    return [*markdown(rows), "", *differences(rows)]

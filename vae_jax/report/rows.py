"""Row statistics every report reads: results.csv's rows, grouped, averaged and formatted.

Rows are dicts as `vae_jax.workdir.read_results_csv` returns them; `with_index` gives each its
row in per_example.npz, its family's data model. Nothing here draws or writes.
"""

from __future__ import annotations

import numpy as np

from vae_jax import likelihoods, spec

PLAIN = "none"


def fitted_on_validation(group: str) -> bool:
    """Whether family `group`'s scale, as trained, is already fitted on the validation data when
    `likelihood.sigma_fit='validation'` (one shared learned scale with a closed-form fit, as
    `spec_types.Likelihood.scale_on_validation` says): compared refit to refit only."""
    family = likelihoods.get_likelihood(group)
    return family.shared_learned_scale and family.refits


def has_own_scale(group: str) -> bool:
    """Whether family `group` estimates a scale of its own (learned, optimal or predicted by the
    decoder), rather than having it set by the config or having none: reported with its std."""
    family = likelihoods.get_likelihood(group)
    return family.learns_scale or family.optimal_scale or family.scale_from_decoder


def fmt(value, digits: int = 1) -> str:
    """A number as every report prints it: `digits` decimals, ints as they are, '–' for none."""
    if value is None or value == "" or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def with_index(rows: list[dict]) -> list[dict]:
    """Copies of results.csv's rows, each with `_index` (its row in per_example.npz) and its
    family's `data_model` (filled in for a results.csv written before that column)."""
    return [
        dict(r, _index=i, data_model=likelihoods.get_likelihood(r["likelihood"]).data_model)
        for i, r in enumerate(rows)
    ]


def ok_rows(rows: list[dict]) -> list[dict]:
    """The rows of members that finished (status 'ok')."""
    return [r for r in rows if r["status"] == "ok"]


def mean(members: list[dict], key: str) -> float | None:
    """Mean of `key` over the members that have it, or None."""
    values = [r[key] for r in members if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def by_sigma(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """σ values and the mean, min, max of `key` over seeds (rows of one group)."""
    sigmas = sorted({r["sigma"] for r in rows})
    values = [[r[key] for r in rows if r["sigma"] == s and r.get(key) is not None] for s in sigmas]
    keep = [i for i, v in enumerate(values) if v]
    sig = np.array([sigmas[i] for i in keep])
    return (
        sig,
        np.array([np.mean(values[i]) for i in keep]),
        np.array([np.min(values[i]) for i in keep]),
        np.array([np.max(values[i]) for i in keep]),
    )


def group_mean(rows: list[dict], group: str, key: str) -> float | None:
    """Mean of `key` over one group's finished members, or None."""
    values = [r[key] for r in ok_rows(rows) if r["group"] == group and r.get(key) is not None]
    return float(np.mean(values)) if values else None


def plain_rows(rows: list[dict], main: str) -> list[dict]:
    """The rows the σ-sweep sections read: the main group's plain-ELBO members (a remedy changes
    the objective; a learned-scale family's own label, e.g. `learned_sigma`, does not) and the
    reference families."""
    return [r for r in rows if r["group"] != main or is_plain(r)]


def is_plain(row: dict) -> bool:
    """Whether a member trained the plain ELBO: no objective remedy (`spec.REMEDIES`) in its
    `remedy`, whatever its family's own label (e.g. `learned_sigma`) says."""
    remedies = set(spec.REMEDIES) - {PLAIN}
    return not set(str(row.get("remedy") or PLAIN).split("+")) & remedies

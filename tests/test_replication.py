"""README's replication table (`vae_jax.report.replication`): what README says is what the code
computes from the stored runs, and the code's cells agree with numpy on the files."""

import csv
import json
import math
import pathlib

import numpy as np
import pytest
import scipy.stats

from vae_jax.report import readme, replication

REPO = pathlib.Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"


def test_readme_holds_the_table_computed_from_the_stored_runs():
    text = (REPO / "README.md").read_text()
    assert readme.rewrite(text, RESULTS) == text
    start, end = (text.index(m) for m in replication.MARKERS)
    quoted = text[start + len(replication.MARKERS[0]) : end].strip().splitlines()
    assert quoted == replication.readme_block(RESULTS)
    assert len(quoted) >= 2 + len(replication.RUNS)


def _numpy_cells(path: pathlib.Path) -> dict:
    """A stored sweep's best fixed σ, summed MSE's refit cost (seed-level t), active latents
    at σ² = ½ and the linear theory's count there (eigenvalues above ½), from results.csv,
    per_example.npz and figures.npz with numpy and scipy alone."""
    with open(path / "results.csv") as f:
        rows = [dict(r, index=i) for i, r in enumerate(csv.DictReader(f))]
    grid = {}
    for r in rows:
        if r["group"] == "gaussian" and r["status"] == "ok" and r["remedy"] == "none":
            grid.setdefault(float(r["sigma"]), []).append(r)

    def best(key):
        return min(grid, key=lambda s: np.mean([float(r[key]) for r in grid[s]]))

    summed = next(m for s, m in grid.items() if abs(s - math.sqrt(0.5)) < 1e-3)
    scores = np.load(path / "per_example.npz")["test_nll_refit"].astype(np.float64)
    by_seed = [
        {r["seed"]: r["index"] for r in m} for m in (summed, grid[best("val/iwae_nll_refit")])
    ]
    d = np.array([scores[by_seed[0][s]].mean() - scores[by_seed[1][s]].mean() for s in by_seed[0]])
    half = scipy.stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    latent_dim = json.loads((path / "config.json").read_text())["model"]["latent_dim"]
    eigvals = np.load(path / "figures.npz")["eigenvalues"]
    return {
        "best": best("val/iwae_nll"),
        "active_linear": int(np.sum(eigvals[:latent_dim] > 0.5)),
        "summed_refit": (d.mean(), d.mean() - half, d.mean() + half),
        "active": np.mean([float(r["test/active_units"]) for r in summed]),
        "not_collapsed": np.mean(
            [latent_dim * (1 - float(r["test/collapsed_fraction"])) for r in summed]
        ),
        "seeds": len({r["seed"] for r in rows}),
    }


@pytest.mark.parametrize("label,name", replication.RUNS)
def test_each_stored_row_agrees_with_numpy_on_its_files(label, name):
    row = replication.row_of(label, RESULTS / name)
    if not (RESULTS / name / "results.csv").exists():
        assert not row.stored and "not stored yet" in replication.markdown([row])[-1]
        return
    cells = _numpy_cells(RESULTS / name)
    assert row.stored and row.seeds == cells["seeds"]
    assert row.best_sigma == pytest.approx(cells["best"])
    diff = row.summed[1]
    np.testing.assert_allclose((diff.mean, diff.low, diff.high), cells["summed_refit"], rtol=1e-9)
    assert row.active == pytest.approx(cells["active"])
    assert row.not_collapsed == pytest.approx(cells["not_collapsed"])
    assert row.active_linear == cells["active_linear"]


def test_differences_are_said_in_words_and_missing_rows_are_named():
    base = replication.Row("a", stored=True, best_sigma=0.1, first_family="laplace")
    rows = [
        base,
        replication.Row("b", stored=True, best_sigma=0.2, first_family="laplace"),
        replication.Row("c", stored=False),
    ]
    said = replication.differences(rows)
    assert said[0] == "- The best fixed σ differs: a: 0.1; b: 0.2."
    assert not any("8-bit" in s and "differs" in s for s in said)  # both name the same family
    assert "the family first on the 8-bit scale (laplace)" in said[-2]
    assert said[-1] == "- Not stored yet (no claim is made for them): c."
    assert not any("differs" in s for s in replication.differences([base, base]))


def test_the_fd_sigma_is_compared_by_direction_and_latents_by_both_measures():
    """Grids differ between configs (0.682 on one, 0.707 on another): the rows agree when FD's σ
    lies on the same side of the likelihood's; the latents' check counts both measures."""
    common = dict(stored=True, latent_dim=32, active_linear=13)
    a = replication.Row(
        "a", sigma_by_fd=0.682, sigma_by_nll=0.126, active=7, not_collapsed=6, **common
    )
    b = replication.Row(
        "b", sigma_by_fd=0.707, sigma_by_nll=0.126, active=6, not_collapsed=6, **common
    )
    c = replication.Row(
        "c", sigma_by_fd=0.1, sigma_by_nll=0.126, active=29, not_collapsed=8, **common
    )
    said = replication.differences([a, b])
    assert not any("differs" in s for s in said)
    assert "whether the σ best by FD is larger than the likelihood's (larger)" in said[-1]
    assert (
        "keeps fewer latents than the linear theory predicts (fewer by both measures)" in said[-1]
    )
    said = replication.differences([a, c])
    assert (
        "- Whether the σ best by FD is larger than the likelihood's differs: a: larger; c: smaller."
        in said
    )
    assert any("a: fewer by both measures; c: fewer by one measure only" in s for s in said)
    assert replication.markdown([c])[-1].count("29.0 / 8.0 of 32 (13)") == 1

"""Tests for vae_jax.report's sweep summary on hand-made results rows, and `image_grid`."""

import math

import numpy as np
import pytest
from conftest import REPO

from vae_jax import plots, report


def row(group: str, sigma: float, seed: int, **metrics) -> dict:
    base = {
        "group": group,
        "likelihood": group,
        "sigma": sigma,
        "seed": seed,
        "status": "ok",
        "support": "binary" if group == "bernoulli" else "real",
        "test/iwae_nll": 100.0,
        "test/bits_per_dim": 1.0,
        "test/active_units": 4,
        "test/collapsed_fraction": 0.0,
    }
    base.update(metrics)
    return base


# A main group over 4 σ × 2 seeds: σ = 0.5 has the best TEST NLL but σ = 2 the best validation
# NLL, so σ = 2 is the one chosen; latents start collapsing at σ = 2.
NLL = {0.1: (120.0, 124.0), 0.5: (90.0, 94.0), 2.0: (110.0, 112.0), 20.0: (150.0, 150.0)}
VAL_NLL = {0.1: 130.0, 0.5: 100.0, 2.0: 95.0, 20.0: 160.0}
# Refit scores: σ = 0.1 is best on validation and on test.
REFIT = {0.1: 80.0, 0.5: 85.0, 2.0: 88.0, 20.0: 99.0}
COLLAPSED = {0.1: 0.0, 0.5: 0.0, 2.0: 0.25, 20.0: 1.0}
ACTIVE = {0.1: 4, 0.5: 4, 2.0: 3, 20.0: 0}


@pytest.fixture(name="rows")
def rows_fixture() -> list[dict]:
    rows = []
    for sigma, nlls in NLL.items():
        for seed, nll in enumerate(nlls):
            rows.append(
                row(
                    "gaussian",
                    sigma,
                    seed,
                    **{
                        "test/iwae_nll": nll,
                        "test/bits_per_dim": nll / 100,
                        "test/collapsed_fraction": COLLAPSED[sigma],
                        "test/active_units": ACTIVE[sigma],
                        "val/iwae_nll": VAL_NLL[sigma],
                        "test/iwae_nll_refit": REFIT[sigma],
                        "test/bits_per_dim_refit": REFIT[sigma] / 100,
                        "val/iwae_nll_refit": REFIT[sigma] + 1.0,
                        "train/iwae_nll": nll - 10.0 * sigma,
                    },
                )
            )
    rows.append(row("gaussian", 0.5, 2, status="stopped: non-finite loss at step 3"))
    rows.append(row("gaussian_learned", 0.3, 0, **{"test/iwae_nll": 95.0}))
    rows.append(row("gaussian_learned", 0.5, 1, **{"test/iwae_nll": 97.0}))
    rows.append(row("bernoulli", 0.1, 0, **{"test/iwae_nll": 60.0, "test/bits_per_dim": 0.2}))
    return rows


def test_by_sigma_sorts_and_aggregates_over_seeds(rows):
    main = [r for r in rows if r["group"] == "gaussian" and r["status"] == "ok"]
    sig, mean, lo, hi = plots.by_sigma(main, "test/iwae_nll")
    np.testing.assert_array_equal(sig, sorted(NLL))
    np.testing.assert_allclose(mean, [np.mean(NLL[s]) for s in sorted(NLL)])
    np.testing.assert_allclose(lo, [min(NLL[s]) for s in sorted(NLL)])
    np.testing.assert_allclose(hi, [max(NLL[s]) for s in sorted(NLL)])


def test_by_sigma_skips_missing_values():
    rows = [
        row("g", 1.0, 0, **{"test/kl": None}),
        row("g", 0.1, 0, **{"test/kl": 2.0}),
        row("g", 0.1, 1, **{"test/kl": 4.0}),
    ]
    sig, mean, lo, hi = plots.by_sigma(rows, "test/kl")
    np.testing.assert_array_equal(sig, [0.1])
    np.testing.assert_allclose([mean[0], lo[0], hi[0]], [3.0, 2.0, 4.0])


def test_implicit_sigmas_of_summed_and_mean_mse():
    # −log N(x; f, σ²I) = ‖x − f‖² / (2σ²) + const: weight 1 on the summed SE is σ² = 1/2, and
    # weight 1 on the mean over D pixels (= 1/D on the sum) is σ² = D/2.
    sigmas = list(plots.implicit_sigmas(784).values())
    np.testing.assert_allclose(sigmas, [math.sqrt(0.5), math.sqrt(392.0)])
    for sigma, weight in zip(sigmas, (1.0, 1.0 / 784), strict=True):
        np.testing.assert_allclose(1.0 / (2.0 * sigma**2), weight)


def test_sweep_summary_chooses_on_validation_and_names_both_scores(rows):
    lines = report.sweep_summary(rows, "gaussian", num_dims=784, latent_dim=4)
    text = "\n".join(lines)
    trained = next(line for line in lines if line.startswith("- **Scored as trained"))
    # σ = 0.5 has the best test NLL, but the choice is made on validation data: σ = 2.
    assert "Best fixed σ on validation data: σ = 2, test NLL 111.0 nats (1.110 bits/dim)" in trained
    refit = next(line for line in lines if line.startswith("- **Scored refit"))
    assert "σ = 0.1, test NLL 80.0 nats (0.800 bits/dim)" in refit
    collapse = next(line for line in lines if line.startswith("- **Collapse**"))
    assert "start collapsing at σ = 2 (25% of 4 collapsed, 3.0 active units)" in collapse
    assert "at σ = 20: 100% collapsed, 0.0 active" in collapse
    # Neither implicit σ (0.707, 19.8) is on this grid: no line claims a number for them.
    assert "σ² = 1/2" not in text and "σ² = D/2" not in text
    learned = next(line for line in lines if "gaussian_learned" in line)
    assert "std ≈ 0.400" in learned and "NLL 96.0 nats, -15.0 against the best fixed σ" in learned
    overfit = next(line for line in lines if line.startswith("- **Overfitting:**"))
    assert "at the chosen σ = 2 the training NLL is 91.0 nats and the test NLL 111.0" in overfit
    bernoulli = next(line for line in lines if "**bernoulli**" in line)
    assert "NOT comparable" in bernoulli
    assert "stopped" not in text  # the stopped member is left out of every number


def test_sweep_summary_reports_the_implicit_sigmas_on_the_grid():
    sigmas = [0.1, math.sqrt(0.5), 5.0, math.sqrt(784 / 2)]
    nll = [130.0, 100.0, 90.0, 140.0]
    rows = [
        row(
            "gaussian",
            s,
            0,
            **{"test/iwae_nll": n, "test/bits_per_dim": n / 100, "val/iwae_nll": n},
        )
        for s, n in zip(sigmas, nll, strict=True)
    ]
    lines = report.sweep_summary(rows, "gaussian", num_dims=784, latent_dim=4)
    assert lines[0].startswith("- **Scored as trained") and "σ = 5, test NLL 90.0" in lines[0]
    summed = next(line for line in lines if "σ² = 1/2), σ = 0.707:" in line)
    assert "+10.0 nats (+0.100 bits/dim) against it" in summed
    mean = next(line for line in lines if "D = 784), σ = 19.8:" in line)
    assert "+50.0 nats (+0.500 bits/dim) against it" in mean
    assert not any(line.startswith("- **Scored refit") for line in lines)  # no refit columns
    assert any("no latent collapsed at any σ up to 19.8" in line for line in lines)


def test_sweep_summary_without_finished_members():
    rows = [row("gaussian", 0.1, 0, status="stopped: non-finite loss at step 2")]
    assert report.sweep_summary(rows, "gaussian", num_dims=64, latent_dim=3) == [
        "No member of the main group finished; see the status column."
    ]


@pytest.mark.parametrize("channels", [1, 3])
def test_image_grid_shape_fill_and_clipping(channels):
    images = np.full((5, 4, 3, channels), 0.25, np.float32)
    images[0] = 2.0  # clipped to 1
    images[1] = -1.0  # clipped to 0
    grid = plots.image_grid(images, columns=2)
    assert grid.shape == (3 * 4, 2 * 3, channels)
    np.testing.assert_array_equal(grid[:4, :3], 1.0)
    np.testing.assert_array_equal(grid[:4, 3:], 0.0)
    np.testing.assert_array_equal(grid[4:8], 0.25)  # images 2 and 3
    np.testing.assert_array_equal(grid[8:12, :3], 0.25)  # image 4
    np.testing.assert_array_equal(grid[8:12, 3:], 1.0)  # the empty cell after the last image


def test_plain_rows_keep_a_learned_scale_main_group_and_drop_objective_remedies():
    """A learned-scale family's own label (linear_vae.py:lucas's main group is gaussian_learned,
    labelled learned_sigma) is a plain ELBO; kl_warmup, free_bits and geco change the objective."""
    rows = [
        row("gaussian_learned", 1.0, 0, remedy="learned_sigma"),
        row("gaussian_learned", 1.0, 1, remedy="learned_sigma+geco"),
        row("gaussian", 0.5, 0, remedy="kl_warmup"),
        row("gaussian", 0.5, 0, remedy="none"),
    ]
    kept = report.plain_rows(rows, "gaussian_learned")
    assert [r.get("remedy") for r in kept] == ["learned_sigma", "kl_warmup", "none"]
    assert [r.get("remedy") for r in report.plain_rows(rows, "gaussian")] == [
        "learned_sigma",
        "learned_sigma+geco",
        "none",
    ]


@pytest.mark.parametrize("results", ["sigma_sweep", "remedies"])
def test_readme_numbers_are_what_the_report_computes_from_the_stored_results(results):
    """An audit of README: each table row and generated finding line it quotes from a stored run
    is, verbatim, a line that `python -m vae_jax.report docs/results/<run>` prints."""
    readme = (REPO / "README.md").read_text().splitlines()
    computed = set(report.findings_from_workdir(REPO / "docs" / "results" / results))
    # The README text that quotes this run: from its results link to the next section, or to
    # the GECO pilots (other runs, their own table).
    link = f"(docs/results/{results}/results.csv)"
    start = next(i for i, line in enumerate(readme) if link in line)
    end = next(
        i for i in range(start + 1, len(readme)) if readme[i].startswith(("## ", "**How GECO's κ"))
    )
    quoted = [
        line
        for line in readme[start:end]
        if (line.startswith("| ") and "---" not in line)
        or line.startswith(
            ("- From σ", "- Learned scales", "- **Learned σ", "- **The same", "- GECO")
        )
    ]
    assert len(quoted) >= 10
    assert [line for line in quoted if line not in computed] == []


@pytest.mark.parametrize("results", ["sigma_sweep", "remedies"])
def test_stored_report_md_says_what_the_report_computes_from_the_stored_results(results):
    """The report.md stored beside a run's results.csv holds the findings the current report
    code computes from those files: a run's report written by older code is caught here."""
    path = REPO / "docs" / "results" / results
    computed = set(report.findings_from_workdir(path))
    findings = [
        line
        for line in (path / "report.md").read_text().splitlines()
        if line.startswith(("- ", "  - "))
    ]
    assert len(findings) >= 20
    assert [line for line in findings if line not in computed] == []

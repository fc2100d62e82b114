"""Tests for vae_jax.report's sweep summary on hand-made results rows, `image_grid`, and the
report rendered from a workdir's files alone."""

import dataclasses
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from scipy import stats

from vae_jax import figure_data, intervals, likelihoods, report, workdir
from vae_jax.report import findings, plots, readme, samples, write
from vae_jax.report import linear as report_linear
from vae_jax.report import rows as report_rows
from vae_jax.report import sigma as report_sigma


def row(group: str, sigma: float, seed: int, **metrics) -> dict:
    base = {
        "group": group,
        "likelihood": group,
        "sigma": sigma,
        "seed": seed,
        "status": "ok",
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
    return report_rows.with_index(rows)


def per_example_for(rows: list[dict], num_examples: int = 50, seed: int = 0) -> dict:
    """per_example.npz's arrays for hand-made rows: each row's test NLL plus zero-mean noise, so
    a row's per-example mean is its results.csv value."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for key, column in (("test_nll", "test/iwae_nll"), ("test_nll_refit", "test/iwae_nll_refit")):
        table = np.full((len(rows), num_examples), np.nan)
        for r in rows:
            if r["status"] == "ok" and r.get(column) is not None:
                noise = rng.normal(0.0, 3.0, num_examples)
                table[r["_index"]] = r[column] + noise - noise.mean()
        arrays[key] = table
    arrays["val_nll"] = arrays["val_nll_refit"] = np.full((len(rows), 5), np.nan)
    return arrays


def test_by_sigma_sorts_and_aggregates_over_seeds(rows):
    main = [r for r in rows if r["group"] == "gaussian" and r["status"] == "ok"]
    sig, mean, lo, hi = report_rows.by_sigma(main, "test/iwae_nll")
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
    sig, mean, lo, hi = report_rows.by_sigma(rows, "test/kl")
    np.testing.assert_array_equal(sig, [0.1])
    np.testing.assert_allclose([mean[0], lo[0], hi[0]], [3.0, 2.0, 4.0])


def test_implicit_sigmas_of_summed_and_mean_mse():
    # −log N(x; f, σ²I) = ‖x − f‖² / (2σ²) + const: weight 1 on the summed SE is σ² = 1/2, and
    # weight 1 on the mean over D pixels (= 1/D on the sum) is σ² = D/2.
    sigmas = list(likelihoods.implicit_sigmas(784).values())
    np.testing.assert_allclose(sigmas, [math.sqrt(0.5), math.sqrt(392.0)])
    for sigma, weight in zip(sigmas, (1.0, 1.0 / 784), strict=True):
        np.testing.assert_allclose(1.0 / (2.0 * sigma**2), weight)


def test_sweep_summary_chooses_on_validation_and_names_both_scores(rows):
    lines = report_sigma.sweep_summary(rows, "gaussian", num_dims=784, latent_dim=4)
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
    assert "std ≈ 0.400" in learned and "NLL 96.0 nats, -15.0 nats (no interval)" in learned
    overfit = next(line for line in lines if line.startswith("- **Overfitting:**"))
    assert "at the chosen σ = 2 the training NLL is 91.0 nats and the test NLL 111.0" in overfit
    bernoulli = next(line for line in lines if "**bernoulli**" in line)
    assert "BINARISED pixels: other data, not ranked" in bernoulli
    assert "stopped" not in text  # the stopped member is left out of every number


def test_sweep_summary_reports_the_implicit_sigmas_on_the_grid():
    sigmas = [0.1, math.sqrt(0.5), 5.0, math.sqrt(784 / 2)]
    nll = [130.0, 100.0, 90.0, 140.0]
    rows = report_rows.with_index(
        [
            row(
                "gaussian",
                s,
                0,
                **{"test/iwae_nll": n, "test/bits_per_dim": n / 100, "val/iwae_nll": n},
            )
            for s, n in zip(sigmas, nll, strict=True)
        ]
    )
    lines = report_sigma.sweep_summary(rows, "gaussian", num_dims=784, latent_dim=4)
    assert lines[0].startswith("- **Scored as trained") and "σ = 5, test NLL 90.0" in lines[0]
    summed = next(line for line in lines if "σ² = 1/2), σ = 0.707:" in line)
    assert "+10.0 nats (no interval) (+0.100 bits/dim) against it" in summed
    mean = next(line for line in lines if "D = 784), σ = 19.8:" in line)
    assert "+50.0 nats (no interval) (+0.500 bits/dim) against it" in mean
    assert not any(line.startswith("- **Scored refit") for line in lines)  # no refit columns
    assert any("no latent collapsed at any σ up to 19.8" in line for line in lines)


def test_sweep_summary_without_finished_members():
    rows = report_rows.with_index(
        [row("gaussian", 0.1, 0, status="stopped: non-finite loss at step 2")]
    )
    assert report_sigma.sweep_summary(rows, "gaussian", num_dims=64, latent_dim=3) == [
        "No member of the main group finished; see the status column."
    ]


def test_every_stated_difference_carries_its_paired_interval(rows):
    """With per-example scores, each cost is the seed-level paired difference against the best
    fixed σ of the SAME score: as trained against σ = 2 as trained, refit against σ = 0.1 refit."""
    per_example = per_example_for(rows)
    lines = report_sigma.sweep_summary(
        rows, "gaussian", num_dims=784, latent_dim=4, per_example=per_example
    )
    learned = next(line for line in lines if "gaussian_learned" in line)
    ours = [r for r in rows if r["group"] == "gaussian_learned"]
    best = [
        r for r in rows if r["group"] == "gaussian" and r["sigma"] == 2.0 and r["status"] == "ok"
    ]
    expected = intervals.seed_t_difference(
        np.stack([per_example["test_nll"][r["_index"]] for r in ours]),
        np.stack([per_example["test_nll"][r["_index"]] for r in best]),
    )
    assert f"NLL 96.0 nats, {expected.text()} against the best fixed σ" in learned
    assert expected.resolved and "(95% CI -" in learned
    assert not any(line.startswith("- **Ranked") for line in lines)  # no other family has val


def test_families_are_ranked_on_the_8_bit_scale_with_their_labels(rows):
    """The densities move up by D·log 256 and the discretised logistic (a probability of the
    pixel values) does not; each row: label, test NLL and bits/dim, and its difference to the
    first with scipy's t-interval over the two seeds; the Bernoulli (binarised) is not ranked."""
    for r in rows:
        if r["group"] == "gaussian_learned":
            r["val/iwae_nll"] = 90.0  # no refit: ranked at its as-trained score
    for seed, nll in enumerate((4000.0, 4010.0)):
        rows.append(
            dict(
                rows[0],
                group="discretized_logistic",
                likelihood="discretized_logistic",
                data_model="discrete",
                seed=seed,
                **{
                    "test/iwae_nll": nll,
                    "val/iwae_nll": 4000.0,
                    "test/iwae_nll_refit": None,
                    "val/iwae_nll_refit": None,
                },
            )
        )
    lines = report_sigma.sweep_summary(rows, "gaussian", num_dims=784, latent_dim=4)
    table = lines[
        lines.index(
            "| rank | family | on the 8-bit scale | test NLL | bits/dim | "
            "− first, nats per image | − first, bits/dim |"
        )
        + 2 :
    ]
    shift, per_bit = 784 * math.log(256), 784 * math.log(2)

    def against_first(per_seed: np.ndarray) -> str:
        """The two difference cells by hand: scipy's t over the seeds, in nats and bits/dim."""
        half = stats.t.ppf(0.975, 1) * stats.sem(per_seed)
        low, mid, high = per_seed.mean() - half, per_seed.mean(), per_seed.mean() + half
        return (
            f"{mid:+.1f} [{low:+.1f}, {high:+.1f}] | "
            f"{mid / per_bit:+.3f} [{low / per_bit:+.3f}, {high / per_bit:+.3f}]"
        )

    grid = np.array([80.0, 80.0]) + shift - [4000.0, 4010.0]  # σ = 0.1 refit, seeds 0 and 1
    learned = np.array([95.0, 97.0]) + shift - [4000.0, 4010.0]
    assert table[:3] == [
        "| 1 | discretized_logistic | exact probability of the 8-bit pixels (IWAE bound) | "
        f"4005.0 | {4005.0 / per_bit:.3f} | – | – |",
        "| 2 | best fixed σ = 0.1 refit | bound (dequantised density + IWAE) | "
        f"{80.0 + shift:.1f} | {(80.0 + shift) / per_bit:.3f} | {against_first(grid)} |",
        "| 3 | gaussian_learned | bound (dequantised density + IWAE) | "
        f"{96.0 + shift:.1f} | {(96.0 + shift) / per_bit:.3f} | {against_first(learned)} |",
    ]
    assert table[3] == "" and not any("bernoulli" in line for line in table[:3])


def test_validation_fitted_scale_is_compared_refit_to_refit_only(rows):
    for r in rows:
        if r["group"] == "gaussian_learned":
            r["test/iwae_nll_refit"] = 79.0
            r["val/iwae_nll_refit"] = 70.0
    per_example = per_example_for(rows)
    lines = report_sigma.sweep_summary(
        rows,
        "gaussian",
        num_dims=784,
        latent_dim=4,
        per_example=per_example,
        validation_fitted=True,
    )
    learned = [line for line in lines if "gaussian_learned" in line]
    assert "compared with the grid refit to refit only" in learned[0]
    assert "against the best fixed σ" not in learned[0]
    assert "NLL 79.0 nats, -1.0 nats (95% CI" in learned[1]  # 79 against σ = 0.1's 80, refit


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
    kept = report_rows.plain_rows(rows, "gaussian_learned")
    assert [r.get("remedy") for r in kept] == ["learned_sigma", "kl_warmup", "none"]
    assert [r.get("remedy") for r in report_rows.plain_rows(rows, "gaussian")] == [
        "learned_sigma",
        "learned_sigma+geco",
        "none",
    ]


def test_readme_headline_is_what_the_report_computes_from_the_stored_results():
    """An audit of README: its answer is, verbatim, what `report.readme.answer` computes from the
    stored σ sweep and remedies."""
    text = (REPO / "README.md").read_text()
    start, end = (text.index(marker) for marker in readme.MARKERS)
    quoted = text[start + len(readme.MARKERS[0]) : end].strip().splitlines()
    results = REPO / "docs" / "results"
    computed = readme.answer(results / "sigma_sweep", results / "remedies")
    assert len(computed) >= 5 and quoted == computed


@pytest.mark.slow  # the default suite keeps a faster test of the same code
def test_findings_md_is_generated_from_the_stored_results():
    results = REPO / "docs" / "results"
    expected = findings.findings_markdown(results)
    assert (REPO / "docs" / "findings.md").read_text() == expected


@pytest.mark.parametrize(
    "results", ["sigma_sweep", "remedies", "fashion_sigma_sweep", "fashion_conv_sweep"]
)
def test_stored_report_md_says_what_the_report_computes_from_the_stored_results(results):
    """The report.md stored beside a run's results.csv holds the findings the current report
    code computes from those files: a run's report written by older code is caught here."""
    path = REPO / "docs" / "results" / results
    computed = set(report.findings_from_workdir(path)) | set(report.headline(path))
    findings = [
        line
        for line in (path / "report.md").read_text().splitlines()
        if line.startswith(("- ", "  - "))
    ]
    assert len(findings) >= 20
    assert [line for line in findings if line not in computed] == []


def test_stored_intervals_agree_with_an_independent_seed_level_t_interval():
    """The σ sweep's stated cost of summed MSE (as trained and refit), recomputed from
    per_example.npz alone: the best fixed σ chosen by mean validation NLL of the images, then
    each seed's mean difference over the test images and scipy's Student t over the seeds."""
    path = REPO / "docs" / "results" / "sigma_sweep"
    rows = workdir.read_results_csv(path / "results.csv")
    scores = workdir.read_per_example(path / "per_example.npz")
    fixed = [i for i, r in enumerate(rows) if r["group"] == "gaussian" and r["remedy"] == "none"]
    lines = report.findings_from_workdir(path)
    for suffix, title in (("", "- **Scored as trained"), ("_refit", "- **Scored refit")):
        by_sigma = {}
        for i in fixed:
            by_sigma.setdefault(rows[i]["sigma"], []).append(i)
        val = {s: np.nanmean(scores["val_nll" + suffix][idx]) for s, idx in by_sigma.items()}
        best = min(val, key=val.get)
        summed = next(s for s in by_sigma if abs(s - math.sqrt(0.5)) < 1e-3)
        seed_of = {i: rows[i]["seed"] for i in fixed}
        a_rows = sorted(by_sigma[summed], key=seed_of.get)
        b_rows = sorted(by_sigma[best], key=seed_of.get)
        assert [seed_of[i] for i in a_rows] == [seed_of[i] for i in b_rows]
        per_seed = [
            np.mean(scores["test_nll" + suffix][i] - scores["test_nll" + suffix][j])
            for i, j in zip(a_rows, b_rows, strict=True)
        ]
        low, high = stats.t.interval(
            0.95, len(per_seed) - 1, loc=np.mean(per_seed), scale=stats.sem(per_seed)
        )
        start = next(i for i, line in enumerate(lines) if line.startswith(title))
        stated = next(line for line in lines[start:] if "σ = 0.707:" in line)
        numbers = stated.split("σ = 0.707: ")[1].split(" nats (95% CI ")
        ci = [float(v) for v in numbers[1].split(")")[0].split(" to ")]
        np.testing.assert_allclose(float(numbers[0]), np.mean(per_seed), atol=0.05)
        np.testing.assert_allclose(ci, [low, high], atol=0.05)
        assert len(per_seed) == 5  # the stored sweep's seeds, every one of them paired


def test_findings_never_compare_the_best_fixed_sigma_with_itself():
    findings = (REPO / "docs" / "findings.md").read_text()
    assert "the best fixed σ itself" in findings and "+0.0 to +0.0" not in findings
    assert "none is the yardstick" in findings  # the remedies' σ = 0.126 against itself


def test_findings_name_the_interval_method_and_the_8_bit_scale():
    findings = (REPO / "docs" / "findings.md").read_text()
    assert "paired t-interval over per-seed mean differences, n − 1 degrees of freedom" in findings
    assert "- **Families on the 8-bit scale**, ranked on validation data" in findings
    assert "- **Claims within a few nats, by both bounds**" in findings


def test_a_family_registered_once_is_reported_by_its_capabilities(rows, monkeypatch):
    """A new family is one registry entry: a copy of Laplace (a shared learned scale) under a
    name no report module knows is reported with its decoder std, compared refit to refit when
    its scale was fitted on validation data, and ranked among the continuous densities."""
    laplace = likelihoods.get_likelihood("laplace")
    monkeypatch.setitem(
        likelihoods.LIKELIHOODS, "laplace_twin", dataclasses.replace(laplace, name="laplace_twin")
    )
    for seed, nll in enumerate((96.0, 98.0)):
        rows.append(
            row(
                "laplace_twin",
                0.2,
                seed,
                **{
                    "test/iwae_nll": nll,
                    "val/iwae_nll": 97.0,
                    "test/iwae_nll_refit": 82.0,
                    "val/iwae_nll_refit": 81.0,
                },
            )
        )
    rows = report_rows.with_index(rows)
    lines = report_sigma.sweep_summary(
        rows, "gaussian", 784, 4, per_example_for(rows), validation_fitted=True
    )
    twin = [line for line in lines if line.startswith("  - laplace_twin (decoder std ≈ ")]
    assert len(twin) == 2 and "≈ 0.200)" in twin[0]  # as trained and refit
    assert "compared with the grid refit to refit only" in twin[0]
    assert "NLL 82.0 nats, +2.0 nats (95% CI" in twin[1]  # against σ = 0.1's refit 80
    ranked = next(line for line in lines if "| laplace_twin refit | " in line)
    assert f"| bound (dequantised density + IWAE) | {82.0 + 784 * math.log(256):.1f} |" in ranked


@pytest.mark.slow  # renders every figure of three stored sweeps (about a minute on 2 cores)
@pytest.mark.parametrize("results", ["sigma_sweep", "remedies", "remedies/learned_by_gradient"])
def test_render_reproduces_the_stored_report_from_its_files(results, tmp_path):
    """`python -m vae_jax.report WORKDIR`'s render, on a copy of a stored sweep (which has no
    checkpoint and no figures.npz: its arrays are recomputed from the data config.json names),
    writes the stored report.md byte for byte and every figure it links."""
    stored = REPO / "docs" / "results" / results
    path = tmp_path / "run"
    shutil.copytree(stored, path, ignore=shutil.ignore_patterns("report.md", "plots"))
    report.render(path)
    text = (path / "report.md").read_text()
    assert text == (stored / "report.md").read_text()
    linked = sorted(p.name for p in (path / "plots").glob("*.png"))
    assert linked == sorted(p.name for p in (stored / "plots").glob("*.png"))
    assert all(f"(plots/{name})" in text for name in linked)


def test_member_images_come_from_samples_npz_rows(tmp_path, monkeypatch):
    """sigma_images.png reads each shown σ's first seed from samples.npz's rows by `_index`: a
    member whose images are all white shows up white in its panel."""
    rows = report_rows.with_index([row("gaussian", s, seed) for s in (0.1, 1.0) for seed in (0, 1)])
    images = {
        "test": np.zeros((8, 4, 4, 1), np.uint8),
        "reconstruction": np.zeros((4, 8, 4, 4, 1), np.uint8),
        "prior_mean": np.zeros((4, 8, 4, 4, 1), np.uint8),
    }
    images["reconstruction"][2] = 255  # σ = 1, seed 0: the panel shown for σ = 1
    (tmp_path / "plots").mkdir()
    name = plots.plot_member_images(tmp_path, rows, "gaussian", images)
    assert name == "sigma_images.png" and (tmp_path / "plots" / name).stat().st_size > 0
    captured = []
    monkeypatch.setattr(plots, "_show", lambda ax, grid, title: captured.append((title, grid)))
    plots.plot_member_images(tmp_path, rows, "gaussian", images)
    shown = dict(captured)
    assert np.all(shown["reconstructions σ=1"] == 1.0)
    assert np.all(shown["reconstructions σ=0.1"] == 0.0)
    assert plots.plot_member_images(tmp_path, rows, "gaussian", {}) is None


def test_figure_data_sweep_images_concatenates_groups_in_row_order():
    """samples.npz's rows: each group's members in results.csv's group order, one test set."""
    first = {
        k: np.full((2, 3), 1, np.uint8) for k in ("prior_mean", "prior_sample", "reconstruction")
    }
    second = {k: np.full((1, 3), 2, np.uint8) for k in first}
    first["test"], second["test"] = np.zeros(3, np.uint8), np.ones(3, np.uint8)
    joined = figure_data.sweep_images([first, second])
    np.testing.assert_array_equal(joined["reconstruction"][:, 0], [1, 1, 2])
    np.testing.assert_array_equal(joined["test"], first["test"])
    assert figure_data.sweep_images([first, None]) is None


@pytest.mark.slow  # a CLI twin: the findings it prints are test_report's default tests' own
def test_print_writes_nothing_and_prints_the_findings(tmp_path):
    """`python -m vae_jax.report --print WORKDIR` (the documented way to read a stored run's
    findings) leaves the workdir as it is; without `--print` it renders report.md and plots/."""
    path = tmp_path / "run"
    stored = REPO / "docs" / "results" / "remedies" / "learned_by_gradient"
    shutil.copytree(stored, path, ignore=shutil.ignore_patterns("report.md", "plots"))
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    result = subprocess.run(
        [sys.executable, "-m", "vae_jax.report", "--print", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before
    assert result.stdout.splitlines() == report.findings_from_workdir(path)


def test_a_workdir_written_before_fd_inf_is_reported_at_fixed_n():
    """A workdir with neither the FD_∞ / PCA columns nor the bound on I(x; z) (the stored sweep's
    files with those columns taken out): its floor and members are stated at fixed N, no column
    or line needs what it lacks, and the old capped columns it still holds are ignored."""
    path = REPO / "docs" / "results" / "sigma_sweep"
    _, rows, _, _ = write.load_sweep(path)
    quality = json.loads((path / "sample_quality.json").read_text())
    # Made old: the new columns dropped, an old capped column added.
    new = ("fd_inf", "fd_pca", "mutual_information_upper", "marginal_kl_lower")
    rows = [
        {k: v for k, v in r.items() if not any(n in k for n in new)} | {"test/marginal_kl": 6.9}
        for r in rows
    ]
    quality = {k: v for k, v in quality.items() if not any(n in k for n in new)}
    assert "test/fd_inf_prior_mean" not in rows[0] and "test/marginal_kl" in rows[0]
    table = samples.samples_table(rows, "gaussian")
    assert "FD_∞" not in table[0] and table[0].count("|") == len(table[2].split("|")) - 1
    findings = samples.samples_findings(rows, "gaussian", quality)
    assert any(f"FD {quality['floor/fd']:.1f}, precision" in line for line in findings)
    assert not any("FD_∞" in line or "Prior holes" in line for line in findings)
    assert samples.floor_fd_key(rows) == "test/fd_prior_mean"


def _fd_rows(fd_inf: dict, fd_inf_pca: dict) -> list[dict]:
    return report_rows.with_index(
        [
            row(
                "gaussian",
                sigma,
                seed,
                **{
                    "test/fd_prior_mean": 100.0 + fd_inf[sigma][seed],
                    "test/fd_inf_prior_mean": fd_inf[sigma][seed],
                    "test/fd_inf_pca_prior_mean": fd_inf_pca[sigma][seed],
                    "val/fd_prior_mean": fd_inf[sigma][seed],
                    "val/iwae_nll": sigma,
                },
            )
            for sigma in fd_inf
            for seed in (0, 1)
        ]
    )


def test_the_ranking_is_compared_in_both_feature_spaces():
    """σ best in each space, the pairs ordered alike (counted here by hand: the PCA order swaps
    0.1 and 0.707 only) and FD_∞(best) / FD_∞(σ² = ½) from the seeds' means."""
    half = math.sqrt(0.5)
    fd_inf = {0.1: (30.0, 34.0), 0.3: (10.0, 14.0), half: (60.0, 64.0), 2.0: (90.0, 94.0)}
    fd_inf_pca = {0.1: (9.0, 9.0), 0.3: (4.0, 6.0), half: (8.0, 8.0), 2.0: (20.0, 20.0)}
    rows = _fd_rows(fd_inf, fd_inf_pca)
    (line,) = samples.feature_spaces(rows, "gaussian")
    assert "0.3 in the feature net and 0.3 in PCA-64" in line
    assert "5 of 6 pairs of fixed σ ordered alike" in line
    assert f"{12.0 / 62.0:.2f} in the feature net and {5.0 / 8.0:.2f} in PCA-64" in line


def test_readme_sets_fd_inf_against_the_floors_fd_inf():
    """With FD_∞ in the rows, README's sample sentence states FD_∞, the floor's FD_∞ and the
    seed-level interval of the FD_∞ difference (scipy's t over the two seeds)."""
    half = math.sqrt(0.5)
    fd_inf = {0.1: (30.0, 34.0), 0.3: (10.0, 15.0), half: (60.0, 64.0)}
    rows = _fd_rows(fd_inf, fd_inf)
    for r in rows:  # the likelihood picks σ = 0.1, the FD σ = 0.3
        r["val/iwae_nll"] = -r["sigma"] if r["sigma"] < 0.2 else 5.0
    quality = {"floor/num_validation": 400, "floor/fd": 9.3, "floor/fd_inf": 4.7}
    (line,) = readme._samples_line(rows, "gaussian", quality)
    differences = [10.0 - 30.0, 15.0 - 34.0]
    low, high = stats.t.interval(0.95, 1, loc=np.mean(differences), scale=stats.sem(differences))
    assert "400 real validation images score 4.7 (FD_∞)" in line
    assert "σ = 0.3 (test FD_∞ 12.5 (10.0–15.0))" in line
    assert f"difference {np.mean(differences):+.1f} (95% CI {low:+.1f} to {high:+.1f}" in line


def test_the_linear_theorys_collapse_count_beside_trained_active_units():
    """Per σ, the theory keeps the latents whose eigenvalue exceeds σ² (of the k latents); the
    trained count is the seeds' mean with their range, and the summary counts the σ where every
    seed lies above or below the prediction."""
    eigvals = np.array([9.0, 4.0, 1.0, 0.25, 0.01])  # σ² = 0.01, 0.25, 4, 400 against these
    rows = [
        row("gaussian", s, seed, **{"test/active_units": a})
        for s, per_seed in {0.1: (4, 4), 0.5: (1, 2), 2.0: (0, 2), 20.0: (0, 0)}.items()
        for seed, a in enumerate(per_seed)
    ]
    lines = report_linear.collapse_against_theory(rows, "gaussian", eigvals, latent_dim=4)
    # σ = 0.1: λ_4 = 0.25 > 0.01, all 4 kept; σ = 0.5: λ = 0.25 ≤ 0.25 collapses, 3 kept;
    # σ = 2: 9 > 4 only (4 ≤ 4 collapses), 1 kept; σ = 20: none.
    assert (
        "σ = 0.1: 4 / 4.0; σ = 0.5: 3 / 1.5 (1–2); σ = 2: 1 / 1.0 (0–2); σ = 20: 0 / 0.0."
        in (lines[0])
    )
    assert "at 0 of 4 σ and every seed fewer at 1;" in lines[1]
    assert report_linear.collapse_against_theory(rows, "bernoulli", eigvals, 4) == []

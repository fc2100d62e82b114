"""The verdict a σ sweep prints (`vae_jax.report.verdict`), checked against its files by a
computation of its own: numpy on results.csv and per_example.npz, scipy's Student t."""

import csv
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from vae_jax import report
from vae_jax.report import verdict
from vae_jax.report.rows import plain_rows
from vae_jax.report.write import load_sweep

ROOT = pathlib.Path(__file__).resolve().parent.parent
STORED = ROOT / "docs" / "results" / "sigma_sweep"
NUMBER = r"[+-]?\d+(?:\.\d+)?"


def _rows(path: pathlib.Path) -> list[dict]:
    with open(path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    for i, r in enumerate(rows):
        r["index"] = i
    return [r for r in rows if r["status"] == "ok" and r.get("remedy", "none") == "none"]


def _fixed(rows: list[dict], main: str = "gaussian") -> dict[float, list[dict]]:
    groups: dict[float, list[dict]] = {}
    for r in rows:
        if r["group"] == main:
            groups.setdefault(float(r["sigma"]), []).append(r)
    return groups


def _best(groups, key: str) -> float:
    return min(groups, key=lambda s: np.mean([float(r[key]) for r in groups[s]]))


def _seed_t(a: list[dict], b: list[dict], per_example, key: str) -> tuple[float, float, float]:
    """Mean and 95% t-interval over the seeds of a − b's per-seed mean test NLL."""
    by_seed = [{int(r["seed"]): r["index"] for r in m} for m in (a, b)]
    seeds = sorted(set(by_seed[0]) & set(by_seed[1]))
    d = np.array(
        [
            per_example[key][by_seed[0][s]].mean() - per_example[key][by_seed[1][s]].mean()
            for s in seeds
        ]
    )
    half = scipy.stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half


def check_verdict(path: pathlib.Path, lines: list[str]) -> None:
    """Every number of `lines` recomputed from the workdir's files."""
    rows = _rows(path)
    with np.load(path / "per_example.npz") as f:
        per_example = {k: f[k] for k in f.files}
    groups = _fixed(rows)
    best = _best(groups, "val/iwae_nll")
    text = "\n".join(lines)
    best_line = next(line for line in lines if line.startswith("- Best fixed σ"))
    sigma, nll = re.findall(NUMBER, best_line.split("σ =", 1)[1])[:2]
    assert float(sigma) == pytest.approx(best, rel=1e-3)
    test_nll = np.mean([float(r["test/iwae_nll"]) for r in groups[best]])
    assert float(nll) == pytest.approx(test_nll, abs=0.051)
    num_dims = load_sweep(path)[2]
    implied = {"Summed": np.sqrt(0.5), "Mean": np.sqrt(num_dims / 2)}
    for name, sigma in implied.items():
        line = next(line for line in lines if line.startswith(f"- {name} MSE + KL"))
        members = next(m for s, m in groups.items() if abs(s - sigma) / sigma < 0.01)
        trained, refit = line.split(" as trained ")
        for part, suffix in ((trained, ""), (refit, "_refit")):
            best_members = groups[_best(groups, "val/iwae_nll" + suffix)]
            mean, low, high = _seed_t(members, best_members, per_example, "test_nll" + suffix)
            said = re.search(f"({NUMBER}) nats \\(95% CI ({NUMBER}) to ({NUMBER})", part)
            found = [float(x) for x in said.groups()]
            np.testing.assert_allclose(found, [mean, low, high], atol=0.051)
    collapse = next(line for line in lines if line.startswith("- Collapse at σ² = ½"))
    latent_dim = int(re.search(r"of (\d+) latents", collapse).group(1))
    summed = next(m for s, m in groups.items() if abs(s - np.sqrt(0.5)) / np.sqrt(0.5) < 0.01)
    collapsed = np.mean([float(r["test/collapsed_fraction"]) for r in summed]) * latent_dim
    assert float(re.search(r"½: (" + NUMBER + ") of", collapse).group(1)) == pytest.approx(
        collapsed, abs=0.051
    )
    if "test/fd_prior_mean" in rows[0] and rows[0]["test/fd_prior_mean"]:
        by_fd = _best(groups, "val/fd_prior_mean")
        assert f"closest to the validation images by Fréchet distance are σ = {by_fd:.3g}'s" in text
    assert "Measured in this run" in lines[0] and "docs/findings.md" in lines[-1]


def test_the_stored_sweeps_verdict_is_what_its_files_say():
    config, rows, num_dims, per_example = load_sweep(STORED)
    lines = verdict.verdict_lines(config, plain_rows(rows, "gaussian"), num_dims, per_example)
    assert len(lines) == 7
    check_verdict(STORED, lines)


def test_a_sweep_without_the_implied_sigmas_says_less_and_fills_nothing_in():
    config, rows, num_dims, per_example = load_sweep(STORED)
    kept = [r for r in plain_rows(rows, "gaussian") if r["group"] != "gaussian" or r["sigma"] < 0.5]
    lines = verdict.verdict_lines(config, kept, num_dims, per_example)
    assert not any("MSE + KL (σ" in line or "Collapse" in line for line in lines)
    assert lines[1].startswith("- Best fixed σ on validation data: σ = 0.126")


@pytest.mark.slow
def test_the_main_job_prints_the_verdict_of_its_own_files(tmp_path):
    """README's first command: the compact sweep ends its output with the verdict lines, and
    they are what its results files say."""
    workdir = tmp_path / "compact"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = (
        subprocess.run(
            [
                sys.executable,
                "experiments/run.py",
                "--config=experiments/configs/compact_sweep.py",
                f"--workdir={workdir}",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()
    )
    lines = report.headline(workdir)[1:]
    assert out[-len(lines) :] == lines
    assert len(lines) == 7
    check_verdict(workdir, lines)
    assert "## The verdict" in (workdir / "report.md").read_text()

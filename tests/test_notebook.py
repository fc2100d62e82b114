"""notebooks/quickstart.ipynb run top to bottom in a Jupyter kernel by the headless command its
first cell documents (nbclient's `jupyter execute`, from the test extra; issue 39), and the
numbers it prints checked against the library, against the workdir it wrote and against NumPy
and SciPy computed here, so the notebook cannot rot (issue 29).

The notebook trains its sweep into the checkout's runs/notebook (ignored by git), as it does for
a reader; the kernel inherits this session's environment (data directory, compilation cache).
"""

import math
import pathlib
import re
import shutil
import subprocess
import sys

import nbformat
import numpy as np
import pytest
from conftest import REPO, SIGMA_SWEEP_CONFIG, load_config
from scipy import stats

from vae_jax import conventions, data, workdir

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
WORKDIR = REPO / "runs" / "notebook"
NUMBER = r"(-?[0-9.]+(?:e[-+]?[0-9]+)?)"


HEADLESS = "jupyter execute --inplace notebooks/quickstart.ipynb"  # the notebook's first cell's


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> nbformat.NotebookNode:
    """The notebook as HEADLESS executes it, written to a copy (`--output`) instead of in place."""
    output = tmp_path_factory.mktemp("notebook") / "quickstart.ipynb"
    command = [sys.executable, "-m", *HEADLESS.replace("--inplace", f"--output={output}").split()]
    subprocess.run(command, cwd=REPO, check=True, timeout=1800)
    return nbformat.read(output, as_version=4)


def test_the_notebook_documents_its_headless_command_from_the_test_extra():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert f"`{HEADLESS}`" in notebook.cells[0].source
    assert "nbclient" in (REPO / "pyproject.toml").read_text()
    assert shutil.which("jupyter-execute", path=str(pathlib.Path(sys.executable).parent)), (
        "nbclient's jupyter execute is not installed beside this Python"
    )


def outputs(notebook: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]


@pytest.fixture(scope="module")
def printed(executed) -> str:
    """Everything the notebook printed on stdout, in order."""
    return "".join(
        out.text
        for out in outputs(executed)
        if out.output_type == "stream" and out.name == "stdout"
    )


def found(pattern: str, text: str) -> list[tuple[str, ...]]:
    matches = re.findall(pattern, text)
    assert matches, f"{pattern!r} not printed:\n{text}"
    return matches


def one(pattern: str, text: str) -> float:
    (match,) = found(pattern, text)
    return float(match)


@pytest.mark.slow
def test_the_notebook_runs_clean_and_shows_its_figures_and_tables(executed):
    shown = outputs(executed)
    assert not [o for o in shown if o.output_type == "error"]
    # Nothing on stderr, nothing that names this machine: the committed outputs read anywhere.
    assert not [o.text for o in shown if o.output_type == "stream" and o.name == "stderr"]
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in shown)
    assert str(REPO) not in text and str(REPO.parent) not in text
    figures = [o for o in shown if "image/png" in o.get("data", {})]
    tables = [o for o in shown if "text/html" in o.get("data", {})]
    assert len(figures) >= 3, "NLL and FD against σ, the sample grid, the linear theory"
    assert len(tables) >= 2, "the sweep's table and the linear theory's"


@pytest.mark.slow
def test_the_printed_likelihood_and_implied_sigmas_are_the_library_s(printed):
    x_test = data.load_numpy("digits", "test")
    num_dims = math.prod(x_test.shape[1:])
    x, f = x_test[0], x_test.mean(axis=0)
    lines = found(rf"σ = {NUMBER}: log p\(x\|z\) = {NUMBER} nats, the formula: {NUMBER}", printed)
    for sigma, log_p, by_formula in lines:
        expected = stats.norm.logpdf(x, f, float(sigma)).sum()
        assert float(log_p) == pytest.approx(expected, rel=1e-5, abs=2e-3)
        assert float(by_formula) == pytest.approx(expected, rel=1e-5, abs=2e-3)
    summed = one(rf"implied σ, summed MSE \+ KL: {NUMBER}", printed)
    mean = one(rf"implied σ, mean MSE \+ KL: {NUMBER}", printed)
    assert summed == pytest.approx(conventions.implied_sigma(num_dims, recon="sum"), abs=1e-4)
    assert summed == pytest.approx(math.sqrt(0.5), abs=1e-4)
    assert mean == pytest.approx(conventions.implied_sigma(num_dims, recon="mean"), abs=1e-4)
    assert mean == pytest.approx(math.sqrt(num_dims / 2), abs=1e-4)


@pytest.mark.slow
def test_the_printed_pytorch_vae_sigma_is_the_translator_s(printed):
    convention = conventions.get_convention("pytorch_vae")
    for name, dims in (("8×8 digits", 64), ("28×28 MNIST", 784), ("64×64×3 CelebA", 12288)):
        sigma = one(rf"{name} \(D = {dims}\): pytorch_vae σ = {NUMBER},", printed)
        translated = conventions.convention_translation(convention, dims).std
        assert sigma == pytest.approx(translated, rel=1e-3)
        # Mean MSE + 0.00025 · KL: σ² = kld_weight · D / 2, by hand.
        assert sigma == pytest.approx(math.sqrt(0.00025 * dims / 2), rel=1e-3)
    scored_at = one(rf"PCA VAE at the pytorch_vae σ {NUMBER}:", printed)
    assert scored_at == pytest.approx(math.sqrt(0.00025 * 64 / 2), abs=1e-4)


@pytest.mark.slow
def test_the_printed_sweep_numbers_are_its_results_csv(printed):
    rows = [
        r for r in workdir.read_results_csv(WORKDIR / "results.csv") if r["group"] == "gaussian"
    ]
    nll = {round(r["sigma"], 6): r["test/iwae_nll"] for r in rows}
    lines = found(rf"σ = {NUMBER}: test NLL {NUMBER} nats\n", printed)
    assert len(lines) == len(rows)
    for sigma, value in lines:
        (key,) = [s for s in nll if math.isclose(s, float(sigma), rel_tol=1e-3)]
        assert float(value) == pytest.approx(nll[key], abs=0.006)
    best = min(rows, key=lambda r: r["val/iwae_nll"])
    assert one(rf"best σ on validation: {NUMBER},", printed) == pytest.approx(
        best["sigma"], rel=1e-3
    )
    # One "best fixed σ refit", by one rule, wherever the notebook names it (issue 39).
    best_refit = min(rows, key=lambda r: r["val/iwae_nll_refit"])
    named = found(rf"best fixed σ refit \(σ = {NUMBER}\): test NLL refit {NUMBER}", printed)
    assert len(named) == 2, named
    for sigma, value in named:
        assert float(sigma) == pytest.approx(best_refit["sigma"], rel=1e-3)
        assert float(value) == pytest.approx(best_refit["test/iwae_nll_refit"], abs=0.006)
    # The variant is big enough for a curve with a minimum inside the grid.
    by_sigma = [nll[s] for s in sorted(nll)]
    assert min(by_sigma) < by_sigma[0] and min(by_sigma) < by_sigma[-1], by_sigma


@pytest.mark.slow
def test_the_printed_collapse_prediction_is_the_spectrum_s(printed):
    fraction = load_config(SIGMA_SWEEP_CONFIG, "notebook").data.validation_fraction
    train, _ = data.split_validation(data.load_numpy("digits", "train"), fraction)
    flat = train.reshape(len(train), -1).astype(np.float64)
    eigvals = np.linalg.eigvalsh(np.cov(flat, rowvar=False, bias=True))[::-1]
    lines = found(rf"σ = {NUMBER}: the optimal linear VAE keeps (\d+) of (\d+) latents", printed)
    for sigma, kept, latent_dim in lines:
        expected = int(np.sum(eigvals[: int(latent_dim)] > float(sigma) ** 2))
        assert int(kept) == expected, sigma

"""experiments/run.py as a newcomer meets it (issue 26): a backend the machine lacks, --help's
list of config files and variants, --print_config's comments and trained σ, an integer field
given a fraction; and the test and install set-up the README's commands rely on."""

import importlib.util
import math
import pathlib
import re
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest
from conftest import (
    DEFAULT_CONFIG,
    REPO,
    SIGMA_SWEEP_CONFIG,
    assert_one_line_error,
    cli_env,
    load_config,
    run_cli,
)

CONFIGS = REPO / "experiments" / "configs"
CONFIG_FILES = sorted(p for p in CONFIGS.glob("*.py") if p.name != "__init__.py")


@pytest.mark.slow  # the default suite keeps a faster test of the same code
@pytest.mark.parametrize(
    "platform, plugins",
    [("tpu", ("libtpu",)), ("cuda", ("jax_cuda12_plugin", "jax_cuda13_plugin"))],
)
def test_an_unavailable_backend_is_one_line_naming_it_and_what_is_available(
    tmp_path, platform, plugins
):
    if any(importlib.util.find_spec(p) for p in plugins):
        pytest.skip(f"{plugins} installed: JAX_PLATFORMS={platform} may well start here")
    env = cli_env()
    env["JAX_PLATFORMS"] = platform
    proc = run_cli(f"--workdir={tmp_path}/w", env=env)
    line = assert_one_line_error(proc, f"JAX_PLATFORMS={platform}", repr(platform))
    available = re.search(r"available on this machine: ([\w, ]+);", line)
    assert available and "cpu" in available.group(1).split(", "), line
    assert not (tmp_path / "w").exists()


@pytest.mark.slow  # trains and compiles a model (or runs a CLI); CI runs it
def test_help_lists_every_config_file_with_the_variants_it_accepts():
    proc = run_cli("--help", config=None)
    assert proc.returncode == 0, proc.stderr
    listed = {}
    for name, variants in re.findall(
        r"^  (\S+\.py) +(no variants|variants: .+)$", proc.stdout, re.M
    ):
        listed[name] = () if variants == "no variants" else tuple(variants[10:].split(", "))
    assert set(listed) == {p.name for p in CONFIG_FILES}, proc.stdout
    assert listed["sigma_sweep.py"] == ("quick", "notebook")
    assert listed["linear_vae.py"] == ("lucas",)
    assert listed["default.py"] == ()
    for path in CONFIG_FILES:  # each variant listed is one get_config accepts
        for variant in listed[path.name]:
            assert "model" in load_config(path, variant)
        with pytest.raises(ValueError, match="unknown variant"):
            load_config(path, "no_such_variant")


def _source_comment(path: pathlib.Path, field: str) -> str:
    """The comment at the end of `config.<field> = …` in a config file, read with a regex."""
    pattern = rf"^\s*config\.{re.escape(field)} = .*?#\s*(.+)$"
    return re.search(pattern, path.read_text(), re.M).group(1).strip()


def test_print_config_shows_the_implicit_sigmas_and_each_fields_comment(tmp_path):
    proc = run_cli(
        "--config.data.name=digits",  # 8×8 pixels, built in a second
        "--print_config",
        f"--workdir={tmp_path}/w",
        config=f"{SIGMA_SWEEP_CONFIG}:quick",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "sweep.sigma = (0.05, 0.15, 2.0)" in lines  # the field as set ...
    trained = next(line for line in lines if line.startswith("# trains "))
    assert lines.index(trained) == lines.index("sweep.sigma = (0.05, 0.15, 2.0)") - 1
    # ... and what trains: σ² = 1/2 (summed MSE + KL) and σ² = D/2 (mean over D = 64 pixels).
    values = re.search(r"σ: \(([^)]*)\)", trained).group(1)
    sigmas = sorted(float(v) for v in values.split(","))
    expected = sorted([0.05, 0.15, 2.0, math.sqrt(0.5), math.sqrt(64 / 2)])
    assert sigmas == pytest.approx(expected, abs=1e-6), trained
    assert trained.startswith("# trains 5 σ")
    # Each field follows its comment in the config file; default.py's for what sigma_sweep.py
    # inherits, sigma_sweep.py's for what it sets.
    for field, path in (("model.latent_dim", DEFAULT_CONFIG), ("sweep.sigma", SIGMA_SWEEP_CONFIG)):
        comment = _source_comment(path, field)
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{field} = "))
        assert any(comment in line for line in lines[max(0, index - 2) : index]), (field, comment)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.model.latent_dim=1.5", "error: model.latent_dim=1.5 must be a positive integer"),
        pytest.param(
            "--config.data.dequantize=maybe",
            "error: data.dequantize=maybe must be true or false",
            marks=pytest.mark.slow,  # a CLI subprocess; the integer case above stays in
        ),
    ],
)
def test_a_value_of_the_wrong_type_gets_the_fields_rule(tmp_path, flag, message):
    line = assert_one_line_error(run_cli(flag, f"--workdir={tmp_path}/w"))
    assert line == message
    assert not (tmp_path / "w").exists()


@pytest.mark.slow  # the default suite keeps a faster test of the same code
def test_pytest_reports_each_test_with_progress_and_leaves_slow_ones_out(tmp_path):
    """setup.cfg's options on a throwaway suite: one line per test with the percentage done,
    under -q and pytest-xdist, and the slow marker still deselected."""
    (tmp_path / "test_demo.py").write_text(
        "import pytest\n\n"
        "def test_one():\n    pass\n\n"
        "def test_two():\n    pass\n\n"
        "@pytest.mark.slow\ndef test_slow():\n    pass\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-c", str(REPO / "setup.cfg"), "-n", "1"]
        + ["--rootdir", str(tmp_path), "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\[gw0\] \[ *\d+%\] PASSED \S*test_demo.py::test_one", proc.stdout)
    assert "2 passed" in proc.stdout and "test_slow" not in proc.stdout, proc.stdout


def test_accelerator_extras_forward_to_extras_jax_provides():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    provided = set(metadata.metadata("jax").get_all("Provides-Extra"))
    for name in ("cuda12", "cuda13", "tpu"):
        (requirement,) = extras[name]
        forwarded = re.fullmatch(r"jax\[([\w-]+)\]>=[\d.]+", requirement)
        assert forwarded and forwarded.group(1) == name, requirement
        assert name in provided, f"the installed jax has no extra {name!r}"

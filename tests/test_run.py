"""experiments/run.py as a newcomer meets it (issues 11 and 26): the tiny config end to end, a
backend the machine lacks, --help and its list of config files and variants, --print_config's
fields, comments and trained σ, an integer field given a fraction, a first run's quiet stderr,
config files that cannot be loaded (one line, exit status 2, an earlier run untouched) and
--verbose's traceback; and the test and install set-up the README's commands rely on."""

import importlib.util
import json
import math
import os
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
    TINY,
    assert_one_line_error,
    cli_env,
    config_flags,
    load_config,
    run_cli,
    snapshot,
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


@pytest.mark.slow  # a CLI twin of a faster default test
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


# ml_collections reads an override as the field's type before the config is parsed; a value it
# cannot read gets the type the field needs (experiments/cli.py), without a parse of the config.
@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.model.latent_dim=1.5", "error: model.latent_dim=1.5 must be an integer"),
        pytest.param(
            "--config.data.dequantize=maybe",
            "error: data.dequantize=maybe must be true or false",
            marks=pytest.mark.slow,  # a CLI subprocess; the integer case above stays in
        ),
    ],
)
def test_a_value_of_the_wrong_type_gets_the_type_the_field_needs(tmp_path, flag, message):
    line = assert_one_line_error(run_cli(flag, f"--workdir={tmp_path}/w"))
    assert line == message
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------------------------------------
# The tiny run end to end; --help and --print_config; a first run's quiet stderr.


def test_tiny_config_end_to_end(tiny_run):
    path, proc = tiny_run
    assert f"workdir: {path}" in proc.stdout
    results = json.loads((path / "results.json").read_text())
    assert results["step"] == TINY["train.num_steps"]
    saved = json.loads((path / "config.json").read_text())
    assert saved["data"]["name"] == "digits" and saved["model"]["hidden_sizes"] == [16]


def test_help_exits_0_and_mentions_print_config_and_reevaluate():
    result = run_cli("--help", config=None)
    assert result.returncode == 0, result.stderr
    assert "--print_config" in result.stdout and "--reevaluate" in result.stdout


def test_print_config_lists_every_field_with_overrides_and_exits_0(tmp_path):
    result = run_cli(
        "--config.likelihood.sigma=0.3",
        "--config.sweep.sigma=0.2",  # a repeated flag builds a tuple: accepted
        "--config.sweep.sigma=0.4",
        "--print_config",
        f"--workdir={tmp_path}/w",
        config=f"{SIGMA_SWEEP_CONFIG}:quick",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "likelihood.sigma = 0.3" in lines
    assert "sweep.sigma = (0.2, 0.4)" in lines
    fields = {line.split(" = ")[0] for line in lines}
    flat = {
        f"{group}.{key}"
        for group, sub in load_config().items()
        if hasattr(sub, "items")
        for key in sub
    }
    assert flat <= fields
    assert not (tmp_path / "w").exists()


@pytest.mark.slow  # a CLI twin of a faster default test
def test_first_run_prints_only_its_own_build_line(tmp_path):
    """Fresh data and matplotlib dirs: no TFDS "Downloading ..." and no fontManager INFO line.
    The run stops at a config error right after building the data, so it stays cheap."""
    env = dict(
        os.environ,
        VAE_JAX_DATA_DIR=str(tmp_path / "data"),
        MPLCONFIGDIR=str(tmp_path / "mpl"),
    )
    result = run_cli(
        "--config.data.name=digits",
        "--config.train.batch_size=100000",
        f"--workdir={tmp_path}/w",
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("building the embedded dataset digits")
    assert lines[0].endswith("(once)")
    assert lines[1].startswith("error: train.batch_size=100000")


@pytest.mark.slow  # a CLI twin of a faster default test
def test_catalog_dataset_offline_with_empty_data_dir(tmp_path):
    # Through the CLI: tfds' absl warnings ("Variant folder ... has no dataset_info.json") must
    # not reach stderr as a second line.
    empty = tmp_path / "empty_data"
    empty.mkdir()
    proc = run_cli(
        f"--workdir={tmp_path / 'w'}",
        *config_flags(TINY),
        "--config.data.name=mnist",
        env=cli_env(VAE_JAX_DATA_DIR=str(empty)),
    )
    assert_one_line_error(proc, "data.name", "mnist", "prepare_data.py --name=mnist", "[catalog]")
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------------------------------------
# Config files that cannot be loaded; --verbose.


def test_missing_config_file(earlier_run, tmp_path):
    missing = tmp_path / "no_such_config.py"
    before = snapshot(earlier_run)
    proc = run_cli(f"--workdir={earlier_run}", config=missing)
    assert_one_line_error(proc, "--config", "no_such_config.py")
    assert snapshot(earlier_run) == before


def test_missing_config_file_with_overrides(tmp_path):
    proc = run_cli(
        f"--workdir={tmp_path / 'w'}", "--config.seed=1", config=tmp_path / "no_such_config.py"
    )
    assert_one_line_error(proc, "--config", "no_such_config.py")
    assert not (tmp_path / "w").exists()


def test_config_file_without_get_config(tmp_path):
    config = tmp_path / "no_get_config.py"
    config.write_text("SEED = 0\n")
    proc = run_cli(f"--workdir={tmp_path / 'w'}", config=config)
    assert_one_line_error(proc, "--config", "get_config")
    assert not (tmp_path / "w").exists()


def test_config_file_that_raises_on_import(tmp_path):
    config = tmp_path / "broken.py"
    config.write_text("import no_such_module_for_vae_jax\n")
    proc = run_cli(f"--workdir={tmp_path / 'w'}", config=config)
    assert_one_line_error(proc, "--config", "no_such_module_for_vae_jax")


@pytest.mark.parametrize(
    "config, allowed",
    [
        ("default.py", "default.py has none"),
        ("sigma_sweep.py", "allowed: quick, notebook"),
        ("linear_vae.py", "allowed: lucas"),
    ],
)
def test_config_files_refuse_an_unknown_variant(config, allowed, tmp_path):
    path = SIGMA_SWEEP_CONFIG.parent / config
    proc = run_cli(f"--workdir={tmp_path / 'w'}", config=f"{path}:fast")
    line = assert_one_line_error(proc)  # the config file's refusal, not its exception's type
    assert line == f"error: --config={path}:fast: unknown variant 'fast'; {allowed}"
    assert not (tmp_path / "w").exists()


@pytest.mark.slow  # a CLI twin of a faster default test
def test_verbose_adds_the_traceback(earlier_run):
    before = snapshot(earlier_run)
    proc = run_cli(
        f"--workdir={earlier_run}",
        *config_flags(TINY),
        "--config.likelihood.sigma=0",
        "--verbose",
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: likelihood.sigma"), proc.stderr
    assert snapshot(earlier_run) == before


# ---------------------------------------------------------------------------------------------
# The test and install set-up.


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

"""Tests for experiments/device_check.sh on the CPU: what it detects and plans (`--dry-run`, with a
stand-in nvidia-smi), and its whole quick path with this python (slow)."""

import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, cli_env

SCRIPT = REPO / "experiments" / "device_check.sh"


def fake_nvidia_smi(directory, cuda: str) -> None:
    """An nvidia-smi that answers the two questions the script asks, for a CUDA `cuda` driver."""
    directory.mkdir(exist_ok=True)
    script = directory / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in --query-gpu*) echo "NVIDIA H200, 580.159.03, 143771 MiB";;\n'
        f'*) echo "| NVIDIA-SMI 580.159.03  Driver Version: 580.159.03  CUDA Version: {cuda} |";;'
        "\nesac\n"
    )
    script.chmod(0o755)


def device_check(*args, path=None, **env) -> subprocess.CompletedProcess:
    environment = cli_env(PYTHON=sys.executable, **env)
    if "TPU_ACCELERATOR_TYPE" not in env:  # the machine's own, if any, would pick tpu
        environment.pop("TPU_ACCELERATOR_TYPE", None)
    if path is not None:
        environment["PATH"] = f"{path}{os.pathsep}{environment['PATH']}"
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )


def planned(out) -> dict:
    record = json.loads((out / "device.json").read_text())
    assert record["dry_run"] is True and record["jax"] is None
    assert all(step["status"] == "planned" for step in record["steps"])
    return record


@pytest.mark.parametrize("cuda, extra", [("13.0", "cuda13"), ("12.4", "cuda12")])
def test_the_cuda_version_picks_the_extra(tmp_path, cuda, extra):
    fake_nvidia_smi(tmp_path / "bin", cuda)
    proc = device_check("--dry-run", tmp_path / "out", path=tmp_path / "bin")
    assert proc.returncode == 0, proc.stderr
    record = planned(tmp_path / "out")
    assert record["extra"] == extra and record["extra_detected"] is True
    assert record["gpu"] == "NVIDIA H200, 580.159.03, 143771 MiB"
    assert [s["name"] for s in record["steps"]] == ["install", "benchmark", "sweep"]
    install, benchmark, sweep = (s["command"] for s in record["steps"])
    assert f"[{extra}]" in install and "--system-site-packages" in install
    assert "experiments/benchmark.py --json" in benchmark and "--quick" not in benchmark
    assert "--run-sweep experiments/configs/sigma_sweep.py --sweep-workdir" in sweep


def test_a_tpu_and_the_overrides(tmp_path):
    proc = device_check("--dry-run", tmp_path / "tpu", TPU_ACCELERATOR_TYPE="v5litepod-8")
    assert proc.returncode == 0, proc.stderr
    assert planned(tmp_path / "tpu")["extra"] == "tpu"
    # OUT_DIR from $OUT; --extra wins over detection; --no-install leaves out the install.
    out = tmp_path / "from_env"
    proc = device_check("--dry-run", "--extra", "cuda12", "--no-install", "--quick", OUT=str(out))
    assert proc.returncode == 0, proc.stderr
    record = planned(out)
    assert record["extra"] == "cuda12" and record["extra_detected"] is False
    assert record["python"] == sys.executable and record["installed"] is False
    assert [s["name"] for s in record["steps"]] == ["benchmark", "sweep"]
    assert "--quick" in record["steps"][0]["command"]
    assert "sigma_sweep.py:quick" in record["steps"][1]["command"]
    proc = device_check("--dry-run", "--wheelhouse", "/wheels", tmp_path / "offline")
    assert "--no-index --find-links /wheels" in planned(tmp_path / "offline")["steps"][0]["command"]


def test_bad_options_are_one_line(tmp_path):
    for args in (["--extra", "rocm"], ["--frobnicate"], [tmp_path / "a", tmp_path / "b"]):
        proc = device_check(*args)
        assert proc.returncode == 2 and proc.stderr.startswith("error:"), args
        assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # benchmark.py --quick and sigma_sweep.py:quick: about 3 minutes on 2 cores
def test_quick_run_on_the_cpu_writes_json_and_logs(tmp_path):
    out = tmp_path / "out"
    proc = device_check("--no-install", "--quick", out, SWEEP_WORKDIR=str(tmp_path / "sweep"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = {p.name for p in out.iterdir()}
    assert names == {
        "device.json",
        "benchmark.json",
        "benchmark.log",
        "sweep.json",
        "sweep.log",
        "results.csv",
    }
    record = json.loads((out / "device.json").read_text())
    assert record["extra"] == "none" and record["jax"]["backend"] == "cpu"
    assert [(s["name"], s["status"]) for s in record["steps"]] == [("benchmark", 0), ("sweep", 0)]
    benchmark = json.loads((out / "benchmark.json").read_text())
    assert benchmark["quick"] is True and benchmark["matmul_gflops"] > 0
    assert {"train_step", "iwae", "sweep", "targets"} <= set(benchmark)
    report = json.loads((out / "sweep.json").read_text())["sweep_efficiency"]
    assert report["smoke_test"] is True and 0 < report["efficiency"] < 1
    assert report["timing"]["total"]["wall_s"] > 0 and report["timing"]["ceiling"]["gflops"] > 0
    assert "sweep efficiency" in (out / "sweep.log").read_text()
    assert "train step" in (out / "benchmark.log").read_text()
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(group["members"] for group in report["groups"].values())

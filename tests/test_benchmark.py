"""Smoke test of experiments/benchmark.py: --quick runs and writes every key (no speed checks)."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN_STEP_KEYS = ("ms_per_step", "examples_per_sec", "gflops", "fraction_of_ceiling")


def _positive_finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_quick_benchmark_writes_every_key(tmp_path):
    out = tmp_path / "benchmark.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "benchmark.py"), "--quick", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())

    assert _positive_finite(results["matmul_gflops"])
    assert _positive_finite(results["compile_s"])
    for batch_size in ("128", "1024"):
        for key in TRAIN_STEP_KEYS:
            assert _positive_finite(results["train_step"][batch_size][key]), (batch_size, key)
    assert _positive_finite(results["iwae"]["examples_per_sec"])
    sweep = results["sweep"]
    assert sweep["members"] == 8
    for key in ("vmapped_s", "sequential_s", "ratio"):
        assert _positive_finite(sweep[key]), key
    # The printed table names each target and whether it is met.
    assert "≥ 75%" in proc.stdout and "≥ 90%" in proc.stdout

"""Tests for experiments/sweep_speed.py's whole-sweep report: a workdir written by hand, so every
ratio and verdict has a known answer (no sweep runs here)."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, cli_env

from vae_jax import workdir

sys.path.insert(0, str(REPO))
from experiments import sweep_speed  # noqa: E402

# Two groups: the Gaussian at 1,000 examples/s, the discretised logistic at 500 (0.5×).
SPEEDS = {"gaussian": 1000.0, "discretized_logistic": 500.0}


def timing_json(*, compile_s: float, efficiency: float) -> dict:
    phases = {
        "setup_s": 1.0,
        "compile_s": compile_s,
        "train_s": 60.0,
        "evaluate_s": 10.0,
        "sample_quality_s": 5.0,
        "write_s": 4.0,
    }
    wall = sum(phases.values())
    groups = {
        name: {"compile_s": compile_s / 2, "train_s": 30.0, "steps_s": 28.0, "evaluate_s": 5.0}
        for name in SPEEDS
    }
    return {
        "total": {**phases, "wall_s": wall, "unaccounted_s": 0.0, "compile_in": {"train_s": 3.0}},
        "groups": groups,
        "flops": {"train_flops": 9e12, "evaluate_flops": 1e12, "useful_flops": 1e13},
        "ceiling": {"gflops": 200.0, "size": 2048, "devices": 1},
        "seconds_at_limit": 50.0,
        "efficiency": efficiency,
        "backend": "cpu",
        "device_kind": "cpu",
    }


def fake_sweep(path, *, smoke_test=False, timing=None):
    rows = [
        {"group": g, "likelihood": g, "train/examples_per_sec": speed}
        for g, speed in SPEEDS.items()
        for _ in range(2)
    ]
    path.mkdir(parents=True, exist_ok=True)
    workdir.write_results_csv(path / "results.csv", rows)
    (path / "config.json").write_text(json.dumps({"sweep": {"smoke_test": smoke_test}}))
    if timing is not None:
        (path / "timing.json").write_text(json.dumps(timing))
    return path


def test_report_judges_each_target(tmp_path, capsys):
    path = fake_sweep(tmp_path / "sweep", timing=timing_json(compile_s=5.0, efficiency=0.65))
    report = sweep_speed.sweep_report(path)
    assert report["groups"]["discretized_logistic"]["vs_gaussian"] == pytest.approx(0.5)
    assert report["groups"]["gaussian"]["members"] == 2
    assert report["groups"]["gaussian"]["steps_s"] == 28.0  # timing.json's, beside results.csv's
    assert report["compile_fraction"] == pytest.approx(5.0 / 85.0)
    met = {name: target["met"] for name, target in report["targets"].items()}
    assert met == {"efficiency": True, "family_vs_gaussian": False, "compile_fraction": True}
    sweep_speed.print_sweep_report(report)
    out = capsys.readouterr().out
    assert "sweep efficiency 0.65 of the limit end to end (target ≥ 0.6: met)" in out
    assert "examples/s: NOT met" in out and "10 TFLOP" in out
    assert "discretized_logistic" in out and "0.50" in out


def test_compile_over_a_tenth_of_the_wall_is_not_met(tmp_path):
    path = fake_sweep(tmp_path / "sweep", timing=timing_json(compile_s=20.0, efficiency=0.3))
    met = {k: t["met"] for k, t in sweep_speed.sweep_report(path)["targets"].items()}
    assert met["compile_fraction"] is False and met["efficiency"] is False


def test_a_smoke_test_sweep_is_not_judged(tmp_path, capsys):
    timing = timing_json(compile_s=20.0, efficiency=0.3)
    report = sweep_speed.sweep_report(fake_sweep(tmp_path / "s", smoke_test=True, timing=timing))
    assert all(target["met"] is None for target in report["targets"].values())
    sweep_speed.print_sweep_report(report)
    assert capsys.readouterr().out.count("not judged (a smoke-test sweep)") == 3


def test_a_sweep_without_timing_json_still_gives_its_throughput(tmp_path, capsys):
    report = sweep_speed.sweep_report(fake_sweep(tmp_path / "old"))
    assert report["timing"] is None and report["targets"]["efficiency"]["met"] is None
    assert report["targets"]["family_vs_gaussian"]["met"] is False
    sweep_speed.print_sweep_report(report)
    assert "no timing.json" in capsys.readouterr().out


@pytest.mark.slow  # the CLI twin of the in-process report tests
def test_benchmark_reports_a_workdir_from_the_command_line(tmp_path):
    path = fake_sweep(tmp_path / "sweep", timing=timing_json(compile_s=5.0, efficiency=0.65))
    out = tmp_path / "sweep.json"
    proc = subprocess.run(
        [sys.executable, "experiments/benchmark.py", "--sweep-workdir", str(path)]
        + ["--json", str(out)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "whole sweep (s): setup 1.0, compile 5.0" in proc.stdout
    results = json.loads(out.read_text())
    assert results["sweep_efficiency"]["targets"]["efficiency"]["met"] is True
    assert results["sweep_efficiency"]["timing"]["ceiling"]["gflops"] == 200.0


def test_an_unfinished_workdir_is_refused_in_one_line(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="^2$") as exit_info:
        sweep_speed.run_sweep("experiments/configs/sigma_sweep.py:quick", tmp_path / "half")
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit, match="^2$"):
        sweep_speed.sweep_report(tmp_path / "half")

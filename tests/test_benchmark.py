"""Smoke tests of experiments/benchmark.py, profiling.py and compile_profile.py: they run and write
every key (no speed checks)."""

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, SIGMA_SWEEP_CONFIG, SWEEP_FIELDS, load_config, tiny_config

from vae_jax import timing, train

TRAIN_STEP_KEYS = ("ms_per_step", "examples_per_sec", "gflops", "fraction_of_ceiling")


def _positive_finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def quick_benchmark(out: pathlib.Path, *flags: str) -> tuple[dict, str]:
    """`benchmark.py --quick --json OUT` with `flags`, optimised as users run it: its JSON and
    what it printed."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "benchmark.py"), *flags, "--quick"]
        + ["--json", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow  # about 35 s on 2 cores: the whole benchmark, each section shortened
def test_quick_benchmark_writes_every_key(tmp_path):
    results, stdout = quick_benchmark(tmp_path / "benchmark.json")

    assert _positive_finite(results["matmul_gflops"])
    assert _positive_finite(results["compile_s"])
    for batch_size in ("128", "1024"):
        for key in TRAIN_STEP_KEYS:
            assert _positive_finite(results["train_step"][batch_size][key]), (batch_size, key)
    assert _positive_finite(results["iwae"]["examples_per_sec"])
    sweep = results["sweep"]
    assert sweep["members"] == 8
    for key in ("vmapped_s", "sequential_s", "ratio", "run_s", "run_ratio_shared_compile"):
        assert _positive_finite(sweep[key]), key
    # The printed table names each target and whether it is met; a 3-step sweep is not judged.
    assert "≥ 75%" in stdout and "≥ 90%" in stdout
    assert results["quick"] is True
    targets = results["targets"]
    assert targets["sweep_fraction"]["met"] is None and targets["sweep_ratio"]["met"] is None
    assert all(isinstance(targets[t]["met"], bool) for t in ("train_128", "train_1024"))
    assert targets["sweep_ratio_shared_compile"]["met"] is None
    assert stdout.count("not judged in --quick") == 3
    assert sweep["members_per_slice"] in range(1, 9)
    # The PyTorch reference runs where torch is importable, else says it was skipped.
    if results["torch"] is None:
        assert "PyTorch reference: skipped" in stdout
        assert results["train_step"]["128"]["vs_pytorch"] is None
    else:
        assert _positive_finite(results["train_step"]["128"]["vs_pytorch"])
    assert len(results["load_average"]) == 3
    assert "fraction of ceiling: the FLOP/s" in stdout


@pytest.mark.slow
def test_profiling_tables_time_the_project_chunk_and_its_variants():
    sys.path.insert(0, str(REPO))
    from experiments import profiling

    config = tiny_config()
    rows = profiling.profile_step(config, 16, 2, 1, timing.Ceiling(size=128))
    assert rows[0]["variant"] == profiling.PROJECT and rows[0]["vs_project"] == 1.0
    assert {r["variant"] for r in rows} >= {
        "SGD instead of Adam",
        "bare batched MLP + Adam (floor)",
        profiling.JAX_RANDOM,
    }
    for row in rows:
        assert _positive_finite(row["ms_per_step"]) and _positive_finite(row["compile_s"]), row
    rows = profiling.profile_sweep(config, 2, 1)
    assert rows[-1]["variant"] == "8 sequential jit(chunk) calls"
    assert all(_positive_finite(r["run_s"]) for r in rows)
    rows = profiling.profile_draws(1)
    assert len(rows) == 2 and all(_positive_finite(r["speedup"]) for r in rows)


@pytest.mark.slow
def test_the_jax_random_variant_changes_how_numbers_are_drawn_not_which():
    sys.path.insert(0, str(REPO))
    from experiments import measure, profiling
    from vae_jax import threefry

    _, problem, _, state, hyper, train_x = measure.setup(tiny_config(), 16)
    chunk = train.make_train_chunk(problem, 3)
    ours = jax.jit(chunk)(state, train_x, hyper, jax.random.key(1))
    with_jax = jax.jit(profiling.traced_with_jax_random(chunk))(
        state, train_x, hyper, jax.random.key(1)
    )
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(with_jax), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Traced with the swap, the dequantisation and ε draws are jax's `random_bits` primitive
    # (only the epoch permutation uses it otherwise); without it, the hash is written out in
    # plain integer ops. The swap is undone on exit.
    args = (state, train_x, hyper, jax.random.key(1))
    swapped = str(jax.make_jaxpr(profiling.traced_with_jax_random(chunk))(*args))
    plain = str(jax.make_jaxpr(chunk)(*args))
    assert swapped.count("random_bits[") >= plain.count("random_bits[") + 2
    uniform = threefry.uniform
    with profiling.jax_random_draws():
        assert threefry.uniform is not uniform
    assert threefry.uniform is uniform


@pytest.mark.slow
def test_profiling_compile_table_times_each_groups_programs():
    sys.path.insert(0, str(REPO))
    from experiments import compile_profile

    config = tiny_config(SWEEP_FIELDS, base=load_config(SIGMA_SWEEP_CONFIG, "quick"))
    rows = compile_profile.profile_compile(config, ("gaussian", "gaussian_learned"))
    assert [(r["group"], r["program"]) for r in rows] == [
        ("gaussian", "train chunk"),
        ("gaussian", "evaluation"),
        ("gaussian_learned", "train chunk"),
        ("gaussian_learned", "evaluation"),
    ]
    # The σ grid and the σ that common losses imply share the Gaussian's program; the learned σ
    # is one member of its own.
    assert rows[0]["members"] > len(config.sweep.sigma) and rows[2]["members"] == 1
    for row in rows:
        assert _positive_finite(row["wall_s"]) and _positive_finite(row["cpu_s"]), row
        assert row["cores"] == pytest.approx(row["cpu_s"] / row["wall_s"])
        assert row["variant"] == f"{row['group']} ({row['members']} members): {row['program']}"


@pytest.mark.slow  # about 2 minutes on the shared 2-core CPU: the plain form compiles slowly
def test_quick_conv_benchmark_writes_the_mlp_layout(tmp_path):
    results, stdout = quick_benchmark(tmp_path / "conv.json", "--model=conv")
    assert results["model"] == "conv" and results["quick"] is True
    assert results["config"] == {"hidden_sizes": [16, 32], "latent_dim": 32}
    assert _positive_finite(results["matmul_gflops"])
    fast, plain = results["train_step"]["128"], results["plain_step"]["128"]
    for key in TRAIN_STEP_KEYS:
        assert _positive_finite(fast[key]) and _positive_finite(plain[key]), key
    # The useful FLOPs of a step: the conv count × 3 (forward and backward) × batch 128.
    step_flops = 3 * 2_107_392 * 128
    assert fast["gflops"] == pytest.approx(step_flops / (fast["ms_per_step"] / 1e3) / 1e9)
    assert fast["vs_plain"] == pytest.approx(fast["examples_per_sec"] / plain["examples_per_sec"])
    targets = results["targets"]
    assert targets["conv_train_128"]["target"] == 0.25
    assert isinstance(targets["conv_train_128"]["met"], bool)
    if results["torch"] is None:
        assert "PyTorch reference: skipped" in stdout
        assert fast["vs_pytorch"] is None and targets["conv_vs_pytorch_128"]["met"] is None
    else:
        torch_step = results["torch"]["128"]["examples_per_sec"]
        assert fast["vs_pytorch"] == pytest.approx(fast["examples_per_sec"] / torch_step)
    assert "JAX, lax convolutions" in stdout and len(results["load_average"]) == 3

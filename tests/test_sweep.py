"""Tests for vae_jax.sweep: a vmapped sweep equals its single runs, shards its member axis over
devices, stops non-finite members alone, resumes as a whole (killed, through the CLI too),
compiles once per group, runs end to end through the CLI, gives the same rows in two processes,
leaves no workdir when refused and a finished sweep as it is."""

import csv
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import (
    REPO,
    RUN,
    SIGMA_SWEEP_CONFIG,
    SWEEP_FIELDS,
    TINY,
    assert_config_error,
    checkpoint_steps,
    cli_env,
    config_flags,
    counting_traces,
    fingerprint,
    load_config,
    run_cli,
    tiny_config,
    wait_for,
    without_speeds,
)

from vae_jax import experiment, group, report, sharding, spec, sweep, timing, workdir
from vae_jax import members as sweep_members
from vae_jax.errors import ConfigError
from vae_jax.objective import make_hyper

# 6 members: every sweep here has this many, so they all run the programs the first compiled.
SIGMAS = [0.1, 0.5, 2.0]
SEEDS = [0, 1]
# Every Gaussian member has these (test/recon_mse_grey belongs to binarised families only).
METRICS = tuple(
    c
    for c in workdir.RESULT_COLUMNS[workdir.RESULT_COLUMNS.index("status") + 1 :]
    if not c.startswith("train/")
    and c != "test/recon_mse_grey"
    and c not in workdir.SAMPLE_COLUMNS  # off in TINY: `test_sweep_scores_sample_quality`
)


def tolerance(key: str) -> float:
    """rtol for a metric computed twice in sums of another order (sharded, another process):
    the refit σ is the argmax of a bound that is flat at its maximum, so the sums' last bits
    move it by ~10⁻⁴ (relative), and with it every score taken at it (measured: 2.4·10⁻⁴ for
    σ, 1.4·10⁻⁴ for the ELBO at it)."""
    return 1e-3 if "refit" in key else 1e-4


def sweep_config(**sweep_fields) -> ml_collections.ConfigDict:
    config = tiny_config()
    config.sweep = ml_collections.ConfigDict(
        {"sigma": SIGMAS, "seeds": SEEDS, "references": (), **sweep_fields}
    )
    return config


def read_csv(path: pathlib.Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def saved_params(checkpoints: pathlib.Path, step: int):
    manager = ocp.CheckpointManager(checkpoints)
    tree = manager.restore(step, args=ocp.args.StandardRestore())
    manager.close()
    return tree["state"]["params"]


def member(tree, i: int):
    return jax.tree.map(lambda a: np.asarray(a)[i], tree)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One 6-member sweep (3 σ × 2 seeds) through `sweep.train_and_evaluate`, with the group's
    train chunk wrapped to count its traces and the report's rendering timed."""
    path = tmp_path_factory.mktemp("sweep")
    render_seconds = []
    render = report.render

    def timed_render(workdir_path):
        start = time.perf_counter()
        render(workdir_path)
        render_seconds.append(time.perf_counter() - start)

    t0 = time.perf_counter()
    with counting_traces() as traces, mock.patch.object(report, "render", timed_render):
        rows = sweep.train_and_evaluate(sweep_config(), path)
    seconds = time.perf_counter() - t0
    return {
        "path": path,
        "rows": rows,
        "traces": traces,
        "seconds": seconds,
        "render_seconds": sum(render_seconds),
    }


def test_results_csv_has_one_row_per_member(swept):
    rows = read_csv(swept["path"] / "results.csv")
    assert [(r["group"], float(r["sigma"]), int(r["seed"])) for r in rows] == [
        ("gaussian", s, seed) for s in SIGMAS for seed in SEEDS
    ]
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert all(math.isfinite(float(r[k])) for k in METRICS), r
    assert (swept["path"] / "report.md").exists()
    assert sorted(p.name for p in (swept["path"] / "plots").glob("*.png"))


def test_timing_json_splits_the_sweeps_wall_time(swept):
    path = swept["path"]
    record = json.loads((path / "timing.json").read_text())
    total, group = record["total"], record["groups"]["gaussian"]
    phases = sum(total[f"{name}_s"] for name in timing.PHASES)
    assert phases + total["unaccounted_s"] == pytest.approx(total["wall_s"])
    assert abs(total["unaccounted_s"]) < 0.01 * total["wall_s"]
    # Timed from outside, the sweep took the split's wall time plus the ceiling probe, the
    # finished-workdir check, results.csv and the report, rendered from the files after them.
    outside = swept["seconds"] - total["wall_s"]
    assert swept["render_seconds"] > 0
    bound = record["ceiling"]["probe_s"] + swept["render_seconds"] + 0.1 * swept["seconds"]
    assert swept["render_seconds"] <= outside <= bound
    assert group["members"] == 6 and group["trained_steps"] == 20
    assert group["compile_s"] >= 0.5 * group["train_program_compile_s"] > 0
    assert group["examples_per_sec"] == pytest.approx(swept["rows"][0]["train/examples_per_sec"])
    useful = group["train_flops"] + group["evaluate_flops"]
    assert record["flops"]["useful_flops"] == useful > 0
    limit = record["ceiling"]["gflops"] * 1e9 * record["ceiling"]["devices"]
    assert record["efficiency"] == pytest.approx(useful / (total["wall_s"] * limit))
    # Written before results.csv, which marks the sweep finished.
    assert (path / "timing.json").stat().st_mtime_ns <= (path / "results.csv").stat().st_mtime_ns


def test_each_group_compiles_its_chunk_once(swept):
    # fit() lowers the vmapped chunk once per group: one trace for 6 members and both chunks.
    assert swept["traces"] == {"gaussian": 1}


@pytest.mark.parametrize("sigma, seed", [(0.1, 0), pytest.param(2.0, 1, marks=pytest.mark.slow)])
def test_sweep_member_equals_single_run(swept, tmp_path, sigma, seed, no_figures):
    config = tiny_config(likelihood__sigma=sigma, seed=seed)
    single = experiment.train_and_evaluate(config, tmp_path)
    rows = read_csv(swept["path"] / "results.csv")
    index, row = next(
        (i, r) for i, r in enumerate(rows) if float(r["sigma"]) == sigma and int(r["seed"]) == seed
    )
    for key in (*METRICS, "sigma"):
        np.testing.assert_allclose(
            float(row[key]), single[key], rtol=tolerance(key), atol=1e-6, err_msg=key
        )
    steps = config.train.num_steps
    chex.assert_trees_all_close(
        member(saved_params(swept["path"] / "groups" / "gaussian" / "checkpoints", steps), index),
        saved_params(tmp_path / "checkpoints", steps),
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.slow  # test_sweep_is_deterministic_and_resumes_as_a_whole: its slow twin
def test_sweep_resumes_as_a_whole(swept, tmp_path, no_figures):
    path = tmp_path / "sweep"
    shutil.copytree(swept["path"], path)
    steps = sweep_config().train.num_steps
    checkpoints = path / "groups" / "gaussian" / "checkpoints"
    shutil.rmtree(checkpoints / str(steps))
    assert (checkpoints / str(steps // 2)).is_dir()  # resumes from the midway checkpoint
    (path / "results.csv").unlink()
    sweep.train_and_evaluate(sweep_config(), path)
    before = read_csv(swept["path"] / "results.csv")
    after = read_csv(path / "results.csv")
    assert [without_speeds(r) for r in after] == [without_speeds(r) for r in before]


def test_nonfinite_member_is_stopped_and_the_others_go_on(tmp_path, no_figures):
    # Adam's first step moves every weight by ~learning_rate: 1e30 overflows the next loss.
    config = sweep_config(seeds=[0], learning_rate=[1e-3, 1e30], references=())
    sweep.train_and_evaluate(config, tmp_path)
    rows = read_csv(tmp_path / "results.csv")
    good = [r for r in rows if float(r["learning_rate"]) == 1e-3]
    bad = [r for r in rows if float(r["learning_rate"]) == 1e30]
    assert len(good) == len(bad) == len(SIGMAS)
    for row in good:
        assert row["status"] == "ok"
        assert all(math.isfinite(float(row[k])) for k in METRICS)
    for row in bad:
        assert row["status"].startswith("stopped: ")
        assert "non-finite loss at step 2 " in row["status"], row["status"]
        assert all(row[k] == "" for k in METRICS)


SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, pathlib, sys

    import jax
    import numpy as np
    from jax.sharding import NamedSharding

    sys.path.insert(0, sys.argv[3])
    from conftest import tiny_config  # noqa: E402
    import ml_collections  # noqa: E402

    from vae_jax import spec, sweep  # noqa: E402

    config = tiny_config()
    config.sweep = ml_collections.ConfigDict(json.loads(sys.argv[4]))
    config = spec.parse(config)
    members = sweep.members_by_group(config)["gaussian"]
    path, mesh = pathlib.Path(sys.argv[1]), sweep.member_mesh()
    result = sweep.train_group(config, path, "gaussian", members, mesh)
    rows, fitted = result.rows, result.fitted
    leaves = jax.tree.leaves(fitted.state.params)
    np.savez(sys.argv[2], *[np.asarray(a) for a in leaves])
    print(json.dumps({
        "device_count": jax.device_count(),
        "rows": rows,
        "leaves": [
            {
                "shape": list(a.shape),
                "named": isinstance(a.sharding, NamedSharding),
                "spec": [str(s) for s in getattr(a.sharding, "spec", ())],
                "num_devices": len(a.sharding.device_set),
                "shard_rows": [s.data.shape[0] for s in a.addressable_shards],
            }
            for a in leaves
        ],
    }))
    """
)


@pytest.mark.slow  # a subprocess compiling for 4 devices, ~10 s of CPU
def test_sharded_sweep_equals_unsharded(swept, tmp_path):
    """The fixture's 6 members again, on 4 forced host devices: padded to 8, 2 per device."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SHARDED_SCRIPT,
            str(tmp_path / "sharded"),
            str(tmp_path / "sharded.npz"),
            str(REPO / "tests"),
            json.dumps({"sigma": SIGMAS, "seeds": SEEDS}),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = json.loads(result.stdout.strip().splitlines()[-1])
    assert sharded["device_count"] == 4
    for leaf in sharded["leaves"]:
        assert leaf["shape"][0] == 8
        assert leaf["named"] and leaf["spec"][0] == "members", leaf
        assert all(s == "None" for s in leaf["spec"][1:]), leaf
        assert leaf["num_devices"] == 4
        assert leaf["shard_rows"] == [2, 2, 2, 2]

    rows = read_csv(swept["path"] / "results.csv")  # the same members on one device
    members = len(rows)
    assert len(sharded["rows"]) == members == len(SIGMAS) * len(SEEDS)
    for a, b in zip(sharded["rows"], rows, strict=True):
        assert a["status"] == b["status"] == "ok"
        assert (a["sigma"], a["seed"]) == (float(b["sigma"]), int(b["seed"]))
        for key in METRICS:
            np.testing.assert_allclose(
                a[key], float(b[key]), rtol=tolerance(key), atol=1e-6, err_msg=key
            )
    steps = sweep_config().train.num_steps
    unsharded = saved_params(swept["path"] / "groups" / "gaussian" / "checkpoints", steps)
    with np.load(tmp_path / "sharded.npz") as saved:
        sharded_params = [saved[f"arr_{i}"][:members] for i in range(len(saved.files))]
    chex.assert_trees_all_close(
        sharded_params, [np.asarray(a) for a in jax.tree.leaves(unsharded)], rtol=1e-4, atol=1e-6
    )


def check_sweep_workdir(
    path: pathlib.Path, num_rows: int, *, smoke_test: bool = False
) -> list[dict[str, str]]:
    rows = read_csv(path / "results.csv")
    assert len(rows) == num_rows
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    plots = sorted(p.name for p in (path / "plots").glob("*.png"))
    assert "sigma_iwae_nll.png" in plots and "sigma_images.png" in plots
    assert "rate_distortion.png" in plots  # the fixed-σ members against the linear theory
    report = (path / "report.md").read_text()
    # A smoke test states no findings and says why; a real sweep states them.
    assert ("Best fixed σ" in report) != smoke_test
    assert ("**Smoke test.**" in report) == smoke_test
    for name in plots:
        assert f"(plots/{name})" in report
    return rows


@pytest.mark.slow  # the CLI twin of the `swept` fixture's in-process sweep (8.6 s)
def test_cli_tiny_sweep(swept, tmp_path):
    result = run_cli(
        f"--workdir={tmp_path}",
        *config_flags(TINY),
        # The fixture's 6 members (its programs are compiled) and one group; the slow test runs
        # quick's own grid and references.
        "--config.sweep.sigma=(0.1,0.5,2.0)",
        "--config.sweep.seeds=(0,1)",
        "--config.sweep.references=()",
        "--config.sweep.implicit_sigmas=False",
        "--config.sweep.smoke_test=False",
        config=f"{SIGMA_SWEEP_CONFIG}:quick",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"report: {tmp_path / 'report.md'}" in result.stdout  # and its findings follow
    assert "Best fixed σ on validation data" in result.stdout
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"]["hidden_sizes"] == [16]
    assert config["sweep"]["references"] == []
    rows = check_sweep_workdir(tmp_path, num_rows=len(SIGMAS) * len(SEEDS))
    expected = read_csv(swept["path"] / "results.csv")
    assert [without_speeds(r) for r in rows] == [without_speeds(r) for r in expected]


def test_implicit_sigmas_come_from_the_loaded_data():
    """summed MSE + KL is σ² = 1/2 and mean MSE + KL σ² = D/2 for the data the sweep loads:
    D = 64 for digits, so √32 joins the grid (not √(784/2), MNIST's)."""
    config = sweep_config(implicit_sigmas=True)
    assert config.data.name == "digits"
    sigmas = sweep_members.sigma_values(spec.parse(config))
    assert sigmas == sorted(SIGMAS + [round(math.sqrt(0.5), 6), round(math.sqrt(32.0), 6)])
    config.sweep.implicit_sigmas = False
    assert sweep_members.sigma_values(spec.parse(config)) == SIGMAS


@pytest.mark.slow
def test_cli_quick_sweep(tmp_path):
    result = run_cli(f"--workdir={tmp_path}", config=f"{SIGMA_SWEEP_CONFIG}:quick")
    assert result.returncode == 0, result.stderr[-3000:]
    # 3 σ + the two that summed and mean MSE imply for MNIST, 3 references × 1 seed.
    rows = check_sweep_workdir(tmp_path, num_rows=5 + 3, smoke_test=True)
    assert [r["group"] for r in rows[5:]] == ["gaussian_learned", "gaussian_optimal", "bernoulli"]
    assert "too small to carry findings" in result.stdout


FEW_MEMBERS_SCRIPT = textwrap.dedent(
    """
    import json, pathlib, sys

    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, sys.argv[2])
    from conftest import SIGMA_SWEEP_CONFIG, load_config, tiny_config  # noqa: E402

    from vae_jax import experiment, group, spec, sweep, train  # noqa: E402

    config = tiny_config(base=load_config(SIGMA_SWEEP_CONFIG))  # a sweep config: sweep.* fields
    run_spec = spec.parse(config)  # init_group takes the parsed run spec
    problem = experiment.build_problem(run_spec)
    members = [sweep.Member("gaussian", s, 0, 1.0, 1e-3) for s in (0.1, 0.5)]
    devices = sweep.member_mesh().devices
    result = sweep.train_group(
        run_spec, pathlib.Path(sys.argv[1]), "gaussian", members, sweep.member_mesh()
    )
    rows, fitted = result.rows, result.fitted
    mesh = sweep.group_mesh(devices, len(members))
    state, hyper, rngs, _ = sweep.shard_members(
        group.init_group(run_spec, problem, members, 2), mesh
    )
    lowered = jax.jit(group.make_group_chunk(problem, 2, mesh)).lower(
        state, jnp.asarray(problem.train_x), hyper, rngs
    )
    print(json.dumps({
        "mesh": dict(mesh.shape),
        "constraints": [l.strip() for l in lowered.as_text().splitlines()
                        if "sharding_constraint" in l],
        "elbo": [r["test/elbo"] for r in rows],
        "params": [np.asarray(a).ravel()[:5].tolist()
                   for a in jax.tree.leaves(fitted.state.params)],
    }))
    """
)


def run_few_members(tmp_path, devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    ).strip()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            FEW_MEMBERS_SCRIPT,
            str(tmp_path / f"d{devices}"),
            str(REPO / "tests"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two subprocesses, ~30 s
def test_fewer_members_than_devices_split_the_batch(tmp_path):
    """2 members on 4 devices: a (2 members × 2 batch) mesh, each member's batch split in two,
    and the same numbers as on one device."""
    one, four = run_few_members(tmp_path, 1), run_few_members(tmp_path, 4)
    assert one["mesh"] == {"members": 1, "batch": 1}
    assert four["mesh"] == {"members": 2, "batch": 2}
    # The batch [members, batch, H, W, C] is constrained to members × batch.
    assert any('[{"members"}, {"batch"}' in line for line in four["constraints"]), four
    np.testing.assert_allclose(four["elbo"], one["elbo"], rtol=1e-4)
    for a, b in zip(four["params"], one["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_group_mesh_shapes():
    devices = np.arange(8)
    assert dict(sweep.group_mesh(devices, 24).shape) == {"members": 8, "batch": 1}
    assert dict(sweep.group_mesh(devices, 2).shape) == {"members": 2, "batch": 4}
    assert dict(sweep.group_mesh(devices, 3).shape) == {"members": 2, "batch": 4}
    assert dict(sweep.group_mesh(devices, 1).shape) == {"members": 1, "batch": 8}


MULTIHOST_SCRIPT = textwrap.dedent(
    """
    import sys

    import jax

    num_processes, process_id, port, workdir, tests_dir = sys.argv[1:6]
    if int(num_processes) > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"localhost:{port}",
            num_processes=int(num_processes),
            process_id=int(process_id),
        )
    sys.path.insert(0, tests_dir)
    import ml_collections  # noqa: E402
    from conftest import tiny_config  # noqa: E402

    from vae_jax import sweep  # noqa: E402

    config = tiny_config()
    config.sweep = ml_collections.ConfigDict(
        {"sigma": (0.1, 0.5, 2.0), "seeds": (0,), "references": ("gaussian_learned",)}
    )
    sweep.train_and_evaluate(config, workdir)
    """
)


def metric_columns(path: pathlib.Path) -> list[dict]:
    with open(path / "results.csv") as f:
        return [
            {k: v for k, v in row.items() if not k.startswith("train/")}
            for row in csv.DictReader(f)
        ]


@pytest.mark.slow  # three processes, ~40 s
def test_two_host_sweep_equals_one_process(tmp_path):
    """A 2-process "multi-host" slice (2 CPU devices each, gloo collectives) runs the same
    sweep program and writes, from process 0 only, the same results as one process."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

    def start(num_processes, process_id, workdir):
        args = [num_processes, process_id, port, workdir, REPO / "tests"]
        return subprocess.Popen(
            [sys.executable, "-c", MULTIHOST_SCRIPT, *map(str, args)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    hosts = [start(2, i, tmp_path / "two_hosts") for i in range(2)]
    single = start(1, 0, tmp_path / "one_process")
    for proc in [*hosts, single]:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    two, one = metric_columns(tmp_path / "two_hosts"), metric_columns(tmp_path / "one_process")
    assert [r["status"] for r in two] == [r["status"] for r in one] == ["ok"] * 4
    for a, b in zip(two, one, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            try:
                np.testing.assert_allclose(
                    float(a[key]), float(b[key]), rtol=tolerance(key), err_msg=key
                )
            except ValueError:  # a text column
                assert a[key] == b[key], key
    assert (tmp_path / "two_hosts" / "report.md").exists()


def test_members_per_slice_gives_the_members_of_one_vmap():
    """Slices of 1 (the single run's chunk per member, no member axis) and of 2, run one after
    another inside one program, give each member what the vmap of all 4 at once gives. A
    stand-in chunk (a few ops on the state, σ, β and the member's key) compiles in moments."""

    def chunk(state, train_x, hyper, rng):
        assert state["w"].shape == (3,)  # one member's state: no member axis
        noise = jax.random.normal(rng, (7, 3))
        w = state["w"] * hyper.beta + jnp.cumsum(noise, axis=0)[-1] + train_x.sum()
        return {"w": w * jnp.exp(hyper.log_sigma)}, {"loss": noise.sum(-1)}

    vmapped = jax.vmap(chunk, in_axes=(0, None, 0, 0))
    state = {"w": jnp.arange(12.0).reshape(4, 3)}
    hyper = sharding.stack([make_hyper(s, b) for s, b in ((0.1, 1.0), (0.5, 2.0), (1, 3), (2, 4))])
    rngs = jax.random.split(jax.random.key(0), 4)
    train_x = jnp.ones((5, 2))
    outputs = {
        size: jax.jit(sharding.in_slices(chunk, vmapped, size))(state, train_x, hyper, rngs)
        for size in (None, 1, 2)
    }
    chex.assert_trees_all_equal(outputs[1], outputs[None])
    chex.assert_trees_all_equal(outputs[2], outputs[None])
    assert outputs[None][1]["loss"].shape == (4, 7)


@pytest.mark.parametrize("value, message", [(0, "must be > 0"), (1.5, "positive integer")])
def test_members_per_slice_is_checked(value, message):
    config = sweep_config(members_per_slice=value)
    with pytest.raises(ConfigError, match=f"sweep.members_per_slice={value}.*{message}"):
        spec.parse(config)


def test_members_per_slice_divides_the_group():
    config = spec.parse(sweep_config(members_per_slice=4))
    mesh = sweep.member_mesh()
    assert group.members_per_slice(config, mesh, 6) == 3
    assert group.members_per_slice(config, mesh, 4) is None  # one slice: the plain vmap


@pytest.mark.slow  # the default suite keeps a faster test of the same code
def test_sweep_scores_sample_quality_and_writes_the_images(tmp_path):
    """With eval.sample_quality on, every member gets the sample metrics in results.csv, the
    workdir samples.npz (uint8, rows in results.csv's order) and sample_quality.json, and
    report.md its section and figures."""
    config = sweep_config(references=("gaussian_learned",))
    config.eval.sample_quality = True
    config.eval.sample_examples = 40
    rows = sweep.train_and_evaluate(config, str(tmp_path))
    with np.load(tmp_path / "samples.npz") as images:
        assert images["prior_mean"].shape == (len(rows), 40, 8, 8, 1)
        assert images["reconstruction"].dtype == np.uint8 and images["test"].shape == (40, 8, 8, 1)
        # The stored reconstructions are the ones the metrics scored: not all black.
        assert images["reconstruction"].max() > 0
    stored = read_csv(tmp_path / "results.csv")
    for row in stored:
        for column in workdir.SAMPLE_COLUMNS:
            assert row[column] != "", column
        assert 0.0 <= float(row["test/recon_accuracy"]) <= 1.0
        # rate = the bound on I(x; z) + the bound on the marginal KL, both from the same rate.
        total = float(row["test/mutual_information_upper"]) + float(row["test/marginal_kl_lower"])
        np.testing.assert_allclose(total, float(row["test/rate"]), rtol=1e-4)
    quality = json.loads((tmp_path / "sample_quality.json").read_text())
    assert 0.5 < quality["feature_net/test_accuracy"] <= 1.0
    # The floor is extrapolated on the grid the members' FD_∞ share (40 test images here).
    assert quality["floor/fd_inf_sizes"] == [16, 22, 28, 34, 40]
    assert all(
        np.isfinite(quality[k]) for k in ("floor/fd_inf", "floor/fd_pca", "floor/fd_inf_pca")
    )
    text = (tmp_path / "report.md").read_text()
    assert "## What it looks like" in text and "plots/sample_grid.png" in text
    assert (tmp_path / "plots" / "nll_and_fd.png").exists()


# ---------------------------------------------------------------------------------------------
# A refused sweep leaves no workdir; a finished one is left as it is.


def test_sweep_data_error_leaves_no_workdir_behind(tmp_path):
    # Every group's problem is built before workdir.prepare: a refused sweep leaves no
    # config.json that would refuse the corrected command as "a run of a different config".
    path = tmp_path / "w"
    config = tiny_config(
        SWEEP_FIELDS | {"train.batch_size": 100000}, base=load_config(SIGMA_SWEEP_CONFIG, "quick")
    )
    with pytest.raises(ConfigError, match="train.batch_size=100000 is larger than") as error:
        sweep.train_and_evaluate(config, path)
    assert_config_error(error, "train.batch_size")
    assert not (path / "config.json").exists()


@pytest.mark.slow  # a whole sweep and its report figures: outside the default suite's time budget
def test_finished_sweep_is_left_as_it_is(tmp_path, capsys):
    # The `swept` fixture's sweep: the persistent compilation cache compiles it once per session.
    config = tiny_config(model__hidden_sizes=(16,), model__latent_dim=3)
    config.sweep = ml_collections.ConfigDict(
        {"sigma": [0.1, 0.5, 2.0], "seeds": [0, 1], "references": ()}
    )
    rows = sweep.train_and_evaluate(config, tmp_path)
    assert "gaussian: step 20/20, loss " in capsys.readouterr().err
    files = [tmp_path / "results.csv", tmp_path / "report.md"]
    before = [fingerprint(f) for f in files]
    stored = sweep.train_and_evaluate(config, tmp_path)
    err = capsys.readouterr().err
    assert "already finished" in err and str(tmp_path / "report.md") in err
    assert "compiling" not in err and "evaluating" not in err
    assert [fingerprint(f) for f in files] == before
    assert [(r["sigma"], r["seed"], r["status"]) for r in stored] == [
        (r["sigma"], r["seed"], r["status"]) for r in rows
    ]
    for new, old in zip(stored, rows, strict=True):
        assert new["test/elbo"] == pytest.approx(old["test/elbo"], rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Determinism of a sweep: two processes, and a killed one resumed as a whole. (Single runs
# in two processes: test_train.py.)


def read_csv_without_speeds(path: pathlib.Path) -> list[dict[str, str]]:
    return [without_speeds(row) for row in read_csv(path)]


@pytest.mark.slow
def test_sweep_is_deterministic_and_resumes_as_a_whole(tmp_path):
    sweep_flags = config_flags(SWEEP_FIELDS | {"train.num_steps": 200})
    config = f"{SIGMA_SWEEP_CONFIG}:quick"
    runs = {}
    for name in ("a", "b"):
        runs[name] = tmp_path / name
        proc = run_cli(f"--workdir={runs[name]}", *sweep_flags, config=config)
        assert proc.returncode == 0, proc.stderr
    expected = read_csv_without_speeds(runs["a"] / "results.csv")
    assert read_csv_without_speeds(runs["b"] / "results.csv") == expected
    assert all(row["status"] == "ok" for row in expected)

    # Killed once the first group has a checkpoint; the re-run finishes every group.
    path = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(RUN), f"--config={config}", f"--workdir={path}", *sweep_flags],
        cwd=RUN.parent.parent,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first_group = path / "groups" / "gaussian"
    try:
        wait_for(proc, lambda: bool(checkpoint_steps(first_group)))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate()
    assert not (path / "results.csv").exists()
    resumed = run_cli(f"--workdir={path}", *sweep_flags, config=config)
    assert resumed.returncode == 0, resumed.stderr
    assert read_csv_without_speeds(path / "results.csv") == expected

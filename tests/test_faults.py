"""Faults a cluster job meets: two runs on one workdir, a damaged dataset cache, a full disk.

The promises (docs/troubleshooting.md): a second run on a workdir in use exits 2 at once with one
line naming the workdir and the process holding it, and touches nothing; a damaged embedded
dataset is rebuilt with one line saying so, a damaged catalog one is refused naming the
directory to delete; a write that finds no space stops the run with one line (what, where, how
much is free), keeps every checkpoint and result already written, leaves no temporary checkpoint
behind, and the same command resumes once there is space.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import (
    REPO,
    TINY,
    assert_one_line_error,
    cli_env,
    config_flags,
    run_cli,
    snapshot,
    tiny_config,
    without_speeds,
)

from vae_jax import checkpoint, data, embedded, experiment, spec, workdir
from vae_jax.errors import DiskFullError, WorkdirError

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
# How orbax reports tensorstore's failed write (the text of the traceback).
ORBAX_ENOSPC = ValueError(
    'RESOURCE_EXHAUSTED: Error writing "state.params/0" in OCDBT database at local file "…": '
    "Failed to write 17783 bytes to file 17: No space left on device [os_error_code='28']"
)


def error_after_progress(proc: subprocess.CompletedProcess, status: int) -> str:
    """stderr's last line, 'error: ...', after the run's progress lines only: no traceback, no
    second report."""
    report = f"rc={proc.returncode}\nstderr:\n{proc.stderr}"
    assert proc.returncode == status, report
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:"), report
    assert not any("error" in line.lower() for line in lines[:-1]), report
    assert "Traceback" not in proc.stderr, report
    return lines[-1]


def temporary_checkpoints(path: pathlib.Path) -> list[pathlib.Path]:
    return list(path.rglob(f"*{ocp.path.step.TMP_DIR_SUFFIX}*"))


# ---------------------------------------------------------------------------------------------
# Two runs on one workdir.

HOLDER = """
import pathlib, sys, time
from vae_jax import workdir
with workdir.WorkdirLock(pathlib.Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow  # CLI twin of test_lock_is_held_inside_the_block_and_released_after
def test_second_run_on_a_workdir_in_use_exits_2_and_touches_nothing(tmp_path):
    data.load_numpy("digits", "train")  # built beforehand: its one line is not the run's
    path = tmp_path / "run"
    path.mkdir()
    # A run in progress: its config and a logged step, the lock held by another process.
    (path / "config.json").write_text(workdir.config_to_json(spec.parse(tiny_config())))
    (path / "metrics.jsonl").write_text('{"step": 10}\n')
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(path), (path / ".lock").read_bytes()
        proc = run_cli(*config_flags(TINY), f"--workdir={path}")
        assert_one_line_error(proc, f"--workdir={path}", f"process {holder.pid} ", "in use")
        assert (snapshot(path), (path / ".lock").read_bytes()) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the killed holder's lock: the next run proceeds.
    with workdir.prepare(spec.parse(tiny_config()), path) as locked:
        assert locked == path
        assert f"process {os.getpid()} " in (path / ".lock").read_text()


def test_lock_is_held_inside_the_block_and_released_after(tmp_path):
    config = spec.parse(tiny_config())
    with workdir.prepare(config, tmp_path / "run"):
        # flock locks belong to an open file: a second open in this process is refused too.
        with pytest.raises(WorkdirError, match=rf"--workdir={tmp_path / 'run'} is in use"):
            workdir.prepare(config, tmp_path / "run")
    with workdir.prepare(config, tmp_path / "run"):
        pass


def test_refused_config_leaves_no_lock_file_behind(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    (path / "config.json").write_text(workdir.config_to_json(spec.parse(tiny_config(seed=7))))
    with pytest.raises(WorkdirError, match="different config"):
        workdir.prepare(spec.parse(tiny_config()), path)
    assert [p.name for p in path.iterdir()] == ["config.json"]


def test_each_process_of_a_multihost_job_locks_its_own_file(tmp_path, monkeypatch):
    path = tmp_path / "run"
    with workdir.prepare(spec.parse(tiny_config()), path):
        monkeypatch.setattr(workdir.jax, "process_index", lambda: 1)
        with workdir.WorkdirLock(path) as locked:
            assert locked == path
            assert (path / ".lock.process_1").exists()
            with pytest.raises(WorkdirError, match="in use"):
                workdir.WorkdirLock(path)


def test_file_system_without_locks_warns_and_runs(tmp_path, monkeypatch, caplog):
    def flock(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(workdir.fcntl, "flock", flock)
    with workdir.prepare(spec.parse(tiny_config()), tmp_path / "run") as path:
        assert (path / "config.json").exists()
    assert "cannot be locked" in caplog.text and os.strerror(errno.ENOLCK) in caplog.text


# ---------------------------------------------------------------------------------------------
# A damaged dataset cache: a private data dir, never the session's shared one.


def digits_train_file(data_dir: pathlib.Path) -> pathlib.Path:
    (file,) = (data_dir / "digits").glob("*/digits-train.array_record-*")
    return file


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("truncated", "ArrayRecord file should be at least 64KB big"),
        ("corrupt dataset_info.json", "ParseError: Failed to load JSON"),
    ],
)
def test_damaged_embedded_dataset_is_rebuilt_saying_so(damage, reason, tmp_path, capfd):
    data_dir = tmp_path / "data"
    expected = data.load_numpy("digits", "train", data_dir=data_dir)
    capfd.readouterr()
    train_file = digits_train_file(data_dir)
    if damage == "truncated":
        os.truncate(train_file, 1000)  # as the issue found it
    else:
        (train_file.parent / "dataset_info.json").write_text('{"name": "dig')
    x = data.load_numpy("digits", "train", data_dir=data_dir)
    np.testing.assert_array_equal(x, expected)  # the same data, not other data
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for part in ("digits", str(data_dir), "again", reason):
        assert part in lines[0], lines
    assert digits_train_file(data_dir).stat().st_size > 64 * 1024
    assert [p.name for p in (data_dir / "digits").iterdir()] == [train_file.parent.name]


def test_damaged_catalog_dataset_names_the_directory_and_the_rebuild(tmp_path, monkeypatch):
    # A catalog download cannot be made offline: a damaged prepared dataset stands in for one.
    data_dir = tmp_path / "data"
    data.load_numpy("digits", "train", data_dir=data_dir)
    os.truncate(digits_train_file(data_dir), 1000)
    before = snapshot(data_dir)
    damaged = embedded.Digits(data_dir=os.fspath(data_dir), file_format="array_record")
    monkeypatch.setattr(data, "_catalog_builder", lambda name, data_dir: damaged)
    with pytest.raises(data.DataError, match="data.name='mnist' in .* cannot be read") as raised:
        data.load_numpy("mnist", "train", data_dir=data_dir)
    message = str(raised.value)
    assert "\n" not in message
    for part in (
        f"delete {data_dir / 'mnist'}",
        "ArrayRecord file should be at least 64KB big",
        f"prepare_data.py --name=mnist --data_dir={data_dir}",
    ):
        assert part in message, message
    assert snapshot(data_dir) == before  # nothing deleted or rebuilt


# ---------------------------------------------------------------------------------------------
# A full disk.


def small_tree(value: float) -> dict:
    return {"w": jnp.full((3, 4), value), "step": jnp.asarray(7)}


def fail_saves_with(error: Exception):
    """CheckpointManager.save that starts a step as orbax does, then fails writing it."""

    def save(self, step, *args, **kwargs):
        tmp = pathlib.Path(self.directory) / f"{step}{ocp.path.step.TMP_DIR_SUFFIX}"
        (tmp / "default").mkdir(parents=True)
        (tmp / "default" / "half_written").write_bytes(b"\0" * 100)
        raise error

    return save


@pytest.mark.parametrize("error", [ENOSPC, ORBAX_ENOSPC], ids=["OSError", "orbax"])
def test_checkpoint_save_on_a_full_disk_keeps_the_last_good_one(error, tmp_path, monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    ckpt = checkpoint.Checkpoints(tmp_path / "checkpoints")
    ckpt.save(10, small_tree(1.0))
    assert sys.unraisablehook == reported.append  # a save that succeeds leaves it as it was
    with monkeypatch.context() as patch:
        patch.setattr(ocp.CheckpointManager, "save", fail_saves_with(error))
        with pytest.raises(DiskFullError, match="write the checkpoint at step 20") as raised:
            ckpt.save(20, small_tree(2.0))
    # Writes still in flight report into orbax's closed event loop: those reports are dropped.
    closed, other = RuntimeError("Event loop is closed"), RuntimeError("something else")
    for report in (closed, other):
        sys.unraisablehook(types.SimpleNamespace(exc_value=report))
    assert [r.exc_value for r in reported] == [other]
    message = str(raised.value)
    for part in (
        "No space left on device",
        f"checkpoint at step 20 in {tmp_path / 'checkpoints'}",
        "free on its file system",
        "step 10 is kept",
        "run the same command again",
    ):
        assert part in message, message
    assert temporary_checkpoints(tmp_path) == []
    assert ckpt.latest_step() == 10
    ckpt.save(20, small_tree(2.0))  # space freed: the same save goes through
    step, tree = ckpt.restore_latest(small_tree(0.0))
    ckpt.close()
    assert step == 20
    np.testing.assert_array_equal(tree["w"], np.full((3, 4), 2.0))


def test_leftover_temporary_checkpoint_is_removed_on_start(tmp_path):
    ckpt = checkpoint.Checkpoints(tmp_path / "checkpoints")
    ckpt.save(10, small_tree(1.0))
    ckpt.close()
    leftover = tmp_path / "checkpoints" / f"20{ocp.path.step.TMP_DIR_SUFFIX}"
    (leftover / "default").mkdir(parents=True)  # what a process killed mid-save leaves
    ckpt = checkpoint.Checkpoints(tmp_path / "checkpoints")
    step, _ = ckpt.restore_latest(small_tree(0.0))
    ckpt.close()
    assert step == 10 and not leftover.exists()


def test_result_file_on_a_full_disk_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    workdir.write_text_atomic(target, "old\n")

    def fsync(fd):
        raise ENOSPC

    monkeypatch.setattr(workdir.os, "fsync", fsync)
    with pytest.raises(DiskFullError, match=rf"could not write {target} \(.* free"):
        workdir.write_text_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_metrics_line_on_a_full_disk_leaves_no_half_line(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    workdir.append_jsonl(path, {"step": 10, "loss": 1.5})
    before = path.read_bytes()
    real_write = os.write

    def write(fd, data):  # a nearly full disk: part of the line fits, then nothing
        if os.fstat(fd).st_ino != path.stat().st_ino:
            return real_write(fd, data)
        if len(data) > 8:
            return real_write(fd, data[:8])
        raise ENOSPC

    monkeypatch.setattr(workdir.os, "write", write)
    with pytest.raises(DiskFullError, match="metrics.jsonl"):
        workdir.append_jsonl(path, {"step": 20, "loss": 1.25})
    assert path.read_bytes() == before


def test_metrics_line_cut_short_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 10}\n{"step": 20}\n{"step": 3')
    workdir.truncate_metrics(path, 20)
    assert path.read_text() == '{"step": 10}\n{"step": 20}\n'


@pytest.mark.parametrize("named", [True, False], ids=["file named", "file unnamed"])
def test_unhandled_write_on_a_full_disk_becomes_one_line(named, tmp_path):
    path, plot = tmp_path / "run", tmp_path / "run" / "plots" / "samples.png"
    what = plot if named else f"a file in {path}"  # matplotlib's savefig names no file
    with pytest.raises(DiskFullError, match=rf"could not write {what} \(.* free"):
        with workdir.prepare(spec.parse(tiny_config()), path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([str(plot)] if named else []))


@pytest.mark.slow
def test_run_stopped_by_a_full_disk_resumes_once_there_is_space(tmp_path, monkeypatch):
    path = tmp_path / "run"
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 20:
            return fail_saves_with(ENOSPC)(self, step)
        return real_save(self, step, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ocp.CheckpointManager, "save", save)
        with pytest.raises(DiskFullError, match="checkpoint at step 20"):
            experiment.train_and_evaluate(tiny_config(), str(path))
    assert sorted(p.name for p in (path / "checkpoints").iterdir()) == ["10"]
    assert not (path / "results.json").exists()
    results = experiment.train_and_evaluate(tiny_config(), str(path))
    assert results["step"] == 20
    lines = (path / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == [10, 20]
    assert temporary_checkpoints(path) == []


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"
    return subprocess.run(["unshare", "-m", "sh", "-c", probe], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs `unshare -m` and tmpfs mounts (root)")
def test_cli_on_a_real_full_tmpfs_stops_in_one_line_and_resumes(tmp_path):
    data.load_numpy("digits", "train")  # built beforehand: its one line is not the run's
    # A 200 KiB tmpfs holds the first tiny checkpoint (~125 KiB) but not a second one.
    mount, kept = tmp_path / "tmpfs", tmp_path / "kept"
    mount.mkdir()
    command = " ".join(
        [sys.executable, "experiments/run.py", "--config=experiments/configs/default.py"]
        + [shlex.quote(flag) for flag in config_flags(TINY)]
        + [f"--workdir={mount}/run"]
    )
    script = (
        f"mount -t tmpfs -o size=200k tmpfs {mount} || exit 99; {command}; rc=$?; "
        f"cp -a {mount}/run {kept}; exit $rc"
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
    )
    line = error_after_progress(proc, status=1)
    assert "checkpoint at step 20" in line and "free on its file system" in line, line
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["10"]
    assert temporary_checkpoints(kept) == []
    resumed = run_cli(*config_flags(TINY), f"--workdir={kept}")  # the same command, with space
    assert resumed.returncode == 0, resumed.stderr
    reference = run_cli(*config_flags(TINY), f"--workdir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stderr
    results, expected = (
        without_speeds(json.loads((p / "results.json").read_text()))
        for p in (kept, tmp_path / "reference")
    )
    assert results == expected

"""The run directory: one run at a time, config.json guard, atomic result files, metrics.jsonl."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import logging
import os
import pathlib
import socket
import tempfile
from typing import Any

import jax
import numpy as np

from vae_jax import checkpoint
from vae_jax.errors import (
    DiskFullError,
    WorkdirError,
    disk_full_error,
    no_space_as_disk_full,
    out_of_space,
)
from vae_jax.spec import RunSpec


def config_to_json(spec: RunSpec) -> str:
    """config.json's text: the resolved config the run spec was parsed from."""
    return json.dumps(spec.config, indent=2, sort_keys=True, default=str)


def prepare(spec: RunSpec, workdir: str | os.PathLike) -> WorkdirLock:
    """Create `workdir` (or reuse it for the same config) and lock it; refuse one in other use.

    Returns the held lock; `with prepare(config, workdir) as path:` keeps it for the run's
    lifetime. Raises WorkdirError (one line) if the path is a file, is not writable, its
    config.json differs from `spec`'s, or another run holds it — nothing already in the
    directory is touched in that case.
    """
    path = pathlib.Path(workdir)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir={path} is a file, not a directory; pick another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"--workdir={path} cannot be created: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir={path} is not writable; pick another path")
    wanted = config_to_json(spec)
    saved = path / "config.json"
    # Checked before locking too, so a refused config leaves no lock file in an old workdir.
    _check_same_config(saved, wanted, path)
    lock = WorkdirLock(path)
    try:
        _check_same_config(saved, wanted, path)  # again: a run may have finished in between
        if not saved.exists():
            write_text_atomic(saved, wanted)
    except BaseException:
        lock.release()
        raise
    return lock


def _check_same_config(saved: pathlib.Path, wanted: str, path: pathlib.Path) -> None:
    if saved.exists() and (
        differing := _differing_fields(json.loads(saved.read_text()), json.loads(wanted))
    ):
        raise WorkdirError(
            f"--workdir={path} holds a run of a different config (differs in "
            f"{', '.join(differing[:5]) or 'config'}); use a new --workdir to start a new run"
        )


class WorkdirLock:
    """An exclusive `flock` on the workdir's lock file, held by one run for its lifetime.

    The kernel drops a flock when its holder exits in any way (SIGKILL and crashes included), so
    the lock is never stale; the file stays and only records who holds it, for the message a
    second run prints. On a multi-host slice every process locks its own file: each process of a
    duplicate job then refuses by itself, rather than some waiting in a collective for peers that
    exited, and a straggler of an earlier job on any host is noticed.

    `with lock as path:` releases it on exit. An OSError for lack of space (ENOSPC, EDQUOT) that
    escapes the block — a write no one translated, e.g. a plot — becomes one DiskFullError line.
    """

    def __init__(self, directory: pathlib.Path):
        self.directory = directory
        index = jax.process_index()
        self.file = directory / (".lock" if index == 0 else f".lock.process_{index}")
        with no_space_as_disk_full(self.file):
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip()
            os.close(fd)
            raise WorkdirError(
                f"--workdir={directory} is in use by another run "
                f"({holder or 'a process that is just starting'}); wait for it to end or stop "
                "it, or use another --workdir"
            ) from None
        except OSError as e:  # a file system without locks, e.g. Lustre mounted without flock
            logging.warning(
                "--workdir=%s cannot be locked (%s): a second run on it would not be refused",
                directory,
                e.strerror,
            )
        self._fd: int | None = fd
        holder = f"process {os.getpid()} on {socket.gethostname()}\n".encode()
        try:  # who holds it, for a refused run's message
            with no_space_as_disk_full(self.file):
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder, 0)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> pathlib.Path:
        return self.directory

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()
        if isinstance(exc, DiskFullError) or not (reason := out_of_space(exc)):
            return
        if filename := getattr(exc, "filename", None):
            raise disk_full_error(reason, filename) from exc
        raise disk_full_error(reason, self.directory, what=f"a file in {self.directory}") from exc


def is_finished(
    spec: RunSpec,
    workdir: str | os.PathLike,
    result_file: str,
    checkpoint_dirs: list[str],
) -> bool:
    """Whether `workdir` holds this very spec's finished run: the same config.json, its
    `result_file` (written last), and in every checkpoint directory a readable checkpoint at
    `train.num_steps`."""
    path = pathlib.Path(workdir)
    saved = path / "config.json"
    if not (saved.is_file() and (path / result_file).is_file()):
        return False
    if _differing_fields(json.loads(saved.read_text()), json.loads(config_to_json(spec))):
        return False  # `prepare` refuses it with the differing fields
    for name in checkpoint_dirs:
        if not (path / name).is_dir():
            return False
        with contextlib.closing(checkpoint.Checkpoints(path / name)) as ckpt:
            step = ckpt.latest_step()
            if step != spec.train.num_steps or not ckpt.is_readable(step):
                return False  # a damaged final checkpoint: the usual path reports or replaces it
    return True


def _differing_fields(saved: Any, wanted: Any, prefix: str = "") -> list[str]:
    """The dotted fields whose values differ. A field missing from `saved` matches a `wanted`
    None: a config.json written before a field existed holds a run of that field's default
    (an unset placeholder, such as data.idx_dir), so adding a field does not orphan old runs."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        out = []
        for key in sorted(set(saved) | set(wanted)):
            if key not in saved and wanted[key] is None:
                continue
            out += _differing_fields(saved.get(key), wanted.get(key), f"{prefix}{key}.")
        return out
    return [] if saved == wanted else [prefix.rstrip(".")]


def write_text_atomic(path: str | os.PathLike, text: str | bytes) -> None:
    """Write via a temporary file in the same directory and rename: readers never see half.

    On a multi-host slice only process 0 writes (every process holds the same values).
    """
    if jax.process_index() != 0:
        return
    path = pathlib.Path(path)
    with no_space_as_disk_full(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make result files private
            with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


# per_example.npz's arrays [rows of results.csv, examples]: the IWAE NLL of each image.
PER_EXAMPLE = {
    "test_nll": "test",
    "test_nll_refit": "test_refit",
    "val_nll": "val",
    "val_nll_refit": "val_refit",
}


def write_arrays(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """A compressed .npz of `arrays` at `path`, atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_text_atomic(path, buffer.getvalue())


def write_per_example(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """per_example.npz at `path` (atomically): `PER_EXAMPLE`'s arrays, float32, NaN where a
    member has no such score."""
    write_arrays(path, {k: np.asarray(arrays[k], np.float32) for k in PER_EXAMPLE})


def read_per_example(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """per_example.npz's arrays (float64), or None if the workdir predates it."""
    path = pathlib.Path(path)
    if not path.exists():
        return None
    with np.load(path) as f:
        return {k: np.asarray(f[k], np.float64) for k in PER_EXAMPLE}


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def truncate_metrics(path: pathlib.Path, last_step: int) -> None:
    """Drop metrics.jsonl lines logged after `last_step` (they are recomputed on resume).

    A last line cut short (a crash or a full disk in the middle of an append) is dropped too: it
    was logged after the last checkpoint, since a checkpoint is saved only after its chunk's line.
    """
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if lines and not _is_json(lines[-1]):
        lines.pop()
    keep = [line for line in lines if json.loads(line).get("step", 0) <= last_step]
    write_text_atomic(path, "".join(line + "\n" for line in keep))


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def append_jsonl(path: pathlib.Path, record: dict[str, Any]) -> None:
    """Append one JSON line; a write that fails (e.g. a full disk) leaves the file as it was."""
    if jax.process_index() != 0:  # one host logs
        return
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    with no_space_as_disk_full(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                written = 0
                while written < len(line):  # a nearly full disk takes part of a write, then fails
                    written += os.write(fd, line[written:])
            except OSError:
                os.ftruncate(fd, size)  # no half line for the next append to follow
                raise
        finally:
            os.close(fd)


# results.csv's columns, in order: one row per sweep member (`vae_jax.sweep`).
RESULT_COLUMNS = (
    "group",
    "likelihood",
    "data_model",
    "remedy",
    "sigma",
    "sigma_start",
    "seed",
    "beta",
    "learning_rate",
    "status",
    "test/elbo",
    "test/recon_log_prob",
    "test/recon_mse",
    "test/kl",
    "test/active_units",
    "test/collapsed_fraction",
    "test/iwae_nll",
    "test/bits_per_dim",
    "test/psnr",
    "test/recon_mse_grey",
    "sigma_refit",
    "test/elbo_refit",
    "test/iwae_nll_refit",
    "test/bits_per_dim_refit",
    "val/iwae_nll",
    "val/iwae_nll_refit",
    "train/iwae_nll",
    "train/recon_mse",
    "train/examples_per_sec",
    "train/steps_per_sec",
)
# results.csv's split of the reconstruction log-likelihood at the posterior mean into saturated
# pixels (level 0 or the top level) and interior ones (`evaluate.saturation_summary`): nats per
# image and per pixel, as trained and (where the family refits) refit, and the saturated fraction.
SATURATION_COLUMNS = (
    "test/recon_saturated",
    "test/recon_interior",
    "test/recon_saturated_per_pixel",
    "test/recon_interior_per_pixel",
    "test/saturated_fraction",
    "test/recon_saturated_refit",
    "test/recon_interior_refit",
    "test/recon_saturated_per_pixel_refit",
    "test/recon_interior_per_pixel_refit",
)
RESULT_COLUMNS += SATURATION_COLUMNS
# results.csv's sample-quality columns (`vae_jax.sample_quality`), where a sweep computes them.
SAMPLE_COLUMNS = tuple(
    f"test/{metric}_{name}"
    for name in ("prior_mean", "prior_sample", "reconstruction")
    for metric in ("fd", "fd_inf", "fd_pca", "fd_inf_pca", "precision", "recall")
) + (
    "val/fd_prior_mean",
    "val/fd_prior_sample",
    "test/recon_accuracy",
    "test/rate",
    "test/mutual_information_upper",
    "test/marginal_kl_lower",
)
RESULT_COLUMNS += SAMPLE_COLUMNS


def write_results_csv(path: pathlib.Path, rows: list[dict[str, Any]]) -> None:
    """`rows` as results.csv at `path` (atomically): `RESULT_COLUMNS`, missing cells empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in RESULT_COLUMNS})
    write_text_atomic(path, buffer.getvalue())


def read_results_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A results.csv's rows with numbers as numbers and empty cells as None."""

    def parse(cell: str) -> Any:
        for kind in (int, float):
            try:
                return kind(cell)
            except ValueError:
                pass
        return cell or None

    with open(path, newline="") as f:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]

"""The run directory: config.json guard, atomic result files, metrics.jsonl."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import pathlib
import tempfile
from typing import Any

import jax
import ml_collections

from vae_jax import checkpoint
from vae_jax.errors import ConfigError


def config_to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def prepare(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> pathlib.Path:
    """Create `workdir` (or reuse it for the same config); refuse one that holds another run.

    Raises ConfigError (one line) if the path is a file, is not writable, or its config.json
    differs from `config` — nothing already in the directory is touched in that case.
    """
    path = pathlib.Path(workdir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--workdir={path} is a file, not a directory; pick another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--workdir={path} cannot be created: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir={path} is not writable; pick another path")
    wanted = config_to_json(config)
    saved = path / "config.json"
    if saved.exists():
        if json.loads(saved.read_text()) != json.loads(wanted):
            differing = _differing_fields(json.loads(saved.read_text()), json.loads(wanted))
            raise ConfigError(
                f"--workdir={path} holds a run of a different config (differs in "
                f"{', '.join(differing[:5]) or 'config'}); use a new --workdir to start a new run"
            )
    else:
        write_text_atomic(saved, wanted)
    return path


def is_finished(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    result_file: str,
    checkpoint_dirs: list[str],
) -> bool:
    """Whether `workdir` holds this very config's finished run: the same config.json, its
    `result_file` (written last), and in every checkpoint directory a readable checkpoint at
    `train.num_steps`."""
    path = pathlib.Path(workdir)
    saved = path / "config.json"
    if not (saved.is_file() and (path / result_file).is_file()):
        return False
    if json.loads(saved.read_text()) != json.loads(config_to_json(config)):
        return False  # `prepare` refuses it with the differing fields
    for name in checkpoint_dirs:
        if not (path / name).is_dir():
            return False
        with contextlib.closing(checkpoint.Checkpoints(path / name)) as ckpt:
            step = ckpt.latest_step()
            if step != config.train.num_steps or not ckpt.is_readable(step):
                return False  # a damaged final checkpoint: the usual path reports or replaces it
    return True


def _differing_fields(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differing_fields(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write via a temporary file in the same directory and rename: readers never see half.

    On a multi-host slice only process 0 writes (every process holds the same values).
    """
    if jax.process_index() != 0:
        return
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make result files private
        with os.fdopen(fd, "w") as f:
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


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def truncate_metrics(path: pathlib.Path, last_step: int) -> None:
    """Drop metrics.jsonl lines logged after `last_step` (they are recomputed on resume)."""
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= last_step
    ]
    write_text_atomic(path, "".join(line + "\n" for line in keep))


def append_jsonl(path: pathlib.Path, record: dict[str, Any]) -> None:
    if jax.process_index() != 0:  # one host logs
        return
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


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

"""What a run shows and logs on the host: phase lines, the progress bar, per-chunk lines,
TensorBoard event files, and fetching device arrays to the host (every process, multi-host)."""

from __future__ import annotations

import os
import pathlib
import sys
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils


def phase(message: str) -> None:
    """One plain line on stderr as a run enters a phase, so a job log shows where it is."""
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def progress_bar(total: int, initial: int, desc: str):
    """tqdm on a terminal, left on screen when done; off when stderr is a file (`fit` then logs
    one line per chunk instead)."""
    import tqdm

    return tqdm.tqdm(
        total=total, initial=initial, desc=desc, disable=not sys.stderr.isatty(), leave=True
    )


def chunk_line(desc: str, record: dict[str, Any], total: int) -> str:
    """`desc: step 10/20, loss 123.4, 45.6 steps/s` from a metrics.jsonl record; a sweep's loss
    is the mean over its members whose loss is finite."""
    loss = np.asarray(record["loss"], np.float64)
    shown = f"{np.mean(loss[np.isfinite(loss)]):.4g}" if np.isfinite(loss).any() else "nan"
    speed = record["steps_per_sec"]
    return f"{desc}: step {record['step']}/{total}, loss {shown}, {speed:.1f} steps/s"


def fetch(tree: Any) -> Any:
    """Device arrays → host numpy. On a multi-host slice every process gets the whole global
    array (`process_allgather`), since a sharded array is not addressable from one host."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


class EventWriter:
    """TensorBoard event files beside metrics.jsonl, the same numbers (tensorboardX: no TF).

    A sweep group's metrics hold one value per member: tag `<metric>/member_<i>`. Opened at the
    first write (a finished run resumed writes none); after a resume, TensorBoard drops what an
    earlier run logged past the restored step (`purge_step`).
    """

    def __init__(self, path: pathlib.Path, step: int):
        self._path, self._first_step, self._writer = path, step, None

    def write(self, record: dict[str, Any]) -> None:
        if jax.process_index() != 0:  # one host logs
            return
        if self._writer is None:
            import tensorboardX

            self._writer = tensorboardX.SummaryWriter(
                os.fspath(self._path), purge_step=self._first_step or None
            )
        for key, value in record.items():
            if key == "step":
                continue
            if isinstance(value, list):
                for i, member_value in enumerate(value):
                    self._writer.add_scalar(f"{key}/member_{i}", member_value, record["step"])
            else:
                self._writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

"""Orbax checkpoints of a training state (a single run's or a whole stacked sweep's).

Saves are synchronous and atomic (orbax writes a temporary directory and renames it), so a
process killed at any moment leaves only complete checkpoints behind.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from vae_jax.errors import ConfigError


class Checkpoints:
    """Keeps the last `max_to_keep` complete checkpoints under `directory`."""

    def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 2):
        self.directory = pathlib.Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=False,
                cleanup_tmp_directories=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def is_readable(self, step: int) -> bool:
        """Whether the checkpoint at `step` restores (as saved, onto the host)."""
        try:
            self._manager.restore(step, args=ocp.args.StandardRestore())
        except Exception:  # orbax raises many types for a damaged directory
            return False
        return True

    def save(self, step: int, tree: Any) -> None:
        self._manager.save(int(step), args=ocp.args.StandardSave(tree), force=True)
        self._manager.wait_until_finished()

    def restore_latest(self, like: Any) -> tuple[int, Any] | None:
        """Restore the newest readable checkpoint into the structure/shardings of `like`.

        A checkpoint that cannot be read (corrupted, truncated) is reported by step and the
        previous one is tried; if none is readable, ConfigError says so. Returns None when the
        directory holds no checkpoint.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        failures = []
        for step in steps:
            try:
                tree = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
            except Exception as e:  # orbax raises many types for a damaged directory
                reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                failures.append((step, reason))
                continue
            if failures:
                moved = self._set_aside([bad for bad, _ in failures])
                logging.warning(
                    "resuming from the checkpoint at step %d; unreadable %s moved to %s",
                    step,
                    "; ".join(f"step {bad} ({reason})" for bad, reason in failures),
                    moved,
                )
            return step, tree
        listed = "; ".join(f"step {bad} ({reason})" for bad, reason in failures)
        raise ConfigError(
            f"no readable checkpoint in {self.directory}: {listed}; "
            "delete that directory (or use a new --workdir) to start again"
        )

    def _set_aside(self, steps: list[int]) -> pathlib.Path:
        """Move unreadable step directories out of the way (kept for inspection, not deleted)."""
        aside = self.directory.parent / "checkpoints_unreadable"
        aside.mkdir(exist_ok=True)
        for step in steps:
            os.replace(self.directory / str(step), aside / f"{step}-{time.time_ns()}")
        self._manager.reload()
        return aside

    def close(self) -> None:
        # orbax removes stale temporary directories in a background thread that only a save
        # waits for; a run that stops before its first save (a refused resume) would otherwise
        # exit with that thread running and print its traceback at interpreter shutdown.
        cleanup = getattr(self._manager, "_cleanup_tmp_directory_future", None)
        if cleanup is not None:
            cleanup.result()
        self._manager.close()

"""Orbax checkpoints of a training state (a single run's or a whole stacked sweep's).

Saves are synchronous and atomic (orbax writes a temporary directory and renames it), so a
process killed at any moment leaves only complete checkpoints behind; temporary directories left
by a killed process are removed when the next run opens the directory, and those of a save that
failed (e.g. on a full disk) at once.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp

from vae_jax.errors import WorkdirError, disk_full_error, out_of_space


class Checkpoints:
    """Keeps the last `max_to_keep` complete checkpoints under `directory`."""

    def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 2):
        self.directory = pathlib.Path(directory).absolute()
        for logger in ("absl", "asyncio"):  # orbax logs through absl; its event loops, asyncio
            logging.getLogger(logger).addFilter(_not_an_orbax_no_space_report)
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
        """Save `tree` as step `step`; DiskFullError (one line) if there is no space for it.

        A failed save leaves the earlier checkpoints as they were and no temporary directory.
        """
        unraisable_hook = sys.unraisablehook
        sys.unraisablehook = _closed_loop_reports_dropped(unraisable_hook)
        try:
            self._manager.save(int(step), args=ocp.args.StandardSave(tree), force=True)
            self._manager.wait_until_finished()
        except Exception as e:
            self._remove_temporary()
            if not (reason := out_of_space(e)):
                sys.unraisablehook = unraisable_hook
                raise
            # The hook stays: writes still in flight report into the closed loop later.
            newest = self._manager.latest_step()
            raise disk_full_error(
                reason,
                self.directory,
                what=f"the checkpoint at step {step} in {self.directory}",
                kept=f"the checkpoint at step {newest} is kept"
                if newest is not None
                else "no earlier checkpoint exists",
            ) from e
        sys.unraisablehook = unraisable_hook

    def _remove_temporary(self) -> None:
        if jax.process_index() == 0:  # as orbax: the primary process cleans up
            for tmp in self.directory.glob(f"*{ocp.path.step.TMP_DIR_SUFFIX}*"):
                shutil.rmtree(tmp, ignore_errors=True)

    def restore_latest(self, like: Any) -> tuple[int, Any] | None:
        """Restore the newest readable checkpoint into the structure/shardings of `like`.

        A checkpoint that cannot be read (corrupted, truncated) is reported by step and the
        previous one is tried; if none is readable, WorkdirError says so. Returns None when the
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
        raise WorkdirError(
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
        self._remove_temporary()  # again: writes in flight when a save failed may land after it


def _not_an_orbax_no_space_report(record: logging.LogRecord) -> bool:
    """Log filter: drop records of an out-of-space error raised in orbax's writer code.

    Orbax's writer threads log such a failure, traceback and all (and asyncio logs the futures
    nobody awaited), some after it reached `Checkpoints.save`, which raises it as one line
    (DiskFullError); the log copies only repeat it.
    """
    if not record.exc_info or not out_of_space(record.exc_info[1]):
        return True
    frames = traceback.extract_tb(record.exc_info[2])
    return not any(f"{os.sep}orbax{os.sep}" in frame.filename for frame in frames)


def _closed_loop_reports_dropped(hook: Callable[[Any], None]) -> Callable[[Any], None]:
    """`hook`, except for "Event loop is closed" errors.

    When one write of a save fails, orbax closes the save's event loop while tensorstore's other
    writes are in flight; each one that completes then reports that error, with a traceback, as
    an unraisable exception. The failed save itself is what is reported.
    """

    def drop_closed_loop_reports(unraisable: Any) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            hook(unraisable)

    return drop_closed_loop_reports

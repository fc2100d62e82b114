"""vae_jax.checkpoint on a damaged disk: an unreadable newest checkpoint falls back to the one
before it, and with none readable the run stops in one line naming them, the workdir untouched.
(A full disk and a leftover temporary checkpoint: test_faults.py.)"""

import json
import logging
import pathlib
import shutil

import pytest
from conftest import (
    TINY,
    assert_one_line_error,
    config_flags,
    run_cli,
    snapshot,
    tiny_config,
    without_speeds,
)

from vae_jax import experiment


def corrupt_checkpoint(path: pathlib.Path, step: int) -> None:
    """Overwrite a checkpoint's metadata and array data with garbage (a damaged disk)."""
    root = path / "checkpoints" / str(step) / "default"
    damaged = [root / "_METADATA", *(root / "ocdbt.process_0" / "d").iterdir()]
    for file in damaged:
        file.write_bytes(b"\x93garbage" * 8)


def test_corrupted_newest_checkpoint_falls_back_to_the_previous_one(
    earlier_run, tmp_path, caplog, no_figures
):
    path = tmp_path / "run"
    shutil.copytree(earlier_run, path)
    corrupt_checkpoint(path, 20)
    with caplog.at_level(logging.WARNING):
        results = experiment.train_and_evaluate(tiny_config(), path)
    warnings = [r.getMessage() for r in caplog.records if r.name == "root"]
    assert any("resuming from the checkpoint at step 10" in w and "step 20" in w for w in warnings)
    expected = json.loads((earlier_run / "results.json").read_text())
    assert without_speeds(results) == without_speeds(expected)


@pytest.mark.slow  # a CLI run; test_corrupted_newest_checkpoint_falls_back_… is in-process
def test_only_checkpoint_corrupted_exits_2_naming_it(earlier_run, tmp_path):
    # Through the CLI: restore_latest may not log a per-step warning line before the error.
    path = tmp_path / "run"
    shutil.copytree(earlier_run, path)
    shutil.rmtree(path / "checkpoints" / "10")
    corrupt_checkpoint(path, 20)
    before = snapshot(path)
    proc = run_cli(f"--workdir={path}", *config_flags(TINY))
    assert_one_line_error(proc, "no readable checkpoint", "step 20", str(path / "checkpoints"))
    assert snapshot(path) == before

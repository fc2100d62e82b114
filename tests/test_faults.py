"""Faults a cluster job meets: two runs on one workdir, a damaged dataset cache, a full disk.

The promises (docs/troubleshooting.md): a second run on a workdir in use exits 2 at once with one
line naming the workdir and the process holding it, and touches nothing; a damaged embedded
dataset is rebuilt with one line saying so, a damaged catalog one is refused naming the
directory to delete; a write that finds no space stops the run with one line (what, where, how
much is free), keeps every checkpoint and result already written, leaves no temporary checkpoint
behind, and the same command resumes once there is space.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

from vae_jax import data


def snapshot(path: pathlib.Path) -> dict[str, tuple[bytes, int] | None]:
    return {
        str(p.relative_to(path)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
        for p in sorted(path.rglob("*"))
    }


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
    damaged = data.Digits(data_dir=os.fspath(data_dir), file_format="array_record")
    monkeypatch.setattr(data, "_catalog_builder", lambda name, data_dir: damaged)
    with pytest.raises(data.DataError) as raised:
        data.load_numpy("mnist", "train", data_dir=data_dir)
    message = str(raised.value)
    assert "\n" not in message
    for part in (
        f"delete {data_dir / 'mnist'}",
        "ArrayRecord file should be at least 64KB big",
        f"tfds build mnist --file_format=array_record --data_dir={data_dir}",
    ):
        assert part in message, message
    assert snapshot(data_dir) == before  # nothing deleted or rebuilt

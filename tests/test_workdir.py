"""vae_jax.workdir: the --workdir checks (a file, a path below a file, a directory not writable)
and the atomic writes of result files (no temporary file left, the old file kept when a write
fails, never seen half-written by a reader, the umask honoured like any new file's)."""

import json
import threading

import pytest
from conftest import assert_config_error, mode, tiny_config, umask

from vae_jax import experiment, spec, workdir
from vae_jax.errors import WorkdirError

# ---------------------------------------------------------------------------------------------
# The --workdir checks.


def test_workdir_is_a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("keep me\n")
    with pytest.raises(WorkdirError, match="a_file is a file, not a directory") as error:
        experiment.train_and_evaluate(tiny_config(), path)
    assert_config_error(error, "--workdir", "a_file")
    assert path.read_text() == "keep me\n"


def test_workdir_under_a_file_cannot_be_created(tmp_path):
    # We run as root, so a chmod'ed directory stays writable; a path below a file cannot be made.
    path = tmp_path / "a_file"
    path.write_text("keep me\n")
    with pytest.raises(WorkdirError, match="--workdir=.*a_file/run cannot be created") as error:
        experiment.train_and_evaluate(tiny_config(), path / "run")
    assert_config_error(error, "--workdir", "cannot be created")
    assert path.read_text() == "keep me\n"


def test_workdir_not_writable_in_process(tmp_path, monkeypatch):
    # chmod does not stop root: pretend the access check fails, as it would for a normal user.
    monkeypatch.setattr(workdir.os, "access", lambda *args, **kwargs: False)
    with pytest.raises(WorkdirError, match="--workdir=.* is not writable"):
        workdir.prepare(spec.parse(tiny_config()), tmp_path / "run")
    assert not (tmp_path / "run" / "config.json").exists()


# ---------------------------------------------------------------------------------------------
# Atomic result files.


def test_a_config_json_written_before_a_field_existed_holds_a_run_of_its_default(tmp_path):
    """A field added since (here data.idx_dir, an unset placeholder) is missing from an older
    config.json: that run is the same config while the field is unset, and not once it is set."""
    config = spec.parse(tiny_config())
    old = json.loads(workdir.config_to_json(config))
    del old["data"]["idx_dir"]
    path = tmp_path / "run"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(old))
    with workdir.prepare(config, path):
        pass
    named = spec.parse(tiny_config(data__name="mnist", data__idx_dir=str(tmp_path)))
    old_mnist = json.loads(workdir.config_to_json(named))
    del old_mnist["data"]["idx_dir"]
    (path / "config.json").write_text(json.dumps(old_mnist))
    with pytest.raises(WorkdirError, match=r"different config \(differs in data.idx_dir\)"):
        workdir.prepare(named, path)


def test_write_text_atomic_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "results.json"
    for i in range(20):
        workdir.write_text_atomic(target, f"version {i}\n")
    assert target.read_text() == "version 19\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_write_text_atomic_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "results.csv"
    workdir.write_text_atomic(target, "old,complete\n")
    with pytest.raises(UnicodeEncodeError, match="surrogates not allowed"):
        workdir.write_text_atomic(target, "new," + "x" * 100_000 + "\ud800")  # unencodable
    assert target.read_text() == "old,complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_concurrent_reader_never_sees_a_partial_file(tmp_path):
    target = tmp_path / "results.json"
    versions = [json.dumps({"v": i, "pad": "x" * 200_000}) for i in range(2)]
    workdir.write_text_atomic(target, versions[0])
    done = threading.Event()

    def write():
        for i in range(200):
            workdir.write_text_atomic(target, versions[i % 2])
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    reads = 0
    while not done.is_set():
        assert target.read_text() in versions
        reads += 1
    writer.join()
    assert reads > 0
    assert not [p for p in tmp_path.iterdir() if p.name != "results.json"]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(mask, tmp_path):
    with umask(mask):
        workdir.write_text_atomic(tmp_path / "atomic.txt", "x")
        with open(tmp_path / "plain.txt", "w") as f:  # what the umask gives any new file
            f.write("x")
    assert mode(tmp_path / "atomic.txt") == mode(tmp_path / "plain.txt") == 0o666 & ~mask

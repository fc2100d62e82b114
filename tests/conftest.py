"""Helpers shared by the tests, defined once: the session's data directory, the tiny config, the
CLI runner, the one-line-error checks, file snapshots and modes, and a finished tiny run that
several modules read."""

import contextlib
import functools
import importlib.util
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile
import time

# Before any test module imports jax. The tests compile the same programs many times (each
# `train_and_evaluate` builds fresh closures, and the CLI tests run in subprocesses); a
# persistent compilation cache shared by the session, subprocesses included, compiles each once.
# Compiling is most of the suite's time: unoptimised machine code compiles the tests' small
# programs 2-3 times faster, and the maths is the same (subprocesses inherit the flags).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()
# The suite runs in pytest-xdist workers (setup.cfg), which inherit this process's environment:
# the first process to import this file (the controller) makes the session's compilation cache
# and data directory, every worker shares them, and the controller removes them at the end.
_SESSION_DIRS: list[str] = []
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _SESSION_DIRS.append(tempfile.mkdtemp(prefix="vae_jax_test_jit_cache_"))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_DIRS[-1]
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Embedded datasets are built once per session in a directory of the session's own, never the
# user's $VAE_JAX_DATA_DIR (a test must not depend on what a machine already holds).
if "VAE_JAX_TEST_DATA_DIR" not in os.environ:
    _SESSION_DIRS.append(tempfile.mkdtemp(prefix="vae_jax_test_data_"))
    os.environ["VAE_JAX_TEST_DATA_DIR"] = _SESSION_DIRS[-1]

import ml_collections  # noqa: E402
import pytest  # noqa: E402

from vae_jax import report  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
# Config files import `experiments.configs.default`, as experiments/run.py arranges.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
RUN = REPO / "experiments" / "run.py"
DEFAULT_CONFIG = REPO / "experiments" / "configs" / "default.py"
SIGMA_SWEEP_CONFIG = REPO / "experiments" / "configs" / "sigma_sweep.py"
# docs/design.md's likelihood registry names, written out independently of vae_jax.likelihoods.
LIKELIHOOD_NAMES = (
    "gaussian",
    "gaussian_learned",
    "gaussian_per_pixel",
    "gaussian_decoder",
    "gaussian_optimal",
    "bernoulli",
    "continuous_bernoulli",
    "laplace",
    "discretized_logistic",
    "gaussian_truncated",
)
# Keys of results.json (and columns of results.csv) that measure the machine, not the model.
SPEED_KEYS = ("train/steps_per_sec", "train/examples_per_sec", "train/compile_s")


# The longest files first (each file's test durations summed by `pytest --durations=0`, `-n 2`
# on a quiet 2-core machine, 2026-12-07; the first file of a worker to use `tiny_run` also pays
# its 12 s): xdist's loadfile hands each worker the next file in collection order, so a long file
# collected last leaves the other worker idle while it runs. The rest keep their order.
LONGEST_FIRST = (
    "test_train.py",  # 47 s
    "test_likelihoods.py",  # 30 s
    "test_sweep.py",  # 26 s
    "test_linear.py",  # 19 s
    "test_evaluate.py",  # 19 s
    "test_spec.py",  # 17 s
    "test_run.py",  # 15 s
    "test_truncated.py",  # 11 s
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _SESSION_DIRS:  # empty in xdist workers: the controller made the directories
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def data_dir() -> pathlib.Path:
    """The session's embedded datasets (built on first use, once for all workers); os.environ so
    subprocesses see it too."""
    path = os.environ["VAE_JAX_TEST_DATA_DIR"]
    previous = os.environ.get("VAE_JAX_DATA_DIR")
    os.environ["VAE_JAX_DATA_DIR"] = path
    yield pathlib.Path(path)
    if previous is None:
        del os.environ["VAE_JAX_DATA_DIR"]
    else:
        os.environ["VAE_JAX_DATA_DIR"] = previous


def load_config(path: os.PathLike = DEFAULT_CONFIG, arg: str | None = None):
    """`get_config(arg)` of a config file, loaded from its path as the CLI loads it."""
    spec = importlib.util.spec_from_file_location(f"config_{pathlib.Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# The tiny run: 8×8 digits, one hidden layer of 16, 3 latents, 20 steps in two chunks of 10 with
# a checkpoint after each. Every test that trains uses these shapes, so the session's persistent
# compilation cache compiles each program once.
TINY = {
    "data.name": "digits",
    "model.hidden_sizes": (16,),
    "model.latent_dim": 3,
    "train.num_steps": 20,
    "train.log_every": 10,
    "train.checkpoint_every": 10,
    "train.batch_size": 16,
    "eval.iwae_samples": 4,
    # Sample quality has tests of its own (test_sample_quality.py, test_sweep.py); elsewhere it
    # would only add its compilations to every tiny sweep.
    "eval.sample_quality": False,
}
# TINY as a sweep of the given σ and one reference family (the learned σ's), for the sweeps of
# sigma_sweep.py:quick that test_spec refuses and test_sweep runs.
SWEEP_FIELDS = dict(TINY) | {"sweep.references": ("gaussian_learned",)}


def tiny_config(
    fields: dict | None = None, /, *, base: ml_collections.ConfigDict | None = None, **overrides
) -> ml_collections.ConfigDict:
    """`base` (default.py's config) made TINY, then `fields` ({'a.b': value}) and `overrides`
    (a__b=value). Types are not enforced, so a test can set what a config file could (a float
    latent_dim)."""
    config = load_config() if base is None else base
    merged = dict(TINY) | (fields or {})
    merged.update({k.replace("__", "."): v for k, v in overrides.items()})
    for field, value in merged.items():
        *parents, leaf = field.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        with node.ignore_type():
            node[leaf] = value
    return config


def config_flags(fields: dict) -> list[str]:
    """`fields` ({'a.b': value}) as the CLI's --config.a.b=value flags."""
    return [f"--config.{k}={_flag_value(v)}" for k, v in fields.items()]


def _flag_value(value) -> str:
    if isinstance(value, tuple):
        return "(" + ",".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def cli_env(**extra: str) -> dict[str, str]:
    """Subprocess environment: this session's data dir, compilation cache and XLA flags, on one
    CPU device (the numbers tests compare across processes must come from one device count)."""
    environment = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    flags = environment.get("XLA_FLAGS", "").split()
    one_device = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
    environment["XLA_FLAGS"] = " ".join(one_device)
    return environment


def run_cli(
    *args: str,
    config: os.PathLike | str | None = DEFAULT_CONFIG,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    script: os.PathLike = RUN,
) -> subprocess.CompletedProcess:
    """`script` (experiments/run.py unless told) as a user runs it: a subprocess in the repository
    root. `config=None` for a script without --config."""
    flags = ([f"--config={config}"] if config is not None else []) + list(args)
    return subprocess.run(
        [sys.executable, str(script), *flags],
        cwd=REPO,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    """Exit status 2, stderr is exactly one non-empty line 'error: ...' naming each of `names`
    (docs/design.md, "Errors")."""
    report = f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, report
    assert "Traceback" not in proc.stderr, report
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, report
    assert lines[0].startswith("error:"), report
    for name in names:
        assert name in lines[0], f"{name!r} not in the error line\n{report}"
    return lines[0]


def assert_config_error(error: pytest.ExceptionInfo, *names: str) -> None:
    """A UsageError whose message is one line naming each of `names` (run.py prints it)."""
    message = str(error.value)
    assert "\n" not in message, message
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"


def snapshot(path: pathlib.Path) -> dict[str, tuple[bytes, int] | None]:
    """Every file (bytes, mtime) and directory under `path`, but the workdir's lock file: a run
    that took the lock records itself there before it finds, say, no readable checkpoint."""
    out: dict[str, tuple[bytes, int] | None] = {}
    for p in sorted(path.rglob("*")):
        if p.name == ".lock":
            continue
        rel = str(p.relative_to(path))
        out[rel] = (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
    return out


def without_speeds(record: dict) -> dict:
    """A results.json / results.csv record without the machine's speeds (`SPEED_KEYS`)."""
    return {k: v for k, v in record.items() if k not in SPEED_KEYS}


def checkpoint_steps(path: pathlib.Path) -> list[int]:
    """The steps saved in the workdir `path` (checkpoints/<step>), oldest first."""
    directory = path / "checkpoints"
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def fingerprint(path: pathlib.Path) -> tuple[bytes, int]:
    """A file's bytes and mtime: the same only if nothing rewrote it."""
    return path.read_bytes(), path.stat().st_mtime_ns


def mode(path: pathlib.Path) -> int:
    """A file's permission bits."""
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def umask(mask: int):
    """This process's umask set to `mask` inside, restored after."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def wait_for(proc: subprocess.Popen, condition, timeout: float = 300) -> bool:
    """Poll `condition()` until it holds (True) or the process ends first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return condition()
        time.sleep(0.002)
    raise TimeoutError("the run neither reached the awaited state nor ended")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[pathlib.Path, subprocess.CompletedProcess]:
    """TINY run to completion through the CLI, once per session. Tests that change the workdir
    copy it first; tests that must leave an earlier run untouched point the CLI at it."""
    path = tmp_path_factory.mktemp("tiny_run") / "run"
    proc = run_cli(f"--workdir={path}", *config_flags(TINY))
    assert proc.returncode == 0, proc.stderr
    return path, proc


@pytest.fixture(scope="module")
def earlier_run(tiny_run) -> pathlib.Path:
    """A finished tiny run (conftest's, through the CLI): what bad input must leave untouched."""
    path = tiny_run[0]
    assert checkpoint_steps(path) == [10, 20]
    return path


@contextlib.contextmanager
def figures_skipped():
    """Runs inside write no plots/ and no report.md (matplotlib takes about 1 s of a tiny single
    run and 4 s of a tiny sweep): for tests that read only numbers. The workdir-contract tests
    and the CLI tests write them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report, "single_run_plots", lambda *args, **kwargs: None)
        patch.setattr(report, "render", lambda *args, **kwargs: None)
        yield


@pytest.fixture
def no_figures():
    with figures_skipped():
        yield


@contextlib.contextmanager
def counting_traces():
    """Inside, every train chunk a run builds counts its traces in the yielded {likelihood: n}
    and fails on a second one (`chex.assert_max_traces`). chex keys its counter by call stack
    and source, the same for every group; groups train one after another, so a fresh count per
    group catches a retrace within one."""
    import chex

    from vae_jax import train

    traces: dict[str, int] = {}
    make_train_chunk = train.make_train_chunk

    def counted(problem, num_steps, **kwargs):
        chunk = make_train_chunk(problem, num_steps, **kwargs)
        name = problem.likelihood.name
        traces.setdefault(name, 0)
        chex.clear_trace_counter()

        # The chunk's own name, so the program (and its compilation cache entry) is the same.
        @chex.assert_max_traces(n=1)
        @functools.wraps(chunk)
        def counted_chunk(*args):
            traces[name] += 1
            return chunk(*args)

        return counted_chunk

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "make_train_chunk", counted)
        yield traces

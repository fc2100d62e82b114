"""Errors a user can cause. The CLI prints their one-line message and exits with status 2
(1 for a run stopped under way: a non-finite loss, a full disk)."""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import re
import shutil
from collections.abc import Iterator

# errno values that mean "no room for this write": a full file system, or a full quota (on a
# cluster's shared file system the quota is the usual one).
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class UsageError(ValueError):
    """Input a user can get wrong: the message names it and what works; the CLI exits with 2.

    Each kind is raised in the one module that owns that input, so every check of it is there.
    """


class ConfigError(UsageError):
    """A run config field that cannot be used (raised by `vae_jax.spec` only)."""


class WorkdirError(UsageError):
    """A --workdir that cannot be used: a file, not writable, another config's run, locked by
    another run, or holding no readable checkpoint (raised by `vae_jax.workdir` and
    `vae_jax.checkpoint` only)."""


class DataError(UsageError):
    """Bad data request: unknown name, or a dataset that is not available here (raised by
    `vae_jax.data` and its builders, `vae_jax.embedded`)."""


class InputError(UsageError):
    """An argument of `vae_jax.score`, or a flag of experiments/score.py, that cannot be used
    (raised by `vae_jax.score_inputs`, `vae_jax.scoring` and experiments/score.py)."""


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss; the message names the step and the offending term."""


class DiskFullError(RuntimeError):
    """A write of the run failed for lack of space; the message names the file and the space left.

    Not an OSError, so that code catching OSError for other reasons does not swallow it.
    """


def out_of_space(error: BaseException | None) -> str | None:
    """The reason ("No space left on device", "Disk quota exceeded") if `error`, or an error it
    wraps, is a write that found no room; else None.

    Orbax reports tensorstore's failures as ValueError text ("RESOURCE_EXHAUSTED: … No space
    left on device [os_error_code='28']"), not as OSError, hence the text match.
    """
    seen = set()  # a chain built by hand may loop
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        for code in _NO_SPACE_ERRNOS:
            reason = os.strerror(code)
            if getattr(error, "errno", None) == code or reason in str(error):
                return reason
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def no_space_as_disk_full(target: str | os.PathLike) -> Iterator[None]:
    """Raise an OSError for lack of space in the block as `disk_full_error(…, target)`."""
    try:
        yield
    except OSError as e:
        if reason := out_of_space(e):
            raise disk_full_error(reason, target) from e
        raise


def disk_full_error(
    reason: str,
    target: str | os.PathLike,
    *,
    what: str | None = None,
    kept: str = "the checkpoints and results written before are kept",
) -> DiskFullError:
    """The one-line DiskFullError for a write of `what` (default: the file `target`) that failed:
    what, where, the space now free there, what is kept and how to go on."""
    target = pathlib.Path(target)
    existing = next(p for p in (target, *target.parents) if p.exists())
    free = _format_bytes(shutil.disk_usage(existing).free)
    return DiskFullError(
        f"{reason}: could not write {what or target} ({free} free on its file system); {kept}: "
        "free some space and run the same command again to resume"
    )


def _format_bytes(num: float) -> str:
    units = ("bytes", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while num >= 1024 and i < len(units) - 1:
        num /= 1024
        i += 1
    return f"{num:.0f} {units[i]}" if i == 0 else f"{num:.1f} {units[i]}"


def first_line(error: BaseException) -> str:
    """`Type: first line of the message` (at most 200 characters), for a one-line report."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def backend_unavailable() -> str | None:
    """The one line for a jax backend that cannot start, or None if jax starts one.

    jax raises RuntimeError on first use when JAX_PLATFORMS names a backend this machine lacks
    (or a plugin is broken), and a bare AssertionError for JAX_PLATFORMS=cuda without a visible
    GPU. The backends it can start instead are found by asking jax again with JAX_PLATFORMS
    unset, so call this only once the run has failed: it leaves jax on those.
    """
    import jax
    import jax.extend.backend

    try:
        jax.devices()
        return None
    except (RuntimeError, AssertionError) as e:
        message = str(e)
    requested = jax.config.jax_platforms or ""
    failed = re.match(r"Unable to initialize backend '([^']+)': ", message)
    if failed:
        reason = message[failed.end() :]
    else:  # jax skips cuda silently when it sees no NVIDIA GPU, then asserts it found none
        reason = message or ("no NVIDIA GPU is visible" if "cuda" in requested else "no device")
    reason = re.sub(r" \((set|you may need).*\)$", "", reason.strip().splitlines()[0])
    backend = failed.group(1) if failed else requested
    extras = 'for a GPU or TPU, install jax with the extra: pip install -e ".[cuda13]"'
    extras += " (or .[cuda12], .[tpu])"
    if not requested:  # jax's own choice failed: asking it again would fail the same way
        return (
            f"jax cannot start the backend {backend!r} ({reason}); set JAX_PLATFORMS=cpu to "
            f"skip it, or repair its install ({extras})"
        )
    try:
        jax.config.update("jax_platforms", "")
        jax.extend.backend.clear_backends()
        available = ", ".join(jax.extend.backend.backends()) or "none"
    except Exception as e:  # whatever jax raises, none can start
        available = f"none ({first_line(e)})"
    return (
        f"JAX_PLATFORMS={requested}: jax cannot start the backend {backend!r} ({reason}); "
        f"available on this machine: {available}; unset JAX_PLATFORMS or set it to one of "
        f"those; {extras}"
    )

"""What the command lines (run.py, score.py, implied_sigma.py, prepare_data.py) share, and the one
place their messages about flags are worded (docs/troubleshooting.md lists them):

    cli.run(main, usage=__doc__)  # instead of absl's app.run(main)

- bad input is one line `error: …` on stderr and exit status 2 (`fail`): a flag absl cannot read,
  an unknown flag, an argument that is no flag, a `UsageError` raised anywhere below, a config file
  that cannot be loaded or an override of it that cannot be applied (`run(..., config=…)`), a
  JAX_PLATFORMS backend this machine cannot start;
- a run stopped under way (non-finite loss, full disk) is one line and exit status 1;
- Ctrl-C, in any phase (loading, compiling, evaluating), is one line and exit status 130
  (training's own SIGINT handler saves a checkpoint first: `resumable`), also where a library
  swallowed the KeyboardInterrupt it raised (the command then finishes and still says so);
- `--help` / `-h` print the usage and exit 0; `--verbose` adds the traceback to any of these.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import NoReturn

from absl import app, flags

from vae_jax.errors import DiskFullError, UsageError, backend_unavailable

_VERBOSE = flags.DEFINE_boolean("verbose", False, "Print the traceback of an error.")
_HELP = ("--help", "-?", "--helpshort", "--helpfull", "--helpxml")
INTERRUPTED = 130  # 128 + SIGINT, the status a shell gives a process Ctrl-C stopped
# Set by Ctrl-C: the KeyboardInterrupt it raises may reach us as another error, e.g. jax's
# JaxRuntimeError when it interrupts a user's function inside `jax.pure_callback`.
_SIGINT_SEEN = threading.Event()
# What an override that absl cannot read as its field's type must be, by absl's type name.
_TYPE_RULES = {"int": "an integer", "float": "a number", "bool": "true or false"}


def fail(message: str, status: int = 2) -> NoReturn:
    """One line on stderr starting `error:`, then exit `status` (2: bad input)."""
    stop(f"error: {message}", status)


def stop(line: str, status: int) -> NoReturn:
    """`line` on stderr (after the traceback, under --verbose), then exit `status`."""
    _say(line)
    sys.exit(status)


def interrupted(line: str) -> NoReturn:
    """`stop(line, INTERRUPTED)` without the interpreter's teardown. Ctrl-C during a compilation
    raises inside jax's compile call and leaves XLA's compiler threads running; tearing the
    interpreter down under them ended the process in a segmentation fault (status -11) after
    `line`. Nothing an interrupted command keeps waits on teardown: checkpoints and results are
    written synchronously and atomically."""
    _say(line)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(INTERRUPTED)


def _say(line: str) -> None:
    if flags.FLAGS.is_parsed() and _VERBOSE.value and sys.exc_info()[0] is not None:
        traceback.print_exc()
    print(line, file=sys.stderr)


def run(
    main: Callable[[list[str]], None], *, usage: str, config: flags.FlagHolder | None = None
) -> None:
    """absl's `app.run(main)` with the behaviour the module docstring lists. `usage` is what
    --help prints above the flags; `config` a `config_flags.DEFINE_config_file` holder whose
    loading and overrides get their own one-line errors."""
    # --help lists the flags of the script it runs: --verbose is one of them.
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[_VERBOSE.name])
    signal.signal(signal.SIGINT, _on_sigint)
    sys.unraisablehook = _unraisable
    try:
        app.run(
            functools.partial(_guarded, main),
            flags_parser=functools.partial(parse_flags, usage=usage, config=config),
        )
    except KeyboardInterrupt:
        interrupted("interrupted (Ctrl-C)")
    except Exception:
        if not _SIGINT_SEEN.is_set():
            raise
        interrupted("interrupted (Ctrl-C)")


def _on_sigint(signum: int, frame) -> None:
    _SIGINT_SEEN.set()
    signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt


def _unraisable(unraisable) -> None:
    """A KeyboardInterrupt that Ctrl-C raised inside a finalizer is only reported ("Exception
    ignored in …", with its traceback); the command says it was interrupted in one line instead
    (`_raise_if_interrupted`), with that traceback under --verbose. Anything else: Python's
    report."""
    verbose = flags.FLAGS.is_parsed() and _VERBOSE.value
    if issubclass(unraisable.exc_type, KeyboardInterrupt) and not verbose:
        return
    sys.__unraisablehook__(unraisable)


def _raise_if_interrupted() -> None:
    """Ctrl-C whose KeyboardInterrupt a library swallowed (one raised in a finalizer is only
    printed; C++ code that checks for signals may clear it) still ends the command as
    interrupted."""
    if _SIGINT_SEEN.is_set():
        raise KeyboardInterrupt


def _guarded(main: Callable[[list[str]], None], argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are written --name=value)")
    _quiet_logs(verbose=_VERBOSE.value)  # after the flags: absl sets its level from them
    try:
        main(argv)
        _raise_if_interrupted()
    except UsageError as e:
        fail(str(e))
    # NonFiniteError is a FloatingPointError; it and DiskFullError stop a run under way.
    except (FloatingPointError, DiskFullError) as e:
        fail(str(e), status=1)
    except (RuntimeError, AssertionError):  # jax raises these on first use of a backend
        reason = backend_unavailable() if "jax" in sys.modules else None
        if reason is None:  # the backend starts: the error is another one
            raise
        fail(reason)


def _quiet_logs(*, verbose: bool) -> None:
    """Leave out log lines that are no news to the user, and only those.

    With JAX_PLATFORMS unset, jax tries every backend it knows and logs each one it cannot
    start ("Unable to initialize backend 'tpu'") at INFO, which absl's handler prints like an
    error; jax's WARNINGs (a GPU seen without a CUDA jaxlib, say) still show. Setting
    JAX_PLATFORMS ourselves would also silence the probe, but it would overrule a user's choice
    of backend and turn a machine whose GPU build is broken into a quiet CPU run. tfds and orbax
    report their files through absl at INFO and WARNING (`--verbose` shows them); matplotlib's
    "generated new fontManager" at INFO.
    """
    logging.getLogger("jax").setLevel(logging.WARNING)
    # jax logs a callback's exception with its traceback before it re-raises it; one that Ctrl-C
    # raised in the user's function is no error (`run` says it was interrupted).
    logging.getLogger("jax._src.callback").addFilter(_not_interrupted)
    logging.getLogger("absl").setLevel(logging.DEBUG if verbose else logging.ERROR)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


def _not_interrupted(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


@contextlib.contextmanager
def resumable(workdir: str) -> Iterator[None]:
    """A run in `workdir` stopped by a signal: one line saying how to resume it. Training saves a
    checkpoint first and raises `loop.Preempted` (status 128 + signal); Ctrl-C in any other phase
    (loading, compiling, evaluating) keeps what the workdir holds (status 130)."""
    from vae_jax.loop import Preempted

    try:
        yield
        _raise_if_interrupted()
    except Preempted as e:  # its message ends in "--workdir"
        stop(f"{e}={workdir}", 128 + e.signal)
    except (KeyboardInterrupt, Exception) as e:
        if not (isinstance(e, KeyboardInterrupt) or _SIGINT_SEEN.is_set()):
            raise
        interrupted(
            "interrupted (Ctrl-C); the checkpoints and results saved so far are kept: resume "
            f"with the same command and --workdir={workdir}"
        )


def parse_flags(
    argv: list[str], *, usage: str, config: flags.FlagHolder | None = None
) -> list[str]:
    """absl's flag parsing, with --help exiting 0 and every refusal one line (`fail`)."""
    argv = ["--help" if a == "-h" else a for a in argv]  # absl knows only the long form
    if any(a in _HELP for a in argv):  # absl prints __main__'s docstring as the usage
        sys.modules["__main__"].__doc__ = usage.replace("%", "%%")
    path = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
    if config is not None and path is not None and not os.path.isfile(path.split(":", 1)[0]):
        fail(f"--config={path}: no such config file (paths are relative to {os.getcwd()})")
    try:
        rest = flags.FLAGS(argv)
    except SystemExit as e:  # absl prints the help and exits 1; asking for help is no error
        sys.exit(0 if e.code == 1 and any(a in _HELP for a in argv) else e.code)
    except flags.IllegalFlagValueError as e:  # a value absl cannot read as its flag's type
        fail(_unreadable_value(str(e)))
    except flags.Error as e:  # an unknown flag, say
        fail(_first_line(str(e)))
    except Exception as e:  # a config file that fails while loading, or a missing field
        if config is None:
            raise
        fail(_config_load_error(e, argv))
    if config is not None:
        _check_config(config, argv)
    return rest


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)


def _unreadable_value(message: str) -> str:
    """absl's `flag --name=text: <reason>` as the rule the flag's type states, e.g.
    `model.latent_dim=1.5 must be an integer` for the override `--config.model.latent_dim=1.5`
    (a field is named as the config names it). A config file that fails to load: its reason."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if "Error whilst parsing config file" in lines[0]:  # the reason is the traceback's last line
        where = lines[0].split(": Error whilst")[0].removeprefix("flag ")
        return f"{where}: {_config_reason(lines[-1])}"
    match = re.match(r"flag --([\w.]+)=(.*?): ", lines[0])
    if match is None or match.group(1) not in flags.FLAGS:
        return lines[0]
    name, text = match.groups()
    parser = flags.FLAGS[name].parser
    shown = name.removeprefix("config.") if name.startswith("config.") else f"--{name}"
    if getattr(parser, "enum_values", None):
        return f"{shown}={text} is not known; allowed: {', '.join(parser.enum_values)}"
    if parser.flag_type() not in _TYPE_RULES:
        return lines[0]
    return f"{shown}={text} must be {_TYPE_RULES[parser.flag_type()]}"


def _config_reason(line: str) -> str:
    """The last line of a config file's traceback, `Type: message`. A ValueError is the config
    file refusing its argument (`unknown variant 'fast'; allowed: quick`): its message alone."""
    return line.removeprefix("ValueError: ")


def _config_load_error(error: Exception, argv: list[str]) -> str:
    """The line for a config file without get_config, one that raises on import, or an
    override of a field the config lacks (ml_collections' KeyError, `Did you mean …`)."""
    text = str(error)
    if isinstance(error, AttributeError | KeyError) and "has no attribute" not in text:
        return _no_such_field(text, [a.split("=")[0] for a in argv if a.startswith("--config.")])
    return f"--config could not be loaded: {_config_reason(f'{type(error).__name__}: {text}')}"


def _no_such_field(message: str, overrides: list[str]) -> str:
    """ml_collections' KeyError text (`'sigmaa'\\nDid you mean "sigma" ...`) as one line."""
    close = re.search(r'Did you mean \\*"(\w+)\\*" instead of \\*"(\w+)\\*"', message)
    if close:
        suggestion, field = close.groups()
    else:
        suggestion, field = None, message.strip("\"'\\ ").split("'")[0]
    culprits = [o for o in overrides if field in o.removeprefix("--config.").split(".")]
    line = f"{' or '.join(culprits or overrides) or '--config'}: no such config field {field!r}"
    if suggestion:
        return f"{line} (did you mean {suggestion!r}?)"
    return f"{line}; --print_config lists the fields"


def _check_config(config: flags.FlagHolder, argv: list[str]) -> None:
    """A --config given, readable, and no scalar override where the field holds a tuple."""
    if config.value is None:
        fail("--config is required, e.g. --config=experiments/configs/default.py")
    try:
        config.value.keys()  # ml_collections reports a missing or unreadable file on first use
    except OSError as e:
        reason = str(e.__cause__ or e).strip().splitlines()[-1].strip()
        fail(f"--config={flags.FLAGS['config'].config_filename} could not be read: {reason}")
    _refuse_scalar_for_tuple(config.value, argv)


def _refuse_scalar_for_tuple(config, argv: list[str]) -> None:
    """ml_collections reads `--config.sweep.sigma=0.1` as the tuple (0.1,), and a repeated flag
    as a longer tuple; one scalar where a tuple belongs is more likely a slip, so it is refused
    with the spelling that means it."""
    raw: dict[str, list[str]] = {}
    for arg in argv[1:]:
        if arg.startswith("--config.") and "=" in arg:
            name, value = arg.removeprefix("--config.").split("=", 1)
            raw.setdefault(name, []).append(value)
    for name, values in raw.items():
        value = functools.reduce(lambda node, part: node[part], name.split("."), config)
        if isinstance(value, tuple) and len(values) == 1 and len(value) == 1:
            if re.match(r"\s*[(\[]", values[0]):
                continue
            quote = '"' if "'" in repr(value) else "'"
            fail(
                f"--config.{name}={values[0]}: {name} is a tuple, not {value[0]!r}; write "
                f"--config.{name}={quote}{value!r}{quote} (several values: repeat the flag)"
            )

"""Train and evaluate one VAE, or a whole sweep, as a config file says.

    python experiments/run.py --config=experiments/configs/default.py --workdir=runs/default
    python experiments/run.py --config=experiments/configs/default.py --config.likelihood.sigma=0.3

A config with a `sweep` field runs as one vmapped program (`vae_jax.sweep`). Bad input prints one
line and exits with status 2 (`--verbose` adds the traceback), a JAX_PLATFORMS backend this
machine cannot start included. `--print_config` lists a config's fields with their values
(overrides applied), each with its comment from the config file, and for a sweep the σ it trains.
The same command on the same workdir resumes a stopped run and leaves a finished one as it is
(`--reevaluate` evaluates it again).
"""

import datetime
import logging
import os
import pathlib
import re
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

# Config files import each other as `experiments.configs.<name>`.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from experiments import config_files  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Path to a config file, optionally `path:variant` (the list above).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory; default runs/<config>-<time>. Re-run to resume."
)
_VERBOSE = flags.DEFINE_boolean("verbose", False, "Print tracebacks of errors.")
_PRINT_CONFIG = flags.DEFINE_boolean(
    "print_config",
    False,
    "Print the config's fields, values and comments (for a sweep, the σ it trains); exit.",
)
_REEVALUATE = flags.DEFINE_boolean(
    "reevaluate", False, "Evaluate a finished run again (otherwise its results are kept)."
)
_HELP = ("--help", "-?", "--helpshort", "--helpfull", "--helpxml")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    argv = ["--help" if a == "-h" else a for a in argv]  # absl knows only the long form
    if any(a in _HELP for a in argv):  # absl prints __main__'s docstring as the usage
        sys.modules["__main__"].__doc__ = (__doc__ + config_files.configs_help()).replace("%", "%%")
    path = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
    if path is not None and not os.path.isfile(path.split(":", 1)[0]):
        _fail(f"--config={path}: no such config file (paths are relative to {os.getcwd()})")
    try:
        rest = flags.FLAGS(argv)
    except SystemExit as e:  # absl prints the help and exits 1; asking for help is no error
        sys.exit(0 if e.code == 1 and any(a in _HELP for a in argv) else e.code)
    except flags.Error as e:  # a broken config file, or an override not of its field's type
        if "--verbose" in argv:
            traceback.print_exc()
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        if "Error whilst parsing config file" in lines[0]:  # the reason is on its last line
            _fail(lines[0].split(": Error whilst")[0] + ": " + lines[-1])
        if isinstance(e, flags.IllegalFlagValueError):
            _fail(_unreadable_override(str(e)) or lines[0])
        _fail(lines[0])
    except (AttributeError, KeyError) as e:  # an override of a field the config lacks
        if "--verbose" in argv:
            traceback.print_exc()
        if "has no attribute" in str(e):  # the config file itself, e.g. no get_config
            _fail(f"--config could not be loaded: {type(e).__name__}: {str(e).splitlines()[0]}")
        _fail(_no_such_field(str(e), [a.split("=")[0] for a in argv if a.startswith("--config.")]))
    except Exception as e:  # a config file that raises while being imported
        if "--verbose" in argv:
            traceback.print_exc()
        _fail(f"--config could not be loaded: {type(e).__name__}: {str(e).splitlines()[0]}")
    if _CONFIG.value is None:
        _fail("--config is required, e.g. --config=experiments/configs/default.py")
    try:
        _CONFIG.value.keys()  # ml_collections reports a missing or unreadable file on first use
    except OSError as e:
        reason = str(e.__cause__ or e).strip().splitlines()[-1].strip()
        _fail(f"--config={flags.FLAGS['config'].config_filename} could not be read: {reason}")
    _refuse_scalar_for_tuple(argv)
    return rest


def _unreadable_override(message: str) -> str | None:
    """absl's `flag --config.a.b=text: <int()'s message>` as the field's rule, e.g.
    `model.latent_dim=1.5 must be a positive integer` (`vae_jax.spec.override_error`)."""
    match = re.match(r"flag --(config\.[\w.]+)=(.*?): ", message)
    if match is None or match.group(1) not in flags.FLAGS:
        return None
    from vae_jax import spec  # jax and tfds: imported on this error only

    name, text = match.groups()
    kind = flags.FLAGS[name].parser.flag_type()
    config = flags.FLAGS["config"].value
    return str(spec.override_error(config, name.removeprefix("config."), text, kind))


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


def _field(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def _refuse_scalar_for_tuple(argv: list[str]) -> None:
    """ml_collections reads `--config.sweep.sigma=0.1` as the tuple (0.1,), and a repeated flag
    as a longer tuple; one scalar where a tuple belongs is more likely a slip, so it is refused
    with the spelling that means it."""
    raw: dict[str, list[str]] = {}
    for arg in argv[1:]:
        if arg.startswith("--config.") and "=" in arg:
            name, value = arg.removeprefix("--config.").split("=", 1)
            raw.setdefault(name, []).append(value)
    for name, values in raw.items():
        value = _field(_CONFIG.value, name)
        if isinstance(value, tuple) and len(values) == 1 and len(value) == 1:
            if re.match(r"\s*[(\[]", values[0]):
                continue
            quote = '"' if "'" in repr(value) else "'"
            _fail(
                f"--config.{name}={values[0]}: {name} is a tuple, not {value[0]!r}; write "
                f"--config.{name}={quote}{value!r}{quote} (several values: repeat the flag)"
            )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    # absl lets INFO through, such as matplotlib's "generated new fontManager" on a first import.
    logging.getLogger("matplotlib").setLevel(logging.DEBUG if _VERBOSE.value else logging.WARNING)
    import jax

    from vae_jax import experiment, spec, train
    from vae_jax.errors import DiskFullError, UsageError, backend_unavailable

    # tfds and orbax chatter through absl; our own warnings (vae_jax.*) still show.
    # jax's INFO lines (not finding a TPU; clearing its caches at exit, after the error line a
    # --verbose run ends on) are left out even then.
    logging.getLogger("absl").setLevel(logging.DEBUG if _VERBOSE.value else logging.ERROR)
    logging.getLogger("jax").setLevel(logging.WARNING if _VERBOSE.value else logging.ERROR)
    config = _CONFIG.value
    workdir = _WORKDIR.value
    if workdir is None:
        name = pathlib.Path(flags.FLAGS["config"].config_filename).stem
        workdir = f"runs/{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    try:
        if _PRINT_CONFIG.value:
            path, _, variant = flags.FLAGS["config"].config_filename.partition(":")
            notes = (
                {"sweep.sigma": config_files.trained_sigmas(config)} if "sweep" in config else {}
            )
            comments = config_files.field_comments(pathlib.Path(path).resolve(), variant or None)
            print("\n".join(config_files.config_lines(config, comments, notes)))
            return
        run_spec = spec.parse(config)  # every field checked once, before anything runs
        if not (run_spec.sweep and run_spec.sweep.multihost):
            # The backend starts here, so that one this machine lacks fails before any data
            # loads (a multi-host sweep calls jax.distributed.initialize() before it starts).
            jax.devices()
        if run_spec.sweep:
            from vae_jax import sweep

            results = sweep.train_and_evaluate(run_spec, workdir, reevaluate=_REEVALUATE.value)
        else:
            results = experiment.train_and_evaluate(run_spec, workdir, reevaluate=_REEVALUATE.value)
    # NonFiniteError is a FloatingPointError; it and DiskFullError stop a run under way: status 1.
    except (UsageError, FloatingPointError, DiskFullError, train.Preempted) as e:
        if _VERBOSE.value:
            traceback.print_exc()
        if isinstance(e, train.Preempted):  # the run's --workdir, not a sweep group's
            print(f"{e}={workdir}", file=sys.stderr)
            sys.exit(128 + e.signal)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, UsageError) else 1)
    except (RuntimeError, AssertionError):  # jax raises these on first use of a backend
        reason = backend_unavailable()
        if reason is None:  # the backend starts: the error is another one
            raise
        if _VERBOSE.value:
            traceback.print_exc()
        _fail(reason)
    print(f"workdir: {workdir}")
    if isinstance(results, dict):
        print("\n".join(experiment.result_lines(results)))
    else:
        from vae_jax import report

        print("\n".join(report.headline(workdir)))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)

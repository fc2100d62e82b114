"""Train and evaluate one VAE, or a whole sweep, as a config file says.

    python experiments/run.py --config=experiments/configs/default.py --workdir=runs/default
    python experiments/run.py --config=experiments/configs/default.py --config.likelihood.sigma=0.3

A config with a `sweep` field runs as one vmapped program (`vae_jax.sweep`). Bad input prints one
line and exits with status 2 (`--verbose` adds the traceback).
"""

import datetime
import logging
import os
import pathlib
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

# Config files import each other as `experiments.configs.<name>`.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (optionally `path:arg`).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory; default runs/<config>-<time>. Re-run to resume."
)
_VERBOSE = flags.DEFINE_boolean("verbose", False, "Print tracebacks of errors.")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    path = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
    if path is not None and not os.path.isfile(path.split(":", 1)[0]):
        _fail(f"--config={path}: no such config file (paths are relative to {os.getcwd()})")
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:  # also a config file that is broken or has no get_config
        if "--verbose" in argv:
            traceback.print_exc()
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        if "Error whilst parsing config file" in lines[0]:  # the reason is on its last line
            _fail(lines[0].split(": Error whilst")[0] + ": " + lines[-1])
        _fail(lines[0])
    except (AttributeError, KeyError) as e:  # an override of a field the config lacks
        if "--verbose" in argv:
            traceback.print_exc()
        overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        _fail(
            f"{' or '.join(overrides) or '--config'}: no such config field "
            f"({str(e).strip(chr(34) + chr(39))!r} is not one); see the config file for its fields"
        )
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
    return rest


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    from vae_jax import experiment, train
    from vae_jax.errors import ConfigError

    # tfds and orbax chatter through absl; our own warnings (vae_jax.*) still show.
    for name in ("absl", "jax"):  # e.g. jax's INFO line about not finding a TPU
        logging.getLogger(name).setLevel(logging.DEBUG if _VERBOSE.value else logging.ERROR)
    config = _CONFIG.value
    workdir = _WORKDIR.value
    if workdir is None:
        name = pathlib.Path(flags.FLAGS["config"].config_filename).stem
        workdir = f"runs/{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    try:
        if "sweep" in config:
            from vae_jax import sweep

            results = sweep.train_and_evaluate(config, workdir)
        else:
            results = experiment.train_and_evaluate(config, workdir)
    except (ConfigError, FloatingPointError, train.Preempted) as e:  # NonFiniteError included
        if _VERBOSE.value:
            traceback.print_exc()
        if isinstance(e, train.Preempted):  # the run's --workdir, not a sweep group's
            print(f"{e}={workdir}", file=sys.stderr)
            sys.exit(128 + e.signal)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    print(f"workdir: {workdir}")
    if isinstance(results, dict):
        for key in sorted(results):
            print(f"  {key}: {results[key]}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)

"""Train and evaluate one VAE, or a whole sweep, as a config file says.

    python experiments/run.py --config=experiments/configs/default.py --workdir=runs/default
    python experiments/run.py --config=experiments/configs/default.py --config.likelihood.sigma=0.3

A config with a `sweep` field runs as one vmapped program (`vae_jax.sweep`). Bad input prints one
line and exits with status 2 (`--verbose` adds the traceback), a JAX_PLATFORMS backend this
machine cannot start included; Ctrl-C prints one line and exits with 130. `--print_config` lists
a config's fields with their values (overrides applied), each with its comment from the config
file, and for a sweep the σ it trains. The same command on the same workdir resumes a stopped run
and leaves a finished one as it is (`--reevaluate` evaluates it again).
"""

import datetime
import pathlib
import sys

from absl import flags
from ml_collections import config_flags

# Config files import each other as `experiments.configs.<name>`.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from experiments import cli, config_files  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Path to a config file, optionally `path:variant` (the list above).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory; default runs/<config>-<time>. Re-run to resume."
)
_PRINT_CONFIG = flags.DEFINE_boolean(
    "print_config",
    False,
    "Print the config's fields, values and comments (for a sweep, the σ it trains); exit.",
)
_REEVALUATE = flags.DEFINE_boolean(
    "reevaluate", False, "Evaluate a finished run again (otherwise its results are kept)."
)


def main(argv: list[str]) -> None:
    import jax

    from vae_jax import experiment, spec

    filename = flags.FLAGS["config"].config_filename
    if _PRINT_CONFIG.value:
        print(config_files.describe(_CONFIG.value, filename))
        return
    name = pathlib.Path(filename.partition(":")[0]).stem
    workdir = _WORKDIR.value or f"runs/{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    with cli.resumable(workdir):
        run_spec = spec.parse(_CONFIG.value)  # every field checked once, before anything runs
        if not (run_spec.sweep and run_spec.sweep.multihost):
            # The backend starts here, so that one this machine lacks fails before any data
            # loads (a multi-host sweep calls jax.distributed.initialize() before it starts).
            jax.devices()
        if run_spec.sweep:
            from vae_jax import sweep

            results = sweep.train_and_evaluate(run_spec, workdir, reevaluate=_REEVALUATE.value)
        else:
            results = experiment.train_and_evaluate(run_spec, workdir, reevaluate=_REEVALUATE.value)
    print(f"workdir: {workdir}")
    if isinstance(results, dict):
        print("\n".join(experiment.result_lines(results)))
    else:
        from vae_jax import report

        print("\n".join(report.headline(workdir)))


if __name__ == "__main__":
    cli.run(main, usage=__doc__ + config_files.configs_help(), config=_CONFIG)

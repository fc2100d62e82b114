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

import ast
import datetime
import io
import logging
import os
import pathlib
import re
import sys
import tokenize
import traceback

from absl import app, flags
from ml_collections import config_flags

# Config files import each other as `experiments.configs.<name>`.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"

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
        sys.modules["__main__"].__doc__ = (__doc__ + _configs_help()).replace("%", "%%")
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
    `model.latent_dim=1.5 must be a positive integer` (`vae_jax.validate.override_error`)."""
    match = re.match(r"flag --(config\.[\w.]+)=(.*?): ", message)
    if match is None or match.group(1) not in flags.FLAGS:
        return None
    from vae_jax import validate  # jax and tfds: imported on this error only

    name, text = match.groups()
    kind = flags.FLAGS[name].parser.flag_type()
    config = flags.FLAGS["config"].value
    return str(validate.override_error(config, name.removeprefix("config."), text, kind))


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


def _config_lines(
    config, comments: dict[str, str], notes: dict[str, str], prefix: str = ""
) -> list[str]:
    """`data.name = 'mnist_5k'`, one line per field (sorted, as ml_collections lists them), each
    after its comment from the config file (`# ...`) and any note on what it runs."""
    lines = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            lines += _config_lines(value, comments, notes, f"{name}.")
            continue
        lines += [f"# {text}" for text in (comments.get(name), notes.get(name)) if text]
        lines.append(f"{name} = {value!r}")
    return lines


def _trained_sigmas(config) -> str:
    """What a sweep's `sweep.sigma` becomes: `vae_jax.members.sigma_values`, which adds the σ of
    `sweep.implicit_sigmas` or reads them off the data's spectrum (`sweep.sigma_from_spectrum`)."""
    from vae_jax import members
    from vae_jax.errors import ConfigError

    try:
        sigmas = members.sigma_values(config)
    except ConfigError as e:  # e.g. catalog data not prepared: its dimension is not known
        return f"trains sweep.sigma and the σ the data adds, once it can be read: {e}"
    values = repr(tuple(round(s, 6) for s in sigmas))
    if config.sweep.get("sigma_from_spectrum"):
        why = "sweep.sigma_from_spectrum: σ² straddling the training data's eigenvalues"
    else:  # sweep.sigma, and with sweep.implicit_sigmas the σ of summed and mean MSE + KL
        given = {round(s, 6) for s in config.sweep.sigma}
        added = [repr(round(s, 6)) for s in sigmas if round(s, 6) not in given]
        if not added:
            return f"trains {len(sigmas)} σ: {values}"
        why = (
            f"sweep.implicit_sigmas adds {' and '.join(added)}, the σ of summed and "
            f"mean-over-pixels MSE + KL for {config.data.name}"
        )
    return f"trains {len(sigmas)} σ: {values}; {why}"


def _config_chain(path: pathlib.Path) -> list[pathlib.Path]:
    """`path` and the config files it builds on (`from experiments.configs import default`),
    most specific first, default.py last."""
    chain, todo = [], [path]
    while todo:
        current = todo.pop(0)
        if current in chain or not current.is_file():
            continue
        chain.append(current)
        for node in ast.walk(ast.parse(current.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "experiments.configs":
                todo += [CONFIGS / f"{alias.name}.py" for alias in node.names]
            elif isinstance(node, ast.Import):
                todo += [
                    CONFIGS / f"{alias.name.rsplit('.', 1)[1]}.py"
                    for alias in node.names
                    if alias.name.startswith("experiments.configs.")
                ]
    default = CONFIGS / "default.py"
    return chain if default in chain else chain + [default]


def _assignments(path: pathlib.Path, variant: str | None) -> list[tuple[str, str | None, bool]]:
    """(`a.b`, its comment or None, whether `variant`'s branch sets it) for each `config.a.b = …`
    that `get_config(variant)` of `path` runs, in order. The comment is the one at the end of the
    assignment, else the comment lines right above it."""
    source = path.read_text()
    lines = source.splitlines()
    comments = {
        token.start[0]: (token.string.lstrip("#").strip(), lines[token.start[0] - 1].lstrip())
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    own_line = {n: text for n, (text, line) in comments.items() if line.startswith("#")}
    found: list[tuple[str, str | None, bool]] = []

    def comment(node: ast.stmt) -> str | None:
        for n in range(node.lineno, node.end_lineno + 1):
            if n in comments and n not in own_line:
                return comments[n][0]
        above, n = [], node.lineno - 1
        while n in own_line:
            above.insert(0, own_line[n])
            n -= 1
        return " ".join(above) or None

    def visit(body: list[ast.stmt], arg: str, in_variant: bool = False) -> None:
        for node in body:
            if isinstance(node, ast.Assign | ast.AnnAssign):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if name := _dotted(target):
                        found.append((name, comment(node), in_variant))
            elif isinstance(node, ast.If) and (tested := _tested_variant(node.test, arg)):
                if tested == variant:  # `if arg == "quick":` runs for that variant only
                    visit(node.body, arg, True)
                else:  # the `elif arg == …:` or `else:` that follows
                    visit(node.orelse, arg, in_variant)
            elif isinstance(node, ast.With):
                visit(node.body, arg, in_variant)

    function = _get_config(ast.parse(source))
    if function is not None:
        visit(function.body, function.args.args[0].arg if function.args.args else "")
    return found


def _dotted(target: ast.expr) -> str | None:
    """`config.a.b` → `a.b`; None for any other target."""
    parts = []
    while isinstance(target, ast.Attribute):
        parts.insert(0, target.attr)
        target = target.value
    return ".".join(parts) if isinstance(target, ast.Name) and parts else None


def _get_config(tree: ast.Module) -> ast.FunctionDef | None:
    return next(
        (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "get_config"), None
    )


def _field_comments(path: pathlib.Path, variant: str | None) -> dict[str, str]:
    """{`a.b`: what the field means} from the comments of the config files: the first comment
    given for it (default.py's, as variants build on it), then the comment of the file that
    sets its value here when that says something else (`— sigma_sweep.py: why 32`)."""
    chain = _config_chain(path)
    general: dict[str, str] = {}
    effective: dict[str, tuple[str, str | None]] = {}
    for current in reversed(chain):  # default.py first, `path` last
        arg = variant if current == chain[0] else None  # the others are built without one
        for name, text, in_variant in _assignments(current, arg):
            if text and name not in general:
                general[name] = text
            effective[name] = (f"{current.name}:{arg}" if in_variant else current.name, text)
    out = {}
    for name, first in general.items():
        label, text = effective[name]
        out[name] = first if text in (None, first) else f"{first} — {label}: {text}"
    return out


def _variants(tree: ast.Module) -> tuple[str, ...]:
    """A config file's variants: its module-level `VARIANTS`, else the strings `get_config`
    compares its argument with (`if arg == "quick":`)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "VARIANTS" for t in node.targets
        ):
            return tuple(ast.literal_eval(node.value))
    function = _get_config(tree)
    if function is None or not function.args.args:
        return ()
    arg = function.args.args[0].arg
    tested = (_tested_variant(node, arg) for node in ast.walk(function))
    return tuple(dict.fromkeys(v for v in tested if v))


def _tested_variant(test: ast.AST, arg: str) -> str | None:
    """'quick' for the test `arg == "quick"`; None for any other."""
    if (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == arg
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq)
        and isinstance(test.comparators[0], ast.Constant)
        and isinstance(test.comparators[0].value, str)
    ):
        return test.comparators[0].value
    return None


def _configs_help() -> str:
    """The config files beside this script, each with its variants and first docstring line."""
    folder = os.path.relpath(CONFIGS)
    lines = [f"\nConfig files in {folder}/ (--config={folder}/<file>[:<variant>]):"]
    for path in sorted(CONFIGS.glob("*.py")):
        if path.name == "__init__.py":
            continue
        try:
            tree = ast.parse(path.read_text())
        except (OSError, SyntaxError, ValueError) as e:  # --help still lists the others
            lines.append(f"  {path.name:<26}cannot be read: {type(e).__name__}: {e}")
            continue
        variants = _variants(tree)
        listed = f"variants: {', '.join(variants)}" if variants else "no variants"
        summary = (ast.get_docstring(tree) or "").strip().split("\n")[0]
        lines += [f"  {path.name:<26}{listed}", f"      {summary}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    # absl lets INFO through, such as matplotlib's "generated new fontManager" on a first import.
    logging.getLogger("matplotlib").setLevel(logging.DEBUG if _VERBOSE.value else logging.WARNING)
    import jax

    from vae_jax import experiment, train
    from vae_jax.errors import ConfigError, DiskFullError, backend_unavailable

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
            notes = {"sweep.sigma": _trained_sigmas(config)} if "sweep" in config else {}
            comments = _field_comments(pathlib.Path(path).resolve(), variant or None)
            print("\n".join(_config_lines(config, comments, notes)))
            return
        if not ("sweep" in config and config.sweep.get("multihost")):
            # The backend starts here, so that one this machine lacks fails before any data
            # loads (a multi-host sweep calls jax.distributed.initialize() before it starts).
            jax.devices()
        if "sweep" in config:
            from vae_jax import sweep

            results = sweep.train_and_evaluate(config, workdir, reevaluate=_REEVALUATE.value)
        else:
            results = experiment.train_and_evaluate(config, workdir, reevaluate=_REEVALUATE.value)
    # NonFiniteError is a FloatingPointError; it and DiskFullError stop a run under way: status 1.
    except (ConfigError, FloatingPointError, DiskFullError, train.Preempted) as e:
        if _VERBOSE.value:
            traceback.print_exc()
        if isinstance(e, train.Preempted):  # the run's --workdir, not a sweep group's
            print(f"{e}={workdir}", file=sys.stderr)
            sys.exit(128 + e.signal)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
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

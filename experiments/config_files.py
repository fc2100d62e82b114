"""What a config file says, read from its source: each field's comment, its variants, and for a
sweep the σ it trains. `experiments/run.py` prints it for `--help` and `--print_config`.
"""

import ast
import io
import os
import pathlib
import tokenize

CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"


def describe(config, filename: str) -> str:
    """`--print_config`'s text for `config`, loaded from `filename` (`path[:variant]`): each field
    after its comment in the config files (`field_comments`), and for a sweep the σ it trains."""
    path, _, variant = filename.partition(":")
    notes = {"sweep.sigma": trained_sigmas(config)} if "sweep" in config else {}
    comments = field_comments(pathlib.Path(path).resolve(), variant or None)
    return "\n".join(config_lines(config, comments, notes))


def config_lines(
    config, comments: dict[str, str], notes: dict[str, str], prefix: str = ""
) -> list[str]:
    """`data.name = 'mnist_5k'`, one line per field (sorted, as ml_collections lists them), each
    after its comment from the config file (`# ...`) and any note on what it runs."""
    lines = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            lines += config_lines(value, comments, notes, f"{name}.")
            continue
        lines += [f"# {text}" for text in (comments.get(name), notes.get(name)) if text]
        lines.append(f"{name} = {value!r}")
    return lines


def trained_sigmas(config) -> str:
    """What a sweep's `sweep.sigma` becomes: `vae_jax.members.sigma_values`, which adds the σ of
    `sweep.implicit_sigmas` or reads them off the data's spectrum (`sweep.sigma_from_spectrum`)."""
    from vae_jax import members, spec
    from vae_jax.errors import UsageError

    try:
        sigmas = members.sigma_values(spec.parse(config))
    except UsageError as e:  # e.g. catalog data not prepared: its dimension is not known
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


def field_comments(path: pathlib.Path, variant: str | None) -> dict[str, str]:
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


def configs_help() -> str:
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

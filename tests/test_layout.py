"""The layout rules docs/design.md states: no import cycle between the package's modules, and no
module of the package or of experiments/ over 450 lines (past that, it holds two jobs)."""

import ast
import pathlib

from conftest import REPO

MAX_LINES = 450


def _modules() -> list[pathlib.Path]:
    return sorted([*REPO.glob("vae_jax/**/*.py"), *REPO.glob("experiments/**/*.py")])


def _name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, known: set[str]) -> set[str]:
    """The package modules `path` imports at its top level (a function's own import is not a
    cycle at import time). `from a import b` imports the module a.b where there is one, else a;
    a module's own parent packages are left out (Python starts them before it)."""
    name = _name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parents, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return (found & known) - ancestors - {name}


def test_no_module_is_over_450_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_package_has_no_import_cycle():
    paths = {_name(p): p for p in REPO.glob("vae_jax/**/*.py")}
    graph = {name: _imports(path, set(paths)) for name, path in paths.items()}
    assert graph["vae_jax.experiment"] >= {"vae_jax.spec", "vae_jax.train"}  # the parser works
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        assert name not in stack, " -> ".join([*stack[stack.index(name) :], name])
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])

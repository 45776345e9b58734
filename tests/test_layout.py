"""The package layout's rules (DESIGN.md "Layout"), checked on every import statement of the
project — module-level and function-level alike."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("avbase", "model", "preprocess", "pipeline", "deploy")
# package → the packages of ours it may import (itself always)
ALLOWED = {
    "avbase": set(),
    "model": {"avbase"},
    "preprocess": {"avbase"},
    "pipeline": {"avbase", "model", "preprocess"},
    "deploy": set(),
}
MODEL_NEVER = ("deepspeed", "mlflow", "webdataset", "s3fs")


def modules() -> dict[str, Path]:
    """Dotted module name → file, for every module of our packages."""
    out = {}
    for package in OURS:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports_of(path: Path, name: str) -> list[tuple[int, str]]:
    """(line, imported module) of every import statement in ``path``, nested ones included;
    ``from a import b`` counts as ``a.b`` when that is a module, else ``a``."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            found.append((node.lineno, base))
    return found


def resolve(target: str, known: dict[str, Path]) -> str | None:
    """The module of ours ``target`` names (longest known prefix), or None."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in known:
            return ".".join(parts[:i])
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {m for _, t in imports_of(path, name) if (m := resolve(t, known)) and m != name}
        for name, path in known.items()
    }


def test_packages_import_only_downwards(graph):
    bad = [
        f"{src} imports {dst}"
        for src, targets in graph.items()
        for dst in targets
        if dst.split(".")[0] != src.split(".")[0]
        and dst.split(".")[0] not in ALLOWED[src.split(".")[0]]
    ]
    assert not bad, "\n".join(bad)


def test_model_never_imports_the_pipeline_libraries():
    known = modules()
    bad = [
        f"{name}:{line} imports {target}"
        for name, path in known.items()
        if name.startswith("model")
        for line, target in imports_of(path, name)
        if target.split(".")[0] in MODEL_NEVER
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles(graph):
    """Tarjan's strongly connected components over the module graph (function-level imports
    included, so a cycle hidden by a deferred import counts)."""
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    # a package's __init__ importing its own submodules is not a cycle of concern when the
    # submodules do not import the package back; Tarjan reports true cycles only
    assert not cycles, cycles


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from .keys import a\n\ndef f():\n    from pipeline.data import loader\n")
    got = [t for _, t in imports_of(src, "model.heads.m")]
    assert "model.heads.keys.a" in got and "pipeline.data.loader" in got


def test_tests_support_does_not_import_benchmarks():
    for path in (REPO / "tests" / "support").glob("*.py"):
        for _, target in imports_of(path, f"tests.support.{path.stem}"):
            assert not target.startswith("benchmarks"), f"{path.name} imports {target}"

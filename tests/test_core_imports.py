"""core/ imports form no cycle (module-level or deferred imports alike)."""
from __future__ import annotations

import ast
import os

CORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "core")


def _graph() -> dict[str, set[str]]:
    """core module (dotted, relative to core) -> core modules it imports anywhere in its source."""
    g: dict[str, set[str]] = {}
    for dirpath, _, files in os.walk(CORE):
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), CORE)[:-3].replace(os.sep, ".")
            name = rel.removesuffix(".__init__") if rel != "__init__" else ""
            pkg = name if f == "__init__.py" else name.rpartition(".")[0]
            deps = g.setdefault(name, set())
            with open(os.path.join(dirpath, f), encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level:
                    base = pkg.split(".") if pkg else []
                    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    mod = ".".join(base + ([node.module] if node.module else []))
                    for alias in node.names:  # `from . import convert` names a module
                        sub = f"{mod}.{alias.name}" if mod else alias.name
                        deps.add(sub if os.path.exists(os.path.join(CORE, *sub.split(".")) + ".py") else mod)
    return {k: {d for d in v if d in {*g} and d != k and not k.startswith(d + ".") and d != ""} for k, v in g.items()}


def test_core_has_no_import_cycle():
    g = _graph()
    assert {"model", "convert", "loading", "bundle", "export", "generate"} <= set(g)
    state: dict[str, int] = {}
    cycles = []

    def visit(n, path):
        state[n] = 1
        for d in sorted(g.get(n, ())):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n, [n])
    assert not cycles, cycles

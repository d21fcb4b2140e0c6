"""The package rules of docs/design.md, read from the source (every import, lazy ones too):
`protocol` imports nothing else of swarmrl; each role package (`coordinator`, `trainer`,
`worker`, `verifier`, `shardcast`) imports `protocol` and `shardcast` but never another role;
and no two modules import each other (an import circle, such as the one the coordinator's app
and dashboard once had, makes the import order decide what works)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {"protocol": {"protocol"}, "shardcast": {"protocol", "shardcast"},
           "coordinator": {"protocol", "shardcast", "coordinator"}, "trainer": {"protocol", "shardcast", "trainer"},
           "worker": {"protocol", "shardcast", "worker"}, "verifier": {"protocol", "shardcast", "verifier"}}
OURS = set(ALLOWED) | {"swarmrl", "tests", "bench"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for pkg in ALLOWED for p in (ROOT / pkg).rglob("*.py")}


def _imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every absolute import; a `from X import Y` where
    X.Y is a module imports X.Y. Imports under `if TYPE_CHECKING:` and in functions are not at
    module level."""
    out: list[tuple[str, bool]] = []

    def walk(nodes: list, top: bool) -> None:
        for n in nodes:
            if isinstance(n, ast.Import):
                out.extend((a.name, top) for a in n.names)
            elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
                out.extend((f"{n.module}.{a.name}" if f"{n.module}.{a.name}" in MODULES else n.module, top)
                           for a in n.names)
            elif isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING":
                walk(n.body, False)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                walk(getattr(n, "body", []), False)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    walk(getattr(n, field, None) or [], top)

    walk(tree.body, True)
    return out


IMPORTS = {m: _imports(ast.parse(p.read_text())) for m, p in MODULES.items()}


def test_roles_import_only_protocol_and_shardcast():
    wrong = [(m, name) for m, names in IMPORTS.items() for name, _ in names
             if name.split(".")[0] in OURS and name.split(".")[0] not in ALLOWED[m.split(".")[0]]]
    assert wrong == []


def _circles(lazy_too: bool, within: str = "") -> list[str]:
    """Modules (under `within`) that reach themselves through imports."""
    def resolve(name: str) -> str | None:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: {r for name, top in names if (top or lazy_too) and (r := resolve(name)) and r != m}
             for m, names in IMPORTS.items() if m.startswith(within)}
    circles = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(graph.get(m, ()))
        if start in seen:
            circles.append(start)
    return sorted(circles)


def test_no_import_circles():
    """None at module level anywhere; in the coordinator none even through a lazy import (its app
    and dashboard used to import each other, one of them inside a function)."""
    assert _circles(lazy_too=False) == []
    assert _circles(lazy_too=True, within="coordinator") == []

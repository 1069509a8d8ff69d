"""flume_rx's modules import only their own layer and the layers before it, and never in a cycle.

The layers are folders (DEVELOPERS.md, "Where things live"): operators, model, integrations, store, engine,
surfaces. Imports inside functions count too: one placed there to dodge a cycle still couples the two modules
both ways. Imports under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "flume_rx"


def module_files() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for directory, _, files in os.walk(PACKAGE, followlinks=True):  # flume_rx/operators is a link
        for name in files:
            if name.endswith(".py"):
                path = Path(directory) / name
                parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts.pop()
                modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of flume_rx that ``module`` imports, at the top or anywhere below."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            node.body = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                base = f"{parent}.{base}" if base else parent
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        found |= {target for target in map(known, names) if target is not None and target != module}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of two or more modules (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_the_finder_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


LAYERS = ("operators", "model", "integrations", "store", "engine", "surfaces")
"""In order: a module may import its own layer and those before it, never one after."""

TOP = {"flume_rx": "surfaces", "flume_rx.__main__": "surfaces", "flume_rx.testing": "surfaces"}
"""The package's public entry points at the top (``import flume_rx``, ``python -m flume_rx``,
``flume_rx.testing``) belong to the last layer: nothing below may import them."""

EXCEPTIONS: set[tuple[str, str]] = set()
"""(importer, imported) pairs allowed to reach a later layer, each with its reason. None today."""


def layer_of(module: str) -> str:
    if module in TOP:
        return TOP[module]
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        raise AssertionError(f"{module} is in no layer; put it in one of flume_rx/{{{','.join(LAYERS)}}}/")
    return parts[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a module from a later layer, as "importer (layer) -> imported (layer)"."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if rank[layer_of(target)] > rank[layer_of(module)] and (module, target) not in EXCEPTIONS:
                found.append(f"{module} ({layer_of(module)}) -> {target} ({layer_of(target)})")
    return found


def test_the_layer_check_sees_an_upward_import() -> None:
    graph = {"flume_rx.model.job": {"flume_rx.store.keys"}, "flume_rx.store.keys": {"flume_rx.model.job"}}
    assert upward_imports(graph) == ["flume_rx.model.job (model) -> flume_rx.store.keys (store)"]
    assert upward_imports({"flume_rx.testing": {"flume_rx.engine.source"}}) == []
    assert upward_imports({"flume_rx.engine.source": {"flume_rx.testing"}}) != []


def test_every_module_lies_in_a_layer_and_imports_none_after_it() -> None:
    modules = module_files()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert upward_imports(graph) == []


def test_flume_rx_has_no_import_cycle() -> None:
    modules = module_files()
    assert "flume_rx.operators._process" in modules and "flume_rx.engine.settle" in modules
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert cycles(graph) == []

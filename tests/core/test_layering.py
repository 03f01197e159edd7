"""The package's layering, read from the source: the core imports no concrete component,
and no two modules import each other, directly or around a loop (lazy imports inside
functions count; ``if TYPE_CHECKING:`` blocks do not, they never run)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "agent_lightning"
KERNELS = PACKAGE.parent / "kernels" / "triton"  # installed as agent_lightning.kernels
CORE = ("hookspecs", "plugins", "registry", "types", "config", "metrics", "progress", "loop")
COMPONENTS = ("envs", "rewards", "algorithms", "trackers", "backends")


def _modules() -> dict[str, Path]:
    found = {}
    for root, prefix in ((PACKAGE, ["agent_lightning"]), (KERNELS, ["agent_lightning", "kernels"])):
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if "scaffold_templates" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(prefix + parts)] = path
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", getattr(child.test, "attr", None)) == "TYPE_CHECKING":
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                out.add(candidate if candidate in modules else base)
    return {m for m in out if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
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
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_imports_no_concrete_component():
    graph = _graph()
    core = [m for m in graph if m.count(".") and m.split(".")[1] in CORE]
    assert "agent_lightning.loop.trainer" in core and "agent_lightning.types" in core
    offenders = {m: sorted(d for d in graph[m] if d.count(".") and d.split(".")[1] in COMPONENTS) for m in core}
    assert {m: deps for m, deps in offenders.items() if deps} == {}


def test_the_scan_sees_lazy_imports_and_skips_type_checking_blocks(tmp_path):
    source = tmp_path / "agent_lightning" / "x.py"
    source.parent.mkdir()
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import agent_lightning.y\n"
                      "def f():\n    from agent_lightning import z\n")
    modules = {"agent_lightning.x": source, "agent_lightning.y": source, "agent_lightning.z": source}
    assert _imports("agent_lightning.x", source, modules) == {"agent_lightning.z"}

"""Import cycles between the project's modules, found on the source with `ast` (nothing is imported).

    python -m tools.import_cycles [pc_core distill service pcgen]

An edge a -> b for every `import b` / `from b import x` in a's file, at any depth (lazy imports inside
functions count: a cycle through a lazy import still means neither module can be read without the other),
`if TYPE_CHECKING:` imports included, and `__import__("x")` / `importlib.import_module("x")` with a literal
name. `from pkg import name` where pkg/name.py exists is an edge to that
submodule. Cycles are reported as strongly connected components of more than one module (or a module that
imports itself); exit status 1 when there is one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pc_core", "distill", "service", "pcgen")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, known: set[str]) -> str | None:
    """The longest known module that `module` names or lies inside (`a.b.c` -> `a.b` if only that exists)."""
    while module and module not in known:
        module = module.rpartition(".")[0]
    return module or None


def _targets(node: ast.AST, here: str, is_package: bool, known: set[str]) -> list[str]:
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        called = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        if called in ("__import__", "import_module") and isinstance(node.args[0].value, str):
            return [node.args[0].value]  # importlib.import_module("x") / __import__("x") with a literal name
        return []
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: from the package this module is in (or is, for an __init__)
        base = here.split(".")
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    # `from pkg import sub` imports the submodule pkg.sub when there is one
    return [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]


def import_graph(packages: tuple[str, ...] = PACKAGES, root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the project modules it imports (only modules of `packages`)."""
    files = {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges = set()
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            for target in _targets(node, name, path.name == "__init__.py", known):
                resolved = _resolve(target, known)
                # importing pkg.sub also runs pkg/__init__; that edge is no cycle worth reporting
                if resolved is not None and not name.startswith(resolved + "."):
                    edges.add(resolved)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a self-import (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
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
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return sorted(found)


def cycle_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete loop through a component's first module, for the report: [a, b, ..., a]."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & members):
            if child == start:
                return paths[node] + [start]
            if child not in paths:
                paths[child] = paths[node] + [child]
                queue.append(child)
    return component


def main(argv: list[str] | None = None) -> int:
    packages = tuple(argv if argv else PACKAGES)
    graph = import_graph(packages)
    found = cycles(graph)
    for component in found:
        print(" -> ".join(cycle_path(graph, component)), f"  ({len(component)} modules in the cycle)")
    print(f"{len(found)} import cycle(s) among {len(graph)} modules of {', '.join(packages)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

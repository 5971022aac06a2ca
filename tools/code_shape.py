"""What is over the size limits of the developer guide: functions over 60 lines, classes over 250, modules
over 400 (benchmarks/ and tests/ are not checked). A report for people; exit status 0 either way.

    python -m tools.code_shape [pc_core distill service pcgen]

Sizes are source lines from the `def` / `class` line to the last line of the body (docstrings and comments
included: they are part of what a reader reads); a nested function counts towards its parent too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pc_core", "distill", "service", "pcgen")
LIMITS = {"function": 60, "class": 250, "module": 400}


class Oversized(NamedTuple):
    kind: str  # function | class | module
    where: str  # path:line
    name: str  # qualified name (Class.method), or the module path
    lines: int


def _walk(node: ast.AST, path: str, prefix: str) -> list[Oversized]:
    out = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            kind = "class" if isinstance(child, ast.ClassDef) else "function"
            name = f"{prefix}{child.name}"
            lines = child.end_lineno - child.lineno + 1
            if lines > LIMITS[kind]:
                out.append(Oversized(kind, f"{path}:{child.lineno}", name, lines))
            out += _walk(child, path, f"{name}.")
        else:
            out += _walk(child, path, prefix)
    return out


def oversized(packages: tuple[str, ...] = PACKAGES, root: Path = ROOT) -> list[Oversized]:
    """Every module, class and function over its limit, largest first within each kind."""
    out = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            text = path.read_text()
            rel = str(path.relative_to(root))
            lines = len(text.splitlines())
            if lines > LIMITS["module"]:
                out.append(Oversized("module", f"{rel}:1", rel, lines))
            out += _walk(ast.parse(text, filename=rel), rel, "")
    order = {kind: i for i, kind in enumerate(LIMITS)}
    return sorted(out, key=lambda o: (order[o.kind], -o.lines, o.where))


def main(argv: list[str] | None = None) -> int:
    packages = tuple(argv) if argv else PACKAGES
    found = oversized(packages)
    for kind, limit in LIMITS.items():
        rows = [o for o in found if o.kind == kind]
        print(f"{'classes' if kind == 'class' else kind + 's'} over {limit} lines: {len(rows)}")
        for o in rows:
            print(f"  {o.lines:5d}  {o.name}  ({o.where})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

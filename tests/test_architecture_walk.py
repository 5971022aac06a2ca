"""docs/architecture.md walks one request as `file:function` hops: every one it names exists in the code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"`(\w+/[\w/]+(?:\.py)?):([\w.]+)`")  # `pc_core/guide.py:multiply`


def _names(path: Path) -> set[str]:
    """Top-level functions and classes of a module (or a package's __init__), and Class.method."""
    tree = ast.parse((path / "__init__.py" if path.is_dir() else path).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{item.name}" for item in node.body
                      if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))}  # fmt: skip
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def test_every_hop_of_the_walk_names_a_function_that_exists():
    text = (ROOT / "docs" / "architecture.md").read_text()
    walk = text[text.index("## One `POST /generate`") : text.index("## Objects, one per stage")]
    references = REFERENCE.findall(walk)
    assert len(references) > 20
    missing = [f"{file}:{name}" for file, name in references if name not in _names(ROOT / file)]
    assert not missing, missing

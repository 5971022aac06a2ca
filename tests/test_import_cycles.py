"""No import cycle between the modules of pc_core, distill, service and pcgen, found on the source with `ast`
(tools/import_cycles.py; `python -m tools.import_cycles` prints them).

A cycle means neither module can be read (or imported) without the other; an import under `if TYPE_CHECKING:`
counts (the reader still needs the other module)."""

from tools.import_cycles import cycles, import_graph


def test_no_import_cycle_between_modules():
    assert cycles(import_graph(("pc_core", "distill", "service", "pcgen"))) == []


def test_the_cycle_finder_finds_cycles(tmp_path):
    """Guards against a vacuous pass: a three-module loop through a lazy import and a `from pkg import mod`,
    beside a module that only imports into the loop."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("import pkg.c as c\n")
    (pkg / "c.py").write_text("def f():\n    from pkg.a import x\n")
    (pkg / "d.py").write_text("from . import a\n")
    graph = import_graph(("pkg",), root=tmp_path)
    assert graph["pkg.d"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    (pkg / "c.py").write_text("import json\n")
    assert cycles(import_graph(("pkg",), root=tmp_path)) == []

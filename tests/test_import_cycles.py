"""No import cycle between the modules of pc_core and distill, found on the source with `ast`
(tools/import_cycles.py; `python -m tools.import_cycles` reports every package, service and pcgen included).

A cycle means neither module can be read (or imported) without the other; an import under `if TYPE_CHECKING:`
counts (the reader still needs the other module). When this test was written the modules in RESHAPING, which
other engineers were reshaping, still formed cycles among themselves (char_dfa <-> char_nfa by a type-only
import; char_tokens -> compiler._minimise, matchers.build_matcher -> counting / char_tokens, which build on
matchers' classes; compiler -> lazy_dfa, which builds on compiler._Compiler). A cycle among those alone is
tolerated; any other fails. Empty RESHAPING once they are gone.
"""

from tools.import_cycles import cycles, import_graph

RESHAPING = {
    f"pc_core.constraints.{name}"
    for name in ("char_dfa", "char_nfa", "json_values", "char_tokens", "compiler", "counting", "matchers")
} | {"pc_core.lazy_dfa"}


def test_no_import_cycle_in_pc_core_or_distill():
    found = cycles(import_graph(("pc_core", "distill")))
    assert [c for c in found if not set(c) <= RESHAPING] == []


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

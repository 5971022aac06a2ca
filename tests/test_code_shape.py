"""tools/code_shape.py, the size report (functions > 60 lines, classes > 250, modules > 400), finds what it
should on a file built here. The report on the real tree is for people: `python -m tools.code_shape`."""

from tools.code_shape import oversized


def test_the_report_finds_long_functions_classes_and_modules(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    method = "    def long(self):\n" + "        x = 1\n" * 61
    short = "def short():\n    return 1\n"
    big_class = "class Big:\n" + method + "".join(f"    def m{i}(self):\n        pass\n" for i in range(100))
    (pkg / "a.py").write_text(short + big_class + "\n" * 200)
    (pkg / "b.py").write_text(short)
    found = {(o.kind, o.name, o.lines) for o in oversized(("pkg",), root=tmp_path)}
    assert found == {("module", "pkg/a.py", 465), ("class", "Big", 263), ("function", "Big.long", 62)}

"""The layers, checked on the source with `ast`: pc_core is the library and imports no product package
(service, distill, pcgen); service and distill import nothing from pcgen (pcgen.cli looks up their `register`
functions by module name, never the other way round)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every absolute module a file imports, at any depth (lazy imports inside functions included), also
    through `__import__("x")` / `importlib.import_module("x")` with a literal name."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in ("__import__", "import_module") and isinstance(node.args[0].value, str):
                out.add(node.args[0].value)
    return out


def offending(package: str, forbidden: set[str]) -> list[str]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules under {package}/"
    return [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in files
        for module in sorted(imported_modules(path))
        if module.split(".")[0] in forbidden
    ]


def test_pc_core_imports_no_product_package():
    assert offending("pc_core", {"service", "distill", "pcgen"}) == []


@pytest.mark.parametrize("package", ["service", "distill"])
def test_service_and_distill_do_not_import_pcgen(package):
    assert offending(package, {"pcgen"}) == []


def test_pcgen_cli_registers_exactly_the_command_modules():
    """The one link between the product CLI and the packages: pcgen.cli names (module, "register") pairs and
    imports them by name; each of those modules defines `register`."""
    registered = {
        node.elts[0].value
        for node in ast.walk(ast.parse((ROOT / "pcgen" / "cli.py").read_text()))
        if isinstance(node, ast.Tuple)
        and len(node.elts) == 2
        and all(isinstance(e, ast.Constant) for e in node.elts)
        and node.elts[1].value == "register"
    }
    assert registered == {"pcgen.cli_generate", "pcgen.demo", "distill.cli", "service.cli"}
    for module in registered:
        tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "register" for n in tree.body), module


def test_the_walker_finds_imports_at_every_depth(tmp_path):
    """Guards against a vacuous pass."""
    source = tmp_path / "m.py"
    source.write_text(
        "import service.app as a\nfrom distill import em\nfrom . import sibling\n"
        "def f():\n    from pcgen.cli import main\n    import importlib\n"
        "    importlib.import_module('service.cli')\n    __import__('pcgen.demo')\n"
    )
    assert imported_modules(source) == {"service.app", "distill", "pcgen.cli", "importlib", "service.cli",
                                        "pcgen.demo"}  # fmt: skip
    cli_generate = imported_modules(ROOT / "pcgen" / "cli_generate.py")
    assert {"pcgen.constraint_args", "pc_core.decoding"} <= cli_generate

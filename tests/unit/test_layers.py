"""The map of the house (docs/design.md) as a test: what each package may not import, and
the size limits of its modules and functions, so the layering cannot erode unnoticed.

Imports are read from the source (every `import`/`from ... import`, inside functions and
TYPE_CHECKING blocks too): a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WKD = ROOT / "wkd"

# Modules every layer may use: values, errors and plain data.
BASE = {"wkd", "wkd.errors", "wkd.model", "wkd.values", "wkd.token"}
# Standard-library and third-party modules that do I/O or talk to the OS.
IO_MODULES = {"os", "io", "asyncio", "ctypes", "subprocess", "socket", "threading", "pathlib",
              "tempfile", "shutil", "fcntl", "signal", "select", "mmap", "time", "json",
              "logging", "dbus_fast", "pyudev", "pkcs11", "systemd"}
# The packages of the layout and what each must never import (a prefix matches a package
# and everything in it).
FORBIDDEN: dict[str, set[str]] = {
    # Pure decisions: values in, values out.
    "wkd.core": IO_MODULES | {"wkd.engine", "wkd.disk", "wkd.hsm", "wkd.bus", "wkd.system",
                              "wkd.config", "wkd.log", "wkd.secret", "wkd.run", "wkd.cli",
                              "wkd.wkdtab"},
    # Orchestration on ports: no concrete disk or HSM, no D-Bus, no OS edge, no ctypes.
    "wkd.engine": {"wkd.disk", "wkd.hsm.pkcs11", "wkd.hsm.softhsm", "wkd.hsm.pin",
                   "wkd.bus", "wkd.system", "wkd.cli", "ctypes", "dbus_fast", "pyudev",
                   "pkcs11", "subprocess", "socket"},
    # The local disk: implements the engine's DiskPort, knows nothing above it.
    "wkd.disk": {"wkd.engine", "wkd.hsm", "wkd.bus", "wkd.system", "wkd.cli", "dbus_fast",
                 "pyudev", "pkcs11"},
    # Key stores.
    "wkd.hsm": {"wkd.engine", "wkd.disk", "wkd.core", "wkd.bus", "wkd.system", "wkd.cli",
                "dbus_fast", "pyudev"},
    # The D-Bus adapter talks to the engine through its own protocol.
    "wkd.bus": {"wkd.engine", "wkd.disk", "wkd.hsm", "wkd.core", "wkd.system", "pyudev",
                "pkcs11"},
    # wkd.system is the composition root: it may import anything.
    "wkd.system": set(),
}
# The shared base modules sit below every package.
BASE_FORBIDDEN = {"wkd.engine", "wkd.disk", "wkd.hsm", "wkd.bus", "wkd.system", "wkd.core",
                  "dbus_fast", "pyudev", "pkcs11"}
BASE_MODULES = ["errors", "model", "values", "token", "secret", "config", "wkdtab", "log",
                "run"]
# Size limits (issue 15) for the packages of the layout.
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str | None = None) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    package = (module or _module_name(path)).rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found.add(base)
            # `from wkd import disk` imports wkd.disk
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _violates(name: str, rules: set[str]) -> str | None:
    for rule in rules:
        if name == rule or name.startswith(rule + "."):
            return rule
    return None


def _package_files(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_follow_the_map(package: str) -> None:
    bad = []
    for path in _package_files(package):
        for name in sorted(_imports(path)):
            rule = _violates(name, FORBIDDEN[package])
            if rule is not None:
                bad.append(f"{path.relative_to(ROOT)} imports {name} (no {rule} in {package})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", BASE_MODULES)
def test_base_modules_import_no_layer(module: str) -> None:
    path = WKD / f"{module}.py"
    bad = [n for n in sorted(_imports(path)) if _violates(n, BASE_FORBIDDEN)]
    assert not bad, f"wkd/{module}.py imports {bad}"


def test_the_core_imports_only_base_modules_from_wkd() -> None:
    """An allow-list on top of the deny-list: wkd.core may use wkd.errors, wkd.model,
    wkd.values, wkd.token and itself, and nothing else of wkd, whatever is added later."""
    allowed = (BASE - {"wkd"}) | {"wkd.core"}
    for path in _package_files("wkd.core"):
        for name in _imports(path):
            if not name.startswith("wkd."):
                continue
            # `from wkd.token import WkdToken` records wkd.token and wkd.token.WkdToken
            assert any(name == a or name.startswith(a + ".") for a in allowed), (
                f"{path.relative_to(ROOT)} imports {name}")


def test_the_layout_packages_exist() -> None:
    for package in ("wkd.core", "wkd.engine", "wkd.disk", "wkd.hsm", "wkd.system"):
        assert (ROOT / package.replace(".", "/") / "__init__.py").exists(), package


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


@pytest.mark.parametrize("package", ["wkd.core", "wkd.engine", "wkd.disk"])
def test_small_modules_and_functions(package: str) -> None:
    too_big = []
    for path in _package_files(package):
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            too_big.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for fn in _functions(ast.parse(text)):
            assert fn.end_lineno is not None
            length = fn.end_lineno - fn.lineno + 1
            if length > MAX_FUNCTION_LINES:
                too_big.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}: {length} lines")
    assert not too_big, "\n".join(too_big)


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    """The checker itself: a core module importing the disk layer is caught."""
    sample = tmp_path / "sample.py"
    sample.write_text("from wkd.disk import luks2\n\ndef f():\n    import os\n"
                      "from . import facts\n")
    names = _imports(sample, "wkd.core.sample")
    assert {"wkd.disk.luks2", "os", "wkd.core.facts"} <= names
    assert _violates("wkd.disk.luks2", FORBIDDEN["wkd.core"]) == "wkd.disk"
    assert _violates("os", FORBIDDEN["wkd.core"]) == "os"
    assert _violates("wkd.core.facts", FORBIDDEN["wkd.core"]) is None

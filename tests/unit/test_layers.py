"""Imports go down the layers only (DESIGN.md, "Shape").

* ``types`` and ``events`` import nothing of mptcpd but ``types``;
* ``netlink`` is the only package that imports pyroute2, and it never imports
  ``pm``, ``plugins`` or ``daemon``;
* the bundled plugins import only the public ``mptcpd.plugin`` module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "mptcpd"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    base = SRC.parent if path.is_relative_to(SRC.parent) else path.parent
    package = ".".join(path.relative_to(base).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def modules_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)


def ours(names: set[str]) -> set[str]:
    return {n for n in names if n == "mptcpd" or n.startswith("mptcpd.")}


def test_the_source_tree_is_where_the_test_looks() -> None:
    assert (SRC / "types.py").is_file()
    assert modules_under(SRC / "netlink")


@pytest.mark.parametrize("name", ["types.py", "events.py"])
def test_value_modules_import_only_types(name: str) -> None:
    path = SRC / name
    if not path.exists():
        pytest.skip(f"{name} not written yet")
    others = {n for n in ours(imported_modules(path))
              if n != "mptcpd.types" and not n.startswith("mptcpd.types.")}
    assert others == set()


def test_no_shipped_module_imports_pyroute2() -> None:
    """pyroute2 is the tests' oracle; the daemon has its own lean codecs."""
    offenders = [
        str(p.relative_to(SRC))
        for p in modules_under(SRC)
        if any(n.split(".")[0] == "pyroute2" for n in imported_modules(p))
    ]
    assert offenders == []


def test_no_shipped_module_imports_the_tests() -> None:
    """The namespace lab and the demo live in tests/, outside the package."""
    offenders = [
        str(p.relative_to(SRC))
        for p in modules_under(SRC)
        if any(n.split(".")[0] == "tests" for n in imported_modules(p))
    ]
    assert offenders == []


def test_netlink_never_imports_upper_layers() -> None:
    forbidden = ("mptcpd.pm", "mptcpd.plugins", "mptcpd.daemon", "mptcpd.plugin")
    offenders = {
        str(p.relative_to(SRC)): sorted(
            n for n in ours(imported_modules(p)) if n.startswith(forbidden)
        )
        for p in modules_under(SRC / "netlink")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_bundled_plugins_import_only_the_public_api() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(
            n for n in ours(imported_modules(p))
            if n != "mptcpd.plugin" and not n.startswith("mptcpd.plugin.")
        )
        for p in modules_under(ROOT / "plugins")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_daemon_and_the_cli_do_not_import_pyroute2() -> None:
    """pyroute2 costs about 30 MB and 100 ms at startup; the daemon's and
    the command line's modules must not load it (the lab and the tests may)."""
    import subprocess
    import sys

    code = 'import sys, mptcpd.daemon.app, mptcpd.cli; print("pyroute2" in sys.modules)'
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False"], out.stderr

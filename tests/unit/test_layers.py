"""Imports go down the layers only (ARCHITECTURE.md).

* every module of the package has a layer, and imports nothing of a higher
  one (imports under ``if TYPE_CHECKING:`` do not run and do not count);
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


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """The nodes of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING"):
            for inner in node.body:
                skipped.update(id(n) for n in ast.walk(inner))
    return [n for n in ast.walk(tree) if id(n) not in skipped]


def imported_modules(path: Path, runtime_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    base = SRC.parent if path.is_relative_to(SRC.parent) else path.parent
    package = ".".join(path.relative_to(base).with_suffix("").parts[:-1])
    nodes = _runtime_nodes(tree) if runtime_only else list(ast.walk(tree))
    for node in nodes:
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


#: The layers, lowest first: a module imports only from its own layer or
#: lower ones.  Every module of the package must match one entry (the
#: longest prefix wins).
LAYERS: dict[str, int] = {
    "mptcpd.types": 0, "mptcpd.errors": 0, "mptcpd.log": 0,
    "mptcpd.netlink.constants": 0, "mptcpd.netlink.sysctl": 0,
    "mptcpd.events": 1, "mptcpd.config": 1,
    "mptcpd.netlink": 2, "mptcpd.netlink.mptcp_info": 2,
    "mptcpd.hookspecs": 3, "mptcpd.plugin": 3, "mptcpd.pm": 3,
    "mptcpd.pm.policy": 3, "mptcpd.pm.settings": 3, "mptcpd.pm.keeper": 3,
    "mptcpd.plugins": 4,
    "mptcpd.daemon": 5, "mptcpd.daemon.control": 5, "mptcpd.daemon.control_api": 5,
    "mptcpd.testing": 6, "mptcpd.cli": 6, "mptcpd.__main__": 6, "mptcpd": 6,
    "mptcpd.mptcpize": 6, "mptcpd.install": 6, "mptcpd.get_debug": 6,
    "mptcpd.ctl": 6, "mptcpd.sockinfo": 6,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> int | None:
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")),
               key=len, default=None)
    return LAYERS[best] if best is not None else None


def test_imports_go_down_the_layers() -> None:
    offenders: dict[str, list[str]] = {}
    for path in modules_under(SRC):
        name = module_name(path)
        own = layer(name)
        assert own is not None, f"{name} has no layer in LAYERS"
        for imported in ours(imported_modules(path, runtime_only=True)):
            if imported == "mptcpd":
                continue
            theirs = layer(imported)
            if theirs is not None and theirs > own:
                offenders.setdefault(name, []).append(imported)
    assert offenders == {}


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    fake = SRC / "netlink" / "constants.py"
    names = imported_modules(fake, runtime_only=True)
    assert not any(n.startswith("mptcpd.daemon") for n in names)
    assert layer("mptcpd.netlink.genl_events") == 2 and layer("mptcpd.daemon.app") == 5
    assert layer("mptcpd.netlink.constants") == 0
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nimport mptcpd.daemon.app\n"
                     "if TYPE_CHECKING:\n    import mptcpd.cli\n")
    assert ours(imported_modules(probe, runtime_only=True)) == {"mptcpd.daemon.app"}

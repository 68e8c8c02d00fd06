"""The documentation says what the code does."""

from __future__ import annotations

import inspect
from pathlib import Path

from mptcpd import hookspecs, plugin
from mptcpd.plugins.loader import load_plugins
from mptcpd.plugins.registry import HOOKS, PluginRegistry
from tests import guide


def test_every_hook_has_a_guide_heading_with_its_exact_signature() -> None:
    text = guide.text()
    for name in HOOKS:
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"#### `{name}({params})`" in text, name


def test_every_path_manager_method_is_in_the_guide() -> None:
    text = guide.text()
    members = [n for n, _ in inspect.getmembers(plugin.PathManager)
               if not n.startswith("_")]
    assert members
    for name in members:
        assert f"`{name}(" in text or f"`pm.{name}`" in text, name


def test_the_guides_minimal_plugin_loads_as_written(tmp_path: Path) -> None:
    directory = tmp_path / "plugins"
    directory.mkdir()
    (directory / "hello.py").write_text(guide.minimal_plugin())
    registry = PluginRegistry()
    load_plugins(registry, str(directory), ["hello"], entry_points=False)
    [hello] = registry.plugins
    assert hello.name == "hello"
    assert set(hello.impls) == {"plugin_init", "new_connection", "new_subflow",
                                "connection_closed", "new_local_address"}


def test_the_readme_quick_start_is_two_commands() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["./scripts/demo", "./scripts/test"]
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "./scripts/test" in ci

"""The bundled plugins, as the daemon loads its default plugin directory."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from mptcpd.config import load_config
from mptcpd.plugins.loader import load_plugins
from mptcpd.plugins.registry import PluginRegistry
from mptcpd.testing import FakePathManager, PluginDriver

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = {"addr_adv", "failover", "fullmesh", "ndiffports", "sspi"}


def test_every_bundled_plugin_loads_with_the_ownership_checks(tmp_path: Path) -> None:
    """A copy of plugins/ (owned by whoever runs the test, mode 0644 in a
    0755 directory, as an install makes it): all load, none is skipped, and
    addr_adv stays the default path manager when none is named."""
    directory = tmp_path / "plugins"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    for path in (ROOT / "plugins").glob("*.py"):
        shutil.copyfile(path, directory / path.name)
        (directory / path.name).chmod(0o644)
    registry = PluginRegistry()
    load_plugins(registry, str(directory), None, entry_points=False)
    names = {plugin.name for plugin in registry.plugins}
    assert names == BUNDLED
    default = registry.select_default(None)
    assert default is not None and default.name == "addr_adv"
    for plugin in registry.plugins:
        assert plugin.impls, plugin.name


def test_the_shipped_plugin_settings_examples_are_read_without_complaint(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The commented [plugin NAME] groups of etc/mptcpd.conf, uncommented,
    give each plugin values it takes without a warning or an error."""
    lines = (ROOT / "etc" / "mptcpd.conf").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# [plugin "))
    text = "\n".join(line.removeprefix("# ") for line in lines[start:]) + "\n"
    path = tmp_path / "m.conf"
    path.write_text(text)
    path.chmod(0o644)
    config = load_config(path=str(path))
    names = {group.name for group in config.plugin_groups}
    assert {"fullmesh", "ndiffports", "failover"} <= names
    for name in names:
        pm = FakePathManager(config=config)
        directory = tmp_path / name
        directory.mkdir(mode=0o755)
        directory.chmod(0o755)
        shutil.copyfile(ROOT / "plugins" / f"{name}.py", directory / f"{name}.py")
        (directory / f"{name}.py").chmod(0o644)
        PluginDriver.load(directory / f"{name}.py", pm)
        assert len(pm.config.plugin_settings(name)) > 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []

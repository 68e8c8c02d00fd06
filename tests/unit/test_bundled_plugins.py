"""The bundled plugins, as the daemon loads its default plugin directory."""

from __future__ import annotations

import shutil
from pathlib import Path

from mptcpd.plugins.loader import load_plugins
from mptcpd.plugins.registry import PluginRegistry

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = {"addr_adv", "fullmesh", "ndiffports", "sspi"}


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

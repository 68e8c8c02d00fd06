"""C: plugin_four, low priority, loaded from the file four."""

from mptcpd.plugin import PluginInfo, Priority

from tests.plugins.recording import make_recorder

PLUGIN = PluginInfo(name="plugin_four", priority=Priority.LOW)
globals().update(make_recorder(PLUGIN.name))

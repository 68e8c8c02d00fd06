"""The least favoured plugin of the priority set (C: plugin_two, 19)."""

from mptcpd.plugin import PluginInfo, Priority

from tests.plugins.recording import make_recorder

PLUGIN = PluginInfo(name="plugin_two", description="priority two", priority=Priority.LOW)
globals().update(make_recorder(PLUGIN.name))

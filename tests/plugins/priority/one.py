"""The most favoured plugin of the priority set (C: plugin_one, -20)."""

from mptcpd.plugin import PluginInfo, Priority

from tests.plugins.recording import make_recorder

PLUGIN = PluginInfo(name="plugin_one", description="priority one", priority=Priority.HIGH)
globals().update(make_recorder(PLUGIN.name))

"""C: plugin_three, default priority."""

from mptcpd.plugin import PluginInfo, Priority

from tests.plugins.recording import make_recorder

PLUGIN = PluginInfo(name="plugin_three", priority=Priority.DEFAULT)
globals().update(make_recorder(PLUGIN.name))

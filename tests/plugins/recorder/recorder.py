"""A plugin that records every hook call (see tests/plugins/recording.py)."""

from mptcpd.plugin import PluginInfo

from tests.plugins.recording import make_recorder

PLUGIN = PluginInfo(name="recorder", description="records every hook call")
globals().update(make_recorder(PLUGIN.name))

"""A plugin that implements no hook at all."""

from mptcpd.plugin import PluginInfo

PLUGIN = PluginInfo(name="noop", description="does nothing")

"""The descriptor under another name (C fixture: no_symbol)."""

from mptcpd.plugin import PluginInfo

PLUGIN_INFO = PluginInfo(name="no_symbol")

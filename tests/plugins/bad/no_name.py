"""A descriptor without a name (C fixture: no_name)."""

from mptcpd.plugin import PluginInfo

PLUGIN = PluginInfo.__new__(PluginInfo)
object.__setattr__(PLUGIN, "name", "")
object.__setattr__(PLUGIN, "description", "no name")
object.__setattr__(PLUGIN, "priority", 0)

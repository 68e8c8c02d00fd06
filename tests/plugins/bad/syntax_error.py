"""A file that is not valid Python."""

from mptcpd.plugin import PluginInfo

PLUGIN = PluginInfo(name="syntax_error"

"""A plugin whose init fails (C fixture: failed_init)."""

from mptcpd.plugin import PluginInfo, hookimpl

PLUGIN = PluginInfo(name="plugin_failed_init")


@hookimpl
def plugin_init(pm):
    raise RuntimeError("cannot initialise")

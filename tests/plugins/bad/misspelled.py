"""A hook implementation with a misspelled hook name."""

from mptcpd.plugin import PluginInfo, hookimpl

PLUGIN = PluginInfo(name="misspelled")


@hookimpl
def new_conection(token, pm):
    pass

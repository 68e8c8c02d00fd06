"""A hook implementation taking a parameter the hook does not have."""

from mptcpd.plugin import PluginInfo, hookimpl

PLUGIN = PluginInfo(name="wrong_args")


@hookimpl
def connection_closed(token, reason, pm):
    pass

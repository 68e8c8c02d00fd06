"""A coroutine function as a hook implementation: refused at load."""

from mptcpd.plugin import PluginInfo, hookimpl

PLUGIN = PluginInfo(name="coroutine")


@hookimpl
async def new_connection(token, pm):
    pass

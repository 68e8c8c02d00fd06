"""A plugin that sends commands for a connection from its ``connection_closed``
hook, too late: the daemon must drop them, not send them.

Each outcome is appended to the file ``MPTCPD_LATE_LOG`` names, as a JSON line
``{"token", "command", "outcome"}`` (``outcome``: ``ok`` or the exception's
class name).
"""

import json
import os

from mptcpd.plugin import PluginInfo, hookimpl

PLUGIN = PluginInfo(name="late", description="sends commands after CLOSED")

_addresses = {}


def _record(token, command):
    def done(future):
        if future.cancelled():
            outcome = "cancelled"
        elif future.exception() is not None:
            outcome = type(future.exception()).__name__
        else:
            outcome = "ok"
        path = os.environ.get("MPTCPD_LATE_LOG")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"token": token, "command": command,
                                    "outcome": outcome}) + "\n")
    return done


@hookimpl
def new_connection(token, laddr, raddr, pm):
    _addresses[token] = (laddr, raddr)


@hookimpl
def connection_closed(token, pm):
    laddr, raddr = _addresses.pop(token)
    pm.add_subflow(token, 0, 0, laddr, raddr).add_done_callback(
        _record(token, "add_subflow"))
    pm.remove_addr(None, 1, token).add_done_callback(_record(token, "remove_addr"))

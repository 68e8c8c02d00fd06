"""Hook implementations that record every call (C: tests/lib/call_count.c).

``make_recorder(name)`` returns the hook implementations of a plugin that
records each call as ``(plugin, hook, {parameter: value})`` in :data:`CALLS`,
and, when ``MPTCPD_RECORDER_LOG`` names a file, appends it there as a JSON
line (for a daemon running in another process).
"""

from __future__ import annotations

import json
import os
from typing import Any

from mptcpd.plugin import hookimpl

CALLS: list[tuple[str, str, dict[str, Any]]] = []


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bool, int, str, type(None))):
        return value
    if hasattr(value, "ip") and hasattr(value, "port"):
        return f"{value.ip}|{value.port}"
    if hasattr(value, "index") and hasattr(value, "name"):
        return {"index": value.index, "name": value.name}
    return repr(value)


def counts(plugin: str) -> dict[str, int]:
    result: dict[str, int] = {}
    for name, hook, _ in CALLS:
        if name == plugin:
            result[hook] = result.get(hook, 0) + 1
    return result


def make_recorder(name: str) -> dict[str, Any]:
    def record(hook: str, **kwargs: Any) -> None:
        args = {k: v for k, v in kwargs.items() if k != "pm"}
        CALLS.append((name, hook, args))
        path = os.environ.get("MPTCPD_RECORDER_LOG")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"plugin": name, "hook": hook,
                                    "args": {k: _jsonable(v) for k, v in args.items()}}) + "\n")

    @hookimpl
    def plugin_init(pm): record("plugin_init")

    @hookimpl
    def plugin_exit(pm): record("plugin_exit")

    @hookimpl
    def pm_ready(pm): record("pm_ready")

    @hookimpl
    def pm_not_ready(pm): record("pm_not_ready")

    @hookimpl
    def policy_changed(pm): record("policy_changed")

    @hookimpl
    def new_connection(token, laddr, raddr, server_side, deny_join_id0, pm):
        record("new_connection", token=token, laddr=laddr, raddr=raddr,
               server_side=server_side, deny_join_id0=deny_join_id0)

    @hookimpl
    def connection_established(token, laddr, raddr, server_side, deny_join_id0, pm):
        record("connection_established", token=token, laddr=laddr, raddr=raddr,
               server_side=server_side, deny_join_id0=deny_join_id0)

    @hookimpl
    def connection_closed(token, pm): record("connection_closed", token=token)

    @hookimpl
    def new_address(token, addr_id, addr, pm):
        record("new_address", token=token, addr_id=addr_id, addr=addr)

    @hookimpl
    def address_removed(token, addr_id, pm):
        record("address_removed", token=token, addr_id=addr_id)

    @hookimpl
    def new_subflow(token, laddr, raddr, backup, pm):
        record("new_subflow", token=token, laddr=laddr, raddr=raddr, backup=backup)

    @hookimpl
    def subflow_closed(token, laddr, raddr, backup, pm):
        record("subflow_closed", token=token, laddr=laddr, raddr=raddr, backup=backup)

    @hookimpl
    def subflow_priority(token, laddr, raddr, backup, pm):
        record("subflow_priority", token=token, laddr=laddr, raddr=raddr, backup=backup)

    @hookimpl
    def listener_created(laddr, pm): record("listener_created", laddr=laddr)

    @hookimpl
    def listener_closed(laddr, pm): record("listener_closed", laddr=laddr)

    @hookimpl
    def new_interface(interface, pm): record("new_interface", interface=interface)

    @hookimpl
    def update_interface(interface, pm): record("update_interface", interface=interface)

    @hookimpl
    def delete_interface(interface, pm): record("delete_interface", interface=interface)

    @hookimpl
    def new_local_address(interface, addr, pm):
        record("new_local_address", interface=interface, addr=addr)

    @hookimpl
    def delete_local_address(interface, addr, pm):
        record("delete_local_address", interface=interface, addr=addr)

    @hookimpl
    def link_down(interface, pm): record("link_down", interface=interface)

    @hookimpl
    def link_up(interface, pm): record("link_up", interface=interface)

    return {k: v for k, v in locals().items() if hasattr(v, "mptcpd_impl")}

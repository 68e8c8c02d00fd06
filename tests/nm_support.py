"""A network-monitor subscriber for tests that writes down every call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mptcpd.types import Interface, SockAddr


class Recorder:
    """Records each call as ``(op, key(interface), address or None)``.

    ``key`` picks what identifies an interface in the records: its index
    (the default) or, say, its name.
    """

    def __init__(self, key: Callable[[Interface], Any] = lambda i: i.index) -> None:
        self.key = key
        self.calls: list[tuple[str, Any, str | None]] = []
        self.interfaces: list[Interface] = []

    def _rec(self, op: str, iface: Interface, sa: SockAddr | None = None) -> None:
        self.calls.append((op, self.key(iface), None if sa is None else str(sa)))
        self.interfaces.append(iface)

    def new_interface(self, i: Interface) -> None: self._rec("new_interface", i)
    def update_interface(self, i: Interface) -> None: self._rec("update_interface", i)
    def delete_interface(self, i: Interface) -> None: self._rec("delete_interface", i)
    def new_local_address(self, i: Interface, a: SockAddr) -> None: self._rec("new_local_address", i, a)
    def delete_local_address(self, i: Interface, a: SockAddr) -> None: self._rec("delete_local_address", i, a)
    def link_down(self, i: Interface) -> None: self._rec("link_down", i)
    def link_up(self, i: Interface) -> None: self._rec("link_up", i)

    def last(self, op: str, key: Any) -> Interface:
        for call, iface in zip(reversed(self.calls), reversed(self.interfaces)):
            if call[0] == op and call[1] == key:
                return iface
        raise KeyError((op, key))

    def ops(self, *names: str) -> list[tuple[str, Any, str | None]]:
        return [c for c in self.calls if c[0] in names]

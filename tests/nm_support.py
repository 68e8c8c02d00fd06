"""A network-monitor subscriber for tests that writes down every call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mptcpd import events as ev
from mptcpd.types import Interface


class Recorder:
    """Records each event as ``(hook, key(interface), address or None)``.

    ``key`` picks what identifies an interface in the records: its index
    (the default) or, say, its name.
    """

    def __init__(self, key: Callable[[Interface], Any] = lambda i: i.index) -> None:
        self.key = key
        self.calls: list[tuple[str, Any, str | None]] = []
        self.interfaces: list[Interface] = []

    def __call__(self, event: ev.NetworkEvent) -> None:
        """The network monitor's subscriber: write the event down."""
        addr = getattr(event, "addr", None)
        self.calls.append((event.HOOK, self.key(event.interface),
                           None if addr is None else str(addr)))
        self.interfaces.append(event.interface)

    def last(self, op: str, key: Any) -> Interface:
        for call, iface in zip(reversed(self.calls), reversed(self.interfaces)):
            if call[0] == op and call[1] == key:
                return iface
        raise KeyError((op, key))

    def ops(self, *names: str) -> list[tuple[str, Any, str | None]]:
        return [c for c in self.calls if c[0] in names]

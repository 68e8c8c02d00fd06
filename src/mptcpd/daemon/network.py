"""The daemon's rtnetlink wiring: the kernel's link, address and route
messages fed to the network monitor.

:class:`NetworkFeed` opens the rtnetlink side (an
:class:`~mptcpd.netlink.rtnl_monitor.RtnlMonitor`, or a test double),
records the current state from a link dump and then, if an interface is
tracked, an address dump (silently unless ``existing`` is set), and follows
every change until closed.  It also gives the monitor's ``check_route`` the
socket's default-route lookup.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from mptcpd.netlink.rtnl_monitor import (
    AddressMessage,
    LinkMessage,
    RouteLookup,
    RtnlEvent,
    RtnlMonitor,
    RtnlMonitorError,
)
from mptcpd.pm.network_monitor import NetworkMonitor

log = logging.getLogger(__name__)


class RtnlSource(Protocol):
    """What :class:`NetworkFeed` needs from the kernel side
    (:class:`~mptcpd.netlink.rtnl_monitor.RtnlMonitor` or a test double)."""

    async def open(self) -> None: ...
    async def dump_links(self) -> list[LinkMessage]: ...
    async def dump_addresses(self) -> list[AddressMessage]: ...
    def events(self) -> AsyncIterator[RtnlEvent]: ...
    async def lookup_default_route(self, family: int, ifindex: int) -> RouteLookup: ...
    def close(self) -> None: ...


class NetworkFeed:
    """Feeds ``monitor`` from rtnetlink.

    :param monitor: the network monitor to feed.
    :param source: the kernel side; an
        :class:`~mptcpd.netlink.rtnl_monitor.RtnlMonitor` of ``netns`` (route
        messages only when ``check_route`` waits for them) when None.
    :param netns: the namespace to monitor (``None``: our own).
    """

    def __init__(self, monitor: NetworkMonitor, source: RtnlSource | None = None,
                 netns: str | None = None) -> None:
        self.monitor = monitor
        self._source = source
        self._netns = netns
        self._opened: RtnlSource | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the rtnetlink side, record the current state, start following.

        :raises RtnlMonitorError: if the socket or the link dump fails (the
            daemon then logs ``Unable to create network monitor.``).
        """
        if self._opened is not None:
            raise RuntimeError("the network feed is already started")
        monitor = self.monitor
        source = self._source
        if source is None:
            source = RtnlMonitor(self._netns, routes=monitor.wants_routes)
        await source.open()
        self._opened = source
        if monitor.route_lookup is None:
            monitor.route_lookup = source.lookup_default_route
        try:
            for link in await source.dump_links():
                monitor.handle_link(link, initial=True)
            if monitor.tracking:
                try:
                    addresses = await source.dump_addresses()
                except RtnlMonitorError:
                    addresses = []  # logged already; carry on, as mptcpd does
                for amsg in addresses:
                    monitor.handle_address(amsg, initial=True)
        except BaseException:
            source.close()
            self._opened = None
            raise
        self._task = asyncio.get_running_loop().create_task(
            self._follow(source), name="network monitor")

    async def _follow(self, source: RtnlSource) -> None:
        handle = self.monitor.handle
        try:
            async for record in source.events():
                try:
                    handle(record)
                except Exception:
                    log.exception("network monitor failed to handle %r", record)
        except RtnlMonitorError:
            log.error("Network monitor stopped: rtnetlink socket lost.")
        except Exception:
            log.exception("Network monitor stopped: rtnetlink reader failed.")

    @property
    def running(self) -> bool:
        """True while following kernel changes."""
        return self._task is not None and not self._task.done()

    async def close(self) -> None:
        """Stop following changes, end the monitor's route checks, close the socket."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await self.monitor.close()
        source, self._opened = self._opened, None
        if source is not None:
            source.close()

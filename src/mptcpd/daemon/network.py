"""The daemon's rtnetlink wiring: the kernel's link, address and route
messages fed to the network monitor.

:class:`NetworkFeed` opens the rtnetlink side (an
:class:`~mptcpd.netlink.rtnl_monitor.RtnlMonitor`, or a test double),
records the current state from a link dump and then, if an interface is
tracked, an address dump (silently unless ``existing`` is set), and follows
every change until closed, reopening the socket when it fails.  It also
gives the monitor's ``check_route`` the socket's default-route lookup.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
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

#: Seconds before each attempt to reopen a failed rtnetlink side.
RETRY_DELAYS: tuple[float, ...] = (0.1, 1.0, 5.0)


class RtnlSource(Protocol):
    """What :class:`NetworkFeed` needs from the kernel side
    (:class:`~mptcpd.netlink.rtnl_monitor.RtnlMonitor` or a test double)."""

    async def open(self) -> None: ...
    async def dump_links(self) -> list[LinkMessage]: ...
    async def dump_addresses(self) -> list[AddressMessage]: ...
    def events(self) -> AsyncIterator[RtnlEvent]: ...
    async def lookup_default_route(self, family: int, ifindex: int) -> RouteLookup: ...
    def close(self) -> None: ...


class Batch(Protocol):
    """Holds commands back while a batch of records is applied, and
    sends them together when released (the command channel:
    :meth:`~mptcpd.netlink.genl_commands.CommandChannel.hold`)."""

    def hold(self) -> None: ...
    def release(self) -> None: ...


class NetworkFeed:
    """Feeds ``monitor`` from rtnetlink, and keeps doing so.

    When the rtnetlink side fails (its socket lost, its reader broken), the
    feed opens a new one, takes fresh dumps and brings the monitor in line
    with them (:meth:`NetworkMonitor.reconcile`: plugins hear of what changed
    meanwhile), waiting :data:`RETRY_DELAYS` between attempts.  When every
    attempt fails it calls ``on_failure`` with the reason: the daemon then
    exits non-zero rather than run on with stale interfaces.

    :param monitor: the network monitor to feed.
    :param open_source: makes the kernel side; an
        :class:`~mptcpd.netlink.rtnl_monitor.RtnlMonitor` of ``netns`` (route
        messages only when ``check_route`` waits for them) when None.
    :param netns: the namespace to monitor (``None``: our own).
    :param on_failure: called with the reason when the feed gives up.
    :param retry_delays: the waits before each reopening attempt.
    :param batch: held while the records of one wake-up's datagrams are
        applied (the command channel: what plugins submit for them leaves
        together, in the same loop turn); None: nothing held.
    """

    def __init__(self, monitor: NetworkMonitor,
                 open_source: Callable[[], RtnlSource] | None = None,
                 netns: str | None = None,
                 on_failure: Callable[[str], None] | None = None,
                 retry_delays: Sequence[float] = RETRY_DELAYS,
                 batch: Batch | None = None) -> None:
        self.monitor = monitor
        self.batch = batch
        self._open_source = open_source or self._rtnl_monitor
        self._netns = netns
        self.on_failure = on_failure
        self.retry_delays = tuple(retry_delays)
        #: How many times the rtnetlink side was reopened.
        self.reopened = 0
        #: the monitor's route lookup is the socket's (not one it was given).
        self._socket_lookup = monitor.route_lookup is None
        self._source: RtnlSource | None = None
        self._task: asyncio.Task[None] | None = None

    def _rtnl_monitor(self) -> RtnlSource:
        return RtnlMonitor(self._netns, routes=self.monitor.wants_routes)

    async def start(self) -> None:
        """Open the rtnetlink side, record the current state, start following.

        :raises RtnlMonitorError: if the socket or the link dump fails (the
            daemon then logs ``Unable to create network monitor.``).
        """
        if self._source is not None:
            raise RuntimeError("the network feed is already started")
        source = self._open_source()
        links, addresses = await self._open(source)
        monitor = self.monitor
        for link in links:
            monitor.handle_link(link, initial=True)
        for amsg in addresses:
            monitor.handle_address(amsg, initial=True)
        self._task = asyncio.get_running_loop().create_task(
            self._follow(source), name="network monitor")

    async def _open(self, source: RtnlSource
                    ) -> tuple[list[LinkMessage], list[AddressMessage]]:
        """Open ``source`` and dump links (and, if one is tracked or would be,
        addresses); ``source`` becomes the feed's.  Closed again on failure."""
        await source.open()
        self._source = source
        monitor = self.monitor
        if self._socket_lookup:
            monitor.route_lookup = source.lookup_default_route
        try:
            links = await source.dump_links()
            addresses: list[AddressMessage] = []
            if monitor.tracking or any(monitor.would_track(link) for link in links):
                try:
                    addresses = await source.dump_addresses()
                except RtnlMonitorError:
                    pass  # logged already; carry on, as mptcpd does
        except BaseException:
            source.close()
            self._source = None
            raise
        return links, addresses

    async def _follow(self, source: RtnlSource) -> None:
        while True:
            reason = await self._read(source)
            source.close()
            self._source = None
            reopened = await self._reopen(reason)
            if reopened is None:
                return
            source = reopened

    async def _read(self, source: RtnlSource) -> str:
        """Apply the source's records until it fails; why it stopped.

        A source that can (:meth:`RtnlMonitor.follow
        <mptcpd.netlink.rtnl_monitor.RtnlMonitor.follow>`) hands each
        datagram's records over from the loop's reader callback, and they
        are applied there and then (:meth:`_apply`); others are iterated."""
        follow = getattr(source, "follow", None)
        if follow is None:
            return await self._iterate(source)
        ended: asyncio.Future[BaseException | None] = \
            asyncio.get_running_loop().create_future()

        def on_end(exc: BaseException | None) -> None:
            if not ended.done():
                ended.set_result(exc)

        try:
            follow(self._apply, on_end)
        except Exception as error:
            on_end(error)
        return self._why(await ended)

    @staticmethod
    def _why(exc: BaseException | None) -> str:
        """Why the stream stopped: ``exc`` ended it (None: it just ended)."""
        if exc is None:
            return "rtnetlink stream ended"
        if isinstance(exc, RtnlMonitorError):
            return str(exc) or "rtnetlink socket lost"
        log.error("Network monitor: rtnetlink reader failed.", exc_info=exc)
        return f"rtnetlink reader failed: {exc!r}"

    def _apply(self, records: list[RtnlEvent]) -> None:
        """Apply the records of one wake-up's datagrams; the commands they
        make plugins submit leave together once they all are (:attr:`batch`)."""
        handle = self.monitor.handle
        batch = self.batch
        if batch is not None:
            batch.hold()
        try:
            for record in records:
                try:
                    handle(record)
                except Exception:
                    log.exception("network monitor failed to handle %r", record)
        finally:
            if batch is not None:
                batch.release()

    async def _iterate(self, source: RtnlSource) -> str:
        """:meth:`_read` for a source that only has :meth:`RtnlSource.events`."""
        try:
            async for record in source.events():
                self._apply([record])
        except Exception as exc:
            return self._why(exc)
        return self._why(None)

    async def _reopen(self, reason: str) -> RtnlSource | None:
        """A new rtnetlink side, the monitor brought in line with its dumps;
        None (after ``on_failure``) when every attempt failed."""
        log.error("Network monitor: %s; reopening.", reason)
        for attempt, delay in enumerate(self.retry_delays, 1):
            await asyncio.sleep(delay)
            try:
                source = self._open_source()
                links, addresses = await self._open(source)
            except Exception as exc:
                log.warning("Network monitor: reopening failed (attempt %d of %d): %s",
                            attempt, len(self.retry_delays), exc)
                reason = f"{reason}; reopening failed: {exc}"
                continue
            self.reopened += 1
            self.monitor.reconcile(links, addresses)
            log.info("Network monitor: rtnetlink reopened and resynchronised.")
            return source
        log.error("Network monitor stopped: %s", reason)
        if self.on_failure is not None:
            self.on_failure(f"network monitor stopped: {reason}")
        return None

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
        source, self._source = self._source, None
        if source is not None:
            source.close()

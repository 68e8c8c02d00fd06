"""NetworkFeed: the rtnetlink side of the daemon's network monitor, with a
fake kernel side (the real one is tested in tests/integration)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from collections.abc import AsyncIterator

from mptcpd.daemon.network import NetworkFeed
import pytest

from mptcpd.netlink.rtnl_monitor import (
    AddressMessage,
    LinkMessage,
    Resync,
    RouteLookup,
    RouteMessage,
    RtnlEvent,
    RtnlMonitorError,
)
from mptcpd.types import NotifyFlags, SockAddr
from tests.unit.test_network_monitor import LOOPBACK, addr, link, monitor, until


class FakeSource:
    def __init__(self, links: list[LinkMessage], addrs: list[AddressMessage]) -> None:
        self.links = links
        self.addrs = addrs
        self.log: list[str] = []
        self.queue: asyncio.Queue[RtnlEvent] = asyncio.Queue()
        self.closed = False

    async def open(self) -> None:
        self.log.append("open")

    async def dump_links(self) -> list[LinkMessage]:
        self.log.append("links")
        return self.links

    async def dump_addresses(self) -> list[AddressMessage]:
        self.log.append("addrs")
        return self.addrs

    async def events(self) -> AsyncIterator[RtnlEvent]:
        while True:
            yield await self.queue.get()

    async def lookup_default_route(self, family: int, ifindex: int) -> RouteLookup:
        return RouteLookup(oif=ifindex)

    def close(self) -> None:
        self.closed = True


async def test_start_dumps_links_then_addresses_and_follows_events() -> None:
    src = FakeSource([link(2), link(1, LOOPBACK, "lo")], [addr(2, "192.0.2.1")])
    nm, rec = monitor()
    feed = NetworkFeed(nm, lambda: src)
    await feed.start()
    assert src.log == ["open", "links", "addrs"]
    assert rec.calls == [] and nm.get_interface(2).addrs == (SockAddr("192.0.2.1"),)  # type: ignore[union-attr]
    src.queue.put_nowait(addr(2, "192.0.2.7"))
    src.queue.put_nowait(Resync((link(2),), (addr(2, "192.0.2.7"),)))
    await until(lambda: len(rec.calls) == 2)
    assert rec.calls == [("new_local_address", 2, "192.0.2.7"),
                         ("delete_local_address", 2, "192.0.2.1")]
    assert feed.running
    await feed.close()
    assert src.closed and not feed.running


async def test_start_skips_the_address_dump_without_interfaces() -> None:
    src = FakeSource([link(1, LOOPBACK, "lo")], [])
    nm, _ = monitor()
    feed = NetworkFeed(nm, lambda: src)
    await feed.start()
    assert src.log == ["open", "links"]
    await feed.close()


async def test_the_feed_gives_check_route_the_sockets_lookup_and_close_ends_checks() -> None:
    src = FakeSource([link(2)], [])
    nm, rec = monitor(NotifyFlags.CHECK_ROUTE)
    assert nm.route_lookup is None
    feed = NetworkFeed(nm, lambda: src)
    await feed.start()
    assert nm.route_lookup == src.lookup_default_route
    src.queue.put_nowait(addr(2, "192.0.2.1"))
    # The fake's lookup finds the route at once: the address is reported.
    await until(lambda: rec.calls == [("new_local_address", 2, "192.0.2.1")])
    await feed.close()
    assert nm.routes.pending == 0


class FailingSource(FakeSource):
    """A source whose stream breaks after the records queued before ``fail``."""

    def fail(self) -> None:
        self.queue.put_nowait(None)  # type: ignore[arg-type]

    async def events(self) -> AsyncIterator[RtnlEvent]:
        while True:
            record = await self.queue.get()
            if record is None:
                raise RtnlMonitorError("Network monitor: rtnetlink socket lost")
            yield record


async def test_a_lost_socket_is_reopened_and_the_monitor_resynchronised(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mptcpd.daemon.network")
    first = FailingSource([link(2)], [addr(2, "192.0.2.1"), addr(2, "192.0.2.2")])
    # While no socket was open, .1 went and .3 came.
    second = FailingSource([link(2)], [addr(2, "192.0.2.2"), addr(2, "192.0.2.3")])
    sources = iter([first, second])
    failures: list[str] = []
    nm, rec = monitor(NotifyFlags.EXISTING)
    feed = NetworkFeed(nm, lambda: next(sources), on_failure=failures.append,
                       retry_delays=(0, 0))
    await feed.start()
    assert rec.calls == [("new_local_address", 2, "192.0.2.1"),
                         ("new_local_address", 2, "192.0.2.2")]
    first.fail()
    await until(lambda: feed.reopened == 1)
    assert first.closed and not second.closed
    assert rec.calls[2:] == [("delete_local_address", 2, "192.0.2.1"),
                             ("new_local_address", 2, "192.0.2.3")]
    assert nm.route_lookup == second.lookup_default_route
    # The new socket is followed.
    second.queue.put_nowait(addr(2, "192.0.2.4"))
    await until(lambda: len(rec.calls) == 5)
    assert rec.calls[4] == ("new_local_address", 2, "192.0.2.4")
    assert failures == [] and feed.running
    assert "rtnetlink socket lost" in caplog.text and "reopened" in caplog.text
    await feed.close()
    assert second.closed


async def test_when_reopening_keeps_failing_the_feed_reports_and_stops() -> None:
    first = FailingSource([link(2)], [])
    opened = [first]

    def open_source() -> FakeSource:
        if opened:
            return opened.pop()
        raise RtnlMonitorError("Unable to monitor network device changes.")

    failures: list[str] = []
    nm, _ = monitor()
    feed = NetworkFeed(nm, open_source, on_failure=failures.append, retry_delays=(0, 0, 0))
    await feed.start()
    first.fail()
    await until(lambda: bool(failures))
    assert failures == ["network monitor stopped: Network monitor: rtnetlink socket lost"
                        + "; reopening failed: Unable to monitor network device changes." * 3]
    await until(lambda: not feed.running)
    await feed.close()


class FollowSource(FakeSource):
    """A source with RtnlMonitor's synchronous stream: the test hands over
    datagrams' records (``deliver``) and ends the stream (``end``)."""

    def __init__(self, links: list[LinkMessage], addrs: list[AddressMessage]) -> None:
        super().__init__(links, addrs)
        self.on_records: Any = None
        self.on_end: Any = None

    def follow(self, on_records: Any, on_end: Any) -> None:
        self.log.append("follow")
        self.on_records, self.on_end = on_records, on_end

    async def events(self) -> AsyncIterator[RtnlEvent]:
        raise AssertionError("a source that can follow is not iterated")
        yield  # pragma: no cover


class Batch:
    """Stands for the command channel's hold and release."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def hold(self) -> None:
        self.log.append("hold")

    def release(self) -> None:
        self.log.append("release")


async def test_a_following_source_is_applied_from_its_callback_one_datagram_per_hold(
        caplog: pytest.LogCaptureFixture) -> None:
    """The records of one datagram are applied when the source hands them
    over (no task in between), inside one hold of the command batch, which
    is released even when a record fails."""
    src = FollowSource([link(2)], [])
    nm, rec = monitor()
    batch = Batch()
    rec_calls = rec.calls
    nm.register(lambda event: batch.log.append(event.HOOK))
    feed = NetworkFeed(nm, lambda: src, batch=batch)
    await feed.start()
    await until(lambda: src.on_records is not None)
    src.on_records([addr(2, "192.0.2.7"), addr(2, "192.0.2.8")])
    assert rec_calls == [("new_local_address", 2, "192.0.2.7"),
                         ("new_local_address", 2, "192.0.2.8")]
    assert batch.log == ["hold", "new_local_address", "new_local_address", "release"]
    def broken(msg: RouteMessage) -> None:
        raise RuntimeError("a bug")

    nm.handle_route = broken  # type: ignore[method-assign]
    src.on_records([RouteMessage(2), addr(2, "192.0.2.7", deleted=True)])
    assert batch.log[4:] == ["hold", "delete_local_address", "release"]
    assert "network monitor failed to handle RouteMessage" in caplog.text
    src.on_records([RouteMessage(2)])
    assert batch.log[7:] == ["hold", "release"]
    assert feed.running
    await feed.close()
    assert src.closed


async def test_a_following_source_that_ends_is_reopened_and_an_error_is_reported(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "mptcpd.daemon.network")
    first = FollowSource([link(2)], [addr(2, "192.0.2.1")])
    second = FollowSource([link(2)], [addr(2, "192.0.2.2")])
    third = FollowSource([link(2)], [addr(2, "192.0.2.2")])
    sources = iter([first, second, third])
    nm, rec = monitor(NotifyFlags.EXISTING)
    feed = NetworkFeed(nm, lambda: next(sources), retry_delays=(0,))
    await feed.start()
    await until(lambda: first.on_end is not None)
    first.on_end(None)  # closed under it: the stream ended
    await until(lambda: feed.reopened == 1 and second.on_end is not None)
    assert first.closed and rec.calls[1:] == [("delete_local_address", 2, "192.0.2.1"),
                                              ("new_local_address", 2, "192.0.2.2")]
    assert "rtnetlink stream ended; reopening" in caplog.text
    second.on_end(RtnlMonitorError("Unable to monitor IPv4 address changes."))
    await until(lambda: feed.reopened == 2 and third.on_end is not None)
    assert "Unable to monitor IPv4 address changes.; reopening" in caplog.text
    third.on_end(ValueError("a decoding bug"))
    await until(lambda: "rtnetlink reader failed: ValueError('a decoding bug')" in caplog.text)
    await feed.close()

"""RouteCheck on its own: lookups on C's schedule, then one per route change
of the address's family, until found, the deadline, or cancellation."""

from __future__ import annotations

import asyncio
import errno
import socket

from mptcpd.netlink.rtnl_monitor import RouteLookup
from mptcpd.pm.route_check import Check, RouteCheck
from mptcpd.types import SockAddr

V4 = SockAddr("192.0.2.1")
V6 = SockAddr("2001:db8::1")


class Routes:
    """A default-route lookup whose answer the test sets; counts lookups."""

    def __init__(self) -> None:
        self.found = False
        self.lookups: list[tuple[int, int]] = []
        self.raise_error = False
        self.looked = asyncio.Event()

    async def __call__(self, family: int, ifindex: int) -> RouteLookup:
        self.lookups.append((family, ifindex))
        self.looked.set()
        if self.raise_error:
            raise OSError(errno.ENOBUFS, "no buffer space")
        return RouteLookup(oif=ifindex) if self.found else RouteLookup(error=errno.ENETUNREACH)

    async def wait_lookups(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.lookups) < count:
                self.looked.clear()
                await self.looked.wait()


class Results:
    def __init__(self) -> None:
        self.done: list[tuple[Check, bool]] = []
        self.event = asyncio.Event()

    def __call__(self, check: Check, found: bool) -> None:
        self.done.append((check, found))
        self.event.set()

    async def wait(self) -> None:
        async with asyncio.timeout(5):
            await self.event.wait()


async def test_found_after_a_route_change_of_its_family_only() -> None:
    routes, results = Routes(), Results()
    rc = RouteCheck(routes, delays=(0, 0, 0, 0), timeout=30)
    check = rc.start(V4, 2, results)
    other = rc.start(V6, 3, results)
    await routes.wait_lookups(10)  # C's five lookups each, then they wait
    assert rc.pending == 2 and results.done == []
    rc.route_changed(socket.AF_INET6)  # wakes the IPv6 check only
    await routes.wait_lookups(11)
    for _ in range(5):  # time for a wrongly woken IPv4 check to look too
        await asyncio.sleep(0)
    assert routes.lookups.count((socket.AF_INET, 2)) == 5
    assert routes.lookups.count((socket.AF_INET6, 3)) == 6
    routes.found = True
    rc.route_changed(socket.AF_INET)
    await results.wait()
    assert results.done == [(check, True)]
    assert routes.lookups.count((socket.AF_INET, 2)) == 6
    rc.cancel(other)
    assert rc.pending == 0


async def test_gives_up_at_the_deadline_and_c_gives_up_after_its_schedule() -> None:
    routes, results = Routes(), Results()
    rc = RouteCheck(routes, delays=(0.001, 0.004, 0.008, 0.016), timeout=0)
    check = rc.start(V6, 3, results)
    await results.wait()
    assert results.done == [(check, False)] and len(routes.lookups) == 5


async def test_a_failing_lookup_ends_the_check_without_a_route() -> None:
    routes, results = Routes(), Results()
    routes.raise_error = True
    rc = RouteCheck(routes, delays=(0, 0, 0, 0))
    rc.start(V4, 2, results)
    await results.wait()
    assert [found for _, found in results.done] == [False] and len(routes.lookups) == 1


async def test_cancel_and_close_end_checks_without_a_result() -> None:
    routes, results = Routes(), Results()
    rc = RouteCheck(routes, delays=(0, 0, 0, 0), timeout=30)
    first = rc.start(V4, 2, results)
    rc.start(V6, 3, results)
    await routes.wait_lookups(10)
    rc.cancel(first)
    assert rc.pending == 1
    await rc.close()
    assert rc.pending == 0 and results.done == []
    assert first.task is not None and first.task.cancelled()


async def test_without_a_lookup_the_check_ends_at_once() -> None:
    results = Results()
    rc = RouteCheck(None)
    rc.start(V4, 2, results)
    await results.wait()
    assert [found for _, found in results.done] == [False]

"""``check_route``: an address is reported only once a default route leaves
from its interface.

The first five lookups follow C's schedule (at once, then after 1, 4, 8 and
16 ms); after that a check does not give up but waits for route changes in
the namespace (``RTM_NEWROUTE`` of its family) and looks again after each
one, until a total deadline (``timeout``, 60 s by default; 0 gives C's
give-up-after-30-ms), as a DHCP client needs.  It never polls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from mptcpd.netlink.rtnl_monitor import RouteLookup
from mptcpd.types import SockAddr

log = logging.getLogger(__name__)

#: C's check_route retry delays, in seconds: 2**n ms for n = 0, 2, 3, 4.
ROUTE_CHECK_DELAYS: tuple[float, ...] = (0.001, 0.004, 0.008, 0.016)
#: How long a route check keeps waiting for route changes, in seconds.
ROUTE_WAIT_TIMEOUT = 60.0

#: ``async (family, ifindex) -> RouteLookup``: one default-route lookup.
RouteLookupFn = Callable[[int, int], Awaitable[RouteLookup]]


class Check:
    """One running check (what :meth:`RouteCheck.start` returns)."""

    __slots__ = ("addr", "index", "task", "wake")

    def __init__(self, addr: SockAddr, index: int) -> None:
        self.addr = addr
        self.index = index
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class RouteCheck:
    """Runs the route checks of the network monitor.

    :param lookup: the default-route lookup (the rtnetlink socket's; set
        later by whoever opens that socket when None).
    :param delays: the delays between the first lookups; their number + 1
        lookups are made before the check waits for route changes.
    :param timeout: the total time a check may take, in seconds.
    """

    def __init__(self, lookup: RouteLookupFn | None = None,
                 delays: Sequence[float] = ROUTE_CHECK_DELAYS,
                 timeout: float = ROUTE_WAIT_TIMEOUT) -> None:
        self.lookup = lookup
        self.delays = tuple(delays)
        self.timeout = float(timeout)
        self._checks: set[Check] = set()

    def start(self, addr: SockAddr, index: int,
              done: Callable[[Check, bool], None]) -> Check:
        """Check ``addr`` on interface ``index``; ``done(check, found)`` is
        called when the check ends on its own (not when cancelled)."""
        check = Check(addr, index)
        self._checks.add(check)
        check.task = asyncio.get_running_loop().create_task(
            self._run(check, done), name=f"check_route {addr}")
        return check

    def route_changed(self, family: int) -> None:
        """A route of ``family`` was added or changed: look again."""
        for check in self._checks:
            if check.addr.family == family:
                check.wake.set()

    def cancel(self, check: Check | None) -> None:
        """Stop ``check`` (its address or interface went away)."""
        if check is None:
            return
        self._checks.discard(check)
        task = check.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    async def close(self) -> None:
        """Cancel every running check and wait until they have ended."""
        tasks = [c.task for c in self._checks if c.task is not None]
        for check in list(self._checks):
            self.cancel(check)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def pending(self) -> int:
        """How many checks are running."""
        return len(self._checks)

    async def _lookup_once(self, check: Check, verbose: bool) -> bool | None:
        """One lookup: True found, False not (yet), None the lookup failed."""
        lookup = self.lookup
        if lookup is None:
            log.debug("Route lookup failed")
            return None
        say = log.info if verbose else log.debug
        try:
            result = await lookup(check.addr.family, check.index)
        except OSError:
            log.debug("Route lookup failed")
            return None
        if result.error:
            say("can't resolved default route from %s interface %d: %d",
                check.addr, check.index, -result.error)
            return False
        if result.dst is not None:
            say("found non-default route with destination %s", result.dst)
            return False
        if result.oif != check.index:
            say("interface mismatch %s:%d", result.oif, check.index)
            return False
        return True

    async def _run(self, check: Check, done: Callable[[Check, bool], None]) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            found: bool | None = False
            # C's schedule: a lookup now, then after each delay.
            for attempt in range(len(self.delays) + 1):
                if attempt:
                    await asyncio.sleep(self.delays[attempt - 1])
                check.wake.clear()
                found = await self._lookup_once(check, verbose=True)
                if found is not False:
                    break
            # Then wait for route changes, up to the deadline.
            while found is False:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        await check.wake.wait()
                except TimeoutError:
                    break
                check.wake.clear()
                found = await self._lookup_once(check, verbose=False)
            if found is False:
                log.debug("timeout while waiting for default route on address %s",
                          check.addr)
            elif found:
                log.info("found default route for address %s on interface %d",
                         check.addr, check.index)
        finally:
            self._checks.discard(check)
        done(check, bool(found))

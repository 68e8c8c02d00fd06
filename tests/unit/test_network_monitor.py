"""The network monitor's state machine, fed with built records."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptcpd import events as ev
from mptcpd.netlink.rtnl_monitor import (
    AddressMessage,
    LinkMessage,
    RouteLookup,
    RouteMessage,
    parse,
)
from mptcpd.pm.network_monitor import AddressState, NetworkMonitor
from mptcpd.pm.policy import Policy
from mptcpd.types import IFF_LOOPBACK, IFF_LOWER_UP, IFF_RUNNING, IFF_UP, NotifyFlags, SockAddr
from tests.nm_support import Recorder
from tests.unit.fuzz_support import FUZZ

BROADCAST_MULTICAST = 0x2 | 0x1000
READY = IFF_UP | IFF_RUNNING | IFF_LOWER_UP | BROADCAST_MULTICAST
NO_CARRIER = IFF_UP | BROADCAST_MULTICAST
DOWN = BROADCAST_MULTICAST
LOOPBACK = IFF_UP | IFF_RUNNING | IFF_LOOPBACK | IFF_LOWER_UP


def link(index: int, flags: int = READY, name: str | None = None, deleted: bool = False) -> LinkMessage:
    return LinkMessage(index, name or f"eth{index}", flags, 1, "UP" if flags & IFF_RUNNING else "DOWN",
                       bool(flags & IFF_RUNNING), deleted)


def addr(index: int, ip: str, scope: int = 0, deleted: bool = False) -> AddressMessage:
    return AddressMessage(index, ipaddress.ip_address(ip), 24, scope, 0, None, deleted)


def monitor(flags: NotifyFlags = NotifyFlags(0), **kwargs: Any) -> tuple[NetworkMonitor, Recorder]:
    nm = NetworkMonitor(flags, **kwargs)
    rec = Recorder()
    assert nm.register(rec)
    return nm, rec


async def until(cond: Callable[[], object], timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.001)


# -- interfaces ----------------------------------------------------------------


def test_initial_dump_records_ready_interfaces_silently_in_index_order() -> None:
    nm, rec = monitor()
    for msg in (link(3), link(1, LOOPBACK, "lo"), link(2), link(4, DOWN)):
        nm.handle_link(msg, initial=True)
    assert rec.calls == []
    assert [i.index for i in nm.interfaces()] == [2, 3]
    seen: list[str] = []
    nm.foreach_interface(lambda i: seen.append(i.name))
    assert seen == ["eth2", "eth3"]


def test_loopback_only_when_enabled() -> None:
    nm, rec = monitor()
    nm.handle_link(link(1, LOOPBACK, "lo"))
    assert nm.interfaces() == []
    assert nm.monitor_loopback(True)
    nm.handle_link(link(1, LOOPBACK, "lo"))
    assert rec.calls == [("new_interface", 1, None)]


def test_new_then_update_interface_keeps_the_first_name() -> None:
    nm, rec = monitor()
    nm.handle_link(link(5, name="wan0"))
    nm.handle_link(link(5, name="renamed"))
    assert rec.calls == [("new_interface", 5, None), ("update_interface", 5, None)]
    assert nm.get_interface(5) is not None and nm.get_interface(5).name == "wan0"  # type: ignore[union-attr]


def test_admin_down_deletes_with_last_state_and_no_address_events() -> None:
    nm, rec = monitor()
    nm.handle_link(link(2))
    nm.handle_address(addr(2, "192.0.2.1"))
    rec.calls.clear()
    nm.handle_link(link(2, DOWN))
    assert rec.calls == [("delete_interface", 2, None)]
    last = rec.interfaces[-1]
    assert last.flags == READY and last.addrs == (SockAddr("192.0.2.1"),)
    assert nm.interfaces() == []
    # back up: the address is not re-read (defect 11, kept)
    rec.calls.clear()
    nm.handle_link(link(2))
    assert rec.calls == [("new_interface", 2, None)]
    assert nm.get_interface(2).addrs == ()  # type: ignore[union-attr]


def test_fifteen_character_names_are_kept() -> None:
    # mptcpd leaves a 15-character name empty; the port keeps it.
    nm, _ = monitor()
    nm.handle_link(link(2, name="abcdefghijklmno"))
    assert nm.get_interface(2).name == "abcdefghijklmno"  # type: ignore[union-attr]


def test_dellink_of_unknown_interface_is_ignored() -> None:
    nm, rec = monitor()
    nm.handle_link(link(9, deleted=True))
    nm.handle_link(link(9, DOWN))
    assert rec.calls == []


def test_dellink_reports_delete_interface() -> None:
    nm, rec = monitor()
    nm.handle_link(link(2))
    nm.handle_link(link(2, deleted=True))
    assert rec.calls == [("new_interface", 2, None), ("delete_interface", 2, None)]


# -- carrier -------------------------------------------------------------------


def test_carrier_loss_and_recovery_are_link_down_and_link_up() -> None:
    nm, rec = monitor()
    nm.handle_link(link(2))
    nm.handle_address(addr(2, "192.0.2.1"))
    rec.calls.clear()
    nm.handle_link(link(2, NO_CARRIER))
    assert rec.calls == [("link_down", 2, None)]
    down = rec.interfaces[-1]
    assert not down.is_running and down.is_up and down.addrs == (SockAddr("192.0.2.1"),)
    assert nm.get_interface(2) is not None
    nm.handle_link(link(2, NO_CARRIER))  # another message while down
    nm.handle_link(link(2))
    assert rec.calls[1:] == [("update_interface", 2, None), ("link_up", 2, None)]
    assert rec.interfaces[-1].addrs == (SockAddr("192.0.2.1"),)


def test_address_changes_while_the_carrier_is_down_are_reported() -> None:
    nm, rec = monitor()
    nm.handle_link(link(2))
    nm.handle_link(link(2, NO_CARRIER))
    nm.handle_address(addr(2, "203.0.113.5"))
    nm.handle_address(addr(2, "203.0.113.5", deleted=True))
    assert rec.calls[2:] == [("new_local_address", 2, "203.0.113.5"),
                             ("delete_local_address", 2, "203.0.113.5")]


def test_carrier_events_off_behaves_like_c() -> None:
    nm, rec = monitor(carrier_events=False)
    nm.handle_link(link(2))
    nm.handle_address(addr(2, "192.0.2.1"))
    nm.handle_link(link(2, NO_CARRIER))
    nm.handle_link(link(2))
    assert rec.calls == [("new_interface", 2, None), ("new_local_address", 2, "192.0.2.1"),
                         ("delete_interface", 2, None), ("new_interface", 2, None)]
    assert nm.get_interface(2).addrs == ()  # type: ignore[union-attr]


def test_up_without_carrier_collects_addresses_until_ready() -> None:
    nm, rec = monitor()
    nm.handle_link(link(4, NO_CARRIER))
    nm.handle_address(addr(4, "198.51.100.9"))
    assert rec.calls == [] and nm.interfaces() == []
    nm.handle_link(link(4))
    assert rec.calls == [("new_interface", 4, None), ("new_local_address", 4, "198.51.100.9")]


def test_up_without_carrier_then_down_is_forgotten_silently() -> None:
    nm, rec = monitor()
    nm.handle_link(link(4, NO_CARRIER))
    nm.handle_address(addr(4, "198.51.100.9"))
    nm.handle_link(link(4, DOWN))
    nm.handle_link(link(4))
    assert rec.calls == [("new_interface", 4, None)]


# -- addresses -----------------------------------------------------------------


def test_initial_addresses_without_existing_are_silent_and_unfiltered() -> None:
    nm, rec = monitor(NotifyFlags.SKIP_LINK_LOCAL)
    nm.handle_link(link(2), initial=True)
    nm.handle_address(addr(2, "192.0.2.1"), initial=True)
    nm.handle_address(addr(2, "fe80::1", scope=253), initial=True)
    assert rec.calls == []
    assert nm.get_interface(2).addrs == (SockAddr("192.0.2.1"), SockAddr("fe80::1"))  # type: ignore[union-attr]
    late = Recorder()
    nm.replay(late)
    assert late.calls == []
    nm.handle_address(addr(2, "192.0.2.1", deleted=True))
    assert rec.calls == [("delete_local_address", 2, "192.0.2.1")]


def test_existing_notifies_startup_addresses_with_filters() -> None:
    nm, rec = monitor(NotifyFlags.EXISTING | NotifyFlags.SKIP_LINK_LOCAL)
    nm.handle_link(link(2), initial=True)
    nm.handle_address(addr(2, "192.0.2.1"), initial=True)
    nm.handle_address(addr(2, "fe80::1", scope=253), initial=True)
    nm.handle_address(addr(2, "2001:db8:1::1"), initial=True)
    assert rec.calls == [("new_local_address", 2, "192.0.2.1"),
                         ("new_local_address", 2, "2001:db8:1::1")]
    assert nm.get_interface(2).addrs == (SockAddr("192.0.2.1"), SockAddr("2001:db8:1::1"))  # type: ignore[union-attr]


def test_replay_gives_a_late_subscriber_the_announced_addresses() -> None:
    nm, _ = monitor(NotifyFlags.EXISTING)
    nm.handle_link(link(3), initial=True)
    nm.handle_link(link(2), initial=True)
    nm.handle_address(addr(3, "198.51.100.1"), initial=True)
    nm.handle_address(addr(2, "192.0.2.1"), initial=True)
    nm.handle_address(addr(2, "192.0.2.2"))
    late = Recorder()
    nm.replay(late)
    # In the order the kernel reported them, across interfaces (as C notifies
    # them while the dump arrives; addr_adv's endpoint IDs follow this order).
    assert late.calls == [("new_local_address", 3, "198.51.100.1"),
                          ("new_local_address", 2, "192.0.2.1"),
                          ("new_local_address", 2, "192.0.2.2")]
    both = Recorder()
    nm.handle_link(link(3, NO_CARRIER))
    nm.replay(both, interfaces=True)
    assert both.calls == [("new_interface", 2, None), ("new_interface", 3, None),
                          ("link_down", 3, None)] + late.calls


def test_skip_link_local_at_runtime() -> None:
    nm, rec = monitor(NotifyFlags.SKIP_LINK_LOCAL)
    nm.handle_link(link(2))
    nm.handle_address(addr(2, "fe80::abcd", scope=253))
    nm.handle_address(addr(2, "2001:db8:1::1"))
    assert rec.calls[1:] == [("new_local_address", 2, "2001:db8:1::1")]
    assert nm.get_interface(2).addrs == (SockAddr("2001:db8:1::1"),)  # type: ignore[union-attr]


def test_link_local_reported_without_the_flag() -> None:
    nm, rec = monitor()
    nm.handle_link(link(2))
    nm.handle_address(addr(2, "fe80::abcd", scope=253))
    assert rec.calls[1:] == [("new_local_address", 2, "fe80::abcd")]


def test_skip_loopback_at_runtime() -> None:
    nm, rec = monitor(NotifyFlags.SKIP_LOOPBACK, monitor_loopback=True)
    nm.handle_link(link(1, LOOPBACK, "lo"))
    nm.handle_address(addr(1, "127.0.0.1", scope=254))
    nm.handle_address(addr(1, "::1", scope=254))
    nm.handle_address(addr(1, "203.0.113.1"))
    assert rec.calls == [("new_interface", 1, None), ("new_local_address", 1, "203.0.113.1")]


def test_loopback_addresses_reported_without_skip_loopback() -> None:
    nm, rec = monitor(monitor_loopback=True)
    nm.handle_link(link(1, LOOPBACK, "lo"))
    nm.handle_address(addr(1, "127.0.0.1", scope=254))
    assert rec.calls[1:] == [("new_local_address", 1, "127.0.0.1")]


def test_duplicate_newaddr_is_not_notified(caplog: pytest.LogCaptureFixture) -> None:
    nm, rec = monitor()
    nm.handle_link(link(2))
    caplog.set_level(logging.DEBUG, "mptcpd.pm")
    nm.handle_address(addr(2, "192.0.2.1"))
    nm.handle_address(addr(2, "192.0.2.1"))
    assert rec.calls.count(("new_local_address", 2, "192.0.2.1")) == 1
    assert "Network address information updated." in caplog.messages


def test_unknown_deladdr_and_untracked_interface_are_ignored() -> None:
    nm, rec = monitor()
    nm.handle_link(link(2))
    nm.handle_address(addr(2, "192.0.2.1", deleted=True))
    nm.handle_address(addr(7, "192.0.2.9"))
    assert rec.calls == [("new_interface", 2, None)]


def test_find_interface_by_ip_ignores_port() -> None:
    nm, _ = monitor()
    nm.handle_link(link(2))
    nm.handle_link(link(3))
    nm.handle_address(addr(3, "198.51.100.1"))
    found = nm.find_interface(SockAddr("198.51.100.1", 8080))
    assert found is not None and found.index == 3
    assert nm.find_interface(SockAddr("198.51.100.2")) is None


# -- IFA_LOCAL versus IFA_ADDRESS ------------------------------------------------


RTM_NEWADDR = 20
IFA_ADDRESS = 1
IFA_LOCAL = 2


def _ifaddr(family: int, attrs: list[tuple[int, str]], prefixlen: int = 32,
            scope: int = 0, index: int = 6) -> bytes:
    """A raw RTM_NEWADDR message: nlmsghdr, struct ifaddrmsg, rtattrs."""
    body = struct.pack("=BBBBI", family, prefixlen, 0x80, scope, index)
    for kind, ip in attrs:
        packed = ipaddress.ip_address(ip).packed
        body += struct.pack("=HH", 4 + len(packed), kind) + packed
    return struct.pack("=IHHII", 16 + len(body), RTM_NEWADDR, 0, 0, 0) + body


def _one_address(data: bytes) -> AddressMessage:
    events = parse(data)
    assert len(events) == 1 and isinstance(events[0], AddressMessage)
    return events[0]


def test_ifa_local_is_preferred_on_point_to_point_links() -> None:
    rec = _one_address(_ifaddr(socket.AF_INET, [(IFA_ADDRESS, "198.51.100.2"),
                                                (IFA_LOCAL, "198.51.100.1")]))
    assert rec.ip == ipaddress.ip_address("198.51.100.1")
    assert rec.peer == ipaddress.ip_address("198.51.100.2")
    assert rec.index == 6 and not rec.deleted


def test_ifa_address_is_used_without_ifa_local() -> None:
    rec = _one_address(_ifaddr(socket.AF_INET6, [(IFA_ADDRESS, "fe80::5")], 64, scope=253))
    assert rec.ip == ipaddress.ip_address("fe80::5") and rec.peer is None
    assert rec.scope == 253 and rec.family == socket.AF_INET6


def test_same_local_and_address_has_no_peer() -> None:
    rec = _one_address(_ifaddr(socket.AF_INET, [(IFA_ADDRESS, "192.0.2.1"),
                                                (IFA_LOCAL, "192.0.2.1")], 24))
    assert rec.peer is None and rec.prefixlen == 24


def test_non_inet_addresses_are_dropped() -> None:
    assert parse(_ifaddr(socket.AF_PACKET, [])) == []


# -- check_route -----------------------------------------------------------------


class FakeRoutes:
    """A route lookup that fails until ``default`` is set."""

    def __init__(self) -> None:
        self.default: dict[int, int] = {}  # family -> oif of the default route
        self.calls: list[tuple[int, int]] = []
        self.answer: RouteLookup | None = None
        self.gate: asyncio.Event | None = None
        self.raise_error = False

    async def __call__(self, family: int, ifindex: int) -> RouteLookup:
        self.calls.append((family, ifindex))
        if self.gate is not None:
            await self.gate.wait()
        if self.raise_error:
            raise OSError(errno.EBADF, "closed")
        if self.answer is not None:
            return self.answer
        if family in self.default:
            return RouteLookup(oif=self.default[family])
        return RouteLookup(error=errno.EHOSTUNREACH)


def route_monitor(routes: FakeRoutes, wait: float = 60.0,
                  flags: NotifyFlags = NotifyFlags.CHECK_ROUTE) -> tuple[NetworkMonitor, Recorder]:
    nm, rec = monitor(flags, route_lookup=routes, route_wait_timeout=wait)
    nm.handle_link(link(2))
    rec.calls.clear()
    return nm, rec


async def test_check_route_notifies_when_the_default_route_exists() -> None:
    routes = FakeRoutes()
    routes.default[socket.AF_INET] = 2
    nm, rec = route_monitor(routes)
    nm.handle_address(addr(2, "203.0.113.10"))
    assert rec.calls == []  # held until the lookup answers
    await until(lambda: rec.calls)
    assert rec.calls == [("new_local_address", 2, "203.0.113.10")]
    assert routes.calls == [(socket.AF_INET, 2)]
    await nm.close()


async def test_check_route_c_schedule_gives_up_after_five_lookups(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "mptcpd.pm")
    routes = FakeRoutes()
    nm, rec = route_monitor(routes, wait=0)
    nm.handle_address(addr(2, "203.0.113.10"))
    await until(lambda: nm.address_state(SockAddr("203.0.113.10")) is AddressState.ABANDONED)
    assert len(routes.calls) == 5
    assert rec.calls == []
    assert caplog.messages.count(
        "can't resolved default route from 203.0.113.10 interface 2: -113") == 5
    assert "timeout while waiting for default route on address 203.0.113.10" in caplog.messages
    # the address stays recorded, and its deletion is still reported
    nm.handle_address(addr(2, "203.0.113.10", deleted=True))
    assert rec.calls == [("delete_local_address", 2, "203.0.113.10")]
    await nm.close()


def lookups(routes: FakeRoutes, family: int) -> int:
    return sum(1 for f, _ in routes.calls if f == family)


async def test_check_route_waits_for_a_route_event_then_notifies() -> None:
    routes = FakeRoutes()
    nm, rec = route_monitor(routes)
    nm.handle_address(addr(2, "203.0.113.10"))
    nm.handle_address(addr(2, "2001:db8:1::10"))
    # Each check's fifth lookup fails and, in the same step, the check
    # starts waiting for route changes.
    await until(lambda: lookups(routes, socket.AF_INET) == 5
                and lookups(routes, socket.AF_INET6) == 5)
    assert nm.address_state(SockAddr("203.0.113.10")) is AddressState.PENDING
    # An IPv6 route wakes the IPv6 check, not the IPv4 one.  The IPv6
    # lookup is the barrier: had the IPv4 check been woken by the same
    # message, it would have been woken first (its address came first) and
    # would have looked up before the IPv6 check.
    nm.handle_route(RouteMessage(socket.AF_INET6, None, 0, 2, 254))
    await until(lambda: lookups(routes, socket.AF_INET6) == 6)
    assert lookups(routes, socket.AF_INET) == 5
    # an unrelated IPv4 route: one more lookup, still no default route
    nm.handle_route(RouteMessage(socket.AF_INET, ipaddress.ip_address("198.51.100.0"), 24, 3, 254))
    await until(lambda: lookups(routes, socket.AF_INET) == 6)
    assert rec.calls == []
    # the DHCP client installs the default route
    routes.default[socket.AF_INET] = 2
    nm.handle_route(RouteMessage(socket.AF_INET, None, 0, 2, 254))
    await until(lambda: rec.calls)
    assert rec.calls == [("new_local_address", 2, "203.0.113.10")]
    assert lookups(routes, socket.AF_INET) == 7
    assert nm.address_state(SockAddr("203.0.113.10")) is AddressState.ANNOUNCED
    assert nm.address_state(SockAddr("2001:db8:1::10")) is AddressState.PENDING
    assert lookups(routes, socket.AF_INET6) == 6
    await nm.close()


async def test_check_route_gives_up_at_the_deadline(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "mptcpd.pm")
    routes = FakeRoutes()
    nm, rec = route_monitor(routes, wait=0.2)
    nm.handle_address(addr(2, "203.0.113.10"))
    await until(lambda: nm.address_state(SockAddr("203.0.113.10")) is AddressState.ABANDONED)
    assert "timeout while waiting for default route on address 203.0.113.10" in caplog.messages
    # While nothing changed, from the fifth lookup to the deadline, the
    # check did not poll.
    assert len(routes.calls) == 5
    # A later route change does not revive it.  The barrier: an address
    # added after that route change is checked and notified; a revived check
    # would have been started before it and would have notified first.
    routes.default[socket.AF_INET] = 2
    nm.handle_route(RouteMessage(socket.AF_INET, None, 0, 2, 254))
    nm.handle_address(addr(2, "203.0.113.11"))
    await until(lambda: ("new_local_address", 2, "203.0.113.11") in rec.calls)
    assert rec.calls == [("new_local_address", 2, "203.0.113.11")]
    assert len(routes.calls) == 6
    assert nm.address_state(SockAddr("203.0.113.10")) is AddressState.ABANDONED
    await nm.close()


@pytest.mark.parametrize("answer,message", [
    (RouteLookup(dst=ipaddress.ip_address("192.0.2.0"), dst_len=24, oif=2),
     "found non-default route with destination 192.0.2.0"),
    (RouteLookup(oif=3), "interface mismatch 3:2"),
])
async def test_check_route_rejects_non_default_or_other_interface(
        caplog: pytest.LogCaptureFixture, answer: RouteLookup, message: str) -> None:
    caplog.set_level(logging.INFO, "mptcpd.pm")
    routes = FakeRoutes()
    routes.answer = answer
    nm, rec = route_monitor(routes, wait=0)
    nm.handle_address(addr(2, "203.0.113.10"))
    await until(lambda: nm.address_state(SockAddr("203.0.113.10")) is AddressState.ABANDONED)
    assert caplog.messages.count(message) == 5
    assert rec.calls == []
    await nm.close()


async def test_check_route_lookup_that_cannot_be_sent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "mptcpd.pm")
    routes = FakeRoutes()
    routes.raise_error = True
    nm, rec = route_monitor(routes)
    nm.handle_address(addr(2, "203.0.113.10"))
    await until(lambda: nm.address_state(SockAddr("203.0.113.10")) is AddressState.ABANDONED)
    assert "Route lookup failed" in caplog.messages
    assert len(routes.calls) == 1 and rec.calls == []
    await nm.close()


async def test_address_deleted_during_route_check_is_never_notified() -> None:
    routes = FakeRoutes()
    routes.default[socket.AF_INET] = 2
    routes.gate = asyncio.Event()  # the lookup hangs until released
    nm, rec = route_monitor(routes)
    nm.handle_address(addr(2, "203.0.113.10"))
    await until(lambda: routes.calls)
    nm.handle_address(addr(2, "203.0.113.10", deleted=True))
    routes.gate.set()
    # The barrier: an address added now is checked (its lookup passes the
    # open gate at once) and notified; the first check, had it survived the
    # deletion, was woken by the gate earlier and would have notified first.
    nm.handle_address(addr(2, "203.0.113.11"))
    await until(lambda: ("new_local_address", 2, "203.0.113.11") in rec.calls)
    assert rec.calls == [("delete_local_address", 2, "203.0.113.10"),
                         ("new_local_address", 2, "203.0.113.11")]
    await nm.close()


async def test_interface_removed_during_route_check_is_never_notified() -> None:
    routes = FakeRoutes()
    nm, rec = route_monitor(routes)
    nm.handle_address(addr(2, "203.0.113.10"))
    await until(lambda: len(routes.calls) == 5)
    nm.handle_link(link(2, deleted=True))
    routes.default[socket.AF_INET] = 2
    nm.handle_route(RouteMessage(socket.AF_INET, None, 0, 2, 254))
    # The barrier: the interface comes back with a new address, whose check
    # looks up and notifies; the first check, had the route change woken
    # it, would have run (and looked up) before it.
    nm.handle_link(link(2))
    nm.handle_address(addr(2, "203.0.113.11"))
    await until(lambda: ("new_local_address", 2, "203.0.113.11") in rec.calls)
    assert rec.calls == [("delete_interface", 2, None), ("new_interface", 2, None),
                         ("new_local_address", 2, "203.0.113.11")]
    assert len(routes.calls) == 6
    await nm.close()


async def test_existing_with_check_route_at_startup() -> None:
    routes = FakeRoutes()
    routes.default[socket.AF_INET6] = 2
    nm, rec = monitor(NotifyFlags.EXISTING | NotifyFlags.CHECK_ROUTE, route_lookup=routes)
    nm.handle_link(link(2), initial=True)
    nm.handle_address(addr(2, "2001:db8:1::1"), initial=True)
    await until(lambda: rec.calls)
    assert rec.calls == [("new_local_address", 2, "2001:db8:1::1")]
    await nm.close()


# -- subscribers -------------------------------------------------------------------


def test_register_rejects_what_cannot_be_called(caplog: pytest.LogCaptureFixture) -> None:
    nm = NetworkMonitor()
    assert not nm.register(object())  # type: ignore[arg-type]
    assert not nm.register(None)  # type: ignore[arg-type]
    assert "No network monitor event tracking ops were set." in caplog.messages


def test_subscribers_in_registration_order_and_isolated(
        caplog: pytest.LogCaptureFixture) -> None:
    nm = NetworkMonitor()
    order: list[str] = []

    def subscriber(name: str) -> Callable[[ev.NetworkEvent], None]:
        def receive(event: ev.NetworkEvent) -> None:
            order.append(f"{name} {event.HOOK}")
        return receive

    def broken(event: ev.NetworkEvent) -> None:
        order.append(f"broken {event.HOOK}")
        raise RuntimeError("boom")

    first = subscriber("first")
    assert nm.register(first)
    assert nm.register(broken)
    assert nm.register(subscriber("third"))
    nm.handle_link(link(2))
    assert order == ["first new_interface", "broken new_interface", "third new_interface"]
    assert "network monitor subscriber" in caplog.text and "new_interface" in caplog.text
    assert nm.unregister(first) and not nm.unregister(first)
    nm.handle_address(addr(2, "192.0.2.1"))
    assert order[3:] == ["broken new_local_address", "third new_local_address"]


# -- resynchronisation ---------------------------------------------------------------


def test_reconcile_reports_only_the_differences() -> None:
    nm, rec = monitor()
    for msg in (link(2), link(3), link(4)):
        nm.handle_link(msg, initial=True)
    nm.handle_address(addr(2, "192.0.2.1"), initial=True)
    nm.handle_address(addr(2, "192.0.2.2"), initial=True)
    nm.handle_address(addr(3, "198.51.100.1"), initial=True)
    nm.reconcile(
        [link(2), link(3, NO_CARRIER), link(5)],
        [addr(2, "192.0.2.1"), addr(2, "192.0.2.3"), addr(3, "198.51.100.1"),
         addr(5, "203.0.113.5")],
    )
    assert sorted(rec.calls, key=str) == sorted([
        ("delete_interface", 4, None),
        ("link_down", 3, None),
        ("new_interface", 5, None),
        ("delete_local_address", 2, "192.0.2.2"),
        ("new_local_address", 2, "192.0.2.3"),
        ("new_local_address", 5, "203.0.113.5"),
    ], key=str)


def test_find_interface_takes_an_ipv4_mapped_address() -> None:
    nm, _ = monitor()
    nm.handle_link(link(2))
    nm.handle_address(addr(2, "192.0.2.1"))
    found = nm.find_interface(SockAddr(ipaddress.ip_address("::ffff:192.0.2.1"), 5201))
    assert found is not None and found.index == 2


# -- snapshots -----------------------------------------------------------------


def test_snapshots_are_reused_until_the_interface_changes() -> None:
    nm, _ = monitor()
    nm.handle_link(link(2), initial=True)
    nm.handle_address(addr(2, "192.0.2.1"), initial=True)
    first = nm.get_interface(2)
    assert first is not None and nm.get_interface(2) is first
    assert nm.interfaces() == [first] and nm.interfaces()[0] is first
    nm.handle_address(addr(2, "198.51.100.1"))
    second = nm.get_interface(2)
    assert second is not first
    assert second is not None and [str(a) for a in second.addrs] == ["192.0.2.1", "198.51.100.1"]
    nm.handle_link(link(2, NO_CARRIER))
    third = nm.get_interface(2)
    assert third is not None and not third.is_running and second.is_running
    nm.handle_address(addr(2, "192.0.2.1", deleted=True))
    fourth = nm.get_interface(2)
    assert fourth is not None and [str(a) for a in fourth.addrs] == ["198.51.100.1"]
    assert [str(a) for a in third.addrs] == ["192.0.2.1", "198.51.100.1"]  # snapshots stay


def test_an_interface_finds_the_first_entry_of_an_address_while_entries_come_and_go() -> None:
    from mptcpd.pm.network_monitor import _Address, _Interface

    iface = _Interface(3, "eth0", IFF_UP | IFF_RUNNING, 1, "UP", True, True)
    a, b = SockAddr("192.0.2.1"), SockAddr("2001:db8::1")
    first, second, other = (_Address(a, 0, AddressState.ANNOUNCED),
                            _Address(a, 0, AddressState.ANNOUNCED),
                            _Address(b, 0, AddressState.ANNOUNCED))
    for entry in (first, other, second):
        iface.add(entry)
    assert iface.find(SockAddr("192.0.2.1")) is first and iface.find(b) is other
    iface.remove(first)
    assert iface.find(a) is second
    iface.remove(second)
    assert iface.find(a) is None and iface.find(b) is other
    iface.remove(other)
    assert iface.find(b) is None and iface.addrs == []


@pytest.mark.parametrize("readdress", [False, True])
def test_the_interface_list_follows_every_change_after_being_asked_for(
        readdress: bool) -> None:
    """Path managers ask for the interfaces on every connection: the answer
    is kept, and must change as soon as an interface comes, goes, or is
    hidden and shown again (an interface going down is dropped, or with
    ``readdress`` kept hidden)."""
    nm, _ = monitor(readdress=readdress)
    for msg in (link(3), link(2)):
        nm.handle_link(msg, initial=True)
    assert [i.index for i in nm.interfaces()] == [2, 3]
    nm.handle_link(link(1))
    assert [i.index for i in nm.interfaces()] == [1, 2, 3]
    nm.handle_link(link(3, deleted=True))
    assert [i.index for i in nm.interfaces()] == [1, 2]
    nm.handle_link(link(1, DOWN))
    assert [i.index for i in nm.interfaces()] == [2]
    nm.handle_link(link(1))
    assert [i.index for i in nm.interfaces()] == [1, 2]
    nm.handle_link(link(1, deleted=True))
    nm.handle_address(addr(2, "192.0.2.1"))
    assert nm.find_interface(SockAddr("192.0.2.1", 80)) == nm.interfaces()[0]


# -- find_interface's answers between changes -------------------------------------

PROBES = ["198.51.100.1", "198.51.100.2", "2001:db8::1", "::ffff:198.51.100.1", "192.0.2.9"]
_OPS = st.one_of(
    st.tuples(st.just("link"), st.integers(2, 4),
              st.sampled_from([READY, NO_CARRIER, DOWN]), st.booleans()),
    st.tuples(st.just("addr"), st.integers(2, 4), st.sampled_from(PROBES[:3] + ["192.0.2.9"]),
              st.booleans()),
    st.tuples(st.just("policy"), st.sampled_from([(), ("eth3",), ("eth2", "eth4")])),
)


class _Asking(Recorder):
    """A subscriber that asks where each probe is on every event (answers
    given while the monitor is still changing must not outlive the change)."""

    def __init__(self, nm: NetworkMonitor) -> None:
        super().__init__()
        self.nm = nm

    def __call__(self, event: ev.NetworkEvent) -> None:
        super().__call__(event)
        for ip in PROBES:
            self.nm.find_interface(SockAddr(ip))


@settings(FUZZ, max_examples=300)
@given(st.lists(_OPS, max_size=25))
def test_find_interface_answers_as_a_fresh_lookup_after_every_change(ops: list[tuple[Any, ...]]) -> None:
    """Answers are remembered between changes: after any sequence of link,
    address and policy changes, each is what a lookup from scratch gives."""
    nm = NetworkMonitor(NotifyFlags(0), readdress=False)
    assert nm.register(_Asking(nm))

    def answers() -> list[int | None]:
        found = [nm.find_interface(SockAddr(ip)) for ip in PROBES]
        return [f.index if f is not None else None for f in found]

    for op in ops:
        answers()  # remembered before the change
        if op[0] == "link":
            _, index, flags, deleted = op
            nm.handle_link(link(index, flags, deleted=deleted))
        elif op[0] == "addr":
            _, index, ip, deleted = op
            nm.handle_address(addr(index, ip, deleted=deleted))
        else:
            nm.set_policy(Policy(deny=op[1]))
        remembered = answers()
        nm._found.clear()
        assert remembered == answers(), op

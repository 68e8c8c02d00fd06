"""The network monitor against the real kernel, inside a lab's client namespace.

Each test starts :class:`NetworkMonitor` on an rtnetlink socket opened in the
lab's client namespace (``netns=lab.client``), changes links, addresses and
routes there with ``ip -n``, and checks what the subscribers were told.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.lab import Lab, list_namespaces
from mptcpd.netlink.rtnl_monitor import RouteLookup, RtnlMonitor, RtnlMonitorError
from mptcpd.daemon.network import NetworkFeed
from mptcpd.netlink.genl_commands import CommandChannel
from mptcpd.pm.network_monitor import AddressState, NetworkMonitor
from mptcpd.types import NotifyFlags, SockAddr
from tests.nm_support import Recorder as NmRecorder

TIMEOUT = 10.0


def Recorder() -> NmRecorder:
    """A subscriber recording (op, interface name, address)."""
    return NmRecorder(key=lambda i: i.name)


async def until(cond: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    """Wait for ``cond`` while the loop runs, with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def kernel_addresses(lab: Lab, ifname: str) -> set[str]:
    out = lab.ip(lab.client, "-j", "addr", "show", "dev", ifname).stdout
    return {a["local"] for a in json.loads(out)[0]["addr_info"]}


class Monitors:
    """Starts monitors in the lab's client namespace and closes them."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.started: list[NetworkFeed] = []

    async def start(self, flags: NotifyFlags = NotifyFlags(0),
                    **kwargs: Any) -> tuple[NetworkMonitor, Recorder]:
        source = kwargs.pop("source", None)
        nm = NetworkMonitor(flags, **kwargs)
        rec = Recorder()
        assert nm.register(rec)
        feed = NetworkFeed(nm, (lambda: source) if source is not None else None,
                           netns=self.lab.client)
        await feed.start()
        self.started.append(feed)
        return nm, rec

    async def close(self) -> None:
        for feed in self.started:
            await feed.close()


@pytest.fixture
async def monitors(lab: Lab) -> AsyncIterator[Monitors]:
    m = Monitors(lab)
    try:
        yield m
    finally:
        await m.close()


async def test_initial_dump_sees_lab_links_and_addresses(lab: Lab, monitors: Monitors) -> None:
    nm, rec = await monitors.start()
    names = [i.name for i in nm.interfaces()]
    assert names == [link.client_if for link in lab.links]  # lo not tracked
    for link in lab.links:
        iface = next(i for i in nm.interfaces() if i.name == link.client_if)
        assert iface.is_up and iface.is_running
        assert SockAddr(link.client4) in iface.addrs
        assert SockAddr(link.client6) in iface.addrs
    assert rec.calls == []  # startup state is recorded silently


async def test_address_add_and_remove(lab: Lab, monitors: Monitors) -> None:
    nm, rec = await monitors.start()
    lab.ip(lab.client, "addr", "add", "203.0.113.5/24", "dev", "c1")
    await until(lambda: rec.ops("new_local_address"), "new_local_address")
    assert rec.ops("new_local_address") == [("new_local_address", "c1", "203.0.113.5")]
    found = nm.find_interface(SockAddr("203.0.113.5"))
    assert found is not None and found.name == "c1"
    lab.ip(lab.client, "-6", "addr", "add", "2001:db8:1::99/64", "dev", "c1", "nodad")
    await until(lambda: len(rec.ops("new_local_address")) == 2, "IPv6 new_local_address")
    assert rec.ops("new_local_address")[1] == ("new_local_address", "c1", "2001:db8:1::99")
    lab.ip(lab.client, "addr", "del", "203.0.113.5/24", "dev", "c1")
    await until(lambda: rec.ops("delete_local_address"), "delete_local_address")
    assert rec.ops("delete_local_address") == [("delete_local_address", "c1", "203.0.113.5")]
    assert nm.find_interface(SockAddr("203.0.113.5")) is None


async def test_link_down_and_up(lab: Lab, monitors: Monitors) -> None:
    nm, rec = await monitors.start()
    link = lab.links[1]
    lab.ip(lab.client, "link", "set", link.client_if, "down")
    await until(lambda: rec.ops("delete_interface"), "delete_interface")
    gone = rec.last("delete_interface", link.client_if)
    assert gone.is_running  # the last recorded state, before the change
    assert SockAddr(link.client4) in gone.addrs
    assert link.client_if not in [i.name for i in nm.interfaces()]
    # no per-address removal for the interface's addresses (as in mptcpd)
    assert ("delete_local_address", link.client_if, str(link.client4)) not in rec.calls
    lab.ip(lab.client, "link", "set", link.client_if, "up")
    await until(lambda: rec.ops("new_interface"), "new_interface")
    assert rec.ops("new_interface") == [("new_interface", link.client_if, None)]
    assert nm.get_interface(rec.last("new_interface", link.client_if).index) is not None


async def test_carrier_loss_and_recovery(lab: Lab, monitors: Monitors) -> None:
    nm, rec = await monitors.start()
    link = lab.links[1]
    lab.set_carrier(link, up=False)
    await until(lambda: rec.ops("link_down"), "link_down")
    down = rec.last("link_down", link.client_if)
    assert down.is_up and not down.is_running
    assert SockAddr(link.client4) in down.addrs
    # the address is still configured, the interface still tracked
    assert str(link.client4) in kernel_addresses(lab, link.client_if)
    assert link.client_if in [i.name for i in nm.interfaces()]
    assert not rec.ops("delete_interface", "delete_local_address")
    lab.set_carrier(link, up=True)
    await until(lambda: rec.ops("link_up"), "link_up")
    up = rec.last("link_up", link.client_if)
    assert up.is_running and SockAddr(link.client4) in up.addrs
    assert rec.ops("link_down", "link_up") == [("link_down", link.client_if, None),
                                               ("link_up", link.client_if, None)]
    assert not rec.ops("delete_interface", "new_interface")


async def test_carrier_events_off_gives_c_behaviour(lab: Lab, monitors: Monitors) -> None:
    nm, rec = await monitors.start(carrier_events=False)
    link = lab.links[0]
    lab.set_carrier(link, up=False)
    await until(lambda: rec.ops("delete_interface"), "delete_interface")
    lab.set_carrier(link, up=True)
    await until(lambda: rec.ops("new_interface"), "new_interface")
    assert not rec.ops("link_down", "link_up")


async def test_existing_notifies_startup_addresses_and_replays(
        lab: Lab, monitors: Monitors) -> None:
    nm, rec = await monitors.start(NotifyFlags.EXISTING | NotifyFlags.SKIP_LINK_LOCAL)
    expected = []
    for link in lab.links:
        expected += [("new_local_address", link.client_if, str(link.client4)),
                     ("new_local_address", link.client_if, str(link.client6))]
    assert sorted(rec.ops("new_local_address")) == sorted(expected)
    late = Recorder()
    nm.replay(late)
    assert sorted(late.calls) == sorted(expected)
    # without existing: nothing at startup, nothing to replay
    nm2, rec2 = await monitors.start()
    late2 = Recorder()
    nm2.replay(late2)
    assert rec2.calls == [] and late2.calls == []


@pytest.mark.lab(links=1, ipv6=True)
async def test_skip_link_local(lab: Lab, monitors: Monitors) -> None:
    _, plain = await monitors.start()
    _, skip = await monitors.start(NotifyFlags.SKIP_LINK_LOCAL)
    # down and up: the kernel drops and regenerates the fe80:: address
    lab.ip(lab.client, "link", "set", "c1", "down")
    lab.ip(lab.client, "link", "set", "c1", "up")
    lab.wait_link_running(lab.client, "c1")

    def link_local(rec: Recorder) -> list[str]:
        return [c[2] for c in rec.ops("new_local_address")
                if c[2] and ipaddress.ip_address(c[2]).is_link_local]

    await until(lambda: link_local(plain), "fe80:: on the plain monitor")
    await until(lambda: skip.ops("new_interface"), "new_interface on the skipping monitor")
    lab.ip(lab.client, "addr", "add", "203.0.113.6/24", "dev", "c1")  # a marker after it
    await until(lambda: skip.ops("new_local_address"), "marker on the skipping monitor")
    assert link_local(skip) == []
    assert skip.ops("new_local_address") == [("new_local_address", "c1", "203.0.113.6")]


async def test_skip_loopback(lab: Lab, monitors: Monitors) -> None:
    plain_nm, plain = await monitors.start(monitor_loopback=True)
    skip_nm, skip = await monitors.start(NotifyFlags.SKIP_LOOPBACK, monitor_loopback=True)
    assert "lo" in [i.name for i in skip_nm.interfaces()]
    lab.ip(lab.client, "addr", "add", "127.0.0.2/8", "dev", "lo")  # host scope
    lab.ip(lab.client, "addr", "add", "203.0.113.77/32", "dev", "lo")  # global scope
    await until(lambda: len(plain.ops("new_local_address")) == 2, "both on the plain monitor")
    await until(lambda: skip.ops("new_local_address"), "the global one on the skipping monitor")
    assert skip.ops("new_local_address") == [("new_local_address", "lo", "203.0.113.77")]
    assert skip_nm.find_interface(SockAddr("127.0.0.2")) is None
    assert plain_nm.find_interface(SockAddr("127.0.0.2")) is not None


async def test_check_route_waits_for_the_default_route(lab: Lab, monitors: Monitors) -> None:
    link = lab.links[1]
    nm, rec = await monitors.start(NotifyFlags.CHECK_ROUTE, route_wait_timeout=30)
    c_nm, c_rec = await monitors.start(NotifyFlags.CHECK_ROUTE, route_wait_timeout=0)
    lookups: list[RouteLookup] = []
    inner = nm.route_lookup
    assert inner is not None

    async def counting(family: int, ifindex: int) -> RouteLookup:
        result = await inner(family, ifindex)
        lookups.append(result)
        return result

    nm.route_lookup = counting
    addr = SockAddr("203.0.113.9")
    lab.ip(lab.client, "addr", "add", "203.0.113.9/24", "dev", link.client_if)
    # C's five quick lookups fail: no default route through that interface
    await until(lambda: len(lookups) >= 5, "the first five route lookups")
    assert all(r.error or r.dst is not None or r.oif != nm.find_interface(addr).index  # type: ignore[union-attr]
               for r in lookups)
    await until(lambda: c_nm.address_state(addr) is AddressState.ABANDONED,
                "the C-schedule monitor to give up")
    assert nm.address_state(addr) is AddressState.PENDING
    assert rec.ops("new_local_address") == []
    # a DHCP client would add this a while later
    lab.ip(lab.client, "route", "add", "default", "dev", link.client_if)
    await until(lambda: rec.ops("new_local_address"), "new_local_address after the route")
    assert rec.ops("new_local_address") == [("new_local_address", link.client_if, "203.0.113.9")]
    assert c_rec.ops("new_local_address") == []  # C never rechecks


async def test_rtnl_route_lookup(lab: Lab) -> None:
    mon = RtnlMonitor(lab.client)
    await mon.open()
    try:
        links = {l.name: l.index for l in await mon.dump_links()}
        miss = await mon.lookup_default_route(socket.AF_INET, links["c2"])
        assert miss.error != 0
        lab.ip(lab.client, "route", "add", "default", "dev", "c2")
        hit = await mon.lookup_default_route(socket.AF_INET, links["c2"])
        assert hit.error == 0 and hit.dst is None and hit.oif == links["c2"]
        six = await mon.lookup_default_route(socket.AF_INET6, links["c2"])
        assert six.error != 0
    finally:
        mon.close()


async def test_enobufs_resynchronises(lab: Lab, monitors: Monitors,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "mptcpd.netlink.rtnl_monitor")
    source = RtnlMonitor(lab.client, rcvbuf=4096)
    nm, rec = await monitors.start(source=source)
    batch = "".join(f"addr add 203.0.113.{i}/32 dev c1\n" for i in range(1, 201))
    # ip runs while this process's loop is blocked: the socket overflows
    lab.exec(lab.client, "ip", "-batch", "-", input=batch)
    await until(lambda: source.resyncs >= 1, "a resync after ENOBUFS")
    assert any("receive buffer overrun" in m for m in caplog.messages)
    await until(lambda: len(nm.get_interface(  # type: ignore[union-attr]
        next(i.index for i in nm.interfaces() if i.name == "c1")).addrs) >= 202,
        "all addresses recorded")
    for i in (1, 100, 200):
        found = nm.find_interface(SockAddr(f"203.0.113.{i}"))
        assert found is not None and found.name == "c1"
    reported = {c[2] for c in rec.ops("new_local_address")}
    assert {f"203.0.113.{i}" for i in range(1, 201)} <= reported
    # still following changes after the resync
    lab.ip(lab.client, "addr", "del", "203.0.113.1/32", "dev", "c1")
    await until(lambda: rec.ops("delete_local_address"), "delete after the resync")


async def test_missing_namespace_fails_cleanly_and_creates_nothing(
        lab_available: None, caplog: pytest.LogCaptureFixture) -> None:
    name = "mptcpd-lab-does-not-exist"
    feed = NetworkFeed(NetworkMonitor(), netns=name)
    with pytest.raises(RtnlMonitorError, match="Unable to monitor network device changes."):
        await feed.start()
    assert "Unable to monitor network device changes." in caplog.messages
    assert name not in list_namespaces()  # pyroute2 would create it by default
    assert not feed.running


async def test_a_lost_rtnetlink_socket_is_reopened_and_what_changed_meanwhile_reported(
        lab: Lab) -> None:
    """The feed's socket goes away (closed under it): the feed opens a new
    one, and the address added while none was open is reported from the
    new dump; changes after that are followed as usual."""
    sources: list[RtnlMonitor] = []

    def open_source() -> RtnlMonitor:
        sources.append(RtnlMonitor(lab.client))
        return sources[-1]

    nm = NetworkMonitor()
    rec = Recorder()
    assert nm.register(rec)
    feed = NetworkFeed(nm, open_source, retry_delays=(0.05,))
    await feed.start()
    try:
        sources[0].close()  # the socket is gone: its stream ends
        lab.ip(lab.client, "addr", "add", "203.0.113.77/32", "dev", "c1")
        await until(lambda: feed.reopened == 1, "the feed to reopen")
        await until(lambda: ("new_local_address", "c1", "203.0.113.77") in rec.calls,
                    "the address added while no socket was open")
        lab.ip(lab.client, "addr", "del", "203.0.113.77/32", "dev", "c1")
        await until(lambda: ("delete_local_address", "c1", "203.0.113.77") in rec.calls,
                    "a removal after the reopening")
        assert feed.running and len(sources) == 2
    finally:
        await feed.close()


async def test_an_address_change_and_the_commands_it_makes_are_handled_in_one_loop_turn(
        lab: Lab) -> None:
    """The daemon's address path: the rtnetlink datagram is read by the
    socket's reader callback, applied, and the commands a subscriber
    submits for it leave together and are answered before the loop's next
    turn (a callback the subscriber schedules first finds them answered)."""
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, int, bool]] = []
    async with CommandChannel(lab.client) as channel:
        def subscriber(event: Any) -> None:
            if event.HOOK != "new_local_address":
                return
            futures: list[asyncio.Future[Any]] = []
            # scheduled before the commands are submitted: runs on the next turn
            loop.call_soon(lambda: seen.append((str(event.addr), len(channel_sends),
                                                all(f.done() for f in futures))))
            futures += [channel.submit("kpm_get_limits"), channel.submit("kpm_get_limits")]

        channel_sends: list[int] = []
        real_send = channel._send

        def counting_send(*args: Any) -> None:
            channel_sends.append(len(args[1]))
            real_send(*args)

        channel._send = counting_send  # type: ignore[method-assign]
        nm = NetworkMonitor()
        assert nm.register(subscriber)
        feed = NetworkFeed(nm, netns=lab.client, batch=channel)
        await feed.start()
        try:
            lab.ip(lab.client, "addr", "add", "203.0.113.91/32", "dev", "c1")
            await until(lambda: seen, "the address")
            # two commands, one datagram, both answered in the turn that read the address
            assert seen == [("203.0.113.91", 1, True)] and channel_sends == [2]
            # A burst (five addresses added while this loop is blocked): one
            # wake-up reads them all, and the ten commands leave together.
            lab.exec(lab.client, "ip", "-batch", "-", input="".join(
                f"addr add 203.0.113.{i}/32 dev c1\n" for i in range(101, 106)))
            await until(lambda: len(seen) == 6, "the burst")
            assert [s[0] for s in seen[1:]] == [f"203.0.113.{i}" for i in range(101, 106)]
            assert all(s[2] for s in seen) and channel_sends == [2, 10]
        finally:
            await feed.close()


async def test_rtnl_follow_hands_over_records_per_datagram_and_ends_once_on_close(
        lab: Lab) -> None:
    """RtnlMonitor.follow on its own: an address added in the namespace
    comes as a list of records from the reader callback (no task), and
    closing the monitor ends the stream with None, once."""
    mon = RtnlMonitor(lab.client)
    await mon.open()
    await mon.dump_links()
    batches: list[tuple[list[Any], bool]] = []
    ends: list[BaseException | None] = []
    mon.follow(lambda records: batches.append((records, asyncio.current_task() is None)),
               ends.append)
    try:
        lab.ip(lab.client, "addr", "add", "203.0.113.93/32", "dev", "c1")
        await until(lambda: any(str(getattr(r, "ip", "")) == "203.0.113.93"
                                for records, _ in batches for r in records), "the address")
        assert all(outside_a_task for _, outside_a_task in batches)
        assert ends == []
    finally:
        mon.close()
    assert ends == [None]
    mon.close()
    assert ends == [None]

"""Every ``mptcp_pm`` command against the real kernel, read back independently.

The commands go to a :class:`CommandChannel` opened in the lab's client
namespace; kernel state is checked with iproute2 (``ip mptcp endpoint``,
``ip mptcp limits``, ``ip mptcp monitor``, ``ss -Mni``), never with our own
decoder alone.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import re
from typing import Any

import pytest

from mptcpd import events as ev
from mptcpd.errors import KernelError, NotReady
from mptcpd.lab import Lab, Process, wait_for
from mptcpd.netlink.command_messages import AddrInfo, Limits
from mptcpd.netlink.genl_commands import CommandChannel
from mptcpd.netlink.genl_events import EventReader
from mptcpd.pm.kernel import MPTCPD_LIMIT_RCV_ADD_ADDRS, MPTCPD_LIMIT_SUBFLOWS, UpstreamKernelPM
from mptcpd.types import AddrFlags, SockAddr
from tests.integration.test_events import collect, has, of

LOGGER = "mptcpd.netlink.genl_commands"


def sa(ip: Any, port: int = 0) -> SockAddr:
    return SockAddr(ipaddress.ip_address(str(ip)), port)


def ifindex(lab: Lab, ns: str, ifname: str) -> int:
    return int(json.loads(lab.ip(ns, "-j", "link", "show", "dev", ifname).stdout)[0]["ifindex"])


def raw_endpoints(lab: Lab, ns: str) -> dict[int, dict[str, Any]]:
    """``ip -j mptcp endpoint show`` keyed by id (keeps ``rawflags``)."""
    out = lab.ip(ns, "-j", "mptcp", "endpoint", "show").stdout.strip()
    return {int(e["id"]): e for e in json.loads(out or "[]")}


def error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.ERROR]


# -- in-kernel PM: endpoints and limits -------------------------------------


async def test_endpoints_add_get_dump_set_flags_delete_flush(lab: Lab) -> None:
    l1, l2 = lab.links
    c1 = ifindex(lab, lab.client, l1.client_if)
    async with CommandChannel(lab.client) as ch:
        pm = UpstreamKernelPM(ch)
        await pm.kpm_add_addr(sa(l1.client4), 1, AddrFlags.SUBFLOW, c1)
        await pm.kpm_add_addr(sa(l2.client6, 8080), 2, AddrFlags.BACKUP, 0)
        await pm.kpm_add_addr(sa(l2.client4), 3, AddrFlags.SUBFLOW | AddrFlags.LAMINAR, 0)

        eps = {e.id: e for e in lab.endpoints(lab.client)}
        assert (eps[1].address, eps[1].flags, eps[1].dev) == (
            str(l1.client4), {"subflow"}, l1.client_if)
        # port given -> the kernel got SIGNAL added and made the listener
        assert (eps[2].address, eps[2].flags, eps[2].port) == (
            str(l2.client6), {"signal", "backup"}, 8080)
        assert raw_endpoints(lab, lab.client)[3].get("rawflags") == "20" or \
            "laminar" in eps[3].flags  # iproute2 6.1 prints unknown bits raw

        first = AddrInfo(sa(l1.client4), 1, AddrFlags.SUBFLOW, c1)
        assert await pm.kpm_get_addr(1) == first
        dump = await pm.kpm_dump_addrs()
        assert sorted(dump, key=lambda i: i.id) == [
            first,
            AddrInfo(sa(l2.client6, 8080), 2, AddrFlags.SIGNAL | AddrFlags.BACKUP, 0),
            AddrInfo(sa(l2.client4), 3, AddrFlags.SUBFLOW | AddrFlags.LAMINAR, 0),
        ]

        await pm.kpm_set_flags(sa(l1.client4), AddrFlags.BACKUP)
        assert {e.id: e.flags for e in lab.endpoints(lab.client)}[1] == {"subflow", "backup"}
        await pm.kpm_set_flags(sa(l1.client4), AddrFlags.FULLMESH)
        assert {e.id: e.flags for e in lab.endpoints(lab.client)}[1] == {"subflow", "fullmesh"}
        await pm.kpm_set_flags(sa(l1.client4), 0)
        assert {e.id: e.flags for e in lab.endpoints(lab.client)}[1] == {"subflow"}
        # by id, on the laminar endpoint: backup joins the laminar bit
        await ch.set_flags(None, AddrFlags.BACKUP, id=3)
        assert (await pm.kpm_get_addr(3)).flags == (
            AddrFlags.SUBFLOW | AddrFlags.LAMINAR | AddrFlags.BACKUP)

        await pm.kpm_remove_addr(2)
        assert sorted(e.id for e in lab.endpoints(lab.client)) == [1, 3]
        await pm.kpm_flush_addrs()
        assert lab.endpoints(lab.client) == []
        assert await pm.kpm_dump_addrs() == []


async def test_limits_set_in_the_given_order_and_read_back(lab: Lab) -> None:
    async with CommandChannel(lab.client) as ch:
        pm = UpstreamKernelPM(ch)
        await pm.kpm_set_limits([(MPTCPD_LIMIT_SUBFLOWS, 4), (MPTCPD_LIMIT_RCV_ADD_ADDRS, 3)])
        assert lab.limits(lab.client) == {"add_addr_accepted": 3, "subflows": 4}
        assert await pm.kpm_get_limits() == Limits(rcv_add_addrs=3, subflows=4)
        await ch.set_limits(rcv_add_addrs=8)  # one limit only: the other stays
        assert lab.limits(lab.client) == {"add_addr_accepted": 8, "subflows": 4}
        assert await ch.get_limits() == Limits(8, 4)


async def test_duplicate_endpoint_fails_with_the_kernels_text(
        lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    l1 = lab.links[0]
    caplog.set_level(logging.ERROR, LOGGER)
    async with CommandChannel(lab.client) as ch:
        await ch.add_addr(sa(l1.client4), 1, AddrFlags.SUBFLOW)
        with pytest.raises(KernelError) as info:
            await ch.add_addr(sa(l1.client4), 2, AddrFlags.SUBFLOW)
    exc = info.value
    assert exc.op == "add_addr" and exc.errno in (errno.EBUSY, errno.EEXIST)
    assert exc.extack  # the kernel explains itself
    assert error_lines(caplog) == [f"add_addr: {exc.extack}: {os.strerror(exc.errno)}"]
    assert [e.id for e in lab.endpoints(lab.client)] == [1]


async def test_ninth_endpoint_is_out_of_range(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, LOGGER)
    async with CommandChannel(lab.client) as ch:
        for i in range(1, 9):
            await ch.add_addr(sa(f"203.0.113.{i}"), i, AddrFlags.SIGNAL)
        with pytest.raises(KernelError) as info:
            await ch.add_addr(sa("203.0.113.9"), 9, AddrFlags.SIGNAL)
    assert info.value.errno == errno.ERANGE
    assert error_lines(caplog) == [
        f"add_addr: {info.value.extack}: Numerical result out of range"]
    assert len(lab.endpoints(lab.client)) == 8


async def test_missing_endpoint_errors_without_stopping_the_queue(
        lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, LOGGER)
    async with CommandChannel(lab.client) as ch:
        missing = ch.get_addr(42)
        gone = ch.remove_addr(42)
        after = ch.get_limits()  # queued behind two failures
        with pytest.raises(KernelError) as info:
            await missing
        assert info.value.errno == errno.EINVAL
        with pytest.raises(KernelError):
            await gone
        assert isinstance(await after, Limits)
    lines = error_lines(caplog)
    assert lines[0] == "get_addr: address not found: Invalid argument"
    assert lines[1].startswith("remove_addr: ") and lines[1].endswith(": Invalid argument")


async def test_requests_resolve_in_submission_order_also_pipelined(lab: Lab) -> None:
    for in_flight in (1, 4):
        async with CommandChannel(lab.client, max_in_flight=in_flight) as ch:
            futures = []
            for n in range(1, 9):
                futures.append(ch.set_limits(subflows=n))
                futures.append(ch.get_limits())
            futures.append(ch.dump_addrs())
            results = [await f for f in futures]
        got = [r.subflows for r in results[1:-1:2]]
        assert got == list(range(1, 9)), in_flight
    assert lab.limits(lab.client)["subflows"] == 8


async def test_close_settles_every_future(lab: Lab) -> None:
    ch = CommandChannel(lab.client)
    await ch.open()
    futures = [ch.get_limits() for _ in range(50)]
    await ch.close()
    assert all(f.done() for f in futures)
    outcomes = [f.exception() or f.result() for f in futures]
    assert all(isinstance(o, (NotReady, Limits)) for o in outcomes)
    assert isinstance(outcomes[-1], NotReady)  # never written: failed, not lost
    with pytest.raises(NotReady):
        ch.get_limits()


async def test_family_absent_is_not_ready(lab: Lab) -> None:
    with pytest.raises(NotReady):
        async with CommandChannel(lab.client, family="mptcp_pm_absent"):
            pass


# -- userspace PM on a live connection ------------------------------------------


def monitor(lab: Lab, ns: str, name: str) -> Process:
    """``ip mptcp monitor`` in ``ns``: a second witness of the event stream."""
    return lab.spawn(ns, "ip", "mptcp", "monitor", name=name)


def live_connection(lab: Lab) -> tuple[Process, Process, int]:
    """Server (kernel PM) and client (userspace PM) monitors, a held
    connection over link 1, and its client-side token."""
    srvmon = monitor(lab, lab.server, "srvmon")
    climon = monitor(lab, lab.client, "climon")
    server = lab.python(lab.server, "-m", "mptcpd.lab.traffic", "server",
                        "--duration", "60")
    server.wait_output("listening")
    srvmon.wait_output(r"UNKNOWN 15|LISTENER")
    lab.python(lab.client, "-m", "mptcpd.lab.traffic", "client",
               str(lab.links[0].server4), "5201", "--hold", "45", "--timeout", "50",
               name="client")
    # The token from ss (the monitor may have joined after CREATED was sent).
    token = wait_for(lambda: re.search(r"\btoken:([0-9a-f]+)",
                                       lab.exec(lab.client, "ss", "-Mni").stdout),
                     timeout=15, what="the client's MPTCP connection")
    srvmon.wait_output(r"\[\s*ESTABLISHED\]")  # data exchanged: joins may start
    return srvmon, climon, int(token.group(1), 16)


def subflow_count(lab: Lab) -> int:
    out = lab.exec(lab.client, "ss", "-Mni").stdout
    m = re.search(r"\bsubflows:(\d+)", out)
    return int(m.group(1)) if m else 0


@pytest.mark.lab(links=2, path_manager="userspace")
async def test_userspace_pm_commands_on_a_live_connection(lab: Lab) -> None:
    """Each userspace-PM command acts on a real connection, seen three ways:
    the kernel's own state, ``ip mptcp monitor`` and our event reader, on
    the side where the kernel reports it."""
    lab.set_path_manager(lab.server, "kernel")
    l2 = lab.links[1]
    srvmon, climon, token = live_connection(lab)
    local = sa(l2.client4)
    remote = sa(l2.server4, 5201)
    async with CommandChannel(lab.client) as ch, \
            EventReader(netns=lab.server) as srv_events, \
            EventReader(netns=lab.client) as cli_events:
        pm = UpstreamKernelPM(ch)

        # ANNOUNCE: the server learns the address (remid 5)
        await pm.add_addr(local, 5, token)
        srvmon.wait_output(rf"ANNOUNCED\].*remid=5 daddr4={re.escape(str(l2.client4))}")
        got = await collect(srv_events, has(ev.AddressAnnounced, rem_id=5))
        assert of(got, ev.AddressAnnounced)[-1].raddr.ip == l2.client4
        assert await ch.dump_addrs(token) == [AddrInfo(local, 5, AddrFlags.SIGNAL, 0)]
        assert await ch.get_addr(5, token) == AddrInfo(local, 5, AddrFlags.SIGNAL, 0)

        # REMOVE: the server hears the removal
        await pm.remove_addr(local, 5, token)
        srvmon.wait_output(r"REMOVED\].*remid=5")
        await collect(srv_events, has(ev.AddressRemoved, rem_id=5))
        assert await ch.dump_addrs(token) == []

        # SUBFLOW_CREATE from the second link
        await pm.add_subflow(token, 6, 0, local, remote, False)
        est = climon.wait_output(
            rf"SF_ESTABLISHED\].*saddr4={re.escape(str(l2.client4))} "
            rf"daddr4={re.escape(str(l2.server4))} sport=(\d+) dport=5201 backup=0")
        sport = int(est.group(1))
        got = await collect(cli_events, has(ev.SubflowEstablished, token=token))
        sub = of(got, ev.SubflowEstablished)[-1]
        assert (sub.laddr, sub.raddr, sub.backup, sub.loc_id) == \
            (sa(l2.client4, sport), remote, False, 6)
        assert subflow_count(lab) == 1
        assert AddrInfo(local, 6, 0, 0) in [
            AddrInfo(i.address, i.id, 0, 0) for i in await ch.dump_addrs(token)]

        # SET_FLAGS backup on that subflow: the peer sees MP_PRIO
        await pm.set_backup(token, sa(l2.client4, sport), remote, True)
        srvmon.wait_output(rf"SF_PRIO\].*dport={sport} backup=1")
        got = await collect(srv_events, has(ev.SubflowPriority, backup=True))
        prio = of(got, ev.SubflowPriority)[-1]
        assert prio.raddr.unmapped() == sa(l2.client4, sport)

        # SUBFLOW_DESTROY
        await pm.remove_subflow(token, sa(l2.client4, sport), remote)
        climon.wait_output(rf"SF_CLOSED\].*sport={sport} dport=5201")
        got = await collect(cli_events, has(ev.SubflowClosed, token=token))
        assert of(got, ev.SubflowClosed)[-1].laddr == sa(l2.client4, sport)
        assert subflow_count(lab) == 0


@pytest.mark.lab(links=2, path_manager="userspace")
async def test_userspace_pm_errors_name_the_operation(
        lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, LOGGER)
    async with CommandChannel(lab.client) as ch:
        pm = UpstreamKernelPM(ch)
        with pytest.raises(KernelError) as info:
            await pm.add_addr(sa(lab.links[1].client4), 5, 0x12345678)  # no such token
        with pytest.raises(KernelError):
            await pm.remove_subflow(0x12345678, sa(lab.links[1].client4, 1000),
                                    sa(lab.links[1].server4, 5201))
    assert info.value.op == "announce"
    lines = error_lines(caplog)
    assert lines[0].startswith("announce: ") and lines[1].startswith("remove_subflow: ")

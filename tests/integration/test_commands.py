"""Every ``mptcp_pm`` command against the real kernel, read back independently.

The commands go through the public :class:`PathManager` (as plugins send
them) to a :class:`CommandChannel` opened in the lab's client namespace;
kernel state is checked with iproute2 (``ip mptcp endpoint``, ``ip mptcp
limits``, ``ip mptcp monitor``, ``ss -Mni``), never with our own decoder
alone.  The channel's bounds (queue, in flight, timeouts, a lost answer)
are exercised with its socket not read for a while: the kernel's answers
then wait, as they would behind a busy loop.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from mptcpd import events as ev
from mptcpd.errors import ConnectionClosed, KernelError, NotReady, QueueFull
from tests.lab import Lab, Process, wait_for
from mptcpd.netlink import genl_commands
from mptcpd.netlink.genl_commands import CommandChannel
from mptcpd.netlink.genl_events import EventReader
from mptcpd.netlink.pm_codec import AddrInfo, Limits
from mptcpd.pm.path_manager import PathManager
from mptcpd.types import AddrFlags, SockAddr
from tests.integration.test_daemon import start
from tests.integration.test_events import collect, has, of

LOGGER = "mptcpd.netlink.genl_commands"
BAD_TOKEN = 0x12345678


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


@asynccontextmanager
async def path_manager(lab: Lab, **kwargs: Any) -> AsyncIterator[tuple[PathManager, CommandChannel]]:
    """The public path manager on a channel in the client namespace."""
    async with CommandChannel(lab.client, **kwargs) as ch:
        pm = PathManager(ch)
        pm.set_ready(True)
        yield pm, ch


def stop_reading(ch: CommandChannel) -> None:
    """The channel reads no answer: neither when the socket is reported
    readable nor right after it wrote a request."""
    asyncio.get_running_loop().remove_reader(ch.fileno())
    ch._read = lambda inline=False: None  # type: ignore[method-assign]


def resume_reading(ch: CommandChannel) -> None:
    del ch._read
    asyncio.get_running_loop().add_reader(ch.fileno(), ch._on_readable)


async def wait_until(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


# -- in-kernel PM: endpoints and limits -------------------------------------


async def test_endpoints_add_get_dump_set_flags_delete_flush(lab: Lab) -> None:
    l1, l2 = lab.links
    c1 = ifindex(lab, lab.client, l1.client_if)
    async with path_manager(lab) as (pm, ch):
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
        await ch.submit("kpm_set_flags", (None, AddrFlags.BACKUP, 3))
        assert (await pm.kpm_get_addr(3)).flags == (
            AddrFlags.SUBFLOW | AddrFlags.LAMINAR | AddrFlags.BACKUP)

        await pm.kpm_remove_addr(2)
        assert sorted(e.id for e in lab.endpoints(lab.client)) == [1, 3]
        await pm.kpm_flush_addrs()
        assert lab.endpoints(lab.client) == []
        assert await pm.kpm_dump_addrs() == []


async def test_limits_set_and_read_back(lab: Lab) -> None:
    async with path_manager(lab) as (pm, _ch):
        await pm.kpm_set_limits(Limits(subflows=4, rcv_add_addrs=3))
        assert lab.limits(lab.client) == {"add_addr_accepted": 3, "subflows": 4}
        assert await pm.kpm_get_limits() == Limits(rcv_add_addrs=3, subflows=4)
        await pm.kpm_set_limits(Limits(rcv_add_addrs=8))  # one limit only: the other stays
        assert lab.limits(lab.client) == {"add_addr_accepted": 8, "subflows": 4}
        assert await pm.kpm_get_limits() == Limits(8, 4)


async def test_duplicate_endpoint_fails_with_the_kernels_text(
        lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    l1 = lab.links[0]
    caplog.set_level(logging.ERROR, LOGGER)
    async with path_manager(lab) as (pm, _ch):
        await pm.kpm_add_addr(sa(l1.client4), 1, AddrFlags.SUBFLOW)
        with pytest.raises(KernelError) as info:
            await pm.kpm_add_addr(sa(l1.client4), 2, AddrFlags.SUBFLOW)
    exc = info.value
    assert exc.op == "add_addr" and exc.errno in (errno.EBUSY, errno.EEXIST)
    assert exc.extack  # the kernel explains itself (capped ACK, extack kept)
    assert error_lines(caplog) == [f"add_addr: {exc.extack}: {os.strerror(exc.errno)}"]
    assert [e.id for e in lab.endpoints(lab.client)] == [1]


async def test_one_datagram_asks_for_one_ack_and_the_kernel_answers_its_errors(
        lab: Lab, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the datagram's last request asks for an ACK; the kernel still
    answers the failing one in the middle, goes on with the rest, and the
    last one's ACK settles those without an answer as done."""
    l1, l2 = lab.links[0], lab.links[1]
    caplog.set_level(logging.ERROR, LOGGER)
    sent: list[list[bytes]] = []
    send = genl_commands._send_datagram

    def spy(sock: Any, datas: list[bytes]) -> None:
        sent.append(list(datas))
        send(sock, datas)

    monkeypatch.setattr(genl_commands, "_send_datagram", spy)
    async with path_manager(lab) as (pm, _ch):
        futures = [pm.kpm_add_addr(sa(l1.client4), 1, AddrFlags.SUBFLOW),
                   pm.kpm_add_addr(sa(l1.client4), 2, AddrFlags.SUBFLOW),  # a duplicate
                   pm.kpm_add_addr(sa(l2.client4), 3, AddrFlags.SUBFLOW),
                   pm.kpm_set_limits(Limits(rcv_add_addrs=2, subflows=3))]
        results = await asyncio.gather(*futures, return_exceptions=True)
    assert len(sent) == 1 and len(sent[0]) == 4
    flags = [int.from_bytes(data[6:8], "little") for data in sent[0]]
    assert [bool(f & 0x04) for f in flags] == [False, False, False, True]  # NLM_F_ACK
    assert results[0] is None and results[2] is None and results[3] is None
    assert isinstance(results[1], KernelError)
    assert results[1].errno in (errno.EBUSY, errno.EEXIST) and results[1].extack
    assert len(error_lines(caplog)) == 1
    assert [e.id for e in lab.endpoints(lab.client)] == [1, 3]
    limits = lab.limits(lab.client)
    assert (limits["subflows"], limits["add_addr_accepted"]) == (3, 2)


async def test_ninth_endpoint_is_out_of_range(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, LOGGER)
    async with path_manager(lab) as (pm, _ch):
        for i in range(1, 9):
            await pm.kpm_add_addr(sa(f"203.0.113.{i}"), i, AddrFlags.SIGNAL)
        with pytest.raises(KernelError) as info:
            await pm.kpm_add_addr(sa("203.0.113.9"), 9, AddrFlags.SIGNAL)
    assert info.value.errno == errno.ERANGE
    assert error_lines(caplog) == [
        f"add_addr: {info.value.extack}: Numerical result out of range"]
    assert len(lab.endpoints(lab.client)) == 8


async def test_missing_endpoint_errors_without_stopping_the_queue(
        lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, LOGGER)
    async with path_manager(lab) as (pm, _ch):
        missing = pm.kpm_get_addr(42)
        gone = pm.kpm_remove_addr(42)
        after = pm.kpm_get_limits()  # queued behind two failures
        with pytest.raises(KernelError) as info:
            await missing
        assert info.value.errno == errno.EINVAL
        with pytest.raises(KernelError):
            await gone
        assert isinstance(await after, Limits)
    lines = error_lines(caplog)
    assert lines[0] == "get_addr: address not found: Invalid argument"
    assert lines[1].startswith("remove_addr: ") and lines[1].endswith(": Invalid argument")


@pytest.mark.parametrize(("in_flight", "batch"), [(1, False), (4, False), (64, True)])
async def test_results_come_in_submission_order_one_or_many_in_flight(
        lab: Lab, in_flight: int, batch: bool) -> None:
    l1 = lab.links[0]
    async with path_manager(lab, max_in_flight=in_flight, batch=batch) as (pm, _ch):
        await pm.kpm_add_addr(sa(l1.client4), 1, AddrFlags.SUBFLOW)
        futures: list[asyncio.Future[Any]] = []
        done: list[int] = []
        for n in range(1, 121):
            futures.append(pm.kpm_set_limits(Limits(subflows=n % 9)))
            futures.append(pm.kpm_get_limits())
            if n % 40 == 0:
                futures.append(pm.kpm_dump_addrs())  # dumps in between, run alone
        for i, f in enumerate(futures):
            f.add_done_callback(lambda _f, i=i: done.append(i))
        results = await asyncio.gather(*futures)
    assert done == list(range(len(futures)))
    limits = [r.subflows for r in results if isinstance(r, Limits)]
    assert limits == [n % 9 for n in range(1, 121)]
    dumps = [r for r in results if isinstance(r, list)]
    assert len(dumps) == 3 and all([i.id for i in d] == [1] for d in dumps)
    assert lab.limits(lab.client)["subflows"] == 120 % 9


async def test_a_bad_argument_raises_and_later_commands_still_complete(lab: Lab) -> None:
    l1 = lab.links[0]
    async with path_manager(lab) as (pm, ch):
        bad = [
            lambda: pm.kpm_add_addr(sa(l1.client4), 256),
            lambda: pm.kpm_add_addr(sa(l1.client4), 1, 1 << 32),
            lambda: pm.kpm_add_addr(sa(l1.client4), 1, 0x40),
            lambda: pm.kpm_add_addr(sa(l1.client4), 1, 0, "c1"),
            lambda: pm.kpm_add_addr(str(l1.client4), 1),
            lambda: pm.kpm_set_limits(Limits(subflows=-1)),
            lambda: pm.add_subflow(1 << 32, 1, 0, sa(l1.client4), sa(l1.server4, 1)),
        ]
        for call in bad:
            with pytest.raises(ValueError):
                call()
            assert ch.queued == 0 and ch.in_flight == 0
        await pm.kpm_add_addr(sa(l1.client4), 255, AddrFlags.SUBFLOW, 0)
        assert [(e.id, e.address) for e in lab.endpoints(lab.client)] == [(255, str(l1.client4))]


async def test_an_encoding_error_fails_one_future_and_the_rest_complete(
        lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, LOGGER)
    async with CommandChannel(lab.client) as ch:
        before = ch.submit("kpm_set_limits", (Limits(subflows=2),))
        broken = ch.submit("kpm_remove_addr", (256,))  # the public API refuses this
        after = ch.submit("kpm_get_limits")
        assert await before is None
        with pytest.raises(Exception) as info:
            await broken
        assert not isinstance(info.value, KernelError)
        assert await after == Limits(0, 2)
        assert ch.is_open and await ch.submit("kpm_get_limits") == Limits(0, 2)
    assert error_lines(caplog)[0].startswith("remove_addr: cannot encode the request")


async def test_forget_drops_the_queued_commands_of_a_token_they_are_never_sent(
        lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    """Commands for a token the kernel does not know would each log an
    ``invalid token`` error if they were sent."""
    l1 = lab.links[0]
    caplog.set_level(logging.DEBUG, LOGGER)
    async with path_manager(lab) as (pm, ch):
        # control: one sent for that token fails as the kernel says
        with pytest.raises(KernelError, match="invalid token"):
            await pm.add_subflow(BAD_TOKEN, 0, 0, sa(l1.client4), sa(l1.server4, 5201))
        caplog.clear()
        doomed = [
            pm.add_subflow(BAD_TOKEN, 0, 0, sa(l1.client4), sa(l1.server4, 5201)),
            pm.add_addr_no_listener(sa(l1.client4), 3, BAD_TOKEN),
            pm.remove_addr(None, 3, BAD_TOKEN),
            pm.set_backup(BAD_TOKEN, sa(l1.client4, 1), sa(l1.server4, 5201), True),
            pm.remove_subflow(BAD_TOKEN, sa(l1.client4, 1), sa(l1.server4, 5201)),
        ]
        other = pm.kpm_get_limits()
        assert ch.forget(BAD_TOKEN) == 5
        assert await other == await pm.kpm_get_limits()
        for f in doomed:
            with pytest.raises(ConnectionClosed):
                await f
    assert error_lines(caplog) == []
    assert "connection 0x12345678 closed: 5 queued command(s) dropped" in caplog.text


async def test_the_queue_bound_holds_while_the_kernels_answers_are_not_read(
        lab: Lab, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(genl_commands, "QUEUE_FULL_WARNING_INTERVAL", 0.3)
    caplog.set_level(logging.WARNING, LOGGER)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == LOGGER and r.levelno == logging.WARNING]

    async with path_manager(lab, max_in_flight=8, max_queue=50) as (pm, ch):
        await pm.kpm_set_limits(Limits(subflows=3))
        stop_reading(ch)
        futures = [pm.kpm_get_limits() for _ in range(100)]
        refused = [f for f in futures if f.done()]
        assert len(refused) == 50 and all(isinstance(f.exception(), QueueFull) for f in refused)
        await wait_until(lambda: ch.in_flight == 8)
        await asyncio.sleep(0)  # a few more loop turns: still bounded
        assert ch.in_flight == 8 and ch.queued == 42
        more = [pm.kpm_get_limits() for _ in range(20)]
        assert sum(f.done() for f in more) == 12 and ch.queued == 50
        assert ch.dropped == 62
        # counted, and rate-limited: one line now, one for the rest later
        assert warnings() == ["Command queue full (50 commands waiting): 1 command(s) "
                              "dropped since the last warning."]
        resume_reading(ch)
        accepted = [f for f in futures + more if not f.done()]
        results = await asyncio.gather(*accepted)
        assert results == [Limits(0, 3)] * 58
        await wait_until(lambda: len(warnings()) == 2)
        assert warnings()[1].endswith(": 61 command(s) dropped since the last warning.")
        assert await pm.kpm_get_limits() == Limits(0, 3)
    assert len(warnings()) == 2


async def test_requests_time_out_and_late_answers_are_ignored(
        lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, LOGGER)
    # not a FLUSH_ADDRS (a slow command): the channel reads its answers
    # itself once the worker thread's sendmsg returned
    async with path_manager(lab, request_timeout=0.3) as (pm, ch):
        stop_reading(ch)
        slow = [pm.kpm_get_limits(), pm.kpm_set_limits(Limits(subflows=2))]
        for f in slow:
            with pytest.raises(KernelError) as info:
                await f
            assert info.value.errno == errno.ETIMEDOUT
        resume_reading(ch)  # the two answers arrive now, for no one
        assert isinstance(await pm.kpm_get_limits(), Limits)
    assert error_lines(caplog) == ["get_limits: Connection timed out",
                                   "set_limits: Connection timed out"]


async def test_answers_lost_to_an_overrun_fail_at_once_not_by_timeout(
        lab: Lab, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(genl_commands, "_RCVBUF", 2048)  # the kernel makes it 4 KiB
    async with path_manager(lab, max_in_flight=512, request_timeout=60) as (pm, ch):
        futures = [pm.kpm_get_limits() for _ in range(400)]
        async with asyncio.timeout(10):
            results = await asyncio.gather(*futures, return_exceptions=True)
        lost = [r for r in results if isinstance(r, KernelError)]
        assert lost and all(r.errno == errno.ENOBUFS for r in lost)
        assert all(isinstance(r, (Limits, KernelError)) for r in results)
        assert len(lost) < len(results)
        assert isinstance(await pm.kpm_get_limits(), Limits)  # and on it goes
    assert "mptcp_pm command socket overrun: replies were lost" in caplog.text


async def test_close_settles_every_future(lab: Lab) -> None:
    ch = CommandChannel(lab.client)
    await ch.open()
    futures = [ch.submit("kpm_get_limits") for _ in range(50)]
    await ch.close()
    assert all(f.done() for f in futures)
    outcomes = [f.exception() or f.result() for f in futures]
    assert all(isinstance(o, (NotReady, Limits)) for o in outcomes)
    assert isinstance(outcomes[-1], NotReady)  # never written: failed, not lost
    with pytest.raises(NotReady):
        ch.submit("kpm_get_limits")


async def test_family_absent_is_not_ready(lab: Lab) -> None:
    with pytest.raises(NotReady):
        async with CommandChannel(lab.client, family="mptcp_pm_absent"):
            pass


async def test_the_socket_lives_in_the_namespace_asked_for(lab: Lab) -> None:
    lab.ip(lab.server, "mptcp", "limits", "set", "subflows", "7")
    async with CommandChannel(lab.server) as server, CommandChannel(lab.client) as client:
        assert (await server.submit("kpm_get_limits")).subflows == 7
        assert (await client.submit("kpm_get_limits")).subflows != 7


# -- userspace PM on a live connection ------------------------------------------


def monitor(lab: Lab, ns: str, name: str) -> Process:
    """``ip mptcp monitor`` in ``ns``: a second witness of the event stream."""
    return lab.spawn(ns, "ip", "mptcp", "monitor", name=name)


def live_connection(lab: Lab) -> tuple[Process, Process, int]:
    """Server (kernel PM) and client (userspace PM) monitors, a held
    connection over link 1, and its client-side token."""
    srvmon = monitor(lab, lab.server, "srvmon")
    climon = monitor(lab, lab.client, "climon")
    server = lab.python(lab.server, "-m", "tests.lab.traffic", "server",
                        "--duration", "60")
    server.wait_output("listening")
    srvmon.wait_output(r"UNKNOWN 15|LISTENER")
    lab.python(lab.client, "-m", "tests.lab.traffic", "client",
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
    async with path_manager(lab) as (pm, ch), \
            EventReader(netns=lab.server) as srv_events, \
            EventReader(netns=lab.client) as cli_events:

        # ANNOUNCE: the server learns the address (remid 5)
        assert await pm.add_addr_no_listener(local, 5, token) == local
        srvmon.wait_output(rf"ANNOUNCED\].*remid=5 daddr4={re.escape(str(l2.client4))}")
        got = await collect(srv_events, has(ev.AddressAnnounced, addr_id=5))
        assert of(got, ev.AddressAnnounced)[-1].addr.ip == l2.client4
        assert await ch.submit("kpm_dump_addrs", (token,)) == [
            AddrInfo(local, 5, AddrFlags.SIGNAL, 0)]
        assert await ch.submit("kpm_get_addr", (5, token)) == AddrInfo(
            local, 5, AddrFlags.SIGNAL, 0)

        # REMOVE: the server hears the removal
        await pm.remove_addr(None, 5, token)
        srvmon.wait_output(r"REMOVED\].*remid=5")
        await collect(srv_events, has(ev.AddressRemoved, addr_id=5))
        assert await ch.submit("kpm_dump_addrs", (token,)) == []

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
            AddrInfo(i.address, i.id, 0, 0) for i in await ch.submit("kpm_dump_addrs", (token,))]

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
    async with path_manager(lab) as (pm, _ch):
        with pytest.raises(KernelError) as info:
            await pm.add_addr_no_listener(sa(lab.links[1].client4), 5, BAD_TOKEN)
        with pytest.raises(KernelError):
            await pm.remove_subflow(BAD_TOKEN, sa(lab.links[1].client4, 1000),
                                    sa(lab.links[1].server4, 5201))
        with pytest.raises(KernelError):
            await pm.remove_addr(None, 5, BAD_TOKEN)
    assert info.value.op == "announce"
    lines = error_lines(caplog)
    assert lines == ["announce: invalid token: Invalid argument",
                     lines[1], "remove_addr: invalid token: Invalid argument"]
    assert lines[1].startswith("remove_subflow: ")


@pytest.mark.lab(links=2, path_manager="userspace")
async def test_a_flood_of_one_refusal_logs_ten_lines_and_a_count(
        lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    """Twenty-five commands for a connection the kernel does not know: each
    fails with its error, the first ten are logged one by one, the other
    fifteen are counted into one line when the window ends (here: the
    channel closes); another refusal has its own ten."""
    caplog.set_level(logging.ERROR, LOGGER)
    async with path_manager(lab) as (pm, _ch):
        results = await asyncio.gather(
            *(pm.add_addr_no_listener(sa(lab.links[1].client4), 5, BAD_TOKEN)
              for _ in range(25)),
            pm.kpm_get_addr(42), return_exceptions=True)
        assert all(isinstance(r, KernelError) for r in results)
    assert error_lines(caplog) == ["announce: invalid token: Invalid argument"] * 10 + [
        "get_addr: address not found: Invalid argument",
        "announce: invalid token: Invalid argument (15 more time(s) within 10 s)"]


# -- the daemon: nothing is sent for a connection already closed ---------------------


@pytest.mark.lab(links=2, path_manager="userspace")
def test_commands_a_plugin_sends_when_its_connection_closed_are_dropped(
        lab: Lab, tmp_path: Path) -> None:
    """The ``late`` plugin sends a SUBFLOW_CREATE and a REMOVE from its
    ``connection_closed`` hook, for the connection that just closed: the
    daemon drops them (CLOSED → forget), so the kernel never answers
    ``invalid token``."""
    lab.set_path_manager(lab.server, "kernel")
    outcomes = tmp_path / "late.jsonl"
    daemon = start(lab, tmp_path, plugins=("late",), MPTCPD_LATE_LOG=str(outcomes))
    daemon.wait_output(r"mptcpd ready: plugins", timeout=20)
    server = lab.python(lab.server, "-m", "tests.lab.traffic", "server", "--duration", "60")
    server.wait_output("listening")
    connections = 5
    for _ in range(connections):
        client = lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                            str(lab.links[0].server4), "5201", "--bytes", "1000",
                            name="client")
        assert client.wait(20) == 0

    def results() -> list[dict[str, Any]]:
        if not outcomes.exists():
            return []
        return [json.loads(line) for line in outcomes.read_text().splitlines() if line]

    wait_for(lambda: len(results()) >= 2 * connections, 20, what="the late commands' outcomes")
    assert {r["outcome"] for r in results()} == {"ConnectionClosed"}, results()
    assert "invalid token" not in daemon.output()
    assert daemon.stop() == 0


# -- slow commands do not stall the loop -------------------------------------------


class LoopProbe:
    """Counts the runs of a callback rescheduled every millisecond: a loop
    blocked inside a ``sendmsg`` does not run it."""

    def __init__(self) -> None:
        self.runs = 0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(0.001, self._tick)

    def _tick(self) -> None:
        self.runs += 1
        self.start()

    def stop(self) -> int:
        if self._handle is not None:
            self._handle.cancel()
        return self.runs


async def test_the_loop_runs_on_while_endpoints_are_removed(lab: Lab) -> None:
    """50 endpoint removals (each DEL_ADDR keeps the sender waiting for an
    RCU grace period in the kernel): the loop keeps running meanwhile, and
    every command still completes in order."""
    addr = sa(lab.links[0].client4)
    async with path_manager(lab) as (pm, ch):
        futures = []
        for _ in range(50):
            futures.append(pm.kpm_add_addr(addr, 1, AddrFlags.SUBFLOW, 0))
            futures.append(pm.kpm_remove_addr(1))
        order: list[int] = []
        for i, f in enumerate(futures):
            f.add_done_callback(lambda _f, i=i: order.append(i))
        probe = LoopProbe()
        probe.start()
        async with asyncio.timeout(30):
            results = await asyncio.gather(*futures)
        runs = probe.stop()
        assert results == [None] * 100 and order == list(range(100))
        assert lab.endpoints(lab.client) == []
        assert runs >= 20, f"the loop ran the probe only {runs} times during the removals"
        await pm.kpm_add_addr(addr, 2, AddrFlags.SUBFLOW, 0)  # and the channel goes on
        assert [e.id for e in lab.endpoints(lab.client)] == [2]


async def test_close_while_the_thread_sends_a_removal(lab: Lab) -> None:
    """Closed while the worker thread is inside the DEL_ADDR ``sendmsg``:
    close returns without waiting, every future is settled, the thread
    ends, and the kernel still carries out what it was given."""
    ch = CommandChannel(lab.client)
    await ch.open()
    for i in range(1, 9):  # the most endpoints a namespace takes
        await ch.submit("kpm_add_addr", (sa(f"203.0.113.{i}"), i, AddrFlags.SUBFLOW, 0))
    removals = [ch.submit("kpm_remove_addr", (i,)) for i in range(1, 9)]
    await asyncio.sleep(0)  # one loop turn: the writer hands the datagram over
    assert ch._sending is not None and ch.queued == 0
    sender = ch._sender
    assert sender is not None
    queued = ch.submit("kpm_get_limits")
    async with asyncio.timeout(5):
        await ch.close()
    assert all(f.done() for f in removals) and isinstance(queued.exception(), NotReady)
    threads = [sender.thread]
    for thread in threads:
        thread.join(10)
    assert threads and not any(t.is_alive() for t in threads)
    wait_for(lambda: lab.endpoints(lab.client) == [], 10, what="the endpoint removed")

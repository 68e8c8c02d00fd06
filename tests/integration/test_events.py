"""The event reader against the real kernel.

Real MPTCP connections between the lab's hosts make the kernel emit each of
the ten ``mptcp_pm`` events; :class:`EventReader` (opened in the client or
server namespace through ``netns=``, the test process stays where it is)
must decode them with the right values, and ``ip mptcp monitor`` running
beside it must have seen the same events in the same order.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest

from mptcpd import events as ev
from tests.lab import Lab, LabError, LabTimeout, Process, wait_for
from mptcpd.netlink import constants as C
from mptcpd.netlink.genl_events import EventReader
from mptcpd.netlink.nlsock import NETLINK_GENERIC, netlink_socket
from mptcpd.types import AddressId, SockAddr
from tests.unit.event_oracle import MarshalMptcpEvent
from tests.unit.event_oracle import decode as oracle_decode

PORT = 5201
MONITOR_NAMES = {
    "CREATED": ev.ConnectionCreated,
    "ESTABLISHED": ev.ConnectionEstablished,
    "CLOSED": ev.ConnectionClosed,
    "ANNOUNCED": ev.AddressAnnounced,
    "REMOVED": ev.AddressRemoved,
    "SF_ESTABLISHED": ev.SubflowEstablished,
    "SF_CLOSED": ev.SubflowClosed,
    "SF_PRIO": ev.SubflowPriority,
    "UNKNOWN 15": ev.ListenerCreated,
    "UNKNOWN 16": ev.ListenerClosed,
}
_LINE = re.compile(r"^\[\s*([A-Z_]+(?: \d+)?)\]\s*(.*)$")


# -- helpers ---------------------------------------------------------------------


def monitor(lab: Lab, ns: str) -> Process:
    """Start ``ip mptcp monitor`` in ``ns`` (iproute2 6.1 output format)."""
    return lab.spawn(ns, "ip", "mptcp", "monitor", name=f"monitor-{ns[-3:]}")


# The kernel's netlink sock_diag: which multicast groups a netlink socket joined.
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NDIAG_SHOW_GROUPS = 0x2
NETLINK_DIAG_GROUPS = 1
_NLMSGHDR = struct.Struct("=IHHII")
_NETLINK_DIAG_MSG = struct.Struct("=BBBBIIII8x")  # struct netlink_diag_msg
_NLATTR = struct.Struct("=HH")


def _split(data: bytes, header: struct.Struct, offset: int = 0) -> list[tuple[int, bytes]]:
    """The ``(type, payload)`` of each netlink message (``header`` _NLMSGHDR)
    or attribute (_NLATTR) in ``data`` from ``offset``."""
    out = []
    while offset + header.size <= len(data):
        length, kind = header.unpack_from(data, offset)[:2]
        if length < header.size or offset + length > len(data):
            break
        out.append((kind, data[offset + header.size:offset + length]))
        offset += (length + 3) & ~3
    return out


def netlink_groups(ns: str, protocol: int = NETLINK_GENERIC) -> dict[int, set[int]]:
    """The multicast groups each ``protocol`` netlink socket of ``ns`` has
    joined, by socket inode."""
    sock = netlink_socket(NETLINK_SOCK_DIAG, ns)
    try:
        sock.settimeout(5)
        # struct netlink_diag_req: family, protocol, pad, ino, show, cookie
        req = struct.pack("=BBHII8x", socket.AF_NETLINK, protocol, 0, 0, NDIAG_SHOW_GROUPS)
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(req), SOCK_DIAG_BY_FAMILY,
                                 NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
        out: dict[int, set[int]] = {}
        for _ in range(10000):  # bounded: a dump of a test namespace is short
            for mtype, payload in _split(sock.recv(1 << 16), _NLMSGHDR):
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    raise OSError(code, f"netlink sock_diag: {os.strerror(code)}")
                ino = _NETLINK_DIAG_MSG.unpack_from(payload)[7]
                attrs = dict(_split(payload, _NLATTR, _NETLINK_DIAG_MSG.size))
                bitmap = attrs.get(NETLINK_DIAG_GROUPS, b"")
                out[ino] = {word * 32 + bit + 1
                            for word, (mask,) in enumerate(struct.iter_unpack("=I", bitmap))
                            for bit in range(32) if mask >> bit & 1}
        raise AssertionError("netlink sock_diag dump did not end")
    finally:
        sock.close()


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` has open."""
    inodes = set()
    fds = f"/proc/{pid}/fd"
    for fd in os.listdir(fds):
        try:
            m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"{fds}/{fd}"))
        except FileNotFoundError:
            continue
        if m:
            inodes.add(int(m.group(1)))
    return inodes


async def subscribed(proc: Process, ns: str, reader: EventReader) -> None:
    """Wait until ``ip mptcp monitor`` (``proc``) has joined the
    ``mptcp_pm`` event group in ``ns``: from then on it is sent every event
    ``reader`` gets."""
    group = reader.groups[C.MPTCP_PM_EV_GRP_NAME]

    def joined() -> bool:
        if proc.popen.poll() is not None:
            raise LabError(f"{proc.name} exited: {proc.output()}")
        groups = netlink_groups(ns)
        return any(group in groups.get(ino, ()) for ino in socket_inodes(proc.pid))

    await asyncio.to_thread(wait_for, joined, 10.0, 0.005,
                            f"{proc.name} to join {C.MPTCP_PM_EV_GRP_NAME}")


def monitor_records(proc: Process) -> list[tuple[type, dict[str, str]]]:
    out = []
    for line in proc.output().splitlines():
        m = _LINE.match(line.strip())
        if m and m.group(1) in MONITOR_NAMES:
            fields = dict(p.split("=", 1) for p in m.group(2).split() if "=" in p)
            out.append((MONITOR_NAMES[m.group(1)], fields))
    return out


def disagreements(event: ev.Event, fields: dict[str, str]) -> list[str]:
    """The values ``ip mptcp monitor`` printed that ``event`` does not show."""
    checks: dict[str, Any] = {}
    if hasattr(event, "token"):
        checks["token"] = f"{event.token:08x}"
    rem_id = "addr_id" if isinstance(event, (ev.AddressAnnounced, ev.AddressRemoved)) \
        else "rem_id"
    for name, attr in (("remid", rem_id), ("locid", "loc_id")):
        value = getattr(event, attr, None)
        if value is not None:
            checks[name] = str(value)
    raddr = "addr" if isinstance(event, ev.AddressAnnounced) else "raddr"
    for prefix, attr in (("s", "laddr"), ("d", raddr)):
        addr = getattr(event, attr, None)
        if addr is not None:
            checks[f"{prefix}addr{addr.ip.version}"] = addr.ip
            checks[f"{prefix}port"] = str(addr.port)
    if hasattr(event, "backup"):
        checks["backup"] = str(int(event.backup))
    if isinstance(event, (ev.ConnectionCreated, ev.ConnectionEstablished)):
        checks["flags"] = str(event.flags) if event.flags else None
    for name, attr in (("ifindex", "if_idx"), ("error", "error"),
                       ("reset_reason", "reset_reason"), ("reset_flags", "reset_flags")):
        value = getattr(event, attr, None)
        if value is not None:
            checks[name] = str(value)
    bad = []
    for key, value in fields.items():
        want = checks.get(key, "<absent>")
        if isinstance(want, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            if ipaddress.ip_address(value) != want:
                bad.append(key)
        elif want != value:
            bad.append(key)
    return bad


def assert_monitor_saw_the_same(proc: Process, got: list[ev.Event]) -> None:
    """Same event types in the same order, every printed value equal."""
    try:
        wait_for(lambda: len(monitor_records(proc)) >= len(got), 5.0,
                 what=f"{proc.name} to print {len(got)} events")
    except LabTimeout:
        pass  # the comparison below shows what is missing
    records = monitor_records(proc)
    assert [cls for cls, _ in records] == [type(e) for e in got], proc.output()
    for event, (_, fields) in zip(got, records):
        if type(event) in (ev.ListenerCreated, ev.ListenerClosed):
            continue  # iproute2 6.1 prints these without attributes
        assert disagreements(event, fields) == [], (event, fields)


async def collect(reader: EventReader, done: Callable[[list[ev.Event]], bool],
                  timeout: float = 15.0) -> list[ev.Event]:
    """Events until ``done(events)`` is true; fails after ``timeout`` seconds."""
    got: list[ev.Event] = []

    async def run() -> None:
        async for event in reader:
            got.append(event)
            if done(got):
                return

    try:
        await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        pytest.fail(f"timed out; events so far: {got}")
    return got


def has(cls: type, **want: Any) -> Callable[[list[ev.Event]], bool]:
    def check(events: list[ev.Event]) -> bool:
        return any(isinstance(e, cls) and all(getattr(e, k) == v for k, v in want.items())
                   for e in events)
    return check


def of(events: list[ev.Event], cls: type[Any]) -> list[Any]:
    return [e for e in events if type(e) is cls]


def start_server(lab: Lab, ns: str | None = None) -> Process:
    srv = lab.python(ns or lab.server, "-m", "tests.lab.traffic", "server",
                     "--port", str(PORT), "--duration", "60", name="server")
    srv.wait_output("listening")
    return srv


def start_client(lab: Lab, dst: str, hold: float = 2.0, nbytes: int = 100000) -> Process:
    return lab.python(lab.client, "-m", "tests.lab.traffic", "client", dst, str(PORT),
                      "--bytes", str(nbytes), "--hold", str(hold), name="client")


async def client_result(proc: Process) -> dict[str, Any]:
    await asyncio.to_thread(proc.wait, 20)
    line = proc.output().strip().splitlines()[-1]
    return dict(json.loads(line))


def limits(lab: Lab) -> None:
    for ns in (lab.client, lab.server):
        lab.ip(ns, "mptcp", "limits", "set", "subflows", "4", "add_addr_accepted", "4")


def sa(ip: Any, port: int) -> SockAddr:
    return SockAddr(ipaddress.ip_address(str(ip)), port)


# -- the tests -------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 6])
async def test_connection_address_and_subflow_events(lab: Lab, version: int) -> None:
    """CREATED, ESTABLISHED, ANNOUNCED, SUB_ESTABLISHED, SUB_PRIORITY, REMOVED,
    SUB_CLOSED and CLOSED, from one connection, seen in the client namespace.

    The server's in-kernel PM announces its second address (ADD_ADDR), the
    client's PM joins it, the server marks that endpoint backup (MP_PRIO),
    then deletes it (RM_ADDR)."""
    l1, l2 = lab.links
    server_ip = l1.server4 if version == 4 else l1.server6
    signal_ip = l2.server4 if version == 4 else l2.server6
    limits(lab)
    lab.ip(lab.server, "mptcp", "endpoint", "add", str(signal_ip), "dev", l2.server_if,
           "signal", "id", "5")
    start_server(lab)
    mon = monitor(lab, lab.client)
    async with EventReader(netns=lab.client) as reader:
        await subscribed(mon, lab.client, reader)
        client = start_client(lab, str(server_ip), hold=3.0)
        first = await collect(reader, has(ev.SubflowEstablished))
        lab.ip(lab.server, "mptcp", "endpoint", "change", "id", "5", "backup")
        second = await collect(reader, has(ev.SubflowPriority))
        lab.ip(lab.server, "mptcp", "endpoint", "delete", "id", "5")
        result = await client_result(client)
        third = await collect(reader, has(ev.ConnectionClosed))
    got = first + second + third
    kinds = [type(e) for e in got]
    assert sorted(k.__name__ for k in kinds) == sorted(k.__name__ for k in (
        ev.ConnectionCreated, ev.ConnectionEstablished, ev.AddressAnnounced,
        ev.SubflowEstablished, ev.SubflowPriority, ev.AddressRemoved, ev.SubflowClosed,
        ev.ConnectionClosed)), got
    # Causal order (the rest may interleave differently from run to run).
    assert kinds[0] is ev.ConnectionCreated and kinds[-1] is ev.ConnectionClosed
    order = [ev.AddressAnnounced, ev.SubflowEstablished, ev.SubflowPriority,
             ev.SubflowClosed]
    assert [k for k in kinds if k in order] == order
    assert kinds.index(ev.AddressRemoved) > kinds.index(ev.SubflowPriority)
    (created,) = of(got, ev.ConnectionCreated)
    (established,) = of(got, ev.ConnectionEstablished)
    (announced,) = of(got, ev.AddressAnnounced)
    (sub_est,) = of(got, ev.SubflowEstablished)
    (sub_prio,) = of(got, ev.SubflowPriority)
    (removed,) = of(got, ev.AddressRemoved)
    (sub_closed,) = of(got, ev.SubflowClosed)
    (closed,) = of(got, ev.ConnectionClosed)
    token = created.token
    assert all(getattr(e, "token") == token for e in got)  # noqa: B009
    local_ip = l1.client4 if version == 4 else l1.client6
    laddr = sa(local_ip, result["local"][1])
    for e in (created, established):
        assert isinstance(e, (ev.ConnectionCreated, ev.ConnectionEstablished))
        assert (e.laddr, e.raddr) == (laddr, sa(server_ip, PORT))
        assert not e.server_side and not e.deny_join_id0
        assert (e.loc_id, e.rem_id) == (0, 0)
    assert announced == ev.AddressAnnounced(token, AddressId(5), sa(signal_ip, PORT))
    assert removed == ev.AddressRemoved(token, AddressId(5))
    for e in (sub_est, sub_prio, sub_closed):
        assert isinstance(e, (ev.SubflowEstablished, ev.SubflowPriority, ev.SubflowClosed))
        assert e.laddr.ip == ipaddress.ip_address(str(l2.client4 if version == 4
                                                      else l2.client6))
        assert e.laddr == sub_est.laddr
        assert e.raddr == sa(signal_ip, PORT)
        assert e.rem_id == 5
    assert sub_est.backup is False
    assert sub_prio.backup is True
    assert closed == ev.ConnectionClosed(token)
    assert result["info"]["token"] == token
    assert_monitor_saw_the_same(mon, got)


async def test_server_side_connection(lab: Lab) -> None:
    """The accepting side sees server_side on CREATED and ESTABLISHED."""
    l1 = lab.links[0]
    start_server(lab)
    mon = monitor(lab, lab.server)
    async with EventReader(netns=lab.server) as reader:
        await subscribed(mon, lab.server, reader)
        client = start_client(lab, str(l1.server4), hold=0.2, nbytes=1000)
        result = await client_result(client)
        got = await collect(reader, has(ev.ConnectionClosed))
    created, established = of(got, ev.ConnectionCreated), of(got, ev.ConnectionEstablished)
    assert len(created) == len(established) == 1
    for e in created + established:
        assert e.server_side and not e.deny_join_id0
        # The dual-stack listener sees v4-mapped addresses.
        assert e.laddr == sa(f"::ffff:{l1.server4}", PORT)
        assert e.raddr == sa(f"::ffff:{l1.client4}", result["local"][1])
    assert_monitor_saw_the_same(mon, got)


async def test_deny_join_id0(lab: Lab) -> None:
    """A peer with allow_join_initial_addr_port=0 sets deny-join-id0."""
    lab.sysctl(lab.server, "net.mptcp.allow_join_initial_addr_port", "0")
    start_server(lab)
    mon = monitor(lab, lab.client)
    async with EventReader(netns=lab.client) as reader:
        await subscribed(mon, lab.client, reader)
        client = start_client(lab, str(lab.links[0].server4), hold=0.2, nbytes=1000)
        await client_result(client)
        got = await collect(reader, has(ev.ConnectionClosed))
    conn = of(got, ev.ConnectionCreated) + of(got, ev.ConnectionEstablished)
    assert len(conn) == 2
    assert all(e.deny_join_id0 and not e.server_side for e in conn)
    assert_monitor_saw_the_same(mon, got)


async def test_subflow_from_a_client_endpoint(lab: Lab) -> None:
    """A client ``subflow`` endpoint gives SUB_ESTABLISHED; deleting it SUB_CLOSED."""
    l1, l2 = lab.links
    limits(lab)
    lab.ip(lab.client, "mptcp", "endpoint", "add", str(l2.client4), "dev", l2.client_if,
           "subflow", "id", "7")
    start_server(lab)
    mon = monitor(lab, lab.client)
    async with EventReader(netns=lab.client) as reader:
        await subscribed(mon, lab.client, reader)
        client = start_client(lab, str(l1.server4), hold=3.0)
        first = await collect(reader, has(ev.SubflowEstablished))
        lab.ip(lab.client, "mptcp", "endpoint", "delete", "id", "7")
        second = await collect(reader, has(ev.SubflowClosed))
        await client_result(client)
        third = await collect(reader, has(ev.ConnectionClosed))
    got = first + second + third
    (sub,) = of(got, ev.SubflowEstablished)
    (closed,) = of(got, ev.SubflowClosed)
    assert sub.laddr.ip == l2.client4 and sub.raddr == sa(l1.server4, PORT)
    assert (sub.loc_id, sub.rem_id, sub.backup) == (7, 0, False)
    assert closed.token == sub.token and closed.laddr.ip == l2.client4
    assert closed.loc_id == 7
    assert_monitor_saw_the_same(mon, got)


async def test_listener_events(lab: Lab) -> None:
    """An MPTCP listening socket gives LISTENER_CREATED and LISTENER_CLOSED."""
    mon = monitor(lab, lab.client)
    async with EventReader(netns=lab.client) as reader:
        await subscribed(mon, lab.client, reader)
        got = []
        for bind, port in (("0.0.0.0", 6000), (str(lab.links[0].client6), 6001)):
            lst = lab.python(lab.client, "-m", "tests.lab.traffic", "server", "--port",
                             str(port), "--bind", bind, "--duration", "0.2", name="listener")
            await asyncio.to_thread(lst.wait, 10)
            got += await collect(reader, has(ev.ListenerClosed, laddr=sa(bind, port)))
    assert got == [
        ev.ListenerCreated(sa("0.0.0.0", 6000), family=2),
        ev.ListenerClosed(sa("0.0.0.0", 6000), family=2),
        ev.ListenerCreated(sa(lab.links[0].client6, 6001), family=10),
        ev.ListenerClosed(sa(lab.links[0].client6, 6001), family=10),
    ]
    assert_monitor_saw_the_same(mon, got)


async def test_the_oracle_reads_the_received_datagrams_the_same_way(lab: Lab) -> None:
    """pyroute2's message classes (the tests' oracle) decode the datagrams the
    reader received from the kernel into the same events."""
    start_server(lab)
    datagrams: list[bytes] = []
    async with EventReader(netns=lab.client, on_datagram=datagrams.append) as reader:
        client = start_client(lab, str(lab.links[0].server4), hold=0.2, nbytes=1000)
        await client_result(client)
        got = await collect(reader, has(ev.ConnectionClosed))
    assert len(got) == 3
    oracle = [event for data in datagrams for msg in MarshalMptcpEvent().parse(data)
              if (event := oracle_decode(msg)) is not None]
    assert oracle == got


async def test_close_ends_the_iteration(lab: Lab) -> None:
    """Closing the reader ends a pending ``async for`` instead of hanging."""
    reader = EventReader(netns=lab.client)
    await reader.open()
    assert reader.family_id is not None and reader.rcvbuf_effective > 0
    assert C.MPTCP_PM_EV_GRP_NAME in reader.groups
    got: list[ev.Event] = []
    waiting = asyncio.Event()

    async def run() -> None:
        waiting.set()
        async for event in reader:
            got.append(event)

    task = asyncio.create_task(run())
    await waiting.wait()
    await asyncio.sleep(0)  # the iteration is now waiting for an event
    reader.close()
    await asyncio.wait_for(task, 5)
    assert got == []


# -- receive overrun -----------------------------------------------------------------

FLOOD = """
import socket, sys
n = 0
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    s.settimeout(2)
    try:
        s.connect((sys.argv[1], int(sys.argv[3])))
        n += 1
    except OSError:
        pass
    s.close()
print(n)
"""


async def test_overrun_is_detected_and_events_flow_again(
        lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    """Stop reading while a connection flood overfills a small receive buffer:
    the reader reports the overrun (log W, counter, callback) and then goes on
    delivering events."""
    caplog.set_level(logging.WARNING, "mptcpd.netlink.genl_events")
    l1, l2 = lab.links
    start_server(lab)
    calls: list[int] = []
    reported = asyncio.Event()

    def on_overrun(count: int) -> None:
        calls.append(count)
        reported.set()

    async with EventReader(netns=lab.client, rcvbuf=4096,
                           on_overrun=on_overrun) as reader:
        # The event loop is blocked (nobody reads) while the flood runs.
        out = lab.exec(lab.client, lab_python(), "-c", FLOOD, str(l1.server4), "300",
                       str(PORT)).stdout
        assert int(out) > 200
        # Resume reading: the overrun is reported...
        def from_link2(events: list[ev.Event]) -> bool:
            return any(isinstance(e, ev.ConnectionEstablished)
                       and e.laddr.ip == l2.client4 for e in events)

        after = asyncio.create_task(collect(reader, from_link2))
        try:
            await asyncio.wait_for(reported.wait(), 10)
        except TimeoutError:
            pytest.fail("no overrun reported")
        # ...and a connection made afterwards is reported again.
        client = lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                            str(l2.server4), str(PORT), "--bind", str(l2.client4),
                            "--bytes", "1000", "--hold", "0.2", name="client")
        result = await client_result(client)
        got = await after
    assert reader.overruns >= 1 and calls[-1] == reader.overruns
    assert reader.overrun_pending
    assert any("overrun" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    (est,) = [e for e in got if isinstance(e, ev.ConnectionEstablished)
              and e.laddr.ip == l2.client4]
    assert est.laddr == sa(l2.client4, result["local"][1])
    assert est.raddr == sa(l2.server4, PORT)
    # Flood events were lost: fewer CREATED than connections made.
    assert len(of(got, ev.ConnectionCreated)) < int(out) + 1


async def test_events_dropped_while_the_socket_is_still_full_are_another_overrun(
        lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    """The kernel reports one ENOBUFS per congestion: datagrams it drops
    until the receive queue is empty again come without one.  A resync begun
    at the first report may have listed the connections before those were
    lost, so the reader reports them as one more overrun once it has
    drained the queue."""
    caplog.set_level(logging.WARNING, "mptcpd.netlink.genl_events")
    start_server(lab)
    server = str(lab.links[0].server4)
    calls: list[int] = []

    def flood() -> None:  # the loop is blocked: nobody reads meanwhile
        out = lab.exec(lab.client, lab_python(), "-c", FLOOD, server, "1500",
                       str(PORT)).stdout
        assert int(out) > 1000

    # More than one wake-up's worth of datagrams fit (1024 are read per
    # wake-up), and reading pauses as soon as two events are pending.
    async with EventReader(netns=lab.client, rcvbuf=1 << 20, max_pending=2,
                           on_overrun=calls.append) as reader:
        flood()
        for _ in range(1000):  # one wake-up: the overrun, 1024 datagrams
            if calls:
                break
            await asyncio.sleep(0.001)
        assert calls == [1]
        flood()  # dropped too, with the queue never empty: no ENOBUFS
        got = 0

        async def drain() -> None:
            nonlocal got
            async for _ in reader:
                got += 1
                if len(calls) >= 2:
                    return

        await asyncio.wait_for(drain(), 30)
    assert calls == [1, 2] and reader.overrun_pending
    assert any("more event(s) lost while it was full" in r.getMessage()
               for r in caplog.records)


def lab_python() -> str:
    import sys
    return sys.executable

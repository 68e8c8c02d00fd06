"""Listing MPTCP connections through sock_diag, against the real kernel.

Traffic clients in the lab's client namespace hold MPTCP connections to a
traffic server; :func:`list_mptcp_connections` (called with ``netns=``, the
test process stays in its own namespace) must list exactly those
connections, with the tokens the clients read from ``MPTCP_INFO`` and the
addresses ``ss -MniH`` shows in the same namespace, on both sides, for IPv4
and IPv6, and nothing once they have closed.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import re
import socket
from typing import Any

import pytest

from tests.lab import Lab, Process, list_namespaces, wait_for
from mptcpd.netlink.diag import (
    NETLINK_SOCK_DIAG,
    MptcpConnection,
    MptcpDiagUnsupported,
    MptcpSubflow,
    dump_family,
    find_mptcp_connections,
    find_mptcp_subflows,
    list_mptcp_connections,
    list_mptcp_subflows,
)
from mptcpd.netlink.nlsock import netlink_socket
from mptcpd.types import SockAddr

PORT = 5201
#: Seconds the traffic clients stay connected: long enough for the checks
#: below, which wait on conditions and do not depend on it otherwise.
HOLD = 6.0

Row = tuple[int, SockAddr, SockAddr]


def listing(ns: str) -> list[MptcpConnection]:
    return asyncio.run(list_mptcp_connections(ns))


def rows(conns: list[MptcpConnection]) -> set[Row]:
    return {(c.token, c.laddr, c.raddr) for c in conns}


_SS_ADDR = re.compile(r"^\[?(.+?)\]?:(\d+)$")


def _sockaddr(text: str) -> SockAddr:
    m = _SS_ADDR.match(text)
    assert m, text
    return SockAddr(ipaddress.ip_address(m.group(1)), int(m.group(2)))


def ss_rows(lab: Lab, ns: str) -> set[Row]:
    """``ss -MniH`` in ``ns``: (token, local, peer) of each MPTCP connection."""
    out = lab.exec(ns, "ss", "-MniH").stdout
    result = set()
    current: tuple[SockAddr, SockAddr] | None = None
    for line in out.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            words = line.split()
            current = (_sockaddr(words[3]), _sockaddr(words[4]))
            continue
        m = re.search(r"\btoken:([0-9a-f]+)", line)
        if m and current is not None:
            result.add((int(m.group(1), 16), *current))
            current = None
    return result


def start_server(lab: Lab) -> Process:
    srv = lab.python(lab.server, "-m", "tests.lab.traffic", "server",
                     "--port", str(PORT), "--duration", "60", name="server")
    srv.wait_output("listening")
    return srv


def start_client(lab: Lab, dst: Any) -> Process:
    return lab.python(lab.client, "-m", "tests.lab.traffic", "client", str(dst),
                      str(PORT), "--hold", str(HOLD), name="client")


def client_result(proc: Process) -> dict[str, Any]:
    assert proc.wait(HOLD + 20) == 0, proc.output()
    return dict(json.loads(proc.output().strip().splitlines()[-1]))


def established(ns: str, count: int) -> list[MptcpConnection] | None:
    conns = listing(ns)
    if len(conns) == count and all(c.established for c in conns):
        return conns
    return None


@pytest.mark.parametrize("version", [4, 6])
def test_lists_the_live_connections_on_both_sides(lab: Lab, version: int) -> None:
    l1, l2 = lab.links
    servers = [l.server4 if version == 4 else l.server6 for l in (l1, l2)]
    clients = [l.client4 if version == 4 else l.client6 for l in (l1, l2)]
    start_server(lab)
    procs = [start_client(lab, ip) for ip in servers]

    # client side
    ours = wait_for(lambda: established(lab.client, 2), 10, what="two connections")
    assert rows(ours) == ss_rows(lab, lab.client)
    assert {c.raddr for c in ours} == {SockAddr(ip, PORT) for ip in servers}
    assert {c.laddr.ip for c in ours} == set(clients)
    assert all(c.state == 1 and not c.fallback for c in ours)
    assert not any(c.server_side for c in ours)

    # server side: the server listens on "::", so its IPv4 connections are
    # dual-stack sockets with IPv4-mapped addresses (as ss shows them); its
    # listener is not listed
    theirs = wait_for(lambda: established(lab.server, 2), 10, what="server side")
    assert rows(theirs) == ss_rows(lab, lab.server)
    assert all(c.server_side for c in theirs)  # accepted by the listener on PORT

    def seen_by_server(a: SockAddr) -> SockAddr:
        ip = ipaddress.IPv6Address(f"::ffff:{a.ip}") if version == 4 else a.ip
        return SockAddr(ip, a.port)

    assert {(c.laddr, c.raddr) for c in theirs} == {
        (seen_by_server(c.raddr), seen_by_server(c.laddr)) for c in ours
    }

    # the tokens the clients read from MPTCP_INFO, on their own sockets
    results = [client_result(p) for p in procs]
    printed = {
        (r["info"]["token"], SockAddr(ipaddress.ip_address(r["local"][0]), r["local"][1]))
        for r in results
    }
    assert printed == {(c.token, c.laddr) for c in ours}

    # closed: gone on both sides
    wait_for(lambda: listing(lab.client) == [], 10, what="client side to be empty")
    wait_for(lambda: listing(lab.server) == [], 10, what="server side to be empty")
    assert ss_rows(lab, lab.client) == set()


def test_connections_are_found_by_token_with_their_side(lab: Lab) -> None:
    """A lookup by token (what the resync asks for the connections a dump
    did not show: a dump can miss live ones under churn) finds the live
    ones, as the dump lists them, on both sides; an unknown token is not
    found, more than one datagram of lookups is answered in full, and no
    token gives nothing."""
    start_server(lab)
    servers = [lab.links[0].server4, lab.links[1].server4]
    for ip in servers:
        start_client(lab, ip)
    ours = wait_for(lambda: established(lab.client, 2), 10, what="two connections")
    theirs = wait_for(lambda: established(lab.server, 2), 10, what="server side")
    unknown = [t for t in range(1, 200) if t not in {c.token for c in ours + theirs}]
    for ns, listed in ((lab.client, ours), (lab.server, theirs)):
        tokens = [c.token for c in listed]
        found = asyncio.run(find_mptcp_connections(unknown[:100] + tokens, ns))
        assert {(c.token, c.laddr, c.raddr, c.state, c.server_side) for c in found} == {
            (c.token, c.laddr, c.raddr, c.state, ns == lab.server) for c in listed}
        assert len(found) == 2
    assert asyncio.run(find_mptcp_connections([], lab.client)) == []


def test_a_listener_alone_lists_nothing(lab: Lab) -> None:
    start_server(lab)
    assert lab.exec(lab.server, "ss", "-MlnH").stdout.strip()  # the listener
    assert listing(lab.server) == []
    assert listing(lab.client) == []


FALLBACK_SERVER = f"""
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # plain TCP
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT}))
s.listen(4)
s.settimeout(20)
print("listening", flush=True)
c, _ = s.accept()
c.settimeout(20)
c.recv(100)
c.sendall(b"ok\\n")
c.recv(100)  # until the client closes (bounded by the timeout)
"""

FALLBACK_CLIENT = f"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
s.settimeout(20)
s.connect((sys.argv[1], {PORT}))
s.sendall(b"hello\\n")
s.recv(100)
print("connected", s.getsockname()[1], flush=True)
time.sleep({HOLD})
s.close()
"""


def test_a_connection_that_fell_back_to_tcp_is_flagged(lab: Lab) -> None:
    """The peer does not speak MPTCP: the client's socket keeps a token but
    the connection is plain TCP (ss: ``fallback``)."""
    link = lab.links[0]
    srv = lab.python(lab.server, "-c", FALLBACK_SERVER, name="tcp-server")
    srv.wait_output("listening")
    client = lab.python(lab.client, "-c", FALLBACK_CLIENT, str(link.server4),
                        name="fallback-client")
    port = int(client.wait_output(r"connected (\d+)").group(1))
    (conn,) = wait_for(lambda: listing(lab.client), 10, what="the connection")
    assert conn.fallback
    assert conn.laddr == SockAddr(link.client4, port)
    assert conn.raddr == SockAddr(link.server4, PORT)
    assert rows([conn]) == ss_rows(lab, lab.client)
    assert "fallback" in lab.exec(lab.client, "ss", "-MniH").stdout
    assert client.wait(HOLD + 20) == 0
    wait_for(lambda: listing(lab.client) == [], 10, what="client side to be empty")


def test_a_missing_namespace_is_an_oserror_and_is_not_created(lab: Lab) -> None:
    name = f"{lab.tag}-missing"
    with pytest.raises(OSError) as info:
        listing(name)
    assert info.value.errno == errno.ENOENT
    assert repr(name) in str(info.value)
    assert "cannot open a sock_diag socket" in str(info.value)
    assert name not in list_namespaces()


def test_a_protocol_without_diag_support_is_an_error(lab: Lab) -> None:
    """The kernel ends a dump for a protocol without an inet_diag handler
    with an NLMSG_DONE carrying -ENOENT; it must surface as an error (this
    is what a kernel without mptcp_diag answers for MPTCP)."""

    async def dump() -> None:
        sock = netlink_socket(NETLINK_SOCK_DIAG, lab.client)
        try:
            await dump_family(sock, socket.AF_INET, protocol=200)
        finally:
            sock.close()

    with pytest.raises(MptcpDiagUnsupported) as info:
        asyncio.run(dump())
    assert info.value.errno == errno.ENOENT


# -- subflows ------------------------------------------------------------------------


_SS_ULP = re.compile(r"tcp-ulp-mptcp flags:(\S+) token:([0-9a-f]+)\(id:(\d+)\)/"
                     r"([0-9a-f]+)\(id:(\d+)\)")


def ss_subflows(lab: Lab, ns: str) -> set[tuple[int, SockAddr, SockAddr, int, int]]:
    """``ss -tniH`` in ``ns``: (local token, local, peer, local id, remote id)
    of each TCP socket of the mptcp upper layer."""
    out = lab.exec(ns, "ss", "-tniH").stdout
    result = set()
    current: tuple[SockAddr, SockAddr] | None = None
    for line in out.splitlines():
        if line and not line[0].isspace():
            words = line.split()
            local = re.sub(r"%[^:\]]+", "", words[3])  # "198.51.100.1%c2:28865"
            current = (_sockaddr(local), _sockaddr(words[4]))
            continue
        m = _SS_ULP.search(line)
        if m and current is not None:
            result.add((int(m.group(4), 16), *current, int(m.group(5)), int(m.group(3))))
    return result


def subflow_listing(ns: str) -> list[MptcpSubflow]:
    return asyncio.run(list_mptcp_subflows(ns))


def test_lists_every_subflow_with_its_token_ids_interface_and_backup_flag(
        lab: Lab) -> None:
    """A connection with a second subflow from a backup endpoint of the
    client's second link (in-kernel path manager): both sides list both
    subflows under the connection's token, as ``ss -tni`` shows them."""
    l1, l2 = lab.links
    for ns in (lab.client, lab.server):
        lab.exec(ns, "ip", "mptcp", "limits", "set", "subflows", "2",
                 "add_addr_accepted", "2")
    lab.exec(lab.client, "ip", "mptcp", "endpoint", "add", str(l2.client4), "id", "5",
             "dev", l2.client_if, "subflow", "backup")
    start_server(lab)
    proc = start_client(lab, l1.server4)

    def two(ns: str) -> list[MptcpSubflow] | None:
        found = subflow_listing(ns)
        return found if len(found) == 2 and all(s.established for s in found) else None

    ours = wait_for(lambda: two(lab.client), 10, what="two client subflows")
    (conn,) = listing(lab.client)
    assert {s.token for s in ours} == {conn.token}
    (initial,) = [s for s in ours if s.initial]
    (join,) = [s for s in ours if not s.initial]
    assert (initial.laddr, initial.raddr) == (conn.laddr, conn.raddr)
    assert not initial.backup and initial.ifindex == 0
    assert join.laddr.ip == l2.client4 and join.raddr == conn.raddr
    assert join.backup and join.local_id == 5
    ifindex = json.loads(lab.exec(lab.client, "ip", "-j", "link", "show",
                                  l2.client_if).stdout)[0]["ifindex"]
    assert join.ifindex == ifindex
    assert {(s.token, s.laddr, s.raddr, s.local_id, s.remote_id) for s in ours} == \
        ss_subflows(lab, lab.client)

    theirs = wait_for(lambda: two(lab.server), 10, what="two server subflows")
    (sconn,) = listing(lab.server)
    assert {s.token for s in theirs} == {sconn.token}
    (sjoin,) = [s for s in theirs if not s.initial]
    assert sjoin.backup_remote and not sjoin.backup and sjoin.remote_id == 5
    assert {(s.token, s.laddr, s.raddr, s.local_id, s.remote_id) for s in theirs} == \
        ss_subflows(lab, lab.server)

    # Looked up one by one by their addresses (what the resync asks for the
    # subflows a dump did not show: a dump can miss a live one under churn),
    # they are found as listed, the server's IPv4-mapped ones too; a path
    # without a socket is not found.
    def same(subflows: list[MptcpSubflow]) -> set[tuple[Any, ...]]:
        return {(s.token, s.laddr.unmapped(), s.raddr.unmapped(), s.local_id, s.remote_id,
                 s.ifindex) for s in subflows}

    nowhere = (SockAddr(l2.client4, 1), conn.raddr, 0)
    for ns, listed in ((lab.client, ours), (lab.server, theirs)):
        paths = [nowhere, *((s.laddr, s.raddr, s.ifindex) for s in listed)]
        assert same(asyncio.run(find_mptcp_subflows(paths, ns))) == same(listed)
    assert asyncio.run(find_mptcp_subflows([], lab.client)) == []

    # the client's own MPTCP_INFO counts the joined subflows
    assert client_result(proc)["info"]["subflows"] == 1
    wait_for(lambda: subflow_listing(lab.client) == [], 10, what="no subflows left")

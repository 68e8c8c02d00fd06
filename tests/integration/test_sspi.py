"""The bundled ``sspi`` plugin on real MPTCP connections.

The client namespace runs the userspace path manager and mptcpd with sspi;
unless a test says otherwise the server runs the in-kernel PM (which accepts
joins by itself).  Kernel state is read back independently: subflow sockets
with ``ss -tni`` (address, port, token, local address ID), per-link byte
counters with ``ip -s link``, the namespaces' MPTCP counters with ``nstat``
(join SYNs sent, joins rejected), and the traffic client's ``MPTCP_INFO``;
the daemon's log is only a second witness.  Connections are closed by ending
the client process that holds them (by PID).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import shutil
import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.lab import Lab, LabTimeout, Process, wait_for
from mptcpd.netlink.genl_commands import CommandChannel
from mptcpd.pm.path_manager import PathManager
from mptcpd.types import SockAddr
from tests.integration.test_control import mptcpctl
from tests.integration.test_daemon import READY, daemon_env

ROOT = Path(__file__).resolve().parents[2]
PORT = 5201
DUPLICATE = r"Subflow already exists on network interface \({index}\)\. Closing new subflow\."


@dataclasses.dataclass(frozen=True)
class Sock:
    """One TCP subflow socket of an MPTCP connection, as ``ss -tni`` shows it."""

    token: int  #: the local MPTCP connection's token
    local: str
    lport: int
    remote: str
    rport: int
    local_id: int
    join: bool  #: an MP_JOIN subflow (not the initial one)
    bytes_acked: int

    @property
    def key(self) -> tuple[str, int, str, int]:
        """What identifies the socket (its counters change)."""
        return (self.local, self.lport, self.remote, self.rport)


def keys(per_if: dict[str, list[Sock]]) -> dict[str, list[tuple[str, int, str, int]]]:
    return {ifname: [sock.key for sock in socks] for ifname, socks in per_if.items()}


def _ip(text: str) -> str:
    """An address as ``ss`` prints it, without scope or brackets, IPv4-mapped
    addresses (a dual-stack listener's IPv4 connections) made IPv4."""
    ip = ipaddress.ip_address(text.split("%")[0].strip("[]"))
    return str(getattr(ip, "ipv4_mapped", None) or ip)


def subflow_sockets(lab: Lab, ns: str) -> list[Sock]:
    """Every established MPTCP subflow socket in ``ns`` (``ss -tniH``)."""
    out = lab.exec(ns, "ss", "-tniH", "state", "established").stdout
    result: list[Sock] = []
    head: re.Match[str] | None = None
    for line in out.splitlines():
        m = re.match(r"^\d+\s+\d+\s+(\S+):(\d+)\s+(\S+):(\d+)", line)
        if m:
            head = m
            continue
        info = re.search(r"tcp-ulp-mptcp flags:(\S+) token:[0-9a-f]+\(id:\d+\)/"
                         r"([0-9a-f]+)\(id:(\d+)\)", line)
        if head is None or info is None:
            continue
        acked = re.search(r"\bbytes_acked:(\d+)", line)
        result.append(Sock(
            token=int(info.group(2), 16),
            local=_ip(head.group(1)), lport=int(head.group(2)),
            remote=_ip(head.group(3)), rport=int(head.group(4)),
            local_id=int(info.group(3)), join="J" in info.group(1),
            bytes_acked=int(acked.group(1)) if acked else 0,
        ))
        head = None
    return result


def by_interface(lab: Lab, socks: list[Sock]) -> dict[int, dict[str, list[Sock]]]:
    """token -> client interface name -> its subflow sockets."""
    where = {str(link.client4): link.client_if for link in lab.links}
    where.update({str(link.client6): link.client_if for link in lab.links})
    table: dict[int, dict[str, list[Sock]]] = defaultdict(lambda: defaultdict(list))
    for sock in socks:
        table[sock.token][where.get(sock.local, sock.local)].append(sock)
    return table


def one_per_interface(lab: Lab, tokens: set[int]) -> dict[int, dict[str, list[Sock]]] | None:
    """The table when each token has exactly one subflow on each client link."""
    table = by_interface(lab, subflow_sockets(lab, lab.client))
    names = {link.client_if for link in lab.links}
    for token in tokens:
        per_if = table.get(token, {})
        if set(per_if) != names or any(len(s) != 1 for s in per_if.values()):
            return None
    return table


def mptcp_tokens(lab: Lab, ns: str) -> set[int]:
    """Tokens of the MPTCP connections in ``ns`` (``ss -Mni``)."""
    out = lab.exec(ns, "ss", "-MniH").stdout
    return {int(t, 16) for t in re.findall(r"\btoken:([0-9a-f]+)", out)}


def ifindex(lab: Lab, ns: str, ifname: str) -> int:
    return int(json.loads(lab.ip(ns, "-j", "link", "show", "dev", ifname).stdout)[0]["ifindex"])


def tx_bytes(lab: Lab, ns: str) -> dict[str, int]:
    """Bytes sent by each interface of ``ns`` (``ip -s link``)."""
    data = json.loads(lab.ip(ns, "-s", "-j", "link", "show").stdout)
    return {entry["ifname"]: int(entry["stats64"]["tx"]["bytes"]) for entry in data}


def mib(lab: Lab, ns: str) -> dict[str, int]:
    """The namespace's SNMP/MPTCP counters (``nstat``, absolute, history untouched)."""
    out = lab.exec(ns, "nstat", "-asz").stdout
    return {f[0]: int(f[1]) for f in (line.split() for line in out.splitlines())
            if len(f) >= 2 and f[1].isdigit()}


def start_sspi(lab: Lab, tmp_path: Path, ns: str | None = None,
               config: str = "[core]\n") -> Process:
    """mptcpd with only the bundled sspi (a private copy of the file) in ``ns``."""
    directory = tmp_path / f"plugins-{ns or 'client'}"
    directory.mkdir()
    directory.chmod(0o755)
    shutil.copyfile(ROOT / "plugins" / "sspi.py", directory / "sspi.py")
    (directory / "sspi.py").chmod(0o644)
    daemon = lab.start_mptcpd("--log=stderr", "-d", f"--plugin-dir={directory}",
                              "--load-plugins=sspi", "--path-manager=sspi", ns=ns,
                              config=config, env=daemon_env())
    daemon.wait_output(READY, timeout=20)
    assert "MPTCP single-subflow-per-interface path manager initialized." in daemon.output()
    return daemon


def start_server(lab: Lab, kernel_pm: bool = True) -> Process:
    if kernel_pm:
        lab.set_path_manager(lab.server, "kernel")
        lab.ip(lab.server, "mptcp", "limits", "set", "subflows", "8",
               "add_addr_accepted", "8")
    server = lab.python(lab.server, "-m", "tests.lab.traffic", "server",
                        "--port", str(PORT), "--duration", "120")
    server.wait_output("listening")
    return server


def start_clients(lab: Lab, count: int, nbytes: int, hold: float,
                  ipv6: bool = False) -> list[Process]:
    server = lab.links[0].server6 if ipv6 else lab.links[0].server4
    return [
        lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                   str(server), str(PORT), "--bytes", str(nbytes),
                   "--hold", str(hold), "--timeout", str(hold + 30), name=f"client{i}")
        for i in range(count)
    ]


def wait_tokens(lab: Lab, count: int, timeout: float = 30.0) -> set[int]:
    """The client's connection tokens, once there are at least ``count``."""

    def enough() -> set[int] | None:
        tokens = mptcp_tokens(lab, lab.client)
        return tokens if len(tokens) >= count else None

    return wait_for(enough, timeout=timeout, what=f"{count} MPTCP connections in the client")


def error_lines(daemon: Process) -> list[str]:
    """Lines a healthy run never logs."""
    bad = ("Untracked", "not tracked", "Unable to", "No network interface",
           "Traceback", "failed")
    return [line for line in daemon.output().splitlines() if any(b in line for b in bad)]


async def add_duplicate_join(lab: Lab, token: int, local: SockAddr, local_id: int,
                             remote: SockAddr) -> None:
    """Ask the client's kernel for one more subflow, as another tool would."""
    async with CommandChannel(lab.client) as channel:
        pm = PathManager(channel)
        pm.set_ready(True)
        await pm.add_subflow(token, local_id, 0, local, remote, False)


# -- tests ------------------------------------------------------------------------


@pytest.mark.lab(links=3, path_manager="userspace")
def test_every_connection_gets_one_subflow_per_interface(lab: Lab, tmp_path: Path) -> None:
    daemon = start_sspi(lab, tmp_path)
    start_server(lab)
    count, nbytes = 20, 1 << 20
    before = tx_bytes(lab, lab.client)
    clients = start_clients(lab, count, nbytes, hold=15)
    tokens = wait_tokens(lab, count)
    assert len(tokens) == count
    table = wait_for(lambda: one_per_interface(lab, tokens), timeout=20,
                     what="one subflow per interface on every connection")

    # Joins carry the ID manager's IDs (never 0), the same per address for
    # every connection; the initial subflow keeps the kernel's ID 0.
    ids: dict[str, set[int]] = defaultdict(set)
    for token in tokens:
        for ifname, (sock,) in table[token].items():
            assert sock.join == (ifname != lab.links[0].client_if)
            assert sock.remote == str(lab.links[0].server4) and sock.rport == PORT
            ids[ifname].add(sock.local_id)
    assert ids[lab.links[0].client_if] == {0}
    join_ids = [ids[link.client_if] for link in lab.links[1:]]
    assert all(len(s) == 1 and 0 not in s for s in join_ids)
    assert join_ids[0] != join_ids[1]

    # MPTCP_INFO of every client: two joins, no other subflow ever tried.
    for client in clients:
        assert client.wait(60) == 0
        info = json.loads(client.output())["info"]
        assert info["token"] in tokens
        assert info["subflows"] == 2, info
        assert info.get("subflows_total", 3) == 3, info
        assert info["bytes_acked"] >= nbytes

    # The data went over all three links, not only the first.
    after = tx_bytes(lab, lab.client)
    sent = {link.client_if: after[link.client_if] - before[link.client_if]
            for link in lab.links}
    assert sum(sent.values()) >= count * nbytes
    assert all(value >= 64 * 1024 for value in sent.values()), sent
    # Exactly one join attempt per extra interface and connection, none refused.
    assert mib(lab, lab.client)["MPTcpExtMPJoinSynTx"] == 2 * count
    assert mib(lab, lab.server)["MPTcpExtMPJoinRejected"] == 0
    assert "Closing new subflow" not in daemon.output()
    assert error_lines(daemon) == []
    assert daemon.stop() == 0
    assert "MPTCP single-subflow-per-interface path manager exited." in daemon.output()


@pytest.mark.lab(links=2, path_manager="userspace")
async def test_a_second_join_on_an_interface_is_closed(lab: Lab, tmp_path: Path) -> None:
    daemon = start_sspi(lab, tmp_path)
    start_server(lab)
    start_clients(lab, 1, 0, hold=40)
    (token,) = wait_tokens(lab, 1)
    second = lab.links[1]
    table = wait_for(lambda: one_per_interface(lab, {token}), timeout=15,
                     what="the join on the second link")
    (original,) = table[token][second.client_if]

    # A second subflow from the same interface (same address, another
    # destination) joins: sspi closes it and keeps the first one.
    await add_duplicate_join(lab, token, SockAddr(second.client4), original.local_id,
                             SockAddr(second.server4, PORT))
    daemon.wait_output(DUPLICATE.format(index=ifindex(lab, lab.client, second.client_if)))

    def only_original() -> bool:
        socks = by_interface(lab, subflow_sockets(lab, lab.client))[token][second.client_if]
        return socks == [] or (len(socks) == 1 and socks[0].lport == original.lport)

    wait_for(lambda: only_original() and one_per_interface(lab, {token}), timeout=10,
             what="the duplicate join to be closed")
    (kept,) = by_interface(lab, subflow_sockets(lab, lab.client))[token][second.client_if]
    assert (kept.lport, kept.remote) == (original.lport, str(lab.links[0].server4))
    assert error_lines(daemon) == []


@pytest.mark.lab(links=3, path_manager="userspace")
def test_deny_join_id0_is_honoured(lab: Lab, tmp_path: Path) -> None:
    daemon = start_sspi(lab, tmp_path)
    lab.sysctl(lab.server, "net.mptcp.allow_join_initial_addr_port", "0")
    start_server(lab)
    # The server announces its second address only: the client may join that
    # one, never the initial address and port.
    announced = lab.links[1].server4
    lab.ip(lab.server, "mptcp", "endpoint", "add", str(announced), "dev",
           lab.links[1].server_if, "signal")
    start_clients(lab, 3, 256 * 1024, hold=15)
    tokens = wait_tokens(lab, 3)
    table = wait_for(lambda: one_per_interface(lab, tokens), timeout=20,
                     what="one subflow per interface")
    # The kernel told the userspace PM about the peer's "C" flag.
    for token in tokens:
        daemon.wait_output(rf"Connection {token:08x} established \(client side, "
                           r"deny_join_id0 True\)")
    for token in tokens:
        for link in lab.links[1:]:
            (sock,) = table[token][link.client_if]
            assert (sock.remote, sock.rport) == (str(announced), PORT)
            assert sock.join and sock.local_id != 0
    assert all(not (s.join and s.remote == str(lab.links[0].server4))
               for s in subflow_sockets(lab, lab.client))
    # Never even tried: one join SYN per extra interface, none refused.
    assert mib(lab, lab.client)["MPTcpExtMPJoinSynTx"] == 2 * 3
    assert mib(lab, lab.server)["MPTcpExtMPJoinRejected"] == 0
    assert error_lines(daemon) == []


@pytest.mark.lab(links=2, path_manager="userspace")
async def test_closing_one_connection_leaves_the_others_alone(
        lab: Lab, tmp_path: Path) -> None:
    daemon = start_sspi(lab, tmp_path)
    start_server(lab)
    clients = start_clients(lab, 5, 0, hold=45)
    tokens = wait_tokens(lab, 5)
    table = wait_for(lambda: one_per_interface(lab, tokens), timeout=20,
                     what="one subflow per interface")
    second = lab.links[1]

    # Close one connection: find the client process that owns it by its port.
    (victim, *others) = sorted(tokens)
    victim_port = table[victim][lab.links[0].client_if][0].lport
    ss_line = next(line for line in lab.exec(lab.client, "ss", "-MnpH").stdout.splitlines()
                   if f":{victim_port} " in line)
    owner = next(c for c in clients if f"pid={c.pid}," in ss_line)
    owner.stop()
    wait_for(lambda: victim not in mptcp_tokens(lab, lab.client), timeout=10,
             what="the closed connection to go away")

    # The others keep exactly the subflows they had.
    now = one_per_interface(lab, set(others))
    assert now is not None
    for token in others:
        assert keys(now[token]) == keys(table[token])

    # And sspi still tracks them: a duplicate join on one of them is closed
    # (the C sspi dropped the interface's whole record here, defect 4).
    target = others[0]
    (join,) = table[target][second.client_if]
    await add_duplicate_join(lab, target, SockAddr(second.client4), join.local_id,
                             SockAddr(second.server4, PORT))
    daemon.wait_output(DUPLICATE.format(index=ifindex(lab, lab.client, second.client_if)))
    wait_for(lambda: (t := one_per_interface(lab, set(others)))
             and keys(t[target]) == keys(table[target]),
             timeout=10, what="the duplicate join to be closed")
    assert error_lines(daemon) == []


@pytest.mark.lab(links=3, path_manager="userspace")
def test_the_server_side_announces_one_address_per_interface(
        lab: Lab, tmp_path: Path) -> None:
    """sspi on the server (userspace PM): it announces its other interfaces'
    addresses; the client's in-kernel PM joins them, one per interface."""
    lab.set_path_manager(lab.client, "kernel")
    lab.ip(lab.client, "mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "8")
    daemon = start_sspi(lab, tmp_path, ns=lab.server)
    start_server(lab, kernel_pm=False)
    clients = start_clients(lab, 3, 256 * 1024, hold=10)
    tokens = wait_tokens(lab, 3)

    server_if = {str(link.server4): link.server_if for link in lab.links}

    def per_server_interface() -> dict[int, dict[str, int]] | None:
        socks = subflow_sockets(lab, lab.server)
        table: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for sock in socks:
            table[sock.token][server_if.get(sock.local, sock.local)] += 1
        wanted = {link.server_if: 1 for link in lab.links}
        if len(table) < 3 or any(dict(v) != wanted for v in table.values()):
            return None
        return table

    try:
        wait_for(per_server_interface, timeout=20, what="one subflow per server interface")
    except LabTimeout as exc:
        # An ADD_ADDR the client's PM dropped (sent while it was busy with the
        # previous one) comes again only after the kernel's retransmission
        # timeout: say so when it happened.
        counters = {f"{ns}.{key}": value
                    for ns, table in (("server", mib(lab, lab.server)),
                                      ("client", mib(lab, lab.client)))
                    for key, value in table.items()
                    if key.startswith(("MPTcpExtAddAddr", "MPTcpExtEchoAdd"))}
        raise LabTimeout(f"{exc}; {counters}; subflows {subflow_sockets(lab, lab.server)}"
                         ) from None
    for client in clients:
        assert client.wait(60) == 0
        info = json.loads(client.output())["info"]
        assert info["token"] in tokens
        assert info["subflows"] == 2 and info["add_addr_accepted"] == 2, info
    log = daemon.output()
    assert len(re.findall(r"announcing ", log)) == 2 * 3
    assert error_lines(daemon) == []



@pytest.mark.lab(links=3, path_manager="userspace")
def test_both_ends_running_sspi_settle_on_one_subflow_per_interface_each(
        lab: Lab, tmp_path: Path) -> None:
    """Client and server both run sspi: the server closes client joins that
    land on its initial interface, the client re-targets them at the
    addresses the server announced, and each host ends with one subflow per
    interface, after at most one join attempt per client interface and server
    address (its initial one and the two it announces, one at a time): no loop."""
    client_daemon = start_sspi(lab, tmp_path)
    server_daemon = start_sspi(lab, tmp_path, ns=lab.server)
    start_server(lab, kernel_pm=False)
    count = 5
    clients = start_clients(lab, count, 256 * 1024, hold=10)
    tokens = wait_tokens(lab, count)
    server_if = {str(link.server4): link.server_if for link in lab.links}

    def settled() -> bool:
        if one_per_interface(lab, tokens) is None:
            return False
        table: dict[int, list[str]] = defaultdict(list)
        for sock in subflow_sockets(lab, lab.server):
            table[sock.token].append(server_if.get(sock.local, sock.local))
        return len(table) == count and all(
            sorted(v) == sorted(server_if.values()) for v in table.values())

    wait_for(settled, timeout=20, what="one subflow per interface on both hosts")
    attempts = mib(lab, lab.client)["MPTcpExtMPJoinSynTx"]
    assert 2 * count <= attempts <= 2 * 3 * count
    for client in clients:
        assert client.wait(60) == 0
        assert json.loads(client.output())["info"]["subflows"] == 2
    assert error_lines(client_daemon) == [] and error_lines(server_daemon) == []


@pytest.mark.lab(links=3, path_manager="userspace")
@pytest.mark.parametrize("loss", ["carrier", "address"])
def test_a_lost_link_closes_the_joins_there_and_its_return_restores_them(
        lab: Lab, tmp_path: Path, loss: str) -> None:
    """The third link loses its carrier, or its address (the carrier stays):
    the joins there close.  Once it is back, every connection gets its join
    there again (after an address flap sspi used to count the interface as
    tried, and left it without one)."""
    daemon = start_sspi(lab, tmp_path)
    start_server(lab)
    start_clients(lab, 3, 0, hold=40)
    tokens = wait_tokens(lab, 3)
    before = wait_for(lambda: one_per_interface(lab, tokens), timeout=15,
                      what="one subflow per interface")
    third = lab.links[2]
    address = f"{third.client4}/{third.subnet4.prefixlen}"
    if loss == "carrier":
        lab.set_carrier(third, False)
    else:
        lab.ip(lab.client, "addr", "del", address, "dev", third.client_if)

    def third_closed() -> bool:
        table = by_interface(lab, subflow_sockets(lab, lab.client))
        return all(third.client_if not in table[token] for token in tokens)

    wait_for(third_closed, timeout=10, what=f"the joins on {third.client_if} to close")
    if loss == "carrier":
        lab.set_carrier(third, True)
    else:
        lab.ip(lab.client, "addr", "add", address, "dev", third.client_if)
    after = wait_for(lambda: one_per_interface(lab, tokens), timeout=15,
                     what=f"new joins on {third.client_if}")
    for token in tokens:
        assert after[token][third.client_if][0].lport != before[token][third.client_if][0].lport
        for link in lab.links[:2]:  # the other links were not touched
            assert keys(after[token])[link.client_if] == keys(before[token])[link.client_if]
    assert error_lines(daemon) == []


@pytest.mark.lab(links=3, path_manager="userspace")
def test_ipv6_connections_get_ipv6_subflows(lab: Lab, tmp_path: Path) -> None:
    daemon = start_sspi(lab, tmp_path)
    start_server(lab)
    clients = start_clients(lab, 3, 256 * 1024, hold=8, ipv6=True)
    tokens = wait_tokens(lab, 3)
    table = wait_for(lambda: one_per_interface(lab, tokens), timeout=20,
                     what="one subflow per interface")
    for token in tokens:
        for link in lab.links:
            (sock,) = table[token][link.client_if]
            assert (sock.local, sock.remote) == (str(link.client6), str(lab.links[0].server6))
    for client in clients:
        assert client.wait(60) == 0
        assert json.loads(client.output())["info"]["subflows"] == 2
    assert error_lines(daemon) == []


@pytest.mark.lab(links=2, path_manager="userspace")
def test_a_full_command_queue_delays_subflows_and_loses_none(lab: Lab, tmp_path: Path) -> None:
    """A burst of connections against a command queue of 2: the subflow
    creations it refuses never reached the kernel, so they are asked for
    again after a short backoff spread at random, and are not counted as
    failed attempts.  Every connection gets its subflow, and none is given
    up.  Before, they were failures: the refused connections all came back
    in the same loop turn, where the queue refused all but two of them
    again, and gave up after six rounds."""
    daemon = start_sspi(lab, tmp_path, config="[core]\ncommand-queue-size = 2\n")
    lab.set_path_manager(lab.server, "kernel")
    lab.ip(lab.server, "mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "8")
    lab.python(lab.server, "-m", "tests.lab.traffic", "hold", "--bind", "0.0.0.0",
               "--port", str(PORT), "--duration", "120").wait_output("listening")
    count = 120
    conns = lab.python(lab.client, "-m", "tests.lab.traffic", "conns",
                       str(lab.links[0].server4), str(PORT), "--count", str(count),
                       "--want-subflows", "1", "--deadline", "20", name="conns")
    assert conns.wait(90) == 0
    doc = json.loads(conns.output().strip().splitlines()[-1])
    opened = [c for c in doc["conns"] if c[3] is not None]
    served = [c for c in opened if c[2] is not None]
    assert len(opened) == count
    assert len(served) == count, f"{count - len(served)} connection(s) without their subflow"
    output = daemon.output()
    assert "Command queue full" in output  # the burst did overflow it
    assert "giving up" not in output
    assert daemon.stop() == 0


@pytest.mark.lab(links=2, path_manager="userspace")
def test_a_full_command_queue_still_closes_every_duplicate_join(
        lab: Lab, tmp_path: Path) -> None:
    """sspi on the server with a command queue of 2; a burst of connections
    whose client (in-kernel PM) each joins from its second link to the
    server's initial address, a duplicate on the server's interface.  The
    closes the queue refuses are sent again until it takes them: no
    duplicate stays.  Before, a refused close was forgotten, and most
    duplicates stayed open."""
    second = lab.links[1]
    lab.set_path_manager(lab.client, "kernel")
    lab.ip(lab.client, "mptcp", "endpoint", "add", str(second.client4), "dev",
           second.client_if, "subflow")
    lab.ip(lab.client, "mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "0")
    daemon = start_sspi(lab, tmp_path, ns=lab.server,
                        config="[core]\ncommand-queue-size = 2\n")
    lab.python(lab.server, "-m", "tests.lab.traffic", "hold", "--bind", "0.0.0.0",
               "--port", str(PORT), "--duration", "120").wait_output("listening")
    count = 100
    lab.python(lab.client, "-m", "tests.lab.traffic", "conns", str(lab.links[0].server4),
               str(PORT), "--count", str(count), "--deadline", "30", name="conns")
    index = ifindex(lab, lab.server, lab.links[0].server_if)
    closing = f"Subflow already exists on network interface ({index}). Closing new subflow."
    wait_for(lambda: daemon.output().count(closing) >= count, timeout=20,
             what=f"{count} duplicate joins")

    def duplicates() -> list[Sock]:
        return [sock for sock in subflow_sockets(lab, lab.server)
                if sock.join and sock.remote == str(second.client4)]

    wait_for(lambda: not duplicates(), timeout=20, what="every duplicate join closed")
    assert len({sock.token for sock in subflow_sockets(lab, lab.server)}) == count
    assert "Command queue full" in daemon.output()  # the burst did overflow it


@pytest.mark.lab(links=2, path_manager="userspace")
def test_a_connection_whose_established_was_lost_still_gets_its_subflow(
        lab: Lab, tmp_path: Path) -> None:
    """sspi opens a client connection's subflows at connection_established.
    The daemon has this connection's CREATED, then loses its ESTABLISHED to
    a receive overrun: frozen while a flood of connections fills its event
    socket, the connection sends its first data (the client's ESTABLISHED
    waits for it).  The resync gives the plugin the connection_established
    it missed, from the kernel's listing, and the subflow is opened.  Before,
    a bound connection never had it, and stayed on one path."""
    control = tmp_path / "ctl" / "control"
    daemon = start_sspi(lab, tmp_path, config=f"[core]\ncontrol-socket={control}\n")
    start_server(lab)
    lab.python(lab.server, "-m", "tests.lab.traffic", "sink", "--port", "5300",
               "--duration", "60", name="sink").wait_output("listening")
    server = str(lab.links[0].server4)
    go = tmp_path / "go"
    held = lab.python(lab.client, "-m", "tests.lab.traffic", "client", server, str(PORT),
                      "--hold", "10", "--start-after", str(go), "--timeout", "30",
                      name="held")
    (token,) = wait_tokens(lab, 1)
    # Its CREATED is handled: the connection is bound to sspi.
    wait_for(lambda: [c for c in mptcpctl(control, "connections")
                      if c["token"] == token and c["plugin"] == "sspi"], 10,
             what="the connection bound to sspi")
    daemon.send_signal(signal.SIGSTOP)
    try:
        assert all(f.wait(30) == 0 for f in lab.flood(3))

        def sequence() -> tuple[str, str] | None:
            """The held connection's (write_seq, snd_una), from ``ss -Mni``
            (which prints the token without leading zeros)."""
            m = re.search(rf"token:{token:x} write_seq:([0-9a-f]+) snd_una:([0-9a-f]+)",
                          lab.exec(lab.client, "ss", "-MniH").stdout)
            return (m.group(1), m.group(2)) if m else None

        before = sequence()
        assert before is not None
        go.touch()
        # Its first data acknowledged: ESTABLISHED, into a full socket.
        wait_for(lambda: (now := sequence()) is not None and now[0] != before[0]
                 and now[0] == now[1], 10, what="the held connection's data acknowledged")
    finally:
        daemon.send_signal(signal.SIGCONT)
    daemon.wait_output(r"Resynchronised after lost events", timeout=30)
    assert held.wait(40) == 0
    assert json.loads(held.output())["info"]["subflows"] == 1
    assert f"Connection {token:08x} was established while events were lost." \
        in daemon.output()
    assert daemon.stop() == 0


@pytest.mark.lab(links=2, path_manager="userspace")
def test_a_pending_subflow_whose_failure_was_lost_is_tried_again(
        lab: Lab, tmp_path: Path) -> None:
    """sspi creates a subflow; the kernel takes the creation, and the join
    waits for the server's answer (none comes: a blackhole route).  The
    daemon is frozen, a flood of connections fills its event socket, and
    then the join fails (destroyed with ``ss -K``): its SUB_CLOSED is lost.
    The resync finds that the creation the kernel took is gone, and gives
    sspi the ``subflow_closed`` it missed; sspi tries the subflow again, and
    this time it is established.  Before, the subflow stayed pending until
    the connection closed, and the interface carried no subflow."""
    second = lab.links[1]
    daemon = start_sspi(lab, tmp_path, config="[core]\n[plugin sspi]\nretry-base = 0.2\n")
    start_server(lab)
    lab.python(lab.server, "-m", "tests.lab.traffic", "sink", "--port", "5300",
               "--duration", "60", name="sink").wait_output("listening")
    # The server cannot answer the join from the second link.
    lab.ip(lab.server, "route", "add", "blackhole", f"{second.client4}/32")
    (held,) = start_clients(lab, 1, 0, hold=15)
    (token,) = wait_tokens(lab, 1)

    def joining() -> str:
        """The join from the second link waiting for its SYN-ACK (``ss``)."""
        return lab.exec(lab.client, "ss", "-tnH", "state", "syn-sent",
                        "src", str(second.client4)).stdout.strip()

    wait_for(joining, 10, what="the join in SYN_SENT")
    daemon.send_signal(signal.SIGSTOP)
    try:
        assert all(f.wait(30) == 0 for f in lab.flood(3))
        # The join fails into a full socket; the server can answer the next one.
        lab.exec(lab.client, "ss", "-K", "-tn", "state", "syn-sent",
                 "src", str(second.client4))
        wait_for(lambda: not joining(), 10, what="the join destroyed")
        lab.ip(lab.server, "route", "del", "blackhole", f"{second.client4}/32")
    finally:
        daemon.send_signal(signal.SIGCONT)
    daemon.wait_output(r"Resynchronised after lost events", timeout=30)
    wait_for(lambda: one_per_interface(lab, {token}), timeout=20,
             what="the subflow on the second link")
    assert held.wait(40) == 0
    assert json.loads(held.output())["info"]["subflows"] == 1
    assert f"of connection {token:08x}, created by its plugin, ended while events " \
        "were lost." in daemon.output()
    assert daemon.stop() == 0


@pytest.mark.lab(links=2, path_manager="userspace")
def test_a_connection_adopted_before_its_first_data_waits_for_its_established(
        lab: Lab, tmp_path: Path) -> None:
    """A client connection whose CREATED was lost (the daemon frozen, a flood
    filling its event socket) is adopted by the resync before it has sent
    data: its socket is established (the handshake), the connection is not
    (the kernel's ESTABLISHED comes with the first data exchange, and it
    refuses subflows before: ENOTCONN).  It is adopted without
    connection_established, which its own ESTABLISHED brings once data
    flows, and sspi then opens its subflow, at the first try.  Before, the
    resync gave connection_established at once: sspi's subflow was refused
    (``Transport endpoint is not connected``) and tried again a second later."""
    daemon = start_sspi(lab, tmp_path)
    start_server(lab)
    lab.python(lab.server, "-m", "tests.lab.traffic", "sink", "--port", "5300",
               "--duration", "60", name="sink").wait_output("listening")
    server = str(lab.links[0].server4)
    go = tmp_path / "go"
    daemon.send_signal(signal.SIGSTOP)
    try:
        assert all(f.wait(30) == 0 for f in lab.flood(3))
        held = lab.python(lab.client, "-m", "tests.lab.traffic", "client", server, str(PORT),
                          "--hold", "8", "--start-after", str(go), "--timeout", "30",
                          name="held")
        (token,) = wait_tokens(lab, 1)
    finally:
        daemon.send_signal(signal.SIGCONT)
    daemon.wait_output(rf"Connection {token:08x} was created while events were lost; "
                       r'adopted by "sspi"\.', timeout=30)
    time.sleep(0.5)  # what a premature connection_established would have done, done
    assert one_per_interface(lab, {token}) is None
    go.touch()
    wait_for(lambda: one_per_interface(lab, {token}), timeout=10,
             what="the adopted connection's subflow")
    assert held.wait(40) == 0
    assert json.loads(held.output())["info"]["subflows"] == 1
    output = daemon.output()
    assert "Transport endpoint is not connected" not in output
    assert mib(lab, lab.client)["MPTcpExtMPJoinSynTx"] == 1
    assert daemon.stop() == 0

"""The bundled ``fullmesh`` plugin on real MPTCP connections.

The client namespace runs the userspace path manager and mptcpd with
fullmesh; the server runs the in-kernel PM, which accepts joins by itself and
announces the addresses given as ``signal`` endpoints.  What the kernel did
is read back independently: subflow sockets and their acknowledged bytes
with ``ss -tni``, join counters with ``nstat``, and the traffic client's
``MPTCP_INFO``.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections import defaultdict
from pathlib import Path

import pytest

from tests.integration.test_daemon import READY, daemon_env
from tests.integration.test_sspi import (
    PORT,
    Sock,
    error_lines,
    mib,
    mptcp_tokens,
    subflow_sockets,
    wait_tokens,
)
from tests.lab import Lab, Process, wait_for

ROOT = Path(__file__).resolve().parents[2]


def start_plugin(lab: Lab, tmp_path: Path, name: str, settings: str = "") -> Process:
    """mptcpd in the client with only the bundled plugin ``name`` (a private
    copy, loaded with the daemon's ownership checks) and ``settings`` as its
    ``[plugin NAME]`` group."""
    directory = tmp_path / f"plugins-{name}"
    directory.mkdir()
    directory.chmod(0o755)
    shutil.copyfile(ROOT / "plugins" / f"{name}.py", directory / f"{name}.py")
    (directory / f"{name}.py").chmod(0o644)
    config = f"[core]\n[plugin {name}]\n{settings}"
    daemon = lab.start_mptcpd("--log=stderr", "-d", f"--plugin-dir={directory}",
                              f"--load-plugins={name}", f"--path-manager={name}",
                              config=config, env=daemon_env())
    daemon.wait_output(READY, timeout=20)
    return daemon


def start_server(lab: Lab, *signal: int) -> Process:
    """The traffic server behind the in-kernel PM, announcing the server
    addresses of the links numbered in ``signal`` (1-based)."""
    lab.set_path_manager(lab.server, "kernel")
    lab.ip(lab.server, "mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "8")
    for number in signal:
        announce(lab, number)
    server = lab.python(lab.server, "-m", "tests.lab.traffic", "server",
                        "--port", str(PORT), "--duration", "120")
    server.wait_output("listening")
    return server


def announce(lab: Lab, number: int) -> None:
    link = lab.links[number - 1]
    lab.ip(lab.server, "mptcp", "endpoint", "add", str(link.server4), "dev",
           link.server_if, "signal")


def start_clients(lab: Lab, count: int, nbytes: int, hold: float,
                  wait_subflows: int = 0) -> list[Process]:
    return [
        lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                   str(lab.links[0].server4), str(PORT), "--bytes", str(nbytes),
                   "--hold", str(hold), "--timeout", str(hold + 30),
                   "--wait-subflows", str(wait_subflows), name=f"client{i}")
        for i in range(count)
    ]


def clients_ended_with_three_joins(lab: Lab, daemon: Process, clients: list[Process],
                                   tokens: set[int], nbytes: int) -> None:
    """Each client ended well, its connection one of ``tokens`` with three
    joined subflows and ``nbytes`` acknowledged; three join SYNs per client
    and no error from the daemon."""
    for client in clients:
        assert client.wait(60) == 0
        info = json.loads(client.output())["info"]
        assert info["token"] in tokens and info["subflows"] == 3, info
        assert info["bytes_acked"] >= nbytes
    assert mib(lab, lab.client)["MPTcpExtMPJoinSynTx"] == 3 * len(clients)
    assert error_lines(daemon) == []


def paths(lab: Lab) -> dict[int, dict[tuple[str, str], list[Sock]]]:
    """token -> (client address, server address) -> its subflow sockets."""
    table: dict[int, dict[tuple[str, str], list[Sock]]] = defaultdict(
        lambda: defaultdict(list))
    for sock in subflow_sockets(lab, lab.client):
        table[sock.token][(sock.local, sock.remote)].append(sock)
    return table


def mesh(lab: Lab, servers: list[int]) -> set[tuple[str, str]]:
    """Every (client address, server address) pair to the given server links."""
    return {(str(c.client4), str(lab.links[s - 1].server4))
            for c in lab.links for s in servers}


def wait_mesh(lab: Lab, tokens: set[int], want: set[tuple[str, str]],
              timeout: float = 20) -> dict[int, dict[tuple[str, str], list[Sock]]]:
    """Wait until each token has exactly one subflow on each pair of ``want``."""

    def done() -> dict[int, dict[tuple[str, str], list[Sock]]] | None:
        table = paths(lab)
        for token in tokens:
            got = table.get(token, {})
            if set(got) != want or any(len(s) != 1 for s in got.values()):
                return None
        return table

    return wait_for(done, timeout=timeout, what=f"the subflows {sorted(want)}")


@pytest.mark.lab(links=2, path_manager="userspace")
def test_two_by_two_addresses_give_four_subflows_each_carrying_data(
        lab: Lab, tmp_path: Path) -> None:
    daemon = start_plugin(lab, tmp_path, "fullmesh")
    assert "MPTCP full-mesh path manager initialized (max-subflows 8" in daemon.output()
    start_server(lab, 2)
    # Rate-limit the client's links, so that data queues up in the subflows
    # and the kernel's scheduler spreads it over all of them: on an
    # unlimited veth a loaded machine drains each write at once, and the
    # scheduler may then keep using the first subflow only.
    for link in lab.links:
        lab.exec(lab.client, "tc", "qdisc", "add", "dev", link.client_if, "root", "tbf",
                 "rate", "100mbit", "burst", "32kb", "latency", "200ms")
    count, nbytes = 4, 4 << 20
    clients = start_clients(lab, count, nbytes, hold=6, wait_subflows=3)
    tokens = wait_tokens(lab, count)
    want = mesh(lab, [1, 2])
    assert len(want) == 4
    wait_mesh(lab, tokens, want)

    # Once every client has had its data acknowledged (it holds its
    # connection afterwards), each of the four subflows has carried data.
    def all_sent() -> dict[int, dict[tuple[str, str], list[Sock]]] | None:
        table = paths(lab)
        sums = [sum(s[0].bytes_acked for s in table[t].values()) for t in tokens]
        return table if all(total >= nbytes for total in sums) else None

    table = wait_for(all_sent, timeout=30, what="every client's data acknowledged")
    per_subflow = {(t, pair): socks[0].bytes_acked for t in tokens
                   for pair, socks in table[t].items()}
    print("per-subflow bytes_acked:", sorted(per_subflow.values()))
    assert all(value >= 64 * 1024 for value in per_subflow.values()), sorted(
        per_subflow.values())
    clients_ended_with_three_joins(lab, daemon, clients, tokens, nbytes)


@pytest.mark.lab(links=2, path_manager="userspace")
def test_a_late_announcement_gets_its_subflows(lab: Lab, tmp_path: Path) -> None:
    daemon = start_plugin(lab, tmp_path, "fullmesh")
    start_server(lab)
    start_clients(lab, 3, 0, hold=30)
    tokens = wait_tokens(lab, 3)
    before = wait_mesh(lab, tokens, mesh(lab, [1]))
    announce(lab, 2)  # the in-kernel PM announces it on the running connections
    after = wait_mesh(lab, tokens, mesh(lab, [1, 2]))
    for token in tokens:  # the first subflows were left alone
        for pair in mesh(lab, [1]):
            assert after[token][pair][0].key == before[token][pair][0].key
    assert error_lines(daemon) == []


@pytest.mark.lab(links=2, path_manager="userspace")
def test_deny_join_id0_is_honoured(lab: Lab, tmp_path: Path) -> None:
    daemon = start_plugin(lab, tmp_path, "fullmesh")
    lab.sysctl(lab.server, "net.mptcp.allow_join_initial_addr_port", "0")
    start_server(lab, 2)
    count = 3
    start_clients(lab, count, 0, hold=15)
    tokens = wait_tokens(lab, count)
    initial = (str(lab.links[0].client4), str(lab.links[0].server4))
    wait_mesh(lab, tokens, mesh(lab, [2]) | {initial})
    for token in tokens:
        daemon.wait_output(rf"Connection {token:08x} established \(client side, "
                           r"deny_join_id0 True\)")
    # Never even tried: one join per client address to the announced one.
    assert mib(lab, lab.client)["MPTcpExtMPJoinSynTx"] == 2 * count
    assert mib(lab, lab.server)["MPTcpExtMPJoinRejected"] == 0
    assert error_lines(daemon) == []


@pytest.mark.lab(links=2, path_manager="userspace")
def test_subflows_lost_to_a_carrier_flap_come_back_on_running_connections(
        lab: Lab, tmp_path: Path) -> None:
    daemon = start_plugin(lab, tmp_path, "fullmesh")
    start_server(lab, 2)
    start_clients(lab, 3, 0, hold=40)
    tokens = wait_tokens(lab, 3)
    full = mesh(lab, [1, 2])
    before = wait_mesh(lab, tokens, full)
    second = lab.links[1]
    lab.set_carrier(second, False)

    def gone() -> bool:
        table = paths(lab)
        return all(pair[0] != str(second.client4) for t in tokens for pair in table[t])

    wait_for(gone, timeout=15, what=f"the subflows from {second.client_if} to close")
    lab.set_carrier(second, True)
    after = wait_mesh(lab, tokens, full)
    assert mptcp_tokens(lab, lab.client) >= tokens  # the same connections
    for token in tokens:
        for pair in full:
            changed = after[token][pair][0].key != before[token][pair][0].key
            assert changed == (pair[0] == str(second.client4)), pair
    assert error_lines(daemon) == []


@pytest.mark.lab(links=2, path_manager="userspace")
def test_retries_against_a_peer_refusing_joins_stop_at_the_limit(
        lab: Lab, tmp_path: Path) -> None:
    daemon = start_plugin(lab, tmp_path, "fullmesh",
                          "retry-base=100ms\nretry-cap=200ms\nretry-attempts=3\n"
                          "colour=blue\nmax-subflows=lots\n")
    config = next(lab.workdir.glob("mptcpd-*.conf"))
    # Settings errors name the file, the line and the key.
    assert (f'Unknown key "colour" at line 6 of "{config}" in [plugin fullmesh] ignored.'
            in daemon.output())
    assert (f'"{config}", line 7: [plugin fullmesh] max-subflows=lots: expected a whole '
            "number from 1 to 256; using 8." in daemon.output())
    start_server(lab)
    lab.ip(lab.server, "mptcp", "limits", "set", "subflows", "0")  # every join refused
    count = 3
    start_clients(lab, count, 0, hold=20)
    tokens = wait_tokens(lab, count)
    for token in tokens:
        daemon.wait_output(rf"Connection {token:08x}: giving up on the subflow from "
                           rf"{lab.links[1].client4} to {lab.links[0].server4}:{PORT} "
                           r"after 4 attempts\.", timeout=20)
    # The first try and three retries per connection, no more.
    assert mib(lab, lab.client)["MPTcpExtMPJoinSynTx"] == 4 * count
    assert mib(lab, lab.server)["MPTcpExtMPJoinRejected"] == 4 * count
    log = daemon.output()
    assert log.count("retrying in 0.1 s") == count
    assert log.count("retrying in 0.2 s") == 2 * count


@pytest.mark.lab(links=2, path_manager="userspace")
def test_a_join_reset_by_the_peer_is_re_created(lab: Lab, tmp_path: Path) -> None:
    daemon = start_plugin(lab, tmp_path, "fullmesh", "retry-base=200ms\n")
    start_server(lab)
    start_clients(lab, 1, 0, hold=30)
    (token,) = wait_tokens(lab, 1)
    want = mesh(lab, [1])
    before = wait_mesh(lab, {token}, want)
    second = lab.links[1]
    (join,) = before[token][(str(second.client4), str(lab.links[0].server4))]
    # The server resets that join (sock_diag destroy): the client's kernel
    # closes it, and nothing in the kernel opens it again.
    lab.exec(lab.server, "ss", "-K", "dst", str(second.client4), "dport", "=",
             f":{join.lport}")
    daemon.wait_output(rf"Connection {token:08x}: the subflow from {second.client4} to "
                       rf"{lab.links[0].server4}:{PORT} was lost \(1 in a row\); retrying in "
                       r"0\.2 s\.")
    after = wait_mesh(lab, {token}, want)
    (again,) = after[token][(str(second.client4), str(lab.links[0].server4))]
    assert again.lport != join.lport
    assert error_lines(daemon) == []


@pytest.mark.lab(links=2, path_manager="userspace")
def test_a_connection_adopted_after_lost_events_takes_its_peers_announcements(
        lab: Lab, tmp_path: Path) -> None:
    """The daemon is frozen while a flood of connections fills its event
    socket; a connection opened then is established and the peer announces
    its second address to it: all its events are lost.  The kernel keeps no
    list of a peer's announcements for the userspace PM, so the resync that
    adopts it cannot find that address; fullmesh gets the address the same
    peer announced on the connection opened before, and the adopted
    connection gets its whole mesh.  Before, it had the subflow to the
    peer's initial address only."""
    daemon = start_plugin(lab, tmp_path, "fullmesh")
    start_server(lab, 2)
    lab.python(lab.server, "-m", "tests.lab.traffic", "sink", "--port", "5300",
               "--duration", "60", name="sink").wait_output("listening")
    full = mesh(lab, [1, 2])
    start_clients(lab, 1, 0, hold=30)
    (first,) = wait_tokens(lab, 1)
    wait_mesh(lab, {first}, full)
    server = str(lab.links[0].server4)
    daemon.send_signal(signal.SIGSTOP)
    try:
        assert all(f.wait(30) == 0 for f in lab.flood(3))
        announced = mib(lab, lab.client).get("MPTcpExtAddAddr", 0)
        start_clients(lab, 1, 0, hold=30)
        (second,) = wait_tokens(lab, 2) - {first}
        # The peer's ADD_ADDR to it has come: its ANNOUNCED is lost.
        wait_for(lambda: mib(lab, lab.client).get("MPTcpExtAddAddr", 0) > announced, 10,
                 what="the second address announced to the new connection")
    finally:
        daemon.send_signal(signal.SIGCONT)
    daemon.wait_output(rf"Connection {second:08x} was created while events were lost; "
                       r'adopted by "fullmesh"\.', timeout=30)
    wait_mesh(lab, {first, second}, full)
    assert f"Connection {second:08x}: the addresses its peer {server}:{PORT} announced on " \
        f"its other connections are taken as announced to it too: " \
        f"{lab.links[1].server4}:{PORT} (id 1)." in daemon.output()
    assert daemon.stop() == 0


@pytest.mark.lab(links=2, path_manager="userspace")
def test_a_connection_older_than_the_daemon_meshes_once_its_peer_announces_again(
        lab: Lab, tmp_path: Path) -> None:
    """A connection made before mptcpd started (a restart, say) had its
    peer's announcement when no daemon listened: the kernel dropped it
    unechoed, and the peer gave up after its retransmissions.  Adopted at
    startup, the connection knows the peer's initial address only.  Once
    the same peer announces its second address on a new connection, the old
    one takes it too and gets its whole mesh.  Before, it never had the
    paths to that address."""
    start_server(lab, 2)
    full = mesh(lab, [1, 2])
    start_clients(lab, 1, 0, hold=40)
    (old,) = wait_tokens(lab, 1)
    # The ADD_ADDR and its retransmissions (the kernel's
    # ADD_ADDR_RETRANS_MAX is 3, RTO-paced), each dropped: no daemon listens.
    wait_for(lambda: mib(lab, lab.client).get("MPTcpExtAddAddrDrop", 0) >= 4, 30,
             what="the peer's announcements to the first connection, all dropped")
    daemon = start_plugin(lab, tmp_path, "fullmesh")
    daemon.wait_output(rf"Connection {old:08x} existed before mptcpd started", timeout=10)
    first = mesh(lab, [1])
    wait_mesh(lab, {old}, first)
    start_clients(lab, 1, 0, hold=30)
    (new,) = wait_tokens(lab, 2) - {old}
    wait_mesh(lab, {old, new}, full)
    assert f"Connection {old:08x}: address {lab.links[1].server4}:{PORT} (id 1), which " \
        f"its peer announced on connection {new:08x}, is taken as announced to it too." \
        in daemon.output()  # (-d)
    assert error_lines(daemon) == []
    assert daemon.stop() == 0


@pytest.mark.lab(links=2, path_manager="userspace")
def test_a_join_held_up_while_its_address_flapped_leaves_one_subflow_on_its_path(
        lab: Lab, tmp_path: Path) -> None:
    """The second link drops everything the client sends (a pfifo of no
    room), so the join from it waits in SYN-SENT; its address goes and comes
    back: fullmesh gives the join up and asks for a new one.  Once the link
    passes again the kernel completes both; the path keeps one subflow, the
    other is closed as one too many."""
    daemon = start_plugin(lab, tmp_path, "fullmesh")
    start_server(lab)
    first, second = lab.links
    lab.exec(lab.client, "tc", "qdisc", "add", "dev", second.client_if, "root", "pfifo",
             "limit", "0")
    (client,) = start_clients(lab, 1, 0, hold=20)
    (token,) = wait_tokens(lab, 1)

    def joins_waiting() -> list[str]:
        out = lab.exec(lab.client, "ss", "-tanH", "state", "syn-sent").stdout
        return [line for line in out.splitlines() if f" {second.client4}:" in line]

    wait_for(joins_waiting, timeout=10, what="the join waiting in SYN-SENT")
    address = f"{second.client4}/{second.subnet4.prefixlen}"
    lab.ip(lab.client, "addr", "del", address, "dev", second.client_if)
    lab.ip(lab.client, "addr", "add", address, "dev", second.client_if)
    wait_for(lambda: len(joins_waiting()) == 2, timeout=10,
             what="the new join beside the one given up")
    lab.exec(lab.client, "tc", "qdisc", "del", "dev", second.client_if, "root")
    daemon.wait_output(rf"Connection {token:08x}: closing the subflow {second.client4}:\d+ -> "
                       rf"{first.server4}:{PORT}, one too many on its path\.", timeout=15)
    wait_mesh(lab, {token}, {(str(first.client4), str(first.server4)),
                             (str(second.client4), str(first.server4))})
    assert client.wait(40) == 0, client.output()
    assert error_lines(daemon) == []

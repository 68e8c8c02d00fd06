"""The bundled ``failover`` plugin on a real transfer: the client's second
link is a backup link; pulling the first link's carrier moves the data to
it (promotion, MP_PRIO), and the carrier's return moves it back.  Bytes per
link are read from the client's interface counters (``ip -s link``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from mptcpd.netlink.diag import list_mptcp_subflows
from mptcpd.types import SockAddr

from tests.integration.test_daemon import READY, daemon_env, plugin_dir, recorded
from tests.integration.test_fullmesh import paths, start_plugin, start_server
from tests.integration.test_sspi import PORT, error_lines, mib, tx_bytes, wait_tokens
from tests.lab import Lab, wait_for

MB = 1 << 20


def peer_sees_backup(lab: Lab, client_ip: str) -> bool | None:
    """Whether the server sees its subflow from ``client_ip`` as one the
    client asked to be a backup (MP_JOIN bit or MP_PRIO), read with
    sock_diag in the server namespace; None when there is no such subflow."""
    subflows = asyncio.run(list_mptcp_subflows(lab.server))
    found = [s.backup_remote for s in subflows
             if s.established and str(s.raddr.unmapped().ip) == client_ip]
    return found[0] if len(found) == 1 else None


@pytest.mark.lab(links=2, path_manager="userspace")
def test_a_transfer_survives_the_primary_carrier_loss_on_the_backup_link_and_back(
        lab: Lab, tmp_path: Path) -> None:
    primary, backup = lab.links
    daemon = start_plugin(lab, tmp_path, "failover", f"backup-interfaces={backup.client_if}\n")
    assert f"(backup interfaces: {backup.client_if})" in daemon.output()
    start_server(lab)
    client = lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                        str(primary.server4), str(PORT), "--wait-subflows", "1",
                        "--stream", "12", "--rate", str(4 * MB), "--timeout", "60",
                        name="streamer")
    (token,) = wait_tokens(lab, 1)
    wait_for(lambda: len(paths(lab)[token]) == 2, timeout=15, what="the backup join")
    # The join is marked backup (MP_PRIO), and the peer knows it; the
    # primary is not.
    wait_for(lambda: peer_sees_backup(lab, str(backup.client4)), timeout=10,
             what="the server to see the backup subflow as backup")
    assert peer_sees_backup(lab, str(primary.client4)) is False

    def moved(link_if: str, start: dict[str, int], amount: int) -> dict[str, int] | None:
        now = tx_bytes(lab, lab.client)
        return now if now[link_if] - start[link_if] >= amount else None

    # Both links up: the data goes over the primary link only.
    start = tx_bytes(lab, lab.client)
    now = wait_for(lambda: moved(primary.client_if, start, 2 * MB), timeout=20,
                   what="data on the primary link")
    both_up = {ifname: now[ifname] - start[ifname] for ifname in now}
    assert both_up[backup.client_if] < both_up[primary.client_if] // 20, both_up

    # The primary's carrier goes: the backup subflow is promoted, data moves.
    lab.set_carrier(primary, False)
    start = tx_bytes(lab, lab.client)
    now = wait_for(lambda: moved(backup.client_if, start, 2 * MB), timeout=20,
                   what="data on the backup link")
    failed_over = {ifname: now[ifname] - start[ifname] for ifname in now}
    daemon.wait_output(rf"Connection {token:08x}: promoting the subflow "
                       rf"{backup.client4}:\d+ -> {primary.server4}:{PORT}\.")
    # The peer was told (MP_PRIO over the backup link): no longer a backup.
    wait_for(lambda: peer_sees_backup(lab, str(backup.client4)) is False, timeout=10,
             what="the server to see the promoted subflow as regular")

    # The carrier returns: the backup is demoted, data moves back.
    lab.set_carrier(primary, True)
    daemon.wait_output(rf"Connection {token:08x}: demoting the subflow "
                       rf"{backup.client4}:\d+ -> {primary.server4}:{PORT}\.", timeout=15)
    wait_for(lambda: peer_sees_backup(lab, str(backup.client4)), timeout=10,
             what="the server to see the demoted subflow as backup again")
    start = tx_bytes(lab, lab.client)
    start = wait_for(lambda: moved(primary.client_if, start, MB), timeout=20,
                     what="data on the primary link again")
    # (what was queued on the backup subflow drains meanwhile; from then on,
    # the data is back on the primary link alone)
    now = wait_for(lambda: moved(primary.client_if, start, 2 * MB), timeout=20,
                   what="more data on the primary link")
    back = {ifname: now[ifname] - start[ifname] for ifname in now}
    assert back[backup.client_if] < back[primary.client_if] // 20, back

    # The transfer survived: everything sent was acknowledged.
    assert client.wait(90) == 0, client.output()
    result = json.loads(client.output())
    assert result["info"]["bytes_acked"] >= result["sent"]
    print("per-link tx bytes:", {"both up": both_up, "primary lost": failed_over,
                                 "primary back": back})
    assert error_lines(daemon) == []


@pytest.mark.lab(links=2, path_manager="userspace")
def test_a_backup_subflow_asks_for_backup_in_its_join(lab: Lab, tmp_path: Path) -> None:
    """``pm.add_subflow(…, backup=True)`` sends the backup flag (the C mptcpd
    leaves it out): the join's SYN carries MP_JOIN's B bit, so the subflow is
    a backup from its first packet, before failover's MP_PRIO (which it
    still sends: the kernel's events carry the peer's flag, not ours, and a
    kernel may not honour the flag)."""
    primary, backup = lab.links
    daemon = start_plugin(lab, tmp_path, "failover", f"backup-interfaces={backup.client_if}\n")
    start_server(lab)
    client = lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                        str(primary.server4), str(PORT), "--wait-subflows", "1",
                        "--hold", "3", "--timeout", "30", name="client")
    wait_tokens(lab, 1)
    wait_for(lambda: peer_sees_backup(lab, str(backup.client4)), timeout=10,
             what="the server to see the backup subflow as backup")
    assert peer_sees_backup(lab, str(primary.client4)) is False
    # Every join (all from the backup interface: failover opens none from
    # the initial one's) had the B bit in its SYN.
    server = mib(lab, lab.server)
    assert server["MPTcpExtMPJoinSynBackupRx"] == server["MPTcpExtMPJoinSynRx"] >= 1
    assert client.wait(30) == 0, client.output()
    assert error_lines(daemon) == []


@pytest.mark.lab(links=2, path_manager="userspace")
def test_the_hooks_backup_is_the_peers_request_live_and_adopted(
        lab: Lab, tmp_path: Path) -> None:
    """The ``backup`` of ``new_subflow`` and ``subflow_priority`` is the
    kernel's flag: whether the *peer* asked for a backup subflow (MP_JOIN's B
    bit, MP_PRIO).  A daemon that adopts the subflow at startup reports the
    same (sock_diag's remote flag, not its own side's)."""
    primary, backup = lab.links
    lab.set_path_manager(lab.server, "userspace")
    calls = tmp_path / "server-calls.jsonl"
    (tmp_path / "server").mkdir()
    server_plugins = plugin_dir(tmp_path / "server", "recorder")
    server_daemon = lab.start_mptcpd("--log=stderr", f"--plugin-dir={server_plugins}",
                                     ns=lab.server, config="[core]\n",
                                     env=daemon_env(MPTCPD_RECORDER_LOG=str(calls)))
    server_daemon.wait_output(READY, timeout=20)
    client_daemon = start_plugin(lab, tmp_path, "failover",
                                 f"backup-interfaces={backup.client_if}\n")
    server = lab.python(lab.server, "-m", "tests.lab.traffic", "server", "--port", str(PORT),
                        "--duration", "60")
    server.wait_output("listening")
    client = lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                        str(primary.server4), str(PORT), "--wait-subflows", "1",
                        "--hold", "10", "--timeout", "30", name="client")
    join = str(backup.client4)

    def hooks(path: Path, name: str) -> list[bool]:
        """The ``backup`` of the server's ``name`` calls for the join (the
        recorder writes addresses as ``ip|port``, IPv4 peers mapped)."""
        return [c["args"]["backup"] for c in recorded(path) if c["hook"] == name
                and str(SockAddr(c["args"]["raddr"].split("|")[0]).unmapped().ip) == join]

    # Live: the join came with the B bit, then failover's MP_PRIO.
    wait_for(lambda: hooks(calls, "subflow_priority"), timeout=15,
             what="the server's subflow_priority for the client's MP_PRIO")
    assert hooks(calls, "new_subflow") == [True]
    assert hooks(calls, "subflow_priority") == [True]
    assert server_daemon.stop() == 0
    # Adopted by a new daemon: the same value (the server's own side asked
    # for nothing).
    adopted = tmp_path / "adopted-calls.jsonl"
    again = lab.start_mptcpd("--log=stderr", f"--plugin-dir={server_plugins}",
                             ns=lab.server, config="[core]\n",
                             env=daemon_env(MPTCPD_RECORDER_LOG=str(adopted)))
    again.wait_output(READY, timeout=20)
    wait_for(lambda: hooks(adopted, "new_subflow"), timeout=10,
             what="the adopted join's new_subflow")
    assert hooks(adopted, "new_subflow") == [True]
    assert again.stop() == 0
    assert client.wait(60) == 0, client.output()
    assert error_lines(client_daemon) == []

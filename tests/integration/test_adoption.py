"""Connections that exist before mptcpd starts are adopted at startup.

The C mptcpd never learns of them: every later event about them logs
``Unable to match token to plugin.`` and they never get a path manager.
Here a connection is opened with no daemon running; the daemon started
afterwards hands it to sspi, which gives it its subflow on the second link.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.lab import Lab, wait_for
from tests.integration.test_sspi import (
    mptcp_tokens,
    one_per_interface,
    start_clients,
    start_server,
    start_sspi,
    wait_tokens,
)


@pytest.mark.lab(links=2, path_manager="userspace")
def test_a_connection_older_than_the_daemon_gets_its_subflows(lab: Lab,
                                                              tmp_path: Path) -> None:
    start_server(lab)
    (client,) = start_clients(lab, 1, 0, hold=40)
    (token,) = wait_tokens(lab, 1)
    assert one_per_interface(lab, {token}) is None  # nobody made its join yet

    daemon = start_sspi(lab, tmp_path)
    wait_for(lambda: one_per_interface(lab, {token}), timeout=20,
             what="the adopted connection's join on the second link")
    output = daemon.output()
    assert "1 MPTCP connection(s) existed at startup." in output
    assert "Unable to match token to plugin." not in output
    # Its close reaches the plugin it was bound to, like any other connection's.
    client.stop()
    wait_for(lambda: token not in mptcp_tokens(lab, lab.client), timeout=20,
             what="the connection to close")
    assert daemon.stop() == 0
    assert "Unable to match token to plugin." not in daemon.output()


@pytest.mark.lab(links=2, path_manager="userspace")
def test_a_restarted_daemon_adopts_the_subflows_too_and_opens_no_duplicate(
        lab: Lab, tmp_path: Path) -> None:
    """sspi gave a connection its join on the second link; the daemon is
    restarted: the new one learns of that join from sock_diag (before the
    connection's ``connection_established``), so sspi opens no second one."""
    for run in ("first", "second"):
        (tmp_path / run).mkdir(mode=0o755)
    start_server(lab)
    first = start_sspi(lab, tmp_path / "first")
    (client,) = start_clients(lab, 1, 0, hold=40)
    (token,) = wait_tokens(lab, 1)
    table = wait_for(lambda: one_per_interface(lab, {token}), timeout=20,
                     what="the join on the second link")
    assert first.stop() == 0

    second = start_sspi(lab, tmp_path / "second")
    output = second.output()
    assert "1 MPTCP connection(s) existed at startup." in output
    assert f"of connection {token:08x} existed before mptcpd started." in output
    # Whatever sspi would have sent on connection_established has been
    # answered well within this bound: no second join appears.
    for _ in range(10):
        assert one_per_interface(lab, {token}) == table
        time.sleep(0.1)
    assert "Subflow already exists" not in second.output()
    client.stop()
    wait_for(lambda: token not in mptcp_tokens(lab, lab.client), timeout=20,
             what="the connection to close")
    assert second.stop() == 0
    assert "Unable to match token to plugin." not in second.output()

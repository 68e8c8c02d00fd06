"""Connections that exist before mptcpd starts are adopted at startup.

The C mptcpd never learns of them: every later event about them logs
``Unable to match token to plugin.`` and they never get a path manager.
Here a connection is opened with no daemon running; the daemon started
afterwards hands it to sspi, which gives it its subflow on the second link.
"""

from __future__ import annotations

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

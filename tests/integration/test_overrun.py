"""Lost events: the daemon recovers from a receive overrun without restarting.

The daemon is frozen (SIGSTOP) while a flood of short MPTCP connections
fills its event socket's receive buffer, then one long-lived connection is
opened, whose CREATED event cannot be queued any more.  When the daemon
resumes it must notice the overrun, keep receiving events, and adopt the
long-lived connection from the kernel's list of live connections, so the
plugin gets the new_connection it missed and, later, its connection_closed.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.lab import Lab, wait_for
from tests.integration.test_daemon import READY, a_fresh_connection_is_seen, recorded, start

def test_an_overrun_is_recovered_and_missed_connections_adopted(
    lab: Lab, tmp_path: Path
) -> None:
    log_path = tmp_path / "calls.jsonl"
    daemon = start(lab, tmp_path, plugins=("recorder",), MPTCPD_RECORDER_LOG=str(log_path))
    daemon.wait_output(READY, timeout=20)
    server = lab.python(lab.server, "-m", "tests.lab.traffic", "server", "--duration", "120")
    server.wait_output("listening")
    sink = lab.python(lab.server, "-m", "tests.lab.traffic", "sink", "--port", "5300",
                      "--duration", "60", name="sink")
    sink.wait_output("listening")
    server_addr = str(lab.links[0].server4)

    daemon.send_signal(signal.SIGSTOP)
    try:
        flooders = lab.flood(3)
        assert all(f.wait(30) == 0 for f in flooders)
        flood = sum(int(f.output().split()[-1]) for f in flooders)
        held = lab.python(lab.client, "-m", "tests.lab.traffic", "client", server_addr,
                          "5201", "--hold", "6", name="held")
        wait_for(lambda: lab.exec(lab.client, "ss", "-MnH").stdout.strip(), 10,
                 what="the held MPTCP connection")
    finally:
        daemon.send_signal(signal.SIGCONT)

    daemon.wait_output(r"receive overrun|lost", timeout=30)
    daemon.wait_output(r"Resynchronised after lost events", timeout=30)
    assert held.wait(30) == 0
    token = json.loads(held.output())["info"]["token"]

    def closed_after_adoption() -> list[dict]:
        calls = [c for c in recorded(log_path) if c["args"].get("token") == token]
        return calls if [c["hook"] for c in calls][-1:] == ["connection_closed"] else []

    calls = wait_for(closed_after_adoption, 20, what=f"connection_closed for {token:08x}")
    hooks = [c["hook"] for c in calls]
    assert hooks[0] == "new_connection", (flood, hooks)
    assert calls[0]["args"]["raddr"] == f"{server_addr}|5201"
    assert calls[0]["args"]["server_side"] is False
    assert f"Connection {token:08x} was created while events were lost" in daemon.output()
    # Events flow again after the recovery: a new connection is seen normally.
    a_fresh_connection_is_seen(lab, server_addr, log_path)
    assert daemon.stop() == 0

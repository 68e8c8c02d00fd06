"""Every hook reaches a plugin in the real daemon, with the right arguments.

The daemon runs in the client namespace with the recorder plugin.  Real
connections, endpoints, listeners, addresses and links come and go, and the
recorder's log must show each hook with the values the kernel (and ``ip``)
report, in kernel order for each connection.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.lab import Lab, wait_for
from mptcpd.plugins.registry import HOOKS
from tests.integration.test_daemon import READY, recorded, start

HOLD = 8.0


def test_every_hook_with_real_events(lab: Lab, tmp_path: Path) -> None:
    log_path = tmp_path / "calls.jsonl"
    first, second = lab.links
    lab.ip(lab.client, "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2")
    lab.ip(lab.client, "mptcp", "endpoint", "add", str(second.client4), "dev",
           second.client_if, "id", "7", "subflow")
    daemon = start(lab, tmp_path, "--notify-flags=existing,skip_link_local",
                   plugins=("recorder",), MPTCPD_RECORDER_LOG=str(log_path))
    daemon.wait_output(READY, timeout=20)

    def calls(hook: str, **match: object) -> list[dict]:
        return [c["args"] for c in recorded(log_path) if c["hook"] == hook
                and all(c["args"].get(k) == v for k, v in match.items())]

    def expect(hook: str, what: str = "", **match: object) -> dict:
        return wait_for(lambda: calls(hook, **match), 15,
                        what=f"{hook} {what or match}")[-1]

    # Start-up: the existing addresses (skip_link_local leaves out fe80::).
    expect("new_local_address", addr=f"{first.client4}|0")
    expect("new_local_address", addr=f"{second.client6}|0")
    assert not [c for c in calls("new_local_address") if "fe80" in c["addr"]]

    # A connection with a subflow on link 2, an address announced by the
    # server, a priority change, the announcement withdrawn.
    server = lab.python(lab.server, "-m", "tests.lab.traffic", "server", "--duration", "60")
    server.wait_output("listening")
    client = lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                        str(first.server4), "5201", "--bytes", "100000", "--hold", str(HOLD))
    created = expect("new_connection", raddr=f"{first.server4}|5201")
    token = created["token"]
    assert created["laddr"].startswith(f"{first.client4}|")
    assert created["server_side"] is False and created["deny_join_id0"] is False
    expect("connection_established", token=token)
    sub = expect("new_subflow", token=token)
    assert sub["laddr"].startswith(f"{second.client4}|") and sub["backup"] is False

    signal_ip = str(second.server4)
    lab.ip(lab.server, "mptcp", "endpoint", "add", signal_ip, "dev", second.server_if,
           "id", "5", "signal")
    announced = expect("new_address", token=token)
    assert announced["addr_id"] == 5 and announced["addr"].startswith(f"{signal_ip}|")
    # The client's kernel PM joins the announced address...
    joined = wait_for(lambda: [c for c in calls("new_subflow", token=token)
                               if c["raddr"].startswith(f"{signal_ip}|")], 15,
                      what="a subflow to the announced address")[-1]
    assert joined["backup"] is False
    # ...and the server makes that path a backup one: MP_PRIO reaches the client.
    lab.ip(lab.server, "mptcp", "endpoint", "change", "id", "5", "backup")
    prio = expect("subflow_priority", token=token)
    assert prio["backup"] is True and prio["raddr"] == joined["raddr"]

    lab.ip(lab.server, "mptcp", "endpoint", "delete", "id", "5")
    assert expect("address_removed", token=token)["addr_id"] == 5
    closed_sub = expect("subflow_closed", token=token)
    assert closed_sub["raddr"].startswith(f"{signal_ip}|")

    assert client.wait(HOLD + 20) == 0
    assert json.loads(client.output())["info"]["token"] == token
    expect("connection_closed", token=token)
    per_connection = [c["hook"] for c in recorded(log_path) if c["args"].get("token") == token]
    assert per_connection[:2] == ["new_connection", "connection_established"]
    assert per_connection[-1] == "connection_closed"
    assert per_connection.index("new_address") < per_connection.index("subflow_priority") \
        < per_connection.index("address_removed")

    # A listening MPTCP socket in the client namespace.
    listener = lab.python(lab.client, "-m", "tests.lab.traffic", "server", "--port", "6000",
                          "--bind", str(first.client4), "--duration", "1", name="listener")
    expect("listener_created", laddr=f"{first.client4}|6000")
    assert listener.wait(15) == 0
    expect("listener_closed", laddr=f"{first.client4}|6000")

    # Addresses.
    lab.ip(lab.client, "addr", "add", "203.0.113.1/24", "dev", first.client_if)
    assert expect("new_local_address", addr="203.0.113.1|0")["interface"]["name"] \
        == first.client_if
    lab.ip(lab.client, "addr", "del", "203.0.113.1/24", "dev", first.client_if)
    expect("delete_local_address", addr="203.0.113.1|0")

    # Carrier loss and recovery, then an interface that comes and goes.
    lab.set_carrier(second, up=False)
    expect("link_down", interface={"index": lab.link_state(lab.client, second.client_if)
                                   ["ifindex"], "name": second.client_if})
    lab.set_carrier(second, up=True)
    expect("link_up", what=second.client_if)
    lab.ip(lab.client, "link", "add", "x1", "type", "veth", "peer", "name", "x2")
    lab.ip(lab.client, "link", "set", "x1", "up")
    lab.ip(lab.client, "link", "set", "x2", "up")
    new = expect("new_interface", what="x1 or x2")
    assert new["interface"]["name"] in ("x1", "x2")
    lab.ip(lab.client, "link", "set", "x1", "mtu", "1400")
    expect("update_interface", what="x1 after an MTU change")
    lab.ip(lab.client, "link", "del", "x1")
    expect("delete_interface", what="x1 or x2")

    # A reload.
    daemon.send_signal(signal.SIGHUP)
    expect("policy_changed", what="after SIGHUP")

    assert daemon.stop(signal.SIGTERM) == 0
    seen = {c["hook"] for c in recorded(log_path)}
    # pm_not_ready needs the mptcp_pm family to vanish, which a kernel with
    # MPTCP built in never does; it is covered by the unit tests.
    assert set(HOOKS) - seen == {"pm_not_ready"}

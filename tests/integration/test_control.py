"""The control socket in the lab: what it says is what the kernel says.

The daemon runs addr_adv in the client namespace with its control socket in
the test's directory (a Unix socket is reached by path from any network
namespace); real connections are held open by the lab's traffic client.
Each reply is compared with an independent witness: ``ip -j mptcp endpoint
show``, ``ip mptcp limits``, each connection's own MPTCP_INFO.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.test_addr_adv import PLUGINS, lab_addresses, wait_endpoints
from tests.integration.test_daemon import READY, daemon_env
from tests.lab import Lab, Process, wait_for

TIMEOUT = 20.0


def call(path: Path, method: str, parameters: dict[str, Any] | None = None) -> Any:
    """One varlink call over a fresh connection; the reply's parameters
    (AssertionError for an error reply)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        message: dict[str, Any] = {"method": method}
        if parameters:
            message["parameters"] = parameters
        sock.sendall(json.dumps(message).encode() + b"\0")
        data = b""
        while not data.endswith(b"\0"):
            chunk = sock.recv(65536)
            assert chunk, "the daemon closed the connection"
            data += chunk
    reply = json.loads(data[:-1])
    assert "error" not in reply, reply
    return reply.get("parameters", {})


MPTCPCTL = Path(sys.executable).with_name("mptcpctl")


def mptcpctl(path: Path, *args: str) -> Any:
    """``mptcpctl --json`` (its output parsed), which must succeed."""
    proc = subprocess.run([str(MPTCPCTL), "--socket", str(path), "--json", *args],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    return json.loads(proc.stdout)


def start(lab: Lab, tmp_path: Path) -> tuple[Process, Path]:
    path = tmp_path / "ctl" / "control"
    daemon = lab.start_mptcpd(
        "--log=stderr", f"--plugin-dir={PLUGINS}", "--load-plugins=addr_adv",
        "--path-manager=addr_adv", "--notify-flags=existing,skip_link_local",
        "--addr-flags=subflow", config=f"[core]\ncontrol-socket={path}\n",
        env=daemon_env())
    daemon.wait_output(READY, timeout=20)
    return daemon, path


def test_endpoints_limits_and_status_are_the_kernels(lab: Lab, tmp_path: Path) -> None:
    second = lab.links[1]
    # A hand-made endpoint from before the daemon: nobody's.
    lab.ip(lab.client, "mptcp", "endpoint", "add", str(second.client4), "id", "42",
           "signal")
    daemon, path = start(lab, tmp_path)
    wait_endpoints(lab, lab_addresses(lab))
    endpoints = mptcpctl(path, "endpoints")
    assert endpoints == call(path, "io.mptcpd.ListEndpoints")["endpoints"]
    kernel = json.loads(lab.ip(lab.client, "-j", "mptcp", "endpoint", "show").stdout)
    assert len(endpoints) == len(kernel) == 4
    for ours, theirs in zip(sorted(endpoints, key=lambda e: e["id"]),
                            sorted(kernel, key=lambda e: e["id"])):
        assert ours["id"] == theirs["id"] and ours["address"] == theirs["address"]
        assert ours["interface"] == theirs.get("dev")
        assert set(ours["flags"]) == {k for k, v in theirs.items() if v is True}
        assert ours["port"] == theirs.get("port", 0)
        assert ours["owner"] == (None if ours["id"] == 42 else "addr_adv"), ours
    limits = mptcpctl(path, "limits")
    assert limits == lab.limits(lab.client)
    status = call(path, "io.mptcpd.GetStatus")["status"]
    assert status["kernel_path_manager"] == "kernel" and status["ready"] is True
    assert [p["name"] for p in status["plugins"]] == ["addr_adv"]
    assert status["default_plugin"] == "addr_adv"
    added = [c for c in status["commands"] if c["operation"] == "kpm_add_addr"]
    assert added == [{"operation": "kpm_add_addr", "result": "ok", "count": 3}]
    interfaces = {i["name"]: i for i in call(path, "io.mptcpd.ListInterfaces")["interfaces"]}
    for link in lab.links:
        iface = interfaces[link.client_if]
        assert iface["running"] and iface["carrier"] is True
        assert {str(link.client4), str(link.client6)} <= {
            a["address"] for a in iface["addresses"] if a["state"] == "announced"}
    assert daemon.stop() == 0
    assert not path.exists()


def test_connections_are_what_each_connection_says(lab: Lab, tmp_path: Path) -> None:
    daemon, path = start(lab, tmp_path)
    wait_endpoints(lab, lab_addresses(lab))
    lab.python(lab.server, "-m", "tests.lab.traffic", "server").wait_output("listening")
    clients = [lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                          str(lab.links[0].server4), "5201", "--hold", "6",
                          "--timeout", "30") for _ in range(2)]

    def settled() -> list[dict[str, Any]] | None:
        # Both connections listed, each with the subflow addr_adv's other
        # endpoints bring (the limits allow them all), twice the same.
        first = mptcpctl(path, "connections")
        if len(first) != 2 or any(c["info"].get("subflows", 0) < 1 for c in first):
            return None
        again = mptcpctl(path, "connections")
        key = [(c["token"], c["info"]["subflows"]) for c in first]
        return first if key == [(c["token"], c["info"]["subflows"]) for c in again] else None

    listed = wait_for(settled, TIMEOUT, what="two connections with their subflows")
    outputs = []
    for client in clients:
        assert client.wait(40) == 0, client.output()
        outputs.append(json.loads(client.output()))
    own = {o["info"]["token"]: o for o in outputs}
    assert {c["token"] for c in listed} == set(own)
    for conn in listed:
        mine = own[conn["token"]]
        assert conn["info"]["subflows"] == mine["info"]["subflows"]
        assert conn["info"]["token"] == conn["token"]
        assert (conn["local_address"], conn["local_port"]) == tuple(mine["local"])
        assert conn["remote_address"] == str(lab.links[0].server4)
        assert conn["remote_port"] == 5201 and conn["server_side"] is False
        assert conn["plugin"] == "addr_adv" and conn["state"] == "established"
        assert not conn["fallback"]
        # Every subflow, the initial one included: MPTCP_INFO's extra ones + 1.
        subflows = conn["subflows"]
        assert len(subflows) == mine["info"]["subflows"] + 1 == conn["info"]["subflows_total"]
        assert [sf["initial"] for sf in subflows].count(True) == 1
        initial = next(sf for sf in subflows if sf["initial"])
        assert (initial["local_address"], initial["local_port"]) == tuple(mine["local"])
        assert all(sf["state"] == "established" and not sf["backup"] for sf in subflows)
        joins = {sf["local_address"] for sf in subflows if not sf["initial"]}
        assert joins <= lab_addresses(lab) and joins, subflows
        # This kernel (6.10 on) reports the whole structure.
        assert {"bytes_sent", "subflows_total", "last_ack_recv"} <= set(conn["info"])
    status = call(path, "io.mptcpd.GetStatus")["status"]
    assert status["events"]["created"] >= 2 and status["events"]["established"] >= 2
    assert status["events"]["sf_established"] >= 2
    assert daemon.stop() == 0


#: ip mptcp monitor's names (iproute2 6.1) -> ours.
IP_MONITOR_NAMES = {"CREATED": "created", "ESTABLISHED": "established", "CLOSED": "closed",
                    "ANNOUNCED": "announced", "REMOVED": "removed",
                    "SF_ESTABLISHED": "sf_established", "SF_CLOSED": "sf_closed",
                    "SF_PRIO": "sf_priority"}


def test_monitor_shows_what_ip_mptcp_monitor_shows(lab: Lab, tmp_path: Path) -> None:
    import re

    daemon, path = start(lab, tmp_path)
    wait_endpoints(lab, lab_addresses(lab))
    ipmon = lab.spawn(lab.client, "ip", "mptcp", "monitor", name="ipmon")
    ours = lab.spawn(lab.client, str(MPTCPCTL), "--socket", str(path), "--json", "monitor",
                     name="monitor")
    ours.wait_output(r'"kind": "started"')
    # Both are listening once both have seen a listener come (ip prints the
    # listener events as UNKNOWN 15).
    lab.python(lab.client, "-m", "tests.lab.traffic", "server", "--port", "5999",
               "--duration", "60").wait_output("listening")
    ipmon.wait_output(r"UNKNOWN 15|LISTENER_CREATED")
    ours.wait_output(r'"name": "listener_created"')
    lab.python(lab.server, "-m", "tests.lab.traffic", "server").wait_output("listening")
    clients = [lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                          str(lab.links[0].server4), "5201", "--hold", "1",
                          "--timeout", "30") for _ in range(3)]
    for client in clients:
        assert client.wait(40) == 0, client.output()
    tokens = {json.loads(c.output())["info"]["token"] for c in clients}
    # A command while monitoring: addr_adv adds an endpoint for a new address.
    lab.ip(lab.client, "addr", "add", "203.0.113.1/24", "dev", lab.links[0].client_if)

    def sequences() -> tuple[dict[int, list[str]], dict[int, list[str]]] | None:
        theirs: dict[int, list[str]] = {}
        for name, token in re.findall(r"\[\s*(\w+)\] token=([0-9a-f]{8})", ipmon.output()):
            if name in IP_MONITOR_NAMES:
                theirs.setdefault(int(token, 16), []).append(IP_MONITOR_NAMES[name])
        mine: dict[int, list[str]] = {}
        for line in ours.output().splitlines():
            record = json.loads(line)
            if record.get("kind") == "event" and "token" in record:
                mine.setdefault(record["token"], []).append(record["name"])
        done = all(seq and seq[-1] == "closed" for seq in
                   [theirs.get(t) for t in tokens] + [mine.get(t) for t in tokens])
        return (theirs, mine) if done else None

    theirs, mine = wait_for(sequences, TIMEOUT, what="both monitors to see every CLOSED")
    assert set(mine) == set(theirs) == tokens
    assert mine == theirs
    for token in tokens:
        assert mine[token][:2] == ["created", "established"]
        assert "sf_established" in mine[token]
    commands = wait_for(lambda: [r for r in map(json.loads, ours.output().splitlines())
                                 if r.get("kind") == "command"
                                 and r["name"] == "kpm_add_addr"] or None,
                        TIMEOUT, what="the endpoint's command in the monitor")
    assert commands[0]["result"] == "ok" and commands[0]["arguments"][0] == "203.0.113.1"
    status = call(path, "io.mptcpd.GetStatus")["status"]
    assert status["monitors"] == 1 and status["monitors_dropped"] == 0
    assert daemon.stop() == 0

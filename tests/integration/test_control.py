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

import pytest

from mptcpd.pm import policy
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


def start(lab: Lab, tmp_path: Path, path: Path | None = None) -> tuple[Process, Path]:
    """addr_adv with its control socket at ``path`` (by default in ``tmp_path``)."""
    path = path or tmp_path / "ctl" / "control"
    daemon = lab.start_mptcpd(
        "--log=stderr", f"--plugin-dir={PLUGINS}", "--load-plugins=addr_adv",
        "--path-manager=addr_adv", "--notify-flags=existing,skip_link_local",
        "--addr-flags=subflow", config=f"[core]\ncontrol-socket={path}\n",
        env=daemon_env())
    daemon.wait_output(READY, timeout=20)
    # The first call, as soon as the daemon says it is ready, is answered
    # (the socket listens before READY; its code loads at the first client).
    assert call(path, "io.mptcpd.GetStatus")["status"]["ready"] is True
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
    from prometheus_client.parser import text_string_to_metric_families
    text = subprocess.run([str(MPTCPCTL), "--socket", str(path), "metrics"],
                          capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("mptcpd_mptcp_connections", ())] == 2
    assert samples[("mptcpd_mptcp_subflows", ())] == sum(len(c["subflows"]) for c in listed)
    assert samples[("mptcpd_endpoints", (("owner", "addr_adv"),))] == 4
    assert samples[("mptcpd_events_total", (("type", "created"),))] >= 2
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


# -- write methods -------------------------------------------------------------------

NOBODY = 65534

CLIENT = """
import json, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(20)
sock.connect(sys.argv[1])
for line in sys.argv[2:]:
    sock.sendall(line.encode() + b"\\0")
    data = b""
    while not data.endswith(b"\\0"):
        chunk = sock.recv(65536)
        if not chunk:
            sys.exit("closed")
        data += chunk
    print(data[:-1].decode(), flush=True)
"""


def as_nobody(path: Path, *calls: dict[str, Any]) -> list[dict[str, Any]]:
    """Replies to ``calls`` made by a process that is uid and gid 65534 (with
    no other group, no capability) before it connects."""
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT, str(path), *map(json.dumps, calls)],
        capture_output=True, text=True, timeout=TIMEOUT, user=NOBODY, group=NOBODY,
        extra_groups=[])
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def ctl(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MPTCPCTL), "--socket", str(path), *args],
                          capture_output=True, text=True, timeout=TIMEOUT)


def test_write_methods_are_for_root_and_change_the_kernel(lab: Lab, tmp_path: Path) -> None:
    import os
    import shutil
    import tempfile

    # A directory nobody can reach, and the socket's group nobody's.
    shared = Path(tempfile.mkdtemp(prefix="mptcpd-ctl-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        daemon, path = start(lab, tmp_path, shared / "control")
        wait_endpoints(lab, lab_addresses(lab))
        os.chown(path, 0, NOBODY)
        link = lab.links[0]
        add = {"method": "io.mptcpd.AddEndpoint",
               "parameters": {"address": "203.0.113.7", "id": 9, "flags": ["signal"]}}
        limits = {"method": "io.mptcpd.SetLimits", "parameters": {"subflows": 1}}
        refused = as_nobody(path, {"method": "io.mptcpd.GetStatus"}, add, limits)
        assert "status" in refused[0]["parameters"]  # reading is for anyone
        assert refused[1] == {"error": "io.mptcpd.PermissionDenied",
                              "parameters": {"method": "AddEndpoint"}}
        assert refused[2]["error"] == "io.mptcpd.PermissionDenied"
        assert "203.0.113.7" not in endpoints_by_address(lab)
        assert lab.limits(lab.client)["subflows"] != 1
        daemon.wait_output(r"AddEndpoint\(address=203\.0\.113\.7.*\) refused to uid 65534 "
                           r"pid \d+: neither root nor CAP_NET_ADMIN")
        # mptcpctl run by nobody says so, with exit status 4.
        proc = subprocess.run([str(MPTCPCTL), "--socket", str(path), "limits", "set",
                               "--subflows", "1"], capture_output=True, text=True,
                              timeout=TIMEOUT, user=NOBODY, group=NOBODY, extra_groups=[])
        assert proc.returncode == 4
        assert "permission denied: SetLimits needs root or CAP_NET_ADMIN" in proc.stderr
        # Root: the kernel's state changes, and the answer is the kernel's.
        done = ctl(path, "endpoint", "add", "203.0.113.7", "--id", "9", "--flags", "signal",
                   "--dev", link.client_if)
        assert (done.returncode, done.stdout) == (0, "endpoint 9 added\n"), done.stderr
        daemon.wait_output(r"AddEndpoint\(address=203\.0\.113\.7, port=0, id=9, "
                           rf"flags=signal, interface={link.client_if}\) by uid 0 pid \d+")
        ep = endpoints_by_address(lab)["203.0.113.7"]
        assert (ep.id, ep.flags, ep.dev) == (9, frozenset({"signal"}), link.client_if)
        owners = {e["id"]: e["owner"] for e in mptcpctl(path, "endpoints")}
        assert owners[9] == "control"
        again = ctl(path, "endpoint", "add", "203.0.113.7", "--id", "9")
        assert again.returncode == 1 and "the kernel refused" in again.stderr, again.stderr
        bad = ctl(path, "endpoint", "add", "203.0.113.8", "--id", "300")
        assert bad.returncode == 1 and "invalid argument: " in bad.stderr, bad.stderr
        assert ctl(path, "limits", "set", "--subflows", "1").returncode == 0
        assert lab.limits(lab.client)["subflows"] == 1
        assert ctl(path, "endpoint", "del", "9").returncode == 0
        assert "203.0.113.7" not in endpoints_by_address(lab)
        assert daemon.stop() == 0
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def endpoints_by_address(lab: Lab) -> dict[str, Any]:
    return {e.address: e for e in lab.endpoints(lab.client)}


@pytest.mark.lab(links=2, path_manager="userspace")
def test_userspace_write_methods_on_a_live_connection(lab: Lab, tmp_path: Path) -> None:
    """A controller that is not a plugin drives a connection: a subflow from
    the second link, its backup priority, an announcement, and back."""
    import re

    from tests.integration.test_daemon import plugin_dir

    lab.set_path_manager(lab.server, "kernel")
    path = tmp_path / "control"
    directory = plugin_dir(tmp_path, "noop")
    daemon = lab.start_mptcpd("--log=stderr", f"--plugin-dir={directory}",
                              config=f"[core]\ncontrol-socket={path}\n", env=daemon_env())
    daemon.wait_output(READY, timeout=20)
    srvmon = lab.spawn(lab.server, "ip", "mptcp", "monitor", name="srvmon")
    lab.python(lab.server, "-m", "tests.lab.traffic", "server",
               "--duration", "60").wait_output("listening")
    srvmon.wait_output(r"UNKNOWN 15|LISTENER")
    lab.python(lab.client, "-m", "tests.lab.traffic", "client", str(lab.links[0].server4),
               "5201", "--hold", "45", "--timeout", "50", name="client")
    [conn] = wait_for(lambda: [c for c in mptcpctl(path, "connections")
                               if c["state"] == "established"] or None,
                      TIMEOUT, what="the client's connection")
    srvmon.wait_output(r"\[\s*ESTABLISHED\]")  # data exchanged: joins may start
    token = f"{conn['token']:08x}"
    l2 = lab.links[1]
    local, remote = f"{l2.client4}:0", f"{l2.server4}:5201"
    done = ctl(path, "subflow", "add", token, local, remote, "--local-id", "6")
    assert done.returncode == 0, done.stderr

    def joined() -> dict[str, Any] | None:
        [c] = mptcpctl(path, "connections")
        return next((sf for sf in c["subflows"]
                     if sf["local_address"] == str(l2.client4)), None)

    sf = wait_for(joined, TIMEOUT, what="the new subflow in the listing")
    assert sf["remote_address"] == str(l2.server4) and not sf["initial"]
    sub_local = f"{l2.client4}:{sf['local_port']}"
    assert ctl(path, "backup", "set", token, sub_local, remote).returncode == 0
    srvmon.wait_output(rf"SF_PRIO\].*dport={sf['local_port']} backup=1")
    wait_for(lambda: (s := joined()) is not None and s["backup"], TIMEOUT,
             what="the subflow's backup flag")
    announced = ctl(path, "--json", "announce", token, "7", f"{l2.client4}")
    assert announced.returncode == 0, announced.stderr
    port = json.loads(announced.stdout)["port"]
    assert port > 0  # the listener's port, picked by the kernel
    srvmon.wait_output(rf"ANNOUNCED\].*remid=7 daddr4={re.escape(str(l2.client4))} "
                       rf"dport={port}")
    assert ctl(path, "withdraw", token, "7", str(l2.client4)).returncode == 0
    srvmon.wait_output(r"REMOVED\].*remid=7")
    assert ctl(path, "subflow", "del", token, sub_local, remote).returncode == 0
    wait_for(lambda: joined() is None, TIMEOUT, what="the subflow to close")
    unknown = ctl(path, "subflow", "del", "00000001", sub_local, remote)
    assert unknown.returncode == 1 and "the kernel refused" in unknown.stderr
    assert daemon.stop() == 0


TENTATIVE = policy.TENTATIVE


def test_interfaces_show_the_policys_decisions(lab: Lab, tmp_path: Path) -> None:
    """ListInterfaces lists denied interfaces too, saying why, the flags of
    an [interface GLOB] group, and why an address is held back."""
    path = tmp_path / "ctl" / "control"
    first, second = lab.links
    daemon = lab.start_mptcpd(
        "--log=stderr", f"--plugin-dir={PLUGINS}", "--load-plugins=addr_adv",
        "--path-manager=addr_adv", "--notify-flags=existing", "--addr-flags=subflow",
        config=(f"[core]\ncontrol-socket={path}\nskip-address-classes=link-local\n"
                f"[interfaces]\ndeny={second.client_if}\n"
                f"[interface {first.client_if}]\naddr-flags=subflow,backup\n"),
        env=daemon_env())
    daemon.wait_output(READY, timeout=20)
    interfaces = {i["name"]: i for i in mptcpctl(path, "interfaces")}
    allowed, denied = interfaces[first.client_if], interfaces[second.client_if]
    assert allowed["denied"] is None and allowed["addr_flags"] == ["subflow", "backup"]
    assert denied["denied"] == f'denied by "{second.client_if}"'
    assert denied["addr_flags"] is None
    assert all(a["state"] is None for a in denied["addresses"])
    by_address = {a["address"]: a for a in allowed["addresses"]}
    assert by_address[str(first.client4)] == {
        "address": str(first.client4), "state": "announced", "filtered": None}

    def link_local() -> list[dict[str, Any]] | None:
        """The link-local addresses of the allowed interface, once past DAD
        (held back as tentative until then)."""
        iface = {i["name"]: i for i in mptcpctl(path, "interfaces")}[first.client_if]
        found = [a for a in iface["addresses"] if a["address"].startswith("fe80:")]
        return found if found and all(a["filtered"] != TENTATIVE for a in found) else None

    assert all(a["filtered"] == "link-local" and a["state"] is None
               for a in wait_for(link_local, 10, what="link-local addresses past DAD"))
    table = subprocess.run([str(MPTCPCTL), "--socket", str(path), "interfaces"],
                           capture_output=True, text=True, timeout=TIMEOUT).stdout
    assert f'denied (denied by "{second.client_if}")' in table
    assert "subflow,backup" in table and "(filtered: link-local)" in table
    # and the endpoints follow: none on the denied interface, backup on the other
    endpoints = {e["address"]: e for e in mptcpctl(path, "endpoints")}
    assert str(second.client4) not in endpoints
    assert endpoints[str(first.client4)]["flags"] == ["subflow", "backup"]
    assert daemon.stop() == 0

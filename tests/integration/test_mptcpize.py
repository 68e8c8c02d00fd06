"""``mptcpize run`` on real sockets, in lab namespaces: which sockets become
MPTCP, the fall-back to TCP where the namespace has no MPTCP, and a plain
TCP client that gets an MPTCP connection with two subflows carrying data."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from tests.lab import Lab

MPTCPIZE = str(Path(sys.executable).with_name("mptcpize"))
ROOT = Path(__file__).resolve().parents[2]
IPPROTO_MPTCP = 262

# Each socket a program may make, and the protocol the kernel reports for it
# (SO_PROTOCOL) under mptcpize.
PROBE = """
import json, socket
S = socket
cases = {
    "tcp4": (S.AF_INET, S.SOCK_STREAM, 0),
    "tcp6": (S.AF_INET6, S.SOCK_STREAM, 0),
    "tcp4 IPPROTO_TCP": (S.AF_INET, S.SOCK_STREAM, S.IPPROTO_TCP),
    "tcp4 nonblocking": (S.AF_INET, S.SOCK_STREAM | S.SOCK_NONBLOCK, 0),
    "udp4": (S.AF_INET, S.SOCK_DGRAM, 0),
    "unix": (S.AF_UNIX, S.SOCK_STREAM, 0),
    "raw icmp": (S.AF_INET, S.SOCK_RAW, S.IPPROTO_ICMP),
}
out = {}
for name, args in cases.items():
    s = socket.socket(*args)
    out[name] = s.getsockopt(S.SOL_SOCKET, S.SO_PROTOCOL)
    s.close()
print(json.dumps(out))
"""

# A TCP client written without MPTCP in mind: it sends BYTES and reads the
# server's answer; MPTCP_INFO (SOL_MPTCP 284, MPTCP_INFO 1) says what it got.
CLIENT = """
import json, socket, sys, time
from tests.lab.traffic import mptcp_info
addr, port, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((addr, port), timeout=30)
s.sendall(b"hello\\n")
s.recv(64)
deadline = time.monotonic() + 10
while mptcp_info(s)["subflows"] < 1 and time.monotonic() < deadline:
    time.sleep(0.01)  # the path manager's join, before the bulk of the data
block = b"x" * 65536
left = nbytes
while left > 0:
    left -= s.send(block[:min(left, len(block))])
deadline = time.monotonic() + 20
info = mptcp_info(s)
while info["bytes_acked"] < nbytes and time.monotonic() < deadline:
    time.sleep(0.05)
    info = mptcp_info(s)
print(json.dumps({"protocol": s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL),
                  "subflows": info["subflows"], "bytes_acked": info["bytes_acked"]}))
"""


def probe(lab: Lab, ns: str) -> dict[str, int]:
    proc = lab.exec(ns, MPTCPIZE, "run", sys.executable, "-c", PROBE)
    result: dict[str, int] = json.loads(proc.stdout)
    return result


@pytest.mark.lab(links=1)
def test_only_tcp_sockets_become_mptcp(lab: Lab) -> None:
    assert probe(lab, lab.client) == {
        "tcp4": IPPROTO_MPTCP, "tcp6": IPPROTO_MPTCP, "tcp4 IPPROTO_TCP": IPPROTO_MPTCP,
        "tcp4 nonblocking": IPPROTO_MPTCP, "udp4": socket.IPPROTO_UDP, "unix": 0,
        "raw icmp": socket.IPPROTO_ICMP}
    # Without mptcpize, the same program gets TCP.
    plain = json.loads(lab.exec(lab.client, sys.executable, "-c", PROBE).stdout)
    assert plain["tcp4"] == socket.IPPROTO_TCP


@pytest.mark.lab(links=1)
def test_where_mptcp_is_disabled_the_program_keeps_tcp(lab: Lab) -> None:
    lab.sysctl(lab.client, "net.mptcp.enabled", "0")
    found = probe(lab, lab.client)
    assert found["tcp4"] == found["tcp6"] == socket.IPPROTO_TCP
    assert found["udp4"] == socket.IPPROTO_UDP
    debug = lab.exec(lab.client, MPTCPIZE, "run", "-d", sys.executable, "-c",
                     "import socket; socket.socket()")
    assert "mptcpwrap: MPTCP is not available" in debug.stderr


@pytest.mark.lab(links=2)
def test_a_plain_tcp_client_gets_two_subflows_over_both_links(lab: Lab) -> None:
    second = lab.links[1]
    lab.ip(lab.client, "mptcp", "limits", "set", "subflows", "2")
    lab.ip(lab.client, "mptcp", "endpoint", "add", str(second.client4), "dev",
           second.client_if, "subflow")
    server = lab.python(lab.server, "-m", "tests.lab.traffic", "server", "--duration", "60")
    server.wait_output("listening")
    before = tx_bytes(lab)
    nbytes = 8 << 20
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    client = lab.spawn(lab.client, MPTCPIZE, "run", sys.executable, "-c", CLIENT,
                       str(lab.links[0].server4), "5201", str(nbytes), name="tcp-client",
                       env=env)
    assert client.wait(60) == 0, client.output()
    result = json.loads(client.output().strip().splitlines()[-1])
    assert result["protocol"] == IPPROTO_MPTCP
    assert result["subflows"] == 1  # one join besides the initial subflow
    assert result["bytes_acked"] >= nbytes
    sent = {link.client_if: tx_bytes(lab)[link.client_if] - before[link.client_if]
            for link in lab.links}
    assert sum(sent.values()) >= nbytes
    assert all(value >= 64 * 1024 for value in sent.values()), sent
    print(f"mptcpize run, plain TCP client, {nbytes} bytes: bytes sent per link {sent}")


def tx_bytes(lab: Lab) -> dict[str, int]:
    data = json.loads(lab.ip(lab.client, "-s", "-j", "link", "show").stdout)
    return {entry["ifname"]: int(entry["stats64"]["tx"]["bytes"]) for entry in data}

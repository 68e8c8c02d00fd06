"""mptcp_info(sock) and mptcp_full_info(sock) on a real connection with two
subflows, checked against what the socket says of itself otherwise
(getsockname, getpeername) and against each other."""

from __future__ import annotations

import json

from tests.lab import Lab

SCRIPT = """
import json, socket, sys, time
from mptcpd.sockinfo import NotMptcp, mptcp_full_info, mptcp_info
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
sock.settimeout(20)
sock.connect((sys.argv[1], 5201))
sock.sendall(b"hello\\n")
sock.recv(64)
deadline = time.monotonic() + 20
while mptcp_info(sock).subflows < 1 and time.monotonic() < deadline:
    time.sleep(0.05)
info, full = mptcp_info(sock), mptcp_full_info(sock)
tcp = socket.create_connection((sys.argv[1], 5201), timeout=20)
try:
    mptcp_info(tcp)
    plain = "no error"
except NotMptcp as exc:
    plain = exc.errno
print(json.dumps({
    "name": list(sock.getsockname()), "peer": list(sock.getpeername()),
    "info": info.reported(), "full_info": full.info.reported(),
    "num": full.num_subflows, "plain": plain,
    "subflows": [{"id": sf.id, "laddr": str(sf.laddr), "raddr": str(sf.raddr),
                  "state": sf.tcp.state, "rtt": sf.tcp.rtt,
                  "bytes_acked": sf.tcp.bytes_acked} for sf in full.subflows],
}))
"""


def test_full_info_of_a_connection_with_two_subflows(lab: Lab) -> None:
    second = lab.links[1]
    lab.ip(lab.client, "mptcp", "limits", "set", "subflows", "2")
    lab.ip(lab.server, "mptcp", "limits", "set", "subflows", "2")
    lab.ip(lab.client, "mptcp", "endpoint", "add", str(second.client4), "dev",
           second.client_if, "subflow")
    lab.python(lab.server, "-m", "tests.lab.traffic", "server").wait_output("listening")
    proc = lab.python(lab.client, "-c", SCRIPT, str(lab.links[0].server4))
    assert proc.wait(40) == 0, proc.output()
    out = json.loads(proc.output().splitlines()[-1])
    info, full = out["info"], out["full_info"]
    assert info["subflows"] == 1 and out["num"] == 2 == info["subflows_total"]
    assert full["token"] == info["token"] and full["subflows"] == 1
    subflows = out["subflows"]
    assert len(subflows) == 2
    local = f"{out['name'][0]}:{out['name'][1]}"
    assert local in [sf["laddr"] for sf in subflows]  # the initial subflow
    assert any(sf["laddr"].startswith(f"{second.client4}:") for sf in subflows)
    for sf in subflows:
        assert sf["raddr"] == f"{out['peer'][0]}:{out['peer'][1]}"
        assert sf["state"] == 1 and sf["rtt"] > 0  # TCP_ESTABLISHED, a measured RTT
    assert sorted(sf["id"] for sf in subflows) == [1, 2]
    assert out["plain"] == 95  # EOPNOTSUPP: a TCP socket is no MPTCP socket

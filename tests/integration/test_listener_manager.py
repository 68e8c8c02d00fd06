"""The listener manager, ported from mptcpd's test-listener-manager.

The sockets must be opened inside a lab namespace, never in the host's, so
each test runs a small script under ``ip netns exec`` in the lab's client
namespace; the script prints what it saw as JSON and its log on stderr.
"""

from __future__ import annotations

import json
import sys
import textwrap
from typing import Any

from tests.lab import Lab

PRELUDE = textwrap.dedent(
    """
    import errno, json, logging, socket, subprocess, sys
    from mptcpd.pm.listener_manager import ListenerManager
    from mptcpd.types import SockAddr
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG, format="%(message)s")
    out = {}

    def err(call, *args):
        try:
            call(*args)
        except OSError as exc:
            return exc.errno
        return 0

    def mptcp_listeners():
        ss = subprocess.run(["ss", "-HMln"], capture_output=True, text=True, check=True)
        return ss.stdout

    def connect(host, port, family=socket.AF_INET):
        with socket.socket(family, socket.SOCK_STREAM, 262) as s:
            s.settimeout(5)
            return s.connect_ex((host, port))
    """
)


def run_script(lab: Lab, body: str) -> tuple[dict[str, Any], str]:
    script = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    proc = lab.exec(lab.client, sys.executable, "-c", script)
    return json.loads(proc.stdout), proc.stderr


def test_listen_share_and_close(lab: Lab) -> None:
    out, _ = run_script(lab, """
        lm = ListenerManager()
        a4 = SockAddr("127.0.0.1", 56789)
        a6 = SockAddr("::1", 56790)
        out["v4"] = str(lm.listen(a4))
        out["v6"] = str(lm.listen(a6))
        out["ss"] = mptcp_listeners()
        out["connect4"] = connect("127.0.0.1", 56789)
        out["connect6"] = connect("::1", 56790, socket.AF_INET6)
        out["again"] = str(lm.listen(a4))
        out["refcount"] = lm.refcount(a4)
        out["open"] = len(lm)
        out["close1"] = err(lm.close, a4)
        out["still_listening"] = a4 in lm
        out["close2"] = err(lm.close, a4)
        out["gone"] = a4 not in lm
        out["connect_after"] = connect("127.0.0.1", 56789)
        out["close_unknown"] = err(lm.close, SockAddr("127.0.0.1", 1))
        out["close_port0"] = err(lm.close, SockAddr("127.0.0.1", 0))
        out["close_none"] = err(lm.close, None)
        lm.destroy()
        out["after_destroy"] = len(lm)
        out["ss_after"] = mptcp_listeners()
    """)
    assert out["v4"] == "127.0.0.1:56789"
    assert out["v6"] == "[::1]:56790"
    assert "127.0.0.1:56789" in out["ss"] and "[::1]:56790" in out["ss"]
    assert out["connect4"] == 0 and out["connect6"] == 0
    assert out["again"] == "127.0.0.1:56789"
    assert out["refcount"] == 2 and out["open"] == 2
    assert out["close1"] == 0 and out["still_listening"]
    assert out["close2"] == 0 and out["gone"]
    assert out["connect_after"] == 111  # ECONNREFUSED: the socket is closed
    assert out["close_unknown"] == 22 and out["close_port0"] == 22 and out["close_none"] == 22
    assert out["after_destroy"] == 0
    assert "56790" not in out["ss_after"]


def test_port_zero_gives_a_new_ephemeral_listener_each_time(lab: Lab) -> None:
    out, _ = run_script(lab, """
        lm = ListenerManager()
        first = lm.listen(SockAddr("127.0.0.1", 0))
        second = lm.listen(SockAddr("127.0.0.1", 0))
        six = lm.listen(SockAddr("::1", 0))
        out["ports"] = [first.port, second.port, six.port]
        out["open"] = len(lm)
        out["ss"] = mptcp_listeners()
        out["close_first"] = err(lm.close, first)
        out["open_after"] = len(lm)
        lm.destroy()
    """)
    p1, p2, p6 = out["ports"]
    assert p1 and p2 and p6 and p1 != p2
    assert out["open"] == 3
    assert f"127.0.0.1:{p1}" in out["ss"] and f"127.0.0.1:{p2}" in out["ss"]
    assert out["close_first"] == 0 and out["open_after"] == 2


def test_unbound_and_missing_addresses_are_einval(lab: Lab) -> None:
    out, _ = run_script(lab, """
        lm = ListenerManager()
        out["errors"] = {ip: err(lm.listen, SockAddr(ip, 5000))
                         for ip in ("0.0.0.0", "255.255.255.255", "::")}
        out["none"] = err(lm.listen, None)
        out["open"] = len(lm)
    """)
    assert out["errors"] == {"0.0.0.0": 22, "255.255.255.255": 22, "::": 22}
    assert out["none"] == 22 and out["open"] == 0


def test_bind_failure_is_logged_and_returned(lab: Lab) -> None:
    out, log = run_script(lab, """
        lm = ListenerManager()
        out["error"] = err(lm.listen, SockAddr("203.0.113.200", 5000))
        out["open"] = len(lm)
    """)
    assert out["error"] == 99  # EADDRNOTAVAIL: not an address of this host
    assert out["open"] == 0
    assert "Unable to bind MPTCP listener: Cannot assign requested address" in log

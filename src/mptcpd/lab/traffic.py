"""Small MPTCP client and server programs for the lab.

Run inside a lab namespace::

    python -m mptcpd.lab.traffic server --port 5201
    python -m mptcpd.lab.traffic client 192.0.2.2 5201 --bytes 1000000 --hold 2
    python -m mptcpd.lab.traffic sink --port 5300 --duration 30
    python -m mptcpd.lab.traffic flood 192.0.2.2 5300 --seconds 3

The server accepts MPTCP connections (IPv4 and IPv6), answers a first line
with ``ok`` and then discards what it receives.  The client sends a line, waits
for the answer (the kernel reports a connection established, and the in-kernel
PM adds subflows, only after data has been exchanged), optionally sends a
number of bytes and stays connected for a while, then prints one JSON line
with what ``MPTCP_INFO`` says about the connection.  ``sink`` and ``flood``
make connections as fast as they can (accept-and-close, connect-and-reset) to
load the kernel's event stream; ``flood`` prints how many it made.  Every loop
here is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time
from typing import Any

IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)
SOL_MPTCP = 284
MPTCP_INFO = 1

# struct mptcp_info (natural alignment), the fields up to mptcpi_subflows_total
# (kernel 6.8+).
_INFO = struct.Struct("@BBBBBBIIQQQBBBIQQQQB")
_INFO_FIELDS = (
    "subflows", "add_addr_signal", "add_addr_accepted", "subflows_max",
    "add_addr_signal_max", "add_addr_accepted_max", "flags", "token",
    "write_seq", "snd_una", "rcv_nxt", "local_addr_used", "local_addr_max",
    "csum_enabled", "retransmits", "bytes_retrans", "bytes_sent",
    "bytes_received", "bytes_acked", "subflows_total",
)


def mptcp_info(sock: socket.socket) -> dict[str, Any]:
    """Decode ``getsockopt(SOL_MPTCP, MPTCP_INFO)``; missing fields are absent."""
    raw = sock.getsockopt(SOL_MPTCP, MPTCP_INFO, 256)
    buf = raw.ljust(_INFO.size, b"\0")
    info = dict(zip(_INFO_FIELDS, _INFO.unpack_from(buf)))
    if len(raw) < _INFO.size:
        info.pop("subflows_total", None)
    return info


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def serve(port: int, bind: str, duration: float) -> int:
    srv = socket.socket(_family(bind), socket.SOCK_STREAM, IPPROTO_MPTCP)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if srv.family == socket.AF_INET6:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind((bind, port))
    srv.listen(128)
    srv.settimeout(0.5)
    print(f"listening on {bind} port {srv.getsockname()[1]}", flush=True)
    deadline = time.monotonic() + duration

    def handle(conn: socket.socket) -> None:
        conn.settimeout(max(1.0, deadline - time.monotonic()))
        with conn:
            try:
                first = b""
                while not first.endswith(b"\n") and len(first) < 4096:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    first += chunk
                conn.sendall(b"ok\n")
                while conn.recv(1 << 16):
                    pass
            except OSError:
                pass

    while time.monotonic() < deadline:
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        threading.Thread(target=handle, args=(conn,), daemon=True).start()
    srv.close()
    return 0


def client(addr: str, port: int, nbytes: int, hold: float, bind: str | None,
           timeout: float) -> int:
    sock = socket.socket(_family(addr), socket.SOCK_STREAM, IPPROTO_MPTCP)
    sock.settimeout(timeout)
    if bind:
        sock.bind((bind, 0))
    sock.connect((addr, port))
    sock.sendall(b"hello\n")
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            break
        reply += chunk
    block = b"x" * 65536
    left = nbytes
    while left > 0:
        sent = sock.send(block[: min(left, len(block))])
        left -= sent
    # Wait (bounded) until the peer has acknowledged everything we sent.
    info = mptcp_info(sock)
    ack_deadline = time.monotonic() + timeout
    while info["bytes_acked"] < nbytes and time.monotonic() < ack_deadline:
        time.sleep(0.01)
        info = mptcp_info(sock)
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline:
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        info = mptcp_info(sock)
    local = sock.getsockname()
    print(json.dumps({
        "local": [local[0], local[1]],
        "reply": reply.decode(errors="replace").strip(),
        "sent": nbytes,
        "info": info,
    }), flush=True)
    sock.close()
    return 0


def sink(port: int, duration: float) -> int:
    """Accept MPTCP connections and close them at once, for ``duration`` s."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(4096)
    srv.settimeout(0.5)
    print(f"listening on 0.0.0.0 port {port}", flush=True)
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        try:
            conn, _ = srv.accept()
        except OSError:
            continue
        conn.close()
    srv.close()
    return 0


def flood(addr: str, port: int, seconds: float) -> int:
    """Open and reset MPTCP connections back to back; print how many."""
    linger = struct.pack("ii", 1, 0)  # close with a reset: no TIME_WAIT pile-up
    made = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock = socket.socket(_family(addr), socket.SOCK_STREAM, IPPROTO_MPTCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        try:
            sock.connect((addr, port))
            made += 1
        except OSError:
            pass
        sock.close()
    print(made, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mptcpd.lab.traffic")
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server", help="accept MPTCP connections")
    s.add_argument("--port", type=int, default=5201)
    s.add_argument("--bind", default="::")
    s.add_argument("--duration", type=float, default=120.0,
                   help="stop accepting after this many seconds")
    c = sub.add_parser("client", help="open one MPTCP connection")
    c.add_argument("addr")
    c.add_argument("port", type=int)
    c.add_argument("--bytes", type=int, default=0, dest="nbytes")
    c.add_argument("--hold", type=float, default=0.0,
                   help="stay connected this many seconds after sending")
    c.add_argument("--bind", default=None, help="local address to bind")
    c.add_argument("--timeout", type=float, default=10.0)
    k = sub.add_parser("sink", help="accept and close MPTCP connections at once")
    k.add_argument("--port", type=int, default=5300)
    k.add_argument("--duration", type=float, default=60.0)
    f = sub.add_parser("flood", help="open and reset MPTCP connections back to back")
    f.add_argument("addr")
    f.add_argument("port", type=int)
    f.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.mode == "server":
        return serve(args.port, args.bind, args.duration)
    if args.mode == "sink":
        return sink(args.port, args.duration)
    if args.mode == "flood":
        return flood(args.addr, args.port, args.seconds)
    return client(args.addr, args.port, args.nbytes, args.hold, args.bind, args.timeout)


if __name__ == "__main__":
    sys.exit(main())

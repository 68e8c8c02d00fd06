"""Small MPTCP client and server programs for the lab.

Run inside a lab namespace::

    python -m tests.lab.traffic server --port 5201
    python -m tests.lab.traffic client 192.0.2.2 5201 --bytes 1000000 --hold 2
    python -m tests.lab.traffic sink --port 5300 --duration 30
    python -m tests.lab.traffic flood 192.0.2.2 5300 --seconds 3
    python -m tests.lab.traffic hold --port 5201 --duration 60
    python -m tests.lab.traffic conns 192.0.2.2 5201 --count 1000 --want-subflows 1

The server accepts MPTCP connections (IPv4 and IPv6), answers a first line
with ``ok`` and then discards what it receives.  The client sends a line, waits
for the answer (the kernel reports a connection established, and the in-kernel
PM adds subflows, only after data has been exchanged), optionally sends a
number of bytes and stays connected for a while, then prints one JSON line
with what ``MPTCP_INFO`` says about the connection.  ``sink`` and ``flood``
make connections as fast as they can (accept-and-close, connect-and-reset) to
load the kernel's event stream; ``flood`` prints how many it made.  ``hold``
and ``conns`` are their many-connection counterparts for the load benchmark:
``hold`` serves thousands of connections from one thread (answer ``ok`` to
the first line, keep the connection until the peer closes it), ``conns``
opens many connections at once or at a given rate, records when it called
``connect()`` and the token of each, keeps each open until ``MPTCP_INFO``
shows the wanted number of extra subflows or its deadline passes, and prints
one JSON document.  Every loop here is bounded in time.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import selectors
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
           timeout: float, wait_subflows: int = 0, stream: float = 0.0,
           rate: int = 1 << 20, start_after: str | None = None) -> int:
    sock = socket.socket(_family(addr), socket.SOCK_STREAM, IPPROTO_MPTCP)
    sock.settimeout(timeout)
    if bind:
        sock.bind((bind, 0))
    sock.connect((addr, port))
    # Optionally send nothing until a file exists (bounded): the client's
    # ESTABLISHED event waits for the first data acknowledged.
    start_deadline = time.monotonic() + timeout
    while start_after and not os.path.exists(start_after) \
            and time.monotonic() < start_deadline:
        time.sleep(0.01)
    sock.sendall(b"hello\n")
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            break
        reply += chunk
    # Optionally wait (bounded) for the path manager's extra subflows before
    # sending, so that the data can spread over them.
    wait_deadline = time.monotonic() + timeout
    while (wait_subflows and mptcp_info(sock)["subflows"] < wait_subflows
           and time.monotonic() < wait_deadline):
        time.sleep(0.01)
    block = b"x" * 65536
    left = nbytes
    while left > 0:
        sent = sock.send(block[: min(left, len(block))])
        left -= sent
    # Optionally keep sending for ``stream`` seconds at about ``rate`` bytes
    # a second (a transfer running while the test changes the links).
    stream_end = time.monotonic() + stream
    tick = 0.05
    while time.monotonic() < stream_end:
        started = time.monotonic()
        size = max(1, int(rate * tick))
        sock.sendall(block[:1] * size)
        nbytes += size
        time.sleep(max(0.0, tick - (time.monotonic() - started)))
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


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def hold(port: int, bind: str, duration: float) -> int:
    """Serve many connections from one thread: answer ``ok`` to the first
    line, then discard data until the peer closes; for ``duration`` s."""
    _raise_fd_limit()
    srv = socket.socket(_family(bind), socket.SOCK_STREAM, IPPROTO_MPTCP)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if srv.family == socket.AF_INET6:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind((bind, port))
    srv.listen(4096)
    srv.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ, None)
    answered: set[socket.socket] = set()
    print(f"listening on {bind} port {port}", flush=True)
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            if key.data is None:
                for _ in range(256):
                    try:
                        conn, _ = srv.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, True)
                continue
            conn = key.fileobj  # type: ignore[assignment]
            assert isinstance(conn, socket.socket)
            try:
                data = conn.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(conn)
                answered.discard(conn)
                conn.close()
            elif conn not in answered and b"\n" in data:
                answered.add(conn)
                try:
                    conn.send(b"ok\n")
                except OSError:
                    pass
    for key in list(sel.get_map().values()):
        obj = key.fileobj
        if isinstance(obj, socket.socket):
            obj.close()
    sel.close()
    return 0


class _Conn:
    __slots__ = ("sock", "index", "t_connect", "t_ok", "t_served", "token", "subflows",
                 "state", "error", "reply")

    def __init__(self, sock: socket.socket, index: int, t_connect: float) -> None:
        self.sock = sock
        self.index = index
        self.t_connect = t_connect
        self.t_ok: float | None = None
        self.t_served: float | None = None
        self.token: int | None = None
        self.subflows = 0
        self.state = "connecting"
        self.error: str | None = None
        self.reply = b""


def conns(addr: str, port: int, count: int, rate: float, want: int, deadline: float,
          poll: float, bind: str | None) -> int:
    """Open ``count`` MPTCP connections (all at once when ``rate`` is 0, else
    ``rate`` per second); send a line, wait for the answer, read the token;
    keep each until ``MPTCP_INFO`` shows ``want`` extra subflows (0: until
    its deadline) or ``deadline`` s after its ``connect()``; print JSON."""
    _raise_fd_limit()
    sel = selectors.DefaultSelector()
    started: list[_Conn] = []
    open_: set[_Conn] = set()
    t_begin = time.monotonic()
    hard_end = t_begin + (count / rate if rate else 0) + deadline + 30
    next_poll = 0.0

    def start_one(i: int) -> None:
        sock = socket.socket(_family(addr), socket.SOCK_STREAM, IPPROTO_MPTCP)
        sock.setblocking(False)
        if bind:
            sock.bind((bind, 0))
        t0 = time.monotonic()
        c = _Conn(sock, i, t0)
        try:
            sock.connect((addr, port))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            c.state, c.error = "failed", exc.strerror
            sock.close()
            started.append(c)
            return
        started.append(c)
        open_.add(c)
        sel.register(sock, selectors.EVENT_WRITE, c)

    def finish(c: _Conn) -> None:
        if c in open_:
            open_.discard(c)
            try:
                sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()

    while (len(started) < count or open_) and time.monotonic() < hard_end:
        now = time.monotonic()
        if len(started) < count:
            due = count if not rate else min(count, int((now - t_begin) * rate) + 1)
            while len(started) < due:
                start_one(len(started))
        for key, _ in sel.select(0.002 if rate or len(started) < count else poll / 2):
            c = key.data
            assert isinstance(c, _Conn)
            try:
                if c.state == "connecting":
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        c.state, c.error = "failed", os.strerror(err)
                        finish(c)
                        continue
                    c.sock.send(b"hello\n")
                    c.state = "waiting"
                    sel.modify(c.sock, selectors.EVENT_READ, c)
                elif c.state == "waiting":
                    chunk = c.sock.recv(64)
                    if not chunk:
                        c.state, c.error = "failed", "closed by peer"
                        finish(c)
                        continue
                    c.reply += chunk
                    if c.reply.endswith(b"\n"):
                        c.t_ok = time.monotonic()
                        c.token = mptcp_info(c.sock)["token"]
                        c.state = "up"
                        sel.unregister(c.sock)
                elif c.state == "up":
                    pass
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    continue
                c.state, c.error = "failed", exc.strerror
                finish(c)
        now = time.monotonic()
        if now >= next_poll:
            next_poll = now + poll
            for c in list(open_):
                if c.state == "up":
                    try:
                        c.subflows = mptcp_info(c.sock)["subflows"]
                    except OSError:
                        pass
                    if want and c.subflows >= want and c.t_served is None:
                        c.t_served = now
                        finish(c)
                        continue
                if now - c.t_connect >= deadline:
                    finish(c)
    for c in list(open_):
        finish(c)
    sel.close()
    print(json.dumps({
        "count": count, "rate": rate, "want_subflows": want, "deadline": deadline,
        "t_begin": t_begin, "t_end": time.monotonic(),
        "fields": ["t_connect", "t_ok", "t_served", "token", "subflows", "error"],
        "conns": [[c.t_connect, c.t_ok, c.t_served, c.token, c.subflows, c.error]
                  for c in started],
    }), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab.traffic")
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
    c.add_argument("--wait-subflows", type=int, default=0,
                   help="before sending, wait until MPTCP_INFO shows this many extra "
                   "subflows (bounded by --timeout)")
    c.add_argument("--stream", type=float, default=0.0,
                   help="then keep sending for this many seconds, at --rate")
    c.add_argument("--rate", type=int, default=1 << 20, help="bytes a second for --stream")
    c.add_argument("--start-after", default=None, metavar="FILE",
                   help="after connecting, send nothing until FILE exists (bounded by "
                   "--timeout)")
    k = sub.add_parser("sink", help="accept and close MPTCP connections at once")
    k.add_argument("--port", type=int, default=5300)
    k.add_argument("--duration", type=float, default=60.0)
    f = sub.add_parser("flood", help="open and reset MPTCP connections back to back")
    f.add_argument("addr")
    f.add_argument("port", type=int)
    f.add_argument("--seconds", type=float, default=3.0)
    h = sub.add_parser("hold", help="serve many connections from one thread")
    h.add_argument("--port", type=int, default=5201)
    h.add_argument("--bind", default="::")
    h.add_argument("--duration", type=float, default=120.0)
    m = sub.add_parser("conns", help="open many MPTCP connections, report tokens and times")
    m.add_argument("addr")
    m.add_argument("port", type=int)
    m.add_argument("--count", type=int, default=100)
    m.add_argument("--rate", type=float, default=0.0,
                   help="connections per second (0: all at once)")
    m.add_argument("--want-subflows", type=int, default=0,
                   help="close a connection once it has this many extra subflows")
    m.add_argument("--deadline", type=float, default=5.0,
                   help="close a connection this many seconds after its connect()")
    m.add_argument("--poll", type=float, default=0.02, help="MPTCP_INFO poll interval")
    m.add_argument("--bind", default=None)
    args = parser.parse_args(argv)
    if args.mode == "hold":
        return hold(args.port, args.bind, args.duration)
    if args.mode == "conns":
        return conns(args.addr, args.port, args.count, args.rate, args.want_subflows,
                     args.deadline, args.poll, args.bind)
    if args.mode == "server":
        return serve(args.port, args.bind, args.duration)
    if args.mode == "sink":
        return sink(args.port, args.duration)
    if args.mode == "flood":
        return flood(args.addr, args.port, args.seconds)
    return client(args.addr, args.port, args.nbytes, args.hold, args.bind, args.timeout,
                  args.wait_subflows, args.stream, args.rate, args.start_after)


if __name__ == "__main__":
    sys.exit(main())

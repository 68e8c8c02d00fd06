"""An independent witness of the kernel's MPTCP events.

Benchmarks need to know what the kernel did without trusting the daemon under
test, so this module talks to the kernel with nothing but the standard
library (a raw generic-netlink socket, its own few constants and parsing).
Run inside a lab namespace::

    python -m tests.lab.pmwatch watch --out events.json [--count-only]

``watch`` joins ``mptcp_pm_events`` with a large receive buffer and records
every event with the ``CLOCK_MONOTONIC`` time it was received (the clock is
the same in every namespace, so times compare with other processes' own),
until SIGTERM/SIGINT or ``--duration``; then it writes a JSON document with
the events (or only counts per type) and the datagrams the kernel dropped
for its socket.  (The address path is measured by ``bench/bench_addr.py``.)

Also usable as a library: :func:`netlink_drops` reads how many datagrams the
kernel dropped for a process's netlink sockets (``/proc/PID/net/netlink``).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import struct
import sys
import time
from typing import Any

NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SO_RCVBUFFORCE = 33
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
CTRL_ATTR_MCAST_GROUPS = 7
CTRL_ATTR_MCAST_GRP_NAME = 1
CTRL_ATTR_MCAST_GRP_ID = 2
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2

#: mptcp_pm_events event types, by number.
EVENT_NAMES = {
    1: "CREATED", 2: "ESTABLISHED", 3: "CLOSED", 6: "ANNOUNCED", 7: "REMOVED",
    10: "SUB_ESTABLISHED", 11: "SUB_CLOSED", 13: "SUB_PRIORITY",
    15: "LISTENER_CREATED", 16: "LISTENER_CLOSED",
}
ATTR_TOKEN, ATTR_SADDR4, ATTR_SADDR6, ATTR_DADDR4, ATTR_DADDR6 = 1, 5, 6, 7, 8
ATTR_SPORT, ATTR_DPORT = 9, 10

_NLH = struct.Struct("=IHHII")
_GENL = struct.Struct("=BBH")
_ATTR = struct.Struct("=HH")


def _attrs(data: bytes | memoryview, offset: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while offset + 4 <= end:
        alen, atype = _ATTR.unpack_from(data, offset)
        if alen < 4:
            break
        out[atype & 0x3FFF] = bytes(data[offset + 4:offset + alen])
        offset += (alen + 3) & ~3
    return out


def _attr(atype: int, payload: bytes) -> bytes:
    raw = _ATTR.pack(4 + len(payload), atype) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _request(sock: socket.socket, msg_type: int, flags: int, body: bytes, seq: int) -> None:
    sock.send(_NLH.pack(16 + len(body), msg_type, flags, seq, 0) + body)


def resolve_family(sock: socket.socket, name: str) -> tuple[int, dict[str, int]]:
    """The generic-netlink family ID of ``name`` and its multicast groups."""
    body = _GENL.pack(CTRL_CMD_GETFAMILY, 1, 0) + _attr(CTRL_ATTR_FAMILY_NAME,
                                                         name.encode() + b"\0")
    _request(sock, GENL_ID_CTRL, NLM_F_REQUEST, body, 1)
    data = sock.recv(65536)
    length, mtype, _, _, _ = _NLH.unpack_from(data)
    if mtype == NLMSG_ERROR:
        code = -struct.unpack_from("=i", data, 16)[0]
        raise OSError(code, f"generic netlink family {name!r}: {os.strerror(code)}")
    attrs = _attrs(data, 20, length)
    family = struct.unpack("=H", attrs[CTRL_ATTR_FAMILY_ID][:2])[0]
    groups: dict[str, int] = {}
    nested = attrs.get(CTRL_ATTR_MCAST_GROUPS, b"")
    for raw in _attrs(nested, 0, len(nested)).values():
        grp = _attrs(raw, 0, len(raw))
        gname = grp[CTRL_ATTR_MCAST_GRP_NAME].rstrip(b"\0").decode()
        groups[gname] = struct.unpack("=I", grp[CTRL_ATTR_MCAST_GRP_ID][:4])[0]
    return family, groups


def netlink_drops(pid: int | str = "self", protocol: int = NETLINK_GENERIC) -> int:
    """Datagrams the kernel dropped (receive overrun) on ``pid``'s netlink
    sockets of ``protocol``, from ``/proc/PID/net/netlink`` (the process's
    own namespace) matched by socket inode."""
    return sum(netlink_sockets(pid, protocol))


def netlink_rmem(pid: int | str = "self", protocol: int = NETLINK_GENERIC) -> int:
    """The most receive-queue memory (bytes) held by one of ``pid``'s
    netlink sockets of ``protocol`` (``Rmem`` in ``/proc/PID/net/netlink``)."""
    return max(netlink_sockets(pid, protocol, column=4), default=0)


def netlink_sockets(pid: int | str = "self", protocol: int = NETLINK_GENERIC,
                    column: int = 8) -> list[int]:
    """The drop counts (or another ``column`` of ``/proc/PID/net/netlink``:
    4 is ``Rmem``) of ``pid``'s open netlink sockets of ``protocol``."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    drops = []
    with open(f"/proc/{pid}/net/netlink") as table:
        next(table)
        for line in table:
            cols = line.split()
            if len(cols) >= 10 and int(cols[1]) == protocol and cols[9] in inodes:
                drops.append(int(cols[column]))
    return drops


def _addr(attrs: dict[int, bytes], a4: int, a6: int) -> str | None:
    if a4 in attrs:
        return socket.inet_ntop(socket.AF_INET, attrs[a4][:4])
    if a6 in attrs:
        return socket.inet_ntop(socket.AF_INET6, attrs[a6][:16])
    return None


def watch(out: str, duration: float, count_only: bool, rcvbuf: int) -> int:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
    sock.bind((0, 0))
    family, groups = resolve_family(sock, "mptcp_pm")
    sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, groups["mptcp_pm_events"])
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sock.settimeout(0.2)
    print("listening", flush=True)
    counts: dict[int, int] = {}
    events: list[list[Any]] = []
    overruns = 0
    buf = bytearray(65536)
    view = memoryview(buf)
    deadline = time.monotonic() + duration
    monotonic = time.monotonic
    while not stop and monotonic() < deadline:
        try:
            n = sock.recv_into(buf)
        except TimeoutError:
            continue
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                overruns += 1
                continue
            if exc.errno == errno.EINTR:
                continue
            raise
        now = monotonic()
        offset = 0
        while offset + 20 <= n:
            length, mtype = struct.unpack_from("=IH", buf, offset)
            if length < 20:
                break
            if mtype == family:
                cmd = buf[offset + 16]
                counts[cmd] = counts.get(cmd, 0) + 1
                if not count_only:
                    attrs = _attrs(view, offset + 20, offset + length)
                    token = attrs.get(ATTR_TOKEN)
                    sport = attrs.get(ATTR_SPORT)
                    dport = attrs.get(ATTR_DPORT)
                    events.append([
                        now, cmd,
                        struct.unpack("=I", token[:4])[0] if token else None,
                        _addr(attrs, ATTR_SADDR4, ATTR_SADDR6),
                        struct.unpack("!H", sport[:2])[0] if sport else None,
                        _addr(attrs, ATTR_DADDR4, ATTR_DADDR6),
                        struct.unpack("!H", dport[:2])[0] if dport else None,
                    ])
            offset += (length + 3) & ~3
    doc = {
        "counts": {EVENT_NAMES.get(k, str(k)): v for k, v in sorted(counts.items())},
        "total": sum(counts.values()),
        "overruns": overruns,
        "drops": netlink_drops(),
        "fields": ["t", "cmd", "token", "saddr", "sport", "daddr", "dport"],
        "events": events,
    }
    with open(out + ".tmp", "w") as fh:
        json.dump(doc, fh)
    os.replace(out + ".tmp", out)
    sock.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab.pmwatch")
    sub = parser.add_subparsers(dest="mode", required=True)
    w = sub.add_parser("watch", help="record mptcp_pm_events")
    w.add_argument("--out", required=True)
    w.add_argument("--duration", type=float, default=600.0)
    w.add_argument("--count-only", action="store_true")
    w.add_argument("--rcvbuf", type=int, default=64 << 20)
    args = parser.parse_args(argv)
    return watch(args.out, args.duration, args.count_only, args.rcvbuf)


if __name__ == "__main__":
    sys.exit(main())

"""The floor of bench_load's bursts: the least a Python process can do for sspi.

Not a path manager: one blocking loop with no daemon around it, made only to
measure what the lab allows.  It reads the ``mptcp_pm`` events, picks out the
token and addresses of the one kind of event the scenario acts on with a
plain attribute walk, and writes the same commands sspi writes with
:mod:`mptcpd.netlink.pm_codec`, without asking for an acknowledgement and
without reading any answer.  No plugin, no dispatch, no state, no checks.

``client LOCAL REMOTE PORT``: on each ESTABLISHED, SUBFLOW_CREATE from
``LOCAL`` (address ID 1) to ``REMOTE:PORT`` (ID 0), as sspi does on the
client of ``bench_load.py client-burst``.

``server ANNOUNCE DUP_LOCAL DUP_REMOTE``: on each ESTABLISHED, ANNOUNCE of
``ANNOUNCE`` (ID 1, no listener); on each SUB_ESTABLISHED from
``DUP_LOCAL`` to ``DUP_REMOTE``, SUBFLOW_DESTROY of it, as sspi does on the
server of ``bench_load.py server-burst``.

Prints ``floor ready`` once it listens.  Runs until killed, or for
:data:`DURATION` seconds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mptcpd.netlink import constants as C  # noqa: E402
from mptcpd.netlink import nlsock, pm_codec  # noqa: E402
from mptcpd.types import SockAddr  # noqa: E402

_ATTR = struct.Struct("=HH").unpack_from
_U32 = struct.Struct("=I").unpack_from
_BE16 = struct.Struct("!H").unpack_from
#: Seconds it runs at most (the bench's servers hold 600 s too).
DURATION = 600.0


def attributes(data: bytes) -> dict[int, bytes]:
    """The top-level attributes of one event message (type -> payload)."""
    out, off, end = {}, 20, len(data)
    while off + 4 <= end:
        length, kind = _ATTR(data, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[off + 4:off + length]
        off += (length + 3) & ~3
    return out


async def open_sockets() -> tuple[socket.socket, socket.socket, int]:
    events = nlsock.netlink_socket(nlsock.NETLINK_GENERIC)
    nlsock.set_rcvbuf(events, 8 << 20)
    events.bind((0, 0))
    family, groups = await nlsock.lookup_family(events)
    events.setsockopt(nlsock.SOL_NETLINK, nlsock.NETLINK_ADD_MEMBERSHIP,
                      groups[C.MPTCP_PM_EV_GRP_NAME])
    commands = nlsock.netlink_socket(nlsock.NETLINK_GENERIC)
    commands.bind((0, 0))
    events.setblocking(True)
    # A kernel-side receive timeout (no poll before each recv, as Python's
    # own timeout would add): recv raises BlockingIOError once a second.
    events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 1, 0))
    return events, commands, family


def datagrams(events: socket.socket) -> Iterator[bytes]:
    """What the event socket receives, for :data:`DURATION` seconds."""
    deadline = time.monotonic() + DURATION
    while time.monotonic() < deadline:
        try:
            yield events.recv(65536)
        except BlockingIOError:
            continue


def main(argv: list[str]) -> int:
    mode, *addrs = argv
    events, commands, family = asyncio.run(open_sockets())
    ip = ipaddress.ip_address
    seq = 0
    print("floor ready", flush=True)
    if mode == "client":
        local = SockAddr(ip(addrs[0]))
        remote = SockAddr(ip(addrs[1]), int(addrs[2]))
        for data in datagrams(events):
            if data[16] != C.MPTCP_EVENT_ESTABLISHED:
                continue
            token = _U32(attributes(data)[C.MPTCP_ATTR_TOKEN])[0]
            seq += 1
            commands.send(pm_codec.add_subflow(family, seq, 1, token, 1, 0, local, remote))
        return 0
    announce = SockAddr(ip(addrs[0]))
    dup = (ip(addrs[1]).packed, ip(addrs[2]).packed)
    for data in datagrams(events):
        cmd = data[16]
        if cmd == C.MPTCP_EVENT_ESTABLISHED:
            token = _U32(attributes(data)[C.MPTCP_ATTR_TOKEN])[0]
            seq += 1
            commands.send(pm_codec.add_addr(family, seq, 1, announce, 1, token))
        elif cmd == C.MPTCP_EVENT_SUB_ESTABLISHED:
            attrs = attributes(data)
            if (attrs.get(C.MPTCP_ATTR_SADDR4), attrs.get(C.MPTCP_ATTR_DADDR4)) != dup:
                continue
            token = _U32(attrs[C.MPTCP_ATTR_TOKEN])[0]
            laddr = SockAddr(ip(dup[0]), _BE16(attrs[C.MPTCP_ATTR_SPORT])[0])
            raddr = SockAddr(ip(dup[1]), _BE16(attrs[C.MPTCP_ATTR_DPORT])[0])
            seq += 1
            commands.send(pm_codec.remove_subflow(family, seq, 1, token, laddr, raddr))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

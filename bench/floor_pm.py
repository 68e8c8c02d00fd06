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

``addr``: on each ``RTM_NEWADDR`` of a global address, ADD_ADDR of an
endpoint for it (flags ``subflow``, its interface, an ID of its own); on
each ``RTM_DELADDR`` of one of those, DEL_ADDR of its ID, as addr_adv does
in ``bench_addr.py`` (``--addr-flags=subflow``).  The addresses already
there when it starts get no endpoint (the benchmark adds and deletes its
own).

Prints ``floor ready`` once it listens.  Runs until killed, or for
:data:`DURATION` seconds.
"""

from __future__ import annotations

import asyncio
import errno
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
    blocking(events)
    return events, commands, family


#: rtnetlink: the address groups, messages and attributes the addr floor reads.
RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x10, 0x100
RTM_NEWADDR, RTM_DELADDR = 20, 21
IFA_ADDRESS, IFA_LOCAL = 1, 2
_IFADDRMSG = struct.Struct("=BBBBI").unpack_from
_NLMSGHDR = struct.Struct("=IH").unpack_from


def addr_floor() -> int:
    events, commands, family = asyncio.run(open_sockets())
    events.close()
    route = nlsock.netlink_socket(nlsock.NETLINK_ROUTE)
    route.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
    blocking(route)
    ids: dict[bytes, int] = {}
    free = list(range(255, 0, -1))
    seq = 0
    print("floor ready", flush=True)
    for data in datagrams(route):
        off = 0
        while off + 16 <= len(data):
            length, mtype = _NLMSGHDR(data, off)
            if length < 16:
                break
            end, off_next = off + length, off + ((length + 3) & ~3)
            if mtype in (RTM_NEWADDR, RTM_DELADDR) and length >= 24:
                _fam, _plen, _flags, scope, index = _IFADDRMSG(data, off + 16)
                raw = None
                at = off + 24
                while at + 4 <= end and scope == 0:
                    alen, kind = _ATTR(data, at)
                    if alen < 4:
                        break
                    if kind == IFA_LOCAL or (kind == IFA_ADDRESS and raw is None):
                        raw = data[at + 4:at + alen]
                    at += (alen + 3) & ~3
                seq += 1
                if raw is not None and mtype == RTM_NEWADDR and raw not in ids and free:
                    ids[raw] = free.pop()
                    commands.send(pm_codec.kpm_add_addr(
                        family, seq, 1, SockAddr(ipaddress.ip_address(raw)), ids[raw],
                        C.MPTCP_PM_ADDR_FLAG_SUBFLOW, index))
                elif raw is not None and mtype == RTM_DELADDR and raw in ids:
                    free.append(ids[raw])
                    commands.send(pm_codec.kpm_remove_addr(family, seq, 1, ids.pop(raw)))
            off = off_next
    return 0


def blocking(sock: socket.socket) -> None:
    """Reads block, with a kernel-side receive timeout (no poll before each
    recv, as Python's own timeout would add): recv raises BlockingIOError
    once a second."""
    sock.setblocking(True)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 1, 0))


def datagrams(events: socket.socket) -> Iterator[bytes]:
    """What the socket receives, for :data:`DURATION` seconds.  An overrun
    (ENOBUFS) is passed over: what it lost stays lost."""
    deadline = time.monotonic() + DURATION
    while time.monotonic() < deadline:
        try:
            yield events.recv(65536)
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise


def main(argv: list[str]) -> int:
    mode, *addrs = argv
    if mode == "addr":
        return addr_floor()
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

"""MPTCP_INFO and MPTCP_FULL_INFO of one's own socket, for applications.

A program that holds an MPTCP socket (``socket(AF_INET, SOCK_STREAM,
IPPROTO_MPTCP)``, connected or accepted) reads its counters with::

    from mptcpd.sockinfo import mptcp_info, mptcp_full_info

    info = mptcp_info(sock)               # struct mptcp_info
    print(info.token, info.subflows_total, info.bytes_acked)
    full = mptcp_full_info(sock)          # and every subflow, with its tcp_info
    for sf in full.subflows:
        print(sf.id, sf.laddr, sf.raddr, sf.tcp.rtt)

Both follow the kernel's size rules: a field the running kernel did not
write is None, never a zero (``struct mptcp_info`` grows with the kernel;
see :mod:`mptcpd.netlink.mptcp_info`).  A socket that fell back to TCP, or
a kernel before 5.16 (``MPTCP_INFO``) or 6.5 (``MPTCP_FULL_INFO``), raises
:class:`NotMptcp`.  The kernel answers these options only to the socket's
owner; the daemon reads the same counters of every connection through
sock_diag (``mptcpctl connections``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import ipaddress
import os
import socket
import struct

from mptcpd.netlink.mptcp_info import MPTCP_INFO_SIZE, MptcpInfo
from mptcpd.types import SockAddr

__all__ = [
    "MPTCP_FULL_INFO",
    "MPTCP_INFO",
    "SOL_MPTCP",
    "MptcpFullInfo",
    "MptcpInfo",
    "NotMptcp",
    "SubflowInfo",
    "TcpInfo",
    "mptcp_full_info",
    "mptcp_info",
]

SOL_MPTCP = 284
MPTCP_INFO = 1
MPTCP_FULL_INFO = 4

#: ``struct mptcp_subflow_info``: u32 id, then ``struct mptcp_subflow_addrs``
#: (two ``sockaddr_storage`` unions, 8-byte aligned): local at 8, remote at 136.
_SFINFO_SIZE = 264
#: Room for ``struct tcp_info`` (the kernel writes at most its own size).
_TCPINFO_SIZE = 256
#: ``struct mptcp_full_info`` without its ``struct mptcp_info``.
_FULL_HEAD = struct.Struct("=6IQQ")


class NotMptcp(OSError):
    """The socket is not (or no longer: fallback to TCP) an MPTCP socket, or
    the kernel does not have the option."""


#: ``struct tcp_info`` fields decoded: (name, offset, format).
_TCP_FIELDS: tuple[tuple[str, int, str], ...] = (
    ("state", 0, "B"), ("ca_state", 1, "B"), ("retransmits", 2, "B"),
    ("rto", 8, "I"), ("snd_mss", 16, "I"), ("rcv_mss", 20, "I"),
    ("unacked", 24, "I"), ("lost", 32, "I"), ("retrans", 36, "I"),
    ("pmtu", 60, "I"), ("rtt", 68, "I"), ("rttvar", 72, "I"),
    ("snd_ssthresh", 76, "I"), ("snd_cwnd", 80, "I"), ("total_retrans", 100, "I"),
    ("pacing_rate", 104, "Q"), ("bytes_acked", 120, "Q"), ("bytes_received", 128, "Q"),
    ("segs_out", 136, "I"), ("segs_in", 140, "I"),
)


@dataclasses.dataclass(frozen=True)
class TcpInfo:
    """Some of a subflow's ``struct tcp_info`` (``rtt``, ``rttvar``, ``rto``
    in µs); a field the kernel did not write is None.  ``raw`` holds every
    byte the kernel wrote."""

    raw: bytes = b""
    state: int | None = None
    ca_state: int | None = None
    retransmits: int | None = None
    rto: int | None = None
    snd_mss: int | None = None
    rcv_mss: int | None = None
    unacked: int | None = None
    lost: int | None = None
    retrans: int | None = None
    pmtu: int | None = None
    rtt: int | None = None
    rttvar: int | None = None
    snd_ssthresh: int | None = None
    snd_cwnd: int | None = None
    total_retrans: int | None = None
    pacing_rate: int | None = None
    bytes_acked: int | None = None
    bytes_received: int | None = None
    segs_out: int | None = None
    segs_in: int | None = None

    @classmethod
    def from_bytes(cls, data: bytes) -> TcpInfo:
        values = {name: struct.unpack_from("=" + fmt, data, offset)[0]
                  for name, offset, fmt in _TCP_FIELDS
                  if offset + struct.calcsize(fmt) <= len(data)}
        return cls(raw=bytes(data), **values)


@dataclasses.dataclass(frozen=True)
class SubflowInfo:
    """One subflow: its ID, addresses and TCP counters."""

    id: int
    laddr: SockAddr | None
    raddr: SockAddr | None
    tcp: TcpInfo


@dataclasses.dataclass(frozen=True)
class MptcpFullInfo:
    """``MPTCP_FULL_INFO``: the connection's counters and its subflows.

    ``num_subflows`` is the kernel's count; ``subflows`` holds at most the
    number asked for (``max_subflows``)."""

    info: MptcpInfo
    num_subflows: int
    subflows: tuple[SubflowInfo, ...]


def _not_mptcp(exc: OSError) -> OSError:
    if exc.errno in (errno.EOPNOTSUPP, errno.ENOPROTOOPT):
        return NotMptcp(exc.errno, "not an MPTCP socket (it fell back to TCP, or the "
                                   "kernel lacks the option)")
    return exc


def mptcp_info(sock: socket.socket) -> MptcpInfo:
    """``getsockopt(SOL_MPTCP, MPTCP_INFO)`` of ``sock``."""
    try:
        data = sock.getsockopt(SOL_MPTCP, MPTCP_INFO, MPTCP_INFO_SIZE)
    except OSError as exc:
        raise _not_mptcp(exc) from None
    return MptcpInfo.from_bytes(data)


def _sockaddr(data: bytes) -> SockAddr | None:
    family = struct.unpack_from("=H", data)[0]
    port = struct.unpack_from("!H", data, 2)[0]
    if family == socket.AF_INET:
        return SockAddr(ipaddress.IPv4Address(data[4:8]), port)
    if family == socket.AF_INET6:
        return SockAddr(ipaddress.IPv6Address(data[8:24]), port)
    return None


_libc: ctypes.CDLL | None = None


def mptcp_full_info(sock: socket.socket, max_subflows: int = 8) -> MptcpFullInfo:
    """``getsockopt(SOL_MPTCP, MPTCP_FULL_INFO)`` of ``sock`` (kernel 6.5 on):
    the counters and up to ``max_subflows`` subflows, read in one call so
    that they agree with each other."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    count = max(0, int(max_subflows))
    sfinfo = ctypes.create_string_buffer(max(count, 1) * _SFINFO_SIZE)
    tcpinfo = ctypes.create_string_buffer(max(count, 1) * _TCPINFO_SIZE)
    head = _FULL_HEAD.pack(0, _TCPINFO_SIZE, 0, _SFINFO_SIZE, 0, count,
                           ctypes.addressof(sfinfo), ctypes.addressof(tcpinfo))
    buf = ctypes.create_string_buffer(head + bytes(MPTCP_INFO_SIZE), _FULL_HEAD.size
                                      + MPTCP_INFO_SIZE)
    optlen = ctypes.c_uint32(len(buf))
    if _libc.getsockopt(sock.fileno(), SOL_MPTCP, MPTCP_FULL_INFO, buf,
                        ctypes.byref(optlen)) != 0:
        code = ctypes.get_errno()
        raise _not_mptcp(OSError(code, os.strerror(code)))
    raw = buf.raw[:optlen.value]
    size_tcp, _, size_sf, _, num, _, _, _ = _FULL_HEAD.unpack_from(raw.ljust(_FULL_HEAD.size,
                                                                              b"\0"))
    info = MptcpInfo.from_bytes(raw[_FULL_HEAD.size:])
    tcp_len, sf_len = min(size_tcp, _TCPINFO_SIZE), min(size_sf, _SFINFO_SIZE)
    subflows = []
    for i in range(min(num, count)):
        sf = sfinfo.raw[i * _SFINFO_SIZE:i * _SFINFO_SIZE + sf_len]
        tcp = tcpinfo.raw[i * _TCPINFO_SIZE:i * _TCPINFO_SIZE + tcp_len]
        complete = len(sf) >= _SFINFO_SIZE
        subflows.append(SubflowInfo(
            id=struct.unpack_from("=I", sf)[0] if len(sf) >= 4 else 0,
            laddr=_sockaddr(sf[8:136]) if complete else None,
            raddr=_sockaddr(sf[136:264]) if complete else None,
            tcp=TcpInfo.from_bytes(tcp)))
    return MptcpFullInfo(info=info, num_subflows=num, subflows=tuple(subflows))

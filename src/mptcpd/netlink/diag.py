"""The live MPTCP connections of a namespace, from the kernel's sock_diag.

After a receive overrun (``ENOBUFS``) on the ``mptcp_pm`` event socket some
events are lost: the daemon may have missed a connection's CREATED (it never
learnt the token) or its CLOSED (it keeps state for a dead connection); at
startup it adopts the connections that already exist.
:func:`list_mptcp_connections` asks the kernel which MPTCP sockets exist
right now, the way ``ss -M`` does, so that the daemon can reconcile.

The request is an ``inet_diag`` dump (``SOCK_DIAG_BY_FAMILY`` on a
``NETLINK_SOCK_DIAG`` socket), once for ``AF_INET`` and once for
``AF_INET6``: sock_diag has no handler for ``AF_UNSPEC``.  A dual-stack
IPv6 socket with an IPv4 peer is listed once, by the ``AF_INET6`` dump.
``IPPROTO_MPTCP`` (262) does not fit the request's u8 ``sdiag_protocol``,
so it travels in the ``INET_DIAG_REQ_PROTOCOL`` attribute (kernel 5.9, the
release that brought ``mptcp_diag``); the header field is 0, which has no
handler, so a kernel that ignored the attribute answers ``ENOENT`` instead
of dumping some other protocol.  Every state is asked for: the listeners
tell which connections were accepted here.

``INET_DIAG_INFO`` carries ``struct mptcp_info`` for these sockets;
:func:`decode_mptcp_info` reads the head of the structure with natural
alignment: six u8, two pad bytes, ``mptcpi_flags`` (u32) at offset 8 and
``mptcpi_token`` (u32, host order) at offset 12.  A reply whose
``INET_DIAG_INFO`` is missing or shorter than 16 bytes is logged and
skipped: without the token the connection is of no use here.  A dump that
fails after it started (no handler for the protocol, for instance) ends
with an ``NLMSG_DONE`` whose payload is the negative errno.

:func:`list_mptcp_subflows` lists the subflows the same way: a TCP dump
(every subflow is a TCP socket whose upper-layer protocol is ``mptcp``)
whose replies carry ``INET_DIAG_ULP_INFO`` (given to a ``CAP_NET_ADMIN``
caller that asked for ``INET_DIAG_INFO``): a nest with ``INET_ULP_INFO_NAME`` (``"mptcp"``) and
``INET_ULP_INFO_MPTCP``, whose ``MPTCP_SUBFLOW_ATTR_*`` carry the
connection's local token, the address IDs and the subflow flags (initial
or joined, backup on either side).  TCP sockets of another upper layer, or
none, are skipped without a word.

Encoding and decoding are pure functions over bytes (:func:`build_request`,
:func:`decode_datagram`); the dump runs on a plain netlink socket read with
the loop's ``sock_recv``, so the loop never waits for the kernel.  Every
failure, malformed bytes included, is an :class:`OSError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import logging
import os
import socket
import struct
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TypeVar

from mptcpd.netlink import nla
from mptcpd.netlink import mptcp_info as counters
from mptcpd.netlink.nlsock import netlink_socket
from mptcpd.types import SockAddr

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TIMEOUT",
    "IPPROTO_MPTCP",
    "NETLINK_SOCK_DIAG",
    "DiagBatch",
    "MptcpConnection",
    "MptcpDiagUnsupported",
    "MptcpInfo",
    "MptcpSubflow",
    "build_request",
    "build_subflow_request",
    "decode_datagram",
    "decode_mptcp_info",
    "dump_family",
    "fully_established",
    "list_mptcp_connections",
    "list_mptcp_subflows",
    "parse_datagram",
]

#: ``NETLINK_SOCK_DIAG`` (``linux/netlink.h``).
NETLINK_SOCK_DIAG = 4
IPPROTO_MPTCP = socket.IPPROTO_MPTCP
#: ``SOCK_DIAG_BY_FAMILY`` (``linux/sock_diag.h``): request and reply type.
SOCK_DIAG_BY_FAMILY = 20
#: ``INET_DIAG_INFO`` (``enum`` in ``linux/inet_diag.h``), reply attribute.
INET_DIAG_INFO = 2
#: ``INET_DIAG_ULP_INFO`` (``enum`` in ``linux/inet_diag.h``), reply
#: attribute: a nest of ``INET_ULP_INFO_*``.
INET_DIAG_ULP_INFO = 19
INET_ULP_INFO_NAME = 1
INET_ULP_INFO_MPTCP = 3
#: ``MPTCP_SUBFLOW_ATTR_*`` (``linux/mptcp.h``) in ``INET_ULP_INFO_MPTCP``.
MPTCP_SUBFLOW_ATTR_TOKEN_REM = 1
MPTCP_SUBFLOW_ATTR_TOKEN_LOC = 2
MPTCP_SUBFLOW_ATTR_FLAGS = 8
MPTCP_SUBFLOW_ATTR_ID_REM = 9
MPTCP_SUBFLOW_ATTR_ID_LOC = 10
#: ``MPTCP_SUBFLOW_FLAG_*`` (``linux/mptcp.h``).
MPTCP_SUBFLOW_FLAG_MCAP_REM = 0x1
MPTCP_SUBFLOW_FLAG_MCAP_LOC = 0x2
MPTCP_SUBFLOW_FLAG_JOIN_REM = 0x4
MPTCP_SUBFLOW_FLAG_JOIN_LOC = 0x8
MPTCP_SUBFLOW_FLAG_BKUP_REM = 0x10
MPTCP_SUBFLOW_FLAG_BKUP_LOC = 0x20
MPTCP_SUBFLOW_FLAG_FULLY_ESTABLISHED = 0x40
MPTCP_SUBFLOW_FLAG_CONNECTED = 0x80
#: ``INET_DIAG_REQ_PROTOCOL`` (``linux/inet_diag.h``), request attribute.
INET_DIAG_REQ_PROTOCOL = 3
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
_NLMSG_HDR = struct.Struct("=IHHII")
_NLMSG_HDRLEN = _NLMSG_HDR.size
#: ``struct inet_diag_req_v2``: family, protocol, ext, pad, states, then
#: ``struct inet_diag_sockid`` (48 bytes, all zero: any socket).
_REQ_V2 = struct.Struct("=BBBxI48x")
#: The same with the sockid's ``idiag_cookie[0]`` (its last 8 bytes are the
#: cookie): where the MPTCP handler's one-socket lookup takes the token.
_REQ_V2_COOKIE = struct.Struct("=BBBxI40xI4x")
#: ``struct inet_diag_req_v2`` with a whole ``struct inet_diag_sockid``:
#: family, protocol, ext, pad, states, sport and dport (network order), src
#: and dst (16 bytes each), if, cookie[2].
_REQ_V2_SOCKID = struct.Struct("=BBBxI2H16s16sI2I")
#: ``INET_DIAG_NOCOOKIE``: a lookup by addresses, whatever the socket's cookie.
_NOCOOKIE = 0xFFFFFFFF
#: Exact lookups sent in one datagram (their replies must fit the socket's
#: receive buffer: some 400 bytes each).
_LOOKUPS_PER_SEND = 64
#: ``struct inet_diag_msg``: family, state, timer, retrans, sport, dport (both
#: network order), src and dst (16 bytes each), then if, cookie, expires,
#: rqueue, wqueue, uid, inode (not read but the interface).
_DIAG_MSG = struct.Struct("=BBxx2H16s16sI")
_INET_DIAG_MSG_LEN = 72  #: sizeof(struct inet_diag_msg)
_I32 = struct.Struct("=i")
_MAX_ERRNO = 4095  #: the kernel's MAX_ERRNO
#: Kernel socket states (``include/net/tcp_states.h``).
TCP_ESTABLISHED = 1
TCP_LISTEN = 10
_TCP_MAX_STATES = 14
#: Every state but ``TCP_LISTEN``.
STATES_NO_LISTEN = ((1 << _TCP_MAX_STATES) - 1) & ~(1 << TCP_LISTEN)
_RECV_SIZE = 65536

#: Seconds one :func:`list_mptcp_connections` call may take in all.
DEFAULT_TIMEOUT = 10.0

#: The leading fields of ``struct mptcp_info`` (kernel 5.9 on), natural
#: alignment: six u8, two pad bytes, ``mptcpi_flags`` and ``mptcpi_token``.
_MPTCP_INFO_HEAD = struct.Struct("=6B2xII")
#: ``mptcpi_flags`` bits (``linux/mptcp.h``).
MPTCP_INFO_FLAG_FALLBACK = 0x1
MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED = 0x2


# -- values ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class MptcpInfo:
    """The head of ``struct mptcp_info``: what reconciliation needs."""

    subflows: int
    add_addr_signal: int
    add_addr_accepted: int
    subflows_max: int
    add_addr_signal_max: int
    add_addr_accepted_max: int
    flags: int
    token: int

    @property
    def fallback(self) -> bool:
        """The connection fell back to plain TCP (``MPTCP_INFO_FLAG_FALLBACK``)."""
        return bool(self.flags & MPTCP_INFO_FLAG_FALLBACK)


@dataclasses.dataclass(frozen=True, slots=True)
class MptcpConnection:
    """One MPTCP connection (not a listener) as the kernel lists it.

    * ``token``: the local token (``mptcpi_token``), as in ``mptcp_pm``
      events and ``ss -M``;
    * ``laddr`` / ``raddr``: the MPTCP socket's local and remote address,
      ports in host order, exactly as the kernel reports them: an IPv4 peer
      of a dual-stack IPv6 socket (a server listening on ``::``) shows as
      the IPv4-mapped ``::ffff:a.b.c.d``, which is also what the
      ``mptcp_pm`` events of that connection carry;
    * ``state``: the kernel socket state of the MPTCP socket
      (``TCP_ESTABLISHED`` 1, ``TCP_SYN_SENT`` 2, ``TCP_FIN_WAIT1`` 4, ...,
      ``TCP_CLOSE`` 7, ``TCP_CLOSE_WAIT`` 8, ...);
    * ``established``: ``state == TCP_ESTABLISHED``.  The MPTCP socket
      enters that state with its first subflow's handshake, which may be
      before the kernel sends the ESTABLISHED event (fully established,
      after the first data exchange): ``mptcp_info`` does not tell;
    * ``fallback``: the connection fell back to plain TCP
      (``MPTCP_INFO_FLAG_FALLBACK``).  A connection that fell back during
      its handshake still has a token here, but the kernel sent no
      ``mptcp_pm`` event for it;
    * ``server_side``: the connection was accepted here: its local port is
      the port of an MPTCP listener of the namespace (set by
      :func:`list_mptcp_connections`, which lists the listeners too);
    * ``info``: every ``struct mptcp_info`` counter the kernel reported
      (:func:`mptcpd.netlink.mptcp_info.decode_mptcp_info`).
    """

    token: int
    laddr: SockAddr
    raddr: SockAddr
    state: int
    established: bool
    fallback: bool = False
    server_side: bool = False
    info: dict[str, int] = dataclasses.field(default_factory=dict, compare=False)


@dataclasses.dataclass(frozen=True, slots=True)
class MptcpSubflow:
    """One subflow (a TCP socket of an MPTCP connection) as the kernel lists it.

    * ``token``: the local token of its connection (as in ``mptcp_pm``
      events and :attr:`MptcpConnection.token`);
    * ``laddr`` / ``raddr``: the subflow's addresses and ports (host order),
      IPv4-mapped for an IPv4 subflow of a dual-stack socket, as the
      subflow events of that connection carry them;
    * ``state``: the TCP state of the subflow (``TCP_ESTABLISHED`` 1, ...);
    * ``ifindex``: the interface the subflow is bound to (0: not bound);
    * ``local_id`` / ``remote_id``: the address IDs;
    * ``flags``: ``MPTCP_SUBFLOW_FLAG_*``.
    """

    token: int
    laddr: SockAddr
    raddr: SockAddr
    state: int
    ifindex: int = 0
    local_id: int = 0
    remote_id: int = 0
    flags: int = 0

    @property
    def initial(self) -> bool:
        """The connection's first subflow (MP_CAPABLE), not a join."""
        return not self.flags & (MPTCP_SUBFLOW_FLAG_JOIN_LOC | MPTCP_SUBFLOW_FLAG_JOIN_REM)

    @property
    def backup(self) -> bool:
        """This side asked the peer to use the subflow as a backup."""
        return bool(self.flags & MPTCP_SUBFLOW_FLAG_BKUP_LOC)

    @property
    def backup_remote(self) -> bool:
        """The peer asked this side to use the subflow as a backup."""
        return bool(self.flags & MPTCP_SUBFLOW_FLAG_BKUP_REM)

    @property
    def established(self) -> bool:
        return self.state == TCP_ESTABLISHED

    @property
    def fully_established(self) -> bool:
        """MPTCP-level established (``MPTCP_SUBFLOW_FLAG_FULLY_ESTABLISHED``):
        for a connection's initial subflow, what the kernel's ESTABLISHED
        event reports; a client's comes with its first data exchange, after
        the TCP handshake."""
        return bool(self.flags & MPTCP_SUBFLOW_FLAG_FULLY_ESTABLISHED)


def fully_established(connections: Iterable[MptcpConnection],
                      subflows: Iterable[MptcpSubflow] | None) -> set[int]:
    """The tokens of ``connections`` that are fully established, as the
    kernel's ESTABLISHED event means it: the MPTCP socket is in
    ``TCP_ESTABLISHED`` (:attr:`MptcpConnection.established`, which a client
    connection reaches with its TCP handshake) and, from the ``subflows``
    listing, its initial subflow is :attr:`~MptcpSubflow.fully_established`
    (a client's, once data was exchanged).  When it is not listed (gone,
    joins remaining: a join needs a fully established connection; or none
    of its subflows listed), or without a listing, the socket state alone
    decides."""
    initial: dict[int, bool] = {}  # token -> its initial subflow's flag
    for sf in subflows or ():
        if sf.initial:
            initial[sf.token] = initial.get(sf.token, False) or sf.fully_established
    return {c.token for c in connections
            if c.established and (subflows is None or initial.get(c.token, True))}


@dataclasses.dataclass(slots=True)
class DiagBatch:
    """What one received datagram of a dump holds.

    ``listeners`` are the (address, port) of the MPTCP listeners met;
    ``subflows`` the subflows of a TCP dump (:func:`build_subflow_request`);
    ``done`` tells that the dump's ``NLMSG_DONE`` was in the datagram.
    """

    connections: list[MptcpConnection] = dataclasses.field(default_factory=list)
    listeners: list[SockAddr] = dataclasses.field(default_factory=list)
    subflows: list[MptcpSubflow] = dataclasses.field(default_factory=list)
    done: bool = False


class MptcpDiagUnsupported(OSError):
    """The kernel has no MPTCP socket diagnostics (``errno.ENOENT``)."""


def decode_mptcp_info(data: bytes) -> MptcpInfo | None:
    """Decode the head of ``struct mptcp_info`` from ``INET_DIAG_INFO`` bytes.

    Returns None when ``data`` is shorter than the 16 bytes that end with
    the token.  Longer data (every kernel sends more: 96 bytes on 6.18) is
    fine; the rest is not read.
    """
    if len(data) < _MPTCP_INFO_HEAD.size:
        return None
    return MptcpInfo(*_MPTCP_INFO_HEAD.unpack_from(data))


# -- encoding ------------------------------------------------------------------


def build_request(family: int, protocol: int = IPPROTO_MPTCP, seq: int = 0,
                  *, ext: int = 1 << (INET_DIAG_INFO - 1),
                  states: int = STATES_NO_LISTEN | (1 << TCP_LISTEN)) -> bytes:
    """The dump request for ``family``, a whole netlink message: every state
    (listeners too), with ``INET_DIAG_INFO``, the protocol in
    ``INET_DIAG_REQ_PROTOCOL``."""
    # sdiag_protocol 0 has no inet_diag handler: a kernel that ignored the
    # protocol attribute answers ENOENT instead of dumping another protocol.
    return _request(_REQ_V2.pack(family, 0, ext, states), protocol, NLM_F_DUMP, seq)


def _request(body: bytes, protocol: int, flags: int, seq: int) -> bytes:
    """A whole ``SOCK_DIAG_BY_FAMILY`` request: ``body`` (a ``struct
    inet_diag_req_v2``), then ``protocol`` in ``INET_DIAG_REQ_PROTOCOL``;
    ``flags`` besides ``NLM_F_REQUEST``."""
    attr = nla.encode(INET_DIAG_REQ_PROTOCOL, struct.pack("=I", protocol))
    length = _NLMSG_HDRLEN + len(body) + len(attr)
    return _NLMSG_HDR.pack(length, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | flags,
                           seq, 0) + body + attr


def build_lookup_request(token: int, seq: int = 0) -> bytes:
    """The request for the one MPTCP connection of ``token`` (no dump: the
    kernel's MPTCP handler looks the token up), with ``INET_DIAG_INFO``,
    acknowledged: the kernel answers with the connection and an
    acknowledgement, or with ``ENOENT``."""
    body = _REQ_V2_COOKIE.pack(socket.AF_INET, 0, 1 << (INET_DIAG_INFO - 1),
                               STATES_NO_LISTEN, token)
    return _request(body, IPPROTO_MPTCP, NLM_F_ACK, seq)


def build_subflow_lookup(laddr: SockAddr, raddr: SockAddr, ifindex: int = 0,
                        seq: int = 0) -> bytes:
    """The request for the one TCP socket from ``laddr`` to ``raddr``, bound
    to interface ``ifindex`` (0: to none; the kernel matches a bound
    socket only with its interface), an IPv4-mapped pair looked up as IPv4
    (where the kernel hashes it), as
    :func:`build_subflow_request` asks for each, acknowledged: the kernel
    answers with the socket and an acknowledgement, or with ``ENOENT``."""
    local, remote = laddr.unmapped(), raddr.unmapped()
    family = socket.AF_INET if local.ip.version == 4 else socket.AF_INET6
    body = _REQ_V2_SOCKID.pack(family, 0, 1 << (INET_DIAG_INFO - 1), STATES_NO_LISTEN,
                               socket.htons(local.port), socket.htons(remote.port),
                               local.ip.packed.ljust(16, b"\0"),
                               remote.ip.packed.ljust(16, b"\0"), ifindex, _NOCOOKIE,
                               _NOCOOKIE)
    return _request(body, socket.IPPROTO_TCP, NLM_F_ACK, seq)


def build_subflow_request(family: int, seq: int = 0) -> bytes:
    """The TCP dump request that lists subflows: every state but listeners,
    with ``INET_DIAG_INFO`` (``struct tcp_info``, not read: the kernel adds
    the ULP info only to replies that carry it)."""
    return build_request(family, socket.IPPROTO_TCP, seq, states=STATES_NO_LISTEN)


# -- decoding ------------------------------------------------------------------


def _where(netns: str | None) -> str:
    return f" in network namespace {netns!r}" if netns else ""


def _error(code: int, netns: str | None = None) -> OSError:
    """The error for a kernel errno (any int: a value out of range is EIO)."""
    if not 0 < code <= _MAX_ERRNO:
        return OSError(errno.EIO, f"MPTCP socket diagnostics dump failed{_where(netns)}: "
                                  f"malformed error code {code}")
    if code == errno.ENOENT:
        return MptcpDiagUnsupported(
            code,
            "the kernel has no MPTCP socket diagnostics (sock_diag for "
            f"IPPROTO_MPTCP, CONFIG_INET_MPTCP_DIAG){_where(netns)}",
        )
    return OSError(
        code, f"MPTCP socket diagnostics dump failed{_where(netns)}: {os.strerror(code)}"
    )


def _info_payload(data: bytes, offset: int, end: int) -> bytes | None:
    """``INET_DIAG_INFO``'s payload among the attributes in [offset, end);
    None when absent, ValueError when the chain is malformed up to it."""
    try:
        for kind, start, stop in nla.walk(data, offset, end):
            if kind == INET_DIAG_INFO:
                return data[start:stop]
    except nla.MalformedAttribute as exc:
        raise ValueError(f"attribute {exc.type} of {exc.length} bytes does not fit "
                         f"the message") from None
    return None


def _subflow_info(data: bytes, offset: int, end: int) -> dict[int, bytes] | None:
    """The ``MPTCP_SUBFLOW_ATTR_*`` payloads of an ``mptcp`` ULP among the
    attributes in [offset, end); None for a socket of another upper layer
    or none.  ValueError when the attributes are malformed."""
    try:
        for kind, start, stop in nla.walk(data, offset, end):
            if kind != INET_DIAG_ULP_INFO:
                continue
            ulp = {k: (a, b) for k, a, b in nla.walk(data, start, stop)}
            name = ulp.get(INET_ULP_INFO_NAME)
            nest = ulp.get(INET_ULP_INFO_MPTCP)
            if name is None or data[name[0]:name[1]].rstrip(b"\0") != b"mptcp" or nest is None:
                return None
            return {k: data[a:b] for k, a, b in nla.walk(data, *nest)}
    except nla.MalformedAttribute as exc:
        raise ValueError(f"attribute {exc.type} of {exc.length} bytes does not fit "
                         f"the message") from None
    return None


def _uint(attrs: dict[int, bytes], kind: int) -> int:
    """A u8 or u32 attribute (0 when absent); ValueError when its size is wrong."""
    raw = attrs.get(kind)
    if raw is None:
        return 0
    if len(raw) == 1:
        return raw[0]
    if len(raw) == 4:
        return int.from_bytes(raw, sys.byteorder)
    raise ValueError(f"subflow attribute {kind} has {len(raw)} bytes")


def _decode_subflow(data: bytes, body: int, end: int, state: int,
                    laddr: SockAddr, raddr: SockAddr, ifindex: int,
                    batch: DiagBatch) -> None:
    try:
        attrs = _subflow_info(data, body + _INET_DIAG_MSG_LEN, end)
        if attrs is None:
            return
        if MPTCP_SUBFLOW_ATTR_TOKEN_LOC not in attrs:
            return  # no MPTCP connection (yet): nothing to list
        subflow = MptcpSubflow(
            token=_uint(attrs, MPTCP_SUBFLOW_ATTR_TOKEN_LOC), laddr=laddr, raddr=raddr,
            state=state, ifindex=ifindex,
            local_id=_uint(attrs, MPTCP_SUBFLOW_ATTR_ID_LOC),
            remote_id=_uint(attrs, MPTCP_SUBFLOW_ATTR_ID_REM),
            flags=_uint(attrs, MPTCP_SUBFLOW_ATTR_FLAGS),
        )
    except ValueError as exc:
        log.warning("MPTCP diag: malformed subflow %s port %d -> %s port %d (%s); "
                    "skipped", laddr.ip, laddr.port, raddr.ip, raddr.port, exc)
        return
    batch.subflows.append(subflow)


def _decode_reply(data: bytes, start: int, end: int, batch: DiagBatch,
                  subflows: bool = False) -> None:
    """One ``SOCK_DIAG_BY_FAMILY`` reply in data[start:end] into ``batch``:
    an MPTCP socket, or with ``subflows`` a TCP socket."""
    body = start + _NLMSG_HDRLEN
    if end - body < _INET_DIAG_MSG_LEN:
        log.warning("MPTCP diag: undecodable reply (type %d, %d bytes) skipped: "
                    "too short", SOCK_DIAG_BY_FAMILY, end - start)
        return
    family, state, sport, dport, src, dst, ifindex = _DIAG_MSG.unpack_from(data, body)
    if family == socket.AF_INET:
        src, dst = src[:4], dst[:4]
    elif family != socket.AF_INET6:
        log.warning("MPTCP diag: socket of unknown family %s skipped", family)
        return
    laddr = SockAddr(ipaddress.ip_address(src), socket.ntohs(sport))
    if state == TCP_LISTEN:
        if not subflows:
            batch.listeners.append(laddr)
        return
    raddr = SockAddr(ipaddress.ip_address(dst), socket.ntohs(dport))
    if subflows:
        _decode_subflow(data, body, end, state, laddr, raddr, ifindex, batch)
        return
    where = (f"{socket.inet_ntop(family, src)} port {laddr.port} -> "
             f"{socket.inet_ntop(family, dst)} port {raddr.port}")
    try:
        raw = _info_payload(data, body + _INET_DIAG_MSG_LEN, end)
    except ValueError as exc:
        log.warning("MPTCP diag: malformed reply for %s (%s); skipped", where, exc)
        return
    if raw is None:
        log.warning("MPTCP diag: no MPTCP info for %s; skipped", where)
        return
    info = decode_mptcp_info(raw)
    if info is None:
        log.warning(
            "MPTCP diag: MPTCP info for %s is %d bytes, too short for the "
            "token; skipped", where, len(raw),
        )
        return
    batch.connections.append(MptcpConnection(
        token=info.token, laddr=laddr, raddr=raddr, state=state,
        established=state == TCP_ESTABLISHED, fallback=info.fallback,
        info=counters.decode_mptcp_info(raw),
    ))


def decode_datagram(data: bytes, seq: int | None = None,
                    netns: str | None = None, *, subflows: bool = False) -> DiagBatch:
    """The replies, listeners and end of dump in one received datagram
    (the subflows, with ``subflows``: the datagram answers
    :func:`build_subflow_request`).

    Messages whose sequence number is not ``seq`` (when given) are ignored;
    a message whose length does not fit the datagram ends it, with a
    warning.  Raises :class:`OSError` (:class:`MptcpDiagUnsupported` for
    ``ENOENT``) for an error the datagram carries, and never another
    exception.
    """
    batch = DiagBatch()
    data = bytes(data)
    for offset, length, kind, msg_seq in _messages(data):
        end = offset + length
        if seq is None or msg_seq == seq:
            if kind == SOCK_DIAG_BY_FAMILY:
                _decode_reply(data, offset, end, batch, subflows)
            elif kind in (NLMSG_ERROR, NLMSG_DONE):
                code = (_I32.unpack_from(data, offset + _NLMSG_HDRLEN)[0]
                        if length >= _NLMSG_HDRLEN + 4 else 0)
                if kind == NLMSG_ERROR:
                    if length < _NLMSG_HDRLEN + 4:
                        raise OSError(errno.EIO, "MPTCP socket diagnostics dump "
                                      f"failed{_where(netns)}: truncated error message")
                    if code != 0:  # 0 is an acknowledgement
                        raise _error(abs(code), netns)
                else:
                    if code < 0:
                        raise _error(-code, netns)
                    batch.done = True
                    break
    return batch


def _messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """The offset, length, type and sequence number of each netlink message
    of one datagram; a message whose length does not fit the datagram ends
    it, with a warning."""
    offset, size = 0, len(data)
    while offset + _NLMSG_HDRLEN <= size:
        length, kind, _flags, seq, _pid = _NLMSG_HDR.unpack_from(data, offset)
        if length < _NLMSG_HDRLEN or offset + length > size:
            log.warning("MPTCP diag: message of %d bytes at offset %d does not fit "
                        "the %d-byte datagram; rest skipped", length, offset, size)
            return
        yield offset, length, kind, seq
        offset += (length + 3) & ~3


def parse_datagram(data: bytes) -> list[MptcpConnection]:
    """The connections (not the listeners) in one received sock_diag
    datagram; :class:`OSError` for an error the datagram carries."""
    return decode_datagram(data).connections


# -- the dump ------------------------------------------------------------------


async def _dump(sock: socket.socket, request: bytes, seq: int, netns: str | None,
                subflows: bool = False) -> DiagBatch:
    """Send one dump request and gather its replies until ``NLMSG_DONE``."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, request)
    result = DiagBatch()
    while True:
        data = await loop.sock_recv(sock, _RECV_SIZE)
        if not data:
            raise OSError(errno.EIO, f"sock_diag socket closed{_where(netns)}")
        batch = decode_datagram(data, seq, netns, subflows=subflows)
        result.connections.extend(batch.connections)
        result.listeners.extend(batch.listeners)
        result.subflows.extend(batch.subflows)
        if batch.done:
            result.done = True
            return result


async def dump_family(
    sock: socket.socket, family: int, protocol: int = IPPROTO_MPTCP,
    listeners: set[SockAddr] | None = None, *, seq: int = 1,
    netns: str | None = None,
) -> list[MptcpConnection]:
    """Run one dump on an open, non-blocking ``NETLINK_SOCK_DIAG`` socket.

    The listeners met on the way are added to ``listeners``.  Raises
    :class:`OSError` when the kernel reports an error.
    """
    batch = await _dump(sock, build_request(family, protocol, seq), seq, netns)
    if listeners is not None:
        listeners.update(batch.listeners)
    return batch.connections


def _with_side(conn: MptcpConnection, listeners: set[SockAddr]) -> MptcpConnection:
    port = conn.laddr.port
    ips = (conn.laddr.ip, conn.laddr.unmapped().ip)
    accepted = any(a.port == port and (a.ip.is_unspecified or a.ip in ips)
                   for a in listeners)
    return dataclasses.replace(conn, server_side=accepted) if accepted else conn


async def list_mptcp_connections(
    netns: str | None = None, *, timeout: float | None = DEFAULT_TIMEOUT
) -> list[MptcpConnection]:
    """List the MPTCP connections (every socket but listeners) of a namespace.

    :param netns: the network namespace to look into (a name under
        ``/run/netns`` or a path); None for the caller's own.  The caller
        does not change namespace, and a missing namespace is an error (it
        is never created).
    :param timeout: seconds the whole listing may take (None: no limit).
    :returns: the IPv4 connections, then the IPv6 ones (IPv4 peers of
        dual-stack sockets included), each in the kernel's order.
    :raises MptcpDiagUnsupported: (an :class:`OSError`, ``errno.ENOENT``)
        the kernel has no MPTCP socket diagnostics;
    :raises OSError: the socket cannot be opened (for instance the
        namespace does not exist), the kernel refused the dump, or the
        listing took longer than ``timeout`` (``errno.ETIMEDOUT``).
    """
    async def dumps(sock: socket.socket) -> list[MptcpConnection]:
        connections = []
        listeners: set[SockAddr] = set()
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            connections.extend(await dump_family(
                sock, family, listeners=listeners, seq=seq, netns=netns))
        return [_with_side(c, listeners) for c in connections]

    return await _listing(dumps, "MPTCP socket diagnostics", netns, timeout)


async def list_mptcp_subflows(
    netns: str | None = None, *, timeout: float | None = DEFAULT_TIMEOUT
) -> list[MptcpSubflow]:
    """List the subflows of every MPTCP connection of a namespace (the
    initial subflows too; not those of listeners), IPv4 then IPv6.

    Same parameters and errors as :func:`list_mptcp_connections`; the
    caller needs ``CAP_NET_ADMIN`` in the namespace, without which the
    kernel leaves out the information that tells a subflow from another
    TCP socket, and the list is empty.
    """
    async def dumps(sock: socket.socket) -> list[MptcpSubflow]:
        subflows = []
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            batch = await _dump(sock, build_subflow_request(family, seq), seq, netns,
                                subflows=True)
            subflows.extend(batch.subflows)
        return subflows

    return await _listing(dumps, "TCP socket diagnostics", netns, timeout)


async def find_mptcp_connections(
    tokens: Iterable[int], netns: str | None = None, *,
    timeout: float | None = DEFAULT_TIMEOUT
) -> list[MptcpConnection]:
    """The MPTCP connections of ``tokens`` that the kernel still has, each
    looked up by its token (not a dump).

    A dump walks the kernel's token table in slices, and under heavy
    churn it can miss a live connection (the connections closed before the
    walk's position move it); a lookup cannot.  The side of each connection
    comes from a dump of the listeners.  Same ``netns``, ``timeout`` and
    errors as :func:`list_mptcp_connections`.
    """
    wanted = list(dict.fromkeys(tokens))

    async def lookups(sock: socket.socket) -> list[MptcpConnection]:
        listeners: set[SockAddr] = set()
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            await dump_family(sock, family, listeners=listeners, seq=seq, netns=netns)
        requests = [build_lookup_request(token, seq) for seq, token in enumerate(wanted, 3)]
        batch = await _lookups(sock, requests, 3, netns)
        known = set(wanted)
        return [_with_side(c, listeners) for c in batch.connections if c.token in known]

    if not wanted:
        return []
    return await _listing(lookups, "MPTCP socket diagnostics", netns, timeout)


async def find_mptcp_subflows(
    paths: Iterable[tuple[SockAddr, SockAddr, int]], netns: str | None = None, *,
    timeout: float | None = DEFAULT_TIMEOUT
) -> list[MptcpSubflow]:
    """The subflows of ``paths`` (local and remote address and port, and the
    interface the subflow is bound to, as its events and sock_diag give it:
    0 for none) that the kernel still has, each looked up by them (not a
    dump, which can miss a live socket under churn, as
    :func:`find_mptcp_connections` says).  Same ``netns``, ``timeout`` and
    errors as :func:`list_mptcp_subflows`."""
    wanted = list(dict.fromkeys(paths))

    async def lookups(sock: socket.socket) -> list[MptcpSubflow]:
        requests = [build_subflow_lookup(laddr, raddr, ifindex, seq)
                    for seq, (laddr, raddr, ifindex) in enumerate(wanted, 1)]
        return (await _lookups(sock, requests, 1, netns, subflows=True)).subflows

    if not wanted:
        return []
    return await _listing(lookups, "TCP socket diagnostics", netns, timeout)


async def _lookups(sock: socket.socket, requests: list[bytes], first_seq: int,
                   netns: str | None, subflows: bool = False) -> DiagBatch:
    """Send the acknowledged one-socket ``requests`` (numbered from
    ``first_seq`` on, :data:`_LOOKUPS_PER_SEND` to a datagram) and gather
    what the kernel found."""
    loop = asyncio.get_running_loop()
    result = DiagBatch()
    for first in range(0, len(requests), _LOOKUPS_PER_SEND):
        chunk = requests[first:first + _LOOKUPS_PER_SEND]
        seqs = range(first_seq + first, first_seq + first + len(chunk))
        await loop.sock_sendall(sock, b"".join(chunk))
        answered: set[int] = set()
        while len(answered) < len(chunk):
            data = await loop.sock_recv(sock, _RECV_SIZE)
            if not data:
                raise OSError(errno.EIO, f"sock_diag socket closed{_where(netns)}")
            _decode_lookups(data, seqs, answered, netns, result, subflows)
    return result


def _decode_lookups(data: bytes, seqs: range, answered: set[int], netns: str | None,
                    batch: DiagBatch, subflows: bool) -> None:
    """The sockets in one datagram of answers to lookups numbered ``seqs``
    into ``batch``; the numbers answered (acknowledged, or not found) are
    added to ``answered``.  An error other than ``ENOENT`` raises
    :class:`OSError`."""
    for offset, length, kind, seq in _messages(data):
        if seq in seqs:
            if kind == SOCK_DIAG_BY_FAMILY:
                _decode_reply(data, offset, offset + length, batch, subflows)
            elif kind == NLMSG_ERROR:
                code = (abs(_I32.unpack_from(data, offset + _NLMSG_HDRLEN)[0])
                        if length >= _NLMSG_HDRLEN + 4 else errno.EIO)
                if code not in (0, errno.ENOENT):
                    raise _error(code, netns)
                answered.add(seq)


_T = TypeVar("_T")


async def _listing(dumps: Callable[[socket.socket], Awaitable[_T]], what: str,
                   netns: str | None, timeout: float | None) -> _T:
    """Run ``dumps`` on a fresh sock_diag socket of ``netns`` within ``timeout``."""
    try:
        sock = netlink_socket(NETLINK_SOCK_DIAG, netns)
    except OSError as exc:
        raise OSError(
            exc.errno or errno.EIO,
            f"cannot open a sock_diag socket{_where(netns)}: {exc}",
        ) from exc
    try:
        async with asyncio.timeout(timeout):
            return await dumps(sock)
    except TimeoutError as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a socket-level ETIMEDOUT, already explained
        raise OSError(
            errno.ETIMEDOUT,
            f"{what}{_where(netns)} took longer than {timeout} s",
        ) from exc
    finally:
        sock.close()

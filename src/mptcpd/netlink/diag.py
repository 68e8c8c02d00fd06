"""The live MPTCP connections of a namespace, from the kernel's sock_diag.

After a receive overrun (``ENOBUFS``) on the ``mptcp_pm`` event socket some
events are lost: the daemon may have missed a connection's CREATED (it never
learnt the token) or its CLOSED (it keeps state for a dead connection).
:func:`list_mptcp_connections` asks the kernel which MPTCP sockets exist
right now, the way ``ss -M`` does, so that the daemon can reconcile (adopt
unknown tokens, drop vanished ones; DESIGN decision 6).

The request is an ``inet_diag`` dump (``SOCK_DIAG_BY_FAMILY`` on a
``NETLINK_SOCK_DIAG`` socket), once for ``AF_INET`` and once for
``AF_INET6``: sock_diag has no handler for ``AF_UNSPEC``.  A dual-stack
IPv6 socket with an IPv4 peer is listed once, by the ``AF_INET6`` dump.
``IPPROTO_MPTCP`` (262) does not fit the request's u8 ``sdiag_protocol``,
so it travels in the ``INET_DIAG_REQ_PROTOCOL`` attribute (kernel 5.9, the
release that brought ``mptcp_diag``); the header field is 0, which has no
handler, so a kernel that ignored the attribute answers ``ENOENT`` instead
of dumping some other protocol.  Listeners are left out by the request's
state mask (and skipped should one come back anyway).

``INET_DIAG_INFO`` carries ``struct mptcp_info`` for these sockets, while
pyroute2's ``inet_diag_msg`` decodes that attribute as ``struct tcp_info``
(which would put the token's bytes in ``tcpi_ato``).  The reply class here
keeps it as raw bytes and :func:`decode_mptcp_info` reads the head of the
structure with natural alignment: six u8, two pad bytes, ``mptcpi_flags``
(u32) at offset 8 and ``mptcpi_token`` (u32, host order) at offset 12.
A reply whose ``INET_DIAG_INFO`` is missing or shorter than 16 bytes is
logged and skipped: without the token the connection is of no use here.

A dump that fails after it started (no handler for the protocol, for
instance) is reported in the payload of its ``NLMSG_DONE``, which pyroute2
reads as a normal end; :class:`MarshalMptcpDiag` turns it into an error.

The messages are declared on pyroute2's machinery (:class:`mptcp_diag_req`,
:class:`mptcp_diag_msg`, :class:`MarshalMptcpDiag`), and the dump runs on
pyroute2's asyncio netlink socket (:class:`AsyncMptcpDiagSocket`; pyroute2
0.9.7 has no asynchronous ``DiagSocket``).  The loop is never blocked
waiting for the kernel; it decodes one received datagram at a time.
Opening the socket in another namespace (``netns=``) starts pyroute2's
short-lived helper process, as every pyroute2 socket with ``netns=`` does
(about 10 ms here); a missing namespace is an error, never created.
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
from typing import Any

from pyroute2.netlink import (  # type: ignore[import-untyped]
    NETLINK_SOCK_DIAG,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
)
from pyroute2.netlink.diag import (  # type: ignore[import-untyped]
    inet_diag_msg,
    inet_diag_req,
)
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]
from pyroute2.netlink.marshal import Marshal  # type: ignore[import-untyped]
from pyroute2.netlink.nlsocket import AsyncNetlinkSocket  # type: ignore[import-untyped]

from mptcpd.types import SockAddr

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TIMEOUT",
    "IPPROTO_MPTCP",
    "AsyncMptcpDiagSocket",
    "MarshalMptcpDiag",
    "MptcpConnection",
    "MptcpDiagUnsupported",
    "MptcpInfo",
    "build_request",
    "decode_mptcp_info",
    "dump_family",
    "info_payload",
    "list_mptcp_connections",
    "mptcp_diag_msg",
    "mptcp_diag_req",
    "parse_connection",
    "parse_datagram",
]

#: ``IPPROTO_MPTCP`` (``socket.IPPROTO_MPTCP`` exists from Python 3.10 on Linux).
IPPROTO_MPTCP = 262
#: ``SOCK_DIAG_BY_FAMILY`` (``linux/sock_diag.h``): request and reply type.
SOCK_DIAG_BY_FAMILY = 20
#: ``INET_DIAG_INFO`` (``enum`` in ``linux/inet_diag.h``), reply attribute.
INET_DIAG_INFO = 2
#: ``INET_DIAG_REQ_PROTOCOL`` (``linux/inet_diag.h``), request attribute.
INET_DIAG_REQ_PROTOCOL = 3
_NLMSG_HDRLEN = 16
_INET_DIAG_MSG_LEN = 72  #: sizeof(struct inet_diag_msg)
_NLA_TYPE_MASK = 0x3FFF  #: without NLA_F_NESTED, NLA_F_NET_BYTEORDER
#: Kernel socket states (``include/net/tcp_states.h``).
TCP_ESTABLISHED = 1
TCP_LISTEN = 10
_TCP_MAX_STATES = 14
#: Every state but ``TCP_LISTEN``.
STATES_NO_LISTEN = ((1 << _TCP_MAX_STATES) - 1) & ~(1 << TCP_LISTEN)

#: Seconds one :func:`list_mptcp_connections` call may take in all.
DEFAULT_TIMEOUT = 10.0

#: The leading fields of ``struct mptcp_info`` (kernel 5.9 on), natural
#: alignment: six u8, two pad bytes, ``mptcpi_flags`` and ``mptcpi_token``.
_MPTCP_INFO_HEAD = struct.Struct("=6B2xII")
#: ``mptcpi_flags`` bits (``linux/mptcp.h``).
MPTCP_INFO_FLAG_FALLBACK = 0x1
MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED = 0x2


# -- messages ----------------------------------------------------------------


class mptcp_diag_req(inet_diag_req):  # type: ignore[misc]
    """``struct inet_diag_req_v2`` plus request attributes.

    pyroute2's :class:`inet_diag_req` declares no attributes; the MPTCP
    protocol number needs ``INET_DIAG_REQ_PROTOCOL`` (u32).
    """

    # pyroute2 caches the compiled attribute table on the class and finds
    # the cache through inheritance: a subclass of a class already used
    # (pyroute2's own, by anyone in the process) would decode with the
    # parent's table.  Each class here starts with an empty cache.
    _nlmsg_base__compiled_nla = False
    _nlmsg_base__t_nla_map = None
    _nlmsg_base__r_nla_map = None

    nla_map = (
        ("INET_DIAG_REQ_NONE", "none"),
        ("INET_DIAG_REQ_BYTECODE", "hex"),
        ("INET_DIAG_REQ_SK_BPF_STORAGES", "hex"),
        ("INET_DIAG_REQ_PROTOCOL", "uint32"),
    )


class mptcp_diag_msg(inet_diag_msg):  # type: ignore[misc]
    """``struct inet_diag_msg`` as ``mptcp_diag`` fills it.

    The same fields as pyroute2's :class:`inet_diag_msg` (addresses decoded
    to text, ports in host order), but ``INET_DIAG_INFO`` is kept as raw
    bytes: for MPTCP sockets it is ``struct mptcp_info``, not ``tcp_info``.
    Attributes the daemon does not read stay undecoded (``hex``).
    """

    # pyroute2 caches the compiled attribute table on the class and finds
    # the cache through inheritance: a subclass of a class already used
    # (pyroute2's own, by anyone in the process) would decode with the
    # parent's table.  Each class here starts with an empty cache.
    _nlmsg_base__compiled_nla = False
    _nlmsg_base__t_nla_map = None
    _nlmsg_base__r_nla_map = None

    nla_map = (
        ("INET_DIAG_NONE", "none"),
        ("INET_DIAG_MEMINFO", "hex"),
        ("INET_DIAG_INFO", "cdata"),
        ("INET_DIAG_VEGASINFO", "hex"),
        ("INET_DIAG_CONG", "asciiz"),
        ("INET_DIAG_TOS", "uint8"),
        ("INET_DIAG_TCLASS", "uint8"),
        ("INET_DIAG_SKMEMINFO", "hex"),
        ("INET_DIAG_SHUTDOWN", "uint8"),
        ("INET_DIAG_DCTCPINFO", "hex"),
        ("INET_DIAG_PROTOCOL", "uint8"),
        ("INET_DIAG_SKV6ONLY", "uint8"),
        ("INET_DIAG_LOCALS", "hex"),
        ("INET_DIAG_PEERS", "hex"),
        ("INET_DIAG_PAD", "hex"),
        ("INET_DIAG_MARK", "uint32"),
        ("INET_DIAG_BBRINFO", "hex"),
        ("INET_DIAG_CLASS_ID", "uint32"),
        ("INET_DIAG_MD5SIG", "hex"),
        ("INET_DIAG_ULP_INFO", "hex"),
        ("INET_DIAG_SK_BPF_STORAGES", "hex"),
        ("INET_DIAG_CGROUP_ID", "uint64"),
        ("INET_DIAG_SOCKOPT", "hex"),
    )


class MarshalMptcpDiag(Marshal):  # type: ignore[misc]
    """Replies chosen by netlink message type, not by address family.

    pyroute2's ``MarshalDiag`` picks the class from the byte after the
    netlink header (the family) and so turns error parsing off, because
    ``NLMSG_ERROR`` (2) equals ``AF_INET``.  Keyed on the message type, an
    ``NLMSG_ERROR`` answer is parsed as an error again.  A dump that fails
    once started (for instance no inet_diag handler for the protocol) ends
    with an ``NLMSG_DONE`` whose payload is the negative errno; pyroute2
    would take it for a normal end, so it is turned into an error here.
    Either way pyroute2's receive loop raises
    :class:`~pyroute2.netlink.exceptions.NetlinkError`.
    """

    msg_map = {SOCK_DIAG_BY_FAMILY: mptcp_diag_msg}

    def parse_one_message(
        self, key: int, flags: int, sequence_number: int, data: bytes,
        offset: int, length: int,
    ) -> Any:
        try:
            msg = super().parse_one_message(
                key, flags, sequence_number, data, offset, length
            )
        except (struct.error, ValueError, TypeError, IndexError, KeyError) as exc:
            # pyroute2 lets these out of an attribute whose length runs
            # past the message; one bad reply must not end the dump.
            log.warning(
                "MPTCP diag: undecodable reply (type %d, %d bytes) skipped: %s",
                key, length, exc,
            )
            return None
        if (
            key == NLMSG_DONE
            and msg["header"].get("error") is None
            and length >= _NLMSG_HDRLEN + 4
            and len(data) >= offset + _NLMSG_HDRLEN + 4
        ):
            (code,) = struct.unpack_from("=i", data, offset + _NLMSG_HDRLEN)
            if code < 0:
                msg["header"]["error"] = NetlinkError(-code, os.strerror(-code))
        return msg


class AsyncMptcpDiagSocket(AsyncNetlinkSocket):  # type: ignore[misc]
    """pyroute2's asyncio netlink socket on ``NETLINK_SOCK_DIAG``.

    Keyword arguments go to :class:`AsyncNetlinkSocket` (``netns``,
    ``flags``, ``use_socket``, ...).
    """

    marshal_class = MarshalMptcpDiag

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(family=NETLINK_SOCK_DIAG, **kwargs)


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
      :func:`list_mptcp_connections`, which lists the listeners too).
    """

    token: int
    laddr: SockAddr
    raddr: SockAddr
    state: int
    established: bool
    fallback: bool = False
    server_side: bool = False


def decode_mptcp_info(data: bytes) -> MptcpInfo | None:
    """Decode the head of ``struct mptcp_info`` from ``INET_DIAG_INFO`` bytes.

    Returns None when ``data`` is shorter than the 16 bytes that end with
    the token.  Longer data (every kernel sends more: 96 bytes on 6.18) is
    fine; the rest is not read.
    """
    if len(data) < _MPTCP_INFO_HEAD.size:
        return None
    return MptcpInfo(*_MPTCP_INFO_HEAD.unpack_from(data))


def info_payload(msg: Any) -> bytes | None:
    """The payload of ``INET_DIAG_INFO`` in a decoded reply, from its bytes.

    Read from the message's own bytes rather than through ``get_attr()``:
    when pyroute2 fails to decode an attribute (its length runs past the
    message, say) it logs and returns the raw attribute *with* its 4-byte
    header, which would give a wrong token without a word.  Returns None
    when the attribute is absent; raises :class:`ValueError` when the
    attribute chain is malformed up to it.
    """
    data = msg.data
    start = int(msg.offset)
    end = min(start + int(msg["header"]["length"]), len(data))
    offset = start + _NLMSG_HDRLEN + _INET_DIAG_MSG_LEN
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4 or offset + length > end:
            raise ValueError(
                f"attribute {kind & _NLA_TYPE_MASK} of {length} bytes does not "
                f"fit the message"
            )
        if kind & _NLA_TYPE_MASK == INET_DIAG_INFO:
            return bytes(data[offset + 4:offset + length])
        offset += (length + 3) & ~3
    return None


def parse_connection(msg: Any) -> MptcpConnection | None:
    """Turn one decoded :class:`mptcp_diag_msg` into a connection.

    Returns None for a listener (silently) and, with a warning naming the
    socket, for an unknown family, a bad address or a reply without a
    usable ``INET_DIAG_INFO`` (missing, or too short for the token).
    """
    state = int(msg["idiag_state"])
    if state == TCP_LISTEN:
        return None
    family = msg["idiag_family"]
    if family not in (socket.AF_INET, socket.AF_INET6):
        log.warning("MPTCP diag: socket of unknown family %s skipped", family)
        return None
    where = (
        f"{msg['idiag_src']} port {msg['idiag_sport']} -> "
        f"{msg['idiag_dst']} port {msg['idiag_dport']}"
    )
    try:
        raw = info_payload(msg)
    except ValueError as exc:
        log.warning("MPTCP diag: malformed reply for %s (%s); skipped", where, exc)
        return None
    if raw is None:
        log.warning("MPTCP diag: no MPTCP info for %s; skipped", where)
        return None
    info = decode_mptcp_info(bytes(raw))
    if info is None:
        log.warning(
            "MPTCP diag: MPTCP info for %s is %d bytes, too short for the "
            "token; skipped", where, len(raw),
        )
        return None
    try:
        laddr = SockAddr(ipaddress.ip_address(msg["idiag_src"]), int(msg["idiag_sport"]))
        raddr = SockAddr(ipaddress.ip_address(msg["idiag_dst"]), int(msg["idiag_dport"]))
    except (TypeError, ValueError) as exc:
        log.warning("MPTCP diag: bad address in %s (%s); skipped", where, exc)
        return None
    return MptcpConnection(
        token=info.token,
        laddr=laddr,
        raddr=raddr,
        state=state,
        established=state == TCP_ESTABLISHED,
        fallback=info.fallback,
    )


def parse_datagram(data: bytes) -> list[MptcpConnection]:
    """The connections in one received sock_diag datagram (tests, debugging).

    Decodes with the same message classes as :func:`list_mptcp_connections`
    and raises :class:`OSError` for an error the datagram carries.
    """
    result = []
    for msg in MarshalMptcpDiag().parse(data):
        error = msg["header"].get("error")
        if error is not None:
            raise _os_error(error, None)
        if msg["header"]["type"] == SOCK_DIAG_BY_FAMILY:
            conn = parse_connection(msg)
            if conn is not None:
                result.append(conn)
    return result


# -- the dump ------------------------------------------------------------------


class MptcpDiagUnsupported(OSError):
    """The kernel has no MPTCP socket diagnostics (``errno.ENOENT``)."""


def build_request(family: int, protocol: int = IPPROTO_MPTCP) -> Any:
    """The dump request for ``family``: every state (listeners too), with
    ``INET_DIAG_INFO``, the protocol in ``INET_DIAG_REQ_PROTOCOL``."""
    req = mptcp_diag_req()
    req["sdiag_family"] = family
    # 0 has no inet_diag handler: a kernel that ignored the protocol
    # attribute answers ENOENT instead of dumping another protocol.
    req["sdiag_protocol"] = 0
    req["idiag_ext"] = 1 << (INET_DIAG_INFO - 1)
    req["idiag_states"] = STATES_NO_LISTEN | (1 << TCP_LISTEN)
    req["attrs"] = [("INET_DIAG_REQ_PROTOCOL", protocol)]
    return req


async def dump_family(
    sock: Any, family: int, protocol: int = IPPROTO_MPTCP,
    listeners: set[tuple[str, int]] | None = None,
) -> list[MptcpConnection]:
    """Run one dump on an open :class:`AsyncMptcpDiagSocket`.

    The listeners met on the way are added to ``listeners`` as (address,
    port).  Raises pyroute2's ``NetlinkError`` when the kernel reports an
    error.
    """
    result = []
    responses = await sock.nlm_request(
        build_request(family, protocol), SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
    )
    async for msg in responses:
        if msg["header"]["type"] != SOCK_DIAG_BY_FAMILY:
            continue
        if listeners is not None and int(msg["idiag_state"]) == TCP_LISTEN:
            listeners.add((str(msg["idiag_src"]), int(msg["idiag_sport"])))
            continue
        conn = parse_connection(msg)
        if conn is not None:
            result.append(conn)
    return result


_WILDCARDS = ("0.0.0.0", "::")


def _with_side(conn: MptcpConnection, listeners: set[tuple[str, int]]) -> MptcpConnection:
    port = conn.laddr.port
    ip = conn.laddr.unmapped().ip
    accepted = any(p == port and (a in _WILDCARDS or ipaddress.ip_address(a) in
                                  (conn.laddr.ip, ip))
                   for a, p in listeners)
    return dataclasses.replace(conn, server_side=accepted) if accepted else conn


def _where(netns: str | None) -> str:
    return f" in network namespace {netns!r}" if netns else ""


def _os_error(exc: Any, netns: str | None) -> OSError:
    code = int(getattr(exc, "code", 0) or getattr(exc, "errno", 0) or errno.EIO)
    if code == errno.ENOENT:
        return MptcpDiagUnsupported(
            code,
            "the kernel has no MPTCP socket diagnostics (sock_diag for "
            f"IPPROTO_MPTCP, CONFIG_INET_MPTCP_DIAG){_where(netns)}",
        )
    return OSError(
        code, f"MPTCP socket diagnostics dump failed{_where(netns)}: {os.strerror(code)}"
    )


async def list_mptcp_connections(
    netns: str | None = None, *, timeout: float | None = DEFAULT_TIMEOUT
) -> list[MptcpConnection]:
    """List the MPTCP connections (every socket but listeners) of a namespace.

    :param netns: the network namespace to look into, as pyroute2's
        ``netns=`` takes it (a name under ``/var/run/netns`` or a path);
        None for the caller's own.  The caller does not change namespace,
        and a missing namespace is an error (it is never created).
    :param timeout: seconds the whole listing may take (None: no limit).
    :returns: the IPv4 connections, then the IPv6 ones (IPv4 peers of
        dual-stack sockets included), each in the kernel's order.
    :raises MptcpDiagUnsupported: (an :class:`OSError`, ``errno.ENOENT``)
        the kernel has no MPTCP socket diagnostics;
    :raises OSError: the socket cannot be opened (for instance the
        namespace does not exist), the kernel refused the dump, or the
        listing took longer than ``timeout`` (``errno.ETIMEDOUT``).
    """
    sock = AsyncMptcpDiagSocket(netns=netns, flags=0)
    try:
        async with asyncio.timeout(timeout):
            try:
                await sock.setup_endpoint()
            except Exception as exc:
                code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
                raise OSError(
                    code, f"cannot open a sock_diag socket{_where(netns)}: {exc}"
                ) from exc
            connections = []
            listeners: set[tuple[str, int]] = set()
            for family in (socket.AF_INET, socket.AF_INET6):
                try:
                    connections.extend(await dump_family(sock, family,
                                                         listeners=listeners))
                except NetlinkError as exc:
                    raise _os_error(exc, netns) from exc
            return [_with_side(c, listeners) for c in connections]
    except TimeoutError as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a socket-level ETIMEDOUT, already explained
        raise OSError(
            errno.ETIMEDOUT,
            f"MPTCP socket diagnostics{_where(netns)} took longer than {timeout} s",
        ) from exc
    finally:
        sock.close()

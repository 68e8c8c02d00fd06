"""The rtnetlink side of the network monitor.

:class:`RtnlMonitor` owns plain ``NETLINK_ROUTE`` sockets (stdlib
:mod:`socket` and the loop's reader callback).  It subscribes to link and
IPv4/IPv6 address changes (and, when asked, to route changes for the
``check_route`` recheck), dumps the current links and then the addresses,
streams later changes, and looks up the default route of an interface.
Messages are decoded by the pure functions of this module (:func:`parse`,
:func:`decode_link`, :func:`decode_address`, :func:`decode_route`), which a
unit test holds to pyroute2's message classes; everything handed out is a
plain frozen record defined here (:class:`LinkMessage`,
:class:`AddressMessage`, :class:`RouteMessage`, :class:`Resync`,
:class:`RouteLookup`).

A receive-buffer overrun (``ENOBUFS``: the kernel dropped messages because
we read too slowly) is logged, the socket is reopened and resubscribed, links
and addresses are dumped again, and the stream yields one :class:`Resync`
record so that the consumer can reconcile its state with the kernel's.

Address records carry ``IFA_LOCAL`` when the kernel sends it and fall back
to ``IFA_ADDRESS`` otherwise.  On point-to-point links ``IFA_ADDRESS`` is the
*peer*'s address (mptcpd issue #231); C mptcpd reads only ``IFA_ADDRESS``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import itertools
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar, Union

from mptcpd.netlink import nla
from mptcpd.netlink.nlsock import (
    NETLINK_ADD_MEMBERSHIP,
    NETLINK_ROUTE,
    SOL_NETLINK,
    netlink_socket,
)
from mptcpd.types import IPAddress

log = logging.getLogger(__name__)

# -- netlink and rtnetlink constants (linux/netlink.h, linux/rtnetlink.h) ---
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP = 0x300
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
IFLA_IFNAME, IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_CARRIER = 3, 16, 18, 33
IFLA_INFO_KIND = 1  #: nested in ``IFLA_LINKINFO``
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
RTA_DST, RTA_OIF, RTA_TABLE = 1, 4, 15
#: ``IF_OPER_*`` names, as ``ip link`` shows them.
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING",
              "DORMANT", "UP")
#: Receive buffer for one datagram (the kernel's dump datagrams are <= 32 KiB).
RECV_SIZE = 1 << 16
#: Unread datagrams at which a :class:`NetlinkSocket` stops reading ahead.
INBOX_LIMIT = 256
#: Datagrams :meth:`NetlinkSocket.follow` hands over per wake-up at most
#: (then the loop runs its other callbacks).
READS_PER_WAKEUP = 64

# -- rtnetlink multicast groups (enum rtnetlink_groups) ---------------------
RTNLGRP_LINK = 1
RTNLGRP_IPV4_IFADDR = 5
RTNLGRP_IPV4_ROUTE = 7
RTNLGRP_IPV6_IFADDR = 9
RTNLGRP_IPV6_ROUTE = 11

# -- rtmsg flags (include/uapi/linux/rtnetlink.h) ---------------------------
RTM_F_LOOKUP_TABLE = 0x1000
RTM_F_FIB_MATCH = 0x2000

#: The destinations looked up to find an interface's default route: two
#: documentation addresses, as in mptcpd.
ROUTE_PROBE_DST: dict[int, IPAddress] = {
    socket.AF_INET: ipaddress.IPv4Address("192.0.2.1"),
    socket.AF_INET6: ipaddress.IPv6Address("2001:db8::"),
}

#: Default receive buffer of the event socket.
DEFAULT_RCVBUF = 1 << 20


class RtnlMonitorError(RuntimeError):
    """The rtnetlink socket could not be set up; the message says why."""


# -- records ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class LinkMessage:
    """An ``RTM_NEWLINK``/``RTM_DELLINK`` message (or a link dump entry)."""

    index: int
    name: str
    flags: int  #: ``IFF_*``
    type: int = 0  #: ``ARPHRD_*``
    operstate: str = ""  #: ``"UP"``, ``"DOWN"``, ``"LOWERLAYERDOWN"``, ...
    carrier: bool | None = None
    deleted: bool = False  #: ``RTM_DELLINK``
    #: ``IFLA_INFO_KIND`` (``"bridge"``, ``"veth"``, ``"tun"``, ...); empty
    #: for devices without one (physical ones, loopback).
    kind: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class AddressMessage:
    """An ``RTM_NEWADDR``/``RTM_DELADDR`` message (or an address dump entry).

    ``ip`` is ``IFA_LOCAL`` when present, else ``IFA_ADDRESS``; ``peer`` is
    ``IFA_ADDRESS`` when it differs from ``ip`` (point-to-point links).
    """

    index: int
    ip: IPAddress
    prefixlen: int = 0
    scope: int = 0  #: ``RT_SCOPE_*``: 0 universe, 253 link, 254 host
    flags: int = 0  #: ``IFA_F_*`` (``IFA_FLAGS`` when present)
    peer: IPAddress | None = None
    deleted: bool = False  #: ``RTM_DELADDR``

    @property
    def family(self) -> int:
        return socket.AF_INET if self.ip.version == 4 else socket.AF_INET6


@dataclasses.dataclass(frozen=True, slots=True)
class RouteMessage:
    """An ``RTM_NEWROUTE``/``RTM_DELROUTE`` message (route groups only)."""

    family: int
    dst: IPAddress | None = None
    dst_len: int = 0
    oif: int | None = None
    table: int = 0
    deleted: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Resync:
    """Messages were lost (``ENOBUFS``); this is the kernel state now."""

    links: tuple[LinkMessage, ...]
    addresses: tuple[AddressMessage, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class RouteLookup:
    """The answer to a default-route lookup for one interface.

    ``error`` is 0 on success, else the errno the kernel answered with (the
    other fields are then unset).  ``dst`` is the matched route's
    destination (``None`` for a default route) and ``oif`` its output
    interface.
    """

    error: int = 0
    dst: IPAddress | None = None
    dst_len: int = 0
    oif: int | None = None


RtnlEvent = Union[LinkMessage, AddressMessage, RouteMessage, Resync]


# -- decoding -----------------------------------------------------------------

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_U32 = struct.Struct("=I")
_ERRNO = struct.Struct("=i")


def attributes(data: bytes, offset: int) -> dict[int, bytes]:
    """The rtattrs of ``data`` from ``offset``, by type (the first one wins);
    a malformed one ends them."""
    out: dict[int, bytes] = {}
    try:
        for kind, start, stop in nla.walk(data, offset, len(data)):
            if kind not in out:
                out[kind] = data[start:stop]
    except nla.MalformedAttribute:
        pass
    return out


#: The largest error number the kernel sends (``MAX_ERRNO``).
MAX_ERRNO = 4095


def error_code(payload: bytes) -> int:
    """The errno (positive; 0 for an ACK) of an ``NLMSG_ERROR`` payload.

    The kernel sends ``-errno``; a payload too short for it or a number
    beyond ``MAX_ERRNO`` (``INT_MIN``...) gives ``EPROTO``.
    """
    if len(payload) < 4:
        return errno.EPROTO
    code = abs(int(_ERRNO.unpack_from(payload)[0]))
    return code if code <= MAX_ERRNO else errno.EPROTO


#: Address objects by their bytes: the same few addresses come again and
#: again (an address added, then deleted), and making one costs microseconds.
_ip_cache: dict[bytes, IPAddress] = {}
#: The cache is emptied when it holds this many.
_IP_CACHE_MAX = 1024


def _raw_ip(family: int, raw: bytes | None) -> IPAddress | None:
    if raw is None:
        return None
    size = len(raw)
    if (size == 4 and family == socket.AF_INET) or (size == 16 and family == socket.AF_INET6):
        ip = _ip_cache.get(raw)
        if ip is None:
            if len(_ip_cache) >= _IP_CACHE_MAX:
                _ip_cache.clear()
            ip = _ip_cache[raw] = ipaddress.ip_address(raw)
        return ip
    return None


def _u32(raw: bytes | None) -> int | None:
    if raw is None or len(raw) < 4:
        return None
    return int(_U32.unpack_from(raw)[0])


def decode_link(mtype: int, body: bytes) -> LinkMessage | None:
    """A link record from an ``RTM_NEWLINK``/``RTM_DELLINK`` payload (after
    the netlink header)."""
    if len(body) < _IFINFOMSG.size:
        return None
    _, ifi_type, index, flags, _ = _IFINFOMSG.unpack_from(body)
    attrs = attributes(body, _IFINFOMSG.size)
    name = attrs.get(IFLA_IFNAME)
    oper = attrs.get(IFLA_OPERSTATE)
    carrier = attrs.get(IFLA_CARRIER)
    linkinfo = attrs.get(IFLA_LINKINFO)
    kind = attributes(linkinfo, 0).get(IFLA_INFO_KIND) if linkinfo else None
    return LinkMessage(
        index=index,
        name=name.split(b"\0", 1)[0].decode("utf-8", "replace") if name else "",
        flags=flags,
        type=ifi_type,
        operstate=OPERSTATES[oper[0]] if oper and oper[0] < len(OPERSTATES) else "",
        carrier=bool(carrier[0]) if carrier else None,
        deleted=mtype == RTM_DELLINK,
        kind=kind.split(b"\0", 1)[0].decode("utf-8", "replace") if kind else "",
    )


def decode_address(mtype: int, body: bytes) -> AddressMessage | None:
    """An address record from an ``RTM_NEWADDR``/``RTM_DELADDR`` payload;
    None for a family other than ``AF_INET``/``AF_INET6``."""
    if len(body) < _IFADDRMSG.size:
        return None
    family, prefixlen, flags, scope, index = _IFADDRMSG.unpack_from(body)
    if family != socket.AF_INET and family != socket.AF_INET6:
        return None
    # The three attributes used (the first of each type), in one pass.
    raw_local = raw_address = raw_flags = None
    try:
        for kind, start, stop in nla.walk(body, _IFADDRMSG.size, len(body)):
            if kind == IFA_LOCAL:
                if raw_local is None:
                    raw_local = body[start:stop]
            elif kind == IFA_ADDRESS:
                if raw_address is None:
                    raw_address = body[start:stop]
            elif kind == IFA_FLAGS and raw_flags is None:
                raw_flags = body[start:stop]
    except nla.MalformedAttribute:
        pass
    local = _raw_ip(family, raw_local)
    address = _raw_ip(family, raw_address)
    ip = local or address
    if ip is None:
        return None
    long_flags = _u32(raw_flags)
    return AddressMessage(
        index=index,
        ip=ip,
        prefixlen=prefixlen,
        scope=scope,
        flags=flags if long_flags is None else long_flags,
        # Two valid addresses of one family are equal when their bytes are.
        peer=address if local is not None and address is not None
        and raw_address != raw_local else None,
        deleted=mtype == RTM_DELADDR,
    )


def decode_route(mtype: int, body: bytes) -> RouteMessage | None:
    """A route record from an ``RTM_NEWROUTE``/``RTM_DELROUTE`` payload."""
    if len(body) < _RTMSG.size:
        return None
    family, dst_len, _, _, table, _, _, _, _ = _RTMSG.unpack_from(body)
    attrs = attributes(body, _RTMSG.size)
    long_table = _u32(attrs.get(RTA_TABLE))
    return RouteMessage(
        family=family,
        dst=_raw_ip(family, attrs.get(RTA_DST)),
        dst_len=dst_len,
        oif=_u32(attrs.get(RTA_OIF)),
        table=table if long_table is None else long_table,
        deleted=mtype == RTM_DELROUTE,
    )


_DECODERS = {
    RTM_NEWLINK: decode_link, RTM_DELLINK: decode_link,
    RTM_NEWADDR: decode_address, RTM_DELADDR: decode_address,
    RTM_NEWROUTE: decode_route, RTM_DELROUTE: decode_route,
}


def messages(data: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """Split a datagram into ``(type, flags, seq, pid, payload)`` tuples; a
    truncated tail is dropped."""
    out = []
    offset, end = 0, len(data)
    unpack = _NLMSGHDR.unpack_from
    while offset + 16 <= end:
        length, mtype, flags, seq, pid = unpack(data, offset)
        if length < 16 or offset + length > end:
            break
        out.append((mtype, flags, seq, pid, data[offset + 16:offset + length]))
        offset += (length + 3) & ~3
    return out


def parse(data: bytes) -> list[RtnlEvent]:
    """Decode raw rtnetlink bytes (one or more messages) into records.

    Messages other than link, address and route changes are skipped.  This
    is what the stream does with each datagram; tests feed it bytes built by
    hand or captured from the kernel.
    """
    events: list[RtnlEvent] = []
    for mtype, _, _, _, body in messages(data):
        decoder = _DECODERS.get(mtype)
        if decoder is not None:
            event = decoder(mtype, body)
            if event is not None:
                events.append(event)
    return events


def _records(data: bytes) -> Iterator[RtnlEvent]:
    """The records of one datagram of the monitor's socket, in order; an
    error message the kernel sent is logged."""
    for mtype, _, _, _, body in messages(data):
        decoder = _DECODERS.get(mtype)
        if decoder is not None:
            record = decoder(mtype, body)
            if record is not None:
                yield record
        elif mtype == NLMSG_ERROR:
            code = error_code(body)
            if code:
                log.error("Network monitor: rtnetlink error: %s", os.strerror(code))


def _request(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return _NLMSGHDR.pack(16 + len(body), mtype, flags, seq, 0) + body


#: One rtattr of ``kind`` holding ``payload``, padded.
rtattr = nla.encode


# -- sockets ------------------------------------------------------------------


def open_socket(netns: str | None, rcvbuf: int,
                proto: int = NETLINK_ROUTE) -> socket.socket:
    """A bound, non-blocking netlink socket of ``proto`` in namespace
    ``netns`` (see :func:`mptcpd.netlink.nlsock.netlink_socket`) with a
    receive buffer of ``rcvbuf`` bytes."""
    sock = netlink_socket(proto, netns)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


_R = TypeVar("_R")


def _decoded(replies: list[tuple[int, bytes]], kinds: tuple[int, ...],
             decode: Callable[[int, bytes], _R | None]) -> list[_R]:
    """The dump replies of message types ``kinds`` that ``decode`` reads."""
    out = []
    for mtype, payload in replies:
        if mtype in kinds:
            record = decode(mtype, payload)
            if record is not None:
                out.append(record)
    return out


_seq = itertools.count(1)


class NetlinkSocket:
    """A netlink socket read through the loop's reader callback.

    Replies to our requests are told apart from notifications by sequence
    number and port id; notifications read while waiting for a reply are
    kept (``backlog``) for the event stream, in order.

    :meth:`recv` reads what the socket holds without yielding to the loop
    (a burst is handed out whole before anything else runs, as the daemon's
    ordering relies on); once it has had to wait, the socket stays watched:
    the reader callback reads one datagram a turn into an inbox (in order,
    a receive error kept in its place) and wakes the waiting :meth:`recv`,
    so a stream of datagrams costs no ``epoll_ctl`` each.  The watch stops
    when :data:`INBOX_LIMIT` datagrams wait unread (the kernel's receive
    buffer holds the rest) or after a receive error, and resumes with the
    next :meth:`recv` that has to wait.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.port = int(sock.getsockname()[0])
        self.backlog: deque[bytes] = deque()
        #: Read by the reader callback, not yet taken by :meth:`recv`.
        self._inbox: deque[bytes | OSError] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watching = False
        #: The consumer of :meth:`follow` (None: :meth:`recv` reads).
        self._following: Callable[[list[bytes | OSError]], object] | None = None
        self.closed = False

    async def recv(self) -> bytes:
        """The next datagram; raises the socket's error (ENOBUFS...) and
        ``OSError(EBADF)`` once closed."""
        inbox = self._inbox
        while True:
            if inbox:
                item = inbox.popleft()
                if isinstance(item, OSError):
                    raise item
                return item
            if self.closed:
                raise OSError(errno.EBADF, "the rtnetlink socket is closed")
            try:
                return self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                pass
            loop = self._loop
            if not self._watching or loop is None:
                loop = self._loop = asyncio.get_running_loop()
                loop.add_reader(self.fd, self._on_readable)
                self._watching = True
            waiter = self._waiter = loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def _on_readable(self) -> None:
        inbox = self._inbox
        try:
            inbox.append(self.sock.recv(RECV_SIZE))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            inbox.append(exc)
            self._unwatch()  # the reader decides what follows
        if len(inbox) >= INBOX_LIMIT:
            self._unwatch()
        waiter = self._waiter
        if inbox and waiter is not None and not waiter.done():
            waiter.set_result(None)

    def follow(self, on_datagrams: Callable[[list[bytes | OSError]], object]) -> None:
        """Hand the datagrams over to ``on_datagrams`` from the loop's reader
        callback, in order, as they arrive: what one wake-up finds (what the
        socket holds, up to :data:`READS_PER_WAKEUP`) in one list, which its
        consumer can treat as one batch; no task, future or extra loop turn
        between the kernel's messages and their consumer.  What
        :meth:`request` left unread (``backlog``, then the inbox) comes
        first, in one list.  A receive error ends its list and the watch;
        :meth:`recv` is not to be used any more."""
        loop = self._loop = asyncio.get_running_loop()
        self._following = on_datagrams
        waiting: list[bytes | OSError] = list(self.backlog)
        self.backlog.clear()
        inbox, failed = self._inbox, False
        while inbox and not failed:
            item = inbox.popleft()
            waiting.append(item)
            failed = isinstance(item, OSError)
        if failed:
            self._unwatch()
        if waiting:
            on_datagrams(waiting)
        if failed or self.closed or self._following is not on_datagrams:
            return
        # add_reader replaces the inbox's callback, if it was watching.
        loop.add_reader(self.fd, self._on_datagrams)
        self._watching = True

    def _on_datagrams(self) -> None:
        # What the socket holds, up to READS_PER_WAKEUP datagrams, in one
        # list: a burst costs a loop turn per READS_PER_WAKEUP datagrams.
        consumer = self._following
        if consumer is None:
            return
        recv = self.sock.recv
        batch: list[bytes | OSError] = []
        for _ in range(READS_PER_WAKEUP):
            try:
                batch.append(recv(RECV_SIZE))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._unwatch()
                batch.append(exc)
                break
        if batch:
            consumer(batch)

    def unfollow(self) -> None:
        """Stop handing datagrams to the consumer of :meth:`follow`."""
        if self._following is not None:
            self._following = None
            self._unwatch()

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.remove_reader(self.fd)

    def send(self, mtype: int, flags: int, body: bytes) -> int:
        """Send one request; its sequence number."""
        seq = next(_seq) & 0xFFFFFFFF
        self.sock.send(_request(mtype, flags, seq, body))
        return seq

    async def request(self, mtype: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request; return its reply messages ``(type, payload)``
        up to ``NLMSG_DONE`` (dumps) or the first reply (others).  An error
        reply raises ``OSError`` after the messages it follows are kept in
        ``OSError.replies``."""
        seq = self.send(mtype, flags, body)
        replies: list[tuple[int, bytes]] = []
        while True:
            data = await self.recv()
            mine = False
            for kind, mflags, mseq, pid, payload in messages(data):
                if mseq != seq or pid != self.port:
                    continue
                mine = True
                if kind == NLMSG_ERROR:
                    code = error_code(payload)
                    if code:
                        exc = OSError(code, os.strerror(code))
                        exc.replies = replies  # type: ignore[attr-defined]
                        raise exc
                    return replies
                if kind == NLMSG_DONE:
                    return replies
                if kind in (NLMSG_NOOP, NLMSG_OVERRUN):
                    continue
                replies.append((kind, payload))
                if not mflags & NLM_F_MULTI:
                    return replies
            if not mine:
                self.backlog.append(data)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._unwatch()
        self._following = None
        self._inbox.clear()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self.sock.close()


# -- the monitor ----------------------------------------------------------------


class RtnlMonitor:
    """A ``NETLINK_ROUTE`` socket watching links and addresses.

    :param netns: name of the network namespace to watch (as ``ip netns``
        knows it); ``None`` for the caller's own.  The namespace must exist:
        it is never created.
    :param routes: also subscribe to IPv4/IPv6 route changes (needed for the
        event-driven ``check_route`` recheck).
    :param rcvbuf: receive buffer size of the event socket.

    Use: ``await open()``, ``await dump_links()``, ``await
    dump_addresses()``, then ``async for event in events()`` (or
    :meth:`follow`, the daemon's: the records handed over from the loop's
    reader callback); ``close()`` at the end.  :meth:`lookup_default_route`
    may be called at any time after :meth:`open`.
    """

    def __init__(
        self, netns: str | None = None, *, routes: bool = False,
        rcvbuf: int = DEFAULT_RCVBUF,
    ) -> None:
        self.netns = netns
        self.routes = routes
        self.rcvbuf = rcvbuf
        self._sock: NetlinkSocket | None = None
        self._lookup_sock: NetlinkSocket | None = None
        self._lookup_lock: asyncio.Lock | None = None
        self._closed = False
        #: The consumers of :meth:`follow` (None: not following).
        self._on_records: Callable[[list[RtnlEvent]], object] | None = None
        self._on_end: Callable[[BaseException | None], object] | None = None
        self._resync_task: asyncio.Task[None] | None = None
        #: How many times the event socket was reopened after ENOBUFS.
        self.resyncs = 0

    # -- set-up ----------------------------------------------------------

    async def open(self) -> None:
        """Open the event socket and join the groups.

        :raises RtnlMonitorError: with mptcpd's message for the step that
            failed (``Unable to monitor network device changes.`` etc.),
            after logging it at error level.
        """
        self._closed = False
        try:
            sock = open_socket(self.netns, self.rcvbuf)
        except OSError as exc:
            message = "Unable to monitor network device changes."
            log.error(message)
            raise RtnlMonitorError(message) from exc
        groups = [
            (RTNLGRP_LINK, "Unable to monitor network device changes."),
            (RTNLGRP_IPV4_IFADDR, "Unable to monitor IPv4 address changes."),
            (RTNLGRP_IPV6_IFADDR, "Unable to monitor IPv6 address changes."),
        ]
        if self.routes:
            groups += [
                (RTNLGRP_IPV4_ROUTE, "Unable to monitor IPv4 route changes."),
                (RTNLGRP_IPV6_ROUTE, "Unable to monitor IPv6 route changes."),
            ]
        for group, message in groups:
            try:
                sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            except OSError as exc:
                log.error(message)
                sock.close()
                raise RtnlMonitorError(message) from exc
        self._sock = NetlinkSocket(sock)

    def _require(self) -> NetlinkSocket:
        if self._sock is None:
            raise RtnlMonitorError("the rtnetlink monitor is not open")
        return self._sock

    async def _dump(self, mtype: int, body: bytes, what: str,
                    handler: str) -> list[tuple[int, bytes]]:
        sock = self._require()
        try:
            return await sock.request(mtype, NLM_F_REQUEST | NLM_F_DUMP, body)
        except OSError as exc:
            replies = getattr(exc, "replies", None)
            if replies is None:
                log.error(what)
                raise RtnlMonitorError(what) from exc
            log.error("%s failed: %s", handler, os.strerror(exc.errno or 0))
            return list(replies)

    async def dump_links(self) -> list[LinkMessage]:
        """Dump every link (``RTM_GETLINK``, ``AF_UNSPEC``).

        :raises RtnlMonitorError: ``Unable to obtain network devices.`` when
            the request cannot be sent.  An error in the reply is logged
            (``get_link failed: <strerror>``) and ends the dump early.
        """
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        replies = await self._dump(RTM_GETLINK, body, "Unable to obtain network devices.",
                                   "get_link")
        return _decoded(replies, (RTM_NEWLINK, RTM_DELLINK), decode_link)

    async def dump_addresses(self) -> list[AddressMessage]:
        """Dump every IPv4/IPv6 address (``RTM_GETADDR``, ``AF_UNSPEC``).

        :raises RtnlMonitorError: ``Unable to obtain IP addresses.`` when
            the request cannot be sent (mptcpd logs it and carries on).
        """
        body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        replies = await self._dump(RTM_GETADDR, body, "Unable to obtain IP addresses.",
                                   "get_addr")
        return _decoded(replies, (RTM_NEWADDR, RTM_DELADDR), decode_address)

    # -- the stream ------------------------------------------------------

    async def events(self) -> AsyncIterator[RtnlEvent]:
        """Yield link, address (and route) changes as they arrive.

        After an ``ENOBUFS`` overrun a :class:`Resync` comes next, holding a
        fresh dump of links and addresses.  The iterator ends when the
        monitor is closed.

        :raises RtnlMonitorError: if the socket cannot be reopened after an
            overrun.
        """
        while not self._closed:
            sock = self._require()
            try:
                data = sock.backlog.popleft() if sock.backlog else await sock.recv()
            except OSError as exc:
                if self._ends(exc):
                    return
                if exc.errno != errno.ENOBUFS:
                    raise
                yield await self._resync()
                continue
            for event in _records(data):
                yield event

    def follow(self, on_records: Callable[[list[RtnlEvent]], object],
               on_end: Callable[[BaseException | None], object]) -> None:
        """The stream of :meth:`events`, without a task: the records of the
        datagrams one wake-up reads go, as one list, to ``on_records``,
        called from the loop's reader callback (an address change reaches
        the consumer in the loop turn that sees it, with no future, task
        wake-up or async generator in between; a burst is one batch).

        After an ``ENOBUFS`` overrun a task reopens the socket and takes the
        dumps; ``on_records`` then gets ``[Resync(...)]`` and the stream goes
        on from the new socket.  ``on_end`` is called once, when the stream
        stops: with None when the monitor is closed (or its socket reset),
        else with the exception (:class:`RtnlMonitorError` when the socket
        cannot be reopened after an overrun; a receive error; whatever
        decoding or ``on_records`` raised).
        """
        if self._closed:
            on_end(None)
            return
        sock = self._require()
        self._on_records, self._on_end = on_records, on_end
        sock.follow(self._on_datagrams)

    def _on_datagrams(self, items: list[bytes | OSError]) -> None:
        on_records = self._on_records
        if on_records is None:
            return
        records: list[RtnlEvent] = []
        error: OSError | None = None
        failure: Exception | None = None
        try:
            for data in items:
                if isinstance(data, OSError):
                    error = data
                    break
                records.extend(_records(data))  # kept up to a failure
        except Exception as exc:
            failure = exc  # what was decoded before it is applied first
        if records:
            try:
                on_records(records)
            except Exception as exc:
                failure = exc
        if failure is not None:
            self._end(failure)
        elif error is not None:
            if self._ends(error):
                self._end(None)
            elif error.errno == errno.ENOBUFS:
                self._resync_task = asyncio.get_running_loop().create_task(
                    self._resync_and_follow(), name="rtnetlink resync")
            else:
                self._end(error)

    def _ends(self, exc: OSError) -> bool:
        """Whether a receive error just ends the stream: the monitor was
        closed, or its socket reset (else: an overrun, or a failure)."""
        return self._closed or exc.errno in (errno.ECONNRESET, errno.EBADF)

    async def _resync_and_follow(self) -> None:
        try:
            resync = await self._resync()
            if self._closed:
                return
            on_records = self._on_records
            if on_records is not None:
                on_records([resync])
            if not self._closed and self._on_end is not None:
                self._require().follow(self._on_datagrams)
        except Exception as exc:
            self._end(exc)
        finally:
            self._resync_task = None

    def _end(self, exc: BaseException | None) -> None:
        """The stream of :meth:`follow` stops; its ``on_end`` is told once."""
        on_end, self._on_end, self._on_records = self._on_end, None, None
        if self._sock is not None:
            self._sock.unfollow()
        if on_end is not None:
            on_end(exc)

    async def _resync(self) -> Resync:
        log.warning(
            "Network monitor lost rtnetlink messages (receive buffer overrun); "
            "resynchronising with the kernel."
        )
        self.resyncs += 1
        old, self._sock = self._sock, None
        if old is not None:
            old.close()
        await self.open()
        links = await self.dump_links()
        addresses = await self.dump_addresses()
        return Resync(tuple(links), tuple(addresses))

    # -- route lookup ----------------------------------------------------

    async def lookup_default_route(self, family: int, ifindex: int) -> RouteLookup:
        """Ask which route the kernel would use towards a documentation address
        through interface ``ifindex``.

        ``RTM_GETROUTE`` with ``RTM_F_LOOKUP_TABLE|RTM_F_FIB_MATCH``,
        ``RTA_OIF`` = ``ifindex`` and ``RTA_DST`` = 192.0.2.1 or 2001:db8::.

        :returns: the matched route, or a :class:`RouteLookup` whose
            ``error`` is the kernel's errno (e.g. ``EHOSTUNREACH``).
        :raises OSError: when the request cannot be sent.
        """
        if self._closed:
            raise OSError(errno.EBADF, "the rtnetlink monitor is closed")
        dst = ROUTE_PROBE_DST[family]
        if self._lookup_lock is None:
            self._lookup_lock = asyncio.Lock()
        async with self._lookup_lock:
            if self._lookup_sock is None:
                self._lookup_sock = NetlinkSocket(open_socket(self.netns, DEFAULT_RCVBUF))
            body = _RTMSG.pack(family, dst.max_prefixlen, 0, 0, 0, 0, 0, 0,
                               RTM_F_LOOKUP_TABLE | RTM_F_FIB_MATCH)
            body += rtattr(RTA_DST, dst.packed) + rtattr(RTA_OIF, _U32.pack(ifindex))
            try:
                replies = await self._lookup_sock.request(RTM_GETROUTE, NLM_F_REQUEST, body)
            except OSError as exc:
                if getattr(exc, "replies", None) is None:
                    raise
                return RouteLookup(error=exc.errno or 0)
        result = RouteLookup(error=errno.ENODATA)
        for mtype, payload in replies:
            if mtype in (RTM_NEWROUTE, RTM_DELROUTE):
                route = decode_route(mtype, payload)
                if route is not None:
                    result = RouteLookup(
                        dst=route.dst if route.dst_len else None,
                        dst_len=route.dst_len,
                        oif=route.oif,
                    )
        return result

    # -- teardown --------------------------------------------------------

    def close(self) -> None:
        """Close the sockets; :meth:`events` ends, and so does :meth:`follow`
        (its ``on_end`` gets None)."""
        self._closed = True
        task, self._resync_task = self._resync_task, None
        if task is not None:
            task.cancel()
        for sock in (self._sock, self._lookup_sock):
            if sock is not None:
                try:
                    sock.close()
                except Exception:
                    log.debug("closing an rtnetlink socket failed", exc_info=True)
        self._sock = None
        self._lookup_sock = None
        self._end(None)

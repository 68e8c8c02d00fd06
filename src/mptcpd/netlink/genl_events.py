"""Decoding and reading of the kernel's ``mptcp_pm`` events.

Two decoders turn one generic-netlink event message into a typed event
(:mod:`mptcpd.events`), or ``None`` plus a log line when the message is not
usable; both log exactly what the C daemon logs (spec 3.2, 3.3):

* :func:`decode` takes a message parsed by pyroute2 with
  :class:`~mptcpd.netlink.event_messages.mptcp_event_msg` (the reference
  decoder);
* :func:`decode_message` / :func:`decode_datagram` read the same bytes
  directly with :mod:`struct` (the *lean* decoder, DESIGN decision 1: the
  event hot path; with pyroute2's generic attribute decoding an event
  costs about 60 µs, with this one about 5 µs, see ``bench/README.md``).

Both walk the attribute chain the way pyroute2 does (a declared length
below 4 counts as 4, one running past the message is cut at its end,
steps are 4-byte aligned), apply the same checks (a known attribute whose
length is not its size, or that runs past the message, is logged and
ignored) and build the event with the same code (:func:`build_event`), so
they agree on every message; ``tests/unit/test_events_decode.py`` and
``tests/unit/test_events_fuzz.py`` feed both the same bytes.

:class:`EventReader` is the asyncio reader: its own generic-netlink socket
(pyroute2 creates it, in ``netns`` if given, resolves the family and joins
``mptcp_pm_events`` only), a receive buffer sized for bursts, and a
receive loop that drains every datagram the socket holds on each wake-up
and decodes it with the lean decoder.  A receive overrun (``ENOBUFS``) is
logged, counted and reported through ``on_overrun``; the subscription is
kept (the kernel goes on delivering after reporting the overrun) so events
flow again at once, and the owner resynchronises its state.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Self

from pyroute2.netlink import NLMSG_ERROR  # type: ignore[import-untyped]
from pyroute2.netlink.generic import (  # type: ignore[import-untyped]
    AsyncGenericNetlinkSocket,
)

from mptcpd.events import (
    AddressAnnounced,
    AddressRemoved,
    ConnectionClosed,
    ConnectionCreated,
    ConnectionEstablished,
    Event,
    ListenerClosed,
    ListenerCreated,
    SubflowClosed,
    SubflowEstablished,
    SubflowPriority,
)
from mptcpd.netlink import constants as C
from mptcpd.netlink.event_messages import EVENT_ATTR_SIZES, mptcp_event_msg
from mptcpd.types import AddressId, SockAddr, Token

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_RCVBUF",
    "OVERRUN",
    "EventReader",
    "MptcpEventSocket",
    "build_event",
    "decode",
    "decode_datagram",
    "decode_message",
]

#: Receive buffer asked for the event socket (bytes; the kernel doubles
#: it).  A kernel event is 28-92 bytes but costs about 1 KiB of socket
#: memory (skb truesize).  bench/README.md: with 4 MiB a connection flood of
#: ~45 000 events/s on a 2-core machine still overran a few times; with
#: 16 MiB none did up to ~85 000 events/s.  Memory is only used while a
#: backlog exists.
DEFAULT_RCVBUF = 16 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

_NLMSG_HDRLEN = 16
_GENL_HDRLEN = 4
_NLA_TYPE_MASK = ~(0x8000 | 0x4000) & 0xFFFF  # drop NLA_F_NESTED, NLA_F_NET_BYTEORDER

_MISSING = {
    C.MPTCP_EVENT_CREATED: "Required MPTCP_EVENT_CREATED message attributes are missing.",
    C.MPTCP_EVENT_ESTABLISHED:
        "Required MPTCP_EVENT_ESTABLISHED message attributes are missing.",
    C.MPTCP_EVENT_CLOSED: "Required MPTCP_EVENT_CLOSED message attributes are missing.",
    C.MPTCP_EVENT_ANNOUNCED: "Required MPTCP_EVENT_ANNOUNCED message attributes are missing.",
    C.MPTCP_EVENT_REMOVED: "Required MPTCP_EVENT_REMOVED message attributes are missing.",
    C.MPTCP_EVENT_SUB_ESTABLISHED: "Required MPTCP_EVENT_SUB_* message attributes are missing.",
    C.MPTCP_EVENT_SUB_CLOSED: "Required MPTCP_EVENT_SUB_* message attributes are missing.",
    C.MPTCP_EVENT_SUB_PRIORITY: "Required MPTCP_EVENT_SUB_* message attributes are missing.",
    # "*message" without a space: the C daemon's text, kept (spec 12.1).
    C.MPTCP_EVENT_LISTENER_CREATED:
        "Required MPTCP_EVENT_LISTENER_*message attributes are missing.",
    C.MPTCP_EVENT_LISTENER_CLOSED:
        "Required MPTCP_EVENT_LISTENER_*message attributes are missing.",
}

_u16 = struct.Struct("=H").unpack_from
_u32 = struct.Struct("=I").unpack_from
_be16 = struct.Struct(">H").unpack_from
_nla_hdr = struct.Struct("=HH").unpack_from
_nlmsg_hdr = struct.Struct("=IHHII").unpack_from

# pyroute2 attribute name -> MPTCP_ATTR_* number
_ATTR_NUMBER: dict[str, int] = {
    entry[1]: entry[0] for entry in mptcp_event_msg.nla_map
}


# -- shared checks and construction ------------------------------------------


def build_event(cmd: int, attrs: dict[int, Any]) -> Event | None:
    """Build the event for ``cmd`` from checked attribute values.

    ``attrs`` maps ``MPTCP_ATTR_*`` numbers to decoded values (addresses as
    :mod:`ipaddress` objects, ports in host order).  Returns ``None`` and
    logs the spec's error when a required attribute is missing; ``cmd`` must
    be one of the ten known events.
    """
    g = attrs.get
    if cmd == C.MPTCP_EVENT_CLOSED:
        token = g(C.MPTCP_ATTR_TOKEN)
        if token is None:
            log.error(_MISSING[cmd])
            return None
        return ConnectionClosed(Token(token))

    if cmd == C.MPTCP_EVENT_REMOVED:
        token = g(C.MPTCP_ATTR_TOKEN)
        rem_id = g(C.MPTCP_ATTR_REM_ID)
        if token is None or rem_id is None:
            log.error(_MISSING[cmd])
            return None
        return AddressRemoved(Token(token), AddressId(rem_id))

    if cmd == C.MPTCP_EVENT_ANNOUNCED:
        token = g(C.MPTCP_ATTR_TOKEN)
        rem_id = g(C.MPTCP_ATTR_REM_ID)
        daddr = _pick(attrs, C.MPTCP_ATTR_DADDR4, C.MPTCP_ATTR_DADDR6)
        if token is None or rem_id is None or daddr is None:
            log.error(_MISSING[cmd])
            return None
        return AddressAnnounced(
            Token(token), AddressId(rem_id),
            _sockaddr(daddr, g(C.MPTCP_ATTR_DPORT) or 0),
            g(C.MPTCP_ATTR_FAMILY),
        )

    if cmd in (C.MPTCP_EVENT_LISTENER_CREATED, C.MPTCP_EVENT_LISTENER_CLOSED):
        saddr = _pick(attrs, C.MPTCP_ATTR_SADDR4, C.MPTCP_ATTR_SADDR6)
        sport = g(C.MPTCP_ATTR_SPORT)
        if saddr is None or sport is None:
            log.error(_MISSING[cmd])
            return None
        cls = ListenerCreated if cmd == C.MPTCP_EVENT_LISTENER_CREATED else ListenerClosed
        return cls(_sockaddr(saddr, sport), g(C.MPTCP_ATTR_FAMILY))

    # CREATED, ESTABLISHED and the three subflow events: full 4-tuple.
    token = g(C.MPTCP_ATTR_TOKEN)
    saddr = _pick(attrs, C.MPTCP_ATTR_SADDR4, C.MPTCP_ATTR_SADDR6)
    daddr = _pick(attrs, C.MPTCP_ATTR_DADDR4, C.MPTCP_ATTR_DADDR6)
    sport = g(C.MPTCP_ATTR_SPORT)
    dport = g(C.MPTCP_ATTR_DPORT)
    subflow = cmd in (
        C.MPTCP_EVENT_SUB_ESTABLISHED, C.MPTCP_EVENT_SUB_CLOSED, C.MPTCP_EVENT_SUB_PRIORITY
    )
    backup = g(C.MPTCP_ATTR_BACKUP)
    if (token is None or saddr is None or daddr is None or sport is None
            or dport is None or (subflow and backup is None)):
        log.error(_MISSING[cmd])
        return None
    flags = g(C.MPTCP_ATTR_FLAGS) or 0
    server_side = bool(flags & C.MPTCP_PM_EV_FLAG_SERVER_SIDE) or bool(
        g(C.MPTCP_ATTR_SERVER_SIDE)
    )
    deny_join_id0 = bool(flags & C.MPTCP_PM_EV_FLAG_DENY_JOIN_ID0)
    loc_id = g(C.MPTCP_ATTR_LOC_ID)
    rem_id = g(C.MPTCP_ATTR_REM_ID)
    laddr = _sockaddr(saddr, sport)
    raddr = _sockaddr(daddr, dport)
    if subflow:
        cls_sf = (
            SubflowEstablished if cmd == C.MPTCP_EVENT_SUB_ESTABLISHED
            else SubflowClosed if cmd == C.MPTCP_EVENT_SUB_CLOSED
            else SubflowPriority
        )
        return cls_sf(
            Token(token), laddr, raddr, bool(backup),
            loc_id=loc_id, rem_id=rem_id, family=g(C.MPTCP_ATTR_FAMILY),
            error=g(C.MPTCP_ATTR_ERROR), if_idx=g(C.MPTCP_ATTR_IF_IDX),
            reset_reason=g(C.MPTCP_ATTR_RESET_REASON),
            reset_flags=g(C.MPTCP_ATTR_RESET_FLAGS), flags=flags,
            server_side=server_side, deny_join_id0=deny_join_id0,
            timeout=g(C.MPTCP_ATTR_TIMEOUT),
        )
    cls_conn = ConnectionCreated if cmd == C.MPTCP_EVENT_CREATED else ConnectionEstablished
    return cls_conn(
        Token(token), laddr, raddr, server_side, deny_join_id0,
        loc_id=loc_id, rem_id=rem_id, family=g(C.MPTCP_ATTR_FAMILY),
        flags=flags, timeout=g(C.MPTCP_ATTR_TIMEOUT),
    )


def _pick(attrs: dict[int, Any], v4: int, v6: int) -> Any:
    """The IPv4 address when present (v4 wins, as in C), else the IPv6 one."""
    addr = attrs.get(v4)
    return addr if addr is not None else attrs.get(v6)


def _sockaddr(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> SockAddr:
    return SockAddr(ip, port)


def _check_length(attr_type: int, declared: int, available: int) -> bool:
    """True when a known attribute has its expected payload size; else log E.

    ``declared`` is the NLA header's length, ``available`` the length the
    walk gives it (at least 4, at most up to the message end).  An
    attribute that claims more than the message holds is malformed.
    """
    want = EVENT_ATTR_SIZES[attr_type]
    if declared != available or available - 4 != want:
        log.error("Attribute length (%d) is not the expected length (%d)",
                  max(declared, 4) - 4, want)
        return False
    return True


# -- reference decoder: pyroute2 ---------------------------------------------


def decode(msg: Any) -> Event | None:
    """Decode one event message parsed by pyroute2 (``mptcp_event_msg``).

    Pure apart from logging.  Returns ``None`` (after logging why) for an
    unknown event or when required attributes are missing; never raises
    for a malformed message.  Expects the message as pyroute2 parsed it
    (attributes not yet read), as :meth:`AsyncGenericNetlinkSocket.get`
    yields it.
    """
    try:
        cmd = msg["cmd"]
        if cmd not in _MISSING:
            log.error("Unhandled MPTCP event: %s", cmd)
            return None
        slots = msg.get("attrs") or []
        if not slots:
            log.error("Unable to initialize genl attribute")
        attrs: dict[int, Any] = {}
        for slot in slots:
            name, nla = slot.cell
            number = _ATTR_NUMBER.get(name)
            if number is None or number == C.MPTCP_ATTR_UNSPEC:
                # pyroute2 names unmapped types "UNKNOWN"; read the number.
                if not slot.try_to_decode():
                    continue
                log.info("Unknown MPTCP genl attribute: %d",
                         nla["header"]["type"] & _NLA_TYPE_MASK)
                continue
            # ``length`` is pyroute2's clipped length until the NLA is read;
            # compare it with the header's own before reading the value.
            declared = _u16(nla.data, nla.offset)[0]
            if not _check_length(number, declared, nla.length):
                continue
            value = slot.get_value()
            if number in (C.MPTCP_ATTR_SADDR4, C.MPTCP_ATTR_DADDR4):
                value = ipaddress.IPv4Address(value)
            elif number in (C.MPTCP_ATTR_SADDR6, C.MPTCP_ATTR_DADDR6):
                value = ipaddress.IPv6Address(value)
            attrs[number] = value
        return build_event(cmd, attrs)
    except Exception:  # nothing malformed may escape
        log.exception("Unable to decode MPTCP event message")
        return None


# -- lean decoder: struct ----------------------------------------------------



_be32 = struct.Struct(">I").unpack_from
_CACHE_MAX = 4096
_ip4_cache: dict[int, ipaddress.IPv4Address] = {}
_ip6_cache: dict[bytes, ipaddress.IPv6Address] = {}


def _v_ip4(buf: Any, p: int) -> ipaddress.IPv4Address:
    key = _be32(buf, p)[0]
    addr = _ip4_cache.get(key)
    if addr is None:
        if len(_ip4_cache) >= _CACHE_MAX:
            _ip4_cache.clear()
        addr = _ip4_cache[key] = ipaddress.IPv4Address(key)
    return addr


def _v_ip6(buf: Any, p: int) -> ipaddress.IPv6Address:
    key = bytes(buf[p:p + 16])
    addr = _ip6_cache.get(key)
    if addr is None:
        if len(_ip6_cache) >= _CACHE_MAX:
            _ip6_cache.clear()
        addr = _ip6_cache[key] = ipaddress.IPv6Address(key)
    return addr


def _v_u32(buf: Any, p: int) -> int:
    return _u32(buf, p)[0]  # type: ignore[no-any-return]


def _v_u16(buf: Any, p: int) -> int:
    return _u16(buf, p)[0]  # type: ignore[no-any-return]


def _v_be16(buf: Any, p: int) -> int:
    return _be16(buf, p)[0]  # type: ignore[no-any-return]


_ValueFn = Callable[[Any, int], Any]

#: MPTCP_ATTR_* -> (payload size, value reader); ``None`` reads a u8.
_LEAN: dict[int, tuple[int, _ValueFn | None]] = {}
for _t, _size in EVENT_ATTR_SIZES.items():
    if _t in (C.MPTCP_ATTR_SADDR4, C.MPTCP_ATTR_DADDR4):
        _fn: _ValueFn | None = _v_ip4
    elif _t in (C.MPTCP_ATTR_SADDR6, C.MPTCP_ATTR_DADDR6):
        _fn = _v_ip6
    elif _t in (C.MPTCP_ATTR_SPORT, C.MPTCP_ATTR_DPORT):
        _fn = _v_be16
    elif _size == 4:
        _fn = _v_u32
    elif _size == 2:
        _fn = _v_u16
    else:
        _fn = None
    _LEAN[_t] = (_size, _fn)


def decode_message(buf: Any, offset: int = 0, end: int | None = None) -> Event | None:
    """Decode one event message at ``buf[offset:]`` with :mod:`struct`.

    ``buf`` is any bytes-like object holding the netlink header, the genl
    header and the attributes; ``end`` (default: the header's length,
    bounded by the buffer) ends the message.  Same results and logs as
    :func:`decode`; never raises for malformed input.
    """
    try:
        size = len(buf)
        if end is None:
            if size - offset < _NLMSG_HDRLEN:
                log.error("Unable to decode MPTCP event message")
                return None
            end = min(offset + max(_u32(buf, offset)[0], 4), size)
        if end - offset < _NLMSG_HDRLEN + _GENL_HDRLEN:
            log.error("Unable to decode MPTCP event message")
            return None
        cmd = buf[offset + _NLMSG_HDRLEN]
        if cmd not in _MISSING:
            log.error("Unhandled MPTCP event: %s", cmd)
            return None
        p = offset + _NLMSG_HDRLEN + _GENL_HDRLEN
        if p > end - 4:
            log.error("Unable to initialize genl attribute")
        attrs: dict[int, Any] = {}
        lean = _LEAN.get
        while p <= end - 4:
            declared, nla_type = _nla_hdr(buf, p)
            nla_type &= _NLA_TYPE_MASK
            nla_len = declared
            if nla_len < 4:
                nla_len = 4
            elif nla_len > end - p:
                nla_len = end - p
            spec = lean(nla_type)
            if spec is None:
                log.info("Unknown MPTCP genl attribute: %d", nla_type)
            elif declared != nla_len or nla_len - 4 != spec[0]:
                log.error("Attribute length (%d) is not the expected length (%d)",
                          max(declared, 4) - 4, spec[0])
            else:
                fn = spec[1]
                attrs[nla_type] = buf[p + 4] if fn is None else fn(buf, p + 4)
            p += (nla_len + 3) & ~3
        return build_event(cmd, attrs)
    except Exception:  # nothing malformed may escape
        log.exception("Unable to decode MPTCP event message")
        return None


#: Sentinel yielded by :func:`decode_datagram` for a netlink error message
#: carrying ``ENOBUFS`` (a receive overrun reported in-band).
OVERRUN = object()


def decode_datagram(data: Any, length: int | None = None,
                    family_id: int | None = None) -> list[Any]:
    """Decode every netlink message of one received datagram.

    Returns the events in order (messages that give no event are left out;
    an in-band ``ENOBUFS`` error gives :data:`OVERRUN`).  Messages whose
    type is not ``family_id`` (when given) are skipped, as are netlink
    control messages.  A message whose header does not fit the datagram
    ends the walk with a log line.  Never raises.
    """
    out: list[Any] = []
    end = len(data) if length is None else min(length, len(data))
    offset = 0
    try:
        while end - offset >= _NLMSG_HDRLEN:
            msg_len, msg_type, _flags, _seq, _pid = _nlmsg_hdr(data, offset)
            if msg_len < _NLMSG_HDRLEN or msg_len > end - offset:
                log.error("Unable to decode MPTCP event message")
                break
            if msg_type == NLMSG_ERROR:
                if msg_len >= _NLMSG_HDRLEN + 4:
                    code = abs(struct.unpack_from("=i", data, offset + 16)[0])
                    if code == errno.ENOBUFS:
                        out.append(OVERRUN)
            elif msg_type >= 0x10 and (family_id is None or msg_type == family_id):
                event = decode_message(data, offset, offset + msg_len)
                if event is not None:
                    out.append(event)
            offset += (msg_len + 3) & ~3
    except Exception:  # nothing malformed may escape
        log.exception("Unable to decode MPTCP event datagram")
    return out


# -- the reader ----------------------------------------------------------------


class MptcpEventSocket(AsyncGenericNetlinkSocket):  # type: ignore[misc]
    """Generic-netlink socket for ``mptcp_pm`` events (pyroute2 machinery).

    Only ``bind()``/``add_membership()`` and, for the reference mode, the
    pyroute2 receive queue are used.
    """


class EventReader:
    """Read ``mptcp_pm`` events from the kernel, in kernel order.

    Usage::

        async with EventReader(netns="ns1", on_overrun=resync) as reader:
            async for event in reader:
                ...

    :param netns: network namespace to open the socket in (pyroute2 style:
        a name under ``/var/run/netns`` or a path); ``None`` for the
        current one.  The calling process does not change namespace.
    :param rcvbuf: receive buffer to ask for (``SO_RCVBUFFORCE`` when
        permitted, else ``SO_RCVBUF``, which the kernel caps at
        ``net.core.rmem_max``).
    :param on_overrun: called with the overrun count after a receive
        overrun (``ENOBUFS``): events were lost and the owner should
        resynchronise.  Exceptions it raises are logged.
    :param lean: ``True`` (default) drains raw datagrams and uses the lean
        decoder; ``False`` reads through pyroute2's queue and decoder
        (slower; the reference path, reopened after an overrun because
        pyroute2 marks the socket failed).
    :param max_pending: decoded events held before reading pauses; a
        consumer that stops iterating then lets the kernel buffer fill,
        which ends in a reported overrun rather than unbounded memory.
    :param on_datagram: lean mode only: called with a copy of every
        datagram received, before decoding (capture and debugging).
    """

    def __init__(
        self,
        netns: str | None = None,
        rcvbuf: int = DEFAULT_RCVBUF,
        on_overrun: Callable[[int], None] | None = None,
        lean: bool = True,
        max_pending: int = 65536,
        on_datagram: Callable[[bytes], None] | None = None,
    ) -> None:
        self.netns = netns
        self.rcvbuf = rcvbuf
        self.on_overrun = on_overrun
        self.lean = lean
        self.max_pending = max_pending
        self.on_datagram = on_datagram
        #: How many receive overruns were seen.
        self.overruns = 0
        #: Set when an overrun happened; the owner clears it after resyncing.
        self.overrun_pending = False
        self.family_id: int | None = None
        self._sock: MptcpEventSocket | None = None
        self._pending: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._raw: socket.socket | None = None
        self._fd = -1
        self._reading = False
        self._buf = bytearray(65536)
        self._closed = False

    # -- lifecycle ------------------------------------------------------

    async def open(self) -> None:
        """Create the socket, resolve ``mptcp_pm`` and join its event group."""
        self._loop = asyncio.get_running_loop()
        self._closed = False
        sock = MptcpEventSocket(netns=self.netns, rcvbuf=self.rcvbuf)
        try:
            await sock.bind(C.MPTCP_PM_NAME, mptcp_event_msg)
            self._set_rcvbuf(sock)
            sock.add_membership(C.MPTCP_PM_EV_GRP_NAME)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.family_id = sock.prid
        if self.lean:
            # Take over reception: pyroute2's datagram transport reads one
            # datagram per loop iteration and queues it; we drain them all.
            # asyncio lets one owner watch an fd, so we read through a
            # duplicate of the socket's descriptor (same kernel socket).
            try:
                sock.transport.pause_reading()
            except NotImplementedError:
                # Datagram transports got pause_reading() in a 3.11 bug-fix
                # release (Debian 12 ships 3.11.2 without it): take the fd's
                # reader away the way the transport itself would (the public
                # remove_reader() refuses an fd a transport owns); the
                # transport never reads again.
                self._loop._remove_reader(sock.fileno())  # type: ignore[attr-defined]
            raw = socket.socket(fileno=os.dup(sock.fileno()))
            raw.setblocking(False)
            self._raw = raw
            self._fd = raw.fileno()
            self._start_reading()

    def _set_rcvbuf(self, sock: MptcpEventSocket) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)

    @property
    def rcvbuf_effective(self) -> int:
        """The receive buffer the kernel granted (``SO_RCVBUF``, doubled)."""
        if self._sock is None:
            return 0
        return int(self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def close(self) -> None:
        """Stop reading and close the socket; a pending iteration ends."""
        self._closed = True
        self._stop_reading()
        if self._raw is not None:
            self._raw.close()
            self._raw = None
            self._fd = -1
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._wake()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- lean receive path ----------------------------------------------

    def _start_reading(self) -> None:
        if not self._reading and self._loop is not None and self._fd >= 0:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_readable(self) -> None:
        """Drain the socket: every queued datagram, decoded straight from the buffer."""
        raw = self._raw
        if raw is None:
            return
        buf = self._buf
        pending = self._pending
        family_id = self.family_id
        for _ in range(1024):
            try:
                n = raw.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._overrun()
                    continue
                log.error("MPTCP event socket receive failed: %s", exc)
                break
            if self.on_datagram is not None:
                try:
                    self.on_datagram(bytes(buf[:n]))
                except Exception:
                    log.exception("on_datagram callback failed")
            for item in decode_datagram(buf, n, family_id):
                if item is OVERRUN:
                    self._overrun()
                else:
                    pending.append(item)
        if len(pending) >= self.max_pending:
            self._stop_reading()
        if pending:
            self._wake()

    def _overrun(self) -> None:
        self.overruns += 1
        self.overrun_pending = True
        log.warning(
            "MPTCP event socket receive buffer overrun (ENOBUFS), events were "
            "lost; overrun #%d, resynchronising", self.overruns)
        if self.on_overrun is not None:
            try:
                self.on_overrun(self.overruns)
            except Exception:
                log.exception("on_overrun callback failed")

    async def _next_lean(self) -> Event | None:
        pending = self._pending
        while not pending:
            if self._closed:
                return None
            assert self._loop is not None
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        event = pending.popleft()
        if not self._reading and not self._closed and len(pending) < self.max_pending // 2:
            self._start_reading()
        return event

    # -- reference receive path (pyroute2 queue and decoder) --------------

    async def _iter_pyroute2(self) -> AsyncIterator[Event]:
        while not self._closed:
            sock = self._sock
            if sock is None:
                return
            try:
                # get() yields the messages of one read, then ends.
                async for msg in sock.get():
                    event = decode(msg)
                    if event is not None:
                        yield event
            except OSError as exc:
                if self._closed or exc.errno == errno.ECONNRESET:
                    return
                if exc.errno == errno.ENOBUFS:
                    # pyroute2 raises the overrun from get() and then marks
                    # the socket failed (every later use raises it again).
                    self._overrun()
                else:
                    log.error("MPTCP event socket failed: %s; reopening", exc)
                await self._reopen()
            except Exception as exc:  # noqa: BLE001 - malformed input must not escape
                # pyroute2 ends get() with the decode error of a message it
                # could not parse; the socket itself is fine.
                log.error("Unable to parse MPTCP event message: %s", exc)

    async def _reopen(self) -> None:
        """Replace a socket pyroute2 has marked failed with a new one."""
        old = self._sock
        self._sock = None
        if old is not None:
            old.close()
        await self.open()

    # -- iteration --------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Yield decoded events in kernel order until :meth:`close`."""
        if self.lean:
            while True:
                event = await self._next_lean()
                if event is None:
                    return
                yield event
        else:
            async for event in self._iter_pyroute2():
                yield event

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    def drain(self) -> list[Event]:
        """Events already received and decoded, without waiting (lean mode)."""
        out = list(self._pending)
        self._pending.clear()
        if not self._reading and not self._closed and self._sock is not None and self.lean:
            self._start_reading()
        return out


"""The ``mptcp_pm`` event decoder: datagram bytes in, typed events out.

Pure functions, no I/O: :func:`decode_datagram` walks the netlink messages
of one received datagram and :func:`decode_message` turns one message into
an event of :mod:`mptcpd.events`, or ``None`` plus the C daemon's log line
when the message is unusable.  Attribute walking follows the kernel's
rules (a declared length below 4 counts as 4, one running past the message
is cut at its end, steps are 4-byte aligned); a known attribute whose
length is not its size is logged and ignored.  Nothing malformed raises.
The walk is this module's own, not :func:`mptcpd.netlink.nla.walk`, which
stops at a malformed attribute; its layout is learnt per kind of event.

Layout, as the kernel writes it: ``nlmsghdr`` (type = family id), then
``genlmsghdr`` (cmd = ``MPTCP_EVENT_*``), then ``MPTCP_ATTR_*`` attributes;
TOKEN, TIMEOUT, IF_IDX, RESET_* and FAMILY in host order, SADDR4/DADDR4 and
SPORT/DPORT in network order.  The tests hold this decoder to pyroute2's
message classes on captured kernel datagrams and under fuzzing.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import struct
from collections.abc import Callable
from typing import Any, TypeVar

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
from mptcpd.netlink import nla
from mptcpd.types import AddressId, SockAddr, Token

log = logging.getLogger(__name__)

__all__ = [
    "EVENT_ATTR_SIZES",
    "NLMSG_ERROR",
    "OVERRUN",
    "build_event",
    "closed_tokens",
    "decode_datagram",
    "decode_message",
    "event_tokens",
]

NLMSG_ERROR = 2

_NLMSG_HDRLEN = 16
_GENL_HDRLEN = 4
_NLA_TYPE_MASK = nla.TYPE_MASK

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
    # "*message" without a space: the C daemon's text, kept.
    C.MPTCP_EVENT_LISTENER_CREATED:
        "Required MPTCP_EVENT_LISTENER_*message attributes are missing.",
    C.MPTCP_EVENT_LISTENER_CLOSED:
        "Required MPTCP_EVENT_LISTENER_*message attributes are missing.",
}

_u16 = struct.Struct("=H").unpack_from
_u32 = struct.Struct("=I").unpack_from
_be16 = struct.Struct(">H").unpack_from
_nla_hdr = nla.HEADER.unpack_from
_nlmsg_hdr = struct.Struct("=IHHII").unpack_from
_len_type = struct.Struct("=IH").unpack_from  # a netlink header's length and type


#: Attribute number → payload size in bytes, for every attribute the
#: event decoder knows; derived from the kernel's spec, used by both decoders.
EVENT_ATTR_SIZES: dict[int, int] = {
    C.MPTCP_ATTR_TOKEN: 4,
    C.MPTCP_ATTR_FAMILY: 2,
    C.MPTCP_ATTR_LOC_ID: 1,
    C.MPTCP_ATTR_REM_ID: 1,
    C.MPTCP_ATTR_SADDR4: 4,
    C.MPTCP_ATTR_SADDR6: 16,
    C.MPTCP_ATTR_DADDR4: 4,
    C.MPTCP_ATTR_DADDR6: 16,
    C.MPTCP_ATTR_SPORT: 2,
    C.MPTCP_ATTR_DPORT: 2,
    C.MPTCP_ATTR_BACKUP: 1,
    C.MPTCP_ATTR_ERROR: 1,
    C.MPTCP_ATTR_FLAGS: 2,
    C.MPTCP_ATTR_TIMEOUT: 4,
    C.MPTCP_ATTR_IF_IDX: 4,
    C.MPTCP_ATTR_RESET_REASON: 4,
    C.MPTCP_ATTR_RESET_FLAGS: 4,
    C.MPTCP_ATTR_SERVER_SIDE: 1,
}


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


_be32 = struct.Struct(">I").unpack_from
_CACHE_MAX = 4096
_ip4_cache: dict[int, ipaddress.IPv4Address] = {}
_ip6_cache: dict[bytes, ipaddress.IPv6Address] = {}


_K = TypeVar("_K")
_A = TypeVar("_A")


def _cached(cache: dict[_K, _A], key: _K, make: Callable[[_K], _A]) -> _A:
    """``make(key)``, remembered (address objects are costly to build); the
    cache is emptied when it reaches :data:`_CACHE_MAX` entries."""
    value = cache.get(key)
    if value is None:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        value = cache[key] = make(key)
    return value


def _v_ip4(buf: Any, p: int) -> ipaddress.IPv4Address:
    return _cached(_ip4_cache, _be32(buf, p)[0], ipaddress.IPv4Address)


def _v_ip6(buf: Any, p: int) -> ipaddress.IPv6Address:
    return _cached(_ip6_cache, bytes(buf[p:p + 16]), ipaddress.IPv6Address)


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


class _Template:
    """The attribute layout of a message already decoded the slow way, read
    back with two struct calls: one takes every attribute header, which
    must equal the learnt ones, the other every value.

    The kernel writes each kind of event the same way every time, so after
    the first of a kind (command and length) the walk is a comparison.
    Only layouts without unknown, malformed or repeated attributes are
    learnt, so the fast path logs nothing, as the walk would not.
    """

    __slots__ = ("headers", "expected", "values", "types", "ip4", "ip6", "be16", "build",
                 "token_at")
    headers: Callable[[Any, int], tuple[Any, ...]]
    values: Callable[[Any, int], tuple[Any, ...]]
    expected: tuple[int, ...]
    types: list[int]
    ip4: list[tuple[int, int]]
    ip6: list[tuple[int, int]]
    be16: list[tuple[int, int]]
    #: the event straight from the values, where the layout holds every
    #: required attribute (:func:`_builder`); None: through :func:`build_event`.
    build: Callable[[tuple[Any, ...]], Event] | None
    #: where the token's value is, counted from the first attribute (None:
    #: the layout has no token).
    token_at: int | None

    @classmethod
    def learn(cls, layout: list[tuple[int, int, int]], cmd: int = 0) -> _Template | None:
        types = [t for _, _, t in layout]
        if len(set(types)) != len(types):
            return None
        self = cls()
        head_fmt, value_fmt = ["="], ["="]
        head_pos = value_pos = 0
        self.ip4, self.ip6, self.be16 = [], [], []
        for index, (off, _header, attr_type) in enumerate(layout):
            size, fn = _LEAN[attr_type]
            head_fmt.append(f"{off - head_pos}xI" if off > head_pos else "I")
            head_pos = off + 4
            value_off = off + 4
            value_fmt.append(f"{value_off - value_pos}x" if value_off > value_pos else "")
            if fn is _v_ip4:
                value_fmt.append("4s")
                self.ip4.append((index, attr_type))
            elif fn is _v_ip6:
                value_fmt.append("16s")
                self.ip6.append((index, attr_type))
            elif fn is _v_be16:
                value_fmt.append("H")
                self.be16.append((index, attr_type))
            else:
                value_fmt.append({1: "B", 2: "H", 4: "I"}[size])
            value_pos = value_off + size
        self.headers = struct.Struct("".join(head_fmt)).unpack_from
        self.values = struct.Struct("".join(value_fmt)).unpack_from
        self.expected = tuple(header for _, header, _ in layout)
        self.types = types
        self.build = _builder(cmd, types)
        self.token_at = next((off + 4 for off, _header, attr_type in layout
                              if attr_type == C.MPTCP_ATTR_TOKEN), None)
        return self

    def event(self, buf: Any, p: int) -> Event | None:
        """The event of the attributes at ``buf[p:]`` built by :attr:`build`;
        None when the headers differ (or there is no builder)."""
        build = self.build
        if build is None or self.headers(buf, p) != self.expected:
            return None
        return build(self.values(buf, p))

    def read(self, buf: Any, p: int) -> dict[int, Any] | None:
        """The attributes at ``buf[p:]``, or None when the headers differ."""
        if self.headers(buf, p) != self.expected:
            return None
        values = self.values(buf, p)
        attrs = dict(zip(self.types, values))
        for index, attr_type in self.ip4:
            attrs[attr_type] = _ip4_from_bytes(values[index])
        for index, attr_type in self.ip6:
            attrs[attr_type] = _ip6_from_bytes(values[index])
        for index, attr_type in self.be16:
            value = values[index]
            attrs[attr_type] = ((value & 0xFF) << 8) | (value >> 8)
        return attrs


_new = object.__new__


def _slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Callable[[Any, Any], None], ...]:
    """The setters of the slots of ``cls``'s fields, which must be ``names``
    in this order: the frequent events and their addresses are built by
    filling every slot of a new instance, which costs half what the frozen
    dataclass's ``__init__`` does (its ``object.__setattr__`` per field)."""
    fields = tuple(field.name for field in dataclasses.fields(cls))
    if fields != names:
        raise RuntimeError(f"{cls.__name__} has fields {fields}, not {names}")
    return tuple(getattr(cls, name).__set__ for name in names)


_set_ip, _set_port = _slot_setters(SockAddr, ("ip", "port"))


def _fast_sockaddr(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> SockAddr:
    """``SockAddr(ip, port)`` for values known good (an address object, a
    16-bit port), without its checks."""
    addr: SockAddr = _new(SockAddr)
    _set_ip(addr, ip)
    _set_port(addr, port)
    return addr


_CONNECTION_FIELDS = ("token", "laddr", "raddr", "server_side", "deny_join_id0", "loc_id",
                      "rem_id", "family", "flags", "timeout")
_SUBFLOW_FIELDS = ("token", "laddr", "raddr", "backup", "loc_id", "rem_id", "family", "error",
                   "if_idx", "reset_reason", "reset_flags", "flags", "server_side",
                   "deny_join_id0", "timeout")


def _builder(cmd: int, types: list[int]) -> Callable[[tuple[Any, ...]], Event] | None:
    """A function making ``cmd``'s event from a template's values (in the
    order of ``types``) as :func:`build_event` makes it from their dict,
    without the dict: each field is read at a position fixed when the layout
    is learnt; an attribute the layout lacks reads None (the last position,
    a None appended to the values).  None when the layout lacks a required
    attribute (then :func:`build_event` logs why there is no event) or for
    the rare events, which keep the general path."""
    where = {t: i for i, t in enumerate(types)}
    absent = len(types)

    def at(*candidates: int) -> int:
        """The position of the first of ``candidates`` the layout holds."""
        return next((where[t] for t in candidates if t in where), absent)

    token = at(C.MPTCP_ATTR_TOKEN)
    if token == absent:
        return None
    if cmd == C.MPTCP_EVENT_CLOSED:
        return lambda values: ConnectionClosed(values[token])
    subflow = cmd in (C.MPTCP_EVENT_SUB_ESTABLISHED, C.MPTCP_EVENT_SUB_CLOSED,
                      C.MPTCP_EVENT_SUB_PRIORITY)
    if not subflow and cmd not in (C.MPTCP_EVENT_CREATED, C.MPTCP_EVENT_ESTABLISHED):
        return None
    saddr, daddr = at(C.MPTCP_ATTR_SADDR4, C.MPTCP_ATTR_SADDR6), at(
        C.MPTCP_ATTR_DADDR4, C.MPTCP_ATTR_DADDR6)
    sport, dport = at(C.MPTCP_ATTR_SPORT), at(C.MPTCP_ATTR_DPORT)
    backup = at(C.MPTCP_ATTR_BACKUP)
    if absent in (saddr, daddr, sport, dport) or (subflow and backup == absent):
        return None
    # The v4 attribute wins over the v6 one, as in build_event.
    sip = _ip4_from_bytes if C.MPTCP_ATTR_SADDR4 in where else _ip6_from_bytes
    dip = _ip4_from_bytes if C.MPTCP_ATTR_DADDR4 in where else _ip6_from_bytes
    flags, side = at(C.MPTCP_ATTR_FLAGS), at(C.MPTCP_ATTR_SERVER_SIDE)
    loc_id, rem_id, family = (at(C.MPTCP_ATTR_LOC_ID), at(C.MPTCP_ATTR_REM_ID),
                              at(C.MPTCP_ATTR_FAMILY))
    timeout = at(C.MPTCP_ATTR_TIMEOUT)
    server_flag, deny_flag = C.MPTCP_PM_EV_FLAG_SERVER_SIDE, C.MPTCP_PM_EV_FLAG_DENY_JOIN_ID0
    none = (None,)

    def swap(port: int) -> int:
        return ((port & 0xFF) << 8) | (port >> 8)

    if not subflow:
        conn_cls = ConnectionCreated if cmd == C.MPTCP_EVENT_CREATED else ConnectionEstablished
        (s_token, s_laddr, s_raddr, s_server, s_deny, s_loc, s_rem, s_family, s_flags,
         s_timeout) = _slot_setters(conn_cls, _CONNECTION_FIELDS)

        def build_connection(values: tuple[Any, ...]) -> Any:  # an Event
            v = values + none
            f = v[flags] or 0
            event: Any = _new(conn_cls)
            s_token(event, v[token])
            s_laddr(event, _fast_sockaddr(sip(v[saddr]), swap(v[sport])))
            s_raddr(event, _fast_sockaddr(dip(v[daddr]), swap(v[dport])))
            s_server(event, bool(f & server_flag) or bool(v[side]))
            s_deny(event, bool(f & deny_flag))
            s_loc(event, v[loc_id])
            s_rem(event, v[rem_id])
            s_family(event, v[family])
            s_flags(event, f)
            s_timeout(event, v[timeout])
            return event
        return build_connection

    sub_cls = (SubflowEstablished if cmd == C.MPTCP_EVENT_SUB_ESTABLISHED
               else SubflowClosed if cmd == C.MPTCP_EVENT_SUB_CLOSED else SubflowPriority)
    error, if_idx = at(C.MPTCP_ATTR_ERROR), at(C.MPTCP_ATTR_IF_IDX)
    reason, reset_flags = at(C.MPTCP_ATTR_RESET_REASON), at(C.MPTCP_ATTR_RESET_FLAGS)
    (t_token, t_laddr, t_raddr, t_backup, t_loc, t_rem, t_family, t_error, t_if_idx,
     t_reason, t_reset_flags, t_flags, t_server, t_deny,
     t_timeout) = _slot_setters(sub_cls, _SUBFLOW_FIELDS)

    def build_subflow(values: tuple[Any, ...]) -> Any:  # an Event
        v = values + none
        f = v[flags] or 0
        event: Any = _new(sub_cls)
        t_token(event, v[token])
        t_laddr(event, _fast_sockaddr(sip(v[saddr]), swap(v[sport])))
        t_raddr(event, _fast_sockaddr(dip(v[daddr]), swap(v[dport])))
        t_backup(event, bool(v[backup]))
        t_loc(event, v[loc_id])
        t_rem(event, v[rem_id])
        t_family(event, v[family])
        t_error(event, v[error])
        t_if_idx(event, v[if_idx])
        t_reason(event, v[reason])
        t_reset_flags(event, v[reset_flags])
        t_flags(event, f)
        t_server(event, bool(f & server_flag) or bool(v[side]))
        t_deny(event, bool(f & deny_flag))
        t_timeout(event, v[timeout])
        return event
    return build_subflow


#: (command, attribute bytes) -> learnt layout (None: not learnable).
_templates: dict[tuple[int, int], _Template | None] = {}
_TEMPLATES_MAX = 256


def _ip4_from_bytes(raw: bytes) -> ipaddress.IPv4Address:
    return _cached(_ip4b_cache, raw, ipaddress.IPv4Address)


def _ip6_from_bytes(raw: bytes) -> ipaddress.IPv6Address:
    return _cached(_ip6_cache, raw, ipaddress.IPv6Address)


_ip4b_cache: dict[bytes, ipaddress.IPv4Address] = {}


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
        key = (cmd, end - p)
        template = _templates.get(key)
        if template is not None:
            event = template.event(buf, p)
            if event is not None:
                return event
            attrs = template.read(buf, p)
            if attrs is not None:
                return build_event(cmd, attrs)
        if p > end - 4:
            log.error("Unable to initialize genl attribute")
        attrs = {}
        lean = _LEAN.get
        layout: list[tuple[int, int, int]] | None = []  # (offset, header, type)
        start = p
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
                layout = None
            elif declared != nla_len or nla_len - 4 != spec[0]:
                log.error("Attribute length (%d) is not the expected length (%d)",
                          max(declared, 4) - 4, spec[0])
                layout = None
            else:
                fn = spec[1]
                attrs[nla_type] = buf[p + 4] if fn is None else fn(buf, p + 4)
                if layout is not None:
                    layout.append((p - start, _u32(buf, p)[0], nla_type))
            p += (nla_len + 3) & ~3
        if layout and p == end and len(_templates) < _TEMPLATES_MAX:
            _templates[key] = _Template.learn(layout, cmd)
        return build_event(cmd, attrs)
    except Exception:  # nothing malformed may escape
        log.exception("Unable to decode MPTCP event message")
        return None


#: Sentinel yielded by :func:`decode_datagram` for a netlink error message
#: carrying ``ENOBUFS`` (a receive overrun reported in-band).
OVERRUN = object()


def decode_datagram(data: Any, length: int | None = None,
                    family_id: int | None = None, offset: int = 0) -> list[Any]:
    """Decode every netlink message of one received datagram, the bytes of
    ``data`` from ``offset`` to ``length`` (default: its end).

    Returns the events in order (messages that give no event are left out;
    an in-band ``ENOBUFS`` error gives :data:`OVERRUN`).  Messages whose
    type is not ``family_id`` (when given) are skipped, as are netlink
    control messages.  A message whose header does not fit the datagram
    ends the walk with a log line.  Never raises.
    """
    out: list[Any] = []
    end = len(data) if length is None else min(length, len(data))
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


def closed_tokens(data: Any, offset: int, end: int, family_id: int | None = None) -> list[int]:
    """The tokens of the ``CLOSED`` events that :func:`decode_datagram` finds
    in ``data`` from ``offset`` to ``end`` (one received datagram), without
    decoding the rest: for each ``CLOSED`` message, its last well-formed
    ``MPTCP_ATTR_TOKEN``, walked as :func:`decode_message` walks.  Silent
    and never raises (what is malformed is logged by the decoder); the
    reader uses it to know, before a datagram is decoded, which connections
    the kernel has closed."""
    return _tokens(data, offset, end, family_id, C.MPTCP_EVENT_CLOSED)


def event_tokens(data: Any, offset: int, end: int, family_id: int | None = None) -> list[int]:
    """The tokens of every event message of the datagram (``data`` from
    ``offset`` to ``end``), found as :func:`closed_tokens` finds those of
    ``CLOSED``: the connections the datagram is about.  Listener events
    carry no token and give none."""
    return _tokens(data, offset, end, family_id, None)


def _tokens(data: Any, offset: int, end: int, family_id: int | None,
            cmd: int | None) -> list[int]:
    out: list[int] = []
    try:
        while end - offset >= _NLMSG_HDRLEN:
            msg_len, msg_type = _len_type(data, offset)
            if msg_len < _NLMSG_HDRLEN or msg_len > end - offset:
                break
            if (msg_type >= 0x10 and (family_id is None or msg_type == family_id)
                    and msg_len >= _NLMSG_HDRLEN + _GENL_HDRLEN
                    and (data[offset + _NLMSG_HDRLEN] == cmd
                         or cmd is None and data[offset + _NLMSG_HDRLEN] in _MISSING)):
                token = None
                p, stop = offset + _NLMSG_HDRLEN + _GENL_HDRLEN, offset + msg_len
                template = _templates.get((data[offset + _NLMSG_HDRLEN], stop - p))
                if template is not None and template.token_at is not None \
                        and template.headers(data, p) == template.expected:
                    # A learnt layout: its one token attribute is the walk's.
                    out.append(_u32(data, p + template.token_at)[0])
                    offset += (msg_len + 3) & ~3
                    continue
                while p <= stop - 4:
                    declared, nla_type = _nla_hdr(data, p)
                    nla_len = 4 if declared < 4 else min(declared, stop - p)
                    if nla_type & _NLA_TYPE_MASK == C.MPTCP_ATTR_TOKEN and declared == 8 \
                            and nla_len == 8:
                        token = _u32(data, p + 4)[0]
                    p += (nla_len + 3) & ~3
                if token is not None:
                    out.append(token)
            offset += (msg_len + 3) & ~3
    except (struct.error, IndexError, ValueError):
        pass
    return out

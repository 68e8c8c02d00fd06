"""The oracle of the lean command codec: pyroute2 message classes.

These classes and builders were the daemon's command messages before the
lean codec (``mptcpd.netlink.pm_codec``) replaced them; the tests hold the
codec to them: same bytes for every request, same values for every reply.

Kernel layout (``include/uapi/linux/mptcp_pm.h``)::

    struct genlmsghdr { __u8 cmd; __u8 version; __u16 reserved; };

    MPTCP_PM_ATTR_ADDR           nested, NLA_F_NESTED   (local address)
    MPTCP_PM_ATTR_RCV_ADD_ADDRS  u32
    MPTCP_PM_ATTR_SUBFLOWS       u32
    MPTCP_PM_ATTR_TOKEN          u32, host byte order
    MPTCP_PM_ATTR_LOC_ID         u8
    MPTCP_PM_ATTR_ADDR_REMOTE    nested, NLA_F_NESTED   (remote address)

    nested address (MPTCP_PM_ADDR_ATTR_*):
    FAMILY u16 | ID u8 | ADDR4 4 bytes n.b.o. | ADDR6 16 bytes |
    PORT u16 **host** byte order (the kernel htons() it) | FLAGS u32 | IF_IDX s32
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from pyroute2.netlink import NLA_F_NESTED, genlmsg, nla  # type: ignore[import-untyped]

from mptcpd.netlink import constants as c
from mptcpd.netlink.pm_codec import AddrInfo, Limits
from mptcpd.types import SockAddr

log = logging.getLogger(__name__)

#: Generic netlink header version sent with every request.
REQUEST_VERSION = 0


class mptcp_pm_addr(nla):  # type: ignore[misc]
    """The nested address (``MPTCP_PM_ADDR_ATTR_*``), local or remote."""

    __slots__ = ()
    prefix = "MPTCP_PM_ADDR_ATTR_"
    nla_map = (
        ("MPTCP_PM_ADDR_ATTR_UNSPEC", "none"),
        ("MPTCP_PM_ADDR_ATTR_FAMILY", "uint16"),
        ("MPTCP_PM_ADDR_ATTR_ID", "uint8"),
        ("MPTCP_PM_ADDR_ATTR_ADDR4", "ip4addr"),  # network byte order
        ("MPTCP_PM_ADDR_ATTR_ADDR6", "ip6addr"),
        ("MPTCP_PM_ADDR_ATTR_PORT", "uint16"),  # HOST byte order
        ("MPTCP_PM_ADDR_ATTR_FLAGS", "uint32"),
        ("MPTCP_PM_ADDR_ATTR_IF_IDX", "int32"),
    )


class mptcp_pm_cmd_msg(genlmsg):  # type: ignore[misc]
    """A ``mptcp_pm`` command request or reply (``MPTCP_PM_ATTR_*``)."""

    __slots__ = ()
    prefix = "MPTCP_PM_ATTR_"
    nla_map = (
        ("MPTCP_PM_ATTR_UNSPEC", "none"),
        ("MPTCP_PM_ATTR_ADDR", "mptcp_pm_addr", NLA_F_NESTED),
        ("MPTCP_PM_ATTR_RCV_ADD_ADDRS", "uint32"),
        ("MPTCP_PM_ATTR_SUBFLOWS", "uint32"),
        ("MPTCP_PM_ATTR_TOKEN", "uint32"),
        ("MPTCP_PM_ATTR_LOC_ID", "uint8"),
        ("MPTCP_PM_ATTR_ADDR_REMOTE", "mptcp_pm_addr", NLA_F_NESTED),
    )

    mptcp_pm_addr = mptcp_pm_addr


assert c.NLA_F_NESTED == NLA_F_NESTED


# -- encoding ---------------------------------------------------------------


def addr_nest(
    addr: SockAddr | None,
    id: int = 0,
    flags: int = 0,
    ifindex: int = 0,
    with_port: bool = True,
) -> dict[str, Any]:
    """The nested-address value, in the kernel-required order.

    Order: FAMILY, ADDR4|ADDR6, PORT, ID, FLAGS, IF_IDX; PORT, ID, FLAGS and
    IF_IDX are left out when zero.  ``addr`` None gives a nest
    without family and address (the ID-only form of DEL_ADDR/GET_ADDR).
    """
    attrs: list[tuple[str, Any]] = []
    if addr is not None:
        attrs.append(("MPTCP_PM_ADDR_ATTR_FAMILY", addr.family))
        if addr.family == socket.AF_INET:
            attrs.append(("MPTCP_PM_ADDR_ATTR_ADDR4", str(addr.ip)))
        else:
            attrs.append(("MPTCP_PM_ADDR_ATTR_ADDR6", str(addr.ip)))
        if with_port and addr.port:
            attrs.append(("MPTCP_PM_ADDR_ATTR_PORT", addr.port))
    if id:
        attrs.append(("MPTCP_PM_ADDR_ATTR_ID", id))
    if flags:
        attrs.append(("MPTCP_PM_ADDR_ATTR_FLAGS", flags))
    if ifindex:
        attrs.append(("MPTCP_PM_ADDR_ATTR_IF_IDX", ifindex))
    return {"attrs": attrs}


def new_message(cmd: int, attrs: Iterable[tuple[str, Any]] = ()) -> mptcp_pm_cmd_msg:
    """A request message with ``cmd``, header version 0 and ``attrs`` in order."""
    msg = mptcp_pm_cmd_msg()
    msg["cmd"] = cmd
    msg["version"] = REQUEST_VERSION
    msg["reserved"] = 0
    msg["attrs"] = [list(a) for a in attrs]
    return msg


def _check_id(id: int) -> None:
    if not 0 <= id <= 0xFF:
        raise ValueError(f"address id out of range: {id}")


def _check_token(token: int) -> None:
    if not 0 <= token <= 0xFFFFFFFF:
        raise ValueError(f"token out of range: {token}")


def msg_add_addr(addr: SockAddr, id: int = 0, flags: int = 0,
                 ifindex: int = 0) -> mptcp_pm_cmd_msg:
    """ADD_ADDR: A(family, addr, port≠0, id, flags≠0, ifindex≠0); SIGNAL OR-ed
    into the flags when the port is not 0."""
    _check_id(id)
    if addr.port:
        flags |= c.MPTCP_PM_ADDR_FLAG_SIGNAL
    return new_message(c.MPTCP_PM_CMD_ADD_ADDR, [
        ("MPTCP_PM_ATTR_ADDR", addr_nest(addr, id, flags, ifindex)),
    ])


def msg_del_addr(id: int) -> mptcp_pm_cmd_msg:
    """DEL_ADDR: A(ID)."""
    _check_id(id)
    return new_message(c.MPTCP_PM_CMD_DEL_ADDR, [
        ("MPTCP_PM_ATTR_ADDR", addr_nest(None, id)),
    ])


def msg_get_addr(id: int, token: int | None = None) -> mptcp_pm_cmd_msg:
    """GET_ADDR (do): A(ID) [; TOKEN for the userspace PM]."""
    _check_id(id)
    attrs: list[tuple[str, Any]] = [("MPTCP_PM_ATTR_ADDR", addr_nest(None, id))]
    if token is not None:
        _check_token(token)
        attrs.append(("MPTCP_PM_ATTR_TOKEN", token))
    return new_message(c.MPTCP_PM_CMD_GET_ADDR, attrs)


def msg_dump_addrs(token: int | None = None) -> mptcp_pm_cmd_msg:
    """GET_ADDR (dump): no attributes [; TOKEN for the per-connection dump]."""
    attrs: list[tuple[str, Any]] = []
    if token is not None:
        _check_token(token)
        attrs.append(("MPTCP_PM_ATTR_TOKEN", token))
    return new_message(c.MPTCP_PM_CMD_GET_ADDR, attrs)


def msg_flush_addrs() -> mptcp_pm_cmd_msg:
    """FLUSH_ADDRS: no attributes."""
    return new_message(c.MPTCP_PM_CMD_FLUSH_ADDRS)


#: Limit names accepted by :func:`msg_set_limits`, with their attributes.
LIMIT_ATTRS = {
    "rcv_add_addrs": "MPTCP_PM_ATTR_RCV_ADD_ADDRS",
    "add_addr_accepted": "MPTCP_PM_ATTR_RCV_ADD_ADDRS",
    "subflows": "MPTCP_PM_ATTR_SUBFLOWS",
}


def msg_set_limits(limits: Sequence[tuple[str, int]]) -> mptcp_pm_cmd_msg:
    """SET_LIMITS: one u32 per given limit, in the caller's order.

    ``limits`` is a sequence of (name, value) with names from
    :data:`LIMIT_ATTRS`.
    """
    attrs = []
    for name, value in limits:
        try:
            attr = LIMIT_ATTRS[name]
        except KeyError:
            raise ValueError(f"unknown MPTCP limit: {name!r}") from None
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"limit out of range: {name}={value}")
        attrs.append((attr, value))
    return new_message(c.MPTCP_PM_CMD_SET_LIMITS, attrs)


def msg_get_limits() -> mptcp_pm_cmd_msg:
    """GET_LIMITS: no attributes."""
    return new_message(c.MPTCP_PM_CMD_GET_LIMITS)


def msg_set_flags(
    addr: SockAddr | None,
    flags: int,
    token: int | None = None,
    remote: SockAddr | None = None,
    id: int = 0,
) -> mptcp_pm_cmd_msg:
    """SET_FLAGS, in both forms.

    Without ``token`` (in-kernel PM, ``kpm_set_flags``):
    A(family, addr, port≠0, id≠0, flags≠0), SIGNAL OR-ed in when the port
    is not 0.  ``addr`` may be None to select the endpoint by ``id`` only.

    With ``token`` (userspace PM, ``pm_set_backup``):
    TOKEN ; A(family, laddr, lport≠0, flags≠0) ; R(family, raddr, rport≠0).
    """
    if token is None:
        _check_id(id)
        if addr is not None and addr.port:
            flags |= c.MPTCP_PM_ADDR_FLAG_SIGNAL
        return new_message(c.MPTCP_PM_CMD_SET_FLAGS, [
            ("MPTCP_PM_ATTR_ADDR", addr_nest(addr, id, flags)),
        ])
    _check_token(token)
    attrs: list[tuple[str, Any]] = [
        ("MPTCP_PM_ATTR_TOKEN", token),
        ("MPTCP_PM_ATTR_ADDR", addr_nest(addr, id, flags)),
    ]
    if remote is not None:
        attrs.append(("MPTCP_PM_ATTR_ADDR_REMOTE", addr_nest(remote)))
    return new_message(c.MPTCP_PM_CMD_SET_FLAGS, attrs)


def msg_announce(addr: SockAddr, id: int, token: int) -> mptcp_pm_cmd_msg:
    """ANNOUNCE: A(family, addr, port≠0, id, FLAGS=SIGNAL) ; TOKEN (left out
    when the token is 0)."""
    _check_id(id)
    _check_token(token)
    attrs: list[tuple[str, Any]] = [
        ("MPTCP_PM_ATTR_ADDR", addr_nest(addr, id, c.MPTCP_PM_ADDR_FLAG_SIGNAL)),
    ]
    if token:
        attrs.append(("MPTCP_PM_ATTR_TOKEN", token))
    return new_message(c.MPTCP_PM_CMD_ANNOUNCE, attrs)


def msg_remove(token: int, loc_id: int) -> mptcp_pm_cmd_msg:
    """REMOVE: TOKEN ; LOC_ID."""
    _check_token(token)
    _check_id(loc_id)
    return new_message(c.MPTCP_PM_CMD_REMOVE, [
        ("MPTCP_PM_ATTR_TOKEN", token),
        ("MPTCP_PM_ATTR_LOC_ID", loc_id),
    ])


def msg_subflow_create(token: int, laddr: SockAddr, local_id: int,
                       raddr: SockAddr, remote_id: int, backup: bool = False) -> mptcp_pm_cmd_msg:
    """SUBFLOW_CREATE: TOKEN ; A(family, laddr, lport≠0, local_id≠0,
    FLAGS=BACKUP if ``backup``) ; R(family, raddr, rport≠0, remote_id≠0)."""
    _check_token(token)
    _check_id(local_id)
    _check_id(remote_id)
    return new_message(c.MPTCP_PM_CMD_SUBFLOW_CREATE, [
        ("MPTCP_PM_ATTR_TOKEN", token),
        ("MPTCP_PM_ATTR_ADDR",
         addr_nest(laddr, local_id, c.MPTCP_PM_ADDR_FLAG_BACKUP if backup else 0)),
        ("MPTCP_PM_ATTR_ADDR_REMOTE", addr_nest(raddr, remote_id)),
    ])


def msg_subflow_destroy(token: int, laddr: SockAddr,
                        raddr: SockAddr) -> mptcp_pm_cmd_msg:
    """SUBFLOW_DESTROY: TOKEN ; A(family, laddr, lport≠0) ; R(family, raddr,
    rport≠0)."""
    _check_token(token)
    return new_message(c.MPTCP_PM_CMD_SUBFLOW_DESTROY, [
        ("MPTCP_PM_ATTR_TOKEN", token),
        ("MPTCP_PM_ATTR_ADDR", addr_nest(laddr)),
        ("MPTCP_PM_ATTR_ADDR_REMOTE", addr_nest(raddr)),
    ])


# -- decoding ---------------------------------------------------------------


def _nla_type(slot: Any) -> int:
    """The numeric type of an attribute pyroute2 could not name."""
    try:
        t: int = int(slot[1]["header"]["type"])
        return t & 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
    except (KeyError, TypeError, IndexError):
        return -1


def _attr_items(msg: Any) -> list[tuple[str, Any, Any]]:
    """(name, value, slot) for each attribute of a decoded message or nest."""
    items = []
    for slot in msg.get("attrs", ()) or ():
        name = slot[0]
        value = slot[1]
        if hasattr(value, "getvalue"):
            value = value.getvalue()
        items.append((name, value, slot))
    return items


def decode_addr_nest(nest: Any) -> AddrInfo:
    """Decode one nested address (``MPTCP_PM_ATTR_ADDR``) into :class:`AddrInfo`.

    Unknown nested attributes are logged at W as ``Unknown MPTCP_PM_ATTR_ADDR
    attribute: <t>`` and skipped.  PORT is host order on the wire.
    """
    ip: str | None = None
    port = id = flags = ifindex = 0
    for name, value, slot in _attr_items(nest):
        if name == "MPTCP_PM_ADDR_ATTR_FAMILY":
            continue
        if name == "MPTCP_PM_ADDR_ATTR_ID":
            id = int(value)
        elif name in ("MPTCP_PM_ADDR_ATTR_ADDR4", "MPTCP_PM_ADDR_ATTR_ADDR6"):
            ip = str(value)
        elif name == "MPTCP_PM_ADDR_ATTR_PORT":
            port = int(value)
        elif name == "MPTCP_PM_ADDR_ATTR_FLAGS":
            flags = int(value)
        elif name == "MPTCP_PM_ADDR_ATTR_IF_IDX":
            ifindex = int(value)
        else:
            log.warning("Unknown MPTCP_PM_ATTR_ADDR attribute: %d", _nla_type(slot))
    address = SockAddr(ipaddress.ip_address(ip), port) if ip is not None else None
    return AddrInfo(address, id, flags, ifindex)


def decode_addr(msg: Any, op: str = "get_addr") -> AddrInfo | None:
    """Decode one GET_ADDR reply or dump part.

    The message must carry a top-level ``MPTCP_PM_ATTR_ADDR`` nest; any other
    top-level attribute logs E ``<op>: unexpected attribute of type <t>``.
    A TOKEN echoed by newer kernels in per-connection dumps is
    accepted silently.  Returns None when the message has no address nest.
    """
    info = None
    for name, _value, slot in _attr_items(msg):
        if name == "MPTCP_PM_ATTR_ADDR":
            info = decode_addr_nest(slot[1])
        elif name == "MPTCP_PM_ATTR_TOKEN":
            continue
        else:
            t = _nla_type(slot)
            if name != "UNKNOWN":
                t = _attr_number(name)
            log.error("%s: unexpected attribute of type %d", op, t)
    return info


def _attr_number(name: str) -> int:
    return int(getattr(c, name, -1))


def decode_limits(msg: Any) -> Limits:
    """Decode a GET_LIMITS reply; unknown attributes are logged at W."""
    rcv = sub = None
    for name, value, slot in _attr_items(msg):
        if name == "MPTCP_PM_ATTR_RCV_ADD_ADDRS":
            rcv = int(value)
        elif name == "MPTCP_PM_ATTR_SUBFLOWS":
            sub = int(value)
        else:
            t = _nla_type(slot) if name == "UNKNOWN" else _attr_number(name)
            log.warning("Unrecognized MPTCP resource limit type: %d.", t)
    return Limits(rcv, sub)


def wire(msg: Any, family: int, seq: int, flags: int) -> bytes:
    """pyroute2's encoding of ``msg`` with the given header (pid 0)."""
    msg["header"]["type"] = family
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = 0
    msg.encode()
    return bytes(msg.data)


def _limit_items(limits: Limits) -> list[tuple[str, int]]:
    items = []
    if limits.rcv_add_addrs is not None:
        items.append(("rcv_add_addrs", limits.rcv_add_addrs))
    if limits.subflows is not None:
        items.append(("subflows", limits.subflows))
    return items


#: The oracle message of each path-manager call, from that call's arguments.
BUILDERS: dict[str, Any] = {
    "add_addr": lambda addr, id, token: msg_announce(addr, id, token),
    "add_addr_no_listener": lambda addr, id, token: msg_announce(addr, id, token),
    "remove_addr": lambda addr, id, token: msg_remove(token, id),
    "add_subflow": lambda token, lid, rid, laddr, raddr, backup=False:
        msg_subflow_create(token, laddr, lid, raddr, rid, backup),
    "set_backup": lambda token, laddr, raddr, backup:
        msg_set_flags(laddr, c.MPTCP_PM_ADDR_FLAG_BACKUP if backup else 0, token, raddr),
    "remove_subflow": lambda token, laddr, raddr: msg_subflow_destroy(token, laddr, raddr),
    "kpm_add_addr": lambda addr, id, flags=0, ifindex=0: msg_add_addr(addr, id, flags, ifindex),
    "kpm_remove_addr": lambda id: msg_del_addr(id),
    "kpm_get_addr": lambda id, token=None: msg_get_addr(id, token),
    "kpm_dump_addrs": lambda token=None: msg_dump_addrs(token),
    "kpm_flush_addrs": lambda: msg_flush_addrs(),
    "kpm_set_limits": lambda limits: msg_set_limits(_limit_items(limits)),
    "kpm_get_limits": lambda: msg_get_limits(),
    "kpm_set_flags": lambda addr, flags, id=0: msg_set_flags(addr, flags, None, None, id),
}


def encode(name: str, family: int, seq: int, flags: int, *args: Any) -> bytes:
    """The oracle's bytes for the path-manager call ``name`` with ``args``."""
    return wire(BUILDERS[name](*args), family, seq, flags)


def parse(data: bytes) -> list[mptcp_pm_cmd_msg]:
    """Decode raw netlink bytes (one or more messages) with the command class.

    Used by tests and tools on captured replies; the channel itself gets
    decoded messages from pyroute2's marshal.
    """
    out = []
    offset = 0
    while offset + 16 <= len(data):
        (length,) = struct.unpack_from("I", data, offset)
        if length < 16:
            break
        msg = mptcp_pm_cmd_msg(data[offset:offset + length])
        msg.decode()
        out.append(msg)
        offset += (length + 3) & ~3
    return out

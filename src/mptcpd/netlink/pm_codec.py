"""Lean encoder and decoder of the ``mptcp_pm`` command messages.

Pure functions over bytes, no I/O and no pyroute2: the command channel calls
them for every request and reply, so they are written for speed (prebuilt
:class:`struct.Struct` objects, no intermediate message objects).  The tests
hold them to pyroute2's message classes, byte for byte and value for value.

Encoders are named after the path-manager API call that sends the message
(one name per command from the plugin API down to the wire) and take the
netlink family id, sequence number and header flags, then that call's
arguments.  :data:`COMMANDS` lists them with the operation name the C
daemon prints in its error logs and the kind of answer expected.

Kernel layout (``include/uapi/linux/mptcp_pm.h``)::

    nlmsghdr (16) | genlmsghdr: cmd u8, version u8 (0), reserved u16 | attributes

    MPTCP_PM_ATTR_ADDR / _ADDR_REMOTE  nested (NLA_F_NESTED), in this order:
        FAMILY u16 | ADDR4 (4, network order) or ADDR6 (16) | PORT u16 HOST order
        | ID u8 | FLAGS u32 | IF_IDX s32; PORT, ID, FLAGS, IF_IDX left out when 0
    MPTCP_PM_ATTR_RCV_ADD_ADDRS u32, _SUBFLOWS u32, _TOKEN u32, _LOC_ID u8

Decoders never raise: a malformed message (a length that does not fit, a
value too short for its type) is logged at WARNING and ignored.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from mptcpd.netlink import constants as c
from mptcpd.netlink import nla
from mptcpd.types import SockAddr

log = logging.getLogger(__name__)

# -- netlink framing (linux/netlink.h, linux/genetlink.h) ----------------------

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP = 0x300  #: NLM_F_ROOT | NLM_F_MATCH
NLM_F_CAPPED = 0x100  #: in an NLMSG_ERROR: the request's payload was left out
NLM_F_ACK_TLVS = 0x200  #: in an NLMSG_ERROR/DONE: extended-ACK attributes follow

NLMSGERR_ATTR_MSG = 1

#: The largest error number the kernel sends (``MAX_ERRNO``).
MAX_ERRNO = 4095


from mptcpd.netlink.constants import (  # noqa: E402
    CTRL_ATTR_FAMILY_ID,
    CTRL_ATTR_FAMILY_NAME,
    CTRL_ATTR_MCAST_GRP_ID,
    CTRL_ATTR_MCAST_GRP_NAME,
    CTRL_ATTR_MCAST_GROUPS,
    CTRL_CMD_GETFAMILY,
    GENL_ID_CTRL,
)

#: Header flags of a request: every one asks for an ACK, as mptcpd's do.
REQUEST = NLM_F_REQUEST | NLM_F_ACK
#: Header flags of the GET_ADDR dump.
DUMP_REQUEST = REQUEST | NLM_F_DUMP

#: Generic netlink header version sent with every request.
REQUEST_VERSION = 0


# -- value objects ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class AddrInfo:
    """One endpoint as a GET_ADDR reply or dump describes it.

    Missing fields are 0.  ``address`` is None only when the kernel sent
    neither ADDR4 nor ADDR6.
    """

    address: SockAddr | None
    id: int = 0
    flags: int = 0
    ifindex: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """The in-kernel PM limits, set with ``kpm_set_limits`` and read with
    ``kpm_get_limits``; None means "not set" or "not reported".

    ``rcv_add_addrs`` is iproute2's ``add_addr_accepted``.
    """

    rcv_add_addrs: int | None = None
    subflows: int | None = None

    @property
    def add_addr_accepted(self) -> int | None:
        """The iproute2 name of :attr:`rcv_add_addrs`."""
        return self.rcv_add_addrs


# -- encoding --------------------------------------------------------------------

_HDR = struct.Struct("=IHHIIBBH")  # nlmsghdr + genlmsghdr
_NLA = nla.HEADER
_U8 = struct.Struct("=HHBxxx")
_U16 = struct.Struct("=HHHxx")
_U32 = struct.Struct("=HHI")
_S32 = struct.Struct("=HHi")

_A = c.MPTCP_PM_ATTR_ADDR | c.NLA_F_NESTED
_R = c.MPTCP_PM_ATTR_ADDR_REMOTE | c.NLA_F_NESTED
_FAMILY_ADDR4 = (_U16.pack(6, c.MPTCP_PM_ADDR_ATTR_FAMILY, socket.AF_INET)
                 + _NLA.pack(8, c.MPTCP_PM_ADDR_ATTR_ADDR4))
_FAMILY_ADDR6 = (_U16.pack(6, c.MPTCP_PM_ADDR_ATTR_FAMILY, socket.AF_INET6)
                 + _NLA.pack(20, c.MPTCP_PM_ADDR_ATTR_ADDR6))
_SIGNAL = c.MPTCP_PM_ADDR_FLAG_SIGNAL
_BACKUP = c.MPTCP_PM_ADDR_FLAG_BACKUP


def _message(family: int, seq: int, flags: int, cmd: int, body: bytes = b"") -> bytes:
    return _HDR.pack(20 + len(body), family, flags, seq, 0, cmd, REQUEST_VERSION, 0) + body


def _nest(kind: int, addr: SockAddr | None, port: int = 0, id: int = 0,
          flags: int = 0, ifindex: int = 0) -> bytes:
    """A nested address in the kernel's order, zero fields left out."""
    if addr is None:
        body = b""
    elif addr.ip.version == 4:
        body = _FAMILY_ADDR4 + addr.ip.packed
    else:
        body = _FAMILY_ADDR6 + addr.ip.packed
    if port:
        body += _U16.pack(6, c.MPTCP_PM_ADDR_ATTR_PORT, port)
    if id:
        body += _U8.pack(5, c.MPTCP_PM_ADDR_ATTR_ID, id)
    if flags:
        body += _U32.pack(8, c.MPTCP_PM_ADDR_ATTR_FLAGS, flags)
    if ifindex:
        body += _S32.pack(8, c.MPTCP_PM_ADDR_ATTR_IF_IDX, ifindex)
    return _NLA.pack(4 + len(body), kind) + body


def _token(token: int) -> bytes:
    return _U32.pack(8, c.MPTCP_PM_ATTR_TOKEN, token)


# Userspace path manager (per connection) ------------------------------------


def add_addr(family: int, seq: int, flags: int, addr: SockAddr, id: int,
             token: int) -> bytes:
    """ANNOUNCE: A(family, addr, port≠0, id, FLAGS=SIGNAL) ; TOKEN (left out
    when 0).  Also what ``add_addr_no_listener`` sends."""
    body = _nest(_A, addr, addr.port, id, _SIGNAL)
    if token:
        body += _token(token)
    return _message(family, seq, flags, c.MPTCP_PM_CMD_ANNOUNCE, body)


def remove_addr(family: int, seq: int, flags: int, addr: SockAddr | None, id: int,
                token: int) -> bytes:
    """REMOVE: TOKEN ; LOC_ID.  ``addr`` is not sent."""
    body = _token(token) + _U8.pack(5, c.MPTCP_PM_ATTR_LOC_ID, id)
    return _message(family, seq, flags, c.MPTCP_PM_CMD_REMOVE, body)


def add_subflow(family: int, seq: int, flags: int, token: int, local_id: int,
                remote_id: int, laddr: SockAddr, raddr: SockAddr,
                backup: bool = False) -> bytes:
    """SUBFLOW_CREATE: TOKEN ; A(laddr, lport≠0, local_id≠0, FLAGS=BACKUP if
    ``backup``) ; R(raddr, rport≠0, remote_id≠0).  The C mptcpd leaves
    ``backup`` out; the kernel (6.18 does) makes the join ask for backup
    priority from its SYN (MP_JOIN's B bit) when it is there."""
    body = (_token(token) + _nest(_A, laddr, laddr.port, local_id, _BACKUP if backup else 0)
            + _nest(_R, raddr, raddr.port, remote_id))
    return _message(family, seq, flags, c.MPTCP_PM_CMD_SUBFLOW_CREATE, body)


def set_backup(family: int, seq: int, flags: int, token: int, laddr: SockAddr,
               raddr: SockAddr, backup: bool) -> bytes:
    """SET_FLAGS: TOKEN ; A(laddr, lport≠0, FLAGS=BACKUP or none) ; R(raddr, rport≠0)."""
    body = (_token(token) + _nest(_A, laddr, laddr.port, 0, _BACKUP if backup else 0)
            + _nest(_R, raddr, raddr.port))
    return _message(family, seq, flags, c.MPTCP_PM_CMD_SET_FLAGS, body)


def remove_subflow(family: int, seq: int, flags: int, token: int, laddr: SockAddr,
                   raddr: SockAddr) -> bytes:
    """SUBFLOW_DESTROY: TOKEN ; A(laddr, lport≠0) ; R(raddr, rport≠0)."""
    body = _token(token) + _nest(_A, laddr, laddr.port) + _nest(_R, raddr, raddr.port)
    return _message(family, seq, flags, c.MPTCP_PM_CMD_SUBFLOW_DESTROY, body)


# In-kernel path manager (endpoints) -------------------------------------------


def kpm_add_addr(family: int, seq: int, flags: int, addr: SockAddr, id: int,
                 addr_flags: int = 0, ifindex: int = 0) -> bytes:
    """ADD_ADDR: A(family, addr, port≠0, id≠0, flags≠0, ifindex≠0); SIGNAL is
    OR-ed into the flags when the port is not 0."""
    if addr.port:
        addr_flags |= _SIGNAL
    body = _nest(_A, addr, addr.port, id, addr_flags, ifindex)
    return _message(family, seq, flags, c.MPTCP_PM_CMD_ADD_ADDR, body)


def kpm_remove_addr(family: int, seq: int, flags: int, id: int) -> bytes:
    """DEL_ADDR: A(ID)."""
    return _message(family, seq, flags, c.MPTCP_PM_CMD_DEL_ADDR, _nest(_A, None, 0, id))


def kpm_get_addr(family: int, seq: int, flags: int, id: int,
                 token: int | None = None) -> bytes:
    """GET_ADDR: A(ID) [; TOKEN: a connection's address, userspace PM]."""
    body = _nest(_A, None, 0, id)
    if token is not None:
        body += _token(token)
    return _message(family, seq, flags, c.MPTCP_PM_CMD_GET_ADDR, body)


def kpm_dump_addrs(family: int, seq: int, flags: int, token: int | None = None) -> bytes:
    """GET_ADDR dump (``flags`` carry NLM_F_DUMP): no attribute [; TOKEN: a
    connection's addresses, userspace PM]."""
    body = _token(token) if token is not None else b""
    return _message(family, seq, flags, c.MPTCP_PM_CMD_GET_ADDR, body)


def kpm_flush_addrs(family: int, seq: int, flags: int) -> bytes:
    """FLUSH_ADDRS: no attribute."""
    return _message(family, seq, flags, c.MPTCP_PM_CMD_FLUSH_ADDRS)


def kpm_set_limits(family: int, seq: int, flags: int, limits: Limits) -> bytes:
    """SET_LIMITS: RCV_ADD_ADDRS u32, SUBFLOWS u32, each only when set."""
    body = b""
    if limits.rcv_add_addrs is not None:
        body += _U32.pack(8, c.MPTCP_PM_ATTR_RCV_ADD_ADDRS, limits.rcv_add_addrs)
    if limits.subflows is not None:
        body += _U32.pack(8, c.MPTCP_PM_ATTR_SUBFLOWS, limits.subflows)
    return _message(family, seq, flags, c.MPTCP_PM_CMD_SET_LIMITS, body)


def kpm_get_limits(family: int, seq: int, flags: int) -> bytes:
    """GET_LIMITS: no attribute."""
    return _message(family, seq, flags, c.MPTCP_PM_CMD_GET_LIMITS)


def kpm_set_flags(family: int, seq: int, flags: int, addr: SockAddr | None,
                  addr_flags: int, id: int = 0) -> bytes:
    """SET_FLAGS on an endpoint: A(family, addr, port≠0, id≠0, flags≠0); SIGNAL
    OR-ed in when the port is not 0.  ``addr`` None selects by ``id`` only."""
    port = addr.port if addr is not None else 0
    if port:
        addr_flags |= _SIGNAL
    body = _nest(_A, addr, port, id, addr_flags)
    return _message(family, seq, flags, c.MPTCP_PM_CMD_SET_FLAGS, body)


Kind = Literal["ack", "addr", "dump", "limits"]


class Command(NamedTuple):
    """How one path-manager call travels: its encoder, the operation name of
    its log lines, what its answer is, and its header flags."""

    encode: Callable[..., bytes]
    op: str
    kind: Kind
    flags: int


#: Every command, by the name of the path-manager call that sends it.
COMMANDS: dict[str, Command] = {
    "add_addr": Command(add_addr, "announce", "ack", REQUEST),
    "add_addr_no_listener": Command(add_addr, "announce", "ack", REQUEST),
    "remove_addr": Command(remove_addr, "remove_addr", "ack", REQUEST),
    "add_subflow": Command(add_subflow, "add_subflow", "ack", REQUEST),
    "set_backup": Command(set_backup, "set_backup", "ack", REQUEST),
    "remove_subflow": Command(remove_subflow, "remove_subflow", "ack", REQUEST),
    "kpm_add_addr": Command(kpm_add_addr, "add_addr", "ack", REQUEST),
    "kpm_remove_addr": Command(kpm_remove_addr, "remove_addr", "ack", REQUEST),
    "kpm_get_addr": Command(kpm_get_addr, "get_addr", "addr", REQUEST),
    "kpm_dump_addrs": Command(kpm_dump_addrs, "dump_addrs", "dump", DUMP_REQUEST),
    "kpm_flush_addrs": Command(kpm_flush_addrs, "flush_addrs", "ack", REQUEST),
    "kpm_set_limits": Command(kpm_set_limits, "set_limits", "ack", REQUEST),
    "kpm_get_limits": Command(kpm_get_limits, "get_limits", "limits", REQUEST),
    "kpm_set_flags": Command(kpm_set_flags, "set_flags", "ack", REQUEST),
}


# -- decoding --------------------------------------------------------------------

_NLMSGHDR = struct.Struct("=IHHII")
_I32 = struct.Struct("=i")
_U16_AT = struct.Struct("=H")
_U32_AT = struct.Struct("=I")


class Message(NamedTuple):
    """One netlink message of a datagram: header fields and payload bounds."""

    type: int
    flags: int
    seq: int
    start: int  #: first payload byte (after the 16-byte header)
    end: int  #: one past the last byte of the message


def messages(data: bytes) -> list[Message]:
    """Split a received datagram into its netlink messages.

    A length that does not fit ends the walk (logged at WARNING): the rest
    of the datagram cannot be framed.
    """
    out: list[Message] = []
    off = 0
    size = len(data)
    while off + 16 <= size:
        length, type, flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < 16 or off + length > size:
            log.warning("mptcp_pm reply: malformed netlink message (length %d at "
                        "offset %d of a %d-byte datagram); the rest is ignored",
                        length, off, size)
            return out
        out.append(Message(type, flags, seq, off + 16, off + length))
        off += (length + 3) & ~3
    if off < size:
        log.warning("mptcp_pm reply: %d trailing bytes ignored", size - off)
    return out


class _Malformed(Exception):
    pass


def _attrs(data: bytes, off: int, end: int) -> list[tuple[int, int, int]]:
    """(type without flags, value start, value end) of each attribute, all
    or none: :class:`_Malformed` when one is malformed or bytes stray after
    the last."""
    try:
        return list(nla.walk(data, off, end, exact=True))
    except nla.MalformedAttribute as exc:
        raise _Malformed(str(exc)) from None


def _need(start: int, end: int, size: int, what: str) -> None:
    if end - start < size:
        raise _Malformed(f"{what} needs {size} bytes, has {end - start}")


def _extack(data: bytes, off: int, end: int) -> str | None:
    """The NLMSGERR_ATTR_MSG text among extended-ACK attributes, if any."""
    try:
        for type, start, stop in _attrs(data, off, end):
            if type == NLMSGERR_ATTR_MSG:
                raw = bytes(data[start:stop]).split(b"\0", 1)[0]
                return raw.decode("utf-8", "replace") or None
    except _Malformed as exc:
        log.warning("mptcp_pm reply: malformed extended ACK (%s)", exc)
    return None


def error_number(error: int, what: str = "NLMSG_ERROR") -> int:
    """The errno (positive) of the error field of an NLMSG_ERROR/DONE (the
    kernel sends ``-errno``); a value beyond ``MAX_ERRNO`` (``INT_MIN``...)
    gives ``EPROTO``, with a warning."""
    code = -error if error < 0 else error
    if code > MAX_ERRNO:
        log.warning("mptcp_pm reply: %s with error number %d, out of range", what, error)
        return errno.EPROTO
    return code


def decode_error(data: bytes, msg: Message) -> tuple[int, str | None]:
    """(errno, extack message) of an NLMSG_ERROR; errno 0 is an ACK.

    A payload too short for its error number, or an error number out of
    range, gives ``EPROTO``.
    """
    start, end = msg.start, msg.end
    if end - start < 4:
        log.warning("mptcp_pm reply: NLMSG_ERROR of %d bytes", end - start)
        return errno.EPROTO, None
    (error,) = _I32.unpack_from(data, start)
    code = error_number(error)
    if not msg.flags & NLM_F_ACK_TLVS:
        return code, None
    off = start + 4
    if msg.flags & NLM_F_CAPPED:
        off += 16  # only the request's header was echoed
    elif off + 4 <= end:
        (echoed,) = _U32_AT.unpack_from(data, off)
        off += max(16, (echoed + 3) & ~3)  # the whole request was echoed
    return code, (_extack(data, off, end) if off < end else None)


def decode_done(data: bytes, msg: Message) -> tuple[int, str | None]:
    """(errno, extack message) of an NLMSG_DONE ending a dump; 0 on success
    (``EPROTO`` for an error number out of range)."""
    if msg.end - msg.start < 4:
        return 0, None  # old kernels: no error number
    (error,) = _I32.unpack_from(data, msg.start)
    code = error_number(error, "NLMSG_DONE")
    if msg.flags & NLM_F_ACK_TLVS:
        return code, _extack(data, msg.start + 4, msg.end)
    return code, None


def _addr_nest(data: bytes, off: int, end: int) -> AddrInfo:
    ip: Any = None
    port = id = flags = ifindex = 0
    for type, start, stop in _attrs(data, off, end):
        if type == c.MPTCP_PM_ADDR_ATTR_FAMILY:
            continue
        if type == c.MPTCP_PM_ADDR_ATTR_ID:
            _need(start, stop, 1, "ID")
            id = data[start]
        elif type == c.MPTCP_PM_ADDR_ATTR_ADDR4:
            _need(start, stop, 4, "ADDR4")
            ip = ipaddress.IPv4Address(bytes(data[start:start + 4]))
        elif type == c.MPTCP_PM_ADDR_ATTR_ADDR6:
            _need(start, stop, 16, "ADDR6")
            ip = ipaddress.IPv6Address(bytes(data[start:start + 16]))
        elif type == c.MPTCP_PM_ADDR_ATTR_PORT:
            _need(start, stop, 2, "PORT")
            (port,) = _U16_AT.unpack_from(data, start)
        elif type == c.MPTCP_PM_ADDR_ATTR_FLAGS:
            _need(start, stop, 4, "FLAGS")
            (flags,) = _U32_AT.unpack_from(data, start)
        elif type == c.MPTCP_PM_ADDR_ATTR_IF_IDX:
            _need(start, stop, 4, "IF_IDX")
            (ifindex,) = _I32.unpack_from(data, start)
        else:
            log.warning("Unknown MPTCP_PM_ATTR_ADDR attribute: %d", type)
    return AddrInfo(SockAddr(ip, port) if ip is not None else None, id, flags, ifindex)


def decode_addr(data: bytes, msg: Message, op: str = "get_addr") -> AddrInfo | None:
    """One GET_ADDR reply or dump part as :class:`AddrInfo`.

    The address is the top-level ``MPTCP_PM_ATTR_ADDR`` nest; any other
    top-level attribute but TOKEN logs E ``<op>: unexpected attribute of
    type <t>``.  None when there is no nest or the message is malformed.
    """
    info = None
    try:
        _need(msg.start, msg.end, 4, "the generic netlink header")
        for type, start, stop in _attrs(data, msg.start + 4, msg.end):
            if type == c.MPTCP_PM_ATTR_ADDR:
                info = _addr_nest(data, start, stop)
            elif type != c.MPTCP_PM_ATTR_TOKEN:
                log.error("%s: unexpected attribute of type %d", op, type)
    except _Malformed as exc:
        log.warning("%s: malformed reply ignored (%s)", op, exc)
        return None
    return info


def decode_limits(data: bytes, msg: Message) -> Limits:
    """A GET_LIMITS reply as :class:`Limits`; unknown attributes are logged
    at W.  A malformed reply gives ``Limits()``."""
    rcv = sub = None
    try:
        _need(msg.start, msg.end, 4, "the generic netlink header")
        for type, start, stop in _attrs(data, msg.start + 4, msg.end):
            if type == c.MPTCP_PM_ATTR_RCV_ADD_ADDRS:
                _need(start, stop, 4, "RCV_ADD_ADDRS")
                (rcv,) = _U32_AT.unpack_from(data, start)
            elif type == c.MPTCP_PM_ATTR_SUBFLOWS:
                _need(start, stop, 4, "SUBFLOWS")
                (sub,) = _U32_AT.unpack_from(data, start)
            else:
                log.warning("Unrecognized MPTCP resource limit type: %d.", type)
    except _Malformed as exc:
        log.warning("get_limits: malformed reply ignored (%s)", exc)
        return Limits()
    return Limits(rcv, sub)


# -- family resolution (nlctrl) --------------------------------------------------


def get_family(seq: int, name: str) -> bytes:
    """CTRL_CMD_GETFAMILY for ``name`` (no ACK: the reply or an error answers)."""
    attr = nla.encode(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")
    return (_HDR.pack(20 + len(attr), GENL_ID_CTRL, NLM_F_REQUEST, seq, 0,
                      CTRL_CMD_GETFAMILY, 1, 0) + attr)


def decode_family(data: bytes, seq: int) -> tuple[int | None, int]:
    """(family id, errno) from the answer to :func:`get_family`.

    ``(None, errno)`` for an error (``ENOENT``: no such family) or an answer
    without an id (``EPROTO``).
    """
    family_id, _, code = decode_family_groups(data, seq)
    return family_id, code


def decode_family_groups(data: bytes, seq: int) -> tuple[int | None, dict[str, int], int]:
    """(family id, multicast group name -> id, errno) from the answer to
    :func:`get_family`; as :func:`decode_family` for errors."""
    for msg in messages(data):
        if msg.seq != seq:
            continue
        if msg.type == NLMSG_ERROR:
            code, _ = decode_error(data, msg)
            return None, {}, code or errno.EPROTO
        if msg.type != GENL_ID_CTRL:
            continue
        family_id: int | None = None
        groups: dict[str, int] = {}
        try:
            for type, start, stop in _attrs(data, msg.start + 4, msg.end):
                if type == CTRL_ATTR_FAMILY_ID and stop - start >= 2:
                    family_id = _U16_AT.unpack_from(data, start)[0]
                elif type == CTRL_ATTR_MCAST_GROUPS:
                    for _, g_start, g_stop in _attrs(data, start, stop):
                        name, gid = None, None
                        for g_type, a_start, a_stop in _attrs(data, g_start, g_stop):
                            if g_type == CTRL_ATTR_MCAST_GRP_NAME:
                                name = bytes(data[a_start:a_stop]).split(b"\0", 1)[0]
                            elif g_type == CTRL_ATTR_MCAST_GRP_ID and a_stop - a_start >= 4:
                                gid = _U32_AT.unpack_from(data, a_start)[0]
                        if name is not None and gid is not None:
                            groups[name.decode("utf-8", "replace")] = gid
        except _Malformed as exc:
            log.warning("nlctrl reply: %s", exc)
        if family_id is not None:
            return family_id, groups, 0
    return None, {}, errno.EPROTO

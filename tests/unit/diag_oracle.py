"""The reference sock_diag codec, for the tests only: pyroute2's message
classes encode the dump request and parse the replies.

The production codec (:mod:`mptcpd.netlink.diag`) must give the same request
bytes and the same connections and listeners on every well-formed reply;
the diag tests feed both the same bytes.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from typing import Any

from pyroute2.netlink import NLMSG_DONE, nla  # type: ignore[import-untyped]
from pyroute2.netlink.diag import (  # type: ignore[import-untyped]
    inet_diag_msg,
    inet_diag_req,
)
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]
from pyroute2.netlink.marshal import Marshal  # type: ignore[import-untyped]

from mptcpd.netlink.diag import (
    INET_DIAG_INFO,
    IPPROTO_MPTCP,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    SOCK_DIAG_BY_FAMILY,
    STATES_NO_LISTEN,
    TCP_ESTABLISHED,
    TCP_LISTEN,
    MptcpConnection,
    MptcpDiagUnsupported,
    MptcpSubflow,
    decode_mptcp_info,
)
from mptcpd.types import SockAddr

_NLMSG_HDRLEN = 16
_INET_DIAG_MSG_LEN = 72
_NLA_TYPE_MASK = 0x3FFF


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
    """``struct inet_diag_msg`` as ``mptcp_diag`` fills it: pyroute2's
    fields, but ``INET_DIAG_INFO`` kept as raw bytes (it is ``struct
    mptcp_info`` here, not ``tcp_info``)."""

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
    """Replies chosen by netlink message type, not by address family (so
    that ``NLMSG_ERROR``, 2 like ``AF_INET``, is parsed as an error), and an
    ``NLMSG_DONE`` carrying a negative errno turned into an error."""

    msg_map = {SOCK_DIAG_BY_FAMILY: mptcp_diag_msg}

    def parse_one_message(
        self, key: int, flags: int, sequence_number: int, data: bytes,
        offset: int, length: int,
    ) -> Any:
        try:
            msg = super().parse_one_message(
                key, flags, sequence_number, data, offset, length
            )
        except (struct.error, ValueError, TypeError, IndexError, KeyError):
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


def request(family: int, protocol: int = IPPROTO_MPTCP, seq: int = 0) -> bytes:
    """The dump request as pyroute2 encodes it."""
    req = mptcp_diag_req()
    req["header"]["type"] = SOCK_DIAG_BY_FAMILY
    req["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    req["header"]["sequence_number"] = seq
    req["header"]["pid"] = 0
    req["sdiag_family"] = family
    req["sdiag_protocol"] = 0
    req["idiag_ext"] = 1 << (INET_DIAG_INFO - 1)
    req["idiag_states"] = STATES_NO_LISTEN | (1 << TCP_LISTEN)
    req["attrs"] = [("INET_DIAG_REQ_PROTOCOL", protocol)]
    req.encode()
    return bytes(req.data)


def _info_payload(msg: Any) -> bytes | None:
    data = msg.data
    start = int(msg.offset)
    end = min(start + int(msg["header"]["length"]), len(data))
    offset = start + _NLMSG_HDRLEN + _INET_DIAG_MSG_LEN
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4 or offset + length > end:
            raise ValueError("malformed attribute")
        if kind & _NLA_TYPE_MASK == INET_DIAG_INFO:
            return bytes(data[offset + 4:offset + length])
        offset += (length + 3) & ~3
    return None


def _connection(msg: Any) -> MptcpConnection | None:
    state = int(msg["idiag_state"])
    if msg["idiag_family"] not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        raw = _info_payload(msg)
    except ValueError:
        return None
    info = None if raw is None else decode_mptcp_info(raw)
    if info is None:
        return None
    return MptcpConnection(
        token=info.token,
        laddr=SockAddr(ipaddress.ip_address(msg["idiag_src"]), int(msg["idiag_sport"])),
        raddr=SockAddr(ipaddress.ip_address(msg["idiag_dst"]), int(msg["idiag_dport"])),
        state=state,
        established=state == TCP_ESTABLISHED,
        fallback=info.fallback,
    )


def _os_error(exc: Any) -> OSError:
    code = int(getattr(exc, "code", 0) or errno.EIO)
    if code == errno.ENOENT:
        return MptcpDiagUnsupported(code, "no MPTCP socket diagnostics")
    return OSError(code, os.strerror(code))


def _replies(marshal: Any, data: bytes) -> tuple[list[Any], bool]:
    """The ``SOCK_DIAG_BY_FAMILY`` replies of one datagram up to its
    ``NLMSG_DONE``, and whether that came; raises :class:`OSError` for an
    error the datagram carries."""
    replies = []
    for msg in marshal.parse(data):
        if msg is None:
            continue
        error = msg["header"].get("error")
        if error is not None:
            raise _os_error(error)
        kind = msg["header"]["type"]
        if kind == NLMSG_DONE:
            return replies, True
        if kind == SOCK_DIAG_BY_FAMILY:
            replies.append(msg)
    return replies, False


def decode(data: bytes) -> tuple[list[MptcpConnection], list[SockAddr], bool]:
    """(connections, listeners, done) in one datagram, as pyroute2 parses it;
    raises :class:`OSError` for an error the datagram carries."""
    connections = []
    listeners = []
    replies, done = _replies(MarshalMptcpDiag(), data)
    for msg in replies:
        if int(msg["idiag_state"]) == TCP_LISTEN:
            if msg["idiag_family"] in (socket.AF_INET, socket.AF_INET6):
                listeners.append(SockAddr(ipaddress.ip_address(msg["idiag_src"]),
                                          int(msg["idiag_sport"])))
            continue
        conn = _connection(msg)
        if conn is not None:
            connections.append(conn)
    return connections, listeners, done


# -- subflows: a TCP dump whose replies carry the mptcp ULP info -----------------


class subflow_diag_msg(inet_diag_msg):  # type: ignore[misc]
    """``struct inet_diag_msg`` of a TCP socket with ``INET_DIAG_ULP_INFO``
    decoded as a nest (pyroute2 keeps it as hex)."""

    _nlmsg_base__compiled_nla = False
    _nlmsg_base__t_nla_map = None
    _nlmsg_base__r_nla_map = None

    nla_map = tuple(
        ("INET_DIAG_ULP_INFO", "ulp_info") if name == "INET_DIAG_ULP_INFO"
        else ("INET_DIAG_INFO", "hex") if name == "INET_DIAG_INFO"
        else (name, kind)
        for name, kind in mptcp_diag_msg.nla_map
    )

    class ulp_info(nla):  # type: ignore[misc]
        nla_map = (
            ("INET_ULP_INFO_UNSPEC", "none"),
            ("INET_ULP_INFO_NAME", "asciiz"),
            ("INET_ULP_INFO_TLS", "hex"),
            ("INET_ULP_INFO_MPTCP", "subflow_info"),
        )

        class subflow_info(nla):  # type: ignore[misc]
            nla_map = (
                ("MPTCP_SUBFLOW_ATTR_UNSPEC", "none"),
                ("MPTCP_SUBFLOW_ATTR_TOKEN_REM", "uint32"),
                ("MPTCP_SUBFLOW_ATTR_TOKEN_LOC", "uint32"),
                ("MPTCP_SUBFLOW_ATTR_RELWRITE_SEQ", "uint32"),
                ("MPTCP_SUBFLOW_ATTR_MAP_SEQ", "uint64"),
                ("MPTCP_SUBFLOW_ATTR_MAP_SFSEQ", "uint32"),
                ("MPTCP_SUBFLOW_ATTR_SSN_OFFSET", "uint32"),
                ("MPTCP_SUBFLOW_ATTR_MAP_DATALEN", "uint16"),
                ("MPTCP_SUBFLOW_ATTR_FLAGS", "uint32"),
                ("MPTCP_SUBFLOW_ATTR_ID_REM", "uint8"),
                ("MPTCP_SUBFLOW_ATTR_ID_LOC", "uint8"),
                ("MPTCP_SUBFLOW_ATTR_PAD", "hex"),
            )


class MarshalSubflowDiag(MarshalMptcpDiag):  # type: ignore[misc]
    msg_map = {SOCK_DIAG_BY_FAMILY: subflow_diag_msg}


def subflow_request(family: int, seq: int = 0) -> bytes:
    """The TCP dump request that lists subflows, as pyroute2 encodes it."""
    req = mptcp_diag_req()
    req["header"]["type"] = SOCK_DIAG_BY_FAMILY
    req["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    req["header"]["sequence_number"] = seq
    req["header"]["pid"] = 0
    req["sdiag_family"] = family
    req["sdiag_protocol"] = 0
    req["idiag_ext"] = 1 << (INET_DIAG_INFO - 1)
    req["idiag_states"] = STATES_NO_LISTEN
    req["attrs"] = [("INET_DIAG_REQ_PROTOCOL", socket.IPPROTO_TCP)]
    req.encode()
    return bytes(req.data)


def decode_subflows(data: bytes) -> tuple[list[MptcpSubflow], bool]:
    """(subflows, done) in one datagram of a subflow dump, as pyroute2 parses
    it; raises :class:`OSError` for an error the datagram carries."""
    subflows = []
    replies, done = _replies(MarshalSubflowDiag(), data)
    for msg in replies:
        if (int(msg["idiag_state"]) == TCP_LISTEN
                or msg["idiag_family"] not in (socket.AF_INET, socket.AF_INET6)):
            continue
        ulp = msg.get_attr("INET_DIAG_ULP_INFO")
        if ulp is None or ulp.get_attr("INET_ULP_INFO_NAME") != "mptcp":
            continue
        info = ulp.get_attr("INET_ULP_INFO_MPTCP")
        if info is None or info.get_attr("MPTCP_SUBFLOW_ATTR_TOKEN_LOC") is None:
            continue
        subflows.append(MptcpSubflow(
            token=info.get_attr("MPTCP_SUBFLOW_ATTR_TOKEN_LOC"),
            laddr=SockAddr(ipaddress.ip_address(msg["idiag_src"]), int(msg["idiag_sport"])),
            raddr=SockAddr(ipaddress.ip_address(msg["idiag_dst"]), int(msg["idiag_dport"])),
            state=int(msg["idiag_state"]),
            ifindex=int(msg["idiag_if"]),
            local_id=info.get_attr("MPTCP_SUBFLOW_ATTR_ID_LOC") or 0,
            remote_id=info.get_attr("MPTCP_SUBFLOW_ATTR_ID_REM") or 0,
            flags=info.get_attr("MPTCP_SUBFLOW_ATTR_FLAGS") or 0,
        ))
    return subflows, done

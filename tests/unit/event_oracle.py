"""The reference event decoder, for the tests only: pyroute2's message
classes parse the datagram, and the same construction builds the event.

The production decoder (:mod:`mptcpd.netlink.event_codec`) must give the
same event and the same log lines on every input; the decode and fuzz tests
feed both the same bytes.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from pyroute2.netlink import genlmsg  # type: ignore[import-untyped]
from pyroute2.netlink.marshal import Marshal  # type: ignore[import-untyped]

from mptcpd.events import Event
from mptcpd.netlink import constants as C
from mptcpd.netlink.event_codec import EVENT_ATTR_SIZES, build_event, log
from mptcpd.netlink.event_codec import _MISSING, _NLA_TYPE_MASK

_u16 = struct.Struct("=H").unpack_from

class mptcp_event_msg(genlmsg):  # type: ignore[misc]
    """One ``mptcp_pm`` event; ``cmd`` is the ``MPTCP_EVENT_*`` number.

    ``nla_map`` uses the three-field form so each attribute's number is the
    kernel's ``MPTCP_ATTR_*`` value, not its position.
    """

    prefix = "MPTCP_ATTR_"
    nla_map = (
        (C.MPTCP_ATTR_UNSPEC, "MPTCP_ATTR_UNSPEC", "none"),
        (C.MPTCP_ATTR_TOKEN, "MPTCP_ATTR_TOKEN", "uint32"),
        (C.MPTCP_ATTR_FAMILY, "MPTCP_ATTR_FAMILY", "uint16"),
        (C.MPTCP_ATTR_LOC_ID, "MPTCP_ATTR_LOC_ID", "uint8"),
        (C.MPTCP_ATTR_REM_ID, "MPTCP_ATTR_REM_ID", "uint8"),
        (C.MPTCP_ATTR_SADDR4, "MPTCP_ATTR_SADDR4", "ip4addr"),
        (C.MPTCP_ATTR_SADDR6, "MPTCP_ATTR_SADDR6", "ip6addr"),
        (C.MPTCP_ATTR_DADDR4, "MPTCP_ATTR_DADDR4", "ip4addr"),
        (C.MPTCP_ATTR_DADDR6, "MPTCP_ATTR_DADDR6", "ip6addr"),
        (C.MPTCP_ATTR_SPORT, "MPTCP_ATTR_SPORT", "be16"),
        (C.MPTCP_ATTR_DPORT, "MPTCP_ATTR_DPORT", "be16"),
        (C.MPTCP_ATTR_BACKUP, "MPTCP_ATTR_BACKUP", "uint8"),
        (C.MPTCP_ATTR_ERROR, "MPTCP_ATTR_ERROR", "uint8"),
        (C.MPTCP_ATTR_FLAGS, "MPTCP_ATTR_FLAGS", "uint16"),
        (C.MPTCP_ATTR_TIMEOUT, "MPTCP_ATTR_TIMEOUT", "uint32"),
        (C.MPTCP_ATTR_IF_IDX, "MPTCP_ATTR_IF_IDX", "uint32"),
        (C.MPTCP_ATTR_RESET_REASON, "MPTCP_ATTR_RESET_REASON", "uint32"),
        (C.MPTCP_ATTR_RESET_FLAGS, "MPTCP_ATTR_RESET_FLAGS", "uint32"),
        (C.MPTCP_ATTR_SERVER_SIDE, "MPTCP_ATTR_SERVER_SIDE", "uint8"),
    )


class MarshalMptcpEvent(Marshal):  # type: ignore[misc]
    """Parses event datagrams (any family id) with :class:`mptcp_event_msg`.

    For tools and tests that hold raw datagrams; the socket itself maps the
    family id in ``bind()``.
    """

    default_message_class = mptcp_event_msg



# pyroute2 attribute name -> MPTCP_ATTR_* number
_ATTR_NUMBER: dict[str, int] = {
    entry[1]: entry[0] for entry in mptcp_event_msg.nla_map
}


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

"""pyroute2 message class for the ``mptcp_pm`` events (``MPTCP_ATTR_*``).

The kernel multicasts one generic-netlink message per event on the
``mptcp_pm_events`` group::

    struct nlmsghdr   { u32 len; u16 type (family id); u16 flags; u32 seq; u32 pid; }
    struct genlmsghdr { u8 cmd (MPTCP_EVENT_*); u8 version; u16 reserved; }
    struct nlattr[]   { u16 len; u16 type (MPTCP_ATTR_*); payload; pad to 4 }

Events use the attribute set ``event-attr`` of the kernel's netlink spec
(``Documentation/netlink/specs/mptcp_pm.yaml``), which is *not* the
``MPTCP_PM_ATTR_*`` set of the commands; therefore events get their own
message class and their own socket (DESIGN decision 1).

Byte orders, as the kernel writes them: TOKEN, TIMEOUT, IF_IDX,
RESET_REASON, RESET_FLAGS and FAMILY in host order; SADDR4/DADDR4 and
SPORT/DPORT in network order.
"""

from __future__ import annotations

from pyroute2.netlink import genlmsg  # type: ignore[import-untyped]
from pyroute2.netlink.marshal import Marshal  # type: ignore[import-untyped]

from mptcpd.netlink import constants as C


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

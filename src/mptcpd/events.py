"""Typed path-management events: one class per kernel event, one per
network-monitor event.

Each class is a frozen, slotted dataclass: a kernel event is built from one
``mptcp_pm`` generic-netlink event (see :mod:`mptcpd.netlink.event_codec`),
a network event by the network monitor.  ``HOOK`` names the plugin hook the
event feeds (the C ``mptcpd_plugin_ops`` field) and ``HOOK_ARGS`` the fields
passed to it, which carry the names of the hook's parameters (``pm`` is
added by the dispatcher).

Addresses are :class:`~mptcpd.types.SockAddr` values with the port in host
order.  Attributes the kernel did not send are ``None`` (numbers) or
``False`` (flags); the fields that every event of a type must carry (the
spec's "required attributes") are never ``None``.

Differences from the C daemon, on purpose: subflow events carry the real
``backup`` value (C always passes ``True``), IPv6 addresses have no stray
flow info or scope, and every attribute the kernel sends is kept, also the
ones the C daemon parses and drops (local ID, error, interface index, reset
reason and flags, timeout, raw flags).

This module imports nothing of mptcpd except :mod:`mptcpd.types`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from mptcpd.types import AddressId, Interface, SockAddr, Token

__all__ = [
    "AddressAnnounced",
    "AddressRemoved",
    "ConnectionClosed",
    "ConnectionCreated",
    "ConnectionEstablished",
    "Event",
    "InterfaceAdded",
    "InterfaceRemoved",
    "InterfaceUpdated",
    "LinkDown",
    "LinkUp",
    "ListenerClosed",
    "ListenerCreated",
    "LocalAddressAdded",
    "LocalAddressRemoved",
    "NetworkEvent",
    "SubflowClosed",
    "SubflowEstablished",
    "SubflowPriority",
]



@dataclasses.dataclass(frozen=True, slots=True)
class _ConnectionEvent:
    """Fields shared by CREATED and ESTABLISHED (documented on each)."""

    HOOK: ClassVar[str] = ""
    HOOK_ARGS: ClassVar[tuple[str, ...]] = (
        "token", "laddr", "raddr", "server_side", "deny_join_id0")
    token: Token
    laddr: SockAddr
    raddr: SockAddr
    server_side: bool = False
    deny_join_id0: bool = False
    loc_id: AddressId | None = None
    rem_id: AddressId | None = None
    family: int | None = None
    flags: int = 0
    timeout: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionCreated(_ConnectionEvent):
    """A new MPTCP connection exists (``MPTCP_EVENT_CREATED``).

    :ivar token: the connection's token.
    :ivar laddr: local address and port of the initial subflow.
    :ivar raddr: remote address and port of the initial subflow.
    :ivar server_side: this host accepted the connection (FLAGS bit
        ``MPTCP_PM_EV_FLAG_SERVER_SIDE``, or the deprecated ``SERVER_SIDE``
        attribute non-zero).
    :ivar deny_join_id0: the peer refuses joins to its initial address and
        port (FLAGS bit ``MPTCP_PM_EV_FLAG_DENY_JOIN_ID0``).
    :ivar loc_id: local address ID of the initial subflow, if sent.
    :ivar rem_id: remote address ID of the initial subflow, if sent.
    :ivar family: ``MPTCP_ATTR_FAMILY`` (``AF_INET``/``AF_INET6``), if sent.
    :ivar flags: the raw ``MPTCP_ATTR_FLAGS`` value (0 when absent).
    :ivar timeout: ``MPTCP_ATTR_TIMEOUT``, if sent.
    """

    HOOK: ClassVar[str] = "new_connection"


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionEstablished(_ConnectionEvent):
    """An MPTCP connection is established (``MPTCP_EVENT_ESTABLISHED``).

    The kernel sends it once data has been exchanged; from then on subflows
    may be added.

    :ivar token: the connection's token.
    :ivar laddr: local address and port of the initial subflow.
    :ivar raddr: remote address and port of the initial subflow.
    :ivar server_side: this host accepted the connection (FLAGS bit
        ``MPTCP_PM_EV_FLAG_SERVER_SIDE``, or the deprecated ``SERVER_SIDE``
        attribute non-zero).
    :ivar deny_join_id0: the peer refuses joins to its initial address and
        port (FLAGS bit ``MPTCP_PM_EV_FLAG_DENY_JOIN_ID0``).
    :ivar loc_id: local address ID of the initial subflow, if sent.
    :ivar rem_id: remote address ID of the initial subflow, if sent.
    :ivar family: ``MPTCP_ATTR_FAMILY`` (``AF_INET``/``AF_INET6``), if sent.
    :ivar flags: the raw ``MPTCP_ATTR_FLAGS`` value (0 when absent).
    :ivar timeout: ``MPTCP_ATTR_TIMEOUT``, if sent.
    """

    HOOK: ClassVar[str] = "connection_established"


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """An MPTCP connection has stopped (``MPTCP_EVENT_CLOSED``).

    :ivar token: the connection's token.
    """

    HOOK: ClassVar[str] = "connection_closed"
    HOOK_ARGS: ClassVar[tuple[str, ...]] = ("token",)
    token: Token


@dataclasses.dataclass(frozen=True, slots=True)
class AddressAnnounced:
    """The peer announced an address (``MPTCP_EVENT_ANNOUNCED``, ADD_ADDR).

    :ivar token: the connection's token.
    :ivar addr_id: the address ID the peer gave the address (``REM_ID``).
    :ivar addr: the announced address; the port is 0 when none was
        announced.
    :ivar family: ``MPTCP_ATTR_FAMILY``, if sent.
    """

    HOOK: ClassVar[str] = "new_address"
    HOOK_ARGS: ClassVar[tuple[str, ...]] = ("token", "addr_id", "addr")
    token: Token
    addr_id: AddressId
    addr: SockAddr
    family: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class AddressRemoved:
    """The peer withdrew an address (``MPTCP_EVENT_REMOVED``, RM_ADDR).

    :ivar token: the connection's token.
    :ivar addr_id: the withdrawn address ID (``REM_ID``).
    """

    HOOK: ClassVar[str] = "address_removed"
    HOOK_ARGS: ClassVar[tuple[str, ...]] = ("token", "addr_id")
    token: Token
    addr_id: AddressId


@dataclasses.dataclass(frozen=True, slots=True)
class _SubflowEvent:
    """Fields shared by the three subflow events.

    :ivar token: the connection's token.
    :ivar laddr: local address and port of the subflow.
    :ivar raddr: remote address and port of the subflow.
    :ivar backup: the subflow's backup priority (the real value; the C
        daemon always reports ``True``).
    :ivar loc_id: local address ID, if sent.
    :ivar rem_id: remote address ID, if sent.
    :ivar family: ``MPTCP_ATTR_FAMILY``, if sent.
    :ivar error: the subflow's socket error (``sk_err``), if sent.
    :ivar if_idx: the interface the subflow is bound to, if sent.
    :ivar reset_reason: the MPTCP reset reason, if sent.
    :ivar reset_flags: the MPTCP reset flags, if sent.
    :ivar flags: the raw ``MPTCP_ATTR_FLAGS`` value (0 when absent).
    :ivar server_side: FLAGS server-side bit or ``SERVER_SIDE`` non-zero.
    :ivar deny_join_id0: FLAGS deny-join-id0 bit.
    :ivar timeout: ``MPTCP_ATTR_TIMEOUT``, if sent.
    """

    HOOK: ClassVar[str] = ""
    HOOK_ARGS: ClassVar[tuple[str, ...]] = ("token", "laddr", "raddr", "backup")
    token: Token
    laddr: SockAddr
    raddr: SockAddr
    backup: bool
    loc_id: AddressId | None = None
    rem_id: AddressId | None = None
    family: int | None = None
    error: int | None = None
    if_idx: int | None = None
    reset_reason: int | None = None
    reset_flags: int | None = None
    flags: int = 0
    server_side: bool = False
    deny_join_id0: bool = False
    timeout: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SubflowEstablished(_SubflowEvent):
    """A subflow has been established (``MPTCP_EVENT_SUB_ESTABLISHED``).

    :ivar token: the connection's token.
    :ivar laddr: local address and port of the subflow.
    :ivar raddr: remote address and port of the subflow.
    :ivar backup: the subflow's backup priority.
    :ivar loc_id: local address ID, if sent.
    :ivar rem_id: remote address ID, if sent.
    :ivar family: ``MPTCP_ATTR_FAMILY``, if sent.
    :ivar error: socket error, if sent (the kernel says it should not be).
    :ivar if_idx: bound interface index, if sent.
    :ivar reset_reason: MPTCP reset reason, if sent.
    :ivar reset_flags: MPTCP reset flags, if sent.
    :ivar flags: raw ``MPTCP_ATTR_FLAGS`` (0 when absent).
    :ivar server_side: server-side flag.
    :ivar deny_join_id0: deny-join-id0 flag.
    :ivar timeout: ``MPTCP_ATTR_TIMEOUT``, if sent.
    """

    HOOK: ClassVar[str] = "new_subflow"


@dataclasses.dataclass(frozen=True, slots=True)
class SubflowClosed(_SubflowEvent):
    """A subflow has been closed (``MPTCP_EVENT_SUB_CLOSED``).

    :ivar token: the connection's token.
    :ivar laddr: local address and port of the subflow.
    :ivar raddr: remote address and port of the subflow.
    :ivar backup: the subflow's backup priority.
    :ivar loc_id: local address ID, if sent.
    :ivar rem_id: remote address ID, if sent.
    :ivar family: ``MPTCP_ATTR_FAMILY``, if sent.
    :ivar error: the socket error that closed it, if any.
    :ivar if_idx: bound interface index, if sent.
    :ivar reset_reason: MPTCP reset reason, if the subflow was reset.
    :ivar reset_flags: MPTCP reset flags, if the subflow was reset.
    :ivar flags: raw ``MPTCP_ATTR_FLAGS`` (0 when absent).
    :ivar server_side: server-side flag.
    :ivar deny_join_id0: deny-join-id0 flag.
    :ivar timeout: ``MPTCP_ATTR_TIMEOUT``, if sent.
    """

    HOOK: ClassVar[str] = "subflow_closed"


@dataclasses.dataclass(frozen=True, slots=True)
class SubflowPriority(_SubflowEvent):
    """A subflow's backup priority changed (``MPTCP_EVENT_SUB_PRIORITY``).

    :ivar token: the connection's token.
    :ivar laddr: local address and port of the subflow.
    :ivar raddr: remote address and port of the subflow.
    :ivar backup: the new backup priority.
    :ivar loc_id: local address ID, if sent.
    :ivar rem_id: remote address ID, if sent.
    :ivar family: ``MPTCP_ATTR_FAMILY``, if sent.
    :ivar error: socket error, if sent.
    :ivar if_idx: bound interface index, if sent.
    :ivar reset_reason: MPTCP reset reason, if sent.
    :ivar reset_flags: MPTCP reset flags, if sent.
    :ivar flags: raw ``MPTCP_ATTR_FLAGS`` (0 when absent).
    :ivar server_side: server-side flag.
    :ivar deny_join_id0: deny-join-id0 flag.
    :ivar timeout: ``MPTCP_ATTR_TIMEOUT``, if sent.
    """

    HOOK: ClassVar[str] = "subflow_priority"


@dataclasses.dataclass(frozen=True, slots=True)
class ListenerCreated:
    """A path-manager listener was created (``MPTCP_EVENT_LISTENER_CREATED``).

    :ivar laddr: the listening address and port (wildcard addresses as
        ``0.0.0.0``/``::``).
    :ivar family: ``MPTCP_ATTR_FAMILY``, if sent.
    """

    HOOK: ClassVar[str] = "listener_created"
    HOOK_ARGS: ClassVar[tuple[str, ...]] = ("laddr",)
    laddr: SockAddr
    family: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ListenerClosed:
    """A path-manager listener was closed (``MPTCP_EVENT_LISTENER_CLOSED``).

    :ivar laddr: the listening address and port.
    :ivar family: ``MPTCP_ATTR_FAMILY``, if sent.
    """

    HOOK: ClassVar[str] = "listener_closed"
    HOOK_ARGS: ClassVar[tuple[str, ...]] = ("laddr",)
    laddr: SockAddr
    family: int | None = None


#: Any of the ten kernel events.
Event = (
    ConnectionCreated
    | ConnectionEstablished
    | ConnectionClosed
    | AddressAnnounced
    | AddressRemoved
    | SubflowEstablished
    | SubflowClosed
    | SubflowPriority
    | ListenerCreated
    | ListenerClosed
)


# -- network monitor events ------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _InterfaceEvent:
    """An interface event; ``interface`` is its state then (a snapshot)."""

    HOOK: ClassVar[str] = ""
    HOOK_ARGS: ClassVar[tuple[str, ...]] = ("interface",)
    interface: Interface


@dataclasses.dataclass(frozen=True, slots=True)
class _AddressEvent:
    """A local-address event: ``addr`` (port 0) on ``interface``."""

    HOOK: ClassVar[str] = ""
    HOOK_ARGS: ClassVar[tuple[str, ...]] = ("interface", "addr")
    interface: Interface
    addr: SockAddr


@dataclasses.dataclass(frozen=True, slots=True)
class InterfaceAdded(_InterfaceEvent):
    """An interface became ready: up and running (or known at startup)."""

    HOOK: ClassVar[str] = "new_interface"


@dataclasses.dataclass(frozen=True, slots=True)
class InterfaceUpdated(_InterfaceEvent):
    """A ready interface changed (a link message: flags, MTU, ...)."""

    HOOK: ClassVar[str] = "update_interface"


@dataclasses.dataclass(frozen=True, slots=True)
class InterfaceRemoved(_InterfaceEvent):
    """An interface went administratively down or away; ``interface`` is
    its last recorded state, addresses included.  The daemon withdraws its
    reported addresses first (``delete_local_address`` for each); C sends
    no address event for them."""

    HOOK: ClassVar[str] = "delete_interface"


@dataclasses.dataclass(frozen=True, slots=True)
class LocalAddressAdded(_AddressEvent):
    """A local address appeared (after its route check with ``check_route``)."""

    HOOK: ClassVar[str] = "new_local_address"


@dataclasses.dataclass(frozen=True, slots=True)
class LocalAddressRemoved(_AddressEvent):
    """A recorded local address was removed."""

    HOOK: ClassVar[str] = "delete_local_address"


@dataclasses.dataclass(frozen=True, slots=True)
class LinkDown(_InterfaceEvent):
    """A ready interface lost its carrier (``IFF_RUNNING``) but stays up
    with its addresses (``interface.addrs``)."""

    HOOK: ClassVar[str] = "link_down"


@dataclasses.dataclass(frozen=True, slots=True)
class LinkUp(_InterfaceEvent):
    """An interface that had reported :class:`LinkDown` runs again."""

    HOOK: ClassVar[str] = "link_up"


#: Any of the seven network-monitor events.
NetworkEvent = (
    InterfaceAdded
    | InterfaceUpdated
    | InterfaceRemoved
    | LocalAddressAdded
    | LocalAddressRemoved
    | LinkDown
    | LinkUp
)

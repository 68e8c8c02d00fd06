"""The public API for mptcpd plugins: the only module a plugin imports.

A plugin is a Python module (a ``*.py`` file in the plugin directory, or a
module named by an entry point in the group ``mptcpd.plugins``) that defines
a descriptor and hook implementations::

    from mptcpd.plugin import PluginInfo, Priority, hookimpl

    PLUGIN = PluginInfo(name="hello", description="logs new connections",
                        priority=Priority.DEFAULT)

    @hookimpl
    def new_connection(token, raddr, pm):
        log.info("connection %08x to %s", token, raddr)

The hooks, their parameters and their dispatch rules are documented in
:mod:`mptcpd.hookspecs` and in the plugin author's guide.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from typing import Any, Protocol

import pluggy

from mptcpd.hookspecs import PROJECT
from mptcpd.netlink.pm_codec import AddrInfo, Limits
from mptcpd.types import (
    AddressId,
    AddrFlags,
    Interface,
    IPAddress,
    NotifyFlags,
    SockAddr,
    Token,
)

__all__ = [
    "AddrFlags",
    "AddrInfo",
    "AddressId",
    "IPAddress",
    "Interface",
    "LimitType",
    "Limits",
    "NotifyFlags",
    "PathManager",
    "PluginInfo",
    "Priority",
    "SockAddr",
    "Token",
    "hookimpl",
]

#: Marks a function as a hook implementation: ``@hookimpl def new_connection(…)``.
hookimpl = pluggy.HookimplMarker(PROJECT)


class Priority(enum.IntEnum):
    """Plugin priorities; like nice values, lower is more favoured."""

    HIGH = -20
    DEFAULT = 0
    LOW = 19


class LimitType(enum.IntEnum):
    """The C API's limit types (``MPTCPD_LIMIT_*``); the values travel in :class:`Limits`."""

    RCV_ADD_ADDRS = 0  #: ``add_addr_accepted``
    SUBFLOWS = 1  #: ``subflows``


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """A plugin's descriptor, the module-level ``PLUGIN`` object.

    :ivar name: the plugin's name, used by ``--path-manager`` and in logs.
    :ivar description: one line saying what the plugin does.
    :ivar priority: lower wins; the most favoured plugin is the default path
        manager unless ``--path-manager`` names another.
    """

    name: str
    description: str = ""
    priority: int = Priority.DEFAULT

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a plugin needs a non-empty name")
        if not isinstance(self.priority, int):
            raise ValueError(f"priority must be an int, not {self.priority!r}")


class PathManager(Protocol):
    """What plugins receive as ``pm``: the C path-manager API, ``mptcpd_`` dropped.

    Every command validates its arguments at once, raising ``ValueError``
    (EINVAL), :class:`mptcpd.errors.NotReady` (EAGAIN: the kernel's
    ``mptcp_pm`` family is not available) or
    :class:`mptcpd.errors.NotSupported` (ENOTSUP).  Otherwise it returns an
    :class:`asyncio.Future` resolved when the kernel answers: ``None`` for an
    acknowledgement, data for queries, or failed with
    :class:`mptcpd.errors.KernelError` carrying the errno and the kernel's
    message (which is logged either way).  Hooks may ignore the future, as C
    plugins ignore the return code, or attach a done-callback.
    """

    # -- state -------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Whether the kernel's ``mptcp_pm`` family is available."""

    @property
    def network_monitor(self) -> Any:
        """The network monitor: interfaces and their addresses."""

    @property
    def id_manager(self) -> Any:
        """The process-wide address-ID manager (IDs 1..255)."""

    @property
    def listener_manager(self) -> Any:
        """The MPTCP listening sockets opened for announced addresses."""

    @property
    def config(self) -> Any:
        """The daemon's configuration (``addr_flags``, ``notify_flags``, …)."""

    # -- userspace path manager (per connection) ---------------------------
    def add_addr(self, addr: SockAddr, id: AddressId, token: Token) -> asyncio.Future[Any]:
        """Announce ``addr`` with ``id`` on connection ``token`` (opens a listener)."""

    def add_addr_no_listener(
        self, addr: SockAddr, id: AddressId, token: Token
    ) -> asyncio.Future[Any]:
        """Announce ``addr`` without opening a listening socket for it."""

    def remove_addr(
        self, addr: SockAddr | None, id: AddressId, token: Token
    ) -> asyncio.Future[Any]:
        """Withdraw the address ``id`` from connection ``token``."""

    def add_subflow(
        self, token: Token, local_id: AddressId, remote_id: AddressId,
        laddr: SockAddr, raddr: SockAddr, backup: bool = False,
    ) -> asyncio.Future[Any]:
        """Create a subflow from ``laddr`` to ``raddr`` on connection ``token``."""

    def set_backup(
        self, token: Token, laddr: SockAddr, raddr: SockAddr, backup: bool
    ) -> asyncio.Future[Any]:
        """Set or clear the backup priority of a subflow."""

    def remove_subflow(
        self, token: Token, laddr: SockAddr, raddr: SockAddr
    ) -> asyncio.Future[Any]:
        """Close the subflow from ``laddr`` to ``raddr`` of connection ``token``."""

    # -- in-kernel path manager (endpoints) --------------------------------
    def kpm_add_addr(
        self, addr: SockAddr, id: AddressId, flags: AddrFlags | int = 0, ifindex: int = 0
    ) -> asyncio.Future[Any]:
        """Add an endpoint."""

    def kpm_remove_addr(self, id: AddressId) -> asyncio.Future[Any]:
        """Remove the endpoint ``id``."""

    def kpm_get_addr(self, id: AddressId) -> asyncio.Future[Any]:
        """Get the endpoint ``id``."""

    def kpm_dump_addrs(self) -> asyncio.Future[Any]:
        """List every endpoint."""

    def kpm_flush_addrs(self) -> asyncio.Future[Any]:
        """Remove every endpoint."""

    def kpm_set_limits(self, limits: Limits) -> asyncio.Future[Any]:
        """Set the limits given (``Limits(subflows=4)``; None fields unchanged)."""

    def kpm_get_limits(self) -> asyncio.Future[Any]:
        """Get the resource limits, as :class:`Limits`."""

    def kpm_set_flags(self, addr: SockAddr, flags: AddrFlags | int) -> asyncio.Future[Any]:
        """Change the flags of the endpoint with address ``addr``."""

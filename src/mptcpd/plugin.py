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
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import pluggy

from mptcpd.errors import (
    ConnectionClosed,
    KernelError,
    MptcpdError,
    NotReady,
    NotSupported,
    QueueFull,
    SettingsError,
)
from mptcpd.hookspecs import PROJECT
from mptcpd.netlink.pm_codec import AddrInfo, Limits
from mptcpd.pm.keeper import (
    Kept,
    KeptConnection,
    RetryPolicy,
    SubflowKeeper,
    Wanted,
    announcement_answered,
    close_subflow,
    refused_by_queue,
    resend_refused,
    usable_addresses,
    usable_interfaces,
    withdraw_announcement,
)
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
    "AddressIds",
    "ConfigView",
    "ConnectionClosed",
    "IPAddress",
    "Interface",
    "Kept",
    "KeptConnection",
    "KernelError",
    "LimitType",
    "Limits",
    "MptcpdError",
    "NetworkView",
    "NotReady",
    "NotSupported",
    "NotifyFlags",
    "PathManager",
    "PluginInfo",
    "PluginSettings",
    "Priority",
    "QueueFull",
    "RetryPolicy",
    "SettingsError",
    "SockAddr",
    "SubflowKeeper",
    "Token",
    "Wanted",
    "announcement_answered",
    "close_subflow",
    "hookimpl",
    "keeper_hooks",
    "refused_by_queue",
    "resend_refused",
    "usable_addresses",
    "usable_interfaces",
    "withdraw_announcement",
]

_F = TypeVar("_F", bound=Callable[..., Any])
_marker = pluggy.HookimplMarker(PROJECT)


def hookimpl(function: _F) -> _F:
    """Marks a function as a hook implementation: ``@hookimpl def new_connection(…)``.

    The function's name is the hook's; it is returned unchanged (typed as it
    was), so a type checker checks the plugin's own code.
    """
    return _marker(function)


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


class NetworkView(Protocol):
    """The network monitor as plugins see it: the ready interfaces and their
    addresses, read only (``pm.network_monitor``)."""

    def interfaces(self) -> list[Interface]:
        """Snapshots of the ready interfaces, in ifindex order."""
        ...

    def get_interface(self, index: int) -> Interface | None:
        """The ready interface with this ifindex, if any."""
        ...

    def find_interface(self, addr: SockAddr) -> Interface | None:
        """The ready interface holding the IP of ``addr`` (port ignored;
        an IPv4-mapped IPv6 address is looked up as IPv4)."""
        ...

    def foreach_interface(self, callback: Callable[[Interface], object]) -> None:
        """Call ``callback(interface)`` for each ready interface, in ifindex order."""
        ...


class AddressIds(Protocol):
    """The process-wide address-ID allocator all plugins share (``pm.id_manager``)."""

    def get_id(self, addr: SockAddr | IPAddress) -> int:
        """The ID of ``addr``'s IP, allocating the lowest free one (1..255)
        the first time; 0 when none is left."""
        ...

    def lookup(self, addr: SockAddr | IPAddress) -> int:
        """The ID of ``addr``'s IP, or 0 when it has none (nothing allocated)."""
        ...

    def remove_id(self, addr: SockAddr | IPAddress) -> int:
        """Free the ID of ``addr``'s IP; returns it (0 when it had none)."""
        ...


class PluginSettings(Protocol):
    """A plugin's own settings, the ``[plugin NAME]`` group of the
    configuration file, read only (``pm.config.plugin_settings(name)``).

    A mapping of key to value (the first occurrence of each key), with typed
    getters that return ``default`` when the key is absent and raise
    :class:`SettingsError` (naming the file, line, group and key) when the
    value is not of the type or in the range asked for.
    """

    @property
    def name(self) -> str:
        """The plugin the settings are for."""
        ...

    @property
    def path(self) -> str:
        """The configuration file ("" when it has no group for the plugin)."""
        ...

    def __getitem__(self, key: str) -> str: ...

    def __contains__(self, key: object) -> bool: ...

    def __iter__(self) -> Iterator[str]: ...

    def __len__(self) -> int: ...

    def check_keys(self, known: Iterable[str]) -> list[str]:
        """Warn about keys not in ``known`` and repeated keys; returns the unknown ones."""
        ...

    def get_str(self, key: str, default: str = "") -> str:
        """The value as written."""
        ...

    def get_int(self, key: str, default: int, *, min: int | None = None,
                max: int | None = None) -> int:
        """A whole number within ``min``..``max``."""
        ...

    def get_float(self, key: str, default: float, *, min: float | None = None,
                  max: float | None = None) -> float:
        """A finite number within ``min``..``max``."""
        ...

    def get_bool(self, key: str, default: bool) -> bool:
        """``true``/``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0``."""
        ...

    def get_list(self, key: str, default: Iterable[str] = ()) -> tuple[str, ...]:
        """Comma-separated items."""
        ...

    def get_duration(self, key: str, default: float, *, min: float | None = None,
                     max: float | None = None) -> float:
        """Seconds: ``250ms``, ``1.5`` or ``1.5s``, ``2m``, ``1h``."""
        ...


class ConfigView(Protocol):
    """The daemon's configuration as plugins see it (``pm.config``), read only."""

    @property
    def addr_flags(self) -> AddrFlags:
        """``--addr-flags``: the flags of the endpoints plugins create."""
        ...

    @property
    def notify_flags(self) -> NotifyFlags:
        """``--notify-flags``: which addresses are reported to plugins."""
        ...

    @property
    def path_manager(self) -> str | None:
        """``--path-manager``: the default path manager's name, if set."""
        ...

    @property
    def plugin_dir(self) -> str:
        """``--plugin-dir``: where plugin files are loaded from."""
        ...

    @property
    def load_plugins(self) -> tuple[str, ...] | None:
        """``--load-plugins``: the plugins to load (None: all)."""
        ...

    def plugin_settings(self, name: str) -> PluginSettings:
        """The settings of plugin ``name`` (its ``[plugin NAME]`` group; empty
        when the file has none)."""
        ...


class PathManager(Protocol):
    """What plugins receive as ``pm``: the C path-manager API, ``mptcpd_`` dropped.

    Every command validates its arguments at once, raising ``ValueError``
    (EINVAL), :class:`NotReady` (EAGAIN: the kernel's ``mptcp_pm`` family is
    not available) or :class:`NotSupported` (ENOTSUP).  Otherwise it returns
    an :class:`asyncio.Future` resolved when the kernel answers: ``None`` for
    an acknowledgement, data for queries, or failed with :class:`KernelError`
    carrying the errno and the kernel's message (which is logged either way),
    :class:`QueueFull` or :class:`ConnectionClosed`.  Hooks may ignore the
    future, as C plugins ignore the return code, or attach a done-callback.
    """

    # -- state -------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Whether the kernel's ``mptcp_pm`` family is available."""
        ...

    @property
    def network_monitor(self) -> NetworkView:
        """The ready interfaces and their addresses."""
        ...

    @property
    def id_manager(self) -> AddressIds:
        """The process-wide address-ID manager (IDs 1..255)."""
        ...

    @property
    def config(self) -> ConfigView:
        """The daemon's configuration (``addr_flags``, ``notify_flags``, …)."""
        ...

    # -- userspace path manager (per connection) ---------------------------
    def add_addr(self, addr: SockAddr, id: int, token: int) -> asyncio.Future[Any]:
        """Announce ``addr`` with ``id`` on connection ``token`` (opens a listener)."""

    def add_addr_no_listener(
        self, addr: SockAddr, id: int, token: int
    ) -> asyncio.Future[Any]:
        """Announce ``addr`` without opening a listening socket for it."""

    def remove_addr(
        self, addr: SockAddr | None, id: int, token: int
    ) -> asyncio.Future[Any]:
        """Withdraw the address ``id`` from connection ``token``."""

    def add_subflow(
        self, token: int, local_id: int, remote_id: int,
        laddr: SockAddr, raddr: SockAddr, backup: bool = False,
    ) -> asyncio.Future[Any]:
        """Create a subflow from ``laddr`` to ``raddr`` on connection ``token``."""

    def set_backup(
        self, token: int, laddr: SockAddr, raddr: SockAddr, backup: bool
    ) -> asyncio.Future[Any]:
        """Set or clear the backup priority of a subflow."""

    def remove_subflow(
        self, token: int, laddr: SockAddr, raddr: SockAddr
    ) -> asyncio.Future[Any]:
        """Close the subflow from ``laddr`` to ``raddr`` of connection ``token``."""

    # -- in-kernel path manager (endpoints) --------------------------------
    def kpm_add_addr(
        self, addr: SockAddr, id: int, flags: AddrFlags | int = 0, ifindex: int = 0
    ) -> asyncio.Future[Any]:
        """Add an endpoint."""

    def kpm_remove_addr(self, id: int) -> asyncio.Future[Any]:
        """Remove the endpoint ``id``."""

    def kpm_get_addr(self, id: int) -> asyncio.Future[Any]:
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


def keeper_hooks(keeper: Callable[[], SubflowKeeper]) -> dict[str, Callable[..., None]]:
    """The hooks of a path manager built on a :class:`SubflowKeeper`.

    Every connection and network hook, each handing its event to the keeper
    that ``keeper()`` returns at that moment (so a plugin may make a new
    keeper in its ``plugin_init``): ``link_down`` and ``delete_interface``
    to :meth:`~SubflowKeeper.interface_lost`, ``link_up`` to
    :meth:`~SubflowKeeper.interface_back`, ``new_interface`` to
    :meth:`~SubflowKeeper.refill`, ``new_local_address`` to
    :meth:`~SubflowKeeper.address_back`,
    ``delete_local_address`` to :meth:`~SubflowKeeper.address_lost`, the
    others to the keeper's method of the same name.  A plugin adds them to
    its module, next to its own ``plugin_init`` and ``plugin_exit``::

        globals().update(keeper_hooks(lambda: _keeper))
    """

    @hookimpl
    def new_connection(token: Token, laddr: SockAddr, raddr: SockAddr, server_side: bool,
                       deny_join_id0: bool, pm: PathManager) -> None:
        keeper().new_connection(token, laddr, raddr, server_side, deny_join_id0, pm)

    @hookimpl
    def connection_established(token: Token, laddr: SockAddr, raddr: SockAddr,
                               server_side: bool, deny_join_id0: bool,
                               pm: PathManager) -> None:
        keeper().connection_established(token, laddr, raddr, server_side, deny_join_id0,
                                        pm)

    @hookimpl
    def connection_closed(token: Token) -> None:
        keeper().connection_closed(token)

    @hookimpl
    def new_address(token: Token, addr_id: int, addr: SockAddr, pm: PathManager) -> None:
        keeper().new_address(token, addr_id, addr, pm)

    @hookimpl
    def address_removed(token: Token, addr_id: int, pm: PathManager) -> None:
        keeper().address_removed(token, addr_id, pm)

    @hookimpl
    def new_subflow(token: Token, laddr: SockAddr, raddr: SockAddr, backup: bool,
                    pm: PathManager) -> None:
        keeper().new_subflow(token, laddr, raddr, backup, pm)

    @hookimpl
    def subflow_closed(token: Token, laddr: SockAddr, raddr: SockAddr,
                       pm: PathManager) -> None:
        keeper().subflow_closed(token, laddr, raddr, pm)

    @hookimpl
    def subflow_priority(token: Token, laddr: SockAddr, raddr: SockAddr,
                         backup: bool) -> None:
        keeper().subflow_priority(token, laddr, raddr, backup)

    @hookimpl
    def link_down(interface: Interface, pm: PathManager) -> None:
        keeper().interface_lost(interface, pm)

    @hookimpl
    def delete_interface(interface: Interface, pm: PathManager) -> None:
        keeper().interface_lost(interface, pm)

    @hookimpl
    def link_up(interface: Interface, pm: PathManager) -> None:
        keeper().interface_back(interface, pm)

    @hookimpl
    def new_interface(pm: PathManager) -> None:
        keeper().refill(pm)

    @hookimpl
    def new_local_address(addr: SockAddr, pm: PathManager) -> None:
        keeper().address_back(addr, pm)

    @hookimpl
    def delete_local_address(addr: SockAddr, pm: PathManager) -> None:
        keeper().address_lost(addr, pm)

    hooks: list[Callable[..., None]] = [
        new_connection, connection_established, connection_closed, new_address,
        address_removed, new_subflow, subflow_closed, subflow_priority, link_down,
        delete_interface, link_up, new_interface, new_local_address, delete_local_address]
    return {hook.__name__: hook for hook in hooks}

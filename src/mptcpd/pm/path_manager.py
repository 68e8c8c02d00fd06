"""The path manager plugins talk to (C: ``lib/path_manager.c``).

This is the one place where commands are checked.  Every command checks, in
the C order:

1. its arguments: ``ValueError`` (C: ``EINVAL``) for a wrong type or a value
   out of range (IDs 1..255, or 0..255 where the kernel allows 0; tokens and
   flags u32, flags only of known bits; ifindex s32; a
   :class:`~mptcpd.types.SockAddr` where the kernel needs an address);
2. readiness: the ``mptcp_pm`` family must be known, else a warning
   ``<function>: MPTCP family is not yet available`` and
   :class:`~mptcpd.errors.NotReady` (C: ``EAGAIN``);

and then queues the command on the command channel under its own name,
returning the channel's :class:`asyncio.Future`.  Nothing invalid is ever
queued.  Kernel errors fail that future and are logged by the channel;
callers may ignore the future, as C plugins ignore the return code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from mptcpd.config import Config
from mptcpd.errors import NotReady
from mptcpd.netlink.pm_codec import Limits
from mptcpd.pm.id_manager import IdManager
from mptcpd.pm.listener_manager import ListenerManager
from mptcpd.pm.settings import PluginSettings
from mptcpd.types import AddrFlags, Interface, NotifyFlags, SockAddr

log = logging.getLogger(__name__)

_U32 = 0xFFFFFFFF
_KNOWN_FLAGS = int(AddrFlags.SIGNAL | AddrFlags.SUBFLOW | AddrFlags.BACKUP
                   | AddrFlags.FULLMESH | AddrFlags.IMPLICIT | AddrFlags.LAMINAR)


class Commands(Protocol):
    """Where validated commands go: :class:`~mptcpd.netlink.genl_commands.CommandChannel`."""

    def submit(self, name: str, args: tuple[Any, ...] = (),
               token: int | None = None) -> asyncio.Future[Any]: ...


#: Told of each subflow creation queued: ``(token, laddr, raddr, local_id,
#: remote_id, future)`` (the daemon's dispatcher, which follows it: see
#: :meth:`mptcpd.daemon.dispatch.Dispatcher.subflow_creation`).
CreationObserver = Callable[[int, SockAddr, SockAddr, int, int, "asyncio.Future[Any]"], None]


def _int(value: object, low: int, high: int, what: str) -> int:
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{what} must be an int, not {value!r}")
        value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{what} must be {low}..{high}, not {value}")
    return value


def _id(value: object, what: str = "address ID") -> int:
    return _int(value, 1, 255, what)


def _token(value: object) -> int:
    return _int(value, 0, _U32, "token")


def _flags(value: object) -> int:
    flags = _int(value, 0, _U32, "flags")
    if flags & ~_KNOWN_FLAGS:
        raise ValueError(f"unknown address flags: {flags & ~_KNOWN_FLAGS:#x}")
    return flags


def _sockaddr(value: object, what: str) -> SockAddr:
    if not isinstance(value, SockAddr):
        raise ValueError(f"{what} must be a SockAddr, not {value!r}")
    return value


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, int):  # bool is an int
        raise ValueError(f"{what} must be a bool, not {value!r}")
    return bool(value)


class Listeners(Protocol):
    """Where :meth:`PathManager.add_addr` gets its listening sockets:
    :class:`~mptcpd.pm.listener_manager.ListenerManager`."""

    def listen(self, sa: SockAddr | None) -> SockAddr: ...
    def close(self, sa: SockAddr | None) -> None: ...


class InterfaceQueries(Protocol):
    """What :class:`NetworkView` needs of the network monitor."""

    def interfaces(self) -> list[Interface]: ...
    def get_interface(self, index: int) -> Interface | None: ...
    def find_interface(self, addr: SockAddr) -> Interface | None: ...
    def foreach_interface(self, callback: Callable[[Interface], object]) -> None: ...


class NoInterfaces:
    """The network view of a path manager built without a network monitor."""

    def interfaces(self) -> list[Interface]:
        return []

    def get_interface(self, index: int) -> Interface | None:
        return None

    def find_interface(self, addr: SockAddr) -> Interface | None:
        return None

    def foreach_interface(self, callback: Callable[[Interface], object]) -> None:
        return None


class NetworkView:
    """The network monitor's queries and nothing else (``pm.network_monitor``):
    plugins cannot reach its registration, reconciliation or socket methods.
    The queries are the monitor's own bound methods, so a query costs what
    it costs on the monitor."""

    __slots__ = ("interfaces", "get_interface", "find_interface", "foreach_interface")

    def __init__(self, monitor: InterfaceQueries) -> None:
        self.interfaces = monitor.interfaces
        self.get_interface = monitor.get_interface
        self.find_interface = monitor.find_interface
        self.foreach_interface = monitor.foreach_interface


class AddressIds:
    """The ID manager's allocation and lookup and nothing else (``pm.id_manager``):
    plugins cannot remap IDs (the daemon syncs them with the kernel's)."""

    __slots__ = ("get_id", "lookup", "remove_id")

    def __init__(self, ids: IdManager) -> None:
        self.get_id = ids.get_id
        self.lookup = ids.lookup
        self.remove_id = ids.remove_id


class ConfigView:
    """``pm.config``: the frozen daemon configuration as plugins see it, with
    each plugin's own settings (``plugin_settings(name)``, built once per
    name)."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._groups = {group.name: group for group in config.plugin_groups}
        self._settings: dict[str, PluginSettings] = {}

    @property
    def addr_flags(self) -> AddrFlags:
        return self._config.addr_flags

    @property
    def notify_flags(self) -> NotifyFlags:
        return self._config.notify_flags

    @property
    def path_manager(self) -> str | None:
        return self._config.path_manager

    @property
    def plugin_dir(self) -> str:
        return self._config.plugin_dir

    @property
    def load_plugins(self) -> tuple[str, ...] | None:
        return self._config.load_plugins

    @property
    def config_file(self) -> str:
        """The configuration file that was read (or would have been)."""
        return self._config.config_file

    def __getattr__(self, name: str) -> Any:
        """Every other field of the daemon's :class:`Config` (read only; the
        public protocol promises plugins the ones above)."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._config, name)

    def plugin_settings(self, name: str) -> PluginSettings:
        """The settings of plugin ``name`` (empty when the file has no group for it)."""
        settings = self._settings.get(name)
        if settings is None:
            settings = self._settings[name] = PluginSettings(name, self._groups.get(name))
        return settings


class PathManager:
    """The ``pm`` object handed to every plugin hook; it implements the
    protocol :class:`mptcpd.plugin.PathManager`.

    :param commands: the command channel the validated commands go to.
    :param config: the daemon configuration (``addr_flags``, ``notify_flags``…;
        the defaults when None).
    :param network_monitor: the network monitor (no interfaces when None).
    :param id_manager: the process-wide address-ID manager.
    :param listener_manager: the listener manager used by :meth:`add_addr`.
    """

    def __init__(
        self,
        commands: Commands,
        config: Config | None = None,
        network_monitor: InterfaceQueries | None = None,
        id_manager: IdManager | None = None,
        listener_manager: Listeners | None = None,
    ) -> None:
        self._submit = commands.submit
        self._config = ConfigView(config if config is not None else Config())
        self._network_monitor = NetworkView(
            network_monitor if network_monitor is not None else NoInterfaces())
        ids = id_manager if id_manager is not None else IdManager()
        self._id_manager = AddressIds(ids)
        self._listener_manager: Listeners = (
            listener_manager if listener_manager is not None else ListenerManager()
        )
        self._ready = False
        self._creation_observer: CreationObserver | None = None

    # -- state -------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether the kernel's ``mptcp_pm`` family is available."""
        return self._ready

    def set_ready(self, ready: bool) -> None:
        """Called by the daemon when the family appears or vanishes."""
        self._ready = ready

    def observe_creations(self, observer: CreationObserver | None) -> None:
        """Called by the daemon: ``observer`` is told of every subflow
        creation queued (:meth:`add_subflow`), with its future."""
        self._creation_observer = observer

    @property
    def network_monitor(self) -> NetworkView:
        """The interfaces and their addresses (queries only)."""
        return self._network_monitor

    @property
    def id_manager(self) -> AddressIds:
        """The shared address-ID allocator (allocation and lookup only)."""
        return self._id_manager

    @property
    def config(self) -> ConfigView:
        """The daemon's configuration (frozen) and the plugins' settings."""
        return self._config

    def set_config(self, config: Config) -> None:
        """Use a reloaded configuration (the daemon's; not for plugins)."""
        self._config = ConfigView(config)

    def _check_ready(self, function: str) -> None:
        if not self._ready:
            log.warning("%s: MPTCP family is not yet available", function)
            raise NotReady()

    # -- userspace path manager --------------------------------------------

    def add_addr(self, addr: SockAddr, id: int, token: int) -> asyncio.Future[Any]:
        """Announce ``addr`` on connection ``token`` after listening on it
        (ANNOUNCE).

        The listener is opened (or shared) first; with port 0 the kernel
        picks a port, and the announcement carries it.  The future resolves
        with the address announced (with that port).
        """
        addr = _sockaddr(addr, "addr")
        id = _id(id)
        token = _token(token)
        self._check_ready("do_pm_add_addr")
        lm = self._listener_manager
        bound = lm.listen(addr)
        try:
            future = self._submit("add_addr", (bound, id, token), token)
        except BaseException:
            lm.close(bound)
            raise

        def release_on_failure(done: asyncio.Future[Any]) -> None:
            # The C daemon keeps the listener of a refused announcement.
            if done.cancelled() or done.exception() is not None:
                try:
                    lm.close(bound)
                except OSError:
                    pass

        future.add_done_callback(release_on_failure)
        return self._then(future, bound)

    def add_addr_no_listener(self, addr: SockAddr, id: int, token: int) -> asyncio.Future[Any]:
        """Announce ``addr`` without opening a listener; port 0 sends no port
        (ANNOUNCE)."""
        addr = _sockaddr(addr, "addr")
        id = _id(id)
        token = _token(token)
        self._check_ready("do_pm_add_addr")
        return self._then(self._submit("add_addr_no_listener", (addr, id, token), token),
                          addr)

    def remove_addr(self, addr: SockAddr | None, id: int, token: int) -> asyncio.Future[Any]:
        """Withdraw address ``id`` (REMOVE); once the kernel agrees, release
        the listener of ``addr``."""
        if addr is not None:
            _sockaddr(addr, "addr")
        id = _id(id)
        token = _token(token)
        self._check_ready("mptcpd_pm_remove_addr")
        future = self._submit("remove_addr", (addr, id, token), token)
        if addr is not None:
            lm, released = self._listener_manager, addr

            def release(done: asyncio.Future[Any]) -> None:
                if not done.cancelled() and done.exception() is None:
                    try:
                        lm.close(released)
                    except OSError:
                        pass  # no listener for it: nothing to release (as C)

            future.add_done_callback(release)
        return future

    def add_subflow(self, token: int, local_id: int, remote_id: int,
                    laddr: SockAddr, raddr: SockAddr, backup: bool = False) -> asyncio.Future[Any]:
        """Create a subflow from ``laddr`` to ``raddr`` (SUBFLOW_CREATE; both
        addresses required, IDs 0 to leave them out).  With ``backup`` the
        subflow asks for backup priority from its first packet (the
        MP_JOIN's B bit, the backup flag of its local address): the C
        mptcpd leaves it out, and a plugin had to send :meth:`set_backup`
        once the subflow was established."""
        token = _token(token)
        local_id = _int(local_id, 0, 255, "local_id")
        remote_id = _int(remote_id, 0, 255, "remote_id")
        _sockaddr(laddr, "laddr")
        _sockaddr(raddr, "raddr")
        backup = _bool(backup, "backup")
        self._check_ready("mptcpd_pm_add_subflow")
        future = self._submit("add_subflow",
                              (token, local_id, remote_id, laddr, raddr, backup), token)
        if self._creation_observer is not None:
            self._creation_observer(token, laddr, raddr, local_id, remote_id, future)
        return future

    def set_backup(self, token: int, laddr: SockAddr, raddr: SockAddr,
                   backup: bool) -> asyncio.Future[Any]:
        """Set (or clear) the backup priority of the subflow ``laddr``→``raddr``
        (SET_FLAGS with a token)."""
        token = _token(token)
        _sockaddr(laddr, "laddr")
        _sockaddr(raddr, "raddr")
        backup = _bool(backup, "backup")
        self._check_ready("mptcpd_pm_set_backup")
        return self._submit("set_backup", (token, laddr, raddr, backup), token)

    def remove_subflow(self, token: int, laddr: SockAddr, raddr: SockAddr) -> asyncio.Future[Any]:
        """Close the subflow ``laddr``→``raddr`` of connection ``token``
        (SUBFLOW_DESTROY)."""
        token = _token(token)
        _sockaddr(laddr, "laddr")
        _sockaddr(raddr, "raddr")
        self._check_ready("mptcpd_pm_remove_subflow")
        return self._submit("remove_subflow", (token, laddr, raddr), token)

    # -- in-kernel path manager --------------------------------------------

    def kpm_add_addr(self, addr: SockAddr, id: int, flags: int = 0,
                     ifindex: int = 0) -> asyncio.Future[Any]:
        """Add an endpoint (ADD_ADDR); a non-zero port adds the SIGNAL flag."""
        _sockaddr(addr, "addr")
        id = _id(id)
        flags = _flags(flags)
        ifindex = _int(ifindex, -0x80000000, 0x7FFFFFFF, "ifindex")
        self._check_ready("mptcpd_kpm_add_addr")
        return self._submit("kpm_add_addr", (addr, id, flags, ifindex))

    def kpm_remove_addr(self, id: int) -> asyncio.Future[Any]:
        """Remove the endpoint ``id`` (DEL_ADDR)."""
        id = _id(id)
        self._check_ready("mptcpd_kpm_remove_addr")
        return self._submit("kpm_remove_addr", (id,))

    def kpm_get_addr(self, id: int) -> asyncio.Future[Any]:
        """The endpoint ``id`` as an ``AddrInfo`` (GET_ADDR)."""
        id = _id(id)
        self._check_ready("mptcpd_kpm_get_addr")
        return self._submit("kpm_get_addr", (id,))

    def kpm_dump_addrs(self) -> asyncio.Future[Any]:
        """Every endpoint, a list of ``AddrInfo`` (GET_ADDR dump)."""
        self._check_ready("mptcpd_kpm_dump_addrs")
        return self._submit("kpm_dump_addrs")

    def kpm_flush_addrs(self) -> asyncio.Future[Any]:
        """Remove every endpoint (FLUSH_ADDRS)."""
        self._check_ready("mptcpd_kpm_flush_addrs")
        return self._submit("kpm_flush_addrs")

    def kpm_set_limits(self, limits: Limits) -> asyncio.Future[Any]:
        """Set the limits given in ``limits`` (SET_LIMITS); None fields are
        left as they are."""
        if not isinstance(limits, Limits):
            raise ValueError(f"limits must be a Limits, not {limits!r}")
        if limits.rcv_add_addrs is None and limits.subflows is None:
            raise ValueError("at least one limit is needed")
        limits = Limits(
            None if limits.rcv_add_addrs is None
            else _int(limits.rcv_add_addrs, 0, _U32, "rcv_add_addrs"),
            None if limits.subflows is None else _int(limits.subflows, 0, _U32, "subflows"),
        )
        self._check_ready("mptcpd_kpm_set_limits")
        return self._submit("kpm_set_limits", (limits,))

    def kpm_get_limits(self) -> asyncio.Future[Any]:
        """The limits, as :class:`~mptcpd.netlink.pm_codec.Limits` (GET_LIMITS)."""
        self._check_ready("mptcpd_kpm_get_limits")
        return self._submit("kpm_get_limits")

    def kpm_set_flags(self, addr: SockAddr, flags: int) -> asyncio.Future[Any]:
        """Change the flags of the endpoint of ``addr`` (SET_FLAGS); a non-zero
        port adds SIGNAL, flags 0 sends none."""
        _sockaddr(addr, "addr")
        flags = _flags(flags)
        self._check_ready("mptcpd_kpm_set_flags")
        return self._submit("kpm_set_flags", (addr, flags))

    # -- helpers -----------------------------------------------------------

    @staticmethod
    def _then(future: asyncio.Future[Any], value: Any) -> asyncio.Future[Any]:
        """A future resolved with ``value`` when ``future`` succeeds."""
        result: asyncio.Future[Any] = future.get_loop().create_future()

        def relay(done: asyncio.Future[Any]) -> None:
            if result.done():
                return
            if done.cancelled():
                result.cancel()
            elif done.exception() is not None:
                result.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                result.set_result(value)

        future.add_done_callback(relay)
        # A plugin that ignores the result must not get "exception never
        # retrieved" noise: the channel has logged the kernel's error already.
        result.add_done_callback(lambda f: f.cancelled() or f.exception())
        return result


if TYPE_CHECKING:
    from mptcpd import plugin

    def _implements_the_public_protocol(pm: PathManager) -> plugin.PathManager:
        """mypy proves here that plugins get what :mod:`mptcpd.plugin` promises."""
        return pm

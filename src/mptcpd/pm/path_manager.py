"""The path manager plugins talk to (C: ``lib/path_manager.c``).

Every command checks, in the C order (spec §5.1):

1. its arguments: ``ValueError`` (C: ``EINVAL``);
2. readiness: the ``mptcp_pm`` family must be known, else a warning
   ``<function>: MPTCP family is not yet available`` and
   :class:`~mptcpd.errors.NotReady` (C: ``EAGAIN``);

and then hands the command to the kernel layer, returning its
:class:`asyncio.Future`.  Kernel errors fail that future and are logged by
the command channel; callers may ignore the future, as C plugins ignore the
return code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from mptcpd.errors import NotReady
from mptcpd.pm.id_manager import IdManager
from mptcpd.pm.kernel import KernelPM
from mptcpd.pm.listener_manager import ListenerManager
from mptcpd.types import SockAddr

log = logging.getLogger(__name__)


def _require(condition: object, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _sockaddr(value: object, what: str) -> SockAddr:
    if not isinstance(value, SockAddr):
        raise ValueError(f"{what} must be a SockAddr, not {value!r}")
    return value


def _address_id(value: object, what: str = "address ID") -> int:
    if not isinstance(value, int) or not 0 < value <= 255:
        raise ValueError(f"{what} must be 1..255, not {value!r}")
    return value


class PathManager:
    """The ``pm`` object handed to every plugin hook.

    :param kernel: the kernel command layer (:class:`~mptcpd.pm.kernel.KernelPM`).
    :param config: the daemon configuration (``addr_flags``, ``notify_flags``…).
    :param network_monitor: the network monitor.
    :param id_manager: the process-wide address-ID manager.
    :param listener_manager: the listener manager used by :meth:`add_addr`.
    """

    def __init__(
        self,
        kernel: KernelPM,
        config: Any = None,
        network_monitor: Any = None,
        id_manager: IdManager | None = None,
        listener_manager: ListenerManager | None = None,
    ) -> None:
        self._kernel = kernel
        self._config = config
        self._network_monitor = network_monitor
        self._id_manager = id_manager if id_manager is not None else IdManager()
        self._listener_manager = (
            listener_manager if listener_manager is not None else ListenerManager()
        )
        self._ready = False

    # -- state -------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether the kernel's ``mptcp_pm`` family is available."""
        return self._ready

    def set_ready(self, ready: bool) -> None:
        """Called by the daemon when the family appears or vanishes."""
        self._ready = ready

    @property
    def network_monitor(self) -> Any:
        return self._network_monitor

    @property
    def id_manager(self) -> IdManager:
        return self._id_manager

    @property
    def listener_manager(self) -> ListenerManager:
        return self._listener_manager

    @property
    def config(self) -> Any:
        return self._config

    def _check_ready(self, function: str) -> None:
        if not self._ready:
            log.warning("%s: MPTCP family is not yet available", function)
            raise NotReady()

    # -- userspace path manager --------------------------------------------

    def add_addr(self, addr: SockAddr, id: int, token: int) -> asyncio.Future[Any]:
        """Announce ``addr`` on connection ``token`` after listening on it.

        The listener is opened (or shared) first; with port 0 the kernel
        picks a port, and the announcement carries it.  The future resolves
        with the address announced (with that port).
        """
        addr = _sockaddr(addr, "addr")
        _address_id(id)
        self._check_ready("do_pm_add_addr")
        lm = self._listener_manager
        bound = lm.listen(addr)
        future = self._kernel.add_addr(bound, id, token)

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
        """Announce ``addr`` without opening a listener; port 0 sends no port."""
        addr = _sockaddr(addr, "addr")
        _address_id(id)
        self._check_ready("do_pm_add_addr")
        return self._then(self._kernel.add_addr(addr, id, token), addr)

    def remove_addr(self, addr: SockAddr | None, id: int, token: int) -> asyncio.Future[Any]:
        """Withdraw address ``id``; once the kernel agrees, release the listener of ``addr``."""
        _address_id(id)
        if addr is not None:
            _sockaddr(addr, "addr")
        self._check_ready("mptcpd_pm_remove_addr")
        future = self._kernel.remove_addr(addr, id, token)
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
        """Create a subflow from ``laddr`` to ``raddr`` (both required)."""
        _sockaddr(laddr, "laddr")
        _sockaddr(raddr, "raddr")
        self._check_ready("mptcpd_pm_add_subflow")
        return self._kernel.add_subflow(token, local_id, remote_id, laddr, raddr, backup)

    def set_backup(self, token: int, laddr: SockAddr, raddr: SockAddr,
                   backup: bool) -> asyncio.Future[Any]:
        """Set (or clear) the backup priority of the subflow ``laddr``→``raddr``."""
        _sockaddr(laddr, "laddr")
        _sockaddr(raddr, "raddr")
        self._check_ready("mptcpd_pm_set_backup")
        return self._kernel.set_backup(token, laddr, raddr, bool(backup))

    def remove_subflow(self, token: int, laddr: SockAddr, raddr: SockAddr) -> asyncio.Future[Any]:
        """Close the subflow ``laddr``→``raddr`` of connection ``token``."""
        _sockaddr(laddr, "laddr")
        _sockaddr(raddr, "raddr")
        self._check_ready("mptcpd_pm_remove_subflow")
        return self._kernel.remove_subflow(token, laddr, raddr)

    # -- in-kernel path manager --------------------------------------------

    def kpm_add_addr(self, addr: SockAddr, id: int, flags: int = 0,
                     ifindex: int = 0) -> asyncio.Future[Any]:
        """Add an endpoint; a non-zero port adds the SIGNAL flag."""
        _sockaddr(addr, "addr")
        _address_id(id)
        self._check_ready("mptcpd_kpm_add_addr")
        return self._kernel.kpm_add_addr(addr, id, int(flags), ifindex)

    def kpm_remove_addr(self, id: int) -> asyncio.Future[Any]:
        _address_id(id)
        self._check_ready("mptcpd_kpm_remove_addr")
        return self._kernel.kpm_remove_addr(id)

    def kpm_get_addr(self, id: int) -> asyncio.Future[Any]:
        _address_id(id)
        self._check_ready("mptcpd_kpm_get_addr")
        return self._kernel.kpm_get_addr(id)

    def kpm_dump_addrs(self) -> asyncio.Future[Any]:
        self._check_ready("mptcpd_kpm_dump_addrs")
        return self._kernel.kpm_dump_addrs()

    def kpm_flush_addrs(self) -> asyncio.Future[Any]:
        self._check_ready("mptcpd_kpm_flush_addrs")
        return self._kernel.kpm_flush_addrs()

    def kpm_set_limits(
        self, limits: Mapping[int, int] | Iterable[tuple[int, int]]
    ) -> asyncio.Future[Any]:
        """Set limits given as ``{LimitType: value}`` or (type, value) pairs, in order."""
        pairs = list(limits.items() if isinstance(limits, Mapping) else limits)
        _require(pairs, "at least one limit is needed")
        for kind, value in pairs:
            _require(isinstance(value, int) and 0 <= value <= 0xFFFFFFFF,
                     f"limit value out of range: {value!r}")
        self._check_ready("mptcpd_kpm_set_limits")
        return self._kernel.kpm_set_limits([(int(k), v) for k, v in pairs])

    def kpm_get_limits(self) -> asyncio.Future[Any]:
        self._check_ready("mptcpd_kpm_get_limits")
        return self._kernel.kpm_get_limits()

    def kpm_set_flags(self, addr: SockAddr, flags: int) -> asyncio.Future[Any]:
        """Change the flags of the endpoint of ``addr``; a non-zero port adds SIGNAL."""
        _sockaddr(addr, "addr")
        self._check_ready("mptcpd_kpm_set_flags")
        return self._kernel.kpm_set_flags(addr, int(flags))

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

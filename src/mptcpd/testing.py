"""A test kit for plugin authors: drive a plugin's hooks without a kernel.

:class:`FakePathManager` is the daemon's own path manager (the same argument
checks, the same errors) whose commands are recorded instead of sent, over a
network view the test fills in.  :class:`PluginDriver` loads a plugin the
way the daemon does and feeds it events through the daemon's own
dispatcher, so ownership of connections, argument passing by name and the
order of broadcasts are those of the daemon; a hook that raises fails the
test (the daemon would log it and go on)::

    from mptcpd.plugin import Interface, SockAddr
    from mptcpd.testing import FakePathManager, PluginDriver, READY

    pm = FakePathManager(interfaces=[
        Interface(2, "eth0", READY, addrs=(SockAddr("192.0.2.1"),)),
    ])
    plugin = PluginDriver.load("plugins/hello.py", pm)
    plugin.new_connection(0x1234, SockAddr("192.0.2.1", 40000), SockAddr("192.0.2.2", 80))
    assert pm.take() == []

Only :mod:`mptcpd.plugin` and this module are public.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno as errno_module
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from mptcpd import events as ev
from mptcpd.config import Config, PluginGroup
from mptcpd.daemon.dispatch import Dispatcher
from mptcpd.errors import KernelError, QueueFull
from mptcpd.plugin import Interface, PluginInfo, SockAddr
from mptcpd.plugins.loader import load_plugins, plugin_info
from mptcpd.plugins.registry import Plugin, PluginRegistry
from mptcpd.pm.id_manager import IdManager
from mptcpd.pm.path_manager import PathManager
from mptcpd.types import IFF_RUNNING, IFF_UP, AddressId, Token

__all__ = ["READY", "Command", "FakeNetwork", "FakePathManager", "HookFailed",
           "PluginDriver"]

#: The flags of an interface that is up and running (what path managers use).
READY = IFF_UP | IFF_RUNNING


@dataclasses.dataclass
class Command:
    """One command a plugin sent through :class:`FakePathManager`.

    :ivar name: the ``pm`` method that sent it (``"add_subflow"``,
        ``"kpm_add_addr"``, …).
    :ivar args: its arguments, checked, in the method's order (``add_addr``:
        the address with the port the listener got).
    :ivar future: what the plugin got back; settle it with :meth:`answer`
        or :meth:`refuse`.
    """

    name: str
    args: tuple[Any, ...]
    future: asyncio.Future[Any]

    def answer(self, value: Any = None) -> None:
        """The kernel accepts the command (``value`` for queries)."""
        self.future.set_result(value)

    def refuse(self, code: int = errno_module.EINVAL, message: str | None = None) -> None:
        """The kernel refuses the command with ``code`` (an errno)."""
        self.future.set_exception(KernelError(self.name, code, message))


class _Recorder:
    """Takes the path manager's checked commands: records them, sends nothing."""

    def __init__(self, loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self._loop = loop
        self.commands: list[Command] = []
        self.refused: list[Command] = []
        self.full = False

    def submit(self, name: str, args: tuple[Any, ...] = (),
               token: int | None = None) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop().create_future()
        if self.full:  # as the daemon's full queue: failed before it is handed over
            future.set_exception(QueueFull(f"{name}: command queue full; command dropped"))
            self.refused.append(Command(name, args, future))
            return future
        self.commands.append(Command(name, args, future))
        return future


class _FakeListeners:
    """Listeners for ``add_addr`` that open no socket: the address is "bound"
    as given, port 0 becomes a made-up port."""

    def __init__(self) -> None:
        self.open: dict[SockAddr, int] = {}
        self._next_port = 40000

    def listen(self, sa: SockAddr | None) -> SockAddr:
        if sa is None or not isinstance(sa, SockAddr):
            raise OSError(errno_module.EINVAL, os.strerror(errno_module.EINVAL))
        if not sa.port:
            self._next_port += 1
            sa = sa.with_port(self._next_port)
        self.open[sa] = self.open.get(sa, 0) + 1
        return sa

    def close(self, sa: SockAddr | None) -> None:
        if sa is None or sa not in self.open:
            raise OSError(errno_module.EINVAL, os.strerror(errno_module.EINVAL))
        self.open[sa] -= 1
        if not self.open[sa]:
            del self.open[sa]

    def destroy(self) -> None:
        self.open.clear()


class FakeNetwork:
    """The interfaces a :class:`FakePathManager` shows, changed by the test
    (or by :class:`PluginDriver`'s network events)."""

    def __init__(self, interfaces: Iterable[Interface] = ()) -> None:
        self._interfaces = {i.index: i for i in interfaces}

    def set(self, interface: Interface) -> None:
        """Add ``interface``, or replace the one with its index."""
        self._interfaces[interface.index] = interface

    def remove(self, index: int) -> None:
        self._interfaces.pop(index, None)

    def interfaces(self) -> list[Interface]:
        return [self._interfaces[k] for k in sorted(self._interfaces)]

    def get_interface(self, index: int) -> Interface | None:
        return self._interfaces.get(index)

    def find_interface(self, addr: SockAddr) -> Interface | None:
        key = SockAddr(addr.ip).unmapped()
        for interface in self.interfaces():
            if key in interface.addrs:
                return interface
        return None

    def foreach_interface(self, callback: Callable[[Interface], object]) -> None:
        for interface in self.interfaces():
            callback(interface)


class FakePathManager(PathManager):
    """The daemon's path manager with its commands recorded, not sent.

    :param interfaces: the interfaces ``pm.network_monitor`` shows at first
        (change them through :attr:`network`).
    :param config: what ``pm.config`` shows (the defaults when None).
    :param settings: plugin settings, ``{plugin name: {key: value}}``, as
        ``[plugin NAME]`` groups of the configuration file would give them
        (added to ``config``'s).
    :param ready: whether the kernel family is "available" (commands raise
        :class:`~mptcpd.plugin.NotReady` when not).
    :param loop: the event loop of the commands' futures; by default the
        running loop when there is one, else a private loop that
        :meth:`settle` runs.
    """

    def __init__(self, interfaces: Iterable[Interface] = (), config: Config | None = None,
                 ready: bool = True, loop: asyncio.AbstractEventLoop | None = None,
                 settings: Mapping[str, Mapping[str, str]] | None = None) -> None:
        if settings:
            config = config if config is not None else Config()
            groups = tuple(
                PluginGroup(name, "<test>", 0,
                            tuple((key, value, 0) for key, value in values.items()))
                for name, values in settings.items())
            config = dataclasses.replace(
                config, plugin_groups=config.plugin_groups + groups)
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._given_loop = loop
        self.network = FakeNetwork(interfaces)
        self.listeners = _FakeListeners()
        self._recorder = _Recorder(self._loop)
        super().__init__(self._recorder, config=config, network_monitor=self.network,
                         id_manager=IdManager(), listener_manager=self.listeners)
        self.set_ready(ready)

    def _loop(self) -> asyncio.AbstractEventLoop:
        if self._given_loop is not None:
            return self._given_loop
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            if self._own_loop is None:
                self._own_loop = asyncio.new_event_loop()
            return self._own_loop

    @property
    def commands(self) -> list[Command]:
        """Every command sent since the last :meth:`take`, in order."""
        return self._recorder.commands

    @property
    def queue_full(self) -> bool:
        """While true, commands are refused as the daemon's full command queue
        refuses them: the future the plugin gets is already failed with
        :class:`~mptcpd.plugin.QueueFull`, and the command is kept in
        :attr:`refused` instead of :attr:`commands`."""
        return self._recorder.full

    @queue_full.setter
    def queue_full(self, full: bool) -> None:
        self._recorder.full = full

    @property
    def refused(self) -> list[Command]:
        """The commands refused while :attr:`queue_full` was true, in order."""
        return self._recorder.refused

    def take(self, name: str | None = None) -> list[tuple[Any, ...]]:
        """The commands sent (only those of method ``name``, if given) as
        ``(name, *args)`` tuples, oldest first; then forget every command."""
        taken = [(c.name, *c.args) for c in self._recorder.commands
                 if name is None or c.name == name]
        self._recorder.commands.clear()
        return taken

    def answer_all(self, value: Any = None) -> None:
        """Accept every pending command, then :meth:`settle`."""
        for command in self._recorder.commands:
            if not command.future.done():
                command.answer(value)
        self.settle()

    def settle(self) -> None:
        """Run the done-callbacks of settled futures (the plugin's reactions).

        With the private loop only; in an ``async`` test, ``await
        asyncio.sleep(0)`` does the same.
        """
        loop = self._loop()
        if loop.is_running():
            raise RuntimeError("the loop is running: await asyncio.sleep(0) instead")
        loop.run_until_complete(asyncio.sleep(0))

    def close(self) -> None:
        """Close the private loop, if one was made."""
        if self._own_loop is not None:
            self._own_loop.close()
            self._own_loop = None


class HookFailed(AssertionError):
    """A hook raised; the daemon would have logged it and gone on."""


class _StrictRegistry(PluginRegistry):
    """A registry that remembers the exceptions its hooks raise."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[tuple[str, str, BaseException]] = []

    def _failed(self, plugin: Plugin, hook: str, exc: BaseException) -> None:
        self.failures.append((plugin.name, hook, exc))
        super()._failed(plugin, hook, exc)


class PluginDriver:
    """Feeds one plugin the events the daemon would, as the daemon does.

    Build it with :meth:`load` (a plugin file, with the daemon's checks) or
    from an imported module.  ``plugin_init`` runs at once and ``pm_ready``
    after it when ``pm.ready``.  Each method below dispatches one event and
    raises :class:`HookFailed` if a hook raised.

    :param module: the plugin module (it defines ``PLUGIN`` and its hooks).
    :param pm: the path manager the hooks get (a new :class:`FakePathManager`
        when None).
    """

    def __init__(self, module: ModuleType, pm: FakePathManager | None = None,
                 source: str | None = None) -> None:
        self.pm = pm if pm is not None else FakePathManager()
        self.registry = _StrictRegistry()
        source = source or getattr(module, "__file__", None) or module.__name__
        info: PluginInfo = plugin_info(module, source)
        self.plugin = self.registry.register(module, info, source)
        self._start()

    @classmethod
    def load(cls, path: str | os.PathLike[str], pm: FakePathManager | None = None
             ) -> PluginDriver:
        """Load the plugin file ``path`` with the daemon's loader (and its
        ownership checks: the file and its directory must be owned by root or
        you, and not group- or world-writable)."""
        path = Path(path)
        checked = PluginRegistry()
        load_plugins(checked, str(path.parent), [path.stem], entry_points=False)
        plugin = checked.plugins[0]  # load_plugins raises when nothing loaded
        return cls(plugin.module, pm, plugin.source)  # type: ignore[arg-type]

    def _start(self) -> None:
        self.dispatcher = Dispatcher(self.registry, self.pm, self.plugin)
        self._check(self.registry.init_all, self.pm)
        if self.pm.ready:
            self._check(self.dispatcher.pm_ready)

    @property
    def module(self) -> object:
        """The plugin's module (its state, for assertions)."""
        return self.plugin.module

    def _check(self, call: Callable[..., object], *args: Any) -> None:
        before = len(self.registry.failures)
        call(*args)
        failures = self.registry.failures[before:]
        if failures:
            name, hook, exc = failures[0]
            raise HookFailed(f'plugin "{name}" raised in {hook}: {exc!r}') from exc

    # -- lifecycle ---------------------------------------------------------

    def exit(self) -> None:
        """``plugin_exit``, as at the daemon's shutdown."""
        self._check(self.registry.exit_all, self.pm)

    def pm_ready(self) -> None:
        self.pm.set_ready(True)
        self._check(self.dispatcher.pm_ready)

    def pm_not_ready(self) -> None:
        self.pm.set_ready(False)
        self._check(self.dispatcher.pm_not_ready)

    # -- connection events -------------------------------------------------

    def new_connection(self, token: int, laddr: SockAddr, raddr: SockAddr,
                       server_side: bool = False, deny_join_id0: bool = False) -> None:
        self._event(ev.ConnectionCreated(Token(token), laddr, raddr, server_side=server_side,
                                         deny_join_id0=deny_join_id0))

    def connection_established(self, token: int, laddr: SockAddr, raddr: SockAddr,
                               server_side: bool = False,
                               deny_join_id0: bool = False) -> None:
        self._event(ev.ConnectionEstablished(Token(token), laddr, raddr,
                                             server_side=server_side,
                                             deny_join_id0=deny_join_id0))

    def connection_closed(self, token: int) -> None:
        self._event(ev.ConnectionClosed(Token(token)))

    def new_address(self, token: int, addr_id: int, addr: SockAddr) -> None:
        self._event(ev.AddressAnnounced(Token(token), AddressId(addr_id), addr))

    def address_removed(self, token: int, addr_id: int) -> None:
        self._event(ev.AddressRemoved(Token(token), AddressId(addr_id)))

    def new_subflow(self, token: int, laddr: SockAddr, raddr: SockAddr,
                    backup: bool = False) -> None:
        self._event(ev.SubflowEstablished(Token(token), laddr, raddr, backup=backup))

    def subflow_closed(self, token: int, laddr: SockAddr, raddr: SockAddr,
                       backup: bool = False) -> None:
        self._event(ev.SubflowClosed(Token(token), laddr, raddr, backup=backup))

    def subflow_priority(self, token: int, laddr: SockAddr, raddr: SockAddr,
                         backup: bool) -> None:
        self._event(ev.SubflowPriority(Token(token), laddr, raddr, backup=backup))

    def listener_created(self, laddr: SockAddr) -> None:
        self._event(ev.ListenerCreated(laddr))

    def listener_closed(self, laddr: SockAddr) -> None:
        self._event(ev.ListenerClosed(laddr))

    def _event(self, event: ev.Event) -> None:
        self._check(self.dispatcher.dispatch, event)

    def _broadcast(self, event: ev.NetworkEvent) -> None:
        self._check(self.dispatcher.broadcast, event)

    # -- network events: the network view changes first, as in the daemon ---

    def new_interface(self, interface: Interface) -> None:
        self.pm.network.set(interface)
        self._broadcast(ev.InterfaceAdded(interface))

    def update_interface(self, interface: Interface) -> None:
        self.pm.network.set(interface)
        self._broadcast(ev.InterfaceUpdated(interface))

    def delete_interface(self, interface: Interface) -> None:
        self.pm.network.remove(interface.index)
        self._broadcast(ev.InterfaceRemoved(interface))

    def new_local_address(self, interface: Interface, addr: SockAddr) -> None:
        current = self.pm.network.get_interface(interface.index) or interface
        if addr not in current.addrs:
            current = dataclasses.replace(current, addrs=(*current.addrs, addr))
        self.pm.network.set(current)
        self._broadcast(ev.LocalAddressAdded(current, addr))

    def delete_local_address(self, interface: Interface, addr: SockAddr) -> None:
        current = self.pm.network.get_interface(interface.index) or interface
        current = dataclasses.replace(current,
                                      addrs=tuple(a for a in current.addrs if a != addr))
        self.pm.network.set(current)
        self._broadcast(ev.LocalAddressRemoved(current, addr))

    def link_down(self, interface: Interface) -> None:
        down = dataclasses.replace(interface, flags=interface.flags & ~IFF_RUNNING)
        self.pm.network.set(down)
        self._broadcast(ev.LinkDown(down))

    def link_up(self, interface: Interface) -> None:
        up = dataclasses.replace(interface, flags=interface.flags | IFF_RUNNING)
        self.pm.network.set(up)
        self._broadcast(ev.LinkUp(up))

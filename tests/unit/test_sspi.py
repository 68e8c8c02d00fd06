"""The bundled ``sspi`` plugin's logic, driven through the real dispatcher.

The plugin is loaded the way the daemon loads it (a private copy of
``plugins/sspi.py``); kernel events are fed to a :class:`Dispatcher` whose
``pm`` is a recording fake with a fake network monitor and the real ID
manager.  Every command the plugin sends is recorded with the future it got.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import shutil
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mptcpd import events as ev
from mptcpd import hookspecs
from mptcpd.config import PluginGroup
from mptcpd.daemon.dispatch import Dispatcher
from mptcpd.errors import KernelError, NotReady, QueueFull
from mptcpd.plugin import Priority
from mptcpd.plugins.loader import load_plugins
from mptcpd.plugins.registry import PluginRegistry
from mptcpd.pm.id_manager import IdManager
from mptcpd.pm.settings import PluginSettings
from mptcpd.types import IFF_LOOPBACK, IFF_RUNNING, IFF_UP, Interface, SockAddr
from tests.unit.test_fullmesh import Clock

ROOT = Path(__file__).resolve().parents[2]
LOGGER = "mptcpd.plugins.sspi"
READY = IFF_UP | IFF_RUNNING
T1, T2, T3 = 0x11111111, 0x22222222, 0x33333333
PORT = 5201


def sa(ip: str, port: int = 0) -> SockAddr:
    return SockAddr(ipaddress.ip_address(ip), port)


# The client's interfaces: lo, three links (as in the lab), one link without
# carrier and one with IPv6 only.
LO = Interface(1, "lo", IFF_UP | IFF_RUNNING | IFF_LOOPBACK, addrs=(sa("127.0.0.1"),))
C1 = Interface(2, "c1", READY, addrs=(sa("fe80::1"), sa("192.0.2.1"), sa("2001:db8:1::1")))
C2 = Interface(3, "c2", READY, addrs=(sa("198.51.100.1"), sa("198.51.100.11")))
C3 = Interface(4, "c3", READY, addrs=(sa("203.0.113.1"),))
C4 = Interface(5, "c4", IFF_UP, addrs=(sa("203.0.113.44"),))  # no carrier
C5 = Interface(6, "c5", READY, addrs=(sa("2001:db8:5::1"),))  # IPv6 only
INTERFACES = (LO, C1, C2, C3, C4, C5)

SERVER = sa("192.0.2.2", PORT)
INITIAL = sa("192.0.2.1", 40000)


class FakeMonitor:
    """The network monitor's query API over a fixed set of interfaces."""

    def __init__(self, interfaces: tuple[Interface, ...]) -> None:
        self._interfaces = {i.index: i for i in interfaces}

    def interfaces(self) -> list[Interface]:
        return [self._interfaces[k] for k in sorted(self._interfaces)]

    def get_interface(self, index: int) -> Interface | None:
        return self._interfaces.get(index)

    def find_interface(self, addr: SockAddr) -> Interface | None:
        for interface in self.interfaces():
            if SockAddr(addr.ip) in interface.addrs:
                return interface
        return None

    def replace(self, interface: Interface) -> None:
        self._interfaces[interface.index] = interface


class FakePM:
    """Records the commands plugins send; each returns a pending future."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.network_monitor = FakeMonitor(INTERFACES)
        self.id_manager = IdManager()
        self.calls: list[tuple[str, tuple[Any, ...], asyncio.Future[Any]]] = []
        self.ready = True
        self.settings: dict[str, str] = {}
        self.config = types.SimpleNamespace(plugin_settings=self._plugin_settings)
        self.listener_manager = None
        #: Commands refused as the daemon's full queue refuses them (the
        #: future already failed with QueueFull; recorded all the same).
        self.queue_full = False

    def _plugin_settings(self, name: str) -> PluginSettings:
        items = tuple((key, value, line) for line, (key, value)
                      in enumerate(self.settings.items(), 2))
        return PluginSettings(name, PluginGroup(name, "/test/mptcpd.conf", 1, items))

    def _record(self, name: str, *args: Any) -> asyncio.Future[Any]:
        if not self.ready:
            raise NotReady()
        future = self.loop.create_future()
        if self.queue_full:
            future.set_exception(QueueFull())
        self.calls.append((name, args, future))
        return future

    def add_addr(self, addr: SockAddr, id: int, token: int) -> asyncio.Future[Any]:
        return self._record("add_addr", addr, id, token)

    def add_addr_no_listener(self, addr: SockAddr, id: int, token: int) -> asyncio.Future[Any]:
        if not 0 < id <= 255:
            raise ValueError("address ID must be 1..255")
        return self._record("add_addr_no_listener", addr, id, token)

    def remove_addr(self, addr: SockAddr | None, id: int, token: int) -> asyncio.Future[Any]:
        return self._record("remove_addr", addr, id, token)

    def add_subflow(self, token: int, local_id: int, remote_id: int, laddr: SockAddr,
                    raddr: SockAddr, backup: bool = False) -> asyncio.Future[Any]:
        return self._record("add_subflow", token, local_id, remote_id, laddr, raddr)

    def remove_subflow(self, token: int, laddr: SockAddr,
                       raddr: SockAddr) -> asyncio.Future[Any]:
        return self._record("remove_subflow", token, laddr, raddr)

    def set_backup(self, token: int, laddr: SockAddr, raddr: SockAddr,
                   backup: bool) -> asyncio.Future[Any]:
        return self._record("set_backup", token, laddr, raddr, backup)

    # -- inspection ----------------------------------------------------------

    def take(self, name: str | None = None) -> list[tuple[Any, ...]]:
        """The recorded calls (of ``name`` only, if given), then forget all."""
        calls = [(n, *args) for n, args, _ in self.calls if name is None or n == name]
        self.calls.clear()
        return calls

    def settle(self) -> None:
        """Run the done-callbacks of resolved futures."""
        self.loop.run_until_complete(asyncio.sleep(0))


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def registry(tmp_path: Path) -> PluginRegistry:
    directory = tmp_path / "plugins"
    directory.mkdir()
    directory.chmod(0o755)
    shutil.copyfile(ROOT / "plugins" / "sspi.py", directory / "sspi.py")
    (directory / "sspi.py").chmod(0o644)
    registry = PluginRegistry()
    load_plugins(registry, str(directory), ["sspi"], entry_points=False)
    return registry


@pytest.fixture
def pm(loop: asyncio.AbstractEventLoop) -> FakePM:
    return FakePM(loop)


@pytest.fixture
def d(registry: PluginRegistry, pm: FakePM,
      caplog: pytest.LogCaptureFixture) -> Iterator[Dispatcher]:
    caplog.set_level(logging.DEBUG, LOGGER)
    registry.init_all(pm)
    yield Dispatcher(registry, pm, registry.select_default("sspi"))
    # No hook may raise: the registry would log it (as an error) and go on.
    assert not [r for r in caplog.records
                if r.name.startswith("mptcpd.plugins.registry") and r.levelno >= logging.ERROR]


def log_lines(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= level]


def open_client(d: Dispatcher, token: int = T1, laddr: SockAddr = INITIAL,
                raddr: SockAddr = SERVER, deny: bool = False,
                established: bool = True) -> None:
    d.dispatch(ev.ConnectionCreated(token, laddr, raddr, deny_join_id0=deny))
    if established:
        d.dispatch(ev.ConnectionEstablished(token, laddr, raddr, deny_join_id0=deny))


def join(d: Dispatcher, token: int, laddr: SockAddr, raddr: SockAddr) -> None:
    d.dispatch(ev.SubflowEstablished(token, laddr, raddr, backup=False))


def joins_established(d: Dispatcher, pm: FakePM, token: int = T1,
                      port: int = 50000) -> dict[str, SockAddr]:
    """Report every subflow sspi asked for as established; local IP -> laddr."""
    made = {}
    for n, (name, args, _) in enumerate(list(pm.calls)):
        if name == "add_subflow" and args[0] == token:
            laddr = args[3].with_port(port + n)
            join(d, token, laddr, args[4])
            made[str(laddr.ip)] = laddr
    pm.calls.clear()
    return made


# -- descriptor and lifecycle ------------------------------------------------------


def test_descriptor_and_lifecycle_messages(registry: PluginRegistry, pm: FakePM,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    (plugin,) = registry.plugins
    assert (plugin.name, plugin.info.priority) == ("sspi", Priority.DEFAULT)
    assert plugin.info.description
    registry.init_all(pm)
    registry.exit_all(pm)
    assert log_lines(caplog, logging.INFO) == [
        "MPTCP single-subflow-per-interface path manager initialized.",
        "MPTCP single-subflow-per-interface path manager exited.",
    ]


# -- client side: subflow creation ---------------------------------------------------


def test_client_creates_one_subflow_from_each_other_ready_interface(
        d: Dispatcher, pm: FakePM) -> None:
    open_client(d, established=False)
    assert pm.take() == []  # nothing before ESTABLISHED: the kernel would refuse
    d.dispatch(ev.ConnectionEstablished(T1, INITIAL, SERVER))
    idm = pm.id_manager
    c2, c3 = sa("198.51.100.1"), sa("203.0.113.1")
    # Not c1 (initial subflow), lo, c4 (no carrier) nor c5 (no IPv4);
    # one address per interface; remote ID 0 is the peer's initial address.
    assert pm.take() == [
        ("add_subflow", T1, idm.lookup(c2), 0, c2, SERVER),
        ("add_subflow", T1, idm.lookup(c3), 0, c3, SERVER),
    ]
    assert 0 not in (idm.lookup(c2), idm.lookup(c3))
    assert idm.lookup(c2) != idm.lookup(c3)


def test_ids_come_from_the_id_manager_and_are_shared_by_connections(
        d: Dispatcher, pm: FakePM) -> None:
    pm.id_manager.map_id(sa("198.51.100.1"), 7)
    open_client(d, T1)
    open_client(d, T2, laddr=sa("192.0.2.1", 40001))
    ids = [(args[0], args[1]) for _, args, _ in pm.calls]
    assert ids == [(T1, 7), (T1, 1), (T2, 7), (T2, 1)]


def test_no_free_id_means_no_subflow_and_never_id_0(
        d: Dispatcher, pm: FakePM, caplog: pytest.LogCaptureFixture) -> None:
    for n in range(1, 256):
        pm.id_manager.map_id(sa(f"2001:db8:ff::{n:x}"), n)
    open_client(d)
    assert pm.take() == []
    assert log_lines(caplog, logging.ERROR) == ["Unable to map addr to ID."] * 2


def test_ipv6_connection_uses_ipv6_addresses_and_skips_link_local(
        d: Dispatcher, pm: FakePM) -> None:
    server6 = sa("2001:db8:1::2", PORT)
    open_client(d, laddr=sa("2001:db8:1::1", 40000), raddr=server6)
    (call,) = pm.take()
    assert call[:2] == ("add_subflow", T1) and call[4:] == (sa("2001:db8:5::1"), server6)


def test_connection_on_an_unknown_interface_is_left_alone(
        d: Dispatcher, pm: FakePM, caplog: pytest.LogCaptureFixture) -> None:
    open_client(d, laddr=sa("198.18.0.1", 40000))  # no interface has it
    assert log_lines(caplog, logging.ERROR) == [
        "No network interface with given IP address.", "Unable to track new connection"]


# -- one subflow per interface ---------------------------------------------------------


def test_own_joins_are_kept_and_a_second_join_is_closed(
        d: Dispatcher, pm: FakePM, caplog: pytest.LogCaptureFixture) -> None:
    open_client(d)
    joins_established(d, pm)
    assert pm.take() == []  # our own subflows are not duplicates
    # Another subflow appears on c2 (its second address): closed.
    extra = sa("198.51.100.11", 41000)
    join(d, T1, extra, SERVER)
    assert pm.take() == [("remove_subflow", T1, extra, SERVER)]
    assert log_lines(caplog) == [
        "Subflow already exists on network interface (3). Closing new subflow."]
    # Its closing is expected: no error, and c2 keeps its subflow.
    d.dispatch(ev.SubflowClosed(T1, extra, SERVER, backup=False))
    assert log_lines(caplog, logging.ERROR) == []
    join(d, T1, sa("198.51.100.1", 41001), sa("192.0.2.2", 6000))
    assert [c[0] for c in pm.take()] == ["remove_subflow"]


def test_a_join_on_the_initial_interface_is_closed(d: Dispatcher, pm: FakePM) -> None:
    open_client(d)
    pm.take()
    second = sa("192.0.2.1", 41000)
    join(d, T1, second, sa("198.51.100.2", PORT))
    assert pm.take() == [("remove_subflow", T1, second, sa("198.51.100.2", PORT))]


def test_server_side_joins_are_limited_per_interface_too(d: Dispatcher, pm: FakePM,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    client = sa("192.0.2.2", 33000)
    d.dispatch(ev.ConnectionCreated(T1, sa("192.0.2.1", PORT), client, server_side=True))
    join(d, T1, sa("198.51.100.1", PORT), sa("198.51.100.2", 33001))
    join(d, T1, sa("198.51.100.11", PORT), sa("198.51.100.2", 33002))
    assert pm.take() == [("remove_subflow", T1, sa("198.51.100.11", PORT),
                          sa("198.51.100.2", 33002))]


# -- deny_join_id0 ---------------------------------------------------------------------


@pytest.mark.parametrize("at", ["created", "established"])
def test_deny_join_id0_waits_for_announced_addresses(d: Dispatcher, pm: FakePM, at: str) -> None:
    d.dispatch(ev.ConnectionCreated(T1, INITIAL, SERVER, deny_join_id0=at == "created"))
    d.dispatch(ev.ConnectionEstablished(T1, INITIAL, SERVER,
                                        deny_join_id0=at == "established"))
    assert pm.take() == []  # never to the initial address and port
    # The peer announces its initial address again (same port): still refused.
    d.dispatch(ev.AddressAnnounced(T1, 4, SERVER))
    assert pm.take() == []
    # It announces another address without a port: joins go there, at the
    # connection's port, with the peer's ID.
    d.dispatch(ev.AddressAnnounced(T1, 5, sa("198.51.100.2")))
    target = sa("198.51.100.2", PORT)
    assert [(c[0], c[3], c[5]) for c in pm.take()] == [
        ("add_subflow", 5, target), ("add_subflow", 5, target)]


def test_subflows_spread_over_the_peer_addresses(d: Dispatcher, pm: FakePM) -> None:
    pm.network_monitor.replace(Interface(7, "c6", READY, addrs=(sa("203.0.113.66"),)))
    open_client(d, established=False)
    d.dispatch(ev.AddressAnnounced(T1, 5, sa("198.51.100.2", PORT)))
    d.dispatch(ev.ConnectionEstablished(T1, INITIAL, SERVER))
    # The least used target first (the initial subflow uses SERVER).
    assert [(c[4], c[3], c[5]) for c in pm.take()] == [
        (sa("198.51.100.1"), 5, sa("198.51.100.2", PORT)),
        (sa("203.0.113.1"), 5, sa("198.51.100.2", PORT)),  # tie: the first
        (sa("203.0.113.66"), 0, SERVER),
    ]


# -- per-connection state and cleanup ---------------------------------------------------


def test_closing_one_connection_leaves_the_others_tracked(
        d: Dispatcher, pm: FakePM, caplog: pytest.LogCaptureFixture) -> None:
    open_client(d, T1)
    a = joins_established(d, pm, T1, 50000)
    open_client(d, T2, laddr=sa("192.0.2.1", 40001))
    b = joins_established(d, pm, T2, 51000)
    d.dispatch(ev.SubflowClosed(T1, a["198.51.100.1"], SERVER, backup=False))
    d.dispatch(ev.ConnectionClosed(T1))
    assert pm.take() == []
    # T2 still knows its subflows: a duplicate on c2 is closed, the closing of
    # its own c3 subflow is known (no error) and frees c3 for a new one.
    dup = sa("198.51.100.11", 52000)
    join(d, T2, dup, SERVER)
    assert pm.take() == [("remove_subflow", T2, dup, SERVER)]
    d.dispatch(ev.SubflowClosed(T2, b["203.0.113.1"], SERVER, backup=False))
    assert log_lines(caplog, logging.ERROR) == []
    assert pm.take() == []  # c3 -> SERVER was tried already: no loop


def test_untracked_events_log_the_c_texts(registry: PluginRegistry, pm: FakePM,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    registry.init_all(pm)
    (plugin,) = registry.plugins
    registry.call(plugin, hookspecs.connection_closed, token=T3, pm=pm)
    d = Dispatcher(registry, pm, plugin)
    open_client(d, established=False)
    d.dispatch(ev.SubflowClosed(T1, sa("198.51.100.1", 1), SERVER, backup=False))
    d.dispatch(ev.SubflowClosed(T1, sa("198.18.0.1", 1), SERVER, backup=False))
    assert log_lines(caplog, logging.ERROR) == [
        "Untracked connection closed.",
        "Closed subflow was not tracked on network interface 3.",
        "No tracked subflows on network interface.",
    ]


def test_a_closed_subflow_frees_its_interface_for_another_target(
        d: Dispatcher, pm: FakePM) -> None:
    open_client(d)
    made = joins_established(d, pm)
    d.dispatch(ev.AddressAnnounced(T1, 5, sa("198.51.100.2", PORT)))
    assert pm.take() == []  # every interface has its subflow
    d.dispatch(ev.SubflowClosed(T1, made["198.51.100.1"], SERVER, backup=False))
    (call,) = pm.take()
    assert call[4:] == (sa("198.51.100.1"), sa("198.51.100.2", PORT))
    # That one fails to connect: no untried target is left for c2.
    d.dispatch(ev.SubflowClosed(T1, sa("198.51.100.1", 50007), sa("198.51.100.2", PORT),
                                backup=False))
    assert pm.take() == []


def test_a_refused_subflow_request_frees_the_interface(d: Dispatcher, pm: FakePM) -> None:
    open_client(d)
    futures = [f for name, _, f in pm.calls if name == "add_subflow"]
    pm.calls.clear()
    futures[0].set_exception(KernelError("add_subflow", 22, "invalid"))
    pm.settle()
    # c2 is free again; a newly announced address is tried from it only.
    d.dispatch(ev.AddressAnnounced(T1, 5, sa("198.51.100.2", PORT)))
    assert [c[4] for c in pm.take()] == [sa("198.51.100.1")]


def test_not_ready_is_survived(d: Dispatcher, pm: FakePM,
                               caplog: pytest.LogCaptureFixture) -> None:
    pm.ready = False
    open_client(d)
    assert pm.take() == []
    assert len(log_lines(caplog)) == 2
    pm.ready = True
    d.dispatch(ev.AddressAnnounced(T1, 5, sa("198.51.100.2", PORT)))
    assert len(pm.take("add_subflow")) == 2


def test_address_removed_forgets_subflows_to_it(d: Dispatcher, pm: FakePM,
                                               caplog: pytest.LogCaptureFixture) -> None:
    other = sa("198.51.100.2", PORT)
    open_client(d, deny=True)
    d.dispatch(ev.AddressAnnounced(T1, 5, other))
    made = joins_established(d, pm)
    d.dispatch(ev.AddressAnnounced(T1, 6, sa("203.0.113.2", PORT)))
    assert pm.take() == []
    d.dispatch(ev.AddressRemoved(T1, 5))
    # Both interfaces lost their subflow; the remaining address is used.
    assert [c[4:] for c in pm.take()] == [
        (sa("198.51.100.1"), sa("203.0.113.2", PORT)),
        (sa("203.0.113.1"), sa("203.0.113.2", PORT)),
    ]
    # The kernel's SUB_CLOSED for the old subflows is expected.
    for laddr in made.values():
        d.dispatch(ev.SubflowClosed(T1, laddr, other, backup=False))
    assert log_lines(caplog, logging.ERROR) == []


# -- server side ------------------------------------------------------------------------


def sspi_module(registry: PluginRegistry) -> Any:
    plugin = registry.get("sspi")
    assert plugin is not None
    return plugin.module


def fire(timer: asyncio.TimerHandle) -> None:
    """Run a timer's callback now instead of at its time."""
    callback, args = timer._callback, timer._args
    timer.cancel()
    callback(*args)


def announce_all(pm: FakePM, sspi: Any, bound: int = 10) -> None:
    """Let the paced announcements go: answer each one and fire the timer that
    lets the next one leave (at most ``bound`` of them)."""
    for _ in range(bound):
        pending = [f for n, _, f in pm.calls if n == "add_addr_no_listener" and not f.done()]
        if not pending:
            return
        for future in pending:
            future.set_result(None)
        pm.settle()
        timers = [c.announce_timer for c in sspi._sspi.connections.values()
                  if c.announce_timer is not None]
        for timer in timers:
            fire(timer)
    raise AssertionError("announcements never ended")


def test_server_announcements_leave_one_at_a_time(
        d: Dispatcher, pm: FakePM, registry: PluginRegistry, loop: asyncio.AbstractEventLoop
) -> None:
    """The next announcement of a connection waits for the kernel's answer to
    the previous one and then ANNOUNCE_INTERVAL (a peer with the in-kernel PM
    drops an ADD_ADDR that comes while it handles the previous one)."""
    sspi = sspi_module(registry)
    laddr, raddr = sa("192.0.2.1", PORT), sa("192.0.2.2", 33000)
    d.dispatch(ev.ConnectionCreated(T1, laddr, raddr, server_side=True))
    d.dispatch(ev.ConnectionEstablished(T1, laddr, raddr, server_side=True))
    c2, c3 = sa("198.51.100.1"), sa("203.0.113.1")
    assert [c[1] for c in pm.calls] == [(c2, pm.id_manager.lookup(c2), T1)]
    # A new local address while the first is in flight: nothing more yet.
    d.broadcast(ev.LocalAddressAdded(C3, c3))
    assert len(pm.calls) == 1
    # The kernel answers: the next one is due ANNOUNCE_INTERVAL later.
    pm.calls[0][2].set_result(None)
    pm.settle()
    (conn,) = sspi._sspi.connections.values()
    assert conn.announce_timer is not None
    assert conn.announce_timer.when() - loop.time() == pytest.approx(
        sspi.ANNOUNCE_INTERVAL, abs=0.01)
    assert len(pm.calls) == 1
    fire(conn.announce_timer)
    assert [c[1] for c in pm.calls[1:]] == [(c3, pm.id_manager.lookup(c3), T1)]
    # Refused or not, the last one schedules nothing: no timer while there
    # is nothing more to announce.
    pm.calls[1][2].set_exception(OSError(22, "Invalid argument"))
    pm.settle()
    assert conn.announce_timer is None and not conn.announcing
    # An address that comes within the interval waits out its rest; closing
    # the connection cancels that wait.
    c6 = Interface(7, "c6", READY, addrs=(sa("203.0.113.66"),))
    pm.network_monitor.replace(c6)
    d.broadcast(ev.LocalAddressAdded(c6, sa("203.0.113.66")))
    assert len(pm.calls) == 2
    timer = conn.announce_timer
    assert timer is not None and 0 < timer.when() - loop.time() <= sspi.ANNOUNCE_INTERVAL
    d.dispatch(ev.ConnectionClosed(T1))
    assert timer.cancelled()


def test_server_announces_its_other_addresses_and_creates_nothing(
        d: Dispatcher, pm: FakePM, registry: PluginRegistry) -> None:
    # A dual-stack listener reports IPv4 connections as IPv4-mapped IPv6.
    laddr, raddr = sa("::ffff:192.0.2.1", PORT), sa("::ffff:192.0.2.2", 33000)
    d.dispatch(ev.ConnectionCreated(T1, laddr, raddr, server_side=True))
    assert pm.take() == []
    d.dispatch(ev.ConnectionEstablished(T1, laddr, raddr, server_side=True))
    idm = pm.id_manager
    c2, c3 = sa("198.51.100.1"), sa("203.0.113.1")
    announce_all(pm, sspi_module(registry))
    assert pm.take() == [
        ("add_addr_no_listener", c2, idm.lookup(c2), T1),
        ("add_addr_no_listener", c3, idm.lookup(c3), T1),
    ]
    # The client joins c2's address: kept.  A second join there: closed,
    # with the kernel's own (mapped) addresses.
    join(d, T1, sa("::ffff:198.51.100.1", PORT), sa("::ffff:198.51.100.2", 33001))
    assert pm.take() == []
    join(d, T1, sa("::ffff:198.51.100.1", PORT), sa("::ffff:198.51.100.2", 33002))
    assert pm.take() == [("remove_subflow", T1, sa("::ffff:198.51.100.1", PORT),
                          sa("::ffff:198.51.100.2", 33002))]
    # A peer's announcement never makes the server create subflows.
    d.dispatch(ev.AddressAnnounced(T1, 1, sa("198.51.100.2")))
    assert pm.take() == []


# -- network events ---------------------------------------------------------------------


def test_link_down_closes_the_joins_there_and_link_up_recreates_them(
        d: Dispatcher, pm: FakePM, caplog: pytest.LogCaptureFixture) -> None:
    open_client(d)
    made = joins_established(d, pm)
    down = Interface(C2.index, C2.name, IFF_UP, addrs=C2.addrs)
    pm.network_monitor.replace(down)
    d.broadcast(ev.LinkDown(down))
    assert pm.take() == [("remove_subflow", T1, made["198.51.100.1"], SERVER)]
    d.dispatch(ev.SubflowClosed(T1, made["198.51.100.1"], SERVER, backup=False))
    pm.network_monitor.replace(C2)
    d.broadcast(ev.LinkUp(C2))
    assert [c[4:] for c in pm.take()] == [(sa("198.51.100.1"), SERVER)]
    assert log_lines(caplog, logging.ERROR) == []


def test_link_down_keeps_the_initial_subflow(d: Dispatcher, pm: FakePM) -> None:
    open_client(d)
    joins_established(d, pm)
    d.broadcast(ev.LinkDown(Interface(C1.index, C1.name, IFF_UP, addrs=C1.addrs)))
    assert pm.take() == []


def test_delete_local_address_closes_joins_and_withdraws_announcements(
        d: Dispatcher, pm: FakePM, registry: PluginRegistry) -> None:
    open_client(d, T1)
    made = joins_established(d, pm, T1)
    server_laddr, client = sa("192.0.2.1", PORT), sa("192.0.2.2", 33000)
    d.dispatch(ev.ConnectionCreated(T2, server_laddr, client, server_side=True))
    d.dispatch(ev.ConnectionEstablished(T2, server_laddr, client, server_side=True))
    announce_all(pm, sspi_module(registry))
    c3_id = pm.id_manager.lookup(sa("203.0.113.1"))
    pm.calls.clear()
    gone = Interface(C3.index, C3.name, READY, addrs=())  # as the monitor shows it then
    pm.network_monitor.replace(gone)
    d.broadcast(ev.LocalAddressRemoved(gone, sa("203.0.113.1")))
    assert pm.take() == [
        ("remove_subflow", T1, made["203.0.113.1"], SERVER),
        ("remove_addr", None, c3_id, T2),
    ]


def test_an_address_that_goes_and_comes_back_gets_its_join_again(
        d: Dispatcher, pm: FakePM, caplog: pytest.LogCaptureFixture) -> None:
    """Its join was closed because the address went, not refused: the
    interface is tried afresh when it has a usable address again (it used
    to count as tried, and the connection stayed without it for good)."""
    open_client(d)
    made = joins_established(d, pm)
    addr = sa("198.51.100.1")
    gone = Interface(C2.index, C2.name, READY, addrs=())
    pm.network_monitor.replace(gone)
    d.broadcast(ev.LocalAddressRemoved(gone, addr))
    assert pm.take() == [("remove_subflow", T1, made["198.51.100.1"], SERVER)]
    d.dispatch(ev.SubflowClosed(T1, made["198.51.100.1"], SERVER, backup=False))
    assert pm.take() == []  # the interface has no usable address now
    pm.network_monitor.replace(C2)
    d.broadcast(ev.LocalAddressAdded(C2, addr))
    assert [c[4:] for c in pm.take()] == [(addr, SERVER)]
    assert log_lines(caplog, logging.ERROR) == []


def test_a_join_from_an_address_the_host_no_longer_has_is_closed(
        d: Dispatcher, pm: FakePM, caplog: pytest.LogCaptureFixture) -> None:
    """A join given up while pending when its address went, that the kernel
    completes all the same, is reported from an address no interface has:
    C logs it (kept) and leaves it untracked for good; it is closed."""
    open_client(d)
    joins_established(d, pm)
    gone = Interface(C2.index, C2.name, READY, addrs=())
    pm.network_monitor.replace(gone)
    late = sa("198.51.100.1", 41999)
    d.dispatch(ev.SubflowEstablished(T1, late, SERVER, backup=False))
    assert pm.take() == [("remove_subflow", T1, late, SERVER)]
    assert log_lines(caplog, logging.ERROR) == ["No network interface with given IP address.",
                                                "Unable to track new subflow."]
    d.dispatch(ev.SubflowClosed(T1, late, SERVER, backup=False))  # its close: expected
    assert pm.take() == []


def test_new_local_address_fills_an_interface_that_had_none(
        d: Dispatcher, pm: FakePM) -> None:
    bare = Interface(7, "c6", READY)
    pm.network_monitor.replace(bare)
    open_client(d)
    joins_established(d, pm)
    addr = sa("203.0.113.66")
    pm.network_monitor.replace(Interface(7, "c6", READY, addrs=(addr,)))
    d.broadcast(ev.LocalAddressAdded(bare, addr))
    assert [c[4:] for c in pm.take()] == [(addr, SERVER)]


def test_ids_of_addresses_that_go_are_freed(d: Dispatcher, pm: FakePM) -> None:
    """300 temporary addresses on an interface, each used by a connection
    and then removed: the IDs never run out (C's sspi never frees one)."""
    for i in range(300):
        addr = sa(f"2001:db8:7::{i + 1:x}")
        iface = Interface(8, "c7", READY, addrs=(addr,))
        pm.network_monitor.replace(iface)
        token = 0x7000 + i
        laddr, raddr = sa("2001:db8:1::1", 40000 + i), sa("2001:db8:1::2", PORT)
        d.dispatch(ev.ConnectionCreated(token, laddr, raddr))
        d.dispatch(ev.ConnectionEstablished(token, laddr, raddr))
        made = [c for c in pm.take("add_subflow") if c[4] == addr]
        assert len(made) == 1 and 0 < made[0][2] <= 255, i
        d.dispatch(ev.ConnectionClosed(token))
        pm.network_monitor.replace(Interface(8, "c7", READY))
        d.broadcast(ev.LocalAddressRemoved(iface, addr))
    assert pm.id_manager.lookup(sa("2001:db8:7::1")) == 0


def test_a_foreign_join_while_ours_is_pending(d: Dispatcher, pm: FakePM,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """While sspi's own join on c2 is pending, another subflow on c2
    appears.  To another remote address, or from c2's other address, it is
    not ours: closed.  With our
    addresses it cannot be told from ours (the kernel's answer to the
    create carries no port): taken as ours, and the second one of the same
    pair that follows is the duplicate that is closed.  Either way c2 ends
    with one subflow."""
    open_client(d)
    calls = pm.take()
    c2 = sa("198.51.100.1")
    assert ("add_subflow", T1, pm.id_manager.lookup(c2), 0, c2, SERVER) in calls
    other = sa("198.51.100.2", PORT)
    foreign = sa("198.51.100.1", 42000)
    join(d, T1, foreign, other)
    assert pm.take() == [("remove_subflow", T1, foreign, other)]
    other_ip = sa("198.51.100.11", 42003)  # c2's other address
    join(d, T1, other_ip, SERVER)
    assert pm.take() == [("remove_subflow", T1, other_ip, SERVER)]
    same_pair = sa("198.51.100.1", 42001)
    join(d, T1, same_pair, SERVER)
    assert pm.take() == []  # taken as ours
    ours = sa("198.51.100.1", 42002)
    join(d, T1, ours, SERVER)
    assert pm.take() == [("remove_subflow", T1, ours, SERVER)]
    assert log_lines(caplog) == [
        "Subflow already exists on network interface (3). Closing new subflow."] * 3


# -- retries (client side) ------------------------------------------------------------


def c2_subflow(pm: FakePM) -> list[tuple[Any, ...]]:
    return [c for c in pm.take("add_subflow") if str(c[4].ip) == "198.51.100.1"]


def refuse_all(pm: FakePM, error: BaseException | None = None) -> None:
    for _, _, future in pm.calls:
        if not future.done():
            future.set_exception(error or KernelError("add_subflow", 22))
    pm.settle()


def test_a_refused_subflow_is_tried_again_with_backoff_then_given_up(
        registry: PluginRegistry, pm: FakePM, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    clock = Clock(pm.loop)
    pm.settings = {"retry-base": "100ms", "retry-cap": "300ms", "retry-attempts": "3"}
    registry.init_all(pm)
    d = Dispatcher(registry, pm, registry.select_default("sspi"))
    open_client(d)
    delays = []
    for _ in range(4):  # the first try and three retries
        calls = pm.calls[:]
        assert [c for n, c, _ in calls if n == "add_subflow" and str(c[3].ip) == "198.51.100.1"]
        refuse_all(pm)
        pm.calls.clear()
        delays.append(clock.timers())
        clock.advance(delays[-1][0] if delays[-1] else 10)
    assert delays == [[0.1], [0.2], [0.3], []]  # doubled, capped, then none
    assert c2_subflow(pm) == []
    assert "giving up on a subflow on interface 3 to 192.0.2.2:5201 after 4 attempts" \
        in caplog.text
    # Its carrier coming back starts afresh, at once.
    d.broadcast(ev.LinkUp(C2))
    assert len(c2_subflow(pm)) == 1


def test_a_subflow_the_full_queue_refused_is_asked_again_and_never_given_up(
        registry: PluginRegistry, pm: FakePM, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A creation the daemon's full command queue refused never reached the
    kernel: asked for again after the backoff (times 1 to 1.5 at random;
    1.5 here), as often as it takes, without counting as an attempt."""
    caplog.set_level(logging.INFO, LOGGER)
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    clock = Clock(pm.loop)
    pm.settings = {"retry-base": "100ms", "retry-cap": "300ms", "retry-attempts": "1"}
    pm.network_monitor.replace(Interface(4, "c3", IFF_UP, addrs=(sa("203.0.113.1"),)))
    registry.init_all(pm)
    d = Dispatcher(registry, pm, registry.select_default("sspi"))
    open_client(d)
    delays = []
    for _ in range(5):  # more than retry-attempts allows failures
        assert [str(c[3].ip) for n, c, _ in pm.calls] == ["198.51.100.1"]
        refuse_all(pm, QueueFull())
        pm.calls.clear()
        (delay,) = clock.timers()
        delays.append(delay)
        clock.advance(delay)
    assert delays == [0.15, 0.3, 0.45, 0.45, 0.45]  # doubled, capped, never given up
    assert "giving up" not in caplog.text
    # Sent at last, then refused by the kernel: a failure, the first one.
    assert [str(c[3].ip) for n, c, _ in pm.calls] == ["198.51.100.1"]
    refuse_all(pm)
    pm.calls.clear()
    assert clock.timers() == [0.1]
    clock.advance(0.1)
    assert [str(c[3].ip) for n, c, _ in pm.calls] == ["198.51.100.1"]
    refuse_all(pm)
    assert clock.timers() == []
    assert "giving up on a subflow on interface 3 to 192.0.2.2:5201 after 2 attempts" \
        in caplog.text


def test_an_announcement_the_full_queue_refused_is_made_again(
        d: Dispatcher, pm: FakePM, registry: PluginRegistry, loop: asyncio.AbstractEventLoop,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's announcement that the daemon's full queue refused is made
    again after the backoff (the kernel answered nothing: nothing was
    announced), and the next address waits behind it."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    sspi = sspi_module(registry)
    laddr, raddr = sa("192.0.2.1", PORT), sa("192.0.2.2", 33000)
    d.dispatch(ev.ConnectionCreated(T1, laddr, raddr, server_side=True))
    d.dispatch(ev.ConnectionEstablished(T1, laddr, raddr, server_side=True))
    c2 = sa("198.51.100.1")
    (call,) = pm.calls
    assert call[1] == (c2, pm.id_manager.lookup(c2), T1)
    call[2].set_exception(QueueFull())
    pm.settle()
    (conn,) = sspi._sspi.connections.values()
    assert c2 not in conn.announced.values()
    assert conn.announce_timer is not None
    assert conn.announce_timer.when() - loop.time() == pytest.approx(1.5, abs=0.01)
    fire(conn.announce_timer)
    assert [c[1] for c in pm.calls[1:]] == [(c2, pm.id_manager.lookup(c2), T1)]
    pm.calls[1][2].set_result(None)
    pm.settle()
    assert conn.announce_refusals == 0
    assert conn.announce_timer.when() - loop.time() == pytest.approx(
        sspi.ANNOUNCE_INTERVAL, abs=0.01)


def test_a_close_the_full_queue_refused_is_sent_again_until_the_subflow_goes(
        registry: PluginRegistry, pm: FakePM, monkeypatch: pytest.MonkeyPatch) -> None:
    """sspi closing a duplicate join: a close the daemon's full queue refused
    is sent again after the backoff (retry-base 1 s, times 1.5 here) until
    the join's SUB_CLOSED says it went."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    clock = Clock(pm.loop)
    registry.init_all(pm)
    d = Dispatcher(registry, pm, registry.select_default("sspi"))
    open_client(d)
    joins_established(d, pm)
    duplicate = sa("198.51.100.1", 45000)
    pm.queue_full = True
    join(d, T1, duplicate, SERVER)  # a second join on c2: closed
    assert [c[:2] for c in pm.calls] == [("remove_subflow", (T1, duplicate, SERVER))]
    pm.calls.clear()
    assert clock.timers() == [1.5]
    clock.advance(1.5)
    assert [c[:2] for c in pm.calls] == [("remove_subflow", (T1, duplicate, SERVER))]
    pm.calls.clear()
    assert clock.timers() == [3.0]
    d.dispatch(ev.SubflowClosed(T1, duplicate, SERVER, backup=False))  # gone all the same
    clock.advance(3.0)
    assert pm.calls == [] and clock.timers() == []
    # Taken at once: no timer.
    pm.queue_full = False
    join(d, T1, sa("198.51.100.1", 45001), SERVER)
    assert len(pm.calls) == 1 and clock.timers() == []


def test_a_join_that_closes_unasked_is_tried_again_and_the_timer_goes_with_the_connection(
        d: Dispatcher, pm: FakePM) -> None:
    clock = Clock(pm.loop)
    open_client(d)
    made = joins_established(d, pm)
    # c2's join closes (the peer reset it): tried again after the default 1 s.
    d.dispatch(ev.SubflowClosed(T1, made["198.51.100.1"], SERVER, backup=False))
    assert c2_subflow(pm) == [] and clock.timers() == [1.0]
    clock.advance(1.0)
    (again,) = c2_subflow(pm)
    assert again[4:] == (sa("198.51.100.1"), SERVER)
    # It fails to establish (closed before established): two seconds then.
    d.dispatch(ev.SubflowClosed(T1, sa("198.51.100.1", 50100), SERVER, backup=False))
    assert clock.timers() == [2.0]
    d.dispatch(ev.ConnectionClosed(T1))
    assert clock.timers() == []
    clock.advance(5)
    assert pm.take() == []


def test_a_join_that_lived_long_starts_its_backoff_afresh(d: Dispatcher, pm: FakePM) -> None:
    clock = Clock(pm.loop)
    open_client(d)
    made = joins_established(d, pm)
    d.dispatch(ev.SubflowClosed(T1, made["198.51.100.1"], SERVER, backup=False))
    clock.advance(1.0)
    pm.calls[-1][2].set_result(None)
    d.dispatch(ev.SubflowEstablished(T1, sa("198.51.100.1", 50200), SERVER, backup=False))
    clock.advance(30.0)  # the cap: it lived long
    d.dispatch(ev.SubflowClosed(T1, sa("198.51.100.1", 50200), SERVER, backup=False))
    assert clock.timers() == [1.0]  # the first failure again, not the second


def test_the_server_side_and_subflows_sspi_closes_are_not_retried(
        d: Dispatcher, pm: FakePM) -> None:
    clock = Clock(pm.loop)
    open_client(d)
    joins_established(d, pm)
    extra = sa("198.51.100.11", 41000)
    join(d, T1, extra, SERVER)  # a duplicate, which sspi closes
    d.dispatch(ev.SubflowClosed(T1, extra, SERVER, backup=False))
    assert clock.timers() == []
    client = sa("192.0.2.2", 33000)
    d.dispatch(ev.ConnectionCreated(T2, sa("192.0.2.1", PORT), client, server_side=True))
    d.dispatch(ev.ConnectionEstablished(T2, sa("192.0.2.1", PORT), client, server_side=True))
    join(d, T2, sa("198.51.100.1", PORT), sa("198.51.100.2", 34000))
    d.dispatch(ev.SubflowClosed(T2, sa("198.51.100.1", PORT), sa("198.51.100.2", 34000),
                                backup=False))
    assert [t for t in clock.timers() if t >= 0.5] == []  # only announcement pacing, if any


def test_bad_retry_settings_are_errors_with_their_place_and_defaults_apply(
        registry: PluginRegistry, pm: FakePM, caplog: pytest.LogCaptureFixture) -> None:
    pm.settings = {"retry-attempts": "lots", "retry-bogus": "1"}
    registry.init_all(pm)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any("retry-attempts=lots" in m and "using 6" in m for m in messages), messages
    assert any("retry-bogus" in m for m in messages), messages

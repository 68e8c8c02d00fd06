"""The network monitor (C: ``lib/network_monitor.c``).

:class:`NetworkMonitor` keeps the interfaces of the daemon's namespace and
their IPv4/IPv6 addresses, and tells its subscribers (an object with some of
the :class:`NetworkMonitorOps` methods; plugins through the daemon's bridge)
what changed.  The kernel side is :class:`mptcpd.netlink.rtnl_monitor.RtnlMonitor`;
the state machine here is fed plain records, so it can be driven by a test.

Semantics are mptcpd's, with these deliberate differences:

* **Carrier events** (users' mptcpd #334, #282, #263).  A tracked interface
  that loses ``IFF_RUNNING`` (carrier, dormant) but stays administratively up
  stays tracked with its addresses, and subscribers get ``link_down``; when
  it runs again they get ``link_up``.  A path manager withdraws the
  interface's endpoints on ``link_down`` and restores them on ``link_up``.
  C reports carrier loss as ``delete_interface`` and forgets the addresses,
  so endpoints outlive a pulled cable and nothing can restore them later.
  An interface that is administratively up but has no carrier yet is kept
  (silently) too, so the addresses configured before the carrier comes are
  recorded; when it first becomes ready subscribers get ``new_interface``
  and then ``new_local_address`` for those addresses.  Administrative down
  and removal still give ``delete_interface`` with the last state, as in C.
  ``carrier_events=False`` restores C's behaviour exactly.
* **check_route waits like a DHCP client needs.**  The first five lookups
  follow C's schedule (at once, then after 1, 4, 8 and 16 ms); after that the
  check does not give up but waits for route changes in the namespace
  (``RTM_NEWROUTE``) and looks again after each one, until a total deadline
  (``route_wait_timeout``, 60 s by default; 0 gives C's give-up-after-30-ms).
  It never polls.
* A pending route check whose address (or interface) is deleted meanwhile is
  cancelled, and a check never notifies an address that is not recorded any
  more (C could send ``new_local_address`` after ``delete_local_address``).
* ``IFA_LOCAL`` is preferred over ``IFA_ADDRESS`` (point-to-point links,
  mptcpd #231); see the rtnl monitor.
* Interface names are kept whole (C leaves a 15-character name empty).
* Subscribers are protected from each other: an exception in one is logged
  and the others are still called.
* :meth:`NetworkMonitor.replay` hands the current state to a subscriber that
  joined late (the daemon calls it once the plugins are loaded, which fixes
  the C daemon's startup race deterministically).

Kept from C: removing an interface sends no
``delete_local_address`` for its addresses; an interface that comes back
after an administrative down does not get its remaining addresses re-read;
renames are not tracked (the first name stays).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Protocol, runtime_checkable

from mptcpd.netlink.rtnl_monitor import (
    AddressMessage,
    LinkMessage,
    Resync,
    RouteLookup,
    RouteMessage,
    RtnlEvent,
    RtnlMonitor,
    RtnlMonitorError,
)
from mptcpd.types import (
    IFF_LOOPBACK,
    IFF_RUNNING,
    IFF_UP,
    Interface,
    NotifyFlags,
    SockAddr,
)

log = logging.getLogger(__name__)

#: ``RT_SCOPE_*`` values the skip flags look at.
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254

#: C's check_route retry delays, in seconds: 2**n ms for n = 0, 2, 3, 4.
ROUTE_CHECK_DELAYS: tuple[float, ...] = (0.001, 0.004, 0.008, 0.016)
#: How long a route check keeps waiting for route changes, in seconds.
ROUTE_WAIT_TIMEOUT = 60.0

RouteLookupFn = Callable[[int, int], Awaitable[RouteLookup]]

#: The subscriber methods, in the order they are documented.
OPS = (
    "new_interface",
    "update_interface",
    "delete_interface",
    "new_local_address",
    "delete_local_address",
    "link_down",
    "link_up",
)


@runtime_checkable
class NetworkMonitorOps(Protocol):
    """What a network-monitor subscriber may implement (all optional).

    A subscriber implements any subset of these methods; a missing one is
    skipped.  They are called synchronously, in registration order, and must
    not block.  ``interface`` is a snapshot (:class:`~mptcpd.types.Interface`)
    taken when the event happened.
    """

    def new_interface(self, interface: Interface) -> None:
        """An interface became ready (``IFF_UP`` and ``IFF_RUNNING``)."""

    def update_interface(self, interface: Interface) -> None:
        """A link message arrived for a tracked interface (MTU, flags, ...)."""

    def delete_interface(self, interface: Interface) -> None:
        """An interface went administratively down or was removed.

        ``interface`` is its last recorded state, addresses included; no
        ``delete_local_address`` follows for them (as in mptcpd).
        """

    def new_local_address(self, interface: Interface, address: SockAddr) -> None:
        """A local address appeared (after the route check with ``check_route``)."""

    def delete_local_address(self, interface: Interface, address: SockAddr) -> None:
        """A recorded local address was removed."""

    def link_down(self, interface: Interface) -> None:
        """A tracked interface lost ``IFF_RUNNING`` (no carrier) but is still
        administratively up; its addresses stay recorded (``interface.addrs``).
        New in the Python port."""

    def link_up(self, interface: Interface) -> None:
        """A tracked interface that had reported ``link_down`` runs again.
        New in the Python port."""


class AddressState(enum.Enum):
    """Where a recorded address stands with respect to notification."""

    SILENT = "silent"  #: startup dump without ``existing``: never announced
    DEFERRED = "deferred"  #: waits for its interface's first ``new_interface``
    PENDING = "pending"  #: route check running
    ANNOUNCED = "announced"  #: ``new_local_address`` sent
    ABANDONED = "abandoned"  #: route check gave up


_arrival = itertools.count()


@dataclasses.dataclass(eq=False)
class _Address:
    addr: SockAddr
    scope: int
    state: AddressState
    check: asyncio.Task[None] | None = None
    wake: asyncio.Event | None = None
    #: Order in which the kernel reported the address, across interfaces.
    seq: int = dataclasses.field(default_factory=lambda: next(_arrival))


@dataclasses.dataclass(eq=False)
class _Interface:
    index: int
    name: str
    flags: int
    type: int
    operstate: str
    carrier: bool | None
    visible: bool  #: subscribers know it (startup dump or new_interface)
    #: Change it only through :meth:`add`, :meth:`remove` and :meth:`update`:
    #: they drop the cached snapshot.
    addrs: list[_Address] = dataclasses.field(default_factory=list)
    _snapshot: Interface | None = None

    def snapshot(self) -> Interface:
        """The interface as plugins see it (immutable; cached until it changes:
        path managers ask for it on every connection)."""
        snap = self._snapshot
        if snap is None:
            snap = self._snapshot = Interface(
                index=self.index,
                name=self.name,
                flags=self.flags,
                type=self.type,
                operstate=self.operstate,
                carrier=self.carrier,
                addrs=tuple(a.addr for a in self.addrs),
            )
        return snap

    def add(self, entry: _Address) -> None:
        self.addrs.append(entry)
        self._snapshot = None

    def remove(self, entry: _Address) -> None:
        self.addrs.remove(entry)
        self._snapshot = None

    def find(self, addr: SockAddr) -> _Address | None:
        for entry in self.addrs:
            if entry.addr == addr:
                return entry
        return None

    def update(self, msg: LinkMessage) -> None:
        # As in mptcpd the name is not updated (renames are not tracked).
        self.flags = msg.flags
        self.type = msg.type
        self.operstate = msg.operstate
        self.carrier = msg.carrier
        self._snapshot = None

    @property
    def running(self) -> bool:
        return bool(self.flags & IFF_RUNNING)


class RtnlSource(Protocol):
    """What :meth:`NetworkMonitor.start` needs from the kernel side
    (:class:`~mptcpd.netlink.rtnl_monitor.RtnlMonitor` or a test double)."""

    async def open(self) -> None: ...
    async def dump_links(self) -> list[LinkMessage]: ...
    async def dump_addresses(self) -> list[AddressMessage]: ...
    def events(self) -> AsyncIterator[RtnlEvent]: ...
    async def lookup_default_route(self, family: int, ifindex: int) -> RouteLookup: ...
    def close(self) -> None: ...


class NetworkMonitor:
    """Interfaces and local addresses of one network namespace, and their changes.

    :param notify_flags: ``existing``, ``skip_link_local``, ``skip_loopback``,
        ``check_route`` (``--notify-flags``).
    :param route_lookup: ``async (family, ifindex) -> RouteLookup`` used by
        ``check_route``; :meth:`start` uses the rtnl monitor's when unset.
    :param route_check_delays: the delays between the first route lookups
        (C's 1, 4, 8, 16 ms); their number + 1 is the number of lookups made
        before the check waits for route changes.
    :param route_wait_timeout: total time a route check may take, in
        seconds, including the wait for route changes; 0 gives up after the
        scheduled lookups, as mptcpd does.
    :param carrier_events: report carrier loss/recovery of an administratively
        up interface as ``link_down``/``link_up`` and keep it tracked (True),
        or treat it as mptcpd does, as ``delete_interface``/``new_interface``
        (False).
    :param monitor_loopback: also track the loopback interface.
    """

    def __init__(
        self,
        notify_flags: NotifyFlags = NotifyFlags(0),
        *,
        route_lookup: RouteLookupFn | None = None,
        route_check_delays: Sequence[float] = ROUTE_CHECK_DELAYS,
        route_wait_timeout: float = ROUTE_WAIT_TIMEOUT,
        carrier_events: bool = True,
        monitor_loopback: bool = False,
    ) -> None:
        self.notify_flags = NotifyFlags(notify_flags)
        self.route_lookup = route_lookup
        self.route_check_delays = tuple(route_check_delays)
        self.route_wait_timeout = float(route_wait_timeout)
        self.carrier_events = carrier_events
        self._monitor_loopback = monitor_loopback
        self._interfaces: dict[int, _Interface] = {}
        self._subscribers: list[object] = []
        self._source: RtnlSource | None = None
        self._task: asyncio.Task[None] | None = None

    # -- configuration and subscribers ------------------------------------

    def monitor_loopback(self, enable: bool) -> bool:
        """Track (or stop tracking) loopback interfaces; affects later link
        messages only.  Returns True (C: ``mptcpd_nm_monitor_loopback``)."""
        self._monitor_loopback = bool(enable)
        return True

    def register(self, ops: object) -> bool:
        """Subscribe ``ops`` (any object with some :data:`OPS` methods).

        Subscribers are called in registration order.  Returns False, after
        log E ``No network monitor event tracking ops were set.``, when
        ``ops`` implements none of them.
        """
        if ops is None:
            return False
        if not any(callable(getattr(ops, name, None)) for name in OPS):
            log.error("No network monitor event tracking ops were set.")
            return False
        self._subscribers.append(ops)
        return True

    def unregister(self, ops: object) -> bool:
        """Remove a subscriber; False if it was not registered."""
        try:
            self._subscribers.remove(ops)
        except ValueError:
            return False
        return True

    def _emit(self, op: str, *args: object) -> None:
        for sub in tuple(self._subscribers):
            method = getattr(sub, op, None)
            if method is None:
                continue
            try:
                method(*args)
            except Exception:
                log.exception("network monitor subscriber %r failed in %s", sub, op)

    # -- queries -------------------------------------------------------------

    def _visible(self) -> Iterator[_Interface]:
        for index in sorted(self._interfaces):
            iface = self._interfaces[index]
            if iface.visible:
                yield iface

    def interfaces(self) -> list[Interface]:
        """Snapshots of the tracked interfaces, in ifindex order."""
        return [iface.snapshot() for iface in self._visible()]

    def foreach_interface(self, callback: Callable[[Interface], object]) -> None:
        """Call ``callback(interface)`` for each tracked interface, in ifindex
        order (C: ``mptcpd_nm_foreach_interface``)."""
        if callback is None:
            return
        for iface in self.interfaces():
            callback(iface)

    def get_interface(self, index: int) -> Interface | None:
        """The tracked interface with this ifindex, if any."""
        iface = self._interfaces.get(index)
        return iface.snapshot() if iface is not None and iface.visible else None

    def find_interface(self, addr: SockAddr) -> Interface | None:
        """The tracked interface holding the IP of ``addr`` (port ignored; an
        IPv4-mapped IPv6 address is looked up as IPv4)."""
        key = SockAddr(addr.ip).unmapped()
        for iface in self._visible():
            if iface.find(key) is not None:
                return iface.snapshot()
        return None

    def address_state(self, addr: SockAddr) -> AddressState | None:
        """Where a recorded address stands (None when not recorded)."""
        key = SockAddr(addr.ip).unmapped()
        for index in sorted(self._interfaces):
            entry = self._interfaces[index].find(key)
            if entry is not None:
                return entry.state
        return None

    def replay(self, ops: object, *, interfaces: bool = False) -> None:
        """Tell ``ops`` about the current state, as if it had been subscribed
        all along: ``new_local_address`` for every announced address, in the
        order the kernel reported them (across interfaces, as mptcpd notifies
        them while the startup dump arrives: IPv4 addresses, then IPv6).

        With ``interfaces`` it first gets ``new_interface`` for each tracked
        interface (and ``link_down`` for one without carrier).  Addresses
        recorded silently (startup without ``existing``), or whose route check
        is pending or gave up, are not replayed.  This is how the daemon
        hands the ``existing`` addresses to plugins after loading them.
        """
        visible = list(self._visible())
        if interfaces:
            for iface in visible:
                snap = iface.snapshot()
                self._call(ops, "new_interface", snap)
                if not iface.running:
                    self._call(ops, "link_down", snap)
        announced = sorted(
            ((entry.seq, iface, entry) for iface in visible for entry in iface.addrs
             if entry.state is AddressState.ANNOUNCED),
            key=lambda item: item[0],
        )
        for _, iface, entry in announced:
            self._call(ops, "new_local_address", iface.snapshot(), entry.addr)

    @staticmethod
    def _call(ops: object, op: str, *args: object) -> None:
        method = getattr(ops, op, None)
        if method is None:
            return
        try:
            method(*args)
        except Exception:
            log.exception("network monitor subscriber %r failed in %s", ops, op)

    # -- links -----------------------------------------------------------

    def _admissible(self, flags: int) -> bool:
        return not flags & IFF_LOOPBACK or self._monitor_loopback

    def _ready(self, flags: int) -> bool:
        return bool(flags & IFF_UP and flags & IFF_RUNNING) and self._admissible(flags)

    def _trackable(self, flags: int) -> bool:
        """Up (maybe without carrier) and kept while waiting for carrier."""
        return self.carrier_events and bool(flags & IFF_UP) and self._admissible(flags)

    def handle_link(self, msg: LinkMessage, *, initial: bool = False) -> None:
        """Apply a link message (``initial``: a startup-dump entry)."""
        iface = self._interfaces.get(msg.index)
        if msg.deleted:
            if iface is None:
                log.debug("Ignoring removal of untracked network interface %d.", msg.index)
                return
            self._drop_interface(iface)
            return
        if self._ready(msg.flags):
            if iface is None:
                iface = _Interface(msg.index, msg.name, msg.flags, msg.type,
                                   msg.operstate, msg.carrier, visible=True)
                self._interfaces[msg.index] = iface
                if not initial:
                    self._emit("new_interface", iface.snapshot())
                return
            was_running = iface.running
            iface.update(msg)
            if not iface.visible:
                # First time ready: announce it, then what it collected.
                iface.visible = True
                self._emit("new_interface", iface.snapshot())
                for entry in list(iface.addrs):
                    if entry.state is AddressState.DEFERRED:
                        self._announce(iface, entry)
            elif not was_running and self.carrier_events:
                self._emit("link_up", iface.snapshot())
            else:
                self._emit("update_interface", iface.snapshot())
            return
        # Not ready.
        if self._trackable(msg.flags):
            if iface is None:
                # Up without carrier: keep it quietly so that its addresses
                # are recorded before it becomes ready.
                self._interfaces[msg.index] = _Interface(
                    msg.index, msg.name, msg.flags, msg.type, msg.operstate,
                    msg.carrier, visible=False,
                )
                return
            was_running = iface.running
            iface.update(msg)
            if not iface.visible:
                return
            if was_running:
                self._emit("link_down", iface.snapshot())
            else:
                self._emit("update_interface", iface.snapshot())
            return
        if iface is None:
            log.debug("Ignoring network interface %d that is not ready.", msg.index)
            return
        self._drop_interface(iface)

    def _drop_interface(self, iface: _Interface) -> None:
        snap = iface.snapshot()
        del self._interfaces[iface.index]
        for entry in iface.addrs:
            self._cancel_check(entry)
        if iface.visible:
            self._emit("delete_interface", snap)

    # -- addresses ---------------------------------------------------------

    def handle_address(self, msg: AddressMessage, *, initial: bool = False) -> None:
        """Apply an address message (``initial``: a startup-dump entry)."""
        if msg.family not in (socket.AF_INET, socket.AF_INET6):
            return
        iface = self._interfaces.get(msg.index)
        if iface is None:
            log.debug("Ignoring address on untracked network interface %d.", msg.index)
            return
        addr = SockAddr(msg.ip)
        if msg.deleted:
            entry = iface.find(addr)
            if entry is None:
                log.debug("Ignoring removal of unrecorded address %s.", addr)
                return
            iface.remove(entry)
            self._cancel_check(entry)
            if iface.visible:
                self._emit("delete_local_address", iface.snapshot(), addr)
            return
        if initial and not self.notify_flags & NotifyFlags.EXISTING:
            # Recorded silently; the skip filters do not apply (as in C).
            if iface.find(addr) is None:
                iface.add(_Address(addr, msg.scope, AddressState.SILENT))
            return
        if self.notify_flags & NotifyFlags.SKIP_LINK_LOCAL and msg.scope == RT_SCOPE_LINK:
            return
        if self.notify_flags & NotifyFlags.SKIP_LOOPBACK and msg.scope == RT_SCOPE_HOST:
            return
        if iface.find(addr) is not None:
            log.debug("Network address information updated.")
            return
        entry = _Address(addr, msg.scope, AddressState.DEFERRED)
        iface.add(entry)
        if iface.visible:
            self._announce(iface, entry)

    def _announce(self, iface: _Interface, entry: _Address) -> None:
        if self.notify_flags & NotifyFlags.CHECK_ROUTE:
            entry.state = AddressState.PENDING
            entry.wake = asyncio.Event()
            entry.check = asyncio.get_running_loop().create_task(
                self._check_route(iface.index, entry),
                name=f"check_route {entry.addr}",
            )
            return
        entry.state = AddressState.ANNOUNCED
        self._emit("new_local_address", iface.snapshot(), entry.addr)

    # -- check_route ---------------------------------------------------------

    def handle_route(self, msg: RouteMessage) -> None:
        """A route changed: recheck the pending addresses of that family."""
        if msg.deleted:
            return
        for iface in self._interfaces.values():
            for entry in iface.addrs:
                if (entry.state is AddressState.PENDING and entry.wake is not None
                        and entry.addr.family == msg.family):
                    entry.wake.set()

    @staticmethod
    def _cancel_check(entry: _Address) -> None:
        task, entry.check = entry.check, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    async def _lookup_once(self, index: int, entry: _Address, verbose: bool) -> bool | None:
        """One lookup: True found, False not (yet), None the lookup failed."""
        lookup = self.route_lookup
        if lookup is None:
            log.debug("Route lookup failed")
            return None
        say = log.info if verbose else log.debug
        try:
            result = await lookup(entry.addr.family, index)
        except OSError:
            log.debug("Route lookup failed")
            return None
        if result.error:
            say("can't resolved default route from %s interface %d: %d",
                entry.addr, index, -result.error)
            return False
        if result.dst is not None:
            say("found non-default route with destination %s", result.dst)
            return False
        if result.oif != index:
            say("interface mismatch %s:%d", result.oif, index)
            return False
        return True

    async def _check_route(self, index: int, entry: _Address) -> None:
        start = time.monotonic()
        deadline = start + self.route_wait_timeout
        try:
            found: bool | None = False
            # C's schedule: a lookup now, then after each delay.
            for attempt in range(len(self.route_check_delays) + 1):
                if attempt:
                    await asyncio.sleep(self.route_check_delays[attempt - 1])
                if entry.wake is not None:
                    entry.wake.clear()
                found = await self._lookup_once(index, entry, verbose=True)
                if found is not False:
                    break
            # Then wait for route changes, up to the deadline.
            while found is False and entry.wake is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        await entry.wake.wait()
                except TimeoutError:
                    break
                entry.wake.clear()
                found = await self._lookup_once(index, entry, verbose=False)
            if found is None:
                entry.state = AddressState.ABANDONED
                return
            if not found:
                log.debug("timeout while waiting for default route on address %s",
                          entry.addr)
                entry.state = AddressState.ABANDONED
                return
            log.info("found default route for address %s on interface %d",
                     entry.addr, index)
            iface = self._interfaces.get(index)
            if iface is None or not any(a is entry for a in iface.addrs):
                return  # deleted meanwhile: never notify after the deletion
            entry.state = AddressState.ANNOUNCED
            if iface.visible:
                self._emit("new_local_address", iface.snapshot(), entry.addr)
        finally:
            entry.check = None
            entry.wake = None

    # -- resynchronisation -----------------------------------------------------

    def reconcile(self, links: Sequence[LinkMessage],
                  addresses: Sequence[AddressMessage]) -> None:
        """Bring the state in line with a fresh dump after lost messages.

        Interfaces and addresses that disappeared are reported as removed,
        new ones as added, changed links as link messages; unchanged ones
        give no notification.
        """
        kernel_links = {m.index: m for m in links}
        for index in list(self._interfaces):
            if index not in kernel_links:
                self.handle_link(LinkMessage(index, "", 0, deleted=True))
        for msg in links:
            iface = self._interfaces.get(msg.index)
            if (iface is not None and iface.flags == msg.flags
                    and iface.operstate == msg.operstate and iface.carrier == msg.carrier):
                continue
            self.handle_link(msg)
        by_index: dict[int, list[AddressMessage]] = {}
        for amsg in addresses:
            if amsg.family in (socket.AF_INET, socket.AF_INET6):
                by_index.setdefault(amsg.index, []).append(amsg)
        for index, iface in list(self._interfaces.items()):
            present = {SockAddr(a.ip) for a in by_index.get(index, [])}
            for entry in list(iface.addrs):
                if entry.addr not in present:
                    self.handle_address(AddressMessage(index, entry.addr.ip, deleted=True))
            for amsg in by_index.get(index, []):
                self.handle_address(amsg)

    # -- running against the kernel -------------------------------------------

    def dispatch(self, event: RtnlEvent) -> None:
        """Apply one record from the rtnl stream."""
        if isinstance(event, LinkMessage):
            self.handle_link(event)
        elif isinstance(event, AddressMessage):
            self.handle_address(event)
        elif isinstance(event, RouteMessage):
            self.handle_route(event)
        elif isinstance(event, Resync):
            self.reconcile(event.links, event.addresses)

    async def start(self, netns: str | None = None, *,
                    source: RtnlSource | None = None) -> None:
        """Open the rtnetlink side, record the current state, start following.

        The link dump comes first; then, if an interface is tracked, the
        address dump.  Both are recorded without notifications unless
        ``existing`` is set (then addresses go to the subscribers registered
        now; :meth:`replay` serves later ones).

        :param netns: namespace to monitor (``None``: our own).
        :param source: the kernel side; an
            :class:`~mptcpd.netlink.rtnl_monitor.RtnlMonitor` by default.
        :raises RtnlMonitorError: if the socket or the link dump fails (the
            daemon then logs ``Unable to create network monitor.``).
        """
        if self._source is not None:
            raise RuntimeError("the network monitor is already started")
        if source is None:
            wants_routes = bool(self.notify_flags & NotifyFlags.CHECK_ROUTE
                                and self.route_wait_timeout > 0)
            source = RtnlMonitor(netns, routes=wants_routes)
        await source.open()
        self._source = source
        if self.route_lookup is None:
            self.route_lookup = source.lookup_default_route
        try:
            for link in await source.dump_links():
                self.handle_link(link, initial=True)
            if self._interfaces:
                try:
                    addresses = await source.dump_addresses()
                except RtnlMonitorError:
                    addresses = []  # logged already; carry on, as mptcpd does
                for amsg in addresses:
                    self.handle_address(amsg, initial=True)
        except BaseException:
            source.close()
            self._source = None
            raise
        self._task = asyncio.get_running_loop().create_task(
            self._follow(source), name="network monitor"
        )

    async def _follow(self, source: RtnlSource) -> None:
        try:
            async for event in source.events():
                try:
                    self.dispatch(event)
                except Exception:
                    log.exception("network monitor failed to handle %r", event)
        except RtnlMonitorError:
            log.error("Network monitor stopped: rtnetlink socket lost.")
        except Exception:
            log.exception("Network monitor stopped: rtnetlink reader failed.")

    @property
    def running(self) -> bool:
        """True while following kernel changes."""
        return self._task is not None and not self._task.done()

    async def close(self) -> None:
        """Stop following changes, cancel route checks, close the socket."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        checks = []
        for iface in self._interfaces.values():
            for entry in iface.addrs:
                if entry.check is not None:
                    checks.append(entry.check)
                self._cancel_check(entry)
        if checks:
            await asyncio.gather(*checks, return_exceptions=True)
        source, self._source = self._source, None
        if source is not None:
            source.close()

    # -- debugging ---------------------------------------------------------

    def __repr__(self) -> str:
        names = ", ".join(str(i.snapshot()) for i in self._visible())
        return f"<NetworkMonitor [{names}]>"


__all__ = [
    "AddressState",
    "NetworkMonitor",
    "NetworkMonitorOps",
    "OPS",
    "ROUTE_CHECK_DELAYS",
    "ROUTE_WAIT_TIMEOUT",
    "RtnlSource",
]

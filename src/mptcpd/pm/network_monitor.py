"""The network monitor (C: ``lib/network_monitor.c``): the interfaces and
local addresses of the daemon's namespace, and the rules that decide which
of their changes path managers hear of.

:class:`NetworkMonitor` is fed plain records (:class:`LinkMessage`,
:class:`AddressMessage`, :class:`RouteMessage`, :class:`Resync`: the daemon's
:class:`~mptcpd.daemon.network.NetworkFeed` reads them from rtnetlink), and
hands each change it reports to its subscribers as a
:data:`~mptcpd.events.NetworkEvent`.  ``check_route`` waits are run by
:class:`~mptcpd.pm.route_check.RouteCheck`.  Plugins query it through
``pm.network_monitor``.

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
* **check_route waits like a DHCP client needs** (see
  :mod:`mptcpd.pm.route_check`): after C's five lookups it waits for route
  changes, up to ``route_wait_timeout`` (60 s; 0 gives C's give-up).
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

* **Administrative down/up** (spec 12.2 defect 11; ``readdress``, which
  the daemon turns on): an interface that goes down, or is removed, has its
  reported addresses withdrawn (``delete_local_address``) before
  ``delete_interface``; one that is down stays tracked silently with its
  addresses, so when it comes up it gets ``new_interface`` and then
  ``new_local_address`` for the addresses it still has (IPv4 addresses
  survive a down; the kernel removes IPv6 ones, and reports them again when
  they come back).  C forgets the addresses and never reports them again.
  Without ``readdress`` C's behaviour is kept.
* **The policy** (:mod:`mptcpd.pm.policy`) decides, once per change, which
  interfaces and addresses subscribers hear of at all; see
  :meth:`NetworkMonitor.set_policy` for changes at run time.
* **Duplicate address detection**: a tentative address is reported once
  DAD has completed, never when it failed; a later change of an address's
  flags (deprecated) is decided again.

Kept from C: renames are not tracked (the first name stays).
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Concatenate, ParamSpec, TypeVar

from mptcpd import events as ev
from mptcpd.netlink.rtnl_monitor import (
    AddressMessage,
    LinkMessage,
    Resync,
    RouteMessage,
    RtnlEvent,
)
from mptcpd.pm.policy import ALLOWED, InterfaceDecision, Policy
from mptcpd.pm.route_check import (
    ROUTE_CHECK_DELAYS,
    ROUTE_WAIT_TIMEOUT,
    Check,
    RouteCheck,
    RouteLookupFn,
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

#: What subscribes to the network monitor: called with each event, in
#: registration order; must not block.
Subscriber = Callable[[ev.NetworkEvent], object]


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
    #: ``IFA_F_*`` of the last message (for the policy's decisions).
    ifa_flags: int = 0
    #: Why the policy keeps it from subscribers (None: it passes).
    filtered: str | None = None
    check: Check | None = None
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
    kind: str = ""
    #: The policy's decision (allowed, own address flags).
    decision: InterfaceDecision = ALLOWED
    #: Change it only through :meth:`add`, :meth:`remove` and :meth:`update`:
    #: they drop the cached snapshot.
    addrs: list[_Address] = dataclasses.field(default_factory=list)
    _snapshot: Interface | None = None
    #: The first entry of each address in :attr:`addrs`: path managers look
    #: addresses up on every event (:meth:`NetworkMonitor.find_interface`).
    _by_addr: dict[SockAddr, _Address] = dataclasses.field(default_factory=dict)

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
                addrs=tuple([a.addr for a in self.addrs if a.filtered is None]),
                kind=self.kind,
                addr_flags=self.decision.addr_flags,
            )
        return snap

    def add(self, entry: _Address) -> None:
        self.addrs.append(entry)
        self._by_addr.setdefault(entry.addr, entry)
        self._snapshot = None

    def remove(self, entry: _Address) -> None:
        self.addrs.remove(entry)
        if self._by_addr.get(entry.addr) is entry:
            del self._by_addr[entry.addr]
            for other in self.addrs:  # another entry of that address, if any
                if other.addr == entry.addr:
                    self._by_addr[entry.addr] = other
                    break
        self._snapshot = None

    def find(self, addr: SockAddr) -> _Address | None:
        """The first entry of ``addr``."""
        return self._by_addr.get(addr)

    def changed(self) -> None:
        """Drop the cached snapshot (an entry or the decision changed)."""
        self._snapshot = None

    def update(self, msg: LinkMessage) -> None:
        # As in mptcpd the name is not updated (renames are not tracked).
        self.flags = msg.flags
        self.type = msg.type
        self.operstate = msg.operstate
        self.carrier = msg.carrier
        if msg.kind:
            self.kind = msg.kind
        self._snapshot = None

    @property
    def running(self) -> bool:
        return bool(self.flags & IFF_RUNNING)

    @property
    def allowed(self) -> bool:
        return self.decision.denied is None


_P = ParamSpec("_P")
_R = TypeVar("_R")
#: Addresses whose interface :meth:`NetworkMonitor.find_interface` remembers
#: between two changes (the cache is emptied when it is full).
FIND_CACHE_SIZE = 1024


def _changes(method: Callable[Concatenate[NetworkMonitor, _P], _R]
             ) -> Callable[Concatenate[NetworkMonitor, _P], _R]:
    """Marks a method that may change what the monitor reports: its
    :attr:`~NetworkMonitor.generation` moves on before and after it (a
    query made by a subscriber while it runs is not remembered past it)."""

    def changing(self: NetworkMonitor, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        self.generation += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            self.generation += 1

    changing.__name__, changing.__qualname__ = method.__name__, method.__qualname__
    changing.__doc__ = method.__doc__
    return changing


class NetworkMonitor:
    """Interfaces and local addresses of one network namespace, and their changes.

    :param notify_flags: ``existing``, ``skip_link_local``, ``skip_loopback``,
        ``check_route`` (``--notify-flags``).
    :param route_lookup: ``async (family, ifindex) -> RouteLookup`` used by
        ``check_route``; the feed sets the rtnetlink socket's when unset.
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
    :param policy: which interfaces and addresses subscribers hear of, and
        the interfaces' own address flags (:mod:`mptcpd.pm.policy`); every
        interface and address passes by default, tentative and DAD-failed
        addresses apart.
    :param readdress: keep an interface that goes administratively down
        (or is not up when first seen) with its addresses, so that when it
        comes up its addresses are reported again; and withdraw
        (``delete_local_address``) the reported addresses of an interface
        before ``delete_interface``.  False gives C's behaviour: the
        interface and its addresses are forgotten silently.
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
        policy: Policy | None = None,
        readdress: bool = False,
    ) -> None:
        self.notify_flags = NotifyFlags(notify_flags)
        self.routes = RouteCheck(route_lookup, route_check_delays, route_wait_timeout)
        self.carrier_events = carrier_events
        self.readdress = readdress
        self._monitor_loopback = monitor_loopback
        self._policy = policy if policy is not None else Policy()
        self._interfaces: dict[int, _Interface] = {}
        #: :meth:`_visible`'s answer until an interface comes, goes, shows or hides.
        self._visible_cache: list[_Interface] | None = None
        self._subscribers: list[Subscriber] = []
        #: Moves on with every change of what the monitor reports
        #: (:func:`_changes`); answers kept for a generation are its own.
        self.generation = 0
        self._found: dict[object, Interface | None] = {}
        self._found_generation = -1

    @property
    def route_lookup(self) -> RouteLookupFn | None:
        """The default-route lookup of ``check_route``."""
        return self.routes.lookup

    @route_lookup.setter
    def route_lookup(self, lookup: RouteLookupFn | None) -> None:
        self.routes.lookup = lookup

    @property
    def tracking(self) -> bool:
        """Whether an interface is tracked (ready, up and waiting for its
        carrier, or, with ``readdress``, down): only then are addresses
        worth a dump."""
        return bool(self._interfaces)

    @property
    def wants_routes(self) -> bool:
        """Whether route changes matter (``check_route`` waits for them)."""
        return bool(self.notify_flags & NotifyFlags.CHECK_ROUTE and self.routes.timeout > 0)

    @property
    def policy(self) -> Policy:
        """The policy in force."""
        return self._policy

    # -- configuration and subscribers ------------------------------------

    def monitor_loopback(self, enable: bool) -> bool:
        """Track (or stop tracking) loopback interfaces; affects later link
        messages only.  Returns True (C: ``mptcpd_nm_monitor_loopback``)."""
        self._monitor_loopback = bool(enable)
        return True

    def register(self, subscriber: Subscriber) -> bool:
        """Subscribe ``subscriber``: it is called with every
        :data:`~mptcpd.events.NetworkEvent` from now on.

        Subscribers are called in registration order; one that raises is
        logged and the others are still called.  Returns False, after log E
        ``No network monitor event tracking ops were set.``, when
        ``subscriber`` is not callable.
        """
        if not callable(subscriber):
            log.error("No network monitor event tracking ops were set.")
            return False
        self._subscribers.append(subscriber)
        return True

    def unregister(self, subscriber: Subscriber) -> bool:
        """Remove a subscriber; False if it was not registered."""
        try:
            self._subscribers.remove(subscriber)
        except ValueError:
            return False
        return True

    def _emit(self, event: ev.NetworkEvent) -> None:
        for subscriber in tuple(self._subscribers):
            self._call(subscriber, event)

    @staticmethod
    def _call(subscriber: Subscriber, event: ev.NetworkEvent) -> None:
        try:
            subscriber(event)
        except Exception:
            log.exception("network monitor subscriber %r failed in %s", subscriber,
                          event.HOOK)

    # -- queries -------------------------------------------------------------

    def _visible(self) -> list[_Interface]:
        """The interfaces subscribers know, in ifindex order (asked on every
        connection by path managers: kept until it changes)."""
        visible = self._visible_cache
        if visible is None:
            visible = self._visible_cache = [
                self._interfaces[index] for index in sorted(self._interfaces)
                if self._interfaces[index].visible]
        return visible

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
        found = self._found
        if self._found_generation != self.generation:
            found.clear()
            self._found_generation = self.generation
        ip = addr.ip
        try:
            return found[ip]
        except KeyError:
            pass
        key = SockAddr(ip).unmapped()
        answer = None
        for iface in self._visible():
            entry = iface.find(key)
            if entry is not None and entry.filtered is None:
                answer = iface.snapshot()
                break
        if len(found) >= FIND_CACHE_SIZE:
            found.clear()
        found[ip] = answer
        return answer

    def address_state(self, addr: SockAddr) -> AddressState | None:
        """Where a recorded address stands (None when not recorded)."""
        key = SockAddr(addr.ip).unmapped()
        for index in sorted(self._interfaces):
            entry = self._interfaces[index].find(key)
            if entry is not None:
                return entry.state
        return None

    def decisions(self) -> list[tuple[Interface, str | None, list[tuple[SockAddr, str | None]]]]:
        """Every tracked interface (reported or not), why the policy keeps it
        from plugins (None: it does not) and the same for each of its
        addresses: for logs and the status API."""
        out = []
        for index in sorted(self._interfaces):
            iface = self._interfaces[index]
            out.append((dataclasses.replace(iface.snapshot(),
                                            addrs=tuple(a.addr for a in iface.addrs)),
                        iface.decision.denied,
                        [(a.addr, a.filtered) for a in iface.addrs]))
        return out

    def replay(self, subscriber: Subscriber, *, interfaces: bool = False) -> None:
        """Tell ``subscriber`` about the current state, as if it had been
        subscribed all along: ``new_local_address`` for every announced
        address, in the order the kernel reported them (across interfaces, as
        mptcpd notifies them while the startup dump arrives: IPv4 addresses,
        then IPv6).

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
                self._call(subscriber, ev.InterfaceAdded(snap))
                if not iface.running:
                    self._call(subscriber, ev.LinkDown(snap))
        announced = sorted(
            ((entry.seq, iface, entry) for iface in visible for entry in iface.addrs
             if entry.state is AddressState.ANNOUNCED),
            key=lambda item: item[0],
        )
        for _, iface, entry in announced:
            self._call(subscriber, ev.LocalAddressAdded(iface.snapshot(), entry.addr))

    # -- policy ----------------------------------------------------------

    @_changes
    def set_policy(self, policy: Policy) -> None:
        """Apply a new policy (a configuration reload) to everything tracked.

        Interfaces it now denies are withdrawn (``delete_local_address`` for
        each reported address, then ``delete_interface``); addresses it now
        keeps back are withdrawn; interfaces whose own address flags change
        get ``update_interface``; addresses and interfaces it now lets
        through are reported (``new_interface``, ``new_local_address``), as
        if they had just appeared.
        """
        self._policy = policy
        for index in sorted(self._interfaces):
            iface = self._interfaces.get(index)
            if iface is None:
                continue
            decision = policy.interface(iface.name, iface.kind)
            old_flags = iface.decision.addr_flags
            if decision.denied is not None and iface.visible:
                log.info("Network interface %s(%d) is now %s: withdrawn.", iface.name,
                         iface.index, decision.denied)
                self._hide(iface)
            iface.decision = decision
            iface.changed()
            for entry in list(iface.addrs):
                self._refilter(iface, entry, policy.address(entry.addr.ip, entry.ifa_flags))
            if iface.visible and decision.addr_flags != old_flags:
                self._emit(ev.InterfaceUpdated(iface.snapshot()))
            elif not iface.visible and iface.allowed and self._ready(iface.flags):
                self._show(iface)

    def _decide(self, iface: _Interface) -> None:
        iface.decision = self._policy.interface(iface.name, iface.kind)
        if not iface.allowed:
            log.debug("Network interface %s(%d) is %s: not reported to plugins.",
                      iface.name, iface.index, iface.decision.denied)

    def _refilter(self, iface: _Interface, entry: _Address, reason: str | None) -> bool:
        """Give ``entry`` the policy's new decision ``reason``, reporting or
        withdrawing it as that changes; whether the decision changed."""
        was = entry.filtered
        if was == reason:
            return False
        entry.filtered = reason
        iface.changed()
        if reason is None:
            log.debug("Address %s on %s is no longer held back (%s).", entry.addr,
                      iface.name, was)
            if iface.visible and entry.state is AddressState.DEFERRED:
                self._announce(iface, entry)
        else:
            log.debug("Address %s on %s is held back: %s.", entry.addr, iface.name,
                      reason)
            if was is None:
                self._withdraw(iface, entry)
        return True

    def _withdraw(self, iface: _Interface, entry: _Address) -> None:
        """Take back what subscribers were told of ``entry`` (still recorded);
        it will be reported again when it may."""
        self._cancel_check(entry)
        if entry.state is AddressState.SILENT:
            return
        announced = entry.state is AddressState.ANNOUNCED
        entry.state = AddressState.DEFERRED
        if announced and iface.visible:
            self._emit(ev.LocalAddressRemoved(iface.snapshot(), entry.addr))

    def _hide(self, iface: _Interface, last: Interface | None = None, *,
              withdraw: bool = True) -> None:
        """Subscribers stop seeing ``iface``: its reported addresses are
        withdrawn (unless not ``withdraw``: C's removal), then
        ``delete_interface`` with the ``last`` state subscribers saw (as C:
        the flags before the change)."""
        if withdraw:
            for entry in list(iface.addrs):
                if entry.state is AddressState.SILENT:
                    entry.state = AddressState.DEFERRED
                else:
                    self._withdraw(iface, entry)
        else:
            for entry in iface.addrs:
                self._cancel_check(entry)
        snap = iface.snapshot()
        if last is not None:
            snap = dataclasses.replace(last, addrs=snap.addrs)
        iface.visible = False
        self._visible_cache = None
        self._emit(ev.InterfaceRemoved(snap))

    def _show(self, iface: _Interface) -> None:
        """Subscribers start seeing ``iface``: ``new_interface``, then its
        addresses that pass the policy."""
        iface.visible = True
        self._visible_cache = None
        self._emit(ev.InterfaceAdded(iface.snapshot()))
        for entry in list(iface.addrs):
            if entry.state is AddressState.DEFERRED and entry.filtered is None:
                self._announce(iface, entry)

    # -- links -----------------------------------------------------------

    def would_track(self, msg: LinkMessage) -> bool:
        """Whether a link message of an interface not tracked yet would make
        it tracked (then its addresses are worth a dump)."""
        if msg.deleted:
            return False
        if self.readdress:
            return self._admissible(msg.flags)
        return self._ready(msg.flags) or self._trackable(msg.flags)

    def _admissible(self, flags: int) -> bool:
        return not flags & IFF_LOOPBACK or self._monitor_loopback

    def _ready(self, flags: int) -> bool:
        return bool(flags & IFF_UP and flags & IFF_RUNNING) and self._admissible(flags)

    def _trackable(self, flags: int) -> bool:
        """Up (maybe without carrier) and kept while waiting for carrier."""
        return self.carrier_events and bool(flags & IFF_UP) and self._admissible(flags)

    def _kept(self, flags: int) -> bool:
        """Kept tracked (silently) although not reported."""
        return self._trackable(flags) or (self.readdress and self._admissible(flags))

    @_changes
    def handle_link(self, msg: LinkMessage, *, initial: bool = False) -> None:
        """Apply a link message (``initial``: a startup-dump entry)."""
        iface = self._interfaces.get(msg.index)
        if msg.deleted:
            if iface is None:
                log.debug("Ignoring removal of untracked network interface %d.", msg.index)
                return
            self._drop_interface(iface)
            return
        ready = self._ready(msg.flags)
        if iface is None:
            if not ready and not self._kept(msg.flags):
                log.debug("Ignoring network interface %d that is not ready.", msg.index)
                return
            iface = _Interface(msg.index, msg.name, msg.flags, msg.type,
                               msg.operstate, msg.carrier, visible=False, kind=msg.kind)
            self._decide(iface)
            self._interfaces[msg.index] = iface
            self._visible_cache = None
            if ready and iface.allowed:
                iface.visible = True
                if not initial:
                    self._emit(ev.InterfaceAdded(iface.snapshot()))
            return
        was_running = iface.running
        kind = iface.kind
        last = iface.snapshot()
        iface.update(msg)
        if iface.kind != kind:
            self._decide(iface)  # the kind came late: decide again
            if not iface.allowed and iface.visible:
                self._hide(iface)
                return
        if not iface.visible:
            if ready and iface.allowed:
                # (Again) ready: announce it, then what it collected.
                self._show(iface)
            elif not self._kept(msg.flags):
                del self._interfaces[iface.index]
                self._visible_cache = None
                for entry in iface.addrs:
                    self._cancel_check(entry)
            return
        if ready:
            if not was_running and self.carrier_events:
                self._emit(ev.LinkUp(iface.snapshot()))
            else:
                self._emit(ev.InterfaceUpdated(iface.snapshot()))
            return
        if self._trackable(msg.flags):
            # Up without carrier.
            if was_running:
                self._emit(ev.LinkDown(iface.snapshot()))
            else:
                self._emit(ev.InterfaceUpdated(iface.snapshot()))
            return
        # Administratively down (or, without carrier events, not running).
        if self.readdress:
            self._hide(iface, last)
        else:
            self._drop_interface(iface, last)

    def _drop_interface(self, iface: _Interface, last: Interface | None = None) -> None:
        del self._interfaces[iface.index]
        self._visible_cache = None
        if iface.visible:
            self._hide(iface, last, withdraw=self.readdress)
        for entry in iface.addrs:
            self._cancel_check(entry)

    # -- addresses ---------------------------------------------------------

    @_changes
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
            if iface.visible and entry.filtered is None:
                self._emit(ev.LocalAddressRemoved(iface.snapshot(), addr))
            return
        reason = self._policy.address(msg.ip, msg.flags)
        if (initial and not self.notify_flags & NotifyFlags.EXISTING
                and (iface.visible or not self.readdress)):
            # Recorded silently; the skip flags do not apply (as in C).
            if iface.find(addr) is None:
                iface.add(_Address(addr, msg.scope, AddressState.SILENT, msg.flags,
                                   reason))
            return
        # The scope first: a flag test costs more than an int comparison.
        if msg.scope == RT_SCOPE_LINK and NotifyFlags.SKIP_LINK_LOCAL in self.notify_flags:
            return
        if msg.scope == RT_SCOPE_HOST and NotifyFlags.SKIP_LOOPBACK in self.notify_flags:
            return
        entry = iface.find(addr)
        if entry is not None:
            entry.ifa_flags = msg.flags
            # DAD done or failed, deprecated: the policy decides again.
            if not self._refilter(iface, entry, reason):
                log.debug("Network address information updated.")
            return
        entry = _Address(addr, msg.scope, AddressState.DEFERRED, msg.flags, reason)
        iface.add(entry)
        if reason is not None:
            log.debug("Address %s on %s is held back: %s.", addr, iface.name, reason)
        elif iface.visible:
            self._announce(iface, entry)

    def _announce(self, iface: _Interface, entry: _Address) -> None:
        if NotifyFlags.CHECK_ROUTE in self.notify_flags:  # cheaper than &
            entry.state = AddressState.PENDING
            entry.check = self.routes.start(entry.addr, iface.index, self._route_checked)
            return
        entry.state = AddressState.ANNOUNCED
        self._emit(ev.LocalAddressAdded(iface.snapshot(), entry.addr))

    # -- check_route ---------------------------------------------------------

    @_changes
    def handle_route(self, msg: RouteMessage) -> None:
        """A route changed: recheck the pending addresses of that family."""
        if not msg.deleted:
            self.routes.route_changed(msg.family)

    def _cancel_check(self, entry: _Address) -> None:
        check, entry.check = entry.check, None
        self.routes.cancel(check)

    @_changes
    def _route_checked(self, check: Check, found: bool) -> None:
        iface = self._interfaces.get(check.index)
        entry = iface.find(check.addr) if iface is not None else None
        if iface is None or entry is None or entry.check is not check:
            return  # deleted meanwhile: never notify after the deletion
        entry.check = None
        if not found:
            entry.state = AddressState.ABANDONED
            return
        entry.state = AddressState.ANNOUNCED
        if iface.visible:
            self._emit(ev.LocalAddressAdded(iface.snapshot(), entry.addr))

    # -- resynchronisation -----------------------------------------------------

    @_changes
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

    # -- records ---------------------------------------------------------------

    def handle(self, record: RtnlEvent) -> None:
        """Apply one record of the rtnetlink stream."""
        if isinstance(record, LinkMessage):
            self.handle_link(record)
        elif isinstance(record, AddressMessage):
            self.handle_address(record)
        elif isinstance(record, RouteMessage):
            self.handle_route(record)
        elif isinstance(record, Resync):
            self.reconcile(record.links, record.addresses)

    async def close(self) -> None:
        """Cancel the running route checks and wait until they have ended."""
        for iface in self._interfaces.values():
            for entry in iface.addrs:
                entry.check = None
        await self.routes.close()

    # -- debugging ---------------------------------------------------------

    def __repr__(self) -> str:
        names = ", ".join(str(i.snapshot()) for i in self._visible())
        return f"<NetworkMonitor [{names}]>"


__all__ = [
    "AddressState",
    "NetworkMonitor",
    "Subscriber",
]

"""sspi: the single-subflow-per-interface path manager (userspace PM).

Every MPTCP connection gets **one subflow per local network interface** that
can reach the peer: the initial subflow on its interface, plus one subflow on
each other ready interface.  Meant for ``net.mptcp.path_manager=userspace``
(``pm_type=1``); it has no configuration knobs.

Who does what
=============

*Client side* (``server_side`` false): the client **creates the subflows**.
When the connection is established (``connection_established``; the kernel
refuses ``SUBFLOW_CREATE`` before that), sspi opens, from every other ready
interface, one subflow to the peer (``pm.add_subflow``).  The target is:

* among the addresses the peer announced (``new_address``, in announcement
  order) and the peer's initial address and port, the one that the fewest
  subflows of this connection use (the first on a tie), so that subflows
  spread over the peer's addresses too;
* the initial address and port is left out when the peer set
  ``deny_join_id0`` (RFC 8684 "C" flag: no joins to the initial address and
  port); sspi then waits for ``new_address`` if the peer announced nothing
  yet.

The client opens subflows because it is the side that knows its interfaces
and can reach the server from each of them; a server usually cannot reach a
client behind NAT or a firewall, and RFC 8684 and the in-kernel PM put
subflow creation on the client too.

*Server side* (``server_side`` true): the server **announces** (ADD_ADDR),
once established, the first usable address of each of its other ready
interfaces, so that the client's path manager can join it; it creates no
subflow.  The announcements of one connection leave one at a time, each
:data:`ANNOUNCE_INTERVAL` after the kernel accepted the previous one, as the
in-kernel PM spaces its own: a peer running the in-kernel PM drops an
ADD_ADDR that arrives while it is still acting on the previous one
(``MPTcpExtAddAddrDrop``), and the kernel sends the lost one again only
after its retransmission timeout, up to 15 s later on Linux 6.18.  Announcements use ``pm.add_addr_no_listener`` without a port: the
client joins at the connection's own port, which the application's listener
(normally bound to the wildcard address) already serves.  ``pm.add_addr``
would open one extra listening socket per connection and address, which
would outlive the connection whenever it closes before the address is
withdrawn.

Both sides enforce the rule: a subflow that joins on an interface that
already carries one for that connection is closed (``pm.remove_subflow``)
with the warning ``Subflow already exists on network interface (<idx>).
Closing new subflow.``  When both ends run sspi, a client join to the
server's initial address from a second client interface is such a duplicate
*on the server*; the server closes it, and the client then re-targets that
interface at an address the server announced.  Each (interface, target) pair
is tried at most once per connection (until the interface's carrier comes
back), so this cannot loop.

"Can reach the peer"
====================

Kept deliberately simple: an interface qualifies when it is up and running
(``IFF_UP`` and ``IFF_RUNNING``), is not loopback, and has an address of the
peer's family (the initial subflow's family) that is not link-local (an IPv6
link-local address would need a scope the API does not carry).  Its first
such address, in the order the network monitor recorded them, is used.  No
route lookup is done: a subflow that cannot get through fails and is
forgotten.  The interface of an address is the one holding its IP
(``pm.network_monitor.find_interface``).

State
=====

Per connection (token): the peer's initial address, its announced addresses
(peer ID -> address), whether it is established, and ``{interface index ->
the one subflow}``.  A subflow created by sspi is *pending* (local port
unknown) until its ``new_subflow`` arrives.  Closing one connection
forgets that connection only.  Local address IDs come from ``pm.id_manager``
(shared, 1..255, never 0).

Cleanup: ``connection_closed`` drops the connection; ``subflow_closed`` frees
the interface (and lets the client try another target there);
``address_removed`` forgets the peer's address and the subflows to it (the
kernel closes those); ``link_down``, ``delete_interface`` and
``delete_local_address`` close this host's joins on the dead interface or
address (and free a deleted address's ID); ``link_up`` and
``new_local_address`` fill interfaces that have no subflow again (and, on
the server side, announce new addresses).  A join closed because its
address went does not count as tried: its interface is tried afresh with
its next usable address (the same one back, after an address flap).

Differences from the C sspi (mptcpd 0.12/0.13)
==============================================

* It works: the C plugin announces with address ID 0, which the API rejects
  (EINVAL), and never creates a subflow (``connection_established is
  unimplemented``), so it creates no extra subflow at all (users' #235).
  Here the client creates subflows and the server announces, with IDs from
  the ID manager.
* ``connection_closed`` forgets only that connection (C dropped the whole
  interface record, so other connections on the interface lost their
  tracking).
* ``deny_join_id0`` is honoured.
* The subflows sspi closes as duplicates, and those it expects to close, do
  not produce ``Closed subflow was not tracked ...`` errors.
* Carrier and address loss are handled (C sspi has no network monitoring,
  users' #68).
* A subflow that the kernel refuses, that fails to establish or that closes
  unasked is tried again (client side) after a backoff, as fullmesh and
  ndiffports do: ``retry-base`` (default 1 s) after the first failure,
  twice as long after each further one up to ``retry-cap`` (30 s), at most
  ``retry-attempts`` (6) times, settings of ``[plugin sspi]``; a subflow
  that lived ``retry-cap`` or longer starts afresh; ``link_up`` retries at
  once.  One timer per connection.  C never tries again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from mptcpd.plugin import (
    AddressId,
    PluginInfo,
    Priority,
    QueueFull,
    RetryPolicy,
    SockAddr,
    Token,
    announcement_answered,
    close_subflow,
    hookimpl,
    withdraw_announcement,
)

if TYPE_CHECKING:
    from mptcpd.plugin import Interface, IPAddress, PathManager

PLUGIN = PluginInfo(
    name="sspi",
    description="Single-subflow-per-interface path manager (userspace PM): "
    "one subflow per local network interface and connection",
    priority=Priority.DEFAULT,
)

log = logging.getLogger("mptcpd.plugins.sspi")

#: Seconds between the kernel's answer to one announcement of a connection and
#: the next announcement of that connection (server side).
ANNOUNCE_INTERVAL = 0.02


def plain(addr: SockAddr) -> SockAddr:
    """``addr`` with an IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) made IPv4.

    A dual-stack listener reports its IPv4 connections that way; sspi compares
    and looks up addresses in their plain form, and sends the kernel's own
    form back in commands about existing subflows.
    """
    return addr.unmapped()


@dataclasses.dataclass
class Subflow:
    """The one subflow of a connection on one interface.

    :ivar laddr: local address (as the kernel reported it); its port is 0
        while the subflow is pending.
    :ivar raddr: remote address and port (as the kernel reported it).
    :ivar pending: created by sspi, not yet reported established.
    :ivar initial: the connection's initial subflow.
    """

    laddr: SockAddr
    raddr: SockAddr
    pending: bool = False
    initial: bool = False
    #: loop time it was reported established (None: not yet, or unknown).
    since: float | None = None

    def matches(self, laddr: SockAddr, raddr: SockAddr) -> bool:
        """Whether the kernel's subflow ``laddr``→``raddr`` is this one."""
        laddr, raddr = plain(laddr), plain(raddr)
        if plain(self.raddr) != raddr:
            return False
        if self.pending:
            return bool(laddr.ip == plain(self.laddr).ip)
        return laddr == plain(self.laddr)


@dataclasses.dataclass
class Connection:
    """What sspi keeps about one MPTCP connection."""

    token: Token
    laddr: SockAddr
    raddr: SockAddr
    server_side: bool
    deny_join_id0: bool
    established: bool = False
    #: interface index -> the one subflow on it.
    subflows: dict[int, Subflow] = dataclasses.field(default_factory=dict)
    #: the peer's address ID -> the address it announced (port filled in).
    peer_addrs: dict[AddressId, SockAddr] = dataclasses.field(default_factory=dict)
    #: our address ID -> the address we announced (server side).
    announced: dict[AddressId, SockAddr] = dataclasses.field(default_factory=dict)
    #: subflows sspi closed or expects to close, as plain (laddr, raddr).
    closing: set[tuple[SockAddr, SockAddr]] = dataclasses.field(default_factory=set)
    #: (interface index, target) pairs already tried by the client side.
    attempted: set[tuple[int, SockAddr]] = dataclasses.field(default_factory=set)
    #: server side: an announcement is in flight, or its interval runs
    #: with another one waiting.
    announcing: bool = False
    #: the timer that lets the next announcement go.
    announce_timer: asyncio.TimerHandle | None = None
    #: loop time before which no announcement may leave (0: any time), and
    #: that loop (the one the previous announcement was answered on).
    announce_after: float = 0.0
    announce_loop: asyncio.AbstractEventLoop | None = None
    #: client side: failures in a row of each (interface index, target), and
    #: the loop time when each waiting one may be tried again.
    failures: dict[tuple[int, SockAddr], int] = dataclasses.field(default_factory=dict)
    due: dict[tuple[int, SockAddr], float] = dataclasses.field(default_factory=dict)
    #: client side: attempts in a row the daemon's full command queue refused
    #: (not failures: the kernel never saw them), per (interface index, target);
    #: server side: announcements in a row it refused.
    refusals: dict[tuple[int, SockAddr], int] = dataclasses.field(default_factory=dict)
    announce_refusals: int = 0
    #: timers sending again closes and withdrawals the full queue refused.
    resend_timers: set[asyncio.TimerHandle] = dataclasses.field(default_factory=set)
    #: the one retry timer (at the earliest due), and the loop commands run on.
    retry_timer: asyncio.TimerHandle | None = None
    loop: asyncio.AbstractEventLoop | None = None

    def forget(self) -> None:
        """Stop what is scheduled for the connection."""
        if self.announce_timer is not None:
            self.announce_timer.cancel()
            self.announce_timer = None
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
        for timer in self.resend_timers:
            timer.cancel()
        self.resend_timers.clear()

    @property
    def family(self) -> int:
        """The initial subflow's address family (IPv4 for a mapped address)."""
        family: int = plain(self.raddr).family
        return family

    def interface_of(self, laddr: SockAddr, raddr: SockAddr) -> int | None:
        """The interface whose tracked subflow is ``laddr``→``raddr``."""
        for index, subflow in self.subflows.items():
            if subflow.matches(laddr, raddr):
                return index
        return None


@functools.lru_cache(maxsize=1024)
def _ordinary(ip: IPAddress) -> bool:
    """Neither link-local nor loopback (cached: ``ipaddress`` computes both
    by network membership on every call)."""
    return not ip.is_link_local and not ip.is_loopback


def usable_address(interface: Interface, family: int) -> SockAddr | None:
    """The first address of ``interface`` in ``family`` that is not link-local."""
    for addr in interface.addrs:
        if addr.family == family and _ordinary(addr.ip):
            return addr if not addr.port else SockAddr(addr.ip)
    return None


def candidate_interfaces(pm: PathManager, family: int) -> Iterator[tuple[Interface, SockAddr]]:
    """Ready interfaces with a usable address of ``family``, in ifindex order."""
    for interface in pm.network_monitor.interfaces():
        if interface.is_loopback or not (interface.is_up and interface.is_running):
            continue
        addr = usable_address(interface, family)
        if addr is not None:
            yield interface, addr


class SingleSubflowPerInterface:
    """The plugin's state and logic; the module's hooks delegate to one instance."""

    def __init__(self, retry: RetryPolicy | None = None) -> None:
        self.retry = retry if retry is not None else RetryPolicy()
        self.connections: dict[Token, Connection] = {}
        #: the local addresses sspi took an ID for: it frees them when they go.
        self.with_ids: set[SockAddr] = set()

    def _local_id(self, pm: PathManager, local: SockAddr) -> AddressId:
        """The shared ID of ``local`` (0 when none is left)."""
        local_id = AddressId(pm.id_manager.get_id(local))
        if local_id:
            self.with_ids.add(SockAddr(local.ip))
        return local_id

    # -- helpers -----------------------------------------------------------

    @staticmethod
    def _interface_index(pm: PathManager, addr: SockAddr) -> int | None:
        interface = pm.network_monitor.find_interface(plain(addr))
        if interface is None:
            log.error("No network interface with given IP address.")
            return None
        return int(interface.index)

    def _targets(self, conn: Connection) -> list[tuple[SockAddr, AddressId]]:
        """The peer addresses a client subflow may go to, with their peer IDs."""
        initial = plain(conn.raddr)
        targets = [(addr, rid) for rid, addr in conn.peer_addrs.items()
                   if addr.family == conn.family
                   and not (conn.deny_join_id0 and addr == initial)]
        if not conn.deny_join_id0:
            targets.append((initial, AddressId(0)))
        return targets

    def _choose_target(self, conn: Connection, index: int,
                       targets: list[tuple[SockAddr, AddressId]] | None = None,
                       ) -> tuple[SockAddr, AddressId] | None:
        if targets is None:
            targets = self._targets(conn)
        attempted = conn.attempted
        targets = [t for t in targets if (index, t[0]) not in attempted]
        if not targets:
            return None
        if len(targets) == 1:
            return targets[0]
        used = [plain(subflow.raddr) for subflow in conn.subflows.values()]
        # The least used target; the first one on a tie.
        return min(targets, key=lambda target: used.count(target[0]))

    def _fill(self, conn: Connection, pm: PathManager) -> None:
        """Client side: create a subflow on each ready interface that has none."""
        if conn.server_side or not conn.established:
            return
        targets = self._targets(conn)
        for interface, local in candidate_interfaces(pm, conn.family):
            index = int(interface.index)
            if index in conn.subflows:
                continue
            target = self._choose_target(conn, index, targets)
            if target is None:
                if conn.deny_join_id0 and not conn.peer_addrs:
                    log.debug("Connection %08x: the peer denies joins to its initial "
                              "address and announced none yet.", conn.token)
                continue
            raddr, remote_id = target
            local_id = self._local_id(pm, local)
            if not local_id:
                log.error("Unable to map addr to ID.")
                continue
            conn.attempted.add((index, raddr))
            subflow = Subflow(local, raddr, pending=True)
            conn.subflows[index] = subflow
            log.debug("Connection %08x: creating a subflow on %s from %s (id %d) to %s "
                      "(id %d).", conn.token, interface, local, local_id, raddr, remote_id)
            try:
                future = pm.add_subflow(conn.token, local_id, remote_id, local, raddr)
            except (ValueError, OSError) as exc:
                log.warning("Unable to create a subflow on network interface (%d): %s",
                            index, exc)
                del conn.subflows[index]
                conn.attempted.discard((index, raddr))  # never sent: may be tried again
                continue
            if conn.loop is None:
                conn.loop = future.get_loop()
            future.add_done_callback(self._on_refusal(conn, index, subflow, pm))

    def _on_refusal(self, conn: Connection, index: int, subflow: Subflow,
                    pm: PathManager) -> Callable[[asyncio.Future[Any]], None]:
        """A done-callback freeing the interface when the kernel refuses the
        subflow (the channel has logged the error); it is tried again later."""

        def done(future: asyncio.Future[Any]) -> None:
            cancelled = future.cancelled()  # the connection closed
            error = None if cancelled else future.exception()
            full = isinstance(error, QueueFull)
            if conn.refusals and not full:
                conn.refusals.pop((index, plain(subflow.raddr)), None)
            if (cancelled or error is not None) and subflow.pending \
                    and conn.subflows.get(index) is subflow:
                del conn.subflows[index]
                if full:
                    self._not_sent(conn, index, plain(subflow.raddr), pm)
                elif not cancelled:
                    self._failed(conn, index, plain(subflow.raddr), pm)

        return done

    # -- retries (client side) -------------------------------------------------

    def _failed(self, conn: Connection, index: int, target: SockAddr,
                pm: PathManager, since: float | None = None) -> None:
        """The subflow on ``index`` to ``target`` (established at loop time
        ``since``, None: never) failed: try it again after the backoff, or
        give it up."""
        if (conn.server_side or conn.loop is None
                or self.connections.get(conn.token) is not conn):
            return
        key = (index, target)
        now = conn.loop.time()
        lived = None if since is None else now - since
        failures, due = self.retry.after_failure(conn.failures.get(key, 0), now, lived)
        conn.failures[key] = failures
        if due == math.inf:
            log.info("Connection %08x: giving up on a subflow on interface %d to %s "
                     "after %d attempts.", conn.token, index, target, failures)
            return
        conn.due[key] = due
        self._schedule(conn, pm)

    def _not_sent(self, conn: Connection, index: int, target: SockAddr,
                  pm: PathManager) -> None:
        """The daemon's full command queue refused the subflow on ``index``
        to ``target``: asked for again after a backoff, spread at random so
        that the connections refused together do not all come back at once,
        and never given up for it (the kernel never saw it)."""
        if self.connections.get(conn.token) is not conn or conn.loop is None:
            return
        key = (index, target)
        refusals = conn.refusals[key] = conn.refusals.get(key, 0) + 1
        conn.due[key] = self.retry.after_refusal(refusals, conn.loop.time())
        self._schedule(conn, pm)

    def _schedule(self, conn: Connection, pm: PathManager) -> None:
        """One timer per connection, at its earliest due retry."""
        if not conn.due or conn.loop is None:
            return
        when = min(conn.due.values())
        timer = conn.retry_timer
        if timer is not None and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        conn.retry_timer = conn.loop.call_at(when, self._retry_due, conn, pm)

    def _retry_due(self, conn: Connection, pm: PathManager) -> None:
        conn.retry_timer = None
        if self.connections.get(conn.token) is not conn or conn.loop is None:
            return
        now = conn.loop.time()
        for key, when in list(conn.due.items()):
            if when <= now:
                del conn.due[key]
                conn.attempted.discard(key)
        try:
            self._fill(conn, pm)
            self._schedule(conn, pm)
        except Exception:  # a timer callback: no hook containment around it
            log.exception("Connection %08x: opening subflows again failed.", conn.token)

    @staticmethod
    def _to_announce(conn: Connection, pm: PathManager) -> Iterator[SockAddr]:
        """Server side: the addresses of the other ready interfaces not
        announced yet on ``conn``."""
        announced = set(conn.announced.values())
        initial = plain(conn.laddr).ip
        for interface, local in candidate_interfaces(pm, conn.family):
            subflow = conn.subflows.get(int(interface.index))
            if subflow is not None and subflow.initial:
                continue
            if local not in announced and local.ip != initial:
                yield local

    def _announce(self, conn: Connection, pm: PathManager, due: bool = False) -> None:
        """Server side: announce the next of the other interfaces' addresses
        not announced yet; the rest follow one by one, each
        :data:`ANNOUNCE_INTERVAL` after the kernel answered the previous one
        (``due``: that interval has run out)."""
        if not conn.server_side or not conn.established or conn.announcing:
            return
        for local in self._to_announce(conn, pm):
            loop = conn.announce_loop
            wait = conn.announce_after - loop.time() if loop is not None and not due else 0.0
            if loop is not None and wait > 0:  # too soon after the previous one
                conn.announcing = True
                conn.announce_timer = loop.call_later(wait, self._announce_next, conn, pm)
                return
            local_id = self._local_id(pm, local)
            if not local_id:
                log.error("Unable to map addr to ID.")
                continue
            log.debug("Connection %08x: announcing %s (id %d).", conn.token, local, local_id)
            try:
                future = pm.add_addr_no_listener(local, local_id, conn.token)
            except (ValueError, OSError) as exc:
                log.warning("Unable to announce %s: %s", local, exc)
                continue
            conn.announced[local_id] = local
            conn.announcing = True
            future.add_done_callback(
                functools.partial(self._announced, conn, pm, local_id, local))
            return

    def _announced(self, conn: Connection, pm: PathManager, local_id: AddressId,
                   local: SockAddr, future: asyncio.Future[Any]) -> None:
        """The kernel answered an announcement: the next one, if any, in
        :data:`ANNOUNCE_INTERVAL` (no timer when there is none).  One the
        daemon's full command queue refused is made again after a backoff,
        as a refused subflow is."""
        if self.connections.get(conn.token) is not conn:
            return
        loop = conn.announce_loop = future.get_loop()
        delay, conn.announce_refusals = announcement_answered(
            future, conn.announced, local_id, local, conn.announce_refusals, self.retry,
            ANNOUNCE_INTERVAL)
        conn.announce_after = loop.time() + delay
        if next(self._to_announce(conn, pm), None) is None:
            conn.announcing = False  # a later address waits out the interval
            return
        conn.announce_timer = loop.call_later(delay, self._announce_next, conn, pm)

    def _announce_next(self, conn: Connection, pm: PathManager) -> None:
        conn.announce_timer = None
        conn.announcing = False
        if self.connections.get(conn.token) is not conn:
            return
        try:
            self._announce(conn, pm, due=True)
        except Exception:  # a timer callback: no hook containment around it
            log.exception("Connection %08x: announcing failed.", conn.token)

    def _close_subflow(self, conn: Connection, index: int, pm: PathManager) -> None:
        """Forget the subflow on ``index`` and close it unless it is pending."""
        subflow = conn.subflows.pop(index, None)
        if subflow is None or subflow.pending:
            return
        self._remove_subflow(conn, subflow.laddr, subflow.raddr, pm)

    def _remove_subflow(self, conn: Connection, laddr: SockAddr, raddr: SockAddr,
                        pm: PathManager) -> None:
        """Close the subflow ``laddr`` -> ``raddr`` (the kernel's own form);
        asked for again while the daemon's full queue refuses it."""
        key = (plain(laddr), plain(raddr))
        conn.closing.add(key)
        close_subflow(pm, conn.token, laddr, raddr,
                      lambda: self.connections.get(conn.token) is conn and key in conn.closing,
                      self.retry, conn.resend_timers, log)

    # -- connection events ---------------------------------------------------

    def new_connection(self, token: Token, laddr: SockAddr, raddr: SockAddr,
                       server_side: bool, deny_join_id0: bool, pm: PathManager) -> None:
        conn = Connection(token, laddr, raddr, bool(server_side), bool(deny_join_id0))
        self.connections[token] = conn
        index = self._interface_index(pm, laddr)
        if index is None:
            log.error("Unable to track new connection")
            return
        conn.subflows[index] = Subflow(laddr, raddr, initial=True)

    def connection_established(self, token: Token, laddr: SockAddr, raddr: SockAddr,
                               server_side: bool, deny_join_id0: bool,
                               pm: PathManager) -> None:
        conn = self.connections.get(token)
        if conn is None:
            # Not seen at creation (cannot happen with the daemon's dispatch).
            self.new_connection(token, laddr, raddr, server_side, deny_join_id0, pm)
            conn = self.connections[token]
        conn.deny_join_id0 = conn.deny_join_id0 or bool(deny_join_id0)
        conn.established = True
        log.debug("Connection %08x established (%s side, deny_join_id0 %s).", token,
                  "server" if conn.server_side else "client", conn.deny_join_id0)
        if conn.server_side:
            self._announce(conn, pm)
        else:
            self._fill(conn, pm)

    def connection_closed(self, token: Token) -> None:
        conn = self.connections.pop(token, None)
        if conn is None:
            log.error("Untracked connection closed.")
            return
        conn.forget()

    def new_address(self, token: Token, addr_id: AddressId, addr: SockAddr,
                    pm: PathManager) -> None:
        conn = self.connections.get(token)
        if conn is None:
            return
        addr = plain(addr)
        if not addr.port:
            # No port announced: the peer takes joins on the connection's port.
            addr = addr.with_port(conn.raddr.port)
        conn.peer_addrs[addr_id] = addr
        self._fill(conn, pm)

    def address_removed(self, token: Token, addr_id: AddressId, pm: PathManager) -> None:
        conn = self.connections.get(token)
        if conn is None:
            return
        addr = conn.peer_addrs.pop(addr_id, None)
        if addr is None:
            return
        # The kernel closes the subflows to a removed address itself.
        for index, subflow in list(conn.subflows.items()):
            if plain(subflow.raddr).ip == addr.ip and not subflow.initial:
                del conn.subflows[index]
                if not subflow.pending:
                    conn.closing.add((plain(subflow.laddr), plain(subflow.raddr)))
        self._fill(conn, pm)

    def new_subflow(self, token: Token, laddr: SockAddr, raddr: SockAddr,
                    pm: PathManager) -> None:
        conn = self.connections.get(token)
        if conn is None:
            log.error("Unable to track new subflow.")
            return
        index = self._interface_index(pm, laddr)
        if index is None:
            log.error("Unable to track new subflow.")
            if not conn.server_side:
                # A join from an address this host no longer has (one given
                # up while pending when the address went, completed after
                # all): closed like the joins of a removed address, not left
                # untracked for good.
                log.info("Connection %08x: closing the subflow %s -> %s: its address is "
                         "not on this host.", token, laddr, raddr)
                self._remove_subflow(conn, laddr, raddr, pm)
            return
        current = conn.subflows.get(index)
        if current is None:
            conn.subflows[index] = Subflow(laddr, raddr)
            return
        if current.pending and current.matches(laddr, raddr):
            current.laddr = laddr
            current.pending = False
            current.since = conn.loop.time() if conn.loop is not None else None
            return
        log.warning("Subflow already exists on network interface (%d). "
                    "Closing new subflow.", index)
        self._remove_subflow(conn, laddr, raddr, pm)

    def subflow_closed(self, token: Token, laddr: SockAddr, raddr: SockAddr,
                       pm: PathManager) -> None:
        conn = self.connections.get(token)
        if conn is None:
            return
        key = (plain(laddr), plain(raddr))
        if key in conn.closing:
            conn.closing.discard(key)
            return
        index = conn.interface_of(laddr, raddr)
        if index is None:
            interface = pm.network_monitor.find_interface(key[0])
            if interface is None:
                log.error("No tracked subflows on network interface.")
            else:
                log.error("Closed subflow was not tracked on network interface %d.",
                          interface.index)
            return
        subflow = conn.subflows.pop(index)
        if not subflow.initial:
            self._failed(conn, index, plain(subflow.raddr), pm, subflow.since)
        self._fill(conn, pm)

    def _withdraw(self, conn: Connection, local_id: AddressId, local: SockAddr,
                  pm: PathManager) -> None:
        """Withdraw the announcement of ``local`` (while the ID is not
        announced again on the connection)."""
        withdraw_announcement(pm, conn.token, local_id, local,
                              lambda: (self.connections.get(conn.token) is conn
                                       and local_id not in conn.announced),
                              self.retry, conn.resend_timers, log)

    # -- network monitor events ----------------------------------------------

    def forget_interface(self, index: int, pm: PathManager) -> None:
        """Close this host's joins on interface ``index`` (carrier or interface lost)."""
        for conn in self.connections.values():
            subflow = conn.subflows.get(index)
            if subflow is not None and not subflow.initial:
                self._close_subflow(conn, index, pm)

    @staticmethod
    def _afresh(conn: Connection, index: int) -> None:
        """``conn`` may try interface ``index`` again, at once."""
        conn.attempted = {pair for pair in conn.attempted if pair[0] != index}
        conn.failures = {k: n for k, n in conn.failures.items() if k[0] != index}
        conn.due = {k: when for k, when in conn.due.items() if k[0] != index}

    def link_up(self, index: int, pm: PathManager) -> None:
        """The interface runs again: every connection may try it afresh."""
        for conn in self.connections.values():
            self._afresh(conn, index)
            self._fill(conn, pm)
            self._announce(conn, pm)

    def new_local_address(self, pm: PathManager) -> None:
        for conn in self.connections.values():
            self._fill(conn, pm)
            self._announce(conn, pm)

    def delete_local_address(self, addr: SockAddr, pm: PathManager) -> None:
        for conn in self.connections.values():
            closed = False
            for index, subflow in list(conn.subflows.items()):
                if plain(subflow.laddr).ip == addr.ip and not subflow.initial:
                    self._close_subflow(conn, index, pm)
                    # Not a failure of the interface: it is tried afresh
                    # with its next usable address (this one back, say:
                    # once per connection would leave an address flap
                    # without its subflow for good).
                    self._afresh(conn, index)
                    closed = True
            if closed:
                self._fill(conn, pm)
            for local_id, local in list(conn.announced.items()):
                if local.ip == addr.ip:
                    del conn.announced[local_id]
                    self._withdraw(conn, local_id, local, pm)
        # The address is gone: its ID may serve another one (C's sspi never
        # frees one, and runs out after 255 addresses).
        key = SockAddr(addr.ip)
        if key in self.with_ids:
            self.with_ids.discard(key)
            pm.id_manager.remove_id(key)


_sspi = SingleSubflowPerInterface()


# -- hooks ---------------------------------------------------------------------


@hookimpl
def plugin_init(pm: PathManager) -> None:
    """Read the retry settings; start with no tracked connection."""
    global _sspi
    settings = pm.config.plugin_settings(PLUGIN.name)
    settings.check_keys(RetryPolicy.KEYS)
    _sspi = SingleSubflowPerInterface(RetryPolicy.from_settings(settings, log))
    log.info("MPTCP single-subflow-per-interface path manager initialized.")


@hookimpl
def plugin_exit(pm: PathManager) -> None:
    """Forget everything."""
    for conn in _sspi.connections.values():
        conn.forget()
    _sspi.connections.clear()
    log.info("MPTCP single-subflow-per-interface path manager exited.")


@hookimpl
def new_connection(token: Token, laddr: SockAddr, raddr: SockAddr, server_side: bool,
                   deny_join_id0: bool, pm: PathManager) -> None:
    """Track the connection and its initial subflow's interface."""
    _sspi.new_connection(token, laddr, raddr, server_side, deny_join_id0, pm)


@hookimpl
def connection_established(token: Token, laddr: SockAddr, raddr: SockAddr,
                           server_side: bool, deny_join_id0: bool,
                           pm: PathManager) -> None:
    """Client: create the subflows; server: announce the other addresses."""
    _sspi.connection_established(token, laddr, raddr, server_side, deny_join_id0, pm)


@hookimpl
def connection_closed(token: Token) -> None:
    """Forget the connection (and only it)."""
    _sspi.connection_closed(token)


@hookimpl
def new_address(token: Token, addr_id: AddressId, addr: SockAddr, pm: PathManager) -> None:
    """Remember a peer address; the client may use it for interfaces with no subflow."""
    _sspi.new_address(token, addr_id, addr, pm)


@hookimpl
def address_removed(token: Token, addr_id: AddressId, pm: PathManager) -> None:
    """Forget a peer address and the subflows to it."""
    _sspi.address_removed(token, addr_id, pm)


@hookimpl
def new_subflow(token: Token, laddr: SockAddr, raddr: SockAddr, pm: PathManager) -> None:
    """Track a subflow, or close it when its interface already has one."""
    _sspi.new_subflow(token, laddr, raddr, pm)


@hookimpl
def subflow_closed(token: Token, laddr: SockAddr, raddr: SockAddr, pm: PathManager) -> None:
    """Free the subflow's interface."""
    _sspi.subflow_closed(token, laddr, raddr, pm)


@hookimpl
def link_down(interface: Interface, pm: PathManager) -> None:
    """Close the joins on an interface that lost its carrier."""
    _sspi.forget_interface(int(interface.index), pm)


@hookimpl
def delete_interface(interface: Interface, pm: PathManager) -> None:
    """Close the joins on an interface that went down or away."""
    _sspi.forget_interface(int(interface.index), pm)


@hookimpl
def link_up(interface: Interface, pm: PathManager) -> None:
    """Use an interface whose carrier came back again."""
    _sspi.link_up(int(interface.index), pm)


@hookimpl
def new_local_address(pm: PathManager) -> None:
    """An interface may have become usable: fill the gaps."""
    _sspi.new_local_address(pm)


@hookimpl
def delete_local_address(addr: SockAddr, pm: PathManager) -> None:
    """Close the joins from a removed address and withdraw its announcements."""
    _sspi.delete_local_address(addr, pm)

"""A toolkit for userspace path managers: keep a wanted set of subflows.

The bundled userspace path managers (``fullmesh``, ``ndiffports``) differ in
*which* subflows a connection should have; the bookkeeping is the same, so
it lives here, public through :mod:`mptcpd.plugin`:

* a plugin gives a :class:`SubflowKeeper` a function ``want(conn, pm)`` that
  lists the subflows connection ``conn`` should have besides those it has
  (:class:`Wanted`, each with a *key* naming the slot it fills);
* the plugin's hooks call the keeper's methods of the same names; the keeper
  tracks each connection (:class:`KeptConnection`: the peer's addresses, the
  subflows, pending or established), opens the wanted subflows once the
  connection is established (client side), up to ``max_subflows`` per
  connection, the initial one included, and, on the server side, announces
  the host's other addresses one at a time;
* it closes this host's subflows on an interface that lost its carrier or
  went away, or from an address that was removed, and fills the gaps when
  an interface or an address comes back.

Who closed a subflow matters: those the keeper closes itself are expected
(no error is logged when their ``subflow_closed`` arrives).

A pending subflow whose address goes is given up, not closed: there is
nothing to close yet.  The kernel may still complete it (its SYN goes out
again once the address is back), while the keeper has asked for a new one
on the address's return.  So the keeper remembers what it gave up
(:attr:`KeptConnection.abandoned`): such a join, when it is reported
established, fills a free slot of its path, or is closed: as one too many
when the path's slots are all held again, or because its path is not
wanted at that moment (its address or its interface's carrier is still
gone; the keeper opens a new one when it is back).  (An address flapping
under a connection flood left up to seven subflows on one fullmesh path.)
A join on a path that the keeper did not open is left alone.

Re-creating lost subflows
=========================

A subflow the keeper opened that the kernel refuses, that fails to
establish (``subflow_closed`` before ``new_subflow``) or that closes unasked
is a *failure* of its slot.  While ``want`` still lists the slot (its
interface is ready, its local address is there, the peer's address is
still offered), it is opened again after a backoff (:class:`RetryPolicy`):
``base`` seconds after the first failure, twice as long after each further
one, never more than ``cap``; after ``attempts`` retries that all failed,
the slot is given up.  A subflow that stayed established for ``cap``
seconds or more clears its slot's failures.  When an interface's carrier
comes back (``link_up``), or an address comes back, the slots of its
addresses start afresh and are opened at once (a join the kernel refused
while the address was gone says nothing of its path).  Each connection has
at most one retry timer, at the earliest due slot; it is cancelled when the
connection closes.

A creation or an announcement the daemon could not send (its command queue
was full: :class:`~mptcpd.errors.QueueFull`) is not a failure: the kernel
never saw it.  It is asked for again after the same backoff
(:meth:`RetryPolicy.after_refusal`), spread over up to half as long again so
that the connections refused together do not all come back in the same loop
turn, and it is never given up for it.  So is a command that closes a
subflow or withdraws an announcement (:func:`resend_refused`), while it is
still wanted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import random
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any

from mptcpd.errors import QueueFull
from mptcpd.types import Interface, SockAddr

if TYPE_CHECKING:
    from mptcpd.plugin import PathManager, PluginSettings

#: Creations given up while pending that a connection remembers (the
#: oldest are forgotten first).
MAX_ABANDONED = 64
#: Seconds between the kernel's answer to one announcement of a connection
#: and the next one (a peer running the in-kernel PM drops an ADD_ADDR that
#: arrives while it still acts on the previous one).
ANNOUNCE_INTERVAL = 0.02


def plain(addr: SockAddr) -> SockAddr:
    """``addr`` with an IPv4-mapped IPv6 address made IPv4."""
    return addr.unmapped()


def _ordinary(addr: SockAddr) -> bool:
    return not addr.ip.is_link_local and not addr.ip.is_loopback


def usable_interfaces(pm: PathManager) -> Iterator[Interface]:
    """Ready interfaces (up, running, not loopback), in ifindex order."""
    for interface in pm.network_monitor.interfaces():
        if not interface.is_loopback and interface.is_up and interface.is_running:
            yield interface


def usable_addresses(pm: PathManager, family: int,
                     interface: Interface | None = None) -> Iterator[tuple[Interface, SockAddr]]:
    """Every address of ``family`` that is neither link-local nor loopback,
    with its interface, of the ready interfaces (or of ``interface`` only),
    in ifindex order and, per interface, in the order they arrived; port 0."""
    interfaces = usable_interfaces(pm) if interface is None else iter((interface,))
    for each in interfaces:
        for addr in each.addrs:
            if addr.family == family and _ordinary(addr):
                yield each, SockAddr(addr.ip)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How lost subflows are re-created (see the module).

    :ivar base: seconds before the first retry (``retry-base``).
    :ivar cap: the longest wait between two attempts (``retry-cap``).
    :ivar attempts: retries of a slot before it is given up (``retry-attempts``;
        0: never retried).
    """

    base: float = 1.0
    cap: float = 30.0
    attempts: int = 6

    #: the settings keys :meth:`from_settings` reads.
    KEYS = ("retry-base", "retry-cap", "retry-attempts")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1-based)."""
        return min(self.cap, self.base * 2.0 ** min(failures - 1, 64))

    def after_failure(self, failures: int, now: float,
                      lived: float | None = None) -> tuple[int, float]:
        """One more failure of an attempt that had failed ``failures`` times
        in a row: the new count, and the loop time from which it may be made
        again (``math.inf``: given up).  ``lived`` is how long the lost
        subflow had been established (None: it never was); ``cap`` seconds
        or more make the loss a first failure again."""
        if lived is not None and lived >= self.cap:
            failures = 0
        failures += 1
        if failures > self.attempts:
            return failures, math.inf
        return failures, now + self.delay(failures)

    def after_refusal(self, refusals: int, now: float) -> float:
        """The loop time from which a command the daemon's full queue refused
        ``refusals`` times in a row may be asked for again: the backoff of as
        many failures, times 1 to 1.5 at random.  Never given up."""
        return now + self.delay(refusals) * random.uniform(1.0, 1.5)

    @classmethod
    def from_settings(cls, settings: PluginSettings, log: logging.Logger) -> RetryPolicy:
        """The policy of a plugin's settings; a bad value is logged as an
        error (naming file, line, group and key) and its default used."""
        default = cls()
        values: dict[str, float | int] = {}
        for key, read in (
                ("retry-base", lambda k, d: settings.get_duration(k, d, min=0.001, max=3600)),
                ("retry-cap", lambda k, d: settings.get_duration(k, d, min=0.001, max=86400)),
                ("retry-attempts", lambda k, d: settings.get_int(k, d, min=0, max=1000))):
            field = key.removeprefix("retry-")
            fallback = getattr(default, field)
            try:
                values[field] = read(key, fallback)
            except ValueError as exc:
                log.error("%s; using %s.", exc, fallback)
                values[field] = fallback
        policy = cls(**values)  # type: ignore[arg-type]
        if policy.cap < policy.base:
            log.error("retry-cap (%g s) is shorter than retry-base (%g s); using %g s.",
                      policy.cap, policy.base, policy.base)
            policy = dataclasses.replace(policy, cap=policy.base)
        return policy


@dataclasses.dataclass
class Slot:
    """The failure record of one wanted subflow (a key) of a connection.

    :ivar laddr: the local address of its last attempt.
    :ivar failures: failures in a row.
    :ivar due: loop time before which it is not opened again (inf: given up).
    :ivar refusals: attempts in a row the daemon's full queue refused.
    """

    laddr: SockAddr
    failures: int = 0
    due: float = 0.0
    refusals: int = 0


@dataclasses.dataclass(frozen=True)
class Wanted:
    """A subflow a connection should have.

    :ivar key: names the slot the subflow fills (hashable; e.g. the local IP
        and the remote address); a slot has at most one subflow at a time.
    :ivar laddr: the local address (port 0: any port).
    :ivar raddr: the peer's address and port.
    :ivar remote_id: the peer's ID of ``raddr`` (0 for its initial address).
    :ivar backup: passed to ``pm.add_subflow``: the join asks for backup
        priority in its SYN (seen on Linux 6.18; a kernel that does not
        honour it leaves it out, and the events tell the peer's flag, not
        ours, so failover also marks the subflow with ``pm.set_backup``
        once established).
    """

    key: Hashable
    laddr: SockAddr
    raddr: SockAddr
    remote_id: int = 0
    backup: bool = False


@dataclasses.dataclass
class Kept:
    """One subflow of a connection.

    :ivar laddr: local address as the kernel reported it (port 0 while pending).
    :ivar raddr: remote address and port.
    :ivar key: the slot it fills (None: not opened by the keeper).
    :ivar pending: opened by the keeper, not reported established yet.
    :ivar initial: the connection's initial subflow.
    :ivar backup: this side's backup priority, as the plugin last asked for
        it (``pm.set_backup``); False once the subflow is established, for
        the kernel's events do not tell it (a join created with ``backup``
        asked for it in its SYN, which not every kernel honours).
    :ivar peer_backup: the peer asked for it to be a backup (its MP_JOIN's B
        bit or its MP_PRIO): the ``backup`` of the kernel's events.
    """

    laddr: SockAddr
    raddr: SockAddr
    key: Hashable | None = None
    pending: bool = False
    initial: bool = False
    backup: bool = False
    peer_backup: bool = False
    #: loop time it was reported established (None: not yet).
    since: float | None = None

    def same_path(self, laddr: SockAddr, raddr: SockAddr) -> bool:
        """Same local IP and same remote address and port."""
        return (plain(self.laddr).ip == plain(laddr).ip
                and plain(self.raddr) == plain(raddr))


@dataclasses.dataclass
class KeptConnection:
    """What the keeper knows about one MPTCP connection."""

    token: int
    laddr: SockAddr
    raddr: SockAddr
    server_side: bool
    deny_join_id0: bool
    established: bool = False
    subflows: list[Kept] = dataclasses.field(default_factory=list)
    #: the peer's address ID -> the address it announced (port filled in).
    peer_addrs: dict[int, SockAddr] = dataclasses.field(default_factory=dict)
    #: our address ID -> the address announced (server side).
    announced: dict[int, SockAddr] = dataclasses.field(default_factory=dict)
    #: subflows the keeper closed, as plain (laddr, raddr), until their event.
    closing: set[tuple[SockAddr, SockAddr]] = dataclasses.field(default_factory=set)
    #: creations the keeper gave up while they were pending (their address
    #: went), as (local IP, plain raddr), oldest first: the kernel may still
    #: complete them (the SYN goes out again once the address is back).
    abandoned: list[tuple[SockAddr, SockAddr]] = dataclasses.field(default_factory=list)
    announcing: bool = False
    announce_timer: asyncio.TimerHandle | None = None
    #: announcements in a row the daemon's full queue refused.
    announce_refusals: int = 0
    #: timers sending again closes and withdrawals the full queue refused.
    resend_timers: set[asyncio.TimerHandle] = dataclasses.field(default_factory=set)
    #: key -> failure record of the slots that failed.
    slots: dict[Hashable, Slot] = dataclasses.field(default_factory=dict)
    #: the one retry timer (at the earliest due slot), and its loop.
    retry_timer: asyncio.TimerHandle | None = None
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def family(self) -> int:
        """The initial subflow's address family (IPv4 for a mapped address)."""
        family: int = plain(self.raddr).family
        return family

    def targets(self) -> list[tuple[SockAddr, int]]:
        """The peer's addresses a join may go to, with their peer IDs: its
        initial address and port (unless ``deny_join_id0``) first, then the
        addresses it announced in the family of the connection, in order."""
        initial = plain(self.raddr)
        result = [] if self.deny_join_id0 else [(initial, 0)]
        for rid, addr in self.peer_addrs.items():
            if addr.family == self.family and not (self.deny_join_id0 and addr == initial) \
                    and all(addr != known for known, _ in result):
                result.append((addr, rid))
        return result

    def abandon(self, laddr: SockAddr, raddr: SockAddr) -> None:
        """Record a pending join the keeper gave up (the oldest records go
        first, past :data:`MAX_ABANDONED`)."""
        del self.abandoned[:-MAX_ABANDONED + 1]
        self.abandoned.append(_path(laddr, raddr))

    def unabandon(self, laddr: SockAddr, raddr: SockAddr) -> bool:
        """Drop one record of a join given up on that path; whether there
        was one."""
        path = _path(laddr, raddr)
        if path not in self.abandoned:
            return False
        self.abandoned.remove(path)
        return True

    def has_path(self, laddr: SockAddr, raddr: SockAddr) -> bool:
        """Whether a subflow (pending or not) goes from ``laddr``'s IP to ``raddr``."""
        return any(kept.same_path(laddr, raddr) for kept in self.subflows)

    def stop(self) -> None:
        """Cancel what is scheduled for the connection."""
        if self.announce_timer is not None:
            self.announce_timer.cancel()
            self.announce_timer = None
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
        for timer in self.resend_timers:
            timer.cancel()
        self.resend_timers.clear()


def _path(laddr: SockAddr, raddr: SockAddr) -> tuple[SockAddr, SockAddr]:
    """A join's path as :attr:`KeptConnection.abandoned` records it: the
    local IP (no port) and the plain remote address."""
    return SockAddr(plain(laddr).ip), plain(raddr)


def refused_by_queue(future: asyncio.Future[Any]) -> bool:
    """Whether the daemon's full command queue refused the command whose
    future this is: it fails such a future with
    :class:`~mptcpd.errors.QueueFull` before handing it over."""
    return (future.done() and not future.cancelled()
            and isinstance(future.exception(), QueueFull))


def resend_refused(future: asyncio.Future[Any], send: Callable[[], asyncio.Future[Any]],
                   wanted: Callable[[], bool], retry: RetryPolicy,
                   timers: set[asyncio.TimerHandle], log: logging.Logger | None = None,
                   refusals: int = 0) -> None:
    """``future`` is what ``send()`` (a ``pm`` call) just returned: if the
    daemon's full command queue refused that command
    (:func:`refused_by_queue`: the kernel never saw it), send it again with
    ``send()`` after :meth:`RetryPolicy.after_refusal`, if ``wanted()`` says
    it is still wanted then, and so on while the queue refuses it.  The timer
    waiting to send it is kept in ``timers``: cancel those when what they are
    about goes (a closed connection).  ``ValueError`` and ``OSError`` from a
    later ``send()`` go to ``log``.  The queue refuses at once, so a caller
    may skip the call while ``future.done()`` is false (the usual case)::

        future = pm.remove_subflow(token, laddr, raddr)
        if future.done():
            resend_refused(future, lambda: pm.remove_subflow(token, laddr, raddr),
                           still_wanted, retry, timers, log)
    """
    if not refused_by_queue(future):
        return
    loop = future.get_loop()

    def again() -> None:
        timers.discard(handle)
        if not wanted():
            return
        try:
            resend_refused(send(), send, wanted, retry, timers, log, refusals + 1)
        except (ValueError, OSError) as exc:
            if log is not None:
                log.warning("Unable to send a command again: %s", exc)

    handle = loop.call_at(retry.after_refusal(refusals + 1, loop.time()), again)
    timers.add(handle)


def close_subflow(pm: PathManager, token: int, laddr: SockAddr, raddr: SockAddr,
                  wanted: Callable[[], bool], retry: RetryPolicy,
                  timers: set[asyncio.TimerHandle], log: logging.Logger) -> None:
    """``pm.remove_subflow(token, laddr, raddr)``, sent again while the
    daemon's full queue refuses it and ``wanted()`` (:func:`resend_refused`);
    an argument or a family the daemon rejects is logged as a warning."""
    try:
        future = pm.remove_subflow(token, laddr, raddr)
    except (ValueError, OSError) as exc:
        log.warning("Unable to close subflow %s -> %s: %s", laddr, raddr, exc)
        return
    if future.done():  # refused by the full queue (taken: not done yet)
        resend_refused(future, lambda: pm.remove_subflow(token, laddr, raddr), wanted,
                       retry, timers, log)


def withdraw_announcement(pm: PathManager, token: int, local_id: int, local: SockAddr,
                          wanted: Callable[[], bool], retry: RetryPolicy,
                          timers: set[asyncio.TimerHandle], log: logging.Logger) -> None:
    """``pm.remove_addr(None, local_id, token)`` (the announcement of
    ``local``), sent again as :func:`close_subflow` is."""
    try:
        future = pm.remove_addr(None, local_id, token)
    except (ValueError, OSError) as exc:
        log.warning("Unable to withdraw %s: %s", local, exc)
        return
    if future.done():
        resend_refused(future, lambda: pm.remove_addr(None, local_id, token), wanted,
                       retry, timers, log)


def announcement_answered(future: asyncio.Future[Any], announced: dict[Any, SockAddr],
                          local_id: int, local: SockAddr, refusals: int,
                          retry: RetryPolicy,
                          interval: float = ANNOUNCE_INTERVAL) -> tuple[float, int]:
    """The answer to an announcement of ``local`` (ID ``local_id``) came:
    how long until the next announcement of the connection may leave, and
    the refusals in a row now.  One the daemon's full queue refused was never
    made: it leaves ``announced`` (to be made again) and the next waits the
    refusals' backoff (:meth:`RetryPolicy.after_refusal`); otherwise
    ``interval``."""
    if not refused_by_queue(future):
        return interval, 0
    if announced.get(local_id) == local:
        del announced[local_id]
    refusals += 1
    return retry.after_refusal(refusals, 0.0), refusals


WantFunction = Callable[[KeptConnection, "PathManager"], list[Wanted]]


class SubflowKeeper:
    """Keeps each connection's subflows as ``want`` says (see the module).

    :param want: lists, for an established client-side connection, the
        subflows it should have and does not have yet (the keeper skips the
        keys it already has a subflow for), in the order to open them.
    :param log: the plugin's logger.
    :param max_subflows: most subflows per connection, the initial one included.
    :param announce: on the server side, announce this host's other usable
        addresses (ADD_ADDR, no listener: joins come to the connection's port).
    :param retry: how lost subflows are re-created.
    """

    def __init__(self, want: WantFunction, log: logging.Logger, *,
                 max_subflows: int = 8, announce: bool = True,
                 retry: RetryPolicy | None = None) -> None:
        self.want = want
        self.log = log
        self.max_subflows = max_subflows
        self.announce = announce
        self.retry = retry if retry is not None else RetryPolicy()
        self.connections: dict[int, KeptConnection] = {}
        #: local IPs the keeper took an ID for (freed when the address goes).
        self.with_ids: set[SockAddr] = set()

    # -- opening subflows --------------------------------------------------------

    def local_id(self, pm: PathManager, local: SockAddr) -> int:
        """The shared ID of ``local``'s IP (0 when none is left)."""
        local_id = int(pm.id_manager.get_id(local))
        if local_id:
            self.with_ids.add(SockAddr(local.ip))
        return local_id

    def fill(self, conn: KeptConnection, pm: PathManager) -> None:
        """Client side: open the wanted subflows the connection lacks."""
        if conn.server_side or not conn.established:
            return
        keys = {kept.key for kept in conn.subflows if kept.key is not None}
        wanted_list = self.want(conn, pm)
        # Forget the failures of slots no longer wanted (their interface or
        # the peer's address went): they start afresh when wanted again.
        wanted_keys = {wanted.key for wanted in wanted_list} | keys
        for key in [key for key in conn.slots if key not in wanted_keys]:
            del conn.slots[key]
        now = conn.loop.time() if conn.loop is not None else 0.0
        # Slots waiting out their backoff keep their place under the limit.
        waiting = sum(1 for key, slot in conn.slots.items()
                      if key not in keys and slot.due > now and slot.due != math.inf)
        for wanted in wanted_list:
            if len(conn.subflows) + waiting >= self.max_subflows:
                break
            slot = conn.slots.get(wanted.key)
            if wanted.key in keys or (slot is not None and slot.due > now):
                continue
            if self.open(conn, wanted, pm):
                keys.add(wanted.key)

    def open(self, conn: KeptConnection, wanted: Wanted, pm: PathManager) -> bool:
        """Ask the kernel for ``wanted``; False when it could not be sent."""
        local_id = self.local_id(pm, wanted.laddr)
        if not local_id:
            self.log.error("Unable to map addr to ID.")
            return False
        kept = Kept(wanted.laddr, wanted.raddr, key=wanted.key, pending=True,
                    backup=wanted.backup)
        self.log.debug("Connection %08x: creating a subflow from %s (id %d) to %s (id %d)%s.",
                       conn.token, wanted.laddr, local_id, wanted.raddr, wanted.remote_id,
                       " as backup" if wanted.backup else "")
        try:
            future = pm.add_subflow(conn.token, local_id, wanted.remote_id, wanted.laddr,
                                    wanted.raddr, wanted.backup)
        except (ValueError, OSError) as exc:
            self.log.warning("Unable to create a subflow from %s to %s: %s", wanted.laddr,
                             wanted.raddr, exc)
            return False
        conn.subflows.append(kept)
        if conn.loop is None:
            conn.loop = future.get_loop()
        future.add_done_callback(functools.partial(self._answered, conn, kept, pm))
        return True

    def _answered(self, conn: KeptConnection, kept: Kept, pm: PathManager,
                  future: asyncio.Future[Any]) -> None:
        """The kernel answered a subflow creation: a refusal frees the slot."""
        error = None if future.cancelled() else future.exception()
        full = isinstance(error, QueueFull)
        if not full and kept.key is not None and kept.key in conn.slots:
            conn.slots[kept.key].refusals = 0
        if (future.cancelled() or error is not None) and kept.pending:
            if kept in conn.subflows:
                conn.subflows.remove(kept)
                if full:
                    self._not_sent(conn, kept, pm)
                else:
                    self.lost(conn, kept, pm)
            else:  # given up, and refused: nothing comes of it
                conn.unabandon(kept.laddr, kept.raddr)

    def _not_sent(self, conn: KeptConnection, kept: Kept, pm: PathManager) -> None:
        """The daemon's full queue refused the creation: asked for again after
        a backoff, not counted as a failure (see the module)."""
        if self.connections.get(conn.token) is not conn or conn.loop is None:
            return
        now = conn.loop.time()
        slot = conn.slots.setdefault(kept.key, Slot(kept.laddr))
        slot.laddr = SockAddr(plain(kept.laddr).ip)
        slot.refusals += 1
        slot.due = self.retry.after_refusal(slot.refusals, now)
        self.log.debug("Connection %08x: the subflow from %s to %s could not be sent "
                       "(command queue full); asking again in %.3g s.", conn.token,
                       slot.laddr, kept.raddr, slot.due - now)
        self._schedule(conn, pm)

    def lost(self, conn: KeptConnection, kept: Kept, pm: PathManager) -> None:
        """A subflow the keeper opened was refused, failed or closed unasked:
        its slot waits out its backoff, or is given up."""
        if self.connections.get(conn.token) is not conn or conn.loop is None:
            return
        now = conn.loop.time()
        slot = conn.slots.setdefault(kept.key, Slot(kept.laddr))
        slot.laddr = SockAddr(plain(kept.laddr).ip)
        lived = None if kept.since is None else now - kept.since
        slot.failures, slot.due = self.retry.after_failure(slot.failures, now, lived)
        if slot.due == math.inf:
            self.log.info("Connection %08x: giving up on the subflow from %s to %s after "
                          "%d attempts.", conn.token, slot.laddr, kept.raddr, slot.failures)
            return
        self.log.debug("Connection %08x: the subflow from %s to %s was lost (%d in a row); "
                       "retrying in %.3g s.", conn.token, slot.laddr, kept.raddr,
                       slot.failures, slot.due - now)
        self._schedule(conn, pm)

    def _schedule(self, conn: KeptConnection, pm: PathManager) -> None:
        """Keep the connection's one retry timer at its earliest due slot."""
        if conn.loop is None:
            return
        dues = [slot.due for slot in conn.slots.values() if slot.due != math.inf]
        now = conn.loop.time()
        future_dues = [due for due in dues if due > now]
        if not future_dues:
            return
        when = min(future_dues)
        timer = conn.retry_timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        conn.retry_timer = conn.loop.call_at(when, self._retry_due, conn.token, conn, pm)

    def _retry_due(self, token: int, conn: KeptConnection, pm: PathManager) -> None:
        conn.retry_timer = None
        if self.connections.get(token) is not conn:
            return
        try:
            self.fill(conn, pm)
            self._schedule(conn, pm)
        except Exception:  # a timer callback: no hook containment around it
            self.log.exception("Connection %08x: re-creating subflows failed.", token)


    def close(self, conn: KeptConnection, kept: Kept, pm: PathManager) -> None:
        """Forget ``kept`` and close it (a pending one is left to fail, and
        remembered in case it does not: :meth:`new_subflow`)."""
        if kept in conn.subflows:
            conn.subflows.remove(kept)
        if kept.pending:
            if kept.key is not None:
                conn.abandon(kept.laddr, kept.raddr)
            return
        key = (plain(kept.laddr), plain(kept.raddr))
        conn.closing.add(key)
        close_subflow(pm, conn.token, kept.laddr, kept.raddr,
                      lambda: self.connections.get(conn.token) is conn and key in conn.closing,
                      self.retry, conn.resend_timers, self.log)

    def _withdraw(self, conn: KeptConnection, local_id: int, local: SockAddr,
                  pm: PathManager) -> None:
        """Withdraw the announcement of ``local`` (while the ID is not
        announced again on the connection)."""
        withdraw_announcement(pm, conn.token, local_id, local,
                              lambda: (self.connections.get(conn.token) is conn
                                       and local_id not in conn.announced),
                              self.retry, conn.resend_timers, self.log)

    # -- announcing (server side) ----------------------------------------------------

    def _to_announce(self, conn: KeptConnection, pm: PathManager) -> Iterator[SockAddr]:
        announced = set(conn.announced.values())
        initial = plain(conn.laddr).ip
        for _interface, local in usable_addresses(pm, conn.family):
            if local not in announced and local.ip != initial:
                yield local

    def announce_next(self, conn: KeptConnection, pm: PathManager) -> None:
        """Server side: announce the next address not announced yet (one at a
        time, :data:`ANNOUNCE_INTERVAL` after the kernel answered the previous)."""
        if (not self.announce or not conn.server_side or not conn.established
                or conn.announcing):
            return
        for local in self._to_announce(conn, pm):
            local_id = self.local_id(pm, local)
            if not local_id:
                self.log.error("Unable to map addr to ID.")
                continue
            self.log.debug("Connection %08x: announcing %s (id %d).", conn.token, local,
                           local_id)
            try:
                future = pm.add_addr_no_listener(local, local_id, conn.token)
            except (ValueError, OSError) as exc:
                self.log.warning("Unable to announce %s: %s", local, exc)
                continue
            conn.announced[local_id] = local
            conn.announcing = True
            future.add_done_callback(
                functools.partial(self._announced, conn, pm, local_id, local))
            return

    def _announced(self, conn: KeptConnection, pm: PathManager, local_id: int,
                   local: SockAddr, future: asyncio.Future[Any]) -> None:
        if self.connections.get(conn.token) is not conn:
            return
        delay, conn.announce_refusals = announcement_answered(
            future, conn.announced, local_id, local, conn.announce_refusals, self.retry)
        conn.announce_timer = future.get_loop().call_later(delay, self._announce_due, conn, pm)

    def _announce_due(self, conn: KeptConnection, pm: PathManager) -> None:
        conn.announce_timer = None
        conn.announcing = False
        if self.connections.get(conn.token) is not conn:
            return
        try:
            self.announce_next(conn, pm)
        except Exception:  # a timer callback: no hook containment around it
            self.log.exception("Connection %08x: announcing failed.", conn.token)

    # -- connection events -------------------------------------------------------------

    def new_connection(self, token: int, laddr: SockAddr, raddr: SockAddr,
                       server_side: bool, deny_join_id0: bool, pm: PathManager) -> None:
        old = self.connections.pop(token, None)
        if old is not None:
            old.stop()
        conn = KeptConnection(token, laddr, raddr, bool(server_side), bool(deny_join_id0))
        conn.subflows.append(Kept(laddr, raddr, initial=True))
        self.connections[token] = conn

    def connection_established(self, token: int, laddr: SockAddr, raddr: SockAddr,
                               server_side: bool, deny_join_id0: bool,
                               pm: PathManager) -> None:
        conn = self.connections.get(token)
        if conn is None:
            self.new_connection(token, laddr, raddr, server_side, deny_join_id0, pm)
            conn = self.connections[token]
        conn.deny_join_id0 = conn.deny_join_id0 or bool(deny_join_id0)
        conn.established = True
        self.log.debug("Connection %08x established (%s side, deny_join_id0 %s).", token,
                       "server" if conn.server_side else "client", conn.deny_join_id0)
        self.fill(conn, pm)
        self.announce_next(conn, pm)

    def connection_closed(self, token: int) -> None:
        conn = self.connections.pop(token, None)
        if conn is not None:
            conn.stop()

    def new_address(self, token: int, addr_id: int, addr: SockAddr,
                    pm: PathManager) -> None:
        conn = self.connections.get(token)
        if conn is None:
            return
        addr = plain(addr)
        if not addr.port:  # no port announced: joins go to the connection's port
            addr = addr.with_port(conn.raddr.port)
        conn.peer_addrs[addr_id] = addr
        self.fill(conn, pm)

    def address_removed(self, token: int, addr_id: int, pm: PathManager) -> None:
        conn = self.connections.get(token)
        if conn is None:
            return
        addr = conn.peer_addrs.pop(addr_id, None)
        if addr is None:
            return
        # The kernel closes the subflows to a removed address itself.
        for kept in list(conn.subflows):
            if plain(kept.raddr) == addr and not kept.initial:
                conn.subflows.remove(kept)
                if not kept.pending:
                    conn.closing.add((plain(kept.laddr), plain(kept.raddr)))
        self.fill(conn, pm)

    def new_subflow(self, token: int, laddr: SockAddr, raddr: SockAddr, backup: bool,
                    pm: PathManager) -> None:
        conn = self.connections.get(token)
        if conn is None:
            return
        for kept in conn.subflows:  # the oldest pending one on that path
            if kept.pending and kept.same_path(laddr, raddr):
                kept.laddr, kept.raddr, kept.pending = laddr, raddr, False
                kept.backup, kept.peer_backup = False, bool(backup)
                self.established(conn, kept, pm)
                return
        if any(plain(k.laddr) == plain(laddr) and plain(k.raddr) == plain(raddr)
               for k in conn.subflows):
            return  # known already (adoption reports it again)
        kept = Kept(laddr, raddr, peer_backup=bool(backup))
        if conn.unabandon(laddr, raddr):
            path = _path(laddr, raddr)
            # A creation the keeper gave up (its address went while it was
            # pending) that the kernel completed all the same once the
            # address was back.  It fills a free slot of its path; on a path
            # whose slots are all held again, it is one too many.
            held = {k.key for k in conn.subflows if k.key is not None}
            for wanted in self.want(conn, pm) if conn.established else ():
                if wanted.key not in held and _path(wanted.laddr, wanted.raddr) == path:
                    kept.key = wanted.key
                    conn.subflows.append(kept)
                    self.established(conn, kept, pm)
                    return
            # No free slot: the path's slots are all held again, or the path
            # is not wanted now (its address or interface is still gone).
            # Left open, it would hold the path, untracked, for good.
            why = ("one too many on its path"
                   if any(k.key is not None and k.same_path(laddr, raddr) for k in conn.subflows)
                   else "given up while pending, on a path not wanted now")
            self.log.info("Connection %08x: closing the subflow %s -> %s, %s.", token, laddr,
                          raddr, why)
            self.close(conn, kept, pm)
            return
        conn.subflows.append(kept)

    def established(self, conn: KeptConnection, kept: Kept, pm: PathManager) -> None:
        """A subflow the keeper opened is established."""
        kept.since = conn.loop.time() if conn.loop is not None else None

    def subflow_closed(self, token: int, laddr: SockAddr, raddr: SockAddr,
                       pm: PathManager) -> None:
        conn = self.connections.get(token)
        if conn is None:
            return
        key = (plain(laddr), plain(raddr))
        if key in conn.closing:
            conn.closing.discard(key)
            return
        kept = next((k for k in conn.subflows if not k.pending
                     and plain(k.laddr) == key[0] and plain(k.raddr) == key[1]), None)
        if kept is None:  # a join that never got established
            kept = next((k for k in conn.subflows if k.pending and k.same_path(laddr, raddr)),
                        None)
        if kept is None and conn.unabandon(laddr, raddr):
            return  # a join given up, failed after all
        if kept is None:
            self.log.debug("Connection %08x: closed subflow %s -> %s was not tracked.",
                           token, laddr, raddr)
            return
        conn.subflows.remove(kept)
        if kept.key is not None:
            self.lost(conn, kept, pm)
        self.fill(conn, pm)

    def subflow_priority(self, token: int, laddr: SockAddr, raddr: SockAddr,
                         backup: bool) -> None:
        conn = self.connections.get(token)
        if conn is None:
            return
        for kept in conn.subflows:
            if plain(kept.laddr) == plain(laddr) and plain(kept.raddr) == plain(raddr):
                kept.peer_backup = bool(backup)  # the peer's MP_PRIO

    # -- network events ------------------------------------------------------------------

    def interface_lost(self, interface: Interface, pm: PathManager) -> None:
        """Close this host's joins from the addresses of ``interface`` (its
        carrier went, or it went down or away)."""
        ips = {SockAddr(addr.ip) for addr in interface.addrs}
        for conn in self.connections.values():
            for kept in list(conn.subflows):
                if not kept.initial and SockAddr(plain(kept.laddr).ip) in ips:
                    self.close(conn, kept, pm)

    def interface_back(self, interface: Interface, pm: PathManager) -> None:
        """The interface's carrier is back: the slots of its addresses start
        afresh, and every connection's gaps are filled at once."""
        self._afresh({addr.ip for addr in interface.addrs}, pm)

    def address_back(self, addr: SockAddr, pm: PathManager) -> None:
        """An address came (back): the slots from its IP start afresh (a
        join refused while it was gone, ``EADDRNOTAVAIL``, says nothing of
        its path), and every connection's gaps are filled at once."""
        self._afresh({addr.ip}, pm)

    def _afresh(self, ips: set[Any], pm: PathManager) -> None:
        """The slots from ``ips`` start afresh; every gap is filled."""
        for conn in self.connections.values():
            for slot in conn.slots.values():
                if slot.laddr.ip in ips:
                    slot.failures, slot.due = 0, 0.0
        self.refill(pm)

    def refill(self, pm: PathManager) -> None:
        """Fill every connection's gaps (and announce what is new)."""
        for conn in list(self.connections.values()):
            self.fill(conn, pm)
            self.announce_next(conn, pm)

    def address_lost(self, addr: SockAddr, pm: PathManager) -> None:
        """Close the joins from ``addr`` and withdraw its announcements."""
        for conn in self.connections.values():
            for kept in list(conn.subflows):
                if not kept.initial and plain(kept.laddr).ip == addr.ip:
                    self.close(conn, kept, pm)
            for local_id, local in list(conn.announced.items()):
                if local.ip == addr.ip:
                    del conn.announced[local_id]
                    self._withdraw(conn, local_id, local, pm)
        key = SockAddr(addr.ip)
        if key in self.with_ids:
            self.with_ids.discard(key)
            pm.id_manager.remove_id(key)

    def stop(self) -> None:
        """Forget every connection (``plugin_exit``)."""
        for conn in self.connections.values():
            conn.stop()
        self.connections.clear()

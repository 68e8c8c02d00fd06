"""Dispatch of kernel and network-monitor events to plugins.

* ``new_connection`` goes to the default path manager and binds the
  connection's token to it; the connection's later events go to the bound
  plugin only.  The binding is dropped once ``connection_closed`` has run
  (the C mptcpd keeps it forever).
* Listener events go to the default path manager.
* The joined subflows of each bound connection are remembered from
  ``new_subflow`` to ``subflow_closed``, so that a reconciliation after lost
  events can tell the plugin about the subflows that came or went unseen;
  so are the bound connections not yet established, so that one whose
  ``connection_established`` was lost gets it from the reconciliation (once:
  its own ESTABLISHED, read later, is not dispatched again).
* So are the subflow creations plugins ask for (``pm.add_subflow``), from
  the command until a subflow on their path closes: those the kernel took
  beyond the subflows the listing after lost events shows on their path
  (in any state) failed unseen, and their plugin gets the
  ``subflow_closed`` it missed.  A subflow event that a reconciliation has
  reported already, and that was only waiting to be read, is not
  dispatched again; nor is a SUB_ESTABLISHED that was waiting to be read
  when the listing was taken, of a subflow the listing no longer shows (it
  came and went unseen; its SUB_CLOSED may have been lost, and the plugin
  would keep a closed subflow for a live one).
* So are the addresses each bound connection's peer announced (until it
  removes them, or the connection closes).  A connection adopted after lost
  events (or at startup) has lost its own announcements (the kernel keeps
  no list of a peer's announcements for the userspace PM): its plugin gets
  the ``new_address`` of each address its peer (the remote address and
  port of the initial subflow) announced on its other live connections,
  at its adoption and whenever the peer announces one there later, and
  the ``address_removed`` of such an address when the peer removes it
  there: the best knowledge there is.  Its own ANNOUNCED of one of them,
  if read later, is not dispatched again.
* Network-monitor events (:data:`~mptcpd.events.NetworkEvent`) go to every
  plugin, in priority order.

Shared state is updated before plugins see an event, and each event is
dispatched completely before the next one is handled, so plugins see every
connection's events in kernel order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

from mptcpd import events as ev
from mptcpd import hookspecs
from mptcpd.log import Tally
from mptcpd.plugins.registry import Plugin, PluginRegistry
from mptcpd.types import AddressId, SockAddr, Token

if TYPE_CHECKING:
    import asyncio

    from mptcpd.netlink.diag import MptcpSubflow

log = logging.getLogger(__name__)

#: A subflow as the dispatcher keys it: (local, remote) address, IPv4-mapped
#: ones as IPv4; a creation's local port is 0.
_Key = tuple[SockAddr, SockAddr]


#: A subflow creation handed to the command channel, followed until a
#: subflow on its path closes: (laddr, raddr, local ID, remote ID, the
#: command's future), as the plugin asked (a plain tuple: one is made per
#: creation).
_Creation = tuple[SockAddr, SockAddr, int, int, "asyncio.Future[Any]"]


#: The addresses of each connection's peer the dispatcher remembers (for
#: the connections adopted after lost events), as many as the kernel's
#: in-kernel PM accepts (``add_addr_accepted`` is at most 8): a peer may
#: announce up to 256 on each connection, and each is still dispatched.
MAX_REMEMBERED_ADDRESSES = 8


def _on_path(creation: _Creation, key: _Key) -> bool:
    """Whether the subflow ``key`` is on the path of ``creation`` (whose
    local port was not chosen yet)."""
    return creation[1].unmapped() == key[1] and creation[0].unmapped().ip == key[0].ip


def _refused(creation: _Creation) -> bool:
    """Whether the creation's command failed or was dropped: no subflow came of it."""
    future = creation[4]
    return future.done() and (future.cancelled() or future.exception() is not None)


class Dispatcher:
    """Routes events to plugins through a :class:`PluginRegistry`.

    ``pm`` is the object plugins receive as their ``pm`` argument.
    """

    def __init__(self, registry: PluginRegistry, pm: object,
                 default: Plugin | None = None) -> None:
        self.registry = registry
        self.pm = pm
        self.default = default
        self._bindings: dict[int, Plugin] = {}
        #: Tokens created or closed since :meth:`begin_reconcile` (None: not
        #: recording).
        self._recent: set[int] | None = None
        #: Tokens adopted from a listing whose CREATED may still be unread.
        self._adopted: set[int] = set()
        #: Reconciliations after lost events (not those at startup).
        self.resyncs = 0
        #: token -> (local, remote) address pair, IPv4-mapped ones as IPv4 ->
        #: the event that told its plugin of the joined subflow.
        self._subflows: dict[int, dict[tuple[SockAddr, SockAddr], ev._SubflowEvent]] = {}
        #: Tokens with subflow events since :meth:`begin_reconcile`.
        self._recent_subflows: set[int] | None = None
        #: Bound connections whose plugin has not had connection_established.
        self._unestablished: set[int] = set()
        #: token -> the subflow creations of its plugin, oldest first, until a
        #: subflow on their path closes.
        self._creating: dict[int, list[_Creation]] = {}
        #: The futures of the creations the kernel had answered when the
        #: listings of the reconciliation under way began.
        self._taken: set[asyncio.Future[Any]] = set()
        #: token -> subflows a reconciliation reported closed, whose own
        #: SUB_CLOSED may still be read (a creation's key has local port 0);
        #: until it is, or a subflow starts on that path again.
        self._reported_closed: dict[int, list[_Key]] = {}
        #: token -> subflows whose SUB_ESTABLISHED was waiting to be read when
        #: a reconciliation's listing no longer showed them: they came and
        #: went unseen, and that event, read late, is not news.
        self._stale: dict[int, set[_Key]] = {}
        #: token -> the remote address of its initial subflow (its peer).
        self._peers: dict[int, SockAddr] = {}
        #: token -> address ID -> address, as its peer announced them (or,
        #: for an adopted connection, as its peer announced them elsewhere).
        self._announced: dict[int, dict[int, SockAddr]] = {}
        #: Peer -> the adopted connections to it, whose own announcements
        #: were lost: they take those the peer makes on other connections.
        self._orphans: dict[SockAddr, set[int]] = {}
        #: token -> the IDs of the addresses an adopted connection took from
        #: its peer's other connections, and has not had its own ANNOUNCED of.
        self._assumed: dict[int, set[int]] = {}
        #: The messages of the reconciliation under way (a new one per pass).
        self._tally = Tally(log)
        self._handlers: dict[type, Callable[[Any], None]] = {
            ev.ConnectionCreated: self._created,
            ev.ConnectionEstablished: self._established,
            ev.ConnectionClosed: self._closed,
            ev.SubflowEstablished: self._subflow_established,
            ev.SubflowClosed: self._subflow_closed,
            ev.AddressAnnounced: self._address_announced,
            ev.AddressRemoved: self._address_removed,
            ev.ListenerCreated: self._listener,
            ev.ListenerClosed: self._listener,
        }

    # -- kernel events -----------------------------------------------------

    def dispatch(self, event: ev.Event) -> None:
        """Hand one kernel event to the plugin(s) it belongs to."""
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)
            return
        # Every other event belongs to the plugin its connection is bound to.
        plugin = self._bindings.get(event.token)  # type: ignore[union-attr]
        if plugin is None:
            log.error("Unable to match token to plugin.")
            return
        self.registry.call_event(plugin, event, self.pm)

    @property
    def bindings(self) -> dict[int, str]:
        """Token → name of the plugin bound to it (a copy, for inspection)."""
        return {token: plugin.name for token, plugin in self._bindings.items()}

    def _created(self, event: ev.ConnectionCreated) -> None:
        plugin = self.default
        if plugin is None:
            log.error("Unable to map connection to plugin.")
            return
        if event.token in self._adopted:
            # Adopted from a listing taken while this CREATED was unread:
            # the plugin has had its new_connection already.
            self._adopted.discard(event.token)
            return
        self._bindings[event.token] = plugin
        self._peers[event.token] = event.raddr
        self._unestablished.add(event.token)
        if self._recent is not None:
            self._recent.add(event.token)
        self.registry.call_event(plugin, event, self.pm)

    def _established(self, event: ev.ConnectionEstablished) -> None:
        plugin = self._bindings.get(event.token)
        if plugin is None:
            log.error("Unable to match token to plugin.")
            return
        if event.token not in self._unestablished:
            return  # the reconciliation after lost events gave it already
        self._unestablished.discard(event.token)
        self.registry.call_event(plugin, event, self.pm)

    def _closed(self, event: ev.ConnectionClosed) -> None:
        plugin = self._bindings.get(event.token)
        if plugin is None:
            log.error("Unable to match token to plugin.")
            return
        try:
            self.registry.call_event(plugin, event, self.pm)
        finally:
            del self._bindings[event.token]
            peer = self._peers.pop(event.token)
            if self._announced:
                self._announced.pop(event.token, None)
            if self._orphans:
                self._assumed.pop(event.token, None)
                orphans = self._orphans.get(peer.unmapped())
                if orphans is not None:
                    orphans.discard(event.token)
                    if not orphans:
                        del self._orphans[peer.unmapped()]
            self._subflows.pop(event.token, None)
            self._creating.pop(event.token, None)
            self._reported_closed.pop(event.token, None)
            if self._stale:
                self._stale.pop(event.token, None)
            self._unestablished.discard(event.token)
            self._adopted.discard(event.token)
            if self._recent is not None:
                self._recent.add(event.token)

    def _listener(self, event: ev.ListenerCreated | ev.ListenerClosed) -> None:
        if self.default is not None:
            self.registry.call_event(self.default, event, self.pm)

    def _subflow_established(self, event: ev.SubflowEstablished) -> None:
        plugin = self._bindings.get(event.token)
        if plugin is None:
            log.error("Unable to match token to plugin.")
            return
        key = (event.laddr.unmapped(), event.raddr.unmapped())
        stale = self._stale.get(event.token) if self._stale else None
        if stale is not None and key in stale:
            stale.discard(key)
            if not stale:
                del self._stale[event.token]
            log.debug("Subflow %s -> %s of connection %08x: established and gone before "
                      "the listing after lost events; not reported.", event.laddr,
                      event.raddr, event.token)
            return
        known = self._subflows.setdefault(event.token, {})
        if key in known:
            # A reconciliation after lost events reported it already.
            log.debug("Subflow %s -> %s of connection %08x: reported already.",
                      event.laddr, event.raddr, event.token)
            return
        known[key] = event
        if event.token in self._reported_closed:
            self._unreport(event.token, key, every=True)
        if self._recent_subflows is not None:
            self._recent_subflows.add(event.token)
        self.registry.call_event(plugin, event, self.pm)

    def _subflow_closed(self, event: ev.SubflowClosed) -> None:
        plugin = self._bindings.get(event.token)
        if plugin is None:
            log.error("Unable to match token to plugin.")
            return
        key = (event.laddr.unmapped(), event.raddr.unmapped())
        if event.token in self._reported_closed and self._unreport(event.token, key, False):
            log.debug("Subflow %s -> %s of connection %08x: its close was reported "
                      "already.", event.laddr, event.raddr, event.token)
            return
        known = self._subflows.get(event.token)
        if known is not None:
            known.pop(key, None)
        if event.token in self._creating:
            self._reported(event.token, key)
        if self._recent_subflows is not None:
            self._recent_subflows.add(event.token)
        self.registry.call_event(plugin, event, self.pm)

    def _address_announced(self, event: ev.AddressAnnounced) -> None:
        plugin = self._bindings.get(event.token)
        if plugin is None:
            log.error("Unable to match token to plugin.")
            return
        known = self._announced.setdefault(event.token, {})
        assumed = self._assumed.get(event.token)
        if assumed is not None and event.addr_id in assumed:
            assumed.discard(event.addr_id)
            if known.get(event.addr_id) == event.addr:
                # Its plugin has it, from the peer's other connections.
                log.debug("Address %s (id %d) of connection %08x: reported already.",
                          event.addr, event.addr_id, event.token)
                return
        if len(known) < MAX_REMEMBERED_ADDRESSES or event.addr_id in known:
            known[event.addr_id] = event.addr
        self.registry.call_event(plugin, event, self.pm)
        if self._orphans:
            for token in self._siblings(event.token):
                self._assume(token, event.addr_id, event.addr, event.token)

    def _address_removed(self, event: ev.AddressRemoved) -> None:
        plugin = self._bindings.get(event.token)
        if plugin is None:
            log.error("Unable to match token to plugin.")
            return
        known = self._announced.get(event.token)
        if known is not None:
            known.pop(event.addr_id, None)
        assumed = self._assumed.get(event.token)
        if assumed is not None:
            assumed.discard(event.addr_id)
        self.registry.call_event(plugin, event, self.pm)
        if self._orphans:
            for token in self._siblings(event.token):
                assumed = self._assumed.get(token)
                if assumed is None or event.addr_id not in assumed:
                    continue
                assumed.discard(event.addr_id)
                self._announced[token].pop(event.addr_id, None)
                log.debug("Connection %08x: address id %d, which its peer removed on "
                          "connection %08x, is taken as removed from it too.", token,
                          event.addr_id, event.token)
                self.registry.call_event(self._bindings[token], ev.AddressRemoved(
                    Token(token), event.addr_id), self.pm)

    def _siblings(self, token: int) -> list[int]:
        """The adopted connections (but ``token``) to the peer of ``token``."""
        orphans = self._orphans.get(self._peers[token].unmapped())
        return [t for t in orphans if t != token] if orphans else []

    def _assume(self, token: int, addr_id: int, addr: SockAddr,
                source: int | None = None) -> None:
        """Give the plugin of the adopted ``token`` the ``new_address`` of an
        address its peer announced on another connection (``source``, when
        it is news from there), unless it has it (or has as many as are
        remembered: a guess is not worth more)."""
        known = self._announced.setdefault(token, {})
        if known.get(addr_id) == addr or (
                len(known) >= MAX_REMEMBERED_ADDRESSES and addr_id not in known):
            return
        if source is not None:
            log.debug("Connection %08x: address %s (id %d), which its peer announced "
                      "on connection %08x, is taken as announced to it too.", token,
                      addr, addr_id, source)
        known[addr_id] = addr
        self._assumed.setdefault(token, set()).add(addr_id)
        self.registry.call_event(self._bindings[token], ev.AddressAnnounced(
            Token(token), AddressId(addr_id), addr), self.pm)

    def announced(self, token: int) -> dict[int, SockAddr]:
        """The addresses (by ID) the peer of a bound connection announced
        and has not removed, or that are taken as announced to an adopted
        one (for inspection)."""
        return dict(self._announced.get(token, {}))

    # -- subflow creations -----------------------------------------------------

    def subflow_creation(self, token: int, laddr: SockAddr, raddr: SockAddr,
                         loc_id: int, rem_id: int, future: asyncio.Future[Any]) -> None:
        """A plugin asked for a subflow ``laddr``→``raddr`` of ``token``
        (SUBFLOW_CREATE, answered by ``future``): followed until a subflow
        on its path closes, or its connection does (the path manager's
        observer).  Nothing else is done for it on the way: a burst of
        connections makes one each."""
        if token not in self._bindings or future.done():
            return  # not a connection the daemon dispatches, or refused at once
        if token in self._reported_closed:
            self._unreport(token, (SockAddr(laddr.unmapped().ip), raddr.unmapped()), every=True)
        creations = self._creating.get(token)
        if creations is None:
            self._creating[token] = [(laddr, raddr, loc_id, rem_id, future)]
            return
        creations[:] = [c for c in creations if not _refused(c)]
        creations.append((laddr, raddr, loc_id, rem_id, future))

    def _reported(self, token: int, key: _Key) -> None:
        """The subflow ``key`` of ``token`` closed: the oldest creation on
        that path is no longer followed."""
        creations = self._creating[token]
        for i, creation in enumerate(creations):
            if _on_path(creation, key):
                del creations[i]
                break
        if not creations:
            del self._creating[token]

    def _unreport(self, token: int, key: _Key, every: bool) -> bool:
        """Stop waiting for the SUB_CLOSED of subflow ``key`` of ``token``
        whose close a reconciliation reported (or of a creation on its path:
        local port 0); the first one found, or ``every`` one.  Whether there
        was one.  A SUB_CLOSED asks for the first (it is that one, read
        late); a subflow starting on the path for every one (the next
        SUB_CLOSED there is its own)."""
        closed = self._reported_closed[token]
        found = False
        for k in (key, (SockAddr(key[0].ip), key[1])):
            if k in closed:
                closed.remove(k)
                found = True
                if not every:
                    break
        if not closed:
            del self._reported_closed[token]
        return found

    def creations(self, token: int) -> list[tuple[SockAddr, SockAddr]]:
        """The subflows of a bound connection its plugin asked for, and not
        known closed (for inspection)."""
        return [(c[0], c[1]) for c in self._creating.get(token, ())]

    def subflows(self, token: int) -> list[tuple[SockAddr, SockAddr]]:
        """The joined subflows of a bound connection that its plugin was
        told of and not yet told closed (for inspection)."""
        return [(e.laddr, e.raddr) for e in self._subflows.get(token, {}).values()]

    def joined(self) -> list[tuple[int, SockAddr, SockAddr, int]]:
        """Every joined subflow a plugin was told of and not yet told
        closed: (token, laddr, raddr, the interface it is bound to, 0 for
        none), as its event gave them."""
        return [(token, e.laddr, e.raddr, e.if_idx or 0)
                for token, known in self._subflows.items() for e in known.values()]

    # -- reconciliation after lost events ------------------------------------

    def begin_reconcile(self) -> None:
        """Start noting the connections created or closed from now on.

        Call it before listing the live connections: what happens while the
        list is made is known from the events themselves, and
        :meth:`reconcile` leaves those connections alone.
        """
        self._recent = set()
        self._recent_subflows = set()
        self._taken = set()
        for token, creations in list(self._creating.items()):
            creations[:] = [c for c in creations if not _refused(c)]
            if not creations:
                del self._creating[token]
            self._taken.update(c[4] for c in creations if c[4].done())

    def reconcile_cancel(self) -> None:
        """Stop noting connections: the listing failed."""
        self._recent = None
        self._recent_subflows = None
        self._taken = set()

    def reconcile(self, live: dict[int, tuple[SockAddr, SockAddr, bool, bool]],
                  at_startup: bool = False,
                  subflows: Sequence[MptcpSubflow] | None = None,
                  closing: Collection[int] = (),
                  stale: Sequence[ev.SubflowEstablished] = ()) -> None:
        """Bring the token bindings in line with the connections that exist.

        ``live`` maps each live connection's token to ``(laddr, raddr,
        server_side, established)`` (from sock_diag; established as the
        kernel's ESTABLISHED means it, see
        :func:`~mptcpd.netlink.diag.fully_established`).  Called after a
        receive overrun lost events: a bound connection that no longer
        exists gets the ``connection_closed`` it missed; a live one that is
        not bound is adopted by the default path manager, which gets the
        ``new_connection`` (and ``connection_established``) it missed.  With
        ``at_startup`` the connections are those open before the daemon
        started.  A CREATED of an adopted connection read afterwards (it was
        still queued when the listing was taken) is not dispatched again.

        ``subflows`` (from sock_diag; None: not listed) reconciles the joined
        subflows of every bound connection the same way: a subflow the
        plugin was told of that is gone gets the ``subflow_closed`` it
        missed, an established one it was not told of its ``new_subflow``
        (for an adopted connection, between its ``new_connection`` and its
        ``connection_established``).  Connections with subflow events while
        the listing was made are left alone.

        A bound connection that the listing shows established and whose
        plugin has not had ``connection_established`` (its ESTABLISHED was
        lost) gets it, after its subflows.

        ``closing``: connections whose ``ConnectionClosed`` is still to be
        dispatched (read but not yet handled); a bound one is left to it.

        ``stale``: the SUB_ESTABLISHED events still waiting to be read that
        the kernel sent before the listings began.  Those of a live
        connection whose subflow ``subflows`` does not show (in any state)
        came and went unseen: when read, they are not dispatched (the
        plugin would take a closed subflow for a live one, its SUB_CLOSED
        having been lost).  A subflow the plugin was told of and that is
        gone gets its ``subflow_closed`` from the reconciliation, as any.

        An adopted connection also gets the addresses its peer announced on
        the other connections (see the module docstring).  The messages
        name the first 20 connections or subflows of each kind, and count
        the rest (:class:`~mptcpd.log.Tally`).
        """
        self._tally = Tally(log)
        try:
            self._reconcile(live, at_startup, subflows, closing, stale)
        finally:
            self._tally.summary()

    def _reconcile(self, live: dict[int, tuple[SockAddr, SockAddr, bool, bool]],
                   at_startup: bool, subflows: Sequence[MptcpSubflow] | None,
                   closing: Collection[int],
                   stale: Sequence[ev.SubflowEstablished]) -> None:
        note = self._tally.log
        recent, self._recent = self._recent or set(), None
        if not at_startup:
            self.resyncs += 1
        recent_subflows, self._recent_subflows = self._recent_subflows or set(), None
        taken, self._taken = self._taken, set()
        listed: dict[int, dict[tuple[SockAddr, SockAddr], MptcpSubflow]] = {}
        for sf in subflows or ():
            if not sf.initial:
                listed.setdefault(sf.token, {})[(sf.laddr.unmapped(), sf.raddr.unmapped())] = sf
        self._stale = {}
        if subflows is not None:
            for event in stale:
                key = (event.laddr.unmapped(), event.raddr.unmapped())
                if event.token in live and key not in listed.get(event.token, {}):
                    self._stale.setdefault(event.token, set()).add(key)
        for token in [t for t in self._bindings
                      if t not in live and t not in recent and t not in closing]:
            note(logging.WARNING, "connection(s) closed while events were lost",
                 "Connection %08x closed while events were lost.", token)
            self._closed(ev.ConnectionClosed(Token(token)))
        if subflows is not None:
            leave = recent | recent_subflows
            for token in [t for t in self._bindings if t in live and t not in leave]:
                self._reconcile_subflows(token, listed.get(token, {}), live[token][2],
                                         at_startup)
                if token in self._creating:
                    self._reconcile_creations(token, listed.get(token, {}), live[token][2],
                                              taken)
        for token in [t for t in self._unestablished if t in live and live[t][3]
                      and t not in recent and t not in closing]:
            laddr, raddr, server_side, _established = live[token]
            note(logging.WARNING, "connection(s) established while events were lost",
                 "Connection %08x was established while events were lost.", token)
            self.dispatch(ev.ConnectionEstablished(Token(token), laddr, raddr,
                                                   server_side=server_side))
        if self.default is None:
            return
        peers: dict[SockAddr, dict[int, SockAddr]] | None = None
        for token, (laddr, raddr, server_side, established) in live.items():
            if token in self._bindings or token in recent:
                continue
            if at_startup:
                note(logging.INFO, "connection(s) that existed before mptcpd started",
                     'Connection %08x existed before mptcpd started; adopted by "%s".',
                     token, self.default.name)
            else:
                note(logging.WARNING, "connection(s) created while events were lost",
                     "Connection %08x was created while events were lost; "
                     'adopted by "%s".', token, self.default.name)
            self._created(ev.ConnectionCreated(Token(token), laddr, raddr,
                                               server_side=server_side))
            self._adopted.add(token)
            # Its subflows before connection_established: a path manager
            # that opens paths when a connection is established learns first
            # of those it already has.
            self._reconcile_subflows(token, listed.get(token, {}), server_side, at_startup)
            if peers is None:
                peers = self._peer_book()
            self._adopt_announcements(token, raddr, peers)
            if established:
                self.dispatch(ev.ConnectionEstablished(Token(token), laddr, raddr,
                                                       server_side=server_side))

    def _peer_book(self) -> dict[SockAddr, dict[int, SockAddr]]:
        """Peer -> address ID -> address, of what each peer announced on the
        bound connections (the latest one per ID)."""
        book: dict[SockAddr, dict[int, SockAddr]] = {}
        for token, addrs in self._announced.items():
            if addrs:
                book.setdefault(self._peers[token].unmapped(), {}).update(addrs)
        return book

    def _adopt_announcements(self, token: int, raddr: SockAddr,
                             peers: dict[SockAddr, dict[int, SockAddr]]) -> None:
        """``token``, just adopted, lost its peer's announcements with its
        events: its plugin gets those its peer ``raddr`` made on its other
        connections (``peers``: :meth:`_peer_book`), now and as they come,
        until its own are read."""
        peer = raddr.unmapped()
        self._orphans.setdefault(peer, set()).add(token)
        book = peers.get(peer)
        if not book:
            return
        self._tally.log(
            logging.INFO, "adopted connection(s) taking their peer's announcements",
            "Connection %08x: the addresses its peer %s announced on its other "
            "connections are taken as announced to it too: %s.", token, raddr,
            ", ".join(f"{addr} (id {addr_id})" for addr_id, addr in book.items()))
        for addr_id, addr in book.items():
            self._assume(token, addr_id, addr)

    def _reconcile_subflows(self, token: int,
                            now: dict[tuple[SockAddr, SockAddr], MptcpSubflow],
                            server_side: bool, at_startup: bool) -> None:
        """Tell the plugin of ``token`` of the joined subflows that closed or
        were established unseen, given those listed ``now``."""
        known = self._subflows.get(token, {})
        for key in [k for k in known if k not in now]:
            old = known[key]
            self._tally.log(logging.WARNING, "subflow(s) closed while events were lost",
                            "Subflow %s -> %s of connection %08x closed while events "
                            "were lost.", old.laddr, old.raddr, token)
            self._subflow_closed(ev.SubflowClosed(
                old.token, old.laddr, old.raddr, old.backup, loc_id=old.loc_id,
                rem_id=old.rem_id, if_idx=old.if_idx, server_side=old.server_side))
            self._reported_closed.setdefault(token, []).append(key)
        for key, sf in now.items():
            if key in known or not sf.established:
                continue
            if at_startup:
                self._tally.log(logging.INFO, "subflow(s) that existed before mptcpd started",
                                "Subflow %s -> %s of connection %08x existed before "
                                "mptcpd started.", sf.laddr, sf.raddr, token)
            else:
                self._tally.log(logging.WARNING, "subflow(s) established while events were "
                                "lost", "Subflow %s -> %s of connection %08x was established "
                                "while events were lost.", sf.laddr, sf.raddr, token)
            # ``backup`` as the kernel's events carry it: the peer's request
            # (its MP_JOIN's B bit or MP_PRIO), not this side's.
            self._subflow_established(ev.SubflowEstablished(
                Token(token), sf.laddr, sf.raddr, sf.backup_remote,
                loc_id=AddressId(sf.local_id), rem_id=AddressId(sf.remote_id),
                if_idx=sf.ifindex or None, server_side=server_side))

    def _reconcile_creations(self, token: int, now: dict[_Key, MptcpSubflow],
                             server_side: bool, taken: set[asyncio.Future[Any]]) -> None:
        """Tell the plugin of ``token`` of the subflows it asked for that
        the kernel took before the listings began (their futures are in
        ``taken``) and that the listing ``now`` (in any state) has no
        subflow for: they failed, and their SUB_CLOSED was lost.

        Creations are matched to the listed subflows path by path (local
        IP, remote address), the oldest first: a path may carry several
        (ndiffports), and only those beyond what is listed there are gone.
        Those not yet answered when the listings began may be listed too;
        they are neither reported nor counted.  (The subflows the plugin
        was told of and that are not listed have had their
        ``subflow_closed``, which ended a creation on their path.)"""
        listed: dict[_Key, int] = {}
        for local, remote in now:
            path = (SockAddr(local.ip), remote)
            listed[path] = listed.get(path, 0) + 1
        gone: list[_Creation] = []
        kept: list[_Creation] = []
        for creation in self._creating[token]:
            path = (SockAddr(creation[0].unmapped().ip), creation[1].unmapped())
            if creation[4] not in taken:
                kept.append(creation)
            elif listed.get(path, 0):
                listed[path] -= 1
                kept.append(creation)
            else:
                gone.append(creation)
        if not gone:
            return
        if kept:
            self._creating[token] = kept
        else:
            del self._creating[token]
        plugin = self._bindings[token]
        for laddr, raddr, loc_id, rem_id, _future in gone:
            self._tally.log(logging.WARNING, "subflow(s) created by their plugin that "
                            "ended while events were lost",
                            "Subflow %s -> %s of connection %08x, created by its plugin, "
                            "ended while events were lost.", laddr, raddr, token)
            self._reported_closed.setdefault(token, []).append(
                (SockAddr(laddr.unmapped().ip), raddr.unmapped()))
            self.registry.call_event(plugin, ev.SubflowClosed(
                Token(token), laddr, raddr, False, loc_id=AddressId(loc_id),
                rem_id=AddressId(rem_id), server_side=server_side), self.pm)

    # -- network monitor events (broadcast) ---------------------------------

    def broadcast(self, event: ev.NetworkEvent) -> None:
        """Hand a network-monitor event to every plugin, in priority order
        (the network monitor's subscriber)."""
        call_event, pm = self.registry.call_event, self.pm
        for plugin in self.registry.plugins:
            call_event(plugin, event, pm)

    # -- path manager readiness (broadcast) ---------------------------------

    def pm_ready(self) -> None:
        """The kernel's family is there: ``pm_ready`` to every plugin."""
        self.registry.broadcast(hookspecs.pm_ready, pm=self.pm)

    def pm_not_ready(self) -> None:
        """The kernel's family vanished: ``pm_not_ready`` to every plugin."""
        self.registry.broadcast(hookspecs.pm_not_ready, pm=self.pm)

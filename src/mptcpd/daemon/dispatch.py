"""Dispatch of kernel and network-monitor events to plugins.

* ``new_connection`` goes to the default path manager and binds the
  connection's token to it; the connection's later events go to the bound
  plugin only.  The binding is dropped once ``connection_closed`` has run
  (the C mptcpd keeps it forever).
* Listener events go to the default path manager.
* Network-monitor events (:data:`~mptcpd.events.NetworkEvent`) go to every
  plugin, in priority order.

Shared state is updated before plugins see an event, and each event is
dispatched completely before the next one is handled, so plugins see every
connection's events in kernel order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from mptcpd import events as ev
from mptcpd import hookspecs
from mptcpd.plugins.registry import Plugin, PluginRegistry
from mptcpd.types import SockAddr, Token

log = logging.getLogger(__name__)


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
        self._handlers: dict[type, Callable[[Any], None]] = {
            ev.ConnectionCreated: self._created,
            ev.ConnectionClosed: self._closed,
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
        if self._recent is not None:
            self._recent.add(event.token)
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
            self._adopted.discard(event.token)
            if self._recent is not None:
                self._recent.add(event.token)

    def _listener(self, event: ev.ListenerCreated | ev.ListenerClosed) -> None:
        if self.default is not None:
            self.registry.call_event(self.default, event, self.pm)

    # -- reconciliation after lost events ------------------------------------

    def begin_reconcile(self) -> None:
        """Start noting the connections created or closed from now on.

        Call it before listing the live connections: what happens while the
        list is made is known from the events themselves, and
        :meth:`reconcile` leaves those connections alone.
        """
        self._recent = set()

    def reconcile_cancel(self) -> None:
        """Stop noting connections: the listing failed."""
        self._recent = None

    def reconcile(self, live: dict[int, tuple[SockAddr, SockAddr, bool, bool]],
                  at_startup: bool = False) -> None:
        """Bring the token bindings in line with the connections that exist.

        ``live`` maps each live connection's token to ``(laddr, raddr,
        server_side, established)`` (from sock_diag).  Called after a
        receive overrun lost events: a bound connection that no longer
        exists gets the ``connection_closed`` it missed; a live one that is
        not bound is adopted by the default path manager, which gets the
        ``new_connection`` (and ``connection_established``) it missed.  With
        ``at_startup`` the connections are those open before the daemon
        started.  A CREATED of an adopted connection read afterwards (it was
        still queued when the listing was taken) is not dispatched again.
        """
        recent, self._recent = self._recent or set(), None
        if not at_startup:
            self.resyncs += 1
        for token in [t for t in self._bindings if t not in live and t not in recent]:
            log.warning("Connection %08x closed while events were lost.", token)
            self._closed(ev.ConnectionClosed(Token(token)))
        if self.default is None:
            return
        for token, (laddr, raddr, server_side, established) in live.items():
            if token in self._bindings or token in recent:
                continue
            if at_startup:
                log.info('Connection %08x existed before mptcpd started; adopted by "%s".',
                         token, self.default.name)
            else:
                log.warning("Connection %08x was created while events were lost; "
                            'adopted by "%s".', token, self.default.name)
            self._created(ev.ConnectionCreated(Token(token), laddr, raddr,
                                               server_side=server_side))
            self._adopted.add(token)
            if established:
                self.dispatch(ev.ConnectionEstablished(Token(token), laddr, raddr,
                                                       server_side=server_side))

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

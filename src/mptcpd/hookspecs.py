"""Hook specifications: the events a path-manager plugin can handle.

Every hook is optional.  An implementation is a plain function (never a
coroutine) decorated with :data:`mptcpd.plugin.hookimpl`; it may accept any
subset of the parameters listed here, by name, so that new parameters never
break old plugins.  A hook must not block: kernel commands issued through
``pm`` return at once with an :class:`asyncio.Future`.

Dispatch rules (the C mptcpd's, with its defects fixed):

* **Bound** hooks (the connection events) go to one plugin only: the one
  bound to the connection's token when ``new_connection`` fired, which is the
  default path manager (``--path-manager``, else the plugin with the best
  priority).  The binding is dropped after ``connection_closed``.
* **Default** hooks (the listener events) go to the default path manager.
* **Broadcast** hooks (lifecycle and network-monitor events) go to every
  plugin, in priority order (lower first; ties by name).

An exception raised by an implementation is logged with the plugin and the
hook, and never stops the daemon or the other plugins.

Sections below: lifecycle, connection events, listener events, network
monitor events.  Each hook names the C ``mptcpd_plugin_ops`` field it
corresponds to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from mptcpd.plugin import Interface, PathManager
    from mptcpd.types import AddressId, SockAddr, Token

PROJECT = "mptcpd"
hookspec = pluggy.HookspecMarker(PROJECT)

# ---------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------


@hookspec
def plugin_init(pm: PathManager) -> None:
    """Initialise the plugin.

    Fires once, after every plugin has been loaded and sorted, in priority
    order.  An exception (or a return value of ``False``) makes the daemon
    log ``Plugin "<name>" failed to initialize``; the plugin stays loaded and
    its :func:`plugin_exit` still runs.

    :param pm: the path manager.

    **Dispatch:** broadcast, priority order.  **C:** the descriptor's ``init``.
    """


@hookspec
def plugin_exit(pm: PathManager) -> None:
    """Release what the plugin holds.

    Fires once at shutdown, in reverse priority order (least favoured first).

    :param pm: the path manager.

    **Dispatch:** broadcast, reverse priority order.  **C:** the descriptor's
    ``exit``.
    """


@hookspec
def pm_ready(pm: PathManager) -> None:
    """The kernel's ``mptcp_pm`` family is available; commands can be sent.

    Fires after every plugin's :func:`plugin_init`, and again each time the
    family reappears after having vanished.

    :param pm: the path manager (``pm.ready`` is true).

    **Dispatch:** broadcast.  **C:** ``mptcpd_pm_ops.ready``.
    """


@hookspec
def pm_not_ready(pm: PathManager) -> None:
    """The kernel's ``mptcp_pm`` family vanished; commands fail until it returns.

    :param pm: the path manager (``pm.ready`` is false).

    **Dispatch:** broadcast.  **C:** ``mptcpd_pm_ops.not_ready``.
    """


@hookspec
def policy_changed(pm: PathManager) -> None:
    """The configuration was reloaded (SIGHUP): ``pm.config`` holds the new
    one.

    By then the network monitor has applied the new interface policy and
    told every plugin what it changed: ``delete_local_address`` and
    ``delete_interface`` for what is now refused, ``new_interface`` and
    ``new_local_address`` for what is now let through, ``update_interface``
    for an interface whose own address flags changed.  What is left is for
    the plugin to follow the new global settings, ``pm.config.addr_flags``
    say.

    :param pm: the path manager.

    **Dispatch:** broadcast.  **C:** none (C has no reload).
    """


# ---------------------------------------------------------------------------
# Connection events (MPTCP_EVENT_*), bound to one plugin per token
# ---------------------------------------------------------------------------


@hookspec
def new_connection(
    token: Token, laddr: SockAddr, raddr: SockAddr, server_side: bool,
    deny_join_id0: bool, pm: PathManager,
) -> None:
    """A new MPTCP connection was created (``MPTCP_EVENT_CREATED``).

    Binds ``token`` to this plugin: later events of the connection go to it.

    :param token: the connection's token.
    :param laddr: local address and port of the initial subflow.
    :param raddr: remote address and port of the initial subflow.
    :param server_side: true when this host accepted the connection.
    :param deny_join_id0: true when the peer asked that no subflow be created
        to its initial address and port (RFC 8684 "C" flag).
    :param pm: the path manager.

    **Dispatch:** the default path manager.  **C:** ``new_connection``.
    """


@hookspec
def connection_established(
    token: Token, laddr: SockAddr, raddr: SockAddr, server_side: bool,
    deny_join_id0: bool, pm: PathManager,
) -> None:
    """The connection is fully established (``MPTCP_EVENT_ESTABLISHED``).

    The kernel reports it once data has been exchanged; from then on subflows
    can be added.

    :param token: the connection's token.
    :param laddr: local address and port of the initial subflow.
    :param raddr: remote address and port of the initial subflow.
    :param server_side: true when this host accepted the connection.
    :param deny_join_id0: true when the peer asked that no subflow be created
        to its initial address and port (RFC 8684 "C" flag).
    :param pm: the path manager.

    **Dispatch:** bound.  **C:** ``connection_established``.
    """


@hookspec
def connection_closed(token: Token, pm: PathManager) -> None:
    """The connection was closed (``MPTCP_EVENT_CLOSED``).

    The token's binding is dropped once this hook has run.

    :param token: the connection's token.
    :param pm: the path manager.

    **Dispatch:** bound.  **C:** ``connection_closed``.
    """


@hookspec
def new_address(token: Token, addr_id: AddressId, addr: SockAddr, pm: PathManager) -> None:
    """The peer announced an address (``MPTCP_EVENT_ANNOUNCED``).

    :param token: the connection's token.
    :param addr_id: the peer's ID for the address.
    :param addr: the address; its port is 0 when the peer announced none.
    :param pm: the path manager.

    **Dispatch:** bound.  **C:** ``new_address``.
    """


@hookspec
def address_removed(token: Token, addr_id: AddressId, pm: PathManager) -> None:
    """The peer withdrew an address (``MPTCP_EVENT_REMOVED``).

    :param token: the connection's token.
    :param addr_id: the peer's ID of the withdrawn address.
    :param pm: the path manager.

    **Dispatch:** bound.  **C:** ``address_removed``.
    """


@hookspec
def new_subflow(
    token: Token, laddr: SockAddr, raddr: SockAddr, backup: bool, pm: PathManager
) -> None:
    """A subflow joined the connection (``MPTCP_EVENT_SUB_ESTABLISHED``).

    :param token: the connection's token.
    :param laddr: local address and port of the subflow.
    :param raddr: remote address and port of the subflow.
    :param backup: the subflow's backup priority as the kernel reports it
        (the C mptcpd always passes true).
    :param pm: the path manager.

    **Dispatch:** bound.  **C:** ``new_subflow``.
    """


@hookspec
def subflow_closed(
    token: Token, laddr: SockAddr, raddr: SockAddr, backup: bool, pm: PathManager
) -> None:
    """A subflow was closed (``MPTCP_EVENT_SUB_CLOSED``).

    :param token: the connection's token.
    :param laddr: local address and port of the subflow.
    :param raddr: remote address and port of the subflow.
    :param backup: the subflow's backup priority as the kernel reports it.
    :param pm: the path manager.

    **Dispatch:** bound.  **C:** ``subflow_closed``.
    """


@hookspec
def subflow_priority(
    token: Token, laddr: SockAddr, raddr: SockAddr, backup: bool, pm: PathManager
) -> None:
    """A subflow's backup priority changed (``MPTCP_EVENT_SUB_PRIORITY``).

    :param token: the connection's token.
    :param laddr: local address and port of the subflow.
    :param raddr: remote address and port of the subflow.
    :param backup: the new backup priority.
    :param pm: the path manager.

    **Dispatch:** bound.  **C:** ``subflow_priority``.
    """


# ---------------------------------------------------------------------------
# Listener events, to the default path manager
# ---------------------------------------------------------------------------


@hookspec
def listener_created(laddr: SockAddr, pm: PathManager) -> None:
    """An MPTCP listening socket was created (``MPTCP_EVENT_LISTENER_CREATED``).

    :param laddr: the listening address and port.
    :param pm: the path manager.

    **Dispatch:** the default path manager.  **C:** ``listener_created``.
    """


@hookspec
def listener_closed(laddr: SockAddr, pm: PathManager) -> None:
    """An MPTCP listening socket was closed (``MPTCP_EVENT_LISTENER_CLOSED``).

    :param laddr: the listening address and port.
    :param pm: the path manager.

    **Dispatch:** the default path manager.  **C:** ``listener_closed``.
    """


# ---------------------------------------------------------------------------
# Network monitor events, to every plugin
# ---------------------------------------------------------------------------


@hookspec
def new_interface(interface: Interface, pm: PathManager) -> None:
    """A network interface became ready (up and running).

    :param interface: the interface.
    :param pm: the path manager.

    **Dispatch:** broadcast.  **C:** ``new_interface``.
    """


@hookspec
def update_interface(interface: Interface, pm: PathManager) -> None:
    """A ready interface changed (flags, MTU, …).

    :param interface: the interface, with its new state.
    :param pm: the path manager.

    **Dispatch:** broadcast.  **C:** ``update_interface``.
    """


@hookspec
def delete_interface(interface: Interface, pm: PathManager) -> None:
    """An interface went away or stopped being ready.

    :param interface: the interface as last recorded.
    :param pm: the path manager.

    **Dispatch:** broadcast.  **C:** ``delete_interface``.
    """


@hookspec
def new_local_address(interface: Interface, addr: SockAddr, pm: PathManager) -> None:
    """A local address appeared (subject to ``--notify-flags``).

    :param interface: the interface holding the address.
    :param addr: the address (port 0).
    :param pm: the path manager.

    **Dispatch:** broadcast.  **C:** ``new_local_address``.
    """


@hookspec
def delete_local_address(interface: Interface, addr: SockAddr, pm: PathManager) -> None:
    """A local address was removed.

    :param interface: the interface that held the address.
    :param addr: the address (port 0).
    :param pm: the path manager.

    **Dispatch:** broadcast.  **C:** ``delete_local_address``.
    """


@hookspec
def link_down(interface: Interface, pm: PathManager) -> None:
    """A ready interface lost its carrier but stays up with its addresses.

    A cable was unplugged, or a radio link dropped (``IFF_RUNNING`` cleared
    while ``IFF_UP`` stays set).  The interface and its addresses stay
    tracked; no ``delete_local_address`` follows.  A path manager withdraws
    the interface's endpoints here and restores them in :func:`link_up`.
    The C mptcpd reports this as ``delete_interface`` and forgets the
    addresses, which leaves stale endpoints behind (mptcpd #334).

    :param interface: the interface, with its new flags.
    :param pm: the path manager.

    **Dispatch:** broadcast.  **C:** none (new in the Python port).
    """


@hookspec
def link_up(interface: Interface, pm: PathManager) -> None:
    """An interface that had lost its carrier is running again.

    :param interface: the interface, with its new flags and the addresses it
        kept.
    :param pm: the path manager.

    **Dispatch:** broadcast.  **C:** none (new in the Python port).
    """

"""ndiffports: N subflows over the initial address pair (userspace PM).

Meant for ``net.mptcp.path_manager=userspace`` (``pm_type=1``), on the
client: once a connection is established, ndiffports opens subflows from
the initial subflow's local address to the peer's initial address and port
until the connection has ``subflows`` of them, the initial one included.
Each new subflow gets another source port from the kernel, so that an ECMP
fabric hashing on the 5-tuple spreads them over its paths (as the
out-of-tree kernel's ndiffports path manager does).

* When the peer set ``deny_join_id0`` the subflows go to the first address
  it announces instead (none until it announces one).
* Only while the initial subflow's local address is usable (its interface
  up and running): subflows on an interface that lost its carrier are
  closed and opened again when it comes back.
* A subflow that is refused, fails to establish or closes unasked is
  opened again after a backoff (the retry settings).
* The server side does nothing.

Settings (``[plugin ndiffports]`` in ``mptcpd.conf``):

* ``subflows`` (1..64, default 2): subflows per connection, the initial one
  included;
* ``retry-base`` (default 1s), ``retry-cap`` (default 30s),
  ``retry-attempts`` (default 6): as for fullmesh.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mptcpd.plugin import (
    PluginInfo,
    Priority,
    RetryPolicy,
    SettingsError,
    SockAddr,
    SubflowKeeper,
    Wanted,
    hookimpl,
    keeper_hooks,
    usable_addresses,
)

if TYPE_CHECKING:
    from mptcpd.plugin import KeptConnection, PathManager

PLUGIN = PluginInfo(
    name="ndiffports",
    description="N-different-ports path manager (userspace PM): several subflows "
    "over the initial address pair, each from another source port",
    priority=Priority.DEFAULT,
)

log = logging.getLogger("mptcpd.plugins.ndiffports")

DEFAULT_SUBFLOWS = 2
SETTINGS = ("subflows", *RetryPolicy.KEYS)


def want(conn: KeptConnection, pm: PathManager) -> list[Wanted]:
    """Slots 1..subflows-1 from the initial local address to the peer's
    initial address (its first announced one with ``deny_join_id0``)."""
    targets = conn.targets()
    if not targets:
        return []
    raddr, remote_id = targets[0]
    local = SockAddr(conn.laddr.unmapped().ip)
    if all(addr != local for _interface, addr in usable_addresses(pm, conn.family)):
        return []
    return [Wanted(("ndiffports", slot), local, raddr, remote_id)
            for slot in range(1, _keeper.max_subflows)]


_keeper = SubflowKeeper(want, log, max_subflows=DEFAULT_SUBFLOWS, announce=False)


def _read_settings(pm: PathManager) -> tuple[int, RetryPolicy]:
    settings = pm.config.plugin_settings(PLUGIN.name)
    settings.check_keys(SETTINGS)
    try:
        subflows = settings.get_int("subflows", DEFAULT_SUBFLOWS, min=1, max=64)
    except SettingsError as exc:
        log.error("%s; using %d.", exc, DEFAULT_SUBFLOWS)
        subflows = DEFAULT_SUBFLOWS
    return subflows, RetryPolicy.from_settings(settings, log)


# -- hooks ---------------------------------------------------------------------


@hookimpl
def plugin_init(pm: PathManager) -> None:
    """Read the settings; start with no tracked connection."""
    global _keeper
    subflows, retry = _read_settings(pm)
    _keeper = SubflowKeeper(want, log, max_subflows=subflows, announce=False, retry=retry)
    log.info("MPTCP ndiffports path manager initialized (subflows %d, retries: %d, "
             "%g s to %g s).", subflows, retry.attempts, retry.base, retry.cap)


@hookimpl
def plugin_exit(pm: PathManager) -> None:
    """Forget everything."""
    _keeper.stop()
    log.info("MPTCP ndiffports path manager exited.")


# Every connection and network hook hands its event to the keeper.
globals().update(keeper_hooks(lambda: _keeper))

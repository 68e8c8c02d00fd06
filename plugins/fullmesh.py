"""fullmesh: a subflow from every local address to every peer address
(userspace PM).

Meant for ``net.mptcp.path_manager=userspace`` (``pm_type=1``).

*Client side* (``server_side`` false): once the connection is established,
fullmesh opens one subflow from every usable local address to every address
the peer offers:

* the local addresses are those of the ready interfaces (up, running, not
  loopback) in the connection's family, neither link-local nor loopback,
  every address of an interface (not only its first);
* the peer offers its initial address and port, unless it set
  ``deny_join_id0``, and each address it announces (ADD_ADDR), as the
  announcements arrive (at the connection's port when it announced none);
* pairs are opened peer address by peer address (the initial one first,
  then in announcement order), local address by local address (in
  interface order), up to ``max-subflows`` subflows per connection, the
  initial subflow included; a pair that already has a subflow (the initial
  one, or one the kernel reported) is not opened again.

A subflow that is refused, fails to establish or closes unasked is opened
again after a backoff while its interface and the peer's address are still
usable (see the retry settings); a subflow on an interface that lost its
carrier or went away, or from a removed address, is closed, and opened
again as soon as the carrier, interface or address is back.

*Server side* (``server_side`` true): fullmesh announces each of this
host's other usable addresses (one at a time, as sspi does, without a
listener: joins come to the connection's port); it opens no subflow.

Settings (``[plugin fullmesh]`` in ``mptcpd.conf``):

* ``max-subflows`` (1..256, default 8): most subflows per connection, the
  initial one included;
* ``retry-base`` (duration, default 1s): wait before the first retry of a
  lost subflow; each further failure in a row doubles it,
* ``retry-cap`` (duration, default 30s): up to this;
* ``retry-attempts`` (0..1000, default 6): retries before the subflow is
  given up (until its interface's carrier comes back).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mptcpd.plugin import (
    PluginInfo,
    Priority,
    RetryPolicy,
    SettingsError,
    SubflowKeeper,
    Wanted,
    hookimpl,
    keeper_hooks,
    usable_addresses,
)

if TYPE_CHECKING:
    from mptcpd.plugin import KeptConnection, PathManager

PLUGIN = PluginInfo(
    name="fullmesh",
    description="Full-mesh path manager (userspace PM): a subflow from every local "
    "address to every peer address",
    priority=Priority.DEFAULT,
)

log = logging.getLogger("mptcpd.plugins.fullmesh")

#: The settings fullmesh knows, with their defaults.
DEFAULT_MAX_SUBFLOWS = 8
SETTINGS = ("max-subflows", *RetryPolicy.KEYS)


def want(conn: KeptConnection, pm: PathManager) -> list[Wanted]:
    """Every (local address, peer address) pair without a subflow yet."""
    locals_ = [addr for _interface, addr in usable_addresses(pm, conn.family)]
    result = []
    for raddr, remote_id in conn.targets():
        for laddr in locals_:
            if not conn.has_path(laddr, raddr):
                result.append(Wanted((laddr.ip, raddr), laddr, raddr, remote_id))
    return result


_keeper = SubflowKeeper(want, log, max_subflows=DEFAULT_MAX_SUBFLOWS)


def _read_settings(pm: PathManager) -> tuple[int, RetryPolicy]:
    settings = pm.config.plugin_settings(PLUGIN.name)
    settings.check_keys(SETTINGS)
    try:
        max_subflows = settings.get_int("max-subflows", DEFAULT_MAX_SUBFLOWS, min=1, max=256)
    except SettingsError as exc:
        log.error("%s; using %d.", exc, DEFAULT_MAX_SUBFLOWS)
        max_subflows = DEFAULT_MAX_SUBFLOWS
    return max_subflows, RetryPolicy.from_settings(settings, log)


# -- hooks ---------------------------------------------------------------------


@hookimpl
def plugin_init(pm: PathManager) -> None:
    """Read the settings; start with no tracked connection."""
    global _keeper
    max_subflows, retry = _read_settings(pm)
    _keeper = SubflowKeeper(want, log, max_subflows=max_subflows, retry=retry)
    log.info("MPTCP full-mesh path manager initialized (max-subflows %d, retries: %d, "
             "%g s to %g s).", max_subflows, retry.attempts, retry.base, retry.cap)


@hookimpl
def plugin_exit(pm: PathManager) -> None:
    """Forget everything."""
    _keeper.stop()
    log.info("MPTCP full-mesh path manager exited.")


# Every connection and network hook hands its event to the keeper.
globals().update(keeper_hooks(lambda: _keeper))

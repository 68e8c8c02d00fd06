"""failover: subflows on every interface, backup interfaces held in reserve
(userspace PM).

Meant for ``net.mptcp.path_manager=userspace`` (``pm_type=1``), on the
client.  Once a connection is established, failover opens one subflow from
each other ready interface (its first usable address in the connection's
family) to the peer's initial address and port (its first announced
address when it set ``deny_join_id0``), as sspi does.  Interfaces whose
names match one of the ``backup-interfaces`` globs, or whose own address
flags (an ``[interface GLOB]`` group of ``mptcpd.conf``, e.g.
``addr-flags=subflow,backup``) have ``backup``, are *backup* interfaces:
their subflows are backup subflows: created with ``backup`` (their MP_JOIN
asks for it, on Linux 6.18 at least: a backup from the first packet) and
marked so once established all the same (``pm.set_backup``: MP_PRIO; the
kernel's events carry the peer's flag, not this side's, so whether the
kernel honoured the request is not known), so that neither end schedules
data on them while a primary subflow works.

* When a connection has no working primary subflow any more (its last one
  closed, or the interfaces of all of them lost their carrier), failover
  marks the dead primary subflows backup and *promotes* the first working
  backup subflow: ``pm.set_backup(…, False)`` (``SET_FLAGS``, MP_PRIO to the
  peer), so both ends move the data onto it.
* Once a primary subflow works again (its carrier came back, or a new one
  is established), the promoted subflow is *demoted* (backup again) and the
  primary subflows are made non-backup again.
* Joins on an interface that lost its carrier are closed and opened again
  when it returns; lost subflows are re-created after a backoff (the retry
  settings), as with fullmesh.  The server side does nothing.

Settings (``[plugin failover]`` in ``mptcpd.conf``):

* ``backup-interfaces`` (list of shell globs, default none): more backup
  interfaces, e.g. ``wwan*, ppp0``;
* ``retry-base``, ``retry-cap``, ``retry-attempts``: as for fullmesh.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from mptcpd.plugin import (
    AddrFlags,
    PluginInfo,
    Priority,
    RetryPolicy,
    SockAddr,
    SubflowKeeper,
    Token,
    Wanted,
    hookimpl,
    resend_refused,
    usable_addresses,
    usable_interfaces,
)

if TYPE_CHECKING:
    from mptcpd.plugin import Interface, Kept, KeptConnection, PathManager

PLUGIN = PluginInfo(
    name="failover",
    description="Failover path manager (userspace PM): subflows on every interface, "
    "backup interfaces promoted when no primary subflow is left",
    priority=Priority.DEFAULT,
)

log = logging.getLogger("mptcpd.plugins.failover")

SETTINGS = ("backup-interfaces", *RetryPolicy.KEYS)
backup_globs: tuple[str, ...] = ()


def is_backup(interface: Interface | None) -> bool:
    """Whether ``interface`` is a backup interface: its own address flags
    (an ``[interface GLOB]`` group of mptcpd.conf) have ``backup``, or its
    name matches a ``backup-interfaces`` glob."""
    if interface is None:
        return False
    if interface.addr_flags is not None and interface.addr_flags & AddrFlags.BACKUP:
        return True
    return any(fnmatch.fnmatchcase(interface.name, glob) for glob in backup_globs)


def want(conn: KeptConnection, pm: PathManager) -> list[Wanted]:
    """A subflow from each ready interface without one, to the peer's first
    offered address; backup interfaces' as backup subflows."""
    targets = conn.targets()
    if not targets:
        return []
    raddr, remote_id = targets[0]
    used = {interface.index for interface in map(_interface_of(pm), conn.subflows)
            if interface is not None}
    result = []
    for interface in usable_interfaces(pm):
        if interface.index in used:
            continue
        for _interface, local in usable_addresses(pm, conn.family, interface):
            result.append(Wanted(("failover", interface.index), local, raddr, remote_id,
                                 backup=is_backup(interface)))
            break
    return result


def _interface_of(pm: PathManager) -> Callable[[Kept], Interface | None]:
    """A function giving the interface of a subflow's local address."""
    def find(kept: Kept) -> Interface | None:
        return pm.network_monitor.find_interface(kept.laddr.unmapped())
    return find


_keeper = SubflowKeeper(want, log, announce=False)
#: token -> the backup subflows failover promoted (to be demoted).
_promoted: dict[int, list[Kept]] = {}


def _set(conn: KeptConnection, kept: Kept, backup: bool, pm: PathManager,
         action: str) -> None:
    """Send MP_PRIO for ``kept`` and remember its new priority (``action``
    says why, for the log)."""
    log.info("Connection %08x: %s the subflow %s -> %s.", conn.token, action, kept.laddr,
             kept.raddr)
    try:
        future = pm.set_backup(conn.token, kept.laddr, kept.raddr, backup)
    except (ValueError, OSError) as exc:
        log.warning("Unable to change the priority of %s -> %s: %s", kept.laddr,
                    kept.raddr, exc)
        return
    kept.backup = backup
    # Asked for again while the daemon's full queue refuses it, if nothing
    # changed the subflow's priority since.
    resend_refused(future, lambda: pm.set_backup(conn.token, kept.laddr, kept.raddr, backup),
                   lambda: kept in conn.subflows and kept.backup == backup,
                   _keeper.retry, conn.resend_timers, log)


def rebalance(conn: KeptConnection, pm: PathManager) -> None:
    """Promote a backup subflow when no primary one works; demote it when
    one works again."""
    if conn.server_side or not conn.established:
        return
    find = _interface_of(pm)
    primaries: list[tuple[Kept, bool]] = []
    backups: list[tuple[Kept, bool]] = []
    for kept in conn.subflows:
        if kept.pending:
            continue
        interface = find(kept)
        working = interface is not None and interface.is_running
        (backups if is_backup(interface) else primaries).append((kept, working))
    promoted = _promoted.setdefault(conn.token, [])
    working_primaries = [kept for kept, working in primaries if working]
    if working_primaries:
        for kept, _working in backups:
            if not kept.backup:
                _set(conn, kept, True, pm,
                     "demoting" if kept in promoted else "marking as backup")
        promoted.clear()
        for kept in working_primaries:
            if kept.backup:
                _set(conn, kept, False, pm, "restoring as primary")
        return
    working_backups = [kept for kept, working in backups if working]
    if not working_backups:
        return
    for kept, _working in primaries:  # dead: keep the scheduler off them
        if not kept.backup:
            _set(conn, kept, True, pm, "marking as backup (its link is down)")
    if all(kept.backup for kept in working_backups):
        _set(conn, working_backups[0], False, pm, "promoting")
        promoted.append(working_backups[0])


def rebalance_all(pm: PathManager) -> None:
    for conn in list(_keeper.connections.values()):
        rebalance(conn, pm)


# -- hooks ---------------------------------------------------------------------


@hookimpl
def plugin_init(pm: PathManager) -> None:
    """Read the settings; start with no tracked connection."""
    global _keeper, backup_globs
    _promoted.clear()
    settings = pm.config.plugin_settings(PLUGIN.name)
    settings.check_keys(SETTINGS)
    backup_globs = settings.get_list("backup-interfaces")
    retry = RetryPolicy.from_settings(settings, log)
    _keeper = SubflowKeeper(want, log, announce=False, retry=retry)
    log.info("MPTCP failover path manager initialized (backup interfaces: %s).",
             ", ".join(backup_globs) or "none")


@hookimpl
def plugin_exit(pm: PathManager) -> None:
    """Forget everything."""
    _keeper.stop()
    _promoted.clear()
    log.info("MPTCP failover path manager exited.")


@hookimpl
def new_connection(token: Token, laddr: SockAddr, raddr: SockAddr, server_side: bool,
                   deny_join_id0: bool, pm: PathManager) -> None:
    """Track the connection and its initial subflow."""
    _keeper.new_connection(token, laddr, raddr, server_side, deny_join_id0, pm)


@hookimpl
def connection_established(token: Token, laddr: SockAddr, raddr: SockAddr,
                           server_side: bool, deny_join_id0: bool,
                           pm: PathManager) -> None:
    """Client: open a subflow on each other interface."""
    _keeper.connection_established(token, laddr, raddr, server_side, deny_join_id0, pm)
    conn = _keeper.connections.get(token)
    if conn is not None:
        rebalance(conn, pm)


@hookimpl
def connection_closed(token: Token) -> None:
    """Forget the connection."""
    _keeper.connection_closed(token)
    _promoted.pop(token, None)


@hookimpl
def new_address(token: Token, addr_id: int, addr: SockAddr, pm: PathManager) -> None:
    """Remember a peer address (used with deny_join_id0)."""
    _keeper.new_address(token, addr_id, addr, pm)


@hookimpl
def address_removed(token: Token, addr_id: int, pm: PathManager) -> None:
    """Forget a peer address and its subflows (the kernel closes them)."""
    _keeper.address_removed(token, addr_id, pm)
    conn = _keeper.connections.get(token)
    if conn is not None:
        rebalance(conn, pm)


@hookimpl
def new_subflow(token: Token, laddr: SockAddr, raddr: SockAddr, backup: bool,
                pm: PathManager) -> None:
    """Track a subflow; a working primary one demotes a promoted backup."""
    _keeper.new_subflow(token, laddr, raddr, backup, pm)
    conn = _keeper.connections.get(token)
    if conn is not None:
        rebalance(conn, pm)


@hookimpl
def subflow_closed(token: Token, laddr: SockAddr, raddr: SockAddr, pm: PathManager) -> None:
    """Fill the gap; promote a backup if it was the last primary subflow."""
    _keeper.subflow_closed(token, laddr, raddr, pm)
    conn = _keeper.connections.get(token)
    if conn is not None:
        rebalance(conn, pm)


@hookimpl
def subflow_priority(token: Token, laddr: SockAddr, raddr: SockAddr, backup: bool) -> None:
    """Remember the peer's backup request for a subflow (its MP_PRIO): the
    peer's, not this side's priority, which failover alone sets."""
    _keeper.subflow_priority(token, laddr, raddr, backup)


@hookimpl
def link_down(interface: Interface, pm: PathManager) -> None:
    """Close the joins on an interface that lost its carrier; promote a
    backup where no primary subflow works any more."""
    _keeper.interface_lost(interface, pm)
    rebalance_all(pm)


@hookimpl
def delete_interface(interface: Interface, pm: PathManager) -> None:
    """Close the joins on an interface that went down or away."""
    _keeper.interface_lost(interface, pm)
    rebalance_all(pm)


@hookimpl
def update_interface(pm: PathManager) -> None:
    """An interface changed (its own address flags, after a reload, say)."""
    rebalance_all(pm)


@hookimpl
def link_up(interface: Interface, pm: PathManager) -> None:
    """Reopen the interface's subflows; demote a promoted backup."""
    _keeper.interface_back(interface, pm)
    rebalance_all(pm)


@hookimpl
def new_interface(pm: PathManager) -> None:
    """An interface is ready: open its subflows."""
    _keeper.refill(pm)


@hookimpl
def new_local_address(addr: SockAddr, pm: PathManager) -> None:
    """An address came (back): its slots start afresh; fill the gaps."""
    _keeper.address_back(addr, pm)


@hookimpl
def delete_local_address(addr: SockAddr, pm: PathManager) -> None:
    """Close the joins from a removed address."""
    _keeper.address_lost(addr, pm)
    rebalance_all(pm)

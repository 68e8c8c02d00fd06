"""The kernel boundary of the path manager (C: ``src/netlink_pm.h``).

:class:`KernelPM` is the protocol the path-manager layer calls; it mirrors
the C ``cmd_ops`` (userspace PM, per connection) and ``kcmd_ops`` (in-kernel
PM, endpoints) tables with the ``mptcpd_`` prefix dropped.
:class:`UpstreamKernelPM` implements it for the upstream kernel's
``mptcp_pm`` generic netlink family on top of
:class:`~mptcpd.netlink.genl_commands.CommandChannel`, message for message as
spec §3.4 lists them.

This is a thin, faithful mapping: argument validation (``EINVAL``),
readiness (``EAGAIN``) and the listener handling of ANNOUNCE/REMOVE belong
to the path-manager layer above.  Every method returns the channel's
:class:`asyncio.Future`; kernel errors are logged by the channel with the
operation names of spec §3.4 and fail the future with
:class:`~mptcpd.errors.KernelError`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from mptcpd.netlink.command_messages import AddrInfo, Limits, msg_set_limits
from mptcpd.netlink.constants import MPTCP_PM_ADDR_FLAG_BACKUP
from mptcpd.netlink.genl_commands import CommandChannel
from mptcpd.types import SockAddr

log = logging.getLogger(__name__)

#: Limit types of ``kpm_set_limits`` (C: ``MPTCPD_LIMIT_*``).
MPTCPD_LIMIT_RCV_ADD_ADDRS = 0
MPTCPD_LIMIT_SUBFLOWS = 1

_LIMIT_NAMES = {
    MPTCPD_LIMIT_RCV_ADD_ADDRS: "rcv_add_addrs",
    MPTCPD_LIMIT_SUBFLOWS: "subflows",
}


class KernelPM(Protocol):
    """What the path manager needs from the kernel (C ``cmd_ops``/``kcmd_ops``)."""

    # -- userspace PM (per connection) --
    def add_addr(self, addr: SockAddr, id: int, token: int) -> asyncio.Future[None]:
        """Advertise ``addr`` (ANNOUNCE)."""
        ...

    def remove_addr(self, addr: SockAddr | None, id: int,
                    token: int) -> asyncio.Future[None]:
        """Withdraw local address ``id`` (REMOVE)."""
        ...

    def add_subflow(self, token: int, local_id: int, remote_id: int,
                    laddr: SockAddr, raddr: SockAddr,
                    backup: bool) -> asyncio.Future[None]:
        """Create a subflow (SUBFLOW_CREATE)."""
        ...

    def set_backup(self, token: int, laddr: SockAddr, raddr: SockAddr,
                   backup: bool) -> asyncio.Future[None]:
        """Set or clear a subflow's backup priority (SET_FLAGS with token)."""
        ...

    def remove_subflow(self, token: int, laddr: SockAddr,
                       raddr: SockAddr) -> asyncio.Future[None]:
        """Close a subflow (SUBFLOW_DESTROY)."""
        ...

    # -- in-kernel PM (endpoints) --
    def kpm_add_addr(self, addr: SockAddr, id: int, flags: int,
                     ifindex: int) -> asyncio.Future[None]:
        """Create an endpoint (ADD_ADDR)."""
        ...

    def kpm_remove_addr(self, id: int) -> asyncio.Future[None]:
        """Delete an endpoint (DEL_ADDR)."""
        ...

    def kpm_get_addr(self, id: int) -> asyncio.Future[AddrInfo | None]:
        """Read one endpoint (GET_ADDR)."""
        ...

    def kpm_dump_addrs(self) -> asyncio.Future[list[AddrInfo]]:
        """Read every endpoint (GET_ADDR dump)."""
        ...

    def kpm_flush_addrs(self) -> asyncio.Future[None]:
        """Delete every endpoint (FLUSH_ADDRS)."""
        ...

    def kpm_set_limits(self, limits: Sequence[tuple[int, int]]) -> asyncio.Future[None]:
        """Set limits, given as (MPTCPD_LIMIT_* type, value) pairs (SET_LIMITS)."""
        ...

    def kpm_get_limits(self) -> asyncio.Future[Limits]:
        """Read the limits (GET_LIMITS)."""
        ...

    def kpm_set_flags(self, addr: SockAddr, flags: int) -> asyncio.Future[None]:
        """Change an endpoint's flags (SET_FLAGS without token)."""
        ...


class UpstreamKernelPM:
    """:class:`KernelPM` for the upstream ``mptcp_pm`` family (spec §3.4)."""

    def __init__(self, channel: CommandChannel) -> None:
        self.channel = channel

    # -- userspace PM --------------------------------------------------------

    def add_addr(self, addr: SockAddr, id: int, token: int) -> asyncio.Future[None]:
        """ANNOUNCE: A(family, addr, port≠0, id, FLAGS=SIGNAL); TOKEN unless 0.

        ``addr`` already carries the listener's port when the caller made one.
        """
        return self.channel.announce(addr, id, token, op="announce")

    def remove_addr(self, addr: SockAddr | None, id: int,
                    token: int) -> asyncio.Future[None]:
        """REMOVE: TOKEN; LOC_ID.  ``addr`` is not sent (the caller uses it to
        release its listener once the ACK arrives)."""
        return self.channel.remove(token, id, op="remove_addr")

    def add_subflow(self, token: int, local_id: int, remote_id: int,
                    laddr: SockAddr, raddr: SockAddr,
                    backup: bool = False) -> asyncio.Future[None]:
        """SUBFLOW_CREATE: TOKEN; A(laddr, local_id≠0); R(raddr, remote_id≠0).

        ``backup`` is not sent, as upstream (spec §3.4).
        """
        return self.channel.subflow_create(token, laddr, local_id, raddr, remote_id,
                                           op="add_subflow")

    def set_backup(self, token: int, laddr: SockAddr, raddr: SockAddr,
                   backup: bool) -> asyncio.Future[None]:
        """SET_FLAGS: TOKEN; A(laddr, FLAGS=BACKUP or none); R(raddr)."""
        flags = MPTCP_PM_ADDR_FLAG_BACKUP if backup else 0
        return self.channel.set_flags(laddr, flags, token=token, remote=raddr,
                                      op="set_backup")

    def remove_subflow(self, token: int, laddr: SockAddr,
                       raddr: SockAddr) -> asyncio.Future[None]:
        """SUBFLOW_DESTROY: TOKEN; A(laddr); R(raddr)."""
        return self.channel.subflow_destroy(token, laddr, raddr, op="remove_subflow")

    # -- in-kernel PM --------------------------------------------------------

    def kpm_add_addr(self, addr: SockAddr, id: int, flags: int = 0,
                     ifindex: int = 0) -> asyncio.Future[None]:
        """ADD_ADDR: A(addr, port≠0, id, flags≠0, ifindex≠0); SIGNAL if port≠0."""
        return self.channel.add_addr(addr, id, flags, ifindex, op="add_addr")

    def kpm_remove_addr(self, id: int) -> asyncio.Future[None]:
        """DEL_ADDR: A(ID)."""
        return self.channel.remove_addr(id, op="remove_addr")

    def kpm_get_addr(self, id: int) -> asyncio.Future[AddrInfo | None]:
        """GET_ADDR: A(ID); resolves with the endpoint."""
        return self.channel.get_addr(id, op="get_addr")

    def kpm_dump_addrs(self) -> asyncio.Future[list[AddrInfo]]:
        """GET_ADDR dump; resolves with every endpoint (ID sync uses this)."""
        return self.channel.dump_addrs(op="dump_addrs")

    def kpm_flush_addrs(self) -> asyncio.Future[None]:
        """FLUSH_ADDRS."""
        return self.channel.flush_addrs(op="flush_addrs")

    def kpm_set_limits(self, limits: Sequence[tuple[int, int]]) -> asyncio.Future[None]:
        """SET_LIMITS, one u32 per (type, value) pair, in the caller's order.

        An unknown type logs W ``Unrecognized MPTCP resource limit type: <t>.``
        and is left out of the message (upstream sends it under its raw number,
        which the kernel ignores; our declared message classes cannot carry an
        undeclared attribute).
        """
        items: list[tuple[str, int]] = []
        for kind, value in limits:
            name = _LIMIT_NAMES.get(kind)
            if name is None:
                log.warning("Unrecognized MPTCP resource limit type: %s.", kind)
                continue
            items.append((name, value))
        return self.channel.submit("set_limits", msg_set_limits(items))

    def kpm_get_limits(self) -> asyncio.Future[Limits]:
        """GET_LIMITS; resolves with :class:`Limits`."""
        return self.channel.get_limits(op="get_limits")

    def kpm_set_flags(self, addr: SockAddr, flags: int) -> asyncio.Future[None]:
        """SET_FLAGS: A(addr, port≠0, flags≠0); SIGNAL OR-ed in if port≠0."""
        return self.channel.set_flags(addr, flags, op="set_flags")


def limits_as_pairs(limits: Limits) -> list[tuple[int, int]]:
    """A :class:`Limits` as the C API's (type, value) list (absent ones left out)."""
    out = []
    if limits.rcv_add_addrs is not None:
        out.append((MPTCPD_LIMIT_RCV_ADD_ADDRS, limits.rcv_add_addrs))
    if limits.subflows is not None:
        out.append((MPTCPD_LIMIT_SUBFLOWS, limits.subflows))
    return out

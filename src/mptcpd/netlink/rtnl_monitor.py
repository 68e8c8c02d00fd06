"""The rtnetlink side of the network monitor (spec section 6.2).

:class:`RtnlMonitor` wraps pyroute2's :class:`~pyroute2.AsyncIPRoute`.  It
subscribes to link and IPv4/IPv6 address changes (and, when asked, to route
changes for the ``check_route`` recheck), dumps the current links and then
the addresses, streams later changes, and looks up the default route of an
interface.  Everything it hands out is a plain frozen record defined here
(:class:`LinkMessage`, :class:`AddressMessage`, :class:`RouteMessage`,
:class:`Resync`, :class:`RouteLookup`); no pyroute2 object leaves this module.

A receive-buffer overrun (``ENOBUFS``: the kernel dropped messages because
we read too slowly) is logged, the socket is reopened and resubscribed, links
and addresses are dumped again, and the stream yields one :class:`Resync`
record so that the consumer can reconcile its state with the kernel's.

Address records carry ``IFA_LOCAL`` when the kernel sends it and fall back
to ``IFA_ADDRESS`` otherwise.  On point-to-point links ``IFA_ADDRESS`` is the
*peer*'s address (mptcpd issue #231); C mptcpd reads only ``IFA_ADDRESS``.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any, Union

from pyroute2 import AsyncIPRoute  # type: ignore[import-untyped]
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]
from pyroute2.netlink.rtnl import (  # type: ignore[import-untyped]
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg  # type: ignore[import-untyped]
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # type: ignore[import-untyped]
from pyroute2.netlink.rtnl.marshal import MarshalRtnl  # type: ignore[import-untyped]
from pyroute2.netlink.rtnl.rtmsg import rtmsg  # type: ignore[import-untyped]

from mptcpd.types import IPAddress

log = logging.getLogger(__name__)

# -- rtnetlink multicast groups (enum rtnetlink_groups) ---------------------
RTNLGRP_LINK = 1
RTNLGRP_IPV4_IFADDR = 5
RTNLGRP_IPV4_ROUTE = 7
RTNLGRP_IPV6_IFADDR = 9
RTNLGRP_IPV6_ROUTE = 11

# -- rtmsg flags (include/uapi/linux/rtnetlink.h) ---------------------------
RTM_F_LOOKUP_TABLE = 0x1000
RTM_F_FIB_MATCH = 0x2000

#: The destinations looked up to find an interface's default route: two
#: documentation addresses, as in mptcpd (spec 6.5).
ROUTE_PROBE_DST: dict[int, IPAddress] = {
    socket.AF_INET: ipaddress.IPv4Address("192.0.2.1"),
    socket.AF_INET6: ipaddress.IPv6Address("2001:db8::"),
}

#: Default receive buffer of the event socket.
DEFAULT_RCVBUF = 1 << 20


class RtnlMonitorError(RuntimeError):
    """The rtnetlink socket could not be set up; the message says why."""


# -- records ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class LinkMessage:
    """An ``RTM_NEWLINK``/``RTM_DELLINK`` message (or a link dump entry)."""

    index: int
    name: str
    flags: int  #: ``IFF_*``
    type: int = 0  #: ``ARPHRD_*``
    operstate: str = ""  #: ``"UP"``, ``"DOWN"``, ``"LOWERLAYERDOWN"``, ...
    carrier: bool | None = None
    deleted: bool = False  #: ``RTM_DELLINK``


@dataclasses.dataclass(frozen=True, slots=True)
class AddressMessage:
    """An ``RTM_NEWADDR``/``RTM_DELADDR`` message (or an address dump entry).

    ``ip`` is ``IFA_LOCAL`` when present, else ``IFA_ADDRESS``; ``peer`` is
    ``IFA_ADDRESS`` when it differs from ``ip`` (point-to-point links).
    """

    index: int
    ip: IPAddress
    prefixlen: int = 0
    scope: int = 0  #: ``RT_SCOPE_*``: 0 universe, 253 link, 254 host
    flags: int = 0  #: ``IFA_F_*`` (``IFA_FLAGS`` when present)
    peer: IPAddress | None = None
    deleted: bool = False  #: ``RTM_DELADDR``

    @property
    def family(self) -> int:
        return socket.AF_INET if self.ip.version == 4 else socket.AF_INET6


@dataclasses.dataclass(frozen=True, slots=True)
class RouteMessage:
    """An ``RTM_NEWROUTE``/``RTM_DELROUTE`` message (route groups only)."""

    family: int
    dst: IPAddress | None = None
    dst_len: int = 0
    oif: int | None = None
    table: int = 0
    deleted: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Resync:
    """Messages were lost (``ENOBUFS``); this is the kernel state now."""

    links: tuple[LinkMessage, ...]
    addresses: tuple[AddressMessage, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class RouteLookup:
    """The answer to a default-route lookup for one interface.

    ``error`` is 0 on success, else the errno the kernel answered with (the
    other fields are then unset).  ``dst`` is the matched route's
    destination (``None`` for a default route) and ``oif`` its output
    interface.
    """

    error: int = 0
    dst: IPAddress | None = None
    dst_len: int = 0
    oif: int | None = None


RtnlEvent = Union[LinkMessage, AddressMessage, RouteMessage, Resync]


# -- decoding -----------------------------------------------------------------


def _ip(value: Any) -> IPAddress | None:
    if value is None:
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def link_from_msg(msg: Any) -> LinkMessage | None:
    """Turn a pyroute2 ``ifinfmsg`` into a :class:`LinkMessage`."""
    mtype = msg["header"].get("type")
    if mtype not in (RTM_NEWLINK, RTM_DELLINK):
        return None
    carrier = msg.get("IFLA_CARRIER")
    return LinkMessage(
        index=int(msg["index"]),
        name=str(msg.get("IFLA_IFNAME") or ""),
        flags=int(msg["flags"]),
        type=int(msg["ifi_type"]),
        operstate=str(msg.get("IFLA_OPERSTATE") or ""),
        carrier=None if carrier is None else bool(carrier),
        deleted=mtype == RTM_DELLINK,
    )


def address_from_msg(msg: Any) -> AddressMessage | None:
    """Turn a pyroute2 ``ifaddrmsg`` into an :class:`AddressMessage`.

    Only ``AF_INET`` and ``AF_INET6`` addresses are kept.
    """
    mtype = msg["header"].get("type")
    if mtype not in (RTM_NEWADDR, RTM_DELADDR):
        return None
    if msg["family"] not in (socket.AF_INET, socket.AF_INET6):
        return None
    local = _ip(msg.get("IFA_LOCAL"))
    address = _ip(msg.get("IFA_ADDRESS"))
    ip = local or address
    if ip is None:
        return None
    flags = msg.get("IFA_FLAGS")
    return AddressMessage(
        index=int(msg["index"]),
        ip=ip,
        prefixlen=int(msg["prefixlen"]),
        scope=int(msg["scope"]),
        flags=int(flags if flags is not None else msg["flags"]),
        peer=address if local is not None and address != local else None,
        deleted=mtype == RTM_DELADDR,
    )


def route_from_msg(msg: Any) -> RouteMessage | None:
    """Turn a pyroute2 ``rtmsg`` into a :class:`RouteMessage`."""
    mtype = msg["header"].get("type")
    if mtype not in (RTM_NEWROUTE, RTM_DELROUTE):
        return None
    table = msg.get("RTA_TABLE")
    oif = msg.get("RTA_OIF")
    return RouteMessage(
        family=int(msg["family"]),
        dst=_ip(msg.get("RTA_DST")),
        dst_len=int(msg["dst_len"]),
        oif=None if oif is None else int(oif),
        table=int(table if table is not None else msg["table"]),
        deleted=mtype == RTM_DELROUTE,
    )


def _convert(msg: Any) -> RtnlEvent | None:
    mtype = msg["header"].get("type")
    if mtype in (RTM_NEWLINK, RTM_DELLINK):
        return link_from_msg(msg)
    if mtype in (RTM_NEWADDR, RTM_DELADDR):
        return address_from_msg(msg)
    if mtype in (RTM_NEWROUTE, RTM_DELROUTE):
        return route_from_msg(msg)
    return None


def parse(data: bytes) -> list[RtnlEvent]:
    """Decode raw rtnetlink bytes (one or more messages) into records.

    Messages other than link, address and route changes are skipped.  This
    is what the stream does with each datagram; tests feed it bytes built by
    hand or captured from the kernel.
    """
    marshal = MarshalRtnl()
    events = []
    for msg in marshal.parse(data):
        event = _convert(msg)
        if event is not None:
            events.append(event)
    return events


# -- the monitor ----------------------------------------------------------------


class RtnlMonitor:
    """A ``NETLINK_ROUTE`` socket watching links and addresses.

    :param netns: name of the network namespace to watch (as ``ip netns``
        knows it); ``None`` for the caller's own.  The namespace must exist:
        it is never created.
    :param routes: also subscribe to IPv4/IPv6 route changes (needed for the
        event-driven ``check_route`` recheck).
    :param rcvbuf: receive buffer size of the event socket.

    Use: ``await open()``, ``await dump_links()``, ``await
    dump_addresses()``, then ``async for event in events()``; ``close()``
    at the end.  :meth:`lookup_default_route` may be called at any time after
    :meth:`open`.
    """

    def __init__(
        self, netns: str | None = None, *, routes: bool = False,
        rcvbuf: int = DEFAULT_RCVBUF,
    ) -> None:
        self.netns = netns
        self.routes = routes
        self.rcvbuf = rcvbuf
        self._sock: Any = None
        self._lookup_sock: Any = None
        self._closed = False
        #: How many times the event socket was reopened after ENOBUFS.
        self.resyncs = 0

    # -- set-up ----------------------------------------------------------

    def _new_socket(self, rcvbuf: int) -> Any:
        # flags=0: never create the namespace (pyroute2 defaults to O_CREAT).
        return AsyncIPRoute(netns=self.netns, flags=0, groups=0, rcvbuf=rcvbuf)

    async def open(self) -> None:
        """Open the event socket and join the groups.

        :raises RtnlMonitorError: with mptcpd's message for the step that
            failed (``Unable to monitor network device changes.`` etc.),
            after logging it at error level.
        """
        self._closed = False
        sock: Any = None
        try:
            sock = self._new_socket(self.rcvbuf)
            await sock.bind(groups=0)
        except (OSError, NetlinkError, TimeoutError) as exc:
            if sock is not None:
                sock.close()
            message = "Unable to monitor network device changes."
            log.error(message)
            raise RtnlMonitorError(message) from exc
        groups = [
            (RTNLGRP_LINK, "Unable to monitor network device changes."),
            (RTNLGRP_IPV4_IFADDR, "Unable to monitor IPv4 address changes."),
            (RTNLGRP_IPV6_IFADDR, "Unable to monitor IPv6 address changes."),
        ]
        if self.routes:
            groups += [
                (RTNLGRP_IPV4_ROUTE, "Unable to monitor IPv4 route changes."),
                (RTNLGRP_IPV6_ROUTE, "Unable to monitor IPv6 route changes."),
            ]
        for group, message in groups:
            try:
                sock.add_membership(group)
            except OSError as exc:
                log.error(message)
                sock.close()
                raise RtnlMonitorError(message) from exc
        self._sock = sock

    def _require(self) -> Any:
        if self._sock is None:
            raise RtnlMonitorError("the rtnetlink monitor is not open")
        return self._sock

    async def _dump(self, msg: Any, msg_type: int, what: str, handler: str) -> list[Any]:
        sock = self._require()
        msg["family"] = socket.AF_UNSPEC
        try:
            replies = await sock.nlm_request(msg, msg_type, NLM_F_REQUEST | NLM_F_DUMP)
        except (OSError, NetlinkError) as exc:
            log.error(what)
            raise RtnlMonitorError(what) from exc
        result = []
        try:
            async for reply in replies:
                result.append(reply)
        except NetlinkError as exc:
            log.error("%s failed: %s", handler, os.strerror(exc.code))
        return result

    async def dump_links(self) -> list[LinkMessage]:
        """Dump every link (``RTM_GETLINK``, ``AF_UNSPEC``).

        :raises RtnlMonitorError: ``Unable to obtain network devices.`` when
            the request cannot be sent.  An error in the reply is logged
            (``get_link failed: <strerror>``) and ends the dump early.
        """
        msgs = await self._dump(
            ifinfmsg(), RTM_GETLINK, "Unable to obtain network devices.", "get_link"
        )
        return [r for r in map(link_from_msg, msgs) if r is not None]

    async def dump_addresses(self) -> list[AddressMessage]:
        """Dump every IPv4/IPv6 address (``RTM_GETADDR``, ``AF_UNSPEC``).

        :raises RtnlMonitorError: ``Unable to obtain IP addresses.`` when
            the request cannot be sent (mptcpd logs it and carries on).
        """
        msgs = await self._dump(
            ifaddrmsg(), RTM_GETADDR, "Unable to obtain IP addresses.", "get_addr"
        )
        return [r for r in map(address_from_msg, msgs) if r is not None]

    # -- the stream ------------------------------------------------------

    async def events(self) -> AsyncIterator[RtnlEvent]:
        """Yield link, address (and route) changes as they arrive.

        After an ``ENOBUFS`` overrun a :class:`Resync` comes next, holding a
        fresh dump of links and addresses.  The iterator ends when the
        monitor is closed.

        :raises RtnlMonitorError: if the socket cannot be reopened after an
            overrun.
        """
        while not self._closed:
            sock = self._require()
            try:
                async for msg in sock.get():
                    event = _convert(msg)
                    if event is not None:
                        yield event
            except NetlinkError as exc:
                if self._closed or exc.code in (errno.ECONNRESET, errno.EBADF):
                    return
                log.error("Network monitor: rtnetlink error: %s", os.strerror(exc.code))
            except OSError as exc:
                if self._closed:
                    return
                if exc.errno != errno.ENOBUFS:
                    raise
                yield await self._resync()

    async def _resync(self) -> Resync:
        log.warning(
            "Network monitor lost rtnetlink messages (receive buffer overrun); "
            "resynchronising with the kernel."
        )
        self.resyncs += 1
        old, self._sock = self._sock, None
        if old is not None:
            try:
                old.close()
            except Exception:  # the socket is already in error
                log.debug("closing the overrun rtnetlink socket failed", exc_info=True)
        await self.open()
        links = await self.dump_links()
        addresses = await self.dump_addresses()
        return Resync(tuple(links), tuple(addresses))

    # -- route lookup ----------------------------------------------------

    async def lookup_default_route(self, family: int, ifindex: int) -> RouteLookup:
        """Ask which route the kernel would use towards a documentation address
        through interface ``ifindex`` (spec 6.5).

        ``RTM_GETROUTE`` with ``RTM_F_LOOKUP_TABLE|RTM_F_FIB_MATCH``,
        ``RTA_OIF`` = ``ifindex`` and ``RTA_DST`` = 192.0.2.1 or 2001:db8::.

        :returns: the matched route, or a :class:`RouteLookup` whose
            ``error`` is the kernel's errno (e.g. ``EHOSTUNREACH``).
        :raises OSError: when the request cannot be sent.
        """
        if self._closed:
            raise OSError(errno.EBADF, "the rtnetlink monitor is closed")
        dst = ROUTE_PROBE_DST[family]
        if self._lookup_sock is None:
            self._lookup_sock = self._new_socket(DEFAULT_RCVBUF)
        msg = rtmsg()
        msg["family"] = family
        msg["dst_len"] = dst.max_prefixlen
        msg["flags"] = RTM_F_LOOKUP_TABLE | RTM_F_FIB_MATCH
        msg["attrs"] = [("RTA_DST", str(dst)), ("RTA_OIF", ifindex)]
        try:
            replies = await self._lookup_sock.nlm_request(msg, RTM_GETROUTE, NLM_F_REQUEST)
        except NetlinkError as exc:
            raise OSError(exc.code, os.strerror(exc.code)) from exc
        result = RouteLookup(error=errno.ENODATA)
        try:
            async for reply in replies:
                route = route_from_msg(reply)
                if route is not None:
                    result = RouteLookup(
                        dst=route.dst if route.dst_len else None,
                        dst_len=route.dst_len,
                        oif=route.oif,
                    )
        except NetlinkError as exc:
            return RouteLookup(error=exc.code)
        return result

    # -- teardown --------------------------------------------------------

    def close(self) -> None:
        """Close the sockets; :meth:`events` ends."""
        self._closed = True
        for sock in (self._sock, self._lookup_sock):
            if sock is not None:
                try:
                    sock.close()
                except Exception:
                    log.debug("closing an rtnetlink socket failed", exc_info=True)
        self._sock = None
        self._lookup_sock = None

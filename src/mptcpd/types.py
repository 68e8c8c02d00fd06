"""Value types shared by the daemon, the kernel layer and plugins.

This module imports nothing of mptcpd, so every layer may use it.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import socket
from typing import NewType, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

#: An MPTCP connection token, as the kernel reports it (u32).
Token = NewType("Token", int)
#: An MPTCP address ID, 0..255 (0 is the initial subflow's address).
AddressId = NewType("AddressId", int)


class AddrFlags(enum.IntFlag):
    """Endpoint flags (``MPTCP_PM_ADDR_FLAG_*``), as ``--addr-flags`` sets them."""

    SIGNAL = 0x01
    SUBFLOW = 0x02
    BACKUP = 0x04
    FULLMESH = 0x08
    IMPLICIT = 0x10  #: set by the kernel only, seen in dumps
    LAMINAR = 0x20  #: kernel 6.18


class NotifyFlags(enum.IntFlag):
    """Address notification flags, as ``--notify-flags`` sets them."""

    EXISTING = 0x1
    SKIP_LINK_LOCAL = 0x2
    SKIP_LOOPBACK = 0x4
    CHECK_ROUTE = 0x8


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class SockAddr:
    """An IP address with a port (host order; 0 when there is none).

    ``ip`` may be given as text (``SockAddr("192.0.2.1", 80)``).  Immutable
    and hashable; two values are equal when family, address and port are
    equal.  IPv6 flow info and scope are not kept.
    """

    ip: IPAddress
    port: int = 0

    def __init__(self, ip: IPAddress | str | int, port: int = 0) -> None:
        if not isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            ip = ipaddress.ip_address(ip)
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port out of range: {port}")
        object.__setattr__(self, "ip", ip)
        object.__setattr__(self, "port", port)

    def __hash__(self) -> int:
        # Equal values have equal integers (and ports): the hash of the two,
        # without ``ipaddress``'s own ``__hash__`` (a Python method that
        # formats the integer in hex).  Plugins and the network monitor hash
        # addresses several times per event.
        return hash((int(self.ip), self.port))

    @property
    def family(self) -> int:
        """``AF_INET`` or ``AF_INET6``."""
        return socket.AF_INET if self.ip.version == 4 else socket.AF_INET6

    def with_port(self, port: int) -> SockAddr:
        return SockAddr(self.ip, port)

    def unmapped(self) -> SockAddr:
        """This address with an IPv4-mapped IPv6 address (``::ffff:192.0.2.1``,
        as dual-stack sockets report IPv4 peers) turned into plain IPv4."""
        if self.ip.version == 4:
            return self
        mapped = self.ip.ipv4_mapped
        return SockAddr(mapped, self.port) if mapped is not None else self

    def __str__(self) -> str:
        if not self.port:
            return str(self.ip)
        if self.ip.version == 6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"


#: ``IFF_*`` link flags the network monitor and plugins look at (``<net/if.h>``).
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40
IFF_LOWER_UP = 0x10000


@dataclasses.dataclass(frozen=True, slots=True)
class Interface:
    """A network interface as the network monitor tracks it (a snapshot).

    ``addrs`` are the interface's recorded local addresses (port 0) in
    arrival order.  ``flags`` are the ``IFF_*`` flags of the last link
    message; ``operstate`` is the RFC 2863 state name (``"UP"``,
    ``"DOWN"``, ``"LOWERLAYERDOWN"``, ...) and ``carrier`` the kernel's
    ``IFLA_CARRIER`` (``None`` when the kernel did not say).  ``kind`` is
    the link kind (``IFLA_INFO_KIND``: ``"veth"``, ``"bridge"``, ...; empty
    for physical devices).  ``addr_flags`` are the address flags the
    configuration gives this interface (its ``[interface GLOB]`` group);
    None when no group matches it, and then the global ``addr-flags``
    (``pm.config.addr_flags``) apply: see :meth:`endpoint_flags`.
    """

    index: int
    name: str
    flags: int
    type: int = 0  #: ``ARPHRD_*``
    operstate: str = ""
    carrier: bool | None = None
    addrs: tuple[SockAddr, ...] = ()
    family: int = 0  #: always ``AF_UNSPEC``, as in mptcpd
    kind: str = ""
    addr_flags: AddrFlags | None = None

    def endpoint_flags(self, default: AddrFlags | int) -> AddrFlags:
        """The flags for an endpoint on this interface: its own
        ``addr_flags`` when the configuration gives it some, else
        ``default`` (pass ``pm.config.addr_flags``)."""
        return AddrFlags(default) if self.addr_flags is None else self.addr_flags

    @property
    def is_up(self) -> bool:
        """Administratively up (``IFF_UP``)."""
        return bool(self.flags & IFF_UP)

    @property
    def is_running(self) -> bool:
        """Operationally up (``IFF_RUNNING``): the link has carrier."""
        return bool(self.flags & IFF_RUNNING)

    @property
    def is_loopback(self) -> bool:
        return bool(self.flags & IFF_LOOPBACK)

    def __str__(self) -> str:
        return f"{self.name or '?'}({self.index})"

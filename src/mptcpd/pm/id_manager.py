"""MPTCP address ID manager (C: ``mptcpd_idm``).

One :class:`IdManager` per daemon hands out the address IDs that the path
manager puts on endpoints and announcements.  IDs live in ``1..255``; ``0``
means "invalid" or "no ID", as in the C API.  The key of a mapping is the IP
address only (family and raw bytes): the port, and for IPv6 the flow info and
scope, are ignored.

Kept from C on purpose: :meth:`IdManager.map_id`
replaces an older mapping of the same address *without* freeing the old ID,
so that ID stays marked as used (it leaks) and two addresses may end up
sharing one ID.  The kernel's IDs are synchronised only once, at startup.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from mptcpd.types import IPAddress, SockAddr

log = logging.getLogger(__name__)

#: The lowest and highest address IDs the manager hands out.
MIN_ID = 1
MAX_ID = 255

AddressKey = tuple[int, bytes]


def _key(addr: SockAddr | IPAddress) -> AddressKey:
    """The mapping key of ``addr``: (family, packed IP); the port is ignored,
    and an IPv4-mapped IPv6 address is the IPv4 address it maps."""
    ip = addr.ip if isinstance(addr, SockAddr) else addr
    if not isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        raise TypeError(f"not an IP address: {ip!r}")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    return family, ip.packed


class IdManager:
    """Maps local IP addresses to MPTCP address IDs (1..255)."""

    def __init__(self) -> None:
        self._ids: dict[AddressKey, int] = {}
        self._used: set[int] = set()

    def __len__(self) -> int:
        """Number of mapped addresses."""
        return len(self._ids)

    def get_id(self, addr: SockAddr | IPAddress | None) -> int:
        """The ID of ``addr``, allocating the lowest unused one if needed.

        Returns 0 when ``addr`` is missing or all 255 IDs are in use.
        """
        if addr is None:
            return 0
        key = _key(addr)
        existing = self._ids.get(key)
        if existing is not None:
            return existing
        for candidate in range(MIN_ID, MAX_ID + 1):
            if candidate not in self._used:
                self._used.add(candidate)
                self._ids[key] = candidate
                return candidate
        return 0

    def map_id(self, addr: SockAddr | IPAddress | None, id: int) -> bool:
        """Map ``addr`` to ``id`` (used to sync with the kernel's endpoints).

        Returns False for a missing address, a non-IP value or an ID outside
        1..255.  An older mapping of ``addr`` is replaced and its ID is
        **not** freed (C behaviour, kept: defect 20).
        """
        if addr is None or not MIN_ID <= id <= MAX_ID:
            return False
        try:
            key = _key(addr)
        except TypeError:
            return False
        self._used.add(id)
        self._ids[key] = id
        return True

    def remove_id(self, addr: SockAddr | IPAddress | None) -> int:
        """Forget ``addr`` and free its ID; return that ID, or 0 if unmapped."""
        if addr is None:
            return 0
        id = self._ids.pop(_key(addr), None)
        if id is None:
            return 0
        # As in C, the ID is freed even if a remap made another address
        # share it.
        self._used.discard(id)
        return id

    def lookup(self, addr: SockAddr | IPAddress) -> int:
        """The ID mapped to ``addr`` without allocating one (0 if none)."""
        return self._ids.get(_key(addr), 0)

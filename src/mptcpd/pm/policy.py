"""The interface and address policy: which interfaces and addresses plugins
hear of, and with which address flags (issue 13).

One :class:`Policy` is built from the configuration (``skip-address-classes``,
``[interfaces]``, ``[interface GLOB]``).  The network monitor asks it once
per interface change (:meth:`Policy.interface`) and once per address change
(:meth:`Policy.address`), keeps the answers, and reports nothing that was
refused: events and queries alike.  A new policy (a reload) is handed to
:meth:`~mptcpd.pm.network_monitor.NetworkMonitor.set_policy`, which decides
again for everything it tracks.

Decisions are plain: ``None`` means "passes", anything else is the reason
it does not, worded for logs (and, later, the status API).

Duplicate address detection is part of the policy whatever the
configuration: a tentative address (``IFA_F_TENTATIVE``, DAD running) is
held back until the kernel reports it without that flag, and one whose DAD
failed (``IFA_F_DADFAILED``) never passes (joins from it would fail with
``EADDRNOTAVAIL``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress

from mptcpd.config import AddressClass, Config, InterfaceGroup
from mptcpd.types import AddrFlags, IPAddress

#: ``IFA_F_*`` flags the policy looks at (``linux/if_addr.h``).
IFA_F_TEMPORARY = 0x01  #: IPv6 only (it is ``IFA_F_SECONDARY`` for IPv4)
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40

_ULA = ipaddress.IPv6Network("fc00::/7")

#: The reasons an address is held back.
TENTATIVE = "tentative (duplicate address detection running)"
DAD_FAILED = "duplicate address detection failed"


@dataclasses.dataclass(frozen=True)
class InterfaceDecision:
    """What the policy says of one interface.

    :ivar denied: why the interface is kept from plugins (None: allowed).
    :ivar addr_flags: the flags of its ``[interface GLOB]`` group; None when
        no group matches (the global ``addr-flags`` apply).
    """

    denied: str | None = None
    addr_flags: AddrFlags | None = None


ALLOWED = InterfaceDecision()


@dataclasses.dataclass(frozen=True)
class Policy:
    """Decisions on interfaces and addresses; immutable, cheap to query.

    Built by :meth:`from_config`; ``Policy()`` lets everything through (C's
    behaviour) apart from the DAD rules.
    """

    skip: AddressClass = AddressClass(0)
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    deny_kinds: tuple[str, ...] = ()
    groups: tuple[InterfaceGroup, ...] = ()

    @classmethod
    def from_config(cls, config: Config) -> Policy:
        return cls(skip=config.skip_address_classes, allow=config.allow,
                   deny=config.deny, deny_kinds=config.deny_kinds,
                   groups=config.interface_groups)

    def interface(self, name: str, kind: str = "") -> InterfaceDecision:
        """The decision for the interface called ``name`` of link kind ``kind``."""
        denied: str | None = None
        for glob in self.deny:
            if fnmatch.fnmatchcase(name, glob):
                denied = f'denied by "{glob}"'
                break
        else:
            if kind and kind in self.deny_kinds:
                denied = f'its kind "{kind}" is denied'
            elif self.allow and not any(fnmatch.fnmatchcase(name, glob)
                                        for glob in self.allow):
                denied = "not allowed"
        flags: AddrFlags | None = None
        for glob, group_flags in self.groups:
            if fnmatch.fnmatchcase(name, glob):
                flags = group_flags
                break
        if denied is None and flags is None:
            return ALLOWED
        return InterfaceDecision(denied, flags)

    def address(self, ip: IPAddress, ifa_flags: int = 0) -> str | None:
        """Why the address ``ip`` with the ``IFA_F_*`` flags ``ifa_flags`` is
        kept from plugins, or None when it passes."""
        if ifa_flags & IFA_F_DADFAILED:
            return DAD_FAILED
        if ifa_flags & IFA_F_TENTATIVE:
            return TENTATIVE
        skip = self.skip
        if not skip:
            return None
        if skip & AddressClass.LOOPBACK and ip.is_loopback:
            return "loopback"
        if skip & AddressClass.LINK_LOCAL and ip.is_link_local:
            return "link-local"
        if ip.version == 6:
            if skip & AddressClass.ULA and ip in _ULA:
                return "ula"
            if skip & AddressClass.TEMPORARY and ifa_flags & IFA_F_TEMPORARY:
                return "temporary"
        if skip & AddressClass.DEPRECATED and ifa_flags & IFA_F_DEPRECATED:
            return "deprecated"
        return None


__all__ = [
    "ALLOWED",
    "DAD_FAILED",
    "InterfaceDecision",
    "Policy",
    "TENTATIVE",
]

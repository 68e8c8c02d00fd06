"""The interface and address policy (issue 13): its decisions, and the
network monitor reporting nothing the policy refuses, whether the policy is
there from the start or changes at run time."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from mptcpd.config import AddressClass as AC
from mptcpd.netlink.rtnl_monitor import AddressMessage, LinkMessage
from mptcpd.pm.network_monitor import NetworkMonitor
from mptcpd.pm.policy import ALLOWED, InterfaceDecision, Policy
from mptcpd.types import AddrFlags, NotifyFlags, SockAddr
from tests.nm_support import Recorder
from tests.unit.test_network_monitor import DOWN, READY

IFA_F_TEMPORARY, IFA_F_DEPRECATED = 0x01, 0x20
IFA_F_NODAD, IFA_F_OPTIMISTIC, IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x02, 0x04, 0x08, 0x40
IFA_F_PERMANENT = 0x80
B, S = AddrFlags.BACKUP, AddrFlags.SUBFLOW


def ip(text: str) -> Any:
    return ipaddress.ip_address(text)


def link(index: int, name: str, flags: int = READY, kind: str = "") -> LinkMessage:
    return LinkMessage(index, name, flags, 1, "UP", True, kind=kind)


def addr(index: int, text: str, flags: int = 0, deleted: bool = False) -> AddressMessage:
    return AddressMessage(index, ip(text), 24, 0, flags, None, deleted)


def monitor(policy: Policy, **kwargs: Any) -> tuple[NetworkMonitor, Recorder]:
    nm = NetworkMonitor(NotifyFlags(0), policy=policy, **kwargs)
    rec = Recorder(key=lambda i: i.name)
    nm.register(rec)
    return nm, rec


# -- decisions -------------------------------------------------------------------


def test_the_default_policy_lets_everything_through() -> None:
    policy = Policy()
    assert policy.interface("docker0", "bridge") is ALLOWED
    for text in ("127.0.0.1", "169.254.1.1", "fe80::1", "fd00::1", "2001:db8::1"):
        assert policy.address(ip(text), IFA_F_TEMPORARY | IFA_F_DEPRECATED) is None


@pytest.mark.parametrize("policy", [Policy(), Policy(skip=AC(sum(AC)))])
def test_dad_always_decides(policy: Policy) -> None:
    assert policy.address(ip("2001:db8::1"), IFA_F_TENTATIVE | IFA_F_PERMANENT) == \
        "tentative (duplicate address detection running)"
    assert policy.address(ip("2001:db8::1"), IFA_F_TENTATIVE | IFA_F_OPTIMISTIC) == \
        "tentative (duplicate address detection running)"
    assert policy.address(ip("2001:db8::1"), IFA_F_TENTATIVE | IFA_F_DADFAILED) == \
        "duplicate address detection failed"
    assert policy.address(ip("2001:db8::1"), IFA_F_NODAD | IFA_F_PERMANENT) is None


@pytest.mark.parametrize(("name", "kind", "denied"), [
    ("eth0", "", None),
    ("wlan3", "", None),
    ("wwan0", "", None),
    ("enp1s0", "", "not allowed"),
    ("docker0", "bridge", 'denied by "docker*"'),
    ("eth-br", "bridge", 'its kind "bridge" is denied'),
    ("eth9", "wireguard", 'its kind "wireguard" is denied'),
    ("eth8", "veth", None),
    ("br-1234", "", 'denied by "br-*"'),
])
def test_allow_deny_and_kinds(name: str, kind: str, denied: str | None) -> None:
    policy = Policy(allow=("eth*", "wlan*", "wwan*"), deny=("docker*", "br-*"),
                    deny_kinds=("bridge", "tun", "wireguard"))
    assert policy.interface(name, kind).denied == denied


def test_deny_wins_over_allow_and_an_empty_allow_allows_all() -> None:
    assert Policy(allow=("eth*",), deny=("eth1",)).interface("eth1").denied == \
        'denied by "eth1"'
    assert Policy(deny=("eth1",)).interface("anything").denied is None


def test_the_first_matching_group_gives_the_flags() -> None:
    policy = Policy(groups=(("wwan0", AddrFlags.SIGNAL), ("wwan*", S | B),
                            ("eth0", None), ("*", AddrFlags(0))))
    assert policy.interface("wwan0") == InterfaceDecision(None, AddrFlags.SIGNAL)
    assert policy.interface("wwan1") == InterfaceDecision(None, S | B)
    assert policy.interface("eth0") is ALLOWED  # a group without addr-flags
    assert policy.interface("lab1") == InterfaceDecision(None, AddrFlags(0))


@pytest.mark.parametrize(("text", "flags", "cls", "reason"), [
    ("127.0.0.2", 0, AC.LOOPBACK, "loopback"),
    ("::1", 0, AC.LOOPBACK, "loopback"),
    ("169.254.3.4", 0, AC.LINK_LOCAL, "link-local"),
    ("fe80::1", 0, AC.LINK_LOCAL, "link-local"),
    ("fd12:3456::1", 0, AC.ULA, "ula"),
    ("fc00::1", 0, AC.ULA, "ula"),
    ("2001:db8::1", IFA_F_TEMPORARY, AC.TEMPORARY, "temporary"),
    ("2001:db8::1", IFA_F_DEPRECATED, AC.DEPRECATED, "deprecated"),
    ("192.0.2.1", IFA_F_DEPRECATED, AC.DEPRECATED, "deprecated"),
])
def test_each_address_class_on_its_own(text: str, flags: int, cls: AC, reason: str) -> None:
    assert Policy(skip=cls).address(ip(text), flags) == reason
    others = AC(sum(AC) & ~cls)
    assert Policy(skip=others).address(ip(text), flags) is None


def test_ordinary_addresses_pass_every_class() -> None:
    policy = Policy(skip=AC(sum(AC)))
    assert policy.address(ip("192.0.2.1")) is None
    assert policy.address(ip("2001:db8::1")) is None
    # IFA_F_SECONDARY (0x01) on IPv4 is not "temporary".
    assert policy.address(ip("192.0.2.2"), 0x01) is None
    assert policy.address(ip("fe00::1")) is None  # outside fc00::/7 and fe80::/10


# -- the monitor reports nothing the policy refuses -----------------------------------

POLICY = Policy(skip=AC.LINK_LOCAL | AC.DEPRECATED, allow=("eth*", "lab*"),
                deny=("eth9",), deny_kinds=("bridge",), groups=(("lab*", S | B),))


def test_denied_interfaces_and_their_addresses_are_never_reported() -> None:
    nm, rec = monitor(POLICY)
    nm.handle_link(link(2, "eth1"))
    nm.handle_link(link(3, "eth9"))          # denied by name
    nm.handle_link(link(4, "lab0", kind="bridge"))  # denied by kind
    nm.handle_link(link(5, "wlan0"))         # not allowed
    nm.handle_link(link(6, "lab1"))          # allowed, its own flags
    for index, text in ((2, "192.0.2.1"), (3, "192.0.2.3"), (4, "192.0.2.4"),
                        (5, "192.0.2.5"), (6, "198.51.100.6")):
        nm.handle_address(addr(index, text))
    assert rec.calls == [
        ("new_interface", "eth1", None), ("new_interface", "lab1", None),
        ("new_local_address", "eth1", "192.0.2.1"),
        ("new_local_address", "lab1", "198.51.100.6"),
    ]
    assert [i.name for i in nm.interfaces()] == ["eth1", "lab1"]
    for index in (3, 4, 5):
        assert nm.get_interface(index) is None
    for text in ("192.0.2.3", "192.0.2.4", "192.0.2.5"):
        assert nm.find_interface(SockAddr(text)) is None
    assert nm.find_interface(SockAddr("192.0.2.1")).name == "eth1"  # type: ignore[union-attr]
    seen: list[str] = []
    nm.foreach_interface(lambda i: seen.append(i.name))
    assert seen == ["eth1", "lab1"]
    lab1 = nm.get_interface(6)
    assert lab1 is not None and lab1.addr_flags == S | B
    assert lab1.endpoint_flags(AddrFlags.SUBFLOW) == S | B
    eth1 = nm.get_interface(2)
    assert eth1 is not None and eth1.addr_flags is None
    assert eth1.endpoint_flags(AddrFlags.SIGNAL) == AddrFlags.SIGNAL
    assert {i.name: r for i, r, _ in nm.decisions()}["lab0"] == \
        'its kind "bridge" is denied'
    # Removals of what was never reported are not reported either.
    rec.calls.clear()
    nm.handle_address(addr(3, "192.0.2.3", deleted=True))
    nm.handle_link(LinkMessage(4, "lab0", 0, deleted=True))
    assert rec.calls == []
    # The status view says why.
    why = {iface.name: reason for iface, reason, _ in nm.decisions()}
    assert why == {"eth1": None, "eth9": 'denied by "eth9"', "wlan0": "not allowed",
                   "lab1": None}


def test_skipped_address_classes_are_never_reported() -> None:
    nm, rec = monitor(POLICY)
    nm.handle_link(link(2, "eth1"))
    nm.handle_address(addr(2, "fe80::1"))
    nm.handle_address(addr(2, "169.254.0.9"))
    nm.handle_address(addr(2, "2001:db8::9", IFA_F_DEPRECATED))
    nm.handle_address(addr(2, "2001:db8::1"))
    assert rec.ops("new_local_address") == [("new_local_address", "eth1", "2001:db8::1")]
    iface = nm.get_interface(2)
    assert iface is not None and iface.addrs == (SockAddr("2001:db8::1"),)
    assert nm.find_interface(SockAddr("fe80::1")) is None
    nm.handle_address(addr(2, "fe80::1", deleted=True))
    assert rec.ops("delete_local_address") == []


def test_an_address_that_becomes_deprecated_is_withdrawn_and_comes_back() -> None:
    nm, rec = monitor(POLICY)
    nm.handle_link(link(2, "eth1"))
    nm.handle_address(addr(2, "2001:db8::1"))
    nm.handle_address(addr(2, "2001:db8::1", IFA_F_DEPRECATED))
    nm.handle_address(addr(2, "2001:db8::1", IFA_F_DEPRECATED))  # nothing new
    assert rec.calls[1:] == [("new_local_address", "eth1", "2001:db8::1"),
                             ("delete_local_address", "eth1", "2001:db8::1")]
    assert nm.get_interface(2).addrs == ()  # type: ignore[union-attr]
    nm.handle_address(addr(2, "2001:db8::1"))  # preferred lifetime renewed
    assert rec.calls[-1] == ("new_local_address", "eth1", "2001:db8::1")
    # Without "deprecated" in the classes nothing happens.
    nm2, rec2 = monitor(Policy())
    nm2.handle_link(link(2, "eth1"))
    nm2.handle_address(addr(2, "2001:db8::1"))
    nm2.handle_address(addr(2, "2001:db8::1", IFA_F_DEPRECATED))
    assert rec2.ops("delete_local_address") == []


# -- a new policy at run time -------------------------------------------------------------


def test_a_new_policy_withdraws_reports_and_reflags() -> None:
    before = Policy(allow=("eth*",), groups=(("eth2", S),))
    nm, rec = monitor(before)
    for index, name in ((1, "eth1"), (2, "eth2"), (3, "wlan0")):
        nm.handle_link(link(index, name))
        nm.handle_address(addr(index, f"192.0.2.{index}"))
    nm.handle_link(link(4, "eth4", DOWN))  # not up: stays unreported
    rec.calls.clear()
    after = Policy(allow=("eth*", "wlan*"), deny=("eth1",), groups=(("eth2", S | B),))
    nm.set_policy(after)
    assert rec.calls == [
        ("delete_local_address", "eth1", "192.0.2.1"),
        ("delete_interface", "eth1", None),
        ("update_interface", "eth2", None),
        ("new_interface", "wlan0", None),
        ("new_local_address", "wlan0", "192.0.2.3"),
    ]
    assert rec.last("update_interface", "eth2").addr_flags == S | B
    assert [i.name for i in nm.interfaces()] == ["eth2", "wlan0"]
    assert nm.policy is after
    # The same policy again changes nothing; the old one undoes it all.
    rec.calls.clear()
    nm.set_policy(after)
    assert rec.calls == []
    nm.set_policy(before)
    assert rec.calls == [
        ("new_interface", "eth1", None),
        ("new_local_address", "eth1", "192.0.2.1"),
        ("update_interface", "eth2", None),
        ("delete_local_address", "wlan0", "192.0.2.3"),
        ("delete_interface", "wlan0", None),
    ]


def test_a_new_policy_skipping_a_class_withdraws_those_addresses() -> None:
    nm, rec = monitor(Policy())
    nm.handle_link(link(2, "eth1"))
    nm.handle_address(addr(2, "fd00::1"))
    nm.handle_address(addr(2, "2001:db8::1"))
    rec.calls.clear()
    nm.set_policy(Policy(skip=AC.ULA))
    assert rec.calls == [("delete_local_address", "eth1", "fd00::1")]
    nm.set_policy(Policy())
    assert rec.calls[-1] == ("new_local_address", "eth1", "fd00::1")


# -- duplicate address detection -----------------------------------------------------


def test_a_tentative_address_is_reported_when_dad_completes() -> None:
    nm, rec = monitor(Policy())
    nm.handle_link(link(2, "eth1"))
    nm.handle_address(addr(2, "2001:db8::1", IFA_F_TENTATIVE | IFA_F_PERMANENT))
    assert rec.ops("new_local_address") == []
    assert nm.get_interface(2).addrs == ()  # type: ignore[union-attr]
    assert nm.find_interface(SockAddr("2001:db8::1")) is None
    nm.handle_address(addr(2, "2001:db8::1", IFA_F_PERMANENT))  # DAD done
    assert rec.ops("new_local_address") == [("new_local_address", "eth1", "2001:db8::1")]
    nm.handle_address(addr(2, "2001:db8::1", IFA_F_PERMANENT))  # a refresh
    assert len(rec.ops("new_local_address")) == 1


def test_an_address_whose_dad_failed_is_never_reported() -> None:
    nm, rec = monitor(Policy())
    nm.handle_link(link(2, "eth1"))
    nm.handle_address(addr(2, "2001:db8::2", IFA_F_TENTATIVE | IFA_F_PERMANENT))
    nm.handle_address(addr(2, "2001:db8::2",
                           IFA_F_TENTATIVE | IFA_F_DADFAILED | IFA_F_PERMANENT))
    nm.handle_address(addr(2, "2001:db8::2", deleted=True))
    assert rec.ops("new_local_address", "delete_local_address") == []


def test_a_tentative_address_at_startup_waits_too() -> None:
    nm = NetworkMonitor(NotifyFlags.EXISTING)
    nm.handle_link(link(2, "eth1"), initial=True)
    nm.handle_address(addr(2, "2001:db8::1", IFA_F_TENTATIVE), initial=True)
    nm.handle_address(addr(2, "192.0.2.1"), initial=True)
    rec = Recorder(key=lambda i: i.name)
    nm.replay(rec)
    nm.register(rec)
    assert rec.calls == [("new_local_address", "eth1", "192.0.2.1")]
    nm.handle_address(addr(2, "2001:db8::1"))
    assert rec.calls[-1] == ("new_local_address", "eth1", "2001:db8::1")


# -- administrative down/up (spec 12.2 defect 11, fixed with readdress) ---------------


def test_admin_down_withdraws_and_up_reports_the_addresses_again() -> None:
    nm, rec = monitor(Policy(), readdress=True)
    nm.handle_link(link(2, "eth1"))
    nm.handle_address(addr(2, "192.0.2.1"))
    nm.handle_address(addr(2, "2001:db8::1"))
    rec.calls.clear()
    nm.handle_link(link(2, "eth1", DOWN))
    assert rec.calls == [("delete_local_address", "eth1", "192.0.2.1"),
                         ("delete_local_address", "eth1", "2001:db8::1"),
                         ("delete_interface", "eth1", None)]
    assert rec.interfaces[-1].flags == READY  # the last state plugins saw
    assert nm.interfaces() == [] and nm.find_interface(SockAddr("192.0.2.1")) is None
    # The kernel drops the IPv6 address of a downed interface: nothing to say.
    rec.calls.clear()
    nm.handle_address(addr(2, "2001:db8::1", deleted=True))
    assert rec.calls == []
    nm.handle_link(link(2, "eth1"))
    assert rec.calls == [("new_interface", "eth1", None),
                         ("new_local_address", "eth1", "192.0.2.1")]
    # The IPv6 address comes back when it is configured again.
    nm.handle_address(addr(2, "2001:db8::1"))
    assert rec.calls[-1] == ("new_local_address", "eth1", "2001:db8::1")


def test_removal_withdraws_the_addresses_first() -> None:
    nm, rec = monitor(Policy(), readdress=True)
    nm.handle_link(link(2, "eth1"))
    nm.handle_address(addr(2, "192.0.2.1"))
    rec.calls.clear()
    nm.handle_link(LinkMessage(2, "eth1", 0, deleted=True))
    assert rec.calls == [("delete_local_address", "eth1", "192.0.2.1"),
                         ("delete_interface", "eth1", None)]
    assert not nm.tracking


def test_an_interface_down_at_startup_reports_its_addresses_when_it_comes_up() -> None:
    nm = NetworkMonitor(NotifyFlags(0), readdress=True)
    nm.handle_link(link(2, "eth1", DOWN), initial=True)
    nm.handle_link(link(3, "eth2"), initial=True)
    nm.handle_address(addr(2, "192.0.2.1"), initial=True)
    nm.handle_address(addr(3, "198.51.100.1"), initial=True)
    rec = Recorder(key=lambda i: i.name)
    nm.replay(rec)
    nm.register(rec)
    assert rec.calls == []  # without "existing" nothing is replayed
    nm.handle_link(link(2, "eth1"))
    assert rec.calls == [("new_interface", "eth1", None),
                         ("new_local_address", "eth1", "192.0.2.1")]


def test_without_readdress_cs_behaviour_is_kept() -> None:
    nm, rec = monitor(Policy())
    nm.handle_link(link(2, "eth1"))
    nm.handle_address(addr(2, "192.0.2.1"))
    nm.handle_link(link(2, "eth1", DOWN))
    nm.handle_link(link(2, "eth1"))
    assert rec.calls[2:] == [("delete_interface", "eth1", None),
                             ("new_interface", "eth1", None)]

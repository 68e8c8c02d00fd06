"""The value types of :mod:`mptcpd.types`."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from mptcpd.types import SockAddr

ports = st.integers(0, 0xFFFF)
ips = st.one_of(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
                st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address))


@given(ips, ports, ips, ports)
def test_equal_addresses_hash_alike_and_sets_tell_them_apart(
        ip1: ipaddress.IPv4Address | ipaddress.IPv6Address, port1: int,
        ip2: ipaddress.IPv4Address | ipaddress.IPv6Address, port2: int) -> None:
    """SockAddr's own hash agrees with its equality, as the dataclass's
    did: equal values (made separately) hash alike, and sets and dicts find
    a value by an equal one and only by an equal one."""
    a, b = SockAddr(ip1, port1), SockAddr(ip2, port2)
    same = SockAddr(ipaddress.ip_address(str(ip1)), port1)
    assert a == same and hash(a) == hash(same) and same in {a}
    assert (a == b) == (ip1 == ip2 and port1 == port2)
    if a == b:
        assert hash(a) == hash(b)
    else:
        assert b not in {a} and {a: 1, b: 2}[b] == 2


def test_an_ipv4_address_and_the_ipv6_address_of_its_integer_differ() -> None:
    """Same integer, different families: unequal, however they hash."""
    v4 = SockAddr(ipaddress.IPv4Address(0xC0000201), 80)
    v6 = SockAddr(ipaddress.IPv6Address(0xC0000201), 80)
    assert v4 != v6 and len({v4, v6}) == 2

"""The address ID manager, ported from mptcpd's test-id-manager."""

from __future__ import annotations

import ipaddress

import pytest

from mptcpd.pm.id_manager import MAX_ID, IdManager
from mptcpd.types import SockAddr

V4 = SockAddr("192.0.2.1", 0)
V4_OTHER = SockAddr("198.51.100.7", 0)
V6 = SockAddr("2001:db8::1", 0)


def test_map_then_remap_replaces_the_mapping() -> None:
    idm = IdManager()
    assert idm.map_id(V4, 245)
    assert idm.get_id(V4) == 245
    assert idm.map_id(V4, 222)
    assert idm.get_id(V4) == 222


def test_remap_leaks_the_old_id_as_in_c() -> None:
    # Defect 20, kept: the replaced ID stays marked as used.
    idm = IdManager()
    idm.map_id(V4, 1)
    idm.map_id(V4, 2)
    assert idm.get_id(V6) == 3


@pytest.mark.parametrize("bad", [0, 256, -1])
def test_map_rejects_ids_outside_1_to_255(bad: int) -> None:
    idm = IdManager()
    assert not idm.map_id(V4, bad)
    assert idm.lookup(V4) == 0


def test_map_rejects_a_missing_address() -> None:
    assert not IdManager().map_id(None, 5)


def test_get_id_ignores_the_port() -> None:
    idm = IdManager()
    first = idm.get_id(SockAddr("192.0.2.1", 1234))
    assert first != 0
    assert idm.get_id(SockAddr("192.0.2.1", 4321)) == first
    assert idm.get_id(V4) == first


def test_different_addresses_get_different_ids() -> None:
    idm = IdManager()
    ids = {idm.get_id(V4), idm.get_id(V4_OTHER), idm.get_id(V6)}
    assert len(ids) == 3 and 0 not in ids


def test_get_id_of_a_missing_address_is_zero() -> None:
    assert IdManager().get_id(None) == 0


def test_remove_returns_the_id_then_zero() -> None:
    idm = IdManager()
    id = idm.get_id(V6)
    assert idm.remove_id(V6) == id
    assert idm.remove_id(V6) == 0


def test_removed_id_is_reused() -> None:
    idm = IdManager()
    a = idm.get_id(V4)
    idm.get_id(V4_OTHER)
    idm.remove_id(V4)
    assert idm.get_id(V6) == a


def test_lowest_unused_after_sync() -> None:
    # Verified against mptcpd 0.12: kernel IDs 3 and 7 synced, new ones get 1, 2.
    idm = IdManager()
    assert idm.map_id(SockAddr("203.0.113.3"), 3)
    assert idm.map_id(SockAddr("203.0.113.7"), 7)
    assert idm.get_id(V4) == 1
    assert idm.get_id(V4_OTHER) == 2
    assert idm.get_id(V6) == 4


def test_exhaustion_at_255() -> None:
    idm = IdManager()
    base = ipaddress.IPv6Address("2001:db8::")
    ids = [idm.get_id(SockAddr(base + i)) for i in range(MAX_ID)]
    assert ids == list(range(1, MAX_ID + 1))
    assert idm.get_id(SockAddr(base + MAX_ID)) == 0
    idm.remove_id(SockAddr(base + 9))
    assert idm.get_id(SockAddr(base + MAX_ID)) == 10


def test_an_ipv4_mapped_address_is_its_ipv4_address() -> None:
    idm = IdManager()
    v4 = SockAddr(ipaddress.ip_address("192.0.2.1"))
    mapped = SockAddr(ipaddress.ip_address("::ffff:192.0.2.1"), 5201)
    assert idm.get_id(v4) == idm.get_id(mapped) == idm.lookup(mapped) == 1
    assert mapped.unmapped() == v4.with_port(5201)


def test_ten_thousand_addresses_come_and_go_without_running_out() -> None:
    ids = IdManager()
    held = [SockAddr(ipaddress.ip_address(f"192.0.2.{i}")) for i in range(1, 11)]
    for addr in held:  # ten long-lived addresses keep their IDs throughout
        assert ids.get_id(addr)
    for n in range(10_000):
        addr = SockAddr(ipaddress.ip_address(0x20010DB8_0007_0000_0000_0000_0000_0000 + n))
        got = ids.get_id(addr)
        assert got == 11, n  # the lowest free one, every time
        assert ids.remove_id(addr) == got
    assert len(ids) == 10 and [ids.lookup(a) for a in held] == list(range(1, 11))

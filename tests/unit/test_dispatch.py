"""Dispatch rules, ported from the C test-plugin scenarios."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from mptcpd import events as ev
from mptcpd.daemon.dispatch import MAX_REMEMBERED_ADDRESSES, Dispatcher
from mptcpd.errors import QueueFull
from mptcpd.netlink import diag
from mptcpd.netlink.diag import MptcpSubflow
from mptcpd.plugin import PluginInfo, hookimpl
from mptcpd.plugins.registry import PluginRegistry
from mptcpd.types import SockAddr
from tests.plugins import recording
from tests.unit.test_plugin_loading import fixture_dir, load

TOKEN1, TOKEN2, TOKEN3, BAD_TOKEN = 0x12345678, 0x23456789, 0x34567890, 0xFFFFFFFF
LADDR = SockAddr(ipaddress.ip_address("192.0.2.1"), 0x3456)
RADDR = SockAddr(ipaddress.ip_address("203.0.113.1"), 0x4567)
RADDR6 = SockAddr(ipaddress.ip_address("2001:db8::1"), 0x5678)
PM = object()


@pytest.fixture(autouse=True)
def fresh_recording() -> Iterator[None]:
    recording.CALLS.clear()
    yield
    recording.CALLS.clear()


def dispatcher(registry: PluginRegistry, path_manager: str | None = None) -> Dispatcher:
    return Dispatcher(registry, PM, registry.select_default(path_manager))


def connection_events(token: int) -> list[ev.Event]:
    return [
        ev.ConnectionCreated(token, LADDR, RADDR, server_side=True),
        ev.ConnectionEstablished(token, LADDR, RADDR, server_side=True),
        ev.AddressAnnounced(token, 3, RADDR6),
        ev.AddressRemoved(token, 3),
        ev.ConnectionClosed(token),
    ]


def test_path_manager_option_overrides_priorities(tmp_path: Path) -> None:
    registry = load(fixture_dir(tmp_path, "security"))
    d = dispatcher(registry, "plugin_four")
    for event in connection_events(TOKEN1):
        d.dispatch(event)
    assert recording.counts("plugin_four") == {
        "new_connection": 1, "connection_established": 1, "new_address": 1,
        "address_removed": 1, "connection_closed": 1,
    }
    assert recording.counts("plugin_three") == {}


def test_the_most_favoured_plugin_is_the_default(tmp_path: Path) -> None:
    registry = load(fixture_dir(tmp_path, "priority"))
    d = dispatcher(registry)
    for token in (TOKEN1, TOKEN2):
        for event in connection_events(token):
            d.dispatch(event)
    assert recording.counts("plugin_one") == {
        "new_connection": 2, "connection_established": 2, "new_address": 2,
        "address_removed": 2, "connection_closed": 2,
    }
    assert recording.counts("plugin_two") == {}


def test_network_monitor_events_go_to_every_plugin_in_priority_order(tmp_path: Path) -> None:
    registry = load(fixture_dir(tmp_path, "priority", "security"))
    d = dispatcher(registry)
    iface = object()
    d.broadcast(ev.InterfaceAdded(iface))
    d.broadcast(ev.InterfaceUpdated(iface))
    d.broadcast(ev.InterfaceUpdated(iface))
    d.broadcast(ev.InterfaceRemoved(iface))
    for _ in range(3):
        d.broadcast(ev.LocalAddressAdded(iface, LADDR))
    d.broadcast(ev.LocalAddressRemoved(iface, LADDR))
    expected = {"new_interface": 1, "update_interface": 2, "delete_interface": 1,
                "new_local_address": 3, "delete_local_address": 1}
    for name in ("plugin_one", "plugin_two", "plugin_three", "plugin_four"):
        assert recording.counts(name) == expected
    first_round = [name for name, hook, _ in recording.CALLS if hook == "new_interface"]
    assert first_round == ["plugin_one", "plugin_three", "plugin_four", "plugin_two"]


def test_an_unknown_token_is_not_dispatched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionEstablished(BAD_TOKEN, LADDR, RADDR))
    d.dispatch(ev.SubflowEstablished(BAD_TOKEN, LADDR, RADDR, backup=False))
    assert recording.CALLS == []
    assert caplog.text.count("Unable to match token to plugin.") == 2


def test_the_binding_is_dropped_after_connection_closed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    for event in connection_events(TOKEN1):
        d.dispatch(event)
    assert d.bindings == {}
    d.dispatch(ev.AddressRemoved(TOKEN1, 3))
    assert "Unable to match token to plugin." in caplog.text
    assert recording.counts("plugin_one")["address_removed"] == 1


def test_subflow_hooks_receive_the_real_backup_value(tmp_path: Path) -> None:
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN3, LADDR, RADDR))
    d.dispatch(ev.SubflowEstablished(TOKEN3, LADDR, RADDR, backup=False))
    d.dispatch(ev.SubflowPriority(TOKEN3, LADDR, RADDR, backup=True))
    d.dispatch(ev.SubflowClosed(TOKEN3, LADDR, RADDR, backup=True))
    calls = [(hook, args.get("backup")) for _, hook, args in recording.CALLS]
    assert calls == [("new_connection", None), ("new_subflow", False),
                     ("subflow_priority", True), ("subflow_closed", True)]


def test_listener_events_go_to_the_default(tmp_path: Path) -> None:
    d = dispatcher(load(fixture_dir(tmp_path, "security")), "plugin_four")
    d.dispatch(ev.ListenerCreated(LADDR))
    d.dispatch(ev.ListenerClosed(LADDR))
    assert recording.counts("plugin_four") == {"listener_created": 1, "listener_closed": 1}
    assert recording.counts("plugin_three") == {}


def test_an_unknown_default_name_warns_and_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = load(fixture_dir(tmp_path, "priority"))
    assert registry.select_default("nonexistent").name == "plugin_one"
    assert 'Default path manager plugin "nonexistent" does not exist; using "plugin_one".' \
        in caplog.text


def test_a_plugin_without_hooks_tolerates_every_event(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = dispatcher(load(fixture_dir(tmp_path, "noop")))
    caplog.set_level(logging.DEBUG)
    events = connection_events(TOKEN1)
    for event in events[:-1]:
        d.dispatch(event)
    assert d.bindings == {TOKEN1: "noop"}  # bound although it implements nothing
    d.dispatch(events[-1])
    assert d.bindings == {}
    d.dispatch(ev.ListenerCreated(LADDR))
    d.broadcast(ev.InterfaceAdded(object()))  # type: ignore[arg-type]
    d.pm_ready()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


class Raising:
    PLUGIN = PluginInfo(name="aaa_raising", priority=-5)

    @hookimpl
    def new_interface(self, interface):
        raise RuntimeError("plugin bug")

    @hookimpl
    def new_connection(self, token):
        raise SystemExit(3)


def test_a_raising_plugin_is_contained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = load(fixture_dir(tmp_path, "priority"))
    plugin = Raising()
    registry.register(plugin, plugin.PLUGIN, "test")
    d = Dispatcher(registry, PM, registry.select_default("aaa_raising"))
    with caplog.at_level(logging.ERROR):
        d.broadcast(ev.InterfaceAdded(object()))
        d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    assert recording.counts("plugin_one") == {"new_interface": 1}
    assert recording.counts("plugin_two") == {"new_interface": 1}
    assert 'Plugin "aaa_raising" failed in hook new_interface' in caplog.text
    assert 'Plugin "aaa_raising" failed in hook new_connection' in caplog.text
    assert d.bindings == {TOKEN1: "aaa_raising"}


def test_reconcile_closes_vanished_and_adopts_missed_connections(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    d.dispatch(ev.ConnectionCreated(TOKEN2, LADDR, RADDR))
    recording.CALLS.clear()
    d.reconcile({TOKEN2: (LADDR, RADDR, False, True),
                 TOKEN3: (LADDR, RADDR6, True, True)})
    calls = [(hook, args.get("token")) for _, hook, args in recording.CALLS]
    # TOKEN2's ESTABLISHED was lost too: its plugin gets it.
    assert calls == [("connection_closed", TOKEN1), ("connection_established", TOKEN2),
                     ("new_connection", TOKEN3), ("connection_established", TOKEN3)]
    assert recording.CALLS[2][2]["server_side"] is True
    assert d.bindings == {TOKEN2: "plugin_one", TOKEN3: "plugin_one"}
    assert f"Connection {TOKEN1:08x} closed while events were lost." in caplog.text
    assert f"Connection {TOKEN2:08x} was established while events were lost." in caplog.text
    assert f'Connection {TOKEN3:08x} was created while events were lost; adopted by ' \
        '"plugin_one".' in caplog.text


def test_a_reconciliation_of_many_connections_logs_the_first_and_counts_the_rest(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A flood lost the CLOSED of a thousand connections: twenty warnings
    name the first ones, one counts the others (their lines are at debug
    level), and every plugin still gets its connection_closed."""
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    for token in range(1, 1001):
        d.dispatch(ev.ConnectionCreated(token, LADDR, RADDR))
    recording.CALLS.clear()
    caplog.set_level(logging.INFO)
    d.reconcile({})
    assert recording.counts("plugin_one") == {"connection_closed": 1000}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"Connection {token:08x} closed while events were lost."
                        for token in range(1, 21)] + [
        "980 more connection(s) closed while events were lost (logged at debug level)."]


def test_a_lost_established_is_given_once_by_the_reconciliation(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A bound connection whose ESTABLISHED was lost gets it from the
    listing, if that shows it established, and only then; its own
    ESTABLISHED, read later (it was still unread), is not dispatched again.
    One already told gets nothing more."""
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    for token in (TOKEN1, TOKEN2, TOKEN3):
        d.dispatch(ev.ConnectionCreated(token, LADDR, RADDR))
    d.dispatch(ev.ConnectionEstablished(TOKEN1, LADDR, RADDR))
    recording.CALLS.clear()
    d.begin_reconcile()
    d.reconcile({TOKEN1: (LADDR, RADDR, False, True), TOKEN2: (LADDR, RADDR, False, True),
                 TOKEN3: (LADDR, RADDR, False, False)})
    assert [(hook, args.get("token")) for _, hook, args in recording.CALLS] == [
        ("connection_established", TOKEN2)]
    assert recording.CALLS[0][2]["laddr"] == LADDR and recording.CALLS[0][2]["raddr"] == RADDR
    recording.CALLS.clear()
    for token in (TOKEN1, TOKEN2, TOKEN3):
        d.dispatch(ev.ConnectionEstablished(token, LADDR, RADDR))
    assert [(hook, args.get("token")) for _, hook, args in recording.CALLS] == [
        ("connection_established", TOKEN3)]
    assert "Unable to match token to plugin." not in caplog.text


def test_an_adopted_connections_late_created_is_not_dispatched_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A CREATED still unread when the listing was taken arrives after the
    adoption: the plugin had its new_connection already."""
    caplog.set_level(logging.INFO)
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.begin_reconcile()
    d.reconcile({TOKEN3: (LADDR, RADDR, False, False)}, at_startup=True)
    d.dispatch(ev.ConnectionCreated(TOKEN3, LADDR, RADDR))
    d.dispatch(ev.ConnectionEstablished(TOKEN3, LADDR, RADDR))
    calls = [(hook, args.get("token")) for _, hook, args in recording.CALLS]
    assert calls == [("new_connection", TOKEN3), ("connection_established", TOKEN3)]
    assert f'Connection {TOKEN3:08x} existed before mptcpd started; adopted by ' \
        '"plugin_one".' in caplog.text
    # After its close, the token is an ordinary new connection again.
    d.dispatch(ev.ConnectionClosed(TOKEN3))
    recording.CALLS.clear()
    d.dispatch(ev.ConnectionCreated(TOKEN3, LADDR, RADDR))
    assert [hook for _, hook, _ in recording.CALLS] == ["new_connection"]


def test_reconcile_leaves_alone_what_happened_while_listing(tmp_path: Path) -> None:
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    d.begin_reconcile()
    # While the list is made: TOKEN2 appears (not in the list yet) and
    # TOKEN1 closes (still in the list).
    d.dispatch(ev.ConnectionCreated(TOKEN2, LADDR, RADDR))
    d.dispatch(ev.ConnectionClosed(TOKEN1))
    recording.CALLS.clear()
    d.reconcile({TOKEN1: (LADDR, RADDR, False, True)})
    assert recording.CALLS == []
    assert d.bindings == {TOKEN2: "plugin_one"}


def test_reconcile_leaves_a_vanished_connection_to_its_waiting_close(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Its CLOSED is read but not handled yet: closing it now as well made
    that CLOSED find no binding (``Unable to match token to plugin.``)."""
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    d.dispatch(ev.ConnectionCreated(TOKEN2, LADDR, RADDR))
    recording.CALLS.clear()
    d.reconcile({}, closing={TOKEN1})
    d.dispatch(ev.ConnectionClosed(TOKEN1))
    calls = [(hook, args.get("token")) for _, hook, args in recording.CALLS]
    assert calls == [("connection_closed", TOKEN2), ("connection_closed", TOKEN1)]
    assert d.bindings == {}
    assert "Unable to match token to plugin." not in caplog.text


# -- announcements of adopted connections -------------------------------------------

PEER_ADDR2 = SockAddr(ipaddress.ip_address("203.0.113.2"))
PEER_ADDR3 = SockAddr(ipaddress.ip_address("203.0.113.3"), 8080)
OTHER_PEER = SockAddr(RADDR.ip, RADDR.port + 1)  # the same host, another service


def address_calls() -> list[tuple[str, object, object, object]]:
    return [(hook, args["token"], args["addr_id"], args.get("addr"))
            for _, hook, args in recording.CALLS if "address" in hook]


def test_an_adopted_connection_gets_what_its_peer_announced_on_its_other_connections(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Its own ANNOUNCED were lost with its CREATED: the plugin gets, before
    connection_established, the addresses its peer (the initial subflow's
    remote address and port) announced and has not removed on the live
    connections, the latest per ID, and nothing from another peer."""
    caplog.set_level(logging.INFO)
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    for token, raddr in ((TOKEN1, RADDR), (TOKEN2, OTHER_PEER)):
        d.dispatch(ev.ConnectionCreated(token, LADDR, raddr))
    d.dispatch(ev.AddressAnnounced(TOKEN1, 2, PEER_ADDR2))
    d.dispatch(ev.AddressAnnounced(TOKEN1, 5, RADDR6))
    d.dispatch(ev.AddressRemoved(TOKEN1, 5))
    d.dispatch(ev.AddressAnnounced(TOKEN1, 3, PEER_ADDR3))
    d.dispatch(ev.AddressAnnounced(TOKEN2, 4, RADDR6))
    assert d.announced(TOKEN1) == {2: PEER_ADDR2, 3: PEER_ADDR3}
    recording.CALLS.clear()
    d.begin_reconcile()
    d.reconcile({TOKEN1: (LADDR, RADDR, False, True), TOKEN2: (LADDR, OTHER_PEER, False, True),
                 TOKEN3: (LADDR, RADDR, False, True)})
    assert [(hook, args.get("token")) for _, hook, args in recording.CALLS] == [
        ("connection_established", TOKEN1), ("connection_established", TOKEN2),
        ("new_connection", TOKEN3), ("new_address", TOKEN3), ("new_address", TOKEN3),
        ("connection_established", TOKEN3)]
    assert address_calls() == [("new_address", TOKEN3, 2, PEER_ADDR2),
                               ("new_address", TOKEN3, 3, PEER_ADDR3)]
    assert d.announced(TOKEN3) == {2: PEER_ADDR2, 3: PEER_ADDR3}
    assert f"Connection {TOKEN3:08x}: the addresses its peer {RADDR} announced on its " \
        f"other connections are taken as announced to it too: {PEER_ADDR2} (id 2), " \
        f"{PEER_ADDR3} (id 3)." in caplog.text


def test_announcements_of_closed_connections_and_mapped_peers(tmp_path: Path) -> None:
    """What a closed connection's peer announced is forgotten with it; a
    peer seen as IPv4-mapped IPv6 on one connection is the same peer."""
    mapped = SockAddr(ipaddress.ip_address(f"::ffff:{RADDR.ip}"), RADDR.port)
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    d.dispatch(ev.AddressAnnounced(TOKEN1, 2, PEER_ADDR2))
    d.dispatch(ev.ConnectionClosed(TOKEN1))
    recording.CALLS.clear()
    d.reconcile({TOKEN3: (LADDR, RADDR, False, True)})
    assert address_calls() == []
    assert d.announced(TOKEN1) == {}
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, mapped))
    d.dispatch(ev.AddressAnnounced(TOKEN1, 2, PEER_ADDR2))
    recording.CALLS.clear()
    d.reconcile({TOKEN1: (LADDR, mapped, False, True), TOKEN2: (LADDR, RADDR, False, True),
                 TOKEN3: (LADDR, RADDR, False, True)})
    assert address_calls() == [("new_address", TOKEN2, 2, PEER_ADDR2)]


def test_an_assumed_announcement_read_late_is_not_dispatched_again(tmp_path: Path) -> None:
    """The adopted connection's own ANNOUNCED, still unread when the listing
    was taken, arrives after the adoption gave it: not dispatched again,
    once.  A different address under that ID, a later announcement of it
    again, and one after its removal are news."""
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    d.dispatch(ev.AddressAnnounced(TOKEN1, 2, PEER_ADDR2))
    d.dispatch(ev.AddressAnnounced(TOKEN1, 3, PEER_ADDR3))
    d.begin_reconcile()
    d.reconcile({TOKEN1: (LADDR, RADDR, False, False), TOKEN2: (LADDR, RADDR, False, False)})
    recording.CALLS.clear()
    d.dispatch(ev.ConnectionCreated(TOKEN2, LADDR, RADDR))  # read late: skipped too
    d.dispatch(ev.AddressAnnounced(TOKEN2, 2, PEER_ADDR2))
    d.dispatch(ev.AddressAnnounced(TOKEN2, 2, PEER_ADDR2))
    d.dispatch(ev.AddressAnnounced(TOKEN2, 3, RADDR6))
    d.dispatch(ev.AddressRemoved(TOKEN2, 3))
    d.dispatch(ev.AddressAnnounced(TOKEN2, 3, PEER_ADDR3))
    assert address_calls() == [("new_address", TOKEN2, 2, PEER_ADDR2),
                               ("new_address", TOKEN2, 3, RADDR6),
                               ("address_removed", TOKEN2, 3, None),
                               ("new_address", TOKEN2, 3, PEER_ADDR3)]


def test_an_adopted_connection_follows_what_its_peer_announces_elsewhere_later(
        tmp_path: Path) -> None:
    """Adopted when nothing was known of its peer (at startup here), a
    connection takes what the peer announces on another connection later,
    and its removal there, for the addresses it has not had its own
    ANNOUNCED of; another peer's announcements are not taken, and a closed
    connection takes nothing more."""
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.reconcile({TOKEN2: (LADDR, RADDR, False, True), TOKEN3: (LADDR, OTHER_PEER, False, True)},
                at_startup=True)
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    recording.CALLS.clear()
    d.dispatch(ev.AddressAnnounced(TOKEN1, 2, PEER_ADDR2))
    d.dispatch(ev.AddressAnnounced(TOKEN2, 3, PEER_ADDR3))  # its own
    d.dispatch(ev.AddressAnnounced(TOKEN1, 3, PEER_ADDR3))
    assert address_calls() == [("new_address", TOKEN1, 2, PEER_ADDR2),
                               ("new_address", TOKEN2, 2, PEER_ADDR2),
                               ("new_address", TOKEN2, 3, PEER_ADDR3),
                               ("new_address", TOKEN1, 3, PEER_ADDR3)]
    recording.CALLS.clear()
    d.dispatch(ev.AddressRemoved(TOKEN1, 3))  # TOKEN2 had its own: left to it
    d.dispatch(ev.AddressRemoved(TOKEN1, 2))
    assert address_calls() == [("address_removed", TOKEN1, 3, None),
                               ("address_removed", TOKEN1, 2, None),
                               ("address_removed", TOKEN2, 2, None)]
    assert d.announced(TOKEN2) == {3: PEER_ADDR3}
    d.dispatch(ev.ConnectionClosed(TOKEN2))
    recording.CALLS.clear()
    d.dispatch(ev.AddressAnnounced(TOKEN1, 2, PEER_ADDR2))
    assert address_calls() == [("new_address", TOKEN1, 2, PEER_ADDR2)]


def test_a_peer_announcing_every_id_is_remembered_up_to_the_bound(tmp_path: Path) -> None:
    """Every announcement is dispatched; the dispatcher remembers the first
    :data:`MAX_REMEMBERED_ADDRESSES` IDs of a connection (and their later
    changes), so a peer announcing 256 addresses on each of many
    connections costs it a bounded amount each."""
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    recording.CALLS.clear()
    for addr_id in range(256):
        d.dispatch(ev.AddressAnnounced(TOKEN1, addr_id, SockAddr(f"203.0.113.{addr_id}")))
    d.dispatch(ev.AddressAnnounced(TOKEN1, 3, PEER_ADDR3))
    assert len(address_calls()) == 257
    remembered = {**{i: SockAddr(f"203.0.113.{i}") for i in range(MAX_REMEMBERED_ADDRESSES)},
                  3: PEER_ADDR3}
    assert d.announced(TOKEN1) == remembered
    # An adopted connection to that peer takes those it remembers, and no
    # more of what the peer announces there later.
    d.reconcile({TOKEN1: (LADDR, RADDR, False, False), TOKEN2: (LADDR, RADDR, False, False)})
    recording.CALLS.clear()
    d.dispatch(ev.AddressAnnounced(TOKEN1, 200, SockAddr("203.0.113.250")))
    assert address_calls() == [("new_address", TOKEN1, 200, SockAddr("203.0.113.250"))]
    assert d.announced(TOKEN2) == remembered


# -- subflows reconciled ----------------------------------------------------------

SUB_L1 = SockAddr(ipaddress.ip_address("198.51.100.1"), 40001)
SUB_L2 = SockAddr(ipaddress.ip_address("198.51.100.1"), 40002)
SUB_L3 = SockAddr(ipaddress.ip_address("198.51.100.1"), 40003)
CREATED_FROM = SockAddr(SUB_L1.ip)  # what a plugin asks for: no local port


def listed(token: int, laddr: SockAddr, raddr: SockAddr = RADDR, *, state: int = 1,
           flags: int = diag.MPTCP_SUBFLOW_FLAG_JOIN_LOC) -> MptcpSubflow:
    return MptcpSubflow(token=token, laddr=laddr, raddr=raddr, state=state, ifindex=3,
                        local_id=2, remote_id=0, flags=flags)


def subflow_calls() -> list[tuple[str, object, object, object]]:
    return [(hook, args["token"], args["laddr"], args.get("backup"))
            for _, hook, args in recording.CALLS if "subflow" in hook]


def test_reconcile_tells_the_plugin_of_subflows_that_came_and_went_unseen(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    d.dispatch(ev.SubflowEstablished(TOKEN1, SUB_L1, RADDR, False))
    d.dispatch(ev.SubflowEstablished(TOKEN1, SUB_L2, RADDR, False))
    assert d.subflows(TOKEN1) == [(SUB_L1, RADDR), (SUB_L2, RADDR)]
    recording.CALLS.clear()
    # Lost: SUB_L2 closed, SUB_L3 established (the peer asked for it to be
    # a backup: ``backup`` is the peer's flag, as in the kernel's events);
    # the initial subflow and one still being set up are no news; another
    # token's is not ours.
    d.reconcile({TOKEN1: (LADDR, RADDR, False, True)}, subflows=[
        listed(TOKEN1, LADDR, flags=diag.MPTCP_SUBFLOW_FLAG_MCAP_LOC),
        listed(TOKEN1, SUB_L1),
        listed(TOKEN1, SUB_L3, flags=diag.MPTCP_SUBFLOW_FLAG_JOIN_LOC
               | diag.MPTCP_SUBFLOW_FLAG_BKUP_REM),
        listed(TOKEN1, SockAddr(SUB_L1.ip, 40004), state=2),
        listed(TOKEN2, SUB_L1),
    ])
    assert subflow_calls() == [("subflow_closed", TOKEN1, SUB_L2, False),
                               ("new_subflow", TOKEN1, SUB_L3, True)]
    assert d.subflows(TOKEN1) == [(SUB_L1, RADDR), (SUB_L3, RADDR)]
    assert f"Subflow {SUB_L2} -> {RADDR} of connection {TOKEN1:08x} closed while " \
        "events were lost." in caplog.text
    assert f"Subflow {SUB_L3} -> {RADDR} of connection {TOKEN1:08x} was established " \
        "while events were lost." in caplog.text
    # Reconciled again with the same listing: nothing new.
    recording.CALLS.clear()
    d.reconcile({TOKEN1: (LADDR, RADDR, False, True)}, subflows=[
        listed(TOKEN1, SUB_L1), listed(TOKEN1, SUB_L3)])
    assert subflow_calls() == []


def test_ipv4_mapped_addresses_match_plain_ipv4_ones(tmp_path: Path) -> None:
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    d.dispatch(ev.SubflowEstablished(TOKEN1, SUB_L1, RADDR, False))
    recording.CALLS.clear()
    mapped = SockAddr(ipaddress.ip_address(f"::ffff:{SUB_L1.ip}"), SUB_L1.port)
    rmapped = SockAddr(ipaddress.ip_address(f"::ffff:{RADDR.ip}"), RADDR.port)
    d.reconcile({TOKEN1: (LADDR, RADDR, False, True)},
                subflows=[listed(TOKEN1, mapped, rmapped)])
    assert subflow_calls() == []


def test_the_subflows_of_a_connection_adopted_at_startup_are_announced(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.begin_reconcile()
    d.reconcile({TOKEN3: (LADDR, RADDR, True, True)}, at_startup=True,
                subflows=[listed(TOKEN3, SUB_L1)])
    hooks = [(hook, args.get("token")) for _, hook, args in recording.CALLS]
    # its subflow before connection_established: sspi, which opens paths
    # then, learns first of the one it has
    assert hooks == [("new_connection", TOKEN3), ("new_subflow", TOKEN3),
                     ("connection_established", TOKEN3)]
    assert f"Subflow {SUB_L1} -> {RADDR} of connection {TOKEN3:08x} existed before " \
        "mptcpd started." in caplog.text


def test_subflows_with_events_while_listing_are_left_alone(tmp_path: Path) -> None:
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    d.dispatch(ev.ConnectionCreated(TOKEN2, LADDR, RADDR))
    d.dispatch(ev.SubflowEstablished(TOKEN2, SUB_L1, RADDR, False))
    d.begin_reconcile()
    # While the listing is made, TOKEN1 gets a subflow the listing missed.
    d.dispatch(ev.SubflowEstablished(TOKEN1, SUB_L2, RADDR, False))
    recording.CALLS.clear()
    d.reconcile({TOKEN1: (LADDR, RADDR, False, True), TOKEN2: (LADDR, RADDR, False, True)},
                subflows=[])
    assert subflow_calls() == [("subflow_closed", TOKEN2, SUB_L1, False)]
    assert d.subflows(TOKEN1) == [(SUB_L2, RADDR)]


def test_without_a_subflow_listing_subflows_are_left_as_they_are(tmp_path: Path) -> None:
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    d.dispatch(ev.SubflowEstablished(TOKEN1, SUB_L1, RADDR, False))
    recording.CALLS.clear()
    d.reconcile({TOKEN1: (LADDR, RADDR, False, True)}, subflows=None)
    assert subflow_calls() == []
    assert d.subflows(TOKEN1) == [(SUB_L1, RADDR)]


def test_a_closed_connection_forgets_its_subflows(tmp_path: Path) -> None:
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    d.dispatch(ev.SubflowEstablished(TOKEN1, SUB_L1, RADDR, False))
    d.dispatch(ev.SubflowClosed(TOKEN1, SUB_L1, RADDR, False))
    assert d.subflows(TOKEN1) == []
    d.dispatch(ev.SubflowEstablished(TOKEN1, SUB_L2, RADDR, False))
    d.dispatch(ev.ConnectionClosed(TOKEN1))
    assert d.subflows(TOKEN1) == []
    assert d._subflows == {}


# -- subflow creations followed ---------------------------------------------------

@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def create(d: Dispatcher, token: int, raddr: SockAddr, loop: asyncio.AbstractEventLoop,
           answer: Exception | bool = True) -> asyncio.Future[None]:
    """A plugin's subflow creation from ``CREATED_FROM`` (the channel hands
    out a future not yet done), then its answer: success (``True``), none
    yet (``False``) or an error."""
    future: asyncio.Future[None] = loop.create_future()
    d.subflow_creation(token, CREATED_FROM, raddr, 2, 0, future)
    if isinstance(answer, Exception):
        future.set_exception(answer)
        future.exception()
    elif answer:
        future.set_result(None)
    return future


LIVE1 = {TOKEN1: (LADDR, RADDR, False, True)}


def test_a_creation_the_kernel_took_that_is_no_longer_listed_failed_unseen(
        tmp_path: Path, loop: asyncio.AbstractEventLoop,
        caplog: pytest.LogCaptureFixture) -> None:
    """A creation the kernel had taken when the listings began and that they
    do not show in any state: its SUB_CLOSED was lost, and the plugin gets
    it, once; the real one, if it was only waiting to be read, is not
    dispatched again."""
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    create(d, TOKEN1, RADDR, loop)
    assert d.creations(TOKEN1) == [(CREATED_FROM, RADDR)]
    recording.CALLS.clear()
    d.begin_reconcile()
    d.reconcile(LIVE1, subflows=[listed(TOKEN1, LADDR, flags=diag.MPTCP_SUBFLOW_FLAG_MCAP_LOC)])
    assert subflow_calls() == [("subflow_closed", TOKEN1, CREATED_FROM, False)]
    assert d.creations(TOKEN1) == []
    assert f"Subflow {CREATED_FROM} -> {RADDR} of connection {TOKEN1:08x}, created by " \
        "its plugin, ended while events were lost." in caplog.text
    recording.CALLS.clear()
    d.dispatch(ev.SubflowClosed(TOKEN1, SUB_L1, RADDR, False, error=111))
    d.begin_reconcile()
    d.reconcile(LIVE1, subflows=[])
    assert subflow_calls() == []
    # A later subflow on the same path is news again.
    d.dispatch(ev.SubflowClosed(TOKEN1, SUB_L1, RADDR, False, error=111))
    assert subflow_calls() == [("subflow_closed", TOKEN1, SUB_L1, False)]


def test_creations_that_may_still_succeed_or_were_refused_are_not_reported(
        tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    for token in (TOKEN1, TOKEN2):
        d.dispatch(ev.ConnectionCreated(token, LADDR, RADDR))
    # Listed while its handshake goes on.
    create(d, TOKEN1, RADDR, loop)
    # Not answered when the listings began: the kernel may have taken it after.
    unanswered = create(d, TOKEN1, RADDR6, loop, answer=False)
    # Refused: the channel has said so, and the plugin knows.
    create(d, TOKEN1, SockAddr(RADDR.ip, 80), loop, OSError(22, "Invalid argument"))
    # Refused at once by the full queue: never followed.
    refused: asyncio.Future[None] = loop.create_future()
    refused.set_exception(QueueFull())
    refused.exception()
    d.subflow_creation(TOKEN1, CREATED_FROM, SockAddr(RADDR.ip, 81), 2, 0, refused)
    # Its connection had a subflow event while the listings were made.
    create(d, TOKEN2, RADDR, loop)
    # Not a connection of the dispatcher's.
    create(d, TOKEN3, RADDR, loop)
    assert d.creations(TOKEN3) == []
    assert len(d.creations(TOKEN1)) == 3
    recording.CALLS.clear()
    d.begin_reconcile()
    unanswered.set_result(None)
    d.dispatch(ev.SubflowEstablished(TOKEN2, SUB_L2, RADDR6, False))
    d.reconcile({TOKEN1: (LADDR, RADDR, False, True), TOKEN2: (LADDR, RADDR, False, True)},
                subflows=[listed(TOKEN1, SUB_L1, state=2)])
    assert subflow_calls() == [("new_subflow", TOKEN2, SUB_L2, False)]
    assert d.creations(TOKEN1) == [(CREATED_FROM, RADDR), (CREATED_FROM, RADDR6)]
    assert d.creations(TOKEN2) == [(CREATED_FROM, RADDR)]


def test_a_creation_is_followed_until_a_subflow_on_its_path_closes(
        tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    """A SUB_CLOSED on a creation's path, IPv4-mapped or not, ends the
    following of the oldest creation there; a closed connection drops its
    creations.  An established one stays followed (its subflow is known
    then, and is not reported closed while it is listed)."""
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    for _ in range(2):
        create(d, TOKEN1, RADDR, loop)
    mapped = SockAddr(ipaddress.ip_address(f"::ffff:{SUB_L1.ip}"), SUB_L1.port)
    rmapped = SockAddr(ipaddress.ip_address(f"::ffff:{RADDR.ip}"), RADDR.port)
    d.dispatch(ev.SubflowClosed(TOKEN1, mapped, rmapped, False, error=111))
    assert d.creations(TOKEN1) == [(CREATED_FROM, RADDR)]
    d.dispatch(ev.SubflowEstablished(TOKEN1, SUB_L2, RADDR, False))
    assert d.creations(TOKEN1) == [(CREATED_FROM, RADDR)]
    recording.CALLS.clear()
    d.begin_reconcile()
    d.reconcile(LIVE1, subflows=[listed(TOKEN1, SUB_L2)])
    assert subflow_calls() == []
    d.dispatch(ev.SubflowClosed(TOKEN1, SUB_L2, RADDR, False))
    assert d.creations(TOKEN1) == []
    create(d, TOKEN1, RADDR, loop)
    d.dispatch(ev.ConnectionClosed(TOKEN1))
    assert d.creations(TOKEN1) == [] and d._creating == {}


def test_a_creation_whose_subflow_closed_unseen_is_reported_once(
        tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    """Established, then closed while events were lost: the plugin gets
    one subflow_closed, for the subflow it was told of."""
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    create(d, TOKEN1, RADDR, loop)
    d.dispatch(ev.SubflowEstablished(TOKEN1, SUB_L1, RADDR, False))
    recording.CALLS.clear()
    d.begin_reconcile()
    d.reconcile(LIVE1, subflows=[])
    assert subflow_calls() == [("subflow_closed", TOKEN1, SUB_L1, False)]
    assert d.creations(TOKEN1) == []


def test_a_subflow_event_the_reconciliation_reported_is_not_dispatched_again(
        tmp_path: Path) -> None:
    """The listings can be newer than the events still waiting to be read:
    a subflow the reconciliation reported established, or closed, is not
    reported again by its own event read afterwards."""
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    d.dispatch(ev.SubflowEstablished(TOKEN1, SUB_L1, RADDR, False))
    recording.CALLS.clear()
    d.begin_reconcile()
    d.reconcile(LIVE1, subflows=[listed(TOKEN1, SUB_L2)])
    assert subflow_calls() == [("subflow_closed", TOKEN1, SUB_L1, False),
                               ("new_subflow", TOKEN1, SUB_L2, False)]
    recording.CALLS.clear()
    # Their own events, read now.
    d.dispatch(ev.SubflowClosed(TOKEN1, SUB_L1, RADDR, False))
    d.dispatch(ev.SubflowEstablished(TOKEN1, SUB_L2, RADDR, False))
    assert subflow_calls() == []
    d.dispatch(ev.SubflowClosed(TOKEN1, SUB_L2, RADDR, False))
    assert subflow_calls() == [("subflow_closed", TOKEN1, SUB_L2, False)]


def test_a_subflow_established_and_gone_before_the_listing_is_not_news_when_read(
        tmp_path: Path) -> None:
    """SUB_ESTABLISHED events still waiting to be read when the listings
    began are older than them: a subflow they no longer show came and went
    unseen, and its event, read late, is not dispatched (its SUB_CLOSED was
    lost: the plugin would keep it for good).  Seen under a flood: a
    subflow reported closed by one resync, then "established" by its own
    event, read after it, held a fullmesh path that had no subflow.  One
    the listing shows, or an event not waiting then, is dispatched as
    ever; so is a later subflow on the same path."""
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    d.dispatch(ev.SubflowEstablished(TOKEN1, SUB_L1, RADDR, False))
    recording.CALLS.clear()
    waiting = [ev.SubflowEstablished(TOKEN1, laddr, RADDR, False) for laddr in (SUB_L1, SUB_L2)]
    waiting.append(ev.SubflowEstablished(TOKEN2, SUB_L1, RADDR, False))  # not live
    d.begin_reconcile()
    d.reconcile(LIVE1, subflows=[listed(TOKEN1, SUB_L3)], stale=waiting)
    assert subflow_calls() == [("subflow_closed", TOKEN1, SUB_L1, False),
                               ("new_subflow", TOKEN1, SUB_L3, False)]
    recording.CALLS.clear()
    for event in waiting[:2]:  # read now
        d.dispatch(event)
    d.dispatch(ev.SubflowClosed(TOKEN1, SUB_L1, RADDR, False))
    d.dispatch(ev.SubflowEstablished(TOKEN1, SUB_L3, RADDR, False))  # reported already
    assert subflow_calls() == []
    assert d.subflows(TOKEN1) == [(SUB_L3, RADDR)]
    # Once read, the same addresses and ports are a new subflow's.
    d.dispatch(ev.SubflowEstablished(TOKEN1, SUB_L2, RADDR, False))
    assert subflow_calls() == [("new_subflow", TOKEN1, SUB_L2, False)]
    # The next reconciliation starts afresh; a closed connection forgets.
    d.begin_reconcile()
    d.reconcile(LIVE1, subflows=[listed(TOKEN1, SUB_L2), listed(TOKEN1, SUB_L3)],
                stale=[ev.SubflowEstablished(TOKEN1, SUB_L1, RADDR, False)])
    assert d._stale == {TOKEN1: {(SUB_L1, RADDR)}}
    d.dispatch(ev.ConnectionClosed(TOKEN1))
    assert d._stale == {}


def test_creations_on_one_path_are_counted_against_its_listed_subflows(
        tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    """ndiffports opens several subflows on one path: of three creations
    there, two listed (one established, one still in its handshake), one is
    gone; its late SUB_CLOSED is not dispatched again, the next one is."""
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    for _ in range(3):
        create(d, TOKEN1, RADDR, loop)
    d.dispatch(ev.SubflowEstablished(TOKEN1, SUB_L1, RADDR, False))
    recording.CALLS.clear()
    d.begin_reconcile()
    d.reconcile(LIVE1, subflows=[listed(TOKEN1, SUB_L1), listed(TOKEN1, SUB_L2, state=2)])
    assert subflow_calls() == [("subflow_closed", TOKEN1, CREATED_FROM, False)]
    assert len(d.creations(TOKEN1)) == 2
    recording.CALLS.clear()
    d.dispatch(ev.SubflowClosed(TOKEN1, SUB_L3, RADDR, False, error=111))
    assert subflow_calls() == []
    d.dispatch(ev.SubflowClosed(TOKEN1, SUB_L2, RADDR, False, error=111))
    assert subflow_calls() == [("subflow_closed", TOKEN1, SUB_L2, False)]
    assert len(d.creations(TOKEN1)) == 1


@pytest.mark.parametrize("again", ["created", "established", "same ports"])
def test_a_subflow_started_again_on_a_path_reported_closed_is_news(
        tmp_path: Path, loop: asyncio.AbstractEventLoop, again: str) -> None:
    """The reconciliation reported a subflow closed, and its own SUB_CLOSED
    was lost for good.  A subflow that starts on that path again (the
    plugin's next creation there, one established from elsewhere: the
    peer's join, another tool; or, for a subflow the plugin was told of,
    one on the same addresses and ports) and closes: its SUB_CLOSED reaches
    the plugin (it is not taken for the lost one)."""
    d = dispatcher(load(fixture_dir(tmp_path, "priority")))
    d.dispatch(ev.ConnectionCreated(TOKEN1, LADDR, RADDR))
    if again == "same ports":
        d.dispatch(ev.SubflowEstablished(TOKEN1, SUB_L1, RADDR, False))
    else:
        create(d, TOKEN1, RADDR, loop)
    d.begin_reconcile()
    d.reconcile(LIVE1, subflows=[])
    closing = SUB_L1 if again == "same ports" else SUB_L2
    if again == "created":
        create(d, TOKEN1, RADDR, loop)
    else:
        d.dispatch(ev.SubflowEstablished(TOKEN1, closing, RADDR, False))
    recording.CALLS.clear()
    d.dispatch(ev.SubflowClosed(TOKEN1, closing, RADDR, False, error=111))
    assert subflow_calls() == [("subflow_closed", TOKEN1, closing, False)]
    assert d.creations(TOKEN1) == []

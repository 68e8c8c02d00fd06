"""addr_adv's logic against a recording pm."""

from __future__ import annotations

import asyncio
import errno
import gc
import ipaddress
import logging
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from mptcpd.errors import KernelError, NotReady, QueueFull
from mptcpd.plugins.loader import load_plugins
from mptcpd.plugins.registry import PluginRegistry
from mptcpd.pm.id_manager import IdManager
from mptcpd.types import AddrFlags, Interface, SockAddr

ROOT = Path(__file__).resolve().parents[2]
A1 = SockAddr(ipaddress.ip_address("192.0.2.1"))
A2 = SockAddr(ipaddress.ip_address("198.51.100.1"))
A3 = SockAddr(ipaddress.ip_address("2001:db8:1::1"))
IF2 = Interface(index=2, name="c1", flags=0x41, addrs=(A1, A3))
IF3 = Interface(index=3, name="c2", flags=0x41, addrs=(A2,))


class AddrInfo:
    def __init__(self, address: SockAddr, id: int, ifindex: int = 0) -> None:
        self.address, self.id, self.flags, self.ifindex = address, id, 0, ifindex


class FakePM:
    """Records kernel commands; each returns a future the test may settle.
    While ``full`` is set, a command is refused as the daemon's full queue
    refuses it (a future failed with QueueFull at once) and recorded in
    ``refused`` instead."""

    def __init__(self, addr_flags: AddrFlags = AddrFlags(0)) -> None:
        self.config = types.SimpleNamespace(addr_flags=addr_flags)
        self.id_manager = IdManager()
        self.calls: list[tuple[str, Any]] = []
        self.futures: dict[str, list[asyncio.Future[Any]]] = {}
        self.full = False
        self.refused: list[tuple[str, Any]] = []

    def _command(self, name: str, *args: Any) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        if self.full:
            self.refused.append((name, args))
            future.set_exception(QueueFull())
            return future
        self.calls.append((name, args))
        self.futures.setdefault(name, []).append(future)
        return future

    def kpm_set_limits(self, limits: Any) -> asyncio.Future[Any]:
        return self._command("set_limits", [(1, limits.subflows), (0, limits.rcv_add_addrs)])

    def kpm_add_addr(self, addr: SockAddr, id: int, flags: int, ifindex: int) -> Any:
        return self._command("add", addr, id, flags, ifindex)

    def kpm_remove_addr(self, id: int) -> asyncio.Future[Any]:
        return self._command("remove", id)

    def kpm_dump_addrs(self) -> asyncio.Future[Any]:
        return self._command("dump")

    def kpm_set_flags(self, addr: SockAddr, flags: int) -> asyncio.Future[Any]:
        return self._command("set_flags", addr, flags)

    def commands(self, *names: str) -> list[tuple[str, Any]]:
        return [c for c in self.calls if not names or c[0] in names]


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("MPTCPD_STATE_DIR", str(tmp_path / "state"))
    registry = PluginRegistry()
    load_plugins(registry, str(ROOT / "plugins"), ["addr_adv"], entry_points=False)
    return registry.get("addr_adv").module  # type: ignore[union-attr]


async def answer(pm: FakePM, name: str, error: BaseException | None = None) -> None:
    """The kernel answers every pending ``name`` command (with ``error``)."""
    for future in pm.futures.get(name, []):
        if not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
    await asyncio.sleep(0)


async def started(plugin: Any, pm: FakePM, existing: list[AddrInfo] = ()) -> None:
    plugin.plugin_init(pm)
    pm.futures["dump"][-1].set_result(list(existing))
    await asyncio.sleep(0)


async def test_init_sets_the_limits_subflows_first(plugin: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    pm = FakePM()
    await started(plugin, pm)
    assert pm.commands("set_limits") == [("set_limits", ([(1, 2), (0, 0)],))]
    assert "MPTCP address advertiser path manager initialized." in caplog.text


async def test_with_the_subflow_flag_add_addr_accepted_follows(plugin: Any) -> None:
    pm = FakePM(AddrFlags.SUBFLOW)
    await started(plugin, pm)
    plugin.new_local_address(IF2, A1, pm)
    assert pm.commands("set_limits") == [("set_limits", ([(1, 2), (0, 2)],)),
                                         ("set_limits", ([(1, 3), (0, 3)],))]
    assert pm.commands("add") == [("add", (A1, 1, int(AddrFlags.SUBFLOW), 2))]


async def test_addresses_wait_for_the_endpoint_dump(plugin: Any) -> None:
    pm = FakePM()
    plugin.plugin_init(pm)
    plugin.new_local_address(IF2, A1, pm)
    assert pm.commands("add") == []
    pm.futures["dump"][0].set_result([])
    await asyncio.sleep(0)
    assert pm.commands("add") == [("add", (A1, 1, 0, 2))]


async def test_limits_stop_at_eight(plugin: Any) -> None:
    pm = FakePM()
    await started(plugin, pm)
    for i in range(8):
        addr = SockAddr(ipaddress.ip_address(f"203.0.113.{i + 1}"))
        plugin.new_local_address(IF2, addr, pm)
    limits = [args[0][0][1] for _, args in pm.commands("set_limits")]
    assert limits == [2, 3, 4, 5, 6, 7, 8]  # the 7th and 8th additions send nothing
    assert len(pm.commands("add")) == 8


async def test_an_existing_endpoint_is_neither_duplicated_nor_removed(
    plugin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pm = FakePM()
    pm.id_manager.map_id(A2, 7)  # the daemon's ID sync
    await started(plugin, pm, [AddrInfo(A2, 7)])
    plugin.new_local_address(IF3, A2, pm)
    assert pm.commands("add") == []
    assert pm.commands("set_limits")[-1] == ("set_limits", ([(1, 3), (0, 0)],))
    assert "exists already and is not ours" in caplog.text
    plugin.link_down(IF3, pm)
    plugin.delete_local_address(IF3, A2, pm)
    assert pm.commands("remove") == []
    # It counted in the limits while its address existed, as in C.
    assert pm.commands("set_limits")[-1] == ("set_limits", ([(1, 2), (0, 0)],))
    # The endpoint stays in the kernel, and so does its ID: no other address
    # may get 7 while it is there.
    assert pm.id_manager.lookup(A2) == 7


async def test_deleting_an_address_removes_its_endpoint(plugin: Any) -> None:
    pm = FakePM()
    await started(plugin, pm)
    plugin.new_local_address(IF2, A1, pm)
    plugin.new_local_address(IF3, A2, pm)
    await answer(pm, "add")
    plugin.delete_local_address(IF2, A1, pm)
    assert pm.commands("remove") == [("remove", (1,))]
    assert pm.commands("set_limits")[-1] == ("set_limits", ([(1, 3), (0, 0)],))
    assert pm.id_manager.lookup(A1) == 0


async def test_an_unknown_address_is_only_logged(plugin: Any,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    pm = FakePM()
    await started(plugin, pm)
    plugin.delete_local_address(IF2, A1, pm)
    assert pm.commands("remove") == []
    assert "No address ID associated with addr." in caplog.text


async def test_carrier_loss_withdraws_and_recovery_restores_with_the_same_id(
    plugin: Any,
) -> None:
    pm = FakePM()
    await started(plugin, pm)
    plugin.new_local_address(IF2, A1, pm)
    plugin.new_local_address(IF3, A2, pm)
    await answer(pm, "add")
    plugin.link_down(IF3, pm)
    assert pm.commands("remove") == [("remove", (2,))]
    await answer(pm, "remove")
    plugin.link_down(IF3, pm)  # twice: nothing more
    assert len(pm.commands("remove")) == 1
    plugin.link_up(IF3, pm)
    assert pm.commands("add")[-1] == ("add", (A2, 2, 0, 3))
    limits = [args[0][0][1] for _, args in pm.commands("set_limits")]
    assert limits == [2, 3, 4, 3, 4]


async def test_the_ninth_endpoint_is_reported_as_the_kernel_limit(
    plugin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pm = FakePM()
    await started(plugin, pm)
    plugin.new_local_address(IF2, A1, pm)
    pm.futures["add"][0].set_exception(
        KernelError("add_addr", errno.ERANGE, "too many addresses or duplicate one"))
    await asyncio.sleep(0)
    assert "the kernel's limit of 8 endpoints per network namespace is reached" in caplog.text
    plugin.link_down(IF2, pm)
    assert pm.commands("remove") == []  # it was never ours
    # When its address goes, the ID it held is free again (no endpoint has it).
    assert pm.id_manager.lookup(A1) == 1
    plugin.delete_local_address(IF2, A1, pm)
    assert pm.id_manager.lookup(A1) == 0 and pm.commands("remove") == []


async def test_ids_do_not_run_out_when_addresses_come_and_go(plugin: Any) -> None:
    """300 temporary addresses, one after the other, all get an endpoint
    (there are 255 IDs): each one's ID is freed when it goes, whether the
    kernel took its endpoint or refused it."""
    pm = FakePM()
    await started(plugin, pm)
    for i in range(300):
        addr = SockAddr(ipaddress.ip_address(f"2001:db8:7::{i + 1:x}"))
        plugin.new_local_address(IF2, addr, pm)
        future = pm.futures["add"][-1]
        if i % 2:
            future.set_result(None)
        else:
            future.set_exception(KernelError("add_addr", errno.ERANGE, None))
        await asyncio.sleep(0)
        plugin.delete_local_address(IF2, addr, pm)
        await answer(pm, "remove")
    assert len(pm.commands("add")) == 300
    assert all(args[1] == 1 for _, args in pm.commands("add"))  # the lowest free ID
    assert len(pm.id_manager) == 0


async def test_a_restarted_plugin_takes_its_endpoints_over(plugin: Any) -> None:
    pm = FakePM()
    await started(plugin, pm)
    plugin.new_local_address(IF3, A2, pm)
    pm.futures["add"][0].set_result(None)
    await asyncio.sleep(0)
    # A new daemon: the kernel still has the endpoint made by the last one.
    pm2 = FakePM()
    pm2.id_manager.map_id(A2, 1)
    await started(plugin, pm2, [AddrInfo(A2, 1), AddrInfo(A1, 5)])
    plugin.new_local_address(IF3, A2, pm2)
    assert pm2.commands("add") == []  # no duplicate
    assert pm2.commands("set_limits")[-1] == ("set_limits", ([(1, 3), (0, 0)],))
    plugin.link_down(IF3, pm2)
    assert pm2.commands("remove") == [("remove", (1,))]  # but managed as ours


@pytest.mark.parametrize("text", [
    '{"endpoints": {"192.0.2.1": 1e400}}',
    '{"endpoints": {"192.0.2.1": 999}}',
    '{"endpoints": {"not an address": 1}}',
    '{"endpoints": []}',
    "[" * 100_000,
    "\x00\xff garbage",
    b'{"endpoints": {"192.0.2.1": 1}}\xff',  # not UTF-8: UnicodeDecodeError escaped
])
async def test_a_corrupt_state_file_is_warned_about_and_nothing_taken_as_ours(
        plugin: Any, text: str | bytes, caplog: pytest.LogCaptureFixture) -> None:
    """The state file of the earlier format (JSON), corrupt."""
    path = plugin.legacy_state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, errors="surrogateescape")
    pm = FakePM()
    await started(plugin, pm, [AddrInfo(A1, 1)])  # an endpoint it cannot prove its own
    assert f"Ignoring the corrupt {path}" in caplog.text
    plugin.new_local_address(IF2, A1, pm)
    plugin.new_local_address(IF3, A2, pm)  # and it goes on working
    assert [args[0] for _, args in pm.commands("add")] == [A2]
    plugin.delete_local_address(IF2, A1, pm)
    assert pm.commands("remove") == []  # never removed: not proven ours


async def test_a_command_the_daemon_could_not_send_is_sent_again(
        plugin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full command queue (a storm of carrier flaps) must not cost an
    address its endpoint for good."""
    monkeypatch.setattr(plugin, "RETRY_DELAY", 0)
    pm = FakePM()
    await started(plugin, pm)
    plugin.new_local_address(IF3, A2, pm)
    await answer(pm, "add", QueueFull())
    await asyncio.sleep(0.01)
    assert pm.commands("add") == [("add", (A2, 1, 0, 3))] * 2
    await answer(pm, "add")
    plugin.link_down(IF3, pm)
    await answer(pm, "remove", QueueFull())
    await asyncio.sleep(0.01)
    assert pm.commands("remove") == [("remove", (1,))] * 2
    await answer(pm, "remove")
    plugin.link_up(IF3, pm)
    assert pm.commands("add")[-1] == ("add", (A2, 1, 0, 3))


async def test_an_address_on_a_link_without_carrier_waits_for_it(plugin: Any) -> None:
    pm = FakePM()
    await started(plugin, pm)
    no_carrier = Interface(index=3, name="c2", flags=0x1, addrs=(A2,))
    plugin.new_local_address(no_carrier, A2, pm)
    assert pm.commands("add") == []
    plugin.link_up(IF3, pm)
    assert pm.commands("add") == [("add", (A2, 1, 0, 3))]


async def test_an_endpoint_is_remembered_before_the_kernel_is_asked(plugin: Any) -> None:
    """A daemon killed between the two still takes it for its own."""
    pm = FakePM()
    await started(plugin, pm)
    seen: list[dict[SockAddr, int]] = []
    add = pm.kpm_add_addr

    def kpm_add_addr(*args: Any) -> Any:
        seen.append(plugin.parse_journal(plugin.state_file().read_bytes())[0])
        return add(*args)

    pm.kpm_add_addr = kpm_add_addr  # type: ignore[method-assign]
    plugin.new_local_address(IF3, A2, pm)
    plugin.new_local_address(IF2, A1, pm)
    assert seen == [{A2: 1}, {A2: 1, A1: 2}]


async def test_the_state_file_is_replaced_whole_then_appended_to(
        plugin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first change of a run writes the whole file to a temporary file
    that then replaces the old one (a daemon killed meanwhile leaves the old
    file or the new, whole); later changes are one appended line each, no
    file replaced."""
    path = plugin.state_file()
    path.parent.mkdir(parents=True)
    path.write_bytes(plugin.JOURNAL_HEADER + b"+ 192.0.2.1 1\n- 192.0.2.1\n")
    pm = FakePM()
    replaced: list[tuple[bytes, str]] = []
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        replaced.append((Path(src).read_bytes(), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    await started(plugin, pm)
    assert replaced == [(plugin.JOURNAL_HEADER, str(path))]
    plugin.new_local_address(IF3, A2, pm)
    await answer(pm, "add")
    plugin.delete_local_address(IF3, A2, pm)
    await answer(pm, "remove")
    assert len(replaced) == 1
    assert path.read_bytes() == plugin.JOURNAL_HEADER + b"+ 198.51.100.1 1\n- 198.51.100.1\n"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


class FakeMonitor:
    def __init__(self, *interfaces: Interface) -> None:
        self.interfaces = interfaces

    def find_interface(self, addr: SockAddr) -> Interface | None:
        return next((i for i in self.interfaces if addr in i.addrs), None)


async def test_endpoints_taken_over_whose_address_went_are_removed(plugin: Any) -> None:
    """Addresses that went, and carriers lost, while no daemon ran: the
    endpoints of the last run are removed, or withdrawn, at start-up."""
    path = plugin.state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(plugin.JOURNAL_HEADER
                     + b"+ 192.0.2.1 1\n+ 198.51.100.1 2\n+ 2001:db8:1::1 3\n")
    pm = FakePM()
    no_carrier = Interface(index=3, name="c2", flags=0x1, addrs=(A2,))
    pm.network_monitor = FakeMonitor(Interface(index=2, name="c1", flags=0x41,  # type: ignore[attr-defined]
                                               addrs=(A1,)), no_carrier)
    for addr, id in ((A1, 1), (A2, 2), (A3, 3)):
        pm.id_manager.map_id(addr, id)
    await started(plugin, pm, [AddrInfo(A1, 1, 2), AddrInfo(A2, 2, 3), AddrInfo(A3, 3, 2)])
    assert sorted(pm.commands("remove")) == [("remove", (2,)), ("remove", (3,))]
    assert pm.id_manager.lookup(A3) == 0 and pm.id_manager.lookup(A2) == 2
    await answer(pm, "remove")
    assert plugin.parse_journal(path.read_bytes())[0] == {A1: 1, A2: 2}
    plugin.new_local_address(IF2, A1, pm)
    plugin.new_local_address(no_carrier, A2, pm)
    assert pm.commands("add") == []
    plugin.link_up(IF3, pm)  # the carrier is back: restored with its ID
    assert pm.commands("add") == [("add", (A2, 2, 0, 3))]


@pytest.mark.parametrize("second", [IF2, IF3], ids=["same interface", "another interface"])
async def test_an_address_reported_twice_counts_once(plugin: Any, second: Interface) -> None:
    """Reported again (an administrative down/up replays it; one IP on two
    interfaces reports it twice): one endpoint, the limits raised once and
    lowered once."""
    pm = FakePM()
    await started(plugin, pm)
    plugin.new_local_address(IF2, A1, pm)
    plugin.new_local_address(second, A1, pm)
    assert pm.commands("add") == [("add", (A1, 1, 0, 2))]
    assert [args[0][0][1] for _, args in pm.commands("set_limits")] == [2, 3]
    pm.futures["add"][0].set_result(None)
    plugin.delete_local_address(IF2, A1, pm)
    assert [args[0][0][1] for _, args in pm.commands("set_limits")] == [2, 3, 2]
    assert pm.commands("remove") == [("remove", (1,))]


# -- per-interface flags (issue 13) --------------------------------------------------


async def test_an_interface_with_its_own_flags_gets_endpoints_with_them(plugin: Any) -> None:
    pm = FakePM(AddrFlags.SUBFLOW)
    await started(plugin, pm)
    wwan = Interface(index=4, name="wwan0", flags=0x41, addrs=(A2,),
                     addr_flags=AddrFlags.SUBFLOW | AddrFlags.BACKUP)
    plugin.new_local_address(wwan, A2, pm)
    plugin.new_local_address(IF2, A1, pm)
    assert pm.commands("add") == [
        ("add", (A2, 1, int(AddrFlags.SUBFLOW | AddrFlags.BACKUP), 4)),
        ("add", (A1, 2, int(AddrFlags.SUBFLOW), 2)),
    ]


async def test_endpoints_follow_their_interfaces_flags(plugin: Any) -> None:
    pm = FakePM(AddrFlags.SUBFLOW)
    await started(plugin, pm)
    plugin.new_local_address(IF2, A1, pm)
    plugin.new_local_address(IF3, A2, pm)
    for future in pm.futures["add"]:
        future.set_result(None)
    pm.calls.clear()
    # Unchanged flags: nothing sent.
    plugin.update_interface(IF2, pm)
    assert pm.calls == []
    # backup can change in place.
    backup = Interface(index=2, name="c1", flags=0x41, addrs=(A1, A3),
                       addr_flags=AddrFlags.SUBFLOW | AddrFlags.BACKUP)
    plugin.update_interface(backup, pm)
    assert pm.calls == [("set_flags", (A1, int(AddrFlags.SUBFLOW | AddrFlags.BACKUP)))]
    # signal cannot: the endpoint is made again with its ID.
    pm.calls.clear()
    signal = Interface(index=3, name="c2", flags=0x41, addrs=(A2,),
                       addr_flags=AddrFlags.SIGNAL)
    plugin.update_interface(signal, pm)
    assert pm.calls == [("remove", (2,)), ("add", (A2, 2, int(AddrFlags.SIGNAL), 3))]
    # Back to the global flags.
    pm.calls.clear()
    plugin.update_interface(IF2, pm)
    assert pm.calls == [("set_flags", (A1, int(AddrFlags.SUBFLOW)))]


async def test_flags_the_full_queue_refused_to_change_in_place_go_out_and_in(
        plugin: Any) -> None:
    """A SET_FLAGS the daemon's full queue refused is not lost: the endpoint
    goes out and in again with its ID, through the ordered backlog."""
    pm = FakePM(AddrFlags.SUBFLOW)
    await started(plugin, pm)
    plugin.new_local_address(IF2, A1, pm)
    await answer(pm, "add")
    pm.calls.clear()
    backup = Interface(index=2, name="c1", flags=0x41, addrs=(A1, A3),
                       addr_flags=AddrFlags.SUBFLOW | AddrFlags.BACKUP)
    pm.full = True
    plugin.update_interface(backup, pm)
    assert pm.refused == [("set_flags", (A1, int(AddrFlags.SUBFLOW | AddrFlags.BACKUP))),
                          ("remove", (1,))]
    pm.full = False
    plugin._advertiser._send_backlog(pm)
    assert pm.calls == [("remove", (1,)),
                        ("add", (A1, 1, int(AddrFlags.SUBFLOW | AddrFlags.BACKUP), 2))]


async def test_a_withdrawn_endpoint_comes_back_with_the_new_flags(plugin: Any) -> None:
    pm = FakePM(AddrFlags.SUBFLOW)
    await started(plugin, pm)
    plugin.new_local_address(IF3, A2, pm)
    plugin.link_down(IF3, pm)
    pm.calls.clear()
    backup = Interface(index=3, name="c2", flags=0x41, addrs=(A2,),
                       addr_flags=AddrFlags.SUBFLOW | AddrFlags.BACKUP)
    plugin.update_interface(backup, pm)
    assert pm.commands("add", "remove", "set_flags") == []
    plugin.link_up(backup, pm)
    assert pm.commands("add") == [
        ("add", (A2, 1, int(AddrFlags.SUBFLOW | AddrFlags.BACKUP), 3))]


async def test_after_a_reload_endpoints_follow_the_global_flags(plugin: Any) -> None:
    pm = FakePM(AddrFlags.SUBFLOW)
    pm.network_monitor = types.SimpleNamespace(interfaces=lambda: [IF2, wwan])  # type: ignore[attr-defined]
    await started(plugin, pm)
    plugin.new_local_address(IF2, A1, pm)
    plugin.new_local_address(wwan, A2, pm)
    pm.calls.clear()
    pm.config = types.SimpleNamespace(addr_flags=AddrFlags.SUBFLOW | AddrFlags.FULLMESH)
    plugin.policy_changed(pm)
    # IF2 follows the global flags; wwan0 keeps its own.
    assert pm.calls == [("set_flags", (A1, int(AddrFlags.SUBFLOW | AddrFlags.FULLMESH)))]


wwan = Interface(index=4, name="wwan0", flags=0x41, addrs=(A2,),
                 addr_flags=AddrFlags.SUBFLOW | AddrFlags.BACKUP)


# -- the state file: a journal ------------------------------------------------------


def write_journal(plugin: Any, *lines: bytes) -> Path:
    path = plugin.state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(plugin.JOURNAL_HEADER + b"".join(lines))
    return path


def journal_lines(path: Path, plugin: Any) -> list[bytes]:
    data = path.read_bytes()
    assert data.startswith(plugin.JOURNAL_HEADER)
    return data[len(plugin.JOURNAL_HEADER):].splitlines()


async def test_the_journal_is_replayed_in_order(plugin: Any) -> None:
    write_journal(plugin, b"+ 192.0.2.1 1\n", b"+ 198.51.100.1 2\n", b"- 192.0.2.1\n",
                  b"+ 2001:db8:1::1 3\n", b"+ 198.51.100.1 4\n", b"- 203.0.113.9\n")
    pm = FakePM()
    for addr, id in ((A1, 1), (A2, 4), (A3, 3)):
        pm.id_manager.map_id(addr, id)
    await started(plugin, pm, [AddrInfo(A1, 1, 2), AddrInfo(A2, 4, 3), AddrInfo(A3, 3, 2)])
    assert plugin._advertiser.remembered == {A2: 4, A3: 3}
    plugin.new_local_address(IF2, A1, pm)
    plugin.new_local_address(IF3, A2, pm)
    plugin.new_local_address(IF2, A3, pm)
    assert pm.commands("add") == []
    plugin.delete_local_address(IF2, A1, pm)  # not ours (any more): stays
    plugin.delete_local_address(IF3, A2, pm)
    plugin.delete_local_address(IF2, A3, pm)
    assert pm.commands("remove") == [("remove", (4,)), ("remove", (3,))]


async def test_an_unfinished_last_line_is_ignored_with_a_warning(
        plugin: Any, caplog: pytest.LogCaptureFixture) -> None:
    """What a crash of the machine in the middle of a write may leave."""
    path = write_journal(plugin, b"+ 192.0.2.1 1\n", b"+ 198.51.10")
    pm = FakePM()
    await started(plugin, pm, [AddrInfo(A1, 1), AddrInfo(A2, 1)])
    assert plugin._advertiser.remembered == {A1: 1}
    assert f"Ignoring the unfinished last line of {path}" in caplog.text
    assert "corrupt" not in caplog.text
    # Rewritten whole at start-up: the cut line is gone.
    assert journal_lines(path, plugin) == [b"+ 192.0.2.1 1"]


async def test_a_cut_header_is_an_empty_journal(plugin: Any,
                                                caplog: pytest.LogCaptureFixture) -> None:
    path = plugin.state_file()
    path.parent.mkdir(parents=True)
    path.write_bytes(plugin.JOURNAL_HEADER[:9])
    await started(plugin, FakePM(), [AddrInfo(A1, 1)])
    assert plugin._advertiser.remembered == {}
    assert "corrupt" not in caplog.text
    assert path.read_bytes() == plugin.JOURNAL_HEADER


@pytest.mark.parametrize("garbage", [
    b"+ 192.0.2.1 0\n", b"+ 192.0.2.1 256\n", b"+ 192.0.2.1 01\n", b"+ 192.0.2.1 1000\n",
    b"+ 192.0.2.1 \xd9\xa1\n", b"+ 192.0.2.1\n", b"+ 192.0.2.1 1 1\n", b"+  192.0.2.1 1\n",
    b"+ 2001:DB8:1::1 1\n", b"+ 2001:db8:1:0::1 1\n", b"+ 192.0.2.256 1\n", b"- \n",
    b"* 192.0.2.1 1\n", b"\n", b"\xff\xfe\n", b"\x00\x00\x00\x00\n",
    b'{"endpoints": {"192.0.2.1": 1}}\n',
], ids=lambda b: repr(b))
async def test_garbage_in_the_journal_is_warned_about_and_nothing_taken_as_ours(
        plugin: Any, garbage: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path = write_journal(plugin, b"+ 198.51.100.1 2\n", garbage, b"+ 192.0.2.1 1\n")
    pm = FakePM()
    pm.id_manager.map_id(A2, 2)
    await started(plugin, pm, [AddrInfo(A2, 2)])
    assert f"Ignoring the corrupt {path} (line 3:" in caplog.text
    assert plugin._advertiser.remembered == {}
    plugin.new_local_address(IF3, A2, pm)
    plugin.new_local_address(IF2, A1, pm)  # and it goes on working
    assert [args[0] for _, args in pm.commands("add")] == [A1]
    plugin.delete_local_address(IF3, A2, pm)
    assert pm.commands("remove") == []  # never removed: not proven ours


@pytest.mark.parametrize("data", [b'{"endpoints": {"192.0.2.1": 1}}',
                                  b"mptcpd addr_adv endpoints journal 2\n+ 192.0.2.1 1\n"],
                         ids=["JSON", "another version"])
async def test_a_journal_without_its_header_is_corrupt(
        plugin: Any, data: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path = plugin.state_file()
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    await started(plugin, FakePM(), [AddrInfo(A1, 1)])
    assert f"Ignoring the corrupt {path} (no journal header)" in caplog.text
    assert plugin._advertiser.remembered == {}


async def test_the_journal_is_compacted_once_it_has_grown(
        plugin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compacted after a delay (not in the change that crossed the line),
    to the entries it describes."""
    monkeypatch.setattr(plugin, "JOURNAL_MAX_LINES", 10)
    monkeypatch.setattr(plugin, "COMPACT_DELAY", 0.01)
    pm = FakePM()
    await started(plugin, pm)
    path = plugin.state_file()
    plugin.new_local_address(IF2, A1, pm)
    for _ in range(6):
        plugin.new_local_address(IF3, A2, pm)
        await answer(pm, "add")
        plugin.delete_local_address(IF3, A2, pm)
        await answer(pm, "remove")
    assert len(journal_lines(path, plugin)) == 13  # 1 + 6 * 2: not yet
    await asyncio.sleep(0.1)
    assert journal_lines(path, plugin) == [b"+ 192.0.2.1 1"]
    # It goes on being appended to.
    plugin.new_local_address(IF3, A2, pm)
    assert journal_lines(path, plugin) == [b"+ 192.0.2.1 1", b"+ 198.51.100.1 2"]


async def test_the_journal_is_compacted_at_exit(plugin: Any) -> None:
    pm = FakePM()
    await started(plugin, pm)
    plugin.new_local_address(IF2, A1, pm)
    plugin.new_local_address(IF3, A2, pm)
    await answer(pm, "add")
    plugin.delete_local_address(IF2, A1, pm)
    await answer(pm, "remove")
    path = plugin.state_file()
    assert len(journal_lines(path, plugin)) == 3
    plugin.plugin_exit(pm)
    assert journal_lines(path, plugin) == [b"+ 198.51.100.1 2"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]


async def test_the_earlier_json_state_file_is_migrated(
        plugin: Any, caplog: pytest.LogCaptureFixture) -> None:
    """An upgrade keeps the endpoints the earlier version created as ours;
    the JSON file, newer than any journal left beside it (it is removed
    once migrated), wins, and is removed once the journal is written."""
    legacy = plugin.legacy_state_file()
    journal = write_journal(plugin, b"+ 192.0.2.1 1\n")
    legacy.write_text('{"endpoints": {"198.51.100.1": 2}}')
    pm = FakePM()
    pm.id_manager.map_id(A1, 1)
    pm.id_manager.map_id(A2, 2)
    await started(plugin, pm, [AddrInfo(A1, 1, 2), AddrInfo(A2, 2, 3)])
    assert plugin._advertiser.remembered == {A2: 2}
    assert not legacy.exists()
    assert journal_lines(journal, plugin) == [b"+ 198.51.100.1 2"]
    plugin.new_local_address(IF3, A2, pm)
    plugin.new_local_address(IF2, A1, pm)
    plugin.delete_local_address(IF2, A1, pm)
    plugin.delete_local_address(IF3, A2, pm)
    assert pm.commands("add") == [] and pm.commands("remove") == [("remove", (2,))]
    assert "WARNING" not in caplog.text


async def test_an_unwritable_state_directory_is_warned_about_once(
        plugin: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The plugin goes on without its memory; once the directory can be
    written again, the next change writes the whole state."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MPTCPD_STATE_DIR", str(blocker / "state"))
    pm = FakePM()
    await started(plugin, pm)
    plugin.new_local_address(IF2, A1, pm)
    plugin.new_local_address(IF3, A2, pm)
    assert [args[0] for _, args in pm.commands("add")] == [A1, A2]
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "remember" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"Unable to remember the endpoints in {plugin.state_file()}")
    blocker.unlink()
    plugin.new_local_address(IF2, A3, pm)
    assert journal_lines(plugin.state_file(), plugin) == [
        b"+ 192.0.2.1 1", b"+ 198.51.100.1 2", b"+ 2001:db8:1::1 3"]


async def test_a_failed_append_is_not_appended_after(
        plugin: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A write cut short (a full disk) leaves a cut line: the next write
    rewrites the file whole instead of appending after it."""
    pm = FakePM()
    await started(plugin, pm)
    plugin.new_local_address(IF2, A1, pm)
    real_write = os.write
    calls = []

    def write(fd: int, data: Any) -> int:
        calls.append(bytes(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[:5])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write)
    plugin.new_local_address(IF3, A2, pm)
    monkeypatch.setattr(os, "write", real_write)
    assert calls[0] == b"+ 198.51.100.1 2\n" and len(calls) == 3  # append, rest, rewrite
    assert "Unable to remember the endpoints" in caplog.text
    assert pm.commands("add")[-1] == ("add", (A2, 2, 0, 3))  # sent all the same
    plugin.new_local_address(IF2, A3, pm)
    assert journal_lines(plugin.state_file(), plugin) == [
        b"+ 192.0.2.1 1", b"+ 198.51.100.1 2", b"+ 2001:db8:1::1 3"]


# -- the state file follows each change (O(1)) ---------------------------------------


def says(plugin: Any) -> dict[SockAddr, int]:
    entries, torn = plugin.parse_journal(plugin.state_file().read_bytes())
    assert torn == b""
    return entries  # type: ignore[no-any-return]


async def test_an_address_that_comes_back_while_its_endpoint_goes(plugin: Any) -> None:
    """One address can have an endpoint on its way out of the kernel and a
    new one: the file gives the new one while it is ours, the old one again
    once the new one is refused (it may still be in the kernel), and keeps
    the address until both are gone; with the same ID too."""
    pm = FakePM()
    await started(plugin, pm)
    plugin.new_local_address(IF2, A1, pm)
    plugin.new_local_address(IF3, A2, pm)
    await answer(pm, "add")
    plugin.delete_local_address(IF3, A2, pm)  # endpoint 2 on its way out
    assert says(plugin) == {A1: 1, A2: 2}
    plugin.new_local_address(IF2, A3, pm)  # takes ID 2
    plugin.new_local_address(IF3, A2, pm)  # back, with ID 3
    assert pm.commands("add")[-2:] == [("add", (A3, 2, 0, 2)), ("add", (A2, 3, 0, 3))]
    assert says(plugin) == {A1: 1, A2: 3, A3: 2}
    pm.futures["add"][-1].set_exception(KernelError("add_addr", errno.EEXIST, None))
    await asyncio.sleep(0)
    assert says(plugin) == {A1: 1, A2: 2, A3: 2}  # endpoint 2 may still be there
    await answer(pm, "remove")
    assert says(plugin) == {A1: 1, A3: 2}
    # Same address, same ID: the old endpoint's removal answered last.
    await answer(pm, "add")
    plugin.delete_local_address(IF2, A3, pm)
    plugin.new_local_address(IF2, A3, pm)
    assert pm.commands("remove")[-1] == ("remove", (2,))
    assert pm.commands("add")[-1] == ("add", (A3, 2, 0, 2))
    assert says(plugin) == {A1: 1, A3: 2}
    await answer(pm, "remove")
    assert says(plugin) == {A1: 1, A3: 2}
    plugin.plugin_exit(pm)  # compacted: the same
    assert journal_lines(plugin.state_file(), plugin) == [b"+ 192.0.2.1 1",
                                                          b"+ 2001:db8:1::1 2"]


async def calls_made(run: Any) -> int:
    """How many Python and C functions ``await run()`` calls, the event
    loop's included (a count, deterministic, unlike a time).  The garbage
    collector is kept out: a collection would run the finalizers and weak
    reference callbacks of whatever earlier tests left (seen: 2 calls more)."""
    count = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    sys.setprofile(profile)
    try:
        await run()
    finally:
        sys.setprofile(None)
        if collecting:
            gc.enable()
    return count


async def test_a_change_costs_the_same_however_many_endpoints_are_retiring(
        plugin: Any) -> None:
    """A churn faster than the kernel's removals leaves hundreds of endpoints
    on their way out; each change of the state file is still one line
    written, with no walk over them (it was O(endpoints) per change, so
    the churn O(n²))."""
    pm = FakePM()
    await started(plugin, pm)
    path = plugin.state_file()

    async def go(i: int) -> None:  # an address comes and goes, its removal pending
        addr = SockAddr(ipaddress.ip_address(f"2001:db8:7::{i:x}"))
        plugin.new_local_address(IF2, addr, pm)
        pm.futures["add"][-1].set_result(None)
        await asyncio.sleep(0)
        plugin.delete_local_address(IF2, addr, pm)

    async def cycle(i: int) -> None:
        await go(i)
        pm.futures["remove"][-1].set_result(None)
        await asyncio.sleep(0)

    costs = []
    for retiring in (10, 300):
        while len(plugin._advertiser.retiring) < retiring:
            await go(len(pm.commands("add")) + 1)
        lines = len(journal_lines(path, plugin))
        costs.append(await calls_made(lambda: cycle(1000 + retiring)))
        assert len(journal_lines(path, plugin)) == lines + 2  # "+" and "-"
    assert len(says(plugin)) == 300
    assert costs[1] == costs[0]
    await answer(pm, "remove")
    assert says(plugin) == {}


async def a2_then_a_full_queue(plugin: Any, monkeypatch: pytest.MonkeyPatch,
                               retry_delay: float) -> FakePM:
    """A2's endpoint (ID 1) and the limits answered; then the daemon's queue
    refuses every command, and the backlog is retried after ``retry_delay``."""
    monkeypatch.setattr(plugin, "RETRY_DELAY", retry_delay)
    pm = FakePM()
    await started(plugin, pm)
    plugin.new_local_address(IF3, A2, pm)
    await answer(pm, "add")
    await answer(pm, "set_limits")
    pm.full = True
    return pm


async def test_a_refused_removal_holds_back_the_addition_that_reuses_its_id(
        plugin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the daemon's queue refuses a command, the later ones wait behind
    it and all leave in their order: the kernel removes endpoint 1 before it
    is asked for the new address that took ID 1 (the other way round it
    refuses the addition with EBUSY, the ID being in use)."""
    pm = await a2_then_a_full_queue(plugin, monkeypatch, retry_delay=0.01)
    plugin.delete_local_address(IF3, A2, pm)  # ID 1 free again at once, as in C
    assert pm.refused == [("set_limits", ([(1, 2), (0, 0)],))]
    pm.full = False  # room again, before the retry
    plugin.new_local_address(IF2, A1, pm)  # takes ID 1
    assert pm.commands("add") == [("add", (A2, 1, 0, 3))]  # waits its turn
    assert plugin._advertiser.backlog
    sent = len(pm.calls)
    await asyncio.sleep(0.05)
    assert pm.calls[sent:] == [("set_limits", ([(1, 3), (0, 0)],)), ("remove", (1,)),
                               ("add", (A1, 1, 0, 2))]
    assert not plugin._advertiser.backlog
    await answer(pm, "remove")
    await answer(pm, "add")
    assert says(plugin) == {A1: 1}


async def test_a_refused_backlog_is_sent_from_where_it_stopped(
        plugin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A queue still full at the retry refuses the head again: nothing after
    it leaves, and the next retry goes on from there; the limits go once,
    with their latest values."""
    monkeypatch.setattr(plugin, "RETRY_DELAY", 0.01)
    pm = FakePM()
    await started(plugin, pm)
    pm.full = True
    plugin.new_local_address(IF3, A2, pm)  # limits 3 refused, then ADD waits
    plugin.new_local_address(IF2, A1, pm)  # limits 4 (the same entry), ADD waits
    assert pm.refused == [("set_limits", ([(1, 3), (0, 0)],))]
    await asyncio.sleep(0.03)  # retried, refused again at the head
    retried = pm.refused[1:]
    assert retried and all(c == ("set_limits", ([(1, 4), (0, 0)],)) for c in retried)
    assert pm.commands() == [("set_limits", ([(1, 2), (0, 0)],)), ("dump", ())]
    pm.full = False
    await asyncio.sleep(0.03)
    assert pm.commands()[2:] == [("set_limits", ([(1, 4), (0, 0)],)),
                                 ("add", (A2, 1, 0, 3)), ("add", (A1, 2, 0, 2))]
    await answer(pm, "add")
    assert says(plugin) == {A2: 1, A1: 2}


async def test_limits_refused_by_a_full_queue_are_sent_again(
        plugin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last change of the limits may be the one refused: the kernel must
    not be left with the previous ones."""
    monkeypatch.setattr(plugin, "RETRY_DELAY", 0.01)
    pm = FakePM()
    await started(plugin, pm)
    plugin.new_local_address(IF3, A2, pm)
    await answer(pm, "add")
    pm.full = True
    plugin.link_down(IF3, pm)  # limits 2 and the withdrawal refused
    pm.full = False
    await asyncio.sleep(0.03)
    assert pm.commands()[-2:] == [("set_limits", ([(1, 2), (0, 0)],)), ("remove", (1,))]
    # Refused later, by a queue that failed it after taking it: again, the latest.
    pm.futures["set_limits"][-1].set_exception(QueueFull())
    await asyncio.sleep(0.03)
    assert pm.commands()[-1] == ("set_limits", ([(1, 2), (0, 0)],))


async def test_addresses_that_come_and_go_while_the_queue_is_full_leave_nothing(
        plugin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An address churn while the daemon's queue refuses commands: each
    addition still waiting in the backlog when its address goes is taken
    out, and no removal is made for it.  The backlog does not grow with the
    churn; once the queue takes commands again only the lasting address and
    the latest limits go out, and the churned addresses' IDs are free."""
    pm = await a2_then_a_full_queue(plugin, monkeypatch, retry_delay=3600)  # sent by hand
    plugin.new_local_address(IF2, A1, pm)  # lasts
    for i in range(200):
        addr = SockAddr(ipaddress.ip_address(f"203.0.113.{i % 250 + 1}"))
        plugin.new_local_address(IF2, addr, pm)
        plugin.delete_local_address(IF2, addr, pm)
        assert len(plugin._advertiser.backlog) <= 3
    assert pm.id_manager.lookup(SockAddr(ipaddress.ip_address("203.0.113.1"))) == 0
    pm.full = False
    sent = len(pm.calls)
    plugin._advertiser._send_backlog(pm)
    assert pm.calls[sent:] == [("set_limits", ([(1, 4), (0, 0)],)), ("add", (A1, 2, 0, 2))]
    assert not plugin._advertiser.backlog
    await answer(pm, "add")
    assert says(plugin) == {A2: 1, A1: 2}
    assert not plugin._advertiser.retiring


async def test_an_addition_whose_fate_is_unknown_is_removed_after_all(
        plugin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An addition that failed with NotReady may have reached the kernel:
    waiting in the backlog, it is not cancelled by the removal, which
    follows it."""
    monkeypatch.setattr(plugin, "RETRY_DELAY", 3600)
    pm = FakePM()
    await started(plugin, pm)
    await answer(pm, "set_limits")
    plugin.new_local_address(IF2, A1, pm)
    pm.futures["add"][-1].set_exception(NotReady("mptcpd_pm_add_addr"))
    await asyncio.sleep(0)
    assert plugin._advertiser.backlog
    plugin.delete_local_address(IF2, A1, pm)
    sent = len(pm.calls)
    plugin._advertiser._send_backlog(pm)
    assert [c[0] for c in pm.calls[sent:] if c[0] != "set_limits"] == ["add", "remove"]

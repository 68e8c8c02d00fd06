"""The bundled ``fullmesh`` plugin's logic, with mptcpd's test kit (the
plugin loaded as the daemon loads it; commands recorded, not sent)."""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mptcpd.plugin import Interface, SockAddr
from mptcpd.testing import READY, FakePathManager, PluginDriver

ROOT = Path(__file__).resolve().parents[2]
T1, T2 = 0x11111111, 0x22222222
PORT = 5201

C1 = Interface(2, "c1", READY, addrs=(SockAddr("fe80::1"), SockAddr("192.0.2.1")))
C2 = Interface(3, "c2", READY, addrs=(SockAddr("198.51.100.1"), SockAddr("198.51.100.11")))
C2ONE = Interface(3, "c2", READY, addrs=(SockAddr("198.51.100.1"),))
C3 = Interface(4, "c3", READY, addrs=(SockAddr("2001:db8:3::1"),))  # IPv6 only
DOWN = Interface(5, "c4", READY & ~READY, addrs=(SockAddr("203.0.113.1"),))
INITIAL = SockAddr("192.0.2.1", 40000)
SERVER = SockAddr("192.0.2.2", PORT)
SERVER2 = SockAddr("203.0.113.2", PORT)


def load(tmp_path: Path, pm: FakePathManager, name: str = "fullmesh") -> PluginDriver:
    directory = tmp_path / "plugins"
    directory.mkdir(mode=0o755, exist_ok=True)
    directory.chmod(0o755)
    shutil.copyfile(ROOT / "plugins" / f"{name}.py", directory / f"{name}.py")
    (directory / f"{name}.py").chmod(0o644)
    return PluginDriver.load(directory / f"{name}.py", pm)


def subflows(pm: FakePathManager) -> list[tuple[str, str]]:
    """The add_subflow commands sent since the last call, as (laddr IP, raddr)."""
    return [(str(c[4].ip), str(c[5])) for c in pm.take("add_subflow")]


def established(fm: PluginDriver, token: int = T1, **kw: bool) -> None:
    fm.new_connection(token, INITIAL, SERVER, **kw)
    fm.connection_established(token, INITIAL, SERVER, **kw)


@pytest.fixture
def pm() -> FakePathManager:
    return FakePathManager(interfaces=[C1, C2, C3, DOWN])


def test_every_local_address_joins_every_peer_address(tmp_path: Path,
                                                      pm: FakePathManager) -> None:
    fm = load(tmp_path, pm)
    established(fm)
    # The initial address pair has its subflow; every other IPv4 address
    # (each address of c2, not only its first) joins the initial address.
    assert subflows(pm) == [("198.51.100.1", "192.0.2.2:5201"),
                            ("198.51.100.11", "192.0.2.2:5201")]
    # An announcement arrives: every local address joins it too (at the
    # connection's port, as the peer gave none).
    fm.new_address(T1, 7, SockAddr("203.0.113.2"))
    cmds = pm.take("add_subflow")
    assert [(str(c[4].ip), str(c[5]), c[2], c[3]) for c in cmds] == [
        ("192.0.2.1", "203.0.113.2:5201", pm.id_manager.lookup(SockAddr("192.0.2.1")), 7),
        ("198.51.100.1", "203.0.113.2:5201", pm.id_manager.lookup(SockAddr("198.51.100.1")), 7),
        ("198.51.100.11", "203.0.113.2:5201",
         pm.id_manager.lookup(SockAddr("198.51.100.11")), 7),
    ]
    assert all(c[2] != 0 for c in cmds)
    # The same announcement again adds nothing.
    fm.new_address(T1, 7, SockAddr("203.0.113.2"))
    assert subflows(pm) == []


def test_nothing_before_establishment_and_nothing_on_the_server(
        tmp_path: Path, pm: FakePathManager) -> None:
    fm = load(tmp_path, pm)
    fm.new_connection(T1, INITIAL, SERVER)
    fm.new_address(T1, 3, SERVER2)
    assert pm.take() == []
    fm.connection_established(T1, INITIAL, SERVER)
    assert len(subflows(pm)) == 5  # 3 locals x 2 targets - the initial pair
    established(fm, T2, server_side=True)
    assert pm.take("add_subflow") == []


def test_deny_join_id0_keeps_joins_off_the_initial_address(
        tmp_path: Path, pm: FakePathManager) -> None:
    fm = load(tmp_path, pm)
    established(fm, deny_join_id0=True)
    assert pm.take() == []
    fm.new_address(T1, 4, SERVER2)
    assert subflows(pm) == [(ip, str(SERVER2)) for ip in
                            ("192.0.2.1", "198.51.100.1", "198.51.100.11")]


def test_max_subflows_counts_the_initial_one(tmp_path: Path) -> None:
    pm = FakePathManager(interfaces=[C1, C2], settings={"fullmesh": {"max-subflows": "2"}})
    fm = load(tmp_path, pm)
    established(fm)
    assert subflows(pm) == [("198.51.100.1", "192.0.2.2:5201")]
    fm.new_address(T1, 4, SERVER2)
    assert subflows(pm) == []


class Clock:
    """An event loop whose time only moves when told (timers fire on :meth:`advance`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.now = 1000.0
        self.loop = loop if loop is not None else asyncio.new_event_loop()
        self.loop.time = lambda: self.now  # type: ignore[method-assign]

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for _ in range(3):  # the due timers, then what they scheduled at once
            self.loop.run_until_complete(asyncio.sleep(0))

    def timers(self) -> list[float]:
        """Delays of the pending timers, from now."""
        scheduled: list[Any] = getattr(self.loop, "_scheduled")
        return sorted(round(h.when() - self.now, 6) for h in scheduled if not h.cancelled())


@pytest.fixture
def clock() -> Iterator[Clock]:
    clock = Clock()
    yield clock
    clock.loop.close()


def retrying_pm(clock: Clock, **settings: str) -> FakePathManager:
    values = {"retry-base": "100ms", "retry-cap": "1s", "retry-attempts": "4", **settings}
    return FakePathManager(interfaces=[C1, C2ONE], loop=clock.loop,
                           settings={"fullmesh": values})


def test_a_refused_subflow_is_retried_with_exponential_backoff_then_given_up(
        tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mptcpd.plugins.fullmesh")
    pm = retrying_pm(clock)
    fm = load(tmp_path, pm)
    established(fm)
    delays = []
    for _attempt in range(5):  # the first try and 4 retries
        (cmd,) = pm.commands
        assert cmd.name == "add_subflow" and str(cmd.args[3].ip) == "198.51.100.1"
        pm.take()
        cmd.refuse(errno.EINVAL)
        pm.settle()
        delays.append(clock.timers())
        assert pm.commands == []  # nothing before the backoff ran out
        clock.advance(delays[-1][0] if delays[-1] else 10)
    # 100ms, doubled each time, capped at 1 s; one timer at a time.
    assert delays == [[0.1], [0.2], [0.4], [0.8], []]
    assert pm.take() == []  # given up after 4 retries
    assert any("giving up on the subflow from 198.51.100.1 to 192.0.2.2:5201 after 5 "
               "attempts" in r.getMessage() for r in caplog.records)
    # The carrier coming back starts afresh, at once.
    fm.link_up(C2ONE)
    assert subflows(pm) == [("198.51.100.1", "192.0.2.2:5201")]


def test_a_subflow_the_full_queue_refused_is_asked_again_and_never_given_up(
        tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's full command queue refused the creation: the kernel never
    saw it, so it is asked for again after the backoff (times 1 to 1.5 at
    random; 1.5 here) however often that happens, and it counts as no
    attempt: the kernel's refusals after it start from the first."""
    caplog.set_level(logging.INFO, logger="mptcpd.plugins.fullmesh")
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    pm = retrying_pm(clock, **{"retry-attempts": "1"})
    fm = load(tmp_path, pm)
    pm.queue_full = True
    established(fm)
    delays = []
    for _attempt in range(6):
        (cmd,) = pm.refused
        assert cmd.name == "add_subflow" and str(cmd.args[3].ip) == "198.51.100.1"
        assert pm.commands == []
        pm.refused.clear()
        pm.settle()
        delays.append(clock.timers())
        if _attempt == 5:
            pm.queue_full = False
        clock.advance(delays[-1][0])
    assert delays == [[0.15], [0.3], [0.6], [1.2], [1.5], [1.5]]
    assert not any("giving up" in r.getMessage() for r in caplog.records)
    # The kernel refuses it twice: a first failure (100 ms), then given up.
    for expected in ([0.1], []):
        (cmd,) = pm.commands
        pm.take()
        cmd.refuse(errno.EINVAL)
        pm.settle()
        assert clock.timers() == expected
        clock.advance(0.1)
    assert any("giving up on the subflow from 198.51.100.1 to 192.0.2.2:5201 after 2 "
               "attempts" in r.getMessage() for r in caplog.records)


def test_a_join_that_fails_or_closes_is_retried_and_only_while_wanted(
        tmp_path: Path, clock: Clock) -> None:
    pm = retrying_pm(clock)
    fm = load(tmp_path, pm)
    established(fm)
    fm.new_address(T1, 5, SERVER2)
    pm.answer_all()
    assert len(subflows(pm)) == 3
    # A join to the initial address fails to establish (SUB_CLOSED before
    # SUB_ESTABLISHED, local port known), another one closes after running.
    fm.subflow_closed(T1, SockAddr("198.51.100.1", 41000), SERVER)
    fm.new_subflow(T1, SockAddr("192.0.2.1", 41001), SERVER2)
    fm.subflow_closed(T1, SockAddr("192.0.2.1", 41001), SERVER2)
    assert pm.take() == [] and clock.timers() == [0.1]  # one timer for both
    clock.advance(0.1)
    assert sorted(subflows(pm)) == [("192.0.2.1", "203.0.113.2:5201"),
                                    ("198.51.100.1", "192.0.2.2:5201")]
    # The peer withdraws its address while a retry waits: no retry to it.
    pm.answer_all()
    fm.subflow_closed(T1, SockAddr("192.0.2.1", 41002), SERVER2)
    fm.address_removed(T1, 5)
    clock.advance(5)
    assert subflows(pm) == []
    # The connection closes while a retry waits: the timer goes with it.
    fm.subflow_closed(T1, SockAddr("198.51.100.1", 41003), SERVER)
    assert clock.timers() == [0.2]
    fm.connection_closed(T1)
    assert clock.timers() == []


def test_a_subflow_that_lived_long_starts_its_backoff_afresh(
        tmp_path: Path, clock: Clock) -> None:
    pm = retrying_pm(clock)
    fm = load(tmp_path, pm)
    established(fm)
    pm.answer_all()
    pm.take()
    closed = SockAddr("198.51.100.1", 41000)
    # Established for 2 s (longer than retry-cap), then lost: the first failure.
    fm.new_subflow(T1, closed, SERVER)
    clock.advance(2.0)
    fm.subflow_closed(T1, closed, SERVER)
    assert clock.timers() == [0.1]
    clock.advance(0.1)
    assert len(subflows(pm)) == 1
    pm.answer_all()
    # Lost again at once: the second failure in a row.
    fm.new_subflow(T1, closed, SERVER)
    fm.subflow_closed(T1, closed, SERVER)
    assert clock.timers() == [0.2]
    clock.advance(0.2)
    assert len(subflows(pm)) == 1
    pm.answer_all()
    # Lived long again: afresh.
    fm.new_subflow(T1, closed, SERVER)
    clock.advance(1.0)
    fm.subflow_closed(T1, closed, SERVER)
    assert clock.timers() == [0.1]


def test_carrier_loss_closes_its_joins_and_recovery_reopens_them(
        tmp_path: Path, pm: FakePathManager, caplog: pytest.LogCaptureFixture) -> None:
    fm = load(tmp_path, pm)
    established(fm)
    pm.answer_all()
    pm.take()
    fm.new_subflow(T1, SockAddr("198.51.100.1", 41000), SERVER)
    fm.new_subflow(T1, SockAddr("198.51.100.11", 41001), SERVER)
    down = Interface(C2.index, "c2", READY & ~READY, addrs=C2.addrs)
    fm.link_down(down)
    assert pm.take() == [
        ("remove_subflow", T1, SockAddr("198.51.100.1", 41000), SERVER),
        ("remove_subflow", T1, SockAddr("198.51.100.11", 41001), SERVER),
    ]
    fm.subflow_closed(T1, SockAddr("198.51.100.1", 41000), SERVER)
    fm.subflow_closed(T1, SockAddr("198.51.100.11", 41001), SERVER)
    assert pm.take() == []  # expected closings: nothing reopened while down
    fm.link_up(C2)
    assert subflows(pm) == [("198.51.100.1", "192.0.2.2:5201"),
                            ("198.51.100.11", "192.0.2.2:5201")]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_server_side_announces_its_other_addresses_one_at_a_time(
        tmp_path: Path, pm: FakePathManager) -> None:
    fm = load(tmp_path, pm)
    established(fm, server_side=True)
    (first,) = pm.take()
    assert first[:2] == ("add_addr_no_listener", SockAddr("198.51.100.1"))


def test_an_announcement_the_full_queue_refused_is_made_again(
        tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's announcement that the daemon's full command queue refused
    is made again after the backoff (nothing was announced)."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    pm = retrying_pm(clock)
    fm = load(tmp_path, pm)
    pm.queue_full = True
    established(fm, server_side=True)
    (cmd,) = pm.refused
    assert cmd.name == "add_addr_no_listener" and cmd.args[0] == SockAddr("198.51.100.1")
    pm.settle()
    assert clock.timers() == [0.15]
    pm.queue_full = False
    clock.advance(0.15)
    (again,) = pm.commands
    assert again.name == "add_addr_no_listener" and again.args == cmd.args


def test_bad_settings_are_errors_naming_the_key_and_unknown_keys_warned(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pm = FakePathManager(interfaces=[C1, C2], settings={
        "fullmesh": {"max-subflows": "0", "max-subflow": "3", "retry-base": "soon"}})
    fm = load(tmp_path, pm)
    messages = [(r.levelname, r.getMessage()) for r in caplog.records
                if r.name == "mptcpd.plugins.fullmesh"]
    assert ("WARNING", 'Unknown key "max-subflow" at line 0 of "<test>" in '
            "[plugin fullmesh] ignored.") in messages
    assert ("ERROR", '"<test>", line 0: [plugin fullmesh] max-subflows=0: expected a '
            "whole number from 1 to 256; using 8.") in messages
    assert ("ERROR", '"<test>", line 0: [plugin fullmesh] retry-base=soon: expected a '
            'duration from 0.001 s to 3600 s (a number of seconds, or with a unit: "250ms", '
            '"1.5s", "2m", "1h"); using 1.0.') in messages
    established(fm)
    assert len(subflows(pm)) == 2


def test_a_join_completed_after_its_address_flapped_is_kept_once_per_path(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The address of a pending join goes and comes back: the keeper gives
    the join up and asks for a new one, but the kernel may complete the
    first all the same (its SYN retransmitted once the address is back).
    Whichever comes first fills the path's slot; the other is closed, one
    too many.  Seen under a flood, whose lost events hid the first one's
    fate: up to seven subflows on one path."""
    fm, pm = join_given_up(tmp_path, caplog)
    fm.new_local_address(C2ONE, SockAddr("198.51.100.1"))
    assert subflows(pm) == [("198.51.100.1", "192.0.2.2:5201")]
    pm.settle()
    old, new = SockAddr("198.51.100.1", 41001), SockAddr("198.51.100.1", 41002)
    fm.new_subflow(T1, old, SERVER, backup=False)  # takes the new one's slot
    assert pm.take() == []
    fm.new_subflow(T1, new, SERVER, backup=False)
    assert pm.take() == [("remove_subflow", T1, new, SERVER)]
    assert any(f"closing the subflow {new} -> {SERVER}, one too many" in r.getMessage()
               for r in caplog.records)
    # Its close is no loss: nothing is re-created.
    fm.subflow_closed(T1, new, SERVER)
    pm.settle()
    assert pm.take() == []


def join_given_up(tmp_path: Path,
                  caplog: pytest.LogCaptureFixture) -> tuple[PluginDriver, FakePathManager]:
    """fullmesh with a connection whose join from 198.51.100.1 was given up
    while pending: its address went (a pending join is not closed)."""
    caplog.set_level(logging.INFO, logger="mptcpd.plugins.fullmesh")
    pm = FakePathManager(interfaces=[C1, C2ONE])
    fm = load(tmp_path, pm)
    established(fm)
    assert subflows(pm) == [("198.51.100.1", "192.0.2.2:5201")]
    pm.settle()
    fm.delete_local_address(C2ONE, SockAddr("198.51.100.1"))
    assert pm.take() == []
    return fm, pm


def test_a_join_given_up_and_reported_while_its_address_is_gone_is_closed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A join given up while pending (its address went) that a resync
    after lost events reports established while the address is still gone:
    its path is not wanted, so it is closed, and a new join is opened when
    the address is back.  Left open, it was untracked and held its path
    for good (seen under a flood: two joins on each path of every
    connection)."""
    fm, pm = join_given_up(tmp_path, caplog)
    late = SockAddr("198.51.100.1", 41001)
    fm.new_subflow(T1, late, SERVER, backup=False)
    assert pm.take() == [("remove_subflow", T1, late, SERVER)]
    assert any(f"closing the subflow {late} -> {SERVER}, given up while pending, on a path "
               "not wanted now" in r.getMessage() for r in caplog.records)
    fm.subflow_closed(T1, late, SERVER)
    fm.new_local_address(C2ONE, SockAddr("198.51.100.1"))
    assert subflows(pm) == [("198.51.100.1", "192.0.2.2:5201")]


def test_a_join_refused_while_its_address_was_gone_is_opened_at_once_when_it_is_back(
        tmp_path: Path, clock: Clock) -> None:
    """The address went while the join's creation was on its way: the
    kernel refuses it (EADDRNOTAVAIL) before the keeper hears that the
    address went, which counts as a failure of the slot.  When the address
    comes back, its slots start afresh and the join is opened at once, not
    after the backoff (under an address flapping during a flood, that
    backoff kept connections short for up to a second after the flood)."""
    pm = retrying_pm(clock, **{"retry-base": "1s"})
    fm = load(tmp_path, pm)
    established(fm)
    (cmd,) = pm.commands
    pm.take()
    cmd.refuse(errno.EADDRNOTAVAIL)
    pm.settle()
    assert clock.timers() == [1.0]
    fm.delete_local_address(C2ONE, SockAddr("198.51.100.1"))
    fm.new_local_address(C2ONE, SockAddr("198.51.100.1"))
    assert subflows(pm) == [("198.51.100.1", "192.0.2.2:5201")]

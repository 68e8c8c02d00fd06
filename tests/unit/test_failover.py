"""The bundled ``failover`` plugin's logic, with mptcpd's test kit."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from mptcpd.plugin import AddrFlags, Interface, SockAddr
from mptcpd.testing import READY, FakePathManager, PluginDriver
from tests.unit.test_fullmesh import C1, INITIAL, SERVER, T1, Clock, established, load

C2 = Interface(3, "wwan0", READY, addrs=(SockAddr("198.51.100.1"),))
C3 = Interface(4, "eth3", READY, addrs=(SockAddr("203.0.113.1"),))
JOIN2 = SockAddr("198.51.100.1", 41002)
JOIN3 = SockAddr("203.0.113.1", 41003)


def not_running(interface: Interface) -> Interface:
    return Interface(interface.index, interface.name, READY & ~READY, addrs=interface.addrs)


def setup(tmp_path: Path, *interfaces: Interface) -> tuple[PluginDriver, FakePathManager]:
    pm = FakePathManager(interfaces=[C1, *interfaces],
                         settings={"failover": {"backup-interfaces": "wwan*, ppp?"}})
    fo = load(tmp_path, pm, "failover")
    established(fo)
    return fo, pm


def test_backup_interfaces_get_backup_subflows(tmp_path: Path) -> None:
    fo, pm = setup(tmp_path, C2, C3)
    assert [(c[4], c[5], c[6]) for c in pm.take("add_subflow")] == [
        (SockAddr("198.51.100.1"), SERVER, True), (SockAddr("203.0.113.1"), SERVER, False)]
    pm.answer_all()
    # The kernel reports the peer's flag, not the one the join asked for:
    # failover marks it backup at once all the same (MP_PRIO).
    fo.new_subflow(T1, JOIN2, SERVER, backup=False)
    fo.new_subflow(T1, JOIN3, SERVER, backup=False)
    assert pm.take() == [("set_backup", T1, JOIN2, SERVER, True)]


def test_losing_the_last_primary_promotes_a_backup_and_its_return_demotes_it(
        tmp_path: Path) -> None:
    fo, pm = setup(tmp_path, C2)
    pm.answer_all()
    pm.take()
    fo.new_subflow(T1, JOIN2, SERVER, backup=False)
    assert pm.take() == [("set_backup", T1, JOIN2, SERVER, True)]
    fo.link_down(not_running(C1))
    assert pm.take() == [("set_backup", T1, INITIAL, SERVER, True),
                         ("set_backup", T1, JOIN2, SERVER, False)]
    fo.link_up(C1)
    assert pm.take() == [("set_backup", T1, JOIN2, SERVER, True),
                         ("set_backup", T1, INITIAL, SERVER, False)]


def test_no_promotion_while_another_primary_works(tmp_path: Path) -> None:
    fo, pm = setup(tmp_path, C2, C3)
    pm.answer_all()
    pm.take()
    fo.new_subflow(T1, JOIN2, SERVER, backup=False)
    fo.new_subflow(T1, JOIN3, SERVER)
    assert pm.take() == [("set_backup", T1, JOIN2, SERVER, True)]
    fo.link_down(not_running(C1))
    assert pm.take() == []
    # The last primary closes (its interface still up: it is retried later),
    # and the backup is promoted.
    fo.subflow_closed(T1, JOIN3, SERVER)
    assert pm.take("set_backup") == [("set_backup", T1, INITIAL, SERVER, True),
                                     ("set_backup", T1, JOIN2, SERVER, False)]
    # A primary joins again: the backup is demoted.
    fo.new_subflow(T1, SockAddr("203.0.113.1", 41004), SERVER)
    assert pm.take("set_backup") == [("set_backup", T1, JOIN2, SERVER, True)]


def test_the_peers_backup_requests_are_not_taken_for_its_own(tmp_path: Path) -> None:
    """The kernel's events carry the peer's flag (its MP_JOIN's B bit, its
    MP_PRIO), not this side's priority: a peer that asks for backup changes
    nothing failover decides."""
    fo, pm = setup(tmp_path, C2)
    pm.answer_all()
    pm.take()
    # The peer answered the backup join with the B bit: failover still
    # marks it, as its own priority is not in the event.
    fo.new_subflow(T1, JOIN2, SERVER, backup=True)
    assert pm.take() == [("set_backup", T1, JOIN2, SERVER, True)]
    # The peer asks for the primary subflow to be a backup (MP_PRIO): not a
    # reason to "restore" it, nor to promote the backup.
    fo.subflow_priority(T1, INITIAL, SERVER, backup=True)
    fo.new_subflow(T1, SockAddr("192.0.2.1", 41009), SERVER, backup=True)
    assert pm.take("set_backup") == []
    # And the failover itself still works from its own priorities.
    fo.link_down(not_running(C1))
    assert pm.take("set_backup") == [("set_backup", T1, INITIAL, SERVER, True),
                                     ("set_backup", T1, JOIN2, SERVER, False)]


def test_an_interface_whose_own_flags_say_backup_is_a_backup_interface(
        tmp_path: Path) -> None:
    cell = Interface(5, "cell0", READY, addrs=(SockAddr("203.0.113.9"),),
                     addr_flags=AddrFlags.SUBFLOW | AddrFlags.BACKUP)
    fo, pm = setup(tmp_path, cell)
    pm.answer_all()
    pm.take()
    fo.new_subflow(T1, SockAddr("203.0.113.9", 41005), SERVER, backup=False)
    assert pm.take() == [("set_backup", T1, SockAddr("203.0.113.9", 41005), SERVER, True)]
    fo.link_down(not_running(C1))
    assert pm.take() == [("set_backup", T1, INITIAL, SERVER, True),
                         ("set_backup", T1, SockAddr("203.0.113.9", 41005), SERVER, False)]


def test_a_priority_change_the_full_queue_refused_is_sent_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MP_PRIO that the daemon's full command queue refused is sent again
    after the backoff (times 1.5 here), while the priority stands."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    clock = Clock()
    try:
        pm = FakePathManager(interfaces=[C1, C2], loop=clock.loop,
                             settings={"failover": {"backup-interfaces": "wwan*"}})
        fo = load(tmp_path, pm, "failover")
        established(fo)
        pm.answer_all()
        pm.take()
        pm.queue_full = True
        fo.new_subflow(T1, JOIN2, SERVER, backup=False)
        (cmd,) = pm.refused
        assert (cmd.name, *cmd.args) == ("set_backup", T1, JOIN2, SERVER, True)
        assert clock.timers() == [1.5]
        clock.advance(1.5)  # refused again: the backoff doubles
        assert len(pm.refused) == 2 and clock.timers() == [3.0]
        pm.queue_full = False
        clock.advance(3.0)
        assert pm.take() == [("set_backup", T1, JOIN2, SERVER, True)]
        assert clock.timers() == []
        # A priority changed again meanwhile: the refused one is not sent.
        pm.queue_full = True
        fo.link_down(not_running(C1))  # JOIN2 promoted: set_backup False refused
        assert [c.args[-1] for c in pm.refused[2:]] == [True, False]
        pm.queue_full = False
        fo.link_up(C1)  # demoted again at once
        assert pm.take() == [("set_backup", T1, JOIN2, SERVER, True),
                             ("set_backup", T1, INITIAL, SERVER, False)]
        clock.advance(10)
        assert pm.take() == []
    finally:
        clock.loop.close()


def test_a_backup_join_given_up_at_a_carrier_loss_and_reported_meanwhile_is_closed(
        tmp_path: Path) -> None:
    """The backup interface loses its carrier while its join is pending: the
    join is given up.  A resync after lost events reports it established
    while the carrier is still gone: it is closed (not kept, untracked, as a
    second backup join once a new one is opened at the carrier's return)."""
    fo, pm = setup(tmp_path, C2)
    assert [(c[4], c[6]) for c in pm.take("add_subflow")] == [(SockAddr("198.51.100.1"), True)]
    pm.answer_all()
    fo.link_down(not_running(C2))
    assert pm.take() == []  # pending: nothing to close yet
    fo.new_subflow(T1, JOIN2, SERVER, backup=True)
    assert pm.take() == [("remove_subflow", T1, JOIN2, SERVER)]
    fo.subflow_closed(T1, JOIN2, SERVER)
    fo.link_up(C2)
    assert [(c[4], c[6]) for c in pm.take("add_subflow")] == [(SockAddr("198.51.100.1"), True)]
    assert pm.take() == []

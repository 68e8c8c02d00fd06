"""The bundled ``ndiffports`` plugin's logic, with mptcpd's test kit."""

from __future__ import annotations

import errno
import logging

import pytest
from pathlib import Path

from mptcpd.plugin import Interface, SockAddr
from mptcpd.testing import READY, FakePathManager
from tests.unit.test_fullmesh import (
    C1,
    C2,
    INITIAL,
    SERVER,
    SERVER2,
    T1,
    Clock,
    clock,  # noqa: F401 (a fixture)
    established,
    load,
)


def sent(pm: FakePathManager) -> list[tuple[object, ...]]:
    return [c[1:] for c in pm.take("add_subflow")]


def test_subflows_n_opens_n_minus_one_joins_on_the_initial_pair(tmp_path: Path) -> None:
    pm = FakePathManager(interfaces=[C1, C2], settings={"ndiffports": {"subflows": "4"}})
    nd = load(tmp_path, pm, "ndiffports")
    nd.new_connection(T1, INITIAL, SERVER)
    assert pm.take() == []
    nd.connection_established(T1, INITIAL, SERVER)
    local_id = pm.id_manager.lookup(SockAddr("192.0.2.1"))
    assert local_id != 0
    assert sent(pm) == [(T1, local_id, 0, SockAddr("192.0.2.1"), SERVER, False)] * 3
    pm.answer_all()
    # The kernel reports them with their source ports; an announcement
    # changes nothing; the server side does nothing.
    for port in (41001, 41002, 41003):
        nd.new_subflow(T1, SockAddr("192.0.2.1", port), SERVER)
    nd.new_address(T1, 3, SERVER2)
    nd.new_connection(0x99, SERVER, INITIAL, server_side=True)
    nd.connection_established(0x99, SERVER, INITIAL, server_side=True)
    assert pm.take() == []
    # One closes unasked: it is opened again (after the backoff; here, the
    # default policy's timer is on the kit's loop, not run).
    nd.subflow_closed(T1, SockAddr("192.0.2.1", 41002), SERVER)
    assert pm.take() == []


def test_deny_join_id0_uses_the_first_announced_address(tmp_path: Path) -> None:
    pm = FakePathManager(interfaces=[C1, C2], settings={"ndiffports": {"subflows": "3"}})
    nd = load(tmp_path, pm, "ndiffports")
    established(nd, deny_join_id0=True)
    assert pm.take() == []
    nd.new_address(T1, 5, SERVER2)
    assert [(c[3], c[4], c[2]) for c in sent(pm)] == [
        (SockAddr("192.0.2.1"), SERVER2, 5)] * 2


def test_a_lost_subflow_is_retried_and_the_carrier_closes_and_restores_them(
        tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    pm = FakePathManager(interfaces=[C1, C2], loop=clock.loop, settings={
        "ndiffports": {"subflows": "3", "retry-base": "0.5", "retry-attempts": "1"}})
    nd = load(tmp_path, pm, "ndiffports")
    established(nd)
    first, second = pm.commands
    pm.take()
    first.refuse(errno.ENOSPC)
    second.answer(None)
    pm.settle()
    assert clock.timers() == [0.5]
    clock.advance(0.5)
    assert len(sent(pm)) == 1
    pm.answer_all()
    nd.new_subflow(T1, SockAddr("192.0.2.1", 41001), SERVER)
    nd.new_subflow(T1, SockAddr("192.0.2.1", 41002), SERVER)
    down = Interface(C1.index, "c1", READY & ~READY, addrs=C1.addrs)
    nd.link_down(down)
    assert sorted(c[2].port for c in pm.take("remove_subflow")) == [41001, 41002]
    nd.subflow_closed(T1, SockAddr("192.0.2.1", 41001), SERVER)
    nd.subflow_closed(T1, SockAddr("192.0.2.1", 41002), SERVER)
    assert pm.take() == []
    nd.link_up(C1)
    assert len(sent(pm)) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]



def test_joins_given_up_with_their_address_fill_free_slots_and_no_more(
        tmp_path: Path, clock: Clock) -> None:  # noqa: F811 (the fixture)
    """The address of two pending joins goes and comes back: the keeper gives
    them up and asks for two new ones, one of which the kernel refuses; the
    kernel completes the two given up all the same.  They take the slots
    (so the refused one's retry is not made), and the new one that
    completes too is one too many: closed."""
    pm = FakePathManager(interfaces=[C1, C2], loop=clock.loop,
                         settings={"ndiffports": {"subflows": "3", "retry-base": "100ms"}})
    nd = load(tmp_path, pm, "ndiffports")
    established(nd)
    pm.answer_all()
    pm.take()
    local = SockAddr("192.0.2.1")
    nd.delete_local_address(C1, local)
    assert pm.take() == []  # pending: given up, not closed
    nd.new_local_address(C1, local)
    first, second = pm.commands
    pm.take()
    first.answer()
    second.refuse(errno.ETIMEDOUT)
    pm.settle()
    assert clock.timers() == [0.1]  # the refused one's retry
    for port in (41001, 41002):  # the two given up, completed after all
        nd.new_subflow(T1, SockAddr("192.0.2.1", port), SERVER)
    clock.advance(0.1)
    assert pm.take() == []  # both slots are filled: no retry
    nd.new_subflow(T1, SockAddr("192.0.2.1", 41003), SERVER)  # the first new one
    assert pm.take() == [("remove_subflow", T1, SockAddr("192.0.2.1", 41003), SERVER)]
    # A join on that path that the keeper never asked for is left alone.
    nd.new_subflow(T1, SockAddr("192.0.2.1", 41004), SERVER)
    assert pm.take() == []

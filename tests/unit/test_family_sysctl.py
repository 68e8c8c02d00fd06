"""FamilyWatcher state changes from nlctrl notifications, and the sysctl checks.

No sockets: notifications are built with pyroute2's ``ctrlmsg`` and fed to
:meth:`FamilyWatcher.handle_ctrl_message`; sysctls are files in a temporary
directory.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink import (
    CTRL_CMD_DELFAMILY,
    CTRL_CMD_NEWFAMILY,
    CTRL_CMD_NEWMCAST_GRP,
    GENL_ID_CTRL,
    ctrlmsg,
)

from mptcpd.netlink.family import FamilyWatcher
from mptcpd.netlink.sysctl import check_kernel, kernel_path_manager

LOGGER = "mptcpd.netlink.family"


def notification(cmd: int, name: str, family_id: int = 0x1C) -> bytes:
    """An nlctrl notification datagram, encoded by pyroute2's ``ctrlmsg``."""
    msg = ctrlmsg()
    msg["cmd"] = cmd
    msg["version"] = 2
    msg["attrs"] = [["CTRL_ATTR_FAMILY_NAME", name], ["CTRL_ATTR_FAMILY_ID", family_id]]
    msg["header"]["type"] = GENL_ID_CTRL
    msg.encode()
    return bytes(msg.data)


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


async def test_appear_vanish_reappear_fire_once_each(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    events: list[Any] = []
    w = FamilyWatcher(events.append, lambda: events.append("vanished"), timeout=30)
    w.handle_ctrl_message(notification(CTRL_CMD_NEWFAMILY, "mptcp_pm", 0x1C))
    w.handle_ctrl_message(notification(CTRL_CMD_NEWFAMILY, "mptcp_pm", 0x1C))  # reply + notify
    w.handle_ctrl_message(notification(CTRL_CMD_NEWFAMILY, "other_family", 0x30))
    w.handle_ctrl_message(notification(CTRL_CMD_NEWMCAST_GRP, "mptcp_pm", 0x1C))
    assert (events, w.family_id) == ([0x1C], 0x1C)
    w.handle_ctrl_message(notification(CTRL_CMD_DELFAMILY, "mptcp_pm", 0x1C))
    w.handle_ctrl_message(notification(CTRL_CMD_DELFAMILY, "mptcp_pm", 0x1C))
    assert (events, w.known) == ([0x1C, "vanished"], False)
    w.handle_ctrl_message(notification(CTRL_CMD_NEWFAMILY, "mptcp_pm", 0x1D))
    assert (events, w.family_id) == ([0x1C, "vanished", 0x1D], 0x1D)
    await w.stop()
    assert records(caplog) == [
        ("DEBUG", '"mptcp_pm" generic netlink family appeared'),
        ("DEBUG", "mptcp_pm generic netlink family vanished"),
        ("DEBUG", '"mptcp_pm" generic netlink family appeared'),
    ]


class FakeClock:
    """Stands for the loop's ``call_later``: timers fire only when the test
    moves the clock on (:meth:`advance`)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[FakeTimer] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def armed(self) -> list[float]:
        """The delays left on the timers that are still to fire."""
        return [t.when - self.now for t in self.timers if not t.done]

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for timer in sorted(self.timers, key=lambda t: t.when):
            if not timer.done and timer.when <= self.now:
                timer.done = True
                timer.callback()


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.done = False  # fired or cancelled

    def cancel(self) -> None:
        self.done = True


async def test_vanish_rearms_the_warning_timer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    clock = FakeClock()
    w = FamilyWatcher(timeout=10, call_later=clock.call_later)
    w.handle_ctrl_message(notification(CTRL_CMD_NEWFAMILY, "mptcp_pm"))
    assert clock.armed() == []
    w.handle_ctrl_message(notification(CTRL_CMD_DELFAMILY, "mptcp_pm"))
    assert clock.armed() == [10]  # vanished: the timer is armed
    w.handle_ctrl_message(notification(CTRL_CMD_NEWFAMILY, "mptcp_pm"))
    assert clock.armed() == []  # back before it fired: disarmed
    clock.advance(60)
    assert records(caplog) == []  # known: no warning
    w.handle_ctrl_message(notification(CTRL_CMD_DELFAMILY, "mptcp_pm"))
    clock.advance(9.5)
    assert records(caplog) == []  # not yet
    clock.advance(0.5)
    assert records(caplog) == [
        ("WARNING", "MPTCP generic netlink family has not appeared."),
        ("WARNING", "Verify MPTCP netlink path manager kernel support."),
    ]
    clock.advance(60)
    assert len(records(caplog)) == 2  # once per vanish
    await w.stop()


async def test_a_failing_callback_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def boom(_: int) -> None:
        raise RuntimeError("plugin bug")

    w = FamilyWatcher(boom, timeout=30)
    with caplog.at_level(logging.ERROR, LOGGER):
        w.handle_ctrl_message(notification(CTRL_CMD_NEWFAMILY, "mptcp_pm"))
    assert w.known
    assert any("on_appeared callback failed" in m for m in caplog.messages)


# -- sysctls ------------------------------------------------------------------


@pytest.mark.parametrize("content, ok, messages", [
    ("1\n", True, []),
    ("2\n", True, []),
    ("0\n", False, ["MPTCP is not enabled in the kernel.",
                    "Try 'sysctl -w net.mptcp.enabled=1'."]),
    ("yes\n", False, ["Unable to determine if MPTCP is enabled."]),
    (None, False, []),
])
def test_check_kernel(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                      content: str | None, ok: bool, messages: list[str]) -> None:
    if content is not None:
        (tmp_path / "enabled").write_text(content)
    with caplog.at_level(logging.DEBUG):
        assert check_kernel(tmp_path) is ok
    assert [r.getMessage() for r in caplog.records] == messages
    assert all(r.levelname == "ERROR" for r in caplog.records)


@pytest.mark.parametrize("files, expected", [
    ({"path_manager": "userspace\n", "pm_type": "1\n"}, "userspace"),
    ({"path_manager": "kernel\n"}, "kernel"),
    ({"pm_type": "0\n"}, "kernel"),
    ({"pm_type": "1\n"}, "userspace"),
    ({"pm_type": "x\n"}, None),
    ({}, None),
])
def test_kernel_path_manager(tmp_path: Path, files: dict[str, str],
                             expected: str | None) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert kernel_path_manager(tmp_path) == expected


class BrokenSocket:
    """A notification socket whose reads fail with ``errno`` after one
    message that cannot be parsed."""

    def __init__(self, error: int) -> None:
        self.backlog: collections.deque[bytes] = collections.deque([b"\x01\x02 garbage"])
        self.closed = False
        self.error = error

    async def recv(self) -> bytes:
        raise OSError(self.error, os.strerror(self.error))

    def close(self) -> None:
        self.closed = True


async def test_a_watch_that_ends_before_stop_is_reported(
        caplog: pytest.LogCaptureFixture) -> None:
    """A bad message is logged and skipped; a socket that fails ends the
    watch, and on_failure hears why (the daemon exits 1 then)."""
    w = FamilyWatcher(timeout=30)
    reasons: list[str] = []
    w.on_failure = reasons.append
    w._sock = BrokenSocket(errno.EIO)  # type: ignore[assignment]
    await w._read_loop()
    assert reasons == ["nlctrl notification socket failed: [Errno 5] Input/output error"]
    # Closed by stop(): no failure.
    reasons.clear()
    sock = BrokenSocket(errno.EBADF)
    sock.closed = True
    w._sock = sock  # type: ignore[assignment]
    await w._read_loop()
    assert reasons == []

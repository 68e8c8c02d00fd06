"""sd_notify through systemd-python, checked on a NOTIFY_SOCKET we bind."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mptcpd.daemon.systemd import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_status_and_stopping_reach_the_socket(notify_socket: socket.socket) -> None:
    notifier = Notifier()
    notifier.status("Waiting for the mptcp_pm family")
    assert received(notify_socket) == ["STATUS=Waiting for the mptcp_pm family"]
    notifier.notify("READY=1\nSTATUS=Running")
    assert received(notify_socket) == ["READY=1", "STATUS=Running"]
    notifier.stopping()
    assert received(notify_socket) == ["STOPPING=1", "STATUS=Stopping"]


async def test_watchdog_pings_at_half_the_interval(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notify_socket.setblocking(False)
    notifier = Notifier()
    notifier.ready("Running")
    loop = asyncio.get_running_loop()
    messages = [await loop.sock_recv(notify_socket, 4096) for _ in range(3)]
    notifier.stopping()
    assert messages[0].decode().split("\n") == ["READY=1", "STATUS=Running"]
    assert messages[1:] == [b"WATCHDOG=1", b"WATCHDOG=1"]


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    sent: list[str] = []
    Notifier(send=lambda s: sent.append(s) or False).ready("Running")
    assert sent == ["READY=1\nSTATUS=Running"]  # handed to sd_notify, which drops it
    Notifier().ready("Running")  # the real sd_notify: a no-op, no error


def test_a_failing_socket_does_not_raise() -> None:
    def broken(state: str) -> bool:
        raise ConnectionRefusedError(111, "Connection refused")

    Notifier(send=broken).stopping()

"""The daemon's link to systemd: readiness, status and stopping notifications.

Uses systemd-python's ``sd_notify`` wrapper.  Without ``NOTIFY_SOCKET`` in the
environment (not started by systemd) every call is a no-op, as sd_notify(3)
itself is; without systemd-python installed, too.  When the unit sets
``WatchdogSec=``, :class:`Notifier` pings the watchdog at half the interval.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_sd_daemon: Any = None


def _default_send(state: str) -> bool:
    # sd_notify(3) is a no-op without NOTIFY_SOCKET: systemd-python is only
    # imported when there is somewhere to send to.
    global _sd_daemon
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    if _sd_daemon is None:
        try:
            from systemd import daemon
        except ImportError:  # pragma: no cover - systemd-python is a dependency
            return False
        _sd_daemon = daemon
    return bool(_sd_daemon.notify(state))


class Notifier:
    """Sends ``READY=1``, ``STATUS=…``, ``STOPPING=1`` and watchdog pings."""

    def __init__(self, send: Callable[[str], bool] = _default_send) -> None:
        self._send = send
        self._watchdog: asyncio.Task[None] | None = None

    def notify(self, state: str) -> None:
        try:
            self._send(state)
        except OSError as exc:  # a vanished socket must not stop the daemon
            log.debug("sd_notify(%s) failed: %s", state.replace("\n", " "), exc)

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}")
        self.start_watchdog()

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self) -> None:
        self.stop_watchdog()
        self.notify("STOPPING=1\nSTATUS=Stopping")

    def start_watchdog(self) -> None:
        """Ping the watchdog at half of ``WATCHDOG_USEC`` when it is set for us."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())) or self._watchdog:
            return
        try:
            interval = int(usec) / 2e6
        except ValueError:
            log.warning("Ignoring malformed WATCHDOG_USEC=%s", usec)
            return
        if interval <= 0:
            return
        self._watchdog = asyncio.get_running_loop().create_task(
            self._ping(interval), name="watchdog"
        )

    async def _ping(self, interval: float) -> None:
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

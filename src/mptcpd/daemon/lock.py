"""One daemon per network namespace.

Two path managers in one namespace would fight over its endpoints and
connections.  The daemon holds an exclusive ``flock`` on
``mptcpd-netns-<inode>.lock`` in its runtime directory (``$MPTCPD_STATE_DIR``,
``$RUNTIME_DIRECTORY`` or ``/run/mptcpd``) for as long as it runs; the
kernel drops the lock with the process, so a crash leaves nothing stale.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class AlreadyRunning(Exception):
    """Another daemon holds the namespace's lock; ``pid`` is its process."""

    def __init__(self, path: Path, pid: int | None) -> None:
        who = f" (pid {pid})" if pid else ""
        super().__init__(f"mptcpd is already running in this network namespace{who}; "
                         f"lock file {path}")
        self.pid = pid


def runtime_dir() -> Path:
    """The daemon's runtime directory (its first entry, when systemd names several)."""
    base = os.environ.get("MPTCPD_STATE_DIR") or os.environ.get("RUNTIME_DIRECTORY") \
        or "/run/mptcpd"
    return Path(base.split(":")[0])


def lock_path(directory: Path | None = None) -> Path:
    netns = os.stat("/proc/self/ns/net").st_ino
    return (directory or runtime_dir()) / f"mptcpd-netns-{netns}.lock"


class NamespaceLock:
    """The namespace's lock; :meth:`acquire` raises :class:`AlreadyRunning`."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or lock_path()
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = int(os.read(fd, 32).decode().strip() or 0) or None
            except ValueError:
                holder = None
            os.close(fd)
            raise AlreadyRunning(self.path, holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # the lock goes with the descriptor

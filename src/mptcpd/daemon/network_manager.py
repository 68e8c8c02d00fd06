"""Whether NetworkManager manages the MPTCP endpoints of this namespace too.

NetworkManager 1.40 and later adds and removes MPTCP endpoints itself
(``connection.mptcp-flags``, whose default is ``enabled,subflow``), which is
what addr_adv does: run together, both add endpoints for the same addresses
and each removes what the other relies on (mptcpd #261).  The daemon cannot
stop NetworkManager, but it can say so once, with the two ways out.

NetworkManager is taken to run in this namespace when its process (from
``/run/NetworkManager/NetworkManager.pid``, else a process named
``NetworkManager``) has this process's network namespace.  When that cannot
be read (a sandbox hiding other users' processes, ``ProtectProc=invisible``)
a running NetworkManager is assumed to share it: a warning too many is
cheaper than a silent clash.  It manages endpoints unless its global
default for connections (``connection.mptcp-flags`` in a ``[connection…]``
section of ``NetworkManager.conf`` or a ``conf.d`` file, the later file
winning) has the ``disabled`` flag (0x1).
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: ``NM_MPTCP_FLAGS_DISABLED``.
MPTCP_FLAGS_DISABLED = 0x1
_FLAG_NAMES = {"disabled": 0x1, "enabled": 0x2, "also-without-sysctl": 0x4,
               "also-without-default-route": 0x8, "signal": 0x10, "subflow": 0x20,
               "backup": 0x40, "fullmesh": 0x80}
#: Where NetworkManager reads its configuration, in the order it merges it
#: (a later file wins).
CONFIG_DIRS = ("usr/lib/NetworkManager/conf.d", "run/NetworkManager/conf.d",
               "etc/NetworkManager/conf.d")
MAIN_CONFIG = "etc/NetworkManager/NetworkManager.conf"
PID_FILE = "run/NetworkManager/NetworkManager.pid"

WAYS_OUT = (
    "either let mptcpd manage them: set connection.mptcp-flags=0x1 (disabled) in a "
    "[connection] section of a file in /etc/NetworkManager/conf.d and restart "
    "NetworkManager; or let NetworkManager manage them: do not load addr_adv "
    "(load-plugins in mptcpd.conf)."
)


@dataclass(frozen=True)
class NetworkManagerClash:
    """NetworkManager runs here and manages MPTCP endpoints."""

    pid: int
    #: Whether its network namespace is known to be ours (False: it could
    #: not be read, and is assumed to be).
    same_namespace_known: bool
    #: ``connection.mptcp-flags`` of its global default (None: not set, so
    #: NetworkManager's own default, ``enabled,subflow``), and where.
    flags: int | None
    source: str | None

    def message(self) -> str:
        where = ("runs in this network namespace" if self.same_namespace_known
                 else "runs on this host (its network namespace could not be read)")
        if self.flags is None:
            setting = "connection.mptcp-flags is not set, and its default is enabled,subflow"
        else:
            setting = f"connection.mptcp-flags is {self.flags:#x} in {self.source}"
        return (f"NetworkManager (pid {self.pid}) {where} and adds MPTCP endpoints "
                f"itself ({setting}): with mptcpd's addr_adv both manage the same "
                f"endpoints. To avoid the clash, {WAYS_OUT}")


def parse_mptcp_flags(text: str) -> int | None:
    """A ``connection.mptcp-flags`` value: a number (``0x1``, ``1``) or flag
    names separated by commas or blanks; None when it is neither."""
    text = text.strip()
    try:
        return int(text, 0)
    except ValueError:
        pass
    value = 0
    for name in text.replace(",", " ").split():
        bit = _FLAG_NAMES.get(name.lower())
        if bit is None:
            return None
        value |= bit
    return value if text else None


def configured_flags(root: Path) -> tuple[int | None, str | None]:
    """NetworkManager's global ``connection.mptcp-flags`` and the file that
    sets it (``(None, None)`` when none does)."""
    files = [root / MAIN_CONFIG]
    for directory in CONFIG_DIRS:
        try:
            files.extend(sorted((root / directory).glob("*.conf")))
        except OSError:
            continue
    flags: int | None = None
    source: str | None = None
    import configparser  # only with a kernel path manager: not at every start

    for path in files:
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            parser.read_string(path.read_text(errors="replace"), str(path))
        except (OSError, configparser.Error):
            continue
        for section in parser.sections():
            if not section.startswith("connection"):
                continue
            raw = parser[section].get("connection.mptcp-flags")
            if raw is None:
                continue
            value = parse_mptcp_flags(raw)
            if value is not None:
                flags, source = value, str(path)
    return flags, source


def _pid(root: Path) -> int | None:
    try:
        return int((root / PID_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    proc = root / "proc"
    try:
        entries = [e for e in os.listdir(proc) if e.isdigit()]
    except OSError:
        return None
    for entry in entries:
        try:
            if (proc / entry / "comm").read_text().strip() == "NetworkManager":
                return int(entry)
        except OSError:
            continue
    return None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_clash(root: Path = Path("/"), *, check_pid: bool = True) -> NetworkManagerClash | None:
    """The clash with a NetworkManager that manages MPTCP endpoints in this
    namespace, or None.  ``root`` is where ``/proc``, ``/run`` and ``/etc``
    are looked for (tests give a tree of their own, and ``check_pid=False``
    as their pids are not processes)."""
    pid = _pid(root)
    if pid is None or (check_pid and not _running(pid)):
        return None
    try:
        theirs = os.stat(root / "proc" / str(pid) / "ns" / "net").st_ino
        ours = os.stat(root / "proc" / "self" / "ns" / "net").st_ino
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.ENOENT):
            raise
        known = False
    else:
        if theirs != ours:
            return None
        known = True
    flags, source = configured_flags(root)
    if flags is not None and flags & MPTCP_FLAGS_DISABLED:
        return None
    return NetworkManagerClash(pid, known, flags, source)


def warn_if_clashing(root: Path = Path("/")) -> NetworkManagerClash | None:
    """Log the clash, if any, once (the daemon calls it at startup); never raises."""
    try:
        clash = find_clash(root)
    except Exception as exc:  # a diagnosis must never stop the daemon
        log.debug("NetworkManager check: %s", exc)
        return None
    if clash is not None:
        log.warning("%s", clash.message())
    return clash

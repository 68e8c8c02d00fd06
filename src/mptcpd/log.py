"""Log destinations of the daemon.  This is the only module that configures handlers.

Every module logs to ``logging.getLogger(__name__)``, plugins to
``mptcpd.plugins.<name>``; all of them sit under the ``mptcpd`` logger, which
:func:`setup_logging` equips with exactly one handler:

* ``stderr``: the bare message and a newline.  Debug messages start with
  ``<file>:<function>() `` (C mptcpd prints ``file.c:function() ``).
* ``syslog``: one datagram per message to ``/dev/log``, identity ``mptcpd``,
  facility ``daemon``.
* ``journal``: the systemd journal, ``SYSLOG_IDENTIFIER=mptcpd``.
* ``null``: nothing.

If the syslog or journal socket cannot be reached, or systemd-python is
missing, the destination silently becomes ``null`` (as in C mptcpd).
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

LOGGER_NAME = "mptcpd"
#: The destinations :func:`setup_logging` accepts (the configuration's list).
DESTINATIONS = ("stderr", "syslog", "journal", "null")
SYSLOG_ADDRESS = "/dev/log"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTITY = "mptcpd"

_OURS = "_mptcpd_handler"


class MessageFormatter(logging.Formatter):
    """The message text; debug messages get a ``file:function() `` prefix."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # logging's name
        if record.levelno <= logging.DEBUG:
            return f"{record.filename}:{record.funcName}() {record.message}"
        return record.message


class _SyslogFormatter(MessageFormatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        return f"{SYSLOG_IDENTITY}[{record.process}]: {super().formatMessage(record)}"


class StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time of each message."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 (logging's own policy: never raise from emit)
            self.handleError(record)


class Tally:
    """The per-item messages of one pass over many items (a resync after
    lost events goes over every connection): the first :attr:`limit` of
    each kind at their level, the rest at DEBUG, and :meth:`summary` tells
    how many went there.  A flood of 10^5 connections must not become 10^5
    warnings: journald would drop the service's messages, those that
    matter with them."""

    def __init__(self, logger: logging.Logger, limit: int = 20) -> None:
        self.logger = logger
        self.limit = limit
        #: kind -> [messages so far, their level]
        self._counts: dict[str, list[int]] = {}

    def log(self, level: int, kind: str, msg: str, *args: Any) -> None:
        """Log ``msg % args`` at ``level``, or at DEBUG past the limit of its
        ``kind`` (the plural phrase the summary gives, "connection(s) …")."""
        entry = self._counts.setdefault(kind, [0, level])
        entry[0] += 1
        self.logger.log(level if entry[0] <= self.limit else logging.DEBUG, msg, *args,
                        stacklevel=2)

    def summary(self) -> None:
        """One message per kind that went past its limit, at its level."""
        for kind, (count, level) in self._counts.items():
            if count > self.limit:
                self.logger.log(level, "%d more %s (logged at debug level).",
                                count - self.limit, kind)
        self._counts.clear()


def _can_connect(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def _syslog_handler(address: str) -> logging.Handler | None:
    if not _can_connect(address):
        return None
    import logging.handlers  # only for syslog: not loaded at every start

    class _QuietSysLogHandler(logging.handlers.SysLogHandler):
        """Drops a message it cannot send, as C mptcpd does, instead of
        printing a traceback."""

        def handleError(self, record: logging.LogRecord) -> None:
            pass

    try:
        handler = _QuietSysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
    except OSError:
        return None
    handler.append_nul = False
    handler.setFormatter(_SyslogFormatter())
    return handler


def _journal_handler(
    socket_path: str, sender: Callable[..., Any] | None
) -> logging.Handler | None:
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None
    if sender is None and not _can_connect(socket_path):
        return None

    class _QuietJournalHandler(JournalHandler):  # type: ignore[misc]
        def handleError(self, record: logging.LogRecord) -> None:
            pass

    kwargs: dict[str, Any] = {"SYSLOG_IDENTIFIER": SYSLOG_IDENTITY}
    if sender is not None:
        kwargs["sender_function"] = sender
    handler: logging.Handler = _QuietJournalHandler(**kwargs)
    handler.setFormatter(MessageFormatter())
    return handler


def _make_handler(
    destination: str,
    syslog_address: str,
    journal_socket: str,
    journal_sender: Callable[..., Any] | None,
) -> logging.Handler:
    handler: logging.Handler | None
    if destination == "stderr":
        handler = StderrHandler()
        handler.setFormatter(MessageFormatter())
    elif destination == "syslog":
        handler = _syslog_handler(syslog_address)
    elif destination == "journal":
        handler = _journal_handler(journal_socket, journal_sender)
    elif destination == "null":
        handler = None
    else:
        raise ValueError(f"unknown log destination: {destination!r}")
    return handler if handler is not None else logging.NullHandler()


def _remove_ours(root: logging.Logger) -> None:
    for old in list(root.handlers):
        if getattr(old, _OURS, False):
            root.removeHandler(old)
            old.close()


def setup_logging(
    destination: str = "stderr",
    debug: bool = False,
    *,
    syslog_address: str = SYSLOG_ADDRESS,
    journal_socket: str = JOURNAL_SOCKET,
    journal_sender: Callable[..., Any] | None = None,
) -> logging.Handler:
    """Send everything logged under ``mptcpd`` to *destination*; return the handler.

    May be called again: the previous handler is removed and closed.  The
    daemon calls it once at start (``stderr``, for early messages) and once
    with the configured destination.  *debug* sets the whole ``mptcpd``
    logger tree to DEBUG (otherwise INFO).  The keyword arguments exist for
    tests: the syslog socket path, the journal socket whose presence is
    checked, and a replacement for ``systemd.journal.send``.
    """
    root = logging.getLogger(LOGGER_NAME)
    handler = _make_handler(destination, syslog_address, journal_socket, journal_sender)
    setattr(handler, _OURS, True)
    _remove_ours(root)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    return handler


def reset_logging() -> None:
    """Remove what :func:`setup_logging` installed (for tests and embedding)."""
    root = logging.getLogger(LOGGER_NAME)
    _remove_ours(root)
    root.setLevel(logging.NOTSET)
    root.propagate = True

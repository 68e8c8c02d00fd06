"""Exceptions raised by mptcpd's path-manager API and kernel layer.

* :class:`MptcpdError` is the root of everything mptcpd raises on purpose.
* :class:`NotReady` (``EAGAIN``) and :class:`NotSupported` (``ENOTSUP``) are
  the C API's readiness and capability errors.  They are
  :class:`OSError` subclasses so ``exc.errno`` carries the C return value.
* :class:`KernelError` is a kernel NACK of a ``mptcp_pm`` command: the
  C operation name (as in its logs), the kernel's errno and its extended-ACK text.
* :class:`QueueFull` and :class:`ConnectionClosed` fail a command that was
  never sent: the command queue was full, or its connection closed first.

Argument errors are plain :class:`ValueError` (C: ``EINVAL``).

This module imports nothing of mptcpd.
"""

from __future__ import annotations

import errno as _errno
import os


class MptcpdError(Exception):
    """Base class of mptcpd's own exceptions."""


class NotReady(MptcpdError, OSError):
    """The ``mptcp_pm`` family is not (yet) available (C: ``EAGAIN``)."""

    def __init__(self, message: str = "MPTCP family is not yet available") -> None:
        super().__init__(_errno.EAGAIN, message)


class NotSupported(MptcpdError, OSError):
    """The kernel variant does not implement the operation (C: ``ENOTSUP``)."""

    def __init__(self, message: str = "operation not supported") -> None:
        super().__init__(_errno.ENOTSUP, message)


class QueueFull(MptcpdError, OSError):
    """The command queue was full: the command was dropped (``ENOBUFS``)."""

    def __init__(self, message: str = "command queue full") -> None:
        super().__init__(_errno.ENOBUFS, message)

    def __str__(self) -> str:
        return str(self.strerror)


class ConnectionClosed(MptcpdError, OSError):
    """The command's connection closed before it was sent (``ENOTCONN``)."""

    def __init__(self, message: str = "connection closed") -> None:
        super().__init__(_errno.ENOTCONN, message)

    def __str__(self) -> str:
        return str(self.strerror)


class KernelError(MptcpdError, OSError):
    """The kernel refused a ``mptcp_pm`` command.

    :ivar op: the operation name used in logs (``add_addr``, ``announce``, …).
    :ivar errno: the kernel's error number (positive).
    :ivar extack: the kernel's extended-ACK message, or None when it sent none.

    ``str()`` gives the C daemon's log form: ``<op>: <extack>: <strerror>``,
    or ``<op>: <strerror>`` without an extack message.
    """

    op: str
    extack: str | None

    def __init__(self, op: str, code: int, extack: str | None = None) -> None:
        super().__init__(code, os.strerror(code))
        self.op = op
        self.extack = extack or None

    def __str__(self) -> str:
        if self.extack:
            return f"{self.op}: {self.extack}: {self.strerror}"
        return f"{self.op}: {self.strerror}"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.op, self.errno, self.extack))


class SettingsError(ValueError):
    """A plugin setting (a key of a ``[plugin NAME]`` group of the
    configuration file) has a value its plugin cannot use.

    The message names the file, the line, the group and the key, the value
    and what was expected.  It is a :class:`ValueError`: nothing of the
    kernel is involved.
    """

    def __init__(self, message: str, *, path: str = "", group: str = "", key: str = "",
                 line: int = 0) -> None:
        super().__init__(message)
        self.path = path
        self.group = group
        self.key = key
        self.line = line

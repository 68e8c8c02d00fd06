"""MPTCP listener manager (C: ``mptcpd_lm``).

With the userspace path manager an ANNOUNCEd address needs a listening
MPTCP socket, or the peer's MP_JOINs to it are refused.  The
:class:`ListenerManager` keeps one listening socket per (IP, port), shared
through a reference count: :meth:`ListenerManager.listen` opens it (or takes
another reference) and :meth:`ListenerManager.close` drops a reference,
closing the socket with the last one.

Differences from C:

* :class:`~mptcpd.types.SockAddr` is immutable, so instead of writing the
  kernel-chosen port back into the caller's address, :meth:`listen` returns
  the address actually listened on.
* Failures raise :class:`OSError` carrying the errno the C function returns
  (``EINVAL``, or the errno of the failing system call), after the same
  error log line.
* C closes file descriptor 0 by mistake when its map insert fails; that
  failure cannot happen here and the socket that failed is always the one
  closed.

The sockets are created in the calling process's network namespace, which is
the daemon's.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass

from mptcpd.types import SockAddr

log = logging.getLogger(__name__)

IPPROTO_MPTCP = socket.IPPROTO_MPTCP

#: Backlog of the listening sockets, as in mptcpd.
BACKLOG = 0

_UNBOUND = frozenset(
    {
        ipaddress.IPv4Address("0.0.0.0"),
        ipaddress.IPv4Address("255.255.255.255"),
        ipaddress.IPv6Address("::"),
    }
)

ListenerKey = tuple[int, bytes, int]


@dataclass
class _Listener:
    sock: socket.socket
    refcount: int = 1


def _key(sa: SockAddr) -> ListenerKey:
    return sa.family, sa.ip.packed, sa.port


def _sockaddr(sa: SockAddr) -> tuple[str, int] | tuple[str, int, int, int]:
    if sa.ip.version == 6:
        return str(sa.ip), sa.port, 0, 0
    return str(sa.ip), sa.port


def _fail(message: str, exc: OSError) -> OSError:
    code = exc.errno or errno.EIO
    log.error("%s: %s", message, os.strerror(code))
    return OSError(code, f"{message}: {os.strerror(code)}")


class ListenerManager:
    """Reference-counted MPTCP listening sockets, keyed by (IP, port)."""

    def __init__(self) -> None:
        self._listeners: dict[ListenerKey, _Listener] = {}

    def __len__(self) -> int:
        """Number of open listening sockets."""
        return len(self._listeners)

    def __contains__(self, sa: object) -> bool:
        return isinstance(sa, SockAddr) and _key(sa) in self._listeners

    def refcount(self, sa: SockAddr) -> int:
        """How many :meth:`listen` calls hold the listener of ``sa`` (0: none)."""
        entry = self._listeners.get(_key(sa))
        return entry.refcount if entry else 0

    def listen(self, sa: SockAddr | None) -> SockAddr:
        """Listen for MPTCP connections on ``sa``; return the address used.

        An (IP, port) already listened on only gains a reference.  Port 0
        never matches an existing listener: each call opens a new socket on
        a kernel-chosen port, which the returned address carries.

        :raises OSError: ``EINVAL`` for a missing address or an unbound one
            (``0.0.0.0``, ``255.255.255.255``, ``::``); otherwise the errno of
            the ``socket``/``bind``/``listen``/``getsockname`` call that failed.
        """
        if sa is None or not isinstance(sa, SockAddr) or sa.ip in _UNBOUND:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if sa.port:
            entry = self._listeners.get(_key(sa))
            if entry is not None:
                entry.refcount += 1
                return sa
        try:
            sock = socket.socket(sa.family, socket.SOCK_STREAM, IPPROTO_MPTCP)
        except OSError as exc:
            raise _fail("Unable to open MPTCP listener", exc) from exc
        try:
            try:
                sock.bind(_sockaddr(sa))
            except OSError as exc:
                raise _fail("Unable to bind MPTCP listener", exc) from exc
            try:
                sock.listen(BACKLOG)
            except OSError as exc:
                raise _fail("Unable to listen on MPTCP socket", exc) from exc
            try:
                port = int(sock.getsockname()[1])
            except OSError as exc:
                raise _fail("Unable to retrieve listening socket name", exc) from exc
        except BaseException:
            sock.close()
            raise
        bound = sa.with_port(port)
        key = _key(bound)
        entry = self._listeners.get(key)
        if entry is not None:  # pragma: no cover - the kernel refuses a second bind
            sock.close()
            entry.refcount += 1
        else:
            self._listeners[key] = _Listener(sock)
        return bound

    def close(self, sa: SockAddr | None) -> None:
        """Drop one reference to the listener of ``sa``; close it at zero.

        :raises OSError: ``EINVAL`` for a missing address or one that is not
            listened on (so port 0 always fails).
        """
        if sa is None or not isinstance(sa, SockAddr):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        key = _key(sa)
        entry = self._listeners.get(key)
        if entry is None:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        entry.refcount -= 1
        if entry.refcount == 0:
            del self._listeners[key]
            entry.sock.close()

    def destroy(self) -> None:
        """Close every listening socket (shutdown)."""
        listeners, self._listeners = self._listeners, {}
        for entry in listeners.values():
            entry.sock.close()

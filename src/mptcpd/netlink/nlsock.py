"""Plain netlink sockets, made in another network namespace when asked.

The daemon runs inside the namespace it manages, so it opens its sockets
the ordinary way.  Tests and benchmarks drive a lab namespace from outside:
there the socket is created by a short-lived thread that enters the
namespace (``setns`` changes only the calling thread's namespace), and the
socket stays bound to that namespace for its whole life.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import threading

from mptcpd.errors import NotReady
from mptcpd.netlink import pm_codec
from mptcpd.netlink.constants import MPTCP_PM_NAME

NETLINK_ROUTE = 0
NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_EXT_ACK = 11
NETLINK_CAP_ACK = 10
SO_RCVBUFFORCE = 33
_CLONE_NEWNET = 0x40000000


def _setns(path: str) -> None:
    import ctypes  # only for a foreign namespace

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
    finally:
        os.close(fd)


def netlink_socket(protocol: int, netns: str | None = None) -> socket.socket:
    """A non-blocking, unbound ``AF_NETLINK`` raw socket of ``protocol``.

    :param netns: a namespace name under ``/run/netns`` or a path to a
        namespace file; None for the caller's namespace, which never changes.
    """

    def make() -> socket.socket:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                             protocol)

    if netns is None:
        return make()
    path = netns if "/" in netns else f"/run/netns/{netns}"
    box: list[socket.socket | BaseException] = []

    def run() -> None:
        try:
            _setns(path)
            box.append(make())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run, name=f"netns {netns}", daemon=True)
    thread.start()
    thread.join()
    result = box[0]
    if isinstance(result, BaseException):
        raise result
    return result


def set_rcvbuf(sock: socket.socket, size: int) -> None:
    """Ask for a receive buffer of ``size`` bytes: ``SO_RCVBUFFORCE`` when
    permitted (CAP_NET_ADMIN), else ``SO_RCVBUF`` (capped by rmem_max)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


#: Seconds a family lookup may take.
LOOKUP_TIMEOUT = 5.0


async def lookup_family(sock: socket.socket, name: str = MPTCP_PM_NAME,
                        seq: int = 1) -> tuple[int, dict[str, int]]:
    """The id and multicast groups of generic netlink family ``name``.

    Raises :class:`~mptcpd.errors.NotReady` when the family is not
    registered, :class:`OSError` for another failure.
    """
    loop = asyncio.get_running_loop()
    sock.send(pm_codec.get_family(seq, name))
    async with asyncio.timeout(LOOKUP_TIMEOUT):
        while True:
            data = await loop.sock_recv(sock, 65536)
            if any(m.seq == seq for m in pm_codec.messages(data)):
                break
    family_id, groups, code = pm_codec.decode_family_groups(data, seq)
    if family_id is not None:
        return family_id, groups
    if code == errno.ENOENT:
        raise NotReady(f'"{name}" generic netlink family not found')
    raise OSError(code, os.strerror(code))

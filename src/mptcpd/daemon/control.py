"""The control socket: the daemon's status and control API over varlink.

One Unix stream socket per daemon (``control-socket`` in ``mptcpd.conf``;
by default ``control`` in the runtime directory), mode 0660, speaking the
varlink protocol: JSON objects ended by a NUL byte, as systemd's daemons
do, so ``varlinkctl`` (systemd 255 on) and ``mptcpctl`` can call it.  The
interface, ``io.mptcpd``, is
:class:`mptcpd.daemon.control_api.ControlInterface`; the package ships its
description as ``io.mptcpd.varlink`` (a test keeps the two equal).

This module is what the daemon needs at startup and on its event path: the
socket (:class:`ControlServer`: bind, listen, accept, ``SO_PEERCRED``) and
the state the daemon keeps for it (:class:`Stats`, :class:`CommandRecorder`,
:class:`MonitorHub`).  The protocol and the interface, with
:mod:`asyncvarlink` under them, are in :mod:`mptcpd.daemon.control_api`,
imported when the first client connects: the socket is bound and listening
before ``READY=1`` (a client that connects once the daemon is ready, or
even before, waits in the listen backlog and is served, never refused),
while the daemon's start and its idle memory do not pay for a library that
only a control client needs.

What a daemon serving any local process needs on top of the library's
protocol (see :mod:`mptcpd.daemon.control_api`):

* a message larger than :data:`MAX_MESSAGE` gets ``io.mptcpd.InvalidMessage``
  and is skipped up to its NUL (the library would buffer it whole);
* malformed JSON gets ``io.mptcpd.InvalidMessage`` (the library answers
  nothing), and the connection stays usable: messages are framed by NUL;
* a client that lets more than :data:`MAX_PENDING_REPLIES` replies pile up
  unread is dropped with a warning (counted): replies never accumulate
  without bound, and a client never slows the daemon;
* at most :data:`MAX_CLIENTS` clients at once;
* the peer's credentials (``SO_PEERCRED``) are read at ``accept``: write
  methods are for root and for holders of ``CAP_NET_ADMIN`` only, and each
  write call is logged with the peer's uid and pid.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import errno
import functools
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mptcpd import events as ev
from mptcpd.config import CONTROL_SOCKET_NAME, Config
from mptcpd.daemon.lock import runtime_dir
from mptcpd.errors import ConnectionClosed, KernelError, NotReady, QueueFull
from mptcpd.types import SockAddr

if TYPE_CHECKING:
    from mptcpd.daemon.app import Daemon
    from mptcpd.daemon.control_api import ControlProtocol

log = logging.getLogger(__name__)

#: The varlink interface name.
INTERFACE = "io.mptcpd"
#: The interface description shipped with the package (next to this module).
INTERFACE_FILE = Path(__file__).with_name(f"{INTERFACE}.varlink")
#: The socket's mode: the owner and its group may connect.
SOCKET_MODE = 0o660
#: Longest message (bytes, NUL excluded) a client may send.
MAX_MESSAGE = 1 << 20
#: Replies a client may leave unread before it is dropped.
MAX_PENDING_REPLIES = 256
#: Clients connected at once; more are turned away.
MAX_CLIENTS = 64
#: Records a monitor client may have waiting before it is dropped.
MONITOR_QUEUE = 4096
#: Monitor records sent in one write.
MONITOR_BATCH = 128
#: ``CAP_NET_ADMIN`` (``linux/capability.h``).
CAP_NET_ADMIN = 12
_UCRED = struct.Struct("=iII")  # pid, uid, gid

#: The kernel events, by the name ``ip mptcp monitor`` gives them (lower case).
EVENT_NAMES: dict[type, str] = {
    ev.ConnectionCreated: "created",
    ev.ConnectionEstablished: "established",
    ev.ConnectionClosed: "closed",
    ev.AddressAnnounced: "announced",
    ev.AddressRemoved: "removed",
    ev.SubflowEstablished: "sf_established",
    ev.SubflowClosed: "sf_closed",
    ev.SubflowPriority: "sf_priority",
    ev.ListenerCreated: "listener_created",
    ev.ListenerClosed: "listener_closed",
}


def default_socket_path() -> Path:
    """``control`` in the runtime directory (``$MPTCPD_STATE_DIR``,
    ``$RUNTIME_DIRECTORY`` or ``/run/mptcpd``)."""
    return runtime_dir() / CONTROL_SOCKET_NAME


def namespace_socket_path() -> Path:
    """The default socket's name for a daemon whose namespace's is taken:
    ``control-netns-<inode of the network namespace>``, in the runtime directory."""
    inode = os.stat("/proc/self/ns/net").st_ino
    return runtime_dir() / f"{CONTROL_SOCKET_NAME}-netns-{inode}"


def socket_path(config: Config) -> Path | None:
    """The control socket's path for ``config``; None when disabled."""
    if config.control_socket is None:
        return default_socket_path()
    return Path(config.control_socket) if config.control_socket else None


# -- peers -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Peer:
    """Who is at the other end of a connection (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"uid {self.uid} pid {self.pid}"

    def may_write(self) -> bool:
        """Root, or a process holding ``CAP_NET_ADMIN`` (its effective set,
        read from ``/proc/<pid>/status``; a process that cannot be read is
        refused)."""
        if self.uid == 0:
            return True
        return CAP_NET_ADMIN in effective_capabilities(self.pid)


def effective_capabilities(pid: int) -> set[int]:
    """The capability numbers in ``CapEff`` of process ``pid`` (empty when
    it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as file:
            for line in file:
                if line.startswith("CapEff:"):
                    bits = int(line.split(":", 1)[1].strip(), 16)
                    return {n for n in range(bits.bit_length()) if bits >> n & 1}
    except (OSError, ValueError):
        pass
    return set()


def peer_of(sock: socket.socket) -> Peer:
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return Peer(*_UCRED.unpack(data))


# -- endpoint owners ------------------------------------------------------------------


class EndpointOwners:
    """Which plugin created which endpoint: an endpoint ID's owner is the
    plugin whose ``kpm_add_addr`` for that ID the kernel accepted, until a
    ``kpm_remove_addr`` of the ID or a flush is accepted.  The address is
    kept too: an endpoint later re-made by someone else under the same ID
    is not the plugin's."""

    #: The operations that change the owners.
    OPERATIONS = frozenset({"kpm_add_addr", "kpm_remove_addr", "kpm_flush_addrs"})

    def __init__(self) -> None:
        self._owners: dict[int, tuple[SockAddr, str]] = {}

    def record(self, name: str, args: tuple[Any, ...], owner: str) -> None:
        """Command ``name`` with ``args``, sent by ``owner``, was accepted."""
        if name == "kpm_add_addr":
            addr, addr_id = args[0], args[1]
            if addr_id:
                self._owners[addr_id] = (addr, owner)
        elif name == "kpm_remove_addr":
            self._owners.pop(args[0], None)
        else:
            self._owners.clear()

    def owner(self, addr_id: int, addr: SockAddr | None) -> str | None:
        entry = self._owners.get(addr_id)
        if entry is None or addr is None or entry[0].ip != addr.ip:
            return None
        return entry[1]


# -- the daemon's counters -------------------------------------------------------------


class Stats:
    """Counters the daemon keeps for the control socket (cheap: one dict
    increment per event)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        #: Kernel events read, by event class.
        self.events: dict[type, int] = dict.fromkeys(EVENT_NAMES, 0)
        #: (operation, result) -> count.
        self.commands: dict[tuple[str, str], int] = {}
        #: Monitor clients dropped for not reading.
        self.monitors_dropped = 0
        #: Control clients dropped for not reading their replies.
        self.clients_dropped = 0

    def events_by_name(self) -> dict[str, int]:
        return {EVENT_NAMES[kind]: count for kind, count in self.events.items()}


def result_name(future: asyncio.Future[Any]) -> str:
    """How a command ended, for the counters: ``ok``, the kernel's errno
    name, or the reason it was never sent."""
    if future.cancelled():
        return "cancelled"
    exc = future.exception()
    if exc is None:
        return "ok"
    if isinstance(exc, KernelError):
        code = exc.errno or 0
        return errno.errorcode.get(code, str(code))
    return _RESULT_NAMES.get(type(exc), type(exc).__name__)


_RESULT_NAMES: dict[type, str] = {
    QueueFull: "queue_full",
    ConnectionClosed: "connection_closed",
    NotReady: "not_ready",
}


class CommandRecorder:
    """Stands between the path manager and the command channel: counts
    every command by operation and result (and, when set, tells
    ``on_result`` of each, in the order the answers come: the order the
    commands were sent)."""

    def __init__(self, channel: Any, stats: Stats,
                 current_plugin: Callable[[], str | None] = lambda: None) -> None:
        self._channel_submit: Callable[..., asyncio.Future[Any]] = channel.submit
        self._commands = stats.commands
        self._current_plugin = current_plugin
        self.owners = EndpointOwners()
        self.on_result: Callable[[str, tuple[Any, ...], asyncio.Future[Any]], None] | None \
            = None

    def submit(self, name: str, args: tuple[Any, ...] = (),
               token: int | None = None) -> asyncio.Future[Any]:
        future = self._channel_submit(name, args, token)
        future.add_done_callback(functools.partial(self._done, name, args))
        if name in EndpointOwners.OPERATIONS:
            owner = self._current_plugin()
            if owner is not None:
                future.add_done_callback(functools.partial(self._owned, name, args, owner))
        return future

    def _owned(self, name: str, args: tuple[Any, ...], owner: str,
               future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.owners.record(name, args, owner)

    def _done(self, name: str, args: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
        key = (name, result_name(future))
        commands = self._commands
        commands[key] = commands.get(key, 0) + 1
        if self.on_result is not None:
            self.on_result(name, args, future)


# -- the monitor -------------------------------------------------------------------------


class Subscriber:
    """One monitor client: the records waiting for it, in order."""

    def __init__(self, drop: Callable[[], None]) -> None:
        self.records: collections.deque[Any] = collections.deque()
        self.wake = asyncio.Event()
        self.ended = False  # dropped, or the client is gone
        self.drop = drop


class MonitorHub:
    """Hands every kernel event and every command's answer to the monitor
    clients, in order.  Publishing costs one append per client; a client
    whose :data:`MONITOR_QUEUE` records are still waiting is dropped (with a
    warning, counted): a client never slows the daemon."""

    def __init__(self, stats: Stats) -> None:
        #: The clients (the same list object for the daemon's lifetime: the
        #: event reader tests it for emptiness).
        self.subscribers: list[Subscriber] = []
        self._stats = stats

    def subscribe(self, drop: Callable[[], None]) -> Subscriber:
        subscriber = Subscriber(drop)
        self.subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subscriber.ended = True
        subscriber.wake.set()
        if subscriber in self.subscribers:
            self.subscribers.remove(subscriber)

    def publish(self, item: Any) -> None:
        """An event, or a ``(name, args, future)`` command, for every client."""
        for subscriber in self.subscribers:
            records = subscriber.records
            if len(records) >= MONITOR_QUEUE:
                self._drop(subscriber)
                continue
            records.append(item)
            subscriber.wake.set()

    def command(self, name: str, args: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
        if self.subscribers:
            self.publish((name, args, future))

    def _drop(self, subscriber: Subscriber) -> None:
        self._stats.monitors_dropped += 1
        log.warning("Monitor client dropped: %d records unread (%d dropped so far).",
                    len(subscriber.records), self._stats.monitors_dropped)
        # Not during the loop over the list: after it.
        asyncio.get_running_loop().call_soon(self.unsubscribe, subscriber)
        subscriber.records.clear()
        subscriber.ended = True
        subscriber.drop()


# -- the server --------------------------------------------------------------------------


class ControlServer:
    """The control socket at ``path``, serving ``daemon``."""

    def __init__(self, daemon: "Daemon", path: Path) -> None:
        self.daemon = daemon
        self.path = path
        self.clients: set[ControlProtocol] = set()
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Bind and listen; :class:`OSError` when the socket cannot be made
        (another daemon serving the path included: ``EADDRINUSE``)."""
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC)
        try:
            umask = os.umask(0o777 & ~SOCKET_MODE)
            try:
                sock.bind(str(path))
            finally:
                os.umask(umask)
            os.chmod(path, SOCKET_MODE)
            info = os.stat(path)
            sock.listen(16)
        except BaseException:
            sock.close()
            raise
        self._inode = (info.st_dev, info.st_ino)
        self._sock = sock
        self._loop = loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._accept)
        log.info("Control socket listening on %s.", path)

    @staticmethod
    def _remove_stale(path: Path) -> None:
        """Remove a socket left at ``path`` by a daemon that is gone; raise
        ``EADDRINUSE`` when a live one answers there, ``EEXIST`` when
        ``path`` is not a socket."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            os.unlink(path)  # nobody listens: left over
            return
        finally:
            probe.close()
        raise OSError(errno.EADDRINUSE, f"another process serves {path}")

    def _accept(self) -> None:
        sock, loop = self._sock, self._loop
        if sock is None or loop is None:
            return
        # The protocol and the interface (asyncvarlink) are imported now, at
        # the first client, not at startup: see the module docstring.
        try:
            from mptcpd.daemon.control_api import serve
        except Exception as exc:  # a broken installation: the daemon runs on
            log.error("Unable to serve the control socket %s: %s; running without it.",
                      self.path, exc)
            log.debug("Import of the control interface", exc_info=True)
            self.close()
            return
        for _ in range(16):  # bounded per loop turn
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: try again later
                log.warning("Control socket: accept failed: %s", exc.strerror)
                return
            if len(self.clients) >= MAX_CLIENTS:
                log.warning("Control socket: %d clients already; one more turned away.",
                            MAX_CLIENTS)
                conn.close()
                continue
            conn.setblocking(False)
            try:
                peer = peer_of(conn)
            except OSError:
                conn.close()
                continue
            self.clients.add(serve(self, peer, conn, loop))

    def close(self) -> None:
        """Stop listening, drop every client, remove the socket file (if it
        is still ours)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
            try:
                info = os.lstat(self.path)
                if (info.st_dev, info.st_ino) == self._inode:
                    os.unlink(self.path)
            except OSError:
                pass
        for client in list(self.clients):
            client.close()
        self.clients.clear()


def make_server(daemon: "Daemon") -> "ControlServer | None":
    """The control server ``daemon``'s configuration asks for (None: none)."""
    path = socket_path(daemon.config)
    return ControlServer(daemon, path) if path is not None else None


def start_server(daemon: "Daemon") -> "ControlServer | None":
    """Serve the control socket ``daemon``'s configuration asks for; None
    (logged) when it is disabled or cannot be made.

    When the default socket is served by a daemon of another network
    namespace (they share the runtime directory), this one serves
    :func:`namespace_socket_path` instead, which ``mptcpctl`` run in this
    namespace looks for first."""
    server = make_server(daemon)
    if server is None:
        return None
    try:
        server.start()
        return server
    except OSError as exc:
        error = exc
    if error.errno == errno.EADDRINUSE and daemon.config.control_socket is None:
        fallback = ControlServer(daemon, namespace_socket_path())
        try:
            fallback.start()
        except OSError as exc:
            server, error = fallback, exc
        else:
            log.info("%s is another network namespace's daemon's; serving %s.",
                     server.path, fallback.path)
            return fallback
    log.error("Unable to serve the control socket %s: %s; running without it.",
              server.path, error.strerror or error)
    return None


__all__ = [
    "CAP_NET_ADMIN",
    "CommandRecorder",
    "EVENT_NAMES",
    "EndpointOwners",
    "INTERFACE",
    "INTERFACE_FILE",
    "ControlServer",
    "MonitorHub",
    "Peer",
    "Stats",
    "Subscriber",
    "default_socket_path",
    "make_server",
    "namespace_socket_path",
    "peer_of",
    "result_name",
    "start_server",
    "socket_path",
]

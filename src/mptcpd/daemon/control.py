"""The control socket: the daemon's status and control API over varlink.

One Unix stream socket per daemon (``control-socket`` in ``mptcpd.conf``;
by default ``control`` in the runtime directory), mode 0660, speaking the
varlink protocol: JSON objects ended by a NUL byte, as systemd's daemons
do, so ``varlinkctl`` (systemd 255 on) and ``mptcpctl`` can call it.  The
interface, ``io.mptcpd``, is :class:`ControlInterface`; the package ships
its description as ``io.mptcpd.varlink`` (a test keeps the two equal).

The protocol is :mod:`asyncvarlink`'s, with what a daemon serving any
local process needs on top:

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

# No "from __future__ import annotations": asyncvarlink reads the
# annotations of the interface's methods and types as objects.
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
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from asyncvarlink import (
    FileDescriptorArray,
    LastResult,
    TypedVarlinkErrorReply,
    VarlinkInterface,
    VarlinkInterfaceRegistry,
    VarlinkInterfaceServerProtocol,
    VarlinkTransport,
    varlinkmethod,
)
from asyncvarlink.serviceinterface import VarlinkServiceInterface

import mptcpd
from mptcpd import events as ev
from mptcpd.config import CONTROL_SOCKET_NAME, Config
from mptcpd.daemon.lock import runtime_dir
from mptcpd.errors import ConnectionClosed, KernelError, NotReady, QueueFull
from mptcpd.netlink.pm_codec import Limits as KernelLimits
from mptcpd.types import AddrFlags, SockAddr

if TYPE_CHECKING:
    from mptcpd.daemon.app import Daemon

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


# -- errors --------------------------------------------------------------------------


class InvalidMessage(TypedVarlinkErrorReply, interface=INTERFACE):
    """The message is not a varlink call: not JSON, not an object, or
    too large (it is then skipped up to its NUL)."""

    class Parameters:
        reason: str


class PermissionDenied(TypedVarlinkErrorReply, interface=INTERFACE):
    """Write methods are for root and for processes holding CAP_NET_ADMIN."""

    class Parameters:
        method: str


class InvalidArgument(TypedVarlinkErrorReply, interface=INTERFACE):
    """An argument is wrong (checked as the plugin API checks it); nothing
    was sent to the kernel."""

    class Parameters:
        reason: str


class NotReadyReply(TypedVarlinkErrorReply, name=f"{INTERFACE}.NotReady"):
    """The kernel's mptcp_pm family is not available: no command can be sent."""

    class Parameters:
        message: str


class KernelErrorReply(TypedVarlinkErrorReply, name=f"{INTERFACE}.KernelError"):
    """The kernel refused the command: its errno (number and name) and message."""

    class Parameters:
        errno: int
        name: str
        message: str


def _kernel_error(exc: OSError) -> TypedVarlinkErrorReply:
    if isinstance(exc, NotReady):
        return NotReadyReply(message=str(exc))
    code = exc.errno or 0
    return KernelErrorReply(errno=code, name=errno.errorcode.get(code, str(code)),
                            message=str(exc))


# -- the interface's types -------------------------------------------------------------


@dataclasses.dataclass
class PluginStatus:
    """A loaded plugin."""

    name: str
    description: str
    priority: int
    #: Connections bound to it now.
    connections: int


@dataclasses.dataclass
class CommandCount:
    """How many commands of one operation ended with one result."""

    operation: str
    #: ``ok``, or the error: an errno name (``EEXIST``) or ``queue_full``,
    #: ``connection_closed``, ``not_ready``.
    result: str
    count: int


@dataclasses.dataclass
class Status:
    """What the daemon is and does."""

    version: str
    #: The kernel's path manager (``net.mptcp.path_manager``), null if unknown.
    kernel_path_manager: str | None
    #: Whether the kernel's mptcp_pm family is there and commands can be sent.
    ready: bool
    plugins: list[PluginStatus]
    default_plugin: str | None
    #: Seconds since the daemon started.
    uptime: float
    #: Kernel events read, by name (created, established, ...).
    events: dict[str, int]
    #: Receive overruns of the event socket: events were lost.
    events_lost: int
    #: Resynchronisations after lost events.
    resyncs: int
    commands: list[CommandCount]
    #: Commands waiting to be sent, and sent but not yet answered.
    queue_depth: int
    in_flight: int
    #: Connections bound to a plugin.
    connections: int
    #: Monitor clients now, and those dropped for not reading.
    monitors: int
    monitors_dropped: int


#: TCP socket states (``include/net/tcp_states.h``), by number.
TCP_STATES = ("", "established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2",
              "time_wait", "close", "close_wait", "last_ack", "listen", "closing",
              "new_syn_recv", "bound_inactive")


def _tcp_state(state: int) -> str:
    return TCP_STATES[state] if 0 < state < len(TCP_STATES) else str(state)


@dataclasses.dataclass
class Subflow:
    """A subflow (a TCP socket of the connection) as sock_diag lists it."""

    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    #: The interface the subflow is bound to (null: not bound to one).
    interface: str | None
    ifindex: int
    #: This side asked the peer to use the subflow as a backup (MP_PRIO or
    #: the backup flag of the join), and the peer asked this side.
    backup: bool
    backup_remote: bool
    #: The TCP state (established, syn_sent, ...).
    state: str
    #: The connection's first subflow, not a join.
    initial: bool
    local_id: int
    remote_id: int


@dataclasses.dataclass
class Connection:
    """An MPTCP connection as sock_diag lists it."""

    token: int
    #: Accepted here (the local port is an MPTCP listener's).
    server_side: bool
    #: The plugin the connection is bound to; null when none is (a
    #: connection that fell back to TCP, or before any plugin is loaded).
    plugin: str | None
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    #: The MPTCP socket's TCP state (established, close_wait, ...).
    state: str
    #: The connection fell back to plain TCP.
    fallback: bool
    #: The struct mptcp_info counters the kernel reported, named without
    #: the mptcpi_ prefix; a counter the running kernel does not have is absent.
    info: dict[str, int]
    #: Every subflow, the initial one included while it is attached.
    subflows: list[Subflow]


@dataclasses.dataclass
class Endpoint:
    """An endpoint of the in-kernel path manager."""

    id: int
    address: str
    #: 0 when none.
    port: int
    #: signal, subflow, backup, fullmesh, implicit, laminar.
    flags: list[str]
    #: The endpoint's device (null when none was given).
    interface: str | None
    ifindex: int
    #: The plugin that created the endpoint; null for one mptcpd did not create.
    owner: str | None


@dataclasses.dataclass
class Limits:
    """The in-kernel path manager's limits (null: not reported)."""

    subflows: int | None
    add_addr_accepted: int | None


@dataclasses.dataclass
class InterfaceAddress:
    address: str
    #: Where the address stands for the plugins: announced, silent (present
    #: at startup without notify-flags existing), deferred, pending (route
    #: check running), abandoned (no route found); null for an address the
    #: plugins are not told of.
    state: str | None
    #: Why the policy keeps the address from plugins (its class is skipped,
    #: DAD has not completed, ...); null: it does not.
    filtered: str | None


@dataclasses.dataclass
class InterfaceStatus:
    """A network interface the network monitor tracks."""

    index: int
    name: str
    #: The RFC 2863 operational state (UP, DOWN, LOWERLAYERDOWN, ...).
    operstate: str
    #: Whether the link has its carrier (null when the kernel did not say).
    carrier: bool | None
    up: bool
    running: bool
    #: Why the policy keeps the interface from plugins (denied by a glob or
    #: its kind, not allowed); null: plugins are told of it.
    denied: str | None
    #: The endpoint flags of its ``[interface GLOB]`` group, by name; null
    #: when no group matches (the global ``addr-flags`` apply).
    addr_flags: list[str] | None
    addresses: list[InterfaceAddress]


#: Endpoint flag names, in bit order.
ADDR_FLAG_NAMES = tuple((flag.name.lower(), int(flag)) for flag in AddrFlags
                        if flag.name is not None)


#: The owner of the endpoints added through the control socket.
CONTROL_OWNER = "control"


def _sockaddr(address: str, port: int) -> SockAddr:
    try:
        return SockAddr(address, port)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(reason=f"bad address {address!r} port {port!r}: {exc}") from None


def _ifindex(daemon: "Daemon", name: str) -> int:
    for iface in daemon.network_monitor.interfaces():
        if iface.name == name:
            return iface.index
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise InvalidArgument(reason=f"no interface {name!r}") from None


def flag_names(flags: int) -> list[str]:
    return [name for name, bit in ADDR_FLAG_NAMES if flags & bit]


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


class MonitorRecord(TypedDict, total=False):
    """One record of the monitor: a kernel event as the daemon decoded it,
    or a command the daemon sent, with the kernel's answer.  Only the fields
    that apply are present."""

    #: event, command; started (the first record: the client is subscribed);
    #: end (the last one).
    kind: str
    #: The event (created, established, ..., as ip mptcp monitor names
    #: them) or the command (its path-manager operation, kpm_add_addr, ...).
    name: str
    token: int
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    address: str
    port: int
    address_id: int
    local_id: int
    remote_id: int
    server_side: bool
    deny_join_id0: bool
    backup: bool
    flags: int
    error: int
    ifindex: int
    reset_reason: int
    reset_flags: int
    timeout: int
    #: A command's arguments, as text.
    arguments: list[str]
    #: A command's result: ok, the kernel's errno name, or why it was not sent.
    result: str
    #: The kernel's or the daemon's message for a failed command.
    message: str


#: Event field -> (record key for the address, for the port), for addresses.
_ADDRESS_FIELDS = {"laddr": ("local_address", "local_port"),
                   "raddr": ("remote_address", "remote_port"),
                   "addr": ("address", "port")}
#: Event field -> record key, for the others (``family`` is left out).
_VALUE_FIELDS = {"token": "token", "server_side": "server_side",
                 "deny_join_id0": "deny_join_id0", "backup": "backup",
                 "loc_id": "local_id", "rem_id": "remote_id", "addr_id": "address_id",
                 "flags": "flags", "error": "error", "if_idx": "ifindex",
                 "reset_reason": "reset_reason", "reset_flags": "reset_flags",
                 "timeout": "timeout"}
_EVENT_FIELDS: dict[type, tuple[str, ...]] = {
    kind: tuple(f.name for f in dataclasses.fields(kind)) for kind in EVENT_NAMES}


def event_record(event: Any) -> MonitorRecord:
    record: dict[str, Any] = {"kind": "event", "name": EVENT_NAMES[type(event)]}
    for name in _EVENT_FIELDS[type(event)]:
        value = getattr(event, name)
        if value is None:
            continue
        if name in _ADDRESS_FIELDS:
            address, port = _ADDRESS_FIELDS[name]
            record[address] = str(value.ip)
            record[port] = value.port
        elif name in _VALUE_FIELDS:
            record[_VALUE_FIELDS[name]] = value
    return record  # type: ignore[return-value]


def command_record(name: str, args: tuple[Any, ...],
                   future: asyncio.Future[Any]) -> MonitorRecord:
    record: MonitorRecord = {"kind": "command", "name": name,
                             "arguments": [str(a) for a in args],
                             "result": result_name(future)}
    if not future.cancelled() and future.exception() is not None:
        record["message"] = str(future.exception())
    return record


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


# -- the interface ---------------------------------------------------------------------


class ControlInterface(VarlinkInterface, name=INTERFACE):
    """Status and control of mptcpd, the Multipath TCP path-management daemon."""

    errors = (InvalidMessage, PermissionDenied, InvalidArgument, NotReadyReply,
              KernelErrorReply)

    def __init__(self, daemon: "Daemon", peer: Peer,
                 abort: Callable[[], None] = lambda: None,
                 watch_hangup: Callable[[Callable[[], None]], Callable[[], None]] | None
                 = None,
                 send: Callable[[Any], asyncio.Future[None]] | None = None) -> None:
        self._daemon = daemon
        self._peer = peer
        self._abort = abort
        self._watch_hangup = watch_hangup
        self._send = send
        self._subscriber: Subscriber | None = None

    def connection_lost(self) -> None:
        if self._subscriber is not None:
            self._daemon.monitor.unsubscribe(self._subscriber)

    @varlinkmethod(return_parameter="status")
    def GetStatus(self) -> Status:
        """The daemon's version, plugins, kernel path manager and counters."""
        daemon = self._daemon
        stats = daemon.stats
        bindings = daemon.dispatcher.bindings
        per_plugin: dict[str, int] = {}
        for name in bindings.values():
            per_plugin[name] = per_plugin.get(name, 0) + 1
        plugins = [PluginStatus(p.name, p.info.description, int(p.info.priority), per_plugin.get(p.name, 0))
                   for p in daemon.registry.plugins]
        default = daemon.dispatcher.default
        channel: Any = daemon.channel
        reader: Any = daemon.reader
        return Status(
            version=mptcpd.__version__,
            kernel_path_manager=daemon.kernel.path_manager(),
            ready=daemon.pm.ready,
            plugins=plugins,
            default_plugin=default.name if default is not None else None,
            uptime=round(time.monotonic() - stats.started, 3),
            events=stats.events_by_name(),
            events_lost=daemon.events_lost + (reader.overruns if reader is not None else 0),
            resyncs=daemon.dispatcher.resyncs,
            commands=[CommandCount(op, result, count)
                      for (op, result), count in sorted(stats.commands.items())],
            queue_depth=int(getattr(channel, "queued", 0)),
            in_flight=int(getattr(channel, "in_flight", 0)),
            connections=len(bindings),
            monitors=len(daemon.monitor.subscribers),
            monitors_dropped=stats.monitors_dropped,
        )

    @varlinkmethod(return_parameter="connections")
    async def ListConnections(self) -> list[Connection]:
        """The MPTCP connections of the namespace (sock_diag, as ss -M lists
        them), with the plugin each is bound to and its MPTCP_INFO counters."""
        daemon = self._daemon
        try:
            listed = await daemon.kernel.list_connections()
            subflows = await daemon.kernel.list_subflows()
        except OSError as exc:
            raise _kernel_error(exc) from None
        by_token: dict[int, list[Subflow]] = {}
        monitor = daemon.network_monitor
        for sf in subflows:
            iface = monitor.get_interface(sf.ifindex) if sf.ifindex else None
            by_token.setdefault(sf.token, []).append(Subflow(
                local_address=str(sf.laddr.ip), local_port=sf.laddr.port,
                remote_address=str(sf.raddr.ip), remote_port=sf.raddr.port,
                interface=iface.name if iface is not None else None, ifindex=sf.ifindex,
                backup=sf.backup, backup_remote=sf.backup_remote, state=_tcp_state(sf.state),
                initial=sf.initial, local_id=sf.local_id, remote_id=sf.remote_id))
        bindings = daemon.dispatcher.bindings
        return [Connection(
            token=c.token, server_side=c.server_side, plugin=bindings.get(c.token),
            local_address=str(c.laddr.ip), local_port=c.laddr.port,
            remote_address=str(c.raddr.ip), remote_port=c.raddr.port,
            state=_tcp_state(c.state), fallback=c.fallback, info=dict(c.info),
            subflows=by_token.get(c.token, []),
        ) for c in listed]

    @varlinkmethod(return_parameter="endpoints")
    async def ListEndpoints(self) -> list[Endpoint]:
        """The in-kernel path manager's endpoints, each with the plugin that
        created it (null for one mptcpd did not create)."""
        daemon = self._daemon
        try:
            infos = await daemon.pm.kpm_dump_addrs()
        except OSError as exc:
            raise _kernel_error(exc) from None
        owners = daemon.commands.owners
        endpoints = []
        for info in infos:
            iface = (daemon.network_monitor.get_interface(info.ifindex)
                     if info.ifindex else None)
            addr = info.address
            endpoints.append(Endpoint(
                id=info.id, address=str(addr.ip) if addr is not None else "",
                port=addr.port if addr is not None else 0, flags=flag_names(info.flags),
                interface=iface.name if iface is not None else None,
                ifindex=info.ifindex, owner=owners.owner(info.id, addr)))
        return endpoints

    @varlinkmethod(return_parameter="limits")
    async def GetLimits(self) -> Limits:
        """The in-kernel path manager's limits."""
        try:
            limits = await self._daemon.pm.kpm_get_limits()
        except OSError as exc:
            raise _kernel_error(exc) from None
        return Limits(subflows=limits.subflows, add_addr_accepted=limits.rcv_add_addrs)

    @varlinkmethod(return_parameter="record", delay_generator=False)
    async def Monitor(self) -> AsyncIterator[MonitorRecord]:
        """Every kernel event as the daemon decoded it and every command the
        daemon sent with the kernel's answer, in order, until the client hangs
        up (call with more).  The first record (kind started) tells that the
        client is subscribed.  A client that does not keep up is dropped."""
        hub = self._daemon.monitor
        if self._subscriber is not None:
            hub.unsubscribe(self._subscriber)
        subscriber = self._subscriber = hub.subscribe(self._abort)
        unwatch = (self._watch_hangup(lambda: hub.unsubscribe(subscriber))
                   if self._watch_hangup is not None else lambda: None)
        send = self._send
        try:
            yield {"kind": "started"}
            records = subscriber.records
            while True:
                while not records:
                    if subscriber.ended:
                        raise LastResult({"kind": "end"})
                    subscriber.wake.clear()
                    await subscriber.wake.wait()
                if send is None:
                    item = records.popleft()
                    yield command_record(*item) if type(item) is tuple else event_record(item)
                    continue
                # What is waiting goes in one write (the library would
                # write and wait for each record in turn, one per loop turn,
                # and fall behind a burst of events).
                sent = None
                for _ in range(min(len(records), MONITOR_BATCH)):
                    item = records.popleft()
                    record = command_record(*item) if type(item) is tuple else event_record(item)
                    sent = send({"parameters": {"record": record}, "continues": True})
                if sent is not None:
                    try:
                        await sent
                    except OSError:  # the client is gone
                        raise LastResult({"kind": "end"}) from None
        finally:
            unwatch()
            hub.unsubscribe(subscriber)

    # -- write methods: root and CAP_NET_ADMIN only ---------------------------------

    def _authorize(self, method: str, arguments: dict[str, Any]) -> None:
        """Refuse a peer that is neither root nor holds CAP_NET_ADMIN; log
        each call with the peer's uid and pid."""
        shown = ", ".join(f"{k}={v}" for k, v in arguments.items() if v is not None)
        if not self._peer.may_write():
            log.warning("Control socket: %s(%s) refused to %s: neither root nor "
                        "CAP_NET_ADMIN.", method, shown, self._peer)
            raise PermissionDenied(method=method)
        log.info("Control socket: %s(%s) by %s.", method, shown, self._peer)

    async def _command(self, send: Callable[[], asyncio.Future[Any]]) -> Any:
        """Send a command through the path manager (its checks: a wrong
        argument is InvalidArgument) and answer with the kernel's result."""
        try:
            future = send()
        except ValueError as exc:
            raise InvalidArgument(reason=str(exc)) from None
        except OSError as exc:
            raise _kernel_error(exc) from None
        try:
            return await future
        except OSError as exc:
            raise _kernel_error(exc) from None

    @varlinkmethod
    async def SetBackup(self, *, token: int, local_address: str, local_port: int,
                        remote_address: str, remote_port: int, backup: bool) -> None:
        """Set or clear the backup priority of a subflow (the peer gets
        MP_PRIO); userspace path manager."""
        self._authorize("SetBackup", {"token": token, "local": f"{local_address}:{local_port}",
                                      "remote": f"{remote_address}:{remote_port}",
                                      "backup": backup})
        laddr = _sockaddr(local_address, local_port)
        raddr = _sockaddr(remote_address, remote_port)
        await self._command(lambda: self._daemon.pm.set_backup(token, laddr, raddr, backup))

    @varlinkmethod
    async def AddSubflow(self, *, token: int, local_address: str, local_port: int,
                         remote_address: str, remote_port: int, local_id: int = 0,
                         remote_id: int = 0, backup: bool = False) -> None:
        """Open a subflow of connection token from local to remote (port 0:
        any); userspace path manager."""
        self._authorize("AddSubflow", {"token": token,
                                       "local": f"{local_address}:{local_port}",
                                       "remote": f"{remote_address}:{remote_port}",
                                       "local_id": local_id, "remote_id": remote_id,
                                       "backup": backup})
        laddr = _sockaddr(local_address, local_port)
        raddr = _sockaddr(remote_address, remote_port)
        await self._command(lambda: self._daemon.pm.add_subflow(
            token, local_id, remote_id, laddr, raddr, backup))

    @varlinkmethod
    async def RemoveSubflow(self, *, token: int, local_address: str, local_port: int,
                            remote_address: str, remote_port: int) -> None:
        """Close a subflow of connection token; userspace path manager."""
        self._authorize("RemoveSubflow", {"token": token,
                                          "local": f"{local_address}:{local_port}",
                                          "remote": f"{remote_address}:{remote_port}"})
        laddr = _sockaddr(local_address, local_port)
        raddr = _sockaddr(remote_address, remote_port)
        await self._command(lambda: self._daemon.pm.remove_subflow(token, laddr, raddr))

    @varlinkmethod(return_parameter="port")
    async def Announce(self, *, token: int, address_id: int, address: str,
                       port: int = 0) -> int:
        """Announce a local address to the peer of connection token (ADD_ADDR),
        listening on it first (port 0: the kernel picks one, returned);
        userspace path manager."""
        self._authorize("Announce", {"token": token, "address_id": address_id,
                                     "address": address, "port": port})
        addr = _sockaddr(address, port)
        announced = await self._command(
            lambda: self._daemon.pm.add_addr(addr, address_id, token))
        return int(announced.port) if announced is not None else port

    @varlinkmethod
    async def Withdraw(self, *, token: int, address_id: int,
                       address: str | None = None) -> None:
        """Withdraw the announced local address address_id from connection
        token (RM_ADDR; with the address, its listener is released);
        userspace path manager."""
        self._authorize("Withdraw", {"token": token, "address_id": address_id,
                                     "address": address})
        addr = _sockaddr(address, 0) if address is not None else None
        await self._command(lambda: self._daemon.pm.remove_addr(addr, address_id, token))

    @varlinkmethod(return_parameter="id")
    async def AddEndpoint(self, *, address: str, port: int = 0, id: int = 0,
                          flags: list[str] | None = None,
                          interface: str | None = None) -> int:
        """Add an in-kernel path manager endpoint (id 0: the daemon's ID
        manager picks one, returned); its owner is "control"."""
        self._authorize("AddEndpoint", {"address": address, "port": port, "id": id,
                                        "flags": ",".join(flags or ()),
                                        "interface": interface})
        daemon = self._daemon
        addr = _sockaddr(address, port)
        bits = 0
        names = dict(ADDR_FLAG_NAMES)
        for name in flags or ():
            if name not in names:
                raise InvalidArgument(reason=f"unknown endpoint flag {name!r}")
            bits |= names[name]
        ifindex = 0
        if interface:
            ifindex = _ifindex(daemon, interface)
        if not id:
            id = daemon.id_manager.get_id(SockAddr(addr.ip))
            if not id:
                raise InvalidArgument(reason="no address ID left")
        args = (addr, id, bits, ifindex)
        await self._command(lambda: daemon.pm.kpm_add_addr(*args))
        daemon.commands.owners.record("kpm_add_addr", args, CONTROL_OWNER)
        return id

    @varlinkmethod
    async def RemoveEndpoint(self, *, id: int) -> None:
        """Remove the in-kernel path manager endpoint id."""
        self._authorize("RemoveEndpoint", {"id": id})
        daemon = self._daemon
        await self._command(lambda: daemon.pm.kpm_remove_addr(id))
        daemon.commands.owners.record("kpm_remove_addr", (id,), CONTROL_OWNER)

    @varlinkmethod
    async def SetLimits(self, *, subflows: int | None = None,
                        add_addr_accepted: int | None = None) -> None:
        """Set the in-kernel path manager's limits (one left out is kept)."""
        self._authorize("SetLimits", {"subflows": subflows,
                                      "add_addr_accepted": add_addr_accepted})
        limits = KernelLimits(rcv_add_addrs=add_addr_accepted, subflows=subflows)
        await self._command(lambda: self._daemon.pm.kpm_set_limits(limits))

    @varlinkmethod(return_parameter="interfaces")
    def ListInterfaces(self) -> list[InterfaceStatus]:
        """Every interface the network monitor tracks (loopback aside), with
        its addresses and the policy's decision on each."""
        monitor = self._daemon.network_monitor
        result = []
        for iface, denied, addrs in monitor.decisions():
            addresses = []
            for addr, filtered in addrs:
                state = (monitor.address_state(addr)
                         if denied is None and filtered is None else None)
                addresses.append(InterfaceAddress(str(addr.ip),
                                                  state.value if state else None, filtered))
            flags = iface.addr_flags
            result.append(InterfaceStatus(
                index=iface.index, name=iface.name, operstate=iface.operstate,
                carrier=iface.carrier, up=iface.is_up, running=iface.is_running,
                denied=denied,
                addr_flags=None if flags is None else flag_names(flags),
                addresses=addresses))
        return result


# -- the protocol ----------------------------------------------------------------------


class _ControlProtocol(VarlinkInterfaceServerProtocol):
    """asyncvarlink's server protocol, bounded (see the module docstring)."""

    def __init__(self, server: "ControlServer", peer: Peer, sock: socket.socket) -> None:
        registry = VarlinkInterfaceRegistry()
        registry.register_interface(VarlinkServiceInterface(
            "mptcpd", "mptcpd", mptcpd.__version__,
            "https://github.com/multipath-tcp/mptcpd", registry))
        self.interface = ControlInterface(server.daemon, peer, self.abort,
                                          self.watch_hangup, self.send_message)
        registry.register_interface(self.interface)
        super().__init__(registry)
        self.server = server
        self.peer = peer
        self.sock = sock
        self._watches: list[Callable[[], None]] = []  # watch_hangup's stops
        self._buffer = bytearray()  # a message's start, its NUL not yet received
        self._skipping = False  # in a refused message, up to its NUL
        self._pending = 0  # replies queued and not yet written
        self._dropped = False

    def message_received(self, data: bytes, fds: FileDescriptorArray | None) -> None:
        """Frame the messages here (the library would buffer a message of
        any size): complete ones go on to the library, a partial one waits
        here up to :data:`MAX_MESSAGE` bytes; a longer one is answered with
        ``InvalidMessage`` and skipped up to its NUL."""
        parts = data.split(b"\0")
        complete: list[bytes] = []
        buffer = self._buffer
        for part in parts[:-1]:
            if self._skipping:
                self._skipping = False  # the end of the refused message
            elif len(buffer) + len(part) > MAX_MESSAGE:
                buffer.clear()
                self._refuse_oversized()
            else:
                complete.append(bytes(buffer) + part if buffer else part)
                buffer.clear()
        tail = parts[-1]
        if tail and not self._skipping:
            if len(buffer) + len(tail) > MAX_MESSAGE:
                buffer.clear()
                self._skipping = True
                self._refuse_oversized()
            else:
                buffer += tail
        if complete:
            super().message_received(b"\0".join(complete) + b"\0", fds)

    def _refuse_oversized(self) -> None:
        log.warning("Control socket: a message of more than %d bytes from %s; skipped.",
                    MAX_MESSAGE, self.peer)
        self.send_error(InvalidMessage(reason=f"message longer than {MAX_MESSAGE} bytes"))

    def error_received(self, err: Exception, data: bytes,
                       fds: FileDescriptorArray | None) -> None:
        reason = "not JSON" if isinstance(err, ValueError) else str(err)
        log.debug("Control socket: bad message from %s: %s", self.peer, err)
        self.send_error(InvalidMessage(reason=reason))

    def send_message(self, obj: Any, fds: list[int] | None = None,
                     autoclose: bool = True) -> asyncio.Future[None]:
        future = super().send_message(obj, fds, autoclose)
        if future.done():  # not sent: the client has gone
            if not future.cancelled():
                future.exception()
            return future
        self._pending += 1
        future.add_done_callback(self._sent)
        if self._pending > MAX_PENDING_REPLIES and not self._dropped:
            self._dropped = True
            self.server.daemon.stats.clients_dropped += 1
            log.warning("Control socket: %s left %d replies unread; dropped.",
                        self.peer, self._pending)
            self.abort()
        return future

    def _sent(self, future: asyncio.Future[None]) -> None:
        self._pending -= 1
        if not future.cancelled():
            future.exception()  # retrieved: a broken pipe is the client's leaving

    def abort(self) -> None:
        """Drop the client at once, whatever it has not read."""
        self._dropped = True
        transport = self._transport
        if transport is not None:
            transport.abort()

    def watch_hangup(self, on_hangup: Callable[[], None]) -> Callable[[], None]:
        """Call ``on_hangup`` when the client hangs up, while a streaming
        call runs (the library does not read then: one call at a time);
        returns the function that stops watching."""
        sock, loop = self.sock, asyncio.get_running_loop()
        fd = sock.fileno()
        watching = True

        def stop() -> None:
            nonlocal watching
            if watching:
                watching = False
                loop.remove_reader(fd)

        def readable() -> None:
            try:
                data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            stop()  # data: a call for later (a varlink client waits; never spin)
            if not data:
                on_hangup()

        loop.add_reader(fd, readable)
        self._watches.append(stop)
        return stop

    def connection_lost(self, exc: Exception | None) -> None:
        for stop in self._watches:  # before the socket is closed
            stop()
        self._watches.clear()
        self.server.clients.discard(self)
        self.interface.connection_lost()
        super().connection_lost(exc)


# -- the server --------------------------------------------------------------------------


class ControlServer:
    """The control socket at ``path``, serving ``daemon``."""

    def __init__(self, daemon: "Daemon", path: Path) -> None:
        self.daemon = daemon
        self.path = path
        self.clients: set[_ControlProtocol] = set()
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
            protocol = _ControlProtocol(self, peer, conn)
            self.clients.add(protocol)
            VarlinkTransport(loop, conn, conn, protocol, {"peer": peer})

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
    "INTERFACE",
    "INTERFACE_FILE",
    "ControlInterface",
    "ControlServer",
    "Peer",
    "Stats",
    "default_socket_path",
    "make_server",
    "namespace_socket_path",
    "start_server",
    "socket_path",
]

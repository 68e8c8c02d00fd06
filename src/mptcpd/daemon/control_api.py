"""The ``io.mptcpd`` varlink interface and its protocol.

:class:`ControlInterface` (the methods and their types) on
:mod:`asyncvarlink`'s server protocol, bounded (:class:`ControlProtocol`;
the limits are described in :mod:`mptcpd.daemon.control`).  The daemon
imports this module when the first client connects to the control socket
(:meth:`mptcpd.daemon.control.ControlServer._accept`), not at startup.
"""

# No "from __future__ import annotations": asyncvarlink reads the
# annotations of the interface's methods and types as objects.

import asyncio
import dataclasses
import errno
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
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
from mptcpd.daemon.control import (
    EVENT_NAMES,
    INTERFACE,
    MAX_MESSAGE,
    MAX_PENDING_REPLIES,
    MONITOR_BATCH,
    ControlServer,
    Peer,
    Subscriber,
    result_name,
)
from mptcpd.errors import NotReady
from mptcpd.netlink.pm_codec import Limits as KernelLimits
from mptcpd.types import AddrFlags, SockAddr

if TYPE_CHECKING:
    from mptcpd.daemon.app import Daemon

log = logging.getLogger(__name__)


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
        # A subflow belongs to the connection of its token.  The kernel lists
        # token 0 for every connection whose token is not set yet or already
        # released (under a connection flood): such a subflow is given only
        # to a token-0 connection with its addresses, not to all of them.
        by_token: dict[int | tuple[SockAddr, SockAddr], list[Subflow]] = {}
        monitor = daemon.network_monitor
        for sf in subflows:
            iface = monitor.get_interface(sf.ifindex) if sf.ifindex else None
            key = sf.token or (sf.laddr.unmapped(), sf.raddr.unmapped())
            by_token.setdefault(key, []).append(Subflow(
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
            subflows=by_token.get(c.token or (c.laddr.unmapped(), c.raddr.unmapped()), []),
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


class ControlProtocol(VarlinkInterfaceServerProtocol):
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


def serve(server: ControlServer, peer: Peer, sock: socket.socket,
          loop: asyncio.AbstractEventLoop) -> ControlProtocol:
    """Serve one accepted client of ``server`` on ``sock``: its protocol."""
    protocol = ControlProtocol(server, peer, sock)
    VarlinkTransport(loop, sock, sock, protocol, {"peer": peer})
    return protocol


__all__ = [
    "ControlInterface",
    "ControlProtocol",
    "MonitorRecord",
    "command_record",
    "event_record",
    "serve",
]

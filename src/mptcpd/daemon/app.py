"""The daemon's lifecycle: startup, the event loop, shutdown.

Startup is deterministic::

    kernel check → network monitor (link and address dumps) → wait for the
    ``mptcp_pm`` family → ID sync (endpoint dump) → load and init plugins →
    join ``mptcp_pm_events`` → ``pm_ready`` → replay the monitor's state to
    plugins → ``READY=1``

so plugins are loaded before any event reaches them, and the addresses that
exist at startup reach them exactly once (with ``existing``), whichever of
the kernel's answers comes first: the C daemon leaves both to a race.

Shutdown on SIGINT or SIGTERM: ``STOPPING=1``, stop reading events, plugin
exits in reverse priority order, wait (up to :data:`DRAIN_TIMEOUT`) for the
kernel's answers to the commands they sent, close listeners and sockets,
exit 0.
SIGHUP reloads the configuration (C dies of it): see :meth:`Daemon.reload`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Any, Protocol, TypeVar

from mptcpd import events as ev
from mptcpd import hookspecs
from mptcpd.config import Config, ConfigError, log_config, reload_config
from mptcpd.daemon.control import (
    CommandRecorder,
    ControlServer,
    MonitorHub,
    Stats,
    start_server,
)
from mptcpd.daemon.dispatch import Dispatcher
from mptcpd.daemon.lock import AlreadyRunning, NamespaceLock
from mptcpd.daemon.network_manager import warn_if_clashing
from mptcpd.daemon.network import NetworkFeed, RtnlSource
from mptcpd.daemon.systemd import Notifier
from mptcpd.errors import KernelError, NotReady
from mptcpd.log import Tally
from mptcpd.netlink.diag import (
    MptcpConnection,
    MptcpSubflow,
    find_mptcp_connections,
    find_mptcp_subflows,
    fully_established,
    list_mptcp_connections,
    list_mptcp_subflows,
)
from mptcpd.netlink.family import FamilyWatcher
from mptcpd.netlink.genl_commands import CommandChannel
from mptcpd.netlink.genl_events import EventReader
from mptcpd.netlink.sysctl import check_kernel, kernel_path_manager
from mptcpd.plugins.loader import PluginLoadError, load_plugins
from mptcpd.plugins.registry import PluginRegistry
from mptcpd.pm.id_manager import IdManager
from mptcpd.pm.listener_manager import ListenerManager
from mptcpd.pm.network_monitor import NetworkMonitor
from mptcpd.pm.policy import Policy
from mptcpd.pm.path_manager import PathManager
from mptcpd.types import NotifyFlags, SockAddr

log = logging.getLogger(__name__)

PLUGIN_LOAD_FAILED = "Unable to load path manager plugins."
#: How long shutdown may take before what is left is cancelled.
SHUTDOWN_TIMEOUT = 10.0
#: How long shutdown waits for the answers to the commands of plugin_exit.
DRAIN_TIMEOUT = 2.0
#: Resyncs after lost events, under a flood that keeps overrunning the
#: event socket: the first two passes in a row run at once, each further
#: one waits this long after the previous one ended, twice as long each
#: time up to RESYNC_MAX_GAP; passes are in a row when one starts within
#: RESYNC_STREAK_WINDOW of the previous one's end.  (A pass lists every
#: connection and scans every event waiting: under a connection flood on
#: 2 CPUs ~0.1-0.2 s of CPU in which no event is handled.  Run at each
#: overrun, the passes took about half of the daemon's CPU in a 30 s flood
#: and made it lose more.)
RESYNC_MIN_GAP = 0.25
RESYNC_MAX_GAP = 4.0
RESYNC_STREAK_WINDOW = 5.0
#: A pass waiting out its gap starts at once when the event socket lost
#: nothing for this long and no event waits to be handled: the flood is
#: over, and the plugins learn what they missed now, not up to
#: RESYNC_MAX_GAP later.
RESYNC_QUIET = 0.05


_K = TypeVar("_K")
_V = TypeVar("_V")


class StartupError(Exception):
    """Startup failed; the message has been logged and the exit status is 1."""


class Channel(Protocol):
    """What the daemon needs of the command channel (:class:`CommandChannel`)."""

    closed_tokens: Callable[[], Collection[int]] | None

    @property
    def is_open(self) -> bool: ...
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def drain(self, timeout: float) -> bool: ...
    def submit(self, name: str, args: tuple[Any, ...] = (),
               token: int | None = None) -> asyncio.Future[Any]: ...
    def forget(self, token: int) -> int: ...
    def hold(self) -> None: ...
    def release(self) -> None: ...


class Watcher(Protocol):
    """What the daemon needs of the family watcher (:class:`FamilyWatcher`)."""

    timeout: float
    on_failure: Callable[[str], object] | None

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class Reader(Protocol):
    """What the daemon needs of the event reader (:class:`EventReader`).
    One that also has ``follow`` (:meth:`EventReader.follow`) is followed
    rather than iterated."""

    overrun_pending: bool
    closing: set[int]
    #: overruns seen, and datagrams received and not yet handed out.
    overruns: int
    backlog: int

    def closed_tokens(self) -> set[int]: ...
    def fill(self) -> int: ...
    def queued_tokens(self, before: int, skip: Collection[int] = ()) -> dict[int, int]: ...
    def close_after(self, token: int, index: int) -> None: ...
    def queued_subflows_established(self, before: int) -> list[ev.SubflowEstablished]: ...
    async def open(self) -> None: ...
    def close(self) -> None: ...
    def batches(self) -> AsyncIterator[list[ev.Event]]: ...


@dataclasses.dataclass(frozen=True)
class KernelSide:
    """How the daemon reaches the kernel.  The defaults are the real thing;
    lifecycle tests pass doubles (the real parts are tested against the
    kernel on their own)."""

    #: whether MPTCP is available (logs why not).
    check_kernel: Callable[[], bool] = check_kernel
    #: the kernel's path manager's name, for the log.
    path_manager: Callable[[], str | None] = kernel_path_manager
    #: ``(max_queue=, on_failure=)`` -> the command channel.
    channel: Callable[..., Channel] = CommandChannel
    #: ``(on_appeared, on_vanished)`` -> the ``mptcp_pm`` family watcher.
    watcher: Callable[..., Watcher] = FamilyWatcher
    #: ``(on_overrun=)`` -> a reader of ``mptcp_pm`` events.
    reader: Callable[..., Reader] = EventReader
    #: the network monitor's rtnetlink side (None: its own).
    rtnl: Callable[[], RtnlSource] | None = None
    #: the live MPTCP connections (sock_diag).
    list_connections: Callable[[], Awaitable[Sequence[MptcpConnection]]] = (
        list_mptcp_connections)
    #: tokens -> those of their MPTCP connections that are live (sock_diag
    #: lookups: a dump can miss a live connection under churn).
    find_connections: Callable[[Collection[int]], Awaitable[Sequence[MptcpConnection]]] = (
        find_mptcp_connections)
    #: the subflows of the live MPTCP connections (sock_diag).
    list_subflows: Callable[[], Awaitable[Sequence[MptcpSubflow]]] = list_mptcp_subflows
    #: (laddr, raddr, ifindex) paths -> those of their subflows that are
    #: live (sock_diag lookups, as ``find_connections``).
    find_subflows: Callable[[Collection[tuple[SockAddr, SockAddr, int]]],
                            Awaitable[Sequence[MptcpSubflow]]] = find_mptcp_subflows
    #: logs whether NetworkManager manages the endpoints too.
    network_manager: Callable[[], object] = warn_if_clashing


class Daemon:
    """Owns every resource of one daemon run on one asyncio loop.

    :param config: the merged configuration.
    :param notifier: systemd notifications (the real ``sd_notify`` by default).
    :param kernel: how the daemon reaches the kernel (the real sockets by default).
    """

    def __init__(self, config: Config, notifier: Notifier | None = None,
                 kernel: KernelSide | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.kernel = kernel = kernel if kernel is not None else KernelSide()
        self.registry = PluginRegistry()
        self.channel = kernel.channel(max_queue=config.command_queue_size,
                                      on_failure=self._channel_failed)
        self.network_monitor = NetworkMonitor(
            config.notify_flags, route_wait_timeout=config.check_route_timeout,
            policy=Policy.from_config(config), readdress=True)
        self.network_feed = NetworkFeed(self.network_monitor, kernel.rtnl,
                                        on_failure=self._fail, batch=self.channel)
        self.id_manager = IdManager()
        self.listener_manager = ListenerManager()
        #: Counters for the control socket.
        self.stats = Stats()
        self.commands = CommandRecorder(self.channel, self.stats, self._current_plugin)
        #: The control socket's monitor clients.
        self.monitor = MonitorHub(self.stats)
        self.commands.on_result = self.monitor.command
        self.pm = PathManager(
            self.commands, config=config,
            network_monitor=self.network_monitor, id_manager=self.id_manager,
            listener_manager=self.listener_manager,
        )
        self.dispatcher = Dispatcher(self.registry, self.pm)
        self.pm.observe_creations(self.dispatcher.subflow_creation)
        self.watcher = kernel.watcher(self._family_appeared, self._family_vanished)
        self.watcher.on_failure = self._fail
        self.reader: Reader | None = None
        self.lock = NamespaceLock()
        self._plugins_loaded = False
        self._serving = False  #: READY=1 was sent
        self._stop = asyncio.Event()
        self._fatal: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._init_task: asyncio.Task[None] | None = None
        self._replayed = False
        self._resync_task: asyncio.Task[None] | None = None
        self._resync_again = False  #: an overrun came during the resync
        #: Resync passes in a row (see RESYNC_MIN_GAP), and the loop time the
        #: last one ended.
        self._resync_streak = 0
        self._resync_ended = -math.inf
        self._resync_waiting = False  #: a pass waits out its gap
        self.control: ControlServer | None = None
        #: Event-socket overruns of the readers closed so far.
        self.events_lost = 0
        self._channel_closing: asyncio.Task[None] | None = None

    # -- running ------------------------------------------------------------

    async def serve(self) -> int:
        """Run until a stop signal; return the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        try:
            try:
                await self.startup()
            except StartupError:
                await self.shutdown()
                return 1
            await self._stop.wait()
            await self.shutdown()
            return 1 if self._fatal else 0
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def stop(self, sig: int | None = None) -> None:
        if sig is not None and not self._stop.is_set():
            log.debug("\nTerminating %s", sys.argv[0])
        self._stop.set()

    def _fail(self, message: str) -> None:
        """A fatal error after startup (plugin loading): log it and stop, exit 1."""
        log.error("%s", message)
        self._fatal = message
        self._stop.set()

    def _channel_failed(self, reason: str) -> None:
        self._fail(f"The mptcp_pm command channel failed: {reason}")

    def _sighup(self) -> None:
        try:
            self.reload()
        except Exception:
            log.exception("Configuration reload failed.")

    def reload(self) -> bool:
        """Read the configuration file again and apply what can change at
        run time, keeping connections, bindings and endpoint ownership.

        The notify flags, the ``check_route`` timeout, the global address
        flags and the interface policy take effect: the network monitor
        withdraws what the new policy refuses and reports what it now lets
        through, then every plugin gets ``policy_changed``.  The settings of
        :data:`~mptcpd.config.RESTART_FIELDS` are logged and kept.  A file
        that cannot be used changes nothing (logged with the reason).
        Returns whether the new configuration was applied.
        """
        path = self.config.config_file
        log.info('Reloading the configuration from "%s".', path)
        if self._serving:
            self.notifier.notify("RELOADING=1\nMONOTONIC_USEC="
                                 f"{time.monotonic_ns() // 1000}")
        try:
            try:
                new = reload_config(self.config)
            except ConfigError as err:
                log.error("Configuration reload refused: %s The running configuration "
                          "stays.", err)
                return False
            self.config = new
            self.pm.set_config(new)
            monitor = self.network_monitor
            monitor.notify_flags = NotifyFlags(new.notify_flags)
            monitor.routes.timeout = float(new.check_route_timeout)
            monitor.set_policy(Policy.from_config(new))
            if self._plugins_loaded:
                self.registry.broadcast(hookspecs.policy_changed, pm=self.pm)
            log_config(new)
            log.info('Configuration reloaded from "%s".', path)
            return True
        finally:
            if self._serving:
                self.notifier.notify("READY=1")

    # -- startup -----------------------------------------------------------

    async def startup(self) -> None:
        if not self.kernel.check_kernel():
            log.error("Required kernel MPTCP support not available.")
            raise StartupError
        try:
            self.lock.acquire()
        except AlreadyRunning as exc:
            log.error("%s", exc)
            raise StartupError from exc
        except OSError as exc:  # no runtime directory: run on, unguarded
            log.warning("Unable to lock %s: %s; another mptcpd in this network "
                        "namespace would not be noticed.", self.lock.path, exc.strerror)
        self._start_control()
        pm_type = self.kernel.path_manager()
        if pm_type:
            log.info("The kernel uses the %s path manager.", pm_type)
        if pm_type != "userspace":  # endpoints are in use: NetworkManager may add its own
            self.kernel.network_manager()
        self.notifier.status("Waiting for the mptcp_pm generic netlink family")
        try:
            await self.network_feed.start()
        except Exception as exc:
            log.debug("network monitor: %s", exc)
            log.error("Unable to create network monitor.")
            raise StartupError from exc
        try:
            await self.watcher.start()
        except Exception as exc:
            log.debug("family watch: %s", exc)
            log.error('Unable to watch or request "mptcp_pm" generic netlink family.')
            raise StartupError from exc
        # The daemon waits for the family as long as it takes (as the C one
        # does); tell systemd it is up by then, so that a Type=notify unit is
        # not killed for a slow start.  READY=1 follows again when it is.
        loop = asyncio.get_running_loop()
        loop.call_later(self.watcher.timeout, self._still_waiting)

    def _still_waiting(self) -> None:
        if not self.pm.ready and not self._stop.is_set():
            self._serving = True
            self.notifier.ready("Waiting for the mptcp_pm generic netlink family")

    def _family_appeared(self, family_id: int) -> None:
        self.pm.set_ready(True)
        previous = self._init_task
        # A cancelled attempt (the family vanished meanwhile) is not done
        # until it has run once more: start a new one, which waits for it.
        if previous is None or previous.done() or previous.cancelling():
            self._init_task = self._spawn(self._complete_init(previous), "initialisation")

    def _family_vanished(self) -> None:
        self.pm.set_ready(False)
        if self._init_task is not None:
            self._init_task.cancel()
        self._close_reader()
        # The channel is bound to the family's id: open it anew when the
        # family comes back.
        self._channel_closing = self._spawn(self.channel.close(),
                                            "closing the command channel")
        self.notifier.status("Waiting for the mptcp_pm generic netlink family")
        self.dispatcher.pm_not_ready()

    async def _complete_init(self, previous: asyncio.Task[None] | None = None) -> None:
        """Once the family is there: ID sync, plugins, event join, ready.

        ``previous`` is the attempt a vanishing family cancelled: it ends,
        and the channel it was using is closed, before this one starts.
        """
        for task in (previous, self._channel_closing):
            if task is not None and not task.done():
                await asyncio.wait([task])
        try:
            if not self.channel.is_open:
                await self.channel.open()
            await self._sync_ids()
            if not self._plugins_loaded:
                self._load_plugins()
            await self._join_events()
        except PluginLoadError as exc:
            self._fail(str(exc))
            return
        except NotReady:
            # The family vanished while we were at it: wait for it again.
            log.debug("mptcp_pm vanished during the initialisation")
            return
        except Exception:
            log.exception("Unable to complete the path manager initialisation.")
            self._fail("initialisation failed")
            return
        self.dispatcher.pm_ready()
        if not self._replayed:
            # No await between the replay and the subscription: no address
            # change can slip in between, and none is reported twice.
            self._replayed = True
            self.network_monitor.replay(self.dispatcher.broadcast)
            self.network_monitor.register(self.dispatcher.broadcast)
            # Connections that were open before the daemon started get their
            # path manager too (C never learns of them).
            await self._reconcile_connections(at_startup=True)
        names = ", ".join(p.name for p in self.registry.plugins)
        default = self.dispatcher.default.name if self.dispatcher.default else "none"
        self._serving = True
        self.notifier.ready(f"Managing MPTCP paths; plugins: {names}; default: {default}")
        log.info("mptcpd ready: plugins %s; default path manager %s.", names, default)

    async def _sync_ids(self) -> None:
        try:
            endpoints = await self.pm.kpm_dump_addrs()
        except KernelError:
            log.error("Unable to synchronize ID manager with kernel.")
            return
        for info in endpoints:
            if info.address is None:
                continue
            if self.id_manager.map_id(info.address, info.id):
                log.debug("ID sync: %d | %s", info.id, info.address.ip)
            else:
                log.error("ID sync failed: %d | %s", info.id, info.address.ip)

    def _load_plugins(self) -> None:
        config = self.config
        try:
            load_plugins(self.registry, config.plugin_dir, config.load_plugins)
        except PluginLoadError as exc:
            log.error("%s", exc)
            raise PluginLoadError(PLUGIN_LOAD_FAILED) from exc
        self._plugins_loaded = True
        loaded = {plugin.name for plugin in self.registry.plugins}
        for group in config.plugin_groups:
            if group.name not in loaded:
                log.warning('Group [plugin %s] at line %d of "%s" ignored: no plugin "%s" '
                            "is loaded.", group.name, group.line, group.path, group.name)
        self.dispatcher.default = self.registry.select_default(config.path_manager)
        self.registry.init_all(self.pm)

    async def _join_events(self) -> None:
        reader = self.kernel.reader(on_overrun=self._overrun)
        try:
            await reader.open()
        except Exception as exc:
            log.debug("event reader: %s", exc)
            log.warning("Unable to register handler for mptcp_pm_events multicast messages")
            return
        self.reader = reader
        # Commands of connections whose CLOSED is read but not yet handled
        # are dropped, not sent.
        self.channel.closed_tokens = reader.closed_tokens
        # The reader hands each list of events over from its socket's
        # callback (EventReader.follow); one that cannot is iterated.
        follow = getattr(reader, "follow", None)
        if follow is None:
            self._spawn(self._read_events(reader), "mptcp_pm events")
        else:
            follow(self._dispatch_events, functools.partial(self._reader_ended, reader))

    def _dispatch_events(self, batch: list[ev.Event]) -> None:
        """Dispatch a list of events in order; the commands their hooks
        submit leave together once all are dispatched (the channel is held)."""
        dispatch, forget = self.dispatcher.dispatch, self.channel.forget
        counts, monitors, publish = (self.stats.events, self.monitor.subscribers,
                                     self.monitor.publish)
        closed = ev.ConnectionClosed
        channel = self.channel
        channel.hold()
        try:
            for event in batch:
                kind = type(event)
                counts[kind] += 1
                if monitors:
                    publish(event)
                try:
                    dispatch(event)
                except Exception:  # never let one event end the reader
                    log.exception("Unable to dispatch %r", event)
                if kind is closed:  # after its hook: drop what is unsent
                    forget(event.token)  # type: ignore[union-attr]
        finally:
            channel.release()

    async def _read_events(self, reader: Reader) -> None:
        """Dispatch every event of a reader that is iterated."""
        try:
            async for batch in reader.batches():
                self._dispatch_events(batch)
        except Exception as exc:
            self._reader_ended(reader, exc)
        else:
            self._reader_ended(reader, None)

    def _reader_ended(self, reader: Reader, exc: BaseException | None) -> None:
        """The daemon exits 1 if the reader ever stops while it is still the
        daemon's (it is closed when the family vanishes or at shutdown, and
        then ends quietly)."""
        if exc is not None:
            log.debug("mptcp_pm event reader", exc_info=exc)
        if self.reader is reader and not self._stop.is_set():
            reason = "stopped" if exc is None else f"failed: {exc!r}"
            self._fail(f"The mptcp_pm event reader {reason}.")

    def _overrun(self, count: int) -> None:
        """Events were lost: resynchronise what the kernel lets us.  Events
        lost while a resync runs may postdate its listings: it runs once
        more when it is done (however many overruns came meanwhile)."""
        if self._resync_task is None or self._resync_task.done():
            self._resync_again = False
            self._resync_task = self._spawn(self._resync(), "resync after lost events")
        elif self._resync_waiting:
            pass  # the pass about to start covers what was lost until then
        elif not self._resync_again:
            self._resync_again = True
            log.info("Events were lost during the resync: it will run again.")

    async def _resync(self) -> None:
        """The endpoint IDs from an endpoint dump, the connections and their
        subflows from sock_diag: plugins get the ``new_connection``,
        ``connection_closed``, ``new_subflow`` and ``subflow_closed`` they
        missed."""
        loop = asyncio.get_running_loop()
        while True:
            await self._resync_gap(loop)
            await self._sync_ids()
            done = await self._reconcile_connections(at_startup=False)
            self._resync_ended = loop.time()
            if not self._resync_again:
                break
            self._resync_again = False  # one more pass covers every overrun so far
        if done and self.reader is not None:
            self.reader.overrun_pending = False

    async def _resync_gap(self, loop: asyncio.AbstractEventLoop) -> None:
        """Before a resync pass: wait out the gap a flood of lost events
        calls for (:meth:`_resync_wait`), events being handled meanwhile,
        or less once the flood is over (:meth:`_until_quiet`); whatever is
        lost until the pass starts, it covers."""
        wait = self._resync_wait(loop.time())
        if wait > 0:
            log.info("Events are still being lost: the next resync waits %.2f s.", wait)
            self._resync_waiting = True
            try:
                await self._until_quiet(loop, loop.time() + wait)
            finally:
                self._resync_waiting = False

    async def _until_quiet(self, loop: asyncio.AbstractEventLoop, end: float) -> None:
        """Wait until loop time ``end``, or until the event socket has lost
        nothing for :data:`RESYNC_QUIET` s with no event waiting to be
        handled (a flood over: the gap has done its job)."""
        reader = self.reader
        seen = reader.overruns if reader is not None else 0
        while (left := end - loop.time()) > 0:
            await asyncio.sleep(min(RESYNC_QUIET, left))
            reader = self.reader
            if reader is None:
                continue
            if reader.overruns == seen and not reader.backlog and left > RESYNC_QUIET:
                log.debug("The event socket is quiet again: resynchronising now.")
                return
            seen = reader.overruns

    def _resync_wait(self, now: float) -> float:
        """How long a resync pass starting at loop time ``now`` waits
        (:data:`RESYNC_MIN_GAP`); it counts in the streak of passes."""
        since = now - self._resync_ended
        self._resync_streak = self._resync_streak + 1 if since < RESYNC_STREAK_WINDOW else 1
        if self._resync_streak < 3:
            return 0.0
        gap = min(RESYNC_MIN_GAP * 2.0 ** (self._resync_streak - 3), RESYNC_MAX_GAP)
        return max(0.0, gap - since)

    async def _reconcile_connections(self, at_startup: bool) -> bool:
        """Bring the connection bindings and their subflows in line with
        sock_diag's listings (at startup, or after lost events); False when
        the connections could not be listed (logged)."""
        when = "at startup" if at_startup else "after lost events"
        # Every event the kernel sent so far is now read, handled or lost.
        reader = self.reader
        mark = reader.fill() if reader is not None else 0
        self.dispatcher.begin_reconcile()
        try:
            connections = await self.kernel.list_connections()
        except Exception as exc:  # any failure must end the recording
            self.dispatcher.reconcile_cancel()
            log.warning("Unable to list the MPTCP connections %s: %s", when, exc)
            return False
        connections = await self._found_unlisted(reader, connections, when)
        subflows: Sequence[MptcpSubflow] | None
        try:
            subflows = await self.kernel.list_subflows()
        except Exception as exc:  # the connections are reconciled all the same
            log.warning("Unable to list the MPTCP subflows %s: %s", when, exc)
            subflows = None
        else:
            subflows = await self._found_unlisted_subflows(subflows, connections, when)
        closing: Collection[int] = ()
        stale: Sequence[ev.SubflowEstablished] = ()
        if reader is not None and reader is self.reader:
            closing = self._close_the_unlisted(reader, mark, {c.token for c in connections})
            if subflows is not None:
                # Older than the listings: those it no longer shows are gone.
                stale = reader.queued_subflows_established(mark)
        # No events exist for a connection that fell back to TCP, nor for
        # one listed with token 0: the kernel lists that for a connection
        # whose token is not set yet or already released (seen under a
        # connection flood: SYN_SENT from 0.0.0.0, and CLOSE), and no
        # event carries it.  Established means what the kernel's
        # ESTABLISHED means: a client connection's socket is established
        # from its handshake on, the connection only once data was
        # exchanged (before, the kernel refuses subflows: ENOTCONN).
        established = fully_established(connections, subflows)
        self.dispatcher.reconcile({
            c.token: (c.laddr, c.raddr, c.server_side, c.token in established)
            for c in connections if not c.fallback and c.token
        }, at_startup=at_startup, subflows=subflows, closing=closing, stale=stale)
        if at_startup:
            log.info("%d MPTCP connection(s) existed at startup.", len(connections))
        else:
            log.info("Resynchronised %s: %d live MPTCP connection(s).",
                     when, len(connections))
        return True

    async def _found_unlisted(self, reader: Reader | None,
                              connections: Sequence[MptcpConnection],
                              when: str) -> Sequence[MptcpConnection]:
        """``connections`` and those the dump did not show that the kernel
        still has, of the bound connections whose CLOSED is not waiting:
        each looked up by its token.  The dump walks the kernel's token
        table in slices and, under churn, can miss a live connection, which
        would then be taken for closed (and adopted again at the next
        resync, its plugin's state lost).  (Not those not bound yet whose
        events wait: finding them would take another scan of the reader's
        backlog, 65 ms for a full one, in every pass; such a connection,
        missed, is adopted at the next resync.)"""
        listed = {c.token for c in connections}
        closing = reader.closing if reader is not None else set()
        unlisted = [t for t in self.dispatcher.bindings if t not in listed and t not in closing]
        found = await self._look_up("connections", self.kernel.find_connections, unlisted,
                                    when)
        if not found:
            return connections
        return [*connections, *(c for c in found if c.token not in listed)]

    async def _found_unlisted_subflows(self, subflows: Sequence[MptcpSubflow],
                                       connections: Sequence[MptcpConnection],
                                       when: str) -> Sequence[MptcpSubflow]:
        """``subflows`` and those the dump did not show that the kernel still
        has, of the joined subflows plugins were told of on the live
        connections: each looked up by its addresses (as
        :meth:`_found_unlisted` looks connections up)."""
        live = {c.token for c in connections}
        listed = {(sf.token, sf.laddr.unmapped(), sf.raddr.unmapped()) for sf in subflows}
        unlisted = [(laddr, raddr, ifindex)
                    for token, laddr, raddr, ifindex in self.dispatcher.joined()
                    if token in live
                    and (token, laddr.unmapped(), raddr.unmapped()) not in listed]
        found = await self._look_up("subflows", self.kernel.find_subflows, unlisted, when)
        if not found:
            return subflows
        return [*subflows, *(sf for sf in found
                             if (sf.token, sf.laddr.unmapped(), sf.raddr.unmapped())
                             not in listed)]

    @staticmethod
    async def _look_up(what: str, find: Callable[[list[_K]], Awaitable[Sequence[_V]]],
                       unlisted: list[_K], when: str) -> Sequence[_V]:
        """What ``find`` finds live of the ``unlisted`` (``what``: MPTCP
        connections or subflows); none when the lookups fail (logged: then
        the dump's word stands)."""
        if not unlisted:
            return ()
        try:
            found = await find(unlisted)
        except Exception as exc:
            log.warning("Unable to look up the MPTCP %s %s: %s", what, when, exc)
            return ()
        if found:
            log.debug("%d live MPTCP %s the listing %s missed.", len(found), what, when)
        return found

    @staticmethod
    def _close_the_unlisted(reader: Reader, mark: int, listed: set[int]) -> Collection[int]:
        """The connections whose events, sent before the listing began, still
        wait in the reader, and that the listing no longer shows: unless
        their CLOSED waits too, it was lost, and the reader hands one out
        after their last event (their commands are dropped meanwhile, their
        plugin is not left bound to a dead connection).  Returns every
        connection whose CLOSED is now on its way, to be left to it."""
        reader.fill()  # the CLOSEDs sent while the listing was taken
        tally = Tally(log)
        for token, index in reader.queued_tokens(mark, listed).items():
            tally.log(logging.WARNING, "connection(s) closed while events were lost, "
                      "their waiting events handled before their close",
                      "Connection %08x closed while events were lost; its "
                      "waiting events are handled, then its close.", token)
            reader.close_after(token, index)
        tally.summary()
        return reader.closing

    def _close_reader(self) -> None:
        reader, self.reader = self.reader, None
        self.channel.closed_tokens = None
        if reader is not None:
            self.events_lost += getattr(reader, "overruns", 0)
            reader.close()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("%s failed: %s", task.get_name(), exc, exc_info=exc)

    # -- the control socket ------------------------------------------------

    def _start_control(self) -> None:
        """Serve the control socket (``control-socket``); the daemon runs on
        without it when it cannot be made."""
        self.control = start_server(self)

    def _current_plugin(self) -> str | None:
        plugin = self.registry.current
        return plugin.name if plugin is not None else None

    def _stop_control(self) -> None:
        control, self.control = self.control, None
        if control is not None:
            control.close()

    # -- shutdown ----------------------------------------------------------

    async def shutdown(self) -> None:
        self.notifier.stopping()
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                await self._shutdown()
        except TimeoutError:
            log.error("Shutdown took longer than %.0f s; cancelled what was left.",
                      SHUTDOWN_TIMEOUT)

    async def _shutdown(self) -> None:
        self._stop_control()
        self._close_reader()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.network_monitor.unregister(self.dispatcher.broadcast)
        if self._plugins_loaded:
            self.registry.exit_all(self.pm)
            # What plugin_exit sent reaches the kernel before the socket closes.
            if self.pm.ready and self.channel.is_open:
                if not await self.channel.drain(DRAIN_TIMEOUT):
                    log.warning("Commands sent at exit were not all answered within "
                                "%.0f s.", DRAIN_TIMEOUT)
        self.listener_manager.destroy()
        await self.network_feed.close()
        await self.watcher.stop()
        await self.channel.close()
        self.lock.release()


def main(config: Config) -> int:
    """Run the daemon; the process's exit status."""
    try:
        return asyncio.run(Daemon(config).serve())
    except Exception:
        log.exception("Main event loop failed.")
        return 1

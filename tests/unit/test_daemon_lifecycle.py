"""The daemon's lifecycle in-process, with its kernel side replaced by doubles.

The real parts (command channel, event reader, family watcher, rtnetlink
monitor, sock_diag) are tested against the kernel on their own; here the
order of startup and shutdown, READY, signals during startup and during a
pending command, and the draining of the commands plugins send at exit are
checked without root or a kernel.  Waits count loop turns, not time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import pytest

from mptcpd import events as ev
from mptcpd.config import Config, PluginGroup
from mptcpd.daemon import app
from mptcpd.daemon.app import Daemon, KernelSide
from mptcpd.daemon.lock import AlreadyRunning, NamespaceLock
from mptcpd.daemon.systemd import Notifier
from mptcpd.errors import NotReady
from mptcpd.netlink.diag import MptcpConnection, MptcpSubflow
from mptcpd.netlink.rtnl_monitor import AddressMessage, LinkMessage, RouteLookup
from mptcpd.types import IFF_RUNNING, IFF_UP, NotifyFlags, Token

#: What happened, in order: the doubles, the plugin and systemd write here.
ORDER: list[str] = []

PLUGIN = '''
from mptcpd.plugin import PluginInfo, hookimpl
from tests.unit.test_daemon_lifecycle import ORDER

PLUGIN = PluginInfo(name="rec")


@hookimpl
def plugin_init(pm):
    ORDER.append("plugin_init")


@hookimpl
def pm_ready(pm):
    ORDER.append("pm_ready")


@hookimpl
def new_local_address(interface, addr):
    ORDER.append(f"new_local_address {addr}")


@hookimpl
def delete_local_address(interface, addr):
    ORDER.append(f"delete_local_address {addr}")


@hookimpl
def policy_changed(pm):
    ORDER.append(f"policy_changed {pm.config.addr_flags!r}")


@hookimpl
def plugin_exit(pm):
    ORDER.append("plugin_exit")
    future = pm.kpm_remove_addr(1)

    def done(f):
        error = f.exception()
        ORDER.append("exit command answered" if error is None else f"exit command {error!r}")

    future.add_done_callback(done)
'''


async def until_set(closed: asyncio.Event) -> AsyncIterator[Any]:
    """A stream with nothing in it that ends when ``closed`` is set."""
    await closed.wait()
    return
    yield


class FakeChannel:
    """The command channel: records what is submitted; the test (or
    ``answers``) settles it."""

    def __init__(self, max_queue: int, on_failure: Callable[[str], None]) -> None:
        self.closed_tokens: Callable[[], Collection[int]] | None = None
        self.requests: list[tuple[str, asyncio.Future[Any]]] = []
        self.answers: dict[str, Any] = {"kpm_dump_addrs": [], "kpm_remove_addr": None}
        self._open = False

    @property
    def is_open(self) -> bool:
        return self._open

    async def open(self) -> None:
        ORDER.append("channel open")
        self._open = True

    async def close(self) -> None:
        ORDER.append("channel close")
        self._open = False
        for _, future in self.requests:
            if not future.done():
                future.set_exception(NotReady("command channel closed"))

    async def drain(self, timeout: float) -> bool:
        pending = [f for _, f in self.requests if not f.done()]
        if not pending:
            return True
        _, left = await asyncio.wait(pending, timeout=timeout)
        return not left

    def hold(self) -> None:
        pass

    def release(self) -> None:
        pass

    def submit(self, name: str, args: tuple[Any, ...] = (),
               token: int | None = None) -> asyncio.Future[Any]:
        ORDER.append(f"submit {name}")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.requests.append((name, future))
        if name in self.answers:
            # The kernel answers some loop turns later (later than the
            # daemon's own shutdown steps take, without waiting for it).
            self._answer_later(future, self.answers[name], turns=50)
        return future

    def _answer_later(self, future: asyncio.Future[Any], value: Any, turns: int) -> None:
        if future.done():
            return
        if turns:
            asyncio.get_running_loop().call_soon(self._answer_later, future, value, turns - 1)
        else:
            future.set_result(value)

    def forget(self, token: int) -> int:
        return 0


class FakeWatcher:
    """The family watcher: the test says when ``mptcp_pm`` appears."""

    instances: list[FakeWatcher] = []

    def __init__(self, on_appeared: Callable[[int], object],
                 on_vanished: Callable[[], object]) -> None:
        self.on_appeared = on_appeared
        self.on_vanished = on_vanished
        self.on_failure: Callable[[str], object] | None = None
        self.timeout = 3600.0
        FakeWatcher.instances.append(self)

    async def start(self) -> None:
        ORDER.append("watcher start")

    async def stop(self) -> None:
        ORDER.append("watcher stop")


class FakeReader:
    """The event reader: no events unless the test puts some."""

    def __init__(self, on_overrun: Callable[[int], None] | None = None) -> None:
        self.overrun_pending = False
        self.overruns = 0
        self.backlog = 0
        self._closed = asyncio.Event()
        self.closing: set[int] = set()

    def closed_tokens(self) -> set[int]:
        return self.closing

    def fill(self) -> int:
        return 0

    def queued_tokens(self, before: int, skip: Collection[int] = ()) -> dict[int, int]:
        return {}

    def close_after(self, token: int, index: int) -> None:
        raise AssertionError("nothing is queued")

    def queued_subflows_established(self, before: int) -> list[Any]:
        return []

    async def open(self) -> None:
        ORDER.append("reader open")

    def close(self) -> None:
        ORDER.append("reader close")
        self._closed.set()

    def batches(self) -> AsyncIterator[Any]:
        return until_set(self._closed)


class FakeRtnl:
    """The rtnetlink side: one ready interface with one address."""

    def __init__(self) -> None:
        self._closed = asyncio.Event()

    async def open(self) -> None:
        ORDER.append("rtnl open")

    async def dump_links(self) -> list[LinkMessage]:
        ORDER.append("rtnl links")
        return [LinkMessage(2, "eth0", IFF_UP | IFF_RUNNING, operstate="UP", carrier=True)]

    async def dump_addresses(self) -> list[AddressMessage]:
        ORDER.append("rtnl addresses")
        from ipaddress import ip_address
        return [AddressMessage(2, ip_address("192.0.2.1"), 24)]

    def events(self) -> AsyncIterator[Any]:
        return until_set(self._closed)

    async def lookup_default_route(self, family: int, ifindex: int) -> RouteLookup:
        return RouteLookup(error=errno.ENODATA)

    def close(self) -> None:
        ORDER.append("rtnl close")
        self._closed.set()


async def no_connections() -> list[MptcpConnection]:
    ORDER.append("list connections")
    return []


async def no_subflows() -> list[MptcpSubflow]:
    return []


async def none_found(tokens: Collection[int]) -> list[MptcpConnection]:
    return []


async def no_subflow_found(paths: Collection[Any]) -> list[MptcpSubflow]:
    return []


def record_state(state: str) -> bool:
    ORDER.append(state.replace("\n", " "))
    return True


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    return make_daemon(tmp_path)


def make_daemon(tmp_path: Path) -> Daemon:
    """A real daemon with the doubles as its kernel side, its plugin, lock
    and control socket in ``tmp_path``."""
    ORDER.clear()
    FakeWatcher.instances.clear()
    directory = tmp_path / "plugins"
    directory.mkdir()
    directory.chmod(0o755)
    (directory / "rec.py").write_text(PLUGIN)
    (directory / "rec.py").chmod(0o644)
    config = Config(plugin_dir=str(directory), load_plugins=("rec",), path_manager="rec",
                    notify_flags=NotifyFlags.EXISTING,
                    control_socket=str(tmp_path / "control"))  # never the host's /run

    def kernel_ok() -> bool:
        ORDER.append("check kernel")
        return True

    kernel = KernelSide(check_kernel=kernel_ok, path_manager=lambda: "kernel",
                        channel=FakeChannel, watcher=FakeWatcher, reader=FakeReader,
                        rtnl=FakeRtnl, list_connections=no_connections,
                        list_subflows=no_subflows, find_connections=none_found,
                        find_subflows=no_subflow_found,
                        network_manager=lambda: None)
    daemon = Daemon(config, notifier=Notifier(send=record_state), kernel=kernel)
    daemon.lock = NamespaceLock(tmp_path / "mptcpd.lock")  # never the host's /run
    return daemon


async def until(condition: Callable[[], bool], turns: int = 10_000) -> None:
    """Let the loop run until ``condition`` holds (bounded in loop turns)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"not reached in {turns} loop turns; so far: {ORDER}")


def ready() -> bool:
    return any(s.startswith("READY=1") and "Managing" in s for s in ORDER)


def index(entry: str) -> int:
    return ORDER.index(entry)


def test_the_network_feed_holds_the_command_channel_per_datagram(daemon: Daemon) -> None:
    """What plugins submit for one rtnetlink datagram leaves together, in
    the turn that read it (the feed holds the channel meanwhile)."""
    assert daemon.network_feed.batch is daemon.channel


async def test_startup_order_ready_and_shutdown_order(daemon: Daemon) -> None:
    serving = asyncio.create_task(daemon.serve())
    await until(lambda: "watcher start" in ORDER)
    assert ORDER[:5] == ["check kernel", "STATUS=Waiting for the mptcp_pm generic netlink "
                         "family", "rtnl open", "rtnl links", "rtnl addresses"]
    assert "plugin_init" not in ORDER  # nothing is loaded before the family is there
    FakeWatcher.instances[0].on_appeared(23)
    await until(ready)
    # Family → channel → ID sync → plugins → events joined → pm_ready →
    # the existing address replayed → connections adopted → READY.
    steps = ["watcher start", "channel open", "submit kpm_dump_addrs", "plugin_init",
             "reader open", "pm_ready", "new_local_address 192.0.2.1",
             "list connections"]
    assert [index(s) for s in steps] == sorted(index(s) for s in steps)
    assert index("list connections") < next(i for i, s in enumerate(ORDER)
                                             if s.startswith("READY=1 STATUS=Managing"))
    daemon.stop()
    assert await serving == 0
    # STOPPING → events stop → plugin_exit → its command answered → sockets closed.
    steps = ["STOPPING=1 STATUS=Stopping", "reader close", "plugin_exit", "submit kpm_remove_addr",
             "exit command answered", "rtnl close", "watcher stop", "channel close"]
    assert [index(s) for s in steps] == sorted(index(s) for s in steps)


async def test_sigterm_while_waiting_for_the_family(daemon: Daemon) -> None:
    serving = asyncio.create_task(daemon.serve())
    await until(lambda: "watcher start" in ORDER)
    os.kill(os.getpid(), signal.SIGTERM)  # the daemon's handler, not pytest's death
    assert await asyncio.wait_for(serving, 10) == 0
    assert "plugin_init" not in ORDER and "plugin_exit" not in ORDER
    assert ORDER[-4:] == ["STOPPING=1 STATUS=Stopping", "rtnl close", "watcher stop", "channel close"]
    # The handlers are gone with the daemon: SIGTERM is the default again.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


async def test_stop_while_a_startup_command_is_unanswered(daemon: Daemon) -> None:
    serving = asyncio.create_task(daemon.serve())
    await until(lambda: "watcher start" in ORDER)
    channel = daemon.channel
    assert isinstance(channel, FakeChannel)
    channel.answers.clear()  # the endpoint dump never gets an answer
    FakeWatcher.instances[0].on_appeared(23)
    await until(lambda: "submit kpm_dump_addrs" in ORDER)
    daemon.stop()
    assert await asyncio.wait_for(serving, 10) == 0
    assert "plugin_init" not in ORDER and not ready()
    [(name, future)] = channel.requests
    assert name == "kpm_dump_addrs" and future.done()


async def test_commands_sent_at_exit_that_get_no_answer_delay_shutdown_boundedly(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(app, "DRAIN_TIMEOUT", 0.05)
    serving = asyncio.create_task(daemon.serve())
    await until(lambda: "watcher start" in ORDER)
    FakeWatcher.instances[0].on_appeared(23)
    await until(ready)
    channel = daemon.channel
    assert isinstance(channel, FakeChannel)
    channel.answers.pop("kpm_remove_addr")
    caplog.set_level(logging.WARNING, "mptcpd")
    daemon.stop()
    assert await asyncio.wait_for(serving, 10) == 0
    assert "Commands sent at exit were not all answered" in caplog.text
    # The unanswered command failed when the channel closed.
    assert ORDER[-1].startswith("exit command NotReady")


async def broken() -> AsyncIterator[Any]:
    await asyncio.sleep(0)
    raise RuntimeError("reader bug")
    yield


class BrokenReader(FakeReader):
    """An event reader whose stream breaks."""

    def batches(self) -> AsyncIterator[Any]:
        return broken()


async def test_an_event_reader_that_breaks_makes_the_daemon_exit_1(
        daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    """Never deaf: systemd restarts a daemon that exits 1."""
    daemon.kernel = dataclasses.replace(daemon.kernel, reader=BrokenReader)
    serving = asyncio.create_task(daemon.serve())
    await until(lambda: "watcher start" in ORDER)
    FakeWatcher.instances[0].on_appeared(23)
    assert await asyncio.wait_for(serving, 10) == 1
    assert "The mptcp_pm event reader failed: RuntimeError('reader bug')." in caplog.text
    assert "plugin_exit" in ORDER  # a clean shutdown all the same


class FollowedReader(FakeReader):
    """An event reader that hands its events over from its callback
    (EventReader.follow): the test calls what the daemon gave it."""

    last: FollowedReader | None = None

    def __init__(self, on_overrun: Callable[[int], None] | None = None) -> None:
        super().__init__(on_overrun)
        self.follower: tuple[Callable[[list[Any]], None],
                             Callable[[BaseException | None], None]] | None = None
        FollowedReader.last = self

    def follow(self, on_batch: Callable[[list[Any]], None],
               on_end: Callable[[BaseException | None], None]) -> None:
        ORDER.append("reader follow")
        self.follower = (on_batch, on_end)

    def batches(self) -> AsyncIterator[Any]:
        raise AssertionError("a reader that can be followed is not iterated")


async def test_a_followed_event_reader_feeds_the_dispatcher_and_its_end_is_exit_1(
        daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    """The daemon follows a reader that can be followed: each list is
    dispatched with the command channel held (what its hooks submit leaves
    together at the release), and the reader failing ends the daemon."""
    from ipaddress import ip_address

    from mptcpd.types import SockAddr

    daemon.kernel = dataclasses.replace(daemon.kernel, reader=FollowedReader)
    serving = await serve_until_ready(daemon)
    reader = FollowedReader.last
    assert reader is not None and reader.follower is not None
    on_batch, on_end = reader.follower
    channel = daemon.channel
    channel.hold = lambda: ORDER.append("hold")  # type: ignore[method-assign]
    channel.release = lambda: ORDER.append("release")  # type: ignore[method-assign]
    dispatch = daemon.dispatcher.dispatch

    def recorded(event: ev.Event) -> None:
        ORDER.append(f"dispatch {type(event).__name__} {daemon.dispatcher.bindings}")
        dispatch(event)

    daemon.dispatcher.dispatch = recorded  # type: ignore[method-assign]
    laddr = SockAddr(ip_address("192.0.2.1"), 40000)
    raddr = SockAddr(ip_address("192.0.2.2"), 5201)
    ORDER.clear()
    on_batch([ev.ConnectionCreated(Token(0x1234), laddr, raddr),
              ev.ConnectionClosed(Token(0x1234))])
    assert ORDER == ["hold", "dispatch ConnectionCreated {}",
                     "dispatch ConnectionClosed {4660: 'rec'}", "release"]
    assert daemon.stats.events[ev.ConnectionCreated] == 1
    assert daemon.stats.events[ev.ConnectionClosed] == 1
    assert daemon.dispatcher.bindings == {}
    on_end(RuntimeError("reader bug"))
    assert await asyncio.wait_for(serving, 10) == 1
    assert "The mptcp_pm event reader failed: RuntimeError('reader bug')." in caplog.text


async def test_a_network_feed_that_cannot_recover_makes_the_daemon_exit_1(
        daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    serving = asyncio.create_task(daemon.serve())
    await until(lambda: "watcher start" in ORDER)
    FakeWatcher.instances[0].on_appeared(23)
    await until(ready)
    assert daemon.network_feed.on_failure is not None
    daemon.network_feed.on_failure("network monitor stopped: rtnetlink socket lost")
    assert await asyncio.wait_for(serving, 10) == 1
    assert "network monitor stopped: rtnetlink socket lost" in caplog.text


async def test_a_second_daemon_in_the_namespace_exits_1(
        daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    holder = NamespaceLock(daemon.lock.path)
    holder.acquire()
    try:
        assert await asyncio.wait_for(daemon.serve(), 10) == 1
    finally:
        holder.release()
    assert f"mptcpd is already running in this network namespace (pid {os.getpid()})" \
        in caplog.text
    assert "watcher start" not in ORDER  # nothing opened


def test_the_lock_is_exclusive_and_goes_with_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "run" / "mptcpd.lock"
    first, second = NamespaceLock(path), NamespaceLock(path)
    first.acquire()
    with pytest.raises(AlreadyRunning) as caught:
        second.acquire()
    assert caught.value.pid == os.getpid()
    first.release()
    second.acquire()
    second.release()


async def test_a_family_watcher_that_stops_makes_the_daemon_exit_1(
        daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    serving = asyncio.create_task(daemon.serve())
    await until(lambda: "watcher start" in ORDER)
    watcher = FakeWatcher.instances[0]
    assert watcher.on_failure is not None
    watcher.on_failure("nlctrl notification socket failed: [Errno 5] Input/output error")
    assert await asyncio.wait_for(serving, 10) == 1
    assert "nlctrl notification socket failed" in caplog.text


async def test_the_family_vanishing_and_reappearing_during_initialisation(
        daemon: Daemon) -> None:
    """The family goes and comes back (module reload) while the endpoint
    dump is unanswered, within one loop turn: the daemon ends ready with an
    event reader and an open channel, not with the channel the vanishing
    closed."""
    serving = asyncio.create_task(daemon.serve())
    await until(lambda: "watcher start" in ORDER)
    channel = daemon.channel
    assert isinstance(channel, FakeChannel)
    answers = dict(channel.answers)
    channel.answers.clear()
    watcher = FakeWatcher.instances[0]
    watcher.on_appeared(23)
    await until(lambda: "submit kpm_dump_addrs" in ORDER)
    channel.answers.update(answers)
    watcher.on_vanished()
    watcher.on_appeared(24)
    await until(ready)
    await until(lambda: ORDER.count("channel close") == 1)
    for _ in range(100):  # whatever the vanishing scheduled has run
        await asyncio.sleep(0)
    assert channel.is_open
    assert daemon.reader is not None
    assert daemon.pm.ready
    assert ORDER.count("plugin_init") == 1
    daemon.stop()
    assert await asyncio.wait_for(serving, 10) == 0


async def test_sighup_reloads_the_configuration(daemon: Daemon, tmp_path: Path) -> None:
    """SIGHUP: systemd hears RELOADING=1, the policy withdraws what it now
    denies, plugins get policy_changed with the new configuration, READY=1;
    a bad file changes nothing, and the daemon runs on."""
    path = tmp_path / "mptcpd.conf"
    path.write_text("[core]\n")
    path.chmod(0o644)
    daemon.config = dataclasses.replace(daemon.config, config_file=str(path))
    serving = asyncio.create_task(daemon.serve())
    await until(lambda: "watcher start" in ORDER)
    FakeWatcher.instances[0].on_appeared(23)
    await until(ready)
    del ORDER[:]
    path.write_text("[core]\naddr-flags=subflow\n[interfaces]\ndeny=eth*\n")
    os.kill(os.getpid(), signal.SIGHUP)
    await until(lambda: any(s.startswith("policy_changed") for s in ORDER))
    await until(lambda: ORDER[-1] == "READY=1")
    assert ORDER[0].startswith("RELOADING=1 MONOTONIC_USEC=")
    assert ORDER[1:] == ["delete_local_address 192.0.2.1",
                         "policy_changed <AddrFlags.SUBFLOW: 2>", "READY=1"]
    assert daemon.pm.config.deny == ("eth*",) and daemon.network_monitor.interfaces() == []
    del ORDER[:]
    path.write_text("[interfaces]\ndeny=a/b\n")
    os.kill(os.getpid(), signal.SIGHUP)
    await until(lambda: ORDER[-1:] == ["READY=1"])
    assert [s for s in ORDER if not s.startswith("RELOADING")] == ["READY=1"]
    assert daemon.pm.config.deny == ("eth*",)
    daemon.stop()
    assert await serving == 0


async def test_settings_for_a_plugin_that_is_not_loaded_are_warned_about(
        daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    groups = (PluginGroup("rec", "/etc/m.conf", 3, (("x", "1", 4),)),
              PluginGroup("fullmeh", "/etc/m.conf", 7, ()))
    daemon.config = dataclasses.replace(daemon.config, plugin_groups=groups)
    serving = asyncio.create_task(daemon.serve())
    await until(lambda: "watcher start" in ORDER)
    FakeWatcher.instances[0].on_appeared(23)
    await until(ready)
    daemon.stop()
    assert await serving == 0
    assert [r.getMessage() for r in caplog.records if "[plugin" in r.getMessage()] == [
        'Group [plugin fullmeh] at line 7 of "/etc/m.conf" ignored: no plugin "fullmeh" '
        "is loaded."]


async def serve_until_ready(daemon: Daemon, **kernel: Any) -> asyncio.Task[int]:
    """Serve ``daemon`` with these parts of its kernel side replaced, the
    family present; returns the serving task once READY=1 was sent."""
    daemon.kernel = dataclasses.replace(daemon.kernel, **kernel)
    serving = asyncio.create_task(daemon.serve())
    await until(lambda: "watcher start" in ORDER)
    FakeWatcher.instances[0].on_appeared(23)
    await until(ready)
    return serving


class OverrunReader(FakeReader):
    """An event reader whose overruns the test reports."""

    last: OverrunReader | None = None

    def __init__(self, on_overrun: Callable[[int], None] | None = None) -> None:
        super().__init__(on_overrun)
        assert on_overrun is not None
        self.on_overrun = on_overrun
        OverrunReader.last = self

    def overrun(self, count: int) -> None:
        self.overrun_pending = True
        self.overruns += 1
        self.on_overrun(count)


async def test_an_overrun_during_a_resync_makes_it_run_once_more(
        daemon: Daemon, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Events lost while the resync lists the connections may be about
    connections that listing missed: the resync runs again when it is done,
    once for any number of overruns meanwhile."""
    from ipaddress import ip_address

    from mptcpd.types import SockAddr

    monkeypatch.setattr(app, "RESYNC_MIN_GAP", 0.0)  # the third pass too at once

    gate = asyncio.Event()
    listings: list[int] = []
    conn = MptcpConnection(token=0x1234, laddr=SockAddr(ip_address("192.0.2.1"), 40000),
                           raddr=SockAddr(ip_address("192.0.2.2"), 5201), state=1,
                           established=True)

    async def listing() -> list[MptcpConnection]:
        listings.append(len(listings))
        if len(listings) == 1:  # at startup
            return []
        if len(listings) == 2:  # the first resync: the kernel's answer is slow
            await gate.wait()
            return []
        return [conn]  # created while events were lost again

    caplog.set_level(logging.INFO, "mptcpd")
    serving = await serve_until_ready(daemon, reader=OverrunReader, list_connections=listing)
    reader = OverrunReader.last
    assert reader is not None and listings == [0]
    reader.overrun(1)
    await until(lambda: len(listings) == 2)
    for count in (2, 3, 4):  # lost again, and again, while the listing runs
        reader.overrun(count)
    gate.set()
    await until(lambda: 0x1234 in daemon.dispatcher.bindings)
    for _ in range(100):
        await asyncio.sleep(0)
    assert listings == [0, 1, 2]  # one more pass, not three
    assert not reader.overrun_pending
    assert caplog.text.count("Events were lost during the resync: it will run again.") == 1
    assert caplog.text.count("Resynchronised after lost events") == 2
    # A later overrun starts a resync of its own.
    reader.overrun(5)
    await until(lambda: len(listings) == 4)
    daemon.stop()
    assert await asyncio.wait_for(serving, 10) == 0


async def test_connections_listed_with_token_0_are_not_adopted(
        daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    """sock_diag lists token 0 for a connection whose token is not set yet
    or already released (under a connection flood: SYN_SENT from 0.0.0.0,
    and CLOSE); no event carries it, so it is not a connection to adopt
    (it was adopted as connection 00000000, and sspi logged errors about it)."""
    from ipaddress import ip_address

    from mptcpd.types import SockAddr

    anywhere = SockAddr(ip_address("0.0.0.0"))
    server = SockAddr(ip_address("192.0.2.2"), 5201)
    listing = [MptcpConnection(token=0, laddr=anywhere, raddr=anywhere, state=2,
                               established=False),
               MptcpConnection(token=0, laddr=SockAddr(ip_address("192.0.2.1"), 40001),
                               raddr=server, state=7, established=False),
               MptcpConnection(token=0x1234, laddr=SockAddr(ip_address("192.0.2.1"), 40000),
                               raddr=server, state=1, established=True)]

    async def connections() -> list[MptcpConnection]:
        return listing

    caplog.set_level(logging.INFO, "mptcpd")
    serving = await serve_until_ready(daemon, list_connections=connections)
    assert set(daemon.dispatcher.bindings) == {0x1234}
    assert "00000000" not in caplog.text
    daemon.stop()
    assert await asyncio.wait_for(serving, 10) == 0


def missed_by_the_resync(items: list[Any], found: bool) -> tuple[
        Callable[[], Awaitable[list[Any]]], Callable[[Collection[Any]], Awaitable[list[Any]]],
        list[list[Any]]]:
    """A listing that shows ``items`` at startup and misses them at the
    resync, a lookup that finds them (if ``found``), and the lookups it was
    asked for."""
    listings: list[int] = []
    looked_up: list[list[Any]] = []

    async def listing() -> list[Any]:
        listings.append(len(listings))
        return items if len(listings) == 1 else []

    async def find(keys: Collection[Any]) -> list[Any]:
        looked_up.append(list(keys))
        return items if found else []

    return listing, find, looked_up


async def resync_once(daemon: Daemon, caplog: pytest.LogCaptureFixture,
                      known: Callable[[], bool], **kernel: Any) -> bool:
    """Serve ``daemon`` with these kernel parts; once it is ready (and
    ``known()`` holds), one overrun and its resync; then stop.  Whether
    ``known()`` still held after the resync."""
    caplog.set_level(logging.INFO, "mptcpd")
    serving = await serve_until_ready(daemon, reader=OverrunReader, **kernel)
    reader = OverrunReader.last
    assert reader is not None and known()
    reader.overrun(1)
    await until(lambda: "Resynchronised after lost events" in caplog.text)
    still = known()
    daemon.stop()
    assert await asyncio.wait_for(serving, 10) == 0
    return still


@pytest.mark.parametrize("found", [True, False])
async def test_a_bound_connection_the_dump_missed_is_looked_up_before_it_counts_as_closed(
        daemon: Daemon, caplog: pytest.LogCaptureFixture, found: bool) -> None:
    """A dump of the connections can miss a live one under churn (it walks
    the kernel's token table in slices).  A bound connection the resync's
    listing does not show is looked up by its token: found, it stays bound
    (it was taken for closed, and adopted again at the next resync, its
    plugin's state lost); not found, it closed while events were lost."""
    from ipaddress import ip_address

    from mptcpd.types import SockAddr

    conn = MptcpConnection(token=0x1234, laddr=SockAddr(ip_address("192.0.2.1"), 40000),
                           raddr=SockAddr(ip_address("192.0.2.2"), 5201), state=1,
                           established=True)
    listing, find, looked_up = missed_by_the_resync([conn], found)
    bound = await resync_once(daemon, caplog, lambda: 0x1234 in daemon.dispatcher.bindings,
                              list_connections=listing, find_connections=find)
    assert looked_up == [[0x1234]] and bound is found
    assert ("Connection 00001234 closed while events were lost." in caplog.text) is not found


@pytest.mark.parametrize("found", [True, False])
async def test_a_subflow_the_dump_missed_is_looked_up_before_it_counts_as_closed(
        daemon: Daemon, caplog: pytest.LogCaptureFixture, found: bool) -> None:
    """So are the joined subflows its plugin was told of on a live
    connection (by their addresses and interface): found, the plugin is
    not told it closed (it would open another one on its path)."""
    from ipaddress import ip_address

    from mptcpd.netlink.diag import MPTCP_SUBFLOW_FLAG_JOIN_LOC
    from mptcpd.types import SockAddr

    server = SockAddr(ip_address("192.0.2.2"), 5201)
    conn = MptcpConnection(token=0x1234, laddr=SockAddr(ip_address("192.0.2.1"), 40000),
                           raddr=server, state=1, established=True)
    join = MptcpSubflow(token=0x1234, laddr=SockAddr(ip_address("198.51.100.1"), 40001),
                        raddr=server, state=1, ifindex=3, local_id=2, remote_id=0,
                        flags=MPTCP_SUBFLOW_FLAG_JOIN_LOC)
    subflows, find, looked_up = missed_by_the_resync([join], found)

    async def connections() -> list[MptcpConnection]:
        return [conn]

    known = await resync_once(
        daemon, caplog, lambda: daemon.dispatcher.subflows(0x1234) == [(join.laddr, server)],
        list_connections=connections, list_subflows=subflows, find_subflows=find)
    assert looked_up == [[(join.laddr, server, 3)]] and known is found
    assert ("closed while events were lost" in caplog.text) is not found


def test_resyncs_in_a_row_back_off_then_start_afresh_after_a_quiet_while(
        daemon: Daemon) -> None:
    """The schedule, in loop time: under a flood that keeps overrunning the
    event socket, the first two passes in a row run at once, each further
    one waits RESYNC_MIN_GAP (0.25 s) after the previous one ended, twice as
    long each time up to RESYNC_MAX_GAP (4 s); a pass that starts
    RESYNC_STREAK_WINDOW (5 s) after the previous one's end runs at once."""
    def pass_at(start: float, end: float) -> float:
        wait = daemon._resync_wait(start)
        daemon._resync_ended = end
        return wait

    def back_to_back() -> float:
        """A pass needed as the previous one ended; it ends once it waited."""
        start = daemon._resync_ended
        wait = daemon._resync_wait(start)
        daemon._resync_ended = start + wait
        return wait

    assert pass_at(100.0, 100.2) == 0  # the first
    assert pass_at(100.2, 100.4) == 0  # lost during it: once more, at once
    assert pass_at(100.4, 100.6) == pytest.approx(0.25)
    assert pass_at(101.0, 101.2) == pytest.approx(0.5 - 0.4)  # counted from its end
    assert [back_to_back() for _ in range(4)] == pytest.approx([1.0, 2.0, 4.0, 4.0])
    quiet = daemon._resync_ended + 5.1  # longer than the window
    assert pass_at(quiet, quiet + 0.2) == 0
    assert pass_at(quiet + 0.2, quiet + 0.4) == 0


async def test_a_pass_waiting_out_its_gap_covers_what_is_lost_meanwhile(
        daemon: Daemon, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon waits the schedule's gaps (events are handled meanwhile),
    and an overrun during a wait adds no pass: the pass about to start
    covers it."""
    monkeypatch.setattr(app, "RESYNC_MIN_GAP", 0.3)
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    ends: list[float] = []

    async def listing() -> list[MptcpConnection]:
        starts.append(loop.time())
        ends.append(loop.time())
        return []

    caplog.set_level(logging.INFO, "mptcpd")
    serving = await serve_until_ready(daemon, reader=OverrunReader, list_connections=listing)
    reader = OverrunReader.last
    assert reader is not None and len(starts) == 1  # at startup
    reader.backlog = 1  # the flood goes on: events always wait
    async with asyncio.timeout(10):
        for count in range(1, 5):  # lost again as soon as each pass is done
            reader.overrun(count)
            if count >= 3:  # lost again while the pass waits
                await asyncio.sleep(0.01)
                reader.overrun(99)
            while len(ends) < count + 1:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)  # no pass for the overruns during the waits
    assert len(starts) == 5
    gaps = [b - a for a, b in zip(ends[2:], starts[3:])]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6  # waited (at least) the schedule's gaps
    assert caplog.text.count("Events are still being lost: the next resync waits") == 2
    assert "it will run again" not in caplog.text
    daemon.stop()
    assert await asyncio.wait_for(serving, 10) == 0


async def test_a_pass_waiting_out_its_gap_starts_once_the_flood_is_over(
        daemon: Daemon, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass waiting out its gap starts as soon as the event socket lost
    nothing for RESYNC_QUIET s and no event waits: the flood is over, and
    the plugins learn now what they missed (they waited up to 4 s: after a
    flood with an address flapping, fullmesh connections had one join too
    many that long)."""
    monkeypatch.setattr(app, "RESYNC_MIN_GAP", 2.0)
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def listing() -> list[MptcpConnection]:
        starts.append(loop.time())
        return []

    caplog.set_level(logging.DEBUG, "mptcpd")
    serving = await serve_until_ready(daemon, reader=OverrunReader, list_connections=listing)
    reader = OverrunReader.last
    assert reader is not None
    reader.backlog = 5
    async with asyncio.timeout(10):
        for count in (1, 2, 3):
            reader.overrun(count)
            while count < 3 and len(starts) < count + 1:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
        assert len(starts) == 3  # the third pass waits its gap: events wait
        over = loop.time()
        reader.backlog = 0  # the flood is over, its events handled
        while len(starts) < 4:
            await asyncio.sleep(0.005)
    assert starts[3] - over < 0.5  # not the 2 s gap
    assert "The event socket is quiet again: resynchronising now." in caplog.text
    daemon.stop()
    assert await asyncio.wait_for(serving, 10) == 0


@pytest.mark.parametrize(("pm_type", "checked"), [("kernel", 1), ("userspace", 0)])
async def test_networkmanager_is_looked_for_when_endpoints_are_in_use(
        daemon: Daemon, pm_type: str, checked: int) -> None:
    """The in-kernel path manager uses endpoints, which NetworkManager may
    add too: the daemon checks once at startup; not for the userspace one."""
    calls: list[None] = []
    daemon.kernel = dataclasses.replace(daemon.kernel, path_manager=lambda: pm_type,
                                        network_manager=lambda: calls.append(None))
    serving = asyncio.create_task(daemon.serve())
    await until(lambda: "watcher start" in ORDER)
    FakeWatcher.instances[0].on_appeared(23)
    await until(ready)
    daemon.stop()
    assert await serving == 0
    assert len(calls) == checked

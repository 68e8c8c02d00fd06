"""The control socket without a kernel: framing, errors, limits, the
interface description, the socket file.

The daemon is a real :class:`Daemon` that was never started (no kernel
needed to read its status); the client is a raw socket speaking varlink by
hand, so what goes over the wire is what is checked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import mptcpd
from mptcpd.config import Config, ConfigValues, load_config
from mptcpd.daemon import control
from mptcpd.daemon.app import Daemon
from mptcpd.daemon.control import ControlServer
from mptcpd.daemon.control_api import ControlInterface

TIMEOUT = 20.0


class Client:
    """A varlink client over a raw non-blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    @classmethod
    async def connect(cls, path: Path) -> Client:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, str(path))
        return cls(sock)

    async def send_raw(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def send(self, method: str, parameters: dict[str, Any] | None = None,
                   **flags: Any) -> None:
        message: dict[str, Any] = {"method": method, **flags}
        if parameters is not None:
            message["parameters"] = parameters
        await self.send_raw(json.dumps(message).encode() + b"\0")

    async def reply(self) -> dict[str, Any] | None:
        """The next reply; None at end of stream."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(TIMEOUT):
            while b"\0" not in self.buffer:
                data = await loop.sock_recv(self.sock, 65536)
                if not data:
                    return None
                self.buffer += data
        message, self.buffer = self.buffer.split(b"\0", 1)
        result: dict[str, Any] = json.loads(message)
        return result

    async def call(self, method: str, parameters: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
        await self.send(method, parameters)
        reply = await self.reply()
        assert reply is not None, "connection closed"
        return reply

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Daemon, ControlServer, Path]]:
    path = tmp_path / "run" / "control"
    daemon = Daemon(Config(control_socket=str(path)))
    server = ControlServer(daemon, path)
    server.start()
    try:
        yield daemon, server, path
    finally:
        server.close()


async def test_status_over_the_socket(served: tuple[Daemon, ControlServer, Path]) -> None:
    daemon, _, path = served
    assert stat.S_IMODE(os.stat(path).st_mode) == control.SOCKET_MODE
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    client = await Client.connect(path)
    try:
        reply = await client.call("io.mptcpd.GetStatus")
    finally:
        client.close()
    status = reply["parameters"]["status"]
    assert status["version"] == mptcpd.__version__
    assert status["ready"] is False and status["plugins"] == []
    assert status["default_plugin"] is None
    assert status["events"] == dict.fromkeys(control.EVENT_NAMES.values(), 0)
    assert status["events_lost"] == status["resyncs"] == 0
    assert status["commands"] == [] and status["connections"] == 0


async def test_counters_reach_the_status(served: tuple[Daemon, ControlServer, Path]) -> None:
    from mptcpd import events as ev
    from mptcpd.errors import KernelError, QueueFull

    daemon, _, path = served
    daemon.stats.events[ev.ConnectionCreated] += 2
    loop = asyncio.get_running_loop()
    answers = {"kpm_add_addr": KernelError("add_addr", 17, None),
               "kpm_remove_addr": None, "add_subflow": QueueFull("full")}

    class Channel:
        def submit(self, name: str, args: Any = (), token: Any = None) -> Any:
            future = loop.create_future()
            answer = answers[name]
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)
            return future

    recorder = control.CommandRecorder(Channel(), daemon.stats)
    futures = [recorder.submit(name) for name in
               ("kpm_add_addr", "kpm_remove_addr", "kpm_remove_addr", "add_subflow")]
    await asyncio.sleep(0)
    assert [f.exception() is None for f in futures] == [False, True, True, False]
    client = await Client.connect(path)
    try:
        status = (await client.call("io.mptcpd.GetStatus"))["parameters"]["status"]
    finally:
        client.close()
    assert status["events"]["created"] == 2
    assert status["commands"] == [
        {"operation": "add_subflow", "result": "queue_full", "count": 1},
        {"operation": "kpm_add_addr", "result": "EEXIST", "count": 1},
        {"operation": "kpm_remove_addr", "result": "ok", "count": 2},
    ]


async def test_the_shipped_description_is_the_implementation(
        served: tuple[Daemon, ControlServer, Path]) -> None:
    varlink = pytest.importorskip("varlink", reason="varlink is part of the test extra")
    shipped = control.INTERFACE_FILE.read_text()
    assert shipped == ControlInterface.render_interface_description()
    parsed = varlink.Interface(shipped)
    assert parsed.name == control.INTERFACE
    methods = {name for name, member in parsed.members.items()
               if isinstance(member, varlink.scanner._Method)}
    implemented = {name for name in dir(ControlInterface)
                   if getattr(getattr(ControlInterface, name), "_varlink_signature", None)}
    assert methods == implemented and "GetStatus" in methods
    # And what the socket tells varlinkctl is that same text.
    _, _, path = served
    client = await Client.connect(path)
    try:
        reply = await client.call("org.varlink.service.GetInterfaceDescription",
                                  {"interface": control.INTERFACE})
        info = await client.call("org.varlink.service.GetInfo")
    finally:
        client.close()
    assert reply["parameters"]["description"] == shipped
    assert control.INTERFACE in info["parameters"]["interfaces"]


async def test_bad_messages_get_errors_and_the_connection_goes_on(
        served: tuple[Daemon, ControlServer, Path]) -> None:
    _, _, path = served
    client = await Client.connect(path)
    try:
        await client.send_raw(b"{not json\0")
        reply = await client.reply()
        assert reply == {"error": "io.mptcpd.InvalidMessage",
                         "parameters": {"reason": "not JSON"}}
        await client.send_raw(b"[1, 2]\0")
        reply = await client.reply()
        assert reply is not None and reply["error"] == "io.mptcpd.InvalidMessage"
        reply = await client.call("io.mptcpd.NoSuchMethod")
        assert reply["error"] == "org.varlink.service.MethodNotFound"
        reply = await client.call("com.example.Nothing")
        assert reply["error"] == "org.varlink.service.InterfaceNotFound"
        reply = await client.call("io.mptcpd.GetStatus", {"unexpected": 1})
        assert reply["error"] == "org.varlink.service.InvalidParameter"
        # Still served.
        reply = await client.call("io.mptcpd.GetStatus")
        assert "status" in reply["parameters"]
    finally:
        client.close()


async def test_an_oversized_message_is_refused_and_skipped(
        served: tuple[Daemon, ControlServer, Path], caplog: pytest.LogCaptureFixture) -> None:
    _, server, path = served
    client = await Client.connect(path)
    other = await Client.connect(path)
    try:
        chunk = b" " * 65536
        with caplog.at_level(logging.WARNING):
            # Twice the limit, then the message's end and a good call.
            for _ in range(2 * control.MAX_MESSAGE // len(chunk)):
                await client.send_raw(chunk)
            await client.send_raw(b"\0")
            reply = await client.reply()
            assert reply is not None
            assert reply["error"] == "io.mptcpd.InvalidMessage"
            assert "longer than" in reply["parameters"]["reason"]
            # One refusal for the one message, and the connection goes on.
            assert "status" in (await client.call("io.mptcpd.GetStatus"))["parameters"]
        assert caplog.text.count("bytes from uid") == 1
        # A message just under the limit is read whole (and is bad JSON).
        await client.send_raw(b"{" + b" " * (control.MAX_MESSAGE - 1) + b"\0")
        reply = await client.reply()
        assert reply == {"error": "io.mptcpd.InvalidMessage",
                         "parameters": {"reason": "not JSON"}}
        # The daemon serves the others as before.
        assert "status" in (await other.call("io.mptcpd.GetStatus"))["parameters"]
    finally:
        client.close()
        other.close()


async def test_a_client_that_never_reads_is_dropped(
        served: tuple[Daemon, ControlServer, Path], caplog: pytest.LogCaptureFixture) -> None:
    daemon, server, path = served
    lazy = await Client.connect(path)
    lazy.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    other = await Client.connect(path)
    try:
        call = json.dumps({"method": "io.mptcpd.GetStatus"}).encode() + b"\0"
        with caplog.at_level(logging.WARNING):
            for _ in range(200):  # bounded: far more than the limit needs
                try:
                    await asyncio.wait_for(lazy.send_raw(call * 50), 1.0)
                except (BrokenPipeError, ConnectionResetError, TimeoutError):
                    break
                if daemon.stats.clients_dropped:
                    break
            async with asyncio.timeout(TIMEOUT):
                while not daemon.stats.clients_dropped:
                    await asyncio.sleep(0.01)
        assert "replies unread; dropped" in caplog.text
        assert "status" in (await other.call("io.mptcpd.GetStatus"))["parameters"]
        async with asyncio.timeout(TIMEOUT):
            while len(server.clients) != 1:
                await asyncio.sleep(0.01)
    finally:
        lazy.close()
        other.close()


async def test_a_stale_socket_is_replaced_and_a_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "control"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    daemon = Daemon(Config(control_socket=str(path)))
    first = ControlServer(daemon, path)
    first.start()
    try:
        second = ControlServer(daemon, path)
        with pytest.raises(OSError) as info:
            second.start()
        assert info.value.errno == __import__("errno").EADDRINUSE
        assert path.exists()
    finally:
        first.close()
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        ControlServer(daemon, path).start()
    assert path.read_text() == "not a socket"


async def test_a_control_interface_that_cannot_be_loaded_closes_the_socket_only(
        served: tuple[Daemon, ControlServer, Path], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The interface is imported at the first client: when that fails (a
    broken installation), the error is logged, the socket is closed and
    removed, and the daemon runs on without it."""
    _, server, path = served
    monkeypatch.delitem(sys.modules, "mptcpd.daemon.control_api", raising=False)
    monkeypatch.setitem(sys.modules, "mptcpd.daemon.control_api", None)  # ImportError
    client = await Client.connect(path)
    try:
        try:
            reply = await client.reply()
        except ConnectionResetError:  # the listening socket closed under it
            reply = None
        assert reply is None  # no answer
    finally:
        client.close()
    assert not path.exists() and server.clients == set()
    assert f"Unable to serve the control socket {path}" in caplog.text
    server.close()  # again, at shutdown: harmless


async def test_the_daemon_serves_and_removes_its_socket(tmp_path: Path) -> None:
    path = tmp_path / "ctl"
    daemon = Daemon(Config(control_socket=str(path)))
    daemon._start_control()
    assert daemon.control is not None and path.exists()
    daemon._stop_control()
    assert daemon.control is None and not path.exists()
    disabled = Daemon(Config(control_socket=""))
    disabled._start_control()
    assert disabled.control is None


def test_the_control_socket_key(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "mptcpd.conf"
    conf.write_text("[core]\ncontrol-socket=/run/x/ctl\n")
    assert load_config(ConfigValues(), str(conf)).control_socket == "/run/x/ctl"
    conf.write_text("[core]\ncontrol-socket=\n")
    config = load_config(ConfigValues(), str(conf))
    assert config.control_socket == "" and control.socket_path(config) is None
    conf.write_text("[core]\ncontrol-socket=relative/ctl\n")
    config = load_config(ConfigValues(), str(conf))
    assert config.control_socket is None
    assert 'Ignoring control-socket "relative/ctl"' in caplog.text
    monkeypatch.setenv("MPTCPD_STATE_DIR", str(tmp_path / "state"))
    assert control.socket_path(config) == tmp_path / "state" / "control"


def test_peer_rights(monkeypatch: pytest.MonkeyPatch) -> None:
    assert control.Peer(os.getpid(), 0, 0).may_write()
    me = control.effective_capabilities(os.getpid())
    assert control.Peer(os.getpid(), 65534, 65534).may_write() == (control.CAP_NET_ADMIN in me)
    assert not control.Peer(2**30, 65534, 65534).may_write()  # no such process


async def test_endpoint_owners_follow_the_plugin_through_its_callbacks() -> None:
    """A command sent from a done-callback that a plugin added in a hook is
    that plugin's (asyncio runs the callback in the hook's context)."""
    from mptcpd.plugin import PluginInfo
    from mptcpd.plugins.registry import PluginRegistry
    from mptcpd.types import SockAddr

    registry = PluginRegistry()
    loop = asyncio.get_running_loop()
    stats = control.Stats()

    class Channel:
        def submit(self, name: str, args: Any = (), token: Any = None) -> Any:
            future = loop.create_future()
            future.set_result(None)
            return future

    recorder = control.CommandRecorder(
        Channel(), stats, lambda: registry.current.name if registry.current else None)
    first = loop.create_future()

    import types

    from mptcpd import hookspecs
    from mptcpd.plugin import hookimpl

    @hookimpl
    def plugin_init(pm: Any) -> None:
        first.add_done_callback(lambda _: recorder.submit(
            "kpm_add_addr", (SockAddr("192.0.2.1"), 3, 0, 0)))
        recorder.submit("kpm_add_addr", (SockAddr("192.0.2.2"), 4, 0, 0))

    module = types.ModuleType("owner_plugin")
    module.plugin_init = plugin_init  # type: ignore[attr-defined]
    plugin = registry.register(module, PluginInfo(name="owner"), "test")
    assert "plugin_init" in plugin.impls
    registry.call(plugin, hookspecs.plugin_init, pm=None)
    assert registry.current is None
    recorder.submit("kpm_add_addr", (SockAddr("192.0.2.3"), 5, 0, 0))  # nobody's
    first.set_result(None)
    for _ in range(10):
        await asyncio.sleep(0)
    owners = recorder.owners
    assert owners.owner(3, SockAddr("192.0.2.1")) == "owner"
    assert owners.owner(4, SockAddr("192.0.2.2")) == "owner"
    assert owners.owner(5, SockAddr("192.0.2.3")) is None
    assert owners.owner(3, SockAddr("192.0.2.9")) is None  # the ID re-made by another
    owners.record("kpm_remove_addr", (3,), "someone")
    assert owners.owner(3, SockAddr("192.0.2.1")) is None
    owners.record("kpm_flush_addrs", (), "someone")
    assert owners.owner(4, SockAddr("192.0.2.2")) is None


async def test_the_monitor_streams_events_and_commands_in_order(
        served: tuple[Daemon, ControlServer, Path]) -> None:
    from mptcpd import events as ev
    from mptcpd.errors import KernelError
    from mptcpd.types import SockAddr, Token

    daemon, _, path = served
    client = await Client.connect(path)
    try:
        await client.send("io.mptcpd.Monitor", more=True)
        assert await client.reply() == {"parameters": {"record": {"kind": "started"}},
                                         "continues": True}
        assert (await Client.connect(path)).sock  # another client, not monitoring
        status_client = await Client.connect(path)
        status = (await status_client.call("io.mptcpd.GetStatus"))["parameters"]["status"]
        status_client.close()
        assert status["monitors"] == 1
        loop = asyncio.get_running_loop()
        laddr, raddr = SockAddr("192.0.2.1", 40000), SockAddr("198.51.100.2", 80)
        refused: asyncio.Future[Any] = loop.create_future()
        refused.set_exception(KernelError("add_addr", 17, "already there"))
        daemon.monitor.publish(ev.ConnectionCreated(Token(0x1234), laddr, raddr,
                                                    server_side=True))
        daemon.monitor.command("kpm_add_addr", (SockAddr("192.0.2.7"), 3, 2, 0), refused)
        daemon.monitor.publish(ev.AddressAnnounced(Token(0x1234), 5, SockAddr("203.0.113.9")))
        records = [(await client.reply())["parameters"]["record"] for _ in range(3)]
    finally:
        client.close()
    assert records == [
        {"kind": "event", "name": "created", "token": 0x1234,
         "local_address": "192.0.2.1", "local_port": 40000,
         "remote_address": "198.51.100.2", "remote_port": 80,
         "server_side": True, "deny_join_id0": False, "flags": 0},
        {"kind": "command", "name": "kpm_add_addr",
         "arguments": ["192.0.2.7", "3", "2", "0"], "result": "EEXIST",
         "message": str(KernelError("add_addr", 17, "already there"))},
        {"kind": "event", "name": "announced", "token": 0x1234, "address_id": 5,
         "address": "203.0.113.9", "port": 0},
    ]
    async with asyncio.timeout(TIMEOUT):  # the hang-up unsubscribes
        while daemon.monitor.subscribers:
            await asyncio.sleep(0.01)


async def test_a_monitor_that_never_reads_is_dropped_and_slows_nothing(
        served: tuple[Daemon, ControlServer, Path], caplog: pytest.LogCaptureFixture) -> None:
    from mptcpd import events as ev
    from mptcpd.types import Token

    daemon, server, path = served
    stalled = await Client.connect(path)
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader = await Client.connect(path)
    try:
        await stalled.send("io.mptcpd.Monitor", more=True)
        await reader.send("io.mptcpd.Monitor", more=True)
        assert (await reader.reply())["parameters"]["record"]["kind"] == "started"
        async with asyncio.timeout(TIMEOUT):
            while len(daemon.monitor.subscribers) != 2:
                await asyncio.sleep(0.01)
        count = 3 * control.MONITOR_QUEUE
        received = 0
        with caplog.at_level(logging.WARNING):
            for i in range(count):  # publishing never waits for a client
                daemon.monitor.publish(ev.ConnectionClosed(Token(i)))
                if i % 256 == 255:  # the reader keeps up; the loop turns
                    while received < i - 512:
                        reply = await reader.reply()
                        assert reply is not None
                        assert reply["parameters"]["record"]["token"] == received
                        received += 1
            while received < count:
                reply = await reader.reply()
                assert reply is not None
                assert reply["parameters"]["record"]["token"] == received
                received += 1
        assert daemon.stats.monitors_dropped == 1
        assert "Monitor client dropped: 4096 records unread" in caplog.text
        async with asyncio.timeout(TIMEOUT):
            while len(daemon.monitor.subscribers) != 1 or len(server.clients) != 1:
                await asyncio.sleep(0.01)
        # The stalled client's connection is gone.
        stalled.sock.setblocking(True)
        stalled.sock.settimeout(TIMEOUT)
        try:
            while stalled.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
    finally:
        stalled.close()
        reader.close()

"""The daemon as a process in the lab: lifecycle, systemd, plugins on real events."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import Lab, Process, wait_for

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "plugins"
READY = r"mptcpd ready: plugins"


def plugin_dir(tmp_path: Path, *names: str) -> Path:
    target = tmp_path / "plugins"
    target.mkdir(exist_ok=True)
    target.chmod(0o755)
    for name in names:
        for src in (FIXTURES / name).glob("*.py"):
            shutil.copyfile(src, target / src.name)
            (target / src.name).chmod(0o644)
    return target


def daemon_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def start(lab: Lab, tmp_path: Path, *args: str, plugins: tuple[str, ...] = ("noop",),
          config: str = "[core]\n", **env: str) -> Process:
    directory = plugin_dir(tmp_path, *plugins)
    return lab.start_mptcpd("--log=stderr", f"--plugin-dir={directory}", *args,
                            config=config, env=daemon_env(**env))


def test_start_and_stop_with_sigterm(lab: Lab, tmp_path: Path) -> None:
    daemon = start(lab, tmp_path, "-d")
    daemon.wait_output(READY, timeout=20)
    out = daemon.output()
    assert '"mptcp_pm" generic netlink family appeared' in out
    assert "The kernel uses the kernel path manager." in out
    assert daemon.stop(signal.SIGTERM) == 0
    assert "Terminating" in daemon.output()


def test_sigint_is_a_clean_shutdown_too(lab: Lab, tmp_path: Path) -> None:
    daemon = start(lab, tmp_path)
    daemon.wait_output(READY, timeout=20)
    assert daemon.stop(signal.SIGINT) == 0


def test_one_daemon_per_network_namespace(lab: Lab, tmp_path: Path) -> None:
    first = start(lab, tmp_path)
    first.wait_output(READY, timeout=20)
    second = lab.start_mptcpd("--log=stderr", f"--plugin-dir={tmp_path / 'plugins'}",
                              config="[core]\n", env=daemon_env())
    assert second.wait(20) == 1
    assert (f"mptcpd is already running in this network namespace (pid {first.pid})"
            in second.output())
    # One in the other namespace is another matter.
    other = lab.start_mptcpd("--log=stderr", f"--plugin-dir={tmp_path / 'plugins'}",
                             ns=lab.server, config="[core]\n", env=daemon_env())
    other.wait_output(READY, timeout=20)
    assert first.popen.poll() is None
    assert first.stop() == 0 and other.stop() == 0
    # The lock goes with its holder: a new daemon starts.
    third = lab.start_mptcpd("--log=stderr", f"--plugin-dir={tmp_path / 'plugins'}",
                             config="[core]\n", env=daemon_env())
    third.wait_output(READY, timeout=20)
    assert third.stop() == 0


def test_sighup_does_not_kill_the_daemon(lab: Lab, tmp_path: Path) -> None:
    daemon = start(lab, tmp_path)
    daemon.wait_output(READY, timeout=20)
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_output("Configuration reloaded from", timeout=10)
    assert daemon.popen.poll() is None
    assert daemon.stop() == 0


def test_mptcp_disabled_in_the_namespace_exits_1(lab: Lab, tmp_path: Path) -> None:
    lab.sysctl(lab.client, "net.mptcp.enabled", "0")
    daemon = start(lab, tmp_path)
    assert daemon.wait(timeout=20) == 1
    lines = daemon.output().splitlines()
    assert lines == [
        "MPTCP is not enabled in the kernel.",
        "Try 'sysctl -w net.mptcp.enabled=1'.",
        "Required kernel MPTCP support not available.",
    ]


def test_no_loadable_plugin_exits_1(lab: Lab, tmp_path: Path) -> None:
    daemon = start(lab, tmp_path, plugins=())
    assert daemon.wait(timeout=20) == 1
    out = daemon.output()
    assert "No path manager plugin was loaded." in out
    assert "Unable to load path manager plugins." in out


def test_a_world_writable_plugin_directory_exits_1(lab: Lab, tmp_path: Path) -> None:
    directory = plugin_dir(tmp_path, "noop")
    directory.chmod(0o777)
    daemon = lab.start_mptcpd("--log=stderr", f"--plugin-dir={directory}",
                              config="[core]\n", env=daemon_env())
    assert daemon.wait(timeout=20) == 1
    assert f'"{directory}" should be a directory that is not world writable.' \
        in daemon.output()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    yield sock, path
    sock.close()


def test_systemd_is_told_ready_and_stopping_and_the_watchdog_pinged(
    lab: Lab, tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    # WatchdogSec=0.2s: the daemon pings every 0.1 s once ready.
    daemon = start(lab, tmp_path, NOTIFY_SOCKET=path, WATCHDOG_USEC="200000")
    messages = []
    while not any(m.startswith("READY=1") for m in messages):
        messages.append(sock.recv(4096).decode())
    ready = [m for m in messages if m.startswith("READY=1")][0]
    assert "STATUS=Managing MPTCP paths; plugins: noop; default: noop" in ready
    assert messages[0].startswith("STATUS=Waiting for the mptcp_pm")
    pings = 0
    for _ in range(50):  # bounded: the socket's timeout is 20 s per message
        if sock.recv(4096).decode() == "WATCHDOG=1":
            pings += 1
            if pings == 3:
                break
    assert pings == 3
    assert daemon.stop() == 0
    rest = []
    sock.settimeout(5)
    while not any(m.startswith("STOPPING=1") for m in rest):
        rest.append(sock.recv(4096).decode())


def recorded(path: Path) -> list[dict]:
    """The recorder's calls so far: its complete lines (the daemon may be
    writing the last one while it is read)."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines() if line]


def a_fresh_connection_is_seen(lab: Lab, server: str, log_path: Path) -> None:
    """A new connection to ``server``, made now, reaches the recorder plugin
    (logging to ``log_path``) through to its ``connection_closed``."""
    out = lab.exec(lab.client, sys.executable, "-m", "tests.lab.traffic", "client",
                   server, "5201").stdout
    fresh = json.loads(out)["info"]["token"]
    wait_for(lambda: any(c["hook"] == "connection_closed" and c["args"].get("token") == fresh
                         for c in recorded(log_path)), 20, what="the fresh connection")


def test_a_recorder_plugin_sees_real_connections_in_kernel_order(
    lab: Lab, tmp_path: Path
) -> None:
    log_path = tmp_path / "calls.jsonl"
    lab.ip(lab.client, "mptcp", "limits", "set", "subflows", "2")
    second = lab.links[1]
    lab.ip(lab.client, "mptcp", "endpoint", "add", str(second.client4), "dev",
           second.client_if, "subflow")
    daemon = start(lab, tmp_path, plugins=("recorder",),
                   MPTCPD_RECORDER_LOG=str(log_path))
    daemon.wait_output(READY, timeout=20)
    server = lab.python(lab.server, "-m", "tests.lab.traffic", "server", "--duration", "60")
    server.wait_output("listening")
    server_addr = lab.links[0].server4
    out = lab.exec(lab.client, sys.executable, "-m", "tests.lab.traffic", "client",
                   str(server_addr), "5201", "--bytes", "100000", "--hold", "0.5").stdout
    token = json.loads(out)["info"]["token"]

    def closed() -> list[dict]:
        calls = recorded(log_path)
        return calls if any(c["hook"] == "connection_closed" for c in calls) else []

    calls = [c for c in wait_for(closed, 20, what="connection_closed")
             if c["args"].get("token") == token]
    hooks = [c["hook"] for c in calls]
    assert hooks[:2] == ["new_connection", "connection_established"]
    assert hooks[-1] == "connection_closed"
    assert "new_subflow" in hooks
    created = calls[0]["args"]
    assert created["raddr"] == f"{server_addr}|5201"
    assert created["laddr"].startswith(f"{lab.links[0].client4}|")
    assert created["server_side"] is False
    sub = next(c for c in calls if c["hook"] == "new_subflow")["args"]
    assert sub["laddr"].startswith(f"{second.client4}|")
    assert sub["backup"] is False  # the real value; the C mptcpd always says True
    assert all(c["plugin"] == "recorder" for c in calls)
    assert daemon.stop() == 0
    assert recorded(log_path)[-1]["hook"] == "plugin_exit"


@pytest.mark.parametrize("timeout", ["30", "0"])
def test_check_route_waits_for_a_default_route_as_configured(
    lab: Lab, tmp_path: Path, timeout: str
) -> None:
    log_path = tmp_path / "calls.jsonl"
    first, second = lab.links
    # The route check probes 192.0.2.1 (as C does), which is inside link 1's
    # subnet here: take that connected route out of the main table so that
    # only a default route can answer the probe.
    lab.ip(lab.client, "route", "del", str(first.subnet4), "dev", first.client_if)
    daemon = start(lab, tmp_path, "-d", "--notify-flags=check_route", plugins=("recorder",),
                   config=f"[core]\ncheck-route-timeout={timeout}\n",
                   MPTCPD_RECORDER_LOG=str(log_path))
    daemon.wait_output(READY, timeout=20)

    def announced(ip: str) -> bool:
        return any(c["hook"] == "new_local_address" and c["args"]["addr"] == f"{ip}|0"
                   for c in recorded(log_path))

    lab.ip(lab.client, "addr", "add", "203.0.113.1/24", "dev", second.client_if)
    daemon.wait_output(r"can't resolved default route from 203\.0\.113\.1")
    if timeout == "0":
        daemon.wait_output(r"timeout while waiting for default route on address 203\.0\.113\.1")
    assert not announced("203.0.113.1")  # held (or given up) without a default route
    lab.ip(lab.client, "route", "add", "default", "dev", second.client_if)
    if timeout == "0":
        # Given up after C's five lookups: the route does not bring it back,
        # while a new address is checked, and found, at once.
        lab.ip(lab.client, "addr", "add", "203.0.113.9/24", "dev", second.client_if)
        wait_for(lambda: announced("203.0.113.9"), 10, what="203.0.113.9")
        assert not announced("203.0.113.1")
    else:
        wait_for(lambda: announced("203.0.113.1"), 10,
                 what="203.0.113.1 once a default route exists")
    assert daemon.stop() == 0

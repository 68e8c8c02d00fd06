"""mptcpctl against an in-process control socket (no kernel needed), its
errors and exit statuses, and its man page."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mptcpd import ctl
from mptcpd.config import Config
from mptcpd.daemon.app import Daemon
from mptcpd.daemon.control import ControlServer

ROOT = Path(__file__).resolve().parents[2]
COMMAND = Path(sys.executable).with_name("mptcpctl")
MAN = ROOT / "man" / "mptcpctl.8"


async def mptcpctl(*args: str, user: int | None = None,
                   env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the installed console script (the event loop keeps serving)."""
    proc = await asyncio.create_subprocess_exec(
        str(COMMAND), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        user=user, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Path]]:
    path = tmp_path / "control"
    daemon = Daemon(Config(control_socket=str(path)))
    server = ControlServer(daemon, path)
    server.start()
    try:
        yield daemon, path
    finally:
        server.close()


async def test_status_as_a_table_and_as_json(served: tuple[Daemon, Path]) -> None:
    from mptcpd import events as ev

    daemon, path = served
    daemon.stats.events[ev.ConnectionCreated] = 3
    daemon.stats.commands[("kpm_add_addr", "ok")] = 2
    code, out, err = await mptcpctl("--socket", str(path), "--json", "status")
    assert (code, err) == (0, "")
    status = json.loads(out)
    assert status["events"]["created"] == 3 and status["ready"] is False
    assert status["commands"] == [{"operation": "kpm_add_addr", "result": "ok", "count": 2}]
    code, out, err = await mptcpctl("--socket", str(path), "status")
    assert (code, err) == (0, "")
    assert re.search(r"^mptcpd 0\.1\.0, up \d+s$", out, re.MULTILINE), out
    assert "created 3" in out and "mptcp_pm family not available" in out
    assert re.search(r"^  kpm_add_addr +ok +2$", out, re.MULTILINE), out
    code, out, _ = await mptcpctl("--socket", str(path), "--json", "plugins")
    assert (code, json.loads(out)) == (0, [])
    code, out, _ = await mptcpctl("--socket", str(path), "interfaces")
    assert (code, out) == (0, "no interfaces tracked\n")


async def test_the_socket_from_the_configuration_file(served: tuple[Daemon, Path],
                                                      tmp_path: Path) -> None:
    _, path = served
    conf = tmp_path / "mptcpd.conf"
    conf.write_text(f"[core]\ncontrol-socket={path}\n")
    env = dict(os.environ, MPTCPD_CONFIG=str(conf))
    code, out, err = await mptcpctl("--json", "status", env=env)
    assert (code, err) == (0, "") and "version" in json.loads(out)
    # Without it (and without the file), the runtime directory's socket.
    env = dict(os.environ, MPTCPD_CONFIG=str(tmp_path / "none"),
               MPTCPD_STATE_DIR=str(path.parent))
    code, out, err = await mptcpctl("--json", "status", env=env)
    assert (code, err) == (0, "")


async def test_not_running_is_exit_3(tmp_path: Path) -> None:
    code, out, err = await mptcpctl("--socket", str(tmp_path / "none"), "status")
    assert (code, out) == (3, "")
    assert err == (f"mptcpctl: mptcpd is not running (no control socket at "
                   f"{tmp_path / 'none'}: No such file or directory)\n")
    stale = tmp_path / "stale"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(stale))
    sock.close()  # nobody listens
    code, _, err = await mptcpctl("--socket", str(stale), "connections")
    assert code == 3 and "Connection refused" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a command as nobody")
async def test_access_denied_is_exit_4(served: tuple[Daemon, Path]) -> None:
    _, path = served
    os.chmod(path.parent, 0o755)  # the directory is open, the 0660 socket is not
    code, out, err = await mptcpctl("--socket", str(path), "status", user=65534)
    assert (code, out) == (4, "")
    assert "access to the control socket" in err and "denied" in err


async def test_usage_errors_are_exit_2(tmp_path: Path) -> None:
    code, _, err = await mptcpctl("--socket", str(tmp_path / "x"), "frobnicate")
    assert code == 2 and "No such command 'frobnicate'" in err
    code, out, _ = await mptcpctl("--help")
    assert code == 0
    for command in ("status", "connections", "endpoints", "limits", "interfaces",
                    "plugins"):
        assert command in out


async def test_an_error_reply_is_exit_1(served: tuple[Daemon, Path]) -> None:
    _, path = served
    # The family is not there: the endpoint dump cannot be sent.
    code, out, err = await mptcpctl("--socket", str(path), "endpoints")
    assert (code, out) == (1, "")
    assert err.startswith("mptcpctl: not ready: ")


def test_tables_are_aligned() -> None:
    text = ctl.table(("ID", "ADDRESS", "OWNER"),
                     [(1, "192.0.2.1", "addr_adv"), (42, "2001:db8::1", None)])
    assert text.splitlines() == [
        "ID  ADDRESS      OWNER",
        "1   192.0.2.1    addr_adv",
        "42  2001:db8::1  -",
    ]


def test_the_man_page_renders_cleanly_and_names_every_command() -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    proc = subprocess.run(["groff", "-man", "-ww", "-z", str(MAN)], capture_output=True,
                          text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "")
    text = MAN.read_text()
    for command in ctl.cli.commands:
        assert f".B {command}\n" in text, command
    statuses = re.findall(r"^\.SH EXIT STATUS\n(.*?)^\.SH", text, re.S | re.M)[0]
    assert re.findall(r"^\.B (\d)$", statuses, re.M) == ["0", "1", "2", "3", "4"]
    assert (ctl.EXIT_ERROR, ctl.EXIT_USAGE, ctl.EXIT_NOT_RUNNING, ctl.EXIT_DENIED) == \
        (1, 2, 3, 4)


def test_tokens_and_addresses_as_typed() -> None:
    import click

    assert ctl.parse_token("0a1b2c3d") == ctl.parse_token("0x0a1b2c3d") == 0x0A1B2C3D
    with pytest.raises(click.BadParameter):
        ctl.parse_token("token")
    assert ctl.parse_endpoint("192.0.2.1") == ("192.0.2.1", 0)
    assert ctl.parse_endpoint("192.0.2.1:5201") == ("192.0.2.1", 5201)
    assert ctl.parse_endpoint("2001:db8::1") == ("2001:db8::1", 0)
    assert ctl.parse_endpoint("[2001:db8::1]:80") == ("2001:db8::1", 80)
    with pytest.raises(click.BadParameter):
        ctl.parse_endpoint("192.0.2.1:http")


async def test_a_write_call_of_a_peer_without_rights_is_refused(
        served: tuple[Daemon, Path], caplog: pytest.LogCaptureFixture) -> None:
    """The peer's rights are read at accept; the refusal is logged with its
    uid and pid, and nothing reaches the path manager."""
    import logging

    from mptcpd.daemon import control

    daemon, path = served
    submitted: list[str] = []
    daemon.commands._channel_submit = lambda name, *a: submitted.append(name)  # type: ignore
    original = control.Peer.may_write
    control.Peer.may_write = lambda self: False  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.INFO):
            code, out, err = await mptcpctl("--socket", str(path), "endpoint", "add",
                                            "192.0.2.1")
    finally:
        control.Peer.may_write = original  # type: ignore[method-assign]
    assert (code, out) == (4, "")
    assert err == "mptcpctl: permission denied: AddEndpoint needs root or CAP_NET_ADMIN\n"
    assert re.search(r"AddEndpoint\(address=192\.0\.2\.1.*\) refused to uid \d+ pid \d+",
                     caplog.text)
    assert submitted == []


async def test_metrics_in_the_prometheus_text_format(served: tuple[Daemon, Path]) -> None:
    import dataclasses

    from prometheus_client.parser import text_string_to_metric_families

    from mptcpd import events as ev
    from mptcpd.netlink.diag import MptcpConnection, MptcpSubflow
    from mptcpd.types import SockAddr

    daemon, path = served
    laddr, raddr = SockAddr("192.0.2.1", 40000), SockAddr("198.51.100.2", 80)

    async def connections() -> list[MptcpConnection]:
        return [MptcpConnection(0xA, laddr, raddr, 1, True, info={"subflows": 1}),
                MptcpConnection(0xB, laddr.with_port(40001), raddr, 1, True, fallback=True)]

    async def subflows() -> list[MptcpSubflow]:
        return [MptcpSubflow(0xA, laddr, raddr, 1), MptcpSubflow(0xA, laddr, raddr, 1),
                MptcpSubflow(0xB, laddr.with_port(40001), raddr, 1)]

    daemon.kernel = dataclasses.replace(daemon.kernel, list_connections=connections,
                                        list_subflows=subflows)
    daemon.stats.events[ev.ConnectionCreated] = 7
    daemon.stats.commands[("kpm_add_addr", "EEXIST")] = 2
    code, out, err = await mptcpctl("--socket", str(path), "metrics")
    assert (code, err) == (0, "")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(out) for s in family.samples}
    assert samples[("mptcpd_events_total", (("type", "created"),))] == 7
    assert samples[("mptcpd_events_total", (("type", "closed"),))] == 0
    assert samples[("mptcpd_commands_total",
                    (("operation", "kpm_add_addr"), ("result", "EEXIST")))] == 2
    assert samples[("mptcpd_mptcp_connections", ())] == 2
    assert samples[("mptcpd_mptcp_subflows", ())] == 3
    assert samples[("mptcpd_mptcp_fallback_connections", ())] == 1
    assert samples[("mptcpd_ready", ())] == 0
    assert samples[("mptcpd_event_overruns_total", ())] == 0
    info = [k for k in samples if k[0] == "mptcpd_info"]
    assert info and ("version", "0.1.0") in info[0][1]
    # No family: no endpoint figures, the rest is there.
    assert not any(name == "mptcpd_endpoints" for name, _ in samples)
    assert "# TYPE mptcpd_events_total counter" in out


async def test_a_subflow_listed_with_token_0_goes_to_its_own_connection_only(
        served: tuple[Daemon, Path]) -> None:
    """Under a connection flood the kernel lists connections and subflows
    whose token is not set yet or already released with token 0: each such
    subflow belongs to the token-0 connection of its addresses (an IPv4
    subflow of a dual-stack socket listed mapped), not to every one."""
    import dataclasses
    import json

    from mptcpd.netlink.diag import MptcpConnection, MptcpSubflow
    from mptcpd.types import SockAddr

    daemon, path = served
    server = SockAddr("198.51.100.2", 80)
    first, second = SockAddr("192.0.2.1", 40000), SockAddr("192.0.2.1", 40001)
    mapped = SockAddr("::ffff:192.0.2.1", 40001)

    async def connections() -> list[MptcpConnection]:
        return [MptcpConnection(0, first, server, 2, False),
                MptcpConnection(0, second, server, 7, False),
                MptcpConnection(0xA, first.with_port(40002), server, 1, False)]

    async def subflows() -> list[MptcpSubflow]:
        return [MptcpSubflow(0, first, server, 2),
                MptcpSubflow(0, mapped, SockAddr("::ffff:198.51.100.2", 80), 7),
                MptcpSubflow(0xA, first.with_port(40002), server, 1),
                MptcpSubflow(0xA, SockAddr("203.0.113.1", 40003), server, 1)]

    daemon.kernel = dataclasses.replace(daemon.kernel, list_connections=connections,
                                        list_subflows=subflows)
    code, out, err = await mptcpctl("--socket", str(path), "--json", "connections")
    assert (code, err) == (0, "")
    listed = json.loads(out)
    ports = [[s["local_port"] for s in c["subflows"]] for c in listed]
    assert ports == [[40000], [40001], [40002, 40003]]


async def test_a_second_namespace_serves_its_own_socket(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Daemons of two network namespaces sharing the runtime directory: the
    second serves control-netns-<inode>, which mptcpctl finds first."""
    import logging

    monkeypatch.setenv("MPTCPD_STATE_DIR", str(tmp_path))
    first, second = Daemon(Config()), Daemon(Config())
    with caplog.at_level(logging.INFO):
        first._start_control()
        second._start_control()
    try:
        assert first.control is not None and second.control is not None
        assert first.control.path == tmp_path / "control"
        inode = os.stat("/proc/self/ns/net").st_ino
        assert second.control.path == tmp_path / f"control-netns-{inode}"
        assert "is another network namespace's daemon's; serving" in caplog.text
        assert "Unable to serve" not in caplog.text
        from mptcpd import events as ev
        second.stats.events[ev.ConnectionClosed] = 5
        env = dict(os.environ, MPTCPD_STATE_DIR=str(tmp_path),
                   MPTCPD_CONFIG=str(tmp_path / "none"))
        code, out, err = await mptcpctl("--json", "status", env=env)
        assert (code, err) == (0, "") and json.loads(out)["events"]["closed"] == 5
    finally:
        first._stop_control()
        second._stop_control()
    assert os.listdir(tmp_path) == []

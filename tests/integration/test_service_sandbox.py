"""The unit's sandbox lets the daemon do its job: every system call the
daemon makes (traced with strace in a lab, on both path managers) is one
that ``SystemCallFilter=`` allows, and none would break
``MemoryDenyWriteExecute=yes`` (no writable and executable mapping, no
mapping made executable later).  What systemd-analyze cannot see offline."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import in_ci
from tests.lab import Lab, Process, wait_for
from tests.integration.test_daemon import READY, daemon_env
from tests.unit.test_service_unit import UNIT, parse

ROOT = Path(__file__).resolve().parents[2]


def expand(group: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of a ``systemd-analyze syscall-filter`` group."""
    seen = seen if seen is not None else {group}
    out = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    names: set[str] = set()
    for line in out.splitlines():
        token = line.strip()
        if token.startswith("@") and token not in seen:
            seen.add(token)
            names |= expand(token, seen)
        elif re.fullmatch(r"[a-z0-9_]+", token):
            names.add(token)
    return names


def allowed_by_the_unit() -> set[str]:
    allowed: set[str] = set()
    for rule in parse(UNIT.read_text())["Service"]["SystemCallFilter"]:
        deny = rule.startswith("~")
        names = set().union(*(expand(g) if g.startswith("@") else {g}
                              for g in rule.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed


@pytest.fixture
def tools() -> None:
    for tool in ("strace", "systemd-analyze"):
        if shutil.which(tool) is None:
            if in_ci():
                pytest.fail(f"{tool} is missing (the bootstrap installs it)")
            pytest.skip(f"{tool} is not installed")


def calls(trace: Path) -> list[str]:
    return [line for line in trace.read_text().splitlines() if re.match(r"^\d+\s+\w+\(", line)]


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def daemon_children(pid: int) -> list[int]:
    """The children of ``pid`` (strace) that run the daemon (Python): strace
    also forks short-lived children of its own at start (to test ptrace;
    strace's own command line), which a bare first child could be."""
    found = []
    for child in children(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if argv[0] == os.fsencode(sys.executable) and b"mptcpd" in argv:
                found.append(child)
        except OSError:
            pass  # gone already: strace's own
    return found


def exercise(lab: Lab, pm: str, daemon: Process) -> None:
    """Make the daemon work: addresses and carrier (addr_adv), a connection
    that gets a subflow (sspi)."""
    if pm == "kernel":
        lab.ip(lab.client, "addr", "add", "203.0.113.1/32", "dev", "c1")
        lab.ip(lab.client, "addr", "del", "203.0.113.1/32", "dev", "c1")
        lab.ip(lab.client, "link", "set", "c2", "down")
        lab.ip(lab.client, "link", "set", "c2", "up")
        return
    lab.set_path_manager(lab.server, "kernel")
    server = lab.python(lab.server, "-m", "tests.lab.traffic", "server",
                        "--port", "5201", "--duration", "30")
    server.wait_output("listening")
    # The connection stays open until the traced (slow) daemon has asked for
    # its subflow: a subflow is never asked for a connection already closed.
    client = lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                        str(lab.links[0].server4), "5201", "--bytes", "100000",
                        "--hold", "30", "--timeout", "60")
    daemon.wait_output(r"creating a subflow", timeout=30)
    client.stop()


@pytest.mark.lab(links=2)
def test_the_daemon_stays_within_the_units_system_call_filter(
        lab: Lab, tmp_path: Path, tools: None) -> None:
    allowed = allowed_by_the_unit()
    assert {"socket", "sendmsg", "epoll_wait"} <= allowed and "setuid" not in allowed
    made: list[str] = []
    for pm, plugin, args in (("kernel", "addr_adv", ("--addr-flags=subflow",
                                                     "--notify-flags=existing")),
                             ("userspace", "sspi", ())):
        lab.set_path_manager(lab.client, pm)
        trace = tmp_path / f"{plugin}.strace"
        config = lab.workdir / f"{plugin}.conf"
        config.write_text("[core]\n")
        config.chmod(0o644)
        env = daemon_env()
        env["MPTCPD_CONFIG"] = str(config)
        env["MPTCPD_STATE_DIR"] = str(lab.workdir / "state")
        daemon = lab.spawn(lab.client, "strace", "-f", "-qq", "-o", str(trace), sys.executable,
                           "-m", "mptcpd", "--log=stderr", "-d", f"--plugin-dir={ROOT / 'plugins'}",
                           f"--load-plugins={plugin}", f"--path-manager={plugin}", *args,
                           name=f"mptcpd-{plugin}", env=env)
        # The daemon is strace's child: end it by its own PID whatever happens
        # (strace leaves its tracee running when it is killed).
        child = wait_for(lambda: daemon_children(daemon.pid), timeout=10,
                         what="strace's child running mptcpd")[0]
        try:
            daemon.wait_output(READY, timeout=30)
            exercise(lab, pm, daemon)
            os.kill(child, signal.SIGTERM)
            assert daemon.wait(20) == 0, daemon.output()
        finally:
            if Path(f"/proc/{child}").exists():
                os.kill(child, signal.SIGKILL)
        made += calls(trace)
    names = {re.match(r"^\d+\s+(\w+)\(", line).group(1) for line in made}  # type: ignore[union-attr]
    assert {"socket", "sendmsg", "recvfrom"} <= names  # the trace saw the daemon work
    assert sorted(names - allowed) == []
    # MemoryDenyWriteExecute=yes: nothing mapped writable and executable, and
    # nothing made executable after it was mapped.
    assert [c for c in made if re.search(r"^\d+\s+mmap\(.*PROT_WRITE\|PROT_EXEC", c)] == []
    assert [c for c in made if re.search(r"^\d+\s+(pkey_)?mprotect\(.*PROT_EXEC", c)] == []

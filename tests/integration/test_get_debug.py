"""mptcp-get-debug in a lab namespace: the state it collects is the
namespace's, and -r records the events of a connection made meanwhile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_events import netlink_groups, socket_inodes
from tests.lab import Lab, wait_for

COMMAND = str(Path(sys.executable).with_name("mptcp-get-debug"))
TITLES = ("uname -a", "/etc/os-release", "sysctl net.mptcp", "ip mptcp endpoint show",
          "ip mptcp limits show", "ss -ManiH", "nstat")


@pytest.mark.lab(links=2)
def test_collect_shows_the_namespaces_state(lab: Lab) -> None:
    second = lab.links[1]
    lab.ip(lab.client, "mptcp", "endpoint", "add", str(second.client4), "dev",
           second.client_if, "subflow")
    lab.ip(lab.client, "mptcp", "limits", "set", "subflows", "3")
    out = lab.exec(lab.client, COMMAND, "-c").stdout
    for title in TITLES:
        assert f"{'=' * 40}\n{title}\n{'=' * 40}\n" in out, title
    assert f"{second.client4} id 1 subflow dev {second.client_if}" in out
    assert "subflows 3" in out
    assert "net.mptcp.enabled = 1" in out


def monitor_joined(lab: Lab, pid: int) -> bool:
    """Whether a child of ``pid`` has a netlink socket in a multicast group."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    groups = netlink_groups(lab.client)
    return any(groups.get(ino) for child in children for ino in socket_inodes(int(child)))


@pytest.mark.lab(links=1)
def test_reproduce_records_the_events_until_enter(lab: Lab) -> None:
    recorder = subprocess.Popen(["ip", "netns", "exec", lab.client, COMMAND, "-r"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        assert recorder.stderr is not None and recorder.stdin is not None
        assert "Reproduce the problem now" in recorder.stderr.readline()
        # Connect only once the tool's `ip mptcp monitor` has joined the
        # event group (the tool itself waits a fixed half second for it).
        wait_for(lambda: monitor_joined(lab, recorder.pid), timeout=10,
                 what="ip mptcp monitor to join the event group")
        server = lab.python(lab.server, "-m", "tests.lab.traffic", "server",
                            "--duration", "30")
        server.wait_output("listening")
        client = lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                            str(lab.links[0].server4), "5201", "--bytes", "10000")
        assert client.wait(30) == 0
        recorder.stdin.write("\n")
        recorder.stdin.flush()
        out, _ = recorder.communicate(timeout=60)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    assert recorder.returncode == 0
    monitor = out.split(f"{'=' * 40}\nip mptcp monitor\n{'=' * 40}\n", 1)[1]
    assert "[       CREATED]" in monitor and "[   ESTABLISHED]" in monitor
    assert f"daddr4={lab.links[0].server4}" in monitor and "dport=5201" in monitor


@pytest.mark.parametrize("args", [(), ("-x",), ("-c", "-r")])
def test_usage_errors_exit_1(args: tuple[str, ...]) -> None:
    proc = subprocess.run([COMMAND, *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and proc.stderr.startswith("usage: mptcp-get-debug")

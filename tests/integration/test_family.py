"""The ``mptcp_pm`` family lifecycle and the kernel checks, in lab namespaces.

``check_kernel`` reads the sysctls of the namespace the process runs in, as
the daemon does under ``ip netns exec``; so it is run in a subprocess inside
the lab namespace.  The host's sysctls are never changed.
"""

from __future__ import annotations

import logging
import sys

import pytest

from tests.lab import Lab
from mptcpd.netlink.family import FamilyWatcher
from mptcpd.netlink.genl_commands import CommandChannel

LOGGER = "mptcpd.netlink.family"

CHECK = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(message)s", stream=sys.stderr)
from mptcpd.netlink.sysctl import check_kernel, kernel_path_manager
ok = check_kernel()
print(kernel_path_manager())
sys.exit(0 if ok else 3)
"""


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


async def test_family_appears_once_in_a_lab_namespace(
        lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    appeared: list[int] = []
    async with FamilyWatcher(appeared.append, netns=lab.client, timeout=0.2) as watcher:
        family_id = await watcher.wait_appeared(timeout=5)
        async with CommandChannel(lab.client) as ch:
            assert ch.family_id == family_id
        # a second GETFAMILY answer must not fire again
        await watcher.request()
        await watcher.wait_appeared(timeout=1)
    assert appeared == [family_id]
    assert records(caplog) == [("DEBUG", '"mptcp_pm" generic netlink family appeared')]


async def test_missing_family_waits_and_warns(
        lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    appeared: list[int] = []
    async with FamilyWatcher(appeared.append, netns=lab.client, timeout=0.2,
                             family="mptcp_pm_absent") as watcher:
        with pytest.raises(TimeoutError):
            await watcher.wait_appeared(timeout=1.0)
        assert not watcher.known
    assert appeared == []
    assert records(caplog) == [
        ("DEBUG", "Request for MPTCP generic netlink family failed. Waiting."),
        ("WARNING", "MPTCP generic netlink family has not appeared."),
        ("WARNING", "Verify MPTCP netlink path manager kernel support."),
    ]


def test_check_kernel_with_mptcp_disabled_in_the_namespace(lab: Lab) -> None:
    lab.sysctl(lab.client, "net.mptcp.enabled", "0")
    proc = lab.exec(lab.client, sys.executable, "-c", CHECK, check=False)
    assert proc.returncode == 3
    assert proc.stderr.splitlines() == [
        "ERROR MPTCP is not enabled in the kernel.",
        "ERROR Try 'sysctl -w net.mptcp.enabled=1'.",
    ]
    # the server namespace (and the host) still have MPTCP
    assert lab.read_sysctl(lab.server, "net.mptcp.enabled") == "1"


@pytest.mark.lab(links=1, path_manager="userspace")
def test_check_kernel_enabled_and_path_manager(lab: Lab) -> None:
    proc = lab.exec(lab.client, sys.executable, "-c", CHECK, check=False)
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert proc.stdout.strip() == "userspace"
    lab.set_path_manager(lab.client, "kernel")
    assert lab.exec(lab.client, sys.executable, "-c", CHECK).stdout.strip() == "kernel"

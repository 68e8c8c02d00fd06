"""The shipped systemd unit (etc/mptcp.service): what it promises, checked
offline with systemd's own tools: ``systemd-analyze verify`` passes and the
sandbox's exposure stays at or below 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from mptcpd import cli
from tests.conftest import in_ci

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "etc" / "mptcp.service"
MAX_EXPOSURE = 2.0


def parse(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values (a key may repeat, as systemd allows)."""
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out[section][key.strip()].append(value.strip())
    return out


def one(values: list[str]) -> str:
    assert len(values) == 1, values
    return values[0]


def test_the_unit_says_what_the_daemon_needs() -> None:
    unit = parse(UNIT.read_text())
    assert one(unit["Unit"]["Documentation"]) == "man:mptcpd(8)"
    service = unit["Service"]
    assert one(service["Type"]) == "notify" and one(service["NotifyAccess"]) == "main"
    assert one(service["Restart"]) == "on-failure"
    assert one(service["WatchdogSec"]) == "30s"
    # systemctl reload: SIGHUP reloads the configuration (issue 13).
    assert one(service["ExecReload"]) == "kill -HUP $MAINPID"
    assert one(service["DynamicUser"]) == "yes"
    assert one(service["CapabilityBoundingSet"]) == "CAP_NET_ADMIN"
    assert one(service["AmbientCapabilities"]) == "CAP_NET_ADMIN"
    # State that lives as long as the kernel's endpoints: until reboot.
    assert one(service["RuntimeDirectory"]) == "mptcpd"
    assert one(service["RuntimeDirectoryPreserve"]) == "yes"
    # What the sandbox must leave (see the unit's comment).
    assert set(one(service["RestrictAddressFamilies"]).split()) == {
        "AF_NETLINK", "AF_UNIX", "AF_INET", "AF_INET6"}
    for forbidden in ("ProcSubset", "PrivateUsers", "IPAddressDeny", "PrivateNetwork"):
        assert forbidden not in service, forbidden
    command = one(service["ExecStart"]).split()
    assert command[0] == "/usr/bin/mptcpd"
    # The unit's options must be ones the command line accepts.
    assert cli.scan(command[1:]) == ["--log=journal"]
    assert one(unit["Install"]["WantedBy"]) == "multi-user.target"
    assert one(unit["Install"]["Alias"]) == "mptcpd.service"


@pytest.fixture
def installed_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's mptcpd (verify
    checks that the command exists)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if in_ci():
            pytest.fail("systemd-analyze is missing (the bootstrap installs systemd)")
        pytest.skip("systemd-analyze is not installed")
    command = Path(sys.executable).with_name("mptcpd")
    assert command.exists(), command
    unit = tmp_path / "mptcp.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/mptcpd", str(command)))
    return unit


def test_systemd_analyze_verify_is_clean(installed_unit: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(installed_unit)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_the_sandbox_exposure_is_at_most_2(installed_unit: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true",
                           str(installed_unit)], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for mptcp\.service: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, proc.stdout

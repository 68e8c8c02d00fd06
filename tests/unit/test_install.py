"""mptcpd-install into a temporary root: the files, their modes, an edited
configuration file kept, the unit pointing at this installation and passing
``systemd-analyze verify``, and the uninstall."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from mptcpd import install
from tests.conftest import in_ci
from tests.unit.test_plugin_kit import build_wheel

ROOT = Path(__file__).resolve().parents[2]
COMMAND = Path(sys.executable).with_name("mptcpd-install")
FILES = {
    "etc/systemd/system/mptcp.service": 0o644,
    "etc/mptcpd/mptcpd.conf": 0o644,
    "usr/local/share/man/man8/mptcpd.8": 0o644,
    "usr/local/share/man/man8/mptcpize.8": 0o644,
    "usr/local/share/man/man8/mptcp-get-debug.8": 0o644,
    "usr/local/share/man/man8/mptcpctl.8": 0o644,
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(COMMAND), *args], capture_output=True, text=True, timeout=60)


def files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777
            for p in root.rglob("*") if p.is_file()}


def test_install_twice_keeps_an_edited_config_and_uninstall_removes_the_rest(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = run("--root", str(root))
    assert first.returncode == 0, first.stderr
    assert files(root) == FILES
    unit = (root / "etc/systemd/system/mptcp.service").read_text()
    assert f"ExecStart={Path(sys.executable).with_name('mptcpd')} --log=journal\n" in unit
    assert (root / "etc/mptcpd/mptcpd.conf").read_text() == (ROOT / "etc/mptcpd.conf").read_text()
    assert (root / "usr/local/share/man/man8/mptcpize.8").read_text() == \
        (ROOT / "man/mptcpize.8").read_text()
    # An edited configuration file survives a second installation...
    config = root / "etc/mptcpd/mptcpd.conf"
    config.write_text("[core]\npath-manager=sspi\n")
    again = run("--root", str(root))
    assert again.returncode == 0 and f"kept {config} (edited)" in again.stdout
    assert config.read_text() == "[core]\npath-manager=sspi\n"
    assert files(root) == FILES
    # ...and the uninstall.
    gone = run("--root", str(root), "--uninstall")
    assert gone.returncode == 0 and f"kept {config} (edited)" in gone.stdout
    assert files(root) == {"etc/mptcpd/mptcpd.conf": 0o644}
    config.write_text((ROOT / "etc/mptcpd.conf").read_text())  # unedited: removed
    run("--root", str(root), "--uninstall")
    assert files(root) == {}


def test_the_installed_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        if in_ci():
            pytest.fail("systemd-analyze is missing (the bootstrap installs systemd)")
        pytest.skip("systemd-analyze is not installed")
    assert run("--root", str(tmp_path)).returncode == 0
    unit = tmp_path / "etc/systemd/system/mptcp.service"
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_what_the_service_user_cannot_read_is_said() -> None:
    assert "ProtectHome" in (install.unreadable(Path("/root/venv/bin/mptcpd")) or "")
    assert "ProtectHome" in (install.unreadable(Path("/home/me/venv")) or "")
    with tempfile.TemporaryDirectory(dir="/tmp") as name:
        top = Path(name)
        top.chmod(0o755)
        private = top / "private"
        private.mkdir(mode=0o700)
        (private / "mptcpd").write_text("")
        assert "not searchable" in (install.unreadable(private / "mptcpd") or "")
        secret = top / "secret"
        secret.write_text("")
        secret.chmod(0o600)
        assert "not readable" in (install.unreadable(secret) or "")
        secret.chmod(0o644)
        assert install.unreadable(secret) is None


def test_the_wheel_carries_the_system_files(tmp_path: Path) -> None:
    names = set(zipfile.ZipFile(build_wheel(tmp_path)).namelist())
    assert {f"mptcpd/_system/{n}" for n in
            ("mptcp.service", "mptcpd.conf", "mptcpd.8", "mptcpize.8",
             "mptcp-get-debug.8", "mptcpctl.8")} <= names
    assert any(n.startswith("mptcpd/mptcpize/_mptcpwrap") and n.endswith(".so")
               for n in names)

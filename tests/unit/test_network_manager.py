"""The NetworkManager clash check, on trees of files built like /proc, /run
and /etc (a NetworkManager cannot be run here)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from mptcpd.daemon.network_manager import (
    configured_flags,
    find_clash,
    parse_mptcp_flags,
    warn_if_clashing,
)

NM_PID = 4242


def tree(tmp_path: Path, *, pid_file: bool = True, same_netns: bool = True,
         readable_netns: bool = True, configs: dict[str, str] | None = None) -> Path:
    """A root with NetworkManager's pid file (or only its /proc entry), the
    network namespaces of it and of us, and NetworkManager's configuration."""
    root = tmp_path / "root"
    (root / "proc" / "self" / "ns").mkdir(parents=True)
    ours = root / "proc" / "self" / "ns" / "net"
    ours.write_text("our namespace")
    theirs = root / "proc" / str(NM_PID)
    (theirs / "ns").mkdir(parents=True)
    (theirs / "comm").write_text("NetworkManager\n")
    if readable_netns:
        if same_netns:
            os.link(ours, theirs / "ns" / "net")  # the same inode
        else:
            (theirs / "ns" / "net").write_text("another namespace")
    if pid_file:
        (root / "run" / "NetworkManager").mkdir(parents=True)
        (root / "run" / "NetworkManager" / "NetworkManager.pid").write_text(f"{NM_PID}\n")
    for name, text in (configs or {}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(("text", "value"), [
    ("0x1", 1), ("1", 1), ("0x22", 0x22), ("disabled", 1), ("enabled,subflow", 0x22),
    ("enabled subflow backup", 0x62), ("", None), ("bogus", None), ("enabled,bogus", None),
])
def test_mptcp_flags_values(text: str, value: int | None) -> None:
    assert parse_mptcp_flags(text) == value


def test_nothing_without_networkmanager(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    assert find_clash(root, check_pid=False) is None


def test_networkmanager_with_its_default_flags_clashes(tmp_path: Path) -> None:
    clash = find_clash(tree(tmp_path), check_pid=False)
    assert clash is not None
    assert (clash.pid, clash.same_namespace_known, clash.flags) == (NM_PID, True, None)
    message = clash.message()
    assert message.startswith(f"NetworkManager (pid {NM_PID}) runs in this network "
                              "namespace and adds MPTCP endpoints itself "
                              "(connection.mptcp-flags is not set, and its default is "
                              "enabled,subflow)")
    assert "connection.mptcp-flags=0x1" in message and "do not load addr_adv" in message


def test_found_by_process_name_without_a_pid_file(tmp_path: Path) -> None:
    clash = find_clash(tree(tmp_path, pid_file=False), check_pid=False)
    assert clash is not None and clash.pid == NM_PID


def test_networkmanager_of_another_namespace_is_no_clash(tmp_path: Path) -> None:
    assert find_clash(tree(tmp_path, same_netns=False), check_pid=False) is None


def test_a_hidden_namespace_is_assumed_shared_and_said_so(tmp_path: Path) -> None:
    clash = find_clash(tree(tmp_path, readable_netns=False), check_pid=False)
    assert clash is not None and not clash.same_namespace_known
    assert "runs on this host (its network namespace could not be read)" in clash.message()


def test_disabled_in_the_configuration_is_no_clash_and_later_files_win(
        tmp_path: Path) -> None:
    configs = {
        "etc/NetworkManager/NetworkManager.conf": "[main]\nplugins=keyfile\n"
                                                  "[connection]\nconnection.mptcp-flags=0x22\n",
        "usr/lib/NetworkManager/conf.d/10-vendor.conf":
            "[connection-mptcp]\nconnection.mptcp-flags=disabled\n",
    }
    root = tree(tmp_path, configs=configs)
    assert configured_flags(root) == (1, str(root / "usr/lib/NetworkManager/conf.d/10-vendor.conf"))
    assert find_clash(root, check_pid=False) is None
    # An administrator's file in /etc/NetworkManager/conf.d comes later: enabled again.
    admin = root / "etc/NetworkManager/conf.d/50-mptcp.conf"
    admin.parent.mkdir(parents=True)
    admin.write_text("[connection]\nconnection.mptcp-flags=enabled,subflow,backup\n")
    clash = find_clash(root, check_pid=False)
    assert clash is not None and clash.flags == 0x62 and clash.source == str(admin)
    assert f"connection.mptcp-flags is 0x62 in {admin}" in clash.message()


def test_unreadable_or_broken_configuration_is_skipped(tmp_path: Path) -> None:
    root = tree(tmp_path, configs={
        "etc/NetworkManager/conf.d/bad.conf": "no section header\n",
        "etc/NetworkManager/conf.d/junk.conf": "[connection]\nconnection.mptcp-flags=??\n",
    })
    assert configured_flags(root) == (None, None)
    assert find_clash(root, check_pid=False) is not None


def test_a_pid_that_is_no_process_is_no_clash(tmp_path: Path) -> None:
    root = tree(tmp_path)
    (root / "run/NetworkManager/NetworkManager.pid").write_text("2147483646\n")
    assert find_clash(root) is None


def test_the_warning_is_logged_once_and_never_raises(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    root = tree(tmp_path)
    monkeypatch.setattr("mptcpd.daemon.network_manager._running", lambda pid: True)
    with caplog.at_level(logging.WARNING, "mptcpd.daemon.network_manager"):
        assert warn_if_clashing(root) is not None
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "NetworkManager (pid 4242)" in caplog.text

    def broken(root: Path, **_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("mptcpd.daemon.network_manager.find_clash", broken)
    assert warn_if_clashing(root) is None

"""``mptcpd.testing`` and the plugin guide's promise: a plugin written only
from the guide passes its own tests with the kit, and type-checks against
the installed package (PEP 561)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mptcpd.plugin import Interface, NotReady, SockAddr
from mptcpd.testing import READY, FakePathManager, HookFailed, PluginDriver
from tests import guide

ROOT = Path(__file__).resolve().parents[2]
TOKEN = 0x1234


def plugin_dir(tmp_path: Path, **files: str) -> Path:
    """A directory the daemon's loader accepts, holding ``files``."""
    directory = tmp_path / "plugins"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    for name, text in files.items():
        (directory / name).write_text(text)
        (directory / name).chmod(0o644)
    return directory


def run_pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *args], cwd=directory, capture_output=True, text=True,
                          timeout=120)


def test_the_guides_test_passes_and_fails_when_the_plugin_is_wrong(tmp_path: Path) -> None:
    plugin = guide.minimal_plugin()
    directory = plugin_dir(tmp_path, **{"hello.py": plugin, "test_hello.py": guide.plugin_test()})
    passed = run_pytest(directory, "test_hello.py")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "1 passed" in passed.stdout
    # The same test catches a plugin that forgets its connections.
    broken = plugin.replace("subflows.pop(token, 1)", "subflows.get(token, 1)")
    assert broken != plugin
    (directory / "hello.py").write_text(broken)
    failed = run_pytest(directory, "test_hello.py")
    assert failed.returncode == 1 and "1 failed" in failed.stdout, failed.stdout


def build_wheel(tmp_path: Path) -> Path:
    """The package's wheel, built from a copy of the checkout (a build
    leaves files behind in its source tree)."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
        ".hypothesis", "tests"))
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", "-w", str(out), str(source)],
                   check=True, capture_output=True, text=True, timeout=300)
    [wheel] = out.glob("mptcpd-*.whl")
    return wheel


def install(wheel: Path, prefix: Path) -> tuple[Path, Path]:
    """A bare virtual environment with the wheel unpacked into its
    site-packages, as pip would install it: its interpreter and site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)],
                   check=True, timeout=120)
    python = prefix / "bin" / "python"
    purelib = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=60).stdout.strip())
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(purelib)
    return python, purelib


def mypy(python: Path, directory: Path, *files: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--python-executable", str(python), *files],
        cwd=directory, capture_output=True, text=True, timeout=300, env=env)


def test_a_plugin_from_the_guide_type_checks_against_the_installed_package(
        tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is part of the test extra")
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"mptcpd/py.typed", "mptcpd/plugin.py", "mptcpd/testing.py",
            "mptcpd/daemon/io.mptcpd.varlink"} <= names
    python, purelib = install(wheel, tmp_path / "venv")
    directory = plugin_dir(tmp_path, **{"hello.py": guide.minimal_plugin(),
                                        "test_hello.py": guide.plugin_test()})
    checked = mypy(python, directory, "hello.py", "test_hello.py")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # A plugin that misuses the API is caught: the check is real.
    (directory / "bad.py").write_text(
        "from mptcpd.plugin import PathManager, SockAddr, hookimpl\n\n\n"
        "@hookimpl\n"
        "def plugin_init(pm: PathManager) -> None:\n"
        "    pm.add_subflow(1, 2, 3, SockAddr('192.0.2.1'))\n"
        "    pm.network_monitor.register(None)\n")
    bad = mypy(python, directory, "bad.py")
    assert bad.returncode == 1, bad.stdout
    assert 'Missing positional argument "raddr"' in bad.stdout
    assert '"NetworkView" has no attribute "register"' in bad.stdout
    # Without the PEP 561 marker an installed package is not type-checked.
    (purelib / "mptcpd" / "py.typed").unlink()
    unmarked = mypy(python, directory, "hello.py")
    assert unmarked.returncode == 1 and "py.typed" in unmarked.stdout, unmarked.stdout


# -- the kit itself ----------------------------------------------------------------


@pytest.fixture
def sspi(tmp_path: Path) -> Iterator[tuple[PluginDriver, FakePathManager]]:
    directory = plugin_dir(tmp_path, **{"sspi.py": (ROOT / "plugins" / "sspi.py").read_text()})
    pm = FakePathManager(interfaces=[
        Interface(2, "c1", READY, addrs=(SockAddr("192.0.2.1"),)),
        Interface(3, "c2", READY, addrs=(SockAddr("198.51.100.1"),)),
    ])
    driver = PluginDriver.load(directory / "sspi.py", pm)
    yield driver, pm
    pm.close()


def test_the_driver_dispatches_as_the_daemon_and_the_pm_checks_as_the_daemon(
        sspi: tuple[PluginDriver, FakePathManager]) -> None:
    driver, pm = sspi
    laddr, raddr = SockAddr("192.0.2.1", 40000), SockAddr("192.0.2.2", 5201)
    driver.new_connection(TOKEN, laddr, raddr)
    driver.connection_established(TOKEN, laddr, raddr)
    local_id = pm.id_manager.lookup(SockAddr("198.51.100.1"))
    assert local_id == 1
    assert pm.take() == [("add_subflow", TOKEN, 1, 0, SockAddr("198.51.100.1"), raddr,
                          False)]
    # Events of a connection that was never created are not the plugin's.
    driver.new_subflow(0x9999, laddr, raddr)
    # The network view changes before the plugin hears of it.
    c3 = Interface(4, "c3", READY)
    driver.new_interface(c3)
    driver.new_local_address(c3, SockAddr("203.0.113.1"))
    assert pm.network_monitor.find_interface(SockAddr("203.0.113.1")) is not None
    [(name, *args)] = pm.take()
    assert name == "add_subflow" and args[3] == SockAddr("203.0.113.1")
    driver.connection_closed(TOKEN)
    driver.exit()


def test_commands_are_checked_and_futures_settled_by_the_test() -> None:
    pm = FakePathManager()
    with pytest.raises(ValueError):
        pm.add_subflow(TOKEN, 256, 0, SockAddr("192.0.2.1"), SockAddr("192.0.2.2", 1))
    assert pm.take() == []
    future = pm.kpm_add_addr(SockAddr("192.0.2.1"), 1)
    [command] = pm.commands
    seen: list[BaseException | None] = []
    future.add_done_callback(lambda f: seen.append(f.exception()))
    command.refuse(34)
    pm.settle()
    assert [getattr(e, "errno", None) for e in seen] == [34]
    assert pm.take() == [("kpm_add_addr", SockAddr("192.0.2.1"), 1, 0, 0)]
    # add_addr "listens" without a socket; port 0 gets a made-up port.
    pm.add_addr(SockAddr("192.0.2.1"), 2, TOKEN)
    [(name, bound, addr_id, token)] = pm.take()
    assert name == "add_addr" and bound.port and (addr_id, token) == (2, TOKEN)
    pm.set_ready(False)
    with pytest.raises(NotReady):
        pm.kpm_dump_addrs()
    pm.close()


async def test_in_an_async_test_the_futures_belong_to_the_running_loop() -> None:
    pm = FakePathManager()
    future = pm.kpm_get_limits()
    assert future.get_loop() is asyncio.get_running_loop()
    pm.commands[0].answer("limits")
    assert await future == "limits"


def test_a_hook_that_raises_fails_the_test(tmp_path: Path) -> None:
    directory = plugin_dir(tmp_path, **{"boom.py": (
        "from mptcpd.plugin import PluginInfo, hookimpl\n"
        "PLUGIN = PluginInfo(name='boom')\n"
        "@hookimpl\n"
        "def connection_closed(token):\n"
        "    raise RuntimeError('boom')\n")})
    driver = PluginDriver.load(directory / "boom.py")
    driver.new_connection(TOKEN, SockAddr("192.0.2.1", 1), SockAddr("192.0.2.2", 2))
    with pytest.raises(HookFailed, match=r'plugin "boom" raised in connection_closed'):
        driver.connection_closed(TOKEN)

"""mptcpize without privileges: the command line (C's texts and exit
statuses), the environment ``run`` gives a program, and ``enable``/
``disable`` on a unit directory of the test's own with a stand-in
``systemctl``.  The sockets themselves are checked in a lab namespace
(tests/integration/test_mptcpize.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mptcpd import __version__
from mptcpd.mptcpize import HELP, SHORT_HELP, shim

MPTCPIZE = Path(sys.executable).with_name("mptcpize")
# C mptcpize 0.12's texts, as Debian's binary prints them.
COMMANDS = (
    "Available CMDs:\n"
    "\trun [-d] prog [<args>]    Run target program with specified\n"
    "\t                          arguments, forcing MPTCP socket usage\n"
    "\t                          instead of TCP.  If the '-d' argument\n"
    "\t                          is provided, dump messages on stderr\n"
    "\t                          when a TCP socket is forced to MPTCP.\n\n"
    "\tenable <unit>             Update the systemd <unit>, forcing\n"
    "\t                          the given service to run under the\n"
    "\t                          above launcher.\n\n"
    "\tdisable <unit>            Update the systemd <unit>, removing\n"
    "\t                          the above launcher.\n\n"
    "Report bugs to <mptcp@lists.linux.dev>.\n")
TITLE = "mptcpize - a tool to enable MPTCP usage on unmodified legacy services\n"
C_HELP = ("Usage: mptcpize [OPTION...] CMD\n" + TITLE + "\n"
          "  -?, --help                 Give this help list\n"
          "      --usage                Give a short usage message\n"
          "  -V, --version              Print program version\n\n" + COMMANDS)
C_SHORT_HELP = "Usage: mptcpize CMD\n" + TITLE + "\n" + COMMANDS
TRY = "Try `mptcpize --help' or `mptcpize --usage' for more information.\n"


def mptcpize(*args: str, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MPTCPIZE), *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=cwd)


@pytest.mark.parametrize(("args", "status", "stdout", "stderr"), [
    (("--help",), 0, HELP, ""),
    (("-?",), 0, HELP, ""),
    (("-h",), 0, HELP, ""),
    (("--hel",), 0, HELP, ""),
    (("--usage",), 0, "Usage: mptcpize [-?V] [--help] [--usage] [--version] CMD\n", ""),
    (("-V",), 0, f"mptcpize {__version__}\n", ""),
    (("--version", "extra"), 0, f"mptcpize {__version__}\n", ""),
    ((), 0, "", SHORT_HELP),
    (("help",), 0, "", SHORT_HELP),
    (("-d",), 64, "", f"mptcpize: invalid option -- 'd'\n{TRY}"),
    (("--bogus",), 64, "", f"mptcpize: unrecognized option '--bogus'\n{TRY}"),
    (("--help=1",), 64, "", f"mptcpize: option '--help' doesn't allow an argument\n{TRY}"),
    (("bogus",), 255, "", "unknown arg bogus\n"),
    (("run",), 255, "", "missing command argument\n" + SHORT_HELP),
    (("run", "-d"), 255, "", "missing command argument\n" + SHORT_HELP),
    (("enable",), 255, "", "missing unit argument\n" + SHORT_HELP),
    (("disable",), 255, "", "missing unit argument\n" + SHORT_HELP),
    (("run", "/nonexistent/program"), 255, "", ""),
])
def test_the_command_line_answers_as_c_mptcpize(
        args: tuple[str, ...], status: int, stdout: str, stderr: str) -> None:
    proc = mptcpize(*args)
    assert (proc.returncode, proc.stdout, proc.stderr) == (status, stdout, stderr)


def test_the_help_texts_are_c_mptcpizes() -> None:
    assert (HELP, SHORT_HELP) == (C_HELP, C_SHORT_HELP)


ENV_DUMP = "import json, os; print(json.dumps(dict(os.environ)))"


def test_run_keeps_ld_preload_and_godebug_and_adds_the_shim() -> None:
    library = Path(shim())
    assert library.is_file()
    env = dict(os.environ, LD_PRELOAD="libm.so.6", GODEBUG="http2client=0")
    env.pop("MPTCPWRAP_DEBUG", None)
    proc = mptcpize("run", sys.executable, "-c", ENV_DUMP, env=env)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["LD_PRELOAD"] == f"libm.so.6:{library}"
    assert seen["GODEBUG"] == "http2client=0,multipathtcp=1"
    assert "MPTCPWRAP_DEBUG" not in seen
    # -d, and nothing set before: the shim alone, debugging on.
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GODEBUG")}
    proc = mptcpize("run", "-d", sys.executable, "-c", ENV_DUMP, env=env)
    seen = json.loads(proc.stdout)
    assert (seen["LD_PRELOAD"], seen["GODEBUG"], seen["MPTCPWRAP_DEBUG"]) == (
        str(library), "multipathtcp=1", "1")


def test_run_passes_the_programs_exit_status() -> None:
    assert mptcpize("run", sys.executable, "-c", "raise SystemExit(7)").returncode == 7


# -- enable / disable -----------------------------------------------------------------


SERVICE = """\
[Unit]
Description=an example

[Service]
Environment=FOO=1 BAR=2
Environment="LD_PRELOAD=/opt/x/libx.so"
ExecStart=/usr/bin/example

[Install]
WantedBy=multi-user.target
"""


@pytest.fixture
def units(tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    """A unit directory with example.service, a stand-in systemctl that
    records its calls (``FAIL_RELOAD`` makes daemon-reload fail), and the
    environment that points mptcpize at both."""
    directory = tmp_path / "units"
    directory.mkdir()
    (directory / "example.service").write_text(SERVICE)
    (directory / "example.socket").write_text("[Socket]\nListenStream=8080\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "systemctl.calls"
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {calls}\n'
        'case "$1" in\n'
        '  --version) echo "systemd ${SYSTEMD_VERSION:-257} (257.1-1)"; exit 0 ;;\n'
        '  daemon-reload) [ -z "$FAIL_RELOAD" ] ;;\n'
        '  show) echo "FragmentPath=$FRAGMENT" ;;\n'
        "esac\n")
    systemctl.chmod(0o755)
    env = dict(os.environ, MPTCPIZE_UNIT_DIR=str(directory),
               PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return directory, env, calls


def test_enable_writes_a_drop_in_and_leaves_the_unit_alone(
        units: tuple[Path, dict[str, str], Path]) -> None:
    directory, env, calls = units
    proc = mptcpize("enable", "example.service", env=env)
    unit = directory / "example.service"
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0, f"mptcp successfully enabled on unit {unit}\n", "")
    assert unit.read_text() == SERVICE  # FOO, BAR and the unit's LD_PRELOAD stay
    drop_in = directory / "example.service.d" / "mptcpize.conf"
    text = drop_in.read_text()
    assert "[Service]\n" in text
    assert (f"Environment=LD_PRELOAD=/opt/x/libx.so:{shim()} GODEBUG=multipathtcp=1\n"
            in text)
    assert oct(drop_in.stat().st_mode & 0o777) == "0o644"
    assert calls.read_text().splitlines() == ["daemon-reload"]
    # Twice is the same as once; disable removes the drop-in and its directory.
    assert mptcpize("enable", str(unit), env=env).returncode == 0
    assert drop_in.read_text() == text
    proc = mptcpize("disable", "example.service", env=env)
    assert (proc.returncode, proc.stdout) == (
        0, f"mptcp successfully disabled on unit {unit}\n")
    assert not drop_in.parent.exists() and unit.read_text() == SERVICE


def test_a_failed_reload_is_reported_after_the_drop_in_is_written(
        units: tuple[Path, dict[str, str], Path]) -> None:
    directory, env, _ = units
    proc = mptcpize("enable", "example.service", env=dict(env, FAIL_RELOAD="1"))
    assert (proc.returncode, proc.stderr) == (
        1, "mptcpize: can't reload unit, manual 'systemctl daemon-reload' is required\n")
    assert (directory / "example.service.d" / "mptcpize.conf").exists()


def test_a_socket_unit_gets_socket_protocol_mptcp_from_systemd_257(
        units: tuple[Path, dict[str, str], Path]) -> None:
    directory, env, _ = units
    old = mptcpize("enable", "example.socket", env=dict(env, SYSTEMD_VERSION="256"))
    assert (old.returncode, old.stderr) == (
        1, "mptcpize: SocketProtocol=mptcp needs systemd 257 or later; "
           "this is systemd 256\n")
    assert not (directory / "example.socket.d").exists()
    new = mptcpize("enable", "example.socket", env=env)
    assert new.returncode == 0, new.stderr
    assert "[Socket]\nSocketProtocol=mptcp\n" in (
        directory / "example.socket.d" / "mptcpize.conf").read_text()


def test_a_unit_elsewhere_is_found_through_systemd(
        units: tuple[Path, dict[str, str], Path], tmp_path: Path) -> None:
    directory, env, calls = units
    elsewhere = tmp_path / "lib" / "other.service"
    elsewhere.parent.mkdir()
    elsewhere.write_text("[Service]\nExecStart=/usr/bin/other\n")
    proc = mptcpize("enable", "other.service", env=dict(env, FRAGMENT=str(elsewhere)))
    assert proc.stdout == f"mptcp successfully enabled on unit {elsewhere}\n", proc.stderr
    assert calls.read_text().splitlines()[0] == "show -p FragmentPath other.service"
    # The drop-in goes to the unit directory, never next to the vendor's file.
    assert (directory / "other.service.d" / "mptcpize.conf").exists()
    missing = mptcpize("enable", "gone.service", env=dict(env, FRAGMENT=""))
    assert (missing.returncode, missing.stderr) == (
        1, "mptcpize: can't find unit file for service gone.service\n")


MAN = Path(__file__).resolve().parents[2] / "man" / "mptcpize.8"


def test_the_man_page_renders_cleanly_and_names_every_command_and_option() -> None:
    import shutil
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    proc = subprocess.run(["groff", "-man", "-ww", "-z", str(MAN)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    text = MAN.read_text()
    for word in ("run", "enable", "disable", r"\-\-help", r"\-\-usage", r"\-\-version",
                 "MPTCPIZE_UNIT_DIR", "MPTCPWRAP_DEBUG", "SocketProtocol=mptcp"):
        assert word in text, word

"""mptcp-get-debug: collect what an MPTCP problem report needs.

``-c`` prints, each under a banner, the kernel version, the OS release,
``sysctl net.mptcp``, the MPTCP endpoints and limits, every MPTCP socket
(``ss -ManiH``), the MIB counters (``nstat``) and, where a service manager
runs mptcpd, its status and recent log.  ``-r`` resets the counters,
records ``ip mptcp monitor`` while the user reproduces the problem, and
collects when the user presses Enter (or after ``--timeout`` seconds).
Everything goes to standard output; run it as root, in the network
namespace that has the problem.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence

from mptcpd import __version__

BANNER = "=" * 40
#: The commands of a collection: (title, argv), or a file to print.
COLLECT: tuple[tuple[str, Sequence[str]], ...] = (
    ("uname -a", ("uname", "-a")),
    ("/etc/os-release", ("cat", "/etc/os-release")),
    ("sysctl net.mptcp", ("sysctl", "net.mptcp")),
    ("ip mptcp endpoint show", ("ip", "mptcp", "endpoint", "show")),
    ("ip mptcp limits show", ("ip", "mptcp", "limits", "show")),
    ("ss -ManiH", ("ss", "-ManiH")),
    ("nstat", ("nstat",)),
)
SERVICE = (
    ("systemctl status mptcp", ("systemctl", "--no-pager", "status", "mptcp")),
    ("journalctl -u mptcp", ("journalctl", "--no-pager", "-n", "100", "-u", "mptcp")),
)


def section(title: str, argv: Sequence[str]) -> str:
    """One banner and what ``argv`` printed (or why it could not run)."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
        body = proc.stdout + proc.stderr
    except FileNotFoundError:
        body = f"{argv[0]}: not installed\n"
    except subprocess.TimeoutExpired:
        body = f"{argv[0]}: no answer within 30 s\n"
    if body and not body.endswith("\n"):
        body += "\n"
    return f"{BANNER}\n{title}\n{BANNER}\n{body}"


def collect() -> str:
    parts = [section(title, argv) for title, argv in COLLECT]
    if shutil.which("systemctl") and os.path.isdir("/run/systemd/system"):
        parts += [section(title, argv) for title, argv in SERVICE]
    return "".join(parts)


def reproduce(timeout: float) -> str:
    """Record ``ip mptcp monitor`` until Enter (or ``timeout``), then collect."""
    subprocess.run(["nstat", "-n"], capture_output=True, timeout=30)
    monitor = subprocess.Popen(["ip", "mptcp", "monitor"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)  # give the monitor time to join the event group
        print("Reproduce the problem now, then press Enter "
              f"(at most {timeout:.0f} s).", file=sys.stderr, flush=True)
        ready, _, _ = select.select([sys.stdin], [], [], timeout)
        if ready:
            sys.stdin.readline()
        collected = collect()
    finally:
        monitor.terminate()
        try:
            events, _ = monitor.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            monitor.kill()
            events, _ = monitor.communicate()
    return collected + f"{BANNER}\nip mptcp monitor\n{BANNER}\n{events}"


def main(argv: Sequence[str] | None = None) -> None:
    """The ``mptcp-get-debug`` command."""
    parser = argparse.ArgumentParser(
        prog="mptcp-get-debug", add_help=False,
        description="Collect the MPTCP state of this network namespace for a bug report.")
    parser.add_argument("-c", "--collect", action="store_true",
                        help="print the MPTCP state now")
    parser.add_argument("-r", "--reproduce", action="store_true",
                        help="record MPTCP events while the problem is reproduced, then "
                             "print them with the state")
    parser.add_argument("-t", "--timeout", type=float, default=600.0,
                        help="with -r: stop recording after this many seconds "
                             "(default 600)")
    parser.add_argument("-h", "--help", action="help", help="show this help and exit")
    parser.add_argument("-v", "--version", action="version",
                        version=f"mptcp-get-debug {__version__}")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        raise SystemExit(0 if exc.code == 0 else 1) from None
    if args.collect == args.reproduce:
        parser.print_usage(sys.stderr)
        raise SystemExit(1)
    if os.geteuid() != 0:
        print("mptcp-get-debug: not root: some of the state cannot be read.",
              file=sys.stderr)
    sys.stdout.write(reproduce(args.timeout) if args.reproduce else collect())

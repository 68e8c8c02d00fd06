"""Compare the kernel state this mptcpd and the C mptcpd produce, step by step.

Runs the same steps with each daemon in a fresh lab (addr_adv with the
in-kernel PM; sspi with the userspace PM) and prints the endpoints, limits and
subflows the kernel reports after each step, side by side.  Needs root and the
C daemon from Debian (``apt-get install mptcpd mptcpd-plugins``; the package's
service must not start: this script runs the daemon only inside lab
namespaces).  Not part of the test suite.

    .venv/bin/python bench/compare_c_mptcpd.py [--c-daemon /usr/libexec/mptcpd]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
from tests.lab import Lab, Process, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
C_PLUGIN_DIR = "/usr/lib/x86_64-linux-gnu/mptcpd"
SETTLE = 1.5  # seconds given to a daemon to react to a step, for both alike


def start(lab: Lab, impl: str, c_daemon: str, *args: str) -> Process:
    if impl == "c":
        proc = lab.spawn(lab.client, c_daemon, "--log=stderr", f"--plugin-dir={C_PLUGIN_DIR}",
                         *args, name="c-mptcpd")
        wait_for(lambda: "initialized" in proc.output() or proc.popen.poll() is not None,
                 15, what="C mptcpd to initialize")
    else:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT)
        proc = lab.start_mptcpd("--log=stderr", f"--plugin-dir={ROOT / 'plugins'}", *args,
                                config="[core]\n", env=env)
        proc.wait_output("mptcpd ready", timeout=15)
    return proc


def settle() -> None:
    import time

    time.sleep(SETTLE)


def endpoint_view(lab: Lab) -> str:
    eps = sorted(lab.endpoints(lab.client), key=lambda e: e.id)
    limits = lab.limits(lab.client)
    body = ", ".join(f"{e.address}#{e.id}{'/' + '+'.join(sorted(e.flags)) if e.flags else ''}"
                     for e in eps) or "no endpoints"
    return f"{body}; limits subflows={limits.get('subflows')} " \
           f"add_addr_accepted={limits.get('add_addr_accepted')}"


def addr_adv_steps(impl: str, c_daemon: str) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    args = ("--path-manager=addr_adv", "--load-plugins=addr_adv", "--addr-flags=subflow",
            "--notify-flags=existing,skip_link_local")
    with Lab(links=2) as lab:
        second = lab.links[1]
        daemon = start(lab, impl, c_daemon, *args)
        settle()
        rows.append(("start (existing addresses)", endpoint_view(lab)))
        lab.ip(lab.client, "addr", "add", "203.0.113.1/24", "dev", "c1")
        settle()
        rows.append(("address 203.0.113.1 added", endpoint_view(lab)))
        lab.ip(lab.client, "addr", "del", "203.0.113.1/24", "dev", "c1")
        settle()
        rows.append(("address 203.0.113.1 removed", endpoint_view(lab)))
        lab.set_carrier(second, up=False)
        settle()
        rows.append(("link 2 loses its carrier", endpoint_view(lab)))
        lab.set_carrier(second, up=True)
        settle()
        rows.append(("link 2 carrier back", endpoint_view(lab)))
        daemon.stop(signal.SIGTERM)
        daemon = start(lab, impl, c_daemon, *args)
        settle()
        rows.append(("daemon restarted", endpoint_view(lab)))
        daemon.stop(signal.SIGTERM)
    with Lab(links=2) as lab:
        lab.ip(lab.client, "mptcp", "endpoint", "add", str(lab.links[1].client4), "id", "42",
               "signal")
        daemon = start(lab, impl, c_daemon, *args)
        settle()
        rows.append(("pre-existing endpoint #42, start", endpoint_view(lab)))
        lab.ip(lab.client, "addr", "del", f"{lab.links[1].client4}/24", "dev", "c2")
        settle()
        rows.append(("its address removed", endpoint_view(lab)))
        daemon.stop(signal.SIGTERM)
    return rows


def sspi_steps(impl: str, c_daemon: str, connections: int) -> list[tuple[str, str]]:
    with Lab(links=2, path_manager="userspace") as lab:
        daemon = start(lab, impl, c_daemon, "--path-manager=sspi", "--load-plugins=sspi")
        server = lab.python(lab.server, "-m", "tests.lab.traffic", "server",
                            "--duration", "300")
        server.wait_output("listening")
        extra = []
        for _ in range(connections):
            out = lab.exec(lab.client, sys.executable, "-m", "tests.lab.traffic", "client",
                           str(lab.links[0].server4), "5201", "--bytes", "200000",
                           "--hold", "1.0").stdout
            extra.append(json.loads(out)["info"]["subflows"])
        daemon.stop(signal.SIGTERM)
    with_extra = sum(1 for n in extra if n >= 1)
    return [(f"{connections} connections", f"{with_extra} got an extra subflow "
             f"({100 * with_extra // connections} %); extra subflows per connection: "
             f"{sorted(set(extra))}")]


def table(title: str, results: dict[str, list[tuple[str, str]]]) -> None:
    print(f"\n## {title}\n")
    steps = [s for s, _ in next(iter(results.values()))]
    for i, step in enumerate(steps):
        print(f"- {step}")
        for impl, rows in results.items():
            print(f"    {impl:>6}: {rows[i][1]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--c-daemon", default="/usr/libexec/mptcpd")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--only", choices=("addr_adv", "sspi"))
    args = parser.parse_args()
    if not shutil.which(args.c_daemon) and not Path(args.c_daemon).exists():
        print(f"no C mptcpd at {args.c_daemon}; apt-get install mptcpd mptcpd-plugins",
              file=sys.stderr)
        return 1
    runs: list[tuple[str, Callable[[str], list[tuple[str, str]]]]] = []
    if args.only in (None, "addr_adv"):
        runs.append(("addr_adv, in-kernel PM", lambda i: addr_adv_steps(i, args.c_daemon)))
    if args.only in (None, "sspi"):
        runs.append(("sspi, userspace PM",
                     lambda i: sspi_steps(i, args.c_daemon, args.connections)))
    for title, run in runs:
        table(title, {"C 0.12": run("c"), "Python": run("py")})
    return 0


if __name__ == "__main__":
    sys.exit(main())

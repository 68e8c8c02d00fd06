"""Overrun soak: do the client path managers' connections still get their
subflows while a connection flood keeps overrunning the daemon's event socket?

Each round builds a fresh two-link lab (IPv4).  The server runs the
in-kernel PM, announces its link-2 address (a ``signal`` endpoint) and holds
the connections; the client runs the userspace PM and this mptcpd with one
plugin.  ``--flooders`` processes open and close MPTCP connections to a
sink as fast as they can for ``--flood-seconds``, while ``--conns``
connections open at ``--rate`` a second, each closing once it has the extra
subflows its plugin gives it (or after ``--deadline`` seconds):

* ``sspi``, ``failover``: one, from the second link to the peer's initial
  address;
* ``ndiffports`` (``subflows=4``): three, on the initial address pair;
* ``fullmesh``: three, every client address to every server address; the
  second server address is known only from the peer's announcement, which
  the flood's overruns lose for most connections.

Reported per plugin: connections opened, served (their subflows within the
deadline), the served ones' connect → served p50 / max, events lost (the
socket's drop counter), and the daemon's log lines (all, and those of
interest counted).

``--server`` adds ``sspi-server``: sspi on the server, the flood against
it, the client's in-kernel PM joining from its second link to the server's
initial address (a duplicate on that interface, which sspi closes).  It
reports the duplicate joins still open once the flood is over (polled
while the connections are held, until none is left), events lost and log
lines.

``--flap`` replaces the client rounds by address flaps: the connections
(``--conns`` at ``--rate``) are opened first and held; then, during the
flood, the client's second address is deleted and added back (0.3 s
without, 0.5 s with) until the flood ends.  Once it is over, each held
connection should have its plugin's subflows again, exactly: counted from
the kernel's sock_diag listing (established subflows per token) every
tenth of a second for up to 30 s.  Reported: connections exact, with one
too many, or short, the seconds until all were exact, and how many were
exact at the first count.  ``--carrier`` flaps the second link's carrier
instead (the server end of its veth down, then up), the address staying.

``--debug`` runs the client's daemon with ``-d``; ``--log-dir`` keeps
each round's daemon log there (``PLUGIN-N.log``).

What the kernel did is read by the connection client itself
(``tests.lab.traffic conns``: ``MPTCP_INFO`` subflow counts), or from
sock_diag (``--flap``), not from the daemon.  Needs root.

    .venv/bin/python bench/bench_overrun.py [--plugins sspi,fullmesh,ndiffports,failover]
        [--server] [--flap [--carrier]] [--rounds 1] [--conns 600] [--rate 100] [--flooders 2]
        [--debug] [--log-dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src"), str(ROOT / "bench")]

from bench_load import (  # noqa: E402
    Daemon,
    duplicate_join_lab,
    lab_for,
    pct,
    py_env,
    run_conns,
    write_json,
)
from mptcpd.netlink.diag import list_mptcp_subflows  # noqa: E402
from tests.lab import Lab, LabError  # noqa: E402

#: Extra subflows each plugin gives a client connection in this lab.
WANT = {"sspi": 1, "failover": 1, "ndiffports": 3, "fullmesh": 3}
#: Log lines that say nothing about the run (start, stop).
QUIET = re.compile(r"ready|initialized|exited|listening|The kernel uses|existed at startup")


def client_lab(plugin: str, debug: bool = False) -> tuple[Lab, Daemon]:
    """The lab of a client round, its servers listening and ``plugin``'s
    daemon ready in the client (with ``-d`` if ``debug``)."""
    lab = lab_for("userspace", "kernel")
    try:
        settings = {"ndiffports": "subflows=4\n",
                    "failover": f"backup-interfaces={lab.links[1].client_if}\n"}.get(plugin, "")
        link = lab.links[1]
        lab.ip(lab.server, "mptcp", "endpoint", "add", str(link.server4), "dev",
               link.server_if, "signal")
        for args in (("hold", "--bind", "0.0.0.0", "--port", "5201"), ("sink", "--port", "5300")):
            lab.python(lab.server, "-m", "tests.lab.traffic", *args, "--duration", "600",
                       name=args[0], env=py_env()).wait_output("listening")
        daemon = Daemon(lab, "ours", lab.client,
                        [f"--path-manager={plugin}", f"--load-plugins={plugin}",
                         *(["-d"] if debug else [])], "",
                        config=f"[core]\n[plugin {plugin}]\n{settings}")
    except BaseException:
        lab.close()
        raise
    return lab, daemon


def one_round(plugin: str, o: argparse.Namespace) -> dict[str, Any]:
    lab, daemon = client_lab(plugin, o.debug)
    try:
        server = str(lab.links[0].server4)
        flooders = lab.flood(o.flood_seconds, o.flooders)
        res = run_conns(lab, lab.client, server, o.conns, rate=o.rate, want=WANT[plugin],
                        deadline=o.deadline)
        for flooder in flooders:
            flooder.wait(o.flood_seconds + 30)
        drops, alive = daemon.drops(), daemon.proc.popen.poll() is None
        log = daemon.log()
        keep_log(o, plugin, log)
        daemon.stop()
    finally:
        lab.close()
    served = [(t_served - t_connect) * 1e3 for t_connect, _ok, t_served, _tok, _sub, _err
              in res["conns"] if t_served is not None]
    return {
        "connections": o.conns, "opened": sum(1 for c in res["conns"] if c[3] is not None),
        "served": len(served), "served_pct": 100.0 * len(served) / o.conns,
        "p50_ms": pct(served, 0.5), "max_ms": max(served, default=None),
        "events_lost": drops, "daemon_alive": alive, "log_lines": len(log.splitlines()),
        "log": count_lines(log),
    }


def subflow_counts(lab: Lab, port: int = 5201) -> dict[int, int]:
    """Established subflows per connection token in the client, of the
    connections to the server's ``port`` (sock_diag)."""
    counts: dict[int, int] = collections.Counter()
    for sf in asyncio.run(list_mptcp_subflows(lab.client)):
        if sf.established and sf.token and sf.raddr.port == port:
            counts[sf.token] += 1
    return dict(counts)


def off_count(counts: dict[int, int], want: int) -> dict[str, int]:
    """The first 20 connections of ``counts`` without ``want`` subflows:
    token (hex, as the daemon logs it) -> their subflows."""
    off = [(f"{token:08x}", n) for token, n in counts.items() if n != want]
    return dict(off[:20])


def flap_round(plugin: str, o: argparse.Namespace) -> dict[str, Any]:
    """Held connections, then the flood with the client's second address
    flapping; then how many connections have their subflows again."""
    lab, daemon = client_lab(plugin, o.debug)
    try:
        want = WANT[plugin] + 1  # the initial subflow too
        server = str(lab.links[0].server4)
        hold = o.flood_seconds + 90
        conns = lab.python(lab.client, "-m", "tests.lab.traffic", "conns", server, "5201",
                           "--count", str(o.conns), "--rate", str(o.rate), "--want-subflows",
                           "99", "--deadline", str(hold), name="conns", env=py_env())
        deadline = time.monotonic() + o.conns / o.rate + 30
        while len(subflow_counts(lab)) < o.conns and time.monotonic() < deadline:
            time.sleep(0.5)
        link = lab.links[1]
        address = f"{link.client4}/{link.subnet4.prefixlen}"
        if o.carrier:  # the server end of the veth: the client's link loses its carrier
            down = (lab.server, "link", "set", link.server_if, "down")
            up = (lab.server, "link", "set", link.server_if, "up")
        else:
            down = (lab.client, "addr", "del", address, "dev", link.client_if)
            up = (lab.client, "addr", "add", address, "dev", link.client_if)
        flooders = lab.flood(o.flood_seconds, o.flooders)
        flaps, end = 0, time.monotonic() + o.flood_seconds
        while time.monotonic() < end:
            lab.ip(*down)
            time.sleep(0.3)
            lab.ip(*up)
            time.sleep(0.5)
            flaps += 1
        for flooder in flooders:
            flooder.wait(o.flood_seconds + 30)
        over = time.monotonic()
        settled: float | None = None
        counts: dict[int, int] = {}
        first: dict[int, int] | None = None
        last: dict[int, int] = {}  # the count before the exact one
        while time.monotonic() - over < 30:
            counts = subflow_counts(lab)
            first = counts if first is None else first
            if counts and all(n == want for n in counts.values()):
                settled = time.monotonic() - over
                break
            last = counts
            time.sleep(0.1)
        drops, alive = daemon.drops(), daemon.proc.popen.poll() is None
        log = daemon.log()
        keep_log(o, plugin, log)
        conns.stop()
        daemon.stop()
    finally:
        lab.close()
    return {
        "connections": o.conns, "held": len(counts), "flaps": flaps,
        "exact": sum(1 for n in counts.values() if n == want),
        "too_many": sum(1 for n in counts.values() if n > want),
        "short": sum(1 for n in counts.values() if n < want),
        "settled_s": settled,
        "exact_when_over": sum(1 for n in (first or {}).values() if n == want),
        # The tokens to look for in the daemon's log: the connections not
        # exact at the end, and the last to become exact (their subflows
        # before).
        "not_exact": off_count(counts, want),
        "last_exact": off_count(last, want) if settled else {},
        "events_lost": drops, "daemon_alive": alive,
        "log_lines": len(log.splitlines()), "log": count_lines(log),
    }


def server_round(o: argparse.Namespace) -> dict[str, Any]:
    """sspi on the server, the flood against it: the client's in-kernel PM
    joins from its second link to the server's initial address, which sspi
    closes as a duplicate on that interface.  Counted while the connections
    are held: the duplicate joins still open once the flood is over and
    the daemon has caught up (polled until none is left, or the
    connections close), and the daemon's log lines."""
    lab = duplicate_join_lab()
    try:
        second = lab.links[1]
        for args in (("hold", "--bind", "0.0.0.0", "--port", "5201"), ("sink", "--port", "5300")):
            lab.python(lab.server, "-m", "tests.lab.traffic", *args, "--duration", "600",
                       name=args[0], env=py_env()).wait_output("listening")
        daemon = Daemon(lab, "ours", lab.server, ["--path-manager=sspi", "--load-plugins=sspi"],
                        "")
        server = str(lab.links[0].server4)
        flooders = lab.flood(o.flood_seconds, o.flooders)
        conns = lab.python(lab.client, "-m", "tests.lab.traffic", "conns", server, "5201",
                           "--count", str(o.conns), "--rate", str(o.rate), "--deadline",
                           str(o.deadline), name="conns", env=py_env())
        for flooder in flooders:
            flooder.wait(o.flood_seconds + 30)
        # The duplicate joins: server's initial address <- client's second link.
        dups = ["ss", "-tnH", "state", "established", "src", server, "dst", str(second.client4)]
        left, polls = -1, 0
        while conns.popen.poll() is None and polls < 4 * (o.deadline + 60):
            left = len(lab.exec(lab.server, *dups).stdout.splitlines())
            polls += 1
            if not left:
                break
            time.sleep(0.25)
        conns.wait(o.conns / o.rate + o.deadline + 60)
        drops, alive = daemon.drops(), daemon.proc.popen.poll() is None
        log = daemon.log()
        keep_log(o, "sspi-server", log)
        daemon.stop()
    finally:
        lab.close()
    return {"connections": o.conns, "duplicates_left": left, "events_lost": drops,
            "daemon_alive": alive, "log_lines": len(log.splitlines()), "log": count_lines(log)}


def keep_log(o: argparse.Namespace, plugin: str, log: str) -> None:
    """Write a round's daemon log into ``--log-dir``, if given."""
    if o.log_dir:
        directory = Path(o.log_dir)
        directory.mkdir(parents=True, exist_ok=True)
        number = len(list(directory.glob(f"{plugin}-*.log"))) + 1
        (directory / f"{plugin}-{number}.log").write_text(log)


def count_lines(log: str) -> dict[str, int]:
    """The daemon's log lines of interest, numbers and tokens masked, counted."""
    lines: collections.Counter[str] = collections.Counter()
    for line in log.splitlines():
        if not QUIET.search(line):
            lines[re.sub(r"\b[0-9a-f]{8}\b|\d+", "N", line)[:160]] += 1
    return dict(lines.most_common(30))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plugins", default="sspi,fullmesh,ndiffports,failover")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--conns", type=int, default=600)
    parser.add_argument("--rate", type=float, default=100.0, help="connections a second")
    parser.add_argument("--deadline", type=float, default=20.0,
                        help="a connection is served when it has its subflows within this")
    parser.add_argument("--flooders", type=int, default=2)
    parser.add_argument("--flood-seconds", type=float, default=6.0)
    parser.add_argument("--server", action="store_true",
                        help="also sspi on the server side (key sspi-server)")
    parser.add_argument("--flap", action="store_true",
                        help="client rounds with held connections and the second address "
                        "flapping during the flood")
    parser.add_argument("--carrier", action="store_true",
                        help="with --flap: flap the second link's carrier, not its address")
    parser.add_argument("--debug", action="store_true", help="the client daemon runs with -d")
    parser.add_argument("--log-dir", help="keep each round's daemon log in this directory")
    parser.add_argument("--json", dest="json_file")
    o = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    for plugin in o.plugins.split(","):
        if plugin not in WANT:
            parser.error(f"unknown plugin {plugin!r} (one of {', '.join(WANT)})")
    results: dict[str, list[dict[str, Any]]] = {}
    client_round = flap_round if o.flap else one_round
    rounds: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        (plugin, functools.partial(client_round, plugin, o)) for plugin in o.plugins.split(",")]
    if o.server:
        rounds.append(("sspi-server", functools.partial(server_round, o)))
    for number in range(o.rounds):
        for plugin, run in rounds:
            try:
                result = run()
            except LabError as exc:
                result = {"error": str(exc)}
            results.setdefault(plugin, []).append(result)
            print(f"# {plugin} round {number + 1}: "
                  + json.dumps({k: v for k, v in result.items() if k != "log"}),
                  file=sys.stderr, flush=True)
            for line, count in result.get("log", {}).items():
                print(f"#   {count:6d} {line}", file=sys.stderr, flush=True)
    print(f"\n{'plugin':11s} {'served':>13s} {'p50 ms':>8s} {'max ms':>8s} {'events lost':>12s}")
    for plugin, runs in results.items():
        for r in runs:
            if "error" in r:
                print(f"{plugin:11s} error: {r['error']}")
                continue
            if "too_many" in r:
                took = "—" if r["settled_s"] is None else f"{r['settled_s']:.1f} s"
                print(f"{plugin:11s} exact {r['exact']}/{r['connections']}, one too many or "
                      f"more {r['too_many']}, short {r['short']} ({r['flaps']} flaps; all exact "
                      f"after {took}, {r['exact_when_over']} at once), "
                      f"{r['events_lost']} events lost")
                continue
            if "duplicates_left" in r:
                print(f"{plugin:11s} duplicate joins left {r['duplicates_left']}, "
                      f"{r['log_lines']} log lines, {r['events_lost']} events lost")
                continue
            p50 = "—" if r["p50_ms"] is None else f"{r['p50_ms']:.0f}"
            top = "—" if r["max_ms"] is None else f"{r['max_ms']:.0f}"
            print(f"{plugin:11s} {r['served']:>5d}/{r['connections']:<4d} ({r['served_pct']:3.0f} %)"
                  f" {p50:>8s} {top:>8s} {r['events_lost']:>12d}")
    write_json(o, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

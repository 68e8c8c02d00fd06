"""Userspace path managers under a connection burst: fullmesh and ndiffports.

A fresh two-link lab per run: the client runs the userspace PM and this
mptcpd with one plugin; the server runs the in-kernel PM and the traffic
tool's ``hold`` server (for fullmesh it also announces its second address,
so every connection wants 2 x 2 = 4 subflows; ndiffports runs with
``subflows=4``).  ``tests.lab.traffic conns`` opens the burst at once and
polls each connection's ``MPTCP_INFO`` (every ``--poll`` s) until it shows
the 3 extra subflows: connect() → all subflows established, from the
client's own socket, never from the daemon.  Daemon CPU from
``/proc/PID/task/*/schedstat``.  Needs root.

    .venv/bin/python bench/bench_pms.py [--conns 1000] [--runs 3] [--json FILE]
    .venv/bin/python bench/bench_pms.py --conns 20 --runs 1     # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src"), str(ROOT / "bench")]

from bench_load import Daemon, lab_for, pct, py_env, run_conns, write_json  # noqa: E402
from tests.lab import LabError  # noqa: E402

#: plugin -> (its [plugin NAME] settings, whether the server announces link 2).
PLUGINS: dict[str, tuple[str, bool]] = {
    "fullmesh": ("", True),
    "ndiffports": ("subflows=4\n", False),
}
EXTRA = 3  # extra subflows each connection should get


def one_run(plugin: str, o: argparse.Namespace) -> dict[str, Any]:
    settings, announce = PLUGINS[plugin]
    lab = lab_for("userspace", "kernel")
    try:
        if announce:
            link = lab.links[1]
            lab.ip(lab.server, "mptcp", "endpoint", "add", str(link.server4), "dev",
                   link.server_if, "signal")
        server = lab.python(lab.server, "-m", "tests.lab.traffic", "hold", "--bind",
                            "0.0.0.0", "--duration", "600", name="hold", env=py_env())
        server.wait_output("listening")
        daemon = Daemon(lab, "ours", lab.client,
                        [f"--path-manager={plugin}", f"--load-plugins={plugin}"], "",
                        config=f"[core]\n[plugin {plugin}]\n{settings}")
        cpu0 = daemon.cpu()
        res = run_conns(lab, lab.client, str(lab.links[0].server4), o.conns, want=EXTRA,
                        deadline=o.deadline)
        daemon.settle()
        cpu = daemon.cpu() - cpu0
        log = daemon.finish()
    finally:
        lab.close()
    lat = [(t_served - t_connect) * 1e3 for t_connect, _ok, t_served, _tok, _sub, _err
           in res["conns"] if t_served is not None]
    return {
        "served": len(lat), "served_pct": 100.0 * len(lat) / o.conns,
        "p50_ms": pct(lat, 0.5), "p90_ms": pct(lat, 0.9), "max_ms": max(lat, default=None),
        "cpu_us_per_conn": cpu / 1e3 / o.conns,
        "errors": sum(1 for line in log.splitlines() if "ERROR" in line or "Traceback" in line),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plugins", default="fullmesh,ndiffports")
    parser.add_argument("--conns", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=20.0,
                        help="a connection counts as served when all its subflows came "
                        "within this")
    parser.add_argument("--json", dest="json_file")
    o = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    results: dict[str, list[dict[str, Any]]] = {}
    for plugin in o.plugins.split(","):
        for run in range(o.runs):
            print(f"# {plugin} run {run + 1} ...", file=sys.stderr, flush=True)
            try:
                r = one_run(plugin, o)
            except LabError as exc:
                r = {"error": str(exc)[:2000]}
            print(f"#   {json.dumps(r)}", file=sys.stderr, flush=True)
            results.setdefault(plugin, []).append(r)
    print(f"\n{'plugin':12s} {'served %':>9s} {'p50 ms':>8s} {'p90 ms':>8s} "
          f"{'CPU µs/conn':>12s}  (median of {o.runs} runs, {o.conns} connections)")
    for plugin, runs in results.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            print(f"{plugin:12s} failed")
            continue

        def med(key: str, runs: list[dict[str, Any]] = ok) -> float:
            return statistics.median(r[key] for r in runs if r[key] is not None)

        print(f"{plugin:12s} {med('served_pct'):9.1f} {med('p50_ms'):8.0f} "
              f"{med('p90_ms'):8.0f} {med('cpu_us_per_conn'):12.0f}")
    write_json(o, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

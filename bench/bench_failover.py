"""Failover time: the primary link's carrier goes; how long until data flows
on the backup link?  This mptcpd's ``failover`` plugin (userspace PM) next to
the in-kernel PM with a ``subflow backup`` endpoint.

Each trial builds a fresh two-link lab (IPv4).  The server runs the
in-kernel PM and the traffic server; the client streams at ``--rate`` bytes
a second over one MPTCP connection whose second subflow, on link 2, is a
backup subflow:

* ``failover``: client on the userspace PM, this mptcpd with ``failover``
  and ``backup-interfaces=c2``;
* ``kernel``: client on the in-kernel PM with the endpoint
  ``<c2 address> dev c2 subflow backup`` (limits: 2 subflows).

Once both subflows exist and data flows on link 1, a poller inside the
client namespace watches ``/sys/class/net/c1/carrier`` and
``/sys/class/net/c2/statistics/tx_bytes`` every millisecond; the server end
of link 1 is taken down; the figure is the time from the poller seeing the
carrier gone to link 2 having sent ``--threshold`` bytes since.  Both times
come from the one poller process.  Needs root.

    .venv/bin/python bench/bench_failover.py [--trials 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src"), str(ROOT / "bench")]

from bench_load import pct, write_json  # noqa: E402
from tests.lab import Lab, LabError, wait_for  # noqa: E402

PORT = 5201
MB = 1 << 20


def poll(primary: str, backup: str, threshold: int, timeout: float) -> int:
    """(Run inside the client namespace.)  Print when ``primary`` loses its
    carrier and when ``backup`` then has sent ``threshold`` bytes."""
    carrier = Path(f"/sys/class/net/{primary}/carrier")
    tx = Path(f"/sys/class/net/{backup}/statistics/tx_bytes")
    print("polling", flush=True)
    end = time.monotonic() + timeout
    t_lost = base = None
    while time.monotonic() < end:
        now = time.monotonic()
        if t_lost is None:
            try:
                up = carrier.read_text().strip() == "1"
            except OSError:  # reading carrier of a down link fails (EINVAL)
                up = False
            if not up:
                t_lost, base = now, int(tx.read_text())
        elif int(tx.read_text()) - (base or 0) >= threshold:
            print(json.dumps({"t_lost": t_lost, "t_flow": now}), flush=True)
            return 0
        time.sleep(0.001)
    print(json.dumps({"t_lost": t_lost, "t_flow": None}), flush=True)
    return 0


def tx_bytes(lab: Lab, ifname: str) -> int:
    out = lab.exec(lab.client, "cat", f"/sys/class/net/{ifname}/statistics/tx_bytes").stdout
    return int(out)


def subflows(lab: Lab) -> int:
    out = lab.exec(lab.client, "ss", "-tniH", "state", "established").stdout
    return out.count("tcp-ulp-mptcp")


def trial(mode: str, o: argparse.Namespace) -> dict[str, Any]:
    with Lab(links=2, path_manager="userspace" if mode == "failover" else "kernel",
             ipv6=False) as lab:
        primary, backup = lab.links
        lab.set_path_manager(lab.server, "kernel")
        lab.ip(lab.server, "mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "8")
        server = lab.python(lab.server, "-m", "tests.lab.traffic", "server", "--port",
                            str(PORT), "--duration", "120")
        server.wait_output("listening")
        if mode == "failover":
            env = dict(os.environ)
            env.pop("NOTIFY_SOCKET", None)
            daemon = lab.start_mptcpd(
                "--log=stderr", f"--plugin-dir={ROOT / 'plugins'}", "--load-plugins=failover",
                "--path-manager=failover", env=env,
                config=f"[core]\n[plugin failover]\nbackup-interfaces={backup.client_if}\n")
            daemon.wait_output("mptcpd ready", timeout=30)
        else:
            lab.ip(lab.client, "mptcp", "limits", "set", "subflows", "2")
            lab.ip(lab.client, "mptcp", "endpoint", "add", str(backup.client4), "dev",
                   backup.client_if, "subflow", "backup")
        lab.python(lab.client, "-m", "tests.lab.traffic", "client", str(primary.server4),
                   str(PORT), "--wait-subflows", "1", "--stream", str(o.stream),
                   "--rate", str(o.rate), "--timeout", "60", name="streamer")
        wait_for(lambda: subflows(lab) >= 2, timeout=15, what="the backup subflow")
        start = tx_bytes(lab, primary.client_if)
        wait_for(lambda: tx_bytes(lab, primary.client_if) - start >= MB, timeout=15,
                 what="data on the primary link")
        poller = lab.python(lab.client, str(Path(__file__).resolve()), "poll",
                            primary.client_if, backup.client_if, str(o.threshold),
                            str(o.timeout), name="poller")
        poller.wait_output("polling", timeout=15)
        lab.ip(lab.server, "link", "set", primary.server_if, "down")
        poller.wait(o.timeout + 15)
        result: dict[str, Any] = json.loads(poller.output().strip().splitlines()[-1])
    if result["t_flow"] is None or result["t_lost"] is None:
        return {"ms": None}
    return {"ms": (result["t_flow"] - result["t_lost"]) * 1e3}


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "poll":
        return poll(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="failover,kernel")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--rate", type=int, default=4 * MB, help="bytes a second streamed")
    parser.add_argument("--stream", type=float, default=30.0, help="seconds streamed")
    parser.add_argument("--threshold", type=int, default=64 * 1024,
                        help="bytes on the backup link that count as data flowing")
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="a trial whose data does not move within this counts as failed")
    parser.add_argument("--json", dest="json_file")
    o = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    results: dict[str, list[float | None]] = {}
    for mode in o.modes.split(","):
        for number in range(o.trials):
            try:
                ms = trial(mode, o)["ms"]
            except LabError as exc:
                print(f"# {mode} trial {number + 1}: {exc}", file=sys.stderr, flush=True)
                ms = None
            print(f"# {mode} trial {number + 1}: {ms if ms is None else round(ms, 1)} ms",
                  file=sys.stderr, flush=True)
            results.setdefault(mode, []).append(ms)
    print(f"\n{'mode':10s} {'moved':>7s} {'p50 ms':>8s} {'p90 ms':>8s} {'max ms':>8s}")
    for mode, values in results.items():
        ok = [v for v in values if v is not None]
        if not ok:
            print(f"{mode:10s} {0:>3d}/{len(values):<3d}")
            continue
        print(f"{mode:10s} {len(ok):>3d}/{len(values):<3d} {statistics.median(ok):8.0f} "
              f"{pct(ok, 0.9):8.0f} {max(ok):8.0f}")
    write_json(o, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

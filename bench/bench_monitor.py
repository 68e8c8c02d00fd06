"""Does a monitor client slow the daemon?  (See bench/README.md.)

The churn scenario of ``bench_load.py`` (userspace PM + sspi on the client,
flooders opening and resetting connections for ``--seconds``), run three
times on our daemon: with no monitor client, with ``mptcpctl --json
monitor`` reading every record, and with a client that calls ``Monitor``
and never reads.  Figures as in ``bench_load.py``: the daemon's CPU from
schedstat, events counted by the independent watcher, events lost from the
daemon's netlink socket's drop counter; plus what ``GetStatus`` says of the
monitor clients.  Needs root.

    .venv/bin/python bench/bench_monitor.py [--seconds 10] [--flooders 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src"), str(ROOT / "bench")]

from bench_load import SSPI, Daemon, Watcher, flood, lab_for, py_env  # noqa: E402

MPTCPCTL = Path(sys.executable).with_name("mptcpctl")

STALLED = """
import socket, sys, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
sock.connect(sys.argv[1])
sock.sendall(b'{"method": "io.mptcpd.Monitor", "more": true}\\0')
print("stalled", flush=True)
time.sleep(float(sys.argv[2]))
"""


def status(path: Path) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b'{"method": "io.mptcpd.GetStatus"}\0')
        data = b""
        while not data.endswith(b"\0"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    result: dict[str, Any] = json.loads(data[:-1])["parameters"]["status"]
    return result


def run(mode: str, o: argparse.Namespace) -> dict[str, Any]:
    lab = lab_for("userspace", "kernel")
    try:
        sink = lab.python(lab.server, "-m", "tests.lab.traffic", "sink", "--port", "5201",
                          "--duration", str(o.seconds + 120), name="sink", env=py_env())
        sink.wait_output("listening")
        daemon = Daemon(lab, "ours", lab.client, SSPI, "")
        path = lab.workdir / "state" / "control"
        if mode == "reader":
            client = lab.spawn(lab.client, str(MPTCPCTL), "--socket", str(path), "--json",
                               "monitor", name="monitor")
            client.wait_output('"kind": "started"')
        elif mode == "stalled":
            client = lab.python(lab.client, "-c", STALLED, str(path), str(o.seconds + 120),
                                name="stalled")
            client.wait_output("stalled")
        time.sleep(0.5)
        watcher = Watcher(lab, lab.client, count_only=True)
        cpu0 = daemon.cpu()
        made = flood(lab, o)
        daemon.settle(timeout=60)
        cpu = daemon.cpu() - cpu0
        drops = daemon.drops()
        events = watcher.result()
        state = status(path)
        daemon.stop()
    finally:
        lab.close()
    total = events["total"]
    return {
        "mode": mode, "connections": made, "events": total,
        "cpu_us_per_event": round(cpu / 1e3 / max(total, 1), 2),
        "events_lost": drops, "monitors": state["monitors"],
        "monitors_dropped": state["monitors_dropped"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--flooders", type=int, default=2)
    parser.add_argument("--modes", default="none,reader,stalled")
    parser.add_argument("--json", dest="json_out", default=None)
    o = parser.parse_args(argv)
    results = [run(mode, o) for mode in o.modes.split(",")]
    keys = list(results[0])
    widths = [max(len(k), *(len(str(r[k])) for r in results)) for k in keys]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for r in results:
        print("  ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)))
    if o.json_out:
        Path(o.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

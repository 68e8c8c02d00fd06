"""Benchmarks for the ``mptcp_pm`` command path (see bench/README.md).

``codec`` (no privileges)
    Cost of encoding each command and decoding each captured reply with the
    lean codec (:mod:`mptcpd.netlink.pm_codec`) and with pyroute2's message
    classes (the oracle in ``tests/unit/pm_oracle.py``, what the daemon paid
    per message before the codec).

``channel`` (root)
    A lab (client and server namespaces) and a
    :class:`~mptcpd.netlink.genl_commands.CommandChannel` in the client
    namespace sending back-to-back requests, in these modes:

    * ``serial``: each request awaited before the next is submitted (one
      round trip per request, the caller's pace);
    * ``depth1``: all submitted at once, one in flight at a time (mptcpd's
      one-at-a-time writer);
    * ``inflight-N``: N in flight, one ``send`` per request;
    * ``batched-N``: N in flight, the requests queued in one loop iteration
      sent in one ``sendmsg``.

    Each mode runs with the channel's ``send_in_thread`` setting (``slow``:
    datagrams holding DEL_ADDR or FLUSH_ADDRS written by the worker thread,
    ``all``, ``never``: all from the loop), and a probe rescheduled every
    millisecond on the loop reports the loop's worst stall (``lag``).

    Scenarios: ``limits`` (SET_LIMITS then GET_LIMITS), ``addr`` (ADD_ADDR
    then DEL_ADDR of one endpoint: the kernel's own cost dominates),
    ``error`` (ANNOUNCE on an unknown token, answered with an extended
    ACK; the error log lines are silenced).  Reports requests/s and CPU per
    request of the whole process (user, and user + system: the kernel
    handles a request inside our ``sendmsg``).

``sendtime`` (root)
    Wall and CPU time of one blocking ``send`` of each command on a plain
    socket in a lab namespace (the kernel handles the request inside it),
    userspace-PM commands on a live connection.

Usage::

    python bench/bench_commands.py codec [--rounds N]
    python bench/bench_commands.py channel [--requests N] [--threads slow,all,never] [--json FILE]
    python bench/bench_commands.py sendtime [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mptcpd.netlink import pm_codec  # noqa: E402
from mptcpd.netlink.pm_codec import Limits  # noqa: E402
from mptcpd.types import AddrFlags, SockAddr  # noqa: E402

FAMILY_ID = 0x1C
V4 = SockAddr(ipaddress.ip_address("192.0.2.1"), 40000)
R4 = SockAddr(ipaddress.ip_address("198.51.100.2"), 5201)
V6 = SockAddr(ipaddress.ip_address("2001:db8:1::1"))
TOKEN = 0x12345678

CODEC_CASES: list[tuple[str, tuple[Any, ...]]] = [
    ("add_subflow", (TOKEN, 1, 0, V4, R4, False)),
    ("add_addr", (V4, 5, TOKEN)),
    ("remove_subflow", (TOKEN, V4, R4)),
    ("set_backup", (TOKEN, V4, R4, True)),
    ("kpm_add_addr", (V6, 3, int(AddrFlags.SUBFLOW), 2)),
    ("kpm_remove_addr", (3,)),
    ("kpm_set_limits", (Limits(8, 8),)),
    ("kpm_get_limits", ()),
]


def best(fn: Any, rounds: int, repeat: int = 5) -> float:
    """Best per-call time in µs over ``repeat`` runs of ``rounds`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(rounds):
            fn()
        times.append((time.perf_counter() - t0) / rounds * 1e6)
    return min(times)


def bench_codec(rounds: int) -> dict[str, Any]:
    from pyroute2.netlink.marshal import Marshal

    from tests.unit import pm_oracle
    from tests.unit.test_commands_encode import CAPTURES

    logging.disable(logging.CRITICAL)
    out: dict[str, Any] = {"encode": {}, "decode": {}}
    print(f"{'encode':16s} {'lean µs':>8s} {'pyroute2 µs':>12s}")
    for name, args in CODEC_CASES:
        cmd = pm_codec.COMMANDS[name]
        lean = best(lambda: cmd.encode(FAMILY_ID, 7, cmd.flags, *args), rounds)
        old = best(lambda: pm_oracle.encode(name, FAMILY_ID, 7, cmd.flags, *args),
                   max(1, rounds // 10))
        out["encode"][name] = {"lean_us": lean, "pyroute2_us": old}
        print(f"{name:16s} {lean:8.2f} {old:12.1f}")
    marshal = Marshal()
    marshal.msg_map[FAMILY_ID] = pm_oracle.mptcp_pm_cmd_msg
    print(f"\n{'decode':32s} {'lean µs':>8s} {'pyroute2 µs':>12s}")
    for record in CAPTURES:
        for i, hexdata in enumerate(record["datagrams"]):
            data = bytes.fromhex(hexdata)

            def lean_decode(data: bytes = data) -> None:
                for msg in pm_codec.messages(data):
                    if msg.type == pm_codec.NLMSG_ERROR:
                        pm_codec.decode_error(data, msg)
                    elif msg.type == pm_codec.NLMSG_DONE:
                        pm_codec.decode_done(data, msg)
                    elif record["name"] == "kpm_get_limits":
                        pm_codec.decode_limits(data, msg)
                    else:
                        pm_codec.decode_addr(data, msg)

            def old_decode(data: bytes = data) -> None:
                for msg in marshal.parse(data):
                    if msg["header"]["type"] == FAMILY_ID:
                        if record["name"] == "kpm_get_limits":
                            pm_oracle.decode_limits(msg)
                        else:
                            pm_oracle.decode_addr(msg)

            what = f"{record['what'][:28]} #{i}"
            lean = best(lean_decode, rounds)
            old = best(old_decode, max(1, rounds // 10))
            out["decode"][what] = {"lean_us": lean, "pyroute2_us": old}
            print(f"{what:32s} {lean:8.2f} {old:12.1f}")
    return out


# -- channel ------------------------------------------------------------------


def make_pair(scenario: str, lab: Any) -> Any:
    if scenario == "limits":
        return lambda ch, i: [ch.submit("kpm_set_limits", (Limits(subflows=i % 8),)),
                              ch.submit("kpm_get_limits")]
    if scenario == "addr":
        addr = SockAddr(ipaddress.ip_address("203.0.113.1"))
        return lambda ch, i: [ch.submit("kpm_add_addr", (addr, 1, 2, 0)),
                              ch.submit("kpm_remove_addr", (1,))]
    addr = SockAddr(ipaddress.ip_address(str(lab.links[0].client4)))
    return lambda ch, i: [ch.submit("add_addr", (addr, 1, TOKEN), TOKEN),
                          ch.submit("add_addr", (addr, 2, TOKEN), TOKEN)]


class _LagProbe:
    """The worst delay of a callback asked for every millisecond."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.loop = asyncio.get_running_loop()
        self.handle = self.loop.call_later(0.001, self.tick, self.loop.time() + 0.001)

    def tick(self, due: float) -> None:
        now = self.loop.time()
        self.worst = max(self.worst, now - due)
        self.handle = self.loop.call_later(0.001, self.tick, now + 0.001)

    def stop(self) -> float:
        self.handle.cancel()
        return self.worst * 1e3


async def run_channel(ns: str, scenario: str, mode: str, requests: int, lab: Any,
                      thread: str = "slow") -> dict[str, Any]:
    from mptcpd.netlink.genl_commands import CommandChannel

    if mode in ("serial", "depth1"):
        depth, batch = 1, False
    else:
        kind, n = mode.split("-")
        depth, batch = int(n), kind == "batched"
    pair = make_pair(scenario, lab)
    async with CommandChannel(ns, max_in_flight=depth, batch=batch,
                              max_queue=requests + 10, send_in_thread=thread) as ch:
        for i in range(20):  # warm up
            await asyncio.gather(*pair(ch, i), return_exceptions=True)
        probe = _LagProbe()
        t0, c0 = time.perf_counter(), os.times()
        if mode == "serial":
            for i in range(requests // 2):
                for f in pair(ch, i):
                    try:
                        await f
                    except OSError:
                        pass
        else:
            futures = []
            for i in range(requests // 2):
                futures += pair(ch, i)
            await asyncio.gather(*futures, return_exceptions=True)
        wall = time.perf_counter() - t0
        c1 = os.times()
        lag = probe.stop()
    user = (c1.user - c0.user) / requests * 1e6
    total = (c1.user + c1.system - c0.user - c0.system) / requests * 1e6
    return {"scenario": scenario, "mode": mode, "thread": thread, "requests": requests,
            "per_s": requests / wall, "user_us": user, "cpu_us": total, "lag_ms": lag}


def bench_channel(requests: int, modes: list[str], scenarios: list[str],
                  threads: list[str]) -> list[dict[str, Any]]:
    from tests.lab import Lab

    logging.getLogger("mptcpd.netlink.genl_commands").setLevel(logging.CRITICAL)
    results = []
    with Lab(links=1) as lab:
        print(f"{'scenario':8s} {'mode':12s} {'thread':6s} {'req/s':>9s} {'user µs/req':>12s} "
              f"{'CPU µs/req':>11s} {'lag ms':>7s}")
        for scenario in scenarios:
            n = min(requests, 1000) if scenario == "addr" else requests
            for mode in modes:
                for thread in threads:
                    r = asyncio.run(run_channel(lab.client, scenario, mode, n, lab, thread))
                    results.append(r)
                    print(f"{scenario:8s} {mode:12s} {thread:6s} {r['per_s']:9.0f} "
                          f"{r['user_us']:12.1f} {r['cpu_us']:11.1f} {r['lag_ms']:7.1f}",
                          flush=True)
    return results
# -- sendtime ------------------------------------------------------------------


def _drain(sock: Any, seq: int, timeout: float = 5.0) -> int:
    """Read until the ACK, error or DONE of ``seq``; its errno (0: fine)."""
    import select
    import struct

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        select.select([sock], [], [], max(0.0, end - time.monotonic()))
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            continue
        for msg in pm_codec.messages(data):
            if msg.seq == seq and msg.type in (pm_codec.NLMSG_ERROR, pm_codec.NLMSG_DONE):
                return -struct.unpack_from("=i", data, msg.start)[0]
    raise TimeoutError(f"no answer for seq {seq}")


class _Timer:
    """Times one blocking ``send`` per request on a plain command socket."""

    def __init__(self, ns: str) -> None:
        from mptcpd.netlink.genl_commands import open_socket

        self.sock = open_socket(ns)
        self.seq = 1
        self.sock.send(pm_codec.get_family(self.seq, "mptcp_pm"))
        data = b""
        import select
        select.select([self.sock], [], [], 5)
        data = self.sock.recv(65536)
        family, code = pm_codec.decode_family(data, self.seq)
        assert family is not None, code
        self.family = family
        self.times: dict[str, list[tuple[float, float, int]]] = {}

    def run(self, label: str, name: str, *args: Any) -> int:
        cmd = pm_codec.COMMANDS[name]
        self.seq += 1
        data = cmd.encode(self.family, self.seq, cmd.flags, *args)
        c0, t0 = time.thread_time(), time.perf_counter()
        self.sock.send(data)
        t1, c1 = time.perf_counter(), time.thread_time()
        code = _drain(self.sock, self.seq)
        self.times.setdefault(label, []).append(((t1 - t0) * 1e3, (c1 - c0) * 1e6, code))
        return code


def bench_sendtime(rounds: int) -> dict[str, Any]:
    """Wall and CPU time of the ``send`` of each command, kernel PM and
    userspace PM (on a live connection)."""
    import re

    from tests.lab import Lab, wait_for

    out: dict[str, Any] = {}
    with Lab(links=2) as lab:
        t = _Timer(lab.client)
        l1, l2 = lab.links
        a = SockAddr(ipaddress.ip_address(str(l1.client4)))
        b = SockAddr(ipaddress.ip_address("203.0.113.7"))
        for i in range(rounds):
            t.run("SET_LIMITS", "kpm_set_limits", Limits(subflows=i % 8))
            t.run("GET_LIMITS", "kpm_get_limits")
            t.run("ADD_ADDR", "kpm_add_addr", a, 1, 2, 0)
            t.run("GET_ADDR", "kpm_get_addr", 1)
            t.run("GET_ADDR dump", "kpm_dump_addrs")
            t.run("SET_FLAGS (endpoint)", "kpm_set_flags", None, 1 if i % 2 else 0, 1)
            t.run("DEL_ADDR", "kpm_remove_addr", 1)
            t.run("DEL_ADDR (no such id)", "kpm_remove_addr", 1)
            t.run("ADD_ADDR", "kpm_add_addr", b, 2, 2, 0)
            t.run("FLUSH_ADDRS (1 endpoint)", "kpm_flush_addrs")
            t.run("FLUSH_ADDRS (none)", "kpm_flush_addrs")
        # userspace PM on a live connection (server: in-kernel PM)
        lab.set_path_manager(lab.client, "userspace")
        lab.set_path_manager(lab.server, "kernel")
        lab.ip(lab.server, "mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "8")
        server = lab.python(lab.server, "-m", "tests.lab.traffic", "server",
                            "--duration", "300")
        server.wait_output("listening")
        lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                   str(l1.server4), "5201", "--hold", "240", "--timeout", "250",
                   name="client")
        m = wait_for(lambda: re.search(r"\btoken:([0-9a-f]+)",
                                       lab.exec(lab.client, "ss", "-Mni").stdout),
                     timeout=15, what="the client's MPTCP connection")
        token = int(m.group(1), 16)
        local = SockAddr(ipaddress.ip_address(str(l2.client4)))
        remote = SockAddr(ipaddress.ip_address(str(l2.server4)), 5201)
        for i in range(rounds):
            t.run("ANNOUNCE", "add_addr", local, 5, token)
            t.run("REMOVE", "remove_addr", None, 5, token)
            port = 30000 + i
            code = t.run("SUBFLOW_CREATE", "add_subflow", token, 6, 0,
                         SockAddr(local.ip, port), remote, False)
            if code == 0:
                lport = SockAddr(local.ip, port)
                wait_for(lambda: f"{l2.client4}:{port}" in lab.exec(
                    lab.client, "ss", "-tnH", "state", "established").stdout,
                         timeout=5, what="the subflow")
                t.run("SET_FLAGS (subflow backup)", "set_backup", token, lport, remote,
                      bool(i % 2))
                t.run("SUBFLOW_DESTROY", "remove_subflow", token, lport, remote)
        t.run("ANNOUNCE (bad token)", "add_addr", local, 5, 0x12345678)
        print(f"{'command':28s} {'n':>3s} {'wall p50 ms':>11s} {'wall max ms':>11s} "
              f"{'CPU p50 µs':>10s} errors")
        for label, rows in t.times.items():
            walls = sorted(r[0] for r in rows)
            cpus = sorted(r[1] for r in rows)
            errs = sum(1 for r in rows if r[2])
            out[label] = {"n": len(rows), "wall_p50_ms": walls[len(walls) // 2],
                          "wall_max_ms": walls[-1], "cpu_p50_us": cpus[len(cpus) // 2],
                          "errors": errs}
            print(f"{label:28s} {len(rows):3d} {walls[len(walls) // 2]:11.3f} "
                  f"{walls[-1]:11.3f} {cpus[len(cpus) // 2]:10.1f} {errs}", flush=True)
        t.sock.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    codec = sub.add_parser("codec")
    codec.add_argument("--rounds", type=int, default=20000)
    codec.add_argument("--json", type=Path)
    channel = sub.add_parser("channel")
    channel.add_argument("--requests", type=int, default=20000)
    channel.add_argument("--modes", default="serial,depth1,inflight-8,inflight-64,"
                         "batched-8,batched-64,batched-256")
    channel.add_argument("--scenarios", default="limits,error,addr")
    channel.add_argument("--threads", default="slow",
                         help="send_in_thread settings to run each mode with (slow,all,never)")
    channel.add_argument("--json", type=Path)
    sendtime = sub.add_parser("sendtime")
    sendtime.add_argument("--rounds", type=int, default=20)
    sendtime.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.what == "codec":
        result: Any = bench_codec(args.rounds)
    elif args.what == "sendtime":
        result = bench_sendtime(args.rounds)
    else:
        result = bench_channel(args.requests, args.modes.split(","), args.scenarios.split(","),
                               args.threads.split(","))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

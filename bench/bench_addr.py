"""Benchmark of the address path: addr_adv on the in-kernel path manager.

A lab (client and server namespaces); the daemon runs in the client
namespace with addr_adv (``--addr-flags=subflow``,
``--notify-flags=existing,skip_link_local``).  The benchmark process opens
its own netlink sockets inside that namespace and measures:

``latency``
    N cycles of: add a documentation address (203.0.113.x/32 on ``c1``, by
    ``RTM_NEWADDR`` from this process), poll the ``mptcp_pm`` endpoint dump
    until the endpoint is present, delete the address, poll until it is
    gone.  Reports add → endpoint present and del → endpoint gone (p50, p90),
    and the daemon's CPU per address event (one add or one del, with all
    the rtnetlink messages and commands it triggers), from the schedstat of
    every thread of the daemon before and after (ns resolution), divided by
    2N.
``churn``
    M adds and deletes back to back (four addresses in turn, no waiting),
    then waits until the endpoints are gone and the daemon is idle; CPU per
    address event = CPU / 2M.
``idle``
    VmRSS after READY and a short settle, VmHWM at the end (peak).
``startup``
    exec → ``READY=1`` on a ``NOTIFY_SOCKET`` we bind (the C daemon, which
    may not notify, is timed to its "initialized" log line instead),
    repeated a few times.

``--impl ours``, ``c`` or ``both`` (default both when the C daemon is
installed): the C daemon is Debian's mptcpd (``apt-get install mptcpd
mptcpd-plugins``), run only inside the lab namespace with its plugin
directory.  ``--floor`` adds ``bench/floor_pm.py addr`` in the daemon's
place: the least a Python process can do for addr_adv (not a path
manager).  Needs root.  Figures are indicative on a shared machine.

    .venv/bin/python bench/bench_addr.py [--impl both] [--floor] [--cycles 200] [--churn 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import shutil
import socket
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.lab import Lab, Process, wait_for  # noqa: E402
from tests.lab.pmwatch import netlink_drops, netlink_sockets  # noqa: E402

C_DAEMON = "/usr/libexec/mptcpd"
C_PLUGIN_DIR = "/usr/lib/x86_64-linux-gnu/mptcpd"
DAEMON_ARGS = ("--path-manager=addr_adv", "--load-plugins=addr_adv",
               "--addr-flags=subflow", "--notify-flags=existing,skip_link_local")
IFNAME = "c1"
CLONE_NEWNET = 0x40000000

# netlink
NETLINK_ROUTE, NETLINK_GENERIC = 0, 16
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 1, 4, 0x200, 0x400, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWADDR, RTM_DELADDR = 20, 21
IFA_ADDRESS, IFA_LOCAL = 1, 2
GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 0x10, 3, 1, 2
MPTCP_PM_CMD_GET_ADDR, MPTCP_PM_ATTR_ADDR = 3, 1
MPTCP_PM_ADDR_ATTR_ADDR4, MPTCP_PM_ADDR_ATTR_ADDR6 = 3, 4


# -- netlink in the lab namespace, from this process ---------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def socket_in(ns: str, proto: int) -> socket.socket:
    """A netlink socket created inside namespace ``ns`` (this thread returns
    to its own namespace afterwards)."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto)
            sock.bind((0, 0))
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)
    return sock


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    out = {}
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def _messages(data: bytes) -> list[tuple[int, bytes]]:
    out, offset = [], 0
    while offset + 16 <= len(data):
        length, mtype = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        out.append((mtype, data[offset + 16:offset + length]))
        offset += (length + 3) & ~3
    return out


class Netlink:
    """Address changes and the endpoint dump in one namespace."""

    def __init__(self, ns: str) -> None:
        self.route = socket_in(ns, NETLINK_ROUTE)
        self.genl = socket_in(ns, NETLINK_GENERIC)
        self.seq = 0
        self.family = self._resolve("mptcp_pm")

    def close(self) -> None:
        self.route.close()
        self.genl.close()

    def _request(self, sock: socket.socket, mtype: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        self.seq += 1
        sock.send(struct.pack("=IHHII", 16 + len(body), mtype, flags, self.seq, 0) + body)
        replies = []
        while True:
            for kind, payload in _messages(sock.recv(65536)):
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return replies
                if kind == NLMSG_DONE:
                    return replies
                replies.append((kind, payload))
            if not flags & NLM_F_DUMP and not flags & NLM_F_ACK:
                return replies

    def _resolve(self, name: str) -> int:
        body = struct.pack("=BBH", CTRL_CMD_GETFAMILY, 1, 0) + _attr(
            CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")
        for _, payload in self._request(self.genl, GENL_ID_CTRL, NLM_F_REQUEST, body):
            attrs = _attrs(payload, 4)
            return int(struct.unpack("=H", attrs[CTRL_ATTR_FAMILY_ID][:2])[0])
        raise OSError(errno.ENOENT, f"no {name} family")

    def _addr(self, mtype: int, flags: int, ip: str, ifindex: int) -> None:
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        raw = socket.inet_pton(fam, ip)
        body = struct.pack("=BBBBI", fam, len(raw) * 8, 0, 0, ifindex) + _attr(
            IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw)
        self._request(self.route, mtype, NLM_F_REQUEST | NLM_F_ACK | flags, body)

    def add_address(self, ip: str, ifindex: int) -> None:
        self._addr(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, ip, ifindex)

    def del_address(self, ip: str, ifindex: int) -> None:
        self._addr(RTM_DELADDR, 0, ip, ifindex)

    def endpoints(self) -> set[str]:
        """The addresses of the in-kernel PM's endpoints."""
        body = struct.pack("=BBH", MPTCP_PM_CMD_GET_ADDR, 1, 0)
        out = set()
        for _, payload in self._request(self.genl, self.family, NLM_F_REQUEST | NLM_F_DUMP, body):
            nested = _attrs(payload, 4).get(MPTCP_PM_ATTR_ADDR)
            if nested is None:
                continue
            inner = _attrs(nested)
            if MPTCP_PM_ADDR_ATTR_ADDR4 in inner:
                out.add(socket.inet_ntop(socket.AF_INET, inner[MPTCP_PM_ADDR_ATTR_ADDR4]))
            elif MPTCP_PM_ADDR_ATTR_ADDR6 in inner:
                out.add(socket.inet_ntop(socket.AF_INET6, inner[MPTCP_PM_ADDR_ATTR_ADDR6]))
        return out

    def wait_endpoint(self, ip: str, present: bool, timeout: float = 5.0) -> float:
        """Poll the endpoint dump until ``ip`` is (or is not) there; returns
        the monotonic time it was first seen so.  Polls every 20 µs or so."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if (ip in self.endpoints()) == present:
                return now
            if now > deadline:
                raise TimeoutError(f"endpoint {ip} {'never came' if present else 'stayed'}")
            time.sleep(0.00002)


# -- the daemon -------------------------------------------------------------------


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid``, in ns (schedstat)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):
            pass
    return total


def cpu_by_thread_ns(pid: int) -> dict[str, int]:
    """CPU time of ``pid``'s main thread (``loop``) and of its other threads
    together (``threads``: our daemon's worker thread), in ns (schedstat)."""
    out = {"loop": 0, "threads": 0}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                out["loop" if int(task) == pid else "threads"] += int(f.read().split()[0])
        except (OSError, ValueError):
            pass
    return out


def cpu_ticks_ns(pid: int) -> tuple[int, int]:
    """utime and stime of ``pid`` (all threads), in ns (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return int(fields[11]) * tick, int(fields[12]) * tick


def memory(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])  # kB
    return out


def wait_idle(pid: int, quiet: float = 0.3, timeout: float = 30.0) -> None:
    """Until the daemon has used under 1 ms of CPU in ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last = cpu_ns(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = cpu_ns(pid)
        if now - last < 1_000_000:
            return
        last = now


#: Runs the daemon under cProfile, enabled once it is ready (on the first
#: READY notification), dumping the statistics when it exits.
PROFILER = """
import cProfile, sys
from mptcpd.daemon import systemd
from mptcpd import cli
out = sys.argv.pop(1)
prof = cProfile.Profile()
ready = systemd.Notifier.ready
def patched(self, status):
    ready(self, status)
    prof.enable()
systemd.Notifier.ready = patched
sys.argv[0] = "mptcpd"
try:
    cli.main()
finally:
    prof.disable()
    prof.dump_stats(out)
"""


def start(lab: Lab, impl: str, c_daemon: str, notify: str | None = None,
          profile: str | None = None) -> tuple[Process, float]:
    """Start a daemon in the client namespace; returns it and exec → ready (s)."""
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    sock = None
    if notify is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(notify)
        sock.settimeout(15)
        env["NOTIFY_SOCKET"] = notify
    try:
        env["MPTCPD_STATE_DIR"] = str(lab.workdir / f"state-{impl}")
        t0 = time.monotonic()
        if impl == "floor":
            env["PYTHONPATH"] = str(ROOT / "src")
            proc = lab.python(lab.client, str(ROOT / "bench" / "floor_pm.py"), "addr",
                              name="floor", env=env)
            proc.wait_output("floor ready", timeout=15)
            ready = time.monotonic() - t0
        elif impl == "c":
            proc = lab.spawn(lab.client, c_daemon, "--log=stderr",
                             f"--plugin-dir={C_PLUGIN_DIR}", *DAEMON_ARGS, name="c-mptcpd",
                             env=env)
            deadline = t0 + 15
            while "initialized" not in proc.output() and proc.popen.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"C mptcpd did not initialize:\n{proc.output()}")
                time.sleep(0.0002)
            ready = time.monotonic() - t0
            if proc.popen.poll() is not None:
                raise RuntimeError(f"C mptcpd exited:\n{proc.output()}")
        else:
            env["PYTHONPATH"] = str(ROOT / "src")
            daemon_args = ("--log=stderr", f"--plugin-dir={ROOT / 'plugins'}", *DAEMON_ARGS)
            if profile:
                config = lab.workdir / "profile.conf"
                config.write_text("[core]\n")
                env["MPTCPD_CONFIG"] = str(config)
                proc = lab.python(lab.client, "-c", PROFILER, profile, *daemon_args,
                                  name="mptcpd", env=env)
            else:
                proc = lab.start_mptcpd(*daemon_args, config="[core]\n", env=env)
            if sock is not None:
                while True:
                    try:
                        message = sock.recv(4096).decode()
                    except socket.timeout:
                        raise RuntimeError(f"no READY=1:\n{proc.output()}") from None
                    if message.startswith("READY=1"):
                        break
            else:
                proc.wait_output("mptcpd ready", timeout=15)
            ready = time.monotonic() - t0
    finally:
        if sock is not None:
            sock.close()
            os.unlink(notify)  # type: ignore[arg-type]
    return proc, ready


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_impl(impl: str, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with Lab(links=1) as lab:
        idx = int(lab.exec(lab.client, "cat", f"/sys/class/net/{IFNAME}/ifindex").stdout)
        # Start → ready, a few times (the last run stays up for the rest).
        readies = []
        proc: Process | None = None
        for i in range(args.starts):
            if proc is not None:
                proc.stop()
            last = i == args.starts - 1
            proc, ready = start(lab, impl, args.c_daemon, str(lab.workdir / f"notify-{i}"),
                                profile=args.profile if last and impl == "ours" else None)
            readies.append(ready)
        assert proc is not None
        pid = proc.pid
        result["start_to_ready_ms"] = {"p50": statistics.median(readies) * 1e3,
                                       "min": min(readies) * 1e3, "runs": len(readies)}
        nl = Netlink(lab.client)
        try:
            if impl != "floor":  # it leaves the addresses already there alone
                wait_for(lambda: len(nl.endpoints()) >= 1, 10, what="the startup endpoint")
            wait_idle(pid)
            mem = memory(pid)
            result["idle_rss_kb"] = mem["VmRSS"]
            # Latency cycles.
            adds, dels = [], []
            # Warm-up (the first command may resolve things lazily).
            for ip in ("203.0.113.250",):
                nl.add_address(ip, idx)
                nl.wait_endpoint(ip, True)
                nl.del_address(ip, idx)
                nl.wait_endpoint(ip, False)
            wait_idle(pid)
            c0, t0, th0 = cpu_ns(pid), cpu_ticks_ns(pid), cpu_by_thread_ns(pid)
            for n in range(args.cycles):
                ip = f"203.0.113.{10 + n % 100}"
                start_add = time.monotonic()
                nl.add_address(ip, idx)
                adds.append(nl.wait_endpoint(ip, True) - start_add)
                start_del = time.monotonic()
                nl.del_address(ip, idx)
                dels.append(nl.wait_endpoint(ip, False) - start_del)
            wait_idle(pid, quiet=0.2)
            c1, t1, th1 = cpu_ns(pid), cpu_ticks_ns(pid), cpu_by_thread_ns(pid)
            events = 2 * args.cycles
            result["cpu_per_event_by_thread_us"] = {
                name: (ns - th0[name]) / events / 1e3 for name, ns in th1.items()}
            result["cycles_done"] = len(adds)
            result["add_to_endpoint_ms"] = {"p50": pct(adds, 0.5) * 1e3, "p90": pct(adds, 0.9) * 1e3}
            result["del_to_gone_ms"] = {"p50": pct(dels, 0.5) * 1e3, "p90": pct(dels, 0.9) * 1e3}
            result["cpu_per_event_us"] = (c1 - c0) / events / 1e3
            result["user_per_event_us"] = (t1[0] - t0[0]) / events / 1e3
            result["system_per_event_us"] = (t1[1] - t0[1]) / events / 1e3
            # Churn.
            c0 = cpu_ns(pid)
            for n in range(args.churn):
                ip = f"203.0.113.{200 + n % 4}"
                nl.add_address(ip, idx)
                nl.del_address(ip, idx)
            churn_sent = time.monotonic()
            wait_for(lambda: not any(ip.startswith("203.0.113.2") for ip in nl.endpoints()),
                     30, what="the churn's endpoints to go")
            wait_idle(pid, quiet=0.3)
            c1 = cpu_ns(pid)
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{impl} exited:\n{proc.output()}")
            result["churn_cpu_per_event_us"] = (c1 - c0) / (2 * args.churn) / 1e3
            result["churn_drain_s"] = time.monotonic() - churn_sent
            # The C mptcpd closes its rtnetlink socket on an overrun (and
            # then follows no address change any more): its drops go with it.
            result["rtnetlink_drops"] = netlink_drops(pid, NETLINK_ROUTE)
            result["rtnetlink_sockets_after"] = len(netlink_sockets(pid, NETLINK_ROUTE))
            mem = memory(pid)
            result["peak_rss_kb"] = mem["VmHWM"]
            result["overruns_logged"] = proc.output().count("receive buffer overrun")
            result["errors_logged"] = sum(1 for line in proc.output().splitlines()
                                          if "Unable" in line or "Traceback" in line)
        finally:
            nl.close()
            proc.stop()
    return result


#: Back-to-back add/delete pairs per second of ``bench_load.py
#: --addr-churn-seconds`` (5 s: this script's default of 2 000).
CHURN_PER_SECOND = 400


def load_scenario(impl: str, o: argparse.Namespace) -> dict[str, Any]:
    """``bench_load.py addr``: this script's measurement for one daemon,
    ``o.addr_rounds`` cycles and ``o.addr_churn_seconds`` ×
    :data:`CHURN_PER_SECOND` churn pairs, one start, under bench_load's
    names."""
    churn = max(1, round(o.addr_churn_seconds * CHURN_PER_SECOND))
    r = run_impl(impl, argparse.Namespace(cycles=o.addr_rounds, churn=churn, starts=1,
                                          profile=None, c_daemon=o.c_daemon))
    return {
        "rounds": o.addr_rounds, "endpoint_added": r["cycles_done"],
        "add_to_endpoint_p50_ms": r["add_to_endpoint_ms"]["p50"],
        "del_to_gone_p50_ms": r["del_to_gone_ms"]["p50"],
        "cpu_us_per_addr_event": r["cpu_per_event_us"],
        "churn_events": 2 * churn, "churn_cpu_us_per_event": r["churn_cpu_per_event_us"],
        "rtnetlink_drops": r["rtnetlink_drops"],
        "rtnetlink_sockets_after": r["rtnetlink_sockets_after"],
        "overruns_logged": r["overruns_logged"], "errors_logged": r["errors_logged"],
        "source": "bench_addr",
    }


FIGURES = [
    ("add → endpoint present p50 (ms)", lambda r: r["add_to_endpoint_ms"]["p50"]),
    ("add → endpoint present p90 (ms)", lambda r: r["add_to_endpoint_ms"]["p90"]),
    ("del → endpoint gone p50 (ms)", lambda r: r["del_to_gone_ms"]["p50"]),
    ("CPU per address event (µs)", lambda r: r["cpu_per_event_us"]),
    ("churn: CPU per address event (µs)", lambda r: r["churn_cpu_per_event_us"]),
    ("idle RSS (MB)", lambda r: r["idle_rss_kb"] / 1024),
    ("peak RSS (MB)", lambda r: r["peak_rss_kb"] / 1024),
    ("start → ready p50 (ms)", lambda r: r["start_to_ready_ms"]["p50"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    have_c = Path(C_DAEMON).exists() and Path(C_PLUGIN_DIR).is_dir()
    parser.add_argument("--impl", choices=("ours", "c", "both"), default="both" if have_c else "ours")
    parser.add_argument("--floor", action="store_true",
                        help="also run bench/floor_pm.py addr: the least a Python process "
                        "can do for addr_adv (not a path manager)")
    parser.add_argument("--c-daemon", default=C_DAEMON)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--churn", type=int, default=2000)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--profile", metavar="FILE",
                        help="run our daemon under cProfile once ready; stats to FILE")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("needs root and iproute2", file=sys.stderr)
        return 2
    impls = ["ours", "c"] if args.impl == "both" else [args.impl]
    if args.floor:
        impls.append("floor")
    results = {impl: run_impl(impl, args) for impl in impls}
    width = max(len(name) for name, _ in FIGURES)
    ratio = "ours" in impls and "c" in impls
    print(f"{'':{width}}  " + "  ".join(f"{impl:>9}" for impl in impls)
          + ("  ours / c" if ratio else ""))
    for name, get in FIGURES:
        values = {impl: get(results[impl]) for impl in impls}
        line = f"{name:{width}}  " + "  ".join(f"{v:9.3f}" for v in values.values())
        if ratio and values["c"]:
            line += f"  {values['ours'] / values['c']:8.2f}×"
        print(line)
    for impl in impls:
        if results[impl]["overruns_logged"]:
            print(f"{impl}: {results[impl]['overruns_logged']} receive-buffer overruns logged")
        if results[impl]["errors_logged"]:
            print(f"{impl}: {results[impl]['errors_logged']} error lines in the daemon's log")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

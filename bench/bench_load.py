"""Load benchmark: this mptcpd against Debian's C mptcpd, in the same run.

Each scenario builds a fresh lab (network namespaces) per daemon, runs the
daemon inside a lab namespace, loads it, and reads what happened from the
kernel through an independent listener (``tests.lab.pmwatch``), never from
the daemon.  Daemon CPU comes from ``/proc/PID/task/*/schedstat`` (on-CPU
time, user and system, in ns), memory from ``/proc/PID/status``, events lost
to a receive overrun from the kernel's per-socket drop counter
(``/proc/PID/net/netlink``).  See bench/README.md.  Needs root.

    .venv/bin/python bench/bench_load.py all [--impl ours|c|both] [--json FILE]
    .venv/bin/python bench/bench_load.py client-burst --conns 1000
    .venv/bin/python bench/bench_load.py smoke --impl ours      # < 1 min
    .venv/bin/python bench/bench_load.py all --floor --runs 5   # medians of 5 runs

Scenarios: client-burst, server-burst, churn, addr, startup, served-rate.
``--floor`` adds, to the two bursts and to addr, the lab's floor:
``bench/floor_pm.py``, the least a Python process can do there (see
bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src"), str(ROOT / "bench")]

from tests.lab import Lab, LabError, wait_for  # noqa: E402
from tests.lab.pmwatch import netlink_drops  # noqa: E402

C_DAEMON = "/usr/libexec/mptcpd"
C_PLUGIN_DIR = "/usr/lib/x86_64-linux-gnu/mptcpd"
OURS_READY = "mptcpd ready"
C_READY = "path manager initialized"
FLOOR_READY = "floor ready"
ESTABLISHED, SUB_ESTABLISHED, SUB_CLOSED = 2, 10, 11


# -- daemons -------------------------------------------------------------------

def host_netns() -> str:
    """The namespace the benchmark runs in (the host's, which daemons never get)."""
    return os.readlink("/proc/self/ns/net")


def check_host_clean(c_daemon: str) -> None:
    """Refuse to run when a C mptcpd already runs in the host namespace."""
    host = host_netns()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            ns = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if exe == os.path.realpath(c_daemon) and ns == host:
            raise SystemExit(f"a C mptcpd (PID {pid}) runs in the host namespace "
                             "(the package's service?); stop it first")


def cpu_ns(pid: int) -> int:
    """On-CPU time of every live thread of ``pid``, in ns."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


#: ``--profile``: where our daemon's cProfile statistics go, or None.
PROFILE: str | None = None


def poll_every_ms(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Test ``condition`` every millisecond until it holds (at most
    ``timeout`` s); the monotonic time at which it was seen to hold."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.001)


class Daemon:
    """One daemon (ours or C) running inside a lab namespace."""

    def __init__(self, lab: Lab, impl: str, ns: str, args: list[str], c_daemon: str,
                 config: str = "[core]\n", env_extra: dict[str, str | None] | None = None,
                 floor: list[str] | None = None):
        self.impl = impl
        t0 = time.monotonic()
        if impl == "floor":
            if floor is None:
                raise LabError("this scenario has no floor")
            self.proc = lab.python(ns, str(ROOT / "bench" / "floor_pm.py"), *floor,
                                   name="floor", env=py_env())
            ready = FLOOR_READY
        elif impl == "c":
            self.proc = lab.spawn(ns, c_daemon, "--log=stderr",
                                  f"--plugin-dir={C_PLUGIN_DIR}", *args, name="c-mptcpd")
            ready = C_READY
        else:
            env = dict(os.environ)
            env.pop("NOTIFY_SOCKET", None)
            for key, value in (env_extra or {}).items():
                if value is None:
                    env.pop(key, None)
                else:
                    env[key] = value
            env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + str(ROOT)
            daemon_args = ("--log=stderr", f"--plugin-dir={ROOT / 'plugins'}", *args)
            if PROFILE:
                # cProfile from READY on; the statistics are written at exit.
                from bench_addr import PROFILER
                path = lab.workdir / f"profile-{len(lab._procs)}.conf"
                path.write_text(config)
                env["MPTCPD_CONFIG"] = str(path)
                env.setdefault("MPTCPD_STATE_DIR", str(lab.workdir / "state"))
                self.proc = lab.python(ns, "-c", PROFILER, PROFILE, *daemon_args,
                                       name="mptcpd", env=env)
            else:
                self.proc = lab.start_mptcpd(*daemon_args, ns=ns, config=config, env=env)
            ready = OURS_READY
        self.pid = self.proc.pid
        # Never let a daemon manage the host namespace.
        wait_for(lambda: self._in_lab_ns() or self.proc.popen.poll() is not None, 5,
                 interval=0.001, what="the daemon to enter its namespace")
        if not self._in_lab_ns():
            self.proc.stop(signal.SIGKILL)
            raise LabError(f"{impl} daemon is not in a lab namespace:\n{self.proc.output()}")
        # Polled every millisecond, not with wait_for's growing interval
        # (which rounds a start of 240 ms up to the poll at ~265 ms).
        self.start_s = poll_every_ms(
            lambda: ready in self.proc.output() or self.proc.popen.poll() is not None,
            30, what=f"{impl} daemon to be ready") - t0
        #: CPU time (ns) the start took, ``ip netns exec`` included: less
        #: sensitive than the wall time to what else the machine runs.
        self.start_cpu_ns = cpu_ns(self.pid) if self.proc.popen.poll() is None else 0
        if self.proc.popen.poll() is not None:
            raise LabError(f"{impl} daemon exited:\n{self.proc.output()}")

    def _in_lab_ns(self) -> bool:
        try:
            ns = os.readlink(f"/proc/{self.pid}/ns/net")
            exe = os.path.basename(os.readlink(f"/proc/{self.pid}/exe"))
            return ns != host_netns() and exe != "ip"
        except OSError:
            return False

    def cpu(self) -> int:
        return cpu_ns(self.pid)

    def user_sys_ticks(self) -> tuple[int, int]:
        """utime and stime of the whole process, in clock ticks."""
        with open(f"/proc/{self.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return int(fields[11]), int(fields[12])

    def rss_kb(self) -> int:
        return status_kb(self.pid, "VmRSS")

    def hwm_kb(self) -> int:
        return status_kb(self.pid, "VmHWM")

    def drops(self) -> int:
        return netlink_drops(self.pid)

    def log(self) -> str:
        return self.proc.output()

    def finish(self) -> str:
        """Stop the daemon; its whole log.  Read after the exit: our daemon
        logs a kernel refusal's text at most ten times in ten seconds and
        tells the count of the repeats it held back when that window ends,
        or at exit (``invalid token`` counted from a log read before the
        stop missed those of the windows still open)."""
        self.stop()
        return self.log()

    def settle(self, quiet: float = 0.5, timeout: float = 30.0) -> None:
        """Wait until the daemon used no CPU for ``quiet`` s (bounded)."""
        deadline = time.monotonic() + timeout
        last = self.cpu()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self.cpu()
            if now - last < quiet * 1e9 * 0.01:
                return
            last = now

    def stop(self) -> None:
        self.proc.stop(signal.SIGTERM, timeout=10)


class Watcher:
    """The independent event listener (``tests.lab.pmwatch watch``)."""

    def __init__(self, lab: Lab, ns: str, count_only: bool = False):
        self.out = lab.workdir / f"watch-{time.monotonic_ns()}.json"
        args = ["-m", "tests.lab.pmwatch", "watch", "--out", str(self.out)]
        if count_only:
            args.append("--count-only")
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT / "src")
        self.proc = lab.python(ns, *args, name="pmwatch", env=env)
        self.proc.wait_output("listening", timeout=15)

    def result(self) -> dict[str, Any]:
        self.proc.stop(signal.SIGTERM, timeout=15)
        doc: dict[str, Any] = json.loads(self.out.read_text())
        return doc


def flood(lab: Lab, o: argparse.Namespace) -> int:
    """Run ``o.flooders`` flooders from the client to the server for
    ``o.seconds``; the connections they made."""
    flooders = [lab.python(lab.client, "-m", "tests.lab.traffic", "flood",
                           str(lab.links[0].server4), "5201", "--seconds", str(o.seconds),
                           name=f"flood{i}", env=py_env()) for i in range(o.flooders)]
    for f in flooders:
        f.wait(o.seconds + 60)
    return sum(int(f.output().split()[-1]) for f in flooders)


def py_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src")
    return env


def lab_for(client_pm: str, server_pm: str, links: int = 2) -> Lab:
    lab = Lab(links=links, path_manager="kernel", ipv6=False)
    lab.__enter__()
    try:
        for ns, pm in ((lab.client, client_pm), (lab.server, server_pm)):
            lab.set_path_manager(ns, pm)
            lab.ip(ns, "mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "8")
    except BaseException:
        lab.close()
        raise
    return lab


def run_conns(lab: Lab, ns: str, addr: str, count: int, *, rate: float = 0.0,
              want: int = 0, deadline: float = 5.0) -> dict[str, Any]:
    proc = lab.python(ns, "-m", "tests.lab.traffic", "conns", addr, "5201",
                      "--count", str(count), "--rate", str(rate), "--want-subflows",
                      str(want), "--deadline", str(deadline), name="conns", env=py_env())
    limit = (count / rate if rate else 0) + deadline + 60
    proc.wait(limit)
    out = proc.output().strip().splitlines()
    if not out:
        raise LabError("the connection client printed nothing")
    doc: dict[str, Any] = json.loads(out[-1])
    return doc


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def first_sub_established(events: list[list[Any]]) -> dict[int, float]:
    first: dict[int, float] = {}
    for t, cmd, token, *_ in events:
        if cmd == SUB_ESTABLISHED and token is not None and token not in first:
            first[token] = t
    return first


def unmapped(addr: str | None) -> str | None:
    """``::ffff:192.0.2.2`` (a dual-stack listener's IPv4 peer) as ``192.0.2.2``."""
    if addr and addr.startswith("::ffff:") and "." in addr:
        return addr[7:]
    return addr


def refusals(log: str, text: str) -> int:
    """Commands the kernel refused with ``text`` (lower case) in the error:
    a line each, and the repeats a line counts (``… (N more time(s) within
    10 s)``)."""
    total = 0
    for line in log.splitlines():
        if text in line.lower():
            more = re.search(r"\((\d+) more time\(s\) within", line)
            total += int(more.group(1)) if more else 1
    return total


def invalid_tokens(log: str) -> int:
    """Commands sent for a connection the kernel no longer has."""
    return refusals(log, "invalid token")


def overrun_lines(log: str) -> int:
    return sum(1 for line in log.splitlines()
               if "overrun" in line.lower() or "enobufs" in line.lower()
               or "no buffer space" in line.lower())


# -- scenarios -----------------------------------------------------------------

SSPI = ["--path-manager=sspi", "--load-plugins=sspi"]


def client_burst(impl: str, o: argparse.Namespace) -> dict[str, Any]:
    """sspi on the client; a burst of connections; connect → extra subflow."""
    lab = lab_for("userspace", "kernel")
    try:
        server = lab.python(lab.server, "-m", "tests.lab.traffic", "hold", "--bind", "0.0.0.0", "--duration",
                            "600", name="hold", env=py_env())
        server.wait_output("listening")
        daemon = Daemon(lab, impl, lab.client, SSPI, o.c_daemon,
                        floor=["client", str(lab.links[1].client4), str(lab.links[0].server4),
                               "5201"])
        watcher = Watcher(lab, lab.client)
        cpu0 = daemon.cpu()
        ticks0 = daemon.user_sys_ticks()
        res = run_conns(lab, lab.client, str(lab.links[0].server4), o.conns, want=1,
                        deadline=o.deadline)
        daemon.settle()
        cpu = daemon.cpu() - cpu0
        ticks = [b - a for a, b in zip(ticks0, daemon.user_sys_ticks())]
        events = watcher.result()
        hwm = daemon.hwm_kb()
        drops, alive = daemon.drops(), daemon.proc.popen.poll() is None
        log = daemon.finish()
    finally:
        lab.close()
    first = first_sub_established(events["events"])
    lat = []
    for t_connect, _t_ok, _t_served, token, _sub, _err in res["conns"]:
        t = first.get(token) if token is not None else None
        if t is not None and t - t_connect <= o.deadline:
            lat.append((t - t_connect) * 1e3)
    # The part the daemon answers for: the kernel's ESTABLISHED (it may not
    # create a subflow before) → the extra subflow's SUB_ESTABLISHED.  The
    # rest, connect → ESTABLISHED, is the handshake and the harness's
    # client and server (the first data acknowledged).
    established: dict[int, float] = {}
    for t, cmd, token, *_ in events["events"]:
        if cmd == ESTABLISHED and token is not None:
            established.setdefault(token, t)
    reaction = [(first[token] - t) * 1e3 for token, t in established.items()
                if token in first]
    # The part before the daemon can act: connect → the kernel's ESTABLISHED
    # (a daemon that serves nothing has it too, so C's shows what the
    # handshakes take without the subflows' load).
    connected = {token: t_conn for t_conn, _ok, _served, token, _sub, _err in res["conns"]
                 if token is not None}
    handshake = [(t - connected[token]) * 1e3 for token, t in established.items()
                 if token in connected]
    opened = sum(1 for c in res["conns"] if c[3] is not None)
    return {
        "connections": o.conns, "opened": opened, "served": len(lat),
        "served_pct": 100.0 * len(lat) / o.conns,
        "p50_ms": pct(lat, 0.5), "p90_ms": pct(lat, 0.9),
        "reaction_p50_ms": pct(reaction, 0.5), "reaction_p90_ms": pct(reaction, 0.9),
        "established_p50_ms": pct(handshake, 0.5),
        "cpu_us_per_conn": cpu / 1e3 / o.conns,
        "user_share": ticks[0] / max(1, sum(ticks)),
        "peak_rss_kb": hwm, "invalid_token": invalid_tokens(log),
        "events_lost": drops, "daemon_alive": alive, "watcher_drops": events["drops"],
    }


def duplicate_join_lab() -> Lab:
    """A lab for sspi on the server: the client's in-kernel PM joins from its
    second link to the server's initial address, a duplicate on that
    interface (sspi closes it)."""
    lab = lab_for("kernel", "userspace")
    try:
        second = lab.links[1]
        lab.ip(lab.client, "mptcp", "endpoint", "add", str(second.client4), "dev",
               second.client_if, "subflow")
        lab.ip(lab.client, "mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "0")
    except BaseException:
        lab.close()
        raise
    return lab


def server_burst(impl: str, o: argparse.Namespace) -> dict[str, Any]:
    """sspi on the server (:func:`duplicate_join_lab`): that join's
    SUB_ESTABLISHED → SUB_CLOSED."""
    lab = duplicate_join_lab()
    try:
        second = lab.links[1]
        server = lab.python(lab.server, "-m", "tests.lab.traffic", "hold", "--bind", "0.0.0.0", "--duration",
                            "600", name="hold", env=py_env())
        server.wait_output("listening")
        daemon = Daemon(lab, impl, lab.server, SSPI, o.c_daemon,
                        floor=["server", str(second.server4), str(lab.links[0].server4),
                               str(second.client4)])
        watcher = Watcher(lab, lab.server)
        cpu0 = daemon.cpu()
        ticks0 = daemon.user_sys_ticks()
        run_conns(lab, lab.client, str(lab.links[0].server4), o.conns,
                  deadline=o.server_hold)
        daemon.settle()
        cpu = daemon.cpu() - cpu0
        ticks = [b - a for a, b in zip(ticks0, daemon.user_sys_ticks())]
        events = watcher.result()
        drops, alive = daemon.drops(), daemon.proc.popen.poll() is None
        log = daemon.finish()
    finally:
        lab.close()
    dup_addr = (str(lab.links[0].server4), str(second.client4))
    established: dict[tuple[int, int, int], float] = {}
    lat = []
    for t, cmd, token, saddr, sport, daddr, dport in events["events"]:
        key = (token, sport, dport)
        pair = (unmapped(saddr), unmapped(daddr))
        if cmd == SUB_ESTABLISHED and pair == dup_addr:
            established[key] = t
        elif cmd == SUB_CLOSED and key in established:
            lat.append((t - established.pop(key)) * 1e3)
    joins = len(lat) + len(established)
    return {
        "connections": o.conns, "duplicate_joins": joins, "closed": len(lat),
        "closed_pct": 100.0 * len(lat) / joins if joins else 0.0,
        "p50_ms": pct(lat, 0.5), "p90_ms": pct(lat, 0.9),
        "cpu_us_per_conn": cpu / 1e3 / o.conns,
        "user_share": ticks[0] / max(1, sum(ticks)), "invalid_token": invalid_tokens(log),
        "events_lost": drops, "daemon_alive": alive, "watcher_drops": events["drops"],
    }


def churn(impl: str, o: argparse.Namespace) -> dict[str, Any]:
    """Userspace PM + sspi on the client; flooders open and reset
    connections back to back for ``--seconds``."""
    lab = lab_for("userspace", "kernel")
    try:
        sink = lab.python(lab.server, "-m", "tests.lab.traffic", "sink", "--port", "5201",
                          "--duration", str(o.seconds + 120), name="sink", env=py_env())
        sink.wait_output("listening")
        daemon = Daemon(lab, impl, lab.client, SSPI, o.c_daemon)
        time.sleep(0.5)  # let start-up allocations finish before the baseline
        rss0 = daemon.rss_kb()
        watcher = Watcher(lab, lab.client, count_only=True)
        cpu0 = daemon.cpu()
        made = flood(lab, o)
        daemon.settle(timeout=60)
        cpu = daemon.cpu() - cpu0
        drops = daemon.drops()
        alive = daemon.proc.popen.poll() is None
        rss1, hwm = daemon.rss_kb(), daemon.hwm_kb()
        events = watcher.result()
        log = daemon.finish()
    finally:
        lab.close()
    total = events["total"]
    return {
        "seconds": o.seconds, "connections": made, "conn_per_s": made / o.seconds,
        "events": total, "events_by_type": events["counts"],
        "cpu_us_per_event": cpu / 1e3 / max(total, 1),
        "cpu_us_per_handled_event": cpu / 1e3 / max(total - drops, 1),
        "events_lost": drops, "daemon_alive": alive, "overrun_log_lines": overrun_lines(log),
        "peak_rss_kb": hwm, "rss_growth_b_per_conn": (rss1 - rss0) * 1024 / max(made, 1),
        "invalid_token": invalid_tokens(log),
        # A subflow asked for a connection that is closing: the kernel has
        # the token still, and refuses the join (ENOTCONN).
        "not_connected": refusals(log, "transport endpoint is not connected"),
        "watcher_drops": events["drops"],
    }


def addr(impl: str, o: argparse.Namespace) -> dict[str, Any]:
    """addr_adv with the in-kernel PM, measured by ``bench_addr.py``:
    ``--addr-rounds`` addresses added and deleted one at a time (address →
    endpoint, CPU per address event), then back-to-back pairs for
    ``--addr-churn-seconds`` × 400 (CPU per churn event)."""
    import bench_addr  # type: ignore[import-not-found]

    try:
        result: dict[str, Any] = bench_addr.load_scenario(impl, o)
    except (TimeoutError, RuntimeError) as exc:  # an endpoint never came, a daemon failed
        raise LabError(f"addr: {exc}") from exc
    return result


def startup(impl: str, o: argparse.Namespace) -> dict[str, Any]:
    """Start → ready (median of ``--starts``) and idle RSS (sspi, userspace PM).

    By default (``--bytecode``) our daemon's modules are compiled once (a
    start not counted) into a bytecode cache of the run's own
    (``PYTHONPYCACHEPREFIX``), as an installed package has them (pip and
    the distributions compile at install); with ``--no-bytecode`` they are
    compiled at each start when the environment says
    ``PYTHONDONTWRITEBYTECODE`` (this project's machines do)."""
    times: list[float] = []
    cpus: list[float] = []
    rss: list[int] = []
    env: dict[str, str | None] = {}
    cache = None
    if o.bytecode and impl == "ours":
        cache = tempfile.TemporaryDirectory(prefix="mptcpd-bench-pyc-")
        env = {"PYTHONDONTWRITEBYTECODE": None, "PYTHONPYCACHEPREFIX": cache.name}
    try:
        for i in range(o.starts + (cache is not None)):
            lab = lab_for("userspace", "kernel")
            try:
                daemon = Daemon(lab, impl, lab.client, SSPI, o.c_daemon, env_extra=env)
                if cache is not None and i == 0:
                    daemon.stop()  # the start that fills the cache
                    continue
                times.append(daemon.start_s * 1e3)
                cpus.append(daemon.start_cpu_ns / 1e6)
                time.sleep(1.0)
                rss.append(daemon.rss_kb())
                daemon.stop()
            finally:
                lab.close()
    finally:
        if cache is not None:
            cache.cleanup()
    return {"start_to_ready_ms": statistics.median(times), "idle_rss_kb": statistics.median(rss),
            "start_cpu_ms": statistics.median(cpus),
            "starts": o.starts, "bytecode": cache is not None,
            "start_to_ready_all_ms": [round(t, 1) for t in times]}


def served_rate(impl: str, o: argparse.Namespace) -> dict[str, Any]:
    """sspi client side at increasing offered rates: connections served
    (extra subflow within ``--rate-deadline``) per second."""
    steps = []
    lab = lab_for("userspace", "kernel")
    try:
        server = lab.python(lab.server, "-m", "tests.lab.traffic", "hold", "--bind", "0.0.0.0", "--duration",
                            "900", name="hold", env=py_env())
        server.wait_output("listening")
        daemon = Daemon(lab, impl, lab.client, SSPI, o.c_daemon)
        for rate in o.rates:
            count = max(int(rate * o.rate_seconds), 1)
            res = run_conns(lab, lab.client, str(lab.links[0].server4), count, rate=rate,
                            want=1, deadline=o.rate_deadline)
            served = sum(1 for c in res["conns"] if c[2] is not None)
            span = max(res["t_end"] - res["t_begin"], 1e-9)
            steps.append({"offered_per_s": rate, "connections": count, "served": served,
                          "served_fraction": served / count,
                          "achieved_conn_per_s": count / max(
                              res["conns"][-1][0] - res["t_begin"], 1e-9),
                          "served_per_s": served / span})
            # Two failing steps in a row end the ramp (one may be noise).
            if served / count < 0.99 and len(steps) > 1 \
                    and steps[-2]["served_fraction"] < 0.99:
                break
            daemon.settle(quiet=0.3)
        daemon.stop()
    finally:
        lab.close()
    good = [s for s in steps if s["served_fraction"] >= 0.99]
    return {"steps": steps,
            "max_served_per_s": max((s["served_per_s"] for s in good), default=0.0)}


SCENARIOS: dict[str, Callable[[str, argparse.Namespace], dict[str, Any]]] = {
    "client-burst": client_burst,
    "server-burst": server_burst,
    "churn": churn,
    "addr": addr,
    "startup": startup,
    "served-rate": served_rate,
}

#: The rows of the printed table: scenario, key, label.
ROWS = [
    ("client-burst", "served_pct", "sspi client burst: % served"),
    ("client-burst", "p50_ms", "sspi client burst: connect→subflow p50 ms"),
    ("client-burst", "p90_ms", "sspi client burst: connect→subflow p90 ms"),
    ("client-burst", "reaction_p50_ms", "sspi client burst: ESTABLISHED→subflow p50 ms"),
    ("client-burst", "reaction_p90_ms", "sspi client burst: ESTABLISHED→subflow p90 ms"),
    ("client-burst", "established_p50_ms", "sspi client burst: connect→ESTABLISHED p50 ms"),
    ("client-burst", "cpu_us_per_conn", "sspi client burst: CPU µs/conn"),
    ("client-burst", "events_lost", "sspi client burst: events lost"),
    ("server-burst", "closed_pct", "sspi server burst: % duplicates closed"),
    ("server-burst", "p50_ms", "sspi server burst: join→closed p50 ms"),
    ("server-burst", "cpu_us_per_conn", "sspi server burst: CPU µs/conn"),
    ("server-burst", "events_lost", "sspi server burst: events lost"),
    ("churn", "conn_per_s", "churn: connections/s"),
    ("churn", "cpu_us_per_event", "churn: CPU µs/event"),
    ("churn", "cpu_us_per_handled_event", "churn: CPU µs/event handled (not lost)"),
    ("churn", "events_lost", "churn: events lost (socket drops)"),
    ("churn", "overrun_log_lines", "churn: overrun log lines"),
    ("churn", "peak_rss_kb", "churn: peak RSS KiB"),
    ("churn", "rss_growth_b_per_conn", "churn: RSS growth B/conn"),
    ("churn", "invalid_token", "churn: invalid token errors"),
    ("churn", "not_connected", "churn: not connected errors"),
    ("addr", "add_to_endpoint_p50_ms", "addr_adv: address→endpoint p50 ms"),
    ("addr", "cpu_us_per_addr_event", "addr_adv: CPU µs/address event"),
    ("addr", "churn_cpu_us_per_event", "addr_adv churn: CPU µs/event"),
    ("addr", "rtnetlink_drops", "addr_adv churn: rtnetlink drops"),
    ("addr", "rtnetlink_sockets_after", "addr_adv churn: rtnetlink sockets left"),
    ("startup", "idle_rss_kb", "idle RSS KiB"),
    ("startup", "start_to_ready_ms", "start→ready ms"),
    ("startup", "start_cpu_ms", "CPU ms to ready"),
    ("served-rate", "max_served_per_s", "sspi served conn/s (steady, ≥99 %)"),
]


def fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


#: The scenarios bench/floor_pm.py can stand in for a daemon in.
FLOORED = ("client-burst", "server-burst", "addr")


def print_table(results: dict[str, dict[str, Any]]) -> None:
    floor = any("floor" in results.get(scen, {}) for scen in FLOORED)
    print(f"\n{'figure':44s} {'ours':>10s} {'C':>10s} {'ours/C':>8s}"
          + (f" {'floor':>10s}" if floor else ""))
    for scen, key, label in ROWS:
        if scen not in results:
            continue
        ours = results[scen].get("ours", {}).get(key)
        c = results[scen].get("c", {}).get(key)
        ratio = (f"{ours / c:.2f}" if isinstance(ours, (int, float))
                 and isinstance(c, (int, float)) and c else "—")
        line = f"{label:44s} {fmt(ours):>10s} {fmt(c):>10s} {ratio:>8s}"
        if floor:
            line += f" {fmt(results[scen].get('floor', {}).get(key)):>10s}"
        print(line)


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One scenario's runs for one implementation as one result (``--runs``):
    each figure that every run gave as a number, the median of the runs,
    every run's value under ``each``; anything else (flags, lists, tables,
    a figure some runs lack) as the first run gave it.  Runs that failed
    are left out and counted (``failed_runs``); when all failed, the first
    one's error stands."""
    if len(runs) == 1:
        return runs[0]
    good = [r for r in runs if "error" not in r]
    if not good:
        return {**runs[0], "runs": len(runs), "failed_runs": len(runs)}
    out = dict(good[0])
    each: dict[str, list[float]] = {}
    for key, first in good[0].items():
        if isinstance(first, bool) or not isinstance(first, (int, float)):
            continue
        values = [r.get(key) for r in good]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) == len(good):
            each[key] = numbers
            out[key] = statistics.median(numbers)
    out.update(runs=len(runs), failed_runs=len(runs) - len(good), each=each)
    return out


def run_meta(o: argparse.Namespace) -> dict[str, Any]:
    """What a benchmark's JSON records of the run: machine, time, options."""
    return {"uname": os.uname().release, "python": sys.version.split()[0],
            "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "args": {k: v for k, v in vars(o).items() if k != "json_file"}}


def write_json(o: argparse.Namespace, results: Any) -> None:
    """Write a benchmark's ``results`` with the run's :func:`run_meta` to
    the file of ``--json`` (``o.json_file``), if one was given."""
    if o.json_file:
        Path(o.json_file).write_text(json.dumps({"meta": run_meta(o), "results": results},
                                                indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=[*SCENARIOS, "all", "smoke"])
    parser.add_argument("--impl", choices=("ours", "c", "both"), default="both")
    parser.add_argument("--json", dest="json_file")
    parser.add_argument("--floor", action="store_true",
                        help="also run the two bursts and addr with bench/floor_pm.py: the least a "
                        "Python process can do in this lab")
    parser.add_argument("--runs", type=int, default=1, metavar="N",
                        help="run each scenario N times, the implementations taking "
                        "turns in each round, and report each figure's median (every "
                        "run's value is in the JSON)")
    parser.add_argument("--c-daemon", default=C_DAEMON)
    parser.add_argument("--conns", type=int, default=1000, help="burst size")
    parser.add_argument("--deadline", type=float, default=5.0,
                        help="a connection is served when its extra subflow came within this")
    parser.add_argument("--server-hold", type=float, default=5.0,
                        help="server burst: how long each connection stays open")
    parser.add_argument("--seconds", type=float, default=30.0, help="churn duration")
    parser.add_argument("--flooders", type=int, default=2)
    parser.add_argument("--addr-rounds", type=int, default=200)
    parser.add_argument("--addr-churn-seconds", type=float, default=5.0)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--bytecode", action=argparse.BooleanOptionalAction, default=True,
                        help="startup: our modules' bytecode cached, as an installed "
                        "package has it (default); --no-bytecode: compiled at each "
                        "start when PYTHONDONTWRITEBYTECODE is set")
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                        default=[100.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0])
    parser.add_argument("--rate-seconds", type=float, default=3.0)
    parser.add_argument("--rate-deadline", type=float, default=1.0)
    parser.add_argument("--profile", metavar="FILE",
                        help="run our daemon under cProfile from READY on and write "
                             "its statistics to FILE when it stops (one scenario)")
    o = parser.parse_args(argv)
    if o.runs < 1:
        parser.error("--runs must be at least 1")
    global PROFILE
    PROFILE = o.profile
    if o.scenario == "smoke":
        o.conns, o.deadline, o.server_hold, o.seconds = 20, 3.0, 1.5, 2.0
        o.addr_rounds, o.addr_churn_seconds, o.starts = 5, 1.0, 1
        o.rates, o.rate_seconds, o.rate_deadline = [50.0], 1.0, 2.0
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    impls = ["ours", "c"] if o.impl == "both" else [o.impl]
    if o.floor:
        impls.append("floor")
    if "c" in impls:
        if not Path(o.c_daemon).exists():
            print(f"no C mptcpd at {o.c_daemon}: apt-get install -y mptcpd mptcpd-plugins",
                  file=sys.stderr)
            return 1
        check_host_clean(o.c_daemon)
    names = list(SCENARIOS) if o.scenario in ("all", "smoke") else [o.scenario]

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    results: dict[str, dict[str, Any]] = {}
    meta = run_meta(o)
    try:
        for name in names:
            runs: dict[str, list[dict[str, Any]]] = {}
            for round_ in range(1, o.runs + 1):
                for impl in impls:
                    if name == "served-rate" and impl == "c":
                        continue  # C's sspi creates no subflow: nothing to serve
                    if impl == "floor" and name not in FLOORED:
                        continue
                    of = f" (run {round_} of {o.runs})" if o.runs > 1 else ""
                    print(f"# {name} / {impl}{of} ...", file=sys.stderr, flush=True)
                    t0 = time.monotonic()
                    try:
                        r = SCENARIOS[name](impl, o)
                    except LabError as exc:
                        r = {"error": str(exc)[:2000]}
                    r["wall_s"] = round(time.monotonic() - t0, 1)
                    runs.setdefault(impl, []).append(r)
                    results.setdefault(name, {})[impl] = combine(runs[impl])
                    print(f"#   {json.dumps(r)[:600]}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted; labs removed", file=sys.stderr)
    if o.runs > 1:
        print(f"\nmedians of {o.runs} runs (each run's figures in the JSON, under \"each\")")
    print_table(results)
    if o.json_file:
        Path(o.json_file).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        print(f"\nJSON written to {o.json_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

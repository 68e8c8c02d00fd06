"""Benchmarks for the kernel event path (see bench/README.md).

Two parts:

``decode``
    Cost per event of each decoder on datagrams captured from the kernel
    (``tests/unit/data/events_*.json``): pyroute2's marshal + message class +
    :func:`tests.unit.event_oracle.decode` (what a pyroute2-only reader
    pays), and the production :func:`~mptcpd.netlink.event_codec.decode_message`
    / ``decode_datagram``.  No privileges needed.

``dispatch``
    Cost per event of the daemon's whole event path short of the socket:
    lean decode, then :class:`~mptcpd.daemon.dispatch.Dispatcher` handing
    the event to a plugin bound to its token (a plugin implementing every
    hook with an empty body), so the figure is mptcpd's own overhead.

``sspi``
    Cost per connection of the daemon's Python past the decoder with the
    sspi plugin (``plugins/sspi.py``) loaded: the
    :class:`~mptcpd.daemon.dispatch.Dispatcher`, sspi, the
    :class:`~mptcpd.pm.path_manager.PathManager`'s checks and a
    :class:`~mptcpd.pm.network_monitor.NetworkMonitor` with two interfaces,
    for the event sequence of one connection on the client side (CREATED,
    ESTABLISHED → a subflow created, its SUB_ESTABLISHED, CLOSED) and on the
    server side (CREATED, ESTABLISHED → an announcement, a duplicate join's
    SUB_ESTABLISHED → closed, its SUB_CLOSED, CLOSED).  Commands are recorded
    and answered in the next loop turn, as the daemon's channel answers them
    (nothing is sent): the kernel's share, decoding and the command channel
    are measured by the lab benchmarks.

``flood`` (root)
    End to end: a lab (client and server namespaces), an
    :class:`~mptcpd.netlink.genl_events.EventReader` in the client
    namespace, and flooder processes opening and closing MPTCP connections
    as fast as they can.  Reports events the kernel emitted in the client
    namespace (2 per connection: CREATED and CLOSED), events the reader
    delivered, overruns, events/s, and the reader's CPU time per event.

Usage::

    python bench/bench_events.py decode [--rounds N]
    python bench/bench_events.py dispatch [--rounds N]
    python bench/bench_events.py sspi [--conns N]
    python bench/bench_events.py flood [--seconds S] [--flooders K]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from mptcpd.netlink.event_codec import decode_datagram, decode_message
from mptcpd.netlink.genl_events import DEFAULT_RCVBUF, EventReader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.unit.event_oracle import MarshalMptcpEvent, decode  # noqa: E402  (the oracle)
DATA = ROOT / "tests" / "unit" / "data"
FAMILY_ID = 0x1C


def load_captures() -> list[tuple[str, bytes]]:
    out = []
    for path in sorted(DATA.glob("events_*.json")):
        doc = json.loads(path.read_text())
        for rec in doc["captures"]:
            out.append((doc["event"], bytes.fromhex(rec["hex"])))
    return out


def per_call_us(fn: Any, items: list[bytes], rounds: int) -> float:
    """Best of 5 runs of ``rounds`` calls cycling over ``items``, µs per call."""
    best = float("inf")
    n = len(items)
    for _ in range(5):
        t0 = time.perf_counter()
        for i in range(rounds):
            fn(items[i % n])
        best = min(best, (time.perf_counter() - t0) / rounds * 1e6)
    return best


def bench_decode(rounds: int) -> dict[str, Any]:
    caps = load_captures()
    marshal = MarshalMptcpEvent()

    def pyroute2_path(data: bytes) -> Any:
        return [decode(m) for m in marshal.parse(data)]

    def lean_path(data: bytes) -> Any:
        return decode_datagram(data, family_id=FAMILY_ID)

    datas = [d for _, d in caps]
    assert [pyroute2_path(d) for d in datas] == [lean_path(d) for d in datas]
    result: dict[str, Any] = {
        "events": len(datas),
        "all": {
            "pyroute2_us": per_call_us(pyroute2_path, datas, rounds),
            "lean_us": per_call_us(lean_path, datas, rounds),
            "lean_message_us": per_call_us(decode_message, datas, rounds),
        },
        "by_event": {},
    }
    for name in sorted({n for n, _ in caps}):
        sub = [d for n, d in caps if n == name]
        r = max(rounds // 5, 1000)
        result["by_event"][name] = {
            "pyroute2_us": per_call_us(pyroute2_path, sub, r),
            "lean_us": per_call_us(lean_path, sub, r),
        }
    return result


# -- decode and dispatch ---------------------------------------------------------

EMPTY_PLUGIN = """
from mptcpd.plugin import PluginInfo, hookimpl
PLUGIN = PluginInfo(name="empty")
@hookimpl
def new_connection(token, laddr, raddr, server_side, deny_join_id0, pm): pass
@hookimpl
def connection_established(token, laddr, raddr, server_side, deny_join_id0, pm): pass
@hookimpl
def connection_closed(token, pm): pass
@hookimpl
def new_address(token, addr_id, addr, pm): pass
@hookimpl
def address_removed(token, addr_id, pm): pass
@hookimpl
def new_subflow(token, laddr, raddr, backup, pm): pass
@hookimpl
def subflow_closed(token, laddr, raddr, backup, pm): pass
@hookimpl
def subflow_priority(token, laddr, raddr, backup, pm): pass
@hookimpl
def listener_created(laddr, pm): pass
@hookimpl
def listener_closed(laddr, pm): pass
"""


def bench_dispatch(rounds: int) -> dict[str, Any]:
    import logging
    import tempfile

    from mptcpd import events as ev
    from mptcpd.daemon.dispatch import Dispatcher
    from mptcpd.plugins.loader import load_plugins
    from mptcpd.plugins.registry import PluginRegistry

    logging.disable(logging.CRITICAL)
    registry = PluginRegistry()
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "empty.py").write_text(EMPTY_PLUGIN)
        load_plugins(registry, tmp, None, entry_points=False)
    dispatcher = Dispatcher(registry, object(), registry.select_default(None))
    # CLOSED ends a binding: leave it out of the cycle so every event finds
    # its plugin, and bind each token once, as its CREATED would.
    datas = [d for name, d in load_captures() if name != "CLOSED"]
    events = [decode_datagram(d, family_id=FAMILY_ID)[0] for d in datas]
    anywhere = next(e.laddr for e in events if isinstance(e, ev.ConnectionCreated))
    for token in {e.token for e in events if hasattr(e, "token")}:
        dispatcher.dispatch(ev.ConnectionCreated(token, anywhere, anywhere))

    def full(data: bytes) -> None:
        for event in decode_datagram(data, family_id=FAMILY_ID):
            dispatcher.dispatch(event)

    return {
        "events": len(datas),
        "dispatch_us": per_call_us(dispatcher.dispatch, events, rounds),  # type: ignore[arg-type]
        "decode_and_dispatch_us": per_call_us(full, datas, rounds),
    }


# -- sspi past the decoder -------------------------------------------------------

def bench_sspi(conns: int, runs: int = 5) -> dict[str, Any]:
    import ipaddress
    import logging

    from mptcpd import events as ev
    from mptcpd.daemon.dispatch import Dispatcher
    from mptcpd.netlink.rtnl_monitor import AddressMessage, LinkMessage
    from mptcpd.plugins.loader import load_plugins
    from mptcpd.plugins.registry import PluginRegistry
    from mptcpd.pm.network_monitor import NetworkMonitor
    from mptcpd.pm.path_manager import PathManager
    from mptcpd.types import NotifyFlags, SockAddr

    logging.disable(logging.CRITICAL)
    ready = 0x1 | 0x40 | 0x10000  # IFF_UP | IFF_RUNNING | IFF_LOWER_UP

    class Answering:
        """Takes the path manager's commands and answers each in the next
        loop turn (the daemon's channel hands out a future not yet done, and
        resolves it when it reads the kernel's answer)."""

        def __init__(self) -> None:
            self.count = 0

        def submit(self, name: str, args: tuple[Any, ...] = (),
                   token: int | None = None) -> asyncio.Future[Any]:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[Any] = loop.create_future()
            loop.call_soon(future.set_result, None)
            self.count += 1
            return future

    def side(first: str, second: str) -> tuple[Dispatcher, Answering, SockAddr, SockAddr]:
        monitor = NetworkMonitor(NotifyFlags(0))
        for index, ip in ((2, first), (3, second)):
            monitor.handle(LinkMessage(index, f"eth{index}", ready, 1, "UP", True, False))
            monitor.handle(AddressMessage(index, ipaddress.ip_address(ip), 24, 0, 0,
                                          None, False))
        commands = Answering()
        pm = PathManager(commands, network_monitor=monitor)
        pm.set_ready(True)
        registry = PluginRegistry()
        load_plugins(registry, str(ROOT / "plugins"), ["sspi"], entry_points=False)
        dispatcher = Dispatcher(registry, pm, registry.select_default("sspi"))
        pm.observe_creations(dispatcher.subflow_creation)  # as the daemon does
        registry.init_all(pm)
        return dispatcher, commands, SockAddr(first), SockAddr(second)

    async def client(n: int) -> int:
        dispatcher, commands, c1, c2 = side("198.51.100.1", "203.0.113.1")
        server = SockAddr("198.51.100.2", 5201)
        dispatch = dispatcher.dispatch
        for i in range(n):
            token = 0x1000 + i
            laddr = SockAddr(c1.ip, 10000 + i % 50000)
            dispatch(ev.ConnectionCreated(token, laddr, server))
            dispatch(ev.ConnectionEstablished(token, laddr, server))
            dispatch(ev.SubflowEstablished(token, SockAddr(c2.ip, 20000 + i % 40000),
                                           server, False))
            dispatch(ev.ConnectionClosed(token))
            if i % 32 == 31:
                await asyncio.sleep(0)  # the done-callbacks run, as between batches
        await asyncio.sleep(0)
        return commands.count

    async def server(n: int) -> int:
        dispatcher, commands, s1, s2 = side("198.51.100.2", "203.0.113.2")
        local = SockAddr(s1.ip, 5201)
        c1, c2 = ipaddress.ip_address("198.51.100.1"), ipaddress.ip_address("203.0.113.1")
        dispatch = dispatcher.dispatch
        for i in range(n):
            token = 0x1000 + i
            peer = SockAddr(c1, 10000 + i % 50000)
            join = SockAddr(c2, 20000 + i % 40000)
            dispatch(ev.ConnectionCreated(token, local, peer, True))
            dispatch(ev.ConnectionEstablished(token, local, peer, True))
            dispatch(ev.SubflowEstablished(token, local, join, False))
            dispatch(ev.SubflowClosed(token, local, join, False))
            dispatch(ev.ConnectionClosed(token))
            if i % 32 == 31:
                await asyncio.sleep(0)
        await asyncio.sleep(0)
        return commands.count

    result: dict[str, Any] = {"conns": conns}
    for name, scenario, expected in (("client", client, 1), ("server", server, 2)):
        best = float("inf")
        for _ in range(runs):
            t0 = time.perf_counter()
            sent = asyncio.run(scenario(conns))
            best = min(best, (time.perf_counter() - t0) / conns * 1e6)
            if sent != expected * conns:
                raise RuntimeError(f"{name}: {sent} commands for {conns} connections")
        result[f"{name}_us_per_conn"] = best
    return result


# -- end to end ------------------------------------------------------------------

async def flood_once(lean: bool, seconds: float, flooders: int,
                     rcvbuf: int = DEFAULT_RCVBUF) -> dict[str, Any]:
    from tests.lab import Lab

    with Lab(links=1, ipv6=False) as lab:
        srv = lab.python(lab.server, "-m", "tests.lab.traffic", "sink", "--port", "5300",
                         "--duration", str(seconds + 20), name="server")
        srv.wait_output("listening")
        overruns: list[int] = []
        counts: dict[str, int] = {}
        async with EventReader(netns=lab.client, rcvbuf=rcvbuf,
                               on_overrun=overruns.append) as reader:
            procs = [lab.python(lab.client, "-m", "tests.lab.traffic", "flood",
                                str(lab.links[0].server4), "5300", "--seconds", str(seconds),
                                name=f"flood{i}") for i in range(flooders)]
            cpu0, t0 = time.process_time(), time.monotonic()
            last = t0
            idle_deadline = t0 + seconds + 10

            async def consume() -> None:
                nonlocal last
                async for event in reader:
                    name = type(event).__name__
                    counts[name] = counts.get(name, 0) + 1
                    last = time.monotonic()

            task = asyncio.create_task(consume())
            # Run until the flooders are done and no event came for 1 s.
            while time.monotonic() < idle_deadline:
                await asyncio.sleep(0.2)
                done = all(p.popen.poll() is not None for p in procs)
                if done and time.monotonic() - last > 1.0:
                    break
            cpu = time.process_time() - cpu0
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        connections = sum(int(p.output().split()[-1]) for p in procs)
    received = sum(counts.values())
    elapsed = max(last - t0, 1e-9)
    # Every connection gives one CREATED and one CLOSED in the client
    # namespace (ESTABLISHED only when the handshake completed in time), so
    # losses are counted on those two.
    lost = (max(connections - counts.get("ConnectionCreated", 0), 0)
            + max(connections - counts.get("ConnectionClosed", 0), 0))
    return {
        "mode": "lean" if lean else "pyroute2",
        "rcvbuf": rcvbuf,
        "flooders": flooders,
        "connections": connections,
        "kernel_events": 2 * connections + counts.get("ConnectionEstablished", 0),
        "received": received,
        "lost": lost,
        "overruns": len(overruns),
        "seconds": round(elapsed, 2),
        "events_per_s": round(received / elapsed),
        "kernel_events_per_s": round((2 * connections + counts.get(
            "ConnectionEstablished", 0)) / seconds),
        "reader_cpu_us_per_event": round(cpu / max(received, 1) * 1e6, 2),
        "by_type": counts,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    d = sub.add_parser("decode")
    d.add_argument("--rounds", type=int, default=20000)
    p = sub.add_parser("dispatch")
    p.add_argument("--rounds", type=int, default=20000)
    s = sub.add_parser("sspi")
    s.add_argument("--conns", type=int, default=20000)
    f = sub.add_parser("flood")
    f.add_argument("--seconds", type=float, default=5.0)
    f.add_argument("--flooders", type=int, default=2)
    f.add_argument("--mode", choices=("lean",), default="lean")
    f.add_argument("--rcvbuf", type=int, default=DEFAULT_RCVBUF)
    args = parser.parse_args(argv)
    if args.what == "decode":
        res = bench_decode(args.rounds)
        a = res["all"]
        print(f"{res['events']} captured kernel datagrams, µs per event (best of 5):")
        print(f"  pyroute2 marshal+decode : {a['pyroute2_us']:7.2f}")
        print(f"  lean decode_datagram    : {a['lean_us']:7.2f}")
        print(f"  lean decode_message     : {a['lean_message_us']:7.2f}")
        print(f"  speed-up                : {a['pyroute2_us'] / a['lean_us']:7.1f}x")
        for name, r in res["by_event"].items():
            print(f"  {name:17s} pyroute2 {r['pyroute2_us']:6.2f}  lean {r['lean_us']:5.2f}")
        print(json.dumps(res))
        return 0
    if args.what == "dispatch":
        res = bench_dispatch(args.rounds)
        print(f"{res['events']} captured kernel datagrams (CLOSED left out), "
              "µs per event (best of 5):")
        print(f"  dispatch to the bound plugin : {res['dispatch_us']:6.2f}")
        print(f"  lean decode + dispatch       : {res['decode_and_dispatch_us']:6.2f}")
        return 0
    if args.what == "sspi":
        res = bench_sspi(args.conns)
        print(f"{res['conns']} connections through the dispatcher and sspi (no decoding, "
              "commands answered in the next loop turn), µs per connection (best of 5):")
        print(f"  client side (4 events, 1 subflow created)      : "
              f"{res['client_us_per_conn']:6.2f}")
        print(f"  server side (5 events, 1 announcement, 1 close) : "
              f"{res['server_us_per_conn']:6.2f}")
        print(json.dumps(res))
        return 0
    modes = [True]  # one production reader
    results = []
    for lean in modes:
        res = asyncio.run(flood_once(lean, args.seconds, args.flooders, args.rcvbuf))
        results.append(res)
        print(json.dumps(res))
    print(f"{'mode':9s} {'conns':>7s} {'kernel ev/s':>11s} {'recv ev/s':>9s} "
          f"{'lost':>6s} {'overruns':>8s} {'cpu µs/ev':>9s}")
    for r in results:
        print(f"{r['mode']:9s} {r['connections']:7d} {r['kernel_events_per_s']:11d} "
              f"{r['events_per_s']:9d} {r['lost']:6d} {r['overruns']:8d} "
              f"{r['reader_cpu_us_per_event']:9.2f}")
    print("median cpu µs/event:",
          statistics.median(r["reader_cpu_us_per_event"] for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

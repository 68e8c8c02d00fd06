"""Capture real ``mptcp_pm`` event datagrams from the kernel, as test fixtures.

Run as root (it builds a throw-away lab of network namespaces)::

    python tests/unit/data/capture_events.py [OUTDIR]

It listens to ``mptcp_pm_events`` in both lab namespaces, drives real MPTCP
connections that make the kernel emit all ten event types (IPv4 and IPv6,
client and server side, deny-join-id0), and writes one
``events_<type>.json`` per event type: a list of ``{"ns", "what", "hex"}``
records, ``hex`` being one whole datagram exactly as the kernel sent it.
Nothing here is used by the tests at run time; the JSON files are.
"""

from __future__ import annotations

import asyncio
import json
import platform
import sys
from pathlib import Path

from tests.lab import Lab
from mptcpd.netlink.constants import MptcpEvent
from tests.unit.event_oracle import mptcp_event_msg
from mptcpd.netlink.genl_events import EventReader

HERE = Path(__file__).resolve().parent


async def listen(netns: str) -> tuple[EventReader, list[bytes]]:
    """An event reader in ``netns`` that keeps a copy of every datagram."""
    sink: list[bytes] = []
    reader = EventReader(netns=netns, on_datagram=sink.append)
    await reader.open()
    return reader, sink


async def settle(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def scenario(lab: Lab, v6: bool, label: str) -> None:
    """One connection with ADD_ADDR, a priority change, RM_ADDR and close."""
    l1, l2 = lab.links
    srv_ns, cli_ns = lab.server, lab.client
    sig = str(l2.server6 if v6 else l2.server4)
    lab.ip(srv_ns, "mptcp", "endpoint", "flush")
    lab.ip(srv_ns, "mptcp", "endpoint", "add", sig, "dev", l2.server_if, "signal", "id", "5")
    dst = str(l1.server6 if v6 else l1.server4)
    cli = lab.python(cli_ns, "-m", "tests.lab.traffic", "client", dst, "5201",
                     "--bytes", "100000", "--hold", "2.5", name=f"client-{label}")
    await settle(1.0)
    lab.ip(srv_ns, "mptcp", "endpoint", "change", "id", "5", "backup")
    await settle(0.5)
    lab.ip(srv_ns, "mptcp", "endpoint", "delete", "id", "5")
    await asyncio.to_thread(cli.wait, 15)
    await settle(0.3)


async def main(outdir: Path) -> int:
    with Lab(links=2) as lab:
        socks: dict[str, tuple[EventReader, list[bytes]]] = {}
        for role, ns in (("client", lab.client), ("server", lab.server)):
            socks[role] = await listen(ns)
        for ns in (lab.client, lab.server):
            lab.ip(ns, "mptcp", "limits", "set", "subflows", "4", "add_addr_accepted", "4")
        srv = lab.python(lab.server, "-m", "tests.lab.traffic", "server",
                         "--duration", "60", name="server")
        srv.wait_output("listening")
        await scenario(lab, v6=False, label="v4")
        await scenario(lab, v6=True, label="v6")
        # deny-join-id0: the server forbids joins to its initial address/port.
        lab.sysctl(lab.server, "net.mptcp.allow_join_initial_addr_port", "0")
        cli = lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                         str(lab.links[0].server4), "5201", "--bytes", "1000",
                         "--hold", "0.3", name="client-deny")
        await asyncio.to_thread(cli.wait, 15)
        lab.sysctl(lab.server, "net.mptcp.allow_join_initial_addr_port", "1")
        # A client-side subflow endpoint removed while in use: SUB_CLOSED from
        # the local side.
        l2 = lab.links[1]
        lab.ip(lab.client, "mptcp", "endpoint", "flush")
        lab.ip(lab.client, "mptcp", "endpoint", "add", str(l2.client4), "dev",
               l2.client_if, "subflow", "id", "7")
        cli = lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                         str(lab.links[0].server4), "5201", "--bytes", "100000",
                         "--hold", "2", name="client-sf")
        await settle(1.0)
        lab.ip(lab.client, "mptcp", "endpoint", "delete", "id", "7")
        await asyncio.to_thread(cli.wait, 15)
        # Listeners, IPv4 and dual-stack IPv6, in the client namespace.
        for bind in ("0.0.0.0", "::", str(lab.links[0].client4)):
            lst = lab.python(lab.client, "-m", "tests.lab.traffic", "server",
                             "--port", "6000", "--bind", bind, "--duration", "0.3",
                             name="listener")
            await asyncio.to_thread(lst.wait, 10)
        await settle(0.5)
        records: dict[str, list[dict[str, str]]] = {}
        for role, (sock, sink) in socks.items():
            for data in sink:
                msg = mptcp_event_msg(data)
                msg.decode()
                try:
                    name = MptcpEvent(msg["cmd"]).name.lower()
                except ValueError:
                    name = f"unknown_{msg['cmd']}"
                what = ", ".join(f"{n[len('MPTCP_ATTR_'):].lower()}={v}"
                                 for n, v in msg["attrs"])
                records.setdefault(name, []).append(
                    {"ns": role, "what": what, "hex": data.hex()})
            sock.close()
    kernel = platform.release()
    for name, recs in sorted(records.items()):
        # Keep the fixtures small: distinct attribute layouts first.
        seen: set[tuple[str, str]] = set()
        kept: list[dict[str, str]] = []
        for rec in recs:
            shape = (rec["ns"], ",".join(p.split("=")[0] for p in rec["what"].split(", ")))
            key = (shape[0], shape[1] + ("6" if "addr6" in rec["what"] else "4"))
            if key in seen and len(kept) >= 2:
                continue
            seen.add(key)
            kept.append(rec)
        path = outdir / f"events_{name}.json"
        path.write_text(json.dumps({"kernel": kernel, "event": name.upper(),
                                    "captures": kept}, indent=1) + "\n")
        print(f"{path.name}: {len(kept)} of {len(recs)}")
    return 0


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    sys.exit(asyncio.run(main(out)))

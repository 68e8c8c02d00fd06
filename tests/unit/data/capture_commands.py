"""Capture real ``mptcp_pm`` command replies from the kernel, as test fixtures.

Run as root (it builds a throw-away lab of network namespaces)::

    python tests/unit/data/capture_commands.py [OUTDIR]

It sends each command of the list below on its own through a
:class:`~mptcpd.netlink.genl_commands.CommandChannel` (extended and capped
ACKs, as the daemon runs it) in the lab's client namespace and writes
``commands_replies.json``: a list of ``{"what", "name", "request",
"datagrams"}`` records, ``request`` being the bytes sent and ``datagrams``
every datagram the kernel answered with, exactly as received.  Nothing here
is used by the tests at run time; the JSON file is.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import platform
import sys
from pathlib import Path
from typing import Any

from tests.lab import Lab
from mptcpd.netlink import genl_commands
from mptcpd.netlink.genl_commands import CommandChannel
from mptcpd.netlink.pm_codec import Limits
from mptcpd.types import AddrFlags, SockAddr

HERE = Path(__file__).resolve().parent


def sa(ip: object, port: int = 0) -> SockAddr:
    return SockAddr(ipaddress.ip_address(str(ip)), port)


async def capture(lab: Lab) -> list[dict[str, Any]]:
    l1, l2 = lab.links
    c1 = int(json.loads(lab.ip(lab.client, "-j", "link", "show", "dev",
                               l1.client_if).stdout)[0]["ifindex"])
    plan: list[tuple[str, str, tuple[Any, ...]]] = [
        ("set both limits", "kpm_set_limits", (Limits(3, 5),)),
        ("get limits", "kpm_get_limits", ()),
        ("add v4 endpoint with port, signal backup, ifindex", "kpm_add_addr",
         (sa(l1.client4, 8080), 1, AddrFlags.BACKUP, c1)),
        ("add v6 endpoint subflow fullmesh", "kpm_add_addr",
         (sa(l2.client6), 2, AddrFlags.SUBFLOW | AddrFlags.FULLMESH, 0)),
        ("add v4 endpoint laminar", "kpm_add_addr", (sa(l2.client4), 3, AddrFlags.LAMINAR, 0)),
        ("duplicate endpoint", "kpm_add_addr", (sa(l2.client4), 4, AddrFlags.SUBFLOW, 0)),
        ("get endpoint 1", "kpm_get_addr", (1,)),
        ("get missing endpoint 9", "kpm_get_addr", (9,)),
        ("dump three endpoints", "kpm_dump_addrs", ()),
        ("set flags of endpoint 3 by id", "kpm_set_flags", (None, AddrFlags.BACKUP, 3)),
        ("delete endpoint 2", "kpm_remove_addr", (2,)),
        ("delete missing endpoint 2", "kpm_remove_addr", (2,)),
        ("announce on an unknown token", "add_addr", (sa(l2.client4), 5, 0x12345678)),
        ("remove on an unknown token", "remove_addr", (None, 5, 0x12345678)),
        ("subflow on an unknown token", "add_subflow",
         (0x12345678, 0, 0, sa(l2.client4), sa(l2.server4, 5201), False)),
        ("flush endpoints", "kpm_flush_addrs", ()),
        ("dump no endpoint", "kpm_dump_addrs", ()),
        ("limit out of range", "kpm_set_limits", (Limits(subflows=9),)),
    ]
    records: list[dict[str, Any]] = []
    async with CommandChannel(lab.client) as ch:
        sink: list[bytes] = []
        sent: list[bytes] = []
        handle, send = ch._handle, ch._send

        def keep(data: Any) -> None:
            sink.append(bytes(data))
            handle(data)

        def keep_sent(sock: Any, reqs: Any, datas: list[bytes]) -> None:
            sent.extend(datas)
            send(sock, reqs, datas)

        ch._handle = keep  # type: ignore[method-assign]
        ch._send = keep_sent  # type: ignore[method-assign]
        for what, name, args in plan:
            sink.clear()
            sent.clear()
            try:
                result: Any = await ch.submit(name, args)
            except OSError as exc:
                result = f"{type(exc).__name__}: {exc}"
            records.append({"what": what, "name": name, "result": repr(result),
                            "request": sent[0].hex(),
                            "datagrams": [d.hex() for d in sink]})
            print(f"{what}: {result!r} ({len(sink)} datagrams)")
    return records


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    genl_commands.log.setLevel("CRITICAL")
    with Lab(links=2) as lab:
        records = asyncio.run(capture(lab))
    path = out / "commands_replies.json"
    path.write_text(json.dumps({"kernel": platform.release(), "captures": records},
                               indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""The README demo: mptcpd managing real MPTCP connections in a throwaway lab.

``python -m tests.lab.demo`` (what ``scripts/demo`` runs, as root) builds two
network namespaces, a client and a server joined by two veth links, and shows
in plain text:

1. ``addr_adv`` with the in-kernel path manager: mptcpd creates one endpoint
   per client address; a transfer spreads over both links; a cable is
   "pulled" (the link loses its carrier) in the middle of the transfer, the
   endpoint is withdrawn and the transfer goes on over the other link; the
   cable comes back and so does the endpoint.
2. ``sspi`` with the userspace path manager: mptcpd itself opens one subflow
   per interface for each connection, and the bytes cross both links.

The lab is removed at the end, also on Ctrl-C or error.  Nothing outside the
lab's namespaces is touched.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

from tests.lab import Lab, LabError, Process, lab_requirements, wait_for

PORT = 5201
RATE_MBIT = 40  #: each client link's sending rate, so a transfer needs both


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    say()
    say(f"== {text}")


def indent(text: str, prefix: str = "   | ") -> str:
    return textwrap.indent(text.rstrip("\n"), prefix) if text.strip() else prefix + "(none)"


def mb(n: int) -> str:
    return f"{n / 1e6:6.1f} MB"


def describe(lab: Lab) -> None:
    heading("The lab: two hosts, two links")
    say(f"client namespace {lab.client}, server namespace {lab.server}")
    for link in lab.links:
        say(f"  link {link.index}: client {link.client_if} {link.client4}, {link.client6}"
            f"  <->  server {link.server_if} {link.server4}, {link.server6}")
    say(f"Each client link sends at most {RATE_MBIT} Mbit/s, so a fast transfer "
        "needs both.")


def show_endpoints(lab: Lab) -> None:
    say("endpoints in the client namespace (ip mptcp endpoint show):")
    say(indent(lab.ip(lab.client, "mptcp", "endpoint", "show").stdout))
    say("limits (ip mptcp limits show):")
    say(indent(lab.ip(lab.client, "mptcp", "limits", "show").stdout))


def daemon_lines(daemon: Process, since: int = 0) -> tuple[str, int]:
    out = daemon.output()
    return out[since:], len(out)


def start_daemon(lab: Lab, *args: str) -> Process:
    daemon = lab.start_mptcpd("--log=stderr", *args, config="[core]\n")
    say("$ mptcpd --log=stderr " + " ".join(args))
    daemon.wait_output(r"mptcpd ready: plugins", timeout=20)
    return daemon


def transfer(lab: Lab, nbytes: int, hold: float = 0.0) -> Process:
    return lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                      str(lab.links[0].server4), str(PORT), "--bytes", str(nbytes),
                      "--hold", str(hold), "--timeout", "60")


def watch(lab: Lab, client: Process, base: list[int],
          on_tick: Callable[[int], None] | None = None,
          limit: float = 60.0) -> list[int]:
    """Print the bytes each link has sent until the client is done."""
    deadline = time.monotonic() + limit
    tick = 0
    while client.popen.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        tick += 1
        sent = [lab.tx_bytes(lab.client, l.client_if) - b for l, b in zip(lab.links, base)]
        carrier = ["up" if "LOWER_UP" in lab.link_state(lab.client, l.client_if)["flags"]
                   else "NO CARRIER" for l in lab.links]
        say("  " + "   ".join(f"link {l.index} [{c:>10}]: {mb(s)}"
                               for l, c, s in zip(lab.links, carrier, sent)))
        if on_tick:
            on_tick(tick)
    return [lab.tx_bytes(lab.client, l.client_if) - b for l, b in zip(lab.links, base)]


def part_addr_adv(lab: Lab, nbytes: int) -> bool:
    heading("Part 1: addr_adv, the in-kernel path manager")
    say("mptcpd runs in the client namespace and adds an endpoint for every address.")
    daemon = start_daemon(lab, "--path-manager=addr_adv", "--load-plugins=addr_adv",
                          "--addr-flags=subflow",
                          "--notify-flags=existing,skip_link_local")
    wait_for(lambda: len(lab.endpoints(lab.client)) == 4, 10, what="4 endpoints")
    show_endpoints(lab)

    heading(f"A {nbytes // 1_000_000} MB transfer from client to server")
    server = lab.python(lab.server, "-m", "tests.lab.traffic", "server",
                        "--port", str(PORT), "--duration", "600")
    server.wait_output("listening")
    base = [lab.tx_bytes(lab.client, l.client_if) for l in lab.links]
    client = transfer(lab, nbytes)
    second = lab.links[1]
    state: dict[str, Any] = {"pulled": False, "restored": False}

    def cable(tick: int) -> None:
        sent2 = lab.tx_bytes(lab.client, second.client_if) - base[1]
        if not state["pulled"] and sent2 > nbytes // 6:
            say(f"  >>> pulling the cable of link 2 ({second.client_if} loses its carrier)")
            lab.set_carrier(second, up=False)
            state["pulled"] = True
            state["at"] = tick
        elif state["pulled"] and not state["restored"] and tick >= state["at"] + 4:
            say("  >>> endpoints now: " + ", ".join(
                f"{e.address} id {e.id}" for e in lab.endpoints(lab.client)))
            say("  >>> plugging link 2 back in")
            lab.set_carrier(second, up=True)
            state["restored"] = True

    sent = watch(lab, client, base, cable)
    if state["pulled"] and not state["restored"]:
        cable(state["at"] + 4)  # the transfer ended first: plug it back now
    status = client.wait(30)
    if status != 0:
        say(f"the transfer failed: {client.output()}")
        return False
    info = json.loads(client.output())["info"]
    say(f"transfer complete: {mb(info['bytes_acked']).strip()} acknowledged by the server; "
        f"link 1 carried {mb(sent[0]).strip()}, link 2 {mb(sent[1]).strip()}")
    wait_for(lambda: len(lab.endpoints(lab.client)) == 4, 10, what="restored endpoints")
    say("after the cable came back:")
    show_endpoints(lab)
    say("(the kernel does not reopen a subflow on the connection that lost it; "
        "new connections use the restored endpoint:)")
    base = [lab.tx_bytes(lab.client, l.client_if) for l in lab.links]
    again = transfer(lab, nbytes // 3)
    sent_again = watch(lab, again, base)
    if again.wait(30) != 0:
        say(f"the second transfer failed: {again.output()}")
        return False
    say(f"second transfer complete: link 1 carried {mb(sent_again[0]).strip()}, "
        f"link 2 {mb(sent_again[1]).strip()}")
    heading("What mptcpd logged")
    say(indent("\n".join(line for line in daemon.output().splitlines()
                         if "addr_adv" in line or "endpoint" in line
                         or "carrier" in line or "mptcpd ready" in line)))
    status = daemon.stop()
    say(f"mptcpd stopped with SIGTERM: exit status {status}")
    server.stop()
    return status == 0 and min(sent) > 0 and min(sent_again) > 0


def subflows_per_link(lab: Lab) -> dict[int, int]:
    """Established subflows to the server's port, by the link of their local
    address (``ss`` in the client namespace)."""
    ss = lab.exec(lab.client, "ss", "-tnH", "state", "established").stdout
    by_addr = {str(a): link.index for link in lab.links
               for a in (link.client4, link.client6)}
    per_link: dict[int, int] = {}
    for m in re.finditer(r"^\s*\S+\s+\S+\s+\[?([0-9a-f.:]+?)\]?(?:%\w+)?:\d+\s+\S+:"
                         + str(PORT) + r"\b", ss, re.M):
        link_index = by_addr.get(m.group(1))
        if link_index is not None:
            per_link[link_index] = per_link.get(link_index, 0) + 1
    return per_link


def part_sspi(lab: Lab, connections: int) -> bool:
    heading("Part 2: sspi, the userspace path manager")
    say("The client namespace switches to the userspace path manager: the kernel "
        "opens no subflow by itself; mptcpd's sspi opens one per interface.")
    lab.ip(lab.client, "mptcp", "endpoint", "flush")
    lab.set_path_manager(lab.client, "userspace")
    daemon = start_daemon(lab, "--debug", "--path-manager=sspi", "--load-plugins=sspi")
    server = lab.python(lab.server, "-m", "tests.lab.traffic", "server",
                        "--port", str(PORT), "--duration", "600")
    server.wait_output("listening")
    base = [lab.tx_bytes(lab.client, l.client_if) for l in lab.links]
    clients = [transfer(lab, 4_000_000, hold=2.0) for _ in range(connections)]
    per_link: dict[int, int] = {}

    def all_joined() -> bool:
        per_link.clear()
        per_link.update(subflows_per_link(lab))
        return sum(per_link.values()) >= len(clients) * len(lab.links)

    try:
        wait_for(all_joined, 10, what="one subflow per link for every connection")
    except LabError:
        pass  # shown below as it is
    ok = all(c.wait(60) == 0 for c in clients)
    sent = [lab.tx_bytes(lab.client, l.client_if) - b for l, b in zip(lab.links, base)]
    infos = [json.loads(c.output())["info"] for c in clients if c.popen.returncode == 0]
    say(f"{len(infos)} connections, each with "
        + ", ".join(sorted({str(i['subflows'] + 1) for i in infos}))
        + " subflow(s) (MPTCP_INFO)")
    say("subflows from each client link while they ran (ss): "
        + (", ".join(f"link {k}: {v}" for k, v in sorted(per_link.items())) or "none"))
    say(f"bytes sent: link 1 {mb(sent[0]).strip()}, link 2 {mb(sent[1]).strip()}")
    heading("What mptcpd logged")
    say(indent("\n".join(line for line in daemon.output().splitlines()
                         if "creating a subflow" in line or "initialized" in line
                         or "mptcpd ready" in line)))
    status = daemon.stop()
    say(f"mptcpd stopped with SIGTERM: exit status {status}")
    return ok and status == 0 and min(sent) > 0


def demo(args: argparse.Namespace) -> int:
    reason = lab_requirements()
    if reason:
        print(f"demo: cannot build the lab: {reason}", file=sys.stderr)
        return 1
    with Lab(links=2, path_manager="kernel") as lab:
        describe(lab)
        for link in lab.links:
            lab.limit_rate(link, RATE_MBIT)
        ok = part_addr_adv(lab, args.bytes)
        if not args.skip_sspi:
            ok = part_sspi(lab, args.connections) and ok
    heading("Lab removed" + ("" if ok else " (something did not work; see above)"))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes", type=int, default=30_000_000,
                        help="bytes of the part-1 transfer (default: %(default)s)")
    parser.add_argument("--connections", type=int, default=4,
                        help="connections in part 2 (default: %(default)s)")
    parser.add_argument("--skip-sspi", action="store_true", help="run part 1 only")
    args = parser.parse_args(argv)
    try:
        return demo(args)
    except LabError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; the lab was removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

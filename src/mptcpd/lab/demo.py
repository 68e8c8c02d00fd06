"""The README demo: mptcpd at work in a throwaway two-host lab.

``python -m mptcpd.lab.demo`` (what ``scripts/demo`` runs, as root) builds the
lab, starts mptcpd in the client namespace, drives real MPTCP connections
between the hosts and shows, in plain text, what the daemon logged and what
the kernel reports.  The lab is removed at the end, also on Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import textwrap

from mptcpd.lab import Lab, LabError, lab_requirements

PORT = 5201


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    say()
    say(f"== {text}")


def indent(text: str, prefix: str = "   | ") -> str:
    return textwrap.indent(text.rstrip("\n"), prefix) if text.strip() else prefix + "(nothing)"


def describe(lab: Lab) -> None:
    heading("The lab")
    say(f"client namespace: {lab.client}")
    say(f"server namespace: {lab.server}")
    for link in lab.links:
        say(f"link {link.index}: client {link.client_if} {link.client4} {link.client6}"
            f"  <->  server {link.server_if} {link.server4} {link.server6}")


def demo(args: argparse.Namespace) -> int:
    reason = lab_requirements()
    if reason:
        print(f"demo: cannot build the lab: {reason}", file=sys.stderr)
        return 1
    with Lab(links=2, path_manager="kernel") as lab:
        describe(lab)
        config = textwrap.dedent("""\
            [core]
            log=stderr
            notify-flags=existing,skip_link_local,skip_loopback
            addr-flags=subflow
            """)
        heading("Starting mptcpd in the client namespace")
        say(f"configuration file ({lab.workdir}/…conf):")
        say(indent(config))
        daemon = lab.start_mptcpd("--debug", config=config)
        say(f"mptcpd running as pid {daemon.pid}")
        daemon.wait_output(r"generic netlink family appeared", timeout=15)

        heading("An MPTCP connection between the hosts")
        server = lab.python(lab.server, "-m", "mptcpd.lab.traffic", "server",
                            "--port", str(PORT), "--duration", "60")
        server.wait_output("listening")
        out = lab.exec(lab.client, sys.executable, "-m", "mptcpd.lab.traffic",
                       "client", str(lab.links[0].server4), str(PORT),
                       "--bytes", str(args.bytes), "--hold", "1").stdout
        result = json.loads(out)
        info = result["info"]
        say(f"client {result['local'][0]} -> server {lab.links[0].server4}:{PORT}: "
            f"sent {result['sent']} bytes, {info['bytes_acked']} acknowledged, "
            f"token {info['token']:08x}, {info['subflows']} additional subflow(s)")

        heading("Kernel state in the client namespace")
        say("endpoints (ip mptcp endpoint show):")
        say(indent(lab.ip(lab.client, "mptcp", "endpoint", "show").stdout))
        say("limits (ip mptcp limits show):")
        say(indent(lab.ip(lab.client, "mptcp", "limits", "show").stdout))

        heading("Stopping mptcpd with SIGTERM")
        status = daemon.stop(signal.SIGTERM)
        say(f"exit status {status}")
        say("mptcpd's log:")
        say(indent(daemon.output()))
    heading("Lab removed")
    return 0 if status == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes", type=int, default=4_000_000,
                        help="bytes the client sends (default: %(default)s)")
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

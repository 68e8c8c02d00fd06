"""Cost of the interface and address policy (issue 13) in the network monitor.

No privileges, no kernel: the monitor is fed built records.  Measures, best
of 5 runs:

``queries``
    what a path manager asks on each connection event
    (``find_interface``, ``get_interface``, ``interfaces()``), with no
    policy and with a policy that denies half the interfaces and skips
    address classes: the policy is never consulted here, its decisions are
    kept on the records.
``changes``
    one ``RTM_NEWADDR`` + ``RTM_DELADDR`` of an address on an allowed
    interface (one policy decision each), with and without a policy.
``reload``
    ``set_policy`` on 64 interfaces with 4 addresses each, flipping the
    policy back and forth (every interface re-decided, half withdrawn or
    reported again).

    .venv/bin/python bench/bench_policy.py [--interfaces 64]
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mptcpd.config import AddressClass  # noqa: E402
from mptcpd.netlink.rtnl_monitor import AddressMessage, LinkMessage  # noqa: E402
from mptcpd.pm.network_monitor import NetworkMonitor  # noqa: E402
from mptcpd.pm.policy import Policy  # noqa: E402
from mptcpd.types import IFF_RUNNING, IFF_UP, AddrFlags, SockAddr  # noqa: E402

READY = IFF_UP | IFF_RUNNING
DENYING = Policy(skip=AddressClass(0x1F), allow=("eth*",), deny=("eth1*",),
                 deny_kinds=("bridge",), groups=(("eth2*", AddrFlags.BACKUP),))


def build(policy: Policy | None, count: int) -> NetworkMonitor:
    nm = NetworkMonitor(policy=policy, readdress=True)
    nm.register(lambda event: None)
    for i in range(count):
        nm.handle_link(LinkMessage(i + 2, f"eth{i}", READY, 1, "UP", True))
        for j in range(4):
            ip = ipaddress.ip_address(f"2001:db8:{i:x}::{j + 1}")
            nm.handle_address(AddressMessage(i + 2, ip, 64))
    return nm


def best(stmt: object, number: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--interfaces", type=int, default=64)
    count = parser.parse_args().interfaces
    last = SockAddr(f"2001:db8:{count - 1:x}::4")
    for name, policy in (("no policy", None), ("policy", DENYING)):
        nm = build(policy, count)
        q = best(lambda: (nm.find_interface(last), nm.get_interface(count),
                          nm.interfaces()), 2000)
        ip = ipaddress.ip_address("192.0.2.77")
        add, delete = AddressMessage(2, ip, 24), AddressMessage(2, ip, 24, deleted=True)
        c = best(lambda: (nm.handle_address(add), nm.handle_address(delete)), 5000)
        print(f"{name:10s} queries {q * 1e6:7.1f} us   add+del {c * 1e6:6.2f} us")
    nm = build(Policy(), count)
    flip = iter([DENYING, Policy()] * 1000)
    r = best(lambda: nm.set_policy(next(flip)), 100)
    print(f"set_policy on {count} interfaces x 4 addresses: {r * 1e3:.2f} ms")


if __name__ == "__main__":
    main()

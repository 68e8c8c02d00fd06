"""Carrier flaps the watching side really sees, as fast as it sees them.

Run inside the namespace whose link should flap (the lab's client)::

    python -m tests.lab.flap --peer-netns NS --peer s2 --watch c2 --count 1000

For each flap the veth peer (``--peer``, in the named namespace
``--peer-netns``) is set administratively down, then up, and each time the
program waits until this namespace's rtnetlink stream reports ``--watch``
without, then with, ``IFF_RUNNING``: so every flap reaches whoever listens
to rtnetlink here (the kernel's linkwatch folds changes that come faster
than it runs into one message).  ``--end down`` leaves the link without
carrier.  Prints one JSON line: ``{"flaps": n, "seconds": s}``.  Every wait
is bounded by ``--timeout`` seconds per step.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Iterator

NETLINK_ROUTE = 0
RTMGRP_LINK = 1
RTM_NEWLINK = 16
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
IFF_UP, IFF_RUNNING = 0x1, 0x40
CLONE_NEWNET = 0x40000000
NLMSGHDR = struct.Struct("=IHHII")
IFINFOMSG = struct.Struct("=BxHiII")

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the body in the named network namespace (this thread only), then
    come back; sockets made inside stay in that namespace."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


class Flapper:
    def __init__(self, peer_netns: str, peer: str, watch: str, timeout: float) -> None:
        with netns(peer_netns):
            self.control = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            self.control.bind((0, 0))
            self.peer = socket.if_nametoindex(peer)
        self.watch = socket.if_nametoindex(watch)
        self.monitor = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.monitor.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.monitor.bind((0, RTMGRP_LINK))
        self.timeout = timeout
        self.seq = 0

    def set_peer(self, up: bool) -> None:
        self.seq += 1
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, self.peer, IFF_UP if up else 0, IFF_UP)
        msg = NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_NEWLINK,
                            NLM_F_REQUEST | NLM_F_ACK, self.seq, 0) + body
        self.control.send(msg)
        data = self.control.recv(65536)
        length, kind, _, seq, _ = NLMSGHDR.unpack_from(data)
        if kind != NLMSG_ERROR or seq != self.seq:
            raise RuntimeError(f"unexpected answer type {kind} seq {seq}")
        (error,) = struct.unpack_from("=i", data, NLMSGHDR.size)
        if error:
            raise OSError(-error, f"setting the peer {'up' if up else 'down'}: "
                          f"{os.strerror(-error)}")

    def wait_running(self, running: bool) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"ifindex {self.watch} never became "
                                   f"{'running' if running else 'not running'}")
            self.monitor.settimeout(left)
            data = self.monitor.recv(1 << 16)
            offset = 0
            while offset + NLMSGHDR.size <= len(data):
                length, kind, _, _, _ = NLMSGHDR.unpack_from(data, offset)
                if length < NLMSGHDR.size:
                    break
                if kind == RTM_NEWLINK and length >= NLMSGHDR.size + IFINFOMSG.size:
                    _, _, index, flags, _ = IFINFOMSG.unpack_from(data, offset + NLMSGHDR.size)
                    if index == self.watch and bool(flags & IFF_RUNNING) == running:
                        return
                offset += (length + 3) & ~3

    def flap(self) -> None:
        self.set_peer(False)
        self.wait_running(False)
        self.set_peer(True)
        self.wait_running(True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-netns", required=True)
    parser.add_argument("--peer", required=True)
    parser.add_argument("--watch", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--end", choices=("up", "down"), default="up")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    flapper = Flapper(args.peer_netns, args.peer, args.watch, args.timeout)
    t0 = time.monotonic()
    for _ in range(args.count):
        flapper.flap()
    if args.end == "down":
        flapper.set_peer(False)
        flapper.wait_running(False)
    print(json.dumps({"flaps": args.count, "seconds": time.monotonic() - t0}))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

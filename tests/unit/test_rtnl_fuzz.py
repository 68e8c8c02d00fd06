"""Fuzzing the rtnetlink decoder and the monitor's reading of replies
(hypothesis).

Cases: random bytes; well-framed link, address and route messages with
random header fields and attributes (the ones the decoder reads, at their
size or any other, and others pyroute2 knows, such as a zero-length
``RTA_ENCAP``); mutated and truncated kernel captures; error messages with
any error number (``INT_MIN`` included) and payloads too short for one.
Each datagram goes through :func:`~mptcpd.netlink.rtnl_monitor.parse`, the
monitor's event stream, both dumps and the route lookup.

Properties (the parser's documented results): ``parse`` and the stream
never raise and hand out only link, address and route records, the stream
exactly what ``parse`` gives; a dump returns records or raises
:class:`RtnlMonitorError`; the route lookup returns a :class:`RouteLookup`
(its error 0 or an errno in 1..4095) or raises :class:`OSError`; nothing
hangs.  Where the attributes are the ones the decoder reads, at their
size, the records equal pyroute2's reading (``oracle`` of
``test_rtnl_decode``).  ``bench/fuzz_long.py`` runs the same ``check`` on
100 000 cases.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mptcpd.netlink import nla
from mptcpd.netlink import rtnl_monitor as r
from mptcpd.netlink.rtnl_monitor import (
    AddressMessage,
    LinkMessage,
    NetlinkSocket,
    RouteLookup,
    RouteMessage,
    RtnlMonitor,
    RtnlMonitorError,
    parse,
)
from tests.unit.fuzz_support import FUZZ, no_hang, recording
from tests.unit.test_rtnl_decode import CAPTURES, oracle

#: The documented errors of :func:`check` (none: each call's are caught there).
ALLOWED: tuple[type[BaseException], ...] = ()
PORT = 4242
FIXED = {r.RTM_NEWLINK: 16, r.RTM_DELLINK: 16, r.RTM_NEWADDR: 8, r.RTM_DELADDR: 8,
         r.RTM_NEWROUTE: 12, r.RTM_DELROUTE: 12}


def nlmsg(mtype: int, flags: int, seq: int, body: bytes, pid: int = 0) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, pid) + body


# -- a socket for NetlinkSocket: serves datagrams, then is closed ------------------


class FakeSocket:
    """What :class:`NetlinkSocket` uses of a socket.  Each datagram's
    messages get the sequence number of the last request sent (when
    ``answer`` is set) and our port; when none is left, ``recv`` fails as a
    closed socket does (EBADF)."""

    def __init__(self, datagrams: list[bytes], answer: bool = True) -> None:
        self.datagrams = list(datagrams)
        self.answer = answer
        self.seq = 0

    def getsockname(self) -> tuple[int, int]:
        return PORT, 0

    def fileno(self) -> int:
        return -1

    def send(self, data: bytes) -> int:
        self.seq = struct.unpack_from("=I", data, 8)[0]
        return len(data)

    def recv(self, size: int) -> bytes:
        if not self.datagrams:
            raise OSError(errno.EBADF, "closed")
        data = bytearray(self.datagrams.pop(0))
        if self.answer:
            for off in _offsets(data):
                struct.pack_into("=II", data, off + 8, self.seq, PORT)
        return bytes(data)

    def close(self) -> None:
        pass


def _offsets(data: bytes | bytearray) -> list[int]:
    out, off = [], 0
    while off + 16 <= len(data):
        length = struct.unpack_from("=I", data, off)[0]
        if length < 16 or off + length > len(data):
            break
        out.append(off)
        off += (length + 3) & ~3
    return out


# -- the properties -------------------------------------------------------------

RECORDS = (LinkMessage, AddressMessage, RouteMessage)


def _stream(datagrams: list[bytes]) -> list[Any]:
    async def run() -> list[Any]:
        monitor = RtnlMonitor()
        monitor._sock = NetlinkSocket(FakeSocket(datagrams, answer=False))  # type: ignore[arg-type]
        return [e async for e in monitor.events()]
    return asyncio.run(run())


def _replies(datagrams: list[bytes]) -> list[Any]:
    """Both dumps and the route lookup answered with ``datagrams``: each
    gives its result or its documented error."""
    async def run() -> list[Any]:
        out: list[Any] = []
        for call in ("dump_links", "dump_addresses", "lookup"):
            monitor = RtnlMonitor()
            sock = NetlinkSocket(FakeSocket(datagrams))  # type: ignore[arg-type]
            try:
                if call == "lookup":
                    monitor._lookup_sock = sock
                    try:
                        got: Any = await monitor.lookup_default_route(socket.AF_INET6, 3)
                    except OSError as exc:
                        assert not isinstance(exc, RtnlMonitorError), exc
                        got = exc
                    else:
                        assert isinstance(got, RouteLookup)
                        assert 0 <= got.error <= r.MAX_ERRNO
                else:
                    monitor._sock = sock
                    try:
                        got = await getattr(monitor, call)()
                    except RtnlMonitorError as exc:
                        got = exc
                    else:
                        kind = LinkMessage if call == "dump_links" else AddressMessage
                        assert all(isinstance(x, kind) for x in got)
            finally:
                monitor.close()
            out.append(got)
        return out
    return asyncio.run(run())


def check(datagrams: list[bytes]) -> list[Any]:
    """Every reading of ``datagrams``; raises AssertionError where a
    property fails (an exception other than the documented ones escapes as
    itself)."""
    with no_hang(), recording("mptcpd.netlink", "pyroute2"):
        records = [rec for d in datagrams for rec in parse(d)]
        assert all(isinstance(x, RECORDS) for x in records)
        assert _stream(datagrams) == records
        _replies(datagrams)
        for d in datagrams:
            if comparable(d):
                assert parse(d) == oracle(d)
    return records


# -- what pyroute2 reads as we do ---------------------------------------------------

#: type -> payload sizes pyroute2 reads as the decoder does.
LINK_SIZES = {r.IFLA_IFNAME: None, r.IFLA_OPERSTATE: {1}, r.IFLA_CARRIER: {1}}
ADDR_SIZES = {r.IFA_ADDRESS: {4, 16}, r.IFA_LOCAL: {4, 16}, r.IFA_FLAGS: {4}}
ROUTE_SIZES = {r.RTA_DST: {4, 16}, r.RTA_OIF: {4}, r.RTA_TABLE: {4}}
#: Beyond every map of pyroute2 (it reads them as UNKNOWN).
UNKNOWN_TYPES = [0x3000, 0x3FFE]


def comparable(data: bytes) -> bool:
    """Only link/address/route messages of the right sizes, with attributes
    the decoder reads (each once, sized right) or unknown to both."""
    offsets = _offsets(data)
    if not offsets:
        return False
    end = offsets[-1] + struct.unpack_from("=I", data, offsets[-1])[0]
    if end < len(data) - 3:
        return False
    # pyroute2 steps to the next message by its length unaligned, the kernel
    # and the decoder by the length aligned to 4: they part after an odd one.
    if any(struct.unpack_from("=I", data, off)[0] % 4 for off in offsets[:-1]):
        return False
    for off in offsets:
        length, mtype = struct.unpack_from("=IH", data, off)
        fixed = FIXED.get(mtype)
        if fixed is None or length < 16 + fixed:
            return False
        family = data[off + 16]
        sizes = ({r.RTM_NEWLINK: LINK_SIZES, r.RTM_DELLINK: LINK_SIZES,
                  r.RTM_NEWADDR: ADDR_SIZES, r.RTM_DELADDR: ADDR_SIZES}.get(mtype, ROUTE_SIZES))
        if mtype not in (r.RTM_NEWLINK, r.RTM_DELLINK) and family not in (
                socket.AF_INET, socket.AF_INET6):
            return False
        seen = set()
        try:
            attrs = list(nla.walk(data, off + 16 + fixed, off + length, exact=True))
        except nla.MalformedAttribute:
            return False
        for kind, start, stop in attrs:
            raw = data[start:stop]
            if kind in UNKNOWN_TYPES:
                continue
            if kind not in sizes or kind in seen:
                return False
            seen.add(kind)
            want = sizes[kind]
            if want is None:  # a name: UTF-8, NUL-terminated, pyroute2 decodes it
                if not raw.endswith(b"\0") or b"\0" in raw[:-1]:
                    return False
                try:
                    raw[:-1].decode()
                except UnicodeDecodeError:
                    return False
            elif len(raw) not in want:
                return False
            elif kind == r.IFLA_OPERSTATE and raw[0] >= len(r.OPERSTATES):
                return False  # pyroute2 keeps the raw bytes as the state's name
            elif kind in (r.IFA_ADDRESS, r.IFA_LOCAL, r.RTA_DST) and len(raw) != (
                    4 if family == socket.AF_INET else 16):
                return False
    return True


# -- strategies -------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFFFFFF)
#: Error numbers: the usual ones, the edges and any int32.
codes = st.one_of(st.integers(-140, 0), st.sampled_from(
    [-(2 ** 31), 2 ** 31 - 1, -4095, -4096, 4095, 4096, 1, 0]), st.integers(-(2 ** 31), 2 ** 31 - 1))


@st.composite
def attribute(draw: st.DrawFn, sizes: dict[int, Any]) -> bytes:
    kind = draw(st.sampled_from(sorted(sizes) + UNKNOWN_TYPES + [0, 21, 22, 6, 12]))
    want = sizes.get(kind, ())
    if want is None:
        payload = draw(st.text(max_size=16)).encode() + b"\0"
    elif want and draw(st.integers(0, 4)):
        payload = draw(st.binary(min_size=min(want), max_size=min(want)))
        if len(want) > 1 and draw(st.booleans()):
            payload = draw(st.binary(min_size=max(want), max_size=max(want)))
    else:
        payload = draw(st.binary(max_size=20))
    flags = draw(st.sampled_from([0, 0, 0, 0x8000, 0x4000]))
    return nla.encode(kind | flags, payload)


@st.composite
def message(draw: st.DrawFn) -> bytes:
    mtype = draw(st.sampled_from(sorted(FIXED)))
    fixed = bytearray(draw(st.binary(min_size=FIXED[mtype], max_size=FIXED[mtype])))
    if mtype in (r.RTM_NEWLINK, r.RTM_DELLINK):
        sizes = LINK_SIZES
    else:
        fixed[0] = draw(st.sampled_from([socket.AF_INET, socket.AF_INET6, fixed[0]]))
        sizes = ADDR_SIZES if mtype in (r.RTM_NEWADDR, r.RTM_DELADDR) else ROUTE_SIZES
    attrs = b"".join(draw(st.lists(attribute(sizes), max_size=6)))
    return nlmsg(mtype, draw(st.sampled_from([0, r.NLM_F_MULTI])), draw(u32), bytes(fixed) + attrs)


@st.composite
def error(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([r.NLMSG_ERROR, r.NLMSG_DONE]))
    payload = struct.pack("=i", draw(codes)) + draw(st.binary(max_size=20))
    return nlmsg(kind, 0, draw(u32), payload[:draw(st.integers(0, len(payload)))])


@st.composite
def mutated_capture(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CAPTURES)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(u8)
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut] if draw(st.booleans()) else data) + draw(st.binary(max_size=8))


datagram = st.one_of(
    st.binary(max_size=200),
    st.lists(message(), min_size=1, max_size=4).map(b"".join),
    st.lists(st.one_of(message(), error()), min_size=1, max_size=4).map(b"".join),
    mutated_capture(),
)
#: What :func:`check` takes: one to three datagrams.
CASES = st.lists(datagram, min_size=1, max_size=3)


# -- the tests ------------------------------------------------------------------------


@settings(FUZZ, max_examples=600)
@given(CASES)
def test_any_datagrams(datagrams: list[bytes]) -> None:
    check(datagrams)


@settings(FUZZ, max_examples=400)
@given(st.lists(message(), min_size=1, max_size=4).map(b"".join))
def test_well_framed_messages_read_as_pyroute2_reads_them(data: bytes) -> None:
    check([data])


# -- regressions: the cases of issue 10 and what the fuzzing found ------------------

INT_MIN = struct.pack("=i", -(2 ** 31))


@pytest.mark.parametrize("data", [
    # RTA_ENCAP of length zero (looped forever in pyroute2's rtmsg.encap_info)
    bytes.fromhex("2000000018000000000000000000000000000000000000000000000000001600"),
    nlmsg(r.RTM_NEWADDR, 0, 1, b"\x02\x18"),  # shorter than its header
    nlmsg(r.RTM_NEWLINK, 0, 1, bytes(16) + struct.pack("=HH", 40, r.IFLA_IFNAME) + b"ab"),
    nlmsg(r.RTM_NEWROUTE, 0, 1, b"\x02" + bytes(11) + struct.pack("=HH", 8, r.RTA_OIF) + b"\1"),
    nlmsg(r.NLMSG_ERROR, 0, 1, b""),  # no error number, no echo
    nlmsg(r.NLMSG_ERROR, 0, 1, INT_MIN),
    nlmsg(r.NLMSG_ERROR, 0, 1, INT_MIN + bytes(16)),
    nlmsg(r.NLMSG_DONE, r.NLM_F_MULTI, 1, INT_MIN),
], ids=["zero-length RTA_ENCAP", "short header", "attribute past the end",
        "short attribute", "error without number", "error INT_MIN", "error INT_MIN echo",
        "done INT_MIN"])
def test_regressions(data: bytes) -> None:
    check([data])


@pytest.mark.parametrize("payload", [INT_MIN, struct.pack("=i", 2 ** 31 - 1), b"", b"\xff\xff"])
def test_an_error_number_out_of_range_is_eproto(payload: bytes) -> None:
    """os.strerror(2**31) raised OverflowError: out of the stream (the
    network monitor ended) and out of the dumps and the lookup."""
    data = nlmsg(r.NLMSG_ERROR, 0, 1, payload)
    with recording("mptcpd.netlink") as rec:
        assert _stream([data]) == []
    assert rec.lines() == [(40, "Network monitor: rtnetlink error: Protocol error")]
    with recording("mptcpd.netlink") as rec:
        assert _replies([data]) == [[], [], RouteLookup(error=errno.EPROTO)]
    assert rec.lines() == [(40, "get_link failed: Protocol error"),
                           (40, "get_addr failed: Protocol error")]

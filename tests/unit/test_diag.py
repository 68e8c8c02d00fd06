"""Listing MPTCP connections through sock_diag: decoding and the dump, offline.

The replies below were captured from Linux 6.18 (``mptcp_diag`` built in) in
a lab (``tests.lab.Lab``, default shape) while two ``python -m
tests.lab.traffic client ... --hold 4`` connections ran from the client
namespace to a traffic server listening on ``::`` port 5201, one to
192.0.2.2 and one to 2001:db8:1::2.  They are the datagrams the
daemon's sock_diag socket received for the requests
:func:`~mptcpd.netlink.diag.build_request` builds.  Every reply here is
also parsed by the pyroute2 oracle (:mod:`tests.unit.diag_oracle`), which
must agree with the production decoder.  At that moment:

client ``ss -MniH``::

    ESTAB 0 0 192.0.2.1:13726 192.0.2.2:5201
         subflows_max:2 remote_key token:a4ac871 ...
    ESTAB 0 0 [2001:db8:1::1]:26166 [2001:db8:1::2]:5201
         subflows_max:2 remote_key token:b2361432 ...

server ``ss -MniH``::

    ESTAB 0 0 [::ffff:192.0.2.2]:5201 [::ffff:192.0.2.1]:13726
         subflows_max:2 remote_key token:afd12064 ...
    ESTAB 0 0 [2001:db8:1::2]:5201 [2001:db8:1::1]:26166
         subflows_max:2 remote_key token:5530af55 ...

and the traffic clients printed ``"token": 172673137`` (0x0a4ac871) and
``"token": 2989888562`` (0xb2361432) from ``getsockopt(MPTCP_INFO)``.
``DONE_ENOENT`` is the kernel's answer to a dump for protocol 200, which
has no inet_diag handler: an ``NLMSG_DONE`` carrying ``-ENOENT``.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2.netlink.diag import MarshalDiag  # type: ignore[import-untyped]

from mptcpd.netlink import diag
from mptcpd.netlink.diag import (
    MptcpConnection,
    MptcpDiagUnsupported,
    build_request,
    decode_datagram,
    decode_mptcp_info,
    list_mptcp_connections,
    parse_datagram,
)
from mptcpd.types import SockAddr
from tests.unit import diag_oracle

ROOT = Path(__file__).resolve().parents[2]

LOGGER = "mptcpd.netlink.diag"

# -- captured from the kernel ------------------------------------------------

CLIENT_V4 = bytes.fromhex(
    "e000000014000200ff0000003141000002010000359e1451c00002010000000000000000"
    "00000000c0000202000000000000000000000000000000004f1300000000000000000000"
    "000000000000000000000000452f5000050008000000000008000f00000000000c001500"
    "010000000000000006001600520000006400020000000002000000000200000071c84a0a"
    "c21ee1fce76c34bbc21ee1fce76c34bb40327444e71ec9db000000000000000000000000"
    "0000000006000000000000000300000000000000060000000000000001000000b4050000"
    "b4050000b4050000"
)
CLIENT_V4_DONE = bytes.fromhex("1400000003000200ff0000003141000000000000")
CLIENT_V6 = bytes.fromhex(
    "e00000001400020000010000314100000a0100006636145120010db80001000000000000"
    "0000000120010db800010000000000000000000200000000501300000000000000000000"
    "00000000000000000000000056325000050008000000000008000f00000000000c001500"
    "0100000000000000060016001200000064000200000000020000000002000000321436b2"
    "c1b68edd43f7d0cfc1b68edd43f7d0cf857500dfe98c2870000000000000000000000000"
    "0000000006000000000000000300000000000000060000000000000001000000b8050000"
    "b4050000b4050000"
)
CLIENT_V6_DONE = bytes.fromhex("1400000003000200000100003141000000000000")
SERVER_V4_DONE = bytes.fromhex("1400000003000200ff0000003141000000000000")
SERVER_V6 = bytes.fromhex(
    "e00000001400020000010000314100000a0100001451359e00000000000000000000ffff"
    "c000020200000000000000000000ffffc000020100000000600400000000000000000000"
    "00000000000000000000000059325000050008000000000008000f00000000000c001500"
    "01000000000000000600160012000000640002000000000200000000020000006420d1af"
    "40327444e71ec9db40327444e71ec9dbc21ee1fce76c34bb000000000000000000000000"
    "0000000003000000000000000600000000000000030000000000000001000000c0050000"
    "c0050000c0050000e00000001400020000010000314100000a0100001451663620010db8"
    "00010000000000000000000220010db80001000000000000000000010000000061040000"
    "000000000000000000000000000000000000000058325000050008000000000008000f00"
    "000000000c00150001000000000000000600160012000000640002000000000200000000"
    "0200000055af3055857500dfe98c2870857500dfe98c2870c1b68edd43f7d0cf00000000"
    "000000000000000000000000030000000000000006000000000000000300000000000000"
    "01000000c0050000c4050000c0050000"
)
SERVER_V6_DONE = bytes.fromhex("1400000003000200000100003141000000000000")
DONE_ENOENT = bytes.fromhex("1400000003000200ff00000031410000feffffff")


def conn(token: int, laddr: str, lport: int, raddr: str, rport: int) -> MptcpConnection:
    return MptcpConnection(
        token=token,
        laddr=SockAddr(ipaddress.ip_address(laddr), lport),
        raddr=SockAddr(ipaddress.ip_address(raddr), rport),
        state=1,
        established=True,
    )


CLIENT_V4_CONN = conn(0x0A4AC871, "192.0.2.1", 13726, "192.0.2.2", 5201)
CLIENT_V6_CONN = conn(0xB2361432, "2001:db8:1::1", 26166, "2001:db8:1::2", 5201)
SERVER_CONNS = [
    conn(0xAFD12064, "::ffff:192.0.2.2", 5201, "::ffff:192.0.2.1", 13726),
    conn(0x5530AF55, "2001:db8:1::2", 5201, "2001:db8:1::1", 26166),
]

# -- rebuilding captured messages ----------------------------------------------

NLMSG_HDR = struct.Struct("=IHHII")
DIAG_MSG_LEN = 72  # struct inet_diag_msg
INET_DIAG_INFO = 2


def split_messages(data: bytes) -> list[bytes]:
    out = []
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        length = NLMSG_HDR.unpack_from(data, offset)[0]
        out.append(data[offset:offset + length])
        offset += (length + 3) & ~3
    return out


def attributes(msg: bytes) -> list[tuple[int, bytes]]:
    """The (type, payload) attributes of one sock_diag reply message."""
    out = []
    offset = NLMSG_HDR.size + DIAG_MSG_LEN
    while offset + 4 <= len(msg):
        length, kind = struct.unpack_from("=HH", msg, offset)
        out.append((kind, msg[offset + 4:offset + length]))
        offset += (length + 3) & ~3
    return out


def rebuild(msg: bytes, attrs: list[tuple[int, bytes]]) -> bytes:
    """``msg`` with its attributes replaced and its length fixed."""
    body = b""
    for kind, payload in attrs:
        nla = struct.pack("=HH", 4 + len(payload), kind) + payload
        body += nla + b"\0" * (-len(nla) % 4)
    head = msg[:NLMSG_HDR.size + DIAG_MSG_LEN]
    total = len(head) + len(body)
    return struct.pack("=I", total) + head[4:] + body


def with_info(msg: bytes, info: bytes | None) -> bytes:
    """``msg`` with ``INET_DIAG_INFO`` replaced by ``info`` (None: removed)."""
    attrs = [(k, v) for k, v in attributes(msg) if k != INET_DIAG_INFO]
    if info is not None:
        attrs.append((INET_DIAG_INFO, info))
    return rebuild(msg, attrs)


def info_of(msg: bytes) -> bytes:
    return dict(attributes(msg))[INET_DIAG_INFO]


def set_state(msg: bytes, state: int) -> bytes:
    offset = NLMSG_HDR.size + 1
    return msg[:offset] + bytes([state]) + msg[offset + 1:]


# -- struct mptcp_info ------------------------------------------------------------


def test_the_token_is_the_u32_at_offset_12_of_mptcp_info() -> None:
    info = decode_mptcp_info(info_of(CLIENT_V4))
    assert info is not None
    assert info.token == 0x0A4AC871 == 172673137  # what MPTCP_INFO said
    assert info.flags == diag.MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED  # ss: remote_key
    assert info.subflows_max == 2  # ss: subflows_max:2
    assert not info.fallback
    assert len(info_of(CLIENT_V4)) == 96  # sizeof(struct mptcp_info) on 6.18


def test_decode_mptcp_info_layout_with_a_built_structure() -> None:
    data = struct.pack("=6B2xII", 1, 2, 3, 4, 5, 6, 0x1, 0xDEADBEEF)
    info = decode_mptcp_info(data)
    assert info == diag.MptcpInfo(1, 2, 3, 4, 5, 6, 0x1, 0xDEADBEEF)
    assert info.fallback
    assert decode_mptcp_info(data + b"\xff" * 80) == info  # longer is fine


@pytest.mark.parametrize("size", [0, 1, 8, 12, 15])
def test_mptcp_info_too_short_for_the_token_is_none(size: int) -> None:
    assert decode_mptcp_info(info_of(CLIENT_V4)[:size]) is None


def test_pyroute2s_own_class_does_not_give_the_token() -> None:
    """Why the module declares its own reply class: pyroute2 0.9.7 decodes
    INET_DIAG_INFO as tcp_info, which fails on the shorter mptcp_info and
    leaves the raw attribute *with its 4-byte header*; the token is not at
    offset 12 of that value."""
    (msg,) = MarshalDiag().parse(CLIENT_V4)
    value = msg.get_attr("INET_DIAG_INFO")
    assert isinstance(value, bytes) and len(value) == 100
    assert struct.unpack_from("=I", value, 12)[0] != 0x0A4AC871
    (ours,) = diag_oracle.MarshalMptcpDiag().parse(CLIENT_V4)
    assert ours.get_attr("INET_DIAG_INFO") == info_of(CLIENT_V4)


def test_the_oracles_reply_class_is_right_after_pyroute2s_was_used() -> None:
    """pyroute2 caches each class's compiled attribute table and finds it
    through inheritance; in a fresh process that decodes with pyroute2's
    inet_diag_msg first, the oracle's subclass must still use its own table."""
    code = (
        "import sys; from pyroute2.netlink.diag import MarshalDiag\n"
        "from tests.unit import diag_oracle\n"
        "data = bytes.fromhex(sys.argv[1])\n"
        "list(MarshalDiag().parse(data))[0].get_attr('INET_DIAG_INFO')\n"
        "(m,) = diag_oracle.MarshalMptcpDiag().parse(data)\n"
        "print(len(m.get_attr('INET_DIAG_INFO')), diag_oracle.decode(data)[0][0].token)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, CLIENT_V4.hex()],
        capture_output=True, text=True, timeout=60, check=True, cwd=ROOT,
    ).stdout.split()
    assert out == ["96", str(0x0A4AC871)]


# -- replies captured from the kernel --------------------------------------------


def test_client_ipv4_reply() -> None:
    assert parse_datagram(CLIENT_V4) == [CLIENT_V4_CONN]
    assert parse_datagram(CLIENT_V4_DONE) == []


def test_client_ipv6_reply() -> None:
    assert parse_datagram(CLIENT_V6) == [CLIENT_V6_CONN]
    assert parse_datagram(CLIENT_V6_DONE) == []


def test_server_reply_keeps_ipv4_mapped_addresses_as_the_kernel_gives_them() -> None:
    """The server listens on ``::``: its IPv4 connection is an AF_INET6
    socket, listed by the AF_INET6 dump only, with ``::ffff:`` addresses
    (as ``ss`` shows it and as the mptcp_pm events of the connection say)."""
    assert parse_datagram(SERVER_V4_DONE) == []
    got = parse_datagram(SERVER_V6)
    assert got == SERVER_CONNS
    assert got[0].laddr.ip.ipv4_mapped == ipaddress.IPv4Address("192.0.2.2")  # type: ignore[union-attr]


def test_ports_are_host_order() -> None:
    (c,) = parse_datagram(CLIENT_V4)
    assert (c.laddr.port, c.raddr.port) == (13726, 5201)


def test_fallback_flag() -> None:
    info = bytearray(info_of(CLIENT_V4))
    struct.pack_into("=I", info, 8, diag.MPTCP_INFO_FLAG_FALLBACK)
    (c,) = parse_datagram(with_info(CLIENT_V4, bytes(info)))
    assert c.fallback and c.token == 0x0A4AC871


def test_non_established_state() -> None:
    (c,) = parse_datagram(set_state(CLIENT_V4, 5))  # TCP_FIN_WAIT2
    assert c.state == 5 and not c.established


def test_a_listener_is_skipped() -> None:
    assert parse_datagram(set_state(CLIENT_V4, diag.TCP_LISTEN)) == []


# -- malformed replies ----------------------------------------------------------------


def test_missing_info_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    assert parse_datagram(with_info(CLIENT_V4, None)) == []
    assert "no MPTCP info for 192.0.2.1 port 13726 -> 192.0.2.2 port 5201" in caplog.text


@pytest.mark.parametrize("size", [0, 4, 8, 15])
def test_short_info_is_skipped_with_a_warning(
    size: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    assert parse_datagram(with_info(CLIENT_V4, info_of(CLIENT_V4)[:size])) == []
    assert f"is {size} bytes, too short for the token" in caplog.text


def test_info_of_exactly_16_bytes_is_enough() -> None:
    assert parse_datagram(with_info(CLIENT_V4, info_of(CLIENT_V4)[:16])) == [CLIENT_V4_CONN]


def test_a_bad_message_does_not_hide_the_good_ones() -> None:
    bad = with_info(CLIENT_V6, b"\x01\x02")
    assert parse_datagram(bad + CLIENT_V4) == [CLIENT_V4_CONN]


def test_info_attribute_running_past_the_message(caplog: pytest.LogCaptureFixture) -> None:
    """INET_DIAG_INFO's length runs past its message: pyroute2 would log and
    hand out the attribute with its header (a wrong token); the reply is
    skipped with a warning instead, and the next reply is read."""
    caplog.set_level(logging.WARNING, LOGGER)
    msg = bytearray(CLIENT_V6)
    offset = NLMSG_HDR.size + DIAG_MSG_LEN
    while struct.unpack_from("=H", msg, offset + 2)[0] != INET_DIAG_INFO:
        offset += (struct.unpack_from("=H", msg, offset)[0] + 3) & ~3
    struct.pack_into("=H", msg, offset, 4000)
    assert parse_datagram(bytes(msg) + CLIENT_V4) == [CLIENT_V4_CONN]
    assert "malformed reply for 2001:db8:1::1 port 26166" in caplog.text
    assert "attribute 2 of 4000 bytes does not fit the message" in caplog.text


def test_a_broken_attribute_before_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    msg = bytearray(CLIENT_V4)
    struct.pack_into("=H", msg, NLMSG_HDR.size + DIAG_MSG_LEN, 2)  # length < 4
    assert parse_datagram(bytes(msg)) == []
    assert "does not fit the message" in caplog.text


@pytest.mark.parametrize("cut", [1, 50, 120, 200])
def test_truncated_datagram(cut: int) -> None:
    assert parse_datagram(CLIENT_V4[:-cut]) == []


def test_unknown_family_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    msg = CLIENT_V4[:16] + bytes([1]) + CLIENT_V4[17:]  # AF_UNIX
    assert parse_datagram(msg) == []
    assert "unknown family 1" in caplog.text


# -- errors -------------------------------------------------------------------------


def test_done_with_enoent_means_no_mptcp_diag() -> None:
    with pytest.raises(MptcpDiagUnsupported) as info:
        parse_datagram(DONE_ENOENT)
    assert info.value.errno == errno.ENOENT
    assert "no MPTCP socket diagnostics" in str(info.value)
    assert isinstance(info.value, OSError)


def test_nlmsg_error_is_an_oserror() -> None:
    body = struct.pack("=i", -errno.EPERM) + build_request(socket.AF_INET)[:16]
    error = struct.pack("=IHHII", 16 + len(body), 2, 0, 255, 0x4131) + body
    with pytest.raises(OSError) as info:
        parse_datagram(error)
    assert info.value.errno == errno.EPERM
    assert "Operation not permitted" in str(info.value)


# -- the request ---------------------------------------------------------------------


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_request_bytes(family: int) -> None:
    data = build_request(family, seq=7)
    assert len(data) == 16 + 56 + 8
    length, kind, flags, seq, _ = NLMSG_HDR.unpack_from(data)
    assert (length, kind, flags, seq) == (80, 20, 0x301, 7)
    # struct inet_diag_req_v2
    fam, proto, ext, pad, states = struct.unpack_from("=BBBBI", data, 16)
    assert (fam, proto, ext, pad) == (family, 0, 1 << (INET_DIAG_INFO - 1), 0)
    assert states == 0x3FFF  # every state: listeners tell which side accepted
    assert data[24:72] == bytes(48)  # inet_diag_sockid: any
    # INET_DIAG_REQ_PROTOCOL (3), u32 262
    assert struct.unpack_from("=HHI", data, 72) == (8, 3, 262)


# -- the whole call, with a fake kernel on a socketpair -----------------------------


class FakeKernel:
    """The far end of the socket the dump writes its requests to.

    Each request is checked and answered with captured datagrams, whose
    sequence numbers are set to the request's.
    """

    def __init__(self, answers: dict[int, list[bytes]]) -> None:
        self.answers = answers
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ours.setblocking(False)
        self.requests: list[tuple[int, int]] = []

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.ours, 65536)
            _, kind, flags, seq, _ = NLMSG_HDR.unpack_from(data)
            family = data[16]
            protocol = struct.unpack_from("=HHI", data, 72)
            assert kind == diag.SOCK_DIAG_BY_FAMILY
            assert protocol == (8, 3, 262)
            self.requests.append((family, flags))
            for datagram in self.answers.get(family, []):
                out = bytearray()
                for msg in split_messages(datagram):
                    m = bytearray(msg)
                    struct.pack_into("=I", m, 8, seq)
                    out += m
                await loop.sock_sendall(self.ours, bytes(out))

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


@pytest.fixture
def fake_kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeKernel]]:
    made: list[FakeKernel] = []

    def factory(protocol: int, netns: str | None = None) -> socket.socket:
        assert protocol == diag.NETLINK_SOCK_DIAG == 4
        sock = made[-1].theirs
        sock.setblocking(False)
        return sock

    monkeypatch.setattr(diag, "netlink_socket", factory)
    yield made
    for kernel in made:
        kernel.close()


async def run_with(kernel: FakeKernel, **kwargs: object) -> list[MptcpConnection]:
    task = asyncio.create_task(kernel.serve())
    try:
        return await list_mptcp_connections(**kwargs)  # type: ignore[arg-type]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_list_client_side(fake_kernel: list[FakeKernel]) -> None:
    kernel = FakeKernel({
        socket.AF_INET: [CLIENT_V4, CLIENT_V4_DONE],
        socket.AF_INET6: [CLIENT_V6, CLIENT_V6_DONE],
    })
    fake_kernel.append(kernel)
    assert await run_with(kernel) == [CLIENT_V4_CONN, CLIENT_V6_CONN]
    assert [f for f, _ in kernel.requests] == [socket.AF_INET, socket.AF_INET6]
    assert all(flags == 0x301 for _, flags in kernel.requests)  # REQUEST|DUMP


async def test_list_server_side(fake_kernel: list[FakeKernel]) -> None:
    kernel = FakeKernel({
        socket.AF_INET: [SERVER_V4_DONE],
        socket.AF_INET6: [SERVER_V6, SERVER_V6_DONE],
    })
    fake_kernel.append(kernel)
    assert await run_with(kernel) == SERVER_CONNS


async def test_list_without_mptcp_diag_raises(fake_kernel: list[FakeKernel]) -> None:
    kernel = FakeKernel({socket.AF_INET: [DONE_ENOENT]})
    fake_kernel.append(kernel)
    with pytest.raises(MptcpDiagUnsupported) as info:
        await run_with(kernel)
    assert info.value.errno == errno.ENOENT


async def test_list_times_out_as_oserror(fake_kernel: list[FakeKernel]) -> None:
    kernel = FakeKernel({})  # never answers
    fake_kernel.append(kernel)
    with pytest.raises(OSError) as info:
        await run_with(kernel, timeout=0.1)
    assert info.value.errno == errno.ETIMEDOUT
    assert "took longer than 0.1 s" in str(info.value)


# -- the pyroute2 oracle ---------------------------------------------------------------


def build_reply(family: int, state: int, src: str, sport: int, dst: str, dport: int,
                attrs: list[tuple[int, bytes]], seq: int = 255) -> bytes:
    """One ``SOCK_DIAG_BY_FAMILY`` reply, as ``mptcp_diag`` lays it out."""
    def addr(text: str) -> bytes:
        return socket.inet_pton(family, text).ljust(16, b"\0")

    head = struct.pack("=BBBB", family, state, 0, 0)
    sockid = struct.pack("!HH", sport, dport) + addr(src) + addr(dst) + bytes(12)
    tail = struct.pack("=IIIII", 0, 0, 0, 0, 4242)
    body = head + sockid + tail
    assert len(body) == DIAG_MSG_LEN
    msg = NLMSG_HDR.pack(16 + len(body), diag.SOCK_DIAG_BY_FAMILY, 2, seq, 0x4131) + body
    return rebuild(msg, attrs)


def mptcp_info(token: int, flags: int = 2, size: int = 96) -> bytes:
    return struct.pack("=6B2xII", 1, 0, 0, 2, 0, 0, flags, token).ljust(size, b"\x07")


DONE = NLMSG_HDR.pack(20, 3, 2, 255, 0x4131) + struct.pack("=i", 0)
ULP = (20, b"mptcp\0\0\0")  # INET_DIAG_ULP_INFO, not read
BUILT = {
    "listener then connection": (
        build_reply(socket.AF_INET6, diag.TCP_LISTEN, "::", 5201, "::", 0, [])
        + build_reply(socket.AF_INET6, 1, "::ffff:192.0.2.2", 5201,
                      "::ffff:192.0.2.1", 40000, [ULP, (INET_DIAG_INFO, mptcp_info(7))])
        + DONE
    ),
    "fallback, closing, ipv4": (
        build_reply(socket.AF_INET, 8, "198.51.100.1", 1, "203.0.113.9", 65535,
                    [(INET_DIAG_INFO, mptcp_info(0xFFFFFFFF, flags=3, size=16))])
        + build_reply(socket.AF_INET, 1, "192.0.2.1", 2, "192.0.2.2", 3,
                      [(1, b"\0" * 16), (INET_DIAG_INFO, mptcp_info(1)), ULP])
    ),
    "ipv4 listener on an address": (
        build_reply(socket.AF_INET, diag.TCP_LISTEN, "192.0.2.2", 80, "0.0.0.0", 0, [])
        + DONE
    ),
    "nested-flag info": build_reply(socket.AF_INET6, 2, "2001:db8::1", 9, "2001:db8::2",
                                    10, [(INET_DIAG_INFO | 0x8000, mptcp_info(99))]),
}
CAPTURED = {
    "client v4": CLIENT_V4, "client v4 done": CLIENT_V4_DONE, "client v6": CLIENT_V6,
    "client v6 done": CLIENT_V6_DONE, "server v4 done": SERVER_V4_DONE,
    "server v6": SERVER_V6, "server v6 done": SERVER_V6_DONE,
    "two in one": CLIENT_V4 + CLIENT_V6,
    "missing info": with_info(CLIENT_V4, None) + CLIENT_V6,
    "short info": with_info(CLIENT_V4, info_of(CLIENT_V4)[:15]),
    "exactly 16": with_info(CLIENT_V4, info_of(CLIENT_V4)[:16]),
    "fin wait": set_state(CLIENT_V6, 5),
    "listener": set_state(CLIENT_V4, diag.TCP_LISTEN) + CLIENT_V6,
}


@pytest.mark.parametrize("name", sorted({**CAPTURED, **BUILT}))
def test_every_reply_decodes_as_the_oracle_decodes_it(name: str) -> None:
    data = {**CAPTURED, **BUILT}[name]
    batch = decode_datagram(data)
    assert (batch.connections, batch.listeners, batch.done) == diag_oracle.decode(data)


def test_built_replies_give_what_was_built() -> None:
    batch = decode_datagram(BUILT["listener then connection"])
    assert batch.done
    assert batch.listeners == [SockAddr(ipaddress.ip_address("::"), 5201)]
    (c,) = batch.connections
    assert (c.token, c.laddr.port, c.raddr.port, c.established) == (7, 5201, 40000, True)
    first, second = parse_datagram(BUILT["fallback, closing, ipv4"])
    assert (first.token, first.fallback, first.state, first.established) == (
        0xFFFFFFFF, True, 8, False)
    assert (second.token, second.fallback) == (1, False)
    assert [c.token for c in parse_datagram(BUILT["nested-flag info"])] == [99]


@pytest.mark.parametrize("errno_", [errno.EPERM, errno.ENOENT, errno.EINVAL])
def test_errors_decode_as_the_oracle_decodes_them(errno_: int) -> None:
    # pyroute2 decodes an echoed request by its own layout and fails on the
    # kernel's; the oracle is given an echo of type 0, which it leaves alone.
    echo = NLMSG_HDR.pack(80, 0, 0x301, 255, 0)
    error = NLMSG_HDR.pack(20 + len(echo), 2, 0, 255, 0x4131) + \
        struct.pack("=i", -errno_) + echo
    done = NLMSG_HDR.pack(20, 3, 2, 255, 0x4131) + struct.pack("=i", -errno_)
    for data in (error, CLIENT_V4 + done):
        with pytest.raises(OSError) as ours:
            decode_datagram(data)
        with pytest.raises(OSError) as theirs:
            diag_oracle.decode(data)
        assert ours.value.errno == theirs.value.errno == errno_
        assert type(ours.value) is type(theirs.value)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
@pytest.mark.parametrize("protocol", [diag.IPPROTO_MPTCP, 200, 0])
@pytest.mark.parametrize("seq", [0, 1, 0xFFFFFFFF])
def test_request_bytes_equal_pyroute2s(family: int, protocol: int, seq: int) -> None:
    assert build_request(family, protocol, seq) == diag_oracle.request(family, protocol, seq)


def test_messages_of_another_sequence_are_ignored() -> None:
    batch = decode_datagram(CLIENT_V4 + DONE_ENOENT, seq=1)
    assert (batch.connections, batch.done) == ([], False)
    batch = decode_datagram(CLIENT_V4 + CLIENT_V4_DONE, seq=255)
    assert (batch.connections, batch.done) == ([CLIENT_V4_CONN], True)


# -- malformed bytes: an OSError or a result, never another exception ---------------


@pytest.mark.parametrize("kind", [2, 3])  # NLMSG_ERROR, NLMSG_DONE
def test_int_min_in_an_error_or_done_is_an_oserror(kind: int) -> None:
    data = NLMSG_HDR.pack(20, kind, 0, 1, 0) + struct.pack("=i", -(2 ** 31))
    with pytest.raises(OSError) as info:
        decode_datagram(data)
    assert info.value.errno == errno.EIO
    assert "malformed error code 2147483648" in str(info.value)


def test_an_error_code_out_of_errno_range_is_eio() -> None:
    data = NLMSG_HDR.pack(20, 2, 0, 1, 0) + struct.pack("=i", 2 ** 31 - 1)
    with pytest.raises(OSError) as info:
        decode_datagram(data)
    assert info.value.errno == errno.EIO


def test_an_error_whose_echo_runs_past_the_end() -> None:
    """The echoed request header says 4000 bytes; only the code is read."""
    echo = NLMSG_HDR.pack(4000, 20, 0x301, 1, 0)
    data = NLMSG_HDR.pack(16 + 4 + 16, 2, 0, 1, 0) + struct.pack("=i", -errno.EPERM) + echo
    with pytest.raises(OSError) as info:
        decode_datagram(data)
    assert info.value.errno == errno.EPERM


def test_a_truncated_error_message_is_an_oserror() -> None:
    with pytest.raises(OSError) as info:
        decode_datagram(NLMSG_HDR.pack(18, 2, 0, 1, 0) + b"\xff\xff")
    assert info.value.errno == errno.EIO


def test_a_family_0_listener_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    listener = bytearray(set_state(CLIENT_V4, diag.TCP_LISTEN))
    listener[16] = 0
    batch = decode_datagram(bytes(listener) + CLIENT_V6 + CLIENT_V6_DONE)
    assert (batch.listeners, batch.connections, batch.done) == ([], [CLIENT_V6_CONN], True)
    assert "unknown family 0" in caplog.text


def test_attributes_running_past_the_end_of_the_datagram() -> None:
    """The message length is right, the last attribute's is not."""
    msg = bytearray(with_info(CLIENT_V4, info_of(CLIENT_V4)))
    struct.pack_into("=H", msg, len(msg) - 100, 60000)
    assert parse_datagram(bytes(msg)) == []
    msg = bytearray(CLIENT_V4)
    struct.pack_into("=I", msg, 0, 16 + DIAG_MSG_LEN + 2)  # half an attribute header
    assert parse_datagram(bytes(msg[:16 + DIAG_MSG_LEN + 2])) == []


def test_a_reply_too_short_for_inet_diag_msg(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    short = NLMSG_HDR.pack(16 + 40, diag.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + bytes(40)
    assert parse_datagram(short + CLIENT_V4) == [CLIENT_V4_CONN]
    assert "undecodable reply (type 20, 56 bytes)" in caplog.text


@pytest.mark.parametrize("length", [0, 1, 15])
def test_a_message_length_below_the_header(length: int) -> None:
    data = NLMSG_HDR.pack(length, 3, 0, 1, 0) + bytes(4)
    assert decode_datagram(data).done is False

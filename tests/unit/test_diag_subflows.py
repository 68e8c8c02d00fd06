"""Listing subflows through sock_diag (a TCP dump with the mptcp ULP info), offline.

``CLIENT_V6`` and ``SERVER_V6`` were captured from Linux 6.18 in a lab
(``tests.lab.Lab``, default shape) while ``python -m tests.lab.traffic
client 2001:db8:1::2 5201 --hold 4`` ran from the client namespace to a
traffic server listening on ``::``: the first datagram each side's
sock_diag socket received for :func:`~mptcpd.netlink.diag.build_subflow_request`
(``AF_INET6``, sequence 255), each holding the connection's initial subflow
(local token 0x8d3293da, subflow flags 0xc3 on the client; 0x7e4f9980 and
0xc1 on the server), then the ``NLMSG_DONE``.  Every datagram here is also parsed by the pyroute2 oracle
(:mod:`tests.unit.diag_oracle`), which must agree with the production decoder.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mptcpd.netlink import diag
from mptcpd.netlink.diag import MptcpSubflow, build_subflow_request, decode_datagram
from mptcpd.types import SockAddr
from tests.unit import diag_oracle
from tests.unit.fuzz_support import FUZZ, no_hang

LOGGER = "mptcpd.netlink.diag"
NLMSG_HDR = struct.Struct("=IHHII")

CLIENT_V6 = bytes.fromhex(
    "0002000014000200ff000000985600000a010000a1f4145120010db80001000000000000"
    "0000000120010db800010000000000000000000200000000311a00000000000000000000"
    "0000000000000000000000001f11f600050008000000000008000f00000000000c001500"
    "010000000000000006001600120000001c010200010000000007aa01e01c0300409c0000"
    "940500001802000000000000000000000000000000000000000000009007000000000000"
    "bc060000bc060000dc0500006cfa0000360000001f000000ffffff7f0b00000094050000"
    "0300000000000000c837000000000000b968e02700000000ffffffffffffffff07000000"
    "000000000600000000000000050000000400000000000000070000000200000001000000"
    "00cb280c0000000000000000000000000000000000000000000000000000000002000000"
    "000000000600000000000000000000000000000000000000000000000000000000fc0000"
    "00fc00000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000680013000a0001006d707463700000005800030008000100"
    "0000000008000200da93328d08000800c3000000050009000000000005000a0000000000"
    "08000300070000000c000400adb44fef9a6ff9a2080005000400000008000600dcbca0e5"
    "0600070003000000"
)
SERVER_V6 = bytes.fromhex(
    "0002000014000200ff000000985600000a0100001451a1f420010db80001000000000000"
    "0000000220010db800010000000000000000000100000000321a00000000000000000000"
    "000000000000000000000000ddfef500050008000000000008000f00000000000c001500"
    "010000000000000006001600120000001c010200010000000007aa00e01c0300409c0000"
    "94050000180200000000000000000000000000000000000000000000c406000000000000"
    "98070000c4060000dc0500006cfa0000190000000c000000ffffff7f0c00000094050000"
    "0300000000000000c837000000000000ed79c26900000000ffffffffffffffff06000000"
    "000000000600000000000000030000000500000000000000170000000100000002000000"
    "5536e4010000000000000000000000000000000000000000000000000000000003000000"
    "000000000600000000000000000000000000000000000000000000000000000000fc0000"
    "00fc00000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000680013000a0001006d707463700000005800030008000100"
    "000000000800020080994f7e08000800c1000000050009000000000005000a0000000000"
    "08000300070000000c000400a6893526e9a4a9d90800050001000000080006003f95690c"
    "0600070006000000"
)
DONE = bytes.fromhex("1400000003000200ff0000009856000000000000")


def nla(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload.ljust(
        (len(payload) + 3) & ~3, b"\0")


def ulp(name: bytes = b"mptcp\0", **attrs: int) -> bytes:
    """``INET_DIAG_ULP_INFO`` with an ``mptcp`` nest of u32 (flags, tokens)
    and u8 (IDs) attributes."""
    kinds = {"token_rem": (1, "=I"), "token_loc": (2, "=I"), "flags": (8, "=I"),
             "id_rem": (9, "=B"), "id_loc": (10, "=B")}
    nest = b"".join(nla(kinds[k][0], struct.pack(kinds[k][1], v)) for k, v in attrs.items())
    return nla(diag.INET_DIAG_ULP_INFO,
               nla(diag.INET_ULP_INFO_NAME, name) + nla(diag.INET_ULP_INFO_MPTCP, nest))


def reply(family: int, state: int, src: str, sport: int, dst: str, dport: int,
          ifindex: int, attrs: bytes, seq: int = 255) -> bytes:
    def addr(text: str) -> bytes:
        return socket.inet_pton(family, text).ljust(16, b"\0")

    body = (struct.pack("=BBBB", family, state, 0, 0) + struct.pack("!HH", sport, dport)
            + addr(src) + addr(dst) + struct.pack("=I", ifindex) + bytes(8)
            + struct.pack("=IIIII", 0, 0, 0, 0, 77))
    body += nla(diag.INET_DIAG_INFO, bytes(232)) + attrs
    return NLMSG_HDR.pack(16 + len(body), diag.SOCK_DIAG_BY_FAMILY, 2, seq, 0) + body


JOIN = diag.MPTCP_SUBFLOW_FLAG_JOIN_LOC | diag.MPTCP_SUBFLOW_FLAG_JOIN_REM
BUILT = {
    "joined backup, ipv4, bound": reply(
        socket.AF_INET, 1, "198.51.100.1", 26263, "192.0.2.2", 5201, 3,
        ulp(token_rem=0x85FA6207, token_loc=0xE669E57F, flags=JOIN | 0xE0, id_rem=0,
            id_loc=1)),
    "plain tcp and tls among them": (
        reply(socket.AF_INET, 1, "192.0.2.1", 22, "192.0.2.9", 4000, 0, b"")
        + reply(socket.AF_INET, 1, "192.0.2.1", 443, "192.0.2.9", 4001, 0,
                ulp(name=b"tls\0"))
        + reply(socket.AF_INET6, 8, "2001:db8::1", 9, "2001:db8::2", 10, 0,
                ulp(token_loc=7, flags=0x10 | JOIN, id_rem=2, id_loc=3))
        + DONE),
    "no token yet": reply(socket.AF_INET, 2, "192.0.2.1", 1, "192.0.2.2", 2, 0,
                          ulp(flags=0)),
    "listener": reply(socket.AF_INET, diag.TCP_LISTEN, "0.0.0.0", 5201, "0.0.0.0", 0, 0,
                      ulp(token_loc=1)),
}
CAPTURED = {"client": CLIENT_V6 + DONE, "server": SERVER_V6 + DONE,
            "both": CLIENT_V6 + SERVER_V6}


def subflows(data: bytes) -> list[MptcpSubflow]:
    return decode_datagram(data, subflows=True).subflows


@pytest.mark.parametrize("name", sorted({**CAPTURED, **BUILT}))
def test_every_reply_decodes_as_the_oracle_decodes_it(name: str) -> None:
    data = {**CAPTURED, **BUILT}[name]
    batch = decode_datagram(data, subflows=True)
    assert (batch.subflows, batch.done) == diag_oracle.decode_subflows(data)
    assert batch.connections == [] and batch.listeners == []


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
@pytest.mark.parametrize("seq", [0, 1, 0xFFFFFFFF])
def test_request_bytes_equal_pyroute2s(family: int, seq: int) -> None:
    assert build_subflow_request(family, seq) == diag_oracle.subflow_request(family, seq)


def test_captured_initial_subflows() -> None:
    (client,) = subflows(CAPTURED["client"])
    assert client.token == 0x8D3293DA
    assert client.laddr.ip == ipaddress.ip_address("2001:db8:1::1")
    assert client.raddr == SockAddr(ipaddress.ip_address("2001:db8:1::2"), 5201)
    assert client.initial and not client.backup and client.established
    assert (client.ifindex, client.local_id, client.remote_id) == (0, 0, 0)
    (server,) = subflows(CAPTURED["server"])
    assert server.token == 0x7E4F9980
    assert server.laddr.port == 5201 and server.raddr.port == client.laddr.port


def test_the_captured_initial_subflows_are_fully_established() -> None:
    """Both captures were taken after the traffic client's data exchange."""
    assert all(sf.fully_established for name in ("client", "server")
               for sf in subflows(CAPTURED[name]))


def test_a_connection_is_fully_established_as_its_initial_subflow_says() -> None:
    """The connection state, established from the TCP handshake on, is not
    what the ESTABLISHED event means: a client's connection is fully
    established once data was exchanged, which its initial subflow's flag
    tells (a capture before data: 0x83; after: 0xc3)."""
    local, remote = (SockAddr(ipaddress.ip_address("192.0.2.1"), 40000),
                     SockAddr(ipaddress.ip_address("192.0.2.2"), 5201))

    def conn(token: int, state: int = 1) -> diag.MptcpConnection:
        return diag.MptcpConnection(token=token, laddr=local, raddr=remote, state=state,
                                    established=state == 1)

    def sf(token: int, flags: int) -> MptcpSubflow:
        return MptcpSubflow(token=token, laddr=local, raddr=remote, state=1, flags=flags)

    connections = [conn(1), conn(2), conn(3), conn(4), conn(5, state=2)]
    listed = [sf(1, 0x83),                # a client before its first data
              sf(2, 0xC3),                # after
              sf(3, JOIN | 0xC0),         # its initial subflow gone, a join left
              sf(5, 0x83)]                # still in its handshake
    assert diag.fully_established(connections, listed) == {2, 3, 4}
    assert diag.fully_established(connections, None) == {1, 2, 3, 4}


def test_a_joined_backup_subflow() -> None:
    (sf,) = subflows(BUILT["joined backup, ipv4, bound"])
    assert sf == MptcpSubflow(
        token=0xE669E57F, laddr=SockAddr(ipaddress.ip_address("198.51.100.1"), 26263),
        raddr=SockAddr(ipaddress.ip_address("192.0.2.2"), 5201), state=1, ifindex=3,
        local_id=1, remote_id=0, flags=JOIN | 0xE0)
    assert not sf.initial and sf.backup and not sf.backup_remote


def test_other_tcp_sockets_listeners_and_tokenless_subflows_are_skipped(
        caplog: pytest.LogCaptureFixture) -> None:
    batch = decode_datagram(BUILT["plain tcp and tls among them"], subflows=True)
    assert batch.done
    (sf,) = batch.subflows
    assert (sf.token, sf.state, sf.local_id, sf.remote_id) == (7, 8, 3, 2)
    assert sf.backup_remote and not sf.backup
    assert subflows(BUILT["no token yet"]) == []
    assert subflows(BUILT["listener"]) == []
    assert decode_datagram(BUILT["listener"], subflows=True).listeners == []
    assert not caplog.records


def test_a_subflow_attribute_of_the_wrong_size_is_skipped_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    bad = nla(diag.INET_DIAG_ULP_INFO, nla(diag.INET_ULP_INFO_NAME, b"mptcp\0")
              + nla(diag.INET_ULP_INFO_MPTCP, nla(2, b"\1\2")))
    good = BUILT["joined backup, ipv4, bound"]
    data = reply(socket.AF_INET, 1, "192.0.2.1", 1, "192.0.2.2", 2, 0, bad) + good
    with caplog.at_level(logging.WARNING, LOGGER):
        assert [s.token for s in subflows(data)] == [0xE669E57F]
    assert "malformed subflow 192.0.2.1 port 1 -> 192.0.2.2 port 2" in caplog.text


@pytest.mark.parametrize("cut", [1, 5, 9, 20])
def test_a_nest_running_past_its_message_is_skipped_with_a_warning(
        cut: int, caplog: pytest.LogCaptureFixture) -> None:
    msg = BUILT["joined backup, ipv4, bound"]
    # the last attribute (the ULP nest) claims more bytes than the message has
    length = struct.unpack_from("=I", msg)[0]
    broken = msg[:length - cut]
    broken = struct.pack("=I", len(broken)) + broken[4:]
    with caplog.at_level(logging.WARNING, LOGGER):
        assert subflows(broken) == []
    assert "malformed subflow" in caplog.text


# -- fuzz: a result or an OSError, never another exception; the oracle agrees -------


def result_or_oserror(data: bytes) -> list[MptcpSubflow] | None:
    try:
        return subflows(data)
    except OSError:
        return None


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    buf = bytearray(draw(st.sampled_from(sorted({**CAPTURED, **BUILT}.values()))))
    for _ in range(draw(st.integers(0, 8))):
        buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    return bytes(buf[:draw(st.integers(0, len(buf)))])


_ULP_ATTRS = st.dictionaries(
    st.sampled_from(["token_rem", "token_loc", "flags", "id_rem", "id_loc"]),
    st.integers(0, 255))

#: What :func:`check` takes (bench/fuzz_long.py's ``sock_diag-subflows``):
#: a datagram, and whether it is well framed (then the pyroute2 oracle must
#: read it alike).
CASES = st.one_of(
    st.tuples(st.binary(max_size=600), st.just(False)),
    st.tuples(_mutated(), st.just(False)),
    st.tuples(st.builds(
        lambda attrs, name, state, ifindex: reply(
            socket.AF_INET6, state, "2001:db8::1", 1, "2001:db8::2", 2, ifindex,
            ulp(name=name, **attrs)) + DONE,
        _ULP_ATTRS, st.binary(max_size=8), st.integers(0, 14),
        st.integers(0, 2**32 - 1)), st.just(True)),
)
#: The documented error of :func:`check`.
ALLOWED: tuple[type[BaseException], ...] = (OSError,)


def check(case: tuple[bytes, bool]) -> list[MptcpSubflow]:
    data, framed = case
    with no_hang():
        batch = decode_datagram(data, subflows=True)
        assert all(isinstance(s, MptcpSubflow) for s in batch.subflows)
        assert batch.connections == [] and batch.listeners == []
        if framed:
            assert (batch.subflows, batch.done) == diag_oracle.decode_subflows(data)
    return batch.subflows


@FUZZ
@given(CASES)
def test_any_datagram(case: tuple[bytes, bool]) -> None:
    try:
        check(case)
    except ALLOWED:
        pass


@FUZZ
@given(st.sampled_from(sorted({**CAPTURED, **BUILT}.values())), st.data())
def test_mutated_replies(capture: bytes, data: st.DataObject) -> None:
    buf = bytearray(capture)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    result_or_oserror(bytes(buf[:cut]))


@FUZZ
@given(st.dictionaries(st.sampled_from(["token_rem", "token_loc", "flags", "id_rem",
                                        "id_loc"]),
                       st.integers(0, 255)),
       st.binary(max_size=8), st.integers(0, 14), st.integers(0, 2**32 - 1))
def test_well_framed_replies_decode_as_the_oracle_decodes_them(
        attrs: dict[str, int], name: bytes, state: int, ifindex: int) -> None:
    data = reply(socket.AF_INET6, state, "2001:db8::1", 1, "2001:db8::2", 2, ifindex,
                 ulp(name=name, **attrs)) + DONE
    ours = decode_datagram(data, subflows=True)
    assert (ours.subflows, ours.done) == diag_oracle.decode_subflows(data)

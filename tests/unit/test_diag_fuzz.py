"""Fuzzing the sock_diag decoder (hypothesis).

Random bytes, mutated and truncated kernel captures, well-framed replies
with random fields and attributes, and random datagrams answered to a whole
:func:`~mptcpd.netlink.diag.list_mptcp_connections` call.  Properties: the
decoder returns its result or raises :class:`OSError`, never another
exception; well-framed replies decode as the pyroute2 oracle decodes them.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from mptcpd.netlink import diag
from mptcpd.netlink.diag import DiagBatch, decode_datagram
from tests.unit import diag_oracle
from tests.unit.fuzz_support import FUZZ, no_hang
from tests.unit.test_diag import (
    CLIENT_V4,
    CLIENT_V4_DONE,
    CLIENT_V6,
    DONE_ENOENT,
    NLMSG_HDR,
    SERVER_V6,
    SERVER_V6_DONE,
    build_reply,
    mptcp_info,
)

CAPTURES = [CLIENT_V4, CLIENT_V6, SERVER_V6, CLIENT_V4 + CLIENT_V4_DONE,
            SERVER_V6 + SERVER_V6_DONE, DONE_ENOENT]
#: Reply attributes pyroute2 keeps as raw bytes whatever their length.
RAW_ATTRS = [1, 3, 7, 9, 12, 13, 14, 16, 18, 19, 20, 22]


def result_or_oserror(data: bytes, seq: int | None = None) -> DiagBatch | None:
    try:
        batch = decode_datagram(data, seq)
    except OSError:
        return None
    assert isinstance(batch, DiagBatch)
    return batch


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    result_or_oserror(data)


@FUZZ
@given(st.sampled_from(CAPTURES), st.data())
def test_mutated_captures(capture: bytes, data: st.DataObject) -> None:
    buf = bytearray(capture)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    tail = data.draw(st.binary(max_size=64))
    result_or_oserror(bytes(buf[:cut]) + tail)


@FUZZ
@given(st.sampled_from(CAPTURES), st.integers(0, 600), st.integers(-(2 ** 31), 2 ** 31 - 1))
def test_header_fields(capture: bytes, offset: int, value: int) -> None:
    """One 32-bit field anywhere in a capture set to any value (lengths,
    error codes, attribute headers)."""
    buf = bytearray(capture)
    if offset + 4 <= len(buf):
        struct.pack_into("=i", buf, offset, value)
    result_or_oserror(bytes(buf))


addresses = {
    socket.AF_INET: st.ip_addresses(v=4).map(str),
    socket.AF_INET6: st.ip_addresses(v=6).map(str),
}


@st.composite
def replies(draw: st.DrawFn) -> bytes:
    family = draw(st.sampled_from([socket.AF_INET, socket.AF_INET6]))
    attrs = draw(st.lists(st.tuples(st.sampled_from(RAW_ATTRS), st.binary(max_size=24)),
                          max_size=4))
    if draw(st.booleans()):
        info = mptcp_info(draw(st.integers(0, 2 ** 32 - 1)), draw(st.integers(0, 7)),
                          draw(st.integers(16, 120)))
        kind = diag.INET_DIAG_INFO | draw(st.sampled_from([0, 0x4000, 0x8000]))
        attrs.insert(draw(st.integers(0, len(attrs))), (kind, info))
    elif draw(st.booleans()):
        attrs.append((diag.INET_DIAG_INFO, draw(st.binary(max_size=15))))
    return build_reply(
        family, draw(st.integers(0, 15)),
        draw(addresses[family]), draw(st.integers(0, 65535)),
        draw(addresses[family]), draw(st.integers(0, 65535)), attrs,
    )


@FUZZ
@given(st.lists(replies(), max_size=5), st.booleans())
def test_well_framed_replies_decode_as_the_oracle_decodes_them(
    msgs: list[bytes], done: bool
) -> None:
    data = b"".join(msgs) + (CLIENT_V4_DONE if done else b"")
    batch = decode_datagram(data)
    assert (batch.connections, batch.listeners, batch.done) == diag_oracle.decode(data)


@FUZZ
@given(st.lists(st.one_of(replies(), st.binary(max_size=80)), max_size=3))
def test_a_whole_listing_returns_or_raises_oserror(datagrams: list[bytes]) -> None:
    """Whatever the kernel answers, the listing ends with connections or an
    OSError (a timeout when no NLMSG_DONE comes)."""
    async def run() -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.setblocking(False)
        theirs.setblocking(False)
        loop = asyncio.get_running_loop()

        async def kernel() -> None:
            while True:
                request = await loop.sock_recv(ours, 65536)
                seq = NLMSG_HDR.unpack_from(request)[3]
                for d in datagrams:
                    out = bytearray(d)
                    if len(out) >= 16:
                        struct.pack_into("=I", out, 8, seq)
                    await loop.sock_sendall(ours, bytes(out) or b"\0")
                done = bytearray(CLIENT_V4_DONE)
                struct.pack_into("=I", done, 8, seq)
                await loop.sock_sendall(ours, bytes(done))

        task = asyncio.create_task(kernel())
        original = diag.netlink_socket
        diag.netlink_socket = lambda protocol, netns=None: theirs  # type: ignore[assignment]
        try:
            try:
                result = await diag.list_mptcp_connections(timeout=0.5)
            except OSError:
                return
            assert all(isinstance(c, diag.MptcpConnection) for c in result)
        finally:
            diag.netlink_socket = original
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            ours.close()
            theirs.close()

    asyncio.run(run())


# -- one entry for bench/fuzz_long.py ----------------------------------------------


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    buf = bytearray(draw(st.sampled_from(CAPTURES)))
    for _ in range(draw(st.integers(0, 8))):
        buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        offset = draw(st.integers(0, max(0, len(buf) - 4)))
        struct.pack_into("=i", buf, offset, draw(st.sampled_from(
            [-(2 ** 31), 2 ** 31 - 1, -1, 0, 16, 20, 4095, -4096])))
    cut = draw(st.integers(0, len(buf)))
    return bytes(buf[:cut]) + draw(st.binary(max_size=64))


#: What :func:`check` takes: a datagram, and whether it is well framed
#: (then the pyroute2 oracle must read it alike).
CASES = st.one_of(
    st.tuples(st.binary(max_size=600), st.just(False)),
    st.tuples(_mutated(), st.just(False)),
    st.tuples(st.builds(lambda msgs, done: b"".join(msgs) + (CLIENT_V4_DONE if done else b""),
                        st.lists(replies(), max_size=5), st.booleans()), st.just(True)),
)
#: The documented error of :func:`check`.
ALLOWED: tuple[type[BaseException], ...] = (OSError,)


def check(case: tuple[bytes, bool]) -> DiagBatch:
    data, framed = case
    with no_hang():
        batch = decode_datagram(data)
        assert isinstance(batch, DiagBatch)
        assert all(isinstance(c, diag.MptcpConnection) for c in batch.connections)
        if framed:
            assert (batch.connections, batch.listeners, batch.done) == diag_oracle.decode(data)
    return batch

"""Fuzzing the sock_diag decoder (hypothesis).

Random bytes, mutated and truncated kernel captures, well-framed replies
with random fields and attributes, and random datagrams answered to a whole
:func:`~mptcpd.netlink.diag.list_mptcp_connections` call.  Properties: the
decoder returns its result or raises :class:`OSError`, never another
exception; well-framed replies decode as the pyroute2 oracle decodes them.
The answers to one-socket lookups (:func:`~mptcpd.netlink.diag.find_mptcp_connections`,
:func:`~mptcpd.netlink.diag.find_mptcp_subflows`) are read exactly when
intact, and never raise anything but :class:`OSError`.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct

from hypothesis import example, given
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


# -- answers to lookups (bench/fuzz_long.py's ``sock_diag-lookups``) ---------------

#: The numbers of the lookups under test; answers come for these and others.
LOOKUP_SEQS = range(3, 7)
_CODES = [0, -errno.ENOENT, errno.ENOENT, -errno.EPERM, -errno.EINVAL, -(2 ** 31),
          2 ** 31 - 1, -4095, -4096, 4096]
_REPLIES = [CLIENT_V4, CLIENT_V6, SERVER_V6]


def _numbered(capture: bytes, seq: int) -> bytes:
    """``capture`` with every message of it numbered ``seq``."""
    buf, offset = bytearray(capture), 0
    while offset + 16 <= len(buf):
        struct.pack_into("=I", buf, offset + 8, seq)
        offset += (struct.unpack_from("=I", buf, offset)[0] + 3) & ~3
    return bytes(buf)


@st.composite
def _answer(draw: st.DrawFn) -> tuple[str, int, int, bytes]:
    """One message: a socket found, an acknowledgement or error (its code,
    or none), or junk; with its sequence number."""
    seq = draw(st.integers(LOOKUP_SEQS.start - 2, LOOKUP_SEQS.stop + 1))
    kind = draw(st.sampled_from(["reply", "error", "short error", "junk"]))
    if kind == "reply":
        return kind, seq, 0, _numbered(draw(st.sampled_from(_REPLIES)), seq)
    if kind == "junk":
        return kind, seq, 0, draw(st.binary(max_size=64))
    if kind == "short error":
        return kind, seq, 0, _error_message(seq, None)
    code = draw(st.one_of(st.sampled_from(_CODES), st.integers(-(2 ** 31), 2 ** 31 - 1)))
    return kind, seq, code, _error_message(seq, code, draw(st.booleans()))


def _error_message(seq: int, code: int | None, with_request: bool = False) -> bytes:
    """An ``NLMSG_ERROR`` numbered ``seq``: its code (None: too short for
    one), and the request's header after it or not."""
    payload = b"" if code is None else struct.pack("=i", code) + bytes(16 * with_request)
    return NLMSG_HDR.pack(16 + len(payload), diag.NLMSG_ERROR, 0, seq, 0) + payload


def _intact(*answers: tuple[str, int, int, bytes]) -> tuple[
        bytes, bool, list[tuple[str, int, int, bytes]]]:
    return b"".join(m for *_, m in answers), False, list(answers)


@st.composite
def _lookup_case(draw: st.DrawFn) -> tuple[bytes, bool, list[tuple[str, int, int, bytes]]]:
    """A datagram of answers, whether the subflow lookups read it, and its
    messages (none when it was mutated: then only the bounds are known)."""
    answers = draw(st.lists(_answer(), min_size=1, max_size=5))
    data = b"".join(m + bytes(-len(m) % 4) for *_, m in answers)
    if any(kind == "junk" for kind, *_ in answers) or draw(st.booleans()):
        buf = bytearray(data)
        for _ in range(draw(st.integers(0, 6)) if buf else 0):
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        return bytes(buf[:draw(st.integers(0, len(buf)))]), draw(st.booleans()), []
    return data, draw(st.booleans()), answers


LOOKUP_CASES = _lookup_case()
LOOKUP_ALLOWED: tuple[type[BaseException], ...] = (OSError,)


def check_lookups(case: tuple[bytes, bool, list[tuple[str, int, int, bytes]]]) -> DiagBatch:
    """``_decode_lookups`` on one datagram: what it found, or an
    :class:`OSError` with an error number 1..4095; only the numbers asked
    count as answered, and an intact datagram is read exactly: an
    acknowledgement or ``ENOENT`` answers its lookup, any other error (or
    one too short for its code: ``EIO``) raises, and every socket found for
    a number asked is kept."""
    data, subflows, answers = case
    answered: set[int] = set()
    batch = DiagBatch()
    asked = [a for a in answers if a[1] in LOOKUP_SEQS]
    failing = [a for a in asked if a[0] == "short error"
               or a[0] == "error" and abs(a[2]) not in (0, errno.ENOENT)]
    with no_hang():
        try:
            diag._decode_lookups(data, LOOKUP_SEQS, answered, None, batch, subflows)
        except OSError as exc:
            assert exc.errno is not None and 0 < exc.errno <= 4095, exc
            assert failing or not answers, (exc, answers)
            raise
    assert answered <= set(LOOKUP_SEQS)
    found = batch.subflows if subflows else batch.connections
    assert all(isinstance(x, diag.MptcpSubflow if subflows else diag.MptcpConnection)
               for x in found)
    assert not (batch.connections if subflows else batch.subflows)
    if answers:
        assert not failing, answers
        assert answered == {seq for kind, seq, _, _ in asked if kind == "error"}
        if not subflows:
            assert len(found) == sum(len(decode_datagram(m).connections)
                                     for kind, _, _, m in asked if kind == "reply")
    return batch


@FUZZ
@given(LOOKUP_CASES)
@example(_intact(("reply", 3, 0, _numbered(CLIENT_V4, 3)),
                 ("error", 3, 0, _error_message(3, 0)),
                 ("error", 4, -errno.ENOENT, _error_message(4, -errno.ENOENT, True)),
                 ("error", 9, -errno.EPERM, _error_message(9, -errno.EPERM))))
@example(_intact(("error", 5, -errno.EPERM, _error_message(5, -errno.EPERM))))
@example(_intact(("short error", 6, 0, _error_message(6, None))))
def test_answers_to_lookups_are_read_or_refused_with_oserror(
        case: tuple[bytes, bool, list[tuple[str, int, int, bytes]]]) -> None:
    try:
        check_lookups(case)
    except LOOKUP_ALLOWED:
        pass

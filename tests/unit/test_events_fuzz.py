"""Fuzzing the event decoder and the reader's receive path (hypothesis).

About 11 000 generated cases in all: random bytes, well-framed messages with
random attributes, mutated and truncated kernel captures, captures followed
by garbage, and random datagrams pushed through :class:`EventReader`.
Properties: nothing raises; the lean decoder never falls into its
"unexpected exception" branch; wherever the netlink framing is intact the
production decoder and the pyroute2 oracle give the same event and the same log lines; and
kernel captures decode as before.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from mptcpd.events import ConnectionClosed, SubflowEstablished
from mptcpd.netlink import constants as C
from mptcpd.netlink.event_codec import OVERRUN, decode_datagram, decode_message
from mptcpd.netlink.genl_events import EventReader
from tests.unit.event_oracle import MarshalMptcpEvent, decode
from tests.unit.events_support import (
    FAMILY_ID,
    capture_bytes,
    pyroute2_parse,
    raw_message,
)
from tests.unit.fuzz_support import FUZZ, Recorder, no_hang, recording

CAPTURES = capture_bytes()
EXPECTED = [decode_message(d) for d in CAPTURES]
EVENTS = [int(e) for e in C.MptcpEvent]
LOGGER = "mptcpd.netlink"



def lean_never_crashes(rec: Recorder) -> None:
    assert not [r for r in rec.records if r.exc_info], rec.lines()


def pyroute2_decode(data: bytes) -> object:
    """The reference path as the reader runs it: marshal parse, then decode."""
    marshal = MarshalMptcpEvent()
    try:
        msgs = list(marshal.parse(data))
    except Exception:  # noqa: BLE001 - the reader logs and skips these
        return "unparsable"
    return [decode(m) for m in msgs]


def assert_same(data: bytes) -> None:
    """Both decoders: same event, same log lines (framing must be intact)."""
    with recording(LOGGER) as rec:
        ref = decode(pyroute2_parse(data))
        ref_lines = rec.lines()
        rec.records.clear()
        lean = decode_message(data)
        lean_never_crashes(rec)
        assert lean == ref
        assert rec.lines() == ref_lines


# -- strategies -------------------------------------------------------------------

payload_for = {4: st.binary(min_size=4, max_size=4), 2: st.binary(min_size=2, max_size=2),
               1: st.binary(min_size=1, max_size=1), 16: st.binary(min_size=16, max_size=16)}
attribute = st.tuples(
    st.one_of(st.integers(0, 20), st.integers(0, 0xFFFF)),
    st.one_of(st.binary(max_size=20), *payload_for.values()),
)
cmd = st.one_of(st.sampled_from(EVENTS), st.integers(0, 255))


@st.composite
def mutated_capture(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CAPTURES)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(20, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    return bytes(data)


# -- properties -------------------------------------------------------------------


@settings(FUZZ, max_examples=3000)
@given(st.binary(max_size=256))
def test_random_bytes_never_raise(data: bytes) -> None:
    with recording(LOGGER) as rec:
        out = decode_datagram(data)
        decode_message(data)
        lean_never_crashes(rec)
        assert all(e is OVERRUN or hasattr(e, "HOOK") for e in out)
        pyroute2_decode(data)


@settings(FUZZ, max_examples=3000)
@given(cmd, st.lists(attribute, max_size=14))
def test_well_framed_random_attributes_decode_alike(cmd: int, attrs: list[
        tuple[int, bytes]]) -> None:
    assert_same(raw_message(cmd, attrs))


@settings(FUZZ, max_examples=2000)
@given(mutated_capture())
def test_mutated_captures_decode_alike(data: bytes) -> None:
    assert_same(data)
    with recording(LOGGER) as rec:
        decode_datagram(data, family_id=FAMILY_ID)
        lean_never_crashes(rec)


@settings(FUZZ, max_examples=1500)
@given(st.sampled_from(range(len(CAPTURES))), st.integers(0, 200), st.booleans())
def test_truncated_captures_never_raise(index: int, cut: int, fix_length: bool) -> None:
    data = CAPTURES[index][:cut]
    if fix_length and len(data) >= 20:
        data = struct.pack("=I", len(data)) + data[4:]
        assert_same(data)
    with recording(LOGGER) as rec:
        out = decode_datagram(data, family_id=FAMILY_ID)
        lean_never_crashes(rec)
    if cut >= len(CAPTURES[index]):
        assert out == [EXPECTED[index]]
    elif not fix_length:
        assert out == []


@settings(FUZZ, max_examples=1000)
@given(st.sampled_from(range(len(CAPTURES))), st.binary(max_size=64))
def test_captures_followed_by_garbage_still_decode(index: int, garbage: bytes) -> None:
    with recording(LOGGER) as rec:
        out = decode_datagram(CAPTURES[index] + garbage, family_id=FAMILY_ID)
        lean_never_crashes(rec)
    assert out[:1] == [EXPECTED[index]]


def several_messages() -> st.SearchStrategy[bytes]:
    """One datagram of two or three captured event messages (each padded to
    4 bytes, as the kernel lays messages out)."""
    return st.builds(lambda parts: b"".join(p + bytes(-len(p) % 4) for p in parts),
                     st.lists(st.sampled_from(CAPTURES), min_size=2, max_size=3))


@settings(FUZZ, max_examples=500)
@given(st.lists(st.one_of(st.binary(max_size=128), st.sampled_from(CAPTURES),
                          mutated_capture(), several_messages()), min_size=1, max_size=8),
       st.sampled_from([None, FAMILY_ID]))
def test_reader_receive_path_survives_any_datagram(datagrams: list[bytes],
                                                   family_id: int | None) -> None:
    """Datagrams go through the reader's real receive callback (a local
    datagram socket stands in for the netlink socket).  With the family's
    ID known, as in the daemon, a datagram of one event message takes the
    reader's short path; without it, every datagram is walked."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    loop = asyncio.new_event_loop()
    try:
        reader = EventReader()
        reader._loop = loop
        reader._raw = b
        b.setblocking(False)
        reader.family_id = family_id
        for d in datagrams:
            a.send(d)
        with recording(LOGGER) as rec:
            reader._on_readable()
            lean_never_crashes(rec)
        expected = [e for d in datagrams for e in decode_datagram(d, family_id=family_id)
                    if e is not OVERRUN]
        # What is held undecoded knows the connections closed in it, as the
        # decoder will find them; handing the events out forgets them.
        closed = {e.token for e in expected if isinstance(e, ConnectionClosed)}
        assert reader.closing == closed
        # Every connection with an event waiting is known to be (the resync
        # relies on it).
        about = {e.token for e in expected if hasattr(e, "token")}
        assert about <= set(reader.queued_tokens(reader.received)) | reader.closing
        # The subflows established that a resync finds waiting are those the
        # decoder will hand out.
        assert reader.queued_subflows_established(reader.received) == [
            e for e in expected if isinstance(e, SubflowEstablished)]
        assert reader.take(1 << 30) == expected
        assert reader.closing == set() and reader.backlog == 0
    finally:
        loop.close()
        a.close()
        b.close()


def test_captures_still_decode_as_before() -> None:
    """After all the fuzzing (and its address caches), captures are unchanged."""
    assert [decode_message(d) for d in CAPTURES] == EXPECTED
    assert all(e is not None for e in EXPECTED)
    assert [decode(pyroute2_parse(d)) for d in CAPTURES] == EXPECTED


# -- one entry for bench/fuzz_long.py ----------------------------------------------

#: What :func:`check` takes: a datagram, and whether its framing is intact
#: (then the pyroute2 oracle must read it alike).
CASES = st.one_of(
    st.tuples(st.binary(max_size=256), st.just(False)),
    st.tuples(st.builds(raw_message, cmd, st.lists(attribute, max_size=14)), st.just(True)),
    st.tuples(mutated_capture(), st.just(True)),
    st.tuples(st.builds(lambda i, g: CAPTURES[i] + g, st.sampled_from(range(len(CAPTURES))),
                        st.binary(max_size=64)), st.just(False)),
)
#: The documented errors of :func:`check` (none: the decoder never raises).
ALLOWED: tuple[type[BaseException], ...] = ()


def check(case: tuple[bytes, bool]) -> list[object]:
    """The decoder on ``data``: no exception, no traceback logged, only
    events; the oracle's event and log lines where the framing is intact."""
    data, framed = case
    with no_hang():
        with recording(LOGGER) as rec:
            out = decode_datagram(data)
            decode_message(data)
            decode_datagram(data, family_id=FAMILY_ID)
            lean_never_crashes(rec)
        assert all(e is OVERRUN or hasattr(e, "HOOK") for e in out)
        if framed:
            assert_same(data)
    return out

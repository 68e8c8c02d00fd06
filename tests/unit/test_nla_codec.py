"""The shared netlink attribute walker and encoder (:mod:`mptcpd.netlink.nla`).

The codecs built on them (``pm_codec``, ``rtnl_monitor``, ``diag``) are held
to pyroute2 by their own tests; these pin the walker's rules: types without
flags, payload bounds, 4-byte steps, what is malformed and when it is said.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mptcpd.netlink import nla
from tests.unit.fuzz_support import FUZZ

NESTED, NET_BYTEORDER = 0x8000, 0x4000


def test_encode_pads_to_four_bytes() -> None:
    assert nla.encode(3, b"eth0\0") == struct.pack("=HH", 9, 3) + b"eth0\0" + b"\0" * 3
    assert nla.encode(1, b"\1\2\3\4") == struct.pack("=HH", 8, 1) + b"\1\2\3\4"
    assert nla.encode(7 | NESTED, b"") == struct.pack("=HH", 4, 7 | NESTED)


def test_walk_gives_types_without_flags_and_payload_bounds() -> None:
    data = b"\xff" * 4 + nla.encode(3, b"ab") + nla.encode(1 | NESTED, b"wxyz") \
        + nla.encode(2 | NET_BYTEORDER, b"")
    assert list(nla.walk(data, 4, len(data))) == [(3, 8, 10), (1, 16, 20), (2, 24, 24)]
    assert list(nla.walk(data, 4, 12)) == [(3, 8, 10)]  # the end bounds the walk
    assert list(nla.walk(data, 4, 4)) == []


@pytest.mark.parametrize("length", [0, 3, 13])
def test_a_length_that_does_not_fit_is_malformed_after_the_good_ones(length: int) -> None:
    data = nla.encode(5, b"ok") + struct.pack("=HH", length, 9 | NESTED) + b"\0" * 8
    walk = nla.walk(data, 0, len(data))
    assert next(walk) == (5, 4, 6)  # lazy: what comes before is handed out
    with pytest.raises(nla.MalformedAttribute) as info:
        next(walk)
    assert (info.value.type, info.value.length, info.value.offset) == (9, length, 8)
    assert str(info.value) == f"attribute of type 9 with length {length} at offset 8"


@pytest.mark.parametrize("stray", [1, 2, 3])
def test_stray_bytes_end_the_walk_or_are_malformed_when_exact(stray: int) -> None:
    data = nla.encode(5, b"ok") + b"\0" * stray
    assert list(nla.walk(data, 0, len(data))) == [(5, 4, 6)]
    with pytest.raises(nla.MalformedAttribute) as info:
        list(nla.walk(data, 0, len(data), exact=True))
    assert (info.value.type, info.value.length, info.value.offset) == (None, stray, 8)
    assert str(info.value) == f"{stray} stray bytes after the attributes"


def test_the_last_attribute_may_lack_its_padding() -> None:
    data = nla.encode(5, b"abc")[:-1]
    assert list(nla.walk(data, 0, len(data), exact=True)) == [(5, 4, 7)]


def _reference(data: bytes, offset: int, end: int) -> tuple[list[tuple[int, int, int]], bool]:
    """The rules spelt out: the attributes before the first malformed one,
    and whether there was one (stray bytes do not count)."""
    out = []
    while end - offset >= 4:
        length, kind = struct.unpack_from("=HH", data, offset)
        kind %= 0x4000
        if length < 4 or length > end - offset:
            return out, True
        out.append((kind, offset + 4, offset + length))
        offset += -(-length // 4) * 4
    return out, False


@FUZZ
@given(st.binary(max_size=80), st.integers(0, 8), st.integers(0, 8))
def test_walk_follows_the_rules_on_any_bytes(data: bytes, start: int, cut: int) -> None:
    end = max(start, len(data) - cut)
    expected, malformed = _reference(data, start, end)
    got = []
    try:
        for item in nla.walk(data, start, end):
            got.append(item)
    except nla.MalformedAttribute:
        assert malformed
    else:
        assert not malformed
    assert got == expected


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=12)), max_size=6))
def test_what_is_encoded_walks_back(attrs: list[tuple[int, bytes]]) -> None:
    data = b"".join(nla.encode(kind, payload) for kind, payload in attrs)
    assert [(kind, data[start:stop]) for kind, start, stop
            in nla.walk(data, 0, len(data), exact=True)] == \
        [(kind & nla.TYPE_MASK, payload) for kind, payload in attrs]


# -- one entry for bench/fuzz_long.py ----------------------------------------------

#: What :func:`check` takes: bytes, where the walk starts, how many bytes
#: before the end it stops, whether it is exact.
CASES = st.tuples(
    st.one_of(st.binary(max_size=80),
              st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=12)), max_size=6)
              .map(lambda attrs: b"".join(nla.encode(k, v) for k, v in attrs))),
    st.integers(0, 8), st.integers(0, 8), st.booleans())
#: The documented error of :func:`check`.
ALLOWED: tuple[type[BaseException], ...] = (nla.MalformedAttribute,)


def check(case: tuple[bytes, int, int, bool]) -> list[tuple[int, int, int]]:
    """walk() on the case: the attributes the rules give, then
    MalformedAttribute exactly when the rules say so."""
    data, start, cut, exact = case
    end = max(start, len(data) - cut)
    expected, malformed = _reference(data, start, end)
    got: list[tuple[int, int, int]] = []
    try:
        for item in nla.walk(data, start, end, exact=exact):
            got.append(item)
    except nla.MalformedAttribute:
        assert got == expected
        assert malformed or exact, (data, start, end)
        raise
    assert not malformed and got == expected
    return got

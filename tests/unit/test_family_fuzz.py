"""Fuzzing the nlctrl readers (hypothesis): the family watcher's
notifications and answers, and the family lookup.

Cases: random bytes; well-framed nlctrl messages (NEWFAMILY, DELFAMILY,
GETFAMILY replies and others) with the family's name or another, its ID at
its size or not, multicast groups well nested or not, other attributes;
error and end-of-dump messages with any error number (``INT_MIN``
included); several per datagram, aimed at our request or not.

Properties (the documented results): :meth:`FamilyWatcher.handle_ctrl_message`
never raises; our pending request ends with an ID (0..65535), None or an
:class:`OSError` with an errno in 1..4095; ``on_appeared`` gets an ID and
alternates with ``on_vanished``.  :func:`pm_codec.decode_family_groups`
returns an ID with errno 0, or no ID with an errno in 1..4095;
:func:`nlsock.lookup_family` returns ``(id, groups)`` or raises
:class:`NotReady` or :class:`OSError`; nothing hangs.  Where every
message is a well-formed nlctrl message, the watcher's transitions and the
lookup's result are what pyroute2's reading (``ctrlmsg``) implies.
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
from pyroute2.netlink import ctrlmsg
from pyroute2.netlink.nlsocket import Marshal

from mptcpd.errors import NotReady
from mptcpd.netlink import nla, nlsock
from mptcpd.netlink import pm_codec as p
from mptcpd.netlink.constants import (
    CTRL_ATTR_FAMILY_ID,
    CTRL_ATTR_FAMILY_NAME,
    CTRL_ATTR_MCAST_GROUPS,
    CTRL_ATTR_MCAST_GRP_ID,
    CTRL_ATTR_MCAST_GRP_NAME,
    CTRL_CMD_DELFAMILY,
    CTRL_CMD_GETFAMILY,
    CTRL_CMD_NEWFAMILY,
    GENL_ID_CTRL,
    MPTCP_PM_NAME,
)
from mptcpd.netlink.family import FamilyWatcher
from mptcpd.netlink.rtnl_monitor import NetlinkSocket
from tests.unit.fuzz_support import FUZZ, no_hang, recording
from tests.unit.test_rtnl_fuzz import FakeSocket

#: The documented errors of :func:`check` (none: each call's are caught there).
ALLOWED: tuple[type[BaseException], ...] = ()
PORT = 4242
SEQ = 7  #: the sequence number of our request


def nlmsg(mtype: int, flags: int, seq: int, body: bytes, pid: int = PORT) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, pid) + body


# -- the oracle: pyroute2's ctrlmsg ---------------------------------------------------


def oracle(data: bytes) -> list[tuple[int, int, int, str | None, int | None,
                                      dict[str, int]]]:
    """(seq, pid, cmd, name, id, groups) of each nlctrl message."""
    marshal = Marshal()
    marshal.msg_map[GENL_ID_CTRL] = ctrlmsg
    out = []
    for msg in marshal.parse(data):
        header = msg["header"]
        groups = {}
        for group in msg.get_attr("CTRL_ATTR_MCAST_GROUPS") or []:
            name, gid = group.get_attr("CTRL_ATTR_MCAST_GRP_NAME"), \
                group.get_attr("CTRL_ATTR_MCAST_GRP_ID")
            if name is not None and gid is not None:
                groups[name] = gid
        out.append((header["sequence_number"], header["pid"], msg["cmd"],
                    msg.get_attr("CTRL_ATTR_FAMILY_NAME"),
                    msg.get_attr("CTRL_ATTR_FAMILY_ID"), groups))
    return out


def _walk(data: bytes, start: int, end: int) -> list[tuple[int, bytes]] | None:
    try:
        return [(t, data[a:b]) for t, a, b in nla.walk(data, start, end, exact=True)]
    except nla.MalformedAttribute:
        return None


def _text(raw: bytes) -> bool:
    if not raw.endswith(b"\0") or b"\0" in raw[:-1]:
        return False
    try:
        raw[:-1].decode()
    except UnicodeDecodeError:
        return False
    return True


def comparable(data: bytes) -> bool:
    """Every message an nlctrl message with well-formed attributes: a name
    (UTF-8, one NUL), an ID of 2 bytes, groups of a name and a 4-byte ID."""
    off = 0
    while off < len(data):
        if off + 20 > len(data):
            return False
        length, mtype = struct.unpack_from("=IH", data, off)
        if mtype != GENL_ID_CTRL or length < 20 or off + length > len(data):
            return False
        attrs = _walk(data, off + 20, off + length)
        if attrs is None or len({t for t, _ in attrs}) != len(attrs):
            return False
        for kind, raw in attrs:
            if kind == CTRL_ATTR_FAMILY_NAME and not _text(raw):
                return False
            if kind == CTRL_ATTR_FAMILY_ID and len(raw) != 2:
                return False
            if kind == CTRL_ATTR_MCAST_GROUPS:
                groups = _walk(raw, 0, len(raw))
                if groups is None:
                    return False
                for _, group in groups:
                    inner = _walk(group, 0, len(group))
                    if inner is None or sorted(t for t, _ in inner) != [1, 2]:
                        return False
                    if not all(_text(v) if t == 1 else len(v) == 4 for t, v in inner):
                        return False
            if kind not in (CTRL_ATTR_FAMILY_NAME, CTRL_ATTR_FAMILY_ID,
                            CTRL_ATTR_MCAST_GROUPS):
                return False
        off += (length + 3) & ~3
    return True


# -- the properties --------------------------------------------------------------------


def _watch(datagrams: list[bytes]) -> tuple[list[Any], Any]:
    """The watcher's transitions and how our request ended."""
    async def run() -> tuple[list[Any], Any]:
        calls: list[Any] = []
        watcher = FamilyWatcher(calls.append, lambda: calls.append("vanished"),
                                call_later=lambda delay, callback: asyncio.get_running_loop()
                                .call_later(3600, callback))
        watcher._sock = NetlinkSocket(FakeSocket([]))  # type: ignore[arg-type]
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        watcher._pending[SEQ] = future
        for data in datagrams:
            watcher.handle_ctrl_message(data)
        await watcher.stop()
        ended: Any = "waiting"
        if future.done() and not future.cancelled():
            exc = future.exception()
            if exc is not None:
                assert 0 < exc.errno <= p.MAX_ERRNO, repr(exc)
                ended = exc.errno
            else:
                ended = future.result()
                assert ended is None or 0 <= ended <= 0xFFFF
        for a, b in zip(calls, calls[1:]):
            assert (a == "vanished") != (b == "vanished"), calls
        assert all(c == "vanished" or 0 <= c <= 0xFFFF for c in calls)
        assert not calls or calls[0] != "vanished"
        return calls, ended
    return asyncio.run(run())


def _lookup(data: bytes) -> Any:
    """nlsock.lookup_family answered with ``data`` (its messages aimed at
    the request), then with ENOENT."""
    async def run() -> Any:
        ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            ours.setblocking(False)
            kernel.send(data or b"\0")
            kernel.send(nlmsg(p.NLMSG_ERROR, 0, 1, struct.pack("=i", -errno.ENOENT)))
            try:
                return await nlsock.lookup_family(ours, seq=1)
            except NotReady as exc:
                return exc
            except OSError as exc:
                assert 0 < exc.errno <= p.MAX_ERRNO, repr(exc)
                return exc.errno
        finally:
            ours.close()
            kernel.close()
    return asyncio.run(run())


def check(datagrams: list[bytes]) -> None:
    """Every reader of nlctrl messages on ``datagrams``; AssertionError
    where a property fails."""
    with no_hang(), recording("mptcpd"):
        calls, ended = _watch(datagrams)
        for data in datagrams:
            family_id, groups, code = p.decode_family_groups(data, SEQ)
            assert (family_id is None) == (code != 0)
            assert 0 <= code <= p.MAX_ERRNO
            assert family_id is None or 0 <= family_id <= 0xFFFF
            assert all(isinstance(k, str) and 0 <= v <= 0xFFFFFFFF for k, v in groups.items())
            aimed = _aimed(data, 1)
            got = _lookup(aimed)
            want_id, want_groups, want_code = p.decode_family_groups(aimed, 1) \
                if p.messages(aimed) else (None, {}, errno.ENOENT)
            if want_id is not None:
                assert got == (want_id, want_groups)
            elif want_code == errno.ENOENT:
                assert isinstance(got, NotReady)
            else:
                assert got == want_code
            if comparable(data):
                assert (family_id, groups) == _expected_lookup(data)
        if all(comparable(d) for d in datagrams):
            assert (calls, ended) == _expected_watch(datagrams)


def _aimed(data: bytes, seq: int) -> bytes:
    out = bytearray(data)
    off = 0
    while off + 16 <= len(out):
        length = struct.unpack_from("=I", out, off)[0]
        if length < 16 or off + length > len(out):
            break
        struct.pack_into("=I", out, off + 8, seq)
        off += (length + 3) & ~3
    return bytes(out)


def _expected_lookup(data: bytes) -> tuple[int | None, dict[str, int]]:
    for seq, _pid, _cmd, _name, family_id, groups in oracle(data):
        if seq == SEQ and family_id is not None:
            return family_id, groups
    return None, {}


def _expected_watch(datagrams: list[bytes]) -> tuple[list[Any], Any]:
    calls: list[Any] = []
    ended: Any = "waiting"
    known = False
    for data in datagrams:
        for seq, pid, cmd, name, family_id, _ in oracle(data):
            if name != MPTCP_PM_NAME:
                continue
            if seq == SEQ and pid == PORT:
                if ended == "waiting":
                    ended = family_id
                continue
            if cmd == CTRL_CMD_NEWFAMILY and family_id is not None and not known:
                known = True
                calls.append(family_id)
            elif cmd == CTRL_CMD_DELFAMILY and known:
                known = False
                calls.append("vanished")
    return calls, ended


# -- strategies -------------------------------------------------------------------------

u16 = st.integers(0, 0xFFFF)
codes = st.one_of(st.integers(-140, 0), st.sampled_from(
    [-(2 ** 31), 2 ** 31 - 1, -4095, -4096, 4096]), st.integers(-(2 ** 31), 2 ** 31 - 1))
names = st.one_of(st.just(MPTCP_PM_NAME), st.just(MPTCP_PM_NAME), st.text(max_size=10))


@st.composite
def group(draw: st.DrawFn) -> bytes:
    name = nla.encode(CTRL_ATTR_MCAST_GRP_NAME, draw(st.text(max_size=16)).encode() + b"\0")
    gid = nla.encode(CTRL_ATTR_MCAST_GRP_ID, struct.pack("=I", draw(st.integers(0, 2 ** 32 - 1))))
    if draw(st.integers(0, 5)) == 0:
        gid = nla.encode(CTRL_ATTR_MCAST_GRP_ID, draw(st.binary(max_size=6)))
    parts = [name, gid] if draw(st.booleans()) else [gid, name]
    return nla.encode(draw(st.integers(1, 3)) | 0x8000, b"".join(parts))


@st.composite
def attribute(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([CTRL_ATTR_FAMILY_NAME, CTRL_ATTR_FAMILY_ID,
                                 CTRL_ATTR_MCAST_GROUPS, 3, 4, 6, 0, 0x3FFF]))
    if kind == CTRL_ATTR_FAMILY_NAME:
        payload = draw(names).encode() + b"\0"
    elif kind == CTRL_ATTR_FAMILY_ID:
        payload = struct.pack("=H", draw(u16)) if draw(st.integers(0, 4)) \
            else draw(st.binary(max_size=5))
    elif kind == CTRL_ATTR_MCAST_GROUPS:
        payload = b"".join(draw(st.lists(group(), max_size=3)))
        kind |= 0x8000
    else:
        payload = draw(st.binary(max_size=12))
    return nla.encode(kind, payload)


@st.composite
def ctrl_message(draw: st.DrawFn) -> bytes:
    cmd = draw(st.sampled_from([CTRL_CMD_NEWFAMILY, CTRL_CMD_DELFAMILY, CTRL_CMD_GETFAMILY,
                                CTRL_CMD_NEWFAMILY, draw(st.integers(0, 255))]))
    attrs = draw(st.lists(attribute(), max_size=4))
    seq = draw(st.sampled_from([SEQ, 0, 1]))
    pid = draw(st.sampled_from([PORT, PORT, 0]))
    return nlmsg(GENL_ID_CTRL, 0, seq, struct.pack("=BBH", cmd, 2, 0) + b"".join(attrs), pid)


@st.composite
def error(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([p.NLMSG_ERROR, p.NLMSG_DONE]))
    payload = struct.pack("=i", draw(codes)) + draw(st.binary(max_size=20))
    return nlmsg(kind, 0, draw(st.sampled_from([SEQ, 0])),
                 payload[:draw(st.integers(0, len(payload)))])


datagram = st.one_of(
    st.binary(max_size=120),
    st.lists(ctrl_message(), min_size=1, max_size=3).map(b"".join),
    st.lists(st.one_of(ctrl_message(), error()), min_size=1, max_size=3).map(b"".join),
)
#: What :func:`check` takes: one to four datagrams.
CASES = st.lists(datagram, min_size=1, max_size=4)


# -- the tests ----------------------------------------------------------------------------


@settings(FUZZ, max_examples=400)
@given(CASES)
def test_any_datagrams(datagrams: list[bytes]) -> None:
    check(datagrams)


@settings(FUZZ, max_examples=300)
@given(st.lists(st.lists(ctrl_message(), min_size=1, max_size=3).map(b"".join),
                min_size=1, max_size=4))
def test_nlctrl_messages_read_as_pyroute2_reads_them(datagrams: list[bytes]) -> None:
    check(datagrams)


INT_MIN = struct.pack("=i", -(2 ** 31))


@pytest.mark.parametrize("payload", [INT_MIN, INT_MIN + bytes(16), struct.pack("=i", 4096)])
def test_an_error_number_out_of_range_is_eproto(payload: bytes) -> None:
    """nlsock.lookup_family raised OverflowError (os.strerror(2**31))
    instead of its documented OSError."""
    data = nlmsg(p.NLMSG_ERROR, 0, 1, payload)
    assert _lookup(data) == errno.EPROTO
    assert p.decode_family_groups(data, 1) == (None, {}, errno.EPROTO)
    assert _watch([nlmsg(p.NLMSG_ERROR, 0, SEQ, payload)]) == ([], errno.EPROTO)
